"""Several attire attributes per head, learned from data sets that each label only some.

A head wears several things at once (a hard hat *and* a face mask), but real data sets each
label one of them: Hard Hat Workers labels ``helmet`` / bare ``head``, Face Mask Detection labels
mask wearing. An :class:`AttributeSchema` declares the attributes, their values, and for each
training source which of its categories means which attribute value; a crop then has one target
per attribute, ``-1`` where its source says nothing. The classifier has one softmax head per
attribute on a shared backbone: its last Linear has one output column per attribute value,
grouped by attribute (:attr:`AttributeSchema.column_names`), and :meth:`AttributeSchema.split`
cuts its logits into one block per attribute, each a softmax of its own
(:func:`attribute_softmax`). Per-attribute Linear heads after one shared dropout are exactly one
Linear whose rows are grouped so; keeping it one Linear keeps every classifier a tensor-in,
tensor-out model (BatchNorm folding, ONNX export and the pipeline see one output) and keeps a
single-attribute classifier's weights as they always were. :func:`masked_attribute_loss` adds
no loss, and so no gradient, for a missing label.

Face boxes are not head boxes: :func:`face_to_head_box` derives a head region from a face box so
face-labelled data teaches ``face_mask`` on crops framed like the pipeline's head crops.

Everything here is a pure function of tensors or plain data.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

MISSING = -1  # target of an attribute the crop's source does not label


def column_name(attribute: str, value: str, attributes: int) -> str:
    """A classifier column's name: the bare value when there is one attribute (as a one-softmax
    classifier always had: ``with_mask``), else ``attribute/value``.

    Args:
        attribute, value: The column's attribute and value.
        attributes: How many attributes the classifier has.
    """
    return value if attributes == 1 else f"{attribute}/{value}"


@dataclass(frozen=True, eq=False)
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
        # Plain dicts of tuples whatever came in (YAML lists, mapping proxies), so that equal
        # schemas compare equal and a config holding one dumps to YAML and loads back.
        if not isinstance(self.attributes, Mapping) or not isinstance(self.sources or {}, Mapping) or any(
                isinstance(v, str) or not isinstance(v, Sequence) for v in self.attributes.values()):
            raise ValueError(f"attribute schema {{'attributes': {self.attributes!r}, 'sources': "
                             f"{self.sources!r}}} has the wrong shape; expected attributes as "
                             "{name: [value, ...]} and sources as {source: {category: 'attribute/value'}}")
        object.__setattr__(self, "attributes", {str(k): tuple(str(v) for v in vs)
                                                for k, vs in dict(self.attributes).items()})
        object.__setattr__(self, "sources", {str(s): {str(c): str(t) for c, t in dict(m).items()}
                                             for s, m in dict(self.sources or {}).items()})
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

    def __eq__(self, other: object) -> bool:
        # Attribute order is column order: schemas that list the same attributes in another
        # order describe differently laid-out models.
        return (isinstance(other, AttributeSchema) and list(self.attributes.items()) == list(other.attributes.items())
                and self.sources == other.sources)

    __hash__ = None  # type: ignore[assignment]  (mutable mappings inside)

    @classmethod
    def from_dict(cls, data: Mapping) -> AttributeSchema:
        """From a config's ``{"attributes": {...}, "sources": {...}}`` (lists become tuples)."""
        unknown = sorted(set(data) - {"attributes", "sources"})
        if unknown:
            raise ValueError(f"attribute schema keys {unknown} are unknown; expected 'attributes' "
                             f"and 'sources'")
        return cls(data.get("attributes") or {}, data.get("sources") or {})

    @classmethod
    def single(cls, class_names: Sequence[str], name: str = "label", source: str = "crops") -> AttributeSchema:
        """The schema of a classic one-softmax classifier: one attribute, every class a value.

        Its one source (``crops``) is a crop set labelled with the classes themselves, so a
        single-attribute classifier trains and evaluates through the same code as any other.
        """
        return cls({name: tuple(class_names)}, {source: {c: f"{name}/{c}" for c in class_names}})

    def to_dict(self) -> dict:
        return {"attributes": {k: list(v) for k, v in self.attributes.items()},
                "sources": {s: dict(m) for s, m in self.sources.items()}}

    @property
    def names(self) -> list[str]:
        return list(self.attributes)

    @property
    def column_names(self) -> list[str]:
        """One name per output column, attributes in order: ``"attribute/value"``.

        A single-attribute schema names its columns by the bare values, as a one-softmax
        classifier always has (``with_mask``, not ``label/with_mask``).
        """
        return [self.column_name(a, v) for a, values in self.attributes.items() for v in values]

    def column_name(self, attribute: str, value: str) -> str:
        """The output column's name of ``value`` of ``attribute`` (see :attr:`column_names`)."""
        return column_name(attribute, value, len(self.attributes))

    def split(self, columns: torch.Tensor) -> dict[str, torch.Tensor]:
        """``(N, sum of values)`` logits or probabilities -> attribute -> ``(N, values)`` views."""
        sizes = [len(v) for v in self.attributes.values()]
        if columns.shape[-1] != sum(sizes):
            raise ValueError(f"{columns.shape[-1]} output columns; the schema's attributes "
                             f"{self.names} have {sum(sizes)} values in all")
        return dict(zip(self.attributes, columns.split(sizes, dim=-1)))

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

    def columns_of(self, source: str) -> dict[str, str]:
        """``source``'s category -> the output column (:attr:`column_names`) it labels."""
        if source not in self.sources:
            raise ValueError(f"source {source!r} is not in the schema; expected one of "
                             f"{sorted(self.sources)}")
        out = {}
        for category, target in self.sources[source].items():
            a, v = self._split(target, f"sources.{source}.{category}")
            out[category] = self.column_name(self.names[a], self.attributes[self.names[a]][v])
        return out

    def source_of(self, category_names: Sequence[str]) -> str:
        """The one source whose categories include all of ``category_names``.

        Raises:
            ValueError: no source, or more than one, covers them.
        """
        fits = [s for s, m in self.sources.items() if set(category_names) <= set(m)]
        if len(fits) != 1:
            raise ValueError(f"categories {sorted(category_names)} fit {len(fits)} sources of the "
                             f"schema ({ {s: sorted(m) for s, m in self.sources.items()} }); "
                             "expected exactly one: name it (--source NAME)")
        return fits[0]

    def decode(self, probs: torch.Tensor) -> list[dict[str, AttributePrediction]]:
        """Per-attribute predictions of each row of :func:`attribute_softmax` probabilities.

        Args:
            probs: ``(N, sum of values)`` probabilities, each attribute's block summing to 1.

        Returns:
            ``N`` dicts attribute -> :class:`AttributePrediction` (the most probable value).
        """
        blocks = {a: b.tolist() for a, b in self.split(probs.float().cpu()).items()}
        out = []
        for i in range(probs.shape[0]):
            row = {}
            for a, values in self.attributes.items():
                p = blocks[a][i]
                k = max(range(len(values)), key=p.__getitem__)
                row[a] = AttributePrediction(values[k], float(p[k]), dict(zip(values, map(float, p))))
            out.append(row)
        return out


