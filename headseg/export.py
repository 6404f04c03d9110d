"""Export the trained models for serving: ONNX and TorchScript, each checked against PyTorch.

What exports (tests/test_export.py keeps it so):

* classifier -> ONNX (dynamic batch) and TorchScript (trace): outputs match PyTorch within 1e-4;
* segmenter -> TorchScript (``torch.jit.script``, torchvision supports it): same detections;
* segmenter -> ONNX (torch's TorchScript-based exporter, opset 18): works for torchvision
  0.29's Mask R-CNN, for one fixed input size (the resize is traced), with boxes, labels,
  scores and masks matching PyTorch in onnxruntime (:func:`check_segmenter_onnx`). It stays
  best-effort: if the exporter fails, :func:`export_segmenter_onnx` reports why instead of
  writing a broken file.
"""

from __future__ import annotations

import warnings
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
        with warnings.catch_warnings():
            # Tracing torchvision's detection code warns about every shape it freezes into
            # constants; that is the fixed input size this export is for, and
            # check_segmenter_onnx is what tells whether the result is right.
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            warnings.filterwarnings("ignore", message="To copy construct from a tensor")
            warnings.filterwarnings("ignore", message="Constant folding - Only steps=1")
            torch.onnx.export(model.eval().cpu(), ([torch.rand(3, height, width)],), str(path),
                              opset_version=opset, dynamo=False)
    except Exception as e:  # the exporter raises many types; report them all the same way
        if path.exists():
            path.unlink()
        return None, f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"
    return path, "ok"


def check_segmenter_onnx(path: str | Path, model: nn.Module, image: torch.Tensor) -> str:
    """Run the exported segmenter in onnxruntime on ``image`` (3, H, W) and compare with PyTorch.

    ``image`` must have the size it was exported for. Returns a one-line verdict naming how
    many detections were compared, so a check on an image without detections is visibly empty.
    """
    import numpy as np  # noqa: PLC0415
    import onnxruntime as ort  # noqa: PLC0415

    with torch.inference_mode():
        ref = model.eval().cpu()([image])[0]
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    boxes, labels, scores, masks = session.run(None, {session.get_inputs()[0].name: image.numpy()})
    if len(boxes) != len(ref["boxes"]) or not np.array_equal(labels, ref["labels"].numpy()):
        return f"detections differ: {len(boxes)} in ONNX, {len(ref['boxes'])} in PyTorch"
    if len(boxes) == 0:
        return "same (0 detections compared)"
    diff = max(np.abs(boxes - ref["boxes"].numpy()).max(), np.abs(scores - ref["scores"].numpy()).max(),
               np.abs(masks - ref["masks"].numpy()).max())
    return f"{len(boxes)} detections, max |diff| {diff:.2e}"
