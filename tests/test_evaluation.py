"""headseg.evaluation: COCO metrics on tiny in-memory ground truth, operating points, attire metrics."""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import io
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from headseg.attributes import AttributeSchema
from headseg.evaluation import (
    STAT_NAMES,
    annotation_areas,
    attribute_metrics,
    attribute_metrics_by_area,
    bootstrap_coco,
    bootstrap_intervals,
    classification_metrics,
    comparable_keys,
    coco_evaluate,
    confusion_matrix,
    fit_learning_curve,
    format_metrics_table,
    operating_point,
    plot_confusion_matrix,
    read_attribute_predictions,
    remap_targets,
    to_coco_results,
    write_attribute_predictions,
    write_confusion_csv,
)
from tools import compare_cls, learning_curve

# pycocotools' own decode() trips a numpy 2 deprecation inside the test helper's annToMask.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

H = W = 64
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _rect_mask(x: int, y: int, w: int, h: int) -> np.ndarray:
    m = np.zeros((H, W), dtype=np.uint8)
    m[y:y + h, x:x + w] = 1
    return m


def _compressed_rle(m: np.ndarray) -> dict[str, Any]:
    rle = mask_utils.encode(np.asfortranarray(m))
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


def _uncompressed_rle(m: np.ndarray) -> dict[str, Any]:
    """COCO's list-of-run-lengths RLE (column-major, starting with a run of zeros)."""
    flat = m.flatten(order="F")
    counts, value, run = [], 0, 0
    for px in flat:
        if px == value:
            run += 1
        else:
            counts.append(run)
            value, run = px, 1
    counts.append(run)
    return {"size": [H, W], "counts": counts}


@pytest.fixture
def gt() -> dict[str, Any]:
    """Three 64x64 images, two categories (and one without annotations); image 3 has no heads.

    Masks come as a polygon, a compressed RLE and an uncompressed RLE.
    """
    return {
        "info": {"description": "tiny heads"},
        "images": [{"id": i, "file_name": f"{i}.jpg", "height": H, "width": W} for i in (1, 2, 3)],
        "categories": [{"id": 1, "name": "hat"}, {"id": 2, "name": "bare"}, {"id": 3, "name": "cap"}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 10, 20, 20], "iscrowd": 0, "area": 400,
             "segmentation": [[10, 10, 30, 10, 30, 30, 10, 30]]},
            {"id": 2, "image_id": 1, "category_id": 2, "bbox": [36, 30, 20, 24], "iscrowd": 0, "area": 480,
             "segmentation": _compressed_rle(_rect_mask(36, 30, 20, 24))},
            {"id": 3, "image_id": 2, "category_id": 1, "bbox": [5, 5, 30, 30], "iscrowd": 0, "area": 900,
             "segmentation": _uncompressed_rle(_rect_mask(5, 5, 30, 30))},
        ],
    }


def _coco(data: dict[str, Any]) -> COCO:
    coco = COCO()
    coco.dataset = copy.deepcopy(data)
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def _gt_predictions(gt: dict[str, Any], shift: int = 0, score: float = 1.0,
                    category_map: dict[int, int] | None = None) -> list[dict[str, Any]]:
    """Predictions equal to the ground truth (boxes and masks), optionally shifted right by `shift` px."""
    coco = _coco(gt)
    results: list[dict[str, Any]] = []
    for image_id in coco.getImgIds():
        anns = coco.loadAnns(coco.getAnnIds(imgIds=image_id))
        if not anns:
            continue
        boxes = np.array([[a["bbox"][0] + shift, a["bbox"][1], a["bbox"][0] + a["bbox"][2] + shift,
                           a["bbox"][1] + a["bbox"][3]] for a in anns], dtype=np.float32)
        masks = np.stack([np.roll(coco.annToMask(a), shift, axis=1) for a in anns]).astype(bool)
        cats = [(category_map or {}).get(a["category_id"], a["category_id"]) for a in anns]
        results += to_coco_results(image_id, torch.from_numpy(boxes), torch.full((len(anns),), score),
                                   torch.tensor(cats), torch.from_numpy(masks))
    return results


# ----------------------------------------------------------------------------- to_coco_results


def test_to_coco_results_converts_boxes_and_encodes_masks() -> None:
    masks = np.zeros((2, H, W), dtype=bool)
    masks[0, 2:5, 3:7] = True
    recs = to_coco_results(7, np.array([[3, 2, 7, 5], [0, 0, 1, 1]]), np.array([0.9, 0.1]),
                           np.array([1, 2]), masks)
    assert recs[0]["bbox"] == [3.0, 2.0, 4.0, 3.0] and recs[0]["image_id"] == 7
    assert recs[1]["category_id"] == 2 and recs[1]["score"] == pytest.approx(0.1)
    assert isinstance(recs[0]["segmentation"]["counts"], str)
    json.dumps(recs)  # serialisable as it is
    assert int(mask_utils.area(recs[0]["segmentation"])) == 12
    assert mask_utils.area(recs[1]["segmentation"]) == 0  # an empty mask still encodes


def test_to_coco_results_empty_and_bad_inputs() -> None:
    assert to_coco_results(1, torch.zeros((0, 4)), torch.zeros(0), torch.zeros(0, dtype=torch.int64)) == []
    with pytest.raises(ValueError, match="same length"):
        to_coco_results(1, np.zeros((2, 4)), np.zeros(3), np.zeros(2, dtype=int))
    with pytest.raises(TypeError, match="masks > 0.5"):
        to_coco_results(1, np.zeros((1, 4)), np.ones(1), np.ones(1, dtype=int), np.full((1, 1, H, W), 0.7))


