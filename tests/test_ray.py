"""Batch inference on Ray Data gives predict.py's records, once each, through bad files and dead workers.

Ray starts once for the module, with 2 CPUs. Starting an actor (a new process that imports
torch and loads the model) costs most of a run, so the tests share runs: one command-line run
serves the comparison with predict.py and the rerun check, and the dead-actor test makes the
only other run, from file bytes into a copy of the first run's output.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from pycocotools import mask as mask_utils

ray = pytest.importorskip("ray", reason="ray[data] is an optional extra: pip install 'headseg[ray]'")

from headseg.ray_inference import CRASH_ONCE_VARIABLE, iter_records, predict_with_ray  # noqa: E402
from tools import predict, predict_ray  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = sorted((ROOT / "docs" / "samples").glob("*.jpg"))
BAD = ("text.jpg", "truncated.jpg")


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    """A 2-CPU Ray on loopback for the whole module; workers import this checkout's headseg."""
    saved = {k: os.environ.get(k) for k in ("PYTHONPATH", "RAY_USAGE_STATS_ENABLED")}
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), saved["PYTHONPATH"]]))
    ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False)
    yield
    ray.shutdown()
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The sample photos, a same-size copy of one (batched together), a truncated JPEG, a text file."""
    folder = tmp_path_factory.mktemp("photos")
    for path in SAMPLES:
        shutil.copy(path, folder / path.name)
    shutil.copy(SAMPLES[0], folder / "copy.jpg")
    data = SAMPLES[1].read_bytes()
    (folder / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (folder / "text.jpg").write_text("not an image\n")
    return folder


@pytest.fixture(scope="module")
def expected(folder: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, dict]:
    """predict.py's records (by file name) and summary on the same folder."""
    out = tmp_path_factory.mktemp("predict")
    assert predict.main(predict.parse_args([str(folder), "--out", str(out), "--no-draw"])) == 1
    lines = (out / "predictions.jsonl").read_text().splitlines()
    return {Path(r["source"]).name: r for r in map(json.loads, lines)}, json.loads((out / "summary.json").read_text())


