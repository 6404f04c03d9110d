"""Several attributes end to end: config, two crop sets in one run, checkpoints old and new,
results, drawing and evaluation, on tiny synthetic data and untrained tiny models."""

from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torchvision
import yaml

from headseg import Head, HeadwearPipeline, ImageResult
from headseg.attributes import AttributePrediction, AttributeSchema, FaceToHead, faces_to_heads
from headseg.classification import (
    Classifier,
    attribute_draw_shares,
    classifier_checkpoint,
    draw_shares,
    value_draw_shares,
    normalize,
    predict_probs,
    train_classifier,
)
from headseg.config import ClsConfig, SegConfig, load_config
from headseg.crop_sets import AttributeCropDataset
from headseg.engine import load_checkpoint, save_checkpoint
from headseg.evaluation import (attribute_end_to_end, attribute_ground_truth, bootstrap_end_to_end,
                                end_to_end_breakdown)
from headseg.pipeline import ASSETS, DrawnHead, draw_heads, head_lines, label_size, place_labels
from headseg.segmentation import build_segmenter, segmenter_checkpoint
from tests.conftest import TINY_SEG
from tools import eval_cls, eval_pipeline, make_crops, predict, train_cls

ROOT = Path(__file__).resolve().parents[1]
# Two synthetic "data sets", each labelling one attribute with its own category names.
SOURCES = {"hats": ("bare", "hard_hat"), "faces": ("face_mask", "bare", "glasses")}
SCHEMA = {
    "attributes": {"headwear": ["helmet", "none"], "face_mask": ["with_mask", "without_mask", "incorrect"]},
    "sources": {"hats": {"hard_hat": "headwear/helmet", "bare": "headwear/none"},
                "faces": {"face_mask": "face_mask/with_mask", "bare": "face_mask/without_mask",
                          "glasses": "face_mask/incorrect"}},
}
TINY_TRAIN = ["crop.size=32", "model.weights=none", "train.batch_size=4", "train.max_iters=2",
              "train.epochs=2", "train.frozen_epochs=1", "data.workers=0"]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Path]]:
    """Per source: its COCO splits and crop sets (the faces set cut with --face-to-head)."""
    from datasets.synthetic import SyntheticConfig, make_synthetic_splits

    out = tmp_path_factory.mktemp("multi")
    found: dict[str, dict[str, Path]] = {}
    for seed, (name, classes) in enumerate(SOURCES.items()):
        splits = make_synthetic_splits(out / name, {"train": 6, "val": 3},
                                       SyntheticConfig.fixed_size(128, classes=classes), seed=seed)
        found[name] = dict(splits)
        for split, coco in splits.items():
            extra = ["--face-to-head"] if name == "faces" else []
            found[name][f"crops_{split}"] = make_crops.main(make_crops.parse_args(
                ["--coco", str(coco), "--out", str(out / f"crops_{name}" / split), "--no-progress", *extra,
                 "--set", "crop.size=32"]))
    return found


