"""Synthetic video clips from still photos: camera motion over a photo, boxes moved with it.

A clip is a sequence of affine views of one photo (:func:`camera_path`: ``pan``, ``zoom`` or
``shake``), each rendered with :func:`render_view`; the photo's ground-truth boxes go through the
same matrices (:func:`transform_boxes`). :func:`make_clip` adds a moment where one head is
hidden behind a grey patch (its ground truth is absent then), to test that a track survives it.
Everything here is a pure function of arrays; no model is involved.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import cv2
import numpy as np

MOTIONS = ("pan", "zoom", "shake")


def view_matrix(x0: float, y0: float, width: float, height: float, out_size: tuple[int, int],
                angle_deg: float = 0.0) -> np.ndarray:
    """The affine map from photo pixels to frame pixels for a camera looking at a window.

    Args:
        x0, y0, width, height: The photo window shown, in photo pixels (top-left, size).
        out_size: ``(height, width)`` of the frame.
        angle_deg: Camera roll about the window centre, in degrees.

    Returns:
        ``(2, 3)`` float64 matrix ``M``: ``frame_xy = M @ [x, y, 1]``.
    """
    out_h, out_w = out_size
    sx, sy = out_w / width, out_h / height
    scale = np.array([[sx, 0.0, -x0 * sx], [0.0, sy, -y0 * sy], [0.0, 0.0, 1.0]])
    rot = cv2.getRotationMatrix2D((out_w / 2.0, out_h / 2.0), angle_deg, 1.0)
    return (np.vstack([rot, [0.0, 0.0, 1.0]]) @ scale)[:2]


def camera_path(motion: str, num_frames: int, image_size: tuple[int, int], out_size: tuple[int, int],
                seed: int = 0) -> np.ndarray:
    """One affine view per frame of a camera moving over a photo.

    Args:
        motion: ``pan`` (a 70 % window sliding left to right, a little down), ``zoom`` (the
            whole photo narrowing to the central 60 %) or ``shake`` (an 85 % window jittering
            by up to 3 % and 2 degrees per frame, as a hand-held camera).
        num_frames: Frames in the clip (>= 1).
        image_size: ``(height, width)`` of the photo.
        out_size: ``(height, width)`` of the frames.
        seed: For ``shake``'s jitter.

    Returns:
        ``(num_frames, 2, 3)`` float64 matrices from photo to frame pixels.
    """
    if motion not in MOTIONS:
        raise ValueError(f"motion={motion!r}; expected one of {MOTIONS}")
    if num_frames < 1:
        raise ValueError(f"num_frames={num_frames}; expected 1 or more")
    h, w = image_size
    t = np.linspace(0.0, 1.0, num_frames)
    rng = np.random.default_rng(seed)
    views = []
    for k, tk in enumerate(t):
        angle = 0.0
        if motion == "pan":
            s = 0.7
            x0, y0 = (1 - s) * w * tk, (1 - s) * h * (0.3 + 0.4 * tk)
        elif motion == "zoom":
            s = 1.0 - 0.4 * tk
            x0, y0 = (1 - s) * w / 2, (1 - s) * h / 2
        else:
            s = 0.85
            jx, jy = rng.uniform(-0.03, 0.03, 2) if k else (0.0, 0.0)
            x0, y0 = (1 - s) * w / 2 + jx * w, (1 - s) * h / 2 + jy * h
            angle = float(rng.uniform(-2.0, 2.0)) if k else 0.0
        views.append(view_matrix(x0, y0, s * w, s * h, out_size, angle))
    return np.stack(views)


def transform_boxes(boxes_xyxy: np.ndarray, matrix: np.ndarray,
                    out_size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Boxes moved by an affine view, clipped to the frame.

    Args:
        boxes_xyxy: ``(N, 4)`` photo-pixel boxes.
        matrix: ``(2, 3)`` photo-to-frame matrix (from :func:`camera_path`).
        out_size: ``(height, width)`` of the frame.

    Returns:
        ``(N, 4)`` float64 frame boxes (the axis-aligned hull of the moved corners, clipped),
        and ``(N,)`` float64 visible fraction: the clipped hull's area over the unclipped one.
    """
    boxes = np.asarray(boxes_xyxy, np.float64).reshape(-1, 4)
    x0, y0, x1, y1 = boxes.T
    corners = np.stack([np.stack([x0, y0], 1), np.stack([x1, y0], 1), np.stack([x1, y1], 1),
                        np.stack([x0, y1], 1)], 1)  # (N, 4, 2)
    moved = corners @ matrix[:, :2].T + matrix[:, 2]
    hull = np.concatenate([moved.min(1), moved.max(1)], 1)
    h, w = out_size
    clipped = np.clip(hull, 0, [w, h, w, h])
    area = lambda b: np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)  # noqa: E731
    full = area(hull)
    visible = np.divide(area(clipped), full, out=np.zeros_like(full), where=full > 0)
    return clipped, visible


