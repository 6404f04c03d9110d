"""COCO loading and validation, derived masks, and mask-aware augmentation."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils
from torchvision.ops import masks_to_boxes

from headseg.data import (
    HeadDataset,
    annotation_mask,
    box_to_polygon,
    find_problems,
    load_coco,
    train_transforms,
)

H, W = 48, 64


def _rle(mask: np.ndarray) -> dict:
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": rle["size"], "counts": rle["counts"].decode()}


def _uncompressed_rle(mask: np.ndarray) -> dict:
    flat = mask.astype(np.uint8).flatten(order="F")
    counts, current, run = [], 0, 0
    for v in flat:
        if v != current:
            counts.append(run)
            current, run = v, 0
        run += 1
    counts.append(run)
    return {"size": [mask.shape[0], mask.shape[1]], "counts": counts}


@pytest.fixture
def coco_dict() -> dict:
    ellipse = np.zeros((H, W), np.uint8)
    cv2.ellipse(ellipse, (40, 20), (8, 10), 0, 0, 360, 1, -1)
    square = np.zeros((H, W), np.uint8)
    square[30:40, 5:15] = 1
    return {
        "images": [{"id": 1, "file_name": "a.png", "width": W, "height": H},
                   {"id": 2, "file_name": "b.png", "width": W, "height": H}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 5, 12, 14], "iscrowd": 0,
             "segmentation": [[10, 5, 22, 5, 22, 19, 10, 19]], "area": 168},
            {"id": 2, "image_id": 1, "category_id": 2, "bbox": [32, 10, 17, 21], "iscrowd": 0,
             "segmentation": _rle(ellipse), "area": float(ellipse.sum())},
            {"id": 3, "image_id": 1, "category_id": 1, "bbox": [5, 30, 10, 10], "iscrowd": 0,
             "segmentation": _uncompressed_rle(square), "area": 100},
            {"id": 4, "image_id": 1, "category_id": 2, "bbox": [50, 35, 10, 10], "iscrowd": 0,
             "area": 100},  # box only: gets a derived mask
            {"id": 5, "image_id": 1, "category_id": 1, "bbox": [0, 0, 8, 8], "iscrowd": 1,
             "segmentation": _rle(np.pad(np.ones((8, 8), np.uint8), ((0, H - 8), (0, W - 8)))),
             "area": 64},
        ],
        "categories": [{"id": 1, "name": "hard_hat"}, {"id": 2, "name": "bare"}],
    }


def _write(tmp_path: Path, data: dict, images: bool = True) -> Path:
    if images:
        for name in ("a.png", "b.png"):
            cv2.imwrite(str(tmp_path / name), np.full((H, W, 3), 90, np.uint8))
    path = tmp_path / "ann.json"
    path.write_text(json.dumps(data))
    return path


def test_load_valid_file(tmp_path: Path, coco_dict: dict) -> None:
    coco = load_coco(_write(tmp_path, coco_dict))
    assert coco.image_ids == [1, 2]
    assert coco.class_names == ["hard_hat", "bare"]
    assert len(coco.annotations[1]) == 5 and coco.annotations[2] == []
    assert coco.derived_masks is None


def test_every_segmentation_form_decodes(tmp_path: Path, coco_dict: dict) -> None:
    anns = coco_dict["annotations"]
    poly = annotation_mask(anns[0], H, W)
    assert poly.shape == (H, W) and poly.dtype == np.uint8
    assert poly[12, 15] == 1 and poly[30, 30] == 0
    rle = annotation_mask(anns[1], H, W)
    assert rle[20, 40] == 1
    unc = annotation_mask(anns[2], H, W)
    assert unc.sum() == 100 and unc[35, 10] == 1
    derived = annotation_mask(anns[3], H, W, "ellipse")
    assert derived[40, 55] == 1 and derived[35, 50] == 0  # centre in, corner out
    assert annotation_mask(anns[3], H, W, "box")[35, 50] == 1


def test_sub_pixel_polygon_keeps_one_pixel() -> None:
    ann = {"bbox": [10.2, 10.2, 0.3, 0.3], "segmentation": [[10.2, 10.2, 10.5, 10.2, 10.5, 10.5]]}
    assert annotation_mask(ann, H, W).sum() == 1


def test_box_to_polygon_shapes() -> None:
    ellipse = np.array(box_to_polygon([10, 20, 30, 40])).reshape(-1, 2)
    assert ellipse[:, 0].min() >= 10 and ellipse[:, 0].max() <= 40
    assert ellipse[:, 1].min() >= 20 and ellipse[:, 1].max() <= 60
    assert box_to_polygon([1, 2, 3, 4], "box") == [1, 2, 4, 2, 4, 6, 1, 6]
    with pytest.raises(ValueError, match="not one of"):
        box_to_polygon([0, 0, 1, 1], "circle")


BAD_INPUTS = {
    "missing image file": (lambda d: d["images"][1].update(file_name="gone.png"),
                           FileNotFoundError, r"image id=2: file .*gone\.png does not exist"),
    "unknown category": (lambda d: d["annotations"][0].update(category_id=9),
                         ValueError, r"annotation id=1: category_id=9 does not exist in 'categories'"),
    "duplicate image id": (lambda d: d["images"].append(dict(d["images"][0])),
                           ValueError, r"image id=1 appears twice"),
    "duplicate annotation id": (lambda d: d["annotations"].append(dict(d["annotations"][0])),
                                ValueError, r"annotation id=1 appears twice"),
    "zero width box": (lambda d: d["annotations"][0].update(bbox=[10, 5, 0, 14]),
                       ValueError, r"annotation id=1: bbox .* width or height <= 0"),
    "box outside image": (lambda d: d["annotations"][0].update(bbox=[100, 5, 10, 10]),
                          ValueError, r"annotation id=1: bbox .* lies outside the 64x48 image"),
    "two-point polygon": (lambda d: d["annotations"][0].update(segmentation=[[1, 1, 5, 5]]),
                          ValueError, r"annotation id=1: polygon has 2 points; a polygon needs at least 3"),
    "RLE size mismatch": (lambda d: d["annotations"][1]["segmentation"].update(size=[10, 10]),
                          ValueError, r"annotation id=2: RLE size \[10, 10\] does not match"),
    "uncompressed RLE wrong length": (lambda d: d["annotations"][2]["segmentation"]["counts"].append(5),
                                      ValueError, r"annotation id=3: uncompressed RLE counts sum"),
    "unknown image id": (lambda d: d["annotations"][0].update(image_id=77),
                         ValueError, r"annotation id=1: image_id=77 does not exist"),
    "bad iscrowd": (lambda d: d["annotations"][0].update(iscrowd=2), ValueError, r"iscrowd=2"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_names_file_and_id(tmp_path: Path, coco_dict: dict, case: str) -> None:
    mutate, error, pattern = BAD_INPUTS[case]
    data = copy.deepcopy(coco_dict)
    mutate(data)
    path = _write(tmp_path, data)
    with pytest.raises(error, match=r"ann\.json") as info:
        load_coco(path)
    assert info.match(pattern)


def test_drop_invalid_keeps_the_rest(tmp_path: Path, coco_dict: dict) -> None:
    coco_dict["annotations"][0]["category_id"] = 9
    coco_dict["annotations"][1]["bbox"] = [0, 0, -1, 3]
    coco = load_coco(_write(tmp_path, coco_dict), drop_invalid=True)
    assert [a["id"] for a in coco.annotations[1]] == [3, 4, 5]


def test_not_json_and_not_coco(tmp_path: Path) -> None:
    path = tmp_path / "x.json"
    path.write_text("this is { not json")
    with pytest.raises(ValueError, match=r"x\.json is not a JSON file"):
        load_coco(path)
    path.write_text(json.dumps({"images": []}))
    with pytest.raises(ValueError, match=r"no 'annotations' list"):
        load_coco(path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_coco(tmp_path / "missing.json")


def test_find_problems_lists_all(tmp_path: Path, coco_dict: dict) -> None:
    coco_dict["annotations"][0]["category_id"] = 9
    coco_dict["annotations"][1]["bbox"] = [0, 0, 0, 3]
    problems = find_problems(coco_dict, tmp_path / "ann.json", tmp_path, check_files=False)
    assert [(p.kind, p.ann_id) for p in problems] == [("unknown_category", 1), ("degenerate_box", 2)]


def test_dataset_targets(tmp_path: Path, coco_dict: dict) -> None:
    coco = load_coco(_write(tmp_path, coco_dict))
    ds = HeadDataset(coco, class_agnostic=False)
    image, target = ds[0]
    assert image.shape == (3, H, W) and image.dtype == torch.float32 and image.max() <= 1
    assert target["boxes"].shape == (4, 4)  # crowd annotation left out of the targets
    assert target["labels"].tolist() == [1, 2, 1, 2]
    assert target["masks"].shape == (4, H, W) and target["masks"].dtype == torch.uint8
    assert target["ann_ids"].tolist() == [1, 2, 3, 4]
    assert torch.equal(target["boxes"][0], torch.tensor([10.0, 5.0, 22.0, 19.0]))
    assert HeadDataset(coco)[0][1]["labels"].tolist() == [1, 1, 1, 1]
    empty_image, empty = ds[1]  # an image with no annotations
    assert empty["boxes"].shape == (0, 4) and empty["masks"].shape == (0, H, W)


def test_size_mismatch_on_disk(tmp_path: Path, coco_dict: dict) -> None:
    coco_dict["images"][0]["width"] = 65
    for a in coco_dict["annotations"]:
        a.pop("segmentation", None)
    coco = load_coco(_write(tmp_path, coco_dict))
    with pytest.raises(ValueError, match=r"image id=1 is 64x48 on disk but 65x48 in the JSON"):
        HeadDataset(coco)[0]


@pytest.mark.parametrize("seed", range(8))
def test_augmentation_keeps_boxes_and_masks_together(tmp_path: Path, coco_dict: dict, seed: int) -> None:
    coco = load_coco(_write(tmp_path, coco_dict))
    ds = HeadDataset(coco, train_transforms(hflip=0.5, scale_jitter=(0.5, 1.5), color_jitter=0.3))
    torch.manual_seed(seed)
    image, target = ds[0]
    n = len(target["boxes"])
    assert target["masks"].shape[0] == n == len(target["labels"]) == len(target["ann_ids"])
    assert image.shape == (3, H, W)
    keep = target["masks"].flatten(1).amax(1) > 0
    # every surviving box still encloses its mask (within a pixel of resampling)
    mask_boxes = masks_to_boxes(target["masks"][keep])
    boxes = target["boxes"][keep]
    assert torch.all(mask_boxes[:, :2] >= boxes[:, :2] - 1.5)
    assert torch.all(mask_boxes[:, 2:] <= boxes[:, 2:] + 1.5)


def test_horizontal_flip_is_exact(tmp_path: Path, coco_dict: dict) -> None:
    coco = load_coco(_write(tmp_path, coco_dict))
    plain = HeadDataset(coco)[0][1]
    flipped = HeadDataset(coco, train_transforms(hflip=1.0, scale_jitter=(1.0, 1.0), color_jitter=0))[0][1]
    assert torch.equal(flipped["masks"], plain["masks"].flip(-1))
    expected = plain["boxes"].clone()
    expected[:, [0, 2]] = W - plain["boxes"][:, [2, 0]]
    assert torch.allclose(flipped["boxes"], expected)


def test_check_dataset_tool(tmp_path: Path, coco_dict: dict, capsys: pytest.CaptureFixture) -> None:
    from tools import check_dataset

    path = _write(tmp_path, coco_dict)
    assert check_dataset.main(check_dataset.parse_args([str(path)])) == 0
    coco_dict["annotations"][0]["category_id"] = 9
    coco_dict["annotations"][2]["bbox"] = [5, 30, 0, 10]
    path = _write(tmp_path, coco_dict)
    clean = tmp_path / "clean.json"
    status = check_dataset.main(check_dataset.parse_args([str(path), "--drop-invalid", str(clean)]))
    out = capsys.readouterr().out
    assert status == 1
    assert "annotation id=1: category_id=9" in out and "annotation id=3: bbox" in out
    assert "2 problem(s): unknown_category 1, degenerate_box 1" in out
    assert "dropped 0 image(s) and 2 annotation(s)" in out
    assert [a["id"] for a in load_coco(clean).dataset["annotations"]] == [2, 4, 5]
    (tmp_path / "x.json").write_text("{")
    assert check_dataset.main(check_dataset.parse_args([str(tmp_path / "x.json")])) == 2
