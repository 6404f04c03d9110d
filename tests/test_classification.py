"""Stage 2: classifier builders, freezing, checkpoints, crop sets, train/resume/eval tools."""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from headseg import classification
from headseg.attributes import MISSING, AttributeSchema, distillation_loss
from headseg.classification import (
    Classifier,
    ClassifierEnsemble,
    ClassifierHead,
    build_classifier,
    classifier_checkpoint,
    classifier_head,
    crop_transforms,
    load_classifier,
    normalize,
    predict_probs,
    preprocessing_from_checkpoint,
    set_backbone_trainable,
    train_classifier,
    train_mode,
)
from headseg import crop_sets as crop_sets_module
from headseg.crop_sets import BACKGROUND, CropIndexDataset, check_crop_rules, make_crop_set, read_class_names
from headseg.evaluation import plot_worst_mistakes
from headseg.config import ClsConfig, ClsModelConfig, CropConfig, SegConfig, load_config
from headseg.data import load_coco
from headseg.pipeline import _fold_batchnorm
from headseg.segmentation import build_segmenter, segmenter_checkpoint
from headseg.engine import NonFiniteLossError, load_checkpoint, save_checkpoint
from tests.conftest import TINY_SEG
from tools import eval_cls, make_crops, train_cls

TINY = ClsModelConfig(arch="mobilenet_v2", weights="none")
CROP = ["crop.size=32"]
# Two steps of batch 4 per epoch, 32 px crops, no worker processes: about a second per epoch.
TINY_TRAIN = [*CROP, "model.weights=none", "train.batch_size=4", "train.max_iters=2", "train.epochs=1",
              "train.frozen_epochs=0", "data.workers=0"]