# ----------------------------------------------------------------------------- coco_evaluate


def test_perfect_predictions_score_one(gt: dict[str, Any]) -> None:
    m = coco_evaluate(gt, _gt_predictions(gt))
    assert m["bbox/AP"] == pytest.approx(1.0)
    assert m["bbox/AP50"] == pytest.approx(1.0)
    assert m["segm/AP"] == pytest.approx(1.0)
    assert m["bbox/AR100"] == pytest.approx(1.0)
    assert m["bbox/APs"] == pytest.approx(1.0)  # every head here is small (< 32^2 px)
    assert m["bbox/APm"] == -1.0 and m["bbox/APl"] == -1.0  # no ground truth of those sizes
    assert "segm/derived_masks" not in m


def test_metric_keys_and_per_category(gt: dict[str, Any]) -> None:
    m = coco_evaluate(gt, _gt_predictions(gt))
    for iou in ("bbox", "segm"):
        for name in STAT_NAMES:
            assert f"{iou}/{name}" in m
        for cat in ("hat", "bare", "cap"):
            assert f"{iou}/AP/{cat}" in m and f"{iou}/AP50/{cat}" in m
        assert m[f"{iou}/AP/hat"] == pytest.approx(1.0)
        assert m[f"{iou}/AP/cap"] == -1.0  # no ground truth for `cap`
    assert set(coco_evaluate(gt, _gt_predictions(gt), iou_types=("bbox",), per_category=False)) == {
        f"bbox/{n}" for n in STAT_NAMES}


def test_shifted_predictions_lower_ap_but_keep_ap50(gt: dict[str, Any]) -> None:
    m = coco_evaluate(gt, _gt_predictions(gt, shift=2))
    assert m["bbox/AP"] < 1.0 and m["segm/AP"] < 1.0
    assert m["bbox/AP50"] == pytest.approx(1.0) and m["segm/AP50"] == pytest.approx(1.0)
    far = coco_evaluate(gt, _gt_predictions(gt, shift=8))
    assert far["bbox/AP"] < m["bbox/AP"]


def test_empty_predictions_give_zero(gt: dict[str, Any]) -> None:
    m = coco_evaluate(gt, [])
    assert m["bbox/AP"] == 0.0 and m["segm/AP"] == 0.0 and m["bbox/AR100"] == 0.0
    assert m["bbox/AP/hat"] == 0.0 and m["bbox/AP/cap"] == -1.0
    # results of a kind that is asked for but absent are the caller's mistake, not "empty"
    boxes_only = [{k: v for k, v in r.items() if k != "segmentation"} for r in _gt_predictions(gt)]
    with pytest.raises(ValueError, match="segmentation"):
        coco_evaluate(gt, boxes_only)
    assert coco_evaluate(gt, boxes_only, iou_types=("bbox",))["bbox/AP"] == pytest.approx(1.0)


def test_false_positive_on_image_without_heads_lowers_precision_not_recall(gt: dict[str, Any]) -> None:
    preds = _gt_predictions(gt, score=0.9)
    fp = to_coco_results(3, np.array([[5, 5, 25, 25]]), np.array([0.99]), np.array([1]),
                         _rect_mask(5, 5, 20, 20)[None].astype(bool))
    clean = coco_evaluate(gt, preds)
    noisy = coco_evaluate(gt, preds + fp)
    assert clean["bbox/AP"] == pytest.approx(1.0)
    assert noisy["bbox/AP"] < 1.0 and noisy["segm/AP"] < 1.0
    assert noisy["bbox/AR100"] == pytest.approx(1.0) and noisy["segm/AR100"] == pytest.approx(1.0)
    assert noisy["bbox/AP/bare"] == pytest.approx(1.0)  # the false positive is a `hat`


def test_class_agnostic(gt: dict[str, Any]) -> None:
    swapped = _gt_predictions(gt, category_map={1: 2, 2: 1})
    agnostic = coco_evaluate(gt, swapped, class_agnostic=True)
    assert agnostic["bbox/AP"] == pytest.approx(1.0) and agnostic["segm/AP"] == pytest.approx(1.0)
    assert "bbox/AP/head" in agnostic and "bbox/AP/hat" not in agnostic
    assert coco_evaluate(gt, swapped)["bbox/AP"] < 1.0
    assert gt["categories"][0]["name"] == "hat"  # the caller's ground truth is untouched


def test_gt_as_path_and_coco_object(gt: dict[str, Any], tmp_path) -> None:
    preds = _gt_predictions(gt, shift=2)
    expected = coco_evaluate(gt, preds)
    path = tmp_path / "gt.json"
    path.write_text(json.dumps(gt))
    assert coco_evaluate(path, preds) == pytest.approx(expected)
    coco = _coco(gt)
    before = copy.deepcopy(coco.dataset)
    assert coco_evaluate(coco, preds) == pytest.approx(expected)
    assert coco.dataset == before  # pycocotools' in-place mask conversion hit a copy
    with pytest.raises(FileNotFoundError, match="does not exist"):
        coco_evaluate(tmp_path / "missing.json", preds)


