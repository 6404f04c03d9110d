"""Numbers out: COCO detection/segmentation metrics (through pycocotools) and attire metrics.

Stage 1 (heads) is scored the COCO way by wrapping ``pycocotools.cocoeval.COCOeval``; this
module only prepares its inputs (copies, defaults, validation with readable errors) and
flattens its outputs into ``dict[str, float]``. Nothing of pycocotools is re-implemented
except reading per-category numbers out of ``COCOeval.eval['precision']``.

Stage 2 (attire classes) is scored with pure numpy: a confusion matrix and the metrics derived
from it, plus a PNG and a CSV of the matrix for reports, and bootstrap intervals of those
metrics over the crops (``scipy.stats.bootstrap``).

Box formats: arrays handed in by the model are ``xyxy`` (x0, y0, x1, y1) in pixels; COCO records
(ground truth and results) are ``xywh`` (x, y, width, height) in pixels.
"""

from __future__ import annotations

import contextlib
import copy
import csv
import dataclasses
import difflib
import io
import json
import logging
import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval, Params

from headseg.data import derived_masks_of
from headseg.io import atomic_write, write_text

if TYPE_CHECKING:
    import torch

    from headseg.attributes import AttributeSchema, FaceToHead

logger = logging.getLogger(__name__)

IOU_TYPES = ("bbox", "segm")
# Names of ``COCOeval.stats`` entries, in pycocotools' order. ``AR100`` is the recall at the
# last ``maxDets`` entry and is renamed ``AR{max_dets}`` when that is raised.
STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")
AGNOSTIC_CATEGORY = {"id": 1, "name": "head"}
# COCO's object-area ranges in px^2, [low, high), those of APs / APm / APl (pycocotools' own)
AREA_RANGES = {name: tuple(bounds) for name, bounds in zip(Params(iouType="bbox").areaRngLbl,
                                                            Params(iouType="bbox").areaRng) if name != "all"}

# ----------------------------------------------------------------------------- COCO results


def _to_numpy(x: np.ndarray | torch.Tensor | Sequence[Any], name: str) -> np.ndarray:
    if hasattr(x, "detach"):  # a torch.Tensor, without importing torch for numpy callers
        return x.detach().cpu().numpy()
    if isinstance(x, np.ndarray):
        return x
    try:
        return np.asarray(x)
    except (TypeError, ValueError) as e:
        raise TypeError(f"{name} must be a numpy array or torch tensor; received {type(x).__name__} ({e})") from None


def to_coco_results(
    image_id: int,
    boxes_xyxy: np.ndarray | torch.Tensor,
    scores: np.ndarray | torch.Tensor,
    category_ids: np.ndarray | torch.Tensor,
    masks: np.ndarray | torch.Tensor | None = None,
) -> list[dict[str, Any]]:
    """Turn one image's detections into COCO results records (JSON-serialisable).

    Args:
        image_id: The image's ``id`` in the ground-truth COCO file.
        boxes_xyxy: ``(N, 4)`` float boxes, ``xyxy`` in pixels.
        scores: ``(N,)`` confidences in ``[0, 1]``.
        category_ids: ``(N,)`` integer COCO category ids.
        masks: ``None`` (boxes only) or ``(N, H, W)`` / ``(N, 1, H, W)`` binary masks, bool or
            integer dtype, at the image's full resolution. Mask R-CNN's float probabilities
            must be thresholded first (``masks > 0.5``) so the threshold is the caller's choice.

    Returns:
        ``N`` records ``{"image_id", "category_id", "bbox", "score"}``, ``bbox`` as ``xywh``
        Python floats, plus ``"segmentation"`` (compressed RLE whose ``counts`` is a ``str``)
        when ``masks`` is given. An empty list when ``N == 0``.

    Raises:
        ValueError: shapes disagree.
        TypeError: masks are float.
    """
    boxes = _to_numpy(boxes_xyxy, "boxes_xyxy").astype(np.float64, copy=False)
    scores_np = _to_numpy(scores, "scores").astype(np.float64, copy=False).reshape(-1)
    cats = _to_numpy(category_ids, "category_ids").reshape(-1)
    if boxes.size == 0:
        boxes = boxes.reshape(0, 4)
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"boxes_xyxy must have shape (N, 4); received {tuple(boxes.shape)}")
    n = boxes.shape[0]
    if len(scores_np) != n or len(cats) != n:
        raise ValueError(
            f"boxes_xyxy, scores and category_ids must have the same length N; received "
            f"{n}, {len(scores_np)} and {len(cats)}"
        )
    if n and not np.all(np.equal(np.mod(cats, 1), 0)):
        raise ValueError(f"category_ids must be integers; received {cats.tolist()[:10]}")
    masks_np: np.ndarray | None = None
    if masks is not None:
        masks_np = _to_numpy(masks, "masks")
        if masks_np.ndim == 4 and masks_np.shape[1] == 1:
            masks_np = masks_np[:, 0]
        if masks_np.ndim != 3 or masks_np.shape[0] != n:
            raise ValueError(
                f"masks must have shape (N, H, W) or (N, 1, H, W) with N={n}; received {tuple(masks_np.shape)}"
            )
        if masks_np.dtype.kind == "f":
            raise TypeError(
                f"masks must be binary (bool or integer); received {masks_np.dtype} values. "
                "Threshold probabilities first, e.g. masks > 0.5"
            )

    xywh = boxes.copy()
    xywh[:, 2:] -= xywh[:, :2]
    records: list[dict[str, Any]] = []
    for i in range(n):
        record: dict[str, Any] = {
            "image_id": int(image_id),
            "category_id": int(cats[i]),
            "bbox": [float(v) for v in xywh[i]],
            "score": float(scores_np[i]),
        }
        if masks_np is not None:
            rle = mask_utils.encode(np.asfortranarray((masks_np[i] != 0).astype(np.uint8)))
            rle["counts"] = rle["counts"].decode("ascii")
            record["segmentation"] = rle
        records.append(record)
    return records


# ----------------------------------------------------------------------------- ground truth


def _load_gt_dataset(gt: COCO | str | Path | Mapping[str, Any]) -> dict[str, Any]:
    """A deep copy of the ground-truth dataset dict: pycocotools rewrites annotations in place."""
    if isinstance(gt, COCO):
        return copy.deepcopy(gt.dataset)
    if isinstance(gt, (str, Path)):
        path = Path(gt)
        if not path.is_file():
            raise FileNotFoundError(f"ground-truth COCO file {path} does not exist")
        try:
            with path.open() as f:
                data = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"ground-truth COCO file {path} is not valid JSON ({e})") from None
        if not isinstance(data, dict):
            raise ValueError(f"ground-truth COCO file {path} holds a {type(data).__name__}; expected a JSON object")
        return data
    if isinstance(gt, Mapping):
        return copy.deepcopy(dict(gt))
    raise TypeError(
        f"gt must be a pycocotools COCO object, a path to a COCO JSON file or a COCO dict; "
        f"received {type(gt).__name__}"
    )


def _ann_rle(seg: Any, height: int, width: int) -> dict[str, Any]:
    """Compressed RLE of a COCO segmentation (polygons, uncompressed or compressed RLE)."""
    if isinstance(seg, list):
        return mask_utils.merge(mask_utils.frPyObjects(seg, height, width))
    if isinstance(seg, dict) and isinstance(seg.get("counts"), list):
        return mask_utils.frPyObjects(seg, height, width)
    return seg


def _prepare_gt(data: dict[str, Any], iou_types: Sequence[str], class_agnostic: bool) -> dict[str, Any]:
    """Validate and fill COCOeval's required fields (``iscrowd``, ``area``, ``bbox``) in place."""
    for key in ("images", "categories"):
        if not isinstance(data.get(key), list):
            raise ValueError(
                f"ground truth has no '{key}' list (keys: {sorted(data)}); a COCO file needs "
                "'images', 'annotations' and 'categories'"
            )
    data.setdefault("annotations", [])
    images = {img["id"]: img for img in data["images"]}
    cat_ids = {c["id"] for c in data["categories"]}
    bad_img = [a.get("id") for a in data["annotations"] if a.get("image_id") not in images]
    if bad_img:
        raise ValueError(f"ground-truth annotations {bad_img[:10]} refer to image ids missing from 'images'")
    bad_cat = [a.get("id") for a in data["annotations"] if a.get("category_id") not in cat_ids]
    if bad_cat:
        raise ValueError(
            f"ground-truth annotations {bad_cat[:10]} have a category_id that does not exist in "
            f"'categories' (ids {sorted(cat_ids)})"
        )
    if "segm" in iou_types:
        no_mask = [a.get("id") for a in data["annotations"] if not a.get("segmentation")]
        if no_mask:
            raise ValueError(
                f"segm evaluation needs a mask for every ground-truth annotation; annotations "
                f"{no_mask[:10]} have no 'segmentation'. Derive masks from boxes "
                "(headseg.data.box_to_polygon) or evaluate with iou_types=('bbox',)"
            )
    for ann in data["annotations"]:
        ann.setdefault("iscrowd", 0)
        seg = ann.get("segmentation")
        img = images[ann["image_id"]]
        rle = None
        if seg and ("bbox" not in ann or "area" not in ann):
            rle = _ann_rle(seg, img["height"], img["width"])
        if "bbox" not in ann:
            if rle is None:
                raise ValueError(f"ground-truth annotation {ann.get('id')} has neither 'bbox' nor 'segmentation'")
            ann["bbox"] = mask_utils.toBbox(rle).tolist()
        if "area" not in ann:
            ann["area"] = float(mask_utils.area(rle)) if rle is not None else float(ann["bbox"][2] * ann["bbox"][3])
    if class_agnostic:
        data["categories"] = [dict(AGNOSTIC_CATEGORY)]
        for ann in data["annotations"]:
            ann["category_id"] = AGNOSTIC_CATEGORY["id"]
    return data


