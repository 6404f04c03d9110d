"""Stage 2: classify the attire of each head from its square, masked crop (transfer learning).

The data flow is ``COCO -> crop set -> classifier``:

* :func:`make_crop_set` cuts one crop per head (:func:`headseg.crops.crop_head`) from ground-truth
  annotations or from segmenter predictions and writes ``crops/*.png`` plus ``index.csv``
  (columns ``crop, label, image_id, ann_id, source_image, source[, score, iou]``), ``classes.txt``
  (class names in order) and ``crops.json`` (the crop rules and where the masks came from). With
  box-only data such as the shared real sets, the masks are *derived* from the boxes (inscribed
  ellipses), never drawn by hand, and ``crops.json`` says so.
* :class:`CropIndexDataset` reads such an index; :func:`train_classifier` fine-tunes an ImageNet
  classifier on it: the new head alone on a frozen backbone first, then the whole network.
* Checkpoints carry the config, class names, input size, mean/std and crop rules, so
  :func:`load_classifier` and :func:`preprocessing_from_checkpoint` need nothing else.

Tensors: crops are ``(N, 3, S, S)`` float32 RGB in ``[0, 1]`` before :func:`normalize`.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import logging
import math
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
import torchvision
from torch import nn
from torch.nn import functional as F
from torchvision.ops import box_iou
from torchvision.transforms import v2
from tqdm import tqdm

from headseg.config import ClsConfig, ClsModelConfig, CropConfig, from_dict, to_dict
from headseg.crops import crop_head
from headseg.data import CocoHeads, annotation_mask
from headseg.evaluation import classification_metrics
from headseg.io import atomic_write, read_image, write_json, write_text
from headseg.training import (
    MetricsLog,
    NonFiniteLossError,
    check_output_dir,
    default_device,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    seed_everything,
    set_rng_state,
)
from headseg.weights import load_imagenet_state_dict, load_weights_file

log = logging.getLogger(__name__)

# torchvision's ImageNet statistics; stored in every checkpoint so inference never guesses.
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
INDEX_COLUMNS = ("crop", "label", "image_id", "ann_id", "source_image", "source")
PRED_COLUMNS = ("score", "iou")
BACKGROUND = "background"  # class of predicted heads that match no ground-truth head


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


def _num_classes(model: nn.Module) -> int:
    return [m for m in classifier_head(model) if isinstance(m, nn.Linear)][-1].out_features


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


# ----------------------------------------------------------------------------- checkpoints


@dataclass(frozen=True)
class ClsPreprocessing:
    """Everything between a photo and the classifier's input, as the checkpoint recorded it."""

    input_size: int  # crop side S in pixels
    mean: tuple[float, float, float]  # RGB, for crops in [0, 1]
    std: tuple[float, float, float]
    crop: CropConfig  # padding, fill and fill value of crop_head


