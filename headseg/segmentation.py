"""Stage 1: find every head and its mask with torchvision's Mask R-CNN.

Builders (a plain dict, no registry), the training loop behind ``tools/train_seg.py``, and
inference/evaluation helpers. Checkpoints carry their config and class names, so
:func:`load_segmenter` rebuilds exactly the model and preprocessing that were trained.
"""

from __future__ import annotations

import difflib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_weights
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.models.detection.roi_heads import expand_boxes
from torchvision.models.detection.rpn import RPNHead
from torchvision.models.detection.transform import GeneralizedRCNNTransform, resize_boxes
from torchvision.ops import FrozenBatchNorm2d
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool
from tqdm import tqdm

from headseg.config import SegConfig, SegModelConfig, from_dict, to_dict
from headseg.data import CocoHeads, HeadDataset, collate, load_coco, train_transforms
from headseg.engine import (
    Checkpointer,
    EpochSampler,
    SeededSamples,
    default_device,
    init_distributed,
    load_checkpoint,
    lr_lambda,
    seed_everything,
    train_one_epoch,
)
from headseg.weights import load_imagenet_state_dict, load_weights_file

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- backbones


def _load_backbone_weights(net: nn.Module, arch: str, weights: str) -> None:
    if weights == "none":
        return
    state = load_imagenet_state_dict(arch) if weights == "imagenet" else load_weights_file(weights)
    missing, unexpected = net.load_state_dict(state, strict=False)
    dropped = [k for k in unexpected]
    if dropped:
        log.info("backbone weights: dropped %d keys not in the backbone (%s ...)", len(dropped), dropped[:3])
    if missing:
        raise ValueError(f"backbone weights {weights!r} lack {len(missing)} keys, e.g. {missing[:3]}; "
                         f"is it a {arch} state dict?")


def _freeze_before(modules: Sequence[nn.Module], first_trainable: int) -> None:
    for i, m in enumerate(modules):
        if i < first_trainable:
            m.requires_grad_(False)


def mobilenet_v2_fpn(cfg: SegModelConfig) -> tuple[BackboneWithFPN, int]:
    """MobileNetV2 features (ImageNet-initialised by default) under an FPN.

    MobileNetV2's stages start at its stride-2 blocks; ``returned_layers`` picks stages as
    torchvision's ``_mobilenet_extractor`` counts them (0 = stem, 5 = last conv), and the
    default (2..5) starts at stride 8 so that heads of 10-20 px still land on a fine level.
    """
    net = torchvision.models.mobilenet_v2(weights=None, norm_layer=FrozenBatchNorm2d)
    _load_backbone_weights(net, "mobilenet_v2", cfg.weights)
    features = net.features
    stages = [0] + [i for i, b in enumerate(features) if getattr(b, "_is_cn", False)] + [len(features) - 1]
    returned = cfg.returned_layers or (2, 3, 4, 5)
    if not 0 <= cfg.trainable_backbone_layers <= len(stages):
        raise ValueError(f"model.trainable_backbone_layers={cfg.trainable_backbone_layers}; "
                         f"expected 0..{len(stages)} for mobilenet_v2")
    first_trainable = stages[len(stages) - cfg.trainable_backbone_layers] \
        if cfg.trainable_backbone_layers else len(features)
    _freeze_before(features, first_trainable)
    return_layers = {str(stages[k]): str(v) for v, k in enumerate(returned)}
    in_channels = [features[stages[k]].out_channels for k in returned]
    body = BackboneWithFPN(features, return_layers, in_channels, cfg.fpn_channels,
                           extra_blocks=LastLevelMaxPool())
    return body, len(returned) + 1


def resnet50_fpn(cfg: SegModelConfig) -> tuple[BackboneWithFPN, int]:
    """torchvision's ResNet-50 under an FPN; random init or a local ImageNet weights file."""
    if cfg.weights == "imagenet":
        raise ValueError("no offline ImageNet weights ship for resnet50; pass a local file with "
                         "--set model.weights=/path/to/resnet50.pth, or model.weights=none")
    net = torchvision.models.resnet50(weights=None, norm_layer=FrozenBatchNorm2d)
    _load_backbone_weights(net, "resnet50", cfg.weights)
    layers = [nn.Sequential(net.conv1, net.bn1), net.layer1, net.layer2, net.layer3, net.layer4]
    trainable = cfg.trainable_backbone_layers
    if not 0 <= trainable <= 5:
        raise ValueError(f"model.trainable_backbone_layers={trainable}; expected 0..5 for resnet50")
    _freeze_before(layers, 5 - trainable)
    returned = cfg.returned_layers or (1, 2, 3, 4)
    return_layers = {f"layer{k}": str(v) for v, k in enumerate(returned)}
    in_channels = [256 * 2 ** (k - 1) for k in returned]
    body = BackboneWithFPN(net, return_layers, in_channels, cfg.fpn_channels,
                           extra_blocks=LastLevelMaxPool())
    return body, len(returned) + 1


