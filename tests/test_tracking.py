"""Video: tracker wrapper, attire voting, events, video sources, clip geometry, track tools."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from headseg import Head, HeadwearPipeline
from headseg.classification import build_classifier, classifier_checkpoint
from headseg.clips import ClipFrame, camera_path, make_clip, render_view, transform_boxes
from headseg.config import ClsConfig, SegConfig, load_config
from headseg.events import EventLog, vote
from headseg.segmentation import build_segmenter, segmenter_checkpoint
from headseg.track_eval import AttireTally, SequenceTracks, score_clip, tracking_metrics
from headseg.tracking import ByteTracker, FrameResult, TrackedHead, Tracker, extrapolate_box
from headseg.engine import save_checkpoint
from headseg.video import Frame, VideoReader, track_frames
from tests.conftest import TINY_SEG
from tools import eval_video, track

CLASSES = ["bare", "hard_hat"]


def _head(box=(10.0, 10.0, 30.0, 30.0), probs=None) -> Head:
    probs = probs or {"bare": 0.9, "hard_hat": 0.1}
    label = max(probs, key=probs.get)
    return Head(box, np.zeros((4, 4), bool), 0.9, label, probs[label], probs)


def _write_video(path: Path, frames: list[np.ndarray], fps: float = 10.0, fourcc: str = "MJPG") -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), fps, frames[0].shape[1::-1])
    for frame in frames:
        writer.write(frame)
    writer.release()
    return path


# ----------------------------------------------------------------------------- tracker


def test_two_crossing_heads_keep_their_ids() -> None:
    tracker = ByteTracker(fps=10.0)
    assert isinstance(tracker, Tracker)
    seen = []
    for k in range(16):  # A moves right, B left; they overlap around frame 8
        a = [20 + 10 * k, 40, 50 + 10 * k, 75]
        b = [200 - 10 * k, 50, 230 - 10 * k, 85]
        seen.append(tracker.update(np.array([a, b], float), np.array([0.9, 0.8]), k / 10.0))
    assert list(seen[0]) == [-1, -1]  # a track gets its id once matched a second time
    ids = np.array(seen[1:])
    assert ids.min() >= 0 and ids[0, 0] != ids[0, 1]
    assert (ids[:, 0] == ids[0, 0]).all() and (ids[:, 1] == ids[0, 1]).all()


def test_tracker_rejects_mismatched_inputs() -> None:
    with pytest.raises(ValueError, match="one score per box"):
        ByteTracker().update(np.zeros((2, 4)), np.zeros(3), 0.0)


def test_extrapolate_box_constant_velocity() -> None:
    assert extrapolate_box((0, 0, 10, 10), 0.0, (4, 2, 14, 12), 1.0, 2.0) == pytest.approx((8, 4, 18, 14))
    assert extrapolate_box(None, None, (4, 2, 14, 12), 1.0, 5.0) == (4, 2, 14, 12)
    # Shrinking through zero size keeps the last box rather than inventing an inverted one.
    assert extrapolate_box((0, 0, 20, 20), 0.0, (5, 5, 15, 15), 1.0, 3.0) == (5, 5, 15, 15)


# ----------------------------------------------------------------------------- voting, events


def test_vote_needs_min_frames_and_averages() -> None:
    obs = [(0, {"label": {"bare": 0.9, "hard_hat": 0.1}}), (1, {"label": {"bare": 0.2, "hard_hat": 0.8}})]
    assert vote(obs, min_frames=3) == {}
    obs.append((2, {"label": {"bare": 0.7, "hard_hat": 0.3}}))
    decision = vote(obs, min_frames=3)["label"]
    assert decision.value == "bare" and decision.prob == pytest.approx(0.6)
    assert decision.frames == (0, 1, 2)
    # Several attributes are voted independently.
    multi = vote([(5, {"label": {"a": 1.0}, "colour": {"red": 0.3, "blue": 0.7}})], min_frames=1)
    assert multi["colour"].value == "blue" and multi["label"].value == "a"
    with pytest.raises(ValueError, match="min_frames"):
        vote(obs, min_frames=0)


def test_vote_leaves_out_frames_that_could_not_judge() -> None:
    # Turned away on frames 0, 1 and 3, masked when the face shows (2, 4): decided with_mask from
    # those two frames, though not_visible has the higher mean over all five.
    away = {"with_mask": 0.05, "without_mask": 0.15, "not_visible": 0.8}
    seen = {"with_mask": 0.9, "without_mask": 0.05, "not_visible": 0.05}
    obs = [(k, {"face_mask": seen if k in (2, 4) else away, "headwear": {"helmet": 0.9, "none": 0.1}})
           for k in range(5)]
    decision = vote(obs, min_frames=3)
    assert decision["face_mask"].value == "with_mask" and decision["face_mask"].frames == (2, 4)
    assert decision["face_mask"].prob == pytest.approx(0.9)
    assert decision["headwear"].frames == (0, 1, 2, 3, 4) and list(decision) == ["face_mask", "headwear"]
    # Never seen: not_visible it is, over every frame.
    never = vote([(k, {"face_mask": away}) for k in range(3)], min_frames=3)["face_mask"]
    assert never.value == "not_visible" and never.frames == (0, 1, 2) and never.prob == pytest.approx(0.8)


def _frame(k: int, heads: list[TrackedHead]) -> FrameResult:
    return FrameResult(k, k / 10.0, tuple(heads), (100, 100))


def test_events_from_a_scripted_track() -> None:
    log = EventLog(min_frames=2, leave_after_s=0.25)
    bare, hat = {"bare": 0.9, "hard_hat": 0.1}, {"bare": 0.0, "hard_hat": 1.0}
    events = []
    for k in range(10):  # track 7: bare on frames 2-4, hard hat on 5-9; gone after 9
        if k >= 2:
            events += log.update(_frame(k, [TrackedHead(7, (0, 0, 5, 5), _head(probs=bare if k < 5 else hat))]))
        else:
            events += log.update(_frame(k, []))
    for k in range(10, 14):
        events += log.update(_frame(k, []))
    events += log.finish()
    kinds = [(e.kind, e.frame) for e in events]
    # appear dated at the first frame; the mean flips on frame 7 (bare 2.7/6 vs hard hat 3.3/6).
    assert kinds == [("appear", 2), ("change", 7), ("leave", 9)]
    appear, change, leave = events
    assert appear.values == {"label": "bare"} and appear.decided_frame == 3 and appear.time_s == pytest.approx(0.2)
    assert change.previous == "bare" and change.values == {"label": "hard_hat"}
    assert leave.time_s == pytest.approx(0.9)
    summary = log.summary()
    assert summary["people_per_value"] == {"label": {"hard_hat": 1}}
    assert summary["tracks"][0]["attributes"]["label"]["frames"] == list(range(2, 10))
    assert json.loads(json.dumps(change.to_json("cam"))) == change.to_json("cam")


def test_short_and_carried_tracks_decide_nothing() -> None:
    log = EventLog(min_frames=3)
    log.update(_frame(0, [TrackedHead(1, (0, 0, 5, 5), _head())]))
    log.update(_frame(1, [TrackedHead(1, (0, 0, 5, 5), _head(), carried=True), TrackedHead(None, (0, 0, 5, 5), _head())]))
    assert log.finish() == [] and log.summary()["people"] == 0 and log.undecided == 1


# ----------------------------------------------------------------------------- video sources


def test_damaged_video_ends_cleanly_with_what_was_read(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    good = _write_video(tmp_path / "good.avi", [rng.integers(0, 255, (48, 64, 3), np.uint8) for _ in range(20)])
    data = good.read_bytes()
    damaged = tmp_path / "damaged.avi"
    damaged.write_bytes(data[: len(data) // 2])
    reader = VideoReader(damaged)
    frames = list(reader)
    assert 0 < len(frames) < 20 and [f.index for f in frames] == list(range(len(frames)))
    assert "read" in reader.problem() and "of 20 frames" in reader.problem()
    limited = VideoReader(good, max_frames=5)
    assert len(list(limited)) == 5 and limited.problem() is None  # a limit is not damage
    assert len(list(VideoReader(good, duration=0.5))) == 5
    with pytest.raises(FileNotFoundError, match="does not exist"):
        VideoReader(tmp_path / "missing.mp4")
    (tmp_path / "junk.mp4").write_bytes(b"not a video")
    with pytest.raises(ValueError, match="cannot open"):
        VideoReader(tmp_path / "junk.mp4")


class _StoppingStream:
    """A cv2.VideoCapture stand-in: a stream that delivers 4 frames, then drops or errors."""

    def __init__(self, source, raise_error: bool = False) -> None:
        self.left, self.raise_error = 4, raise_error

    def isOpened(self) -> bool:  # noqa: N802  (OpenCV's name)
        return True

    def get(self, prop: int) -> float:
        return 0.0  # streams report no fps and no frame count

    def read(self):
        if self.left == 0:
            if self.raise_error:
                raise cv2.error("connection reset")
            return False, None
        self.left -= 1
        return True, np.full((32, 32, 3), 100, np.uint8)

    def release(self) -> None:
        pass


@pytest.mark.parametrize("raise_error", [False, True])
def test_stream_that_stops_ends_cleanly(monkeypatch: pytest.MonkeyPatch, raise_error: bool) -> None:
    import headseg.video

    monkeypatch.setattr(headseg.video.cv2, "VideoCapture", lambda s: _StoppingStream(s, raise_error))
    reader = VideoReader("rtsp://camera.invalid/stream")
    frames = list(reader)
    assert len(frames) == 4 and reader.fps == 30.0 and reader.problem() is None
    assert frames[-1].time_s == pytest.approx(3 / 30.0)


# ----------------------------------------------------------------------------- clips


@pytest.mark.parametrize("motion", ["pan", "zoom", "shake"])
def test_clip_maker_moves_boxes_with_the_image(motion: str) -> None:
    image = np.zeros((120, 160, 3), np.uint8)
    box = np.array([[70.0, 40.0, 100.0, 80.0]])
    image[40:80, 70:100] = 255  # pixels [70, 100) x [40, 80): the box's area exactly
    out_size = (90, 120)
    for matrix in camera_path(motion, 6, image.shape[:2], out_size, seed=3):
        frame = render_view(image, matrix, out_size)
        ys, xs = np.nonzero(frame[:, :, 0] > 127)
        found = np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], float)
        moved, visible = transform_boxes(box, matrix, out_size)
        assert visible[0] == pytest.approx(1.0)
        assert np.abs(found - moved[0]).max() <= 2.0, (found, moved[0])


def test_clip_hides_the_largest_head_for_a_moment() -> None:
    image = np.full((100, 100, 3), 50, np.uint8)
    boxes = np.array([[10.0, 10, 20, 20], [50, 50, 80, 80]])
    frames = list(make_clip(image, boxes, "zoom", 10, occlude=True))
    hidden = [k for k, f in enumerate(frames) if f.hidden]
    assert hidden == [4, 5, 6]
    for k in hidden:
        assert 1 not in frames[k].ids and frames[k].hidden == (1,)
        x0, y0, x1, y1 = transform_boxes(boxes[1:], camera_path("zoom", 10, (100, 100), (100, 100))[k], (100, 100))[0][0]
        assert (frames[k].image[int(y0) + 1:int(y1) - 1, int(x0) + 1:int(x1) - 1] == 128).all()
    assert list(frames[0].ids) == [0, 1]


def test_clip_ignores_heads_partly_in_frame() -> None:
    image = np.full((100, 100, 3), 50, np.uint8)
    boxes = np.array([[40.0, 40, 60, 60], [2, 10, 16, 24]])  # the second leaves the panning 70 % window
    frames = list(make_clip(image, boxes, "pan", 10, occlude=False))
    assert list(frames[0].ids) == [0, 1] and len(frames[0].ignore_xyxy) == 0
    gone = [f for f in frames if 1 not in f.ids]
    assert gone and all(len(f.ignore_xyxy) <= 1 for f in gone)
    assert any(len(f.ignore_xyxy) == 1 for f in gone)  # partly in frame: ignored, not absent


def test_predictions_on_ignored_heads_count_nowhere() -> None:
    person, partial, elsewhere = (10.0, 10, 30, 30), (80.0, 10, 100, 30), (40.0, 60, 60, 80)
    frames = [ClipFrame(np.zeros((1, 1, 3), np.uint8), np.array([person]), np.array([0]), (),
                        np.array([partial]))] * 3
    results = [FrameResult(k, k / 10, (TrackedHead(1, person, _head(person)), TrackedHead(2, partial, _head(partial)),
                                       TrackedHead(3, elsewhere, _head(elsewhere))), (100, 100), True)
               for k in range(3)]
    log = EventLog(min_frames=2)
    for result in results:
        log.update(result)
    log.finish()
    seq = score_clip(frames, [("label", "bare")], results, log, AttireTally())
    metrics = tracking_metrics({"clip": seq})
    assert seq.ignored == 3 and metrics["ignored"] == 3
    assert metrics["TP"] == 3 and metrics["FP"] == 3 and metrics["IDSW"] == 0  # the stray head stays an error


def test_tracker_thresholds_from_the_command_line() -> None:
    from tools._cli import add_tracker_args, tracker_config

    parser = argparse.ArgumentParser()
    add_tracker_args(parser)
    assert tracker_config(parser.parse_args([]), 0.6).high_thresh == 0.6  # the pipeline's threshold
    config = tracker_config(parser.parse_args(["--score-thresh", "0.3", "--track-thresh", "0.7"]), 0.3)
    assert config.high_thresh == config.activation_thresh == 0.7  # 0.3-0.7: ByteTrack's second round
    with pytest.raises(ValueError, match="below the pipeline's score threshold"):
        tracker_config(parser.parse_args(["--track-thresh", "0.2"]), 0.5)


def test_tracking_metrics_count_an_id_switch() -> None:
    box = np.array([[0.0, 0, 10, 10]])
    seq = SequenceTracks([np.array([1])] * 4, [box] * 4, [np.array([5]), np.array([5]), np.array([6]), np.array([6])],
                         [box] * 4)
    metrics = tracking_metrics({"clip": seq})
    assert metrics["IDSW"] == 1 and metrics["TP"] == 4 and metrics["FP"] == 0
    assert metrics["MOTA"] == pytest.approx(0.75) and metrics["IDF1"] == pytest.approx(0.5)


# ----------------------------------------------------------------------------- pipeline and tools


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    out = tmp_path_factory.mktemp("ckpt")
    torch.manual_seed(0)
    # At most 8 heads a frame: an untrained model at score_thresh 0 would return 100.
    seg_cfg = load_config(SegConfig, None, [s for s in TINY_SEG if s.startswith("model.")]
                          + ["model.box_detections_per_img=8"])
    cls_cfg = load_config(ClsConfig, None, ["model.weights=none", "crop.size=32"])
    save_checkpoint(out / "seg.pt", segmenter_checkpoint(build_segmenter(seg_cfg.model, 1), seg_cfg, ["head"]))
    save_checkpoint(out / "cls.pt", classifier_checkpoint(build_classifier(cls_cfg.model, 2), cls_cfg, CLASSES))
    return out / "seg.pt", out / "cls.pt"


@pytest.fixture(scope="module")
def still_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Six identical 96x128 frames: an untrained model finds the same boxes in each."""
    rng = np.random.default_rng(1)
    image = rng.integers(0, 255, (96, 128, 3), dtype=np.uint8)
    cv2.ellipse(image, (64, 48), (15, 20), 0, 0, 360, (130, 160, 200), -1)
    return _write_video(tmp_path_factory.mktemp("video") / "still.avi", [image] * 6, fourcc="FFV1")


