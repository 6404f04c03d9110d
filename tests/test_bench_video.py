"""tools/bench_video.py: a two-pass speed run and a memory run, on tiny clips and a tiny model."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from tests.test_tracking import checkpoints  # noqa: F401  (a fixture: tiny untrained seg and cls checkpoints)
from tools import bench_video


def _model_args(checkpoints: tuple[Path, Path]) -> list[str]:
    seg, cls = checkpoints
    return ["--seg", str(seg), "--cls", str(cls), "--device", "cpu", "--score-thresh", "0"]


def test_speed_counts_every_frame_of_a_video(checkpoints, tmp_path: Path) -> None:  # noqa: F811
    rng = np.random.default_rng(0)
    video = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (64, 48))
    for _ in range(12):
        writer.write(rng.integers(0, 255, (48, 64, 3), np.uint8))
    writer.release()
    args = bench_video.parse_args([str(video), "--stride", "3", "--warmup", "1", "--out", str(tmp_path / "speed.json"),
                                   *_model_args(checkpoints)])
    report = bench_video.main(args)
    assert json.loads((tmp_path / "speed.json").read_text())["runs"] == report["runs"]
    assert report["size"] == [48, 64] and report["warmup_frames"] == 3
    assert [r["draw"] for r in report["runs"]] == [False, True]
    for r in report["runs"]:
        assert r["frames"] == 12 and r["timed_frames"] == 9 and r["pipeline_calls"] == 3
        assert r["frames_per_second"] > 0 and 0 < r["pipeline_share"] < 1


def test_memory_on_a_made_clip(checkpoints, tmp_path: Path) -> None:  # noqa: F811
    photos = tmp_path / "photos"
    photos.mkdir()
    image = np.full((60, 80, 3), 90, np.uint8)
    cv2.ellipse(image, (40, 30), (10, 14), 0, 0, 360, (130, 160, 200), -1)
    cv2.imwrite(str(photos / "a.png"), image)
    out = tmp_path / "mem" / "memory.json"
    args = bench_video.parse_args(["--memory", "--photos", str(photos), "--minutes", "0.02", "--size", "48", "64",
                                   "--clip", str(tmp_path / "long.mp4"), "--every", "2", "--stride", "3",
                                   "--warmup", "1", "--out", str(out), *_model_args(checkpoints)])
    report = bench_video.main(args)
    assert (tmp_path / "long.mp4").is_file() and report["run"]["frames"] == 12 and report["size"] == [48, 64]
    assert report["sample_frames"] == [0, 2, 4, 6, 8, 10, 11] and len(report["rss_mb"]) == 7
    assert all(mb > 10 for mb in report["rss_mb"])
    assert report["peak_rss_mb"] >= max(report["rss_mb"]) * 0.99
    assert report["rss_after_warmup_mb"] == report["rss_mb"][2]  # frame 4: the first sample after 3 frames
    assert report["growth_mb"] == pytest.approx(report["rss_mb"][-1] - report["rss_mb"][2])
    assert Path(report["plot"]).stat().st_size > 0
    assert json.loads(out.read_text())["sample_frames"] == report["sample_frames"]


def test_memory_needs_out_and_video_must_exist(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="--out"):
        bench_video.main(bench_video.parse_args(["--memory"]))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        bench_video.main(bench_video.parse_args([str(tmp_path / "none.mp4")]))
