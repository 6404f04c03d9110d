"""Compare two classifiers on the same crops: each metric's difference, with a paired bootstrap interval.

Reads the predictions CSVs that tools/eval_cls.py writes (``FILE_predictions.csv``) for two
classifiers on one crop index, resamples the crops (the same draws for both) and prints, per
metric, the baseline's value, the candidate's, the difference and its 95 % interval. An interval
that holds 0 says the crops cannot tell the two apart: on a value with tens of crops, a few
points of macro-F1 often cannot. Choose on val; test is read once, for the model val chose.

The two may differ in their values (a candidate that adds `not_visible`): each is scored on the
labels with its own values, and only the metrics that mean the same for both are compared
(`macro_f1_labelled`, accuracy, balanced accuracy, each shared value's precision, recall and F1;
not `macro_f1`). With `--attribute`, one attribute of each is compared, so a two-attribute model
meets a model that predicts that attribute alone.

Examples:
    python tools/eval_cls.py headseg/assets/multi_classifier.pt work_data/crops_facemask_head128/val/index.csv \\
        --flip --out runs/eval_default/val.json
    python tools/eval_cls.py runs/cls_new/best.pt work_data/crops_facemask_head128/val/index.csv \\
        --flip --out runs/eval_new/val.json
    python tools/compare_cls.py runs/eval_default/val_predictions.csv runs/eval_new/val_predictions.csv \\
        --out runs/eval_new/val_vs_default.json
    # the two-attribute default's face_mask against a face_mask-only model on the same crops
    python tools/compare_cls.py runs/cls_fm/val_predictions.csv runs/eval_default/val_predictions.csv \\
        --attribute face_mask
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from headseg.evaluation import (  # noqa: E402
    attribute_metrics,
    attribute_view,
    bootstrap_intervals,
    comparable_keys,
    read_attribute_predictions,
    remap_targets,
)
from headseg.io import write_json  # noqa: E402
from tools._cli import run  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("baseline", type=Path, help="predictions CSV of tools/eval_cls.py: the model compared against")
    parser.add_argument("candidate", type=Path, help="predictions CSV of the other model, on the same crops")
    parser.add_argument("--bootstrap", type=int, default=2000, metavar="N", help="resamples (the same for both models)")
    parser.add_argument("--attribute", help="compare this attribute alone (needed where the two models predict "
                        "other attributes; a single-attribute model's one attribute is taken to be it)")
    parser.add_argument("--out", type=Path, help="JSON of both models' metrics, the differences and their intervals")
    return parser.parse_args(argv)


def main(args: argparse.Namespace) -> dict[str, float]:
    crops, targets, baseline, schema = read_attribute_predictions(args.baseline)
    other_crops, other_targets, candidate, other_schema = read_attribute_predictions(args.candidate)
    if other_crops != crops:
        raise ValueError(f"{args.baseline} and {args.candidate} hold other crops; compare two models' "
                         "predictions on the same crop index")
    if args.attribute:
        targets, baseline, schema = attribute_view(targets, baseline, schema, args.attribute)
        other_targets, candidate, other_schema = attribute_view(other_targets, candidate, other_schema, args.attribute)
    elif set(schema.attributes) != set(other_schema.attributes):
        raise ValueError(f"{args.baseline} predicts {schema.names}, {args.candidate} {other_schema.names}; "
                         "name the attribute to compare with --attribute")
    if not remap_targets(other_targets, other_schema, schema).equal(targets):
        raise ValueError(f"{args.baseline} and {args.candidate} hold other labels; compare two models' "
                         "predictions on the same crop index")
    before, _ = attribute_metrics(targets, baseline, schema)
    after, _ = attribute_metrics(other_targets, candidate, other_schema)
    intervals = bootstrap_intervals(other_targets, candidate, other_schema, baseline=baseline,
                                    baseline_schema=schema, resamples=args.bootstrap)
    keys = comparable_keys(other_schema, schema, after, before)
    report = {f"baseline/{k}": before[k] for k in keys} | {f"candidate/{k}": after[k] for k in keys}
    report |= {f"difference/{k}": after[k] - before[k] for k in keys}
    report |= {f"difference/{k}": v for k, v in intervals.items()}
    report["num_crops"] = float(len(crops))

    width = max(len(k) for k in keys)
    print(f"{args.candidate} against {args.baseline} ({len(crops)} crops; 95 % interval of the difference, "
          f"paired bootstrap, {args.bootstrap} resamples):")
    print(f"{'metric':<{width}}  baseline  candidate  difference  interval")
    for k in keys:
        low, high = intervals[f"{k}/ci_low"], intervals[f"{k}/ci_high"]
        print(f"{k:<{width}}  {before[k]:8.4f}  {after[k]:9.4f}  {after[k] - before[k]:+10.4f}  [{low:+.4f}, {high:+.4f}]")
    if args.out:
        write_json(args.out, report)
        print(f"report: {args.out}")
    return report


if __name__ == "__main__":
    run(main, parse_args())
