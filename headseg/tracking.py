"""Heads linked across video frames: a tracker interface, ByteTrack behind it, tracked results.

Any object with ``update(boxes_xyxy, scores, time_s) -> ids`` and ``reset()`` is a
:class:`Tracker`; :class:`ByteTracker` wraps ByteTrack from Roboflow's ``trackers`` library (the
successor of ``supervision``'s ``sv.ByteTrack``). A frame's heads, each with its track id, form a
:class:`FrameResult`; on frames the pipeline skips (``stride > 1``) the boxes of the heads seen
last are carried forward by :func:`extrapolate_box` and marked ``carried``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np

from headseg.pipeline import DrawnHead, Head, draw_heads, head_lines, text_scale

Box = tuple[float, float, float, float]


@runtime_checkable
class Tracker(Protocol):
    """What the video loop needs from a multi-object tracker."""

    def update(self, boxes_xyxy: np.ndarray, scores: np.ndarray, time_s: float) -> np.ndarray:
        """Associate one frame's detections with the tracks so far.

        Args:
            boxes_xyxy: ``(N, 4)`` float head boxes in pixels.
            scores: ``(N,)`` detection confidences in ``[0, 1]``.
            time_s: The frame's time in seconds, increasing from call to call.

        Returns:
            ``(N,)`` int track ids in input order; ``-1`` for a detection that has no
            confirmed track (yet).
        """
        ...

    def reset(self) -> None:
        """Forget every track (a new video)."""
        ...


@dataclass(frozen=True)
class ByteTrackConfig:
    """ByteTrack settings; defaults suit heads filmed at a few to 30 frames per second."""

    lost_s: float = 1.0  # a track unseen this long ends: covers a head hidden for a moment
    activation_thresh: float = 0.5  # new tracks only from detections this sure (pipeline default)
    high_thresh: float = 0.5  # above: first association round; below: ByteTrack's second round
    match_iou: float = 0.1  # heads are small: a few pixels of motion already cut IoU a lot
    confirm_frames: int = 1  # matched frames after the first before an id is given (1: second)


class ByteTracker:
    """ByteTrack (``trackers.ByteTrackTracker``) behind the :class:`Tracker` interface.

    Args:
        config: Association and track-life settings.
        fps: The video's nominal frame rate; scales the Kalman step between timestamps.
    """

    def __init__(self, config: ByteTrackConfig = ByteTrackConfig(), fps: float = 30.0) -> None:
        from trackers import ByteTrackTracker  # noqa: PLC0415  (imports supervision: slow)

        if fps <= 0 or config.lost_s < 0:
            raise ValueError(f"got fps={fps}, lost_s={config.lost_s}; expected fps > 0 and lost_s >= 0")
        self.config, self.fps = config, fps
        self._tracker = ByteTrackTracker(
            lost_track_buffer=round(config.lost_s * 30.0),  # the library counts 30 fps frames
            frame_rate=fps, track_activation_threshold=config.activation_thresh,
            minimum_consecutive_frames=config.confirm_frames, minimum_iou_threshold=config.match_iou,
            high_conf_det_threshold=config.high_thresh)

    def update(self, boxes_xyxy: np.ndarray, scores: np.ndarray, time_s: float) -> np.ndarray:
        import supervision as sv  # noqa: PLC0415

        boxes = np.asarray(boxes_xyxy, np.float32).reshape(-1, 4)
        scores = np.asarray(scores, np.float32).reshape(-1)
        if len(boxes) != len(scores):
            raise ValueError(f"got {len(boxes)} boxes and {len(scores)} scores; expected one score per box")
        # The library returns detections in its own order: carry each one's input index along.
        detections = sv.Detections(xyxy=boxes, confidence=scores,
                                   data={"index": np.arange(len(boxes))})
        out = self._tracker.update(detections, timestamp=float(time_s))
        ids = np.full(len(boxes), -1, dtype=np.int64)
        if len(out):
            ids[np.asarray(out.data["index"], dtype=np.int64)] = np.asarray(out.tracker_id, dtype=np.int64)
        return ids

    def reset(self) -> None:
        self._tracker.reset()


def extrapolate_box(earlier: Box | None, earlier_s: float | None, last: Box, last_s: float,
                    time_s: float) -> Box:
    """A box carried to ``time_s`` at the constant velocity of its last two observations.

    Args:
        earlier: The observation before the last (xyxy pixels), or None: the box then stays put.
        earlier_s, last_s: Their times in seconds.
        last: The last observed box, xyxy pixels.
        time_s: The time to carry it to (``>= last_s``).

    Returns:
        The xyxy box at ``time_s``; its size changes at the observed rate too (zoom).
    """
    if earlier is None or earlier_s is None or last_s <= earlier_s:
        return tuple(float(v) for v in last)  # type: ignore[return-value]
    a, b = np.asarray(earlier, np.float64), np.asarray(last, np.float64)
    moved = b + (b - a) * ((time_s - last_s) / (last_s - earlier_s))
    if moved[2] <= moved[0] or moved[3] <= moved[1]:  # shrunk through zero: keep the last box
        return tuple(float(v) for v in b)  # type: ignore[return-value]
    return tuple(float(v) for v in moved)  # type: ignore[return-value]


@dataclass(frozen=True, eq=False)
class TrackedHead:
    """One head in one video frame with its track.

    Attributes:
        track_id: The person's id across frames; None while the tracker has not confirmed it.
        box_xyxy: ``(x0, y0, x1, y1)`` pixels in this frame.
        head: The pipeline's result for this head: on this frame, or on the last frame it
            was seen when ``carried``.
        carried: True when the pipeline did not run on this frame (``stride``) and the box
            was carried from earlier frames; its mask and label are then from ``head``'s frame.
    """

    track_id: int | None
    box_xyxy: Box
    head: Head
    carried: bool = False

    def to_json(self) -> dict[str, Any]:
        """JSON-ready dict: the head's record (mask only when observed) plus id and carried."""
        if self.carried:
            record = {**self.head.to_json(mask=False), "box_xyxy": [round(v, 2) for v in self.box_xyxy]}
        else:
            record = self.head.to_json()
        return {"track_id": self.track_id, "carried": self.carried, **record}


