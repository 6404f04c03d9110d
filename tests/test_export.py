"""Exports match PyTorch: classifier to ONNX and TorchScript, segmenter to TorchScript."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from headseg.classification import build_classifier
from headseg.config import ClsModelConfig, SegConfig, load_config
from headseg.export import (
    check_segmenter_onnx,
    export_classifier_onnx,
    export_classifier_torchscript,
    export_segmenter_onnx,
    export_segmenter_torchscript,
)
from headseg.segmentation import build_segmenter
from tests.conftest import TINY_SEG


@pytest.fixture(scope="module")
def classifier() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_classifier(ClsModelConfig(weights="none", head="mlp"), 3).eval()


def test_classifier_onnx_matches_pytorch(classifier: torch.nn.Module, tmp_path: Path) -> None:
    ort = pytest.importorskip("onnxruntime")
    path = export_classifier_onnx(classifier, 64, tmp_path / "cls.onnx")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = torch.rand(5, 3, 64, 64)  # another batch size than the export example
    (onnx_logits,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    with torch.inference_mode():
        expected = classifier(x).numpy()
    assert np.abs(onnx_logits - expected).max() < 1e-4


def test_classifier_torchscript_matches_pytorch(classifier: torch.nn.Module, tmp_path: Path) -> None:
    scripted = torch.jit.load(str(export_classifier_torchscript(classifier, 64, tmp_path / "cls.ts")))
    x = torch.rand(3, 3, 64, 64)
    with torch.inference_mode():
        assert torch.allclose(scripted(x), classifier(x), atol=1e-5)


def test_segmenter_torchscript_matches_pytorch(tmp_path: Path) -> None:
    cfg = load_config(SegConfig, None, [s for s in TINY_SEG if s.startswith("model.")])
    model = build_segmenter(cfg.model, 1).eval()
    scripted = torch.jit.load(str(export_segmenter_torchscript(model, tmp_path / "seg.ts")))
    image = torch.rand(3, 96, 128)
    with torch.inference_mode():
        expected = model([image])[0]
        _, got = scripted([image])  # scripted detection models return (losses, detections)
    assert torch.allclose(got[0]["boxes"], expected["boxes"], atol=1e-4)
    assert torch.allclose(got[0]["masks"], expected["masks"], atol=1e-4)


def test_segmenter_onnx_matches_pytorch_in_onnxruntime(tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    cfg = load_config(SegConfig, None, [s for s in TINY_SEG if s.startswith("model.")])
    model = build_segmenter(cfg.model, 1).eval()
    model.roi_heads.score_thresh = 0.0  # an untrained model: keep its detections to compare
    path, status = export_segmenter_onnx(model, tmp_path / "seg.onnx", 96, 128)
    assert path is not None and path.is_file(), status
    verdict = check_segmenter_onnx(path, model, torch.rand(3, 96, 128))
    assert "detections, max |diff|" in verdict, verdict
    assert float(verdict.rsplit(" ", 1)[1]) < 1e-3


def test_export_tool_writes_what_a_server_needs_beside_the_files(tmp_path: Path) -> None:
    import json

    from headseg.attributes import AttributeSchema
    from headseg.classification import classifier_checkpoint
    from headseg.config import ClsConfig
    from headseg.engine import save_checkpoint
    from headseg.segmentation import segmenter_checkpoint
    from tools import export

    schema = AttributeSchema({"headwear": ["helmet", "none"], "face_mask": ["with_mask", "without_mask", "incorrect"]})
    cls_cfg = load_config(ClsConfig, None, ["model.weights=none", "crop.size=32"])
    save_checkpoint(tmp_path / "cls.pt", classifier_checkpoint(build_classifier(cls_cfg.model, 5), cls_cfg, schema))
    seg_cfg = load_config(SegConfig, None, TINY_SEG)
    save_checkpoint(tmp_path / "seg.pt", segmenter_checkpoint(build_segmenter(seg_cfg.model, 1), seg_cfg, ["head"]))
    out = tmp_path / "exported"
    report = export.main(export.parse_args(["--cls", str(tmp_path / "cls.pt"), "--seg", str(tmp_path / "seg.pt"),
                                            "--out", str(out)]))
    assert "classifier.json" in report and "segmenter.json" in report
    meta = json.loads((out / "classifier.json").read_text())
    assert meta["columns"] == schema.column_names  # headwear/helmet ... face_mask/incorrect
    assert meta["attributes"] == {"headwear": ["helmet", "none"], "face_mask": ["with_mask", "without_mask", "incorrect"]}
    assert meta["crop"]["size"] == 32 and len(meta["mean"]) == len(meta["std"]) == 3
    seg_meta = json.loads((out / "segmenter.json").read_text())
    assert seg_meta["classes"] == ["head"] and seg_meta["min_size"] == 128
    assert (out / "classifier.ts").is_file() and (out / "segmenter.ts").is_file()
