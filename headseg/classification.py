"""Stage 2: classify the attire of each head from its square, masked crop (transfer learning).

The model (any torchvision classifier with a new head, :func:`build_classifier`), its
checkpoints and the training behind ``tools/train_cls.py`` (:func:`train_classifier`): the new
head alone on a frozen backbone first, then the whole network. Crops come from crop sets
(:mod:`headseg.crop_sets`); the epoch loop and checkpoints are :mod:`headseg.engine`'s.

A classifier predicts one or several attributes (:mod:`headseg.attributes`): its head has one
output column per attribute value and one softmax per attribute. Several crop sets, each
labelling some attributes, train one model together (``schema`` and ``data.sources`` in the
config); a config without a schema trains the classic one-softmax classifier over its crop
set's classes, through the same code.

Checkpoints carry the config, the attribute schema, class names (column names) and one
preprocessing record (mean/std and crop rules, :class:`ClsPreprocessing`), so
:meth:`Classifier.load` needs nothing else; checkpoints from before the schema load as
single-attribute classifiers.

Tensors: crops are ``(N, 3, S, S)`` float32 RGB in ``[0, 1]`` before :func:`normalize`.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torchvision
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torchvision.transforms import v2
from tqdm import tqdm

from headseg.attributes import (
    MISSING,
    AttributeSchema,
    attribute_class_weights,
    attribute_softmax,
    balanced_sample_weights,
    distillation_loss,
    masked_attribute_loss,
    masked_attribute_losses,
)
from headseg.config import ClsConfig, ClsModelConfig, ClsSourceConfig, CropConfig, from_dict, to_dict
from headseg.crop_sets import AttributeCropDataset, CropIndexDataset, check_crop_rules, crop_rules, read_class_names
from headseg.engine import (Checkpointer, default_device, load_checkpoint, lr_lambda, seed_everything,
                            train_one_epoch)
from headseg.evaluation import attribute_metrics, write_attribute_reports
from headseg.weights import load_imagenet_state_dict, load_weights_file

log = logging.getLogger(__name__)

# torchvision's ImageNet statistics; stored in every checkpoint so inference never guesses.
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)


# ----------------------------------------------------------------------------- model


class ClassifierHead(nn.Sequential):
    """The new, trainable head; a type of its own so the backbone is everything else."""


def _make_head(kind: str, in_features: int, num_classes: int, dropout: float) -> ClassifierHead:
    if kind == "linear":
        return ClassifierHead(nn.Dropout(dropout), nn.Linear(in_features, num_classes))
    if kind == "mlp":
        # The model's own global pool and flatten come before the head (torchvision forward).
        return ClassifierHead(nn.Linear(in_features, 256), nn.ReLU(inplace=True), nn.Dropout(dropout),
                              nn.Linear(256, 128), nn.ReLU(inplace=True), nn.Dropout(dropout),
                              nn.Linear(128, num_classes))
    raise ValueError(f"model.head={kind!r} is not one of linear, mlp")


def _replace_head(model: nn.Module, arch: str, make: Callable[[int], ClassifierHead]) -> None:
    """Swap the final Linear (and a Dropout just before it) for ``make(in_features)``."""
    fc = getattr(model, "fc", None)
    classifier = getattr(model, "classifier", None)
    if isinstance(fc, nn.Linear):
        model.fc = make(fc.in_features)
    elif isinstance(classifier, nn.Linear):
        model.classifier = make(classifier.in_features)
    elif isinstance(classifier, nn.Sequential) and isinstance(classifier[-1], nn.Linear):
        layers = list(classifier)
        in_features = layers.pop().in_features
        while layers and isinstance(layers[-1], nn.Dropout):
            layers.pop()
        # Earlier layers (e.g. MobileNetV3's 960 -> 1280 Linear) stay, keeping their weights.
        model.classifier = nn.Sequential(*layers, make(in_features)) if layers else make(in_features)
    else:
        raise ValueError(f"model.arch={arch!r} has neither an `fc` Linear nor a `classifier` ending in a "
                         "Linear; choose a torchvision classifier such as mobilenet_v2, resnet18 or "
                         "efficientnet_b0")


def _load_init_weights(model: nn.Module, cfg: ClsModelConfig) -> None:
    """Load ImageNet or file weights; keys that do not fit (the old 1000-way head) are dropped."""
    if cfg.weights == "none":
        return
    state = load_imagenet_state_dict(cfg.arch) if cfg.weights == "imagenet" else load_weights_file(cfg.weights)
    own = model.state_dict()
    prefixes = tuple(name + "." for name, m in model.named_modules() if isinstance(m, ClassifierHead))
    head_keys = {k for k in own if k.startswith(prefixes)}
    # ImageNet's 1000-way classifier never initialises the new head; a local file of the same
    # architecture and classes (an earlier headseg classifier) may.
    kept = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape
            and not (cfg.weights == "imagenet" and k in head_keys)}
    dropped = sorted(set(state) - set(kept))
    missing = sorted(set(own) - set(kept) - head_keys)
    if missing:
        raise ValueError(f"weights {cfg.weights!r} lack {len(missing)} backbone keys of {cfg.arch}, e.g. "
                         f"{missing[:3]}; expected a {cfg.arch} state dict (or model.weights=none)")
    model.load_state_dict(kept, strict=False)
    log.info("%s weights for %s: loaded %d tensors, dropped %d that do not fit the new head: %s",
             cfg.weights, cfg.arch, len(kept), len(dropped), dropped)


def build_classifier(cfg: ClsModelConfig, num_classes: int) -> nn.Module:
    """A torchvision classifier with a new ``num_classes``-way head.

    A multi-attribute classifier has one column per attribute value
    (``len(schema.column_names)``); the schema groups them into one softmax per attribute.

    Args:
        cfg: Model section: ``arch`` (any ``torchvision.models`` classifier with an ``fc`` Linear or
            a ``classifier`` ending in a Linear), ``weights`` (``imagenet`` from the offline hub
            cache, mobilenet_v2 only; ``none``; or a local ``.pth`` file), ``head`` (``linear``:
            dropout + Linear; ``mlp``: Linear 256, ReLU, dropout, Linear 128, ReLU, dropout, Linear,
            after the model's own global pool) and ``dropout``.
        num_classes: Number of attire classes ``K >= 1``.

    Returns:
        The model; it maps ``(N, 3, S, S)`` normalised float32 to ``(N, K)`` logits.

    Raises:
        ValueError: unknown arch/head, no offline ImageNet weights for ``arch``, or weights
            that lack backbone keys.
        FileNotFoundError: the weights file (or the hub cache entry) is missing.
    """
    if num_classes < 1:
        raise ValueError(f"num_classes={num_classes}; expected at least 1 attire class")
    try:
        model = torchvision.models.get_model(cfg.arch, weights=None)
    except ValueError:
        raise ValueError(f"model.arch={cfg.arch!r} is not a torchvision model; try mobilenet_v2, "
                         "resnet18 or efficientnet_b0") from None
    _replace_head(model, cfg.arch, lambda n: _make_head(cfg.head, n, num_classes, cfg.dropout))
    _load_init_weights(model, cfg)
    return model


def classifier_head(model: nn.Module) -> ClassifierHead:
    """The head :func:`build_classifier` put on ``model``."""
    heads = [m for m in model.modules() if isinstance(m, ClassifierHead)]
    if len(heads) != 1:
        raise ValueError(f"model has {len(heads)} ClassifierHead modules; expected one from build_classifier")
    return heads[0]


def _output_layer(model: nn.Module) -> nn.Linear:
    """The head's last Linear: one output column per attribute value."""
    return [m for m in classifier_head(model) if isinstance(m, nn.Linear)][-1]


def _num_classes(model: nn.Module) -> int:
    if isinstance(model, ClassifierEnsemble):
        return model.num_columns
    return _output_layer(model).out_features


def set_backbone_trainable(model: nn.Module, trainable: bool) -> nn.Module:
    """Freeze (``False``) or unfreeze the backbone; the head always trains.

    A frozen backbone's batch-norm layers are put in eval mode, so their running statistics stay
    the ImageNet ones; call :func:`train_mode` (not ``model.train()``) to start a training epoch.
    """
    head = {id(p) for p in classifier_head(model).parameters()}
    for p in model.parameters():
        p.requires_grad_(trainable or id(p) in head)
    return train_mode(model) if model.training else model


def train_mode(model: nn.Module) -> nn.Module:
    """``model.train()``, except batch norms whose parameters are frozen, which stay in eval mode."""
    model.train()
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            params = list(m.parameters(recurse=False))
            if params and not any(p.requires_grad for p in params):
                m.eval()
    return model


class ClassifierEnsemble(nn.Module):
    """Several classifiers of one schema as one model: the mean of their per-attribute probabilities.

    Its output is the log of that mean, block by block, so it stands wherever a classifier's
    logits do: :func:`headseg.attributes.attribute_softmax` of it gives the averaged probabilities
    back. The members run one after the other on the same input; the cost is theirs summed.

    Args:
        members: Classifiers with the same output columns (``schema.column_names``), in eval mode.
        schema: Their attributes.
    """

    def __init__(self, members: Sequence[nn.Module], schema: AttributeSchema) -> None:
        super().__init__()
        if not members:
            raise ValueError("an ensemble needs at least one classifier")
        self.members = nn.ModuleList(members)
        ends = torch.tensor([len(v) for v in schema.attributes.values()]).cumsum(0).tolist()
        # Each attribute's columns as Python ints, so torch.fx can trace (and fold) the ensemble.
        self.blocks = list(zip([0, *ends[:-1]], ends))

    @property
    def num_columns(self) -> int:
        return self.blocks[-1][1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        probs = []
        for member in self.members:
            z = member(x).float()
            probs.append(torch.cat([torch.softmax(z[:, a:b], dim=-1) for a, b in self.blocks], dim=-1))
        return torch.stack(probs).mean(0).clamp_min(1e-30).log()


# ----------------------------------------------------------------------------- checkpoints


@dataclass(frozen=True)
class ClsPreprocessing:
    """Everything between a photo and the classifier's input: the checkpoint's one record of it.

    Training writes it, and evaluation, crop-set checks and the pipeline read it, so none of
    them can preprocess differently.
    """

    mean: tuple[float, float, float]  # RGB, for crops in [0, 1]
    std: tuple[float, float, float]
    crop: CropConfig  # size, padding, fill and fill value of crop_head

    @property
    def input_size(self) -> int:
        """Crop side ``S`` in pixels."""
        return self.crop.size

    def to_dict(self) -> dict[str, Any]:
        return {"mean": list(self.mean), "std": list(self.std), "crop": to_dict(self.crop)}

    @classmethod
    def from_checkpoint(cls, state: dict[str, Any]) -> "ClsPreprocessing":
        # Checkpoints before the single record kept crop rules and statistics at the top level.
        record = state.get("preprocessing", state)
        return cls(tuple(record["mean"]), tuple(record["std"]), from_dict(CropConfig, record["crop"]))


def classifier_checkpoint(model: nn.Module, cfg: ClsConfig, classes: Sequence[str] | AttributeSchema,
                          **extra: Any) -> dict[str, Any]:
    """The dict saved to disk: weights, config, schema, class names and the preprocessing record.

    Args:
        model: The classifier.
        cfg: Its config.
        classes: The class names of a single-attribute classifier, or the attribute schema.
        **extra: Training state and metrics.

    The crop rules live in ``preprocessing`` alone; the stored config leaves its ``crop``
    section out (:meth:`Classifier.load` puts it back). ``class_names`` are the schema's column
    names, so readers of version 2 see a multi-attribute model's columns, ``attribute/value``.
    """
    schema = classes if isinstance(classes, AttributeSchema) else AttributeSchema.single(classes)
    prep = ClsPreprocessing(IMAGENET_MEAN, IMAGENET_STD, cfg.crop)
    config = {k: v for k, v in to_dict(cfg).items() if k != "crop"}
    return {"kind": "headseg-classifier", "version": 3, "model": model.state_dict(), "config": config,
            "class_names": schema.column_names, "schema": schema.to_dict(), "preprocessing": prep.to_dict(),
            **extra}


def schema_of(state: dict[str, Any]) -> AttributeSchema:
    """The attribute schema of a checkpoint; one attribute over its classes before version 3.

    Raises:
        ValueError: the schema's columns are not the checkpoint's class names.
    """
    if "schema" not in state:
        return AttributeSchema.single(state["class_names"])
    schema = AttributeSchema.from_dict(state["schema"])
    if schema.column_names != list(state["class_names"]):
        raise ValueError(f"checkpoint schema columns {schema.column_names} differ from its class names "
                         f"{state['class_names']}; the file was edited or damaged, retrain or repack it")
    return schema


@dataclass(frozen=True, eq=False)
class Classifier:
    """A trained attire classifier as its checkpoint describes it.

    Attributes:
        model: The classifier in eval mode; ``(N, 3, S, S)`` normalised crops -> ``(N, K)`` logits.
        config: Its training config (``crop`` = the preprocessing's crop rules).
        class_names: The ``K`` output columns, in order: the attire labels of a single-attribute
            classifier, ``attribute/value`` of a multi-attribute one (``schema.column_names``).
        preprocessing: Mean/std and crop rules of its input.
        schema: Its attributes; None: one attribute over ``class_names``.
    """

    model: nn.Module
    config: ClsConfig
    class_names: list[str]
    preprocessing: ClsPreprocessing
    schema: AttributeSchema | None = None

    def __post_init__(self) -> None:
        if self.schema is None:
            object.__setattr__(self, "schema", AttributeSchema.single(self.class_names))
        if self.schema.column_names != list(self.class_names):
            raise ValueError(f"class_names {self.class_names} are not the schema's columns "
                             f"{self.schema.column_names}")

    @classmethod
    def load(cls, path: str | Path | dict[str, Any] | Sequence[str | Path], device: str | torch.device = "cpu"
             ) -> "Classifier":
        """Rebuild a trained classifier from its checkpoint alone (``weights_only=True``).

        Args:
            path: ``best.pt``/``last.pt`` from ``tools/train_cls.py``, or such a checkpoint already
                loaded; a list of several: their ensemble (:meth:`ensemble`).
            device: Where to put the model.
        """
        if isinstance(path, (list, tuple)):
            members = [cls.load(p, device) for p in path]
            return members[0] if len(members) == 1 else cls.ensemble(members, [str(p) for p in path])
        state = _state(path)
        prep = ClsPreprocessing.from_checkpoint(state)
        schema = schema_of(state)
        cfg = from_dict(ClsConfig, {**state["config"], "crop": to_dict(prep.crop)})
        # The checkpoint's weights replace any initialisation: never read ImageNet files here.
        model = build_classifier(dataclasses.replace(cfg.model, weights="none"), len(schema.column_names))
        model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state["model"].items()})
        return cls(model.eval().to(device), cfg, schema.column_names, prep, schema)

    @classmethod
    def ensemble(cls, members: Sequence["Classifier"], names: Sequence[str] | None = None) -> "Classifier":
        """Several classifiers as one (:class:`ClassifierEnsemble`: their probabilities averaged).

        They must share attributes, values and preprocessing (seeds of one recipe do); the
        result keeps the first member's config.

        Raises:
            ValueError: no members, or members that differ in attributes or preprocessing
                (named by ``names``, else by position).
        """
        if not members:
            raise ValueError("an ensemble needs at least one classifier")
        names = list(names) if names is not None else [f"classifier {i}" for i in range(len(members))]
        first = members[0]
        for name, other in zip(names[1:], members[1:]):
            if list(other.schema.attributes.items()) != list(first.schema.attributes.items()):
                raise ValueError(f"{name} predicts {other.schema.attributes}, {names[0]} "
                                 f"{first.schema.attributes}; an ensemble needs the same attributes and values")
            if other.preprocessing != first.preprocessing:
                raise ValueError(f"{name} reads {other.preprocessing}, {names[0]} {first.preprocessing}; an "
                                 "ensemble needs the same crops and mean/std")
        device = next(first.model.parameters()).device
        model = ClassifierEnsemble([m.model for m in members], first.schema).eval().to(device)
        return cls(model, first.config, first.class_names, first.preprocessing, first.schema)


