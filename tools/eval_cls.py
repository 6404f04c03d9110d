"""Evaluate an attire classifier on a crop index: accuracy, per-class P/R/F1, confusion, mistakes.

Writes the flat metrics JSON to ``--out FILE`` and beside it ``FILE_confusion.csv``,
``FILE_confusion.png``, ``FILE_mistakes.png`` (the most confident wrong predictions, titled
true / predicted (probability)) and ``FILE_predictions.csv`` (one row per crop); prints a table.
The crops must follow the crop rules the checkpoint records (checked against ``crops.json``).

Report numbers on ``test`` crops only for the checkpoint that ``val`` picked (data README).

Examples:
    python tools/eval_cls.py runs/cls_hardhat/best.pt work_data/crops_hardhat/val/index.csv \\
        --out runs/cls_hardhat/eval_val.json
    python tools/eval_cls.py runs/cls_hardhat/best.pt work_data/crops_hardhat/test/index.csv \\
        --out runs/cls_hardhat/eval_test.json
"""

from __future__ import annotations

import argparse
import csv
import io
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from headseg.classification import Classifier, predict_index  # noqa: E402
from headseg.crop_sets import CropIndexDataset  # noqa: E402
from headseg.evaluation import (  # noqa: E402
    classification_metrics,
    confusion_matrix,
    format_metrics_table,
    plot_confusion_matrix,
    plot_worst_mistakes,
    write_confusion_csv,
)
from headseg.io import write_json, write_text  # noqa: E402
from tools._cli import run  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", type=Path, help="best.pt from tools/train_cls.py")
    parser.add_argument("index", type=Path, help="index.csv from tools/make_crops.py")
    parser.add_argument("--out", type=Path, required=True, help="metrics JSON; other files beside it")
    parser.add_argument("--device", default="cpu", help="cpu, cuda")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--max-mistakes", type=int, default=24, help="crops in the mistakes gallery")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser.parse_args(argv)


def main(args: argparse.Namespace) -> dict[str, float]:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    clf = Classifier.load(args.checkpoint, args.device)
    names = clf.class_names
    result = predict_index(clf.model, args.index, names, clf.preprocessing, args.device,
                           args.batch_size, progress=not args.no_progress)
    pred = result.probs.argmax(1) if len(result.probs) else result.labels
    metrics = {**classification_metrics(result.labels, pred, names), "num_crops": float(len(pred))}

    stem = args.out.with_suffix("")
    cm = confusion_matrix(result.labels, pred, len(names))
    write_confusion_csv(cm, names, f"{stem}_confusion.csv")
    plot_confusion_matrix(cm, names, f"{stem}_confusion.png")
    dataset = CropIndexDataset(args.index, names)  # read back only the crops the gallery shows
    plot_worst_mistakes(dataset.image, result.labels, result.probs, names, f"{stem}_mistakes.png",
                        args.max_mistakes)
    rows = io.StringIO()
    writer = csv.writer(rows, lineterminator="\n")
    writer.writerow(["crop", "label", "pred", "prob", *(f"p/{n}" for n in names)])
    for path, label, k, p in zip(result.paths, result.labels.tolist(), pred.tolist(), result.probs):
        writer.writerow([path, names[label], names[k], f"{float(p.max()):.4f}", *(f"{float(v):.4f}" for v in p)])
    write_text(f"{stem}_predictions.csv", rows.getvalue())
    write_json(args.out, metrics)

    print(f"{args.checkpoint} on {args.index} ({len(pred)} crops):")
    print(format_metrics_table(metrics))
    print(f"metrics: {args.out}; confusion, mistakes and predictions beside it")
    return metrics


if __name__ == "__main__":
    run(main, parse_args())
