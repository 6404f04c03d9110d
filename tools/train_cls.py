"""Train the stage-2 attire classifier on crops written by tools/make_crops.py.

Default recipe (configs/cls_default.yaml): ImageNet MobileNetV2, new dropout + Linear head,
96 px masked crops (grey outside the head mask, 15 % padding), Adam lr 1e-3 on the
head for 2 frozen epochs, then the whole network at lr 1e-4, batch 32, label smoothing 0.05,
class-balanced sampling, flip/affine/colour/erasing augmentation; val macro-F1 picks
``best.pt`` (val loss breaks ties) and stops the run after 4 epochs without improvement.
Results and timings on the real sets: docs/RESULTS.md.

Examples:
    python tools/train_cls.py --config configs/cls_hardhat.yaml --out runs/cls_hardhat
    python tools/train_cls.py --config configs/cls_hardhat.yaml --out runs/cls_hardhat --resume
    python tools/train_cls.py --config configs/cls_facemask.yaml --out runs/cls_facemask_loss \\
        --set data.balance=loss train.epochs=8
    # ablations: random init, fine-tune everything from the start
    python tools/train_cls.py --config configs/cls_hardhat.yaml --out runs/cls_hh_scratch \\
        --set model.weights=none
    python tools/train_cls.py --config configs/cls_hardhat.yaml --out runs/cls_hh_ftall \\
        --set train.frozen_epochs=0
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from headseg.classification import train_classifier  # noqa: E402
from headseg.config import ClsConfig, load_config  # noqa: E402
from tools._cli import add_train_args, run  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_train_args(parser, "configs/cls_*.yaml", "train.lr=0.001 data.balance=loss")
    return parser.parse_args(argv)


def main(args: argparse.Namespace) -> dict:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    cfg = load_config(ClsConfig, args.config, args.set)
    result = train_classifier(cfg, args.out, resume=args.resume, device=args.device,
                              progress=not args.no_progress)
    print(f"best val macro-F1: {result['best']:.4f} (epoch {result['best_epoch'] + 1}); "
          f"checkpoints in {args.out}")
    return result


if __name__ == "__main__":
    run(main, parse_args())
