"""Fit a learning curve: how a score grows with the training data, and how much data a goal needs.

Train one recipe on shares of the training photos (``data.train_photos``, a few seeds at each,
the same number of steps: epochs, frozen epochs and patience over the share), evaluate every run
with tools/eval_cls.py, then fit ``1 - score = scale x share^-exponent`` to the runs
(:func:`headseg.evaluation.fit_learning_curve`). Prints each share's runs, the fit, and the share
of today's data (beyond 1: more photos of the same kind) at which the fit reaches ``--goal``,
with the range one standard error of the exponent gives. An extrapolation, not a promise: it
holds while new photos are like the old ones.

Examples:
    for s in 0 1 2; do   # half and a quarter of the photos, 8 x 1/share epochs (the full recipe: 8)
      python tools/train_cls.py --config configs/cls_fm_multidata_128.yaml --out runs/lc_f50_s$s \\
          --set data.train_photos=0.5 data.photo_seed=$s train.seed=$s train.epochs=16 train.frozen_epochs=4 \\
          train.patience=8
      python tools/eval_cls.py runs/lc_f50_s$s/best.pt work_data/crops_facemask_head128/val/index.csv \\
          --flip --out runs/lc_f50_s$s/val.json
    done   # the same with 0.25, 32, 8, 16; and the full recipe's runs at share 1
    python tools/learning_curve.py 0.5=runs/lc_f50_s0/val.json 0.5=runs/lc_f50_s1/val.json ... \\
        1=runs/full_s0/val.json --goal 0.90 --out runs/lc/val.png
    # --metric: a key of the metrics JSON; a two-attribute model's are per attribute, e.g. face_mask/macro_f1
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from headseg.evaluation import fit_learning_curve, plot_learning_curve  # noqa: E402
from headseg.io import write_json  # noqa: E402
from tools._cli import run  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", metavar="SHARE=METRICS_JSON",
                        help="a run's share of the training data and its tools/eval_cls.py metrics JSON")
    parser.add_argument("--metric", default="macro_f1", help="key of the metrics JSON, e.g. face_mask/macro_f1")
    parser.add_argument("--goal", type=float, help="a score to reach: the share of the data the fit needs for it")
    parser.add_argument("--out", type=Path, help="PNG of the curve; the fit as JSON beside it (same stem)")
    return parser.parse_args(argv)


def _read(entry: str, metric: str) -> tuple[float, float]:
    share, sep, path = entry.partition("=")
    try:
        value = float(share)
    except ValueError:
        value = None
    if not sep or value is None:
        raise ValueError(f"{entry!r}: expected SHARE=METRICS_JSON, e.g. 0.5=runs/lc_f50_s0/val.json")
    metrics = json.loads(Path(path).read_text())
    if metric not in metrics:
        raise ValueError(f"{path} has no {metric!r}; it has {sorted(metrics)[:12]}...: choose --metric among them")
    return value, float(metrics[metric])


def main(args: argparse.Namespace) -> dict[str, float]:
    shares, scores = map(np.array, zip(*(_read(e, args.metric) for e in args.runs)))
    curve = fit_learning_curve(shares, scores)
    print(f"{args.metric} against the share of the training data ({curve.runs} runs):")
    print("share  runs    mean     sd")
    for share in np.unique(shares):
        at = scores[shares == share]
        print(f"{share:5.3f}  {len(at):4d}  {at.mean():.4f}  {at.std(ddof=1) if len(at) > 1 else float('nan'):.4f}")
    print(f"fit: 1 - score = {curve.scale:.4f} x share^-{curve.exponent:.3f} (standard error {curve.exponent_se:.3f}): "
          f"each doubling of the data multiplies the error by {2 ** -curve.exponent:.3f}")
    report = {"scale": curve.scale, "exponent": curve.exponent, "exponent_se": curve.exponent_se,
              "runs": float(curve.runs), "fit_at_share_1": float(curve.score(1.0))}
    if args.goal is not None:
        need = curve.share_for(args.goal)
        low, high = (curve.share_for(args.goal, curve.exponent + d * curve.exponent_se) for d in (1, -1))
        report |= {"goal": args.goal, "share_for_goal": need, "share_for_goal_low": low, "share_for_goal_high": high}
        print(f"{args.metric} {args.goal:g} at {need:.3g}x the training data by the fit "
              f"(exponent one standard error up / down: {low:.3g}x / {high:.3g}x)")
    if args.out:
        plot_learning_curve(shares, scores, curve, args.out, args.goal, args.metric)
        write_json(args.out.with_suffix(".json"), report)
        print(f"curve: {args.out}; fit: {args.out.with_suffix('.json')}")
    return report


if __name__ == "__main__":
    run(main, parse_args())