def test_verbose_prints_summary_only_when_asked(gt: dict[str, Any], capsys) -> None:
    coco_evaluate(gt, _gt_predictions(gt), iou_types=("bbox",))
    assert capsys.readouterr().out == ""
    coco_evaluate(gt, _gt_predictions(gt), iou_types=("bbox",), verbose=True)
    assert "Average Precision" in capsys.readouterr().out


def test_max_dets(gt: dict[str, Any]) -> None:
    m = coco_evaluate(gt, _gt_predictions(gt, shift=2), iou_types=("bbox",), max_dets=300)
    assert "bbox/AR300" in m and "bbox/AR100" not in m
    assert m["bbox/AP"] == pytest.approx(coco_evaluate(gt, _gt_predictions(gt, shift=2), iou_types=("bbox",))["bbox/AP"])
    with pytest.raises(ValueError, match="max_dets"):
        coco_evaluate(gt, [], max_dets=5)


@pytest.mark.parametrize("where", ["info", "annotation"])
def test_derived_masks_flag(gt: dict[str, Any], where: str, caplog) -> None:
    if where == "info":
        gt["info"]["derived_masks"] = "ellipse"
    else:
        gt["annotations"][0]["derived_mask"] = "ellipse"
    with caplog.at_level(logging.WARNING, logger="headseg.evaluation"):
        m = coco_evaluate(gt, _gt_predictions(gt))
    assert m["segm/derived_masks"] == 1.0
    assert "derived" in caplog.text
    assert "segm/derived_masks" not in coco_evaluate(gt, _gt_predictions(gt), iou_types=("bbox",))


def test_bad_results_are_named(gt: dict[str, Any]) -> None:
    preds = _gt_predictions(gt)
    stray = dict(preds[0], image_id=999)
    with pytest.raises(ValueError, match="999"):
        coco_evaluate(gt, [*preds, stray])
    with pytest.raises(ValueError, match=r"category ids \[7\]"):
        coco_evaluate(gt, [dict(preds[0], category_id=7)])
    with pytest.raises(ValueError, match="iou_types"):
        coco_evaluate(gt, preds, iou_types=("keypoints",))
    with pytest.raises(TypeError, match="list of COCO result dicts"):
        coco_evaluate(gt, preds[0])  # type: ignore[arg-type]


def test_bootstrap_coco_resamples_photos() -> None:
    # six photos with a head each, a seventh with none
    gt = {"images": [{"id": i, "file_name": f"{i}.jpg", "height": H, "width": W} for i in range(1, 8)],
          "categories": [{"id": 1, "name": "head"}],
          "annotations": [{"id": i, "image_id": i, "category_id": 1, "bbox": [10, 10, 20, 20], "area": 400,
                           "iscrowd": 0} for i in range(1, 7)]}
    found = [{"image_id": a["image_id"], "category_id": 1, "bbox": a["bbox"], "score": 0.9} for a in gt["annotations"]]
    perfect = bootstrap_coco(gt, found, resamples=30)
    assert set(perfect) == {f"bbox/{k}/{end}" for k in ("AP", "AP50") for end in ("ci_low", "ci_high")}
    assert perfect["bbox/AP50/ci_low"] == perfect["bbox/AP50/ci_high"] == pytest.approx(1.0)
    # a confident false positive on the photo without heads: resamples that draw it more score lower
    with_fp = [*found, {"image_id": 7, "category_id": 1, "bbox": [40, 40, 10, 10], "score": 0.95}]
    ci = bootstrap_coco(gt, with_fp, keys=("AP50",), resamples=200)
    ap50 = coco_evaluate(gt, with_fp, ("bbox",))["bbox/AP50"]
    assert ci["bbox/AP50/ci_low"] < ap50 < ci["bbox/AP50/ci_high"] == pytest.approx(1.0)
    assert bootstrap_coco(gt, with_fp, keys=("AP50",), resamples=200) == ci  # seeded
    with pytest.raises(ValueError, match="at least 2 resamples"):
        bootstrap_coco(gt, found, resamples=1)
    with pytest.raises(ValueError, match="not COCO's numbers"):
        bootstrap_coco(gt, found, keys=("AP5O",))
    with pytest.raises(ValueError, match=r"image ids \[9\]"):
        bootstrap_coco(gt, [*found, {**found[0], "image_id": 9}])


def test_gt_without_masks_rejected_for_segm(gt: dict[str, Any]) -> None:
    del gt["annotations"][1]["segmentation"]
    with pytest.raises(ValueError, match=r"annotations \[2\] have no 'segmentation'"):
        coco_evaluate(gt, [])
    assert coco_evaluate(gt, [], iou_types=("bbox",))["bbox/AP"] == 0.0


def test_format_metrics_table() -> None:
    metrics = {"bbox/AP": 0.5, "bbox/AP50": 1.0, "tp": 12.0}
    table = format_metrics_table(metrics)
    lines = table.splitlines()
    assert lines[0].split() == ["metric", "value"]
    assert lines[2].split() == ["bbox/AP", "0.5000"] and lines[4].split() == ["tp", "12"]
    assert len({len(line) for line in lines}) == 1  # aligned
    assert format_metrics_table(metrics, keys=["tp"]).splitlines()[-1].split() == ["tp", "12"]
    # an interval beside its metric, in a third column; its ends are not rows of their own
    lines = format_metrics_table({**metrics, "bbox/AP/ci_low": 0.25, "bbox/AP/ci_high": 0.75}).splitlines()
    assert lines[0].split() == ["metric", "value", "interval"] and len(lines) == 5
    assert lines[2].split() == ["bbox/AP", "0.5000", "[0.2500,", "0.7500]"] and lines[3].split() == ["bbox/AP50", "1.0000"]
    with pytest.raises(ValueError, match="bbox/AP50"):
        format_metrics_table(metrics, keys=["bbox/AP5O"])


