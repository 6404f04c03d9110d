"""Crop sets, the attire classifier's data: one masked square crop per head, on disk.

``COCO (+ segmenter) -> crop set -> classifier``: :func:`make_crop_set` cuts one crop per head
(:func:`headseg.crops.crop_head`) from ground-truth annotations or from a segmenter's heads and
writes ``crops/*.png`` plus ``index.csv`` (columns ``crop, label, image_id, ann_id,
source_image, source[, score, iou]``), ``classes.txt`` (class names in order) and
``crops.json`` (the crop rules and where the masks came from). With box-only data such as the
shared real sets, the masks are *derived* from the boxes (inscribed ellipses), never drawn by
hand, and ``crops.json`` says so. Face boxes (facemask) can be grown into head boxes first
(``face_to_head``, :func:`headseg.attributes.face_to_head_box`), so their crops are framed like
head crops. :class:`CropIndexDataset` reads a crop set back, :class:`AttributeCropDataset`
several at once with one target per attribute; :func:`crop_rules` gives the rules a set was cut
with, which training adopts.
"""

from __future__ import annotations

import csv
import io
import json
import logging
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torchvision.ops import box_iou
from tqdm import tqdm

from headseg.attributes import AttributeSchema, FaceToHead, faces_to_heads
from headseg.config import CropConfig, from_dict, to_dict
from headseg.crops import crop_head
from headseg.data import CocoHeads, annotation_mask
from headseg.engine import check_output_dir
from headseg.io import read_image, write_json, write_text
from headseg.segmentation import Segmenter

log = logging.getLogger(__name__)

INDEX_COLUMNS = ("crop", "label", "image_id", "ann_id", "source_image", "source")
PRED_COLUMNS = ("score", "iou")
BACKGROUND = "background"  # class of predicted heads that match no ground-truth head


def _rgb_to_png(path: Path, crop: np.ndarray) -> None:
    ok, png = cv2.imencode(".png", cv2.cvtColor(crop, cv2.COLOR_RGB2BGR))
    if not ok:
        raise OSError(f"OpenCV could not encode {path} as PNG")
    path.write_bytes(png.tobytes())


def _xyxy(box_xywh: Sequence[float]) -> list[float]:
    x, y, w, h = box_xywh
    return [x, y, x + w, y + h]


def _detections(segmenter: Segmenter, image: np.ndarray, score_thresh: float,
                device: torch.device) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """``segmenter``'s boxes ``(K, 4)`` xyxy, scores and masks on an RGB uint8 ``image``, at
    ``score_thresh`` or above, as the pipeline finds them (:meth:`Segmenter.detect`)."""
    tensor = torch.from_numpy(image).permute(2, 0, 1).float().div(255).to(device)
    det = segmenter.detect([tensor])[0]
    keep = det.scores >= score_thresh
    return det.boxes[keep].cpu().reshape(-1, 4), det.scores[keep].cpu(), det.masks[keep].cpu().numpy()


def _predicted_heads(segmenter: Segmenter, image: np.ndarray, anns: list[dict[str, Any]],
                     class_of: dict[int, str], score_thresh: float, iou_thresh: float,
                     device: torch.device) -> list[dict[str, Any]]:
    """Segmenter heads above ``score_thresh``, each labelled by its best-IoU ground-truth head.

    The heads are the pipeline's (:meth:`Segmenter.detect`): same boxes, masks and threshold.
    """
    boxes, scores, masks = _detections(segmenter, image, score_thresh, device)
    gt = torch.tensor([_xyxy(a["bbox"]) for a in anns], dtype=torch.float32).reshape(-1, 4)
    ious = box_iou(boxes, gt) if len(gt) and len(boxes) else torch.zeros((len(boxes), len(gt)))
    heads = []
    for i in range(len(boxes)):
        best = int(ious[i].argmax()) if len(gt) else -1
        iou = float(ious[i, best]) if best >= 0 else 0.0
        # Several predictions may match one head: each is still a crop of that head's attire.
        matched = best >= 0 and iou >= iou_thresh
        heads.append({"box": boxes[i].tolist(), "mask": masks[i], "score": float(scores[i]), "iou": iou,
                      "ann_id": anns[best]["id"] if matched else "",
                      "label": class_of[anns[best]["category_id"]] if matched else BACKGROUND})
    return heads