@dataclass(frozen=True, eq=False)
class FrameResult:
    """Every head of one video frame, with track ids.

    Attributes:
        frame: 0-based frame number in the source.
        time_s: The frame's time in seconds from the start of the source.
        heads: The heads, observed ones first (most confident first), then carried ones.
        image_size: ``(height, width)`` of the frame.
        observed: True when the pipeline ran on this frame; False when every box is carried.
        source: The video path, camera index or URL, as given.
    """

    frame: int
    time_s: float
    heads: tuple[TrackedHead, ...]
    image_size: tuple[int, int]
    observed: bool = True
    source: str | None = None

    def __len__(self) -> int:
        return len(self.heads)

    @property
    def track_ids(self) -> list[int | None]:
        return [h.track_id for h in self.heads]

    @property
    def boxes(self) -> np.ndarray:
        """``(N, 4)`` float32 xyxy boxes."""
        return np.asarray([h.box_xyxy for h in self.heads], np.float32).reshape(-1, 4)

    def to_json(self) -> dict[str, Any]:
        return {"source": self.source, "frame": self.frame, "time_s": round(self.time_s, 3),
                "observed": self.observed, "height": self.image_size[0], "width": self.image_size[1],
                "heads": [h.to_json() for h in self.heads]}

    def draw(self, image: np.ndarray, alpha: float = 0.45) -> np.ndarray:
        """The frame with masks (observed heads), boxes and ``#id label prob`` drawn on it.

        Carried boxes are drawn thin and without a mask.

        Args:
            image: ``(H, W, 3)`` uint8 RGB frame.
            alpha: Mask opacity.

        Returns:
            A new ``(H, W, 3)`` uint8 RGB array.
        """
        if image.shape[:2] != self.image_size:
            raise ValueError(f"draw() got a {image.shape[1]}x{image.shape[0]} frame; this result is "
                             f"for {self.image_size[1]}x{self.image_size[0]}")
        out = image.copy()
        bold = text_scale(self.image_size) + 1
        draw_heads(out, [DrawnHead(t.box_xyxy, head_lines(t.head, f"#{t.track_id if t.track_id is not None else '?'}"),
                                   None if t.carried else t.head.mask, 1 if t.carried else bold)
                         for t in self.heads], alpha=alpha)
        return out
