"""Stage 3: HeadwearPipeline and tools/predict.py with tiny untrained models."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from headseg import Head, HeadwearPipeline, ImageResult
from headseg.classification import build_classifier, classifier_checkpoint
from headseg.config import ClsConfig, SegConfig, load_config
from headseg.segmentation import build_segmenter, segmenter_checkpoint
from headseg.engine import save_checkpoint
from tests.conftest import TINY_SEG
from tools import predict

CLASSES = ["bare", "hard_hat", "cap"]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    out = tmp_path_factory.mktemp("ckpt")
    torch.manual_seed(0)
    seg_cfg = load_config(SegConfig, None, [s for s in TINY_SEG if s.startswith("model.")])
    seg = build_segmenter(seg_cfg.model, 1)
    cls_cfg = load_config(ClsConfig, None, ["model.weights=none", "crop.size=32"])
    clf = build_classifier(cls_cfg.model, len(CLASSES))
    save_checkpoint(out / "seg.pt", segmenter_checkpoint(seg, seg_cfg, ["head"]))
    save_checkpoint(out / "cls.pt", classifier_checkpoint(clf, cls_cfg, CLASSES))
    return out / "seg.pt", out / "cls.pt"


@pytest.fixture(scope="module")
def pipe(checkpoints: tuple[Path, Path]) -> HeadwearPipeline:
    # An untrained segmenter scores everything low: threshold 0 makes it return heads.
    return HeadwearPipeline.from_checkpoint(*checkpoints, device="cpu", score_thresh=0.0)


def _image(seed: int, h: int = 96, w: int = 128) -> np.ndarray:
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
    cv2.ellipse(image, (w // 2, h // 2), (15, 20), 0, 0, 360, (200, 160, 130), -1)
    return image


def test_single_image_gives_typed_result(pipe: HeadwearPipeline) -> None:
    result = pipe(_image(0))
    assert isinstance(result, ImageResult) and result.image_size == (96, 128)
    assert len(result) > 0
    for head in result.heads:
        assert isinstance(head, Head)
        x0, y0, x1, y1 = head.box_xyxy
        assert 0 <= x0 < x1 <= 128 and 0 <= y0 < y1 <= 96
        assert head.mask.shape == (96, 128) and head.mask.dtype == bool and head.mask.any()
        assert 0 <= head.score <= 1 and head.label in CLASSES
        assert head.probs[head.label] == pytest.approx(head.label_prob)
        assert sum(head.probs.values()) == pytest.approx(1.0, abs=1e-4)
    scores = [h.score for h in result.heads]
    assert scores == sorted(scores, reverse=True)


def test_batch_equals_one_by_one(checkpoints: tuple[Path, Path]) -> None:
    images = [_image(i) for i in range(3)] + [_image(9, 80, 60)]
    batched = HeadwearPipeline.from_checkpoint(*checkpoints, device="cpu", score_thresh=0.0, batch_size=4)
    single = HeadwearPipeline.from_checkpoint(*checkpoints, device="cpu", score_thresh=0.0, batch_size=1)
    for a, b in zip(batched(images), [single(im) for im in images]):
        assert len(a) == len(b)
        for ha, hb in zip(a.heads, b.heads):
            assert np.allclose(ha.box_xyxy, hb.box_xyxy, atol=1e-3)
            assert ha.label == hb.label and ha.label_prob == pytest.approx(hb.label_prob, abs=1e-4)
            assert (ha.mask != hb.mask).mean() < 1e-3


def test_colour_order_and_paths(pipe: HeadwearPipeline, tmp_path: Path) -> None:
    image = _image(1)
    rgb = pipe(image)
    bgr = pipe(np.ascontiguousarray(image[:, :, ::-1]), color_order="BGR")
    assert [h.box_xyxy for h in rgb.heads] == [h.box_xyxy for h in bgr.heads]
    path = tmp_path / "im.png"
    cv2.imwrite(str(path), image[:, :, ::-1])
    from_path = pipe(path)
    assert from_path.source == str(path)
    assert [h.box_xyxy for h in from_path.heads] == [h.box_xyxy for h in rgb.heads]
    assert len(pipe(np.zeros((40, 50), np.uint8)).heads) >= 0  # grayscale is accepted


def test_thresholds(checkpoints: tuple[Path, Path]) -> None:
    image = _image(2)
    low = HeadwearPipeline.from_checkpoint(*checkpoints, device="cpu", score_thresh=0.0)(image)
    cut = float(np.median([h.score for h in low.heads]))
    high = HeadwearPipeline.from_checkpoint(*checkpoints, device="cpu", score_thresh=cut)(image)
    assert 0 < len(high) < len(low) and all(h.score >= cut for h in high.heads)
    assert len(HeadwearPipeline.from_checkpoint(*checkpoints, device="cpu", score_thresh=1.0)(image)) == 0
    with pytest.raises(ValueError, match="mask_thresh"):
        HeadwearPipeline.from_checkpoint(*checkpoints, device="cpu", mask_thresh=1.5)


def test_no_heads_is_an_empty_result(checkpoints: tuple[Path, Path]) -> None:
    pipe = HeadwearPipeline.from_checkpoint(*checkpoints, device="cpu", score_thresh=1.0)
    result = pipe(np.zeros((64, 64, 3), np.uint8))
    assert result.heads == () and result.counts() == {}
    assert result.to_json()["heads"] == [] and result.to_coco_results(1, {"bare": 1}) == []
    assert result.draw(np.zeros((64, 64, 3), np.uint8)).shape == (64, 64, 3)


@pytest.mark.parametrize("bad, error, message", [
    (np.zeros((10, 10, 3), np.float32), TypeError, "uint8"),
    (np.zeros((10, 10, 5), np.uint8), ValueError, "shape"),
    (np.zeros((0, 10, 3), np.uint8), ValueError, "shape"),
    ([], ValueError, "empty list"),
    (42, TypeError, "int"),
    ("/no/such/image.png", FileNotFoundError, "does not exist"),
])
def test_bad_input(pipe: HeadwearPipeline, bad, error, message) -> None:
    with pytest.raises(error, match=message):
        pipe(bad)


def test_corrupt_file_is_a_clear_error(pipe: HeadwearPipeline, tmp_path: Path) -> None:
    path = tmp_path / "broken.jpg"
    path.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    with pytest.raises(ValueError, match="broken.jpg cannot be decoded"):
        pipe(path)


def test_exports_and_drawing(pipe: HeadwearPipeline) -> None:
    image = _image(3)
    result = pipe(image)
    payload = json.loads(json.dumps(result.to_json()))
    assert len(payload["heads"]) == len(result)
    assert set(payload["heads"][0]) == {"box_xyxy", "score", "label", "label_prob", "probs", "attributes", "mask_rle"}
    records = result.to_coco_results(7, {name: i + 1 for i, name in enumerate(CLASSES)})
    assert len(records) == len(result) and records[0]["image_id"] == 7
    x0, y0, x1, y1 = result.heads[0].box_xyxy
    assert records[0]["bbox"] == pytest.approx([x0, y0, x1 - x0, y1 - y0])
    assert records[0]["score"] == pytest.approx(result.heads[0].score * result.heads[0].label_prob)
    drawn = result.draw(image)
    assert drawn.shape == image.shape and drawn.dtype == np.uint8 and not np.array_equal(drawn, image)
    with pytest.raises(ValueError, match="this result is for"):
        result.draw(image[:10])


def _write_video(path: Path, frames: int = 5) -> None:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 5.0, (128, 96))
    for i in range(frames):
        writer.write(_image(i)[:, :, ::-1].copy())
    writer.release()


def test_predict_tool_skips_bad_files_and_reads_video(checkpoints: tuple[Path, Path], tmp_path: Path,
                                                      capsys: pytest.CaptureFixture) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(2):
        cv2.imwrite(str(folder / f"img{i}.jpg"), _image(i)[:, :, ::-1])
    (folder / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    _write_video(folder / "clip.mp4", frames=5)
    out = tmp_path / "out"
    seg, cls = checkpoints
    status = predict.main(predict.parse_args(
        [str(folder), "--out", str(out), "--seg", str(seg), "--cls", str(cls), "--score-thresh", "0.0"]))
    assert status == 1  # the corrupt file was skipped, and the exit status says so
    records = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert len(records) == 2 + 5
    assert sorted(r["frame"] for r in records if "frame" in r) == list(range(5))
    summary = json.loads((out / "summary.json").read_text())
    assert summary["processed"] == 3 and len(summary["skipped"]) == 1
    assert "corrupt.png" in summary["skipped"][0]
    assert (out / "img0.png").is_file() and (out / "clip.mp4").stat().st_size > 0
    assert "corrupt.png" in capsys.readouterr().err


def test_predict_tool_reports_missing_inputs(checkpoints: tuple[Path, Path], tmp_path: Path) -> None:
    seg, cls = checkpoints
    empty = tmp_path / "empty"
    empty.mkdir()
    status = predict.main(predict.parse_args(
        [str(empty), str(tmp_path / "nope.jpg"), "--out", str(tmp_path / "o"), "--seg", str(seg),
         "--cls", str(cls)]))
    assert status == 1
    summary = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert summary["files"] == 0 and len(summary["skipped"]) == 2


def test_list_inputs_names_each_file_once_and_what_matched_nothing(tmp_path: Path) -> None:
    """The one listing predict.py and the Ray engine share: folders, globs, files, repeats, misses."""
    from headseg.io import list_inputs

    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("b.JPG", "a.png", "clip.mp4", "notes.txt"):
        (folder / name).write_bytes(b"")
    (tmp_path / "empty").mkdir()
    files, problems = list_inputs([folder, str(folder / "*.png"), str(folder / "notes.txt"),
                                   tmp_path / "empty", str(tmp_path / "*.gif"), str(tmp_path / "nope.jpg")])
    assert files == [folder / "a.png", folder / "b.JPG", folder / "clip.mp4", folder / "notes.txt"]
    assert problems == [f"{tmp_path / 'empty'}: folder holds no images or videos",
                        f"{tmp_path / '*.gif'}: pattern matches no file",
                        f"{tmp_path / 'nope.jpg'}: no such file or folder"]
    assert list_inputs([]) == ([], [])


def test_classify_external_boxes(pipe: HeadwearPipeline) -> None:
    image = _image(4)
    result = pipe.classify(image, np.array([[40, 30, 80, 70], [0, 0, 10, 12]]), np.array([0.9, 0.4]))
    assert [h.score for h in result.heads] == pytest.approx([0.9, 0.4])
    assert result.heads[0].mask[50, 60] and not result.heads[0].mask[31, 41]  # derived ellipse
    assert len(pipe.classify(image, np.zeros((0, 4)), np.zeros(0))) == 0


def test_haar_baseline_and_joint_evaluation(checkpoints: tuple[Path, Path], synthetic_data: dict,
                                            tmp_path: Path) -> None:
    from headseg.baselines import HaarFaceDetector
    from tools import eval_pipeline

    boxes, scores = HaarFaceDetector()(_image(5))
    assert boxes.shape[1] == 4 and boxes.shape[0] == scores.shape[0]
    assert np.all((scores > 0) & (scores < 1))

    # a classifier whose labels are the synthetic attire categories
    seg, _ = checkpoints
    names = json.loads(Path(synthetic_data["test"]).read_text())["categories"]
    cls_cfg = load_config(ClsConfig, None, ["model.weights=none", "crop.size=32"])
    clf = build_classifier(cls_cfg.model, len(names))
    cls_path = tmp_path / "cls7.pt"
    save_checkpoint(cls_path, classifier_checkpoint(clf, cls_cfg, [c["name"] for c in names]))
    out = tmp_path / "joint.json"
    report = eval_pipeline.main(eval_pipeline.parse_args(
        [str(synthetic_data["test"]), "--seg", str(seg), "--cls", str(cls_path), "--haar",
         "--op-thresh", "two_stage=0.3", "--out", str(out)]))
    for system in ("two_stage", "haar"):
        for key in ("bbox/AP", "bbox/AP50", "precision", "recall"):
            assert 0.0 <= report[f"{system}/{key}"] <= 1.0
        # the F1-best threshold of the sweep is at least as good as the operating point
        assert report[f"{system}/f1_best_thresh"] in eval_pipeline.SWEEP
        assert report[f"{system}/f1_at_best_thresh"] >= report[f"{system}/f1"]
        # every swept point is kept: test's P/R at a threshold read on val, from one run
        best = report[f"{system}/f1_best_thresh"]
        assert report[f"{system}/at_{best:.2f}/f1"] == report[f"{system}/f1_at_best_thresh"]
    assert report["two_stage/at_0.30/precision"] == report["two_stage/precision"]
    assert report["two_stage/op_thresh"] == 0.3 and report["haar/op_thresh"] == 0.5
    assert json.loads(out.read_text()) == pytest.approx(report)
    with pytest.raises(ValueError, match="SYSTEM=T"):
        eval_pipeline.main(eval_pipeline.parse_args(
            [str(synthetic_data["test"]), "--seg", str(seg), "--cls", str(cls_path), "--op-thresh", "bogus=1"]))


def test_large_images_are_shrunk_and_mapped_back(checkpoints: tuple[Path, Path]) -> None:
    pipe = HeadwearPipeline.from_checkpoint(*checkpoints, device="cpu", score_thresh=0.0, max_side=128)
    big = cv2.resize(_image(6), (512, 384), interpolation=cv2.INTER_NEAREST)
    result = pipe(big)
    assert result.image_size == (384, 512)
    small = HeadwearPipeline.from_checkpoint(*checkpoints, device="cpu", score_thresh=0.0)(
        cv2.resize(big, (128, 96), interpolation=cv2.INTER_AREA))
    assert len(result) == len(small)
    for a, b in zip(result.heads, small.heads):
        assert a.mask.shape == (384, 512)
        assert np.allclose(a.box_xyxy, np.array(b.box_xyxy) * 4, atol=1e-3)


def test_bundled_default_finds_heads_in_a_sample_photo() -> None:
    from headseg.pipeline import ASSETS, PRETRAINED

    files = {name for pair in PRETRAINED.values() for name in pair}
    assert files == {p.name for p in ASSETS.glob("*.pt")}  # nothing bundled that no model uses
    assert sum((ASSETS / name).stat().st_size for name in files) < 30 * 2**20  # the wheel stays small
    pipe = HeadwearPipeline.from_pretrained(device="cpu")
    assert dict(pipe.schema.attributes) == {"headwear": ("helmet", "none"),
                                            "face_mask": ("with_mask", "without_mask", "incorrect", "not_visible")}
    root = Path(__file__).resolve().parents[1]
    result = pipe(root / "docs" / "samples" / "maksssksksss134.jpg")
    assert len(result) >= 1
    for head in result.heads:
        assert head.score >= pipe.score_thresh
        assert set(head.attributes) == {"headwear", "face_mask"}
        assert all(p.value in pipe.schema.attributes[name] for name, p in head.attributes.items())


HHW_TEST = Path(__file__).resolve().parents[2] / "shared" / "data" / "hhw" / "test"


def test_bundled_models_by_name_and_unknown_names() -> None:
    from headseg.pipeline import OPERATING_FLIP, OPERATING_THRESH, load_pipeline

    pipe = HeadwearPipeline.from_pretrained(device="cpu", model="facemask")
    assert pipe.class_names == ["with_mask", "without_mask", "mask_weared_incorrect"]
    assert pipe.score_thresh == OPERATING_THRESH["facemask"] and pipe.flip is OPERATING_FLIP["facemask"] is False
    # "hhw", the hard-hat model's former name, is the default now
    pipe = HeadwearPipeline.from_pretrained(device="cpu", model="hhw")
    assert list(pipe.schema.attributes) == ["headwear", "face_mask"]
    assert pipe.score_thresh == OPERATING_THRESH["hhw"]  # its operating point, unless asked otherwise
    default = HeadwearPipeline.from_pretrained(device="cpu", model="hhw", score_thresh=None).score_thresh
    assert default == OPERATING_THRESH["hhw"]
    assert HeadwearPipeline.from_pretrained(device="cpu", model="hhw", score_thresh=0.9).score_thresh == 0.9
    # the test-time flip likewise: the model's own choice unless asked (the command lines' --flip/--no-flip)
    assert pipe.flip is OPERATING_FLIP["hhw"] is True
    assert load_pipeline(None, None, "default", "cpu", flip=None).flip is True
    assert HeadwearPipeline.from_pretrained(device="cpu", flip=False).flip is False
    with pytest.raises(ValueError, match="no bundled model 'cpu'.*default.*facemask.*hhw"):
        HeadwearPipeline.from_pretrained(model="cpu")
    with pytest.raises(ValueError, match="is a bundled model, not a device"):
        HeadwearPipeline.from_pretrained("hhw")
    if not HHW_TEST.is_dir():
        pytest.skip("../shared/data/hhw is absent: the model loaded, photos not checked")
    # The first test photo with three or more annotated heads: the model finds at least one,
    # and says helmet or none for each.
    labels = sorted((HHW_TEST / "labels").glob("*.txt"))
    label = next(p for p in labels if len(p.read_text().split()) >= 3 * 5)  # 5 numbers a box
    result = pipe(HHW_TEST / "images" / f"{label.stem}.jpg")
    assert len(result) >= 1
    assert all(h.attributes["headwear"].value in ("helmet", "none") and h.score >= pipe.score_thresh
               for h in result.heads)


def test_benchmark_tool_times_all_systems_and_writes_json(checkpoints: tuple[Path, Path],
                                                           tmp_path: Path) -> None:
    from tools import benchmark

    images = tmp_path / "images"
    images.mkdir()
    for seed in range(2):
        cv2.imwrite(str(images / f"{seed}.png"), _image(seed, 64, 80))
    out = tmp_path / "bench.json"
    results = benchmark.main(benchmark.parse_args(
        ["--images", str(images), "--seg", str(checkpoints[0]), "--cls", str(checkpoints[1]),
         "--device", "cpu", "--repeats", "1", "--threads", "1", "--profile", "--out", str(out),
         "--seg-set", "rpn_post_nms_top_n_test=50", "--resize", "48x40", "--num-images", "3",
         "--batch-size", "2"]))
    assert [r["system"] for r in results] == list(benchmark.SYSTEMS)
    for r in results:
        assert r["images"] == 3 and r["images_per_second"] > 0 and r["peak_cpu_rss_mb"] > 0
        assert r["ms_per_image"] == pytest.approx(1000 / r["images_per_second"])
    headseg = results[benchmark.SYSTEMS.index("headseg")]
    assert 0.0 <= headseg["classification_fraction"] <= 1.0
    assert set(headseg["profile_ms_per_image"]) >= {"backbone_fpn", "rpn", "crops_classify_results"}
    assert json.loads(out.read_text())["results"] == results
    loaded = benchmark._load_images(benchmark.parse_args(["--images", str(images), "--resize", "48x40",
                                                          "--num-images", "5"]))
    assert [im.shape for im in loaded] == [(40, 48, 3)] * 5 and np.array_equal(loaded[0], loaded[2])
    with pytest.raises(ValueError, match="expected WxH"):
        benchmark._load_images(benchmark.parse_args(["--images", str(images), "--resize", "640"]))


def test_segmenter_inference_fields_can_be_overridden(checkpoints: tuple[Path, Path]) -> None:
    pipe = HeadwearPipeline.from_checkpoint(*checkpoints, device="cpu",
                                            seg_overrides={"min_size": 80, "rpn_post_nms_top_n_test": 50})
    assert pipe.segmenter.transform.min_size == (80,)
    assert pipe.segmenter.rpn._post_nms_top_n["testing"] == 50
    assert pipe.seg_config.model.min_size == 80
    with pytest.raises(ValueError, match="min_siz"):
        HeadwearPipeline.from_checkpoint(*checkpoints, device="cpu", seg_overrides={"min_siz": 80})


def test_pack_model_halves_weights_and_stores_inference_settings(checkpoints: tuple[Path, Path],
                                                                  tmp_path: Path) -> None:
    from tools import pack_model

    seg, cls = checkpoints
    packed_seg = pack_model.main(pack_model.parse_args(
        [str(seg), str(tmp_path / "seg.pt"), "--set", "min_size=80", "rpn_post_nms_top_n_test=50"]))
    packed_cls = pack_model.main(pack_model.parse_args([str(cls), str(tmp_path / "cls.pt")]))
    state = torch.load(packed_seg, map_location="cpu", weights_only=False)
    assert all(v.dtype == torch.float16 for v in state["model"].values() if v.is_floating_point())
    assert "optimizer" not in state
    original = HeadwearPipeline.from_checkpoint(seg, cls, device="cpu", score_thresh=0.0,
                                                seg_overrides={"min_size": 80, "rpn_post_nms_top_n_test": 50})
    packed = HeadwearPipeline.from_checkpoint(packed_seg, packed_cls, device="cpu", score_thresh=0.0)
    assert packed.seg_config.model.min_size == 80
    image = _image(7)
    a, b = original(image), packed(image)
    assert len(a) == len(b) > 0
    # fp16 rounding of the weights moves boxes by far less than a pixel
    assert np.allclose([h.box_xyxy for h in a.heads], [h.box_xyxy for h in b.heads], atol=0.5)
    with pytest.raises(ValueError, match="KEY one of"):
        pack_model.main(pack_model.parse_args([str(seg), str(tmp_path / "x.pt"), "--set", "lr=1"]))
    with pytest.raises(ValueError, match="segmenter settings"):
        pack_model.main(pack_model.parse_args([str(cls), str(tmp_path / "x.pt"), "--set", "min_size=80"]))


def test_classifier_batchnorm_folding_keeps_outputs(checkpoints: tuple[Path, Path]) -> None:
    from headseg.classification import load_classifier
    from headseg.pipeline import _fold_batchnorm

    model, _, _ = load_classifier(checkpoints[1])
    model.eval()
    folded = _fold_batchnorm(model)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    x = torch.rand(3, 3, 32, 32)
    with torch.inference_mode():
        assert torch.allclose(folded(x), model(x), atol=1e-4)

    class Untraceable(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x if x.sum() > 0 else -x  # data-dependent branch

    untraceable = Untraceable()
    assert _fold_batchnorm(untraceable) is not untraceable


def test_test_time_flip_averages_each_head_crop_with_its_mirror_image(checkpoints: tuple[Path, Path]) -> None:
    from headseg.pipeline import load_pipeline

    plain = HeadwearPipeline.from_checkpoint(*checkpoints, score_thresh=0.0)
    flipped = HeadwearPipeline.from_checkpoint(*checkpoints, score_thresh=0.0, flip=True)
    mirrored = HeadwearPipeline.from_checkpoint(*checkpoints, score_thresh=0.0)

    class Mirror(torch.nn.Module):
        def __init__(self, model: torch.nn.Module) -> None:
            super().__init__()
            self.model = model

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.model(x.flip(-1))

    # An untrained MobileNetV2 gives the same output whatever the input; this classifier sees position.
    torch.manual_seed(0)
    plain.classifier = flipped.classifier = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 3))
    mirrored.classifier = Mirror(plain.classifier)
    image = _image(3)
    a, b, c = plain(image), flipped(image), mirrored(image)
    assert len(a) == len(b) > 0
    for ha, hb, hc in zip(a.heads, b.heads, c.heads):
        assert hb.box_xyxy == ha.box_xyxy and hb.score == ha.score  # stage 1 is untouched
        for k in CLASSES:
            assert hb.probs[k] == pytest.approx((ha.probs[k] + hc.probs[k]) / 2, abs=1e-5)
    assert any(hb.probs != ha.probs for ha, hb in zip(a.heads, b.heads))
    # checkpoints run without the flip unless asked; the command lines leave it to the model
    assert load_pipeline(*checkpoints, flip=None).flip is False
    flags = [predict.parse_args(["x", "--out", "o", *f]).flip for f in ([], ["--flip"], ["--no-flip"])]
    assert flags == [None, True, False]


def test_unfoldable_classifier_is_copied_not_changed() -> None:
    """The fallback for a model torch.fx cannot trace still works on a copy."""
    from headseg.pipeline import _fold_batchnorm

    class Untraceable(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv, self.bn = torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.bn(self.conv(x))
            return y if y.sum() > 0 else -y  # data-dependent branch

    model = Untraceable().train()
    folded = _fold_batchnorm(model)
    assert folded is not model and not folded.training
    assert model.training and model.bn.training  # the caller's model keeps its mode
    folded.to(memory_format=torch.channels_last)
    assert model.conv.weight.is_contiguous()  # ... and its layout


def test_score_threshold_defaults_to_the_checkpoints_own(checkpoints: tuple[Path, Path]) -> None:
    pipe = HeadwearPipeline.from_checkpoint(*checkpoints, device="cpu", seg_overrides={"box_score_thresh": 0.3})
    assert pipe.score_thresh == pytest.approx(0.3) and pipe.segmenter.roi_heads.score_thresh == pytest.approx(0.3)
    assert HeadwearPipeline.from_checkpoint(*checkpoints, device="cpu").score_thresh == pytest.approx(0.05)
    assert HeadwearPipeline.from_checkpoint(*checkpoints, device="cpu", score_thresh=0.7).score_thresh == 0.7
    with pytest.raises(ValueError, match="score_thresh"):
        pipe.score_thresh = 2.0


def test_constructor_takes_loaded_bundles(checkpoints: tuple[Path, Path]) -> None:
    from headseg import Classifier, Segmenter

    seg, clf = Segmenter.load(checkpoints[0]), Classifier.load(checkpoints[1])
    pipe = HeadwearPipeline(seg, clf, score_thresh=0.0)
    assert pipe.class_names == CLASSES and pipe.preprocessing.input_size == 32
    with pytest.raises(TypeError, match="Segmenter.load"):
        HeadwearPipeline(seg.model, clf.model)  # the loose models of the old constructor


def test_result_array_views_and_filtering(pipe: HeadwearPipeline) -> None:
    result = pipe(_image(0))
    n, (h, w) = len(result), result.image_size
    assert n > 1
    assert result.boxes.shape == (n, 4) and result.boxes.dtype == np.float32
    assert result.scores.shape == (n,) and result.label_probs.shape == (n,)
    assert result.masks.shape == (n, h, w) and result.masks.dtype == bool
    assert list(result.labels) == [hd.label for hd in result.heads]
    top = result[result.scores >= np.median(result.scores)]
    assert isinstance(top, ImageResult) and 0 < len(top) < n + 1 and top.image_size == (h, w)
    assert len(result[0]) == 1 and len(result[:2]) == 2 and len(result[[0, 1]]) == 2
    assert len(result.filter(min_score=1.1)) == 0 and len(result.filter()) == n
    label = result.heads[0].label
    assert all(hd.label == label for hd in result.filter(labels=[label]).heads)
    empty = result[np.zeros(n, bool)]
    assert empty.boxes.shape == (0, 4) and empty.masks.shape == (0, h, w)
    with pytest.raises(ValueError, match="boolean index"):
        result[np.ones(n + 1, bool)]


def test_label_colours_are_distinct_per_class() -> None:
    from headseg.pipeline import label_color

    for names in (["with_mask", "without_mask", "mask_weared_incorrect"], ["helmet", "head"],
                  ["bare", "hard_hat", "cap", "beanie", "hood", "turban", "hijab"]):
        assert len({label_color(n, names) for n in names}) == len(names), names


def test_bundled_checkpoints_load_weights_only() -> None:
    from headseg.pipeline import ASSETS

    for path in sorted(ASSETS.glob("*.pt")):
        state = torch.load(path, map_location="cpu", weights_only=True)
        assert state["kind"].startswith("headseg-")


def test_stage_one_equals_the_plain_segmenter(checkpoints: tuple[Path, Path]) -> None:
    """Folded BatchNorm, channels-last and batched pasting change no detection."""
    from torchvision.ops import FrozenBatchNorm2d

    from headseg.classification import Classifier
    from headseg.segmentation import Segmenter

    seg = Segmenter.load(checkpoints[0])
    segmenter = seg.model
    segmenter.roi_heads.score_thresh = 0.0
    pipe = HeadwearPipeline(seg, Classifier.load(checkpoints[1]), score_thresh=0.0)
    assert any(isinstance(m, FrozenBatchNorm2d) for m in segmenter.modules())  # the caller's model is kept
    images = [torch.from_numpy(_image(seed)).permute(2, 0, 1).float() / 255 for seed in range(2)]
    with torch.inference_mode():
        want = segmenter(images)
        got = pipe._segment(images)
    for plain, (boxes, scores, masks) in zip(want, got):
        keep = (plain["masks"][:, 0] > pipe.mask_thresh).flatten(1).any(1)
        assert len(boxes) == int(keep.sum()) > 0
        assert torch.allclose(scores, plain["scores"][keep], atol=1e-4)
        assert torch.equal(masks, plain["masks"][keep, 0] > pipe.mask_thresh)


def test_pack_model_weighs_a_classifier_value(checkpoints: tuple[Path, Path], tmp_path: Path) -> None:
    from headseg.classification import Classifier, predict_probs
    from tools import pack_model

    seg, cls = checkpoints
    name = CLASSES[1]
    weighted = pack_model.main(pack_model.parse_args([str(cls), str(tmp_path / "w.pt"), "--fp32",
                                                      "--value-weight", f"{name}=0.25"]))
    before, after = Classifier.load(cls), Classifier.load(weighted)
    x = torch.rand(6, 3, 32, 32)
    p, q = predict_probs(before.model, x), predict_probs(after.model, x)
    # the value's share is multiplied by 0.25 and the attribute renormalised: the others' ratios stay
    expected = p.clone()
    expected[:, 1] *= 0.25
    assert torch.allclose(q, expected / expected.sum(1, keepdim=True), atol=1e-5)
    state = torch.load(weighted, map_location="cpu", weights_only=True)
    assert state["value_weights"] == {name: 0.25}
    # packed again (fp16 too): the weights multiply, and the record follows
    again = pack_model.main(pack_model.parse_args([str(weighted), str(tmp_path / "w2.pt"), "--value-weight",
                                                   f"{name}=2"]))
    assert torch.load(again, map_location="cpu", weights_only=True)["value_weights"] == {name: 0.5}
    r = predict_probs(Classifier.load(again).model, x)
    expected = p.clone()
    expected[:, 1] *= 0.5
    assert torch.allclose(r, expected / expected.sum(1, keepdim=True), atol=2e-3)  # fp16 weights
    with pytest.raises(ValueError, match="no output 'glasses'"):
        pack_model.main(pack_model.parse_args([str(cls), str(tmp_path / "x.pt"), "--value-weight", "glasses=0.5"]))
    for bad in ("0", "-1", "abc", "true"):
        with pytest.raises(ValueError, match="positive number"):
            pack_model.main(pack_model.parse_args([str(cls), str(tmp_path / "x.pt"), "--value-weight", f"{name}={bad}"]))
    with pytest.raises(ValueError, match="weighs a classifier"):
        pack_model.main(pack_model.parse_args([str(seg), str(tmp_path / "x.pt"), "--value-weight", "head=0.5"]))