def _make_coco(data: dict[str, Any]) -> COCO:
    """A pycocotools COCO object over ``data`` without writing a file, its prints silenced."""
    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


# ----------------------------------------------------------------------------- results


def _check_results(results: Sequence[Mapping[str, Any]], images: Mapping[int, Any], cat_ids: set[int],
                   class_agnostic: bool) -> None:
    if isinstance(results, (str, bytes, Mapping)) or not isinstance(results, Sequence):
        raise TypeError(
            f"results must be a list of COCO result dicts (see to_coco_results); received {type(results).__name__}"
        )
    for i, r in enumerate(results):
        if not isinstance(r, Mapping):
            raise TypeError(f"results[{i}] is a {type(r).__name__}; expected a dict with image_id, category_id, score")
        missing = [k for k in ("image_id", "category_id", "score") if k not in r]
        if missing:
            raise ValueError(f"results[{i}] lacks {missing}; each record needs image_id, category_id and score")
    unknown_imgs = sorted({r["image_id"] for r in results} - set(images))
    if unknown_imgs:
        raise ValueError(
            f"results refer to image ids {unknown_imgs[:10]}{' ...' if len(unknown_imgs) > 10 else ''} "
            f"that are not in the ground truth ({len(images)} images); evaluate against the COCO file "
            "the predictions were made for"
        )
    if not class_agnostic:
        unknown_cats = sorted({r["category_id"] for r in results} - cat_ids)
        if unknown_cats:
            raise ValueError(
                f"results use category ids {unknown_cats[:10]} that are not in the ground truth "
                f"categories {sorted(cat_ids)}; pass class_agnostic=True to ignore categories"
            )


def _results_for(results: Sequence[Mapping[str, Any]], iou_type: str, images: Mapping[int, Any],
                 class_agnostic: bool) -> list[dict[str, Any]]:
    """Copies of ``results`` shaped for one ``iou_type`` (pycocotools' loadRes mutates them)."""
    out: list[dict[str, Any]] = []
    for i, r in enumerate(results):
        rec = {"image_id": r["image_id"], "category_id": r["category_id"], "score": float(r["score"])}
        if class_agnostic:
            rec["category_id"] = AGNOSTIC_CATEGORY["id"]
        if iou_type == "bbox":
            bbox = r.get("bbox")
            if bbox is None or len(bbox) != 4:
                raise ValueError(
                    f"bbox evaluation needs a 4-number 'bbox' (xywh) in every result; results[{i}] has "
                    f"{bbox!r}. Build records with to_coco_results or drop 'bbox' from iou_types"
                )
            rec["bbox"] = [float(v) for v in bbox]
        else:
            seg = r.get("segmentation")
            if not seg:
                raise ValueError(
                    f"segm evaluation needs a 'segmentation' (RLE) in every result; results[{i}] "
                    f"(image {r['image_id']}) has none. Pass masks to to_coco_results or use iou_types=('bbox',)"
                )
            img = images[r["image_id"]]
            # No 'bbox' on purpose: with one, loadRes takes the box area as the instance area,
            # which would sort masks into the wrong small/medium/large bucket.
            rec["segmentation"] = _ann_rle(copy.deepcopy(seg), img["height"], img["width"])
        out.append(rec)
    return out


# ----------------------------------------------------------------------------- COCO evaluation


def _mean_valid(values: np.ndarray) -> float:
    """Mean over entries > -1 (pycocotools marks 'no ground truth' with -1); -1.0 if none."""
    valid = values[values > -1]
    return float(np.mean(valid)) if valid.size else -1.0


def _category_keys(categories: Sequence[Mapping[str, Any]]) -> dict[int, str]:
    """Category id -> name used in metric keys; repeated names get ``#id`` so keys stay unique."""
    names = [str(c.get("name", c["id"])) for c in categories]
    return {c["id"]: (n if names.count(n) == 1 else f"{n}#{c['id']}") for c, n in zip(categories, names)}


def coco_evaluate(
    gt: COCO | str | Path | Mapping[str, Any],
    results: Sequence[Mapping[str, Any]],
    iou_types: Sequence[str] = IOU_TYPES,
    class_agnostic: bool = False,
    per_category: bool = True,
    verbose: bool = False,
    max_dets: int = 100,
) -> dict[str, float]:
    """COCO AP/AR of detection results, by pycocotools' ``COCOeval``.

    The ground truth is deep-copied (pycocotools rewrites annotations in place); missing
    ``iscrowd`` (0), ``area`` and ``bbox`` fields are filled from the masks or boxes. Images
    without annotations take part in the evaluation: detections on them are false positives.

    Empty ``results`` (or none of a kind) are evaluated against an empty detection set instead
    of going through ``loadRes`` (which fails on ``[]``): AP and AR are 0.0 wherever ground truth
    exists and -1.0 where it does not (e.g. ``APs`` without small heads), as COCO reports.

    Segm results are evaluated without their ``bbox`` so that the small/medium/large areas are
    mask areas, as for the ground truth.

    Args:
        gt: Ground truth as a ``pycocotools.coco.COCO``, a COCO JSON path, or a COCO dict.
            Boxes ``xywh``; masks as polygons or RLE.
        results: COCO results records (see :func:`to_coco_results`): ``image_id``,
            ``category_id``, ``score``, ``bbox`` (``xywh``) for bbox and ``segmentation``
            (RLE or polygons) for segm.
        iou_types: Any of ``"bbox"``, ``"segm"``.
        class_agnostic: Score localisation only: every ground-truth category becomes one
            ``{"id": 1, "name": "head"}`` and every result's ``category_id`` becomes 1.
        per_category: Add per-category AP and AP50.
        verbose: Let pycocotools print its summary tables.
        max_dets: Last entry of ``COCOeval.params.maxDets`` (1, 10, ``max_dets``). Raise it above
            100 for crowded images, where COCO would otherwise drop the lowest-scored
            detections; the ``AR100`` key is then named ``AR{max_dets}``. pycocotools' own
            printed ``AP`` line reads -1 in that case; the returned ``AP`` is correct.

    Returns:
        A flat dict, for each ``iou`` in ``iou_types``: ``"{iou}/AP"``, ``AP50``, ``AP75``,
        ``APs``, ``APm``, ``APl``, ``AR1``, ``AR10``, ``AR100``, ``ARs``, ``ARm``, ``ARl``
        (``COCOeval.stats`` in order, values in ``[0, 1]`` or -1.0 where there is no ground
        truth), and with ``per_category`` ``"{iou}/AP/{name}"`` and ``"{iou}/AP50/{name}"``
        (mean precision at area ``all`` and the last ``maxDets``; -1.0 for a category without
        ground truth). ``"segm/derived_masks": 1.0`` is added, with a logged warning, when
        the ground-truth masks were derived from boxes (see :func:`headseg.data.derived_masks_of`).

    Raises:
        FileNotFoundError: ``gt`` is a path that does not exist.
        ValueError: unknown iou type, results on image ids not in ``gt``, unknown category ids,
            results without the field an iou type needs, ground truth without masks for segm.
        TypeError: ``gt`` or ``results`` of the wrong type.
    """
    iou_types = tuple(iou_types)
    bad = [t for t in iou_types if t not in IOU_TYPES]
    if bad or not iou_types:
        raise ValueError(f"iou_types must be a non-empty subset of {IOU_TYPES}; received {iou_types}")
    if int(max_dets) < 10:
        raise ValueError(f"max_dets must be at least 10 (COCO also reports AR1 and AR10); received {max_dets}")
    raw = _load_gt_dataset(gt)
    derived = derived_masks_of(raw) is not None
    data = _prepare_gt(raw, iou_types, class_agnostic)
    coco_gt = _make_coco(data)
    _check_results(results, coco_gt.imgs, set(coco_gt.cats), class_agnostic)
    names = _category_keys(data["categories"])

    metrics: dict[str, float] = {}
    for iou_type in iou_types:
        dets = _results_for(results, iou_type, coco_gt.imgs, class_agnostic)
        sink = contextlib.nullcontext() if verbose else contextlib.redirect_stdout(io.StringIO())
        with sink:
            if dets:
                coco_dt = coco_gt.loadRes(dets)
            else:
                coco_dt = _make_coco({"images": list(data["images"]),
                                      "categories": copy.deepcopy(data["categories"]), "annotations": []})
            evaluator = COCOeval(coco_gt, coco_dt, iouType=iou_type)
            evaluator.params.maxDets = [1, 10, int(max_dets)]
            evaluator.evaluate()
            evaluator.accumulate()
            evaluator.summarize()
        precision = evaluator.eval["precision"]  # [T iou, R recall, K cat, A area, M maxDets]
        stats = [float(s) for s in evaluator.stats]
        # pycocotools' summarize() asks for maxDets == 100 for the headline AP.
        stats[0] = _mean_valid(precision[:, :, :, 0, -1])
        for name, value in zip(STAT_NAMES, stats):
            if name == "AR100":
                name = f"AR{int(max_dets)}"
            metrics[f"{iou_type}/{name}"] = value
        if per_category:
            t50 = int(np.argmin(np.abs(evaluator.params.iouThrs - 0.5)))
            for k, cat_id in enumerate(evaluator.params.catIds):
                metrics[f"{iou_type}/AP/{names[cat_id]}"] = _mean_valid(precision[:, :, k, 0, -1])
                metrics[f"{iou_type}/AP50/{names[cat_id]}"] = _mean_valid(precision[t50, :, k, 0, -1])
        if iou_type == "segm" and derived:
            metrics["segm/derived_masks"] = 1.0
            logger.warning(
                "segm metrics are measured against masks derived from boxes, not drawn ground truth; "
                "treat them as a sanity check, not mask quality"
            )
    return metrics


