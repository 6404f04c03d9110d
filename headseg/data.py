"""COCO head annotations in: loading, validation, derived masks and training augmentation."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pycocotools import mask as mask_utils
from torchvision import tv_tensors
from torchvision.transforms import v2

from headseg.io import read_image

log = logging.getLogger(__name__)


DERIVED_MASK_KINDS = ("ellipse", "box")


def box_to_polygon(box_xywh: tuple[float, float, float, float] | list[float], shape: str = "ellipse",
                   num_points: int = 32) -> list[float]:
    """A polygon standing in for the mask of a box-only annotation (a *derived* mask).

    Args:
        box_xywh: COCO box ``[x, y, width, height]`` in pixels.
        shape: ``ellipse`` (inscribed in the box, the default: heads are round) or ``box``.
        num_points: vertices of the ellipse.

    Returns:
        A flat COCO polygon ``[x0, y0, x1, y1, ...]``.
    """
    x, y, w, h = (float(v) for v in box_xywh)
    if shape == "box":
        return [x, y, x + w, y, x + w, y + h, x, y + h]
    if shape != "ellipse":
        raise ValueError(f"derived mask shape {shape!r} is not one of {DERIVED_MASK_KINDS}")
    t = np.linspace(0.0, 2.0 * np.pi, num_points, endpoint=False)
    cx, cy = x + w / 2.0, y + h / 2.0
    xs = cx + (w / 2.0) * np.cos(t)
    ys = cy + (h / 2.0) * np.sin(t)
    return np.round(np.stack([xs, ys], axis=1).reshape(-1), 2).tolist()


# ----------------------------------------------------------------------------- COCO loading


@dataclass(frozen=True)
class Problem:
    """One thing wrong in a COCO file: what and where (image id and/or annotation id)."""

    kind: str  # short machine-readable tag, e.g. "unknown_category"
    message: str  # full sentence naming the ids and the fix
    image_id: int | None = None
    ann_id: int | None = None

    def __str__(self) -> str:
        return self.message


@dataclass(frozen=True)
class CocoHeads:
    """A validated COCO file of head annotations.

    Attributes:
        path: The JSON file.
        image_root: Folder that image ``file_name`` entries are relative to.
        dataset: The COCO dict itself (for pycocotools), after any dropped annotations.
        images: Image id -> image record.
        annotations: Image id -> its annotations (every image has an entry, maybe empty).
        categories: Category id -> name, in id order; these are the attire labels.
        derived_masks: ``"ellipse"``/``"box"`` when masks were derived from boxes, else None.
    """

    path: Path
    image_root: Path
    dataset: dict[str, Any]
    images: dict[int, dict[str, Any]]
    annotations: dict[int, list[dict[str, Any]]]
    categories: dict[int, str]
    derived_masks: str | None

    @property
    def image_ids(self) -> list[int]:
        return sorted(self.images)

    @property
    def class_names(self) -> list[str]:
        return [self.categories[k] for k in sorted(self.categories)]

    def image_path(self, image_id: int) -> Path:
        return self.image_root / self.images[image_id]["file_name"]


def derived_masks_of(data: dict[str, Any]) -> str | None:
    """How a COCO dict's masks were derived from boxes (``"ellipse"``, ``"box"``), or None if drawn.

    ``info.derived_masks`` says so for the whole file (headseg's converters write it); else an
    annotation's own ``derived_mask`` key (not None/False) does.
    """
    info = data.get("info") or {}
    if isinstance(info, dict) and info.get("derived_masks"):
        return str(info["derived_masks"])
    for ann in data.get("annotations") or []:
        if isinstance(ann, dict) and ann.get("derived_mask") not in (None, False):
            return ann["derived_mask"] if isinstance(ann["derived_mask"], str) else "ellipse"
    return None


def read_json(path: Path) -> dict[str, Any]:
    """Read a JSON file and check it has COCO's three lists; nothing deeper (see find_problems)."""
    if not path.is_file():
        raise FileNotFoundError(f"COCO annotation file {path} does not exist")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path} is not a JSON file ({e}); expected a COCO annotation file") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path} holds a JSON {type(data).__name__}; expected a COCO object")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise ValueError(
                f"{path} has no '{key}' list; a COCO file needs 'images', 'annotations' and "
                "'categories' (convert other formats with the scripts in datasets/)"
            )
    return data


