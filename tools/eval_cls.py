"""Evaluate an attire classifier on a crop index: accuracy, per-class P/R/F1, confusion, mistakes.

Writes the flat metrics JSON to ``--out FILE`` and beside it ``FILE_confusion.csv``,
``FILE_confusion.png``, ``FILE_mistakes.png`` (the most confident wrong predictions, titled
true / predicted (probability)) and ``FILE_predictions.csv`` (one row per crop); prints a table.
A multi-attribute classifier is scored on each attribute the crop set's source labels, with
metric keys ``{attribute}/...`` and files ``FILE_{attribute}_confusion.png`` and so on; the source
is the schema's one whose categories cover the index's labels, or ``--source``. With ``--coco``
(the COCO file the crops were cut from) the same metrics also come per object size, over COCO's
area ranges (keys ``small/...``, ``medium/...``, ``large/...``: the ranges of ``APs``, ``APm``,
``APl``), read from each crop's labelled annotation; heads that match no label are in none.
Each metric also comes with a 95 % confidence interval (keys ``.../ci_low``, ``.../ci_high``; a
third column in the table): a percentile bootstrap over the crops, ``--bootstrap`` resamples
(0: none). It is the sampling error of a set of this size: on a rare value it spans points.
The crops must follow the crop rules the checkpoint records (checked against ``crops.json``).

Report numbers on ``test`` crops only for the checkpoint that ``val`` picked (data README).

Examples:
    python tools/eval_cls.py runs/cls_hardhat/best.pt work_data/crops_hardhat/val/index.csv \\
        --out runs/cls_hardhat/eval_val.json
    python tools/eval_cls.py runs/cls_hardhat/best.pt work_data/crops_hardhat/test/index.csv \\
        --out runs/cls_hardhat/eval_test.json
    python tools/eval_cls.py runs/cls_multi/best.pt work_data/crops_facemask_head/val/index.csv \\
        --source facemask --out runs/cls_multi/eval_facemask_val.json
    # by object size: how the classifier fares on small faces
    python tools/eval_cls.py runs/cls_multi/best.pt work_data/crops_facemask_head/val/index.csv \\
        --coco work_data/facemask/val.json --out runs/cls_multi/eval_facemask_val.json
    # an ensemble of seeds: their probabilities averaged
    python tools/eval_cls.py runs/cls_multi_s0/best.pt runs/cls_multi_s1/best.pt \\
        work_data/crops_facemask_head/val/index.csv --out runs/ensemble/eval_facemask_val.json
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from headseg.classification import Classifier, predict_index  # noqa: E402
from headseg.crop_sets import CropIndexDataset  # noqa: E402
from headseg.evaluation import (  # noqa: E402
    AREA_RANGES,
    annotation_areas,
    attribute_metrics,
    attribute_metrics_by_area,
    bootstrap_intervals,
    format_metrics_table,
    write_attribute_predictions,
    write_attribute_reports,
)
from headseg.io import write_json  # noqa: E402
from tools._cli import add_flip_arg, run  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", type=Path, nargs="+",
                        help="best.pt from tools/train_cls.py; several: their ensemble (probabilities averaged)")
    parser.add_argument("index", type=Path, help="index.csv from tools/make_crops.py")
    parser.add_argument("--out", type=Path, required=True, help="metrics JSON; other files beside it")
    parser.add_argument("--source", help="schema source that labelled the crops (default: inferred)")
    parser.add_argument("--coco", type=Path,
                        help="the COCO file the crops were cut from: also score them per COCO object-area range")
    parser.add_argument("--device", default="cpu", help="cpu, cuda")
    parser.add_argument("--batch-size", type=int, default=128)
    add_flip_arg(parser)
    parser.add_argument("--bootstrap", type=int, default=1000, metavar="N",
                        help="resamples for the 95%% confidence intervals (0: no intervals)")
    parser.add_argument("--max-mistakes", type=int, default=24, help="crops in the mistakes gallery")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser.parse_args(argv)


def main(args: argparse.Namespace) -> dict[str, float]:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    clf = Classifier.load(args.checkpoint, args.device)
    schema = clf.schema
    result = predict_index(clf.model, args.index, schema, clf.preprocessing, args.source, args.device,
                           args.batch_size, progress=not args.no_progress, flip=bool(args.flip))
    metrics, matrices = attribute_metrics(result.targets, result.probs, schema)
    if args.bootstrap:
        metrics.update(bootstrap_intervals(result.targets, result.probs, schema, resamples=args.bootstrap))
    metrics["num_crops"] = float(len(result.paths))
    dataset = CropIndexDataset(args.index)  # read back only the crops the galleries show
    if args.coco:
        areas = annotation_areas(args.coco, [row.get("ann_id") for row in dataset.rows])
        metrics.update(attribute_metrics_by_area(result.targets, result.probs, schema, areas))

    stem = args.out.with_suffix("")
    write_attribute_reports(stem, schema, matrices, result.targets, result.probs, dataset.image,
                            args.max_mistakes)
    write_attribute_predictions(f"{stem}_predictions.csv", result.paths, result.targets, result.probs,
                                schema, list(matrices))
    write_json(args.out, metrics)

    print(f"{' + '.join(map(str, args.checkpoint))} on {args.index} ({len(result.paths)} crops, source {result.source}):")
    ranges = tuple(f"{name}/" for name in AREA_RANGES)  # in the table only their counts, macro-F1, accuracy
    print(format_metrics_table(metrics, [k for k in metrics if not k.endswith(("/ci_low", "/ci_high")) and (
        not k.startswith(ranges) or k.endswith(("num_crops", "macro_f1", "accuracy")))]))
    if args.bootstrap:
        print(f"interval: 95 % percentile bootstrap over the crops, {args.bootstrap} resamples")
    print(f"metrics: {args.out}; confusion, mistakes and predictions beside it")
    return metrics


if __name__ == "__main__":
    run(main, parse_args())