def _found_faces(faces: Segmenter, image: np.ndarray, score_thresh: float, device: torch.device) -> torch.Tensor:
    """``(K, 4)`` xyxy boxes a face detector finds in ``image`` at ``score_thresh`` or above."""
    return _detections(faces, image, score_thresh, device)[0]


def _holds_a_face(box: Sequence[float], faces: torch.Tensor, min_inside: float = 0.5) -> bool:
    """Whether at least ``min_inside`` of some face box's area lies in ``box`` (xyxy)."""
    if not len(faces):
        return False
    x1, y1, x2, y2 = box
    w = (faces[:, 2].clamp(max=x2) - faces[:, 0].clamp(min=x1)).clamp(min=0)
    h = (faces[:, 3].clamp(max=y2) - faces[:, 1].clamp(min=y1)).clamp(min=0)
    area = ((faces[:, 2] - faces[:, 0]) * (faces[:, 3] - faces[:, 1])).clamp(min=1e-6)
    return bool((w * h / area >= min_inside).any())


def make_crop_set(coco: CocoHeads, out_dir: str | Path, crop: CropConfig, segmenter: Segmenter | None = None,
                  score_thresh: float = 0.5, iou_thresh: float = 0.5, background: bool = False,
                  device: str | torch.device = "cpu", progress: bool = True,
                  face_to_head: FaceToHead | None = None, background_max_iou: float | None = None,
                  background_faces: Segmenter | None = None, background_face_score: float = 0.5) -> Path:
    """Cut one crop per head and write ``out_dir/crops/*.png``, ``index.csv``, ``classes.txt``, ``crops.json``.

    Args:
        coco: Ground truth. Box-only annotations get derived masks (``coco.derived_masks`` shape,
            else an inscribed ellipse) and ``crops.json`` records ``derived_masks``.
        out_dir: Output folder.
        crop: Crop rules (size, padding, fill, fill_value), as in the classifier config.
        segmenter: None for ground-truth crops (every non-crowd annotation); else a loaded
            segmenter whose heads, as the pipeline finds them, are cut instead.
        score_thresh: Predictions scoring below are ignored.
        iou_thresh: A prediction takes the category of its highest box-IoU ground-truth head
            when that IoU reaches this value.
        background: Keep unmatched predictions as class ``background``; otherwise drop them.
        device: Where the segmenter runs.
        progress: Show a tqdm bar.
        face_to_head: The annotations are face boxes (facemask): derive a head box from each
            by this rule (:func:`headseg.attributes.faces_to_heads`) before cropping or matching predictions, so
            the crops are framed like the pipeline's head crops; ``crops.json`` records it.
        background_max_iou: With ``background``: an unmatched prediction whose best IoU with a
            ground-truth head reaches this is dropped, not kept: a head framed half on a labelled
            one is neither that head nor background (the band detectors leave unsampled between
            their background and foreground IoU). None keeps every unmatched prediction.
        background_faces: With ``background``: a face detector (a segmenter of faces, e.g. the
            bundled face model's) run on each photo; an unmatched prediction holding half or more
            of a face it finds at ``background_face_score`` is dropped, not kept: a face the
            annotators left out is no head without a face to judge. None: no such check.
        background_face_score: Lowest score of a face that counts.

    Returns:
        Path of ``index.csv``; ``crop`` paths in it are relative to its folder.
    """
    if background_max_iou is not None and not (background and 0.0 < background_max_iou <= iou_thresh):
        raise ValueError(f"background_max_iou={background_max_iou} needs background=True and a value in "
                         f"(0, iou_thresh={iou_thresh}]")
    if background_faces is not None and not background:
        raise ValueError("background_faces needs background=True: it only removes unmatched heads "
                         "from the background class")
    out_dir = check_output_dir(out_dir)
    (out_dir / "crops").mkdir(exist_ok=True)
    class_of = dict(coco.categories)
    derived = coco.derived_masks or "ellipse"
    pred = segmenter is not None
    rows: list[dict[str, Any]] = []
    skipped: Counter[str] = Counter()
    for image_id in tqdm(coco.image_ids, desc="crops", disable=not progress):
        anns = [a for a in coco.annotations[image_id] if not a.get("iscrowd", 0)]
        if not anns and not (pred and background):
            continue
        image = read_image(coco.image_path(image_id))
        h, w = image.shape[:2]
        if face_to_head is not None:
            anns = faces_to_heads(anns, face_to_head, h, w)
        faces = None
        if pred:
            heads = _predicted_heads(segmenter, image, anns, class_of, score_thresh, iou_thresh,
                                     torch.device(device))
            if background_faces is not None and any(head["label"] == BACKGROUND for head in heads):
                faces = _found_faces(background_faces, image, background_face_score, torch.device(device))
        else:
            heads = [{"box": _xyxy(a["bbox"]),
                      "mask": annotation_mask(a, h, w, derived), "ann_id": a["id"],
                      "label": class_of[a["category_id"]]} for a in anns]
        for k, head in enumerate(heads):
            if head["label"] == BACKGROUND and not background:
                skipped["unmatched"] += 1
                continue
            if head["label"] == BACKGROUND and background_max_iou is not None and head["iou"] >= background_max_iou:
                skipped[f"unmatched with IoU >= {background_max_iou:g}"] += 1
                continue
            if head["label"] == BACKGROUND and faces is not None and _holds_a_face(head["box"], faces):
                skipped["unmatched holding a face found"] += 1
                continue
            if crop.fill != "none" and not head["mask"].any():
                skipped["empty mask"] += 1  # nothing to cut: the segmenter found no head pixel
                continue
            name = f"crops/{image_id}_{'p' if pred else 'a'}{k if pred else head['ann_id']}.png"
            _rgb_to_png(out_dir / name, crop_head(image, head["mask"], head["box"], crop.size, crop.padding,
                                                  crop.fill, crop.fill_value))
            row = {"crop": name, "label": head["label"], "image_id": image_id, "ann_id": head["ann_id"],
                   "source_image": coco.images[image_id]["file_name"], "source": "pred" if pred else "gt"}
            if pred:
                row.update(score=round(head["score"], 4), iou=round(head["iou"], 4))
            rows.append(row)
    if skipped:
        log.info("skipped predicted heads: %s", dict(skipped))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=INDEX_COLUMNS + (PRED_COLUMNS if pred else ()), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    names = coco.class_names + ([BACKGROUND] if pred and background else [])
    write_text(out_dir / "classes.txt", "\n".join(names) + "\n")
    write_json(out_dir / "crops.json", {"coco": str(coco.path), "source": "pred" if pred else "gt",
                                        "crop": to_dict(crop),
                                        "derived_masks": coco.derived_masks or (derived if face_to_head else None),
                                        "score_thresh": score_thresh if pred else None,
                                        "iou_thresh": iou_thresh if pred else None,
                                        "background_max_iou": background_max_iou,
                                        "background_face_score": (background_face_score
                                                                  if background_faces is not None else None),
                                        "face_to_head": to_dict(face_to_head) if face_to_head else None,
                                        "num_crops": len(rows),
                                        "labels": dict(Counter(r["label"] for r in rows))})
    return write_text(out_dir / "index.csv", buf.getvalue())


