"""Video speed and memory: frames/s of the tracking loop, and the process RSS over a long clip.

Speed (default): the loop ``tools/track.py`` runs, ``headseg.video.run_video`` (decode, the
pipeline on every ``--stride``-th frame, boxes carried in between, tracking, events, JSON
lines), twice over the same clip: JSON only, then also drawing and encoding the annotated MP4.
Frames/s is wall-clock over every frame read after the first ``--warmup`` pipeline calls
(``--warmup`` x ``--stride`` frames, not timed), with the share of that time spent in the pipeline.

Memory (``--memory``): ``run_video`` over a long clip, with the annotated MP4 as
``tools/track.py`` writes it by default (``--no-draw``: without), sampling the process RSS every
``--every`` frames; writes the samples to ``--out`` and a PNG of RSS over video time beside it,
and prints the RSS after warm-up, the peak RSS and the growth from the first to the last tenth.

Without a VIDEO, a clip is made from ``--photos`` (default 640x480, 10 fps): each photo under each
camera motion of ``headseg.clips`` in turn, 2 s per scene (a minute with ``--memory``), in a
temporary folder or at ``--clip``.

Examples:
    python tools/bench_video.py --out runs/bench_video.json       # 24 s clip made from docs/samples
    python tools/bench_video.py clip.mp4 --model hhw --out runs/bench_video.json
    python tools/bench_video.py --memory --minutes 60 --stride 30 --out runs/video_memory.json
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import date
from pathlib import Path
from typing import Any, TextIO

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from tqdm import tqdm  # noqa: E402

from headseg.clips import MOTIONS, make_clip  # noqa: E402
from headseg.io import IMAGE_EXTENSIONS, list_inputs, read_image, write_json  # noqa: E402
from headseg.video import TrackOptions, run_video  # noqa: E402
from tools._cli import add_model_args, add_tracker_args, load_pipeline, run, tracker_config  # noqa: E402

SAMPLES = Path(__file__).resolve().parents[1] / "docs" / "samples"
VIEWS = 20  # views rendered per scene (photo and motion), as tools/make_clip.py's --frames


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("video", nargs="?", type=Path, help="a video file (default: made from --photos)")
    parser.add_argument("--memory", action="store_true", help="sample RSS over a long clip instead of timing")
    parser.add_argument("--photos", nargs="+", type=Path, default=[SAMPLES],
                        help="images or folders the clip is made from")
    parser.add_argument("--minutes", type=float, help="made clip's length (default 0.4; 60 with --memory)")
    parser.add_argument("--fps", type=float, default=10.0, help="made clip's frame rate")
    parser.add_argument("--size", type=int, nargs=2, default=[480, 640], metavar=("H", "W"),
                        help="made clip's frame size")
    parser.add_argument("--clip", type=Path, help="keep the made clip here (pass it as VIDEO next time)")
    add_model_args(parser)
    add_tracker_args(parser)
    parser.add_argument("--stride", type=int, default=3, help="pipeline on every N-th frame")
    parser.add_argument("--warmup", type=int, default=2, help="pipeline calls not timed (x --stride frames)")
    parser.add_argument("--frames", type=int, help="stop after this many frames of the video")
    parser.add_argument("--every", type=int, default=100, help="--memory: frames between RSS samples")
    parser.add_argument("--no-draw", action="store_true", help="--memory: JSON only, no annotated MP4")
    parser.add_argument("--device", help="cpu, cuda... (default: cuda if available)")
    parser.add_argument("--out", type=Path, help="JSON report (with --memory, the PNG goes beside it)")
    return parser.parse_args(argv)


def write_clip(photos: list[Path], path: Path, num_frames: int, fps: float, size: tuple[int, int],
               scene_frames: int) -> None:
    """An MP4 of ``num_frames`` frames of ``size`` ``(H, W)``: each photo under each camera motion
    in turn for ``scene_frames`` frames, back and forth through VIEWS views of it rendered once by
    ``headseg.clips.make_clip``, so that encoding is the only cost per frame."""
    scenes = [(photo, motion) for photo in photos for motion in MOTIONS]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (size[1], size[0]))
    if not writer.isOpened():
        raise ValueError(f"OpenCV cannot write an mp4v MP4 at {path}; expected a writable .mp4 path")
    try:
        for k in range(num_frames):
            scene, t = divmod(k, scene_frames)
            if t == 0:
                photo, motion = scenes[scene % len(scenes)]
                views = [cv2.cvtColor(f.image, cv2.COLOR_RGB2BGR) for f in
                         make_clip(read_image(photo), np.zeros((0, 4)), motion, VIEWS, size, occlude=False)]
            t %= 2 * VIEWS - 2
            writer.write(views[min(t, 2 * VIEWS - 2 - t)])
    finally:
        writer.release()


class Probe:
    """Watches ``run_video`` from outside, in two roles: its pipeline (each call timed) and its
    predictions file (``run_video`` writes one line per frame, once that frame's result is out).

    The clock starts when the last warm-up frame's line is written, so the timed part is every
    later frame whole (decode, pipeline, tracking, events, drawing) and the end of the video.
    """

    def __init__(self, pipe: Any, predictions: TextIO, warmup: int, total: int | None,
                 on_frame: Callable[[int], None] | None = None) -> None:
        self.pipe, self.file, self.warmup, self.on_frame = pipe, predictions, warmup, on_frame
        self.frames, self.calls, self.pipeline_s = 0, 0, 0.0
        self.start = time.perf_counter()
        self.bar = tqdm(total=total, unit="frame", leave=False)

    def __call__(self, image: np.ndarray, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        result = self.pipe(image, **kwargs)
        if self.frames >= self.warmup:
            self.pipeline_s += time.perf_counter() - t0
            self.calls += 1
        return result

    def write(self, line: str) -> int:
        self.file.write(line)
        self.frames += 1
        if self.frames == self.warmup:
            self.start = time.perf_counter()
        if self.on_frame is not None:
            self.on_frame(self.frames - 1)
        self.bar.update()
        return len(line)


def run_once(pipe: Any, video: Path, options: TrackOptions, folder: Path, draw: bool, warmup: int,
             total: int | None, on_frame: Callable[[int], None] | None = None) -> dict[str, Any]:
    """One ``run_video`` over ``video``, outputs in ``folder``: frames read, and the timed part."""
    with open(folder / "predictions.jsonl", "w") as preds, open(folder / "events.jsonl", "w") as events:
        probe = Probe(pipe, preds, warmup, total, on_frame)
        summary = run_video(probe, video, probe, events, options, folder / "annotated.mp4" if draw else None)
        seconds = time.perf_counter() - probe.start
        probe.bar.close()
    timed = summary["frames"] - warmup
    if timed < 1:
        raise ValueError(f"{video} has {summary['frames']} frames; expected more than --warmup x --stride = "
                         f"{warmup}: give a longer video or a smaller --warmup")
    return {"draw": draw, "frames": summary["frames"], "timed_frames": timed, "seconds": seconds,
            "frames_per_second": timed / seconds, "pipeline_calls": probe.calls,
            "pipeline_share": probe.pipeline_s / seconds, "fps": summary["fps"], "people": summary["people"]}


def rss_mb() -> float:
    """This process's resident set size now, in MB (Linux ``/proc``)."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def plot_rss(frames: list[int], rss: list[float], fps: float, title: str, path: Path) -> None:
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    fig, ax = plt.subplots(figsize=(8, 3.5))
    ax.plot([k / fps / 60 for k in frames], rss)
    ax.set(xlabel="video time (min)", ylabel="RSS (MB)", title=title, ylim=(0, 1.1 * max(rss)))
    ax.ticklabel_format(axis="y", useOffset=False)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def made_clip(args: argparse.Namespace, folder: Path) -> Path:
    """The clip made from ``--photos`` (``--minutes`` at ``--fps``), at ``--clip`` or in ``folder``."""
    photos, problems = list_inputs(args.photos)
    photos = [p for p in photos if p.suffix.lower() in IMAGE_EXTENSIONS]
    if problems or not photos:
        detail = "; ".join(problems) or f"no image in {' '.join(map(str, args.photos))}"
        raise FileNotFoundError(f"{detail}; expected image files or folders of images for --photos")
    num_frames = round((args.minutes or (60.0 if args.memory else 0.4)) * 60 * args.fps)
    path = args.clip or folder / "clip.mp4"
    path.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    write_clip(photos, path, num_frames, args.fps, tuple(args.size), round(60 * args.fps) if args.memory else VIEWS)
    print(f"made {path}: {num_frames} frames from {len(photos)} photos in {time.perf_counter() - t0:.0f} s")
    return path


def measure_memory(pipe: Any, video: Path, options: TrackOptions, folder: Path, args: argparse.Namespace,
                   warmup: int, total: int | None) -> dict[str, Any]:
    """One run with RSS sampled every ``--every`` frames and at the last; the plot beside ``--out``."""
    frames: list[int] = []
    rss: list[float] = []

    def sample(k: int) -> None:
        if k % args.every == 0:
            frames.append(k)
            rss.append(rss_mb())

    result = run_once(pipe, video, options, folder, not args.no_draw, warmup, total, sample)
    if frames[-1] != result["frames"] - 1:
        frames.append(result["frames"] - 1)
        rss.append(rss_mb())
    after = [mb for k, mb in zip(frames, rss) if k >= warmup]
    tenth = max(1, len(after) // 10)
    plot = args.out.with_suffix(".png")
    plot_rss(frames, rss, result["fps"], f"run_video RSS, stride {args.stride}, "
             f"{'with' if not args.no_draw else 'no'} annotated MP4", plot)
    return {"run": result, "sample_frames": frames, "rss_mb": rss, "rss_after_warmup_mb": after[0],
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "growth_mb": statistics.median(after[-tenth:]) - statistics.median(after[:tenth]), "plot": str(plot)}


def main(args: argparse.Namespace) -> dict[str, Any]:
    if args.memory and not args.out:
        raise ValueError("--memory writes its RSS samples to --out and the plot beside it; "
                         "give --out, e.g. --out runs/video_memory.json")
    if args.memory and not Path("/proc/self/statm").exists():
        raise ValueError("--memory reads the RSS from /proc/self/statm, which this system lacks; run it on Linux")
    if args.every < 1 or args.warmup < 0:
        raise ValueError(f"got --every {args.every}, --warmup {args.warmup}; expected --every >= 1 and --warmup >= 0")
    if args.video and not args.video.is_file():
        raise FileNotFoundError(f"video {args.video} does not exist; give a video file, or none to make "
                                "a clip from --photos")
    with tempfile.TemporaryDirectory(prefix="bench_video_") as tmp:
        video = args.video or made_clip(args, Path(tmp))
        cap = cv2.VideoCapture(str(video))
        count, width, height = (int(cap.get(p)) for p in (cv2.CAP_PROP_FRAME_COUNT, cv2.CAP_PROP_FRAME_WIDTH,
                                                          cv2.CAP_PROP_FRAME_HEIGHT))
        cap.release()
        pipe = load_pipeline(args, score_thresh=args.score_thresh, batch_size=1)
        options = TrackOptions(args.stride, args.frames, tracker=tracker_config(args, pipe.score_thresh))  # as track.py
        total = min(filter(None, (count, args.frames)), default=None)
        warmup = args.warmup * args.stride
        report: dict[str, Any] = {
            "date": date.today().isoformat(), "machine": platform.platform(), "processor": platform.processor(),
            "torch": torch.__version__, "threads": torch.get_num_threads(), "device": str(pipe.device),
            "video": str(video), "size": [height, width], "stride": args.stride, "warmup_frames": warmup,
            "args": {k: str(v) for k, v in vars(args).items()}}
        if args.memory:
            report.update(measure_memory(pipe, video, options, Path(tmp), args, warmup, total))
            frames, fps = report["run"]["frames"], report["run"]["fps"]
            print(f"{video}: {frames} frames ({frames / fps / 60:.1f} min at {fps:g} fps), {width}x{height}, "
                  f"stride {args.stride}: the pipeline ran on 1 frame in {args.stride} ({-(-frames // args.stride)} "
                  f"frames); every frame was decoded, tracked, written{'' if args.no_draw else ' and drawn'}")
            print(f"RSS after warm-up {report['rss_after_warmup_mb']:.0f} MB, peak {report['peak_rss_mb']:.0f} MB, "
                  f"growth from the first to the last tenth of the video {report['growth_mb']:+.1f} MB")
            print(f"plot: {report['plot']}")
        else:
            report["runs"] = [run_once(pipe, video, options, Path(tmp), draw, warmup, total) for draw in (False, True)]
            print(f"{video}: {report['runs'][0]['frames']} frames {width}x{height}, stride {args.stride}, first "
                  f"{warmup} frames not timed; {report['device']}, {report['threads']} threads")
            print(f"{'':<22}{'frames/s':>9}{'pipeline':>10}")
            for r in report["runs"]:
                print(f"{'JSON + annotated MP4' if r['draw'] else 'JSON only':<22}"
                      f"{r['frames_per_second']:>9.2f}{100 * r['pipeline_share']:>9.0f}%")
    if args.out:
        write_json(args.out, report)
    return report


if __name__ == "__main__":
    run(main, parse_args())
