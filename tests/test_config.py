"""Config loading: YAML into frozen dataclasses, overrides, and errors that suggest close keys."""

from __future__ import annotations

import dataclasses

import pytest

from headseg.config import ClsConfig, SegConfig, apply_overrides, load_config, to_dict, from_dict


def test_defaults_are_frozen() -> None:
    cfg = SegConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.train.lr = 1.0  # type: ignore[misc]


def test_yaml_and_overrides(tmp_path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("model:\n  min_size: 320\n  anchor_sizes: [8, 16, 32, 64, 128]\ntrain:\n  epochs: 3\n")
    cfg = load_config(SegConfig, path, ["train.lr=0.005", "data.class_agnostic=false",
                                        "train.scale_jitter=[0.5, 1.5]"])
    assert cfg.model.min_size == 320
    assert cfg.model.anchor_sizes == (8, 16, 32, 64, 128)
    assert cfg.train.epochs == 3 and cfg.train.lr == 0.005
    assert cfg.data.class_agnostic is False
    assert cfg.train.scale_jitter == (0.5, 1.5)
    assert cfg.model.max_size == SegConfig().model.max_size  # untouched fields keep defaults


def test_round_trip_through_dict() -> None:
    cfg = apply_overrides(ClsConfig(), ["crop.fill=blur", "model.head=mlp"])
    assert from_dict(ClsConfig, to_dict(cfg)) == cfg


def test_unknown_key_suggests_close_match(tmp_path) -> None:
    with pytest.raises(ValueError, match=r"train\.lrr.*did you mean 'lr'"):
        load_config(SegConfig, None, ["train.lrr=0.1"])
    path = tmp_path / "c.yaml"
    path.write_text("modle:\n  min_size: 3\n")
    with pytest.raises(ValueError, match=r"c\.yaml.*'modle'.*did you mean 'model'"):
        load_config(SegConfig, path)


@pytest.mark.parametrize("override, message", [
    ("train.epochs=many", "expects int"),
    ("data.class_agnostic=maybe", "expects true or false"),
    ("train", "key=value"),
    ("train.lr.x=1", "is a value, not a section"),
])
def test_bad_overrides(override: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        load_config(SegConfig, None, [override])


def test_missing_and_malformed_files(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_config(SegConfig, tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("- just\n- a list\n")
    with pytest.raises(ValueError, match="mapping"):
        load_config(SegConfig, bad)


def test_shipped_configs_load() -> None:
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "configs"
    for path in sorted(root.glob("seg_*.yaml")):
        load_config(SegConfig, path)
    for path in sorted(root.glob("cls_*.yaml")):
        load_config(ClsConfig, path)


def test_parse_overrides_reads_yaml_values_and_drops_the_prefix() -> None:
    from headseg.config import parse_overrides

    assert parse_overrides(["min_size=640", "model.box_from_mask=false", "anchor_sizes=[8, 16]"]) == {
        "min_size": 640, "box_from_mask": False, "anchor_sizes": [8, 16]}
    with pytest.raises(ValueError, match="key=value"):
        parse_overrides(["min_size"])


def test_yaml_names_a_base_file(tmp_path) -> None:
    (tmp_path / "base.yaml").write_text("train:\n  epochs: 7\n  lr: 0.5\nmodel:\n  min_size: 320\n")
    (tmp_path / "child.yaml").write_text("_base_: base.yaml\ntrain:\n  lr: 0.25\n")
    cfg = load_config(SegConfig, tmp_path / "child.yaml", ["train.seed=3"])
    assert (cfg.train.epochs, cfg.train.lr, cfg.train.seed, cfg.model.min_size) == (7, 0.25, 3, 320)
    (tmp_path / "loop.yaml").write_text("_base_: loop.yaml\n")
    with pytest.raises(ValueError, match="names itself as a base"):
        load_config(SegConfig, tmp_path / "loop.yaml")
    (tmp_path / "orphan.yaml").write_text("_base_: missing.yaml\n")
    with pytest.raises(FileNotFoundError, match="missing.yaml"):
        load_config(SegConfig, tmp_path / "orphan.yaml")


def test_dataclass_defaults_are_the_documented_recipe() -> None:
    """configs/cls_default.yaml and seg_default.yaml add nothing to the defaults (docs/RESULTS.md)."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "configs"
    assert load_config(ClsConfig, root / "cls_default.yaml") == ClsConfig()
    assert load_config(SegConfig, root / "seg_default.yaml") == SegConfig()
    cls = ClsConfig()
    assert (cls.crop.size, cls.train.lr, cls.train.frozen_epochs, cls.train.batch_size) == (96, 1e-3, 2, 32)