def _state(checkpoint: str | Path | dict[str, Any]) -> dict[str, Any]:
    if isinstance(checkpoint, dict):
        if checkpoint.get("kind") != "headseg-classifier":
            raise ValueError(f"dict of kind {checkpoint.get('kind')!r} is not a headseg classifier checkpoint")
        return checkpoint
    return load_checkpoint(checkpoint, "classifier")


def weight_values(state: dict[str, Any], weights: dict[str, float]) -> dict[str, Any]:
    """A classifier checkpoint whose named values weigh ``w`` times as much in their attribute's softmax.

    Post-hoc prior correction (logit adjustment; Menon et al., 2021): ``log w`` is added to each
    named column's bias in the output layer, so every probability the classifier gives is its
    attribute's softmax with that value's share multiplied by ``w`` and the attribute renormalised
    (with test-time flip: each view's, then averaged). A sampler that drew a value as often as
    the others (``data.balance``) teaches it a prior it does not have where the model runs; a
    weight under 1 calls it less often, with no retraining. The weights applied are recorded in
    ``value_weights`` (multiplied into any already there).

    Args:
        state: A classifier checkpoint (not changed).
        weights: ``attribute/value`` (the value alone for a single-attribute classifier) ->
            ``w > 0``.

    Returns:
        The new checkpoint.

    Raises:
        ValueError: a name that is none of the classifier's columns, or a weight that is not a
            positive finite number.
    """
    columns = list(_state(state)["class_names"])
    for name, w in weights.items():
        if name not in columns:
            raise ValueError(f"no output {name!r}; the classifier's are {columns}")
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w) or w <= 0:
            raise ValueError(f"weight {w!r} for {name}; expected a positive number (1: unchanged)")
    model = Classifier.load(state).model
    last = _output_layer(model)
    key = next(n for n, m in model.named_modules() if m is last) + ".bias"
    bias = state["model"][key].clone()
    shift = torch.zeros(len(columns), dtype=torch.float64)
    for name, w in weights.items():
        shift[columns.index(name)] = math.log(w)
    bias = (bias.double() + shift).to(bias.dtype)
    recorded = dict(state.get("value_weights", {}))
    for name, w in weights.items():
        recorded[name] = recorded.get(name, 1.0) * float(w)
    return {**state, "model": {**state["model"], key: bias}, "value_weights": recorded}


