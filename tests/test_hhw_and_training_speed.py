"""Hard Hat Workers preparation and the stage-1 training-speed levers (bf16, channels-last,
sampled RoIs, the stride-4 level, multi-scale training), each trained for two iterations on synthetic data."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from datasets import prepare_hhw
from headseg import segmentation
from headseg.config import SegConfig, load_config
from headseg.data import load_coco
from headseg.segmentation import autocast_settings, build_segmenter, segmenter_checkpoint, train_segmenter
from headseg.engine import load_checkpoint, save_checkpoint
from tests.conftest import TINY_SEG
from tools import bench_train

# ----------------------------------------------------------------------------- prepare_hhw


def _yolo_split(root: Path, split: str, labels: dict[str, str]) -> None:
    (root / split / "images").mkdir(parents=True)
    (root / split / "labels").mkdir(parents=True)
    for stem, text in labels.items():
        Image.fromarray(np.zeros((40, 80, 3), np.uint8)).save(root / split / "images" / f"{stem}.jpg")
        (root / split / "labels" / f"{stem}.txt").write_text(text)


def test_prepare_hhw_converts_splits_with_hardhat_category_ids(tmp_path: Path) -> None:
    src = tmp_path / "hhw"
    src.mkdir()
    (src / "data.yaml").write_text("nc: 2\nnames: ['head', 'helmet']\n")
    # class 0 = head (bare), 1 = helmet; cx cy w h normalised by 80 x 40
    _yolo_split(src, "train", {"a": "0 0.25 0.5 0.25 0.5\n1 0.75 0.5 0.125 0.25\n", "b": ""})
    _yolo_split(src, "val", {"c": "1 0.5 0.5 0.5 0.5\n"})
    _yolo_split(src, "test", {"d": "0 0.5 0.5 0.25 0.25\n"})
    out = tmp_path / "coco"
    paths = prepare_hhw.main(prepare_hhw.parse_args(["--src", str(src), "--out", str(out)]))

    assert set(paths) == {"train", "val", "test"}
    train = json.loads(paths["train"].read_text())
    assert [(c["id"], c["name"]) for c in train["categories"]] == [(1, "helmet"), (2, "head")]
    anns = sorted(train["annotations"], key=lambda a: a["bbox"][0])
    assert [a["category_id"] for a in anns] == [2, 1]  # head first (left), then helmet
    assert anns[0]["bbox"] == pytest.approx([10.0, 10.0, 20.0, 20.0])
    assert anns[1]["bbox"] == pytest.approx([55.0, 15.0, 10.0, 10.0])
    assert all(a["derived_mask"] == "ellipse" for a in anns)
    assert train["info"]["derived_masks"] == "ellipse"
    assert sorted(im["file_name"] for im in train["images"]) == ["train/images/a.jpg", "train/images/b.jpg"]
    coco = load_coco(paths["train"])  # every file_name resolves through the split link
    assert coco.image_path(1).is_file()
    assert json.loads(paths["val"].read_text())["annotations"][0]["category_id"] == 1


def test_prepare_hhw_rejects_unexpected_class_names(tmp_path: Path) -> None:
    (tmp_path / "data.yaml").write_text("names: ['person', 'helmet']\n")
    with pytest.raises(ValueError, match="expected"):
        prepare_hhw.main(prepare_hhw.parse_args(["--src", str(tmp_path), "--out", str(tmp_path / "o")]))


# ----------------------------------------------------------------------------- training levers


def test_autocast_is_bf16_on_cpu_and_fp16_on_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(segmentation, "cpu_runs_bf16", lambda: True)
    assert autocast_settings(True, torch.device("cpu")) == {
        "device_type": "cpu", "dtype": torch.bfloat16, "enabled": True}
    assert autocast_settings(True, torch.device("cuda", 0))["dtype"] == torch.float16
    assert autocast_settings(False, torch.device("cpu"))["enabled"] is False


def test_autocast_stays_off_on_a_cpu_that_emulates_bf16(monkeypatch: pytest.MonkeyPatch,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(segmentation, "cpu_runs_bf16", lambda: False)
    with caplog.at_level("WARNING", logger="headseg.segmentation"):
        assert autocast_settings(True, torch.device("cpu"))["enabled"] is False
    assert "no AVX512-BF16 or AMX" in caplog.text
    assert autocast_settings(True, torch.device("cuda", 0))["enabled"] is True  # GPUs unaffected
    assert autocast_settings(True, torch.device("cpu"), force=True)["enabled"] is True


def _conv_output_dtypes(synthetic_data: dict, out: Path, extra: list[str]) -> tuple[set, dict]:
    """Train two iterations; the dtypes every Conv2d returned, and the run's last checkpoint."""
    seen: set[torch.dtype] = set()

    def hook(module: torch.nn.Module, inputs: tuple, output: object) -> None:
        if isinstance(module, torch.nn.Conv2d) and torch.is_tensor(output):
            seen.add(output.dtype)

    cfg = load_config(SegConfig, None, [*TINY_SEG, f"data.train_json={synthetic_data['train']}", *extra])
    handle = torch.nn.modules.module.register_module_forward_hook(hook)
    try:
        train_segmenter(cfg, out, progress=False)
    finally:
        handle.remove()
    return seen, load_checkpoint(out / "last.pt", "segmenter")