def read_class_names(index_csv: str | Path) -> list[str]:
    """Class names of a crop set: ``classes.txt`` beside the index, else the sorted labels in it."""
    index_csv = Path(index_csv)
    classes = index_csv.parent / "classes.txt"
    if classes.is_file():
        return [line.strip() for line in classes.read_text().splitlines() if line.strip()]
    return sorted({r["label"] for r in _read_index(index_csv)})


def crop_rules(index_csv: str | Path) -> CropConfig | None:
    """The crop rules a crop set was cut with (its ``crops.json``); None without that file."""
    meta_path = Path(index_csv).parent / "crops.json"
    if not meta_path.is_file():
        return None
    try:
        return from_dict(CropConfig, json.loads(meta_path.read_text())["crop"])
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{meta_path} does not hold crop rules ({e}); remake the crop set with "
                         "tools/make_crops.py") from None


def check_crop_rules(index_csv: str | Path, crop: CropConfig) -> None:
    """Refuse crops cut with other rules than ``crop`` (the rules a checkpoint records).

    Raises:
        ValueError: ``crops.json`` beside the index names different size/padding/fill/fill_value.
    """
    cut = crop_rules(index_csv)
    if cut is None:
        log.warning("%s has no crops.json; cannot check that its crops follow %s", index_csv, crop)
        return
    diff = {k: (v, getattr(crop, k)) for k, v in to_dict(cut).items() if getattr(crop, k) != v}
    if diff:
        sets = " ".join(f"crop.{k}={v[0]}" for k, v in diff.items())
        raise ValueError(f"crops of {index_csv} were cut with {to_dict(cut)}, but {to_dict(crop)} are "
                         f"expected (differing: {diff}); pass --set {sets}, or remake the crops with "
                         "these rules")