def load_classifier(path: str | Path | dict[str, Any], device: str | torch.device = "cpu"
                    ) -> tuple[nn.Module, ClsConfig, list[str]]:
    """``(model in eval mode, config, class names)`` of :meth:`Classifier.load`."""
    clf = Classifier.load(path, device)
    return clf.model, clf.config, clf.class_names


def preprocessing_from_checkpoint(path: str | Path | dict[str, Any]) -> ClsPreprocessing:
    """The mean/std and crop rules a classifier checkpoint was trained with."""
    return ClsPreprocessing.from_checkpoint(_state(path))


# ----------------------------------------------------------------------------- inference


def normalize(crops: torch.Tensor, mean: Sequence[float] = IMAGENET_MEAN,
              std: Sequence[float] = IMAGENET_STD) -> torch.Tensor:
    """Standardise crops channel-wise.

    Args:
        crops: ``(N, 3, S, S)`` float RGB in ``[0, 1]``.
        mean, std: Per-channel RGB statistics (the checkpoint's ``mean``/``std``).

    Returns:
        ``(N, 3, S, S)`` float32 ``(crops - mean) / std`` on the crops' device.
    """
    if not isinstance(crops, torch.Tensor) or crops.ndim != 4 or crops.shape[1] != 3:
        got = tuple(crops.shape) if isinstance(crops, torch.Tensor) else type(crops).__name__
        raise ValueError(f"crops has shape {got}; expected (N, 3, S, S). Add a batch axis with crop[None]")
    if not crops.is_floating_point():
        raise TypeError(f"crops has dtype {crops.dtype}; expected float in [0, 1] (divide uint8 by 255)")
    m = torch.as_tensor(mean, dtype=torch.float32, device=crops.device).view(1, 3, 1, 1)
    s = torch.as_tensor(std, dtype=torch.float32, device=crops.device).view(1, 3, 1, 1)
    return (crops.float() - m) / s