def format_metrics_table(metrics: Mapping[str, float], keys: Sequence[str] | None = None) -> str:
    """A two-column, aligned text table of metrics for printing.

    Args:
        metrics: Flat ``name -> value`` dict, e.g. from :func:`coco_evaluate`. Where it also holds
            ``{name}/ci_low`` and ``{name}/ci_high`` (:func:`bootstrap_intervals`), a third column
            shows that interval on ``name``'s row.
        keys: Rows to show, in order; ``None`` shows all in the dict's order (but the interval ends).

    Returns:
        Lines ``name  value`` under a header, values with 4 decimals (integral counts above 1
        as integers), ending without a newline.

    Raises:
        ValueError: a key in ``keys`` is not in ``metrics`` (close matches are named).
    """
    if keys is None:
        keys = [k for k in metrics if not k.endswith(("/ci_low", "/ci_high"))]
    keys = list(keys)
    for key in keys:
        if key not in metrics:
            close = difflib.get_close_matches(key, list(metrics), n=3)
            hint = f"; did you mean {close}?" if close else f"; available: {sorted(metrics)[:20]}"
            raise ValueError(f"metric {key!r} is not in the metrics{hint}")

    def fmt(v: float) -> str:
        v = float(v)
        if v.is_integer() and abs(v) > 1:
            return str(int(v))
        return f"{v:.4f}"

    width = max([len("metric")] + [len(k) for k in keys])
    values = [fmt(metrics[k]) for k in keys]
    vwidth = max([len("value")] + [len(v) for v in values])
    intervals = [f"[{metrics[k + '/ci_low']:.4f}, {metrics[k + '/ci_high']:.4f}]"
                 if k + "/ci_low" in metrics and k + "/ci_high" in metrics else "" for k in keys]
    lines = [f"{'metric':<{width}}  {'value':>{vwidth}}", f"{'-' * width}  {'-' * vwidth}"]
    lines += [f"{k:<{width}}  {v:>{vwidth}}" for k, v in zip(keys, values)]
    if any(intervals):
        lines[0] += "  interval"
        lines[1] += "  " + "-" * len(max(intervals, key=len))
        lines[2:] = [f"{line}  {ci}".rstrip() for line, ci in zip(lines[2:], intervals)]
    return "\n".join(lines)


def operating_point(
    gt: COCO | str | Path | Mapping[str, Any],
    results: Sequence[Mapping[str, Any]],
    score_thresh: float,
    iou_thresh: float = 0.5,
    class_agnostic: bool = False,
) -> dict[str, float]:
    """Precision, recall and F1 of the detections scoring at least ``score_thresh``.

    Per image (and per category unless ``class_agnostic``), detections are taken in
    descending score order and each is matched to the unmatched non-crowd ground-truth box
    with the highest box IoU, if that IoU is at least ``iou_thresh`` (true positive). A
    detection that matches only a crowd region (``iscrowd=1``, IoU as COCO defines it for
    crowds: intersection over the detection's area) is ignored; any other is a false
    positive. Unmatched non-crowd ground truth are false negatives; crowd regions never are.

    Args:
        gt: As for :func:`coco_evaluate`.
        results: COCO results records with ``bbox`` (``xywh``).
        score_thresh: Keep detections with ``score >= score_thresh``.
        iou_thresh: Minimum box IoU of a match, in ``(0, 1]``.
        class_agnostic: Match boxes regardless of category.

    Returns:
        ``{"precision", "recall", "f1", "tp", "fp", "fn"}``; counts as floats. A ratio whose
        denominator is 0 is 0.0.

    Raises:
        ValueError: as for :func:`coco_evaluate`, or ``iou_thresh`` outside ``(0, 1]``.
    """
    if not 0.0 < iou_thresh <= 1.0:
        raise ValueError(f"iou_thresh must be in (0, 1]; received {iou_thresh}")
    data = _prepare_gt(_load_gt_dataset(gt), ("bbox",), class_agnostic)
    images = {img["id"]: img for img in data["images"]}
    _check_results(results, images, {c["id"] for c in data["categories"]}, class_agnostic)
    dets = [r for r in _results_for(results, "bbox", images, class_agnostic) if r["score"] >= score_thresh]

    groups: dict[tuple[int, int], tuple[list[dict[str, Any]], list[dict[str, Any]]]] = {}
    for ann in data["annotations"]:
        groups.setdefault((ann["image_id"], ann["category_id"]), ([], []))[0].append(ann)
    for det in dets:
        groups.setdefault((det["image_id"], det["category_id"]), ([], []))[1].append(det)

    tp = fp = fn = 0
    for gts, group_dets in groups.values():
        crowd = np.array([bool(g["iscrowd"]) for g in gts], dtype=bool)
        order = sorted(range(len(group_dets)), key=lambda i: -group_dets[i]["score"])  # stable on ties
        if gts and group_dets:
            ious = np.asarray(mask_utils.iou(
                np.array([group_dets[i]["bbox"] for i in order], dtype=np.float64),
                np.array([g["bbox"] for g in gts], dtype=np.float64),
                crowd.astype(np.uint8).tolist(),
            )).reshape(len(order), len(gts))
        else:
            ious = np.zeros((len(order), len(gts)))
        matched = np.zeros(len(gts), dtype=bool)
        for row in ious:
            candidates = np.where(~crowd & ~matched & (row >= iou_thresh), row, -1.0)
            if candidates.size and candidates.max() >= 0:
                matched[int(np.argmax(candidates))] = True
                tp += 1
            elif not np.any(crowd & (row >= iou_thresh)):
                fp += 1
        fn += int(np.sum(~crowd & ~matched))
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1, "tp": float(tp), "fp": float(fp), "fn": float(fn)}


# ----------------------------------------------------------------------------- classification


def _labels(y: np.ndarray | Sequence[int] | torch.Tensor, name: str) -> np.ndarray:
    arr = _to_numpy(y, name).reshape(-1)
    if arr.size and arr.dtype.kind not in "iub":
        if arr.dtype.kind == "f" and np.all(np.mod(arr, 1) == 0):
            return arr.astype(np.int64)
        raise TypeError(f"{name} must hold integer class indices; received dtype {arr.dtype}")
    return arr.astype(np.int64)


def confusion_matrix(
    y_true: np.ndarray | Sequence[int] | torch.Tensor,
    y_pred: np.ndarray | Sequence[int] | torch.Tensor,
    num_classes: int,
) -> np.ndarray:
    """Count matrix of true vs predicted class indices.

    Args:
        y_true: ``(N,)`` true class indices in ``[0, num_classes)``.
        y_pred: ``(N,)`` predicted class indices in ``[0, num_classes)``.
        num_classes: ``K``.

    Returns:
        ``(K, K)`` int64 array; ``cm[i, j]`` counts samples of true class ``i`` predicted ``j``
        (rows true, columns predicted).

    Raises:
        ValueError: lengths differ, ``num_classes < 1``, or a label is out of range.
    """
    if int(num_classes) < 1:
        raise ValueError(f"num_classes must be at least 1; received {num_classes}")
    k = int(num_classes)
    t, p = _labels(y_true, "y_true"), _labels(y_pred, "y_pred")
    if t.shape != p.shape:
        raise ValueError(f"y_true and y_pred must have the same length; received {t.size} and {p.size}")
    for name, arr in (("y_true", t), ("y_pred", p)):
        bad = arr[(arr < 0) | (arr >= k)]
        if bad.size:
            raise ValueError(
                f"{name} holds labels {sorted(set(bad.tolist()))[:10]} outside [0, {k}); "
                "expected class indices into class_names"
            )
    return np.bincount(t * k + p, minlength=k * k).reshape(k, k).astype(np.int64)


