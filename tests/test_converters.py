"""VOC / YOLO / CVAT -> COCO converters and the split preparation, on tiny files in tmp_path."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import cv2
import numpy as np
import pytest
from pycocotools.coco import COCO

from datasets.converters import (
    clip_box_xywh,
    cvat_to_coco,
    faces_to_heads_coco,
    polygon_area,
    prepare_split_files,
    voc_to_coco,
    yolo_to_coco,
)

SHARED_HARDHAT = Path(__file__).resolve().parents[2] / "shared" / "data" / "hardhat"


def write_image(path: Path, width: int, height: int) -> Path:
    """A gray image with one white ellipse 'head', enough for a header and a decode."""
    image = np.full((height, width, 3), 90, np.uint8)
    cv2.ellipse(image, (width // 2, height // 2), (max(width // 6, 1), max(height // 5, 1)), 0, 0, 360,
                (255, 255, 255), -1)
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), image)
    return path


def write_voc(path: Path, filename: str, width: int, height: int,
              objects: list[tuple[str, tuple[float, float, float, float]]], difficult: bool = False) -> Path:
    """A Pascal VOC XML with ``objects`` as ``(name, (xmin, ymin, xmax, ymax))``, 1-based inclusive."""
    objs = "".join(
        f"<object><name>{name}</name><difficult>{int(difficult)}</difficult><bndbox><xmin>{b[0]}</xmin>"
        f"<ymin>{b[1]}</ymin><xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>"
        for name, b in objects)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"<annotation><filename>{filename}</filename><size><width>{width}</width>"
                    f"<height>{height}</height><depth>3</depth></size>{objs}</annotation>")
    return path


def load_with_pycocotools(coco: dict, tmp_path: Path) -> COCO:
    path = tmp_path / "coco.json"
    path.write_text(json.dumps(coco))
    api = COCO(str(path))
    for ann in coco["annotations"]:  # every segmentation rasterises to a mask of the right size
        image = api.imgs[ann["image_id"]]
        assert api.annToMask(ann).shape == (image["height"], image["width"])
    return api


# ------------------------------------------------------------------------------------ pure parts


def test_clip_box_inside_partly_outside_and_degenerate() -> None:
    assert clip_box_xywh([1, 2, 3, 4], 10, 10) == [1.0, 2.0, 3.0, 4.0]
    assert clip_box_xywh([-2, 8, 5, 5], 10, 10) == [0.0, 8.0, 3.0, 2.0]
    assert clip_box_xywh([12, 0, 3, 3], 10, 10) is None
    assert clip_box_xywh([2, 2, 0, 3], 10, 10) is None


def test_polygon_area_shoelace_either_orientation() -> None:
    square = [0, 0, 4, 0, 4, 3, 0, 3]
    assert polygon_area(square) == 12.0
    assert polygon_area(square[::-1]) == 12.0
    assert polygon_area([0, 0, 1, 1]) == 0.0


# --------------------------------------------------------------------------------------- VOC


def test_voc_one_based_shift_areas_and_derived_marking(tmp_path: Path) -> None:
    xml = write_voc(tmp_path / "a.xml", "a.jpg", 40, 30, [("head", (1, 1, 10, 20)), ("helmet", (11, 5, 20, 14))])
    coco = voc_to_coco([xml], categories=["helmet", "head"])
    assert coco["categories"] == [{"id": 1, "name": "helmet", "supercategory": "head"},
                                  {"id": 2, "name": "head", "supercategory": "head"}]
    assert coco["images"] == [{"id": 1, "file_name": "a.jpg", "width": 40, "height": 30}]
    head, helmet = coco["annotations"]
    # xmin = 1 is the first pixel column: x = 0, and xmax = 10 inclusive gives w = 10.
    assert head["bbox"] == [0.0, 0.0, 10.0, 20.0] and head["category_id"] == 2
    assert helmet["bbox"] == [10.0, 4.0, 10.0, 10.0] and helmet["category_id"] == 1
    assert head["area"] == pytest.approx(math.pi * 10 * 20 / 4)
    assert all(a["derived_mask"] == "ellipse" and a["iscrowd"] == 0 for a in coco["annotations"])
    assert coco["info"]["derived_masks"] == "ellipse"
    assert [a["id"] for a in coco["annotations"]] == [1, 2]
    api = load_with_pycocotools(coco, tmp_path)
    # The rasterised ellipse covers roughly pi/4 of its box.
    assert api.annToMask(head).sum() == pytest.approx(math.pi * 10 * 20 / 4, rel=0.15)


def test_voc_box_mask_clipping_and_degenerate_skip(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    xml = write_voc(tmp_path / "b.xml", "b.jpg", 20, 10, [
        ("head", (15, 5, 25, 12)),   # runs past the right and bottom edges: clipped
        ("head", (22, 1, 30, 5)),    # wholly right of the image: skipped
        ("head", (1, 1, 1, 1)),      # one pixel: kept
    ])
    with caplog.at_level(logging.WARNING, logger="datasets.converters"):
        coco = voc_to_coco([xml], derived_mask="box")
    assert [a["bbox"] for a in coco["annotations"]] == [[14.0, 4.0, 6.0, 6.0], [0.0, 0.0, 1.0, 1.0]]
    assert [a["area"] for a in coco["annotations"]] == [36.0, 1.0]
    assert coco["annotations"][0]["segmentation"] == [[14.0, 4.0, 20.0, 4.0, 20.0, 10.0, 14.0, 10.0]]
    assert coco["info"] == {"description": coco["info"]["description"], "derived_masks": "box", "skipped_boxes": 1}
    assert "b.xml" in caplog.text and "skipped" in caplog.text
    load_with_pycocotools(coco, tmp_path)


def test_voc_categories_default_sorted_and_empty_image(tmp_path: Path) -> None:
    a = write_voc(tmp_path / "a.xml", "a.jpg", 10, 10, [("zeta", (1, 1, 5, 5)), ("alpha", (2, 2, 6, 6))])
    empty = write_voc(tmp_path / "e.xml", "e.jpg", 10, 10, [])
    coco = voc_to_coco([a, empty])
    assert [c["name"] for c in coco["categories"]] == ["alpha", "zeta"]
    assert [a["category_id"] for a in coco["annotations"]] == [2, 1]
    assert [i["id"] for i in coco["images"]] == [1, 2]
    assert voc_to_coco([empty])["info"]["derived_masks"] is None  # nothing derived, nothing claimed
    load_with_pycocotools(coco, tmp_path)


def test_voc_difficult_objects_are_kept_and_marked(tmp_path: Path) -> None:
    xml = write_voc(tmp_path / "d.xml", "d.jpg", 10, 10, [("head", (1, 1, 5, 5))], difficult=True)
    assert voc_to_coco([xml])["annotations"][0]["difficult"] == 1


def test_voc_unknown_category_names_file_and_name(tmp_path: Path) -> None:
    xml = write_voc(tmp_path / "c.xml", "c.jpg", 10, 10, [("hat", (1, 1, 5, 5))])
    with pytest.raises(ValueError, match=r"c\.xml.*'hat'"):
        voc_to_coco([xml], categories=["helmet", "head"])


@pytest.mark.parametrize("bad", [
    "<annotation><filename>x.jpg</filename></annotation>",
    "<annotation><filename>x.jpg</filename><size><width>0</width><height>5</height></size></annotation>",
    "<annotation><filename>x.jpg",
])
def test_voc_malformed_files_name_the_file(tmp_path: Path, bad: str) -> None:
    path = tmp_path / "bad.xml"
    path.write_text(bad)
    with pytest.raises(ValueError, match="bad.xml"):
        voc_to_coco([path])


def test_bad_derived_mask_is_rejected(tmp_path: Path) -> None:
    xml = write_voc(tmp_path / "a.xml", "a.jpg", 10, 10, [])
    with pytest.raises(ValueError, match="'circle'.*ellipse"):
        voc_to_coco([xml], derived_mask="circle")


# -------------------------------------------------------------------------------------- YOLO


def test_yolo_boxes_sizes_from_images_and_unlabelled_images(tmp_path: Path) -> None:
    write_image(tmp_path / "images" / "a.png", 40, 20)
    write_image(tmp_path / "images" / "b.jpg", 16, 16)  # no label file: kept, no annotations
    labels = tmp_path / "labels"
    labels.mkdir()
    (labels / "a.txt").write_text("1 0.5 0.5 0.5 0.5\n\n0 0.05 0.5 0.2 0.4\n")
    coco = yolo_to_coco(labels, tmp_path / "images", ["helmet", "head"])
    assert coco["images"] == [{"id": 1, "file_name": "a.png", "width": 40, "height": 20},
                              {"id": 2, "file_name": "b.jpg", "width": 16, "height": 16}]
    first, second = coco["annotations"]
    assert first["bbox"] == pytest.approx([10.0, 5.0, 20.0, 10.0]) and first["category_id"] == 2
    assert second["bbox"] == pytest.approx([0.0, 6.0, 6.0, 8.0])  # x = -2 clipped to 0
    assert second["category_id"] == 1 and second["derived_mask"] == "ellipse"
    load_with_pycocotools(coco, tmp_path)


@pytest.mark.parametrize("line, message", [
    ("0 0.5 0.5 0.5", "4 values"),
    ("0 0.5 zero 0.5 0.5", "non-number"),
    ("2 0.5 0.5 0.5 0.5", "class '2'"),
    ("0.5 0.5 0.5 0.5 0.5", "class '0.5'"),
])
def test_yolo_bad_line_names_file_and_line(tmp_path: Path, line: str, message: str) -> None:
    write_image(tmp_path / "images" / "a.jpg", 8, 8)
    (tmp_path / "labels").mkdir()
    (tmp_path / "labels" / "a.txt").write_text(f"0 0.5 0.5 0.5 0.5\n{line}\n")
    with pytest.raises(ValueError, match=rf"a\.txt:2: .*{message}"):
        yolo_to_coco(tmp_path / "labels", tmp_path / "images", ["helmet", "head"])


# -------------------------------------------------------------------------------------- CVAT

CVAT_XML = """<?xml version="1.0" encoding="utf-8"?>
<annotations>
  <version>1.1</version>
  <meta><task><labels>
    <label><name>helmet</name></label><label><name>head</name></label>
  </labels></task></meta>
  <image id="0" name="one.jpg" width="50" height="40">
    <box label="head" occluded="0" xtl="10.5" ytl="4" xbr="20.5" ybr="24"/>
    <polygon label="helmet" occluded="0" points="0,0;10,0;10,10;0,10"/>
    <polygon label="helmet" occluded="0" points="45,30;55,30;55,45"/>
    <points label="head" points="3,3"/>
  </image>
  <image id="1" name="two.jpg" width="8" height="8"/>