@torch.inference_mode()
def predict_probs(model: nn.Module, crops_normalized: torch.Tensor, batch_size: int = 256,
                  schema: AttributeSchema | None = None, flip: bool = False) -> torch.Tensor:
    """Class probabilities of normalised crops, in batches, in eval mode.

    Args:
        model: A classifier from :func:`build_classifier`/:func:`load_classifier`.
        crops_normalized: ``(N, 3, S, S)`` float32 from :func:`normalize`, on any device.
        batch_size: Crops per forward pass.
        schema: The classifier's attributes (``Classifier.schema``): one softmax per attribute
            (:func:`headseg.attributes.attribute_softmax`); None: one softmax over all ``K``.
        flip: Average each crop's probabilities with its mirror image's (test-time flip,
            :func:`flip_averaged`).

    Returns:
        ``(N, K)`` float32 on the CPU, each attribute's columns summing to 1; ``(0, K)`` when
        ``N == 0``.
    """
    device = next(model.parameters()).device
    schema = schema or AttributeSchema.single([str(k) for k in range(_num_classes(model))])
    # Restored module by module: a training model may hold frozen batch norms in eval mode.
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        out = [flip_averaged(model, crops_normalized[i:i + batch_size].to(device), schema, flip).cpu()
               for i in range(0, crops_normalized.shape[0], batch_size)]
    finally:
        for m, training in modes:
            m.training = training
    return torch.cat(out) if out else torch.empty((0, _num_classes(model)))


def flip_averaged(model: nn.Module, x: torch.Tensor, schema: AttributeSchema, flip: bool) -> torch.Tensor:
    """``(N, K)`` attribute probabilities of a normalised batch; with ``flip``, the mean of the
    crops' and their mirror images' (heads are left/right symmetric, and training flips them)."""
    if not flip:
        return attribute_softmax(model(x), schema)
    both = attribute_softmax(model(torch.cat([x, x.flip(-1)])), schema)
    return (both[:len(x)] + both[len(x):]) / 2


# ----------------------------------------------------------------------------- data


def crop_transforms(crop: CropConfig, augment: bool) -> v2.Compose:
    """uint8 ``(3, S, S)`` -> float32 in [0, 1]; with ``augment``, flip, affine, colour jitter, erasing.

    Affine borders and erased patches take the crop's ``fill_value`` grey, like the area outside
    a mask, so augmentation does not invent a new kind of background.
    """
    grey = crop.fill_value
    ops: list[v2.Transform] = []
    if augment:
        ops += [v2.RandomHorizontalFlip(0.5),
                v2.RandomAffine(degrees=10, translate=(0.06, 0.06), scale=(0.9, 1.1), shear=5, fill=grey),
                v2.ColorJitter(brightness=0.25, contrast=0.25, saturation=0.25, hue=0.02)]
    ops.append(v2.ToDtype(torch.float32, scale=True))
    if augment:
        ops.append(v2.RandomErasing(p=0.25, scale=(0.02, 0.12), value=grey / 255.0))
    return v2.Compose(ops)


@dataclass(frozen=True)
class IndexPredictions:
    """A classifier's output on a crop index."""

    paths: list[Path]  # crop files, in index order
    targets: torch.Tensor  # (N, A) int64 true value index per attribute, -1 where the source is silent
    probs: torch.Tensor  # (N, K) float32 probabilities, one softmax per attribute
    source: str  # the schema source whose category mapping read the index's labels


