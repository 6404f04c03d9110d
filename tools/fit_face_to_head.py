"""Measure how a head segmenter frames the faces of a face-box set: the face-to-head geometry.

Face-box data (facemask) teaches ``face_mask`` on head crops cut from a head box derived from each
face box (``headseg.attributes.FaceToHead``: width in face widths, reach above and below in face
heights). This tool runs a head segmenter (trained on whole-head boxes, e.g. Hard Hat Workers)
over the set's photos, pairs each ground-truth face with the detected head that holds it
(``match_faces_to_heads``: the smallest head box covering >= --min-cover of the face), and
reports the rule those pairs follow (the median of each ratio, with quartiles), and, for that
rule and for each --rule given, how well the derived boxes agree with the detected heads:
mean box IoU over the pairs, and the share of faces whose derived box a detected head matches
at IoU >= 0.5 (the end-to-end evaluation's rule). Run it on val; the rule it reports is the
candidate, and the classifier trained on crops cut with it is what decides (docs/RESULTS.md).

Example:
    python tools/fit_face_to_head.py work_data/facemask/val.json --seg headseg/assets/hhw_segmenter.pt \\
        --rule 1.3 0.45 0.05 --out runs/face_to_head_val.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from torchvision.ops import box_iou  # noqa: E402
from tqdm import tqdm  # noqa: E402

from headseg.attributes import FaceToHead, face_to_head_box, fit_face_to_head, match_faces_to_heads  # noqa: E402
from headseg.data import load_coco  # noqa: E402
from headseg.io import read_image  # noqa: E402
from headseg.segmentation import Segmenter  # noqa: E402
from tools._cli import run  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("coco", type=Path, help="COCO JSON of face boxes (images relative to it)")
    parser.add_argument("--seg", type=Path, required=True, help="head segmenter checkpoint")
    parser.add_argument("--score-thresh", type=float, default=0.5, help="lowest head score used")
    parser.add_argument("--min-cover", type=float, default=0.8,
                        help="least share of a face's area its head box must cover")
    parser.add_argument("--rule", type=float, nargs=3, action="append", default=[],
                        metavar=("WIDTH", "TOP", "BOTTOM"), help="a rule to compare (repeatable)")
    parser.add_argument("--device", default="cpu", help="where the segmenter runs (cpu, cuda)")
    parser.add_argument("--out", type=Path, help="write the numbers here as JSON")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser.parse_args(argv)


def agreement(rule: FaceToHead, faces: list[torch.Tensor], heads: list[torch.Tensor],
              pairs: list[list[tuple[int, int]]], sizes: list[tuple[int, int]]) -> dict[str, float]:
    """Mean IoU of derived and detected head over the pairs; share of faces matched at IoU 0.5."""
    ious, matched, total = [], 0, 0
    for face, head, pair, size in zip(faces, heads, pairs, sizes):
        derived = face_to_head_box(face, rule, size)
        total += len(face)
        if not len(head):
            continue
        iou = box_iou(derived, head)
        ious += [iou[f, h].item() for f, h in pair]
        matched += int((iou.max(1).values >= 0.5).sum())
    return {"mean_pair_iou": sum(ious) / max(len(ious), 1), "faces_matched_at_0.5": matched / max(total, 1)}


def main(args: argparse.Namespace) -> dict:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    coco = load_coco(args.coco)
    seg = Segmenter.load(args.seg, args.device)
    faces, heads, pairs, sizes = [], [], [], []
    for image_id in tqdm(coco.image_ids, desc="heads", disable=args.no_progress):
        image = torch.from_numpy(read_image(coco.image_path(image_id))).permute(2, 0, 1).float().div(255)
        (det,) = seg.detect([image.to(args.device)])
        head = det.boxes[det.scores >= args.score_thresh].cpu()
        face = torch.tensor([[x, y, x + w, y + h] for x, y, w, h in
                             (a["bbox"] for a in coco.annotations[image_id] if not a.get("iscrowd"))],
                            dtype=torch.float32).reshape(-1, 4)
        faces.append(face)
        heads.append(head)
        pairs.append(match_faces_to_heads(face, head, args.min_cover))
        sizes.append(tuple(image.shape[-2:]))
    n_faces = sum(len(f) for f in faces)
    paired_faces = torch.cat([f[[i for i, _ in p]] for f, p in zip(faces, pairs) if p])
    paired_heads = torch.cat([h[[j for _, j in p]] for h, p in zip(heads, pairs) if p])
    fitted = fit_face_to_head(paired_faces, paired_heads)
    w = paired_faces[:, 2:] - paired_faces[:, :2]
    ratios = {"width": (paired_heads[:, 2] - paired_heads[:, 0]) / w[:, 0],
              "top": (paired_faces[:, 1] - paired_heads[:, 1]) / w[:, 1],
              "bottom": (paired_heads[:, 3] - paired_faces[:, 3]) / w[:, 1]}
    quartiles = {k: [round(q, 3) for q in torch.quantile(v, torch.tensor([0.25, 0.5, 0.75])).tolist()]
                 for k, v in ratios.items()}
    rules = {"fitted": fitted, **{f"{w:g} {t:g} {b:g}": FaceToHead(w, t, b) for w, t, b in args.rule}}
    report = {"coco": str(args.coco), "segmenter": str(args.seg), "score_thresh": args.score_thresh,
              "min_cover": args.min_cover, "faces": n_faces, "paired": len(paired_faces),
              "fitted": dataclasses.asdict(fitted), "quartiles": quartiles,
              "rules": {name: {**dataclasses.asdict(r), **agreement(r, faces, heads, pairs, sizes)}
                        for name, r in rules.items()}}
    print(f"{len(paired_faces)} of {n_faces} faces held by a detected head (score >= {args.score_thresh})")
    print(f"fitted rule: width {fitted.width}, top {fitted.top}, bottom {fitted.bottom}; quartiles {quartiles}")
    for name, r in report["rules"].items():
        print(f"  {name:>16}: mean pair IoU {r['mean_pair_iou']:.3f}, "
              f"faces matched at IoU 0.5 {r['faces_matched_at_0.5']:.3f}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    run(main, parse_args())
