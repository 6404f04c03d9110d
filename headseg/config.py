"""Configuration: frozen dataclasses filled from YAML files and ``--set key=value`` overrides.

Each stage has one top-level config (:class:`SegConfig`, :class:`ClsConfig`) made of small
sections. Every field carries a comment saying why it has its default value. An unknown key,
in a file or an override, is an error that names the closest valid keys.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

from headseg.attributes import AttributeSchema

T = TypeVar("T")


# ----------------------------------------------------------------------------- stage 1


@dataclass(frozen=True)
class SegDataConfig:
    train_json: str = ""  # COCO file; images resolve against `image_root` or the JSON's folder
    # more COCO files trained on together with train_json (same categories unless class_agnostic),
    # e.g. facemask photos with head boxes derived from faces (prepare_facemask.py --face-to-head)
    extra_train_json: tuple[str, ...] = ()
    val_json: str = ""  # evaluated every epoch to keep the best checkpoint
    image_root: str = ""  # empty: the folder holding each JSON file
    class_agnostic: bool = True  # one `head` class; attire is stage 2's job
    derived_mask: str = "ellipse"  # for box-only annotations: `ellipse` (inscribed) or `box`
    workers: int = 2  # data-loading processes; the machines here have 2 cores


@dataclass(frozen=True)
class SegModelConfig:
    arch: str = "mobilenet_v2_fpn"  # small and ImageNet-initialised; `resnet50_fpn` for accuracy
    weights: str = "imagenet"  # `imagenet` (offline hub cache), `none`, or a local .pth file
    min_size: int = 640  # short side; facemask photos are ~400 px with tiny faces, so upsample
    max_size: int = 1066  # keeps 4:3 photos whole at min_size=640 (1066 = 640 * 5/3)
    # multi-scale training: each training image's short side drawn from these (torchvision's
    # transform draws per image); evaluation and inference resize to min_size. Empty: min_size only
    train_min_sizes: tuple[int, ...] = ()
    returned_layers: tuple[int, ...] = ()  # FPN stages; empty: per arch (MobileNetV2 from stride 8)
    anchor_sizes: tuple[int, ...] = (16, 32, 64, 128, 256)  # one per FPN level, 16 px for tiny faces
    aspect_ratios: tuple[float, ...] = (0.5, 1.0, 2.0)  # height/width; heads are near 1
    fpn_channels: int = 128  # half torchvision's 256: small enough to ship; AP cost not measured
    box_head_dim: int = 256  # torchvision uses 1024; one class needs far less
    mask_head_layers: tuple[int, ...] = (128, 128)  # torchvision uses 4 x 256
    trainable_backbone_layers: int = 3  # freeze the earliest ImageNet stages (faster on CPU)
    # torchvision's 1000 / 1000. 500 / 300 was faster but lost val AP50: hardhat 0.473 -> 0.408,
    # facemask 0.475 -> 0.445 (docs/PERFORMANCE.md).
    rpn_pre_nms_top_n_test: int = 1000
    rpn_post_nms_top_n_test: int = 1000
    box_detections_per_img: int = 100  # crowded scenes have dozens of heads
    box_score_thresh: float = 0.05  # low, so COCO AP sees the whole precision/recall curve
    box_from_mask: bool = True  # report the mask's tight box: +0.11 AP50 on hardhat val (RESULTS.md)
    # RoIs sampled per image for the box and mask losses; torchvision's 512, used for every run
    # in docs/RESULTS.md. With few heads per photo 128 keeps every positive for a third of the
    # RoI-head time in training (configs/seg_hhw.yaml, docs/PERFORMANCE.md).
    box_batch_size_per_image: int = 512


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 12  # enough for the small shared sets to converge; see docs/RESULTS.md
    batch_size: int = 4  # per process
    optimizer: str = "sgd"  # `sgd` or `adamw`
    lr: float = 0.01  # SGD, batch 4 (torchvision: 0.02 at 16); 0.02 made the mask loss diverge
    momentum: float = 0.9  # SGD only
    weight_decay: float = 1e-4  # torchvision detection reference value
    schedule: str = "cosine"  # `cosine` or `step`
    milestones: tuple[float, ...] = (0.67, 0.89)  # `step` only: fractions of training (8/12, 11/12)
    warmup_iters: int = 100  # linear warm-up, guards the first SGD steps of the fresh heads
    clip_grad_norm: float = 10.0  # 0 disables; stops rare spikes from small batches
    # mixed precision: fp16 + gradient scaler on CUDA; bf16 autocast on CPUs with AVX512-BF16 or
    # AMX (elsewhere bf16 is emulated, >10x slower: fp32 then, with a warning; docs/PERFORMANCE.md)
    amp: bool = True
    channels_last: bool = True  # NHWC convolutions, faster on CPUs and GPUs alike
    hflip: float = 0.5  # probability; heads are left/right symmetric
    scale_jitter: tuple[float, float] = (0.75, 1.25)  # zoom range, boxes and masks follow
    color_jitter: float = 0.2  # brightness/contrast/saturation strength
    seed: int = 0  # seeds python, numpy and torch
    max_iters: int = 0  # stop each epoch after this many steps (0: whole epoch); for smoke runs
    log_every: int = 20  # steps between progress-bar loss updates
    # last.pt within an epoch this often (0: only at epoch ends): a CPU epoch of hhw takes half an
    # hour, and --resume goes on from the step a killed run had saved, as if never stopped
    checkpoint_minutes: float = 10.0
    select_metric: str = "bbox/AP50"  # val metric that picks best.pt; the product's head goal
    # a trained segmenter (best.pt, last.pt or a packed file, e.g. headseg/assets/hhw_segmenter.pt)
    # whose weights start the run instead of ImageNet's: fine-tuning; same architecture and classes
    init_from: str = ""


@dataclass(frozen=True)
class SegConfig:
    data: SegDataConfig = field(default_factory=SegDataConfig)
    model: SegModelConfig = field(default_factory=SegModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


# ----------------------------------------------------------------------------- stage 2


@dataclass(frozen=True)
class CropConfig:
    padding: float = 0.15  # context around the box, as a fraction of its size on each side
    # outside the mask: `constant`, `blur`, or `none` (plain box crop); the masked crop was ahead
    # of box crops on hardhat test and level on facemask (docs/RESULTS.md)
    fill: str = "constant"
    fill_value: int = 114  # grey; far from skin and hat colours alike
    size: int = 96  # classifier input side; 128 cost 1.8x the CPU time, no better on hardhat val


@dataclass(frozen=True)
class ClsSourceConfig:
    """One crop set of a multi-attribute run; ``schema.sources[name]`` says what its labels mean.

    A source may appear more than once, e.g. its ground-truth crops and the crops cut from a
    segmenter's predictions (``make_crops.py --from pred``), each entry with its own indexes.
    """

    name: str = ""  # a source of the schema, e.g. `hhw`
    train_index: str = ""  # crop index CSV written by tools/make_crops.py
    val_index: str = ""  # optional; every source's val crops together choose the best epoch
    # With `data.balance: sampler`: this crop set's draws relative to the other crop sets' crops
    # of the same attribute value (2: each of its crops drawn twice as often as theirs); values
    # keep their equal share. Keeps a small crop set's share when a large one joins it.
    weight: float = 1.0


@dataclass(frozen=True)
class ClsDataConfig:
    train_index: str = ""  # crop index CSV written by tools/make_crops.py
    val_index: str = ""  # chooses the best epoch (macro-F1)
    # Several crop sets trained together, one per schema source (needs `schema`); empty: the one
    # crop set above, as a single-attribute classifier always trained.
    sources: tuple[ClsSourceConfig, ...] = ()
    # `sampler`, `loss` (class weights) or `none`; facemask is 26:1. With several attributes the
    # sampler gives every value of every attribute equal draws (attributes.balanced_sample_weights).
    balance: str = "sampler"
    # With `balance: sampler` and a schema: each attribute's draws against the others', e.g.
    # `{face_mask: 2}` draws face_mask's values twice as often as by default (attributes not
    # named: 1). By default an attribute's share is its number of values over all the values.
    attribute_draws: dict[str, float] = field(default_factory=dict)
    # With `balance: sampler` and a schema: single values' draws against their attribute's other
    # values, keyed `attribute/value`, e.g. `{face_mask/not_visible: 0.5}` draws that value half as
    # often as the others; the attribute's share of all draws stays (values not named: 1).
    value_draws: dict[str, float] = field(default_factory=dict)
    # With `balance: sampler`: how far to balance each attribute's values. 1: equal draws; 0.5:
    # a value's draws go as the square root of its crop count (square-root sampling); 0: as the
    # crops come (attributes.balanced_sample_weights).
    balance_power: float = 1.0
    # The share of each source's training photos whose crops train, in (0, 1] (a learning curve:
    # how the scores grow with the data), drawn by `photo_seed`; a source's crop sets keep the
    # same photos. Val is never cut. An epoch is as long as the crops kept.
    train_photos: float = 1.0
    photo_seed: int = 0
    workers: int = 2


@dataclass(frozen=True)
class ClsModelConfig:
    arch: str = "mobilenet_v2"  # any torchvision classifier; mobilenet_v2 has offline weights
    weights: str = "imagenet"  # `imagenet`, `none`, or a local .pth file
    head: str = "linear"  # `linear` or `mlp` (pool -> 256 -> 128 -> classes)
    dropout: float = 0.2  # MobileNetV2's own value


@dataclass(frozen=True)
class ClsTrainConfig:
    frozen_epochs: int = 2  # the new head alone first, so it does not wreck the ImageNet features
    epochs: int = 12  # total, frozen phase included; val macro-F1 peaks at epochs 10-11
    lr: float = 1e-3  # Adam, head phase; a fresh head needs more than 2 short epochs at 1e-4
    unfrozen_lr_factor: float = 0.1  # whole network at 1e-4 after; 3e-4 was worse on facemask val
    # After unfreezing: `constant` (lr * unfrozen_lr_factor throughout), or `cosine` (from there
    # to 0 by the last epoch's last step, per step)
    schedule: str = "constant"
    weight_decay: float = 1e-4
    label_smoothing: float = 0.05  # labels are noisy (see data README)
    patience: int = 4  # epochs without a better val macro-F1 before stopping
    batch_size: int = 32  # 430 hardhat crops give 14 steps an epoch (7 at batch 64)
    augment: bool = True  # flip, affine (shift/scale/rotate/shear), colour jitter, erasing
    seed: int = 0
    max_iters: int = 0  # steps per epoch cap (0: whole epoch): smoke runs, or epochs of set length
    # > 0: validate, keep and ship an exponential moving average of the weights, updated after
    # every step with this decay (0.998 averages over about the last 500 steps); 0: the weights
    # as trained. The averaged weights move less from epoch to epoch than the trained ones.
    ema_decay: float = 0.0
    # Knowledge distillation: classifier checkpoints (several: the mean of their probabilities)
    # whose output on each augmented training batch the model learns besides the labels:
    # (1 - distill_weight) x the labels' loss + distill_weight x T^2 x KL(teachers || model) at
    # temperature T = distill_temperature, summed over the attributes. `distill_unlabelled`: also on
    # the attributes a crop's source does not label (the teachers' guesses there). Teachers run in
    # bf16 autocast. Teachers may know only some of an attribute's values (in the model's order):
    # they teach its distribution over those, and crops labelled with another are not distilled
    # (classification.load_teachers). Empty: no distillation.
    teachers: tuple[str, ...] = ()
    distill_weight: float = 0.5
    distill_temperature: float = 1.0
    distill_unlabelled: bool = True


@dataclass(frozen=True)
class ClsConfig:
    data: ClsDataConfig = field(default_factory=ClsDataConfig)
    model: ClsModelConfig = field(default_factory=ClsModelConfig)
    crop: CropConfig = field(default_factory=CropConfig)
    train: ClsTrainConfig = field(default_factory=ClsTrainConfig)
    # Attributes, their values and each source's category mapping (configs/cls_multi.yaml), with
    # `data.sources`; None: one attribute whose values are the crop set's classes, the
    # single-softmax classifier every config without it trains.
    schema: AttributeSchema | None = None

    def __post_init__(self) -> None:
        sources = self.data.sources
        for key in ("attribute_draws", "value_draws"):
            if getattr(self.data, key) and (self.schema is None or self.data.balance != "sampler"):
                raise ValueError(f"data.{key} {dict(getattr(self.data, key))} needs a `schema` with "
                                 f"data.sources and data.balance: sampler (balance is {self.data.balance!r})")
        if self.schema is None:
            if sources:
                raise ValueError(f"data.sources names {[s.name for s in sources]} but there is no "
                                 "schema saying what their labels mean; add a `schema` section "
                                 "(configs/cls_multi.yaml) or use data.train_index alone")
            return
        if not sources:
            raise ValueError("a schema is given but data.sources is empty; list one entry {name, "
                             "train_index, val_index} per schema source (configs/cls_multi.yaml)")
        if self.data.train_index or self.data.val_index:
            raise ValueError(f"data.train_index={self.data.train_index!r}, data.val_index="
                             f"{self.data.val_index!r} with a schema; give each crop set as an "
                             "entry of data.sources instead")
        names = [s.name for s in sources]
        unknown = [n for n in names if n not in self.schema.sources]
        if unknown:  # a name may repeat: one source's ground-truth and prediction crop sets
            raise ValueError(f"data.sources names {unknown} are not among the schema's sources "
                             f"{sorted(self.schema.sources)}")
        bad = [(s.name, s.weight) for s in sources if not s.weight > 0]
        if bad:
            raise ValueError(f"data.sources weights {bad} must be > 0 (1: drawn like the other crop sets)")
        draws = self.data.attribute_draws
        unknown = sorted(set(draws) - set(self.schema.attributes))
        if unknown or not all(float(w) > 0 for w in draws.values()):
            raise ValueError(f"data.attribute_draws {dict(draws)}: keys must be the schema's attributes "
                             f"{list(self.schema.attributes)} and weights > 0 (1: the default share)")
        known = [f"{a}/{v}" for a, values in self.schema.attributes.items() for v in values]
        draws = self.data.value_draws
        unknown = sorted(set(draws) - set(known))
        if unknown or not all(float(w) > 0 for w in draws.values()):
            raise ValueError(f"data.value_draws {dict(draws)}: keys must be `attribute/value` among {known} "
                             "and weights > 0 (1: drawn as often as the attribute's other values)")


# ----------------------------------------------------------------------------- loading


def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _coerce(value: Any, annotation: Any, key: str) -> Any:
    """Convert a YAML or command-line value to the field's declared type."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        if value is None and type(None) in typing.get_args(annotation):
            return None
        (inner,) = [a for a in typing.get_args(annotation) if a is not type(None)]
        return _coerce(value, inner, key)
    if dataclasses.is_dataclass(annotation) and isinstance(value, annotation):
        return value
    if dataclasses.is_dataclass(annotation):
        if not isinstance(value, dict):
            raise ValueError(f"config key '{key}' expects a mapping, got {value!r}")
        return from_dict(annotation, value, prefix=f"{key}.")
    origin = typing.get_origin(annotation)
    if origin is tuple:
        if isinstance(value, str):
            value = yaml.safe_load(f"[{value.strip('()[]')}]")
        if not isinstance(value, (list, tuple)):
            value = [value]
        args = typing.get_args(annotation)
        item_type = args[0] if args else Any
        return tuple(_coerce(v, item_type, key) for v in value)
    if annotation is bool:
        if isinstance(value, str):
            if value.lower() in ("1", "true", "yes", "on"):
                return True
            if value.lower() in ("0", "false", "no", "off"):
                return False
        if isinstance(value, bool):
            return value
        raise ValueError(f"config key '{key}' expects true or false, got {value!r}")
    if annotation in (int, float, str):
        try:
            if annotation is int and isinstance(value, float) and not value.is_integer():
                raise ValueError
            return annotation(value)
        except (TypeError, ValueError):
            raise ValueError(
                f"config key '{key}' expects {annotation.__name__}, got {value!r}"
            ) from None
    return value