def predict_index(model: nn.Module, index_csv: str | Path, schema: AttributeSchema, prep: ClsPreprocessing,
                  source: str | None = None, device: str | torch.device = "cpu", batch_size: int = 128,
                  progress: bool = True, flip: bool = False) -> IndexPredictions:
    """Probabilities for every crop of an index (crop rules checked against ``prep``).

    Args:
        model: The classifier.
        index_csv: ``index.csv`` of a crop set.
        schema: The classifier's schema (``Classifier.schema``).
        prep: Its preprocessing record.
        source: The schema source that labelled the crop set; None: the one source whose
            categories cover the index's labels (a single-attribute classifier's own classes).
        device, batch_size, progress, flip: How to run (``flip``: :func:`predict_probs`).

    Raises:
        ValueError: crops cut with other rules, or labels no (or more than one) source maps.
    """
    check_crop_rules(index_csv, prep.crop)
    source = source or schema.source_of(sorted({r["label"] for r in CropIndexDataset(index_csv).rows}))
    dataset = AttributeCropDataset({source: index_csv}, schema)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False)
    probs = [predict_probs(model, normalize(x.to(device), prep.mean, prep.std), batch_size, schema, flip)
             for x, _ in tqdm(loader, desc="predict", disable=not progress, leave=False)]
    return IndexPredictions([dataset.path(i) for i in range(len(dataset))], dataset.targets,
                            torch.cat(probs) if probs else torch.empty((0, len(schema.column_names))),
                            source)


# ----------------------------------------------------------------------------- training


def training_sources(cfg: ClsConfig) -> tuple[AttributeSchema, tuple[ClsSourceConfig, ...]]:
    """The schema and crop sets a config trains on.

    With ``schema`` these are the config's own; without, one attribute over the train crop
    set's classes and that one crop set (the classic classifier, through the same code).
    """
    if cfg.schema is not None:
        return cfg.schema, cfg.data.sources
    schema = AttributeSchema.single(read_class_names(cfg.data.train_index))
    return schema, (ClsSourceConfig(next(iter(schema.sources)), cfg.data.train_index, cfg.data.val_index),)


def _check_train_config(cfg: ClsConfig) -> None:
    t = cfg.train
    if cfg.schema is None and not cfg.data.train_index:
        raise ValueError("data.train_index is empty; pass --set data.train_index=work_data/crops_X/train/index.csv"
                         " (written by tools/make_crops.py)")
    empty = [s.name for s in cfg.data.sources if not s.train_index]
    if empty:
        raise ValueError(f"data.sources {empty} have no train_index; give each the index.csv written by "
                         "tools/make_crops.py")
    if cfg.data.balance not in ("sampler", "loss", "none"):
        raise ValueError(f"data.balance={cfg.data.balance!r} is not one of sampler, loss, none")
    if cfg.data.balance_power != 1 and (cfg.data.balance != "sampler" or not 0 <= cfg.data.balance_power <= 1):
        raise ValueError(f"data.balance_power={cfg.data.balance_power} with data.balance={cfg.data.balance!r}; "
                         "expected a power in [0, 1] with data.balance=sampler (1: every value drawn alike)")
    if not 0 <= t.frozen_epochs <= t.epochs:
        raise ValueError(f"train.frozen_epochs={t.frozen_epochs} with train.epochs={t.epochs}; expected "
                         "0 <= frozen_epochs <= epochs")
    if not 0 < cfg.data.train_photos <= 1:
        raise ValueError(f"data.train_photos={cfg.data.train_photos}: expected the share of the training "
                         "photos to keep, in (0, 1] (1: all of them)")
    if t.batch_size < 1 or t.patience < 1:
        raise ValueError(f"train.batch_size={t.batch_size}, train.patience={t.patience}; both must be >= 1")
    if t.schedule not in ("constant", "cosine"):
        raise ValueError(f"train.schedule={t.schedule!r} is not one of constant, cosine")
    if not 0 <= t.ema_decay < 1:
        raise ValueError(f"train.ema_decay={t.ema_decay}; expected 0 (off) or a decay in (0, 1), e.g. 0.998")
    if t.teachers and not (0 < t.distill_weight <= 1 and t.distill_temperature > 0):
        raise ValueError(f"train.distill_weight={t.distill_weight}, train.distill_temperature="
                         f"{t.distill_temperature}; expected a weight in (0, 1] and a temperature > 0")


def load_teachers(paths: Sequence[str], schema: AttributeSchema, crop: CropConfig,
                  device: torch.device) -> tuple[nn.Module, AttributeSchema, dict[str, list[int]]]:
    """The distillation teachers (``train.teachers``) as one model in eval mode, channels-last.

    Teachers may know only some of an attribute's values (the model adds one, e.g.
    ``face_mask/not_visible``); they teach the model's distribution over the values they know.

    Returns:
        The teachers, their schema, and attribute -> the model's columns of the teachers' values
        for each attribute whose teachers know fewer values (the ``columns`` of
        :func:`headseg.attributes.distillation_loss`).

    Raises:
        ValueError: a teacher predicts other attributes than ``schema``, values it lacks or in
            another order, or reads other crops (crop rules, mean/std) than the model being trained.
    """
    teacher = Classifier.load(list(paths), device)
    known = teacher.schema.attributes
    if list(known) != list(schema.attributes) or any(
            list(known[a]) != [v for v in values if v in known[a]] for a, values in schema.attributes.items()):
        raise ValueError(f"train.teachers {list(paths)} predict {known}; the model being trained predicts "
                         f"{schema.attributes}: teachers need the same attributes, and the same values or "
                         "some of them, in the same order")
    columns = {a: [values.index(v) for v in known[a]] for a, values in schema.attributes.items()
               if len(known[a]) < len(values)}
    expected = ClsPreprocessing(IMAGENET_MEAN, IMAGENET_STD, crop)
    if teacher.preprocessing != expected:
        raise ValueError(f"train.teachers {list(paths)} read crops as {teacher.preprocessing}; the crop sets "
                         f"are {expected}: cut the crops alike, or choose teachers trained on such crops")
    model = teacher.model if isinstance(teacher.model, ClassifierEnsemble) else \
        ClassifierEnsemble([teacher.model], teacher.schema)
    return model.eval().to(device, memory_format=torch.channels_last), teacher.schema, columns


def _make_optimizer(model: nn.Module, cfg: ClsConfig, phase: str) -> torch.optim.Optimizer:
    """Adam over the head at ``lr`` (frozen phase) or over everything at ``lr * unfrozen_lr_factor``."""
    t = cfg.train
    set_backbone_trainable(model, phase == "full")
    lr = t.lr if phase == "frozen" else t.lr * t.unfrozen_lr_factor
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.Adam(params, lr=lr, weight_decay=t.weight_decay)


