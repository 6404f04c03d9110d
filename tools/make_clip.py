"""Make a synthetic video from still photos: the camera pans, zooms and shakes over each one.

Each photo gets one short clip per ``--motions`` entry (see ``headseg.clips.camera_path``),
all at ``--size``, written one after another into a single MP4. For demos and smoke tests;
``tools/eval_video.py`` makes the same clips with ground truth to score tracking.

Examples:
    python tools/make_clip.py docs/samples --out demo_output/samples_clip.mp4
    python tools/make_clip.py a.jpg b.jpg --out clip.mp4 --motions pan zoom --frames 30 --fps 15
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import cv2  # noqa: E402
import numpy as np  # noqa: E402

from headseg.clips import MOTIONS, make_clip  # noqa: E402
from headseg.io import IMAGE_EXTENSIONS, read_image  # noqa: E402
from tools._cli import run  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("photos", nargs="+", type=Path, help="image files or folders of images")
    parser.add_argument("--out", type=Path, required=True, help="the MP4 to write")
    parser.add_argument("--motions", nargs="+", default=["pan", "zoom", "shake"], choices=MOTIONS)
    parser.add_argument("--frames", type=int, default=20, help="frames per photo and motion")
    parser.add_argument("--fps", type=float, default=10.0)
    parser.add_argument("--size", type=int, nargs=2, default=[320, 400], metavar=("H", "W"))
    return parser.parse_args(argv)


def main(args: argparse.Namespace) -> int:
    photos = []
    for path in args.photos:
        photos += sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS) \
            if path.is_dir() else [path]
    if not photos:
        raise ValueError(f"no image in {[str(p) for p in args.photos]}; expected image files or folders")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    size = tuple(args.size)
    writer = cv2.VideoWriter(str(args.out), cv2.VideoWriter_fourcc(*"mp4v"), args.fps, (size[1], size[0]))
    try:
        for photo in photos:
            image = read_image(photo)
            for motion in args.motions:
                for frame in make_clip(image, np.zeros((0, 4)), motion, args.frames, size, occlude=False):
                    writer.write(cv2.cvtColor(frame.image, cv2.COLOR_RGB2BGR))
    finally:
        writer.release()
    print(f"{len(photos)} photos x {len(args.motions)} motions x {args.frames} frames -> {args.out}")
    return 0


if __name__ == "__main__":
    run(main, parse_args())