@pytest.fixture(scope="module")
def pipe(checkpoints: tuple[Path, Path]) -> HeadwearPipeline:
    return HeadwearPipeline.from_checkpoint(*checkpoints, device="cpu", score_thresh=0.0, batch_size=1)


def test_pipeline_track_yields_ids_and_carries_boxes(pipe: HeadwearPipeline, still_clip: Path) -> None:
    results = list(pipe.track(still_clip, stride=2))
    assert [r.frame for r in results] == list(range(6)) and [r.observed for r in results] == [True, False] * 3
    assert results[2].heads and all(h.track_id is not None for h in results[2].heads)
    carried = results[3].heads
    assert carried and all(h.carried for h in carried)
    assert {h.track_id for h in carried} == {h.track_id for h in results[2].heads}
    # Still frames: no velocity, so carried boxes stay where they were seen.
    assert np.allclose(results[3].boxes[np.argsort(results[3].track_ids)],
                       results[2].boxes[np.argsort(results[2].track_ids)], atol=1e-3)
    assert results[3].draw(np.zeros((96, 128, 3), np.uint8)).shape == (96, 128, 3)


def test_track_tool_writes_ids_and_events(checkpoints, still_clip: Path, tmp_path: Path) -> None:
    seg, cls = checkpoints
    args = track.parse_args([str(still_clip.parent), "--out", str(tmp_path / "out"), "--seg", str(seg),
                             "--cls", str(cls), "--score-thresh", "0", "--min-frames", "2", "--device", "cpu"])
    assert track.main(args) == 0
    frames = [json.loads(line) for line in (tmp_path / "out" / "predictions.jsonl").read_text().splitlines()]
    assert [f["frame"] for f in frames] == list(range(6))
    ids = {h["track_id"] for f in frames[1:] for h in f["heads"]}
    assert None not in ids and len(ids) == len(frames[1]["heads"]) > 0
    events = [json.loads(line) for line in (tmp_path / "out" / "events.jsonl").read_text().splitlines()]
    assert {e["event"] for e in events} == {"appear", "leave"}
    assert {e["track_id"] for e in events} == ids
    appear = next(e for e in events if e["event"] == "appear")
    assert appear["frame"] == 1 and appear["time_s"] == pytest.approx(0.1) and appear["label"] in CLASSES
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())["sources"][0]
    assert summary["people"] == len(ids) == sum(summary["people_per_value"]["label"].values())
    assert (tmp_path / "out" / "still.mp4").stat().st_size > 0


