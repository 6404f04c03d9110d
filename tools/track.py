"""Track heads through videos, cameras and streams; decide attire per person; write events.

Writes to ``--out``: ``predictions.jsonl`` (one record per frame: heads with ``track_id``,
``carried`` for boxes carried between ``--stride`` frames), ``events.jsonl`` (a person
appears with a value, changes it, leaves; times in seconds and frame numbers),
``summary.json`` (per source: distinct people per attire value, each person's decision with
the frames it came from) and ``<name>.mp4`` annotated with track ids (not with ``--no-draw``).
A damaged file or a dropped stream ends with what was read (a warning; exit status 1).

Examples:
    python tools/track.py clip.mp4 --out runs/track                      # bundled model
    python tools/track.py videos/ --out runs/track --stride 3 --seg seg.pt --cls cls.pt
    python tools/track.py 0 --duration 60 --out runs/cam                 # camera 0, one minute
    python tools/track.py rtsp://host/stream --max-frames 3000 --out runs/cam --no-draw
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from headseg.io import VIDEO_EXTENSIONS, write_json  # noqa: E402
from headseg.video import TrackOptions, parse_source, run_video  # noqa: E402
from tools._cli import add_model_args, add_tracker_args, load_pipeline, run, tracker_config  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sources", nargs="+", help="video files, folders of videos, camera indices, URLs")
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    add_model_args(parser)
    add_tracker_args(parser)
    parser.add_argument("--stride", type=int, default=1, help="pipeline on every N-th frame")
    parser.add_argument("--max-frames", type=int, help="stop each source after this many frames")
    parser.add_argument("--duration", type=float, help="stop each source after this many seconds")
    parser.add_argument("--min-frames", type=int, default=3, help="frames before attire is decided")
    parser.add_argument("--device", help="cpu, cuda... (default: cuda if available)")
    parser.add_argument("--no-draw", action="store_true", help="JSON only, no annotated MP4")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    return parser.parse_args(argv)


def expand_sources(items: list[str]) -> list[str | int]:
    """Folders become their videos (sorted); files, camera indices and URLs stay as given."""
    out: list[str | int] = []
    for item in items:
        path = Path(item)
        if path.is_dir():
            found = sorted(str(p) for p in path.iterdir() if p.suffix.lower() in VIDEO_EXTENSIONS)
            if not found:
                raise ValueError(f"folder {item} holds no video ({', '.join(VIDEO_EXTENSIONS)}); "
                                 "give video files, a camera index or a stream URL")
            out += found
        else:
            out.append(parse_source(item))
    return out


def main(args: argparse.Namespace) -> int:
    sources = expand_sources(args.sources)
    args.out.mkdir(parents=True, exist_ok=True)
    pipe = load_pipeline(args, score_thresh=args.score_thresh, batch_size=1)
    options = TrackOptions(args.stride, args.max_frames, args.duration, args.min_frames,
                           tracker_config(args, pipe.score_thresh))
    summaries, problems = [], []
    with open(args.out / "predictions.jsonl", "w") as preds, open(args.out / "events.jsonl", "w") as events:
        for k, source in enumerate(sources):
            name = Path(source).stem if isinstance(source, str) and "://" not in source else f"source{k}"
            video = None if args.no_draw else args.out / f"{name}.mp4"
            try:
                summary = run_video(pipe, source, preds, events, options, video)
            except (OSError, ValueError) as error:
                if args.debug:
                    raise
                problems.append(str(error))
                print(f"skipped {source}: {error}", file=sys.stderr)
                continue
            summaries.append(summary)
            problems += [summary["problem"]] if summary["problem"] else []
            print(f"{source}: {summary['frames']} frames, {summary['people']} people "
                  f"{summary['people_per_value']}, {summary['undecided_tracks']} undecided tracks")
    write_json(args.out / "summary.json", {"sources": summaries, "problems": problems})
    for problem in problems:
        print(f"warning: {problem}", file=sys.stderr)
    print(f"outputs in {args.out}")
    return 1 if problems else 0


if __name__ == "__main__":
    run(main, parse_args())