def _segmentation_problem(seg: Any, height: int, width: int) -> str | None:
    """Why a segmentation is invalid, or None. Empty segmentations are allowed (box only)."""
    if seg is None or seg == []:
        return None
    if isinstance(seg, list):
        for poly in seg:
            if not isinstance(poly, list) or not all(isinstance(v, (int, float)) for v in poly):
                return "polygon is not a flat list of numbers"
            if len(poly) % 2:
                return f"polygon has an odd number of coordinates ({len(poly)})"
            if len(poly) < 6:
                return f"polygon has {len(poly) // 2} points; a polygon needs at least 3"
        return None
    if isinstance(seg, dict):
        size, counts = seg.get("size"), seg.get("counts")
        if not (isinstance(size, list) and len(size) == 2):
            return "RLE has no 'size' [height, width]"
        if list(size) != [height, width]:
            return f"RLE size {size} does not match the image's [height, width] = [{height}, {width}]"
        if isinstance(counts, list):
            if sum(counts) != height * width:
                return f"uncompressed RLE counts sum to {sum(counts)}, expected height*width={height * width}"
        elif not isinstance(counts, (str, bytes)):
            return "RLE 'counts' is neither a string nor a list"
        return None
    return f"segmentation of type {type(seg).__name__} is neither polygons nor RLE"


def find_problems(data: dict[str, Any], path: Path, image_root: Path,
                  check_files: bool = True) -> list[Problem]:
    """Every problem in a COCO dict, each naming the file and the offending ids.

    Checks: duplicate image/annotation/category ids, missing image fields or files, unknown
    ``image_id`` or ``category_id``, degenerate boxes (w or h <= 0, or wholly outside the
    image), polygons with under 3 points, RLE whose size does not match the image, and
    ``iscrowd`` other than 0/1.
    """
    problems: list[Problem] = []
    name = path.name

    def add(kind: str, msg: str, image_id: int | None = None, ann_id: int | None = None) -> None:
        problems.append(Problem(kind, f"{name}: {msg}", image_id, ann_id))

    categories: dict[int, str] = {}
    for cat in data["categories"]:
        cid = cat.get("id")
        if cid in categories:
            add("duplicate_category", f"category id={cid} appears twice in 'categories'")
        categories[cid] = cat.get("name", str(cid))

    images: dict[int, dict[str, Any]] = {}
    for img in data["images"]:
        iid = img.get("id")
        if iid in images:
            add("duplicate_image", f"image id={iid} appears twice in 'images'", iid)
            continue
        missing = [k for k in ("id", "file_name", "width", "height") if k not in img]
        if missing:
            add("bad_image", f"image id={iid} lacks {missing}", iid)
            continue
        if not (img["width"] > 0 and img["height"] > 0):
            add("bad_image", f"image id={iid} has size {img['width']}x{img['height']}", iid)
            continue
        images[iid] = img
        if check_files and not (image_root / img["file_name"]).is_file():
            add("missing_file", f"image id={iid}: file {image_root / img['file_name']} does not "
                "exist (is image_root right?)", iid)

    seen_ann: set[int] = set()
    for ann in data["annotations"]:
        aid, iid = ann.get("id"), ann.get("image_id")
        if aid in seen_ann:
            add("duplicate_annotation", f"annotation id={aid} appears twice", iid, aid)
            continue
        seen_ann.add(aid)
        if iid not in images:
            add("unknown_image", f"annotation id={aid}: image_id={iid} does not exist in 'images'",
                iid, aid)
            continue
        if ann.get("category_id") not in categories:
            add("unknown_category", f"annotation id={aid}: category_id={ann.get('category_id')} "
                f"does not exist in 'categories' (known: {sorted(categories)})", iid, aid)
        if ann.get("iscrowd", 0) not in (0, 1):
            add("bad_iscrowd", f"annotation id={aid}: iscrowd={ann.get('iscrowd')}, expected 0 or 1",
                iid, aid)
        width, height = images[iid]["width"], images[iid]["height"]
        box = ann.get("bbox")
        if not (isinstance(box, list) and len(box) == 4 and all(isinstance(v, (int, float)) for v in box)):
            add("bad_box", f"annotation id={aid}: bbox {box!r} is not [x, y, width, height]", iid, aid)
        else:
            x, y, w, h = box
            if w <= 0 or h <= 0:
                add("degenerate_box", f"annotation id={aid}: bbox {box} has width or height <= 0",
                    iid, aid)
            elif x >= width or y >= height or x + w <= 0 or y + h <= 0:
                add("box_outside", f"annotation id={aid}: bbox {box} lies outside the "
                    f"{width}x{height} image id={iid}", iid, aid)
        reason = _segmentation_problem(ann.get("segmentation"), height, width)
        if reason:
            add("bad_segmentation", f"annotation id={aid}: {reason}", iid, aid)
    return problems