def _read_index(index_csv: Path) -> list[dict[str, str]]:
    if not index_csv.is_file():
        raise FileNotFoundError(f"crop index {index_csv} does not exist; write it with tools/make_crops.py")
    with index_csv.open(newline="") as f:
        reader = csv.DictReader(f)
        missing = [c for c in ("crop", "label") if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{index_csv} lacks columns {missing} (has {reader.fieldnames}); expected the "
                             f"index written by tools/make_crops.py with columns {INDEX_COLUMNS}")
        return list(reader)



class CropIndexDataset(torch.utils.data.Dataset):
    """Crops listed in an ``index.csv`` as ``(crop, label)`` pairs.

    Each item is a float32 ``(3, S, S)`` RGB tensor in ``[0, 1]`` (``transform`` gets the uint8
    tensor; its output is scaled to [0, 1] if still uint8) and the label's index in ``class_names``
    (None: the crop set's own, :func:`read_class_names`).
    """

    def __init__(self, index_csv: str | Path, class_names: Sequence[str] | None = None,
                 transform: Any = None) -> None:
        self.index_csv = Path(index_csv)
        self.root = self.index_csv.parent
        self.rows = _read_index(self.index_csv)
        self.class_names = list(class_names) if class_names is not None else read_class_names(self.index_csv)
        lookup = {n: i for i, n in enumerate(self.class_names)}
        unknown = sorted({r["label"] for r in self.rows} - set(lookup))
        if unknown:
            raise ValueError(f"{self.index_csv} has labels {unknown} that are not among the classes "
                             f"{self.class_names}; use crops of the same data set, or drop those rows")
        self.labels = [lookup[r["label"]] for r in self.rows]
        self.transform = transform

    def __len__(self) -> int:
        return len(self.rows)

    def path(self, i: int) -> Path:
        return self.root / self.rows[i]["crop"]

    def image(self, i: int) -> np.ndarray:
        """Crop ``i`` as ``(S, S, 3)`` uint8 RGB."""
        bgr = cv2.imread(str(self.path(i)), cv2.IMREAD_COLOR)
        if bgr is None:
            raise FileNotFoundError(f"crop {self.path(i)} (row {i + 2} of {self.index_csv}) is missing or "
                                    "not an image; remake the crop set with tools/make_crops.py")
        return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        x = torch.from_numpy(self.image(i)).permute(2, 0, 1).contiguous()
        if self.transform is not None:
            x = self.transform(x)
        if x.dtype == torch.uint8:
            x = x.float() / 255.0
        return x, self.labels[i]

    def class_counts(self) -> list[int]:
        counts = Counter(self.labels)
        return [counts.get(i, 0) for i in range(len(self.class_names))]

    def photos(self) -> list[str]:
        """Each crop's photo (the ``source_image`` column).

        Raises:
            ValueError: the index has no ``source_image`` column.
        """
        if self.rows and "source_image" not in self.rows[0]:
            raise ValueError(f"{self.index_csv} has no source_image column, so its crops cannot be kept or "
                             "dropped by photo; remake the crop set with tools/make_crops.py")
        return [r["source_image"] for r in self.rows]

    def keep(self, rows: Sequence[int]) -> None:
        """Keep only the crops at ``rows``, in that order."""
        self.rows = [self.rows[i] for i in rows]
        self.labels = [self.labels[i] for i in rows]


