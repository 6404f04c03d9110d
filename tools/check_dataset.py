"""Check a COCO head-annotation file before training: every problem, with its ids, and a summary.

Exits 0 when the file is clean, 1 when problems were found (and 2 when it cannot be read at
all). With ``--drop-invalid OUT.json`` it also writes a copy without the invalid annotations
and images, and says how many were dropped.

Examples:
    python tools/check_dataset.py my/train.json
    python tools/check_dataset.py my/train.json --image-root my/images --drop-invalid my/train_clean.json
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from headseg.data import read_json, find_problems, load_coco  # noqa: E402
from headseg.io import write_json  # noqa: E402
from tools._cli import run  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("annotations", type=Path, help="COCO JSON file")
    parser.add_argument("--image-root", type=Path, help="default: the JSON's folder")
    parser.add_argument("--no-files", action="store_true", help="skip checking that images exist")
    parser.add_argument("--drop-invalid", type=Path, metavar="OUT", help="write a cleaned copy here")
    return parser.parse_args(argv)


def main(args: argparse.Namespace) -> int:
    try:
        data = read_json(args.annotations)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    root = args.image_root or args.annotations.parent
    problems = find_problems(data, args.annotations, root, check_files=not args.no_files)
    for p in problems:
        print(p)
    kinds = Counter(p.kind for p in problems)
    print(f"{args.annotations}: {len(data['images'])} images, {len(data['annotations'])} annotations, "
          f"{len(data['categories'])} categories; {len(problems)} problem(s)"
          + (": " + ", ".join(f"{k} {n}" for k, n in kinds.most_common()) if problems else ""))
    if args.drop_invalid:
        coco = load_coco(args.annotations, root, check_files=not args.no_files, drop_invalid=True)
        write_json(args.drop_invalid, coco.dataset)
        print(f"wrote {args.drop_invalid}: dropped {len(data['images']) - len(coco.images)} image(s) and "
              f"{len(data['annotations']) - len(coco.dataset['annotations'])} annotation(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    run(main, parse_args())
