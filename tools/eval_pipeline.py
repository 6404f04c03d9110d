"""Joint evaluation: detection and attire classification judged together, COCO-style.

Each predicted head is scored, per attribute the set labels, as one detection of its top value
with score segmentation score x that value's probability; COCO bbox AP over the attribute's
values (mAP, AP50, per-value AP) plus precision/recall at the operating point (heads with
segmentation score >= --op-thresh, labelled by their top value; also per value), and the
threshold that would maximise F1 on this split: read it on val, pass it with --op-thresh for
test. A single-attribute classifier's categories are its classes (keys as ever: ``bbox/AP50``);
a multi-attribute one maps the set's categories through its schema source (inferred from the
category names, or --source), keys ``{attribute}/bbox/AP50/{value}``.

--all-values adds each system once more as ``{system}_all`` (``two_stage_all``), whose AP ranks
every value of every head by segmentation score x that value's probability, as a class-aware
detector's results are (torchvision's Mask R-CNN, the single-stage baseline here, gives one box
per class above its score threshold); its operating point is the top value's, as without.

--breakdown adds where the two-stage system's AP50 goes (``two_stage_breakdown/{variant}/...``,
and ``two_stage_all_breakdown`` with --all-values): the same heads scored without those that
match no labelled head (``unmatched_dropped``), with each matched head given its labelled value
(``labelled_values``), and both (``labelled_values_unmatched_dropped``: detection alone);
``headseg.evaluation.end_to_end_breakdown``.

--bootstrap N adds 95 % intervals of the two-stage system's AP50s (``.../ci_low``,
``.../ci_high``; a third column in the printed table): a percentile bootstrap over the photos,
N resamples, each one COCOeval per attribute (``headseg.evaluation.bootstrap_end_to_end``;
on two CPU cores about 0.5 s a resample on facemask's 171 test photos, 1.3 s on hhw's 706).

Face boxes (facemask): with --gt-faces every ground-truth face box is replaced by the head box
``headseg.attributes.face_to_head_box`` derives from it (default ``FaceToHead`` rule: 1.56 face
widths wide, 0.65 face heights above the face, 0.2 below, clipped to the image), and predicted
heads match those at box IoU 0.5 (COCO's rule). The derived box is an approximation: turned or
tilted faces and tall hats fit it worst (docs/RESULTS.md).

Baselines in the same run, on the same images:

* ``--single-stage CKPT``: a Mask R-CNN trained with the attire categories directly
  (``tools/train_seg.py --set data.class_agnostic=false``);
* ``--haar``: OpenCV's Haar face detector, boxes expanded by --haar-expand, + the same classifier.

Examples:
    python tools/eval_pipeline.py work_data/facemask/test.json --seg runs/seg_facemask/best.pt \\
        --cls runs/cls_facemask/best.pt --single-stage runs/seg1_facemask/best.pt --haar \\
        --out runs/pipeline_facemask_test.json
    python tools/eval_pipeline.py work_data/facemask/val.json --seg runs/seg_hhw/best.pt \\
        --cls runs/cls_multi/best.pt --gt-faces --out runs/multi_facemask_val.json
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
from headseg.evaluation import (  # noqa: E402
    BREAKDOWN,
    SWEEP,
    attribute_end_to_end,
    attribute_ground_truth,
    attribute_prefix,
    bootstrap_end_to_end,
    end_to_end_breakdown,
    format_metrics_table,
)
from headseg.io import read_image, write_json  # noqa: E402
from headseg.pipeline import HeadwearPipeline, predict_coco  # noqa: E402
from headseg.segmentation import evaluate_segmenter, load_segmenter  # noqa: E402
from tools._cli import add_flip_arg, add_head_rule_arg, head_rule, run  # noqa: E402

KEYS = ("bbox/AP", "bbox/AP50", "bbox/AP75", "bbox/APs", "op_thresh", "precision", "recall", "f1",
        "f1_best_thresh")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("annotations", type=Path, help="COCO JSON whose categories are attire labels")
    parser.add_argument("--seg", type=Path, required=True, help="class-agnostic segmenter checkpoint")
    parser.add_argument("--cls", type=Path, nargs="+", required=True,
                        help="attire classifier checkpoint; several: their ensemble (probabilities averaged)")
    parser.add_argument("--single-stage", type=Path, help="Mask R-CNN trained on attire categories")
    parser.add_argument("--haar", action="store_true", help="add the Haar face-detector baseline")
    parser.add_argument("--haar-expand", type=float, default=1.0, help="face box side multiplier")
    parser.add_argument("--source", help="schema source the set's categories follow (default: inferred)")
    parser.add_argument("--gt-faces", action="store_true",
                        help="ground-truth boxes are faces: match heads to the head boxes derived from them")
    add_head_rule_arg(parser)
    parser.add_argument("--op-thresh", nargs="+", default=["0.5"], metavar="[SYSTEM=]T",
                        help="operating-point score threshold, one for all systems or per system "
                             "(two_stage=0.3 single_stage=0.4); pick it on val from the printed "
                             "F1-best thresholds, then pass it for test")
    parser.add_argument("--all-values", action="store_true",
                        help="also report AP over every value of every head ({system}_all; see above)")
    parser.add_argument("--bootstrap", type=int, default=0, metavar="N",
                        help="resamples of the photos for 95%% intervals of the two-stage AP50s (0: none)")
    parser.add_argument("--breakdown", action="store_true",
                        help="also report the two-stage AP50 without unmatched heads, with labelled values, "
                             "and both (see above)")
    parser.add_argument("--seg-set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="inference fields of both segmenters (two-stage and single-stage), "
                             "e.g. min_size=640 rpn_post_nms_top_n_test=1000")
    add_flip_arg(parser)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars (logs under nohup)")
    parser.add_argument("--out", type=Path, help="flat metrics JSON")
    return parser.parse_args(argv)


SYSTEMS = ("two_stage", "single_stage", "haar")


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


def main(args: argparse.Namespace) -> dict[str, float]:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    op_thresh = _op_thresholds(args.op_thresh)
    coco = load_coco(args.annotations)
    # A low threshold lets AP see the whole precision/recall curve.
    seg_overrides = parse_overrides(args.seg_set)
    pipe = HeadwearPipeline.from_checkpoint(args.seg, args.cls, args.device, seg_overrides, score_thresh=0.05,
                                            flip=bool(args.flip))
    schema = pipe.schema
    gt = attribute_ground_truth(coco.dataset, schema, args.source or schema.source_of(coco.class_names),
                                head_rule(args) if args.gt_faces else None)
    category_ids = {c["name"]: c["id"] for c in gt["categories"]}
    report: dict[str, float] = {}
    systems = {"two_stage": predict_coco(pipe, coco, progress=not args.no_progress)}
    if args.haar:
        detector = HaarFaceDetector(expand=args.haar_expand)
        systems["haar"] = {}
        for image_id in tqdm(coco.image_ids, desc="haar", leave=False, disable=args.no_progress):
            image = read_image(coco.image_path(image_id))
            systems["haar"][image_id] = pipe.classify(image, *detector(image))
    for name, results in systems.items():
        at_op = [r for i, res in results.items() for r in res.to_coco_results(i, category_ids, "seg")]
        for values in ("top", "all") if args.all_values else ("top",):
            joint = [r for i, res in results.items() for r in res.to_coco_results(i, category_ids, "joint", values)]
            system = f"{name}{'_all' if values == 'all' else ''}"
            report.update({f"{system}/{k}": v for k, v in
                           attribute_end_to_end(gt, joint, at_op, op_thresh[name], schema, SWEEP).items()})
            if args.bootstrap and name == "two_stage":
                report.update({f"{system}/{k}": v for k, v in bootstrap_end_to_end(
                    gt, joint, schema, resamples=args.bootstrap, progress=not args.no_progress).items()})
    if args.breakdown:
        heads = {i: [(h.box_xyxy, h.score, {a: p.probs for a, p in h.attributes.items()}) for h in res.heads]
                 for i, res in systems["two_stage"].items()}
        for values in ("top", "all") if args.all_values else ("top",):
            name = f"two_stage{'_all' if values == 'all' else ''}_breakdown"
            report.update({f"{name}/{k}": v for k, v in end_to_end_breakdown(gt, heads, schema, values).items()})
    if args.single_stage:
        model, single_cfg, names = load_segmenter(args.single_stage, args.device, **seg_overrides)
        if sorted(names) != sorted(coco.class_names):
            raise ValueError(f"--single-stage model classes {names} differ from {sorted(coco.class_names)}")
        _, results = evaluate_segmenter(model, coco, args.device, names, box_from_mask=single_cfg.model.box_from_mask,
                                        progress=not args.no_progress)
        report.update({f"single_stage/{k}": v for k, v in
                       attribute_end_to_end(gt, results, results, op_thresh["single_stage"], schema, SWEEP).items()})
    attributes = sorted({c["attribute"] for c in gt["categories"]}, key=schema.names.index)
    print(f"{'system':<28}" + "".join(f"{k:>15}" for k in KEYS))
    for s in (f"{system}{suffix}" for system in SYSTEMS for suffix in ("", "_all")):
        for prefix in (f"{s}/{attribute_prefix(schema, a)}" for a in attributes):
            if f"{prefix}bbox/AP" in report:
                print(f"{prefix.rstrip('/'):<28}" + "".join(f"{report[prefix + k]:>15.4f}" for k in KEYS))
    print(format_metrics_table(report, [k for k in report if ("/AP50/" in k or k.endswith("/AP50")) and "_breakdown/" not in k
                                        and not k.endswith(("/ci_low", "/ci_high"))]))
    if args.breakdown:
        print("AP50 with a cause of error removed (--breakdown)")
        print(f"{'':<38}{'as found':>10}" + "".join(f"{v:>36}" for v in BREAKDOWN))
        for s in ("two_stage", "two_stage_all") if args.all_values else ("two_stage",):
            for a in attributes:
                key = f"{attribute_prefix(schema, a)}bbox/AP50"
                print(f"{s + '/' + key:<38}{report[f'{s}/{key}']:>10.4f}"
                      + "".join(f"{report[f'{s}_breakdown/{v}/{key}']:>36.4f}" for v in BREAKDOWN))
    if args.out:
        write_json(args.out, report)
        print(f"metrics: {args.out}")
    return report


if __name__ == "__main__":
    run(main, parse_args())
