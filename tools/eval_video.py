"""Score tracking and per-person attire on clips made from annotated photos.

Each photo becomes one clip per camera motion (pan, zoom, shake: ``headseg.clips``), its
ground-truth boxes moved with the image, and its largest head hidden behind a patch for 3
frames mid-clip (absent from the ground truth then). Reports MOTA, IDF1 and ID switches
(``trackeval``) and attire accuracy per frame vs per person (the track's vote). Clips of still
photos have no real motion blur, lighting change or people walking: see docs/VIDEO.md.

Examples:
    python tools/eval_video.py work_data/hhw/test.json --photos 5 --out runs/video_eval.json
    python tools/eval_video.py work_data/hhw/test.json --seg seg.pt --cls cls.pt --stride 2 \\
        --photos 20 --frames 24 --out runs/video_eval_stride2.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from headseg.clips import MOTIONS  # noqa: E402
from headseg.data import load_coco  # noqa: E402
from headseg.io import write_json  # noqa: E402
from headseg.track_eval import evaluate_clips  # noqa: E402
from tools._cli import add_model_args, add_tracker_args, load_pipeline, run, tracker_config  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("coco", type=Path, help="COCO JSON of annotated photos (a test split)")
    parser.add_argument("--out", type=Path, help="write the numbers here as JSON")
    add_model_args(parser)
    parser.add_argument("--photos", type=int, default=5, help="photos drawn (seeded) with >= --min-heads heads")
    parser.add_argument("--min-heads", type=int, default=2)
    parser.add_argument("--motions", nargs="+", default=list(MOTIONS), choices=MOTIONS)
    parser.add_argument("--frames", type=int, default=24, help="frames per clip")
    parser.add_argument("--stride", type=int, default=1)
    parser.add_argument("--min-frames", type=int, default=3, help="frames before attire is decided")
    add_tracker_args(parser)
    parser.add_argument("--source", help="schema source the set's categories follow (default: inferred)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", help="cpu, cuda... (default: cuda if available)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (logs under nohup)")
    return parser.parse_args(argv)


def main(args: argparse.Namespace) -> dict:
    coco = load_coco(args.coco)
    eligible = [i for i in coco.image_ids if len(coco.annotations[i]) >= args.min_heads]
    if not eligible:
        raise ValueError(f"{args.coco} has no photo with {args.min_heads} or more heads; lower --min-heads")
    rng = np.random.default_rng(args.seed)
    chosen = sorted(int(i) for i in rng.choice(eligible, min(args.photos, len(eligible)), replace=False))
    pipe = load_pipeline(args, score_thresh=args.score_thresh, batch_size=1)
    start = time.perf_counter()
    report = evaluate_clips(pipe, coco, chosen, args.motions, args.frames, stride=args.stride,
                            min_frames=args.min_frames, tracker=tracker_config(args, pipe.score_thresh), seed=args.seed,
                            source=args.source, progress=not args.no_progress)
    report.update(coco=str(args.coco), image_ids=chosen, stride=args.stride, score_thresh=pipe.score_thresh,
                  track_thresh=args.track_thresh or pipe.score_thresh,
                  seconds=round(time.perf_counter() - start, 1),
                  seg=str(args.seg or f"bundled {args.model}"), cls=" + ".join(map(str, args.cls)) if args.cls else f"bundled {args.model}")
    print(json.dumps(report, indent=2))
    if args.out:
        write_json(args.out, report)
    return report


if __name__ == "__main__":
    run(main, parse_args())