def classification_metrics(
    y_true: np.ndarray | Sequence[int] | torch.Tensor,
    y_pred: np.ndarray | Sequence[int] | torch.Tensor,
    class_names: Sequence[str],
) -> dict[str, float]:
    """Accuracy, balanced accuracy, macro F1 and per-class precision/recall/F1/support.

    Any ratio whose denominator is 0 is 0.0 (a class never predicted has precision 0.0; a class
    absent from ``y_true`` has recall 0.0).

    Args:
        y_true: ``(N,)`` true class indices into ``class_names``.
        y_pred: ``(N,)`` predicted class indices into ``class_names``.
        class_names: ``K`` distinct names, index ``i`` naming class ``i``.

    Returns:
        ``accuracy``; ``balanced_accuracy`` (mean recall over classes present in ``y_true``);
        ``macro_f1`` (mean F1 over classes that appear in ``y_true`` or ``y_pred``: a class with
        neither support nor predictions says nothing about the model and is excluded);
        ``macro_f1_labelled`` (mean F1 over the classes present in ``y_true``: a class the data
        never labels counts only through the recall it takes from the others, e.g. a
        classifier's ``not_visible`` on crops that all show a face; scikit-learn's ``f1_score``
        with ``labels=`` those classes); and for
        each class ``precision/{name}``, ``recall/{name}``, ``f1/{name}``, ``support/{name}``
        (support as a float count). With ``N == 0`` every value is 0.0.

    Raises:
        ValueError: as for :func:`confusion_matrix`, or repeated/empty ``class_names``.
    """
    names = list(class_names)
    if not names or len(set(names)) != len(names):
        raise ValueError(f"class_names must be non-empty and distinct; received {names}")
    cm = confusion_matrix(y_true, y_pred, len(names)).astype(np.float64)
    diag = np.diag(cm)
    support = cm.sum(axis=1)
    predicted = cm.sum(axis=0)
    recall = np.divide(diag, support, out=np.zeros_like(diag), where=support > 0)
    precision = np.divide(diag, predicted, out=np.zeros_like(diag), where=predicted > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(diag), where=denom > 0)
    total = cm.sum()
    present = support > 0
    seen = present | (predicted > 0)
    metrics: dict[str, float] = {
        "accuracy": float(diag.sum() / total) if total else 0.0,
        "balanced_accuracy": float(recall[present].mean()) if present.any() else 0.0,
        "macro_f1": float(f1[seen].mean()) if seen.any() else 0.0,
        "macro_f1_labelled": float(f1[present].mean()) if present.any() else 0.0,
    }
    for i, name in enumerate(names):
        metrics[f"precision/{name}"] = float(precision[i])
        metrics[f"recall/{name}"] = float(recall[i])
        metrics[f"f1/{name}"] = float(f1[i])
        metrics[f"support/{name}"] = float(support[i])
    return metrics


def _check_cm(cm: np.ndarray, class_names: Sequence[str]) -> np.ndarray:
    cm = np.asarray(cm)
    k = len(class_names)
    if cm.shape != (k, k):
        raise ValueError(f"confusion matrix must be ({k}, {k}) for {k} class names; received {cm.shape}")
    return cm


def plot_confusion_matrix(
    cm: np.ndarray,
    class_names: Sequence[str],
    path: str | Path,
    normalize: bool = True,
) -> Path:
    """Draw a confusion matrix as a PNG, counts annotated in every cell.

    Uses a bare ``matplotlib.figure.Figure`` (Agg canvas), so no pyplot state or GUI backend
    is touched.

    Args:
        cm: ``(K, K)`` counts, rows true, columns predicted (see :func:`confusion_matrix`).
        class_names: ``K`` names for the axes.
        path: Output PNG; written atomically.
        normalize: Colour cells by the row fraction (recall per true class) and show it under
            the count; otherwise colour by the count.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: PLC0415 (slow import)
    from matplotlib.figure import Figure  # noqa: PLC0415

    counts = _check_cm(cm, class_names)
    k = len(class_names)
    rows = counts.sum(axis=1, keepdims=True).astype(np.float64)
    frac = np.divide(counts, rows, out=np.zeros(counts.shape, dtype=np.float64), where=rows > 0)
    shown = frac if normalize else counts.astype(np.float64)
    vmax = 1.0 if normalize else max(float(shown.max()), 1.0)

    size = 1.2 + 0.7 * k
    fig = Figure(figsize=(size + 1.0, size))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    image = ax.imshow(shown, cmap="Blues", vmin=0.0, vmax=vmax)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    ax.set_xticks(range(k), labels=list(class_names), rotation=45, ha="right")
    ax.set_yticks(range(k), labels=list(class_names))
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title("confusion matrix" + (" (row-normalised)" if normalize else ""))
    for i in range(k):
        for j in range(k):
            text = f"{int(counts[i, j])}" + (f"\n{frac[i, j]:.0%}" if normalize else "")
            colour = "white" if shown[i, j] > 0.5 * vmax else "black"
            ax.text(j, i, text, ha="center", va="center", color=colour, fontsize=8)
    fig.tight_layout()
    return atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=100))


def write_confusion_csv(cm: np.ndarray, class_names: Sequence[str], path: str | Path) -> Path:
    """Write a confusion matrix as CSV: a header ``true\\pred,<names>`` then one row per true class.

    Args:
        cm: ``(K, K)`` counts, rows true, columns predicted.
        class_names: ``K`` names.
        path: Output CSV; written atomically.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    counts = _check_cm(cm, class_names)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["true\\pred", *class_names])
    for name, row in zip(class_names, counts):
        writer.writerow([name, *(int(v) for v in row)])
    return write_text(path, buf.getvalue())


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
    import torch  # noqa: PLC0415 (the rest of this module needs numpy only)
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


# ----------------------------------------------------------------------------- learning curves


@dataclasses.dataclass(frozen=True)
class LearningCurve:
    """A score's error against the share of the training data: ``1 - score = scale x share^-exponent``.

    The power law that learning curves of deep networks follow once past their smallest sets
    (Hestness et al., "Deep learning scaling is predictable, empirically", 2017): each doubling
    of the data multiplies the error by ``2^-exponent``. The fitted line goes through the runs'
    mean (log share, log error), where slope and intercept are uncorrelated, so another exponent
    (one standard error off) turns the line about that point.
    """

    exponent: float
    exponent_se: float  # the least-squares standard error of ``exponent``
    log_share_mean: float  # the runs' mean log share ...
    log_error_mean: float  # ... and mean log error: a point of every line of the fit
    runs: int

    @property
    def scale(self) -> float:
        """The fitted error at share 1 (all the data)."""
        return float(np.exp(self.log_error_mean + self.exponent * self.log_share_mean))

    def score(self, share: float | np.ndarray) -> float | np.ndarray:
        """The fitted score at ``share`` of the data (beyond 1: more data of the same kind)."""
        return 1.0 - self.scale * np.power(share, -self.exponent)

    def share_for(self, score: float, exponent: float | None = None) -> float:
        """The share of the data at which the fit reaches ``score`` (``inf`` when the error does
        not fall with the data); ``exponent`` turns the line, e.g. one standard error off."""
        b = self.exponent if exponent is None else exponent
        if not 0 < score < 1:
            raise ValueError(f"score={score}: expected a target in (0, 1)")
        if b <= 0:
            return math.inf
        return float(np.exp(self.log_share_mean + (self.log_error_mean - math.log1p(-score)) / b))


def fit_learning_curve(shares: Sequence[float], scores: Sequence[float]) -> LearningCurve:
    """Fit :class:`LearningCurve` to runs trained on shares of the same data, one point per run.

    Least squares of ``log(1 - score)`` on ``log(share)`` (``scipy.stats.linregress``), every run
    weighted alike, so several seeds at a share average there.

    Args:
        shares: Each run's share of the training data, in ``(0, 1]``.
        scores: Each run's score in ``[0, 1)`` (macro-F1, accuracy, AP...), higher better.

    Raises:
        ValueError: lengths differ, fewer than two distinct shares or three runs, or a value
            outside its range (a score of 1 has no error to fit).
    """
    from scipy.stats import linregress  # noqa: PLC0415 (slow import)

    x, y = np.asarray(shares, dtype=np.float64), np.asarray(scores, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"{x.shape[0] if x.ndim else 0} shares for {y.shape[0] if y.ndim else 0} scores; "
                         "give one share and one score per run")
    if len(np.unique(x)) < 2 or len(x) < 3:
        raise ValueError(f"shares {x.tolist()}: a curve needs runs at two shares at least, three runs in all")
    if not (np.all((x > 0) & (x <= 1)) and np.all((y >= 0) & (y < 1))):
        raise ValueError(f"shares {x.tolist()}, scores {y.tolist()}: expected shares in (0, 1] and scores in [0, 1)")
    log_share, log_error = np.log(x), np.log1p(-y)
    fit = linregress(log_share, log_error)
    return LearningCurve(float(-fit.slope), float(fit.stderr), float(log_share.mean()), float(log_error.mean()),
                         len(x))