def _unknown_key_error(key: str, valid: list[str]) -> ValueError:
    close = difflib.get_close_matches(key.split(".")[-1], valid, n=3)
    hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    return ValueError(f"unknown config key '{key}'{hint} (valid here: {', '.join(valid)})")


def from_dict(cls: type[T], values: dict[str, Any], prefix: str = "") -> T:
    """Build the dataclass ``cls`` from a nested dict, rejecting unknown keys."""
    types = _field_types(cls)
    kwargs = {}
    for key, value in values.items():
        if key not in types:
            raise _unknown_key_error(prefix + key, list(types))
        kwargs[key] = _coerce(value, types[key], prefix + key)
    return cls(**kwargs)


def parse_override(item: str) -> tuple[str, Any]:
    """``"train.lr=0.01"`` -> ``("train.lr", 0.01)``: the one parser of ``--set`` items.

    The value is read as YAML (numbers, booleans, lists); an empty value is the empty string.

    Raises:
        ValueError: ``item`` is not ``key=value``.
    """
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise ValueError(f"override {item!r} is not of the form key=value, e.g. train.lr=0.01")
    return key.strip(), yaml.safe_load(raw) if raw.strip() else ""


def parse_overrides(items: Sequence[str], prefix: str = "model.") -> dict[str, Any]:
    """``["min_size=640", "model.box_from_mask=false"]`` -> ``{"min_size": 640, "box_from_mask": False}``.

    For the fields of one section (the segmenter's inference settings): a leading ``prefix`` is
    dropped from keys. Unknown keys are left for the config class to reject (with close-match
    suggestions).
    """
    return {key.removeprefix(prefix): value for key, value in map(parse_override, items)}


