"""Stage 3: segmentation -> head regions -> attire classification, in one call.

    >>> from headseg import HeadwearPipeline
    >>> pipe = HeadwearPipeline.from_pretrained()
    >>> result = pipe("photo.jpg")
    >>> [(h.label, round(h.label_prob, 2)) for h in result.heads]
    >>> [{a: p.value for a, p in h.attributes.items()} for h in result.heads]  # every attribute

Both checkpoints carry their own preprocessing (input sizes, mean/std, crop rules, class
names, attribute schema), so :meth:`HeadwearPipeline.from_checkpoint` needs nothing else.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

import cv2
import numpy as np
import torch
from pycocotools import mask as mask_utils
from torch import nn

from headseg.attributes import AttributePrediction, attribute_columns, column_name
from headseg.classification import Classifier, flip_averaged
from headseg.crops import crop_heads
from headseg.data import CocoHeads
from headseg.io import read_image
from headseg.segmentation import Segmenter, detect, fold_frozen_batchnorm

if TYPE_CHECKING:
    from headseg.tracking import FrameResult, Tracker

log = logging.getLogger(__name__)

ImageInput = Union[np.ndarray, str, Path]
ASSETS = Path(__file__).resolve().parent / "assets"
# The bundled models, by name: (segmenter, classifier) files in ASSETS. docs/MODEL_CARD.md
# says what each was trained on and how well it does.
PRETRAINED = {
    # whole heads (Hard Hat Workers) + one classifier, two attributes: headwear (helmet / none,
    # from Hard Hat Workers) and face_mask (with_mask / without_mask / incorrect, from Face Mask
    # Detection's faces grown into heads)
    "default": ("hhw_segmenter.pt", "multi_classifier.pt"),
    "hhw": ("hhw_segmenter.pt", "multi_classifier.pt"),  # the hard-hat model's old name: the default now
    "facemask": ("segmenter.pt", "classifier.pt"),  # faces; with_mask / without_mask / mask_weared_incorrect
}
DEFAULT_MODEL = "default"
# Each bundled model's default score threshold (its operating point), chosen on val
# (docs/RESULTS.md): the default's maximises the mean end-to-end F1 of its two attributes on hhw
# val (headwear) and facemask val (face_mask); facemask's maximises its end-to-end F1 on facemask val.
OPERATING_THRESH = {"default": 0.95, "hhw": 0.95, "facemask": 0.9}
# Whether each bundled model classifies a head crop and its mirror image (``flip``), chosen on
# val (docs/RESULTS.md, "Test-time flip"); the face model predates the option and keeps without.
OPERATING_FLIP = {"default": True, "hhw": True, "facemask": False}
# A trained pair's default score threshold where none is asked for (its checkpoints keep COCO
# evaluation's 0.05, far too low to show).
CHECKPOINT_THRESH = 0.5


@dataclass(frozen=True, eq=False)
class Head:
    """One head found in an image.

    Attributes:
        box_xyxy: ``(x0, y0, x1, y1)`` in pixels of the input image.
        mask: ``(H, W)`` bool, the head's pixels in the input image.
        score: Segmenter confidence in ``[0, 1]`` that this is a head.
        label: Attire class with the highest probability. With several attributes: every
            attribute's value, joined by ``", "`` (``"helmet, with_mask"``), the most probable
            combination.
        label_prob: Its probability in ``[0, 1]``; with several attributes the product of theirs
            (each attribute has a softmax of its own).
        probs: Every attire class's probability (they sum to 1); with several attributes one
            entry per ``attribute/value``, each attribute's summing to 1.
        attributes: Attribute -> :class:`~headseg.attributes.AttributePrediction` (value, its
            probability, every value's probability). A single-attribute classifier's one
            attribute is ``label``; left empty, it is filled from ``label``, ``label_prob`` and
            ``probs``.
    """

    box_xyxy: tuple[float, float, float, float]
    mask: np.ndarray
    score: float
    label: str
    label_prob: float
    probs: dict[str, float]
    attributes: Mapping[str, AttributePrediction] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.attributes:
            object.__setattr__(self, "attributes", {"label": AttributePrediction(self.label, self.label_prob,
                                                                                 dict(self.probs))})

    @classmethod
    def from_attributes(cls, box_xyxy: tuple[float, float, float, float], mask: np.ndarray, score: float,
                        attributes: Mapping[str, AttributePrediction]) -> "Head":
        """A head whose ``label``, ``label_prob`` and ``probs`` follow from its attributes."""
        if len(attributes) == 1:
            (p,) = attributes.values()
            return cls(box_xyxy, mask, score, p.value, p.prob, dict(p.probs), dict(attributes))
        label = ", ".join(p.value for p in attributes.values())
        prob = math.prod(p.prob for p in attributes.values())
        probs = {f"{a}/{v}": q for a, p in attributes.items() for v, q in p.probs.items()}
        return cls(box_xyxy, mask, score, label, prob, probs, dict(attributes))

    def columns(self) -> list[str]:
        """Each attribute's value as its classifier column (:func:`~headseg.attributes.attribute_columns`)."""
        return attribute_columns({a: p.value for a, p in self.attributes.items()})

    def to_json(self, mask: bool = True) -> dict[str, Any]:
        """JSON-ready dict; the mask as COCO RLE (``counts`` a string) unless ``mask=False``."""
        record = {"box_xyxy": [round(v, 2) for v in self.box_xyxy], "score": round(self.score, 4),
                  "label": self.label, "label_prob": round(self.label_prob, 4),
                  "probs": {k: round(v, 4) for k, v in self.probs.items()},
                  "attributes": {a: p.to_json() for a, p in self.attributes.items()}}
        if mask:
            rle = mask_utils.encode(np.asfortranarray(self.mask.astype(np.uint8)))
            record["mask_rle"] = {"size": rle["size"], "counts": rle["counts"].decode()}
        return record


@dataclass(frozen=True, eq=False)
class ImageResult:
    """Every head of one image, most confident first.

    Attributes:
        heads: The heads found (empty when there are none).
        image_size: ``(height, width)`` of the input.
        source: The file path for path inputs, else None.
    """

    heads: tuple[Head, ...]
    image_size: tuple[int, int]
    source: str | None = None

    def __len__(self) -> int:
        return len(self.heads)

    def __getitem__(self, index: int | slice | np.ndarray | Sequence[int] | Sequence[bool]) -> "ImageResult":
        """The heads picked by an int, a slice, indices or a boolean mask, as a new result.

        ``result[result.scores > 0.7]``, ``result[result.labels == "hard_hat"]`` (as with
        detectron2's ``Instances``); the image size and source stay.
        """
        if isinstance(index, (int, np.integer)):
            picked = (self.heads[index],)
        elif isinstance(index, slice):
            picked = self.heads[index]
        else:
            array = np.asarray(index)
            if array.dtype == bool:
                if array.shape != (len(self.heads),):
                    raise ValueError(f"boolean index of shape {array.shape}; expected ({len(self.heads)},)")
                array = np.flatnonzero(array)
            picked = tuple(self.heads[int(i)] for i in array.reshape(-1))
        return ImageResult(tuple(picked), self.image_size, self.source)

    def filter(self, min_score: float = 0.0, labels: Sequence[str] | None = None,
               min_label_prob: float = 0.0) -> "ImageResult":
        """The heads scoring at least ``min_score``, of one of ``labels`` (None: any), whose label
        probability is at least ``min_label_prob``."""
        keep = [h for h in self.heads if h.score >= min_score and h.label_prob >= min_label_prob
                and (labels is None or h.label in labels)]
        return ImageResult(tuple(keep), self.image_size, self.source)

    @property
    def boxes(self) -> np.ndarray:
        """``(N, 4)`` float32 xyxy boxes in pixels of the input image."""
        return np.array([h.box_xyxy for h in self.heads], np.float32).reshape(-1, 4)

    @property
    def scores(self) -> np.ndarray:
        """``(N,)`` float32 segmentation scores."""
        return np.array([h.score for h in self.heads], np.float32)

    @property
    def masks(self) -> np.ndarray:
        """``(N, H, W)`` bool masks (``(0, H, W)`` when there are no heads)."""
        if not self.heads:
            return np.zeros((0, *self.image_size), bool)
        return np.stack([h.mask for h in self.heads])

    @property
    def labels(self) -> np.ndarray:
        """``(N,)`` attire labels (strings)."""
        return np.array([h.label for h in self.heads], dtype=object)

    @property
    def label_probs(self) -> np.ndarray:
        """``(N,)`` float32 probability of each head's label."""
        return np.array([h.label_prob for h in self.heads], np.float32)

    def values(self, attribute: str) -> np.ndarray:
        """``(N,)`` each head's value of ``attribute`` (strings): ``result[result.values("headwear") == "none"]``.

        Raises:
            ValueError: a head has no such attribute (the names are in ``head.attributes``).
        """
        missing = [i for i, h in enumerate(self.heads) if attribute not in h.attributes]
        if missing:
            raise ValueError(f"head {missing[0]} has no attribute {attribute!r}; it has "
                             f"{list(self.heads[missing[0]].attributes)}")
        return np.array([h.attributes[attribute].value for h in self.heads], dtype=object)

    def counts(self) -> dict[str, int]:
        """Heads per attire label; with several attributes, heads per ``attribute/value``."""
        out: dict[str, int] = {}
        for h in self.heads:
            for column in h.columns():
                out[column] = out.get(column, 0) + 1
        return out

    def to_json(self) -> dict[str, Any]:
        return {"source": self.source, "height": self.image_size[0], "width": self.image_size[1],
                "heads": [h.to_json() for h in self.heads]}

    def to_coco_results(self, image_id: int, category_ids: dict[str, int],
                        score: str = "joint", values: str = "top") -> list[dict[str, Any]]:
        """COCO results records, one per head and attribute (or per head and attribute value);
        one whose value has no category (e.g. background) is left out.

        Categories are classifier columns (:meth:`Head.columns`): the attire labels of a
        single-attribute classifier, ``attribute/value`` (``"headwear/helmet"``) with several.

        Args:
            image_id: The image's COCO id.
            category_ids: Column name -> COCO category id.
            score: ``joint`` (segmentation score x the value's probability, the default: a head
                that is surely a head but of doubtful attire ranks low) or ``seg``.
            values: ``top`` (each attribute's most probable value, the default) or ``all``
                (every value, each scored by its own probability: the multi-label results a
                class-aware detector such as torchvision's Mask R-CNN gives COCO evaluation,
                one box per class above its threshold). ``all`` needs ``score="joint"``.
        """
        if values not in ("top", "all"):
            raise ValueError(f"values={values!r}; expected 'top' or 'all'")
        if values == "all" and score != "joint":
            raise ValueError("values='all' ranks each value by its probability; it needs score='joint'")
        records = []
        for h in self.heads:
            if values == "top":
                scored = [(column, p.prob) for column, p in zip(h.columns(), h.attributes.values())]
            else:
                scored = [(column_name(a, v, len(h.attributes)), q) for a, p in h.attributes.items()
                          for v, q in p.probs.items()]
            rle = None
            for column, prob in scored:
                if column not in category_ids:
                    continue
                if rle is None:
                    rle = mask_utils.encode(np.asfortranarray(h.mask.astype(np.uint8)))
                x0, y0, x1, y1 = h.box_xyxy
                s = h.score * prob if score == "joint" else h.score
                records.append({"image_id": image_id, "category_id": category_ids[column],
                                "bbox": [x0, y0, x1 - x0, y1 - y0], "score": float(s),
                                "segmentation": {"size": rle["size"], "counts": rle["counts"].decode()}})
        return records

    def draw(self, image: np.ndarray, alpha: float = 0.45) -> np.ndarray:
        """The image with every head's mask, box and label drawn on it.

        A label reads ``label prob``; with several attributes it is one line per attribute,
        ``attribute: value prob``. Labels stay inside the image and off each other where the
        image leaves room (:func:`place_labels`).

        Args:
            image: ``(H, W, 3)`` uint8, RGB (as given to the pipeline, or re-read).
            alpha: Mask opacity.

        Returns:
            A new ``(H, W, 3)`` uint8 RGB array.
        """
        if image.shape[:2] != self.image_size:
            raise ValueError(f"draw() got a {image.shape[1]}x{image.shape[0]} image; this result is "
                             f"for {self.image_size[1]}x{self.image_size[0]}")
        out = image.copy()
        draw_heads(out, [DrawnHead(h.box_xyxy, head_lines(h), h.mask) for h in self.heads], alpha=alpha)
        return out


@dataclass(frozen=True)
class DrawnHead:
    """What :func:`draw_heads` draws for one head.

    Attributes:
        box_xyxy: Box in pixels.
        lines: The label, one ``(text, RGB colour)`` per line; the first colour is the box's.
        mask: ``(H, W)`` bool, or None for no mask.
        box_width: Box line width in pixels; 0: the text scale of :func:`draw_heads`.
    """

    box_xyxy: Sequence[float]
    lines: Sequence[tuple[str, tuple[int, int, int]]]
    mask: np.ndarray | None = None
    box_width: int = 0


def head_lines(head: Head, prefix: str = "") -> list[tuple[str, tuple[int, int, int]]]:
    """A head's label lines: ``label prob`` with one attribute, else ``attribute: value prob`` each,
    coloured by the value's classifier column (distinct for the first ten columns)."""
    columns = list(head.probs)
    if len(head.attributes) == 1:
        lines = [(f"{head.label} {head.label_prob:.2f}", label_color(head.label, columns))]
    else:
        lines = [(f"{a}: {p.value} {p.prob:.2f}", label_color(c, columns))
                 for (a, p), c in zip(head.attributes.items(), head.columns())]
    if prefix:
        lines[0] = (f"{prefix} {lines[0][0]}", lines[0][1])
    return lines


def text_scale(image_size: tuple[int, int]) -> int:
    """Box line width and text scale for an image of ``(height, width)``: 1 per 400 px."""
    return max(1, round(max(image_size) / 400))


def label_size(lines: Sequence[str], thickness: int) -> tuple[int, int, int]:
    """``(width, height, line height)`` in pixels of a label block as :func:`draw_heads` draws it."""
    sizes = [cv2.getTextSize(t, cv2.FONT_HERSHEY_SIMPLEX, 0.35 * thickness, 1)[0] for t in lines]
    line = max(h for _, h in sizes) + 4
    return max(w for w, _ in sizes) + 3, line * len(sizes), line


def place_labels(boxes_xyxy: Sequence[Sequence[float]], sizes: Sequence[tuple[int, int]],
                 image_size: tuple[int, int]) -> list[tuple[int, int]]:
    """Top-left corners of label blocks: inside the image, and off each other where room allows.

    Labels are placed in order (most confident head first), each at the first free spot of:
    just above its box, just below it, inside its top, inside its bottom, then those spots moved
    up and down by whole label heights; the left edge is the box's, or its right edge minus
    the label's width. When none of those is free, the free spot nearest the box on a grid over
    the whole image is taken (:func:`draw_heads` then links it to its box with a line). Every
    spot is clamped into the image, so a label is always inside it (one larger than the image
    starts at its top-left corner). Only when no spot at all is free does a label overlap
    others, as little as it can.

    Args:
        boxes_xyxy: ``N`` boxes in pixels.
        sizes: ``N`` label ``(width, height)`` in pixels.
        image_size: ``(height, width)``.

    Returns:
        ``N`` ``(x, y)`` integer corners.
    """
    height, width = image_size
    placed: list[tuple[int, int, int, int]] = []
    out = []
    for (x0, y0, x1, y1), (w, h) in zip(boxes_xyxy, sizes):
        x0, y0, x1, y1 = (int(round(v)) for v in (x0, y0, x1, y1))

        def clamp(x: int, y: int) -> tuple[int, int]:
            return min(max(x, 0), max(width - w, 0)), min(max(y, 0), max(height - h, 0))

        def overlap(c: tuple[int, int]) -> int:
            return sum(max(0, min(c[0] + w, a + aw) - max(c[0], a)) * max(0, min(c[1] + h, b + bh) - max(c[1], b))
                       for a, b, aw, bh in placed)

        near = [clamp(x, y + k * h) for k in (0, -1, 1, -2, 2, -3, 3)
                for y in (y0 - h, y1, y0, y1 - h) for x in (x0, x1 - w)]
        best = next((c for c in near if overlap(c) == 0), None)
        if best is None:
            step_x, step_y = max(1, w // 4), max(1, h // 2)
            grid = {clamp(x, y) for y in range(0, max(height - h, 0) + step_y, step_y)
                    for x in range(0, max(width - w, 0) + step_x, step_x)}
            free = [c for c in grid if overlap(c) == 0]
            best = (min(free, key=lambda c: (abs(c[0] - x0) + abs(c[1] + h - y0), c)) if free
                    else min(near, key=overlap))
        placed.append((*best, w, h))
        out.append(best)
    return out


def draw_heads(out: np.ndarray, heads: Sequence[DrawnHead], thickness: int | None = None,
               alpha: float = 0.45) -> None:
    """Draw heads on ``out`` in place: masks blended in, boxes, then every label on top.

    Serves :meth:`ImageResult.draw` and ``FrameResult.draw`` alike. Labels are laid out together
    (:func:`place_labels`), so they stay inside the image and off each other.

    Args:
        out: ``(H, W, 3)`` uint8 RGB image, changed in place.
        heads: The heads, most confident first (they get the best label spots).
        thickness: Scale of box lines and text; default grows with the image (1 per 400 px).
        alpha: Mask opacity.
    """
    thickness = thickness or text_scale(out.shape[:2])
    for h in heads:
        colour = h.lines[0][1]
        if h.mask is not None:
            out[h.mask] = (out[h.mask] * (1 - alpha) + np.array(colour) * alpha).astype(np.uint8)
        x0, y0, x1, y1 = (int(round(v)) for v in h.box_xyxy)
        cv2.rectangle(out, (x0, y0), (x1, y1), colour, h.box_width or thickness)
    blocks = [label_size([t for t, _ in h.lines], thickness) for h in heads]
    corners = place_labels([h.box_xyxy for h in heads], [(w, hh) for w, hh, _ in blocks], out.shape[:2])
    for h, (w, hh, _), (x, y) in zip(heads, blocks, corners):
        x0, y0, x1, y1 = (int(round(v)) for v in h.box_xyxy)
        if x + w < x0 or x > x1 or y + hh < y0 or y > y1:  # placed away from its box: link the two
            bx, by = min(max(x + w // 2, x0), x1), min(max(y + hh // 2, y0), y1)
            lx, ly = min(max(bx, x), x + w - 1), min(max(by, y), y + hh - 1)
            cv2.line(out, (lx, ly), (bx, by), h.lines[0][1], 1, cv2.LINE_AA)
    for h, (w, _, line), (x, y) in zip(heads, blocks, corners):
        for k, (text, colour) in enumerate(h.lines):
            top = y + k * line
            cv2.rectangle(out, (x, top), (x + w - 1, top + line - 1), colour, -1)
            cv2.putText(out, text, (x + 1, top + line - 4), cv2.FONT_HERSHEY_SIMPLEX, 0.35 * thickness,
                        (0, 0, 0), 1, cv2.LINE_AA)


# Ten colours that stay apart from each other (Sasha Trubetskoy's list of distinct colours).
PALETTE = ((230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48),
           (145, 30, 180), (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212))


def label_color(label: str, class_names: Sequence[str] | None = None) -> tuple[int, int, int]:
    """The RGB colour of a label: distinct for the first ten ``class_names`` (by position).

    Without ``class_names`` (or for a label not among them) the colour is a stable function of
    the label's text, and two labels may share one.
    """
    if class_names is not None and label in class_names:
        return PALETTE[list(class_names).index(label) % len(PALETTE)]
    return PALETTE[sum(label.encode()) % len(PALETTE)]


def _as_rgb(image: ImageInput, color_order: str) -> tuple[np.ndarray, str | None]:
    """Validate one input and return it as an HxWx3 uint8 RGB array plus its source path."""
    if isinstance(image, (str, Path)):
        return read_image(image), str(image)
    if not isinstance(image, np.ndarray):
        raise TypeError(f"expected an HxWx3 uint8 array, a path or a list of them; got "
                        f"{type(image).__name__}")
    if image.dtype != np.uint8:
        raise TypeError(f"expected a uint8 image, got dtype {image.dtype}; convert with "
                        "(img * 255).astype(np.uint8) for floats in [0, 1]")
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    if image.ndim != 3 or image.shape[2] not in (3, 4) or min(image.shape[:2]) < 1:
        raise ValueError(f"expected an HxWx3 (or HxWx4, HxW) image, got shape {image.shape}")
    image = image[:, :, :3]
    if color_order.upper() == "BGR":
        image = image[:, :, ::-1]
    elif color_order.upper() != "RGB":
        raise ValueError(f"color_order={color_order!r}; expected 'RGB' or 'BGR'")
    return np.ascontiguousarray(image), None


def _shrink(image: np.ndarray, source: str | None,
            max_side: int) -> tuple[np.ndarray, str | None, tuple[int, int] | None]:
    """Shrink an image whose long side exceeds ``max_side``; returns its original size if so."""
    h, w = image.shape[:2]
    if max(h, w) <= max_side:
        return image, source, None
    scale = max_side / max(h, w)
    small = cv2.resize(image, (max(1, round(w * scale)), max(1, round(h * scale))),
                       interpolation=cv2.INTER_AREA)
    return small, source, (h, w)


def _grow(result: ImageResult, original: tuple[int, int] | None) -> ImageResult:
    """Map a result on a shrunk image back to the original size (boxes scaled, masks resized)."""
    if original is None:
        return result
    (h, w), (sh, sw) = original, result.image_size
    sx, sy = w / sw, h / sh
    heads = tuple(dataclasses.replace(
        hd, box_xyxy=(hd.box_xyxy[0] * sx, hd.box_xyxy[1] * sy, hd.box_xyxy[2] * sx, hd.box_xyxy[3] * sy),
        mask=cv2.resize(hd.mask.astype(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST) > 0)
        for hd in result.heads)
    return ImageResult(heads, (h, w), result.source)


class HeadwearPipeline:
    """Mask R-CNN heads, masked crops, attire classifier: one image in, one typed result out.

    Args:
        segmenter: A loaded segmenter (:meth:`headseg.segmentation.Segmenter.load`). The
            pipeline runs a copy with its BatchNorm folded; the model passed in is untouched.
        classifier: A loaded classifier (:meth:`headseg.classification.Classifier.load`): its
            preprocessing record gives the crop rules, input size and mean/std, its schema the
            attributes every head gets (``Head.attributes``). Likewise folded in a copy.
        device: Where both models run.
        score_thresh: Heads below this segmentation score are dropped; None: the segmenter
            checkpoint's own ``box_score_thresh`` (with any ``seg_overrides`` applied).
        mask_thresh: Mask probability above which a pixel belongs to the head.
        batch_size: Images per segmenter forward pass.
        amp: fp16 autocast on CUDA (ignored on the CPU).
        max_side: Larger inputs are shrunk to this long side before both stages (the segmenter
            shrinks them anyway) and results scaled back, so memory stays bounded.
        flip: Classify each head crop and its mirror image and average the probabilities
            (test-time flip): twice the classifier's work, a gain on val (docs/RESULTS.md). The
            bundled default turns it on (:meth:`from_pretrained`, :data:`OPERATING_FLIP`).
    """

    def __init__(self, segmenter: Segmenter, classifier: Classifier, device: str | torch.device = "cpu",
                 score_thresh: float | None = None, mask_thresh: float = 0.5, batch_size: int = 4,
                 max_side: int = 2048, amp: bool = True, flip: bool = False) -> None:
        if not isinstance(segmenter, Segmenter) or not isinstance(classifier, Classifier):
            raise TypeError(f"HeadwearPipeline takes a Segmenter and a Classifier, got "
                            f"{type(segmenter).__name__} and {type(classifier).__name__}; load them with "
                            "Segmenter.load(path) and Classifier.load(path), or use "
                            "HeadwearPipeline.from_checkpoint(seg_path, cls_path)")
        if score_thresh is None:
            score_thresh = segmenter.config.model.box_score_thresh
        if not 0.0 <= score_thresh <= 1.0 or not 0.0 < mask_thresh < 1.0:
            raise ValueError(f"score_thresh={score_thresh} must be in [0, 1] and "
                             f"mask_thresh={mask_thresh} in (0, 1)")
        self.device = torch.device(device)
        # Inference copies: BatchNorm folded into the convolutions and channels-last layout,
        # the same outputs and a 3x faster backbone on a 2-core CPU (docs/PERFORMANCE.md).
        self.segmenter = copy.deepcopy(segmenter.model).eval()
        fold_frozen_batchnorm(self.segmenter)
        self.segmenter.to(self.device, memory_format=torch.channels_last)
        self.classifier = _fold_batchnorm(classifier.model)
        self.classifier.to(self.device, memory_format=torch.channels_last)
        self.seg_config, self.cls_config = segmenter.config, classifier.config
        self.preprocessing = classifier.preprocessing
        self.class_names = list(classifier.class_names)
        self.schema = classifier.schema
        self.mean = torch.tensor(self.preprocessing.mean, device=self.device).view(1, 3, 1, 1)
        self.std = torch.tensor(self.preprocessing.std, device=self.device).view(1, 3, 1, 1)
        self.mask_thresh = mask_thresh
        self.batch_size = max(1, batch_size)
        self.max_side = max_side
        self.amp = amp and self.device.type == "cuda"
        self.flip = flip
        self.score_thresh = score_thresh

    @property
    def score_thresh(self) -> float:
        return self._score_thresh

    @score_thresh.setter
    def score_thresh(self, value: float) -> None:
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"score_thresh={value}; expected a value in [0, 1]")
        # Filtering inside roi_heads also saves pasting masks of heads we would drop.
        self._score_thresh = float(value)
        self.segmenter.roi_heads.score_thresh = float(value)

    @classmethod
    def from_checkpoint(cls, segmenter: str | Path, classifier: str | Path | Sequence[str | Path],
                        device: str | torch.device | None = None,
                        seg_overrides: dict[str, Any] | None = None, **kwargs: Any) -> "HeadwearPipeline":
        """Build the pipeline from the two checkpoints written by the training tools.

        Args:
            segmenter: ``best.pt`` of ``tools/train_seg.py``.
            classifier: ``best.pt`` of ``tools/train_cls.py``; several: their ensemble, the mean of
                their probabilities (:meth:`headseg.classification.Classifier.ensemble`).
            device: ``cpu``, ``cuda``... (default: CUDA when available).
            seg_overrides: Inference-time segmenter fields to change, e.g.
                ``{"min_size": 640, "box_score_thresh": 0.3}`` (check val AP after).
            **kwargs: ``score_thresh``, ``mask_thresh``, ``batch_size``, ``max_side``, ``amp``, ``flip``.
        """
        device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        seg = Segmenter.load(segmenter, device, **(seg_overrides or {}))
        if len(seg.class_names) != 1:
            log.warning("segmenter %s has %d classes; the pipeline treats every detection as a head",
                        segmenter, len(seg.class_names))
        return cls(seg, Classifier.load(classifier, device), device, **kwargs)

    @classmethod
    def from_pretrained(cls, device: str | torch.device | None = None, *, model: str = DEFAULT_MODEL,
                        **kwargs: Any) -> "HeadwearPipeline":
        """A bundled model (:data:`PRETRAINED`): ``default``, whole heads (trained on Hard Hat
        Workers) with two attributes each, ``headwear`` (helmet / none) and ``face_mask``
        (with_mask / without_mask / incorrect); ``hhw``, its former name; or ``facemask``, faces
        in the CC0 face-mask photos labelled with_mask / without_mask / mask_weared_incorrect.
        docs/MODEL_CARD.md has what each was trained on and its test numbers.

        The checkpoints keep COCO evaluation's low ``box_score_thresh`` (0.05), so the default
        score threshold here is the model's operating point (:data:`OPERATING_THRESH`) unless
        ``score_thresh`` (not None) or a ``box_score_thresh`` override is given; likewise
        ``flip`` (None or not given: :data:`OPERATING_FLIP`).
        """
        if model not in PRETRAINED:
            raise ValueError(f"no bundled model {model!r}; the bundled models are {sorted(PRETRAINED)}")
        if isinstance(device, str) and device in PRETRAINED:
            raise ValueError(f"{device!r} is a bundled model, not a device: from_pretrained(model={device!r})")
        if kwargs.get("score_thresh") is None and "box_score_thresh" not in (kwargs.get("seg_overrides") or {}):
            kwargs["score_thresh"] = OPERATING_THRESH[model]
        if kwargs.get("flip") is None:
            kwargs["flip"] = OPERATING_FLIP[model]
        seg, clf = (ASSETS / name for name in PRETRAINED[model])
        for path in (seg, clf):
            if not path.is_file():
                raise FileNotFoundError(f"the bundled model file {path} is missing; reinstall headseg "
                                        "or use HeadwearPipeline.from_checkpoint(seg, cls)")
        return cls.from_checkpoint(seg, clf, device, **kwargs)

    def __call__(self, images: ImageInput | Sequence[ImageInput],
                 color_order: str = "RGB") -> ImageResult | list[ImageResult]:
        """Find every head and its attire.

        Args:
            images: One image or a list: HxWx3 uint8 arrays (colour order per ``color_order``;
                HxW grayscale and HxWx4 are accepted), or image file paths (read as RGB).
            color_order: ``RGB`` or ``BGR`` (OpenCV) for array inputs.

        Returns:
            One :class:`ImageResult` for a single input, a list for a list.

        Raises:
            TypeError, ValueError: an input of the wrong type, dtype or shape, or an empty list.
            FileNotFoundError: a path that does not exist.
        """
        single = isinstance(images, (np.ndarray, str, Path))
        items = [images] if single else list(images)
        if not items:
            raise ValueError("got an empty list of images; pass at least one image or path")
        results: list[ImageResult | None] = [None] * len(items)
        # Images are read a window at a time (bounded memory) and batched only with images of
        # the same size: Mask R-CNN pads a batch to its largest image, and that padding would
        # make a result depend on its batch-mates.
        window = self.batch_size * 8
        for start in range(0, len(items), window):
            loaded = {start + i: _shrink(*_as_rgb(im, color_order), self.max_side)
                      for i, im in enumerate(items[start:start + window])}
            by_size: dict[tuple[int, int], list[int]] = {}
            for index, (array, _, _) in loaded.items():
                by_size.setdefault(array.shape[:2], []).append(index)
            for indices in by_size.values():
                for b in range(0, len(indices), self.batch_size):
                    chunk = indices[b:b + self.batch_size]
                    outs = self._predict_batch([loaded[i][0] for i in chunk], [loaded[i][1] for i in chunk])
                    for i, out in zip(chunk, outs):
                        results[i] = _grow(out, loaded[i][2])
        return results[0] if single else results  # type: ignore[return-value]

    def track(self, source: str | int | Path, tracker: Tracker | None = None, stride: int = 1,
              max_frames: int | None = None, duration: float | None = None) -> Iterator[FrameResult]:
        """Heads with track ids, frame by frame, from a video file, camera index or stream URL.

            >>> for frame in pipe.track("clip.mp4", stride=2):
            ...     print(frame.frame, frame.time_s, [(h.track_id, h.head.label) for h in frame.heads])

        Args:
            source: A video file, a camera index (``0``) or a stream URL.
            tracker: A :class:`headseg.tracking.Tracker` (default: ByteTrack at the video's fps).
            stride: Run the pipeline on every ``stride``-th frame and carry boxes in between.
            max_frames, duration: Stop after this many frames / seconds of video.

        Yields:
            One :class:`headseg.tracking.FrameResult` per frame read; a damaged file or a
            dropped stream ends the iteration with what was read (see :mod:`headseg.video`).
        """
        from headseg.tracking import ByteTracker  # noqa: PLC0415  (video needs pipeline: lazy)
        from headseg.video import VideoReader, track_frames  # noqa: PLC0415

        reader = VideoReader(source, max_frames, duration)
        yield from track_frames(self, reader, tracker or ByteTracker(fps=reader.fps), stride, str(reader.source))

    @torch.inference_mode()
    def classify(self, image: np.ndarray, boxes_xyxy: np.ndarray, scores: np.ndarray,
                 masks: np.ndarray | None = None) -> ImageResult:
        """Stage 2 alone, on head regions found by something else (e.g. a face detector).

        Args:
            image: ``(H, W, 3)`` uint8 RGB.
            boxes_xyxy: ``(N, 4)`` head boxes in pixels.
            scores: ``(N,)`` detector confidences in ``[0, 1]``.
            masks: ``(N, H, W)`` bool; default: ellipses inscribed in the boxes (derived masks).
        """
        h, w = image.shape[:2]
        boxes = torch.as_tensor(np.asarray(boxes_xyxy, np.float32).reshape(-1, 4), device=self.device)
        if masks is None:
            masks = np.zeros((len(boxes), h, w), bool)
            for m, (x0, y0, x1, y1) in zip(masks, boxes_xyxy):
                center = (int(round((x0 + x1) / 2)), int(round((y0 + y1) / 2)))
                axes = (max(1, int(round((x1 - x0) / 2))), max(1, int(round((y1 - y0) / 2))))
                m[:] = cv2.ellipse(np.zeros((h, w), np.uint8), center, axes, 0, 0, 360, 1, -1) > 0
        tensor = torch.from_numpy(image).to(self.device).permute(2, 0, 1).float().div_(255)
        mask_t = torch.as_tensor(masks, device=self.device).bool().reshape(-1, h, w)
        score_t = torch.as_tensor(np.asarray(scores, np.float32).reshape(-1), device=self.device)
        return self._finish([tensor], [(boxes, score_t, mask_t)], [image], [None])[0]

    @torch.inference_mode()
    def _predict_batch(self, images: list[np.ndarray], sources: list[str | None]) -> list[ImageResult]:
        tensors = [torch.from_numpy(im).to(self.device).permute(2, 0, 1).float().div_(255)
                   for im in images]
        return self._finish(tensors, self._segment(tensors), images, sources)

    def _segment(self, tensors: list[torch.Tensor]) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """Stage 1: per image, the ``(boxes, scores, masks)`` of the heads kept (:func:`detect`)."""
        dets = detect(self.segmenter, tensors, self.seg_config.model.box_from_mask, self.mask_thresh, self.amp)
        return [(d.boxes, d.scores, d.masks) for d in dets]

    def _backbone(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Backbone + FPN features of a resized, normalised ``(B, 3, H, W)`` batch."""
        return self.segmenter.backbone(images.contiguous(memory_format=torch.channels_last))

    def _finish(self, tensors: list[torch.Tensor], per_image: list[tuple[torch.Tensor, ...]],
                images: list[np.ndarray], sources: list[str | None]) -> list[ImageResult]:
        """Crop and classify every head of the batch in one call each; build the results.

        The images of a batch have one size (``__call__`` groups them so).
        """
        crop = self.preprocessing.crop
        counts = [len(boxes) for boxes, _, _ in per_image]
        boxes, scores, masks = (torch.cat(parts) for parts in zip(*per_image))
        probs = torch.zeros(0, len(self.class_names), device=self.device)
        if len(boxes):  # every head of the batch in one classifier forward
            index = torch.repeat_interleave(torch.arange(len(tensors), device=self.device),
                                            torch.tensor(counts, device=self.device))
            crops = crop_heads(torch.stack(tensors), masks, boxes, index, crop.size, crop.padding,
                               crop.fill, crop.fill_value)
            x = ((crops - self.mean) / self.std).contiguous(memory_format=torch.channels_last)
            with torch.autocast(self.device.type, enabled=self.amp):
                probs = flip_averaged(self.classifier, x, self.schema, self.flip).float()
        # One copy to the host for the batch's numbers; masks image by image, so that a result
        # kept alone does not keep its batch-mates' masks alive.
        attributes = self.schema.decode(probs)
        boxes, scores = (t.cpu().numpy() for t in (boxes, scores))
        results, offset = [], 0
        for count, image_masks, image, source in zip(counts, torch.split(masks, counts), images, sources):
            heads = []
            for i, mask in enumerate(image_masks.cpu().numpy(), start=offset):
                heads.append(Head.from_attributes(tuple(float(v) for v in boxes[i]), mask, float(scores[i]),
                                                  attributes[i]))
            offset += count
            results.append(ImageResult(tuple(heads), image.shape[:2], source))
        return results


def _fold_batchnorm(model: nn.Module) -> nn.Module:
    """An eval-mode copy of ``model`` with each BatchNorm folded into the convolution before it.

    Same outputs within float rounding, less work per crop (docs/PERFORMANCE.md). A model that
    torch.fx cannot trace (data-dependent control flow) comes back unfolded, but still a copy:
    the caller's model is never changed (mode, device or layout).
    """
    from torch.fx.experimental.optimization import fuse  # noqa: PLC0415

    model = copy.deepcopy(model).eval()
    try:
        return fuse(model, inplace=True)
    except Exception as error:  # fx raises many types for untraceable code; all mean "keep it"
        log.info("classifier kept unfused (%s: %s)", type(error).__name__, error)
        return model


def load_pipeline(seg: str | Path | None, cls: str | Path | Sequence[str | Path] | None, model: str | None = None,
                  device: str | torch.device | None = None, **kwargs: Any) -> HeadwearPipeline:
    """Trained checkpoints (``seg`` and ``cls``) or, without them, the bundled ``model``, as the
    command lines and the Ray actors load a pipeline. ``score_thresh=None`` means the bundled
    model's operating point (:data:`OPERATING_THRESH`) or :data:`CHECKPOINT_THRESH` for checkpoints;
    ``flip=None`` the bundled model's :data:`OPERATING_FLIP`, or no flip for checkpoints.
    """
    if seg and cls:
        if "score_thresh" in kwargs and kwargs["score_thresh"] is None:
            kwargs["score_thresh"] = CHECKPOINT_THRESH
        if "flip" in kwargs and kwargs["flip"] is None:
            kwargs["flip"] = False
        return HeadwearPipeline.from_checkpoint(seg, cls, device, **kwargs)
    return HeadwearPipeline.from_pretrained(device, model=model or DEFAULT_MODEL, **kwargs)


def predict_coco(pipe: HeadwearPipeline, coco: CocoHeads, progress: bool = True) -> dict[int, ImageResult]:
    """Run ``pipe`` on every image of a COCO set; image id -> result."""
    from tqdm import tqdm  # noqa: PLC0415

    out = {}
    for image_id in tqdm(coco.image_ids, desc="pipeline", disable=not progress, leave=False):
        out[image_id] = pipe(coco.image_path(image_id))
    return out