def plot_learning_curve(shares: Sequence[float], scores: Sequence[float], curve: LearningCurve, path: str | Path,
                        goal: float | None = None, metric: str = "score") -> Path:
    """A PNG of each run's score against its share of the data (log axis), the fitted curve drawn
    out to the goal's share (at most 64x the data) with the band of its exponent +- one standard
    error, and the goal as a line.

    Returns:
        ``path`` as a :class:`~pathlib.Path`; written atomically.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: PLC0415 (slow import)
    from matplotlib.figure import Figure  # noqa: PLC0415
    from matplotlib.ticker import FuncFormatter  # noqa: PLC0415

    x, y = np.asarray(shares, dtype=np.float64), np.asarray(scores, dtype=np.float64)
    far = min(max(1.0, curve.share_for(goal)) if goal else 1.0, 64.0)
    fig = Figure(figsize=(6.0, 4.0))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    ax.scatter(x, y, color="tab:blue", label=f"runs ({len(x)})", zorder=3)
    line = np.geomspace(x.min(), far, 100)
    ax.plot(line, curve.score(line), color="tab:orange",
            label=f"fit: error x {2 ** -curve.exponent:.2f} per doubling")
    turned = [dataclasses.replace(curve, exponent=curve.exponent + d * curve.exponent_se).score(line) for d in (-1, 1)]
    ax.fill_between(line, *turned, color="tab:orange", alpha=0.15, label="exponent +- 1 standard error")
    if goal is not None:
        ax.axhline(goal, color="tab:green", linestyle="--", label=f"goal {goal:g}")
    ax.set_xscale("log", base=2)
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.set_xlabel("share of the training data (1: all of it)")
    ax.set_ylabel(metric)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    return atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=100))


# ----------------------------------------------------------------------------- several attributes


def attribute_prefix(schema: AttributeSchema, attribute: str) -> str:
    """``""`` for a single-attribute schema (its keys and files stay a one-softmax classifier's),
    else ``"{attribute}/"``: the prefix of an attribute's metric keys."""
    return "" if len(schema.attributes) == 1 else f"{attribute}/"


def attribute_metrics(targets: torch.Tensor, probs: torch.Tensor, schema: AttributeSchema
                      ) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """:func:`classification_metrics` per attribute, over the crops that label it, and their means.

    An attribute no crop labels is left out (a facemask crop set says nothing of headwear); a
    single-attribute schema is always scored, with the keys of :func:`classification_metrics`.

    Args:
        targets: ``(N, A)`` int64 value indices, ``-1`` where the crop's source is silent.
        probs: ``(N, sum of values)`` probabilities (:func:`headseg.attributes.attribute_softmax`).
        schema: The classifier's schema.

    Returns:
        The flat metrics: per attribute ``{attribute}/macro_f1``, ``{attribute}/f1/{value}``...
        (no prefix with one attribute), and ``macro_f1``, ``macro_f1_labelled``, ``accuracy``,
        ``balanced_accuracy`` averaged over the attributes scored (best-checkpoint selection
        uses that ``macro_f1``);
        and attribute -> ``(V, V)`` confusion matrix.
    """
    targets = _to_numpy(targets, "targets").reshape(len(targets), -1)
    blocks = schema.split(probs)
    metrics: dict[str, float] = {}
    matrices: dict[str, np.ndarray] = {}
    for a, (name, values) in enumerate(schema.attributes.items()):
        labelled = targets[:, a] >= 0
        if not labelled.any() and len(schema.attributes) > 1:
            continue
        pred = _to_numpy(blocks[name], "probs").argmax(1)[labelled] if len(probs) else np.zeros(0, np.int64)
        prefix = attribute_prefix(schema, name)
        metrics.update({prefix + k: v for k, v in
                        classification_metrics(targets[labelled, a], pred, values).items()})
        matrices[name] = confusion_matrix(targets[labelled, a], pred, len(values))
    if len(schema.attributes) > 1:
        for key in ("macro_f1", "macro_f1_labelled", "accuracy", "balanced_accuracy"):
            scored = [metrics[f"{n}/{key}"] for n in matrices]
            metrics[key] = float(np.mean(scored)) if scored else 0.0
    return metrics, matrices


def attribute_metrics_by_area(targets: torch.Tensor, probs: torch.Tensor, schema: AttributeSchema,
                              areas: np.ndarray | Sequence[float]) -> dict[str, float]:
    """:func:`attribute_metrics` over the crops of each of COCO's object-area ranges.

    The ranges are :data:`AREA_RANGES`, pycocotools' own (``small`` under 32^2 px, ``medium`` to
    96^2, ``large`` above: those of ``APs``, ``APm``, ``APl``), so a classifier reads by object
    size as the detector does.

    Args:
        targets, probs, schema: As :func:`attribute_metrics`.
        areas: ``(N,)`` each crop's labelled object area in the photo (the COCO annotation's
            ``area``, :func:`annotation_areas`); NaN: in no range (a head that matches no label).

    Returns:
        ``{range}/num_crops`` for every range, and ``{range}/{key}`` for each key of
        :func:`attribute_metrics` over a range that has crops.
    """
    areas = np.asarray(areas, dtype=np.float64).reshape(-1)
    if len(areas) != len(targets):
        raise ValueError(f"{len(areas)} areas for {len(targets)} crops; expected one area per crop")
    metrics: dict[str, float] = {}
    for name, (lo, hi) in AREA_RANGES.items():
        keep = (areas >= lo) & (areas < hi)
        metrics[f"{name}/num_crops"] = float(keep.sum())
        if keep.any():
            in_range, _ = attribute_metrics(targets[keep], probs[keep], schema)
            metrics.update({f"{name}/{k}": v for k, v in in_range.items()})
    return metrics


def attribute_view(targets: torch.Tensor, probs: torch.Tensor, schema: AttributeSchema, attribute: str
                   ) -> tuple[torch.Tensor, torch.Tensor, AttributeSchema]:
    """One attribute of a classifier's outputs, as a single-attribute classifier's would read.

    Each attribute has its own softmax, so its block of columns is a distribution on its own: a
    two-attribute model's ``face_mask`` can be scored, and compared, against a model that
    predicts ``face_mask`` alone. A single-attribute schema is taken to be ``attribute`` whatever its
    name (a predictions CSV of one does not spell it).

    Returns:
        ``(N, 1)`` targets, ``(N, values)`` probabilities and the one-attribute schema.

    Raises:
        ValueError: ``attribute`` is not one of a multi-attribute schema's.
    """
    from headseg.attributes import AttributeSchema  # noqa: PLC0415 (it needs torch; this module does not)

    if len(schema.attributes) == 1:
        (values,) = schema.attributes.values()
        return targets.reshape(len(targets), 1), probs, AttributeSchema.single(values, name=attribute)
    if attribute not in schema.attributes:
        raise ValueError(f"no attribute {attribute!r} among {schema.names}")
    a = schema.names.index(attribute)
    return (targets[:, a:a + 1], schema.split(probs)[attribute],
            AttributeSchema.single(schema.attributes[attribute], name=attribute))


def remap_targets(targets: torch.Tensor, schema: AttributeSchema, other: AttributeSchema) -> torch.Tensor:
    """``(N, A)`` value indices of ``schema`` as ``other``'s: the same attributes, each label the
    value of the same name in ``other`` (whose values may be more, fewer or in another order).

    Raises:
        ValueError: the two have other attributes, or a crop's label is no value of ``other``'s.
    """
    if set(schema.attributes) != set(other.attributes):
        raise ValueError(f"attributes {schema.names} and {other.names}; expected the same attributes")
    out = targets.clone()
    for a, (name, values) in enumerate(schema.attributes.items()):
        theirs = other.attributes[name]
        for i in (targets[:, a] >= 0).nonzero().flatten().tolist():
            value = values[int(targets[i, a])]
            if value not in theirs:
                raise ValueError(f"a crop labelled {name} {value!r}, which the other model does not predict "
                                 f"(its values: {list(theirs)}); compare on crops both can be right on")
            out[i, a] = theirs.index(value)
    return out[:, [schema.names.index(n) for n in other.names]]


def comparable_keys(schema: AttributeSchema, other: AttributeSchema, metrics: Mapping[str, float],
                    other_metrics: Mapping[str, float]) -> list[str]:
    """The metric keys (of :func:`attribute_metrics`) that mean the same for two classifiers of the
    same attributes whose values may differ: those both have, but the counts and, for an
    attribute whose values differ, ``macro_f1`` (averaged over other values).
    ``macro_f1_labelled``, ``accuracy``, ``balanced_accuracy`` and each shared value's
    precision, recall and F1 are scored on the labels alone, so a value one model has and the
    labels never use (``not_visible`` on crops that all show a face) counts against it only
    through the crops it takes from the others.
    """
    differ = [n for n in schema.attributes if schema.attributes[n] != other.attributes.get(n)]
    dropped = {attribute_prefix(schema, n) + "macro_f1" for n in differ} | ({"macro_f1"} if differ else set())
    return [k for k in metrics if k in other_metrics and "support/" not in k and k not in dropped]


def bootstrap_intervals(targets: torch.Tensor, probs: torch.Tensor, schema: AttributeSchema, *,
                        baseline: torch.Tensor | None = None, baseline_schema: AttributeSchema | None = None,
                        resamples: int = 1000, level: float = 0.95, seed: int = 0) -> dict[str, float]:
    """Confidence intervals of :func:`attribute_metrics` from resampling the crops (``scipy.stats.bootstrap``).

    Each resample draws as many crops as there are, with replacement, a crop's labels of every
    attribute together, and scores them as :func:`attribute_metrics` does; the interval is the
    percentile one. It measures the sampling error of a set of this size alone (the model is
    fixed), which a rare value dominates: 26 faces of a value move its F1 by several points.
    With ``baseline``, each resample scores both classifiers on the same crops and the intervals
    are of the difference (a paired bootstrap): far narrower than either model's own interval
    where the two agree on most crops, and what says whether one is ahead on a set this size.

    Args:
        targets, probs, schema: As :func:`attribute_metrics`.
        baseline: ``(N, sum of values)`` another classifier's probabilities on the same crops, or
            ``None``.
        baseline_schema: The baseline's schema where its values differ from ``schema``'s (the
            same attributes; a value added, such as ``not_visible``): each is scored with its own,
            on the same labels (:func:`remap_targets`), and the intervals are of the keys whose
            meaning the two share (:func:`comparable_keys`).
        resamples: Bootstrap resamples (at least 2; the intervals' ends settle near 1000).
        level: Confidence level, in (0, 1).
        seed: Seed of the resampling: the same inputs give the same intervals.

    Returns:
        ``{key}/ci_low`` and ``{key}/ci_high`` for each key of :func:`attribute_metrics` but the
        counts (``support/...``): of ``probs``' metrics, or of ``probs``' minus ``baseline``'s. An
        attribute that a resample holds no crop of makes its keys' ends NaN (a set that mixes
        sources, with a handful of crops of one).

    Raises:
        ValueError: ``resamples`` or ``level`` out of range, ``baseline`` of another shape, or
            a ``baseline_schema`` the labels do not fit (:func:`remap_targets`).
    """
    import torch  # noqa: PLC0415 (the rest of this module needs numpy only)

    _check_bootstrap(resamples, level)  # before the first scoring, not after
    targets, probs = torch.as_tensor(targets), torch.as_tensor(probs)
    other = schema if baseline_schema is None else baseline_schema
    other_targets = targets if other == schema else remap_targets(targets, schema, other)
    if baseline is not None:
        baseline = torch.as_tensor(baseline)
        expected = (len(probs), len(other.column_names))
        if tuple(baseline.shape) != expected:
            raise ValueError(f"baseline probabilities {tuple(baseline.shape)} for probabilities {tuple(probs.shape)}; "
                             f"expected both classifiers' outputs on the same crops, {expected}")
    metrics, _ = attribute_metrics(targets, probs, schema)
    if baseline is None or other == schema:
        keys = [k for k in metrics if "support/" not in k]
    else:
        keys = comparable_keys(schema, other, metrics, attribute_metrics(other_targets, baseline, other)[0])

    def scores(drawn: torch.Tensor, of: torch.Tensor, y: torch.Tensor, of_schema: AttributeSchema) -> np.ndarray:
        resampled, _ = attribute_metrics(y[drawn], of[drawn], of_schema)
        return np.array([resampled.get(k, np.nan) for k in keys])

    def statistic(crops: np.ndarray) -> np.ndarray:
        drawn = torch.from_numpy(crops)
        mine = scores(drawn, probs, targets, schema)
        return mine if baseline is None else mine - scores(drawn, baseline, other_targets, other)

    return _percentile_bootstrap(len(targets), statistic, keys, resamples, level, seed)


def _check_bootstrap(resamples: int, level: float) -> None:
    if resamples < 2 or not 0 < level < 1:
        raise ValueError(f"resamples={resamples}, level={level}; expected at least 2 resamples and a level in (0, 1)")


def _percentile_bootstrap(n: int, statistic: Callable[[np.ndarray], np.ndarray], keys: Sequence[str],
                          resamples: int, level: float, seed: int) -> dict[str, float]:
    """``{key}/ci_low``, ``{key}/ci_high`` of ``statistic`` (one value per key) over resamples of
    ``range(n)`` drawn with replacement (``scipy.stats.bootstrap``, percentile intervals)."""
    from scipy.stats import DegenerateDataWarning, bootstrap  # noqa: PLC0415 (only the intervals need scipy)

    with warnings.catch_warnings():  # the same value in every resample, or NaN: the ends say so themselves
        warnings.simplefilter("ignore", DegenerateDataWarning)
        result = bootstrap((np.arange(n),), statistic, n_resamples=resamples, vectorized=False,
                           confidence_level=level, method="percentile", rng=np.random.default_rng(seed))
    low, high = np.atleast_1d(result.confidence_interval.low), np.atleast_1d(result.confidence_interval.high)
    out: dict[str, float] = {}
    for key, lo, hi in zip(keys, low, high):
        out[f"{key}/ci_low"], out[f"{key}/ci_high"] = float(lo), float(hi)
    return out


def annotation_areas(gt: COCO | str | Path | Mapping[str, Any], ann_ids: Sequence[str | int | None]) -> np.ndarray:
    """``(N,)`` the COCO ``area`` of each annotation id, as COCOeval reads it (where a file has none:
    the mask's area, else the box's, :func:`_prepare_gt`); NaN for an empty id (a crop index's
    heads that match no label).

    Raises:
        KeyError: an id the file does not hold (crops cut from another COCO file).
        ValueError: not a valid COCO file (:func:`_prepare_gt`).
    """
    data = _prepare_gt(_load_gt_dataset(gt), ("bbox",), class_agnostic=False)
    area = {a["id"]: float(a["area"]) for a in data["annotations"]}
    out = np.full(len(ann_ids), np.nan)
    for i, ann_id in enumerate(ann_ids):
        if ann_id in ("", None):
            continue
        if int(ann_id) not in area:
            raise KeyError(f"annotation id {ann_id} is not in the ground truth; were the crops cut from this COCO file?")
        out[i] = area[int(ann_id)]
    return out


def write_attribute_reports(stem: str | Path, schema: AttributeSchema, matrices: Mapping[str, np.ndarray],
                            targets: torch.Tensor | None = None, probs: torch.Tensor | None = None,
                            images: Callable[[int], np.ndarray] | None = None,
                            max_mistakes: int = 24) -> list[Path]:
    """Per attribute: ``{stem}[_{attribute}]_confusion.csv`` and ``.png``, and with ``images``
    the mistakes gallery ``{stem}[_{attribute}]_mistakes.png`` of the crops that label it.

    The ``_{attribute}`` part is left out for a single-attribute schema, so a one-softmax
    classifier's files keep their names.

    Args:
        stem: Path prefix of the files.
        schema: The classifier's schema.
        matrices: Attribute -> confusion matrix, from :func:`attribute_metrics`.
        targets, probs: As for :func:`attribute_metrics`; needed for the galleries.
        images: Crop index -> ``(S, S, 3)`` uint8 RGB; None: no galleries.
        max_mistakes: Crops per gallery.

    Returns:
        The files written.
    """
    written = []
    for name, cm in matrices.items():
        values = schema.attributes[name]
        base = f"{stem}{'_' + name if len(schema.attributes) > 1 else ''}"
        written += [write_confusion_csv(cm, values, f"{base}_confusion.csv"),
                    plot_confusion_matrix(cm, values, f"{base}_confusion.png")]
        if images is not None and targets is not None and probs is not None:
            a = schema.names.index(name)
            rows = (targets[:, a] >= 0).nonzero().flatten().tolist()
            written.append(plot_worst_mistakes(lambda k, rows=rows: images(rows[k]), targets[rows, a],
                                               schema.split(probs)[name][rows], values,
                                               f"{base}_mistakes.png", max_mistakes))
    return written


def write_attribute_predictions(path: str | Path, crops: Sequence[str | Path], targets: torch.Tensor,
                                probs: torch.Tensor, schema: AttributeSchema, attributes: Sequence[str]) -> Path:
    """One CSV row per crop: ``crop``, then per attribute of ``attributes`` its ``label`` (empty
    where the crop's source is silent), ``pred`` and ``prob`` (prefixed ``{attribute}/`` with several
    attributes), then ``p/{column}`` for every output column.

    Args:
        path: Output CSV, written atomically.
        crops: ``N`` crop paths.
        targets, probs: As for :func:`attribute_metrics`.
        schema: The classifier's schema.
        attributes: The attributes to give columns to (those the crop set labels).
    """
    blocks = schema.split(probs)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["crop", *(attribute_prefix(schema, a) + k for a in attributes for k in ("label", "pred", "prob")),
                     *(f"p/{n}" for n in schema.column_names)])
    for i, crop in enumerate(crops):
        cells = []
        for a in attributes:
            values, y = schema.attributes[a], int(targets[i, schema.names.index(a)])
            k = int(blocks[a][i].argmax())
            cells += [values[y] if y >= 0 else "", values[k], f"{float(blocks[a][i, k]):.4f}"]
        writer.writerow([crop, *cells, *(f"{float(v):.4f}" for v in probs[i])])
    return write_text(path, buf.getvalue())


