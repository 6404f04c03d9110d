"""Convert the face-mask data set (Pascal VOC boxes) to COCO JSON, one file per fixed split.

Example, from the repository root (these are the defaults)::

    python datasets/prepare_facemask.py --src ../shared/data/facemask --out work_data/facemask

writes ``work_data/facemask/{train,val,test}.json`` and links ``work_data/facemask/images`` to the
source images. Categories are, in id order, ``with_mask`` (1), ``without_mask`` (2) and
``mask_weared_incorrect`` (3); a box covers the face. The set has no masks: each box gets a derived mask
(``--derived-mask ellipse``, the default, or ``box``), marked as derived in the JSON.

With ``--face-to-head`` each face box is replaced by the head box derived from it
(``headseg.attributes.FaceToHead``, the rule measured on facemask val; ``--head-rule`` for
another), for training a head segmenter on these photos too::

    python datasets/prepare_facemask.py --face-to-head   # -> work_data/facemask_heads

Those head boxes are approximations (README, "Several attributes"); ``info["face_to_head"]``
records the rule.
"""

from __future__ import annotations

import argparse
import functools
import logging
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # run as `python datasets/prepare_facemask.py` without install
    sys.path.insert(0, str(REPO_ROOT))

from datasets.converters import faces_to_heads_coco, prepare_split_files  # noqa: E402
from headseg.data import DERIVED_MASK_KINDS  # noqa: E402
from tools._cli import add_head_rule_arg, head_rule  # noqa: E402

# Fixed order, so category ids never depend on which names a split happens to contain.
CATEGORIES = ["with_mask", "without_mask", "mask_weared_incorrect"]
DESCRIPTION = "Face Mask Detection (Kaggle, CC0), VOC boxes converted by datasets/prepare_facemask.py"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse command-line arguments; relative defaults are resolved against the repository root."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--src", type=Path, default=REPO_ROOT / "../shared/data/facemask",
                        help="folder with images/, annotations/ and splits/ (default: ../shared/data/facemask)")
    parser.add_argument("--out", type=Path,
                        help="output folder for {train,val,test}.json (default: work_data/facemask, "
                             "with --face-to-head work_data/facemask_heads)")
    parser.add_argument("--derived-mask", choices=DERIVED_MASK_KINDS, default="ellipse",
                        help="shape of the mask derived from each box (default: ellipse)")
    parser.add_argument("--face-to-head", action="store_true",
                        help="write head boxes derived from the face boxes")
    add_head_rule_arg(parser)
    return parser.parse_args(argv)


def main(args: argparse.Namespace) -> dict[str, Path]:
    """Write the split JSON files and return split name -> JSON path."""
    if args.head_rule and not args.face_to_head:
        raise ValueError("--head-rule only applies with --face-to-head")
    out = args.out or REPO_ROOT / ("work_data/facemask_heads" if args.face_to_head else "work_data/facemask")
    convert = None
    if args.face_to_head:
        rule = head_rule(args)
        logging.getLogger(__name__).info("boxes are head boxes derived from the faces: %s", rule)
        convert = functools.partial(faces_to_heads_coco, rule=rule, derived_mask=args.derived_mask)
    return prepare_split_files(args.src, out, CATEGORIES, derived_mask=args.derived_mask,
                               description=DESCRIPTION, convert=convert)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    main(parse_args())