def _full_phase_scheduler(optimizer: torch.optim.Optimizer, cfg: ClsConfig, epoch: int,
                          steps_per_epoch: int) -> torch.optim.lr_scheduler.LambdaLR | None:
    """``train.schedule=cosine``: the full phase's lr for ``epoch``, stepped per step from where the
    schedule stands at its start (it depends on the epoch alone, so a resumed run follows it too)."""
    t = cfg.train
    if t.schedule == "constant":
        return None
    factor = lr_lambda((t.epochs - t.frozen_epochs) * steps_per_epoch, 0, t.schedule)
    offset = (epoch - t.frozen_epochs) * steps_per_epoch
    for group in optimizer.param_groups:
        group["initial_lr"] = t.lr * t.unfrozen_lr_factor
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: factor(offset + step))


def _crop_set_of_each_crop(dataset: AttributeCropDataset) -> torch.Tensor:
    """``(N,)`` index of the crop set (``data.sources`` entry) each crop comes from: the dataset
    holds one run of crops per entry, in their order."""
    return torch.repeat_interleave(torch.arange(len(dataset.sets)), torch.tensor([len(ds) for _, ds in dataset.sets]))


def _sample_weights(dataset: AttributeCropDataset, cfg: ClsConfig) -> torch.Tensor:
    """The sampler's per-crop weights: balanced values, crop sets weighted by their ``weight``."""
    crop_weights = None
    if cfg.data.sources:
        crop_weights = torch.tensor([s.weight for s in cfg.data.sources])[_crop_set_of_each_crop(dataset)]
    attributes = dataset.schema.attributes
    attribute_weights = [float(cfg.data.attribute_draws.get(a, 1.0)) for a in attributes]
    value_weights = [[float(cfg.data.value_draws.get(f"{a}/{v}", 1.0)) for v in values]
                     if any(f"{a}/{v}" in cfg.data.value_draws for v in values) else None
                     for a, values in attributes.items()]
    return balanced_sample_weights(dataset.targets, crop_weights, attribute_weights, cfg.data.balance_power,
                                   value_weights)


def draw_shares(dataset: AttributeCropDataset, cfg: ClsConfig) -> dict[str, dict[str, float]]:
    """``attribute/value`` -> crop set (``source:its folder``) -> its share of the value's draws."""
    weights = _sample_weights(dataset, cfg)
    names = [f"{name}:{Path(ds.index_csv).parent}" for name, ds in dataset.sets]
    entry = _crop_set_of_each_crop(dataset)
    out = {}
    for a, (attribute, values) in enumerate(dataset.schema.attributes.items()):
        for v, value in enumerate(values):
            held = dataset.targets[:, a] == v
            total = float(weights[held].sum())
            if total > 0:
                out[f"{attribute}/{value}"] = {names[e]: round(float(weights[held & (entry == e)].sum()) / total, 3)
                                               for e in entry[held].unique().tolist()}
    return out


def value_draw_shares(dataset: AttributeCropDataset, cfg: ClsConfig) -> dict[str, dict[str, float]]:
    """Attribute -> value -> its share of the draws that carry a label for the attribute (equal
    shares at ``data.balance_power`` 1; ``balance_power`` below 1 moves them toward the counts,
    ``data.value_draws`` by the weights it gives)."""
    weights = _sample_weights(dataset, cfg)
    out = {}
    for a, (attribute, values) in enumerate(dataset.schema.attributes.items()):
        total = float(weights[dataset.targets[:, a] != MISSING].sum())
        if total > 0:
            out[attribute] = {v: round(float(weights[dataset.targets[:, a] == k].sum()) / total, 3)
                              for k, v in enumerate(values)}
    return out


def attribute_draw_shares(dataset: AttributeCropDataset, cfg: ClsConfig) -> dict[str, float]:
    """Attribute -> the share of the sampler's draws that carry a label for it
    (``data.attribute_draws`` moves these; a crop labelled for two attributes counts for both)."""
    weights = _sample_weights(dataset, cfg)
    total = float(weights.sum())
    return {attribute: round(float(weights[dataset.targets[:, a] != MISSING].sum()) / total, 3)
            for a, attribute in enumerate(dataset.schema.attributes)}


def _loader(dataset: AttributeCropDataset, cfg: ClsConfig, epoch: int, train: bool) -> torch.utils.data.DataLoader:
    t = cfg.train
    # Order and augmentation depend only on (seed, epoch), so a resumed run sees the same batches.
    generator = torch.Generator().manual_seed(t.seed * 1000 + epoch)
    sampler: torch.utils.data.Sampler | None = None
    if train and cfg.data.balance == "sampler":
        # Every value of every attribute drawn equally often, whichever crop set holds it; with
        # one attribute, each crop's weight is 1 / its class's count. Within a value, crop sets
        # share its draws by their crop counts times their `weight`.
        sampler = torch.utils.data.WeightedRandomSampler(_sample_weights(dataset, cfg), len(dataset),
                                                         replacement=True, generator=generator)
    elif train:
        sampler = torch.utils.data.RandomSampler(dataset, generator=generator)
    return torch.utils.data.DataLoader(dataset, batch_size=t.batch_size, sampler=sampler,
                                       num_workers=cfg.data.workers, generator=generator,
                                       drop_last=False, persistent_workers=False)


@torch.inference_mode()
def _validate(model: nn.Module, dataset: AttributeCropDataset, cfg: ClsConfig, device: torch.device,
              progress: bool) -> tuple[dict[str, float], dict[str, Any]]:
    """Val loss and metrics (:func:`headseg.evaluation.attribute_metrics`, keys ``val/...``), and
    the confusion matrices per attribute."""
    model.eval()
    logits = [model(normalize(x.to(device))).float().cpu()
              for x, _ in tqdm(_loader(dataset, cfg, 0, train=False), desc="val", disable=not progress, leave=False)]
    schema = dataset.schema
    logit = torch.cat(logits) if logits else torch.empty((0, len(schema.column_names)))
    metrics, matrices = attribute_metrics(dataset.targets, attribute_softmax(logit, schema), schema)
    losses = masked_attribute_losses(schema.split(logit), dataset.targets)
    per_attribute = {f"loss/val/{name}": float(v) for name, v in losses.items()} if len(losses) > 1 else {}
    return {"loss/val": float(sum(losses.values())), **per_attribute,
            **{f"val/{k}": v for k, v in metrics.items()}}, matrices