def read_attribute_predictions(path: str | Path) -> tuple[list[str], torch.Tensor, torch.Tensor, AttributeSchema]:
    """A predictions CSV of :func:`write_attribute_predictions` read back.

    Returns:
        The crops, ``(N, A)`` targets (``-1`` where the file has no label), ``(N, sum of values)``
        probabilities (to the file's 4 decimals) and the schema its ``p/...`` columns spell
        (attributes and values; no sources).

    Raises:
        ValueError: not such a file (no ``crop`` or ``p/...`` columns), or a label that is none of
            its attribute's values.
    """
    import torch  # noqa: PLC0415 (the rest of this module needs numpy only)

    from headseg.attributes import AttributeSchema  # noqa: PLC0415 (it needs torch; this module does not)

    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        columns = [c for c in reader.fieldnames or [] if c.startswith("p/")]
        rows = list(reader)
    if not columns or "crop" not in (reader.fieldnames or []):
        raise ValueError(f"{path} has columns {reader.fieldnames}; expected the predictions CSV that "
                         "tools/eval_cls.py writes beside its metrics (crop, labels, p/... columns)")
    if "label" in (reader.fieldnames or []):  # one attribute: columns named by the bare values
        schema = AttributeSchema.single([c.removeprefix("p/") for c in columns])
    else:
        attributes: dict[str, list[str]] = {}
        for c in columns:
            attribute, _, value = c.removeprefix("p/").partition("/")
            attributes.setdefault(attribute, []).append(value)
        schema = AttributeSchema(attributes, {})
    targets = torch.full((len(rows), len(schema.attributes)), -1, dtype=torch.int64)
    for a, (name, values) in enumerate(schema.attributes.items()):
        column = attribute_prefix(schema, name) + "label"
        for i, row in enumerate(rows):
            label = row.get(column) or ""
            if label and label not in values:
                raise ValueError(f"{path}: crop {row['crop']} is labelled {name} {label!r}, none of {list(values)}")
            targets[i, a] = values.index(label) if label else -1
    probs = torch.tensor([[float(row[c]) for c in columns] for row in rows], dtype=torch.float32).reshape(-1, len(columns))
    return [row["crop"] for row in rows], targets, probs, schema


