"""Cut one square, masked crop per head from a COCO file: the attire classifier's data.

Writes ``OUT/crops/*.png`` (RGB, ``crop.size`` px), ``OUT/index.csv`` with columns
``crop, label, image_id, ann_id, source_image, source`` (``gt`` or ``pred``; predictions add
``score, iou``), ``OUT/classes.txt`` (class names in order) and ``OUT/crops.json`` (crop rules,
source, counts). Crop paths in the index are relative to ``OUT``.

``--from gt`` cuts every non-crowd annotation with its mask. With box-only data (the shared
facemask and hardhat sets) the masks are DERIVED from the boxes (inscribed ellipses, see
``headseg.data.box_to_polygon``), not drawn by hand; ``crops.json`` records ``derived_masks``.
``--from pred`` cuts the heads a trained segmenter finds above ``--score-thresh``, exactly as the
pipeline finds them (same boxes, masks and mask threshold); each takes the
category of the ground-truth head it overlaps best if that box IoU is >= ``--iou-thresh``, the
others are dropped or, with ``--background``, kept as class ``background`` (with
``--background-max-iou T``, only those whose best IoU with a labelled head is below T: a head
framed half on a labelled one is neither; with ``--background-faces FACE_SEGMENTER``, those
holding a face that face detector finds are neither too: faces the annotators left out). Mapped
to a value in the classifier's schema, the
background heads teach the classifier what the pipeline meets and the set does not label
(configs/cls_multi_novis_128.yaml: heads whose face is not labelled, as ``face_mask/not_visible``).

``--face-to-head``: the boxes are faces (facemask). Each is first grown into a head box by
``headseg.attributes.face_to_head_box`` (1.56 face widths wide, 0.65 face heights above the face,
0.2 below, clipped to the image: the rule measured on facemask val, ``--head-rule`` for another;
``crops.json`` records the rule), and the head box is cut (with
a mask derived from it) or matched against the segmenter's heads, so the crops are framed like
the pipeline's head crops. The rule approximates a frontal head; turned faces and tall hats fit
it worst.

``--label NAME``: every crop is labelled NAME instead of its category. For weak labels: a set
silent on an attribute whose value is nonetheless known for all of it (Face Mask Detection's
street photos show no hard hats: ``--label no_hard_hat``, mapped to ``headwear/none`` in the
classifier's schema, configs/cls_multi.yaml).

Default recipe (headseg/config.py ``CropConfig``, what configs/cls_default.yaml uses): square of
the box's longer side plus 15 % padding each side, grey 114 outside the mask, 96 px. The
classifier trains with the rules recorded in the crop set's ``crops.json``.

Examples:
    python tools/make_crops.py --coco work_data/hardhat/train.json --out work_data/crops_hardhat/train \\
        --config configs/cls_hardhat.yaml
    python tools/make_crops.py --coco work_data/hardhat/val.json --out runs/crops_box/val \\
        --config configs/cls_hardhat.yaml --set crop.fill=none crop.padding=0
    python tools/make_crops.py --coco work_data/hardhat/val.json --out runs/crops_pred/val \\
        --from pred --segmenter runs/seg_hardhat/best.pt --score-thresh 0.5 --background
    python tools/make_crops.py --coco work_data/facemask/train.json \\
        --out work_data/crops_facemask_head/train --face-to-head
    python tools/make_crops.py --coco work_data/facemask/train.json \\
        --out work_data/crops_street/train --face-to-head --label no_hard_hat
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from headseg.config import ClsConfig, load_config  # noqa: E402
from headseg.crop_sets import make_crop_set  # noqa: E402
from headseg.data import CocoHeads, load_coco  # noqa: E402
from headseg.segmentation import Segmenter  # noqa: E402
from tools._cli import add_head_rule_arg, head_rule, run  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--coco", type=Path, required=True, help="COCO JSON (images relative to it)")
    parser.add_argument("--out", type=Path, required=True, help="crop-set folder (crops/, index.csv)")
    parser.add_argument("--from", dest="source", choices=["gt", "pred"], default="gt",
                        help="ground-truth annotations or segmenter predictions")
    parser.add_argument("--segmenter", type=Path, help="segmenter checkpoint (--from pred)")
    parser.add_argument("--score-thresh", type=float, default=0.5, help="--from pred: lowest score kept")
    parser.add_argument("--iou-thresh", type=float, default=0.5, help="--from pred: box IoU for a match")
    parser.add_argument("--background", action="store_true",
                        help="--from pred: keep unmatched heads as class `background`")
    parser.add_argument("--background-max-iou", type=float,
                        help="--background: drop unmatched heads whose best IoU with a labelled head "
                             "reaches this (e.g. 0.3), rather than call them background")
    parser.add_argument("--background-faces", type=Path, metavar="FACE_SEGMENTER",
                        help="--background: a segmenter of faces (e.g. headseg/assets/segmenter.pt, the "
                             "face model's); unmatched heads holding a face it finds are dropped, not "
                             "called background (faces the annotators left out)")
    parser.add_argument("--background-face-score", type=float, default=0.5,
                        help="--background-faces: lowest score of a face that counts")
    parser.add_argument("--face-to-head", action="store_true",
                        help="boxes are faces: crop (or match) the head box derived from each")
    add_head_rule_arg(parser)
    parser.add_argument("--label", help="every crop gets this label, not its category: weak labels for an "
                                        "attribute the set does not label but whose value is known, e.g. "
                                        "--label no_hard_hat on street photos (map it in the schema)")
    parser.add_argument("--config", type=Path, help="classifier YAML whose `crop` section applies")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="overrides of the classifier config, e.g. crop.fill=none crop.padding=0")
    parser.add_argument("--image-root", type=Path, help="folder image file names are relative to")
    parser.add_argument("--device", default="cpu", help="where the segmenter runs (cpu, cuda)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser.parse_args(argv)


def relabel(coco: CocoHeads, label: str) -> CocoHeads:
    """``coco`` with one category, ``label``, for every annotation (``--label``)."""
    annotations = {i: [{**a, "category_id": 1} for a in anns] for i, anns in coco.annotations.items()}
    dataset = {**coco.dataset, "categories": [{"id": 1, "name": label}],
               "annotations": [a for anns in annotations.values() for a in anns]}
    return dataclasses.replace(coco, dataset=dataset, annotations=annotations, categories={1: label})


def main(args: argparse.Namespace) -> Path:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    crop = load_config(ClsConfig, args.config, args.set).crop
    if (args.source == "pred") != (args.segmenter is not None):
        raise ValueError(f"--from {args.source} with --segmenter {args.segmenter}; --from pred needs "
                         "--segmenter best.pt, --from gt takes none")
    coco = load_coco(args.coco, args.image_root)
    if args.label:
        coco = relabel(coco, args.label)
    segmenter = Segmenter.load(args.segmenter, args.device) if args.segmenter else None
    faces = Segmenter.load(args.background_faces, args.device) if args.background_faces else None
    index = make_crop_set(coco, args.out, crop, segmenter, args.score_thresh, args.iou_thresh,
                          args.background, args.device, progress=not args.no_progress,
                          face_to_head=head_rule(args) if args.face_to_head else None,
                          background_max_iou=args.background_max_iou, background_faces=faces,
                          background_face_score=args.background_face_score)
    rows = index.read_text().count("\n") - 1
    masked = coco.derived_masks and crop.fill != "none"
    derived = f" (masks derived from boxes: {coco.derived_masks})" if masked else ""
    print(f"{rows} crops from {args.coco}{derived} -> {index}")
    return index


if __name__ == "__main__":
    run(main, parse_args())
