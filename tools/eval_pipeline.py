"""Joint evaluation: detection and attire classification judged together, COCO-style.

Each predicted head's category is its attire label, scored by segmentation score x label
probability; COCO bbox AP over the attire categories (mAP, AP50, per-class AP) plus
precision/recall at the operating point (heads with segmentation score >= --op-thresh,
labelled by their top class), and the threshold that would maximise F1 on this split: read it
on val, pass it with --op-thresh for test. Baselines in the same run, on the same images:

* ``--single-stage CKPT``: a Mask R-CNN trained with the attire categories directly
  (``tools/train_seg.py --set data.class_agnostic=false``);
* ``--haar``: OpenCV's Haar face detector, boxes expanded by --haar-expand, + the same classifier.

Examples:
    python tools/eval_pipeline.py work_data/facemask/test.json --seg runs/seg_facemask/best.pt \\
        --cls runs/cls_facemask/best.pt --single-stage runs/seg1_facemask/best.pt --haar \\
        --out runs/pipeline_facemask_test.json
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tqdm import tqdm  # noqa: E402

from headseg.baselines import HaarFaceDetector  # noqa: E402
from headseg.config import parse_overrides  # noqa: E402
from headseg.data import load_coco  # noqa: E402
from headseg.evaluation import coco_evaluate, format_metrics_table, operating_point  # noqa: E402
from headseg.io import read_image, write_json  # noqa: E402
from headseg.pipeline import HeadwearPipeline, predict_coco  # noqa: E402
from headseg.segmentation import evaluate_segmenter, load_segmenter  # noqa: E402
from tools._cli import run  # noqa: E402

KEYS = ("bbox/AP", "bbox/AP50", "bbox/AP75", "bbox/APs", "op_thresh", "precision", "recall", "f1",
        "f1_best_thresh")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("annotations", type=Path, help="COCO JSON whose categories are attire labels")
    parser.add_argument("--seg", type=Path, required=True, help="class-agnostic segmenter checkpoint")
    parser.add_argument("--cls", type=Path, required=True, help="attire classifier checkpoint")
    parser.add_argument("--single-stage", type=Path, help="Mask R-CNN trained on attire categories")
    parser.add_argument("--haar", action="store_true", help="add the Haar face-detector baseline")
    parser.add_argument("--haar-expand", type=float, default=1.0, help="face box side multiplier")
    parser.add_argument("--op-thresh", nargs="+", default=["0.5"], metavar="[SYSTEM=]T",
                        help="operating-point score threshold, one for all systems or per system "
                             "(two_stage=0.3 single_stage=0.4); pick it on val from the printed "
                             "F1-best thresholds, then pass it for test")
    parser.add_argument("--seg-set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="inference fields of both segmenters (two-stage and single-stage), "
                             "e.g. min_size=640 rpn_post_nms_top_n_test=1000")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, help="flat metrics JSON")
    return parser.parse_args(argv)


SYSTEMS = ("two_stage", "single_stage", "haar")
SWEEP = [round(0.05 * k, 2) for k in range(1, 20)]


def _op_thresholds(values: list[str]) -> dict[str, float]:
    """``["0.5"]`` -> every system 0.5; ``["two_stage=0.3", ...]`` -> per system, others 0.5."""
    if len(values) == 1 and "=" not in values[0]:
        values = [f"{system}={values[0]}" for system in SYSTEMS]
    thresholds = dict.fromkeys(SYSTEMS, 0.5)
    for item in values:
        name, sep, value = item.partition("=")
        try:
            if not sep or name not in thresholds:
                raise ValueError
            thresholds[name] = float(value)
        except ValueError:
            raise ValueError(f"--op-thresh {item!r}; expected T or SYSTEM=T with SYSTEM in "
                             f"{', '.join(SYSTEMS)} and T a number") from None
    return thresholds


def _score(coco, joint: list[dict], at_op: list[dict], op_thresh: float) -> dict[str, float]:
    """COCO AP of the joint scores, P/R/F1 at ``op_thresh``, and the F1-best threshold here."""
    metrics = coco_evaluate(coco.dataset, joint, ("bbox",))
    sweep = {t: operating_point(coco.dataset, at_op, t)["f1"] for t in SWEEP}
    best = max(sweep, key=sweep.get)
    return {**metrics, **operating_point(coco.dataset, at_op, op_thresh), "op_thresh": op_thresh,
            "f1_best_thresh": best, "f1_at_best_thresh": sweep[best]}


def main(args: argparse.Namespace) -> dict[str, float]:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    op_thresh = _op_thresholds(args.op_thresh)
    coco = load_coco(args.annotations)
    category_ids = {name: cid for cid, name in coco.categories.items()}
    # A low threshold lets AP see the whole precision/recall curve.
    seg_overrides = parse_overrides(args.seg_set)
    pipe = HeadwearPipeline.from_checkpoint(args.seg, args.cls, args.device, seg_overrides, score_thresh=0.05)
    missing = set(category_ids) - set(pipe.class_names)
    if missing:
        raise ValueError(f"classifier labels {pipe.class_names} lack the categories {sorted(missing)} "
                         f"of {args.annotations}; train it on crops of the same data set")
    report: dict[str, float] = {}
    systems = {"two_stage": predict_coco(pipe, coco)}
    if args.haar:
        detector = HaarFaceDetector(expand=args.haar_expand)
        systems["haar"] = {}
        for image_id in tqdm(coco.image_ids, desc="haar", leave=False):
            image = read_image(coco.image_path(image_id))
            systems["haar"][image_id] = pipe.classify(image, *detector(image))
    for name, results in systems.items():
        joint = [r for i, res in results.items() for r in res.to_coco_results(i, category_ids, "joint")]
        at_op = [r for i, res in results.items() for r in res.to_coco_results(i, category_ids, "seg")]
        report.update({f"{name}/{k}": v for k, v in _score(coco, joint, at_op, op_thresh[name]).items()})
    if args.single_stage:
        model, single_cfg, names = load_segmenter(args.single_stage, args.device, **seg_overrides)
        if sorted(names) != sorted(category_ids):
            raise ValueError(f"--single-stage model classes {names} differ from {sorted(category_ids)}")
        _, results = evaluate_segmenter(model, coco, args.device, names,
                                        box_from_mask=single_cfg.model.box_from_mask)
        report.update({f"single_stage/{k}": v for k, v in
                       _score(coco, results, results, op_thresh["single_stage"]).items()})
    systems_run = [s for s in SYSTEMS if f"{s}/bbox/AP" in report]
    print(f"{'system':<14}" + "".join(f"{k:>15}" for k in KEYS))
    for s in systems_run:
        print(f"{s:<14}" + "".join(f"{report.get(f'{s}/{k}', float('nan')):>15.4f}" for k in KEYS))
    print(format_metrics_table({k: v for k, v in report.items() if "/AP50/" in k}))
    if args.out:
        write_json(args.out, report)
        print(f"metrics: {args.out}")
    return report


if __name__ == "__main__":
    run(main, parse_args())
