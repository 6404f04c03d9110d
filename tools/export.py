"""Export trained checkpoints to ONNX and TorchScript, checking each export against PyTorch.

Writes ``classifier.onnx``, ``classifier.ts`` and ``segmenter.ts`` to ``--out`` and tries
``segmenter.onnx`` (best-effort in torchvision, one fixed input size); prints the largest
output difference of each against PyTorch (the ONNX files in onnxruntime). Beside them,
``classifier.json`` and ``segmenter.json`` say what a server needs and the files do not: the
output columns and attributes (a softmax per attribute over its columns), the crop rules,
input size and mean/std; the segmenter's classes and resize.

Example:
    python tools/export.py --seg headseg/assets/segmenter.pt --cls headseg/assets/classifier.pt \
        --image docs/samples/maksssksksss2.jpg --out exported/
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from headseg.classification import Classifier  # noqa: E402
from headseg.export import (  # noqa: E402
    check_segmenter_onnx,
    export_classifier_onnx,
    export_classifier_torchscript,
    export_segmenter_onnx,
    export_segmenter_torchscript,
)
from headseg.io import read_image, write_json  # noqa: E402
from headseg.segmentation import load_segmenter  # noqa: E402
from tools._cli import run  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seg", type=Path, help="segmenter checkpoint")
    parser.add_argument("--cls", type=Path, help="classifier checkpoint")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--image", type=Path,
                        help="photo to compare the segmenter exports on (default: random noise, "
                             "which a trained model may find nothing in)")
    return parser.parse_args(argv)


@torch.inference_mode()
def main(args: argparse.Namespace) -> dict[str, str]:
    report: dict[str, str] = {}
    args.out.mkdir(parents=True, exist_ok=True)
    if args.cls:
        clf = Classifier.load(args.cls)
        model, cfg, size = clf.model, clf.config, clf.preprocessing.input_size
        write_json(args.out / "classifier.json", {
            "columns": clf.class_names, "attributes": clf.schema.to_dict()["attributes"],
            "output": "logits; softmax over each attribute's columns, in the order of `attributes`",
            "input": f"(N, 3, {size}, {size}) RGB in [0, 1], then (x - mean) / std",
            **clf.preprocessing.to_dict()})
        report["classifier.json"] = "columns, attributes, crop rules, mean/std"
        x = torch.rand(4, 3, size, size)
        ref = model(x)
        ts = torch.jit.load(str(export_classifier_torchscript(model, size, args.out / "classifier.ts")))
        report["classifier.ts"] = f"max |diff| {(ts(x) - ref).abs().max():.2e}"
        try:
            import onnxruntime as ort  # noqa: PLC0415

            path = export_classifier_onnx(model, size, args.out / "classifier.onnx")
            session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
            out = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
            report["classifier.onnx"] = f"max |diff| {np.abs(out - ref.numpy()).max():.2e}"
        except ImportError:
            report["classifier.onnx"] = "skipped: pip install onnxruntime onnxscript"
    if args.seg:
        model, cfg, class_names = load_segmenter(args.seg)
        write_json(args.out / "segmenter.json", {
            "classes": class_names, "labels": "1-based: label k is classes[k - 1] (0 is background)",
            "input": "a list of (3, H, W) RGB tensors in [0, 1]; the model resizes and normalises itself",
            "min_size": cfg.model.min_size, "max_size": cfg.model.max_size,
            "box_score_thresh": cfg.model.box_score_thresh})
        report["segmenter.json"] = "classes, resize, score threshold"
        if args.image:
            photo = cv2.resize(read_image(args.image), (400, 300), interpolation=cv2.INTER_AREA)
            image = torch.from_numpy(photo).permute(2, 0, 1).float() / 255
        else:
            image = torch.rand(3, 300, 400)
        ref = model([image])[0]
        scripted = torch.jit.load(str(export_segmenter_torchscript(model, args.out / "segmenter.ts")))
        got = scripted([image])[1][0]
        same = len(got["boxes"]) == len(ref["boxes"]) and torch.allclose(got["boxes"], ref["boxes"], atol=1e-3)
        report["segmenter.ts"] = "same detections" if same else "detections differ"
        path, status = export_segmenter_onnx(model, args.out / "segmenter.onnx", 300, 400)
        if path is not None:
            try:
                status = check_segmenter_onnx(path, model, image)
            except ImportError:
                status = "written, not checked: pip install onnxruntime"
        report["segmenter.onnx"] = status + " (input fixed at 300 x 400)"
    for name, status in report.items():
        print(f"{name:<18}{status}")
    return report


if __name__ == "__main__":
    run(main, parse_args())
