"""Several attire attributes per head, learned from data sets that each label only some.

A head wears several things at once (a hard hat *and* a face mask), but real data sets each
label one of them: Hard Hat Workers labels ``helmet`` / bare ``head``, Face Mask Detection labels
mask wearing. An :class:`AttributeSchema` declares the attributes, their values, and for each
training source which of its categories means which attribute value; a crop then has one target
per attribute, ``-1`` where its source says nothing. The classifier has one softmax head per
attribute on a shared backbone (:class:`MultiAttributeHead`), and :func:`masked_attribute_loss`
adds no loss, and so no gradient, for a missing label.

Face boxes are not head boxes: :func:`face_to_head_box` derives a head region from a face box so
face-labelled data teaches ``face_mask`` on crops framed like the pipeline's head crops.

Everything here is a pure function of tensors or plain data.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

MISSING = -1  # target of an attribute the crop's source does not label


@dataclass(frozen=True)
class AttributeSchema:
    """Attributes, their values, and how each source's categories map onto them.

    Attributes:
        attributes: Attribute name -> its values, in order (the softmax's classes), e.g.
            ``{"headwear": ("helmet", "none"), "face_mask": ("with_mask", "without_mask",
            "incorrect")}``.
        sources: Source name -> {source category name -> ``"attribute/value"``}, e.g.
            ``{"hhw": {"helmet": "headwear/helmet", "head": "headwear/none"}}``.
    """

    attributes: Mapping[str, tuple[str, ...]]
    sources: Mapping[str, Mapping[str, str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.attributes:
            raise ValueError("no attributes declared; expected e.g. {'headwear': ['helmet', 'none']}")
        for name, values in self.attributes.items():
            if len(values) < 2 or len(set(values)) != len(values):
                raise ValueError(f"attribute {name!r} has values {list(values)}; expected two or "
                                 f"more distinct values")
            if "/" in name:
                raise ValueError(f"attribute name {name!r} contains '/', which separates attribute "
                                 f"from value in source mappings; rename it")
        for source, mapping in self.sources.items():
            for category, target in mapping.items():
                self._split(target, f"sources.{source}.{category}")

    @classmethod
    def from_dict(cls, data: Mapping) -> AttributeSchema:
        """From a config's ``{"attributes": {...}, "sources": {...}}`` (lists become tuples)."""
        unknown = sorted(set(data) - {"attributes", "sources"})
        if unknown:
            raise ValueError(f"attribute schema keys {unknown} are unknown; expected 'attributes' "
                             f"and 'sources'")
        attributes = {str(k): tuple(str(v) for v in vs) for k, vs in (data.get("attributes") or {}).items()}
        sources = {str(s): {str(c): str(t) for c, t in m.items()} for s, m in (data.get("sources") or {}).items()}
        return cls(attributes, sources)

    @classmethod
    def single(cls, class_names: Sequence[str], name: str = "label") -> AttributeSchema:
        """The schema of a classic one-softmax classifier: one attribute, every class a value."""
        return cls({name: tuple(class_names)}, {})

    def to_dict(self) -> dict:
        return {"attributes": {k: list(v) for k, v in self.attributes.items()},
                "sources": {s: dict(m) for s, m in self.sources.items()}}

    @property
    def names(self) -> list[str]:
        return list(self.attributes)

    def _split(self, target: str, where: str) -> tuple[int, int]:
        attribute, _, value = target.partition("/")
        if attribute not in self.attributes:
            raise ValueError(f"{where}: {target!r} names attribute {attribute!r}; expected one of "
                             f"{self.names} as 'attribute/value'")
        values = self.attributes[attribute]
        if value not in values:
            raise ValueError(f"{where}: {target!r} names value {value!r}; {attribute!r} has "
                             f"{list(values)}")
        return self.names.index(attribute), values.index(value)

    def targets(self, source: str, category: str) -> list[int]:
        """One target per attribute for a crop of ``category`` from ``source``; -1 where unlabelled.

        Raises:
            ValueError: the source or its category is not in the schema.
        """
        if source not in self.sources:
            raise ValueError(f"source {source!r} is not in the schema; expected one of "
                             f"{sorted(self.sources)}")
        mapping = self.sources[source]
        if category not in mapping:
            raise ValueError(f"category {category!r} of source {source!r} maps to no attribute "
                             f"value; expected one of {sorted(mapping)}")
        out = [MISSING] * len(self.attributes)
        a, v = self._split(mapping[category], f"sources.{source}.{category}")
        out[a] = v
        return out


class MultiAttributeHead(nn.Module):
    """One linear softmax head per attribute over shared pooled features.

    Args:
        in_features: Width of the backbone's pooled features.
        schema: The attributes and their values.
        dropout: Before every head, as MobileNetV2's own classifier does.
    """

    def __init__(self, in_features: int, schema: AttributeSchema, dropout: float = 0.2) -> None:
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.heads = nn.ModuleDict({name: nn.Linear(in_features, len(values))
                                    for name, values in schema.attributes.items()})

    def forward(self, features: torch.Tensor) -> dict[str, torch.Tensor]:
        """``(N, in_features)`` -> attribute -> ``(N, values)`` logits."""
        features = self.dropout(features)
        return {name: head(features) for name, head in self.heads.items()}


def masked_attribute_loss(logits: Mapping[str, torch.Tensor], targets: torch.Tensor,
                          label_smoothing: float = 0.0,
                          class_weights: Mapping[str, torch.Tensor] | None = None) -> torch.Tensor:
    """Cross-entropy summed over attributes, each averaged over the crops that label it.

    With every label present and one attribute this is exactly ``F.cross_entropy``. A crop whose
    source does not label an attribute (target ``-1``) adds nothing to that attribute's loss,
    so its features get no gradient from that head. An attribute no crop in the batch labels
    adds zero (still connected to the graph, so DDP sees every head's parameters used).

    Args:
        logits: Attribute -> ``(N, V_a)`` logits, in the schema's order.
        targets: ``(N, A)`` int64, a value index per attribute or ``-1``.
        label_smoothing: As in ``F.cross_entropy``.
        class_weights: Attribute -> ``(V_a,)`` weights, for ``balance: loss``.

    Returns:
        A scalar tensor.
    """
    if targets.ndim != 2 or targets.shape[1] != len(logits):
        raise ValueError(f"targets of shape {tuple(targets.shape)}; expected (N, {len(logits)}), "
                         f"one column per attribute")
    total = torch.zeros((), device=targets.device)
    for a, (name, out) in enumerate(logits.items()):
        labelled = targets[:, a] != MISSING
        weight = class_weights.get(name) if class_weights else None
        if labelled.any():
            total = total + F.cross_entropy(out[labelled], targets[labelled, a], weight=weight,
                                            label_smoothing=label_smoothing)
        else:
            total = total + out.sum() * 0.0
    return total


def balanced_sample_weights(targets: torch.Tensor) -> torch.Tensor:
    """Per-crop sampling weights so every attribute's rare values are seen.

    Each labelled (attribute, value) pair gets weight ``1 / its count``; a crop takes the
    largest weight among its labels, so a crop of a rare value is drawn as often as any
    crop of a common value of the same attribute, whichever source it comes from. Every
    attribute's total weight is then its number of values, so attributes with more values
    (and their sources) are drawn in proportion to that, not to their crop counts.

    Args:
        targets: ``(N, A)`` int64 with ``-1`` for missing labels.

    Returns:
        ``(N,)`` float64 weights for ``torch.utils.data.WeightedRandomSampler``; a crop with
        no label at all gets 0.
    """
    weights = torch.zeros(targets.shape[0], dtype=torch.float64)
    for a in range(targets.shape[1]):
        column = targets[:, a]
        labelled = column != MISSING
        if not labelled.any():
            continue
        counts = torch.bincount(column[labelled])
        w = torch.zeros_like(weights)
        w[labelled] = 1.0 / counts[column[labelled]].double()
        weights = torch.maximum(weights, w)
    return weights


@dataclass(frozen=True)
class FaceToHead:
    """How a face box grows into a head box: the head is wider than the face and reaches above it.

    In face-box widths/heights: the head box is ``width`` face widths wide, centred on the face,
    and extends ``top`` face heights above the face box and ``bottom`` below it. The defaults
    frame a frontal face's hair and chin the way Hard Hat Workers' whole-head boxes do (a face is
    about the lower two thirds of a head, and 0.7-0.8 of its width); turned and tilted faces, and
    hats that stand tall, fit it less well (docs/RESULTS.md says where this shows).
    """

    width: float = 1.3
    top: float = 0.45
    bottom: float = 0.05


def face_to_head_box(face_xyxy: torch.Tensor, rule: FaceToHead = FaceToHead(),
                     image_size: tuple[int, int] | None = None) -> torch.Tensor:
    """Head boxes derived from face boxes.

    Args:
        face_xyxy: ``(N, 4)`` float xyxy face boxes in pixels.
        rule: The geometry (:class:`FaceToHead`).
        image_size: ``(height, width)``; when given, boxes are clipped to the image.

    Returns:
        ``(N, 4)`` float xyxy head boxes.
    """
    x0, y0, x1, y1 = face_xyxy.unbind(-1)
    w, h = x1 - x0, y1 - y0
    cx = (x0 + x1) / 2
    out = torch.stack([cx - rule.width * w / 2, y0 - rule.top * h,
                       cx + rule.width * w / 2, y1 + rule.bottom * h], -1)
    if image_size is not None:
        height, width = image_size
        out[:, 0::2] = out[:, 0::2].clamp(0, width)
        out[:, 1::2] = out[:, 1::2].clamp(0, height)
    return out
