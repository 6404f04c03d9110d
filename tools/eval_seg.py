"""COCO evaluation of a trained head segmenter (bbox and segm AP through pycocotools).

Writes the COCO results JSON and a flat metrics JSON (keys like ``bbox/AP50``, ``segm/AP``),
and prints a table. When the ground-truth masks were derived from boxes the report says so:
segm numbers are then against derived masks, not ground truth.

Examples:
    python tools/eval_seg.py runs/seg_hardhat/best.pt work_data/hardhat/test.json \\
        --out runs/seg_hardhat/test_metrics.json
    python tools/eval_seg.py best.pt my/val.json --set min_size=640   # an inference setting

A segmenter trained with its attire categories is scored per category, its classes matched to
the file's categories by name; a ``head`` one class-agnostically.

--bootstrap N adds 95 % intervals of bbox AP and AP50 (``bbox/AP50/ci_low``...; a third column
in the table): a percentile bootstrap over the photos, N resamples of one COCOeval each
(``headseg.evaluation.bootstrap_coco``).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from headseg.config import parse_overrides  # noqa: E402
from headseg.data import load_coco  # noqa: E402
from headseg.evaluation import bootstrap_coco, format_metrics_table  # noqa: E402
from headseg.io import write_json  # noqa: E402
from headseg.segmentation import evaluate_segmenter, load_segmenter  # noqa: E402
from tools._cli import run  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", type=Path, help="segmenter checkpoint (best.pt)")
    parser.add_argument("annotations", type=Path, help="COCO JSON to evaluate on")
    parser.add_argument("--image-root", type=Path, help="default: the JSON's folder")
    parser.add_argument("--out", type=Path, help="flat metrics JSON; results go beside it")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (logs under nohup)")
    parser.add_argument("--bootstrap", type=int, default=0, metavar="N",
                        help="resamples of the photos for 95%% intervals of bbox AP and AP50 (0: none)")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="inference-time model fields, e.g. box_score_thresh=0.05")
    return parser.parse_args(argv)


def main(args: argparse.Namespace) -> dict[str, float]:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    model, cfg, class_names = load_segmenter(args.checkpoint, args.device, **parse_overrides(args.set))
    coco = load_coco(args.annotations, args.image_root)
    metrics, results = evaluate_segmenter(model, coco, args.device, class_names,
                                          derived_mask=cfg.data.derived_mask,
                                          box_from_mask=cfg.model.box_from_mask, progress=not args.no_progress)
    if args.bootstrap:
        metrics.update(bootstrap_coco(coco.dataset, results, class_agnostic=list(class_names) == ["head"],
                                      resamples=args.bootstrap, progress=not args.no_progress))
    print(format_metrics_table(metrics))
    if coco.derived_masks:
        print(f"note: masks in {args.annotations} are derived from boxes ({coco.derived_masks}); "
              "segm numbers are against derived masks, not ground truth")
    if args.out:
        write_json(args.out, metrics)
        write_json(args.out.with_name(args.out.stem + "_results.json"), results, indent=None)
        print(f"metrics: {args.out}")
    return metrics


if __name__ == "__main__":
    run(main, parse_args())