def test_amp_trains_in_bf16_on_the_cpu_and_fp32_without(synthetic_data: dict, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(segmentation, "cpu_runs_bf16", lambda: True)  # as on an AVX512-BF16 CPU
    bf16, state = _conv_output_dtypes(synthetic_data, tmp_path / "amp", ["train.amp=true"])
    fp32, _ = _conv_output_dtypes(synthetic_data, tmp_path / "fp32",
                                  ["train.amp=false", "train.channels_last=false"])
    assert torch.bfloat16 in bf16
    assert fp32 == {torch.float32}
    # Weights and optimizer state stay fp32 under autocast: bf16 only touches activations.
    assert all(v.dtype in (torch.float32, torch.int64) for v in state["model"].values())
    assert np.isfinite(state["metrics"].get("loss", 0.0))


def test_fewer_sampled_rois_reach_the_roi_heads(synthetic_data: dict, tmp_path: Path) -> None:
    cfg = load_config(SegConfig, None, [*TINY_SEG, "model.box_batch_size_per_image=32"])
    model = build_segmenter(cfg.model, 1)
    assert model.roi_heads.fg_bg_sampler.batch_size_per_image == 32
    _, state = _conv_output_dtypes(synthetic_data, tmp_path / "rois",
                                   ["model.box_batch_size_per_image=32"])
    assert state["epoch"] == 0


def test_init_from_starts_from_a_packed_segmenter(synthetic_data: dict, tmp_path: Path) -> None:
    cfg = load_config(SegConfig, None, TINY_SEG)
    torch.manual_seed(1)
    trained = build_segmenter(cfg.model, 1)
    packed = segmenter_checkpoint(trained, cfg, ["head"])
    packed["model"] = {k: v.half() if v.is_floating_point() else v for k, v in packed["model"].items()}
    save_checkpoint(tmp_path / "packed.pt", packed)
    # lr 0: the run's weights stay the ones it started from, which must be the packed file's.
    _, state = _conv_output_dtypes(synthetic_data, tmp_path / "tuned",
                                   [f"train.init_from={tmp_path / 'packed.pt'}", "train.lr=0"])
    for k, v in trained.state_dict().items():
        torch.testing.assert_close(state["model"][k], v.half().float() if v.is_floating_point() else v)
    assert state["model"][k].dtype == v.dtype  # fp16 in the file, fp32 in training

    other = segmenter_checkpoint(build_segmenter(cfg.model, 2), cfg, ["helmet", "head"])
    save_checkpoint(tmp_path / "two.pt", other)
    with pytest.raises(ValueError, match="trained on classes"):
        _conv_output_dtypes(synthetic_data, tmp_path / "bad", [f"train.init_from={tmp_path / 'two.pt'}"])


def test_stride4_level_with_8px_anchors_trains(synthetic_data: dict, tmp_path: Path) -> None:
    stride4 = ["model.returned_layers=[1,2,3,4,5]", "model.anchor_sizes=[8,16,32,64,128,256]"]
    cfg = load_config(SegConfig, None, [*TINY_SEG, *stride4])
    model = build_segmenter(cfg.model, 1).eval()
    features = model.backbone(torch.zeros(1, 3, 128, 128))
    # MobileNetV2 stages 1..5 end at strides 4, 8, 16, 32, 32; the max-pool level adds 64.
    assert [f.shape[-1] for f in features.values()] == [32, 16, 8, 4, 4, 2]
    _, state = _conv_output_dtypes(synthetic_data, tmp_path / "s4", stride4)
    assert list(state["config"]["model"]["anchor_sizes"]) == [8, 16, 32, 64, 128, 256]
    shipped = load_config(SegConfig, Path(__file__).parents[1] / "configs" / "seg_facemask_s4.yaml")
    assert shipped.model.returned_layers == (1, 2, 3, 4, 5) and shipped.model.anchor_sizes[0] == 8


def test_multi_scale_training_draws_sizes_and_evaluates_at_min_size(synthetic_data: dict,
                                                                     tmp_path: Path) -> None:
    multi = ["model.train_min_sizes=[64,96]", "model.max_size=256"]
    cfg = load_config(SegConfig, None, [*TINY_SEG, *multi])
    model = build_segmenter(cfg.model, 1)
    images = [torch.rand(3, 40, 80)]
    target = [{"boxes": torch.tensor([[10.0, 10.0, 30.0, 30.0]]), "labels": torch.tensor([1]),
               "masks": torch.ones(1, 40, 80, dtype=torch.uint8)}]
    model.train()
    sizes = {model.transform(images, target)[0].image_sizes[0][0] for _ in range(40)}
    assert sizes == {64, 96}  # short side drawn per image; 128 (min_size) is not among them
    model.eval()
    assert model.transform(images)[0].image_sizes == [(128, 256)]  # short 128, long capped at 256
    model.train()
    assert model.transform.min_size == (64, 96)
    _, state = _conv_output_dtypes(synthetic_data, tmp_path / "ms", multi)
    assert list(state["config"]["model"]["train_min_sizes"]) == [64, 96]
    assert np.isfinite(state["metrics"].get("loss", 0.0))
    with pytest.raises(ValueError, match="train_min_sizes"):
        build_segmenter(load_config(SegConfig, None, [*TINY_SEG, "model.train_min_sizes=[0]"]).model, 1)


def test_extra_train_json_trains_on_both_sets(synthetic_data: dict, tmp_path: Path,
                                              caplog: pytest.LogCaptureFixture) -> None:
    extra = [f"data.extra_train_json=[{synthetic_data['val']}]"]
    cfg = load_config(SegConfig, None, [*TINY_SEG, f"data.train_json={synthetic_data['train']}", *extra])
    coco = load_coco(cfg.data.train_json)
    both = segmentation._training_set(cfg, coco, ["head"])
    assert len(both) == len(coco.image_ids) + len(load_coco(synthetic_data["val"]).image_ids)
    with caplog.at_level("INFO", logger="headseg.segmentation"):
        _, state = _conv_output_dtypes(synthetic_data, tmp_path / "both", extra)
    assert f"training on {synthetic_data['val']} too" in caplog.text
    assert list(state["config"]["data"]["extra_train_json"]) == [str(synthetic_data["val"])]

    # with classes (not class-agnostic) the extra set must name the same ones
    other = json.loads(Path(synthetic_data["val"]).read_text())
    other["categories"][0]["name"] = "beanie"
    (tmp_path / "other.json").write_text(json.dumps(other))
    strict = load_config(SegConfig, None, [*TINY_SEG, "data.class_agnostic=false",
                                           f"data.image_root={Path(synthetic_data['val']).parent}",
                                           f"data.extra_train_json=[{tmp_path / 'other.json'}]"])
    with pytest.raises(ValueError, match="must match unless data.class_agnostic"):
        segmentation._training_set(strict, coco, coco.class_names)


def test_bench_train_smoke(capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    rows = bench_train.main(bench_train.parse_args(
        ["--smoke", "--variants", "all", "--json", str(tmp_path / "b.json")]))
    assert [r["variant"] for r in rows] == ["all"]
    assert rows[0]["images_per_second"] > 0 and np.isfinite(rows[0]["loss_last"])
    record = json.loads((tmp_path / "b.json").read_text())
    assert record["results"][0]["levers"] == bench_train.VARIANTS["all"]
    assert "img/s" in capsys.readouterr().out


def test_bench_train_rejects_unknown_variant() -> None:
    with pytest.raises(ValueError, match="unknown"):
        bench_train.main(bench_train.parse_args(["--smoke", "--variants", "fast"]))