# ----------------------------------------------------------------------------- operating_point


def _op_case() -> tuple[dict[str, Any], list[dict[str, Any]]]:
    gt = {
        "images": [{"id": 1, "height": H, "width": W}],
        "categories": [{"id": 1, "name": "hat"}, {"id": 2, "name": "bare"}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 10], "iscrowd": 0},   # A
            {"id": 2, "image_id": 1, "category_id": 1, "bbox": [20, 20, 10, 10], "iscrowd": 0},  # B
            {"id": 3, "image_id": 1, "category_id": 1, "bbox": [40, 40, 20, 20], "iscrowd": 1},  # crowd
        ],
    }

    def det(box: list[float], score: float, cat: int = 1) -> dict[str, Any]:
        return {"image_id": 1, "category_id": cat, "bbox": box, "score": score}

    results = [
        det([20, 20, 10, 10], 0.95, cat=2),  # on B with the wrong category
        det([0, 0, 10, 10], 0.9),   # TP on A
        det([1, 0, 10, 10], 0.8),   # duplicate of A: FP
        det([42, 42, 10, 10], 0.7),  # inside the crowd region: ignored
        det([50, 0, 10, 10], 0.6),   # on nothing: FP
        det([20, 20, 10, 10], 0.1),  # on B but below the score threshold
    ]
    return gt, results


def test_operating_point_by_hand() -> None:
    gt, results = _op_case()
    op = operating_point(gt, results, score_thresh=0.5)
    # tp: A; fp: wrong-category B, duplicate A, empty spot; fn: B. The crowd hit counts nowhere.
    assert (op["tp"], op["fp"], op["fn"]) == (1.0, 3.0, 1.0)
    assert op["precision"] == pytest.approx(1 / 4) and op["recall"] == pytest.approx(1 / 2)
    assert op["f1"] == pytest.approx(2 * (1 / 4) * (1 / 2) / (1 / 4 + 1 / 2))

    agn = operating_point(gt, results, score_thresh=0.5, class_agnostic=True)
    assert (agn["tp"], agn["fp"], agn["fn"]) == (2.0, 2.0, 0.0)
    assert agn["precision"] == pytest.approx(0.5) and agn["recall"] == pytest.approx(1.0)

    low = operating_point(gt, results, score_thresh=0.0)  # the low-scored B hit now counts
    assert (low["tp"], low["fp"], low["fn"]) == (2.0, 3.0, 0.0)
    strict = operating_point(gt, results, score_thresh=0.85, iou_thresh=0.95)
    assert (strict["tp"], strict["fp"], strict["fn"]) == (1.0, 1.0, 1.0)


def test_operating_point_nothing_predicted() -> None:
    gt, results = _op_case()
    op = operating_point(gt, results, score_thresh=0.99)
    assert op == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "tp": 0.0, "fp": 0.0, "fn": 2.0}
    with pytest.raises(ValueError, match="iou_thresh"):
        operating_point(gt, results, score_thresh=0.5, iou_thresh=0.0)


# ----------------------------------------------------------------------------- classification

NAMES = ["hat", "cap", "bare"]
Y_TRUE = [0, 0, 0, 1, 1, 2, 2, 2, 2]
Y_PRED = [0, 0, 1, 1, 1, 2, 2, 0, 0]


def test_confusion_matrix_by_hand() -> None:
    cm = confusion_matrix(Y_TRUE, Y_PRED, 3)
    assert cm.dtype == np.int64
    np.testing.assert_array_equal(cm, [[2, 1, 0],
                                       [0, 2, 0],
                                       [2, 0, 2]])
    np.testing.assert_array_equal(confusion_matrix(torch.tensor(Y_TRUE), np.array(Y_PRED), 3), cm)
    with pytest.raises(ValueError, match=r"y_pred holds labels \[3\]"):
        confusion_matrix([0, 1], [0, 3], 3)
    with pytest.raises(ValueError, match=r"labels \[-1\]"):
        confusion_matrix([-1, 1], [0, 1], 3)
    with pytest.raises(ValueError, match="same length"):
        confusion_matrix([0, 1], [0], 3)


def test_classification_metrics_by_hand() -> None:
    m = classification_metrics(Y_TRUE, Y_PRED, NAMES)
    # rows of the matrix above: recall hat 2/3, cap 2/2, bare 2/4; columns: precision 2/4, 2/3, 2/2
    f1 = {"hat": 4 / 7, "cap": 4 / 5, "bare": 2 / 3}
    expected = {
        "accuracy": 6 / 9,
        "balanced_accuracy": (2 / 3 + 1 + 1 / 2) / 3,
        "macro_f1": sum(f1.values()) / 3, "macro_f1_labelled": sum(f1.values()) / 3,
        "precision/hat": 1 / 2, "precision/cap": 2 / 3, "precision/bare": 1.0,
        "recall/hat": 2 / 3, "recall/cap": 1.0, "recall/bare": 1 / 2,
        "f1/hat": f1["hat"], "f1/cap": f1["cap"], "f1/bare": f1["bare"],
        "support/hat": 3.0, "support/cap": 2.0, "support/bare": 4.0,
    }
    assert m == pytest.approx(expected)


