"""Run the head-attire pipeline on images, folders, globs and videos.

Writes to ``--out``: one annotated PNG per image (``<name>.png``) or one annotated MP4 per
video, ``predictions.jsonl`` (one record per image or video frame: boxes, RLE masks, scores,
labels, probabilities, attributes) and ``summary.json`` (heads per attire class; per
``attribute/value`` for a multi-attribute classifier). An unreadable input is
reported on one line and skipped; the exit status is then 1. Tracebacks only with ``--debug``.
Videos here are frame dumps; ``tools/track.py`` tracks people through them and writes events.

Examples:
    python tools/predict.py docs/samples --out demo_output            # bundled default model
    python tools/predict.py "site/*.jpg" clip.mp4 --out out \\
        --seg runs/seg/best.pt --cls runs/cls/best.pt --score-thresh 0.6
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter, deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import cv2  # noqa: E402
from tqdm import tqdm  # noqa: E402

from headseg.io import VIDEO_EXTENSIONS, list_inputs, read_image, write_json  # noqa: E402
from headseg.pipeline import HeadwearPipeline, ImageResult  # noqa: E402
from tools._cli import add_model_args, add_score_arg, load_pipeline, run  # noqa: E402

DECODE_AHEAD = 4  # images decoded in threads while the model runs (OpenCV releases the GIL)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("inputs", nargs="+", help="image files, folders, globs or video files")
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    add_model_args(parser)
    add_score_arg(parser)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--device", help="cpu, cuda... (default: cuda if available)")
    parser.add_argument("--no-draw", action="store_true", help="JSON only, no annotated output")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    return parser.parse_args(argv)


def _run_video(pipe: HeadwearPipeline, path: Path, args: argparse.Namespace, sink, counts: Counter) -> str | None:
    """Annotate a video frame by frame; returns a warning if it ended early (damaged frames)."""
    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        raise ValueError(f"cannot open video {path}")
    expected = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
    fps = cap.get(cv2.CAP_PROP_FPS) or 25.0
    writer, frame_index = None, 0
    with tqdm(total=expected or None, desc=path.name, unit="frame", leave=False) as bar:
        while True:
            ok, frame = cap.read()
            if not ok or frame is None:
                break
            result = pipe(frame, color_order="BGR")
            _record(sink, counts, result, str(path), frame_index)
            if not args.no_draw:
                if writer is None:
                    writer = cv2.VideoWriter(str(args.out / f"{path.stem}.mp4"),
                                             cv2.VideoWriter_fourcc(*"mp4v"), fps, frame.shape[1::-1])
                writer.write(cv2.cvtColor(result.draw(frame[:, :, ::-1].copy()), cv2.COLOR_RGB2BGR))
            frame_index += 1
            bar.update()
    cap.release()
    if writer is not None:
        writer.release()
    if frame_index == 0:
        raise ValueError(f"video {path} has no readable frame")
    if expected and frame_index < expected:
        return f"{path}: read {frame_index} of {expected} frames; the rest are damaged or missing"
    return None


def _record(sink, counts: Counter, result: ImageResult, source: str, frame: int | None = None) -> None:
    record = result.to_json()
    record["source"] = source
    if frame is not None:
        record["frame"] = frame
    sink.write(json.dumps(record) + "\n")
    counts.update(result.counts())


def _decode_ahead(files: list[Path]) -> Iterator[tuple[Path, Future | None]]:
    """Yield ``(path, future of read_image(path))`` in order, decoding a few images ahead.

    Videos get ``None`` (they are read frame by frame). A decoding error surfaces from
    ``future.result()``, so each file keeps its own error handling.
    """
    with ThreadPoolExecutor(max_workers=2) as pool:
        pending: deque[tuple[Path, Future | None]] = deque()
        upcoming = iter(files)

        def submit_next() -> None:
            path = next(upcoming, None)
            if path is not None:
                is_video = path.suffix.lower() in VIDEO_EXTENSIONS
                pending.append((path, None if is_video else pool.submit(read_image, path)))

        for _ in range(DECODE_AHEAD):
            submit_next()
        while pending:
            item = pending.popleft()
            submit_next()
            yield item


def main(args: argparse.Namespace) -> int:
    files, problems = list_inputs(args.inputs)
    args.out.mkdir(parents=True, exist_ok=True)
    pipe = load_pipeline(args, score_thresh=args.score_thresh, batch_size=args.batch_size)
    counts: Counter = Counter()
    done = 0
    with open(args.out / "predictions.jsonl", "w") as sink:
        for path, decoded in tqdm(_decode_ahead(files), total=len(files), desc="predict", unit="file"):
            try:
                if decoded is None:
                    warning = _run_video(pipe, path, args, sink, counts)
                    if warning:
                        tqdm.write(f"warning: {warning}", file=sys.stderr)
                else:
                    image = decoded.result()
                    result = pipe(image)
                    _record(sink, counts, result, str(path))
                    if not args.no_draw:
                        cv2.imwrite(str(args.out / f"{path.stem}.png"),
                                    cv2.cvtColor(result.draw(image), cv2.COLOR_RGB2BGR))
                done += 1
            except (OSError, ValueError, TypeError) as e:
                if args.debug:
                    raise
                problems.append(f"{path}: {e}")
                tqdm.write(f"skipped {path}: {e}", file=sys.stderr)
    summary = {"files": len(files), "processed": done, "skipped": problems,
               "heads_per_class": dict(counts.most_common())}
    write_json(args.out / "summary.json", summary)
    print(f"{done}/{len(files)} files; heads per class: " + ", ".join(f"{k} {v}" for k, v in counts.most_common()))
    print(f"outputs in {args.out}")
    for p in problems:
        print(f"skipped: {p}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    run(main, parse_args())