def test_track_tool_reports_a_missing_source(checkpoints, tmp_path: Path) -> None:
    seg, cls = checkpoints
    args = track.parse_args([str(tmp_path / "none.mp4"), "--out", str(tmp_path), "--seg", str(seg), "--cls", str(cls)])
    assert track.main(args) == 1
    assert "does not exist" in json.loads((tmp_path / "summary.json").read_text())["problems"][0]


def test_eval_video_smoke(checkpoints, synthetic_data: dict, tmp_path: Path,
                          capsys: pytest.CaptureFixture[str]) -> None:
    seg, cls = checkpoints
    argv = [str(synthetic_data["test"]), "--seg", str(seg), "--cls", str(cls),
            "--photos", "1", "--min-heads", "1", "--motions", "pan", "--frames", "8",
            "--score-thresh", "0.0", "--out", str(tmp_path / "eval.json"), "--device", "cpu"]
    report = eval_video.main(eval_video.parse_args(argv))
    assert "clips: 100%" in capsys.readouterr().err  # the progress bar over clips, by default
    assert report["clips"] == 1 and report["frames"] == 8
    quiet = eval_video.main(eval_video.parse_args([*argv, "--no-progress"]))
    assert "clips:" not in capsys.readouterr().err
    assert quiet["tracking"] == report["tracking"]
    assert report["tracking"]["MOTA"] <= 1.0 and 0.0 <= report["tracking"]["IDF1"] <= 1.0
    assert report["attire"]["people"] >= 1
    assert json.loads((tmp_path / "eval.json").read_text())["tracking"] == report["tracking"]


def test_track_frames_rejects_bad_stride(pipe: HeadwearPipeline) -> None:
    frames = [Frame(0, 0.0, np.zeros((8, 8, 3), np.uint8))]
    with pytest.raises(ValueError, match="stride=0"):
        list(track_frames(pipe, frames, ByteTracker(), stride=0))
