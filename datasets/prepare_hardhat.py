"""Convert the hard-hat data set (Pascal VOC boxes) to COCO JSON, one file per fixed split.

Example, from the repository root (these are the defaults)::

    python datasets/prepare_hardhat.py --src ../shared/data/hardhat --out work_data/hardhat

writes ``work_data/hardhat/{train,val,test}.json`` and links ``work_data/hardhat/images`` to the
source images. Categories are, in id order, ``helmet`` (1) and ``head`` (2, a bare head); a box
covers the whole head, helmet included. The set has no masks: each box gets a derived mask
(``--derived-mask ellipse``, the default, or ``box``), marked as derived in the JSON.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # run as `python datasets/prepare_hardhat.py` without install
    sys.path.insert(0, str(REPO_ROOT))

from datasets.converters import prepare_split_files  # noqa: E402
from headseg.data import DERIVED_MASK_KINDS  # noqa: E402

# Fixed order, so category ids never depend on which names a split happens to contain.
CATEGORIES = ["helmet", "head"]
DESCRIPTION = "Hard Hat Workers subset (public domain), VOC boxes converted by datasets/prepare_hardhat.py"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse command-line arguments; relative defaults are resolved against the repository root."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--src", type=Path, default=REPO_ROOT / "../shared/data/hardhat",
                        help="folder with images/, annotations/ and splits/ (default: ../shared/data/hardhat)")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "work_data/hardhat",
                        help="output folder for {train,val,test}.json (default: work_data/hardhat)")
    parser.add_argument("--derived-mask", choices=DERIVED_MASK_KINDS, default="ellipse",
                        help="shape of the mask derived from each box (default: ellipse)")
    return parser.parse_args(argv)


def main(args: argparse.Namespace) -> dict[str, Path]:
    """Write the split JSON files and return split name -> JSON path."""
    return prepare_split_files(args.src, args.out, CATEGORIES, derived_mask=args.derived_mask,
                               description=DESCRIPTION)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    main(parse_args())
