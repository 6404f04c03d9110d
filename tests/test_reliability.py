"""Bad input, killed runs, interrupted writes and fuzzing: each gives a result or one clear error."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from headseg.data import load_coco
from headseg.io import atomic_write, read_image, write_json
from headseg.engine import check_output_dir, load_checkpoint
from tests.conftest import TINY_SEG

ROOT = Path(__file__).resolve().parents[1]


def _jpeg_bytes(image: np.ndarray, **save_kwargs) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="JPEG", **save_kwargs)
    return buf.getvalue()


@pytest.fixture
def photo() -> np.ndarray:
    rng = np.random.default_rng(0)
    image = np.full((60, 80, 3), 120, np.uint8)
    cv2.ellipse(image, (40, 30), (12, 16), 0, 0, 360, (210, 170, 140), -1)
    return np.clip(image + rng.integers(0, 20, image.shape), 0, 255).astype(np.uint8)


# ----------------------------------------------------------------------------- image files


def test_truncated_and_fake_images_are_clear_errors(tmp_path: Path, photo: np.ndarray) -> None:
    cases = {
        "truncated.jpg": _jpeg_bytes(photo)[:300],
        "truncated.png": cv2.imencode(".png", photo)[1].tobytes()[:200],
        "text.jpg": b"this is not an image at all\n" * 10,
        "empty.png": b"",
    }
    for name, data in cases.items():
        path = tmp_path / name
        path.write_bytes(data)
        with pytest.raises(ValueError, match=name.replace(".", r"\.")):
            read_image(path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_image(tmp_path / "missing.png")


def test_unusual_pixel_formats_become_rgb(tmp_path: Path, photo: np.ndarray) -> None:
    gray = cv2.cvtColor(photo, cv2.COLOR_RGB2GRAY)
    cv2.imwrite(str(tmp_path / "gray.png"), gray)
    Image.fromarray(np.dstack([photo, np.full(photo.shape[:2], 128, np.uint8)]), "RGBA").save(tmp_path / "rgba.png")
    cv2.imwrite(str(tmp_path / "deep.png"), gray.astype(np.uint16) * 257)
    Image.fromarray(photo).convert("CMYK").save(tmp_path / "cmyk.jpg", quality=95)
    Image.fromarray(photo[:1, :1]).save(tmp_path / "one.png")
    for name in ("gray.png", "rgba.png", "deep.png", "cmyk.jpg"):
        image = read_image(tmp_path / name)
        assert image.shape == photo.shape and image.dtype == np.uint8, name
    assert np.array_equal(read_image(tmp_path / "rgba.png"), photo)
    assert np.array_equal(read_image(tmp_path / "deep.png")[:, :, 0], gray)  # 16-bit scaled, not clipped
    assert np.abs(read_image(tmp_path / "cmyk.jpg").astype(int) - photo).mean() < 8
    assert read_image(tmp_path / "one.png").shape == (1, 1, 3)


def test_exif_orientation_is_honoured(tmp_path: Path, photo: np.ndarray) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: rotate 90 degrees clockwise to view
    (tmp_path / "rot.jpg").write_bytes(_jpeg_bytes(photo, exif=exif, quality=95))
    image = read_image(tmp_path / "rot.jpg")
    assert image.shape == (80, 60, 3)
    upright = np.rot90(photo, k=-1)
    assert np.abs(image.astype(int) - upright).mean() < 8


def _write_avi(path: Path, frames: int) -> None:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 5.0, (80, 60))
    for i in range(frames):
        writer.write(np.full((60, 80, 3), 40 * i % 255, np.uint8))
    writer.release()


def test_predict_tool_on_bad_inputs(tmp_path: Path, photo: np.ndarray) -> None:
    """One clear line per bad input, the rest processed, exit status 1, no traceback."""
    from headseg.classification import build_classifier, classifier_checkpoint
    from headseg.config import ClsConfig, SegConfig, load_config
    from headseg.segmentation import build_segmenter, segmenter_checkpoint
    from headseg.engine import save_checkpoint

    seg_cfg = load_config(SegConfig, None, [s for s in TINY_SEG if s.startswith("model.")])
    cls_cfg = load_config(ClsConfig, None, ["model.weights=none", "crop.size=32"])
    save_checkpoint(tmp_path / "seg.pt", segmenter_checkpoint(build_segmenter(seg_cfg.model, 1), seg_cfg, ["head"]))
    save_checkpoint(tmp_path / "cls.pt", classifier_checkpoint(build_classifier(cls_cfg.model, 2), cls_cfg,
                                                                ["a", "b"]))
    inputs = tmp_path / "in"
    inputs.mkdir()
    cv2.imwrite(str(inputs / "good.png"), photo)
    Image.fromarray(photo[:1, :1]).save(inputs / "tiny.png")
    (inputs / "zero.jpg").write_bytes(b"")
    (inputs / "fake.png").write_bytes(b"GIF89a nope")
    _write_avi(inputs / "clip.avi", 6)
    data = (inputs / "clip.avi").read_bytes()
    (inputs / "damaged.avi").write_bytes(data[: int(len(data) * 0.7)])
    cmd = [sys.executable, str(ROOT / "tools" / "predict.py"), str(inputs), str(tmp_path / "missing.jpg"),
           "--out", str(tmp_path / "out"), "--seg", str(tmp_path / "seg.pt"), "--cls", str(tmp_path / "cls.pt")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    skipped = "\n".join(summary["skipped"])
    assert "zero.jpg" in skipped and "fake.png" in skipped and "missing.jpg" in skipped
    assert "good.png" not in skipped and "tiny.png" not in skipped and "clip.avi" not in skipped
    records = [json.loads(x) for x in (tmp_path / "out" / "predictions.jsonl").read_text().splitlines()]
    sources = {Path(r["source"]).name for r in records}
    assert {"good.png", "tiny.png", "clip.avi"} <= sources
    assert sum(1 for r in records if r["source"].endswith("clip.avi")) == 6

    bad = subprocess.run([sys.executable, str(ROOT / "tools" / "predict.py"), str(inputs), "--out",
                          str(tmp_path / "o2"), "--seg", str(tmp_path / "nope.pt"), "--cls", str(tmp_path / "cls.pt")],
                         capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert bad.stderr.strip().splitlines()[-1].startswith("error: checkpoint") and "nope.pt" in bad.stderr


def test_pipeline_survives_one_pixel_and_large_images(tmp_path: Path) -> None:
    from headseg import HeadwearPipeline
    from headseg.classification import build_classifier, classifier_checkpoint
    from headseg.config import ClsConfig, SegConfig, load_config
    from headseg.segmentation import build_segmenter, segmenter_checkpoint
    from headseg.engine import save_checkpoint

    seg_cfg = load_config(SegConfig, None, [s for s in TINY_SEG if s.startswith("model.")])
    cls_cfg = load_config(ClsConfig, None, ["model.weights=none", "crop.size=32"])
    save_checkpoint(tmp_path / "s.pt", segmenter_checkpoint(build_segmenter(seg_cfg.model, 1), seg_cfg, ["head"]))
    save_checkpoint(tmp_path / "c.pt", classifier_checkpoint(build_classifier(cls_cfg.model, 2), cls_cfg, ["a", "b"]))
    pipe = HeadwearPipeline.from_checkpoint(tmp_path / "s.pt", tmp_path / "c.pt", "cpu", score_thresh=0.9)
    assert pipe(np.zeros((1, 1, 3), np.uint8)).image_size == (1, 1)
    big = np.zeros((6000, 8000, 3), np.uint8)  # shrunk to max_side before either stage
    assert pipe(big).image_size == (6000, 8000)


# ----------------------------------------------------------------------------- killed runs


def _train_cmd(data: dict, out: Path, epochs: int) -> list[str]:
    return [sys.executable, str(ROOT / "tools" / "train_seg.py"), "--out", str(out), "--no-progress",
            "--set", *TINY_SEG, f"train.epochs={epochs}", "train.max_iters=3",
            f"data.train_json={data['train']}", f"data.val_json={data['val']}"]


def test_sigkill_mid_run_then_resume_matches_uninterrupted(synthetic_data: dict, tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    subprocess.run(_train_cmd(synthetic_data, straight, 3), env=env, check=True, capture_output=True, timeout=300)

    proc = subprocess.Popen(_train_cmd(synthetic_data, killed, 3), env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if (killed / "last.pt").is_file():
            try:
                if load_checkpoint(killed / "last.pt", "segmenter")["epoch"] == 0:
                    break
            except ValueError:
                pass
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)  # during epoch 2 (or its evaluation)
    proc.wait()
    assert load_checkpoint(killed / "last.pt", "segmenter")["epoch"] in (0, 1)

    subprocess.run(_train_cmd(synthetic_data, killed, 3) + ["--resume"], env=env, check=True,
                   capture_output=True, timeout=300)
    a = load_checkpoint(straight / "last.pt", "segmenter")
    b = load_checkpoint(killed / "last.pt", "segmenter")
    assert a["epoch"] == b["epoch"] == 2
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    rows = (killed / "metrics.csv").read_text().strip().splitlines()
    assert len(rows) == 4  # header + 3 epochs, no duplicate of the killed epoch


def test_interrupted_write_keeps_the_previous_file(tmp_path: Path) -> None:
    path = write_json(tmp_path / "metrics.json", {"AP": 0.5})

    def half_then_die(f) -> None:
        f.write(b'{"AP": 0.')
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(path, half_then_die)
    assert json.loads(path.read_text()) == {"AP": 0.5}
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]  # no temporary left behind
    assert oct(path.stat().st_mode & 0o777) != "0o600"


def test_sigkill_during_checkpoint_write(tmp_path: Path) -> None:
    """A process killed while writing a large checkpoint leaves the old one loadable."""
    from headseg.engine import save_checkpoint

    path = tmp_path / "last.pt"
    save_checkpoint(path, {"kind": "headseg-segmenter", "epoch": 0})
    code = (f"import torch, sys; sys.path.insert(0, {str(ROOT)!r});"
            "from headseg.engine import save_checkpoint;"
            f"save_checkpoint({str(path)!r}, {{'kind': 'headseg-segmenter', 'epoch': 1,"
            "'model': {'w': torch.zeros(300_000_000, dtype=torch.uint8)}})")
    proc = subprocess.Popen([sys.executable, "-c", code])
    deadline = time.time() + 60
    while time.time() < deadline and not any(p.name.endswith(".tmp") for p in tmp_path.iterdir()):
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert load_checkpoint(path, "segmenter")["epoch"] == 0


def test_full_disk_fails_early(tmp_path: Path) -> None:
    with pytest.raises(OSError, match="MB free"):
        check_output_dir(tmp_path / "run", min_free_mb=10**12)


# ----------------------------------------------------------------------------- fuzzing


@pytest.fixture(scope="module")
def coco_bytes(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, bytes]:
    from datasets.synthetic import SyntheticConfig, make_synthetic_coco

    out = tmp_path_factory.mktemp("fuzz")
    path = make_synthetic_coco(out, 3, SyntheticConfig.fixed_size(64), seed=1)
    return path, path.read_bytes()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), min_size=1, max_size=8))
def test_fuzz_coco_loader(coco_bytes: tuple[Path, bytes], flips: list[tuple[int, int]]) -> None:
    path, data = coco_bytes
    mutated = bytearray(data)
    for pos, value in flips:
        mutated[pos % len(mutated)] = value
    target = path.with_name("mutated.json")
    target.write_bytes(bytes(mutated))
    try:
        load_coco(target)
    except (ValueError, FileNotFoundError):
        pass  # a clear error is the only acceptable failure


@settings(max_examples=60, deadline=None)
@given(st.sampled_from([".png", ".jpg"]), st.lists(st.tuples(st.integers(0, 10**5), st.integers(0, 255)),
                                                  min_size=1, max_size=6), st.integers(10, 100))
def test_fuzz_image_reader(tmp_path_factory, suffix: str, flips, keep_percent: int) -> None:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (24, 32, 3), dtype=np.uint8)
    data = bytearray(cv2.imencode(suffix, image)[1].tobytes())
    for pos, value in flips:
        data[pos % len(data)] = value
    data = data[: max(1, len(data) * keep_percent // 100)]
    path = tmp_path_factory.mktemp("img") / f"m{suffix}"
    path.write_bytes(bytes(data))
    try:
        out = read_image(path)
    except ValueError:
        return
    assert out.dtype == np.uint8 and out.ndim == 3 and out.shape[2] == 3


@pytest.mark.parametrize("tool", ["eval_seg.py", "pack_model.py"])
def test_tools_end_user_errors_with_one_line(tool: str, tmp_path: Path) -> None:
    """A missing checkpoint is one ``error:`` line and exit status 2; HEADSEG_DEBUG=1 shows the traceback."""
    missing = tmp_path / "missing.pt"
    cmd = [sys.executable, str(ROOT / "tools" / tool), str(missing), str(tmp_path / "other")]
    env = {k: v for k, v in os.environ.items() if k != "HEADSEG_DEBUG"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert lines[-1].startswith("error: ") and str(missing) in lines[-1]
    assert "Traceback" not in proc.stderr
    debug = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env={**env, "HEADSEG_DEBUG": "1"})
    assert debug.returncode != 0 and "Traceback" in debug.stderr


def test_predict_ray_without_ray_says_how_to_install_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    """Ray is an optional extra: without it, tools/predict_ray.py ends with one ``error:`` line
    naming the install command and exit status 2, through the runner every tool shares."""
    from tools import _cli, predict_ray

    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now fails as if ray were not installed
    monkeypatch.delenv(_cli.DEBUG_VARIABLE, raising=False)
    args = predict_ray.parse_args([str(tmp_path), "--out", str(tmp_path / "out")])
    with pytest.raises(SystemExit) as exit_status:
        _cli.run(predict_ray.main, args)
    assert exit_status.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    assert err.startswith("error: ray[data] is not installed") and "pip install 'headseg[ray]'" in err
    assert not (tmp_path / "out").exists()  # it stopped before writing anything
    monkeypatch.setenv(_cli.DEBUG_VARIABLE, "1")
    with pytest.raises(ModuleNotFoundError, match=r"pip install 'headseg\[ray\]'"):
        _cli.run(predict_ray.main, args)
