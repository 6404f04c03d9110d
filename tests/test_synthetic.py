"""The synthetic head-attire generator: determinism, exact masks, COCO output, CLI."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from datasets.synthetic import (
    ATTIRE_CLASSES,
    Instance,
    SyntheticConfig,
    _Prim,
    _draw,
    _rasterize,
    _sample_person,
    generate_image,
    image_rng,
    main,
    make_synthetic_coco,
    make_synthetic_splits,
    parse_args,
)

TINY = SyntheticConfig(image_size=(128, 128), heads_per_image=(1, 4))


def _images(n: int, cfg: SyntheticConfig = TINY, seed: int = 0) -> list[tuple[np.ndarray, list[Instance]]]:
    return [generate_image(image_rng(seed, "test", i), cfg) for i in range(n)]


def _load_coco(path: Path) -> COCO:
    with contextlib.redirect_stdout(io.StringIO()):  # COCO() prints timing lines
        return COCO(str(path))


def test_same_seed_gives_byte_identical_files(tmp_path: Path) -> None:
    a = make_synthetic_coco(tmp_path / "a", 5, TINY, seed=7)
    b = make_synthetic_coco(tmp_path / "b", 5, TINY, seed=7)
    c = make_synthetic_coco(tmp_path / "c", 5, TINY, seed=8)
    assert a.read_bytes() == b.read_bytes()
    assert a.read_bytes() != c.read_bytes()
    for i in range(5):
        name = f"images/train_{i:06d}.png"
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_image_does_not_depend_on_dataset_length(tmp_path: Path) -> None:
    make_synthetic_coco(tmp_path / "short", 2, TINY)
    make_synthetic_coco(tmp_path / "long", 4, TINY)
    name = "images/train_000001.png"
    assert (tmp_path / "short" / name).read_bytes() == (tmp_path / "long" / name).read_bytes()


def test_splits_use_different_streams(tmp_path: Path) -> None:
    paths = make_synthetic_splits(tmp_path, {"train": 2, "val": 2, "test": 1}, TINY, seed=0)
    assert list(paths) == ["train", "val", "test"]
    assert all(p == tmp_path / f"{name}.json" and p.is_file() for name, p in paths.items())
    train0 = (tmp_path / "images/train_000000.png").read_bytes()
    val0 = (tmp_path / "images/val_000000.png").read_bytes()
    assert train0 != val0


def test_at_least_six_classes_appear_in_forty_images() -> None:
    labels = [inst.label for _, instances in _images(40) for inst in instances]
    assert set(labels) <= set(ATTIRE_CLASSES)
    assert len(set(labels)) >= 6, f"classes seen: {sorted(set(labels))}"


def test_masks_nonempty_tight_boxed_and_disjoint() -> None:
    for image, instances in _images(20):
        h, w = image.shape[:2]
        cover = np.zeros((h, w), np.int32)
        for inst in instances:
            assert inst.mask.dtype == bool and inst.mask.shape == (h, w)
            ys, xs = np.nonzero(inst.mask)
            assert len(xs) >= TINY.min_visible_pixels
            assert inst.box_xyxy == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
            assert inst.category_id == TINY.classes.index(inst.label) + 1
            assert TINY.min_visible_fraction <= inst.visible_fraction <= 1.0
            cover += inst.mask
        assert cover.max(initial=0) <= 1, "masks of one image overlap"


def test_occlusion_happens_and_keeps_heads_visible() -> None:
    cfg = SyntheticConfig(image_size=(128, 128), heads_per_image=(3, 4), overlap_prob=1.0, empty_prob=0.0)
    fractions = [inst.visible_fraction for _, instances in _images(15, cfg) for inst in instances]
    assert min(fractions) >= cfg.min_visible_fraction
    assert any(f < 0.98 for f in fractions), "no head was ever occluded or clipped"


def test_masks_are_exactly_the_painted_pixels() -> None:
    # Images and masks go through the same _draw call; a sentinel canvas shows they agree.
    rng = np.random.default_rng(3)
    for label in ATTIRE_CLASSES:
        person = _sample_person(rng, TINY, 96, 112, label, [])
        canvas = np.full((96, 112, 3), -1.0, np.float32)
        for prim in person.head:
            _draw(canvas, prim, (1.0, 1.0, 1.0))
        assert np.array_equal(canvas[..., 0] > 0, _rasterize(person.head, (96, 112)))


def test_one_pixel_polygon_box_convention() -> None:
    mask = _rasterize([_Prim(np.array([[5.0, 6.0], [5.2, 6.0], [5.2, 6.2]]), (0, 0, 0))], (10, 10))
    ys, xs = np.nonzero(mask)
    assert (len(xs), xs[0], ys[0]) == (1, 5, 6)


def test_coco_file_loads_and_matches_generated_masks(tmp_path: Path) -> None:
    path = make_synthetic_coco(tmp_path, 6, TINY, seed=3, split_name="val")
    assert path == tmp_path / "val.json"
    data = json.loads(path.read_text())
    assert "synthetic" in data["info"]["description"] and "exact" in data["info"]["description"]
    assert [c["name"] for c in data["categories"]] == list(ATTIRE_CLASSES)
    assert [c["id"] for c in data["categories"]] == list(range(1, len(ATTIRE_CLASSES) + 1))
    assert {c["supercategory"] for c in data["categories"]} == {"head"}
    coco = _load_coco(path)
    for i, img in enumerate(data["images"]):
        assert img["file_name"] == f"images/val_{i:06d}.png"
        image, instances = generate_image(image_rng(3, "val", i), TINY)
        on_disk = cv2.cvtColor(cv2.imread(str(tmp_path / img["file_name"])), cv2.COLOR_BGR2RGB)
        assert np.array_equal(on_disk, image)
        anns = coco.loadAnns(coco.getAnnIds(imgIds=img["id"]))
        assert len(anns) == len(instances)
        for ann, inst in zip(anns, instances):
            assert isinstance(ann["segmentation"]["counts"], str)
            assert ann["iscrowd"] == 0
            assert np.array_equal(coco.annToMask(ann).astype(bool), inst.mask)
            assert ann["area"] == int(inst.mask.sum())
            x0, y0, x1, y1 = inst.box_xyxy
            assert ann["bbox"] == [x0, y0, x1 - x0, y1 - y0]
            assert ann["bbox"] == mask_utils.toBbox(ann["segmentation"]).tolist()
            assert coco.cats[ann["category_id"]]["name"] == inst.label


def test_headseg_loader_accepts_the_file(tmp_path: Path) -> None:
    from headseg.data import load_coco

    coco = load_coco(make_synthetic_coco(tmp_path, 4, TINY))
    assert coco.class_names == list(ATTIRE_CLASSES)
    assert len(coco.images) == 4


def test_image_size_and_dtype() -> None:
    for image, _ in _images(4):
        assert image.shape == (128, 128, 3) and image.dtype == np.uint8
    varied = SyntheticConfig(image_size=(64, 100), heads_per_image=(0, 2))
    shapes = {image.shape for image, _ in _images(8, varied)}
    assert all(64 <= h <= 100 and 64 <= w <= 100 and c == 3 for h, w, c in shapes)
    assert len(shapes) > 1


def test_empty_prob_one_gives_no_annotations(tmp_path: Path) -> None:
    cfg = SyntheticConfig(image_size=(128, 128), empty_prob=1.0)
    path = make_synthetic_coco(tmp_path, 3, cfg)
    data = json.loads(path.read_text())
    assert len(data["images"]) == 3 and data["annotations"] == []
    assert all((tmp_path / img["file_name"]).is_file() for img in data["images"])
    assert _load_coco(path).getAnnIds() == []


def test_config_lists_become_tuples() -> None:
    cfg = SyntheticConfig(image_size=[64, 96], classes=["cap", "hood"])  # type: ignore[arg-type]
    assert cfg.image_size == (64, 96) and cfg.classes == ("cap", "hood")
    assert SyntheticConfig.fixed_size(96).image_size == (96, 96)


def test_class_subset_renumbers_categories() -> None:
    cfg = SyntheticConfig(image_size=(128, 128), classes=("hood", "cap"), empty_prob=0.0)
    for _, instances in _images(5, cfg):
        for inst in instances:
            assert (inst.label, inst.category_id) in {("hood", 1), ("cap", 2)}


@pytest.mark.parametrize("kwargs, words", [
    ({"classes": ("bare", "tophat")}, "tophat"),
    ({"classes": ("bare", "hardhat")}, "did you mean 'hard_hat'"),
    ({"classes": ("cap", "cap")}, "distinct"),
    ({"classes": ()}, "non-empty"),
    ({"image_size": (128, 64)}, "image_size"),
    ({"head_size": (0.1, 2.0)}, "head_size"),
    ({"overlap_prob": 1.5}, "overlap_prob"),
])
def test_bad_config_is_a_clear_error(kwargs: dict, words: str) -> None:
    with pytest.raises(ValueError, match=words):
        SyntheticConfig(**kwargs)


def test_bad_arguments_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="numpy.random.Generator"):
        generate_image(0, TINY)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="negative"):
        make_synthetic_coco(tmp_path, -1, TINY)
    with pytest.raises(ValueError, match="plain name"):
        make_synthetic_coco(tmp_path, 1, TINY, split_name="../train")


def test_cli_main_writes_splits(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = parse_args(["--out", str(tmp_path), "--train", "2", "--val", "1", "--test", "0",
                       "--size", "64", "--seed", "1"])
    paths = main(args)
    assert set(paths) == {"train", "val"}
    data = json.loads(paths["train"].read_text())
    assert {(img["width"], img["height"]) for img in data["images"]} == {(64, 64)}
    assert "train: 2 images" in capsys.readouterr().out