BACKBONES: dict[str, Callable[[SegModelConfig], tuple[BackboneWithFPN, int]]] = {
    "mobilenet_v2_fpn": mobilenet_v2_fpn,
    "resnet50_fpn": resnet50_fpn,
}


def build_segmenter(cfg: SegModelConfig, num_classes: int) -> MaskRCNN:
    """A torchvision Mask R-CNN with headseg's backbone and head sizes.

    Args:
        cfg: Model section of the config.
        num_classes: Object classes *without* background (1 for class-agnostic heads).

    Returns:
        An untrained-head :class:`~torchvision.models.detection.MaskRCNN`.
    """
    if cfg.arch not in BACKBONES:
        raise ValueError(f"model.arch={cfg.arch!r} is not one of {sorted(BACKBONES)}")
    backbone, levels = BACKBONES[cfg.arch](cfg)
    if len(cfg.anchor_sizes) != levels:
        raise ValueError(f"model.anchor_sizes has {len(cfg.anchor_sizes)} sizes but the backbone gives "
                         f"{levels} feature levels; give one size per level")
    anchors = AnchorGenerator(tuple((s,) for s in cfg.anchor_sizes),
                              (tuple(cfg.aspect_ratios),) * levels)
    ch = cfg.fpn_channels
    mask_layers = tuple(cfg.mask_head_layers)
    model = MaskRCNN(
        backbone,
        num_classes=None,
        min_size=cfg.min_size,
        max_size=cfg.max_size,
        rpn_anchor_generator=anchors,
        rpn_head=RPNHead(ch, anchors.num_anchors_per_location()[0]),
        rpn_pre_nms_top_n_test=cfg.rpn_pre_nms_top_n_test,
        rpn_post_nms_top_n_test=cfg.rpn_post_nms_top_n_test,
        box_head=TwoMLPHead(ch * 7 * 7, cfg.box_head_dim),
        box_predictor=FastRCNNPredictor(cfg.box_head_dim, num_classes + 1),
        box_score_thresh=cfg.box_score_thresh,
        box_detections_per_img=cfg.box_detections_per_img,
        box_batch_size_per_image=cfg.box_batch_size_per_image,
        mask_head=MaskRCNNHeads(ch, mask_layers, dilation=1),
        mask_predictor=MaskRCNNPredictor(mask_layers[-1], mask_layers[-1], num_classes + 1),
    )
    if cfg.train_min_sizes:
        t = model.transform
        model.transform = MultiScaleTransform(cfg.train_min_sizes, cfg.min_size, cfg.max_size,
                                              t.image_mean, t.image_std)
    return model


class MultiScaleTransform(GeneralizedRCNNTransform):
    """torchvision's resize and normalisation, drawing each training image's short side from
    ``train_sizes`` (multi-scale training); in eval mode it resizes to ``min_size``.

    :class:`GeneralizedRCNNTransform` draws from ``self.min_size`` in training and takes its last
    entry otherwise, so switching modes swaps that tuple.
    """

    def __init__(self, train_sizes: Sequence[int], min_size: int, *args: Any, **kwargs: Any) -> None:
        if not train_sizes or min(train_sizes) < 1:
            raise ValueError(f"train_min_sizes must be positive pixel sizes, got {list(train_sizes)}")
        super().__init__(min_size, *args, **kwargs)
        self.train_sizes, self.test_size = tuple(int(s) for s in train_sizes), (int(min_size),)
        self.train(self.training)

    def train(self, mode: bool = True) -> MultiScaleTransform:
        self.min_size = self.train_sizes if mode else self.test_size
        return super().train(mode)


# ----------------------------------------------------------------------------- checkpoints


