"""Time the segmenter's backbone + FPN in each inference form, on this machine.

Forms: as trained (eager, frozen BatchNorm as separate ops), BatchNorm folded into the
convolutions, folded + channels-last (what ``HeadwearPipeline`` runs), and optionally
``torch.compile`` of the as-trained backbone. Prints the median ms per batch and the largest
difference from the as-trained features.

Examples:
    python tools/bench_backbone.py                                  # bundled model, 640 x 864
    python tools/bench_backbone.py --compile                        # + torch.compile (slow start)
    python tools/bench_backbone.py --device cuda --batch-size 8 --size 480x640
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from headseg.pipeline import ASSETS  # noqa: E402
from headseg.segmentation import fold_frozen_batchnorm, load_segmenter  # noqa: E402
from tools._cli import run  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seg", type=Path, default=ASSETS / "segmenter.pt", help="segmenter checkpoint")
    parser.add_argument("--size", default="640x864", metavar="HxW", help="input height x width after resizing")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=8)
    parser.add_argument("--compile", action="store_true", help="also time torch.compile (inductor)")
    return parser.parse_args(argv)


def _median_ms(fn, x: torch.Tensor, repeats: int) -> tuple[float, dict[str, torch.Tensor]]:
    out = fn(x)  # warm-up (and compilation)
    times = []
    for _ in range(repeats):
        if x.is_cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = fn(x)
        if x.is_cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times), out


@torch.inference_mode()
def main(args: argparse.Namespace) -> dict[str, float]:
    try:
        h, w = (int(v) for v in args.size.lower().split("x"))
    except ValueError:
        raise ValueError(f"--size {args.size!r}; expected HxW in pixels, e.g. 640x864") from None
    device = torch.device(args.device)
    trained = load_segmenter(args.seg, device)[0].backbone
    folded = copy.deepcopy(trained)
    fold_frozen_batchnorm(folded)
    channels_last = copy.deepcopy(folded).to(memory_format=torch.channels_last)
    x = torch.rand(args.batch_size, 3, h, w, device=device)
    forms = {"as trained": (trained, x), "folded": (folded, x),
             "folded + channels-last": (channels_last, x.contiguous(memory_format=torch.channels_last))}
    if args.compile:
        forms["torch.compile (as trained)"] = (torch.compile(trained), x)
    _, reference = _median_ms(trained, x, 1)
    print(f"device={device} input={args.batch_size}x3x{h}x{w} threads={torch.get_num_threads()}")
    rows = {}
    for name, (module, inp) in forms.items():
        t0 = time.perf_counter()
        ms, out = _median_ms(module, inp, args.repeats)
        first = time.perf_counter() - t0 - ms * args.repeats / 1000
        diff = max(float((out[k] - reference[k]).abs().max()) for k in reference)
        rows[name] = ms
        print(f"{name:<28}{ms:>9.1f} ms   max |diff| {diff:.1e}   first call {first:.1f} s")
    return rows


if __name__ == "__main__":
    run(main, parse_args())