def load_coco(path: str | Path, image_root: str | Path | None = None, check_files: bool = True,
              drop_invalid: bool = False) -> CocoHeads:
    """Load and validate a COCO file of head annotations.

    Args:
        path: COCO JSON file.
        image_root: Folder image ``file_name`` entries are relative to; default: the JSON's folder.
        check_files: Check that every image file exists.
        drop_invalid: Drop invalid annotations and images (logging how many) instead of raising.

    Returns:
        The validated :class:`CocoHeads`.

    Raises:
        FileNotFoundError: ``path`` is missing, or (first problem) an image file is missing.
        ValueError: not JSON, not COCO, or any problem listed by :func:`find_problems`.
    """
    path = Path(path)
    data = read_json(path)
    root = Path(image_root) if image_root else path.parent
    problems = find_problems(data, path, root, check_files)
    if problems and not drop_invalid:
        listed = "\n  ".join(str(p) for p in problems[:10])
        more = f"\n  ... and {len(problems) - 10} more" if len(problems) > 10 else ""
        fix = "fix the file, or run tools/check_dataset.py --drop-invalid to write a cleaned copy"
        error = FileNotFoundError if problems[0].kind == "missing_file" else ValueError
        raise error(f"{len(problems)} problem(s) in {path}:\n  {listed}{more}\n{fix}")
    bad_images = {p.image_id for p in problems if p.ann_id is None and p.image_id is not None}
    bad_anns = {p.ann_id for p in problems if p.ann_id is not None}
    if problems:
        log.warning("%s: dropped %d image(s) and %d annotation(s) with problems", path,
                    len(bad_images), len(bad_anns))
    categories = {c["id"]: c["name"] for c in sorted(data["categories"], key=lambda c: c["id"])}
    images = {img["id"]: img for img in data["images"]
              if img.get("id") not in bad_images and "file_name" in img}
    annotations: dict[int, list[dict[str, Any]]] = {iid: [] for iid in images}
    kept = []
    seen: set[int] = set()
    for ann in data["annotations"]:
        if ann.get("id") in bad_anns or ann.get("id") in seen or ann.get("image_id") not in images:
            continue
        seen.add(ann["id"])
        annotations[ann["image_id"]].append(ann)
        kept.append(ann)
    dataset = {**data, "images": list(images.values()), "annotations": kept}
    return CocoHeads(path, root, dataset, images, annotations, categories, derived_masks_of(dataset))


def annotation_mask(ann: dict[str, Any], height: int, width: int,
                    derived_mask: str = "ellipse") -> np.ndarray:
    """The HxW uint8 mask of one annotation: polygons, RLE or uncompressed RLE.

    A box-only annotation (no segmentation) gets a derived mask of shape ``derived_mask``;
    a box that is clipped by the image edge gets the clipped shape.
    """
    seg = ann.get("segmentation")
    if not seg:
        seg = [box_to_polygon(ann["bbox"], derived_mask)]
    if isinstance(seg, list):
        rle = mask_utils.merge(mask_utils.frPyObjects(seg, height, width))
    elif isinstance(seg["counts"], list):
        rle = mask_utils.frPyObjects(seg, height, width)
    else:
        rle = seg
    mask = mask_utils.decode(rle)
    if mask.ndim == 3:
        mask = mask.max(axis=2)
    if not mask.any():
        # Sub-pixel polygons rasterise to nothing; keep the annotation as one pixel at its centre.
        x, y, w, h = ann["bbox"]
        mask[min(int(y + h / 2), height - 1), min(int(x + w / 2), width - 1)] = 1
    return mask


# ----------------------------------------------------------------------------- torch dataset