@pytest.fixture(scope="module")
def first_run(folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tools/predict_ray.py into a fresh folder: a pool sized to the cluster, two inputs per batch."""
    out = tmp_path_factory.mktemp("ray") / "out"
    assert predict_ray.main(predict_ray.parse_args([str(folder), "--out", str(out), "--rows-per-batch", "2"])) == 1
    return out


def _sources(part: Path) -> list[str]:
    """The sources of one records file's records."""
    return [json.loads(line)["source"] for line in part.read_text().splitlines()]


def _raw_sources(out: Path) -> list[str]:
    """Every record's source in every part file, repeats included."""
    return [source for part in (out / "records").glob("part-*.jsonl") for source in _sources(part)]


def _assert_same_records(got: list[dict], want: dict[str, dict]) -> None:
    assert sorted(Path(r["source"]).name for r in got) == sorted(want)
    for record in got:
        ref = want[Path(record["source"]).name]
        assert record.keys() == ref.keys() and (record["height"], record["width"]) == (ref["height"], ref["width"])
        assert [h["label"] for h in record["heads"]] == [h["label"] for h in ref["heads"]]
        for head, ref_head in zip(record["heads"], ref["heads"]):
            assert head.keys() == ref_head.keys()
            assert head["score"] == pytest.approx(ref_head["score"], abs=2e-3)
            assert head["label_prob"] == pytest.approx(ref_head["label_prob"], abs=2e-3)
            np.testing.assert_allclose(head["box_xyxy"], ref_head["box_xyxy"], atol=0.5)
            masks = [mask_utils.decode({**h["mask_rle"], "counts": h["mask_rle"]["counts"].encode()})
                     for h in (head, ref_head)]
            assert (masks[0] & masks[1]).sum() >= 0.98 * (masks[0] | masks[1]).sum()


def test_ray_matches_predict_and_names_bad_files(first_run: Path, expected: tuple[dict, dict]) -> None:
    want, want_summary = expected
    assert len(want) == len(SAMPLES) + 1 and sum(len(r["heads"]) for r in want.values()) > 0
    _assert_same_records(list(iter_records(first_run)), want)
    summary = json.loads((first_run / "summary.json").read_text())
    for key in ("files", "processed", "heads_per_class"):
        assert summary[key] == want_summary[key], key
    assert sorted(Path(s.split(": ")[0]).name for s in summary["skipped"]) == sorted(BAD)
    assert "truncated" in next(s for s in summary["skipped"] if "truncated.jpg:" in s)
    assert len(list((first_run / "records").iterdir())) == 3  # 5 good inputs in batches of 2, no leftovers
    assert summary["actors"] == 2 and summary["gpus_per_actor"] == 0  # one per CPU of the 2-CPU cluster


def test_rerun_skips_done_inputs(first_run: Path, folder: Path, expected: tuple[dict, dict]) -> None:
    """Inputs that have records are not sent to Ray again; the records stay as they were."""
    out = first_run.parent / "rerun"
    shutil.copytree(first_run, out)
    good = [folder / name for name in expected[0]]
    again = predict_with_ray(good, out, rows_per_batch=2)
    assert again["already_done"] == again["processed"] == len(good) and again["skipped"] == []
    assert again["heads_per_class"] == expected[1]["heads_per_class"]
    for part in (first_run / "records").iterdir():
        assert (out / "records" / part.name).read_bytes() == part.read_bytes()
    assert sorted(os.listdir(out / "records")) == sorted(os.listdir(first_run / "records"))


def test_lost_part_redone_from_file_bytes_once_though_its_actor_dies(
        first_run: Path, folder: Path, expected: tuple[dict, dict]) -> None:
    """A rerun from a Dataset of file bytes redoes only the inputs of a lost records file; the
    actor dies right after rewriting it, and Ray's retry rewrites the same file instead of
    adding a copy. The redone records, decoded from bytes, are predict.py's."""
    out = first_run.parent / "resumed"
    shutil.copytree(first_run, out)
    parts = sorted((out / "records").glob("part-*.jsonl"))
    lost = max(parts, key=lambda part: sum(len(json.loads(line)["heads"]) for line in part.read_text().splitlines()))
    lost_sources = _sources(lost)
    lost.unlink()
    kept = set(os.listdir(out / "records"))

    dataset = ray.data.read_binary_files(sorted(str(p) for p in folder.iterdir()), include_paths=True)
    flag = out.parent / "crashed"
    summary = predict_with_ray(dataset, out, concurrency=1, rows_per_batch=2,
                               ray_remote_args={"runtime_env": {"env_vars": {CRASH_ONCE_VARIABLE: str(flag)}}})
    assert flag.exists(), "the actor never reached the crash point"
    written = set(os.listdir(out / "records")) - kept
    assert sorted(s for name in written for s in _sources(out / "records" / name)) == sorted(lost_sources)
    assert sorted(_raw_sources(out)) == sorted(_raw_sources(first_run))  # each input once
    _assert_same_records(list(iter_records(out)), expected[0])
    assert summary["already_done"] is None and summary["processed"] == len(SAMPLES) + 1
    assert sorted(Path(s.split(": ")[0]).name for s in summary["skipped"]) == sorted(BAD)
    assert summary["heads_per_class"] == expected[1]["heads_per_class"]


def test_bad_arguments_say_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="give both checkpoints"):
        predict_with_ray([str(tmp_path)], tmp_path / "out", seg=tmp_path / "seg.pt")
    with pytest.raises(ValueError, match="'path' column"):
        predict_with_ray(ray.data.from_items([{"file": "x.jpg"}]), tmp_path / "out")
    with pytest.raises(ValueError, match="has no GPU"):
        predict_with_ray([str(tmp_path)], tmp_path / "out", gpus_per_actor=0.5)


def test_done_records_count_as_the_summary_does() -> None:
    """A rerun's counts of earlier records: per attribute value, and plain labels for old records."""
    from headseg.ray_inference import _columns

    multi = {"label": "helmet, with_mask", "attributes": {"headwear": {"value": "helmet"},
                                                          "face_mask": {"value": "with_mask"}}}
    assert _columns(multi) == ["headwear/helmet", "face_mask/with_mask"]
    assert _columns({"label": "with_mask", "attributes": {"label": {"value": "with_mask"}}}) == ["with_mask"]
    assert _columns({"label": "with_mask"}) == ["with_mask"]  # written before attributes existed