# ----------------------------------------------------------------------------- end to end, per attribute

SWEEP = tuple(round(0.05 * k, 2) for k in range(1, 20))  # operating-point thresholds tried for the F1-best one


def end_to_end_scores(gt: COCO | str | Path | Mapping[str, Any], joint: Sequence[Mapping[str, Any]],
                      at_op: Sequence[Mapping[str, Any]], op_thresh: float,
                      sweep: Sequence[float] = SWEEP) -> dict[str, float]:
    """Detection and attire judged together: COCO bbox AP of ``joint`` and P/R/F1 of ``at_op``.

    Args:
        gt: Ground truth whose categories are attire classes.
        joint: Results scored by detection score x class probability (AP over the whole curve).
        at_op: The same heads scored by detection score alone, labelled by their top class.
        op_thresh: The operating point: ``at_op`` heads scoring at least this count.
        sweep: Thresholds tried for the F1-best one (read it on val, pass it for test).

    Returns:
        :func:`coco_evaluate`'s bbox metrics (per category too), :func:`operating_point`'s at
        ``op_thresh``, ``op_thresh``, ``f1_best_thresh`` and ``f1_at_best_thresh``, and
        ``at_{t}/precision``, ``/recall``, ``/f1`` for each swept ``t``.
    """
    metrics = coco_evaluate(gt, joint, ("bbox",))
    points = {t: operating_point(gt, at_op, t) for t in sweep}
    best = max(points, key=lambda t: points[t]["f1"])
    # Every swept point too, so test's P/R at a threshold read on val needs no second run.
    swept = {f"at_{t:.2f}/{k}": points[t][k] for t in sweep for k in ("precision", "recall", "f1")}
    return {**metrics, **operating_point(gt, at_op, op_thresh), "op_thresh": op_thresh,
            "f1_best_thresh": best, "f1_at_best_thresh": points[best]["f1"], **swept}


def attribute_ground_truth(gt: COCO | str | Path | Mapping[str, Any], schema: AttributeSchema, source: str,
                           face_to_head: FaceToHead | None = None) -> dict[str, Any]:
    """A copy of a COCO set whose categories are classifier columns, for end-to-end evaluation.

    Each category keeps its id; its ``name`` becomes the column its source maps it to
    (``mask_weared_incorrect`` -> ``face_mask/incorrect``; a single-attribute classifier's columns
    are its class names), and it gains ``attribute`` and ``value``. With ``face_to_head`` the
    boxes are faces: every box is replaced by the head box the rule derives from it (clipped to
    the image, :func:`headseg.attributes.faces_to_heads`), so that predicted heads match it at
    the usual IoU; the masks are dropped (bbox evaluation only).

    Args:
        gt: The set (COCO object, path or dict).
        schema: The classifier's schema.
        source: The schema source whose category mapping the set's categories follow.
        face_to_head: The face-to-head rule, or None for boxes that are heads already.

    Raises:
        ValueError: a category its source does not map.
    """
    data = _load_gt_dataset(gt)
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise ValueError(f"ground truth has no '{key}' list (keys: {sorted(data)})")
    for c in data["categories"]:
        (a,) = [k for k, t in enumerate(schema.targets(source, c["name"])) if t >= 0]
        attribute = schema.names[a]
        value = schema.attributes[attribute][schema.targets(source, c["name"])[a]]
        c.update(name=schema.column_name(attribute, value), attribute=attribute, value=value)
    if face_to_head is not None:
        from headseg.attributes import coco_faces_to_heads  # noqa: PLC0415 (torch, for this case only)

        data["annotations"] = coco_faces_to_heads(data, face_to_head)
        data["info"] = {**(data.get("info") or {}), "face_to_head": dataclasses.asdict(face_to_head)}
    return data