def segmenter_checkpoint(model: nn.Module, cfg: SegConfig, class_names: list[str],
                         **extra: Any) -> dict[str, Any]:
    """The dict saved to disk: weights plus everything needed to rebuild and preprocess."""
    return {"kind": "headseg-segmenter", "version": 1, "model": model.state_dict(),
            "config": to_dict(cfg), "class_names": list(class_names), **extra}


# Model fields that only act at inference: changing them needs no retraining.
INFERENCE_FIELDS = ("min_size", "max_size", "rpn_pre_nms_top_n_test", "rpn_post_nms_top_n_test",
                    "box_detections_per_img", "box_score_thresh", "box_from_mask")


def with_inference_overrides(config: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint's config dict with inference-time model fields replaced, validated.

    Raises:
        ValueError: a field outside :data:`INFERENCE_FIELDS` (it would change the weights'
            shapes or mean nothing at inference), or a value the config rejects.
    """
    unknown = sorted(set(overrides) - set(INFERENCE_FIELDS))
    if unknown:
        raise ValueError(f"{', '.join(unknown)}: not an inference-time segmenter setting; expected "
                         f"KEY=VALUE with KEY one of {', '.join(INFERENCE_FIELDS)}")
    merged = {**config, "model": {**config["model"], **overrides}}
    from_dict(SegConfig, merged)
    return merged


@dataclass(frozen=True, eq=False)
class Segmenter:
    """A trained segmenter as its checkpoint describes it: model, config and class names.

    Attributes:
        model: torchvision Mask R-CNN in eval mode; its input resizing is inside it.
        config: The training config, with any inference-time overrides applied.
        class_names: Model label ``k`` is ``class_names[k - 1]`` (``["head"]``: class-agnostic).
    """

    model: MaskRCNN
    config: SegConfig
    class_names: list[str]

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device = "cpu", **model_overrides: Any) -> "Segmenter":
        """Rebuild a trained segmenter from its checkpoint alone (``weights_only=True``).

        Args:
            path: ``best.pt`` / ``last.pt`` from ``tools/train_seg.py`` (or a shipped fp16 file).
            device: Where to put the model.
            model_overrides: Inference-time model fields to change (:data:`INFERENCE_FIELDS`),
                e.g. ``box_score_thresh=0.5``.
        """
        state = load_checkpoint(path, "segmenter")
        cfg = from_dict(SegConfig, with_inference_overrides(state["config"], model_overrides))
        # The backbone's ImageNet weights are replaced by the checkpoint's: never load them here.
        model = build_segmenter(from_dict(SegModelConfig, {**to_dict(cfg.model), "weights": "none"}),
                                len(state["class_names"]))
        model.load_state_dict({k: v.float() for k, v in state["model"].items()})
        return cls(model.eval().to(device), cfg, list(state["class_names"]))

    def detect(self, images: Sequence[torch.Tensor], mask_thresh: float = 0.5,
               amp: bool = False) -> list[Detections]:
        """:func:`detect` with this checkpoint's own ``box_from_mask``."""
        return detect(self.model, images, self.config.model.box_from_mask, mask_thresh, amp)


def load_segmenter(path: str | Path, device: str | torch.device = "cpu",
                   **model_overrides: Any) -> tuple[MaskRCNN, SegConfig, list[str]]:
    """``(model in eval mode, config, class names)`` of :meth:`Segmenter.load`."""
    seg = Segmenter.load(path, device, **model_overrides)
    return seg.model, seg.config, seg.class_names


def fold_frozen_batchnorm(model: nn.Module) -> int:
    """Fold every ``FrozenBatchNorm2d`` that directly follows a convolution into it, in place.

    "Follows" means the next child module of the same parent, the order in which torchvision's
    MobileNetV2 and ResNet blocks apply them (``tests/test_segmentation.py`` checks both).

    The backbone's normalisation is a fixed per-channel affine map after each convolution, so
    it can live in the convolution's weights and bias (``torch.nn.utils.fusion``): the same
    outputs within float rounding, one pass over each feature map less. For inference only:
    the folded model trains differently (its statistics are gone).

    Returns:
        How many were folded (each replaced by ``nn.Identity``).
    """
    folded = 0
    for parent in list(model.modules()):
        children = list(parent.named_children())
        for (_, conv), (name, norm) in zip(children, children[1:]):
            if isinstance(conv, nn.Conv2d) and isinstance(norm, FrozenBatchNorm2d):
                conv.weight, conv.bias = fuse_conv_bn_weights(conv.weight, conv.bias, norm.running_mean,
                                                              norm.running_var, norm.eps, norm.weight,
                                                              norm.bias)
                setattr(parent, name, nn.Identity())
                folded += 1
    return folded


# ----------------------------------------------------------------------------- inference


def boxes_from_masks(masks: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """Tight xyxy boxes of binary masks, in pixel-extent convention (a pixel at x spans x..x+1).

    Args:
        masks: ``(N, H, W)`` bool.
        boxes: ``(N, 4)`` xyxy fallback for masks that are empty.

    Returns:
        ``(N, 4)`` float xyxy.
    """
    if masks.numel() == 0:
        return boxes.clone()
    cols, rows = masks.any(1), masks.any(2)
    w, h = masks.shape[2], masks.shape[1]
    xs = torch.arange(w, device=masks.device)
    ys = torch.arange(h, device=masks.device)
    x0 = torch.where(cols, xs, w).amin(1)
    x1 = torch.where(cols, xs, -1).amax(1) + 1
    y0 = torch.where(rows, ys, h).amin(1)
    y1 = torch.where(rows, ys, -1).amax(1) + 1
    out = torch.stack([x0, y0, x1, y1], 1).to(boxes.dtype)
    empty = ~cols.any(1)
    out[empty] = boxes[empty]
    return out


def paste_masks(masks: torch.Tensor, boxes: torch.Tensor, image_size: tuple[int, int]) -> torch.Tensor:
    """Paste Mask R-CNN's box-sized mask probabilities into the image, all masks at once.

    The arithmetic of torchvision's ``paste_masks_in_image`` (pad each M x M mask by one cell,
    grow its box alike, truncate the box to integer pixels, resize bilinearly into it with
    ``align_corners=False``), without its loop: bilinear resizing is separable, so each mask is
    ``rows @ mask @ cols.T`` with interpolation matrices that are zero outside its box. Two
    batched matrix products replace one resize and one host read of the box per mask (a device
    sync per mask on a GPU). On the CPU it is 1.5-1.9x faster too (``tools/bench_paste.py``,
    docs/PERFORMANCE.md).

    Args:
        masks: ``(N, 1, M, M)`` mask probabilities from the mask head.
        boxes: ``(N, 4)`` xyxy boxes in pixels of the output image, inside it (as Mask R-CNN
            clips them).
        image_size: ``(height, width)`` of the output image.

    Returns:
        ``(N, 1, height, width)`` float32 probabilities, zero outside each (grown) box; equal to
        torchvision's within 1e-5 (``tests/test_segmentation.py``).
    """
    h, w = image_size
    n, m = masks.shape[0], masks.shape[-1]
    if n == 0:
        return masks.new_zeros((0, 1, h, w), dtype=torch.float32)
    padded = F.pad(masks[:, 0].float(), (1, 1, 1, 1))
    grown = expand_boxes(boxes.float(), (m + 2) / m).to(torch.int64)
    rows = _bilinear_weights(grown[:, 1], grown[:, 3], m + 2, h)
    cols = _bilinear_weights(grown[:, 0], grown[:, 2], m + 2, w)
    return torch.bmm(torch.bmm(rows, padded), cols.transpose(1, 2))[:, None]


def _bilinear_weights(start: torch.Tensor, end: torch.Tensor, cells: int, pixels: int) -> torch.Tensor:
    """``(N, pixels, cells)`` weights resizing ``cells`` onto pixels ``start..end`` (inclusive).

    PyTorch's bilinear ``align_corners=False`` rule: pixel ``p`` reads cell coordinate
    ``(p - start + 0.5) * cells / length - 0.5``, clamped at 0, from its two nearest cells.
    Rows of pixels outside ``start..end`` (or the image) are zero.
    """
    length = (end - start + 1).clamp_min(1).float()  # torchvision: max(int(x1 - x0 + 1), 1)
    pixel = torch.arange(pixels, device=start.device)
    local = (pixel[None, :] - start[:, None]).float()
    inside = ((pixel[None, :] >= start[:, None]) & (pixel[None, :] <= end[:, None])).float()
    real = ((local + 0.5) * (cells / length)[:, None] - 0.5).clamp_min(0.0)
    low = real.floor().clamp_max(cells - 1)
    frac = real - low
    low = low.long()
    high = (low + 1).clamp_max(cells - 1)
    weights = torch.zeros((start.shape[0], pixels, cells), device=start.device)
    weights.scatter_add_(2, low[..., None], ((1.0 - frac) * inside)[..., None])
    weights.scatter_add_(2, high[..., None], (frac * inside)[..., None])
    return weights



@dataclass(frozen=True, eq=False)
class Detections:
    """A segmenter's heads in one image, in pixels of that image, most confident first.

    Attributes:
        boxes: ``(N, 4)`` float32 xyxy; the mask's tight box when the model's config says
            ``box_from_mask`` (else the box head's).
        scores: ``(N,)`` float32 in ``[0, 1]``.
        labels: ``(N,)`` int64 model labels ``1..K`` (1 = ``head`` for a class-agnostic model).
        masks: ``(N, H, W)`` bool, never empty: a head whose mask thresholds to nothing is dropped.
    """

    boxes: torch.Tensor
    scores: torch.Tensor
    labels: torch.Tensor
    masks: torch.Tensor

    def __len__(self) -> int:
        return len(self.boxes)


@torch.inference_mode()
def detect(model: MaskRCNN, images: Sequence[torch.Tensor], box_from_mask: bool, mask_thresh: float = 0.5,
           amp: bool = False) -> list[Detections]:
    """Run a segmenter and turn its output into :class:`Detections`: the one detection path.

    Evaluation, crop-set writing and the pipeline all call this, so each sees what the others
    see. It is the model's own forward pass, stage by stage, but for one step: masks are
    pasted all at once (:func:`paste_masks`) rather than by torchvision's loop, which reads
    every box back to the host (a device sync per head on a GPU).

    Args:
        model: A torchvision Mask R-CNN in eval mode; its ``roi_heads.score_thresh`` applies.
        images: ``(3, H, W)`` float RGB tensors in ``[0, 1]`` on the model's device.
        box_from_mask: Report each mask's tight box (the segmenter config's ``box_from_mask``).
        mask_thresh: Mask probability above which a pixel belongs to the head.
        amp: Autocast (fp16 on CUDA; ignored elsewhere).

    Returns:
        One :class:`Detections` per image, on the images' device.
    """
    device_type = images[0].device.type if len(images) else "cpu"
    with torch.autocast(device_type, enabled=amp and device_type == "cuda"):
        batch, _ = model.transform(list(images))
        features = model.backbone(batch.tensors.contiguous(memory_format=torch.channels_last))
        proposals, _ = model.rpn(batch, features)
        outputs, _ = model.roi_heads(features, proposals, batch.image_sizes)
    detections = []
    for out, resized, image in zip(outputs, batch.image_sizes, images):
        size = (image.shape[-2], image.shape[-1])
        boxes = resize_boxes(out["boxes"].float(), resized, size)
        masks = paste_masks(out["masks"], boxes, size)[:, 0] > mask_thresh
        keep = masks.flatten(1).any(1)  # a head with no pixel has nothing to show or classify
        boxes, masks = boxes[keep], masks[keep]
        if box_from_mask:
            boxes = boxes_from_masks(masks, boxes)
        detections.append(Detections(boxes, out["scores"][keep].float(), out["labels"][keep], masks))
    return detections


def predict_dataset(model: MaskRCNN, dataset: HeadDataset, device: torch.device,
                    batch_size: int = 2, category_ids: Sequence[int] | None = None,
                    progress: bool = True, box_from_mask: bool = False) -> list[dict[str, Any]]:
    """COCO results (bbox and RLE segm) of ``model`` on every image of ``dataset``.

    Args:
        category_ids: COCO category id of each model label 1..K; default: the label itself.
        box_from_mask: Report each mask's tight box instead of the box head's.
    """
    from headseg.evaluation import to_coco_results  # noqa: PLC0415 (evaluation imports torch only)

    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False,
                                         num_workers=0, collate_fn=collate)
    model.eval()
    results: list[dict[str, Any]] = []
    for images, targets in tqdm(loader, desc="predict", disable=not progress, leave=False):
        for det, tgt in zip(detect(model, [im.to(device) for im in images], box_from_mask), targets):
            labels = det.labels.cpu().numpy()
            cats = labels if category_ids is None else np.asarray(category_ids)[labels - 1]
            results += to_coco_results(tgt["image_id"], det.boxes.cpu().numpy(), det.scores.cpu().numpy(),
                                       cats, det.masks.cpu().numpy())
    return results


def category_ids_by_name(class_names: Sequence[str], coco: CocoHeads) -> list[int]:
    """The COCO category id of each model class, matched by name (never by position).

    Raises:
        ValueError: a model class has no category of that name in ``coco``.
    """
    ids = {name: cid for cid, name in coco.categories.items()}
    missing = [n for n in class_names if n not in ids]
    if missing:
        raise ValueError(f"the segmenter's classes {missing} are not categories of {coco.path} "
                         f"(it has {sorted(ids)}); evaluate on a file with the same category names")
    return [ids[n] for n in class_names]


def evaluate_segmenter(model: MaskRCNN, coco: CocoHeads, device: torch.device,
                       class_names: Sequence[str] = ("head",), derived_mask: str = "ellipse",
                       progress: bool = True, box_from_mask: bool = False
                       ) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """COCO bbox and segm metrics of ``model`` on ``coco`` and the raw results.

    Args:
        class_names: The model's classes (label ``k`` is ``class_names[k - 1]``). ``["head"]``
            scores localisation alone (class-agnostic); other names are matched to ``coco``'s
            categories by name, whatever their ids there.
    """
    from headseg.evaluation import coco_evaluate  # noqa: PLC0415

    agnostic = list(class_names) == ["head"]
    dataset = HeadDataset(coco, class_agnostic=agnostic, derived_mask=derived_mask)
    cat_ids = None if agnostic else category_ids_by_name(class_names, coco)
    results = predict_dataset(model, dataset, device, category_ids=cat_ids, progress=progress,
                              box_from_mask=box_from_mask)
    metrics = coco_evaluate(coco.dataset, results, ("bbox", "segm"), class_agnostic=agnostic)
    return metrics, results


# ----------------------------------------------------------------------------- training


def cpu_runs_bf16() -> bool:
    """Whether this CPU runs bf16 matrix products natively (AVX512-BF16 or AMX).

    Without them oneDNN emulates bf16 and autocast is far slower than fp32: on a 2-core AMD EPYC
    with AVX2 only, a bf16 hhw run trained at about 0.2 images/s against 1.7 in fp32
    (docs/PERFORMANCE.md).
    """
    checks = (getattr(torch.cpu, "_is_avx512_bf16_supported", None), getattr(torch.cpu, "_is_amx_tile_supported", None))
    return any(check() for check in checks if check is not None)


def autocast_settings(amp: bool, device: torch.device, force: bool = False) -> dict[str, Any]:
    """``torch.autocast`` arguments for ``train.amp`` on ``device``.

    fp16 on CUDA (with a gradient scaler, see :func:`train_segmenter`), bf16 on the CPU: bf16
    keeps fp32's exponent range, so no loss scaling, and CPUs with AVX512-BF16 or AMX run its
    matrix products natively (docs/PERFORMANCE.md has the measured speed-up and val AP). On a
    CPU without them (:func:`cpu_runs_bf16`) bf16 is emulated and slower than fp32, so ``amp``
    is turned off with a warning unless ``force`` (for benchmarks that measure that cost).
    """
    if amp and device.type == "cpu" and not force and not cpu_runs_bf16():
        log.warning("train.amp: this CPU has no AVX512-BF16 or AMX, where bf16 autocast runs "
                    "several times slower than fp32; training in fp32")
        amp = False
    dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
    return {"device_type": device.type, "dtype": dtype, "enabled": bool(amp)}


def _set_param_groups(model: nn.Module, cfg: SegConfig) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    t = cfg.train
    if t.optimizer == "sgd":
        return torch.optim.SGD(params, lr=t.lr, momentum=t.momentum, weight_decay=t.weight_decay)
    if t.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=t.lr, weight_decay=t.weight_decay)
    raise ValueError(f"train.optimizer={t.optimizer!r} is not one of sgd, adamw")