class AttributeCropDataset(torch.utils.data.Dataset):
    """The crop sets of several sources as one dataset with a target per attribute.

    Crop ``i`` of source ``s`` labelled ``c`` has targets ``schema.targets(s, c)``: the value
    index of the attribute that ``c`` maps to, ``-1`` (:data:`headseg.attributes.MISSING`) for
    every attribute its source does not label. Items are ``(crop, targets)``: a float32
    ``(3, S, S)`` RGB tensor in ``[0, 1]`` and an ``(A,)`` int64 tensor. A single-attribute
    classifier reads its one crop set through this too, with ``AttributeSchema.single(classes,
    source=...)``.

    Args:
        indexes: Source name -> its ``index.csv`` (written by ``tools/make_crops.py``), or
            ``(source name, index.csv)`` pairs, so that one source can bring several crop sets
            (its ground-truth crops and those cut from a segmenter's predictions).
        schema: Attributes and each source's category mapping.
        transform: As for :class:`CropIndexDataset`.
        photos: The share of each source's photos whose crops are kept, in ``(0, 1]``: a
            learning curve's smaller training sets. A source's crop sets keep the same photos
            (its ground-truth and prediction crops of one photo stay together); each source
            keeps ``round(photos x its photos)`` of them, at least one.
        photo_seed: Seeds the draw of the photos kept (the same seed keeps the same photos).

    Raises:
        FileNotFoundError: an index is missing.
        ValueError: an index holds a label its source does not map (the index is named);
            ``photos`` is outside ``(0, 1]``, or below 1 with an index that names no photos.
    """

    def __init__(self, indexes: Mapping[str, str | Path] | Sequence[tuple[str, str | Path]],
                 schema: AttributeSchema, transform: Any = None, photos: float = 1.0,
                 photo_seed: int = 0) -> None:
        self.schema = schema
        pairs = list(indexes.items()) if isinstance(indexes, Mapping) else list(indexes)
        self.sets = [(name, CropIndexDataset(path, None, transform)) for name, path in pairs]
        if not 0 < photos <= 1:
            raise ValueError(f"photos={photos}: expected the share of each source's photos to keep, in (0, 1]")
        if photos < 1:
            self._keep_photos(photos, photo_seed)
        targets, self.sources, self._where = [], [], []
        for name, ds in self.sets:
            lookup = {}
            for label in sorted({r["label"] for r in ds.rows}):
                try:
                    lookup[label] = schema.targets(name, label)
                except ValueError as e:
                    raise ValueError(f"{ds.index_csv}: {e}; add it to schema.sources.{name}, or drop "
                                     "those rows") from None
            targets += [lookup[r["label"]] for r in ds.rows]
            self.sources += [name] * len(ds)
            self._where += [(ds, i) for i in range(len(ds))]
        self.targets = torch.tensor(targets, dtype=torch.int64).reshape(-1, len(schema.attributes))

    def __len__(self) -> int:
        return len(self._where)

    def path(self, i: int) -> Path:
        ds, j = self._where[i]
        return ds.path(j)

    def image(self, i: int) -> np.ndarray:
        """Crop ``i`` as ``(S, S, 3)`` uint8 RGB."""
        ds, j = self._where[i]
        return ds.image(j)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        ds, j = self._where[i]
        return ds[j][0], self.targets[i]

    def _keep_photos(self, share: float, seed: int) -> None:
        for name in dict.fromkeys(n for n, _ in self.sets):
            own = [ds for n, ds in self.sets if n == name]
            photos = sorted({p for ds in own for p in ds.photos()})
            drawn = np.random.default_rng(seed).permutation(len(photos))[:max(1, round(share * len(photos)))]
            kept = {photos[i] for i in drawn}
            for ds in own:
                ds.keep([i for i, p in enumerate(ds.photos()) if p in kept])
            log.info("source %s: kept %d of %d photos (%d crops)", name, len(kept), len(photos),
                     sum(len(ds) for ds in own))

    def value_counts(self) -> dict[str, dict[str, int]]:
        """Attribute -> value -> crops labelling it (for the training log)."""
        out = {}
        for a, (name, values) in enumerate(self.schema.attributes.items()):
            column = self.targets[:, a]
            counts = torch.bincount(column[column >= 0], minlength=len(values)).tolist()
            out[name] = dict(zip(values, counts))
        return out