def _labels_and_ids(sample: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Tell SanitizeBoundingBoxes which per-box tensors to filter with the boxes."""
    target = sample[1]
    return target["labels"], target["ann_ids"]


def train_transforms(hflip: float = 0.5, scale_jitter: tuple[float, float] = (0.75, 1.25),
                     color_jitter: float = 0.2) -> v2.Compose:
    """Mask-aware augmentation: boxes and masks move with the pixels (torchvision v2).

    Scale jitter zooms in or out around a random centre on a canvas of the same size, so it
    survives Mask R-CNN's own resize to ``min_size``. Boxes that leave the canvas are dropped
    with their masks, labels and ids.
    """
    ops: list[v2.Transform] = []
    if hflip > 0:
        ops.append(v2.RandomHorizontalFlip(hflip))
    if tuple(scale_jitter) != (1.0, 1.0):
        ops.append(v2.RandomAffine(degrees=0.0, translate=(0.1, 0.1), scale=tuple(scale_jitter)))
    if color_jitter > 0:
        ops.append(v2.ColorJitter(color_jitter, color_jitter, color_jitter, color_jitter / 4))
    ops += [v2.ClampBoundingBoxes(), v2.SanitizeBoundingBoxes(min_size=1.0, labels_getter=_labels_and_ids),
            v2.ToDtype(torch.float32, scale=True)]
    return v2.Compose(ops)


def eval_transforms() -> v2.Compose:
    return v2.Compose([v2.ToDtype(torch.float32, scale=True)])


class HeadDataset(torch.utils.data.Dataset):
    """COCO heads as Mask R-CNN training samples.

    Each item is ``(image, target)``: image a float CHW tensor in [0, 1] (RGB); target a dict
    with ``boxes`` (N,4) xyxy float, ``labels`` (N,) int64, ``masks`` (N,H,W) uint8,
    ``ann_ids`` (N,) int64 and ``image_id`` int. Crowd annotations are left out of targets
    (COCO evaluation still uses them to ignore matches).

    Args:
        coco: A loaded :class:`CocoHeads`.
        transforms: A v2 transform over ``(image, target)``; default :func:`eval_transforms`.
        class_agnostic: Label every head 1 (``head``); else label i is the i-th category by id.
        derived_mask: Mask shape for box-only annotations.
    """

    def __init__(self, coco: CocoHeads, transforms: v2.Transform | None = None,
                 class_agnostic: bool = True, derived_mask: str = "ellipse") -> None:
        self.coco = coco
        self.ids = coco.image_ids
        self.transforms = transforms or eval_transforms()
        self.class_agnostic = class_agnostic
        self.derived_mask = derived_mask
        self.label_of = {cid: i + 1 for i, cid in enumerate(sorted(coco.categories))}

    @property
    def class_names(self) -> list[str]:
        return ["head"] if self.class_agnostic else self.coco.class_names

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, Any]]:
        image_id = self.ids[index]
        info = self.coco.images[image_id]
        image = read_image(self.coco.image_path(image_id))
        h, w = image.shape[:2]
        if (h, w) != (info["height"], info["width"]):
            raise ValueError(
                f"{self.coco.path.name}: image id={image_id} is {w}x{h} on disk but "
                f"{info['width']}x{info['height']} in the JSON; fix 'width'/'height'"
            )
        anns = [a for a in self.coco.annotations[image_id] if not a.get("iscrowd", 0)]
        boxes = torch.tensor([a["bbox"] for a in anns], dtype=torch.float32).reshape(-1, 4)
        boxes[:, 2:] += boxes[:, :2]
        masks = np.stack([annotation_mask(a, h, w, self.derived_mask) for a in anns]) if anns \
            else np.zeros((0, h, w), np.uint8)
        labels = [1 if self.class_agnostic else self.label_of[a["category_id"]] for a in anns]
        target = {
            "boxes": tv_tensors.BoundingBoxes(boxes, format="XYXY", canvas_size=(h, w)),
            "masks": tv_tensors.Mask(torch.from_numpy(masks)),
            "labels": torch.tensor(labels, dtype=torch.int64),
            "ann_ids": torch.tensor([a["id"] for a in anns], dtype=torch.int64),
            "image_id": image_id,
        }
        img = tv_tensors.Image(torch.from_numpy(image).permute(2, 0, 1))
        img, target = self.transforms(img, target)
        target["boxes"] = target["boxes"].as_subclass(torch.Tensor)
        target["masks"] = target["masks"].as_subclass(torch.Tensor)
        return img.as_subclass(torch.Tensor), target


def collate(batch: list[tuple[torch.Tensor, dict[str, Any]]]) -> tuple[tuple, tuple]:
    """Detection batches are lists: images differ in size."""
    return tuple(zip(*batch))
