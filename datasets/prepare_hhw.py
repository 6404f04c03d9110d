"""Convert Hard Hat Workers (YOLO labels, fixed splits) to COCO JSON, one file per split.

Example, from the repository root (these are the defaults)::

    python datasets/prepare_hhw.py --src ../shared/data/hhw --out work_data/hhw

The source holds ``{train,val,test}/images`` and ``{train,val,test}/labels`` (YOLO ``class cx cy
w h``, class 0 ``head``, 1 ``helmet``, as its ``data.yaml`` says). This writes
``work_data/hhw/{train,val,test}.json`` and links ``work_data/hhw/{train,val,test}`` to the
source split folders, so each ``file_name`` is ``<split>/images/<name>``. Categories get the
hard-hat set's ids, ``helmet`` (1) and ``head`` (2, a bare head), so the two sets share them; a
box covers the whole head, helmet included. The set has no masks: each box gets a derived mask
(an inscribed ellipse by default), marked as derived in the JSON.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # run as `python datasets/prepare_hhw.py` without install
    sys.path.insert(0, str(REPO_ROOT))

import yaml  # noqa: E402

from datasets.converters import SPLITS, _link_images, coco_summary, yolo_to_coco  # noqa: E402
from headseg.data import DERIVED_MASK_KINDS  # noqa: E402
from headseg.io import write_json  # noqa: E402

# The hard-hat set's order, so category ids mean the same in both sets.
CATEGORIES = ["helmet", "head"]
DESCRIPTION = ("Hard Hat Workers v13 (public domain, via Roboflow), YOLO boxes converted by "
               "datasets/prepare_hhw.py")

log = logging.getLogger(__name__)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse command-line arguments; relative defaults are resolved against the repository root."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--src", type=Path, default=REPO_ROOT / "../shared/data/hhw",
                        help="folder with data.yaml and {train,val,test}/{images,labels} "
                             "(default: ../shared/data/hhw)")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "work_data/hhw",
                        help="output folder for {train,val,test}.json (default: work_data/hhw)")
    parser.add_argument("--derived-mask", choices=DERIVED_MASK_KINDS, default="ellipse",
                        help="shape of the mask derived from each box (default: ellipse)")
    return parser.parse_args(argv)


def yolo_class_names(src: Path) -> list[str]:
    """The YOLO class names, index order, from ``src/data.yaml``."""
    path = src / "data.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; expected the YOLO export's data.yaml "
                                f"naming its classes")
    names = (yaml.safe_load(path.read_text()) or {}).get("names")
    if isinstance(names, dict):  # Ultralytics also writes {0: name, ...}
        names = [names[k] for k in sorted(names)]
    if not isinstance(names, list) or sorted(names) != sorted(CATEGORIES):
        raise ValueError(f"{path} names classes {names!r}; expected {CATEGORIES} in some order")
    return names


def reorder_categories(coco: dict[str, Any], names: list[str]) -> dict[str, Any]:
    """Renumber ``coco``'s categories to ``names``' order (ids 1..K), annotations alike."""
    old = {c["id"]: c["name"] for c in coco["categories"]}
    new_id = {n: i for i, n in enumerate(names, start=1)}
    for ann in coco["annotations"]:
        ann["category_id"] = new_id[old[ann["category_id"]]]
    supercategory = coco["categories"][0]["supercategory"] if coco["categories"] else "head"
    coco["categories"] = [{"id": i, "name": n, "supercategory": supercategory}
                          for n, i in new_id.items()]
    return coco


def main(args: argparse.Namespace) -> dict[str, Path]:
    """Write the split JSON files and return split name -> JSON path."""
    src, out = Path(args.src).resolve(), Path(args.out)
    yolo_names = yolo_class_names(src)
    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    for split in SPLITS:
        folder = src / split
        coco = yolo_to_coco(folder / "labels", folder / "images", yolo_names,
                            derived_mask=args.derived_mask)
        coco = reorder_categories(coco, CATEGORIES)
        for image in coco["images"]:
            image["file_name"] = f"{split}/images/{image['file_name']}"
        coco["info"]["description"] = f"{DESCRIPTION} ({split} split)"
        _link_images(folder, out / split)
        paths[split] = write_json(out / f"{split}.json", coco)
        log.info("%s: %s", paths[split], coco_summary(coco))
    return paths


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    main(parse_args())
