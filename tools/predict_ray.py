"""Run the head-attire pipeline over an archive of images on Ray Data, locally or on a cluster.

Writes to ``--out`` the records ``tools/predict.py`` writes to ``predictions.jsonl`` (same
fields, masks as COCO RLE), split in ``records/part-*.jsonl`` (one file per batch), and
``summary.json``. Each input is recorded once, also when workers die (Ray restarts them); a
rerun into the same ``--out`` skips inputs that have records. Unreadable files are reported,
skipped and retried by the next run; the exit status is then 1. No annotated images.
Needs ``pip install 'headseg[ray]'``; ``--out`` and the inputs must be reachable from every node.

Examples:
    python tools/predict_ray.py docs/samples --out ray_output           # local Ray, bundled model
    python tools/predict_ray.py /archive/photos "/archive/site/*.jpg" --out /archive/heads \\
        --seg runs/seg/best.pt --cls runs/cls/best.pt --address ray://head-node:10001
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from headseg.ray_inference import import_ray, predict_with_ray  # noqa: E402
from tools._cli import add_model_args, add_score_arg, run  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("inputs", nargs="+", help="image files, folders or globs")
    parser.add_argument("--out", type=Path, required=True, help="output folder (shared by every node)")
    add_model_args(parser)
    add_score_arg(parser)
    parser.add_argument("--batch-size", type=int, default=4, help="images per segmenter forward pass")
    parser.add_argument("--rows-per-batch", type=int, default=16, help="inputs per actor call and records file")
    parser.add_argument("--address", help="Ray cluster to join, e.g. ray://head:10001 or auto "
                                          "(default: start Ray on this machine)")
    parser.add_argument("--actors", type=int, help="actor pool size (default: what the cluster holds)")
    parser.add_argument("--cpus-per-actor", type=float, default=1.0)
    parser.add_argument("--gpus-per-actor", type=float, help="default 0.5 on a GPU cluster, else 0")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    return parser.parse_args(argv)


def main(args: argparse.Namespace) -> int:
    ray = import_ray()
    if not ray.is_initialized():
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # nothing leaves the machine unasked
        # The driver's headseg goes to every worker, so a cluster runs the code that started it.
        ray.init(address=args.address, runtime_env={"py_modules": [str(Path(__file__).resolve().parents[1] / "headseg")]})
    summary = predict_with_ray(args.inputs, args.out, seg=args.seg, cls=args.cls, model=args.model,
                               score_thresh=args.score_thresh, batch_size=args.batch_size, flip=args.flip,
                               rows_per_batch=args.rows_per_batch, concurrency=args.actors,
                               cpus_per_actor=args.cpus_per_actor, gpus_per_actor=args.gpus_per_actor)
    counts = summary["heads_per_class"]
    print(f"{summary['processed']}/{summary['files']} files ({summary['already_done']} done before), "
          f"{sum(counts.values())} heads: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    print(f"records in {args.out / 'records'}, summary in {args.out / 'summary.json'}")
    for problem in summary["skipped"]:
        print(f"skipped: {problem}", file=sys.stderr)
    return 1 if summary["skipped"] else 0


if __name__ == "__main__":
    run(main, parse_args())