@pytest.fixture(scope="module")
def crop_sets(synthetic_data: dict, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Ground-truth crop sets (32 px) of the synthetic train and val splits."""
    out = tmp_path_factory.mktemp("crops")
    return {split: make_crops.main(make_crops.parse_args(
        ["--coco", str(synthetic_data[split]), "--out", str(out / split), "--no-progress", "--set", *CROP]))
        for split in ("train", "val")}


def _cfg(crop_sets: dict[str, Path], *extra: str) -> ClsConfig:
    return load_config(ClsConfig, None, [*TINY_TRAIN, f"data.train_index={crop_sets['train']}",
                                         f"data.val_index={crop_sets['val']}", *extra])


# ----------------------------------------------------------------------------- model


@pytest.mark.parametrize("head,linears", [("linear", 1), ("mlp", 3)])
def test_builder_heads(head: str, linears: int) -> None:
    model = build_classifier(ClsModelConfig(weights="none", head=head), num_classes=3).eval()
    assert model(torch.rand(2, 3, 32, 32)).shape == (2, 3)
    assert sum(isinstance(m, nn.Linear) for m in classifier_head(model)) == linears
    assert isinstance(model.classifier, ClassifierHead)


def test_builder_resnet_fc_head() -> None:
    model = build_classifier(ClsModelConfig(arch="resnet18", weights="none"), num_classes=2).eval()
    assert isinstance(model.fc, ClassifierHead)
    assert model(torch.rand(1, 3, 32, 32)).shape == (1, 2)


def test_builder_errors_name_the_fix() -> None:
    with pytest.raises(ValueError, match="no offline ImageNet weights"):
        build_classifier(ClsModelConfig(arch="resnet18", weights="imagenet"), 2)
    with pytest.raises(ValueError, match="not a torchvision model"):
        build_classifier(ClsModelConfig(arch="mobilenet_v9", weights="none"), 2)
    with pytest.raises(ValueError, match="model.head='conv'"):
        build_classifier(ClsModelConfig(weights="none", head="conv"), 2)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        build_classifier(ClsModelConfig(weights="/nonexistent.pth"), 2)


def test_imagenet_weights_load_offline_and_old_head_is_dropped(caplog: pytest.LogCaptureFixture) -> None:
    from headseg.weights import load_imagenet_state_dict

    with caplog.at_level(logging.INFO, logger="headseg.classification"):
        model = build_classifier(ClsModelConfig(weights="imagenet"), num_classes=3)
    state = load_imagenet_state_dict("mobilenet_v2")
    assert torch.equal(model.features[0][0].weight, state["features.0.0.weight"])
    assert "classifier.1.weight" in caplog.text and "dropped 2" in caplog.text


def test_frozen_backbone_trains_only_the_head() -> None:
    model = build_classifier(TINY, num_classes=3)
    set_backbone_trainable(model, False)
    train_mode(model)
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert bns and not any(m.training for m in bns)  # ImageNet statistics stay put
    before = bns[0].running_mean.clone()
    model(torch.rand(4, 3, 32, 32)).sum().backward()
    assert torch.equal(bns[0].running_mean, before)
    head = {id(p) for p in classifier_head(model).parameters()}
    for p in model.parameters():
        assert (p.grad is not None) == (id(p) in head)
    set_backbone_trainable(model, True)
    train_mode(model)
    assert all(m.training for m in bns) and all(p.requires_grad for p in model.parameters())


def test_checkpoint_round_trip_reproduces_outputs(tmp_path: Path) -> None:
    cfg = ClsConfig(model=TINY, crop=CropConfig(size=32))
    model = build_classifier(cfg.model, 3).eval()
    x = normalize(torch.rand(5, 3, 32, 32))
    save_checkpoint(tmp_path / "c.pt", classifier_checkpoint(model, cfg, ["a", "b", "c"], epoch=0))
    state = load_checkpoint(tmp_path / "c.pt", "classifier")
    assert {"kind", "version", "model", "config", "class_names", "preprocessing"} <= set(state)
    assert "crop" not in state["config"]  # the crop rules are stored once, in the preprocessing record
    loaded, loaded_cfg, names = load_classifier(tmp_path / "c.pt")
    assert names == ["a", "b", "c"] and loaded_cfg == cfg and not loaded.training
    assert torch.allclose(predict_probs(model, x), predict_probs(loaded, x), atol=1e-6)
    prep = preprocessing_from_checkpoint(state)
    assert prep.input_size == 32 and prep.crop == cfg.crop and len(prep.mean) == 3


def test_normalize_and_predict_probs_shapes() -> None:
    model = build_classifier(TINY, 4)
    probs = predict_probs(model, normalize(torch.rand(3, 3, 32, 32)), batch_size=2)
    assert probs.shape == (3, 4) and torch.allclose(probs.sum(1), torch.ones(3))
    assert model.training  # the caller's mode is restored ...
    set_backbone_trainable(model, False)
    train_mode(model)
    predict_probs(model, normalize(torch.rand(1, 3, 32, 32)))
    assert not model.features[0][1].training  # ... frozen batch norms included
    assert predict_probs(model, torch.empty(0, 3, 32, 32)).shape == (0, 4)
    with pytest.raises(ValueError, match=r"expected \(N, 3, S, S\)"):
        normalize(torch.rand(3, 32, 32))
    with pytest.raises(TypeError, match="divide uint8 by 255"):
        normalize(torch.zeros(1, 3, 8, 8, dtype=torch.uint8))


def test_test_time_flip_averages_a_crop_and_its_mirror_image() -> None:
    torch.manual_seed(0)
    # An untrained MobileNetV2 gives the same output whatever the input; this one sees position.
    model = torch.nn.Sequential(torch.nn.Flatten(), ClassifierHead(torch.nn.Linear(3 * 32 * 32, 4))).eval()
    x = normalize(torch.rand(5, 3, 32, 32))
    plain, mirrored = predict_probs(model, x, batch_size=2), predict_probs(model, x.flip(-1), batch_size=2)
    flipped = predict_probs(model, x, batch_size=2, flip=True)
    assert torch.allclose(flipped, (plain + mirrored) / 2, atol=1e-6)
    assert not torch.allclose(flipped, plain, atol=1e-4)  # the untrained model is not symmetric
    symmetric = torch.cat([x[..., :16], x[..., :16].flip(-1)], dim=-1)
    assert torch.allclose(predict_probs(model, symmetric, flip=True), predict_probs(model, symmetric), atol=1e-6)


TWO = AttributeSchema.from_dict({
    "attributes": {"headwear": ["helmet", "none"], "face_mask": ["with_mask", "without_mask", "incorrect"]},
    "sources": {"hhw": {"helmet": "headwear/helmet", "head": "headwear/none"}}})


def _saved_classifier(path: Path, seed: int, schema: AttributeSchema | list[str] = TWO, size: int = 32) -> nn.Module:
    """A random classifier with batch-norm statistics and head weights of its own, saved to ``path``."""
    torch.manual_seed(seed)
    classes = schema.column_names if isinstance(schema, AttributeSchema) else schema
    model = build_classifier(TINY, len(classes))
    model(torch.randn(8, 3, size, size) * 3)  # train mode: running statistics that differ by seed
    torch.nn.init.normal_(classifier_head(model)[-1].weight, std=1.0)
    save_checkpoint(path, classifier_checkpoint(model.eval(), ClsConfig(model=TINY, crop=CropConfig(size=size)),
                                                schema, epoch=0))
    return model


def test_ensemble_averages_its_members_probabilities(tmp_path: Path) -> None:
    x = normalize(torch.rand(6, 3, 32, 32))
    members = [_saved_classifier(tmp_path / f"s{seed}.pt", seed) for seed in (0, 1)]
    probs = [predict_probs(m, x, schema=TWO) for m in members]
    assert not torch.allclose(probs[0], probs[1], atol=1e-3)
    ensemble = Classifier.load([tmp_path / "s0.pt", tmp_path / "s1.pt"])
    assert isinstance(ensemble.model, ClassifierEnsemble) and ensemble.schema == TWO
    assert ensemble.class_names == TWO.column_names and ensemble.preprocessing.input_size == 32
    mean = (probs[0] + probs[1]) / 2
    assert torch.allclose(predict_probs(ensemble.model, x, schema=TWO), mean, atol=1e-6)
    flipped = [predict_probs(m, x, schema=TWO, flip=True) for m in members]
    assert torch.allclose(predict_probs(ensemble.model, x, schema=TWO, flip=True), (flipped[0] + flipped[1]) / 2,
                          atol=1e-6)
    # The pipeline's folded copy: no batch norm left, the same probabilities.
    folded = _fold_batchnorm(ensemble.model)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    assert torch.allclose(predict_probs(folded, x, schema=TWO), mean, atol=1e-5)
    # One checkpoint in a list is that classifier.
    assert not isinstance(Classifier.load([tmp_path / "s0.pt"]).model, ClassifierEnsemble)

    _saved_classifier(tmp_path / "single.pt", 2, ["a", "b", "c", "d", "e"])
    with pytest.raises(ValueError, match="single.pt predicts .*same attributes and values"):
        Classifier.load([tmp_path / "s0.pt", tmp_path / "single.pt"])
    _saved_classifier(tmp_path / "big.pt", 3, size=48)
    with pytest.raises(ValueError, match="big.pt reads .*same crops"):
        Classifier.load([tmp_path / "s0.pt", tmp_path / "big.pt"])


# ----------------------------------------------------------------------------- crop sets


def test_gt_crop_set(crop_sets: dict[str, Path], synthetic_data: dict) -> None:
    rows = list(csv.DictReader(crop_sets["train"].open()))
    coco = json.loads(Path(synthetic_data["train"]).read_text())
    assert len(rows) == sum(not a["iscrowd"] for a in coco["annotations"]) > 0
    assert list(rows[0]) == ["crop", "label", "image_id", "ann_id", "source_image", "source"]
    assert {r["source"] for r in rows} == {"gt"}
    meta = json.loads((crop_sets["train"].parent / "crops.json").read_text())
    assert meta["crop"]["size"] == 32 and meta["derived_masks"] is None  # synthetic masks are exact
    data = CropIndexDataset(crop_sets["train"], (crop_sets["train"].parent / "classes.txt").read_text().split())
    x, y = data[0]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32 and 0 <= x.min() and x.max() <= 1
    assert isinstance(y, int)
    aug = CropIndexDataset(crop_sets["train"], data.class_names, crop_transforms(CropConfig(size=32), True))
    assert aug[0][0].shape == (3, 32, 32) and aug[0][0].dtype == torch.float32


def test_crop_set_errors(crop_sets: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"crop.size=32"):
        check_crop_rules(crop_sets["train"], CropConfig(size=64))
    with pytest.raises(ValueError, match="not among the classes"):
        CropIndexDataset(crop_sets["train"], ["cat", "dog"])
    with pytest.raises(FileNotFoundError, match="make_crops"):
        CropIndexDataset(tmp_path / "index.csv", ["a"])


def test_pred_crop_set_with_tiny_segmenter(synthetic_data: dict, tmp_path: Path) -> None:
    seg_cfg = load_config(SegConfig, None, TINY_SEG)
    torch.manual_seed(0)
    model = build_segmenter(seg_cfg.model, 1)
    save_checkpoint(tmp_path / "seg.pt", segmenter_checkpoint(model, seg_cfg, ["head"]))
    args = ["--coco", str(synthetic_data["val"]), "--from", "pred", "--segmenter", str(tmp_path / "seg.pt"),
            "--no-progress", "--set", *CROP]
    for extra, out in (([], "strict"), (["--score-thresh", "0", "--background"], "all"),
                       (["--score-thresh", "0", "--background", "--background-faces", str(tmp_path / "seg.pt"),
                         "--background-face-score", "0"], "faces")):
        index = make_crops.main(make_crops.parse_args([*args, "--out", str(tmp_path / out), *extra]))
        rows = list(csv.DictReader(index.open()))  # an untrained model may find nothing: accepted
        assert all(r["source"] == "pred" and float(r["score"]) >= 0 for r in rows)
        header = index.read_text().splitlines()[0].split(",")
        assert header[-2:] == ["score", "iou"]
    assert (tmp_path / "all" / "classes.txt").read_text().split()[-1] == "background"
    # the tiny model finds the same heads as faces: each unmatched head holds one, and goes
    unmatched = sum(r["label"] == "background" for r in csv.DictReader((tmp_path / "all" / "index.csv").open()))
    assert not any(r["label"] == "background" for r in csv.DictReader((tmp_path / "faces" / "index.csv").open()))
    assert unmatched > 0
    with pytest.raises(ValueError, match="needs --segmenter"):
        make_crops.main(make_crops.parse_args(["--coco", str(synthetic_data["val"]), "--out",
                                               str(tmp_path / "x"), "--from", "pred"]))


def test_background_max_iou_drops_half_matched_heads(synthetic_data: dict, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    coco = load_coco(synthetic_data["val"])

    def heads(segmenter, image, anns, class_of, *args):  # a match, a head half on one, a stray one
        mask = np.zeros(image.shape[:2], bool)
        mask[8:40, 8:40] = True
        label = class_of[anns[0]["category_id"]]
        return [{"box": [8.0, 8.0, 40.0, 40.0], "mask": mask, "score": 0.9, "iou": iou, "ann_id": ann, "label": lab}
                for iou, ann, lab in ((0.8, anns[0]["id"], label), (0.4, "", BACKGROUND), (0.1, "", BACKGROUND))]

    monkeypatch.setattr(crop_sets_module, "_predicted_heads", heads)
    counts = {}
    for name, max_iou in (("all", None), ("band", 0.3)):
        index = make_crop_set(coco, tmp_path / name, CropConfig(size=32), object(), background=True,
                              progress=False, background_max_iou=max_iou)
        rows = list(csv.DictReader(index.open()))
        counts[name] = [float(r["iou"]) for r in rows if r["label"] == BACKGROUND]
        assert len(rows) - len(counts[name]) == len(coco.image_ids)  # the matched heads all stay
    assert sorted(set(counts["all"])) == [0.1, 0.4] and set(counts["band"]) == {0.1}
    assert len(counts["band"]) == len(coco.image_ids)
    assert json.loads((tmp_path / "band" / "crops.json").read_text())["background_max_iou"] == 0.3
    with pytest.raises(ValueError, match="needs background=True"):
        make_crop_set(coco, tmp_path / "x", CropConfig(size=32), object(), background_max_iou=0.3)


def test_background_faces_drop_unmatched_heads_holding_a_face(synthetic_data: dict, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """`background_faces`: an unmatched head holding half a face the face detector finds is
    neither background nor kept; matched heads and faceless unmatched heads stay."""
    coco = load_coco(synthetic_data["val"])

    def heads(segmenter, image, anns, class_of, *args):  # a match, a stray head on a face, a faceless one
        mask = np.zeros(image.shape[:2], bool)
        mask[8:40, 8:40] = True
        label = class_of[anns[0]["category_id"]]
        return [{"box": box, "mask": mask, "score": 0.9, "iou": iou, "ann_id": ann, "label": lab}
                for box, iou, ann, lab in (([8.0, 8.0, 40.0, 40.0], 0.8, anns[0]["id"], label),
                                           ([0.0, 0.0, 20.0, 20.0], 0.0, "", BACKGROUND),
                                           ([40.0, 40.0, 60.0, 60.0], 0.0, "", BACKGROUND))]

    seen = []

    def faces(detector, image, score, device):  # one face, 3/4 inside the stray head at (0, 0)
        seen.append((detector, score))
        return torch.tensor([[10.0, 5.0, 30.0, 15.0]])

    monkeypatch.setattr(crop_sets_module, "_predicted_heads", heads)
    monkeypatch.setattr(crop_sets_module, "_found_faces", faces)
    detector = object()
    index = make_crop_set(coco, tmp_path / "clean", CropConfig(size=32), object(), background=True,
                          progress=False, background_faces=detector, background_face_score=0.7)
    rows = list(csv.DictReader(index.open()))
    assert [r["crop"].rsplit("_p", 1)[1] for r in rows] == ["0.png", "2.png"] * len(coco.image_ids)
    assert seen == [(detector, 0.7)] * len(coco.image_ids)
    assert json.loads((tmp_path / "clean" / "crops.json").read_text())["background_face_score"] == 0.7
    assert crop_sets_module._holds_a_face([0, 0, 20, 20], torch.tensor([[10.0, 5.0, 30.0, 15.0]]))
    assert not crop_sets_module._holds_a_face([0, 0, 19, 20], torch.tensor([[10.0, 5.0, 30.0, 15.0]]))
    assert not crop_sets_module._holds_a_face([0, 0, 20, 20], torch.zeros((0, 4)))
    with pytest.raises(ValueError, match="needs background=True"):
        make_crop_set(coco, tmp_path / "x", CropConfig(size=32), object(), background_faces=detector)


# ----------------------------------------------------------------------------- training and tools


def test_train_resume_and_eval_tools(crop_sets: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "run"
    base = ["--out", str(out), "--no-progress", "--set", *TINY_TRAIN, "train.frozen_epochs=1",
            f"data.train_index={crop_sets['train']}", f"data.val_index={crop_sets['val']}"]
    result = train_cls.main(train_cls.parse_args(base))
    for name in ("last.pt", "best.pt", "metrics.csv", "curves.png", "config.yaml"):
        assert (out / name).is_file(), name
    assert result["epochs"] == 1
    state = load_checkpoint(out / "last.pt", "classifier")
    assert state["epoch"] == 0 and state["phase"] == "frozen"
    assert state["preprocessing"]["crop"]["size"] == 32
    assert "optimizer" not in load_checkpoint(out / "best.pt", "classifier")

    # Resuming for a second epoch equals training two epochs straight (phase restored, seeded).
    train_cls.main(train_cls.parse_args([*base, "train.epochs=2", "train.patience=5", "--resume"]))
    resumed = load_checkpoint(out / "last.pt", "classifier")
    assert resumed["epoch"] == 1 and resumed["phase"] == "full"
    assert (out / "metrics.csv").read_text().count("\n") == 3  # header + 2 epochs
    straight = tmp_path / "straight"
    train_cls.main(train_cls.parse_args([*base[2:], "train.epochs=2", "train.patience=5",
                                         "--out", str(straight)]))
    other = load_checkpoint(straight / "last.pt", "classifier")
    assert all(torch.equal(v, other["model"][k]) for k, v in resumed["model"].items())

    metrics = eval_cls.main(eval_cls.parse_args([str(out / "best.pt"), str(crop_sets["val"]),
                                                 "--out", str(tmp_path / "ev" / "val.json"), "--no-progress"]))
    for name in ("val.json", "val_confusion.csv", "val_confusion.png", "val_mistakes.png", "val_predictions.csv"):
        assert (tmp_path / "ev" / name).is_file(), name
    assert json.loads((tmp_path / "ev" / "val.json").read_text()) == metrics
    assert {"accuracy", "balanced_accuracy", "macro_f1"} <= set(metrics)
    assert metrics["num_crops"] == len(list(csv.DictReader(crop_sets["val"].open())))
    flipped = eval_cls.main(eval_cls.parse_args([str(out / "best.pt"), str(crop_sets["val"]), "--flip",
                                                 "--out", str(tmp_path / "ev" / "flip.json"), "--no-progress"]))
    assert flipped.keys() == metrics.keys() and flipped["num_crops"] == metrics["num_crops"]
    # Several checkpoints: their ensemble; a model averaged with itself scores as it does alone.
    twice = eval_cls.main(eval_cls.parse_args([str(out / "best.pt"), str(out / "best.pt"), str(crop_sets["val"]),
                                               "--out", str(tmp_path / "ev" / "twice.json"), "--no-progress"]))
    assert twice == pytest.approx(metrics, abs=1e-6)


@pytest.mark.parametrize("balance", ["sampler", "loss"])
def test_class_balancing_runs(crop_sets: dict[str, Path], tmp_path: Path, balance: str) -> None:
    result = train_classifier(_cfg(crop_sets, f"data.balance={balance}", "train.max_iters=1"),
                              tmp_path, progress=False)
    assert result["epochs"] == 1 and 0.0 <= result["best"] <= 1.0
    if balance == "sampler":  # square-root sampling trains too; a power needs the sampler
        tempered = train_classifier(_cfg(crop_sets, "data.balance_power=0.5", "train.max_iters=1"),
                                    tmp_path / "sqrt", progress=False)
        assert tempered["epochs"] == 1
    else:
        with pytest.raises(ValueError, match="balance_power"):
            train_classifier(_cfg(crop_sets, "data.balance=loss", "data.balance_power=0.5"), tmp_path / "bad",
                             progress=False)


def test_early_stopping_stops(crop_sets: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A val score that never improves after epoch 1: patience 1 stops at epoch 2 of 5.
    monkeypatch.setattr(classification, "_validate", lambda *a, **k: ({"loss/val": 1.0, "val/macro_f1": 0.5}, {}))
    cfg = _cfg(crop_sets, "train.epochs=5", "train.patience=1", "train.max_iters=1")
    result = train_classifier(cfg, tmp_path, progress=False)
    assert result["stopped_early"] and result["epochs"] == 2 and result["best_epoch"] == 0
    assert train_classifier(cfg, tmp_path, resume=True, progress=False)["epochs"] == 2  # stays stopped


def test_averaged_weights_are_validated_saved_and_resumed(crop_sets: dict[str, Path], tmp_path: Path) -> None:
    # train.ema_decay: `model` is the moving average of the trained weights, updated after every
    # step; last.pt keeps the trained ones, and resuming equals training straight through.
    cfg = _cfg(crop_sets, "train.ema_decay=0.5", "train.frozen_epochs=1", "train.patience=5")
    train_classifier(dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, epochs=1)),
                     tmp_path / "run", progress=False)
    train_classifier(dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, epochs=2)),
                     tmp_path / "run", resume=True, progress=False)
    resumed = load_checkpoint(tmp_path / "run" / "last.pt", "classifier")
    straight_cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, epochs=2))
    train_classifier(straight_cfg, tmp_path / "straight", progress=False)
    straight = load_checkpoint(tmp_path / "straight" / "last.pt", "classifier")
    assert resumed["ema_updates"] == straight["ema_updates"] == 4  # 2 epochs x 2 steps
    for key in ("model", "training_weights"):
        assert all(torch.equal(v, straight[key][k]) for k, v in resumed[key].items()), key
    trained, averaged = resumed["training_weights"], resumed["model"]
    moved = [k for k, v in trained.items() if v.is_floating_point() and not torch.equal(v, averaged[k])]
    assert "classifier.1.weight" in moved  # the head moved, and its average lags behind
    best = load_checkpoint(tmp_path / "run" / "best.pt", "classifier")
    assert "training_weights" not in best and "optimizer" not in best
    # the averaged weights are what the saved classifier runs
    loaded = Classifier.load(tmp_path / "run" / "last.pt")
    assert all(torch.equal(v.cpu(), averaged[k]) for k, v in loaded.model.state_dict().items())

    with pytest.raises(ValueError, match="averaged weights.*train.ema_decay=0.0"):
        train_classifier(dataclasses.replace(straight_cfg, train=dataclasses.replace(straight_cfg.train, ema_decay=0.0,
                                                                                       epochs=3)),
                         tmp_path / "straight", resume=True, progress=False)
    with pytest.raises(ValueError, match="ema_decay"):
        train_classifier(_cfg(crop_sets, "train.ema_decay=1.0"), tmp_path / "bad", progress=False)


def test_distillation_from_teachers_trains_resumes_and_checks_them(crop_sets: dict[str, Path],
                                                                   tmp_path: Path) -> None:
    train_classifier(_cfg(crop_sets), tmp_path / "teacher", progress=False)
    teacher = tmp_path / "teacher" / "best.pt"
    cfg = _cfg(crop_sets, f"train.teachers=[{teacher},{teacher}]", "train.distill_weight=0.7",
               "train.frozen_epochs=1", "train.patience=5")
    train_classifier(dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, epochs=1)),
                     tmp_path / "run", progress=False)
    two = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, epochs=2))
    train_classifier(two, tmp_path / "run", resume=True, progress=False)
    train_classifier(two, tmp_path / "straight", progress=False)
    # The teachers draw no random numbers: a resumed run equals one straight through.
    resumed, straight = (load_checkpoint(tmp_path / run / "last.pt", "classifier") for run in ("run", "straight"))
    assert all(torch.equal(v, straight["model"][k]) for k, v in resumed["model"].items())
    rows = list(csv.DictReader((tmp_path / "run" / "metrics.csv").open()))
    assert len(rows) == 2
    for row in rows:  # both terms logged, already weighted, summing to the loss
        labels, distill = float(row["loss/labels"]), float(row["loss/distill"])
        assert distill > 0 and labels > 0
        assert abs(float(row["loss"]) - labels - distill) < 1e-3
    # A model that starts as its teacher and does not move (lr 0, frozen batch norms, no dropout)
    # has nothing to learn from it: the teacher's term is zero up to its bf16 rounding.
    torch.save(Classifier.load(teacher).model.state_dict(), tmp_path / "teacher.pth")
    own = _cfg(crop_sets, f"train.teachers=[{teacher}]", "train.distill_weight=1.0", "train.lr=0",
               "train.frozen_epochs=1", "model.dropout=0", f"model.weights={tmp_path / 'teacher.pth'}")
    train_classifier(own, tmp_path / "own", progress=False)
    row = next(csv.DictReader((tmp_path / "own" / "metrics.csv").open()))
    assert 0 <= float(row["loss/distill"]) < 1e-2

    # Teachers must predict what the model does, from the same crops.
    names = Classifier.load(teacher).class_names
    _saved_classifier(tmp_path / "big.pt", 0, names, size=48)
    _saved_classifier(tmp_path / "other.pt", 0, sorted(names))
    _saved_classifier(tmp_path / "more.pt", 0, [*names, "turban"])
    for bad, message in (("big.pt", "read crops as"), ("other.pt", "the same values or some of them"),
                         ("more.pt", "the same values or some of them")):
        with pytest.raises(ValueError, match=message):
            train_classifier(_cfg(crop_sets, f"train.teachers=[{tmp_path / bad}]"), tmp_path / "bad", progress=False)
    with pytest.raises(ValueError, match="distill_weight"):
        train_classifier(_cfg(crop_sets, f"train.teachers=[{teacher}]", "train.distill_weight=0"),
                         tmp_path / "bad", progress=False)


def test_distillation_from_teachers_that_know_fewer_values(crop_sets: dict[str, Path], tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    # The teacher lacks the model's last class: the model's other classes are distilled, and
    # crops labelled with the last one are not (their targets reach the loss as missing).
    names = read_class_names(crop_sets["train"])
    _saved_classifier(tmp_path / "fewer.pt", 0, names[:-1])
    seen = []
    labels = []  # the batch's labels: the label loss runs just before the teachers' term

    def spy(logits, teacher_logits, targets=None, temperature=1.0, columns=None):
        seen.append((labels[-1], targets, columns, {a: v.shape[1] for a, v in teacher_logits.items()}))
        return distillation_loss(logits, teacher_logits, targets, temperature, columns)

    monkeypatch.setattr(classification, "distillation_loss", spy)
    original = classification.masked_attribute_loss
    monkeypatch.setattr(classification, "masked_attribute_loss",
                        lambda logits, y, *a, **k: labels.append(y.clone()) or original(logits, y, *a, **k))
    train_classifier(_cfg(crop_sets, f"train.teachers=[{tmp_path / 'fewer.pt'}]"), tmp_path / "run", progress=False)
    assert seen and all(columns == {"label": list(range(len(names) - 1))} and shapes == {"label": len(names) - 1}
                        for _, _, columns, shapes in seen)
    for y, targets, _, _ in seen:
        last = y[:, 0] == len(names) - 1
        if targets is None:  # no crop of the last class in this batch: every crop is distilled
            assert not last.any()
        else:
            assert torch.all(targets[last, 0] == MISSING) and torch.all(targets[~last, 0] != MISSING)
    assert any(bool((y[:, 0] == len(names) - 1).any()) for y, *_ in seen)  # the case did come up
    row = next(csv.DictReader((tmp_path / "run" / "metrics.csv").open()))
    assert float(row["loss/distill"]) > 0


def test_cosine_schedule_after_unfreezing_and_resume(crop_sets: dict[str, Path], tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    # train.schedule=cosine: the full phase's lr falls per step from lr * unfrozen_lr_factor to 0
    # (1 frozen + 2 full epochs of 2 steps: half way after epoch 2, 0 after epoch 3); a run
    # killed after epoch 2 and resumed trains the same weights as one straight through.
    import headseg.engine as engine

    cfg = _cfg(crop_sets, "train.schedule=cosine", "train.frozen_epochs=1", "train.epochs=3",
               "train.patience=5", "train.lr=1e-3", "train.unfrozen_lr_factor=0.1")
    train_classifier(cfg, tmp_path / "straight", progress=False)
    lrs = [float(r["lr"]) for r in csv.DictReader((tmp_path / "straight" / "metrics.csv").open())]
    assert lrs == pytest.approx([1e-3, 0.5e-4, 0.0], abs=1e-12)

    real_save, saves = engine.save_checkpoint, []

    def save_then_die(path, state):
        real_save(path, state)
        saves.append(Path(path).name)
        if saves.count("last.pt") == 2:
            raise KeyboardInterrupt("killed right after the second epoch's checkpoint")

    monkeypatch.setattr(engine, "save_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        train_classifier(cfg, tmp_path / "run", progress=False)
    monkeypatch.setattr(engine, "save_checkpoint", real_save)
    train_classifier(cfg, tmp_path / "run", resume=True, progress=False)
    resumed = load_checkpoint(tmp_path / "run" / "last.pt", "classifier")
    straight = load_checkpoint(tmp_path / "straight" / "last.pt", "classifier")
    assert all(torch.equal(v, straight["model"][k]) for k, v in resumed["model"].items())
    with pytest.raises(ValueError, match="train.schedule='step'"):
        train_classifier(_cfg(crop_sets, "train.schedule=step"), tmp_path / "bad", progress=False)


def test_non_finite_loss_names_epoch_and_step(crop_sets: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(NonFiniteLossError, match="epoch 1, step 2"):
        train_classifier(_cfg(crop_sets, "train.lr=1e30", "train.weight_decay=0"), tmp_path, progress=False)


def test_mistakes_gallery_without_mistakes(tmp_path: Path) -> None:
    images = [np.zeros((8, 8, 3), np.uint8)] * 2
    path = plot_worst_mistakes(images, [0, 1], torch.tensor([[0.9, 0.1], [0.2, 0.8]]), ["a", "b"],
                               tmp_path / "m.png")
    assert path.stat().st_size > 0
