"""Export the trained models for serving: ONNX and TorchScript, each checked against PyTorch.

What exports (tests/test_export.py keeps it so):

* classifier -> ONNX (dynamic batch) and TorchScript (trace): outputs match PyTorch within 1e-4;
* segmenter -> TorchScript (``torch.jit.script``, torchvision supports it): same detections;
* segmenter -> ONNX: attempted with the exporter torch ships; torchvision's Mask R-CNN
  export is best-effort (data-dependent shapes), so :func:`export_segmenter_onnx` reports a
  failure instead of writing a broken file.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn


def export_classifier_onnx(model: nn.Module, input_size: int, path: str | Path, opset: int = 18) -> Path:
    """Write the classifier as ONNX with input ``crops`` (N, 3, S, S) normalised floats, output ``logits``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    example = torch.zeros(2, 3, input_size, input_size)
    torch.onnx.export(model.eval().cpu(), (example,), str(path), input_names=["crops"],
                      output_names=["logits"], opset_version=opset,
                      dynamic_shapes={"x": {0: torch.export.Dim("batch", min=1, max=4096)}}, dynamo=True)
    return path


def export_classifier_torchscript(model: nn.Module, input_size: int, path: str | Path) -> Path:
    """Trace the classifier to TorchScript (fixed input size, any batch)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    traced = torch.jit.trace(model.eval().cpu(), torch.zeros(2, 3, input_size, input_size))
    traced.save(str(path))
    return path


def export_segmenter_torchscript(model: nn.Module, path: str | Path) -> Path:
    """Script the Mask R-CNN (takes a list of CHW float images in [0, 1])."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.jit.script(model.eval().cpu()).save(str(path))
    return path


def export_segmenter_onnx(model: nn.Module, path: str | Path, height: int, width: int,
                          opset: int = 18) -> tuple[Path | None, str]:
    """Try to export the Mask R-CNN to ONNX for one image of ``height x width``.

    Returns:
        ``(path, "ok")`` on success, ``(None, reason)`` when the exporter fails.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        torch.onnx.export(model.eval().cpu(), ([torch.rand(3, height, width)],), str(path),
                          opset_version=opset, dynamo=False)
    except Exception as e:  # the exporter raises many types; report them all the same way
        if path.exists():
            path.unlink()
        return None, f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"
    return path, "ok"