def _select_metric_keys() -> list[str]:
    from headseg.evaluation import STAT_NAMES  # noqa: PLC0415

    return [f"{iou}/{name}" for iou in ("bbox", "segm") for name in STAT_NAMES]


def check_select_metric(name: str) -> None:
    """Refuse a ``train.select_metric`` that validation never reports (it would never pick).

    Per-category keys (``bbox/AP50/<class>``) are accepted too.

    Raises:
        ValueError: naming the closest valid keys.
    """
    valid = _select_metric_keys()
    if name in valid or name.rsplit("/", 1)[0] in valid:
        return
    close = difflib.get_close_matches(name, valid, n=3)
    hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    raise ValueError(f"train.select_metric={name!r} is not a validation metric{hint} "
                     f"(valid: {', '.join(valid)}, or KEY/<class name>)")


def init_from_checkpoint(model: MaskRCNN, path: str | Path, class_names: Sequence[str]) -> None:
    """Load a trained segmenter's weights into ``model`` to fine-tune it (``train.init_from``).

    Raises:
        ValueError: the checkpoint has other classes or another architecture.
    """
    state = load_checkpoint(path, "segmenter")
    if list(state["class_names"]) != list(class_names):
        raise ValueError(f"train.init_from {path} was trained on classes {state['class_names']}, this run's "
                         f"data has {list(class_names)}; set data.class_agnostic to match or start from ImageNet")
    try:  # a packed file holds fp16 weights: copied into the fp32 parameters
        model.load_state_dict(state["model"])
    except RuntimeError as e:
        raise ValueError(f"train.init_from {path} does not fit this run's model.* settings "
                         f"({str(e).splitlines()[1].strip() if len(str(e).splitlines()) > 1 else e}); "
                         f"use the architecture it was trained with: {state['config']['model']}") from None
    log.info("weights from %s (epoch %s)", path, state.get("epoch"))