def _crop_rules_of_training(cfg: ClsConfig, sources: Sequence[ClsSourceConfig]) -> CropConfig:
    """The crop rules training records: the first crop set's own (``crops.json``), else the config's.

    Raises:
        ValueError: the config names crop rules (differing from the defaults) that the crop set
            was not cut with, or the crop sets were cut with different rules.
    """
    first = sources[0].train_index
    cut = crop_rules(first)
    if cut is None:
        log.warning("%s has no crops.json; assuming its crops follow %s", first, cfg.crop)
        cut = cfg.crop
    elif cfg.crop != CropConfig() and cfg.crop != cut:
        check_crop_rules(first, cfg.crop)  # raises, naming the difference
    for index in [s.train_index for s in sources[1:]] + [s.val_index for s in sources if s.val_index]:
        check_crop_rules(index, cut)
    return cut


def train_classifier(cfg: ClsConfig, out_dir: str | Path, resume: bool = False,
                     device: str | torch.device | None = None, progress: bool = True) -> dict[str, Any]:
    """Fine-tune an attire classifier on crop sets; the loop behind ``tools/train_cls.py``.

    Epochs ``< train.frozen_epochs`` train the new head alone (Adam, ``train.lr``) on a frozen
    backbone whose batch norms stay in eval mode; later epochs train everything at
    ``lr * unfrozen_lr_factor`` (constant, or with ``train.schedule=cosine`` decaying to 0 by the
    last step). The crop sets are ``data.train_index`` (one attribute over its
    classes) or, with a ``schema``, every entry of ``data.sources`` together: each crop adds
    loss only for the attributes its source labels (:func:`headseg.attributes.masked_attribute_loss`).
    Imbalance is met by a ``WeightedRandomSampler`` that draws every value of every attribute
    equally often (``data.balance=sampler``) or by per-attribute class weights in the loss
    (``loss``). Val macro-F1, averaged over the attributes, picks ``best.pt`` (val loss breaks
    ties); training stops once ``train.patience`` epochs pass without a better one (never during
    the frozen phase). Without val crops the lowest training loss picks. The crop rules are the
    first train crop set's own (its ``crops.json``); every other set must have been cut alike.
    Writes ``last.pt`` every epoch (atomically, with optimizer, phase and RNG state, so
    ``resume=True`` continues), ``best.pt``, ``metrics.csv``, ``curves.png``, ``config.yaml``
    (:class:`headseg.engine.Checkpointer`) and the best epoch's val confusion matrices
    (``val[_{attribute}]_confusion.png``/``.csv``) to ``out_dir``. With ``train.ema_decay`` the
    moving average of the weights (``torch.optim.swa_utils.AveragedModel``, batch-norm
    statistics included) is what is validated and saved as ``model``; ``last.pt`` keeps the
    trained weights too (``training_weights``) for ``--resume``. With ``train.teachers`` (classifier
    checkpoints: :func:`load_teachers`) each augmented batch also goes through the teachers, and
    the loss becomes ``(1 - distill_weight) x`` the labels' + ``distill_weight x``
    :func:`headseg.attributes.distillation_loss` against their averaged probabilities (logged as
    ``loss/distill``).

    Returns:
        ``{"best": best val macro-F1, "best_epoch", "epochs": epochs run in total,
        "stopped_early": bool, "out_dir": Path, "last": last val metrics, "class_names",
        "schema"}``.

    Raises:
        NonFiniteLossError: the loss became NaN/inf; the message names epoch and step.
        ValueError: bad config, unknown labels, or crop sets cut with other rules.
    """
    _check_train_config(cfg)
    schema, sources = training_sources(cfg)
    cfg = dataclasses.replace(cfg, crop=_crop_rules_of_training(cfg, sources))
    multi = [f"val/{a}/macro_f1" for a in schema.names] if len(schema.attributes) > 1 else []
    checkpointer = Checkpointer(out_dir, "classifier",
                                ("val/macro_f1", "val/accuracy", "val/balanced_accuracy", *multi))
    device = torch.device(device) if device else default_device()
    t = cfg.train
    seed_everything(t.seed)
    train_set = AttributeCropDataset([(s.name, s.train_index) for s in sources], schema,
                                     crop_transforms(cfg.crop, t.augment), cfg.data.train_photos,
                                     cfg.data.photo_seed)
    if len(train_set) == 0:
        raise ValueError(f"{[s.train_index for s in sources]} list no crops; nothing to train on")
    val_indexes = [(s.name, s.val_index) for s in sources if s.val_index]
    val_set = AttributeCropDataset(val_indexes, schema, crop_transforms(cfg.crop, False)) if val_indexes else None
    log.info("attributes %s; train crops per value %s", schema.attributes, train_set.value_counts())
    if cfg.data.balance == "sampler" and len(sources) > 1:
        log.info("share of each value's draws by crop set %s", draw_shares(train_set, cfg))
    if cfg.data.balance == "sampler" and len(schema.attributes) > 1:
        log.info("share of the draws by attribute %s", attribute_draw_shares(train_set, cfg))
    if cfg.data.balance == "sampler":
        log.info("share of each attribute's draws by value %s", value_draw_shares(train_set, cfg))

    model = build_classifier(cfg.model, len(schema.column_names)).to(device)
    ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(t.ema_decay), use_buffers=True) \
        if t.ema_decay else None
    weights = None
    if cfg.data.balance == "loss":
        weights = {k: w.to(device) for k, w in attribute_class_weights(train_set.targets, schema).items()}
    teacher, teacher_schema, taught_columns = load_teachers(t.teachers, schema, cfg.crop, device) \
        if t.teachers else (None, None, {})
    if teacher is not None:
        log.info("distilling from %d teacher(s) %s: weight %.2f, temperature %.2f, %s", len(teacher.members),
                 list(t.teachers), t.distill_weight, t.distill_temperature,
                 "every attribute" if t.distill_unlabelled else "labelled attributes only")
    for name, cols in taught_columns.items():
        log.info("the teachers know %s of %s %s: the others learn from labels alone, and crops labelled "
                 "with them are not distilled", [schema.attributes[name][c] for c in cols], name,
                 list(schema.attributes[name]))
    # Per attribute, the value indices the teachers do not know (crops labelled so skip their term).
    untaught = {schema.names.index(name): torch.tensor([v for v in range(len(schema.attributes[name]))
                                                        if v not in cols], device=device)
                for name, cols in taught_columns.items()}
    steps_per_epoch = -(-len(train_set) // t.batch_size)
    if t.max_iters:
        steps_per_epoch = min(steps_per_epoch, t.max_iters)

    bad_epochs, stopped = 0, False
    state = checkpointer.resume(resume)
    if state is not None:
        if schema_of(state) != schema:
            raise ValueError(f"{checkpointer.last_path} was trained on {schema_of(state).attributes}, the "
                             f"crop sets give {schema.attributes}; resume with the same crop sets or "
                             "choose a new --out")
        if (ema is not None) != ("training_weights" in state):
            raise ValueError(f"{checkpointer.last_path} was trained {'with' if 'training_weights' in state else 'without'}"
                             f" averaged weights, this run has train.ema_decay={t.ema_decay}; resume with the "
                             "run's own train.ema_decay or choose a new --out")
        model.load_state_dict(state.get("training_weights", state["model"]))
        if ema is not None:
            ema.module.load_state_dict(state["model"])
            ema.n_averaged.fill_(state["ema_updates"])
        bad_epochs, stopped = state["bad_epochs"], state["stopped_early"]
    checkpointer.write_config(to_dict(cfg))

    def compute_losses(batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[dict[str, torch.Tensor], int]:
        x, y = batch
        x, y = normalize(x.to(device)), y.to(device)
        logits = schema.split(model(x))
        if len(logits) == 1:
            losses = {"loss": masked_attribute_loss(logits, y, t.label_smoothing, weights)}
        else:  # one loss per attribute, logged as loss/<attribute> beside their sum
            losses = {f"loss_{name}": loss for name, loss in
                      masked_attribute_losses(logits, y, t.label_smoothing, weights).items()}
        if teacher is None:
            return losses, len(y)
        # The teachers see the very batch the model does, augmentation included.
        with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16):
            taught = teacher_schema.split(teacher(x.contiguous(memory_format=torch.channels_last)).float())
        losses = {("loss_labels" if k == "loss" else k): v * (1 - t.distill_weight) for k, v in losses.items()}
        distilled = None if t.distill_unlabelled else y  # None: every crop, every attribute
        for a, values in untaught.items():
            skip = torch.isin(y[:, a], values)
            if skip.any():  # a crop labelled with a value the teachers do not know: no teacher term there
                distilled = (torch.zeros_like(y) if distilled is None else distilled.clone())
                distilled[skip, a] = MISSING
        losses["loss_distill"] = t.distill_weight * distillation_loss(
            logits, taught, distilled, t.distill_temperature, taught_columns)
        return losses, len(y)

    start = checkpointer.start_epoch
    phase, optimizer, last_metrics, epoch = None, None, {}, start - 1
    for epoch in range(start, start if stopped else t.epochs):
        want = "frozen" if epoch < t.frozen_epochs else "full"
        if want != phase:
            phase, optimizer = want, _make_optimizer(model, cfg, want)
            if state is not None and state.get("phase") == phase:
                optimizer.load_state_dict(state["optimizer"])
            log.info("epoch %d: %s phase, lr %.3g", epoch + 1, phase, optimizer.param_groups[0]["lr"])
        state = None
        scheduler = _full_phase_scheduler(optimizer, cfg, epoch, steps_per_epoch) if phase == "full" else None
        torch.manual_seed(t.seed * 1000 + epoch)  # dropout and main-process augmentation
        train_mode(model)
        stats = train_one_epoch(model, _loader(train_set, cfg, epoch, train=True), optimizer, compute_losses,
                                epoch=epoch, epochs=t.epochs, steps=steps_per_epoch, scheduler=scheduler,
                                last_good=checkpointer.last_path, hint="Lower train.lr",
                                desc=f"epoch {epoch + 1}/{t.epochs} ({phase})", log_every=1, progress=progress,
                                after_step=None if ema is None else lambda: ema.update_parameters(model))
        row = {"epoch": epoch, "lr": optimizer.param_groups[0]["lr"], "frozen": float(phase == "frozen"),
               "epoch_seconds": stats["seconds"],
               "crops_per_second": stats["samples"] / max(stats["seconds"], 1e-9), "loss": stats["loss"],
               **{k: v for k, v in stats.items() if k.startswith("loss/")}}
        matrices: dict[str, Any] = {}
        kept = model if ema is None else ema.module  # what is validated and saved as `model`
        if val_set is not None:
            last_metrics, matrices = _validate(kept, val_set, cfg, device, progress)
            row.update(last_metrics)
        # Macro-F1 saturates on small val sets (hardhat: 77 crops); the val loss breaks ties.
        score, tie = last_metrics.get("val/macro_f1", -row["loss"]), last_metrics.get("loss/val", row["loss"])
        bad_epochs = 0 if checkpointer.is_improvement(score, tie) else bad_epochs + 1
        stopped = bad_epochs >= t.patience and phase == "full" and epoch + 1 < t.epochs
        averaged = {} if ema is None else {"training_weights": model.state_dict(),
                                           "ema_updates": int(ema.n_averaged)}
        improved = checkpointer.end_epoch(epoch, classifier_checkpoint(
            kept, cfg, schema, metrics=last_metrics, phase=phase, bad_epochs=bad_epochs,
            stopped_early=stopped, optimizer=optimizer.state_dict(), **averaged), score, row, tie)
        if improved and matrices:
            write_attribute_reports(checkpointer.out_dir / "val", schema, matrices)
        if stopped:
            log.info("early stop after epoch %d: no better val macro-F1 for %d epochs (best %.4f at epoch %d)",
                     epoch + 1, bad_epochs, checkpointer.best, checkpointer.best_epoch + 1)
            break
    return {"best": checkpointer.best, "best_epoch": checkpointer.best_epoch, "epochs": epoch + 1,
            "stopped_early": stopped, "out_dir": checkpointer.out_dir, "last": last_metrics,
            "class_names": schema.column_names, "schema": schema}