@dataclass(frozen=True)
class AttributePrediction:
    """One attribute of one head: its most probable value, that probability, and all of them.

    Attributes:
        value: The most probable value, e.g. ``"helmet"``.
        prob: Its probability in ``[0, 1]``.
        probs: Every value's probability (they sum to 1).
    """

    value: str
    prob: float
    probs: Mapping[str, float]

    def to_json(self) -> dict:
        return {"value": self.value, "prob": round(self.prob, 4),
                "probs": {k: round(v, 4) for k, v in self.probs.items()}}


def attribute_columns(values: Mapping[str, str]) -> list[str]:
    """A head's attribute values as classifier columns (:func:`column_name`), as ``probs``, COCO
    category names and summary counts have them.

    Args:
        values: Attribute -> its predicted value, one entry per attribute of the classifier.
    """
    return [column_name(a, v, len(values)) for a, v in values.items()]


def attribute_softmax(logits: torch.Tensor, schema: AttributeSchema) -> torch.Tensor:
    """A classifier's logits -> probabilities: one softmax per attribute's block of columns.

    The one place raw classifier output becomes probabilities (training's validation,
    evaluation and the pipeline all call it). With one attribute it is ``softmax(logits, 1)``.

    Args:
        logits: ``(N, sum of values)`` float.
        schema: The classifier's schema (its column order).

    Returns:
        ``(N, sum of values)`` float32, each attribute's block summing to 1.
    """
    return torch.cat([F.softmax(block.float(), dim=-1) for block in schema.split(logits).values()], dim=-1)