def _training_set(cfg: SegConfig, train_coco: CocoHeads, class_names: list[str]) -> torch.utils.data.Dataset:
    """``data.train_json``'s images, then those of every ``data.extra_train_json``, as one set."""
    transforms = train_transforms(cfg.train.hflip, cfg.train.scale_jitter, cfg.train.color_jitter)
    parts = [HeadDataset(train_coco, transforms, cfg.data.class_agnostic, cfg.data.derived_mask)]
    for path in cfg.data.extra_train_json:
        coco = load_coco(path, cfg.data.image_root or None)
        if not cfg.data.class_agnostic and coco.class_names != class_names:
            raise ValueError(f"data.extra_train_json {path} has categories {coco.class_names}, "
                             f"data.train_json {class_names}; they must match unless data.class_agnostic")
        parts.append(HeadDataset(coco, transforms, cfg.data.class_agnostic, cfg.data.derived_mask))
        log.info("training on %s too: %d images", path, len(parts[-1]))
    for path, part in zip([cfg.data.train_json, *cfg.data.extra_train_json], parts):
        if len(part) == 0:
            raise ValueError(f"{path} has no images to train on")
    return parts[0] if len(parts) == 1 else torch.utils.data.ConcatDataset(parts)


def train_segmenter(cfg: SegConfig, out_dir: str | Path, resume: bool = False,
                    device: str | torch.device | None = None, progress: bool = True) -> dict[str, Any]:
    """Train a head segmenter; the loop behind ``tools/train_seg.py``.

    The stage's model, data and loss; the epoch loop, checkpoints and logs are
    :mod:`headseg.engine`'s. Writes to ``out_dir``: ``last.pt`` (every epoch and every
    ``train.checkpoint_minutes`` within one, atomically, with optimizer state for ``--resume``),
    ``best.pt`` (best val ``train.select_metric``; without ``data.val_json`` the lowest training
    loss), ``metrics.csv``, ``curves.png`` and ``config.yaml``. Under ``torchrun`` it trains data-parallel (DDP).

    Returns:
        ``{"best": best metric value, "epochs": epochs run, "out_dir": Path, "last": metrics}``.

    Raises:
        NonFiniteLossError: the loss became NaN/inf; the message names epoch and step.
        ValueError: an unknown ``train.select_metric``, or no images to train on.
    """
    t = cfg.train
    check_select_metric(t.select_metric)
    d = init_distributed()
    out_dir = Path(out_dir)
    checkpointer = Checkpointer(out_dir, "segmenter", ("bbox/AP50", "bbox/AP", "segm/AP50", "segm/AP"), d)
    device = torch.device(device) if device else default_device(d)
    seed_everything(t.seed)
    train_coco = load_coco(cfg.data.train_json, cfg.data.image_root or None)
    val_coco = load_coco(cfg.data.val_json, cfg.data.image_root or None) if cfg.data.val_json else None
    if val_coco is None:
        log.info("no data.val_json: the lowest training loss picks best.pt, not %s", t.select_metric)
    class_names = ["head"] if cfg.data.class_agnostic else train_coco.class_names
    dataset = _training_set(cfg, train_coco, class_names)

    model = build_segmenter(cfg.model, len(class_names)).to(device)
    optimizer = _set_param_groups(model, cfg)
    steps_per_epoch = -(-len(dataset) // (t.batch_size * d.world_size))
    if t.max_iters:
        steps_per_epoch = min(steps_per_epoch, t.max_iters)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_lambda(steps_per_epoch * t.epochs, t.warmup_iters, t.schedule, t.milestones))
    if t.channels_last:
        model.to(memory_format=torch.channels_last)
    autocast = autocast_settings(t.amp, device)
    # fp16 needs its loss scaled against underflow; bf16 has fp32's exponent range and does not.
    scaler = torch.amp.GradScaler("cuda", enabled=autocast["dtype"] == torch.float16)

    state = checkpointer.resume(resume)
    if state is None and t.init_from:
        init_from_checkpoint(model, t.init_from, class_names)
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
    checkpointer.write_config(to_dict(cfg))

    train_model: nn.Module = model
    if d.enabled:
        train_model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)

    def compute_losses(batch: tuple[tuple, tuple]) -> tuple[dict[str, torch.Tensor], int]:
        images, targets = batch
        images = [im.to(device) for im in images]
        targets = [{k: (v.to(device) if torch.is_tensor(v) else v) for k, v in tgt.items()} for tgt in targets]
        return train_model(images, targets), len(images)

    def training_state() -> dict[str, Any]:
        return {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict()}

    def save_partial(progress: dict[str, Any]) -> None:
        checkpointer.save_partial(segmenter_checkpoint(model, cfg, class_names, metrics=last_metrics,
                                                       **training_state()), progress)

    last_metrics: dict[str, float] = {}
    partial = checkpointer.partial
    for epoch in range(checkpointer.start_epoch, t.epochs):
        # Data order and augmentation depend only on (seed, epoch, position), and a mid-epoch
        # checkpoint restored the generators of its step: a resumed run trains as one never stopped.
        if partial is None:
            torch.manual_seed(t.seed * 1000 + epoch)
        sampler = EpochSampler(len(dataset), t.seed, epoch, (partial or {}).get("step", 0) * t.batch_size,
                               d.rank, d.world_size)
        # The loader's own generator: the workers' base seed must not draw from the main stream.
        loader = torch.utils.data.DataLoader(
            SeededSamples(dataset), batch_size=t.batch_size, sampler=sampler, num_workers=cfg.data.workers,
            collate_fn=collate, generator=torch.Generator().manual_seed(t.seed), persistent_workers=False)
        train_model.train()
        stats = train_one_epoch(
            train_model, loader, optimizer, compute_losses, epoch=epoch, epochs=t.epochs,
            steps=steps_per_epoch, distributed=d, scheduler=scheduler, scaler=scaler, autocast=autocast,
            clip_grad_norm=t.clip_grad_norm, last_good=checkpointer.last_path,
            hint="Lower train.lr or raise train.warmup_iters.", log_every=t.log_every, progress=progress,
            resume_from=partial, save_every=t.checkpoint_minutes * 60, save_partial=save_partial)
        partial = None
        steps, seconds, _ = stats.pop("steps"), stats.pop("seconds"), stats.pop("samples")
        row = {"epoch": epoch, "lr": scheduler.get_last_lr()[0], "epoch_seconds": seconds,
               "images_per_second": steps * t.batch_size * d.world_size / max(seconds, 1e-9), **stats}
        if d.is_main:
            if val_coco is not None:
                last_metrics, _ = evaluate_segmenter(model, val_coco, device, class_names,
                                                     cfg.data.derived_mask, progress,
                                                     cfg.model.box_from_mask)
                row.update({k: v for k, v in last_metrics.items() if k.count("/") == 1})
                score = last_metrics[t.select_metric]
            else:
                score = -row["loss"]
            checkpointer.end_epoch(epoch, segmenter_checkpoint(model, cfg, class_names, metrics=last_metrics,
                                                               **training_state()), score, row)
        d.barrier()
    return {"best": checkpointer.best, "epochs": t.epochs, "out_dir": out_dir, "last": last_metrics}