def test_classification_by_object_size_uses_cocos_area_ranges() -> None:
    schema = AttributeSchema.single(["hat", "bare"])
    # small (under 32^2), medium (32^2 to 96^2), large, and a head that matches no label (NaN).
    areas = [100.0, 31.0 ** 2, 32.0 ** 2, 2000.0, 96.0 ** 2, float("nan")]
    targets = torch.tensor([[0], [1], [0], [1], [0], [1]])
    probs = torch.tensor([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.1, 0.9], [0.6, 0.4], [0.5, 0.5]])
    m = attribute_metrics_by_area(targets, probs, schema, areas)
    assert {k: m[k] for k in m if k.endswith("num_crops")} == {
        "small/num_crops": 2.0, "medium/num_crops": 2.0, "large/num_crops": 1.0}
    assert m["small/accuracy"] == 0.5 and m["medium/accuracy"] == 0.5 and m["large/accuracy"] == 1.0
    # each range's keys are attribute_metrics over that range's crops alone
    medium, _ = attribute_metrics(targets[2:4], probs[2:4], schema)
    assert {k.removeprefix("medium/"): v for k, v in m.items() if k.startswith("medium/")} == {
        **medium, "num_crops": 2.0}
    # a range with no crops keeps its count (0) and nothing else
    assert attribute_metrics_by_area(targets[:1], probs[:1], schema, [100.0]) == pytest.approx(
        {"small/num_crops": 1.0, "medium/num_crops": 0.0, "large/num_crops": 0.0,
         **{f"small/{k}": v for k, v in attribute_metrics(targets[:1], probs[:1], schema)[0].items()}})
    with pytest.raises(ValueError, match="one area per crop"):
        attribute_metrics_by_area(targets, probs, schema, areas[:2])


def test_bootstrap_intervals_bracket_the_metrics_and_narrow_with_more_crops() -> None:
    schema = AttributeSchema.single(NAMES)
    targets = torch.tensor(Y_TRUE)[:, None]
    probs = torch.nn.functional.one_hot(torch.tensor(Y_PRED), len(NAMES)).float()
    metrics, _ = attribute_metrics(targets, probs, schema)
    ci = bootstrap_intervals(targets, probs, schema, resamples=300)
    scored = [k for k in metrics if not k.startswith("support/")]
    assert set(ci) == {f"{k}/{end}" for k in scored for end in ("ci_low", "ci_high")}
    assert all(0.0 <= ci[f"{k}/ci_low"] <= ci[f"{k}/ci_high"] <= 1.0 for k in scored)
    assert bootstrap_intervals(targets, probs, schema, resamples=300) == ci  # seeded
    # Sixteen times the crops, the same mix: the interval narrows about fourfold and holds the estimate.
    many = bootstrap_intervals(targets.repeat(16, 1), probs.repeat(16, 1), schema, resamples=300)
    for k in ("macro_f1", "accuracy", "f1/bare"):
        assert many[f"{k}/ci_low"] < metrics[k] < many[f"{k}/ci_high"]
        assert many[f"{k}/ci_high"] - many[f"{k}/ci_low"] < 0.5 * (ci[f"{k}/ci_high"] - ci[f"{k}/ci_low"])
    # Right on every crop: every resample scores 1, and so do both ends.
    right = torch.nn.functional.one_hot(torch.tensor(Y_TRUE), len(NAMES)).float()
    perfect = bootstrap_intervals(targets, right, schema, resamples=50)
    assert perfect["macro_f1/ci_low"] == perfect["macro_f1/ci_high"] == 1.0
    with pytest.raises(ValueError, match="at least 2 resamples"):
        bootstrap_intervals(targets, probs, schema, resamples=1)
    with pytest.raises(ValueError, match="level in"):
        bootstrap_intervals(targets, probs, schema, level=95)
    with pytest.raises(ValueError, match="same crops"):
        bootstrap_intervals(targets, probs, schema, baseline=probs[:3])


def test_bootstrap_intervals_per_attribute() -> None:
    schema = AttributeSchema.from_dict({"attributes": {"headwear": ["helmet", "none"],
                                                       "face_mask": ["with_mask", "without_mask"]},
                                        "sources": {}})
    # six crops label headwear only: face_mask is not scored, and has no interval
    targets = torch.tensor([[0, -1], [1, -1], [0, -1], [1, -1], [0, -1], [0, -1]])
    probs = torch.tensor([[0.9, 0.1, 0.5, 0.5]] * 6)
    ci = bootstrap_intervals(targets, probs, schema, resamples=50)
    assert "headwear/macro_f1/ci_low" in ci and "macro_f1/ci_high" in ci
    assert not any(k.startswith("face_mask/") for k in ci)


TWO = AttributeSchema({"headwear": ["helmet", "none"], "face_mask": ["with_mask", "without_mask", "incorrect"]}, {})