@pytest.fixture(scope="module")
def config_file(data: dict, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("cfg") / "cls_two.yaml"
    sources = [{"name": n, "train_index": str(data[n]["crops_train"]), "val_index": str(data[n]["crops_val"])}
               for n in SOURCES]
    path.write_text(yaml.safe_dump({"_base_": str(ROOT / "configs" / "cls_default.yaml"), "schema": SCHEMA,
                                    "data": {"sources": sources}}, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def trained(config_file: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("run")
    train_cls.main(train_cls.parse_args(["--config", str(config_file), "--out", str(out), "--no-progress",
                                         "--set", *TINY_TRAIN]))
    return out


@pytest.fixture(scope="module")
def seg_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    cfg = load_config(SegConfig, None, [s for s in TINY_SEG if s.startswith("model.")])
    path = tmp_path_factory.mktemp("seg") / "seg.pt"
    save_checkpoint(path, segmenter_checkpoint(build_segmenter(cfg.model, 1), cfg, ["head"]))
    return path


# ----------------------------------------------------------------------------- config


def test_example_config_and_config_errors() -> None:
    cfg = load_config(ClsConfig, ROOT / "configs" / "cls_multi.yaml")
    assert cfg.schema.names == ["headwear", "face_mask"]
    assert [s.name for s in cfg.data.sources] == ["hhw", "facemask", "facemask", "street"]  # facemask: gt + pred
    assert cfg.schema.targets("facemask", "mask_weared_incorrect") == [-1, 2]  # prepare_facemask's names
    assert cfg.schema.targets("hhw", "head") == [1, -1]  # prepare_hhw's names
    assert load_config(ClsConfig, ROOT / "configs" / "cls_facemask.yaml").schema is None
    with pytest.raises(ValueError, match="no schema"):
        load_config(ClsConfig, None, ["data.sources=[{name: a, train_index: x}]"])
    with pytest.raises(ValueError, match="data.sources instead"):
        load_config(ClsConfig, ROOT / "configs" / "cls_multi.yaml", ["data.train_index=x.csv"])
    with pytest.raises(ValueError, match="among the schema's sources"):
        load_config(ClsConfig, ROOT / "configs" / "cls_multi.yaml", ["data.sources=[{name: hardhat}]"])
    twice = "data.sources=[{name: hhw, train_index: a}, {name: hhw, train_index: b}]"  # gt and pred crops
    sources = load_config(ClsConfig, ROOT / "configs" / "cls_multi.yaml", [twice]).data.sources
    assert [s.train_index for s in sources] == ["a", "b"]
    with pytest.raises(ValueError, match="must be > 0"):
        load_config(ClsConfig, ROOT / "configs" / "cls_multi.yaml", ["data.sources=[{name: hhw, weight: 0}]"])


# ----------------------------------------------------------------------------- crops


def test_face_boxes_become_head_boxes_before_cropping(data: dict) -> None:
    meta = json.loads((data["faces"]["crops_train"].parent / "crops.json").read_text())
    assert meta["face_to_head"] == {"width": 1.56, "top": 0.65, "bottom": 0.2}
    assert json.loads((data["hats"]["crops_train"].parent / "crops.json").read_text())["face_to_head"] is None
    ann = {"id": 1, "bbox": [40, 50, 20, 30], "category_id": 1, "segmentation": [[0, 0, 1, 1, 1, 0]]}
    (head,) = faces_to_heads([ann], FaceToHead(), 100, 100)
    # 1.56 face widths centred on the face, 0.65 face heights above it and 0.2 below
    assert head["bbox"] == pytest.approx([34.4, 30.5, 31.2, 55.5]) and "segmentation" not in head
    assert head["area"] == pytest.approx(31.2 * 55.5) and ann["bbox"] == [40, 50, 20, 30]  # input kept


def test_weak_labels_give_every_crop_one_label(data: dict, tmp_path: Path) -> None:
    """--label: a set silent on an attribute whose value is known (street photos: no hard hat)."""
    index = make_crops.main(make_crops.parse_args(
        ["--coco", str(data["faces"]["val"]), "--out", str(tmp_path / "weak"), "--no-progress", "--face-to-head",
         "--label", "no_hard_hat", "--set", "crop.size=32"]))
    rows = list(csv.DictReader(index.open()))
    plain = list(csv.DictReader(Path(data["faces"]["crops_val"]).open()))
    assert [r["crop"] for r in rows] == [r["crop"] for r in plain] and {r["label"] for r in rows} == {"no_hard_hat"}
    assert (index.parent / "classes.txt").read_text().split() == ["no_hard_hat"]
    schema = AttributeSchema.from_dict({**SCHEMA, "sources": {**SCHEMA["sources"],
                                                              "street": {"no_hard_hat": "headwear/none"}}})
    weak = AttributeCropDataset([("street", index)], schema)
    assert weak.targets.tolist() == [[1, -1]] * len(rows)  # headwear none, face_mask unlabelled


def test_a_source_may_bring_several_crop_sets(data: dict) -> None:
    """Ground-truth and prediction crops of one source: listed twice, both kept (not one dropped)."""
    schema = AttributeSchema.from_dict(SCHEMA)
    train, val = data["faces"]["crops_train"], data["faces"]["crops_val"]
    one = AttributeCropDataset({"faces": train}, schema)
    both = AttributeCropDataset([("faces", train), ("faces", val), ("hats", data["hats"]["crops_val"])], schema)
    sizes = [len(AttributeCropDataset({n: i}, schema))
             for n, i in (("faces", val), ("hats", data["hats"]["crops_val"]))]
    assert len(both) == len(one) + sum(sizes) and both.sources.count("faces") == len(one) + sizes[0]
    assert torch.equal(both.targets[:len(one)], one.targets)
    assert (both.targets[:len(one) + sizes[0], 0] == -1).all()  # faces label no headwear


def test_a_crop_set_weight_sets_its_share_of_a_values_draws(config_file: Path, data: dict) -> None:
    """Two crop sets of one source: `weight: 3` gives each of the second's crops three times the draws."""
    train, val = data["faces"]["crops_train"], data["faces"]["crops_val"]
    sources = [{"name": "faces", "train_index": str(train)}, {"name": "faces", "train_index": str(val), "weight": 3}]
    cfg = load_config(ClsConfig, config_file, [f"data.sources={json.dumps(sources)}"])
    dataset = AttributeCropDataset([("faces", train), ("faces", val)], cfg.schema)
    n_train = len(AttributeCropDataset({"faces": train}, cfg.schema))
    shares = draw_shares(dataset, cfg)
    column, values = dataset.targets[:, 1], cfg.schema.attributes["face_mask"]
    assert set(shares) == {f"face_mask/{values[v]}" for v in column.unique().tolist()}
    for v in column.unique().tolist():
        a, b = int((column[:n_train] == v).sum()), int((column[n_train:] == v).sum())
        by_set = shares[f"face_mask/{values[v]}"]
        assert sum(by_set.values()) == pytest.approx(1.0, abs=2e-3)
        assert by_set.get(f"faces:{val.parent}", 0.0) == pytest.approx(3 * b / (a + 3 * b), abs=1e-3)


def test_attribute_draws_set_each_attributes_share(config_file: Path, data: dict) -> None:
    """`data.attribute_draws: {face_mask: 3}` triples face_mask's draws against headwear's."""
    sources = [{"name": "faces", "train_index": str(data["faces"]["crops_train"])},
               {"name": "hats", "train_index": str(data["hats"]["crops_train"])}]
    base = load_config(ClsConfig, config_file, [f"data.sources={json.dumps(sources)}"])
    more = load_config(ClsConfig, config_file, [f"data.sources={json.dumps(sources)}",
                                                "data.attribute_draws={face_mask: 3}"])
    dataset = AttributeCropDataset([(s["name"], s["train_index"]) for s in sources], base.schema)
    a, b = attribute_draw_shares(dataset, base), attribute_draw_shares(dataset, more)
    assert sum(a.values()) == pytest.approx(1.0, abs=2e-3) and sum(b.values()) == pytest.approx(1.0, abs=2e-3)
    assert b["face_mask"] / b["headwear"] == pytest.approx(3 * a["face_mask"] / a["headwear"], rel=1e-2)
    assert 0 < a["face_mask"] < b["face_mask"] < 1
    # each attribute's values are drawn alike, and in proportion to their counts' square roots at power 0.5
    assert all(v == pytest.approx(1 / len(shares), abs=2e-3) for shares in value_draw_shares(dataset, base).values()
               for v in shares.values())
    counts = dataset.value_counts()["face_mask"]
    sqrt = value_draw_shares(dataset, dataclasses.replace(base, data=dataclasses.replace(base.data, balance_power=0.5)))
    roots = {v: n ** 0.5 for v, n in counts.items()}
    assert sqrt["face_mask"] == pytest.approx({v: r / sum(roots.values()) for v, r in roots.items()}, abs=2e-3)
    with pytest.raises(ValueError, match="attribute_draws"):
        load_config(ClsConfig, config_file, [f"data.sources={json.dumps(sources)}", "data.attribute_draws={masks: 2}"])
    with pytest.raises(ValueError, match="attribute_draws"):
        load_config(ClsConfig, config_file, [f"data.sources={json.dumps(sources)}",
                                             "data.attribute_draws={face_mask: 2}", "data.balance=loss"])


def test_value_draws_set_a_values_share_within_its_attribute(config_file: Path, data: dict) -> None:
    """`data.value_draws: {face_mask/<value>: 0.5}` halves one value's draws against the attribute's
    other values; the attribute's share of all draws stays."""
    sources = [{"name": "faces", "train_index": str(data["faces"]["crops_train"])},
               {"name": "hats", "train_index": str(data["hats"]["crops_train"])}]
    base = load_config(ClsConfig, config_file, [f"data.sources={json.dumps(sources)}"])
    dataset = AttributeCropDataset([(s["name"], s["train_index"]) for s in sources], base.schema)
    present = [v for v, n in dataset.value_counts()["face_mask"].items() if n]
    assert len(present) >= 2
    halved = load_config(ClsConfig, config_file, [f"data.sources={json.dumps(sources)}",
                                                  f"data.value_draws={{face_mask/{present[0]}: 0.5}}"])
    a, b = value_draw_shares(dataset, base)["face_mask"], value_draw_shares(dataset, halved)["face_mask"]
    assert b[present[0]] / b[present[1]] == pytest.approx(0.5 * a[present[0]] / a[present[1]], rel=1e-2)
    assert attribute_draw_shares(dataset, halved) == attribute_draw_shares(dataset, base)
    assert value_draw_shares(dataset, halved)["headwear"] == value_draw_shares(dataset, base)["headwear"]
    for bad in ("{face_mask/hood: 2}", "{face_mask: 2}", f"{{face_mask/{present[0]}: 0}}"):
        with pytest.raises(ValueError, match="value_draws"):
            load_config(ClsConfig, config_file, [f"data.sources={json.dumps(sources)}", f"data.value_draws={bad}"])
    with pytest.raises(ValueError, match="value_draws"):
        load_config(ClsConfig, config_file, [f"data.sources={json.dumps(sources)}",
                                             f"data.value_draws={{face_mask/{present[0]}: 2}}", "data.balance=loss"])


def test_train_photos_keep_a_share_of_each_sources_photos(config_file: Path, data: dict, tmp_path: Path) -> None:
    """`data.train_photos`: every crop of a share of each source's photos, the same photos in all
    of a source's crop sets, seeded; shares outside (0, 1] fail."""
    schema = AttributeSchema.from_dict(SCHEMA)
    faces, hats = str(data["faces"]["crops_train"]), str(data["hats"]["crops_train"])
    indexes = [("faces", faces), ("faces", faces), ("hats", hats)]
    full = AttributeCropDataset(indexes, schema)
    half = AttributeCropDataset(indexes, schema, photos=0.5, photo_seed=3)
    (_, f1), (_, f2), (_, h) = half.sets
    assert f1.rows == f2.rows  # a source's ground-truth and prediction crops of a photo stay together
    for kept, whole in ((f1, full.sets[0][1]), (h, full.sets[2][1])):
        photos = set(kept.photos())
        assert len(photos) == round(0.5 * len(set(whole.photos()))) == 3
        assert kept.rows == [r for r in whole.rows if r["source_image"] in photos]
        assert kept.labels == [whole.labels[i] for i, r in enumerate(whole.rows) if r["source_image"] in photos]
    assert len(half) == len(f1) + len(f2) + len(h) == half.targets.shape[0] < len(full)
    assert AttributeCropDataset(indexes, schema, photos=0.5, photo_seed=3).sets[0][1].rows == f1.rows
    draws = {frozenset(AttributeCropDataset([("faces", faces)], schema, photos=0.5, photo_seed=seed).sets[0][1].photos())
             for seed in range(5)}
    assert len(draws) > 1
    assert len(set(AttributeCropDataset([("faces", faces)], schema, photos=0.01).sets[0][1].photos())) == 1
    with pytest.raises(ValueError, match="photos=0"):
        AttributeCropDataset(indexes, schema, photos=0)
    bare = tmp_path / "index.csv"  # an index that names no photos cannot be cut by photo
    bare.write_text("crop,label\n" + "".join(f"crops/{i}.png,bare\n" for i in range(4)))
    assert len(AttributeCropDataset([("faces", bare)], schema)) == 4
    with pytest.raises(ValueError, match="source_image"):
        AttributeCropDataset([("faces", bare)], schema, photos=0.5)
    with pytest.raises(ValueError, match="train_photos"):
        train_classifier(load_config(ClsConfig, config_file, ["data.train_photos=1.5", *TINY_TRAIN]), tmp_path / "run")


# ----------------------------------------------------------------------------- training and eval


def test_two_crop_sets_train_and_evaluate_per_attribute(trained: Path, data: dict, tmp_path: Path) -> None:
    for name in ("best.pt", "last.pt", "metrics.csv", "curves.png", "val_headwear_confusion.png",
                 "val_face_mask_confusion.png", "val_headwear_confusion.csv"):
        assert (trained / name).is_file(), name
    row = list(csv.DictReader((trained / "metrics.csv").open()))[-1]
    per_attribute = [float(row["val/headwear/macro_f1"]), float(row["val/face_mask/macro_f1"])]
    assert float(row["val/macro_f1"]) == pytest.approx(np.mean(per_attribute))  # what picks best.pt
    assert {"val/headwear/f1/helmet", "val/face_mask/recall/incorrect"} <= set(row)
    # each attribute's loss is logged, train and val, and they add up to the total
    for split in ("loss", "loss/val"):
        parts = [float(row[f"{split}/{a}"]) for a in ("headwear", "face_mask")]
        assert float(row[split]) == pytest.approx(sum(parts), rel=1e-4)

    state = load_checkpoint(trained / "best.pt", "classifier")
    assert state["version"] == 3 and state["schema"] == AttributeSchema.from_dict(SCHEMA).to_dict()
    clf = Classifier.load(trained / "best.pt")
    assert clf.schema == AttributeSchema.from_dict(SCHEMA)
    assert clf.class_names == ["headwear/helmet", "headwear/none", "face_mask/with_mask",
                               "face_mask/without_mask", "face_mask/incorrect"]
    probs = predict_probs(clf.model, normalize(torch.rand(3, 3, 32, 32)), schema=clf.schema)
    assert torch.allclose(probs[:, :2].sum(1), torch.ones(3)) and torch.allclose(probs[:, 2:].sum(1), torch.ones(3))

    # eval_cls on one source's crops scores the attribute that source labels, and only it.
    out = tmp_path / "ev" / "faces.json"
    metrics = eval_cls.main(eval_cls.parse_args([str(trained / "best.pt"), str(data["faces"]["crops_val"]),
                                                 "--out", str(out), "--coco", str(data["faces"]["val"]),
                                                 "--no-progress"]))
    assert "face_mask/macro_f1" in metrics and not any(k.startswith("headwear/") for k in metrics)
    # --coco: the same metrics per COCO area range of the faces the crops were cut from
    assert sum(metrics[f"{r}/num_crops"] for r in ("small", "medium", "large")) == metrics["num_crops"]
    assert all(f"{r}/face_mask/macro_f1" in metrics for r in ("small", "medium", "large") if metrics[f"{r}/num_crops"])
    assert metrics["macro_f1"] == metrics["face_mask/macro_f1"]
    # each metric's 95 % bootstrap interval over the crops beside it
    assert metrics["face_mask/macro_f1/ci_low"] <= metrics["face_mask/macro_f1/ci_high"]
    assert "face_mask/support/with_mask/ci_low" not in metrics
    for name in ("faces_face_mask_confusion.png", "faces_face_mask_mistakes.png", "faces_predictions.csv"):
        assert (tmp_path / "ev" / name).is_file(), name
    header = (tmp_path / "ev" / "faces_predictions.csv").read_text().splitlines()[0].split(",")
    assert header[:4] == ["crop", "face_mask/label", "face_mask/pred", "face_mask/prob"]
    with pytest.raises(ValueError, match="fit 2 sources"):  # "bare" is a category of both: name one
        clf.schema.source_of(["bare"])
    hats = eval_cls.main(eval_cls.parse_args([str(trained / "best.pt"), str(data["hats"]["crops_val"]),
                                              "--source", "hats", "--out", str(tmp_path / "h.json"),
                                              "--bootstrap", "0", "--no-progress"]))
    assert "headwear/macro_f1" in hats and "face_mask/macro_f1" not in hats
    assert not any(k.endswith("/ci_low") for k in hats)  # --bootstrap 0: no intervals


def test_loss_balancing_and_resume_with_two_crop_sets(config_file: Path, trained: Path, tmp_path: Path) -> None:
    out = tmp_path / "loss"
    result = train_cls.main(train_cls.parse_args(["--config", str(config_file), "--out", str(out), "--no-progress",
                                                  "--set", *TINY_TRAIN, "train.epochs=1", "data.balance=loss"]))
    assert result["epochs"] == 1 and result["schema"].names == ["headwear", "face_mask"]
    # Resuming the finished two-epoch run with a third epoch continues it.
    again = train_cls.main(train_cls.parse_args(["--config", str(config_file), "--out", str(trained), "--no-progress",
                                                 "--set", *TINY_TRAIN, "train.epochs=3", "--resume"]))
    assert again["epochs"] == 3


# ----------------------------------------------------------------------------- old checkpoints


def test_bundled_single_attribute_checkpoint_loads_and_gives_the_same_outputs() -> None:
    state = torch.load(ASSETS / "classifier.pt", map_location="cpu", weights_only=True)
    assert state["version"] == 1 and "schema" not in state  # written before attributes existed
    clf = Classifier.load(ASSETS / "classifier.pt")
    assert clf.class_names == ["with_mask", "without_mask", "mask_weared_incorrect"]
    assert clf.schema == AttributeSchema.single(clf.class_names)
    # The reference: torchvision's own MobileNetV2 with the stored weights and one softmax.
    reference = torchvision.models.mobilenet_v2(num_classes=3).eval()
    reference.load_state_dict({k: v.float() for k, v in state["model"].items()})
    torch.manual_seed(0)
    x = normalize(torch.rand(4, 3, 96, 96))
    with torch.inference_mode():
        want = torch.softmax(reference(x), 1)
    assert torch.allclose(predict_probs(clf.model, x, schema=clf.schema), want, atol=1e-6)


def test_version_2_checkpoint_loads_as_one_attribute(tmp_path: Path) -> None:
    cfg = load_config(ClsConfig, None, ["model.weights=none", "crop.size=32"])
    from headseg.classification import build_classifier

    model = build_classifier(cfg.model, 3).eval()
    state = classifier_checkpoint(model, cfg, ["a", "b", "c"])
    v2 = {**{k: v for k, v in state.items() if k != "schema"}, "version": 2}
    save_checkpoint(tmp_path / "v2.pt", v2)
    save_checkpoint(tmp_path / "v3.pt", state)
    old, new = Classifier.load(tmp_path / "v2.pt"), Classifier.load(tmp_path / "v3.pt")
    assert old.schema == new.schema == AttributeSchema.single(["a", "b", "c"])
    x = normalize(torch.rand(2, 3, 32, 32))
    assert torch.equal(predict_probs(old.model, x, schema=old.schema), predict_probs(new.model, x, schema=new.schema))
    bad = {**state, "class_names": ["a", "b", "x"]}
    with pytest.raises(ValueError, match="differ from its class names"):
        Classifier.load(bad)


# ----------------------------------------------------------------------------- results


def _multi_head(box=(10.0, 10.0, 40.0, 50.0), helmet=0.8, mask=0.6) -> Head:
    attributes = {"headwear": AttributePrediction("helmet" if helmet >= 0.5 else "none", max(helmet, 1 - helmet),
                                                  {"helmet": helmet, "none": 1 - helmet}),
                  "face_mask": AttributePrediction("with_mask", mask, {"with_mask": mask, "without_mask": 1 - mask,
                                                                       "incorrect": 0.0})}
    return Head.from_attributes(box, np.zeros((60, 80), bool), 0.9, attributes)


def test_multi_attribute_head_json_coco_and_counts() -> None:
    head = _multi_head()
    assert head.label == "helmet, with_mask" and head.label_prob == pytest.approx(0.8 * 0.6)
    assert head.probs["face_mask/without_mask"] == pytest.approx(0.4)
    assert head.columns() == ["headwear/helmet", "face_mask/with_mask"]
    result = ImageResult((head, _multi_head((50.0, 10.0, 70.0, 40.0), helmet=0.3)), (60, 80))
    assert result.counts() == {"headwear/helmet": 1, "headwear/none": 1, "face_mask/with_mask": 2}
    assert list(result.values("headwear")) == ["helmet", "none"]
    assert len(result[result.values("headwear") == "none"]) == 1
    with pytest.raises(ValueError, match="no attribute 'colour'"):
        result.values("colour")
    payload = json.loads(json.dumps(result.to_json()))
    assert payload["heads"][0]["attributes"]["face_mask"] == {
        "value": "with_mask", "prob": 0.6, "probs": {"with_mask": 0.6, "without_mask": 0.4, "incorrect": 0.0}}
    ids = {"headwear/helmet": 1, "headwear/none": 2, "face_mask/with_mask": 3}
    records = result.to_coco_results(5, ids)
    assert [r["category_id"] for r in records] == [1, 3, 2, 3]  # one per head and attribute
    assert records[0]["score"] == pytest.approx(0.9 * 0.8) and records[1]["score"] == pytest.approx(0.9 * 0.6)
    assert [r["category_id"] for r in result.to_coco_results(5, {"face_mask/with_mask": 3})] == [3, 3]
    # Every value, as a class-aware detector reports: one record per head and value with a category.
    every = result.to_coco_results(5, ids, values="all")
    assert [(r["category_id"], round(r["score"], 4)) for r in every] == [
        (1, 0.72), (2, 0.18), (3, 0.54), (1, 0.27), (2, 0.63), (3, 0.54)]
    with pytest.raises(ValueError, match="needs score='joint'"):
        result.to_coco_results(5, ids, "seg", values="all")
    # A single-attribute head keeps today's meaning, and its one attribute is "label".
    single = Head((0, 0, 1, 1), np.zeros((2, 2), bool), 0.5, "cap", 0.7, {"cap": 0.7, "bare": 0.3})
    assert single.attributes == {"label": AttributePrediction("cap", 0.7, {"cap": 0.7, "bare": 0.3})}
    assert ImageResult((single,), (2, 2)).counts() == {"cap": 1}
    assert [(r["category_id"], r["score"]) for r in ImageResult((single,), (2, 2)).to_coco_results(
        1, {"cap": 4, "bare": 5}, values="all")] == [(4, pytest.approx(0.35)), (5, pytest.approx(0.15))]


def test_pipeline_with_a_multi_attribute_classifier(seg_path: Path, trained: Path, tmp_path: Path) -> None:
    pipe = HeadwearPipeline.from_checkpoint(seg_path, trained / "best.pt", device="cpu", score_thresh=0.0)
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (96, 128, 3), dtype=np.uint8)
    cv2.ellipse(image, (64, 48), (15, 20), 0, 0, 360, (200, 160, 130), -1)
    result = pipe(image)
    assert len(result) > 0
    for head in result.heads:
        assert list(head.attributes) == ["headwear", "face_mask"]
        for p in head.attributes.values():
            assert p.probs[p.value] == pytest.approx(p.prob) and sum(p.probs.values()) == pytest.approx(1.0, abs=1e-5)
    # Heads of one batch are classified together: the same numbers one by one and in a batch.
    again = pipe.classify(image, result.boxes, result.scores, result.masks)
    for a, b in zip(result.heads, again.heads):
        assert a.attributes["face_mask"].probs == pytest.approx(b.attributes["face_mask"].probs, abs=1e-5)
    drawn = result.draw(image)
    assert drawn.shape == image.shape and not np.array_equal(drawn, image)

    cv2.imwrite(str(tmp_path / "a.png"), image[:, :, ::-1])
    status = predict.main(predict.parse_args([str(tmp_path / "a.png"), "--out", str(tmp_path / "out"), "--seg",
                                              str(seg_path), "--cls", str(trained / "best.pt"),
                                              "--score-thresh", "0.0"]))
    assert status == 0
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    per_class = summary["heads_per_class"]
    assert set(per_class) <= set(pipe.class_names)
    assert sum(v for k, v in per_class.items() if k.startswith("headwear/")) == len(result)


def test_end_to_end_evaluation_per_attribute(seg_path: Path, trained: Path, data: dict, tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    report = eval_pipeline.main(eval_pipeline.parse_args(
        [str(data["faces"]["val"]), "--seg", str(seg_path), "--cls", str(trained / "best.pt"), "--gt-faces",
         "--source", "faces", "--breakdown", "--bootstrap", "20", "--out", str(tmp_path / "faces.json")]))
    for key in ("bbox/AP50", "bbox/AP50/with_mask", "precision", "recall", "precision/incorrect", "f1_best_thresh"):
        assert 0.0 <= report[f"two_stage/face_mask/{key}"] <= 1.0 or report[f"two_stage/face_mask/{key}"] == -1.0
    # --bootstrap: the AP50s' intervals over resampled photos, beside them in the table
    low, high = report["two_stage/face_mask/bbox/AP50/ci_low"], report["two_stage/face_mask/bbox/AP50/ci_high"]
    assert 0.0 <= low <= high <= 1.0 and "two_stage/face_mask/bbox/AP50/with_mask/ci_high" in report
    table, _ = capsys.readouterr().out.split("AP50 with a cause of error removed")
    assert "interval" in table
    for variant in ("unmatched_dropped", "labelled_values", "labelled_values_unmatched_dropped"):
        value = report[f"two_stage_breakdown/{variant}/face_mask/bbox/AP50"]
        assert 0.0 <= value <= 1.0 or value == -1.0
    assert not any("/headwear/" in k for k in report)  # the faces set does not label headwear
    hats = eval_pipeline.main(eval_pipeline.parse_args(
        [str(data["hats"]["val"]), "--seg", str(seg_path), "--cls", str(trained / "best.pt"), "--source", "hats"]))
    assert "two_stage/headwear/bbox/AP50/helmet" in hats and not any("/face_mask/" in k for k in hats)
    assert "pipeline:" in capsys.readouterr().err  # the progress bar, by default
    # Several --cls: their ensemble; a model averaged with itself scores as it does alone.
    twice = eval_pipeline.main(eval_pipeline.parse_args(
        [str(data["hats"]["val"]), "--seg", str(seg_path), "--cls", str(trained / "best.pt"), str(trained / "best.pt"),
         "--source", "hats", "--no-progress"]))
    assert twice.keys() == hats.keys() and all(twice[k] == pytest.approx(hats[k], abs=1e-3) for k in hats)
    flipped = eval_pipeline.main(eval_pipeline.parse_args(
        [str(data["hats"]["val"]), "--seg", str(seg_path), "--cls", str(trained / "best.pt"), "--source", "hats",
         "--flip", "--no-progress", "--all-values"]))
    assert flipped.keys() > hats.keys() and 0.0 <= flipped["two_stage/headwear/bbox/AP50"] <= 1.0
    every = {k.replace("two_stage_all/", "two_stage/"): v for k, v in flipped.items() if k.startswith("two_stage_all/")}
    assert every.keys() == hats.keys() and 0.0 <= every["two_stage/headwear/bbox/AP50"] <= 1.0
    # The operating point is the top value's either way.
    assert all(every[k] == flipped[k] for k in every if "/precision" in k or "/recall" in k)
    assert "pipeline:" not in capsys.readouterr().err


def test_attribute_evaluation_scores_a_perfect_system_one() -> None:
    schema = AttributeSchema.from_dict(SCHEMA)
    faces = [[10, 20, 20, 30], [60, 20, 20, 30]]
    gt = {"images": [{"id": 1, "height": 100, "width": 100, "file_name": "x.png"}],
          "categories": [{"id": 1, "name": "face_mask"}, {"id": 2, "name": "bare"}, {"id": 3, "name": "glasses"}],
          "annotations": [{"id": k + 1, "image_id": 1, "category_id": k + 1, "bbox": b, "area": 600, "iscrowd": 0}
                          for k, b in enumerate(faces)]}
    heads = attribute_ground_truth(gt, schema, "faces", FaceToHead())
    assert [c["name"] for c in heads["categories"]] == ["face_mask/with_mask", "face_mask/without_mask",
                                                        "face_mask/incorrect"]
    assert heads["annotations"][0]["bbox"] == pytest.approx([4.4, 0.5, 31.2, 55.5])  # the derived head box
    assert gt["annotations"][0]["bbox"] == [10, 20, 20, 30]  # the input is not changed
    # Predicted heads exactly on the derived head boxes, each of the right value.
    results = [{"image_id": 1, "category_id": a["category_id"], "bbox": a["bbox"], "score": 0.9}
               for a in heads["annotations"]]
    report = attribute_end_to_end(heads, results, results, 0.5, schema, sweep=(0.5,))
    assert report["face_mask/bbox/AP50/with_mask"] == pytest.approx(1.0)
    assert report["face_mask/precision"] == report["face_mask/recall"] == 1.0
    assert report["face_mask/recall/without_mask"] == 1.0
    assert report["face_mask/bbox/AP75"] == pytest.approx(1.0)
    # Matched to the raw face boxes instead, the same heads overlap them at IoU 0.35 only.
    raw = attribute_ground_truth(gt, schema, "faces")
    assert attribute_end_to_end(raw, results, results, 0.5, schema, sweep=(0.5,))["face_mask/bbox/AP75"] == 0.0
    with pytest.raises(ValueError, match="maps to no attribute value"):
        attribute_ground_truth({**gt, "categories": [{"id": 1, "name": "cap"}]}, schema, "faces")


def test_end_to_end_intervals_resample_photos() -> None:
    schema = AttributeSchema.from_dict(SCHEMA)
    # twelve photos, each with a with_mask and a without_mask face; the system is right on the first six
    # and calls both faces of the others with_mask
    images = [{"id": i, "height": 100, "width": 100, "file_name": f"{i}.png"} for i in range(1, 13)]
    faces = [(i, 1 + k, [10 + 50 * k, 20, 20, 30]) for i in range(1, 13) for k in range(2)]
    gt = {"images": images, "categories": [{"id": 1, "name": "face_mask"}, {"id": 2, "name": "bare"}],
          "annotations": [{"id": n + 1, "image_id": i, "category_id": c, "bbox": b, "area": 600, "iscrowd": 0}
                          for n, (i, c, b) in enumerate(faces)]}
    heads = attribute_ground_truth(gt, schema, "faces", FaceToHead())
    right = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 0.9}
             for a in heads["annotations"]]
    perfect = bootstrap_end_to_end(heads, right, schema, resamples=20)
    assert perfect["face_mask/bbox/AP50/ci_low"] == perfect["face_mask/bbox/AP50/ci_high"] == 1.0
    assert {k.rsplit("/", 1)[0] for k in perfect} == {"face_mask/bbox/AP50", "face_mask/bbox/AP50/with_mask",
                                                      "face_mask/bbox/AP50/without_mask"}
    # one `incorrect` face, on the first photo: resamples without it leave that value's ends NaN
    rare = {**gt, "categories": [*gt["categories"], {"id": 3, "name": "glasses"}],
            "annotations": [*gt["annotations"], {"id": 99, "image_id": 1, "category_id": 3,
                                                 "bbox": [40, 60, 20, 30], "area": 600, "iscrowd": 0}]}
    rare_heads = attribute_ground_truth(rare, schema, "faces", FaceToHead())
    rare_ci = bootstrap_end_to_end(rare_heads, right, schema, resamples=20)
    assert np.isnan(rare_ci["face_mask/bbox/AP50/incorrect/ci_low"])
    assert rare_ci["face_mask/bbox/AP50/with_mask/ci_low"] == 1.0
    half = [{**r, "category_id": 1 if r["image_id"] > 6 else r["category_id"]} for r in right]
    ap = attribute_end_to_end(heads, half, half, 0.5, schema, sweep=(0.5,))["face_mask/bbox/AP50"]
    ci = bootstrap_end_to_end(heads, half, schema, resamples=200)
    assert ci["face_mask/bbox/AP50/ci_low"] < ap < ci["face_mask/bbox/AP50/ci_high"]
    assert bootstrap_end_to_end(heads, half, schema, resamples=200) == ci  # seeded
    with pytest.raises(ValueError, match="at least 2 resamples"):
        bootstrap_end_to_end(heads, half, schema, resamples=0)


def test_end_to_end_breakdown_removes_one_cause_at_a_time() -> None:
    schema = AttributeSchema.from_dict({**SCHEMA, "attributes": {
        **SCHEMA["attributes"], "face_mask": ["with_mask", "without_mask", "incorrect", "not_visible"]}})
    gt = {"images": [{"id": 1, "height": 100, "width": 100, "file_name": "x.png"}],
          "categories": [{"id": 1, "name": "face_mask"}, {"id": 2, "name": "bare"}, {"id": 3, "name": "glasses"}],
          "annotations": [{"id": k + 1, "image_id": 1, "category_id": k + 1, "bbox": b, "area": 600, "iscrowd": 0}
                          for k, b in enumerate([[10, 10, 20, 30], [50, 10, 20, 30]])]}
    heads = attribute_ground_truth(gt, schema, "faces")

    def head(xywh, score, **probs):
        x, y, w, h = xywh
        return (x, y, x + w, y + h), score, {"face_mask": {"with_mask": 0.0, "without_mask": 0.0, "incorrect": 0.0,
                                                           "not_visible": 0.0, **probs},
                                             "headwear": {"helmet": 0.5, "none": 0.5}}

    found = {1: [head([10, 10, 20, 30], 0.9, with_mask=0.3, without_mask=0.7),  # a with_mask face called without
                 head([50, 10, 20, 30], 0.8, without_mask=0.9, with_mask=0.1),  # right
                 head([70, 60, 20, 30], 0.99, with_mask=0.99, not_visible=0.01),  # no labelled head there
                 head([10, 60, 20, 30], 0.99, not_visible=1.0)]}  # no labelled head, and said so: no result
    report = end_to_end_breakdown(heads, found, schema)
    # detection alone is perfect; the classifier's mistake costs with_mask its only head; the
    # unlabelled head ranks first for with_mask (precision 1/2 at the one recall)
    assert report["labelled_values_unmatched_dropped/face_mask/bbox/AP50"] == pytest.approx(1.0)
    assert report["unmatched_dropped/face_mask/bbox/AP50/with_mask"] == pytest.approx(0.0)
    assert report["unmatched_dropped/face_mask/bbox/AP50/without_mask"] == pytest.approx(1.0)
    assert report["labelled_values/face_mask/bbox/AP50/with_mask"] == pytest.approx(0.5)
    assert report["labelled_values/face_mask/bbox/AP50"] == pytest.approx(0.75)  # incorrect: no head, no AP
    # every value: the mistaken head's with_mask (0.9 x 0.3) now finds its face, behind the unlabelled head
    every = end_to_end_breakdown(heads, found, schema, "all")
    assert every["unmatched_dropped/face_mask/bbox/AP50/with_mask"] == pytest.approx(1.0)
    assert every["labelled_values/face_mask/bbox/AP50"] == report["labelled_values/face_mask/bbox/AP50"]
    with pytest.raises(ValueError, match="expected 'top' or 'all'"):
        end_to_end_breakdown(heads, found, schema, "every")


# ----------------------------------------------------------------------------- drawing


def test_labels_stay_inside_the_image_and_apart() -> None:
    size = (60, 80)
    boxes = [(0, 0, 20, 20), (22, 0, 42, 20), (60, 45, 80, 60), (-5, 50, 10, 70)]  # corners, edges, neighbours
    sizes = [(30, 12), (30, 12), (40, 24), (30, 12)]
    corners = place_labels(boxes, sizes, size)
    rects = [(x, y, x + w, y + h) for (x, y), (w, h) in zip(corners, sizes)]
    for x0, y0, x1, y1 in rects:
        assert 0 <= x0 and 0 <= y0 and x1 <= size[1] and y1 <= size[0]
    for i in range(len(rects)):
        for j in range(i):
            a, b = rects[i], rects[j]
            assert min(a[2], b[2]) <= max(a[0], b[0]) or min(a[3], b[3]) <= max(a[1], b[1]), (a, b)
    # A label wider than the image starts at its left edge.
    assert place_labels([(10, 10, 20, 20)], [(200, 10)], size) == [(0, 0)]
    assert place_labels([], [], size) == []


def test_crowded_labels_move_away_from_their_boxes_without_overlapping() -> None:
    size = (240, 400)
    boxes = [(160 + 8 * i, 100, 170 + 8 * i, 110) for i in range(8)]  # eight heads side by side
    lines = [("headwear: none 0.99", (0, 255, 0)), ("face_mask: with_mask 0.90", (0, 255, 0))]
    sizes = [label_size([t for t, _ in lines], 1)[:2]] * 8  # labels far wider than the heads
    corners = place_labels(boxes, sizes, size)
    rects = [(x, y, x + w, y + h) for (x, y), (w, h) in zip(corners, sizes)]
    for i, (x0, y0, x1, y1) in enumerate(rects):
        assert 0 <= x0 and 0 <= y0 and x1 <= size[1] and y1 <= size[0]
        for b in rects[:i]:
            assert min(x1, b[2]) <= max(x0, b[0]) or min(y1, b[3]) <= max(y0, b[1]), ((x0, y0, x1, y1), b)
    far = [i for i, (r, b) in enumerate(zip(rects, boxes))
           if r[2] < b[0] or r[0] > b[2] or r[3] < b[1] or r[1] > b[3]]
    assert far  # the spots touching a box ran out


def test_a_label_away_from_its_box_is_linked_to_it(monkeypatch: pytest.MonkeyPatch) -> None:
    import headseg.pipeline as pipeline
    monkeypatch.setattr(pipeline, "place_labels", lambda boxes, sizes, size: [(0, 0)] * len(boxes))
    out = np.zeros((100, 200, 3), np.uint8)
    draw_heads(out, [DrawnHead((150, 70, 170, 90), [("x", (0, 255, 0))], None, box_width=1)], thickness=1)
    w, h, _ = label_size(["x"], 1)
    between = out[h + 1:69, w + 1:149, 1]  # neither the label (top left) nor the box
    assert between.any()  # the leader line
    out = np.zeros((100, 200, 3), np.uint8)
    monkeypatch.setattr(pipeline, "place_labels", lambda boxes, sizes, size: [(150, 60)] * len(boxes))
    draw_heads(out, [DrawnHead((150, 70, 170, 90), [("x", (0, 255, 0))], None, box_width=1)], thickness=1)
    assert not out[:59, :, 1].any() and not out[:, :149, 1].any()  # a label touching its box: no line


def test_drawn_multi_attribute_labels_are_inside_the_image() -> None:
    image = np.zeros((60, 80, 3), np.uint8)
    heads = [_multi_head((0.0, 0.0, 30.0, 25.0)), _multi_head((50.0, 35.0, 80.0, 60.0), helmet=0.2)]
    result = ImageResult(tuple(heads), (60, 80))
    drawn = result.draw(image)
    lines = [[t for t, _ in head_lines(hd)] for hd in heads]
    assert lines[0] == ["headwear: helmet 0.80", "face_mask: with_mask 0.60"]
    sizes = [label_size(t, 1)[:2] for t in lines]
    corners = place_labels([hd.box_xyxy for hd in heads], sizes, (60, 80))
    for (x, y), (w, h) in zip(corners, sizes):  # the label backgrounds are drawn where the layout put them
        assert drawn[y + 1, x + 1].any() and drawn[min(y + h, 60) - 2, x + 1].any()
    out = np.zeros((60, 80, 3), np.uint8)
    draw_heads(out, [DrawnHead((5, 5, 20, 20), [("x", (255, 0, 0))], None, box_width=1)])
    assert out[20, 12].tolist() == [255, 0, 0]  # the box's bottom edge (its label sits at the top)
