"""Train the stage-1 head segmenter (torchvision Mask R-CNN) on COCO head annotations.

Default recipe (configs/seg_default.yaml): MobileNetV2-FPN, ImageNet-initialised, one class-
agnostic ``head`` class, 640 px short side, SGD lr 0.01 batch 4, 100 warm-up steps then
cosine, 12 epochs, val bbox AP50 picks ``best.pt``.

Examples:
    python tools/train_seg.py --config configs/seg_hardhat.yaml --out runs/seg_hardhat
    python tools/train_seg.py --config configs/seg_hardhat.yaml --out runs/seg_hardhat --resume
    python tools/train_seg.py --config configs/seg_default.yaml \\
        --set data.train_json=my/train.json data.val_json=my/val.json train.epochs=24
    # attire categories kept (the single-stage baseline):
    python tools/train_seg.py --config configs/seg_facemask.yaml --set data.class_agnostic=false
    # several GPUs or nodes:
    torchrun --nproc_per_node 8 tools/train_seg.py --config ... --out ...
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from headseg.config import SegConfig, load_config  # noqa: E402
from headseg.segmentation import train_segmenter  # noqa: E402
from tools._cli import add_train_args, run  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_train_args(parser, "configs/seg_*.yaml", "train.lr=0.01 model.min_size=512")
    return parser.parse_args(argv)


def main(args: argparse.Namespace) -> dict:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    cfg = load_config(SegConfig, args.config, args.set)
    result = train_segmenter(cfg, args.out, resume=args.resume, device=args.device,
                             progress=not args.no_progress)
    print(f"best val {cfg.train.select_metric}: {result['best']:.4f}; checkpoints in {args.out}")
    return result


if __name__ == "__main__":
    run(main, parse_args())