def _of_categories(gt: Mapping[str, Any], categories: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """``gt`` with only ``categories`` (named by their value) and their annotations."""
    ids = {c["id"] for c in categories}
    return {**gt, "categories": [{**c, "name": c["value"]} for c in categories],
            "annotations": [a for a in gt["annotations"] if a["category_id"] in ids]}


def _categories_by_attribute(gt: Mapping[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """Attribute -> its categories in ``gt`` (from :func:`attribute_ground_truth`), in file order."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for c in gt["categories"]:
        groups.setdefault(c["attribute"], []).append(c)
    return groups


def attribute_end_to_end(gt: Mapping[str, Any], joint: Sequence[Mapping[str, Any]],
                         at_op: Sequence[Mapping[str, Any]], op_thresh: float, schema: AttributeSchema,
                         sweep: Sequence[float] = SWEEP) -> dict[str, float]:
    """:func:`end_to_end_scores` per attribute the set labels, and P/R/F1 per value.

    Each attribute is scored on the annotations of its categories alone, against the results
    of those categories: AP per value ranks heads by detection score x that value's
    probability (``bbox/AP50/{value}``), and the operating point counts a head right when its
    box matches and its top value is the annotation's.

    Args:
        gt: From :func:`attribute_ground_truth`.
        joint, at_op: Results whose category ids are ``gt``'s (``ImageResult.to_coco_results``
            with column name -> id), scored ``joint`` and ``seg``.
        op_thresh: Detection score threshold of the operating point.
        schema: The classifier's schema; with one attribute the keys carry no attribute prefix,
            so they are those of :func:`end_to_end_scores`.
        sweep: As for :func:`end_to_end_scores`.

    Returns:
        Flat metrics: ``{attribute}/bbox/AP50``, ``{attribute}/bbox/AP50/{value}``,
        ``{attribute}/precision``, ``{attribute}/precision/{value}``...
    """
    groups = _categories_by_attribute(gt)
    out: dict[str, float] = {}
    for attribute, categories in groups.items():
        ids = {c["id"] for c in categories}
        metrics = end_to_end_scores(_of_categories(gt, categories), [r for r in joint if r["category_id"] in ids],
                                    [r for r in at_op if r["category_id"] in ids], op_thresh, sweep)
        for c in categories:
            at_value = operating_point(_of_categories(gt, [c]), [r for r in at_op if r["category_id"] == c["id"]],
                                       op_thresh)
            metrics.update({f"{k}/{c['value']}": at_value[k] for k in ("precision", "recall", "f1")})
        out.update({attribute_prefix(schema, attribute) + k: v for k, v in metrics.items()})
    return out


def _photo_resampler(gt: Mapping[str, Any], results: Sequence[Mapping[str, Any]]
                     ) -> Callable[[np.ndarray], tuple[dict[str, Any], list[dict[str, Any]]]]:
    """``resample(drawn)`` -> the COCO set and results of the photos at positions ``drawn`` (with
    repeats): a photo drawn twice comes twice, its annotations and results under a new image id."""
    images = list(gt["images"])
    position = {img["id"]: k for k, img in enumerate(images)}
    labelled: list[list[Mapping[str, Any]]] = [[] for _ in images]
    found: list[list[Mapping[str, Any]]] = [[] for _ in images]
    for what, records, into in (("annotations", gt["annotations"], labelled), ("results", results, found)):
        unknown = sorted({r["image_id"] for r in records} - set(position))
        if unknown:
            raise ValueError(f"{what} on image ids {unknown[:10]} that the ground truth does not list")
        for r in records:
            into[position[r["image_id"]]].append(r)

    def resample(drawn: np.ndarray) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        new_images, annotations, new_results = [], [], []
        for new_id, k in enumerate(drawn.tolist(), start=1):
            new_images.append({**images[k], "id": new_id})
            annotations += [{**a, "image_id": new_id, "id": len(annotations) + j + 1} for j, a in enumerate(labelled[k])]
            new_results += [{**r, "image_id": new_id} for r in found[k]]
        return {**gt, "images": new_images, "annotations": annotations}, new_results

    return resample


def bootstrap_coco(gt: COCO | str | Path | Mapping[str, Any], results: Sequence[Mapping[str, Any]], *,
                   iou_types: Sequence[str] = ("bbox",), class_agnostic: bool = False,
                   keys: Sequence[str] = ("AP", "AP50"), resamples: int = 200, level: float = 0.95,
                   seed: int = 0, progress: bool = False) -> dict[str, float]:
    """95 % intervals of :func:`coco_evaluate`'s numbers from resampling the photos.

    Each resample draws as many photos as the set has, with replacement (a photo drawn twice
    counts twice), and runs :func:`coco_evaluate` on them; the interval is the percentile one
    (``scipy.stats.bootstrap``). Photos, not objects, are what is drawn: the heads of one photo
    share its scene, light and camera. Each resample costs one COCOeval of the whole set.

    Args:
        gt, results, iou_types, class_agnostic: As :func:`coco_evaluate`.
        keys: Which of its numbers, per IoU type (``"{iou}/{key}"``).
        resamples: Bootstrap resamples (at least 2).
        level: Confidence level, in (0, 1).
        seed: Seed of the resampling.
        progress: A progress bar over the resamples.

    Returns:
        ``{iou}/{key}/ci_low`` and ``{iou}/{key}/ci_high``; NaN ends where a resample has no
        labelled object of the kind a key needs (COCO's -1, e.g. ``APl`` without large heads).
    """
    _check_bootstrap(resamples, level)
    if not set(keys) <= set(STAT_NAMES):
        raise ValueError(f"keys {sorted(set(keys) - set(STAT_NAMES))} are not COCO's numbers; expected some of {STAT_NAMES}")
    data = _load_gt_dataset(gt)
    resample = _photo_resampler(data, results)
    names = [f"{iou}/{k}" for iou in iou_types for k in keys]

    def statistic(drawn: np.ndarray) -> np.ndarray:
        metrics = coco_evaluate(*resample(drawn), iou_types, class_agnostic=class_agnostic, per_category=False)
        return np.array([metrics[k] if metrics[k] >= 0 else np.nan for k in names])

    return _percentile_bootstrap(len(data["images"]), _counted(statistic, resamples, progress), names,
                                 resamples, level, seed)


def _counted(statistic: Callable[[np.ndarray], np.ndarray], resamples: int, progress: bool
             ) -> Callable[[np.ndarray], np.ndarray]:
    """``statistic`` with a progress bar over ``resamples`` calls (closed when the last one ends)."""
    from tqdm import tqdm  # noqa: PLC0415

    bar = tqdm(total=resamples, desc="bootstrap", leave=False, disable=not progress)

    def counted(drawn: np.ndarray) -> np.ndarray:
        value = statistic(drawn)
        if bar.n < resamples:
            bar.update(1)
            if bar.n == resamples:
                bar.close()
        return value

    return counted


def bootstrap_end_to_end(gt: Mapping[str, Any], joint: Sequence[Mapping[str, Any]], schema: AttributeSchema, *,
                         resamples: int = 200, level: float = 0.95, seed: int = 0,
                         progress: bool = False) -> dict[str, float]:
    """95 % intervals of :func:`attribute_end_to_end`'s AP50s from resampling the photos.

    As :func:`bootstrap_coco` does, scoring every attribute's AP50 and per-value AP50 on each
    resample as :func:`attribute_end_to_end` does (one COCOeval per attribute).

    Args:
        gt, joint, schema: As :func:`attribute_end_to_end` (``joint``: the AP's results).
        resamples: Bootstrap resamples (at least 2).
        level: Confidence level, in (0, 1).
        seed: Seed of the resampling.
        progress: A progress bar over the resamples.

    Returns:
        ``{key}/ci_low`` and ``{key}/ci_high`` for ``{attribute}/bbox/AP50`` and each
        ``{attribute}/bbox/AP50/{value}`` (no attribute prefix with one attribute); NaN ends for a
        value that some resample holds no labelled head of (a value on one or two photos).
    """
    _check_bootstrap(resamples, level)
    resample = _photo_resampler(gt, joint)
    groups = _categories_by_attribute(gt)
    keys = [attribute_prefix(schema, a) + k for a, categories in groups.items()
            for k in ("bbox/AP50", *(f"bbox/AP50/{c['value']}" for c in categories))]

    def statistic(drawn: np.ndarray) -> np.ndarray:
        resampled, results = resample(drawn)
        out: dict[str, float] = {}
        for attribute, categories in groups.items():
            ids = {c["id"] for c in categories}
            metrics = coco_evaluate(_of_categories(resampled, categories), [r for r in results if r["category_id"] in ids],
                                    ("bbox",))
            out.update({attribute_prefix(schema, attribute) + k: v for k, v in metrics.items()})
        # COCO's -1: a value with no labelled head in this resample
        return np.array([out[k] if out.get(k, -1) >= 0 else np.nan for k in keys])

    return _percentile_bootstrap(len(gt["images"]), _counted(statistic, resamples, progress), keys,
                                 resamples, level, seed)


BREAKDOWN = ("unmatched_dropped", "labelled_values", "labelled_values_unmatched_dropped")
# One head for end_to_end_breakdown: (box_xyxy, detection score, {attribute: {value: probability}}).
ScoredHead = tuple[Sequence[float], float, Mapping[str, Mapping[str, float]]]


def end_to_end_breakdown(gt: Mapping[str, Any], heads: Mapping[int, Sequence[ScoredHead]], schema: AttributeSchema,
                         values: str = "top", iou_thresh: float = 0.5) -> dict[str, float]:
    """Where end-to-end AP50 goes: the same heads scored again with one cause of error removed.

    Each head is matched, per attribute the set labels, to the labelled head of that attribute
    it overlaps best when that box IoU reaches ``iou_thresh`` (several heads may match one).
    Then :func:`attribute_end_to_end`'s AP50 (per attribute and value) is computed for

    * ``unmatched_dropped``: heads that match no labelled head left out (what the heads the set
      does not label cost: faces turned away, too small or missed by the annotators);
    * ``labelled_values``: each matched head given its labelled value with probability 1 (what
      the classifier costs on the heads the detector found);
    * ``labelled_values_unmatched_dropped``: both (what detection alone costs: misses, boxes
      off by more than the IoU, duplicates).

    Args:
        gt: From :func:`attribute_ground_truth`.
        heads: Image id -> its heads as ``(box_xyxy, detection score, {attribute: {value: prob}})``.
        schema: The classifier's schema.
        values: ``top`` or ``all``, as for ``ImageResult.to_coco_results``.
        iou_thresh: Box IoU at which a head matches a labelled one.

    Returns:
        ``{variant}/{attribute}/bbox/AP50`` and ``.../AP50/{value}`` for each variant in
        :data:`BREAKDOWN` (no attribute part for a single-attribute schema).
    """
    if values not in ("top", "all"):
        raise ValueError(f"values={values!r}; expected 'top' or 'all'")
    category_of = {(c["attribute"], c["value"]): c["id"] for c in gt["categories"]}
    attribute_of = {c["id"]: (c["attribute"], c["value"]) for c in gt["categories"]}
    labelled: dict[tuple[int, str], list[tuple[list[float], str]]] = {}
    for a in gt["annotations"]:
        if not a.get("iscrowd", 0):
            attribute, value = attribute_of[a["category_id"]]
            labelled.setdefault((a["image_id"], attribute), []).append((a["bbox"], value))
    scored = list(dict.fromkeys(a for a, _ in category_of))  # the attributes the set labels, in order
    matched: list[tuple[int, Sequence[float], float, str, dict[str, float], str | None]] = []
    for image_id, image_heads in heads.items():
        for box, score, attributes in image_heads:
            xywh = [box[0], box[1], box[2] - box[0], box[3] - box[1]]
            for attribute in scored:
                if attribute not in attributes:
                    continue
                anns = labelled.get((image_id, attribute), [])
                value = None
                if anns:
                    ious = mask_utils.iou([xywh], [b for b, _ in anns], [0] * len(anns))[0]
                    if ious.max() >= iou_thresh:
                        value = anns[int(ious.argmax())][1]
                matched.append((image_id, xywh, score, attribute, dict(attributes[attribute]), value))
    out: dict[str, float] = {}
    for variant in BREAKDOWN:
        joint, at_op = [], []
        for image_id, xywh, score, attribute, probs, value in matched:
            if value is None and variant.endswith("unmatched_dropped"):
                continue
            if value is not None and variant.startswith("labelled_values"):
                probs = {v: float(v == value) for v in probs}
            top = max(probs, key=lambda v: (probs[v], v))
            for v, p in (probs.items() if values == "all" else [(top, probs[top])]):
                if (attribute, v) in category_of and p > 0:
                    joint.append({"image_id": image_id, "category_id": category_of[attribute, v], "bbox": xywh,
                                  "score": score * p})
            if (attribute, top) in category_of:
                at_op.append({"image_id": image_id, "category_id": category_of[attribute, top], "bbox": xywh,
                              "score": score})
        # Only AP50 is kept: one operating point, not the F1 sweep, whose numbers nobody reads here.
        metrics = attribute_end_to_end(gt, joint, at_op, 0.5, schema, sweep=(0.5,))
        out.update({f"{variant}/{k}": v for k, v in metrics.items() if "bbox/AP50" in k})
    return out