</annotations>
"""


def test_cvat_polygons_keep_real_masks_boxes_get_derived_ones(tmp_path: Path) -> None:
    path = tmp_path / "cvat.xml"
    path.write_text(CVAT_XML)
    coco = cvat_to_coco(path)
    assert [c["name"] for c in coco["categories"]] == ["helmet", "head"]  # <meta> order, not sorted
    assert [(i["id"], i["file_name"]) for i in coco["images"]] == [(1, "one.jpg"), (2, "two.jpg")]
    box, square, corner = coco["annotations"]
    assert box["bbox"] == [10.5, 4.0, 10.0, 20.0] and box["derived_mask"] == "ellipse"
    assert box["area"] == pytest.approx(math.pi * 10 * 20 / 4)
    assert square["bbox"] == [0.0, 0.0, 10.0, 10.0] and square["area"] == 100.0
    assert "derived_mask" not in square and square["segmentation"] == [[0, 0, 10, 0, 10, 10, 0, 10]]
    # The triangle's vertices past the 50x40 border are clamped onto it.
    assert corner["bbox"] == [45.0, 30.0, 5.0, 10.0] and corner["area"] == pytest.approx(25.0)
    assert coco["info"]["derived_masks"] == "ellipse"
    load_with_pycocotools(coco, tmp_path)


def test_cvat_polygons_only_claims_no_derived_masks_and_sorts_found_labels(tmp_path: Path) -> None:
    path = tmp_path / "cvat.xml"
    path.write_text('<annotations><image id="0" name="a.jpg" width="9" height="9">'
                    '<polygon label="zz" points="0,0;4,0;4,4"/><polygon label="aa" points="1,1;3,1;3,3"/>'
                    '</image></annotations>')
    coco = cvat_to_coco(path)
    assert coco["info"]["derived_masks"] is None
    assert [c["name"] for c in coco["categories"]] == ["aa", "zz"]
    assert [a["category_id"] for a in coco["annotations"]] == [2, 1]


def test_cvat_label_missing_from_meta_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "cvat.xml"
    path.write_text(CVAT_XML.replace('<box label="head"', '<box label="cap"'))
    with pytest.raises(ValueError, match=r"one\.jpg.*'cap'"):
        cvat_to_coco(path)


# ----------------------------------------------------------------------------- split preparation


def make_fake_src(root: Path) -> Path:
    """A facemask-like folder: 4 images, one per split plus an unannotated one in train."""
    boxes = {"a.jpg": [("head", (2, 2, 11, 11))], "b.jpg": [("helmet", (3, 3, 9, 12)), ("head", (1, 1, 4, 4))],
             "c.jpg": [("head", (5, 5, 14, 14))], "d.jpg": []}
    for name, objects in boxes.items():
        write_image(root / "images" / name, 24, 16)
        write_voc(root / "annotations" / f"{Path(name).stem}.xml", name, 24, 16, objects)
    (root / "splits").mkdir()
    for split, names in {"train": "a.jpg\nd.jpg\n", "val": "b.jpg\n", "test": "c.jpg\n\n"}.items():
        (root / "splits" / f"{split}.txt").write_text(names)
    return root


def test_prepare_split_files_writes_jsons_and_links_images(tmp_path: Path) -> None:
    src, out = make_fake_src(tmp_path / "src"), tmp_path / "out"
    paths = prepare_split_files(src, out, ["helmet", "head"], description="fake")
    assert paths == {s: out / f"{s}.json" for s in ("train", "val", "test")}
    assert (out / "images").is_symlink() and (out / "images").resolve() == (src / "images").resolve()
    assert Path(str((out / "images").readlink())).is_absolute()
    counts = {}
    for split, path in paths.items():
        api = COCO(str(path))
        counts[split] = len(api.anns)
        for image in api.imgs.values():
            assert (out / image["file_name"]).is_file() and image["file_name"].startswith("images/")
    assert counts == {"train": 1, "val": 2, "test": 1}
    assert json.loads(paths["val"].read_text())["info"]["description"] == "fake (val split)"
    assert prepare_split_files(src, out, ["helmet", "head"]) == paths  # rerun over an existing link


def test_faces_to_heads_coco_derives_head_boxes_and_their_masks(tmp_path: Path) -> None:
    from headseg.attributes import FaceToHead

    face = voc_to_coco([write_voc(tmp_path / "a.xml", "a.jpg", 100, 80, [("with_mask", (41, 31, 60, 50))])])
    before = json.dumps(face)
    heads = faces_to_heads_coco(face, FaceToHead(width=1.5, top=0.5, bottom=0.1))
    assert json.dumps(face) == before  # the input is not changed
    (ann,) = heads["annotations"]
    # face x 40..60, y 30..50 (w = h = 20): head 1.5 face widths wide, 10 px above, 2 px below
    assert ann["bbox"] == pytest.approx([35.0, 20.0, 30.0, 32.0])
    assert ann["area"] == pytest.approx(math.pi * 30 * 32 / 4)
    assert ann["derived_mask"] == "ellipse" and ann["category_id"] == face["annotations"][0]["category_id"]
    assert heads["info"]["face_to_head"] == {"width": 1.5, "top": 0.5, "bottom": 0.1}
    assert heads["info"]["derived_masks"] == "ellipse"
    api = load_with_pycocotools(heads, tmp_path)
    mask = api.annToMask(ann)
    ys, xs = np.nonzero(mask)
    assert 35 <= xs.min() and xs.max() < 65 and 20 <= ys.min() and ys.max() < 52  # inside the head box
    assert mask.sum() == pytest.approx(ann["area"], rel=0.1)
    edge = voc_to_coco([write_voc(tmp_path / "b.xml", "b.jpg", 100, 80, [("x", (1, 1, 20, 20))])])
    assert faces_to_heads_coco(edge)["annotations"][0]["bbox"][:2] == [0.0, 0.0]  # clipped to the image


def test_prepare_facemask_writes_head_boxes_on_request(tmp_path: Path) -> None:
    from datasets import prepare_facemask

    src = tmp_path / "src"
    for name, box in {"a.jpg": (5, 5, 12, 12), "b.jpg": (3, 3, 8, 8), "c.jpg": (10, 4, 16, 10)}.items():
        write_image(src / "images" / name, 24, 16)
        write_voc(src / "annotations" / f"{Path(name).stem}.xml", name, 24, 16, [("with_mask", box)])
    (src / "splits").mkdir()
    for split, name in {"train": "a.jpg", "val": "b.jpg", "test": "c.jpg"}.items():
        (src / "splits" / f"{split}.txt").write_text(name + "\n")
    faces = prepare_facemask.main(prepare_facemask.parse_args(["--src", str(src), "--out", str(tmp_path / "f")]))
    heads = prepare_facemask.main(prepare_facemask.parse_args(
        ["--src", str(src), "--out", str(tmp_path / "h"), "--face-to-head", "--head-rule", "2", "0.5", "0"]))
    face = json.loads(faces["train"].read_text())["annotations"][0]["bbox"]  # x 4..12, y 4..12
    head = json.loads(heads["train"].read_text())["annotations"][0]["bbox"]
    assert face == pytest.approx([4.0, 4.0, 8.0, 8.0])
    assert head == pytest.approx([0.0, 0.0, 16.0, 12.0])  # 16 wide, 4 px above (clipped at 0)
    assert json.loads(heads["val"].read_text())["info"]["face_to_head"]["width"] == 2.0
    with pytest.raises(ValueError, match="only applies with --face-to-head"):
        prepare_facemask.main(prepare_facemask.parse_args(
            ["--src", str(src), "--out", str(tmp_path / "x"), "--head-rule", "2", "0.5", "0"]))


def test_prepare_split_files_image_without_xml_is_a_clear_error(tmp_path: Path) -> None:
    src = make_fake_src(tmp_path / "src")
    (src / "annotations" / "c.xml").unlink()
    with pytest.raises(FileNotFoundError, match=r"'c\.jpg'.*test\.txt.*c\.xml"):
        prepare_split_files(src, tmp_path / "out", ["helmet", "head"])


def test_prepare_split_files_rejects_an_image_in_two_splits(tmp_path: Path) -> None:
    src = make_fake_src(tmp_path / "src")
    (src / "splits" / "test.txt").write_text("c.jpg\na.jpg\n")
    with pytest.raises(ValueError, match=r"'a\.jpg'.*'train' and 'test'"):
        prepare_split_files(src, tmp_path / "out", ["helmet", "head"])


def test_prepare_split_files_rejects_size_disagreeing_with_image(tmp_path: Path) -> None:
    src = make_fake_src(tmp_path / "src")
    write_image(src / "images" / "b.jpg", 30, 16)
    with pytest.raises(ValueError, match=r"b\.xml.*24x16.*30x16"):
        prepare_split_files(src, tmp_path / "out", ["helmet", "head"])


# ------------------------------------------------------------------------------ the real data set


@pytest.mark.skipif(not SHARED_HARDHAT.is_dir(), reason=f"{SHARED_HARDHAT} is not present")
def test_prepare_hardhat_main_on_the_shared_data(tmp_path: Path) -> None:
    from datasets import prepare_hardhat

    paths = prepare_hardhat.main(prepare_hardhat.parse_args(["--src", str(SHARED_HARDHAT), "--out", str(tmp_path)]))
    cocos = {split: json.loads(path.read_text()) for split, path in paths.items()}
    assert {split: len(c["annotations"]) for split, c in cocos.items()} == {"train": 430, "val": 77, "test": 161}
    assert {split: len(c["images"]) for split, c in cocos.items()} == {"train": 126, "val": 18, "test": 37}
    assert all(c["info"]["derived_masks"] == "ellipse" and c["info"]["skipped_boxes"] == 0 for c in cocos.values())
    assert [c["name"] for c in cocos["train"]["categories"]] == ["helmet", "head"]