def classifier_checkpoint(model: nn.Module, cfg: ClsConfig, class_names: Sequence[str],
                          **extra: Any) -> dict[str, Any]:
    """The dict saved to disk: weights plus everything needed to rebuild and preprocess."""
    return {"kind": "headseg-classifier", "version": 1, "model": model.state_dict(),
            "config": to_dict(cfg), "class_names": list(class_names), "input_size": cfg.crop.size,
            "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD), "crop": to_dict(cfg.crop), **extra}


def _state(checkpoint: str | Path | dict[str, Any]) -> dict[str, Any]:
    if isinstance(checkpoint, dict):
        if checkpoint.get("kind") != "headseg-classifier":
            raise ValueError(f"dict of kind {checkpoint.get('kind')!r} is not a headseg classifier checkpoint")
        return checkpoint
    return load_checkpoint(checkpoint, "classifier")


def load_classifier(path: str | Path | dict[str, Any], device: str | torch.device = "cpu"
                    ) -> tuple[nn.Module, ClsConfig, list[str]]:
    """Rebuild a trained classifier from its checkpoint alone.

    Args:
        path: ``best.pt``/``last.pt`` from ``tools/train_cls.py``, or such a checkpoint already loaded.
        device: Where to put the model.

    Returns:
        ``(model in eval mode, config, class names)``; see :func:`preprocessing_from_checkpoint`
        for the input it expects.
    """
    state = _state(path)
    cfg = from_dict(ClsConfig, state["config"])
    # The checkpoint's weights replace any initialisation: never read ImageNet files here.
    model = build_classifier(dataclasses.replace(cfg.model, weights="none"), len(state["class_names"]))
    model.load_state_dict(state["model"])
    return model.eval().to(device), cfg, list(state["class_names"])


def preprocessing_from_checkpoint(path: str | Path | dict[str, Any]) -> ClsPreprocessing:
    """The input size, mean/std and crop rules a classifier checkpoint was trained with."""
    state = _state(path)
    return ClsPreprocessing(int(state["input_size"]), tuple(state["mean"]), tuple(state["std"]),
                            from_dict(CropConfig, state["crop"]))


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
def predict_probs(model: nn.Module, crops_normalized: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Softmax class probabilities of normalised crops, in batches, in eval mode.

    Args:
        model: A classifier from :func:`build_classifier`/:func:`load_classifier`.
        crops_normalized: ``(N, 3, S, S)`` float32 from :func:`normalize`, on any device.
        batch_size: Crops per forward pass.

    Returns:
        ``(N, K)`` float32 on the CPU, rows summing to 1; ``(0, K)`` when ``N == 0``.
    """
    device = next(model.parameters()).device
    # Restored module by module: a training model may hold frozen batch norms in eval mode.
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        out = [F.softmax(model(crops_normalized[i:i + batch_size].to(device)).float(), dim=1).cpu()
               for i in range(0, crops_normalized.shape[0], batch_size)]
    finally:
        for m, training in modes:
            m.training = training
    return torch.cat(out) if out else torch.empty((0, _num_classes(model)))


# ----------------------------------------------------------------------------- crop sets


def _rgb_to_png(path: Path, crop: np.ndarray) -> None:
    ok, png = cv2.imencode(".png", cv2.cvtColor(crop, cv2.COLOR_RGB2BGR))
    if not ok:
        raise OSError(f"OpenCV could not encode {path} as PNG")
    path.write_bytes(png.tobytes())


def _xyxy(box_xywh: Sequence[float]) -> list[float]:
    x, y, w, h = box_xywh
    return [x, y, x + w, y + h]


def _predicted_heads(segmenter: nn.Module, image: np.ndarray, anns: list[dict[str, Any]],
                     class_of: dict[int, str], score_thresh: float, iou_thresh: float,
                     device: torch.device) -> list[dict[str, Any]]:
    """Segmenter heads above ``score_thresh``, each labelled by its best-IoU ground-truth head."""
    tensor = torch.from_numpy(image).permute(2, 0, 1).float().div(255).to(device)
    with torch.inference_mode():
        out = segmenter([tensor])[0]
    keep = out["scores"] >= score_thresh
    boxes, scores = out["boxes"][keep].cpu(), out["scores"][keep].cpu()
    masks = (out["masks"][keep, 0] > 0.5).cpu().numpy()
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


def make_crop_set(coco: CocoHeads, out_dir: str | Path, crop: CropConfig, segmenter: nn.Module | None = None,
                  score_thresh: float = 0.5, iou_thresh: float = 0.5, background: bool = False,
                  device: str | torch.device = "cpu", progress: bool = True) -> Path:
    """Cut one crop per head and write ``out_dir/crops/*.png``, ``index.csv``, ``classes.txt``, ``crops.json``.

    Args:
        coco: Ground truth. Box-only annotations get derived masks (``coco.derived_masks`` shape,
            else an inscribed ellipse) and ``crops.json`` records ``derived_masks``.
        out_dir: Output folder.
        crop: Crop rules (size, padding, fill, fill_value), as in the classifier config.
        segmenter: None for ground-truth crops (every non-crowd annotation); else a Mask R-CNN
            in eval mode whose predicted heads (box and mask > 0.5) are cut instead.
        score_thresh: Predictions scoring below are ignored.
        iou_thresh: A prediction takes the category of its highest box-IoU ground-truth head
            when that IoU reaches this value.
        background: Keep unmatched predictions as class ``background``; otherwise drop them.
        device: Where the segmenter runs.
        progress: Show a tqdm bar.

    Returns:
        Path of ``index.csv``; ``crop`` paths in it are relative to its folder.
    """
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
        if pred:
            heads = _predicted_heads(segmenter, image, anns, class_of, score_thresh, iou_thresh,
                                     torch.device(device))
        else:
            heads = [{"box": _xyxy(a["bbox"]),
                      "mask": annotation_mask(a, h, w, derived), "ann_id": a["id"],
                      "label": class_of[a["category_id"]]} for a in anns]
        for k, head in enumerate(heads):
            if head["label"] == BACKGROUND and not background:
                skipped["unmatched"] += 1
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
                                        "crop": to_dict(crop), "derived_masks": coco.derived_masks,
                                        "score_thresh": score_thresh if pred else None,
                                        "iou_thresh": iou_thresh if pred else None, "num_crops": len(rows),
                                        "labels": dict(Counter(r["label"] for r in rows))})
    return write_text(out_dir / "index.csv", buf.getvalue())


def read_class_names(index_csv: str | Path) -> list[str]:
    """Class names of a crop set: ``classes.txt`` beside the index, else the sorted labels in it."""
    index_csv = Path(index_csv)
    classes = index_csv.parent / "classes.txt"
    if classes.is_file():
        return [line.strip() for line in classes.read_text().splitlines() if line.strip()]
    return sorted({r["label"] for r in _read_index(index_csv)})


def check_crop_rules(index_csv: str | Path, crop: CropConfig) -> None:
    """Refuse crops cut with other rules than ``crop`` (the rules a checkpoint will record).

    Raises:
        ValueError: ``crops.json`` beside the index names different size/padding/fill/fill_value.
    """
    meta_path = Path(index_csv).parent / "crops.json"
    if not meta_path.is_file():
        log.warning("%s has no crops.json; cannot check that its crops follow %s", index_csv, crop)
        return
    cut = json.loads(meta_path.read_text())["crop"]
    want = to_dict(crop)
    diff = {k: (cut.get(k), v) for k, v in want.items() if cut.get(k) != v}
    if diff:
        sets = " ".join(f"crop.{k}={v[0]}" for k, v in diff.items())
        raise ValueError(f"crops of {index_csv} were cut with {cut}, but the classifier expects {want} "
                         f"(differing: {diff}); pass --set {sets}, or remake the crops with these rules")


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


# ----------------------------------------------------------------------------- dataset


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


class CropIndexDataset(torch.utils.data.Dataset):
    """Crops listed in an ``index.csv`` as ``(crop, label)`` pairs.

    Each item is a float32 ``(3, S, S)`` RGB tensor in ``[0, 1]`` (``transform`` gets the uint8
    tensor; its output is scaled to [0, 1] if still uint8) and the label's index in ``class_names``.
    """

    def __init__(self, index_csv: str | Path, class_names: Sequence[str], transform: Any = None) -> None:
        self.index_csv = Path(index_csv)
        self.root = self.index_csv.parent
        self.rows = _read_index(self.index_csv)
        self.class_names = list(class_names)
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


@dataclass(frozen=True)
class IndexPredictions:
    """A classifier's output on a crop index."""

    paths: list[Path]  # crop files, in index order
    labels: torch.Tensor  # (N,) int64 true class indices
    probs: torch.Tensor  # (N, K) float32 softmax probabilities


def predict_index(model: nn.Module, index_csv: str | Path, class_names: Sequence[str],
                  prep: ClsPreprocessing, device: str | torch.device = "cpu", batch_size: int = 128,
                  progress: bool = True) -> IndexPredictions:
    """Class probabilities for every crop of an index (crop rules checked against ``prep``)."""
    check_crop_rules(index_csv, prep.crop)
    dataset = CropIndexDataset(index_csv, class_names)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False)
    probs = [predict_probs(model, normalize(x.to(device), prep.mean, prep.std), batch_size)
             for x, _ in tqdm(loader, desc="predict", disable=not progress, leave=False)]
    return IndexPredictions([dataset.path(i) for i in range(len(dataset))],
                            torch.tensor(dataset.labels, dtype=torch.int64),
                            torch.cat(probs) if probs else torch.empty((0, len(class_names))))


def plot_worst_mistakes(images: Sequence[np.ndarray] | Callable[[int], np.ndarray],
                        labels: Sequence[int] | torch.Tensor, probs: torch.Tensor,
                        class_names: Sequence[str], path: str | Path, max_images: int = 24) -> Path:
    """A PNG grid of the most confident wrong predictions, titled true / predicted (probability).

    Args:
        images: ``N`` crops, ``(S, S, 3)`` uint8 RGB, or a function of the crop's index that reads
            one (only the crops shown are read), e.g. :meth:`CropIndexDataset.image`.
        labels: ``(N,)`` true class indices.
        probs: ``(N, K)`` probabilities.
        class_names: ``K`` names.
        path: Output PNG, written atomically.
        max_images: Most mistakes shown, highest predicted probability first.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: PLC0415 (slow import)
    from matplotlib.figure import Figure  # noqa: PLC0415

    labels = torch.as_tensor(labels).reshape(-1)
    conf, pred = probs.max(dim=1) if len(probs) else (torch.empty(0), torch.empty(0, dtype=torch.int64))
    wrong = (pred != labels).nonzero().flatten()
    order = wrong[conf[wrong].argsort(descending=True)][:max_images].tolist()
    cols = max(1, min(6, len(order)))
    rows = max(1, math.ceil(len(order) / cols))
    fig = Figure(figsize=(2.2 * cols, 2.5 * rows))
    FigureCanvasAgg(fig)
    if not order:
        fig.text(0.5, 0.5, "no mistakes", ha="center", va="center")
    for k, i in enumerate(order):
        ax = fig.add_subplot(rows, cols, k + 1)
        ax.imshow(images(i) if callable(images) else images[i])
        ax.set_title(f"true: {class_names[int(labels[i])]}\npred: {class_names[int(pred[i])]} "
                     f"({float(conf[i]):.2f})", fontsize=8)
        ax.axis("off")
    fig.tight_layout()
    return atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=100))


# ----------------------------------------------------------------------------- training


def _check_train_config(cfg: ClsConfig) -> None:
    t = cfg.train
    if not cfg.data.train_index:
        raise ValueError("data.train_index is empty; pass --set data.train_index=work_data/crops_X/train/index.csv"
                         " (written by tools/make_crops.py)")
    if cfg.data.balance not in ("sampler", "loss", "none"):
        raise ValueError(f"data.balance={cfg.data.balance!r} is not one of sampler, loss, none")
    if not 0 <= t.frozen_epochs <= t.epochs:
        raise ValueError(f"train.frozen_epochs={t.frozen_epochs} with train.epochs={t.epochs}; expected "
                         "0 <= frozen_epochs <= epochs")
    if t.batch_size < 1 or t.patience < 1:
        raise ValueError(f"train.batch_size={t.batch_size}, train.patience={t.patience}; both must be >= 1")


def _make_optimizer(model: nn.Module, cfg: ClsConfig, phase: str) -> torch.optim.Optimizer:
    """Adam over the head at ``lr`` (frozen phase) or over everything at ``lr * unfrozen_lr_factor``."""
    t = cfg.train
    set_backbone_trainable(model, phase == "full")
    lr = t.lr if phase == "frozen" else t.lr * t.unfrozen_lr_factor
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.Adam(params, lr=lr, weight_decay=t.weight_decay)


def _loader(dataset: CropIndexDataset, cfg: ClsConfig, epoch: int, train: bool) -> torch.utils.data.DataLoader:
    t = cfg.train
    # Order and augmentation depend only on (seed, epoch), so a resumed run sees the same batches.
    generator = torch.Generator().manual_seed(t.seed * 1000 + epoch)
    sampler: torch.utils.data.Sampler | None = None
    if train and cfg.data.balance == "sampler":
        counts = dataset.class_counts()
        weights = torch.tensor([1.0 / counts[y] for y in dataset.labels], dtype=torch.double)
        sampler = torch.utils.data.WeightedRandomSampler(weights, len(dataset), replacement=True,
                                                         generator=generator)
    elif train:
        sampler = torch.utils.data.RandomSampler(dataset, generator=generator)
    return torch.utils.data.DataLoader(dataset, batch_size=t.batch_size, sampler=sampler,
                                       num_workers=cfg.data.workers, generator=generator,
                                       drop_last=False, persistent_workers=False)


def _class_weights(dataset: CropIndexDataset) -> torch.Tensor:
    """``N / (K * n_c)`` per class (1 for a balanced set); 0 for a class with no crops."""
    counts = torch.tensor(dataset.class_counts(), dtype=torch.float32)
    present = counts > 0
    w = torch.zeros_like(counts)
    w[present] = counts.sum() / (present.sum() * counts[present])
    return w


@torch.inference_mode()
def _validate(model: nn.Module, dataset: CropIndexDataset, cfg: ClsConfig, device: torch.device,
              progress: bool) -> dict[str, float]:
    model.eval()
    logits, labels = [], []
    for x, y in tqdm(_loader(dataset, cfg, 0, train=False), desc="val", disable=not progress, leave=False):
        logits.append(model(normalize(x.to(device))).float().cpu())
        labels.append(y)
    logit, label = torch.cat(logits), torch.cat(labels)
    metrics = classification_metrics(label, logit.argmax(1), dataset.class_names)
    return {"loss/val": float(F.cross_entropy(logit, label)),
            **{f"val/{k}": v for k, v in metrics.items()}}


def train_classifier(cfg: ClsConfig, out_dir: str | Path, resume: bool = False,
                     device: str | torch.device | None = None, progress: bool = True) -> dict[str, Any]:
    """Fine-tune an attire classifier on a crop index; the loop behind ``tools/train_cls.py``.

    Epochs ``< train.frozen_epochs`` train the new head alone (Adam, ``train.lr``) on a frozen
    backbone whose batch norms stay in eval mode; later epochs train everything at
    ``lr * unfrozen_lr_factor``. Class imbalance is met by a ``WeightedRandomSampler``
    (``data.balance=sampler``) or class weights in the loss (``loss``). Val macro-F1 picks
    ``best.pt`` (val loss breaks ties); training stops once ``train.patience`` epochs pass without a
    better one (never during the frozen phase). Writes ``last.pt`` every epoch (atomically, with
    optimizer, phase and RNG state, so ``resume=True`` continues), ``best.pt``, ``metrics.csv``,
    ``curves.png`` and ``config.yaml`` to ``out_dir``. Without ``data.val_index`` the lowest training loss picks.

    Returns:
        ``{"best": best val macro-F1, "best_epoch", "epochs": epochs run in total,
        "stopped_early": bool, "out_dir": Path, "last": last val metrics, "class_names"}``.

    Raises:
        NonFiniteLossError: the loss became NaN/inf; the message names epoch and step.
        ValueError: bad config, unknown labels, or crops cut with other rules than ``cfg.crop``.
    """
    import yaml  # noqa: PLC0415

    _check_train_config(cfg)
    out_dir = check_output_dir(out_dir)
    device = torch.device(device) if device else default_device()
    t = cfg.train
    seed_everything(t.seed)
    class_names = read_class_names(cfg.data.train_index)
    check_crop_rules(cfg.data.train_index, cfg.crop)
    train_set = CropIndexDataset(cfg.data.train_index, class_names, crop_transforms(cfg.crop, t.augment))
    if len(train_set) == 0:
        raise ValueError(f"{cfg.data.train_index} lists no crops; nothing to train on")
    val_set = None
    if cfg.data.val_index:
        check_crop_rules(cfg.data.val_index, cfg.crop)
        val_set = CropIndexDataset(cfg.data.val_index, class_names, crop_transforms(cfg.crop, False))
    log.info("classes %s; train crops per class %s", class_names, train_set.class_counts())

    model = build_classifier(cfg.model, len(class_names)).to(device)
    weight = _class_weights(train_set).to(device) if cfg.data.balance == "loss" else None
    criterion = nn.CrossEntropyLoss(weight=weight, label_smoothing=t.label_smoothing)
    steps_per_epoch = -(-len(train_set) // t.batch_size)
    if t.max_iters:
        steps_per_epoch = min(steps_per_epoch, t.max_iters)

    last_path, best_path = out_dir / "last.pt", out_dir / "best.pt"
    start_epoch, best, best_loss, best_epoch, bad_epochs, stopped = 0, -math.inf, math.inf, -1, 0, False
    state: dict[str, Any] | None = None
    metrics_log = MetricsLog(out_dir, ("val/macro_f1", "val/accuracy", "val/balanced_accuracy"))
    if resume and last_path.is_file():
        state = load_checkpoint(last_path, "classifier")
        if state["class_names"] != class_names:
            raise ValueError(f"{last_path} was trained on classes {state['class_names']}, the index has "
                             f"{class_names}; resume with the same crop set or choose a new --out")
        model.load_state_dict(state["model"])
        start_epoch, best, best_epoch = state["epoch"] + 1, state["best"], state["best_epoch"]
        best_loss = state["best_loss"]
        bad_epochs, stopped = state["bad_epochs"], state["stopped_early"]
        set_rng_state(state["rng"])
        log.info("resumed from %s at epoch %d", last_path, start_epoch + 1)
    elif resume:
        log.warning("--resume: no %s yet, starting from scratch", last_path)
    metrics_log.truncate(start_epoch)  # a fresh run in an old folder starts a fresh log
    (out_dir / "config.yaml").write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))

    phase, optimizer, last_metrics, epoch = None, None, {}, start_epoch - 1
    for epoch in range(start_epoch, start_epoch if stopped else t.epochs):
        want = "frozen" if epoch < t.frozen_epochs else "full"
        if want != phase:
            phase, optimizer = want, _make_optimizer(model, cfg, want)
            if state is not None and state.get("phase") == phase:
                optimizer.load_state_dict(state["optimizer"])
            log.info("epoch %d: %s phase, lr %.3g", epoch + 1, phase, optimizer.param_groups[0]["lr"])
        state = None
        torch.manual_seed(t.seed * 1000 + epoch)  # dropout and main-process augmentation
        train_mode(model)
        loss_sum, steps, seen, t0 = 0.0, 0, 0, time.time()
        bar = tqdm(_loader(train_set, cfg, epoch, train=True), total=steps_per_epoch,
                   desc=f"epoch {epoch + 1}/{t.epochs} ({phase})", disable=not progress)
        for step, (x, y) in enumerate(bar):
            if step >= steps_per_epoch:
                break
            loss = criterion(model(normalize(x.to(device))), y.to(device))
            if not torch.isfinite(loss):
                raise NonFiniteLossError(
                    f"loss became {loss.item()} at epoch {epoch + 1}, step {step + 1}; the last good checkpoint "
                    f"is {last_path if last_path.is_file() else 'none yet'}. Lower train.lr")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum, steps, seen = loss_sum + loss.item(), steps + 1, seen + len(y)
            bar.set_postfix(loss=f"{loss.item():.3f}")
        bar.close()
        seconds = time.time() - t0
        row = {"epoch": epoch, "lr": optimizer.param_groups[0]["lr"], "frozen": float(phase == "frozen"),
               "epoch_seconds": seconds, "crops_per_second": seen / max(seconds, 1e-9),
               "loss": loss_sum / max(steps, 1)}
        if val_set is not None:
            last_metrics = _validate(model, val_set, cfg, device, progress)
            row.update(last_metrics)
        # Macro-F1 saturates on small val sets (hardhat: 77 crops); the val loss breaks ties.
        score = last_metrics.get("val/macro_f1", -row["loss"])
        tie_loss = last_metrics.get("loss/val", row["loss"])
        improved = score > best or (score == best and tie_loss < best_loss)
        if improved:
            best, best_loss, best_epoch, bad_epochs = score, tie_loss, epoch, 0
        else:
            bad_epochs += 1
        stopped = bad_epochs >= t.patience and phase == "full" and epoch + 1 < t.epochs
        ckpt = classifier_checkpoint(model, cfg, class_names, epoch=epoch, best=best, best_loss=best_loss,
                                     best_epoch=best_epoch, metrics=last_metrics, phase=phase,
                                     bad_epochs=bad_epochs, stopped_early=stopped,
                                     optimizer=optimizer.state_dict(), rng=rng_state())
        if improved:
            save_checkpoint(best_path, {k: v for k, v in ckpt.items() if k not in ("optimizer", "rng")})
        save_checkpoint(last_path, ckpt)
        metrics_log.append(row)
        log.info("epoch %d: %s", epoch + 1, {k: round(v, 4) for k, v in row.items() if k.count("/") <= 1})
        if stopped:
            log.info("early stop after epoch %d: no better val macro-F1 for %d epochs (best %.4f at epoch %d)",
                     epoch + 1, bad_epochs, best, best_epoch + 1)
            break
    return {"best": best, "best_epoch": best_epoch, "epochs": epoch + 1, "stopped_early": stopped,
            "out_dir": out_dir, "last": last_metrics, "class_names": class_names}