def test_predictions_csv_reads_back(tmp_path: Path) -> None:
    # face crops: face_mask labelled (one not), headwear never; the file keeps every output column
    targets = torch.tensor([[-1, 0], [-1, 2], [-1, -1], [-1, 1]])
    probs = torch.tensor([[0.3, 0.7, 0.8, 0.1, 0.1], [0.5, 0.5, 0.2, 0.2, 0.6],
                          [0.9, 0.1, 0.1, 0.8, 0.1], [0.6, 0.4, 0.4, 0.5, 0.1]])
    crops = [f"crops/{i}.png" for i in range(4)]
    write_attribute_predictions(tmp_path / "p.csv", crops, targets, probs, TWO, ["face_mask"])
    back = read_attribute_predictions(tmp_path / "p.csv")
    assert back[0] == crops and back[1].equal(targets) and back[3] == TWO
    assert torch.allclose(back[2], probs, atol=1e-4)
    one = AttributeSchema.single(NAMES)
    write_attribute_predictions(tmp_path / "one.csv", crops[:3], torch.tensor([[0], [2], [1]]), probs[:3, 2:], one, ["label"])
    assert read_attribute_predictions(tmp_path / "one.csv")[3].attributes == one.attributes
    (tmp_path / "bad.csv").write_text("image,score\na.png,0.5\n")
    with pytest.raises(ValueError, match="predictions CSV that tools/eval_cls.py writes"):
        read_attribute_predictions(tmp_path / "bad.csv")