def render_view(image: np.ndarray, matrix: np.ndarray, out_size: tuple[int, int]) -> np.ndarray:
    """The frame a camera with view ``matrix`` sees: ``(H, W, 3)`` uint8, borders replicated."""
    return cv2.warpAffine(image, matrix, (out_size[1], out_size[0]), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_REPLICATE)


@dataclass(frozen=True, eq=False)
class ClipFrame:
    """One frame of a synthetic clip with its ground truth.

    Attributes:
        image: ``(H, W, 3)`` uint8, in the photo's colour order.
        boxes_xyxy: ``(K, 4)`` ground-truth boxes of the heads present in this frame.
        ids: ``(K,)`` int: each head's index in the photo's box list (its identity).
        hidden: Indices of heads present in the photo's view but covered by the occluder.
        ignore_xyxy: ``(J, 4)`` boxes of heads partly in frame but absent from the ground truth
            (less than ``min_visible`` of them in frame, or smaller than ``min_side``): a
            detection there is neither right nor wrong, as MOTChallenge treats its distractors.
    """

    image: np.ndarray
    boxes_xyxy: np.ndarray
    ids: np.ndarray
    hidden: tuple[int, ...] = ()
    ignore_xyxy: np.ndarray = field(default_factory=lambda: np.zeros((0, 4)))


def make_clip(image: np.ndarray, boxes_xyxy: np.ndarray, motion: str, num_frames: int = 24,
              out_size: tuple[int, int] | None = None, occlude: bool = True, min_visible: float = 0.5,
              min_side: float = 4.0, seed: int = 0) -> Iterator[ClipFrame]:
    """Frames of a camera moving over a photo, with ground truth, one at a time.

    Args:
        image: ``(H, W, 3)`` uint8 photo.
        boxes_xyxy: ``(N, 4)`` its head boxes in pixels.
        motion: See :func:`camera_path`.
        num_frames: Clip length.
        out_size: ``(height, width)`` of the frames (default: the photo's).
        occlude: Hide the largest head behind a grey patch for 3 frames mid-clip (from
            ``num_frames // 2 - 1``); it is absent from the ground truth then.
        min_visible: A head with less of its box in frame than this is absent (and ignored
            when any of it is in frame: ``ClipFrame.ignore_xyxy``).
        min_side: A head whose frame box is smaller than this (pixels) is absent (and ignored).
        seed: For ``shake``.

    Yields:
        :class:`ClipFrame` per frame.
    """
    out_size = out_size or image.shape[:2]
    boxes = np.asarray(boxes_xyxy, np.float64).reshape(-1, 4)
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    target = int(areas.argmax()) if occlude and len(boxes) else -1
    hidden_frames = set(range(num_frames // 2 - 1, num_frames // 2 + 2)) if num_frames >= 8 else set()
    for k, matrix in enumerate(camera_path(motion, num_frames, image.shape[:2], out_size, seed)):
        frame = render_view(image, matrix, out_size)
        moved, visible = transform_boxes(boxes, matrix, out_size)
        sides = np.minimum(moved[:, 2] - moved[:, 0], moved[:, 3] - moved[:, 1])
        present = (visible >= min_visible) & (sides >= min_side)
        hidden: tuple[int, ...] = ()
        if k in hidden_frames and target >= 0 and present[target]:
            x0, y0, x1, y1 = moved[target]
            pad_x, pad_y = 0.15 * (x1 - x0), 0.15 * (y1 - y0)
            cv2.rectangle(frame, (int(x0 - pad_x), int(y0 - pad_y)), (int(np.ceil(x1 + pad_x)),
                          int(np.ceil(y1 + pad_y))), (128, 128, 128), -1)
            present[target] = False
            hidden = (target,)
        ids = np.flatnonzero(present)
        partial = ~present & (visible > 0)
        partial[list(hidden)] = False
        yield ClipFrame(frame, moved[ids], ids, hidden, moved[partial])


def clip_boxes_from_coco(annotations: Sequence[dict]) -> tuple[np.ndarray, list[int]]:
    """``(N, 4)`` xyxy boxes and category ids of a photo's COCO annotations (xywh in)."""
    boxes = np.asarray([a["bbox"] for a in annotations], np.float64).reshape(-1, 4)
    boxes[:, 2:] += boxes[:, :2]
    return boxes, [int(a["category_id"]) for a in annotations]
