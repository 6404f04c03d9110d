"""Time mask pasting: torchvision's loop (one mask at a time) vs headseg's batched form.

Random 28 x 28 mask probabilities and boxes of about 5 % of the image side, as a trained
Mask R-CNN gives for heads; checks the two agree, then prints the median time of each.

Examples:
    python tools/bench_paste.py                                  # CPU, three scenes
    python tools/bench_paste.py --device cuda --repeats 50
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from torchvision.models.detection.roi_heads import paste_masks_in_image  # noqa: E402

from headseg.segmentation import paste_masks  # noqa: E402
from tools._cli import run  # noqa: E402

# (masks, height, width): a 400 px sample photo, a crowded 640 x 480 frame, a large photo.
SCENES = ((11, 300, 400), (50, 480, 640), (20, 1536, 2048))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=10)
    return parser.parse_args(argv)


def _median_ms(fn, repeats: int, device: torch.device) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times)


def main(args: argparse.Namespace) -> list[dict]:
    device = torch.device(args.device)
    gen = torch.Generator().manual_seed(0)
    rows = []
    print(f"device={device} threads={torch.get_num_threads()}")
    print(f"{'masks':>6}{'image':>12}{'torchvision ms':>16}{'headseg ms':>12}{'max |diff|':>12}")
    for n, h, w in SCENES:
        size = torch.tensor([w, h], dtype=torch.float32)
        masks = torch.rand(n, 1, 28, 28, generator=gen).to(device)
        corner = torch.rand(n, 2, generator=gen) * size * 0.9
        boxes = torch.cat([corner, torch.minimum(corner + size * 0.05, size)], dim=1).to(device)
        diff = (paste_masks_in_image(masks, boxes, (h, w)) - paste_masks(masks, boxes, (h, w))).abs().max()
        loop = _median_ms(lambda: paste_masks_in_image(masks, boxes, (h, w)), args.repeats, device)
        batched = _median_ms(lambda: paste_masks(masks, boxes, (h, w)), args.repeats, device)
        rows.append({"masks": n, "height": h, "width": w, "torchvision_ms": loop, "headseg_ms": batched,
                     "max_abs_diff": float(diff)})
        print(f"{n:>6}{f'{w}x{h}':>12}{loop:>16.2f}{batched:>12.2f}{float(diff):>12.1e}")
    return rows


if __name__ == "__main__":
    run(main, parse_args())