def masked_attribute_loss(logits: Mapping[str, torch.Tensor], targets: torch.Tensor,
                          label_smoothing: float = 0.0,
                          class_weights: Mapping[str, torch.Tensor] | None = None) -> torch.Tensor:
    """Cross-entropy summed over attributes, each averaged over the crops that label it.

    With every label present and one attribute this is exactly ``F.cross_entropy``. A crop whose
    source does not label an attribute (target ``-1``) adds nothing to that attribute's loss,
    so its features get no gradient from that head. An attribute no crop in the batch labels
    adds zero (still connected to the graph, so DDP sees every head's parameters used).

    Args:
        logits: Attribute -> ``(N, V_a)`` logits, in the schema's order
            (:meth:`AttributeSchema.split` of the classifier's output).
        targets: ``(N, A)`` int64, a value index per attribute or ``-1``.
        label_smoothing: As in ``F.cross_entropy``.
        class_weights: Attribute -> ``(V_a,)`` weights, for ``balance: loss``.

    Returns:
        A scalar tensor: the sum of :func:`masked_attribute_losses`.
    """
    return sum(masked_attribute_losses(logits, targets, label_smoothing, class_weights).values(),
               torch.zeros((), device=targets.device))


def masked_attribute_losses(logits: Mapping[str, torch.Tensor], targets: torch.Tensor,
                            label_smoothing: float = 0.0,
                            class_weights: Mapping[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """:func:`masked_attribute_loss` attribute by attribute: attribute -> scalar loss (for logging)."""
    if targets.ndim != 2 or targets.shape[1] != len(logits):
        raise ValueError(f"targets of shape {tuple(targets.shape)}; expected (N, {len(logits)}), "
                         f"one column per attribute")
    losses = {}
    for a, (name, out) in enumerate(logits.items()):
        labelled = targets[:, a] != MISSING
        weight = class_weights.get(name) if class_weights else None
        if labelled.any():
            losses[name] = F.cross_entropy(out[labelled], targets[labelled, a], weight=weight,
                                           label_smoothing=label_smoothing)
        else:
            losses[name] = out.sum() * 0.0
    return losses


def distillation_loss(logits: Mapping[str, torch.Tensor], teacher_logits: Mapping[str, torch.Tensor],
                      targets: torch.Tensor | None = None, temperature: float = 1.0,
                      columns: Mapping[str, Sequence[int]] | None = None) -> torch.Tensor:
    """Knowledge distillation (Hinton et al., 2015): ``T^2 x KL(teacher || model)`` at temperature
    ``T``, averaged over crops, summed over attributes.

    Args:
        logits: Attribute -> ``(N, values)`` logits of the model being trained.
        teacher_logits: The same for the teacher: logits, or log-probabilities (a
            :class:`headseg.classification.ClassifierEnsemble`'s output); detached.
        targets: ``(N, A)`` labels with ``-1`` where a crop's source is silent: those crops add
            nothing to that attribute's term. None: every crop counts for every attribute (the
            teacher's guess stands where no label does).
        temperature: ``T``; 1 keeps the teacher's probabilities as they are, higher softens both sides.
        columns: Attribute -> the model's columns that are the teacher's values, in the teacher's
            order, for an attribute whose teacher knows only some of the model's values (one added
            since, e.g. ``face_mask/not_visible``): there the model's distribution is taken over
            those columns alone (conditioned on the value being one the teacher knows).

    Returns:
        A scalar; zero (still connected to the graph) for an attribute without crops.
    """
    if temperature <= 0:
        raise ValueError(f"temperature={temperature}; expected > 0")
    total = torch.zeros((), device=next(iter(logits.values())).device)
    for a, (name, out) in enumerate(logits.items()):
        if columns and name in columns:
            out = out[:, list(columns[name])]
        log_q = F.log_softmax(out.float() / temperature, dim=-1)
        p = F.softmax(teacher_logits[name].detach().float() / temperature, dim=-1)
        kl = (torch.xlogy(p, p) - p * log_q).sum(-1)
        if targets is not None:
            kl = kl[targets[:, a] != MISSING]
        total = total + (kl.mean() if kl.numel() else out.sum() * 0.0) * temperature ** 2
    return total


def balanced_sample_weights(targets: torch.Tensor, crop_weights: torch.Tensor | None = None,
                            attribute_weights: Sequence[float] | None = None, power: float = 1.0,
                            value_weights: Sequence[Sequence[float] | None] | None = None) -> torch.Tensor:
    """Per-crop sampling weights so every attribute's rare values are seen.

    Each labelled (attribute, value) pair gets a total weight of 1, shared by its crops in
    proportion to ``crop_weights`` (equally by default: ``1 / its count`` each); a crop takes
    the largest weight among its labels, so a crop of a rare value is drawn as often as any
    crop of a common value of the same attribute, whichever source it comes from. Every
    attribute's total weight is then its number of values, so attributes with more values
    (and their sources) are drawn in proportion to that, not to their crop counts;
    ``attribute_weights`` scale those totals. ``power`` below 1 balances less: a value's share of
    its attribute's draws goes as its count to the ``1 - power`` (0.5: square-root sampling,
    Mahajan et al., 2018; 0: as the crops come), so a rare value's few crops repeat less often.
    ``value_weights`` then scale single values' draws against their attribute's other values,
    the attribute's total staying as it was.

    Args:
        targets: ``(N, A)`` int64 with ``-1`` for missing labels.
        crop_weights: ``(N,)`` relative weights of crops within the values they label (a crop
            set's ``weight`` in ``data.sources``); they move draws between the crops of one
            value, never between values. None: all 1.
        attribute_weights: ``(A,)`` positive multipliers of each attribute's total (2: its
            values drawn twice as often as with 1, against the other attributes'). None: all 1.
        power: In [0, 1]: 1 gives every value equal draws.
        value_weights: Per attribute, None or one positive multiplier per value (0.5: the value
            drawn half as often, against the attribute's other values, as it would be). None: all 1.

    Returns:
        ``(N,)`` float64 weights for ``torch.utils.data.WeightedRandomSampler``; a crop with
        no label at all gets 0.
    """
    share = torch.ones(targets.shape[0], dtype=torch.float64)
    if crop_weights is not None:
        if crop_weights.shape != share.shape or (crop_weights <= 0).any():
            raise ValueError(f"crop_weights of shape {tuple(crop_weights.shape)} for {targets.shape[0]} crops; "
                             "expected one positive weight per crop")
        share = crop_weights.to(torch.float64)
    scale = [1.0] * targets.shape[1] if attribute_weights is None else [float(w) for w in attribute_weights]
    if len(scale) != targets.shape[1] or not all(w > 0 for w in scale):
        raise ValueError(f"attribute_weights {scale} for {targets.shape[1]} attributes; expected one "
                         "positive weight per attribute")
    if not 0 <= power <= 1:
        raise ValueError(f"balance power {power}; expected a number in [0, 1] (1: every value drawn alike)")
    per_value = [None] * targets.shape[1] if value_weights is None else list(value_weights)
    if len(per_value) != targets.shape[1] or not all(
            v is None or (len(v) > int(targets[:, a].max()) and all(float(x) > 0 for x in v))
            for a, v in enumerate(per_value)):
        raise ValueError(f"value_weights {per_value} for {targets.shape[1]} attributes; expected per "
                         "attribute None or one positive weight per value")
    weights = torch.zeros_like(share)
    for a in range(targets.shape[1]):
        column = targets[:, a]
        labelled = column != MISSING
        if not labelled.any():
            continue
        totals = torch.zeros(int(column[labelled].max()) + 1, dtype=torch.float64)
        totals.index_add_(0, column[labelled], share[labelled])
        w = torch.zeros_like(weights)
        w[labelled] = scale[a] * share[labelled] / totals[column[labelled]]
        if power != 1:  # each value's total goes from 1 to its count^(1 - power); the attribute's stays
            w[labelled] *= totals[column[labelled]] ** (1 - power)
        if per_value[a] is not None:
            w[labelled] *= torch.tensor([float(x) for x in per_value[a]], dtype=torch.float64)[column[labelled]]
        if power != 1 or per_value[a] is not None:
            w[labelled] *= scale[a] * int((totals > 0).sum()) / w[labelled].sum()
        weights = torch.maximum(weights, w)
    return weights


def attribute_class_weights(targets: torch.Tensor, schema: AttributeSchema) -> dict[str, torch.Tensor]:
    """Loss weights per attribute value, for ``data.balance: loss``.

    Each value of an attribute gets ``n / (k * n_v)``, where ``n`` counts the crops that label
    the attribute, ``n_v`` those of the value and ``k`` the values present (1 for a balanced
    attribute); a value with no crop gets 0.

    Args:
        targets: ``(N, A)`` int64 with ``-1`` for missing labels.
        schema: Its attributes, in column order.

    Returns:
        Attribute -> ``(V_a,)`` float32 weights.
    """
    out = {}
    for a, (name, values) in enumerate(schema.attributes.items()):
        column = targets[:, a]
        counts = torch.bincount(column[column != MISSING], minlength=len(values)).float()
        present = counts > 0
        w = torch.zeros_like(counts)
        w[present] = counts.sum() / (present.sum() * counts[present])
        out[name] = w
    return out


@dataclass(frozen=True)
class FaceToHead:
    """How a face box grows into a head box: the head is wider than the face and reaches above it.

    In face-box widths/heights: the head box is ``width`` face widths wide, centred on the face,
    and extends ``top`` face heights above the face box and ``bottom`` below it.

    The defaults are measured, not guessed: on facemask val, the median geometry of the heads the
    bundled hhw segmenter finds around ground-truth faces (``tools/fit_face_to_head.py``; 339 of
    416 faces held by a detected head; quartiles width 1.35-1.81, top 0.46-0.83, bottom
    0.06-0.39), and the rule whose crops train the better classifier on val, scored on the crops
    of the heads the pipeline finds (docs/RESULTS.md, "Face boxes to head boxes"). Turned and
    tilted faces, and hats that stand tall, fit it worst (README, "Several attributes").
    """

    width: float = 1.56
    top: float = 0.65
    bottom: float = 0.2


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


def match_faces_to_heads(faces: torch.Tensor, heads: torch.Tensor, min_cover: float = 0.8) -> list[tuple[int, int]]:
    """Pair each face box with the head box that holds it, one head per face.

    A head holds a face when it covers at least ``min_cover`` of the face's area; among those,
    the face takes the head whose box is smallest (a head, not a group of heads), pairs are made
    greedily from the best-covered faces, and each head serves one face.

    Args:
        faces: ``(N, 4)`` xyxy face boxes.
        heads: ``(M, 4)`` xyxy head boxes.
        min_cover: Least share of the face's area the head box must cover.

    Returns:
        ``(face index, head index)`` pairs, faces without a head left out.
    """
    if not len(faces) or not len(heads):
        return []
    lt = torch.maximum(faces[:, None, :2], heads[None, :, :2])
    rb = torch.minimum(faces[:, None, 2:], heads[None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    face_area = (faces[:, 2:] - faces[:, :2]).prod(-1).clamp(min=1e-6)
    head_area = (heads[:, 2:] - heads[:, :2]).prod(-1)
    cover = inter / face_area[:, None]
    pairs, used = [], set()
    for f in cover.max(1).values.argsort(descending=True).tolist():
        candidates = [h for h in (cover[f] >= min_cover).nonzero().flatten().tolist() if h not in used]
        if candidates:
            h = min(candidates, key=lambda k: head_area[k].item())
            pairs.append((f, h))
            used.add(h)
    return pairs


def fit_face_to_head(faces: torch.Tensor, heads: torch.Tensor) -> FaceToHead:
    """The :class:`FaceToHead` rule matched (face, head) box pairs follow: the median of each ratio.

    Args:
        faces: ``(N, 4)`` xyxy face boxes.
        heads: ``(N, 4)`` xyxy head boxes, row ``i`` the head of face ``i``.

    Raises:
        ValueError: no pairs.
    """
    if not len(faces):
        raise ValueError("no (face, head) pairs to fit a face-to-head rule to")
    w = (faces[:, 2] - faces[:, 0]).clamp(min=1e-6)
    h = (faces[:, 3] - faces[:, 1]).clamp(min=1e-6)
    return FaceToHead(width=round(((heads[:, 2] - heads[:, 0]) / w).median().item(), 2),
                      top=round(((faces[:, 1] - heads[:, 1]) / h).median().item(), 2),
                      bottom=round(((heads[:, 3] - faces[:, 3]) / h).median().item(), 2))


def faces_to_heads(annotations: Sequence[Mapping], rule: FaceToHead, height: int, width: int) -> list[dict]:
    """Copies of COCO face annotations whose box is the head box :func:`face_to_head_box` derives.

    The face's own mask (drawn or derived) says nothing of the head, so the copies have no
    ``segmentation`` (a mask is then derived from the head box, as for any box-only annotation)
    and their ``area`` is the head box's.

    Args:
        annotations: COCO annotations of one image, ``bbox`` as xywh pixels.
        rule: The geometry.
        height, width: The image's size; head boxes are clipped to it.

    Returns:
        New annotation dicts, in order.
    """
    if not annotations:
        return []
    faces = torch.tensor([[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in annotations)],
                         dtype=torch.float32)
    heads = face_to_head_box(faces, rule, (height, width)).tolist()
    return [{**{k: v for k, v in a.items() if k != "segmentation"},
             "bbox": [x0, y0, x1 - x0, y1 - y0], "area": (x1 - x0) * (y1 - y0)}
            for a, (x0, y0, x1, y1) in zip(annotations, heads)]


def coco_faces_to_heads(data: Mapping, rule: FaceToHead) -> list[dict]:
    """:func:`faces_to_heads` over a whole COCO dictionary: the head copy of every annotation.

    Args:
        data: A COCO dictionary whose boxes are faces (``images`` carry ``height`` and ``width``).
        rule: The geometry.

    Returns:
        New annotation dicts, grouped by image in the order images first appear.
    """
    sizes = {img["id"]: (img["height"], img["width"]) for img in data["images"]}
    by_image: dict = {}
    for ann in data["annotations"]:
        by_image.setdefault(ann["image_id"], []).append(ann)
    return [head for image_id, anns in by_image.items() for head in faces_to_heads(anns, rule, *sizes[image_id])]