def test_compare_cls_gives_paired_differences(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    g = torch.Generator().manual_seed(0)
    n = 120
    labels = torch.randint(0, 3, (n,), generator=g)
    targets = torch.stack([torch.full((n,), -1), labels], 1)
    onehot = torch.nn.functional.one_hot(labels, 3).float()
    baseline = torch.cat([torch.full((n, 2), 0.5), torch.softmax(torch.randn(n, 3, generator=g) + 1.0 * onehot, 1)], 1)
    candidate = torch.cat([torch.full((n, 2), 0.5), torch.softmax(torch.randn(n, 3, generator=g) + 3.0 * onehot, 1)], 1)
    crops = [f"crops/{i}.png" for i in range(n)]
    for name, probs in (("a", baseline), ("b", candidate)):
        write_attribute_predictions(tmp_path / f"{name}.csv", crops, targets, probs, TWO, ["face_mask"])
    report = compare_cls.main(compare_cls.parse_args([str(tmp_path / "a.csv"), str(tmp_path / "b.csv"),
                                                      "--bootstrap", "300", "--out", str(tmp_path / "r.json")]))
    assert json.loads((tmp_path / "r.json").read_text()) == report
    key = "face_mask/macro_f1"
    assert report[f"difference/{key}"] == pytest.approx(report[f"candidate/{key}"] - report[f"baseline/{key}"])
    # the much better candidate: the whole interval of its gain is above 0, and holds the gain
    assert 0 < report[f"difference/{key}/ci_low"] < report[f"difference/{key}"] < report[f"difference/{key}/ci_high"]
    assert key in capsys.readouterr().out
    # a model against itself: no difference on any resample
    same = compare_cls.main(compare_cls.parse_args([str(tmp_path / "a.csv"), str(tmp_path / "a.csv"), "--bootstrap", "50"]))
    assert same[f"difference/{key}/ci_low"] == same[f"difference/{key}/ci_high"] == 0.0
    write_attribute_predictions(tmp_path / "c.csv", crops[::-1], targets, candidate, TWO, ["face_mask"])
    with pytest.raises(ValueError, match="same crop index"):
        compare_cls.main(compare_cls.parse_args([str(tmp_path / "a.csv"), str(tmp_path / "c.csv")]))


def test_compare_cls_across_added_values_and_a_single_attribute_model(tmp_path: Path,
                                                                         capsys: pytest.CaptureFixture) -> None:
    g = torch.Generator().manual_seed(1)
    n = 150
    labels = torch.randint(0, 3, (n,), generator=g)
    targets = torch.stack([torch.full((n,), -1), labels], 1)
    mask = torch.softmax(torch.randn(n, 3, generator=g) + 2.0 * torch.nn.functional.one_hot(labels, 3), 1)
    crops = [f"crops/{i}.png" for i in range(n)]
    base = torch.cat([torch.full((n, 2), 0.5), mask], 1)
    write_attribute_predictions(tmp_path / "base.csv", crops, targets, base, TWO, ["face_mask"])
    # the same model with a fourth value that wins on every fifth crop: those crops become errors
    four = AttributeSchema({"headwear": ["helmet", "none"],
                            "face_mask": ["with_mask", "without_mask", "incorrect", "not_visible"]}, {})
    extra = torch.zeros(n, 1)
    extra[::5] = 2.0
    added = torch.cat([torch.full((n, 2), 0.5), torch.cat([mask, extra], 1) / (1 + extra)], 1)
    write_attribute_predictions(tmp_path / "four.csv", crops, targets, added, four, ["face_mask"])
    report = compare_cls.main(compare_cls.parse_args([str(tmp_path / "base.csv"), str(tmp_path / "four.csv"),
                                                      "--bootstrap", "200"]))
    mine, _ = attribute_metrics(targets, added, four)
    theirs, _ = attribute_metrics(targets, base, TWO)
    for key in ("face_mask/macro_f1_labelled", "face_mask/accuracy", "face_mask/f1/incorrect"):
        assert report[f"candidate/{key}"] == pytest.approx(mine[key], abs=1e-3)  # the CSV's 4 decimals
        assert report[f"baseline/{key}"] == pytest.approx(theirs[key], abs=1e-3)
    key = "face_mask/accuracy"  # a fifth of the crops lost, the same ones in every resample's pairs
    assert report[f"difference/{key}/ci_high"] < 0 and report[f"difference/{key}"] < 0
    # macro_f1 averages over other values for the two: not compared
    assert not any(k.endswith("/macro_f1") or k.endswith("/macro_f1/ci_low") for k in report)
    assert "face_mask/macro_f1_labelled" in capsys.readouterr().out

    # a face_mask-only model against the two-attribute one: named, the same probabilities read the same
    single = AttributeSchema.single(["with_mask", "without_mask", "incorrect"], name="face_mask")
    write_attribute_predictions(tmp_path / "single.csv", crops, labels[:, None], mask, single, ["face_mask"])
    with pytest.raises(ValueError, match="--attribute"):
        compare_cls.main(compare_cls.parse_args([str(tmp_path / "single.csv"), str(tmp_path / "base.csv")]))
    same = compare_cls.main(compare_cls.parse_args([str(tmp_path / "single.csv"), str(tmp_path / "base.csv"),
                                                    "--attribute", "face_mask", "--bootstrap", "50"]))
    assert same["difference/macro_f1"] == 0.0
    assert same["difference/macro_f1/ci_low"] == same["difference/macro_f1/ci_high"] == 0.0
    with pytest.raises(ValueError, match="no attribute 'glasses'"):
        compare_cls.main(compare_cls.parse_args([str(tmp_path / "single.csv"), str(tmp_path / "base.csv"),
                                                 "--attribute", "glasses"]))
    # other labels on the same crops, or a label the baseline cannot predict: refused
    relabelled = labels.clone()
    relabelled[0] = (labels[0] + 1) % 3
    write_attribute_predictions(tmp_path / "other.csv", crops, torch.stack([torch.full((n,), -1), relabelled], 1),
                                base, TWO, ["face_mask"])
    with pytest.raises(ValueError, match="other labels"):
        compare_cls.main(compare_cls.parse_args([str(tmp_path / "base.csv"), str(tmp_path / "other.csv")]))
    novis = targets.clone()
    novis[0, 1] = 3
    write_attribute_predictions(tmp_path / "novis.csv", crops, novis, added, four, ["face_mask"])
    with pytest.raises(ValueError, match="does not predict"):
        compare_cls.main(compare_cls.parse_args([str(tmp_path / "base.csv"), str(tmp_path / "novis.csv")]))


def test_remap_targets_and_comparable_keys() -> None:
    four = AttributeSchema({"face_mask": ["not_visible", "incorrect", "without_mask", "with_mask"],
                            "headwear": ["helmet", "none"]}, {})
    targets = torch.tensor([[-1, 0], [1, -1], [0, 2]])  # TWO's order: headwear, face_mask
    assert remap_targets(targets, TWO, four).tolist() == [[3, -1], [-1, 1], [1, 0]]
    assert remap_targets(remap_targets(targets, TWO, four), four, TWO).equal(targets)
    with pytest.raises(ValueError, match="does not predict"):
        remap_targets(torch.tensor([[0, -1]]), four, TWO)
    with pytest.raises(ValueError, match="the same attributes"):
        remap_targets(targets, TWO, AttributeSchema.single(["a", "b"]))
    keys = comparable_keys(four, TWO, {"macro_f1": 1, "face_mask/macro_f1": 1, "headwear/macro_f1": 1,
                                       "face_mask/f1/with_mask": 1, "face_mask/f1/not_visible": 1,
                                       "face_mask/support/with_mask": 1, "face_mask/macro_f1_labelled": 1},
                           {"macro_f1": 1, "face_mask/macro_f1": 1, "headwear/macro_f1": 1,
                            "face_mask/f1/with_mask": 1, "face_mask/support/with_mask": 1,
                            "face_mask/macro_f1_labelled": 1})
    assert keys == ["headwear/macro_f1", "face_mask/f1/with_mask", "face_mask/macro_f1_labelled"]


def test_learning_curve_recovers_a_power_law_and_the_data_a_goal_needs(tmp_path: Path,
                                                                       capsys: pytest.CaptureFixture) -> None:
    shares = np.array([0.25, 0.25, 0.5, 0.5, 1.0, 1.0])
    noise = np.array([1.05, 0.95, 1.05, 0.95, 1.05, 0.95])  # symmetric in log: the fit's line is exact
    scores = 1 - 0.2 * shares ** -0.5 * noise  # error 0.2 on all the data, x 0.71 per doubling
    curve = fit_learning_curve(shares, scores)
    assert curve.exponent == pytest.approx(0.5) and curve.scale == pytest.approx(0.2 * np.sqrt(1.05 * 0.95))
    assert curve.exponent_se > 0 and curve.runs == 6
    assert curve.share_for(0.90) == pytest.approx((curve.scale / 0.10) ** 2)  # about 4x the data
    assert curve.score(curve.share_for(0.90)) == pytest.approx(0.90)
    assert curve.share_for(0.90, exponent=-0.1) == float("inf")  # an error that does not fall: no share reaches it
    # another exponent turns the line about the runs' centre (share 0.5 here): the same score there
    centre = np.exp(np.log(shares).mean())
    turned = dataclasses.replace(curve, exponent=0.8)
    assert turned.score(centre) == pytest.approx(curve.score(centre))
    assert curve.share_for(0.90, exponent=0.8) == pytest.approx(turned.share_for(0.90))
    assert turned.share_for(0.90) < curve.share_for(0.90)
    for name, score in zip("abcdef", scores):
        (tmp_path / f"{name}.json").write_text(json.dumps({"face_mask/macro_f1": score, "num_crops": 100}))
    runs = [f"{s}={tmp_path / n}.json" for n, s in zip("abcdef", shares)]
    report = learning_curve.main(learning_curve.parse_args([*runs, "--metric", "face_mask/macro_f1", "--goal", "0.9",
                                                            "--out", str(tmp_path / "lc.png")]))
    assert report["share_for_goal"] == pytest.approx(curve.share_for(0.90))
    assert report["share_for_goal_low"] < report["share_for_goal"] < report["share_for_goal_high"]
    assert json.loads((tmp_path / "lc.json").read_text()) == report
    assert (tmp_path / "lc.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "0.250     2" in capsys.readouterr().out
    with pytest.raises(ValueError, match="two shares"):
        fit_learning_curve([0.5, 0.5, 0.5], [0.8, 0.81, 0.79])
    with pytest.raises(ValueError, match="scores in"):
        fit_learning_curve([0.5, 1.0, 1.0], [0.8, 1.0, 0.9])
    with pytest.raises(ValueError, match="SHARE=METRICS_JSON"):
        learning_curve.main(learning_curve.parse_args([str(tmp_path / "a.json")]))
    with pytest.raises(ValueError, match="choose --metric"):
        learning_curve.main(learning_curve.parse_args(runs[:3] + ["--metric", "macro_f2"]))


def test_annotation_areas_read_the_coco_area() -> None:
    gt = {"images": [{"id": 1, "height": 64, "width": 64}], "categories": [{"id": 1, "name": "head"}],
          "annotations": [{"id": 7, "image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 20], "area": 150.0},
                          {"id": 8, "image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 20]}]}
    areas = annotation_areas(gt, ["7", 8, ""])  # index.csv ids are strings; no id: a head matching no label
    assert areas[:2].tolist() == [150.0, 200.0] and np.isnan(areas[2])  # `area`, else the box's
    with pytest.raises(KeyError, match="cut from this COCO file"):
        annotation_areas(gt, ["9"])


def test_classification_zero_division() -> None:
    # `beanie` is never true nor predicted: all zeros, and left out of macro F1.
    m = classification_metrics(Y_TRUE, Y_PRED, [*NAMES, "beanie"])
    assert m["precision/beanie"] == m["recall/beanie"] == m["f1/beanie"] == m["support/beanie"] == 0.0
    assert m["macro_f1"] == pytest.approx(classification_metrics(Y_TRUE, Y_PRED, NAMES)["macro_f1"])
    # `b` is predicted but never true: recall 0 (no support), counted in macro F1 but not balanced accuracy
    m = classification_metrics([0, 0], [0, 1], ["a", "b"])
    assert m["recall/b"] == 0.0 and m["precision/b"] == 0.0 and m["f1/b"] == 0.0
    assert m["balanced_accuracy"] == pytest.approx(0.5)
    assert m["macro_f1"] == pytest.approx((2 / 3 + 0.0) / 2)
    assert m["macro_f1_labelled"] == pytest.approx(2 / 3)  # `b` only takes recall from `a`
    empty = classification_metrics([], [], ["a", "b"])
    assert all(v == 0.0 for v in empty.values())
    with pytest.raises(ValueError, match="distinct"):
        classification_metrics([0], [0], ["a", "a"])


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 5).flatmap(lambda k: st.tuples(
    st.just(k), st.lists(st.tuples(st.integers(0, k - 1), st.integers(0, k - 1)), max_size=30))))
def test_classification_metrics_properties(case: tuple[int, list[tuple[int, int]]]) -> None:
    k, pairs = case
    t = [a for a, _ in pairs]
    p = [b for _, b in pairs]
    cm = confusion_matrix(t, p, k)
    assert cm.sum() == len(pairs)
    np.testing.assert_array_equal(cm.sum(axis=1), np.bincount(t, minlength=k))
    m = classification_metrics(t, p, [f"c{i}" for i in range(k)])
    assert all(0.0 <= v <= 1.0 for key, v in m.items() if not key.startswith("support/"))
    if pairs:
        assert m["accuracy"] == pytest.approx(np.mean(np.array(t) == np.array(p)))


def test_plot_and_csv_written(tmp_path) -> None:
    cm = confusion_matrix(Y_TRUE, Y_PRED, 3)
    png = plot_confusion_matrix(cm, NAMES, tmp_path / "plots" / "cm.png")
    assert png.read_bytes()[:8] == PNG_MAGIC
    raw = plot_confusion_matrix(np.zeros((3, 3), dtype=np.int64), NAMES, tmp_path / "zero.png", normalize=False)
    assert raw.read_bytes()[:8] == PNG_MAGIC
    assert not list(tmp_path.glob("**/*.tmp"))
    csv_path = write_confusion_csv(cm, ["hat", "cap, knitted", "bare"], tmp_path / "cm.csv")
    assert csv_path.read_text() == (
        "true\\pred,hat,\"cap, knitted\",bare\n"
        "hat,2,1,0\n"
        "\"cap, knitted\",0,2,0\n"
        "bare,2,0,2\n"
    )
    with pytest.raises(ValueError, match=r"\(2, 2\)"):
        write_confusion_csv(cm, ["a", "b"], tmp_path / "bad.csv")
