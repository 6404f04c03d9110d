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
