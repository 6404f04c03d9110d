"""Video in: frames from files, cameras and streams, tracked heads out, one frame at a time.

:class:`VideoReader` reads a file, a camera index or a stream URL through OpenCV and stops
cleanly at the end, at ``max_frames`` / ``duration``, or at the first frame that cannot be
decoded (a damaged file or a dropped stream): what was read stays valid. :func:`track_frames`
runs the pipeline on every ``stride``-th frame, links heads with a :class:`Tracker` and carries
boxes in between. Nothing holds more than one frame, so memory stays flat on long videos.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

import cv2
import numpy as np

from headseg.events import EventLog
from headseg.tracking import Box, ByteTrackConfig, ByteTracker, FrameResult, TrackedHead, Tracker, extrapolate_box

if TYPE_CHECKING:
    from headseg.pipeline import Head, HeadwearPipeline

log = logging.getLogger(__name__)

DEFAULT_FPS = 30.0  # assumed when a stream or file does not say (OpenCV reports 0)
KEEP_HISTORY_S = 10.0  # a track unseen this long is forgotten by the carry-forward bookkeeping


@dataclass(frozen=True, eq=False)
class Frame:
    """One decoded frame.

    Attributes:
        index: 0-based frame number in the source.
        time_s: ``index / fps`` seconds (container timestamps are unreliable across codecs).
        image: ``(H, W, 3)`` uint8 **BGR**, as OpenCV decodes it.
    """

    index: int
    time_s: float
    image: np.ndarray


def parse_source(text: str | int | Path) -> str | int:
    """A camera index for ``"0"``, ``"1"``...; anything else (file path, URL) as a string."""
    if isinstance(text, int):
        return text
    text = str(text)
    return int(text) if text.isdigit() else text


class VideoReader:
    """Frames of a video file, camera or stream, read lazily.

    Args:
        source: A file path, a camera index (``0`` or ``"0"``) or a stream URL (``rtsp://``...).
        max_frames: Stop after this many frames (None: no limit).
        duration: Stop after this many seconds of video (None: no limit).

    Attributes:
        fps: Frames per second (``DEFAULT_FPS`` when the source does not say).
        expected_frames: The container's frame count, or 0 for cameras and streams.
        frames_read: Frames yielded so far.
        stopped_early: True when a frame could not be decoded before the expected end.

    Raises:
        FileNotFoundError: A path that does not exist.
        ValueError: A source OpenCV cannot open, or a non-positive limit.
    """

    def __init__(self, source: str | int | Path, max_frames: int | None = None,
                 duration: float | None = None) -> None:
        self.source = parse_source(source)
        if (max_frames is not None and max_frames < 1) or (duration is not None and duration <= 0):
            raise ValueError(f"got max_frames={max_frames}, duration={duration}; expected positive "
                             "limits (or leave them out for the whole video)")
        is_file = isinstance(self.source, str) and "://" not in self.source
        if is_file and not Path(self.source).exists():
            raise FileNotFoundError(f"video {self.source} does not exist; give a video file, a "
                                    "folder of videos, a camera index (0) or a stream URL")
        self._cap = cv2.VideoCapture(self.source)
        if not self._cap.isOpened():
            self._cap.release()
            raise ValueError(f"OpenCV cannot open {self.source!r} as a video; expected a video file "
                             "(mp4, avi...), a camera index or a stream URL OpenCV's FFmpeg can read")
        fps = self._cap.get(cv2.CAP_PROP_FPS)
        self.fps = fps if math.isfinite(fps) and 0 < fps <= 1000 else DEFAULT_FPS
        self.expected_frames = max(0, int(self._cap.get(cv2.CAP_PROP_FRAME_COUNT))) if is_file else 0
        limit = math.inf if max_frames is None else max_frames
        if duration is not None:
            limit = min(limit, math.ceil(duration * self.fps))
        self.limit = limit
        self.frames_read = 0
        self.stopped_early = False

    def __iter__(self) -> Iterator[Frame]:
        try:
            while self.frames_read < self.limit:
                try:
                    ok, image = self._cap.read()
                except cv2.error as error:  # some backends raise on corrupt packets
                    log.warning("%s: decoding stopped at frame %d (%s)", self.source, self.frames_read, error)
                    ok, image = False, None
                if not ok or image is None:
                    expected = min(self.expected_frames, self.limit)
                    self.stopped_early = bool(expected) and self.frames_read < expected
                    break
                yield Frame(self.frames_read, self.frames_read / self.fps, image)
                self.frames_read += 1
        finally:
            self._cap.release()

    def problem(self) -> str | None:
        """A sentence when the video ended before its expected end, else None."""
        if self.frames_read == 0:
            return f"{self.source}: no readable frame"
        if self.stopped_early:
            return (f"{self.source}: read {self.frames_read} of {self.expected_frames} frames; the rest "
                    "are damaged or missing (results cover the frames read)")
        return None


def track_frames(pipe: "HeadwearPipeline", frames: Iterable[Frame], tracker: Tracker, stride: int = 1,
                 source: str | None = None, color_order: str = "BGR") -> Iterator[FrameResult]:
    """Heads with track ids, frame by frame.

    Args:
        pipe: The head-attire pipeline.
        frames: Decoded frames in order (a :class:`VideoReader` or any iterable of :class:`Frame`).
        tracker: Links detections across frames; it is reset first.
        stride: Run the pipeline on every ``stride``-th frame; on the others the heads of the
            last observed frame are carried forward at constant velocity (``carried=True``).
        source: Recorded in each result.
        color_order: Of the frames' images: ``BGR`` (OpenCV) or ``RGB``.

    Yields:
        One :class:`FrameResult` per frame, as soon as it is ready.
    """
    if stride < 1:
        raise ValueError(f"stride={stride}; expected 1 (every frame) or more")
    tracker.reset()
    # track id -> (earlier box, its time, last box, its time, last Head): enough to carry a box.
    history: dict[int, tuple[Box | None, float | None, Box, float, Head]] = {}
    seen_last: list[int] = []
    for k, frame in enumerate(frames):
        size = frame.image.shape[:2]
        if k % stride:
            heads = []
            for tid in seen_last:
                earlier, earlier_s, last, last_s, head = history[tid]
                box = extrapolate_box(earlier, earlier_s, last, last_s, frame.time_s)
                heads.append(TrackedHead(tid, box, head, carried=True))
            yield FrameResult(frame.index, frame.time_s, tuple(heads), size, False, source)
            continue
        result = pipe(frame.image, color_order=color_order)
        boxes = np.asarray([h.box_xyxy for h in result.heads], np.float32).reshape(-1, 4)
        scores = np.asarray([h.score for h in result.heads], np.float32)
        ids = tracker.update(boxes, scores, frame.time_s)
        heads, seen_last = [], []
        for head, raw in zip(result.heads, ids):
            tid = int(raw) if raw >= 0 else None
            if tid is not None:
                previous = history.get(tid)
                earlier, earlier_s = (previous[2], previous[3]) if previous else (None, None)
                history[tid] = (earlier, earlier_s, head.box_xyxy, frame.time_s, head)
                seen_last.append(tid)
            heads.append(TrackedHead(tid, head.box_xyxy, head))
        for tid in [t for t, v in history.items() if frame.time_s - v[3] > KEEP_HISTORY_S]:
            del history[tid]
        yield FrameResult(frame.index, frame.time_s, tuple(heads), size, True, source)


@dataclass(frozen=True)
class TrackOptions:
    """How a video is read, tracked and turned into events (``tools/track.py`` fills it)."""

    stride: int = 1  # pipeline on every frame; 2-5 trade box accuracy for 2-5x speed
    max_frames: int | None = None  # stop after this many frames (None: to the end)
    duration: float | None = None  # stop after this many seconds of video (None: to the end)
    min_frames: int = 3  # observed frames before a person's attire is decided (flicker guard)
    tracker: ByteTrackConfig = field(default_factory=ByteTrackConfig)


def run_video(pipe: "HeadwearPipeline", source: str | int | Path, predictions: TextIO, events: TextIO,
              options: TrackOptions = TrackOptions(), video_out: Path | None = None) -> dict[str, Any]:
    """Track one video: one JSON line per frame to ``predictions``, one per event to ``events``.

    Args:
        pipe: The head-attire pipeline.
        source: A video file, camera index or stream URL.
        predictions, events: Open text files; records carry ``source``.
        options: Stride, limits, attire decision and tracker settings.
        video_out: Where to write the annotated MP4 (None: no video).

    Returns:
        The source's summary: frames read, fps, distinct people per attribute value, each
        person's decision with its frames, and ``problem`` when the video ended early.

    Raises:
        FileNotFoundError, ValueError: The source cannot be opened or has no readable frame.
    """
    reader = VideoReader(source, options.max_frames, options.duration)
    name = str(reader.source)
    tracker = ByteTracker(options.tracker, fps=reader.fps)
    log_ = EventLog(options.min_frames, leave_after_s=max(options.tracker.lost_s, 1e-6))
    current: list[Frame] = []  # the frame track_frames is on: it is lazy, one frame at a time

    def remember(frames: Iterable[Frame]) -> Iterator[Frame]:
        for frame in frames:
            current[:] = [frame]
            yield frame

    writer = None
    try:
        for result in track_frames(pipe, remember(reader), tracker, options.stride, name):
            predictions.write(json.dumps(result.to_json()) + "\n")
            for event in log_.update(result):
                events.write(json.dumps(event.to_json(name)) + "\n")
            if video_out is not None:
                image = current[0].image
                if writer is None:
                    writer = cv2.VideoWriter(str(video_out), cv2.VideoWriter_fourcc(*"mp4v"), reader.fps,
                                             (image.shape[1], image.shape[0]))
                writer.write(cv2.cvtColor(result.draw(image[:, :, ::-1]), cv2.COLOR_RGB2BGR))
        for event in log_.finish():
            events.write(json.dumps(event.to_json(name)) + "\n")
    finally:
        if writer is not None:
            writer.release()
    problem = reader.problem()
    if reader.frames_read == 0:
        raise ValueError(f"{problem}; expected a video with at least one decodable frame")
    return {"source": name, "frames": reader.frames_read, "fps": reader.fps, "stride": options.stride,
            "problem": problem, **log_.summary()}
