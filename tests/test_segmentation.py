"""Stage 1: builders, offline weights, train/eval tools on synthetic data, resume, DDP."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from headseg.config import SegModelConfig
from headseg.segmentation import build_segmenter, load_segmenter
from headseg.engine import NonFiniteLossError, check_output_dir, load_checkpoint
from headseg.weights import INSTALL_COMMAND, load_imagenet_state_dict
from tests.conftest import TINY_SEG
from tools import eval_seg, train_seg

ROOT = Path(__file__).resolve().parents[1]


def _train_args(data: dict, out: Path, *extra: str) -> list[str]:
    return ["--out", str(out), "--no-progress", "--set", *TINY_SEG,
            f"data.train_json={data['train']}", f"data.val_json={data['val']}", *extra]


@pytest.mark.parametrize("arch", ["mobilenet_v2_fpn", "resnet50_fpn"])
def test_builders_run_on_empty_and_tiny_images(arch: str) -> None:
    cfg = SegModelConfig(arch=arch, weights="none", min_size=128, max_size=128)
    model = build_segmenter(cfg, num_classes=3).eval()
    with torch.inference_mode():
        out = model([torch.zeros(3, 100, 80), torch.rand(3, 1, 1)])
    assert len(out) == 2
    for o in out:
        assert o["boxes"].shape[1] == 4 and o["masks"].shape[1:] in ((1, 100, 80), (1, 1, 1))
    assert model.roi_heads.box_predictor.cls_score.out_features == 4  # 3 classes + background


def test_backbone_is_imagenet_initialised_offline() -> None:
    state = load_imagenet_state_dict("mobilenet_v2")
    model = build_segmenter(SegModelConfig(), num_classes=1)
    first = model.backbone.body["0"][0].weight
    assert torch.equal(first, state["features.0.0.weight"])
    frozen = [p.requires_grad for p in model.backbone.body.parameters()]
    assert not all(frozen) and any(frozen)  # early stages frozen, later ones trainable


def test_missing_weights_say_where_and_how(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    with pytest.raises(FileNotFoundError) as info:
        build_segmenter(SegModelConfig(), num_classes=1)
    assert str(tmp_path / "hub" / "checkpoints" / "mobilenet_v2-b0353104.pth") in str(info.value)
    assert INSTALL_COMMAND in str(info.value)


def test_bad_model_config_errors() -> None:
    with pytest.raises(ValueError, match="anchor_sizes has 2 sizes"):
        build_segmenter(SegModelConfig(weights="none", anchor_sizes=(16, 32)), 1)
    with pytest.raises(ValueError, match="is not one of"):
        build_segmenter(SegModelConfig(arch="vgg"), 1)
    with pytest.raises(ValueError, match="no offline ImageNet weights ship for resnet50"):
        build_segmenter(SegModelConfig(arch="resnet50_fpn"), 1)


def test_train_resume_and_eval_tools(synthetic_data: dict, tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = train_seg.main(train_seg.parse_args(_train_args(synthetic_data, out)))
    for name in ("last.pt", "best.pt", "metrics.csv", "curves.png", "config.yaml"):
        assert (out / name).is_file(), name
    assert result["epochs"] == 1
    state = load_checkpoint(out / "last.pt", "segmenter")
    assert state["class_names"] == ["head"] and state["epoch"] == 0
    assert state["config"]["model"]["min_size"] == 128  # preprocessing travels with the weights

    train_seg.main(train_seg.parse_args(_train_args(synthetic_data, out, "train.epochs=2") + ["--resume"]))
    assert load_checkpoint(out / "last.pt", "segmenter")["epoch"] == 1
    assert (out / "metrics.csv").read_text().count("\n") == 3  # header + 2 epochs

    metrics_path = tmp_path / "metrics.json"
    metrics = eval_seg.main(eval_seg.parse_args(
        [str(out / "best.pt"), str(synthetic_data["test"]), "--out", str(metrics_path), "--bootstrap", "20"]))
    assert set(json.loads(metrics_path.read_text())) == set(metrics)
    assert 0.0 <= metrics["bbox/AP50"] <= 1.0 and "segm/AP" in metrics
    # --bootstrap: bbox AP and AP50 intervals over resampled photos
    assert 0.0 <= metrics["bbox/AP50/ci_low"] <= metrics["bbox/AP50/ci_high"] <= 1.0 and "bbox/AP/ci_high" in metrics
    assert json.loads((tmp_path / "metrics_results.json").read_text()) is not None


def test_attire_categories_option(synthetic_data: dict, tmp_path: Path) -> None:
    out = tmp_path / "attire"
    train_seg.main(train_seg.parse_args(_train_args(synthetic_data, out, "data.class_agnostic=false")))
    model, cfg, names = load_segmenter(out / "best.pt")
    assert len(names) == 7 and names[0] == "bare"
    assert model.roi_heads.box_predictor.cls_score.out_features == 8


def test_resumed_run_matches_uninterrupted(synthetic_data: dict, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    import headseg.engine as seg

    straight, killed = tmp_path / "straight", tmp_path / "killed"
    train_seg.main(train_seg.parse_args(_train_args(synthetic_data, straight, "train.epochs=2")))

    real_save = seg.save_checkpoint

    def save_then_die(path, state):
        real_save(path, state)
        if Path(path).name == "last.pt":
            raise KeyboardInterrupt("killed right after the first epoch's checkpoint")

    monkeypatch.setattr(seg, "save_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        train_seg.main(train_seg.parse_args(_train_args(synthetic_data, killed, "train.epochs=2")))
    monkeypatch.setattr(seg, "save_checkpoint", real_save)
    train_seg.main(train_seg.parse_args(_train_args(synthetic_data, killed, "train.epochs=2") + ["--resume"]))
    a = load_checkpoint(straight / "last.pt", "segmenter")["model"]
    b = load_checkpoint(killed / "last.pt", "segmenter")["model"]
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_non_finite_loss_stops_with_step(synthetic_data: dict, tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    import headseg.segmentation as seg

    real_build = seg.build_segmenter

    def build_nan(cfg, num_classes):
        model = real_build(cfg, num_classes)
        forward = model.forward

        def nan_forward(images, targets=None):
            out = forward(images, targets)
            if model.training:
                out["loss_classifier"] = out["loss_classifier"] * float("nan")
            return out

        model.forward = nan_forward
        return model

    monkeypatch.setattr(seg, "build_segmenter", build_nan)
    with pytest.raises(NonFiniteLossError, match=r"epoch 1, step 1"):
        train_seg.main(train_seg.parse_args(_train_args(synthetic_data, tmp_path / "nan")))
    assert not (tmp_path / "nan" / "last.pt").exists()


def test_unwritable_output_fails_early(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(OSError, match="not writable"):
        check_output_dir(blocker / "run")


def test_unknown_config_key_from_the_tool(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="did you mean 'epochs'"):
        train_seg.main(train_seg.parse_args(["--out", str(tmp_path), "--set", "train.epoch=3"]))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_two_processes_gloo(synthetic_data: dict, tmp_path: Path) -> None:
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
           str(ROOT / "tools" / "train_seg.py"), *_train_args(synthetic_data, out)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    state = load_checkpoint(out / "last.pt", "segmenter")
    assert state["epoch"] == 0
    assert not any(k.startswith("module.") for k in state["model"])  # saved unwrapped


def test_boxes_from_masks_pixel_extent_and_empty_fallback() -> None:
    from headseg.segmentation import boxes_from_masks

    masks = torch.zeros(3, 10, 12, dtype=torch.bool)
    masks[0, 2:5, 3:9] = True
    masks[1, 7, 11] = True  # one pixel at the corner
    fallback = torch.tensor([[0.0, 0, 1, 1], [0, 0, 1, 1], [1.5, 2.5, 3.5, 4.5]])
    out = boxes_from_masks(masks, fallback)
    assert out.tolist() == [[3, 2, 9, 5], [11, 7, 12, 8], [1.5, 2.5, 3.5, 4.5]]
    assert boxes_from_masks(masks[:0], fallback[:0]).shape == (0, 4)


@pytest.mark.parametrize("seed", range(4))
def test_batched_mask_pasting_matches_torchvision(seed: int) -> None:
    from torchvision.models.detection.roi_heads import paste_masks_in_image

    from headseg.segmentation import paste_masks

    gen = torch.Generator().manual_seed(seed)
    h, w = (int(v) for v in torch.randint(1, 200, (2,), generator=gen))
    n = 9
    masks = torch.rand(n, 1, 28, 28, generator=gen)
    size = torch.tensor([w, h], dtype=torch.float32)
    corner = torch.rand(n, 2, generator=gen) * size * 0.9
    extent = torch.rand(n, 2, generator=gen) * size * 0.6
    boxes = torch.cat([corner, torch.minimum(corner + extent, size)], dim=1)
    boxes[0] = torch.tensor([0.0, 0.0, w, h])  # a box filling the image
    boxes[1, 2:] = boxes[1, :2] + 0.3  # smaller than a pixel
    expected = paste_masks_in_image(masks, boxes, (h, w))
    got = paste_masks(masks, boxes, (h, w))
    assert got.shape == expected.shape == (n, 1, h, w)
    assert (got - expected).abs().max() < 1e-5
    assert paste_masks(masks[:0], boxes[:0], (h, w)).shape == (0, 1, h, w)


@pytest.mark.parametrize("arch", ["mobilenet_v2_fpn", "resnet50_fpn"])
def test_folding_frozen_batchnorm_keeps_backbone_outputs(arch: str) -> None:
    import copy

    from torchvision.ops import FrozenBatchNorm2d

    from headseg.segmentation import fold_frozen_batchnorm

    model = build_segmenter(SegModelConfig(arch=arch, weights="none", fpn_channels=32), 1).eval()
    gen = torch.Generator().manual_seed(0)
    norms = [m for m in model.modules() if isinstance(m, FrozenBatchNorm2d)]
    for m in norms:  # trained-looking statistics, so that folding has something to fold
        c = m.weight.shape[0]
        m.weight.copy_(0.5 + torch.rand(c, generator=gen))
        m.bias.copy_(torch.randn(c, generator=gen) * 0.1)
        m.running_mean.copy_(torch.randn(c, generator=gen) * 0.1)
        m.running_var.copy_(0.5 + torch.rand(c, generator=gen))
    folded = copy.deepcopy(model)
    assert fold_frozen_batchnorm(folded.backbone) == len(norms)
    assert not any(isinstance(m, FrozenBatchNorm2d) for m in folded.modules())
    x = torch.rand(1, 3, 64, 96)
    with torch.inference_mode():
        want, got = model.backbone(x), folded.backbone(x.contiguous(memory_format=torch.channels_last))
    for level in want:
        scale = want[level].abs().max()
        assert (got[level] - want[level]).abs().max() <= 1e-4 * scale, level


def test_evaluation_matches_classes_by_name_not_position(synthetic_data: dict, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """An evaluation file with the same names under other ids must not swap classes."""
    import headseg.segmentation as seg
    from headseg.data import load_coco
    from headseg.segmentation import Detections, evaluate_segmenter

    data = json.loads(Path(synthetic_data["val"]).read_text())
    train_names = [c["name"] for c in sorted(data["categories"], key=lambda c: c["id"])]
    # The same categories, numbered backwards: the i-th name by id is now another class.
    new_id = {c["id"]: len(data["categories"]) - i for i, c in enumerate(data["categories"])}
    data["categories"] = [{**c, "id": new_id[c["id"]]} for c in data["categories"]]
    data["annotations"] = [{**a, "category_id": new_id[a["category_id"]]} for a in data["annotations"]]
    path = Path(synthetic_data["val"]).with_name("val_renumbered.json")
    path.write_text(json.dumps(data))
    coco = load_coco(path)
    name_of = dict(coco.categories)

    def perfect(model, images, box_from_mask, mask_thresh=0.5, amp=False):
        """The ground truth itself, labelled with the model's own class order."""
        out = []
        for image in images:
            image_id = next(ids)
            anns = [a for a in coco.annotations[image_id] if not a.get("iscrowd", 0)]
            boxes = torch.tensor([[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in anns)]).reshape(-1, 4)
            masks = torch.zeros((len(anns), *image.shape[-2:]), dtype=torch.bool)
            for m, (x0, y0, x1, y1) in zip(masks, boxes.round().int().tolist()):
                m[y0:y1, x0:x1] = True
            labels = torch.tensor([train_names.index(name_of[a["category_id"]]) + 1 for a in anns])
            out.append(Detections(boxes.float(), torch.ones(len(anns)), labels.long(), masks))
        return out

    ids = iter(coco.image_ids)
    monkeypatch.setattr(seg, "detect", perfect)
    metrics, _ = evaluate_segmenter(torch.nn.Identity(), coco, torch.device("cpu"), train_names, progress=False)
    assert metrics["bbox/AP50"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="not categories of"):
        evaluate_segmenter(torch.nn.Identity(), coco, torch.device("cpu"), ["helmet"], progress=False)