def apply_overrides(config: T, overrides: Sequence[str]) -> T:
    """Return ``config`` with ``section.key=value`` overrides applied (values parsed as YAML)."""
    for item in overrides:
        dotted, value = parse_override(item)
        config = _replace_path(config, dotted.split("."), value, dotted)
    return config


def _replace_path(node: Any, path: list[str], value: Any, dotted: str) -> Any:
    types = _field_types(type(node))
    head = path[0]
    if head not in types:
        raise _unknown_key_error(dotted, list(types))
    if len(path) == 1:
        return dataclasses.replace(node, **{head: _coerce(value, types[head], dotted)})
    child = getattr(node, head)
    if not dataclasses.is_dataclass(child):
        raise ValueError(f"config key '{dotted}': '{head}' is a value, not a section")
    return dataclasses.replace(node, **{head: _replace_path(child, path[1:], value, dotted)})


BASE_KEY = "_base_"


def _merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """``update`` over ``base``, section by section (a section in both is merged, not replaced)."""
    out = dict(base)
    for key, value in update.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def read_config_file(path: str | Path, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """The values of a YAML config file, over those of the file its ``_base_`` key names.

    ``_base_`` is a path relative to the file's folder; bases may have bases of their own.

    Raises:
        FileNotFoundError: the file (or a base) does not exist.
        ValueError: not a YAML mapping, or a cycle of bases.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} does not exist; see configs/ for examples")
    if path.resolve() in _seen:
        raise ValueError(f"config file {path} names itself as a base, through {[str(p) for p in _seen]}")
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ValueError(f"config file {path} is not valid YAML: {e}") from None
    if not isinstance(values, dict):
        raise ValueError(f"config file {path} must hold a mapping of sections, got {values!r}")
    base = values.pop(BASE_KEY, None)
    if base is None:
        return values
    return _merge(read_config_file(path.parent / str(base), (*_seen, path.resolve())), values)


def load_config(cls: type[T], path: str | Path | None = None, overrides: Sequence[str] = ()) -> T:
    """Load a config of type ``cls``: the dataclass defaults, a YAML file's values, then overrides.

    The dataclass defaults are the recipe; a file holds only what differs from them and may
    start from another file (``_base_: cls_default.yaml``).

    Args:
        cls: The config dataclass, e.g. :class:`SegConfig`.
        path: YAML file with any subset of the fields; missing ones keep their defaults.
        overrides: ``["train.lr=0.01", "model.min_size=512"]``.

    Returns:
        The frozen config.

    Raises:
        FileNotFoundError: ``path`` (or its base) does not exist.
        ValueError: the file is not a YAML mapping, a key is unknown or a value has the wrong type.
    """
    values = read_config_file(path) if path is not None else {}
    try:
        config = from_dict(cls, values)
    except ValueError as e:
        raise ValueError(f"{path}: {e}" if path else str(e)) from None
    return apply_overrides(config, overrides)


def to_dict(config: Any) -> dict[str, Any]:
    """Plain nested dict of a config, for checkpoints and YAML dumps."""
    return dataclasses.asdict(config)
