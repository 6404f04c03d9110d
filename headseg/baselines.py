"""Classical baseline for stage 1: OpenCV's Haar-cascade face detector, boxes expanded to heads.

It finds frontal faces only (no profiles, backs of heads or strongly occluded faces) and gives
no masks; :meth:`headseg.pipeline.HeadwearPipeline.classify` then labels its boxes with the
same attire classifier as the two-stage pipeline, on derived (ellipse) masks.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np


@dataclass(frozen=True)
class HaarFaceDetector:
    """``cv2.CascadeClassifier`` with ``haarcascade_frontalface_default.xml`` (ships with OpenCV).

    Attributes:
        expand: Box side multiplier around the face centre (1.0 keeps the face box).
        upscale: Image magnification before detection; the cascade's smallest window is
            24 px, and a third of the face-mask faces are under 16 px.
        scale_factor: Pyramid step of ``detectMultiScale``.
        min_neighbors: Overlapping hits needed to keep a face (higher: fewer false alarms).
    """

    expand: float = 1.0
    upscale: float = 2.0
    scale_factor: float = 1.1
    min_neighbors: int = 3

    def __call__(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Faces in an RGB uint8 image: ``(N, 4)`` xyxy float32 boxes, ``(N,)`` scores in (0, 1).

        The score is the logistic of the cascade's last-stage weight, so it ranks detections
        for AP; it is not a calibrated probability.
        """
        cascade = _cascade()
        gray = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
        if self.upscale != 1.0:
            gray = cv2.resize(gray, None, fx=self.upscale, fy=self.upscale, interpolation=cv2.INTER_LINEAR)
        gray = cv2.equalizeHist(gray)
        rects, _, weights = cascade.detectMultiScale3(
            gray, scaleFactor=self.scale_factor, minNeighbors=self.min_neighbors, outputRejectLevels=True)
        if len(rects) == 0:
            return np.zeros((0, 4), np.float32), np.zeros(0, np.float32)
        rects = np.asarray(rects, np.float32) / self.upscale
        cx, cy = rects[:, 0] + rects[:, 2] / 2, rects[:, 1] + rects[:, 3] / 2
        half = rects[:, 2:] * self.expand / 2
        h, w = image.shape[:2]
        boxes = np.stack([np.clip(cx - half[:, 0], 0, w), np.clip(cy - half[:, 1], 0, h),
                          np.clip(cx + half[:, 0], 0, w), np.clip(cy + half[:, 1], 0, h)], axis=1)
        scores = 1.0 / (1.0 + np.exp(-np.asarray(weights, np.float32).reshape(-1)))
        return boxes.astype(np.float32), scores.astype(np.float32)


_CASCADE: list[cv2.CascadeClassifier] = []


def _cascade() -> cv2.CascadeClassifier:
    if not _CASCADE:
        path = Path(cv2.data.haarcascades) / "haarcascade_frontalface_default.xml"
        cascade = cv2.CascadeClassifier(str(path))
        if cascade.empty():
            raise FileNotFoundError(f"OpenCV's Haar cascade {path} is missing or unreadable; "
                                    "reinstall opencv-python-headless")
        _CASCADE.append(cascade)
    return _CASCADE[0]
