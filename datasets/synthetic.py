"""Synthetic photos of people whose heads wear different attire, with exact instance masks.

Every image is drawn from primitives (filled polygons and lines, ``cv2.LINE_8``, never
anti-aliased), and every instance mask is rasterised from the very same primitives, so a mask
holds exactly the pixels its head was painted with (before the final mild blur and noise,
which like a real camera smear edges by about a pixel). People are painted back to front: a
later person occludes earlier ones, and masks are *visibility* masks, so masks of one image
never overlap. The head mask covers the whole head with its headwear (brim, visor, hood, pom
pom), like a head box in real hard-hat data, and never the neck or torso.

Attire classes (``ATTIRE_CLASSES``, category ids 1..K in this order):

- ``bare``: skin and hair on top (sometimes bald).
- ``hard_hat``: tall yellow/white/orange dome with a ridge and a brim all round.
- ``cap``: coloured crown with seams and a visor sticking out to one side.
- ``beanie``: knitted crown with horizontal ribbing, a folded band, sometimes a pom-pom.
- ``hood``: dark fabric ring framing a smaller face.
- ``face_mask``: pale blue/white pleated band over the lower half of the face, ear loops.
- ``glasses``: two dark lenses, a bridge and arms.

Usage, from the repository root (no install needed)::

    python datasets/synthetic.py --out work_data/synthetic --train 200 --val 40 --test 40 \\
        --size 256 --seed 0

writes ``work_data/synthetic/{train,val,test}.json`` and ``work_data/synthetic/images/*.png``.
The same arguments always give byte-identical files. From Python::

    from datasets.synthetic import SyntheticConfig, make_synthetic_splits
    paths = make_synthetic_splits("work_data/synthetic", {"train": 200, "val": 40},
                                  SyntheticConfig(image_size=(256, 256)), seed=0)
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import json
import math
import os
import tempfile
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from pycocotools import mask as mask_utils

__all__ = [
    "ATTIRE_CLASSES",
    "Instance",
    "SyntheticConfig",
    "generate_image",
    "image_rng",
    "make_synthetic_coco",
    "make_synthetic_splits",
    "parse_args",
    "main",
]

ATTIRE_CLASSES: tuple[str, ...] = (
    "bare", "hard_hat", "cap", "beanie", "hood", "face_mask", "glasses",
)

Color = tuple[int, int, int]

# ----------------------------------------------------------------------------- configuration


@dataclass(frozen=True)
class SyntheticConfig:
    """What the generator draws. All ranges are inclusive ``(low, high)``.

    Example: ``SyntheticConfig(image_size=(128, 128), heads_per_image=(1, 3))`` for tests.
    """

    # Height and width are drawn independently from this range (pixels); equal ends fix the
    # size. 256 is large enough to show attire details and small enough to train in minutes.
    image_size: tuple[int, int] = (256, 256)
    # People per image (before any is refused for being hidden). Few heads keep a step cheap.
    heads_per_image: tuple[int, int] = (1, 4)
    # Head height (skin ellipse, without headwear) as a fraction of the image's short side:
    # from small crowd heads (10%) to close-ups (45%), like real site and street photos.
    head_size: tuple[float, float] = (0.10, 0.45)
    # Chance that a person is placed next to an earlier one so that one occludes the other.
    overlap_prob: float = 0.35
    # Chance that a person's head is pushed partly out of the image at an edge.
    edge_prob: float = 0.15
    # Chance that an image has no people at all, so empty-image handling gets exercised.
    empty_prob: float = 0.05
    # A head must keep at least this fraction of its full (unclipped, unoccluded) area ...
    min_visible_fraction: float = 0.3
    # ... and at least this many pixels, else the person is placed again or left out.
    min_visible_pixels: int = 16
    # Largest head tilt (degrees); attire adds up to ``attire_tilt`` more, as hats sit askew.
    max_rotation: float = 25.0
    attire_tilt: float = 8.0
    # Chance of a mild Gaussian blur (sigma 0.4-1.0) and the largest pixel-noise sigma (0-255).
    blur_prob: float = 0.35
    max_noise: float = 6.0
    # Attire drawn, uniformly; category ids follow this order. A subset of ATTIRE_CLASSES.
    classes: tuple[str, ...] = ATTIRE_CLASSES
    # Base seed, used when ``make_synthetic_coco``/``make_synthetic_splits`` get no seed.
    seed: int = 0
    # Placement attempts per person before giving up on it (it would hide another head).
    max_placement_tries: int = 8

    def __post_init__(self) -> None:
        # Lists (from YAML or JSON) become tuples so the config stays hashable and comparable.
        for name in ("image_size", "heads_per_image", "head_size", "classes"):
            object.__setattr__(self, name, tuple(getattr(self, name)))

        def pair(name: str, lo_min: float, example: str) -> None:
            value = getattr(self, name)
            if len(value) != 2 or not (lo_min <= value[0] <= value[1]):
                raise ValueError(
                    f"SyntheticConfig.{name}={value!r} is not an inclusive range (low, high) with "
                    f"{lo_min} <= low <= high; pass e.g. {name}={example}"
                )

        pair("image_size", 16, "(128, 128)")
        pair("heads_per_image", 0, "(1, 4)")
        pair("head_size", 0.01, "(0.1, 0.45)")
        if self.head_size[1] > 1.0:
            raise ValueError(f"SyntheticConfig.head_size={self.head_size!r} exceeds 1.0 (the image's "
                             "short side); use fractions such as (0.1, 0.45)")
        for name in ("overlap_prob", "edge_prob", "empty_prob", "min_visible_fraction", "blur_prob"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"SyntheticConfig.{name}={value!r} must be a probability in [0, 1]")
        if self.min_visible_pixels < 1 or self.max_placement_tries < 1:
            raise ValueError("SyntheticConfig.min_visible_pixels and max_placement_tries must be >= 1; "
                             f"received {self.min_visible_pixels} and {self.max_placement_tries}")
        if self.max_noise < 0 or self.max_rotation < 0 or self.attire_tilt < 0:
            raise ValueError("SyntheticConfig.max_noise, max_rotation and attire_tilt must be >= 0")
        unknown = [c for c in self.classes if c not in ATTIRE_CLASSES]
        if not self.classes or unknown or len(set(self.classes)) != len(self.classes):
            hints = [f"{c!r} (did you mean {difflib.get_close_matches(c, ATTIRE_CLASSES, 1)[0]!r}?)"
                     if difflib.get_close_matches(c, ATTIRE_CLASSES, 1) else repr(c) for c in unknown]
            raise ValueError(
                f"SyntheticConfig.classes={self.classes!r} must be a non-empty tuple of distinct "
                f"names from {ATTIRE_CLASSES}" + (f"; unknown: {', '.join(hints)}" if unknown else "")
            )

    @classmethod
    def fixed_size(cls, size: int, **kwargs: Any) -> "SyntheticConfig":
        """A config whose images are all ``size`` x ``size`` pixels."""
        return cls(image_size=(size, size), **kwargs)


@dataclass(frozen=True, eq=False)
class Instance:
    """One annotated head of a generated image.

    Attributes:
        mask: ``(H, W)`` bool, the head's *visible* pixels (headwear included, occluded and
            out-of-image pixels excluded). Never empty.
        box_xyxy: Tight box of ``mask`` in pixel-edge coordinates ``(x0, y0, x1, y1)``,
            ``x1``/``y1`` exclusive: a one-pixel mask at column x, row y has box
            ``(x, y, x + 1, y + 1)``, as COCO ``[x, y, w, h]`` and pycocotools ``toBbox``.
        label: Attire class name, one of ``ATTIRE_CLASSES``.
        category_id: 1-based index of ``label`` in the generating config's ``classes``.
        visible_fraction: Visible pixels over the full head area (unclipped, unoccluded), in (0, 1].
    """

    mask: np.ndarray
    box_xyxy: tuple[float, float, float, float]
    label: str
    category_id: int
    visible_fraction: float


# ----------------------------------------------------------------------------- drawing primitives

_SHIFT = 4  # cv2 sub-pixel bits: points are drawn at 1/16 px precision
_SCALE = float(1 << _SHIFT)


@dataclass(frozen=True)
class _Prim:
    """A filled polygon (``thickness == 0``) or a polyline, in image coordinates (x, y)."""

    points: np.ndarray  # (N, 2) float64
    color: Color
    thickness: int = 0
    closed: bool = False
    # Part of what tells the attire apart (hat, hood ring, lenses...): it must stay visible.
    cue: bool = False


def _draw(canvas: np.ndarray, prim: _Prim, value: Color | int,
          offset: tuple[float, float] = (0.0, 0.0)) -> None:
    """Paint ``prim`` onto ``canvas`` with ``value``; images and masks use this same call."""
    pts = np.round((prim.points - np.asarray(offset)) * _SCALE).astype(np.int32)
    if prim.thickness == 0:
        cv2.fillPoly(canvas, [pts], value, cv2.LINE_8, _SHIFT)
    else:
        cv2.polylines(canvas, [pts], prim.closed, value, prim.thickness, cv2.LINE_8, _SHIFT)


def _ellipse(cx: float, cy: float, rx: float, ry: float, t0: float = 0.0,
             t1: float = 2 * math.pi, n: int = 40) -> np.ndarray:
    """Points of an axis-aligned ellipse arc in the head's local frame, ``(n, 2)``."""
    t = np.linspace(t0, t1, n, endpoint=(t1 - t0) < 2 * math.pi - 1e-9)
    return np.stack([cx + rx * np.cos(t), cy + ry * np.sin(t)], axis=1)


def _jitter(rng: np.random.Generator, color: Sequence[int], amount: int = 12) -> Color:
    c = np.clip(np.asarray(color, np.int64) + rng.integers(-amount, amount + 1, 3), 0, 255)
    return (int(c[0]), int(c[1]), int(c[2]))


def _scale(color: Color, factor: float) -> Color:
    return tuple(int(np.clip(round(v * factor), 0, 255)) for v in color)  # type: ignore[return-value]


def _pick(rng: np.random.Generator, palette: Sequence[Color], weights: Sequence[float] | None = None,
          amount: int = 12) -> Color:
    p = None if weights is None else np.asarray(weights, np.float64) / np.sum(weights)
    return _jitter(rng, palette[int(rng.choice(len(palette), p=p))], amount)


# Palettes are RGB. Torso colours are independent of attire so a classifier cannot cheat on them.
_SKIN: tuple[Color, ...] = ((255, 224, 196), (241, 194, 160), (224, 172, 138), (198, 134, 96),
                            (170, 110, 75), (141, 85, 54), (110, 66, 42), (85, 50, 32))
_HAIR: tuple[Color, ...] = ((22, 18, 16), (48, 32, 22), (84, 58, 36), (124, 88, 52), (205, 175, 112),
                            (150, 62, 30), (160, 160, 160), (96, 70, 50))
_HARD_HAT: tuple[Color, ...] = ((242, 208, 22), (246, 246, 240), (250, 128, 22), (212, 40, 36), (36, 92, 206))
_HARD_HAT_W = (0.4, 0.25, 0.22, 0.07, 0.06)
_CAP: tuple[Color, ...] = ((200, 32, 38), (26, 40, 96), (42, 92, 202), (32, 122, 62), (26, 26, 30),
                           (132, 132, 138), (232, 232, 232), (112, 30, 46), (190, 170, 122), (102, 62, 152))
_BEANIE: tuple[Color, ...] = ((172, 32, 42), (32, 52, 112), (42, 42, 48), (92, 112, 62), (202, 92, 32),
                              (122, 122, 128), (82, 42, 112), (22, 112, 122), (150, 110, 80))
_HOOD: tuple[Color, ...] = ((26, 26, 30), (56, 56, 62), (26, 34, 68), (36, 56, 40), (86, 26, 32),
                            (96, 96, 102), (62, 46, 36))
_FACE_MASK: tuple[Color, ...] = ((172, 212, 238), (152, 196, 232), (238, 242, 246), (214, 228, 238))
_LENS: tuple[Color, ...] = ((18, 18, 22), (40, 32, 26), (22, 32, 46), (48, 48, 50))
_HIVIS: tuple[Color, ...] = ((220, 240, 40), (250, 140, 30))


@dataclass
class _Person:
    """One person as primitives, back to front: torso parts, then head parts."""

    label: str
    geometry: tuple[float, float, float, float]  # head centre x, y and semi-axes a, b (px)
    body: list[_Prim] = field(default_factory=list)  # neck, torso: occlude, not in the head mask
    head: list[_Prim] = field(default_factory=list)  # head and headwear: the instance mask


class _Frame:
    """Maps the head's local frame (centre 0, y down, units px) to image coordinates."""

    def __init__(self, cx: float, cy: float, angle_deg: float) -> None:
        t = math.radians(angle_deg)
        self.rot = np.array([[math.cos(t), -math.sin(t)], [math.sin(t), math.cos(t)]])
        self.center = np.array([cx, cy])

    def __call__(self, pts: np.ndarray) -> np.ndarray:
        return pts @ self.rot.T + self.center


def _line_px(size: float, frac: float) -> int:
    return max(1, int(round(size * frac)))


def _hair(rng: np.random.Generator, a: float, b: float, color: Color) -> list[np.ndarray]:
    """Hair polygon(s) over the top of the head: a cap of the head ellipse above a hairline."""
    side_low = rng.uniform(0.15, 0.45)  # how far down the sides the hair reaches (in b)
    t_low = math.asin(side_low / 1.05)
    arc = _ellipse(0, 0, 1.05 * a, 1.06 * b, math.pi - t_low, 2 * math.pi + t_low, 36)
    top = -rng.uniform(0.35, 0.55) * b  # forehead hairline height
    xs = np.linspace(0.86 * a, -0.86 * a, 12)
    line = np.stack([xs, top + 0.3 * b * (xs / a) ** 2], axis=1)
    polys = [np.concatenate([arc, line])]
    if rng.random() < 0.25:  # long hair falling past the ears
        for s in (-1, 1):
            polys.append(np.array([[s * 0.8 * a, -0.2 * b], [s * 1.08 * a, -0.1 * b],
                                   [s * 1.02 * a, 0.95 * b], [s * 0.82 * a, 0.9 * b]]))
    return polys


def _face(rng: np.random.Generator, f: _Frame, a: float, b: float, skin: Color, yaw: float,
          mouth: bool = True, eyes: bool = True) -> list[_Prim]:
    """Skin ellipse with a shaded side, eyes, nose and mouth (``a``, ``b``: semi-axes in px)."""
    shade_side = 1.0 if rng.random() < 0.5 else -1.0
    prims = [
        _Prim(f(_ellipse(0, 0, a, b)), _scale(skin, 0.82)),
        _Prim(f(_ellipse(-shade_side * 0.06 * a, -0.03 * b, 0.93 * a, 0.96 * b)), skin),
    ]
    dark = _scale(skin, 0.45)
    if eyes:
        for s in (-1, 1):
            prims.append(_Prim(f(_ellipse(s * 0.37 * a + yaw, -0.05 * b, 0.11 * a, 0.07 * b, n=16)),
                               (30, 24, 22)))
            prims.append(_Prim(f(np.array([[s * 0.37 * a + yaw - 0.16 * a, -0.2 * b],
                                           [s * 0.37 * a + yaw + 0.16 * a, -0.2 * b]])),
                               dark, _line_px(b, 0.04)))
    prims.append(_Prim(f(np.array([[yaw * 1.2, 0.0], [yaw * 1.3 + 0.06 * a, 0.28 * b],
                                   [yaw * 1.3 - 0.06 * a, 0.3 * b]])), _scale(skin, 0.7)))
    if mouth:
        w = rng.uniform(0.22, 0.34) * a
        prims.append(_Prim(f(np.array([[yaw - w, 0.52 * b], [yaw, 0.56 * b], [yaw + w, 0.52 * b]])),
                           (120, 50, 50) if rng.random() < 0.5 else dark, _line_px(b, 0.05)))
    return prims


def _ears(f: _Frame, a: float, b: float, skin: Color) -> list[_Prim]:
    return [_Prim(f(_ellipse(s * 0.97 * a, 0.05 * b, 0.15 * a, 0.22 * b, n=20)), _scale(skin, 0.9))
            for s in (-1, 1)]


def _head_prims(rng: np.random.Generator, label: str, cx: float, cy: float, a: float, b: float,
                angle: float, tilt: float, skin: Color) -> list[_Prim]:
    """Primitives of the head and its attire, back to front, in image coordinates."""
    head = _Frame(cx, cy, angle)
    wear = _Frame(cx, cy, angle + tilt)  # attire sits slightly askew on the head
    yaw = rng.uniform(-0.22, 0.22) * a
    hair_color = _pick(rng, _HAIR, amount=10)
    bald = rng.random() < (0.15 if label == "bare" else 0.05)
    prims: list[_Prim] = []

    if label == "hood":
        hood = _pick(rng, _HOOD, amount=8)
        prims.append(_Prim(wear(_ellipse(0, 0.02 * b, 1.42 * a, 1.32 * b)), hood))
        prims.append(_Prim(wear(_ellipse(0, 0.1 * b, 1.0 * a, 1.06 * b)), _scale(hood, 0.55)))
        # The face sits lower and smaller inside the hood opening.
        face = _Frame(*head(np.array([[0.0, 0.14 * b]]))[0], angle)
        fa, fb = 0.8 * a, 0.86 * b
        prims += _face(rng, face, fa, fb, skin, yaw * 0.8)
        if not bald:  # a fringe of hair under the hood's edge
            xs = np.linspace(-0.7 * fa, 0.7 * fa, 10)
            fringe = np.concatenate([_ellipse(0, 0, 0.8 * fa, 0.9 * fb, math.pi + 0.5, 2 * math.pi - 0.5, 16),
                                     np.stack([xs[::-1], -0.5 * fb + 0.15 * fb * (xs[::-1] / fa) ** 2], 1)])
            prims.append(_Prim(face(fringe), hair_color))
        # Drawstrings hanging from the opening.
        for s in (-1, 1):
            prims.append(_Prim(wear(np.array([[s * 0.45 * a, 0.95 * b], [s * 0.5 * a, 1.3 * b]])),
                               _scale(hood, 1.8) if hood[0] < 60 else (230, 230, 230), _line_px(a, 0.06)))
        return [dataclasses.replace(p, cue=True) if i < 2 else p for i, p in enumerate(prims)]

    prims += _ears(head, a, b, skin)
    prims += _face(rng, head, a, b, skin, yaw, mouth=label != "face_mask",
                   eyes=label != "glasses")
    if not bald:
        for poly in _hair(rng, a, b, hair_color):
            prims.append(_Prim(head(poly), hair_color))

    first_cue = 0 if label == "bare" else len(prims)  # a bare head's cue is all of it
    if label == "hard_hat":
        color = _pick(rng, _HARD_HAT, _HARD_HAT_W, amount=10)
        base = -rng.uniform(0.26, 0.36) * b  # the brim sits above the eyebrows
        prims.append(_Prim(wear(_ellipse(0, base, 1.5 * a, 0.17 * b)), _scale(color, 0.8)))
        dome = _ellipse(0, base, 1.12 * a, 0.98 * b, math.pi, 2 * math.pi, 32)
        prims.append(_Prim(wear(dome), color))
        prims.append(_Prim(wear(_ellipse(0, base - 0.48 * b, 0.14 * a, 0.5 * b, n=24)), _scale(color, 0.88)))
        prims.append(_Prim(wear(_ellipse(-0.5 * a, base - 0.6 * b, 0.18 * a, 0.12 * b, n=16)),
                           _scale(color, 1.12)))
        # The brim's front lip, a thin band along the dome's base.
        prims.append(_Prim(wear(np.array([[-1.12 * a, base], [1.12 * a, base]])), _scale(color, 0.7),
                           _line_px(b, 0.06)))
    elif label == "cap":
        color = _pick(rng, _CAP, amount=10)
        side = 1.0 if rng.random() < 0.5 else -1.0
        base = -rng.uniform(0.22, 0.35) * b
        crown = _ellipse(0, base, 1.05 * a, 0.82 * b, math.pi, 2 * math.pi, 32)
        prims.append(_Prim(wear(crown), color))
        visor = _ellipse(side * 1.05 * a, base, 0.85 * a, rng.uniform(0.18, 0.26) * b, 0, math.pi, 20)
        visor = np.concatenate([visor, [[side * 0.2 * a, base]]])
        prims.append(_Prim(wear(visor), _scale(color, 0.72)))
        seam = _scale(color, 0.6) if color[0] > 60 else _scale(color, 2.5)
        for x in (-0.45, 0.45):
            prims.append(_Prim(wear(np.array([[0, base - 0.8 * b], [x * a, base - 0.45 * b],
                                              [x * 1.3 * a, base]])), seam, _line_px(b, 0.035)))
        prims.append(_Prim(wear(_ellipse(0, base - 0.82 * b, 0.12 * a, 0.07 * b, n=12)), seam))
        if rng.random() < 0.4:  # a logo patch on the front panel
            logo = _pick(rng, _CAP, amount=30)
            prims.append(_Prim(wear(_ellipse(0, base - 0.35 * b, 0.28 * a, 0.18 * b, n=16)), logo))
    elif label == "beanie":
        color = _pick(rng, _BEANIE, amount=10)
        base = -rng.uniform(0.2, 0.3) * b  # the band ends just above the eyes
        crown_rx, crown_ry = 1.08 * a, 0.9 * b
        prims.append(_Prim(wear(_ellipse(0, base, crown_rx, crown_ry, math.pi, 2 * math.pi, 32)), color))
        rib = _scale(color, 0.68) if sum(color) > 150 else _scale(color, 1.7)
        band_h = rng.uniform(0.26, 0.36) * b
        # Horizontal ribbing across the crown, clipped to the crown's width at each height.
        n_rows = 5
        for k in range(1, n_rows + 1):
            y = base - band_h - (crown_ry - band_h) * k / (n_rows + 1)
            half = crown_rx * math.sqrt(max(0.0, 1 - ((y - base) / crown_ry) ** 2)) * 0.92
            prims.append(_Prim(wear(np.array([[-half, y], [half, y]])), rib, _line_px(b, 0.045)))
        # The folded band: a slightly wider, darker strip with vertical ribs.
        band_col = _scale(color, 0.85)
        band = np.array([[-1.12 * a, base - band_h], [1.12 * a, base - band_h],
                         [1.1 * a, base + 0.04 * b], [-1.1 * a, base + 0.04 * b]])
        prims.append(_Prim(wear(band), band_col))
        for x in np.linspace(-0.95, 0.95, 9):
            prims.append(_Prim(wear(np.array([[x * a, base - band_h * 0.9], [x * a, base]])),
                               _scale(band_col, 0.75), _line_px(a, 0.035)))
        if rng.random() < 0.35:  # pom-pom
            prims.append(_Prim(wear(_ellipse(0, base - crown_ry - 0.05 * b, 0.24 * a, 0.2 * b, n=20)),
                               _pick(rng, _BEANIE + ((240, 240, 240),), amount=10)))
    elif label == "face_mask":
        color = _pick(rng, _FACE_MASK, amount=6)
        top = rng.uniform(0.02, 0.12) * b
        band = np.array([[-0.97 * a, top], [0.97 * a, top], [0.9 * a, 0.5 * b], [0.5 * a, 0.86 * b],
                         [0.0, 0.92 * b], [-0.5 * a, 0.86 * b], [-0.9 * a, 0.5 * b]])
        loop = (248, 248, 248) if color[2] < 240 else (200, 215, 230)
        for s in (-1, 1):  # ear loops, from the band's corners back to the ear
            prims.append(_Prim(head(np.array([[s * 0.95 * a, top + 0.05 * b], [s * 1.03 * a, -0.02 * b],
                                              [s * 1.02 * a, 0.2 * b], [s * 0.9 * a, 0.5 * b]])),
                               loop, _line_px(b, 0.04)))
        prims.append(_Prim(head(band), color))
        pleat = _scale(color, 0.82)
        for y in (0.28, 0.45, 0.62):
            prims.append(_Prim(head(np.array([[-0.8 * a, y * b + top * 0.5], [0.8 * a, y * b + top * 0.5]])),
                               pleat, _line_px(b, 0.03)))
    elif label == "glasses":
        lens = _pick(rng, _LENS, amount=6)
        frame = (15, 15, 15) if rng.random() < 0.7 else _pick(rng, _CAP, amount=10)
        y = -0.06 * b
        for s in (-1, 1):
            x = s * 0.4 * a + yaw
            prims.append(_Prim(head(np.array([[x + s * 0.28 * a, y - 0.04 * b], [s * 1.0 * a, y - 0.1 * b]])),
                               frame, _line_px(b, 0.04)))
            prims.append(_Prim(head(_ellipse(x, y, 0.33 * a, 0.23 * b, n=24)), frame))
            prims.append(_Prim(head(_ellipse(x, y, 0.28 * a, 0.19 * b, n=24)), lens))
            prims.append(_Prim(head(_ellipse(x - 0.1 * a, y - 0.07 * b, 0.07 * a, 0.04 * b, n=10)),
                               _scale(lens, 3.0)))
        prims.append(_Prim(head(np.array([[yaw - 0.14 * a, y - 0.04 * b], [yaw, y - 0.1 * b],
                                          [yaw + 0.14 * a, y - 0.04 * b]])), frame, _line_px(b, 0.05)))
    elif label != "bare":
        raise AssertionError(f"no drawing for attire {label!r}")
    return prims[:first_cue] + [dataclasses.replace(p, cue=True) for p in prims[first_cue:]]


def _body_prims(rng: np.random.Generator, cx: float, cy: float, a: float, b: float,
                angle: float, label: str, head_prims: list[_Prim], skin: Color) -> list[_Prim]:
    """Neck and torso below the head; they occlude earlier people but are not head pixels."""
    if label == "hood" and rng.random() < 0.7:
        shirt = _scale(head_prims[0].color, 1.05)  # a hoodie: the hood's fabric continues
    elif rng.random() < 0.15:
        shirt = _pick(rng, _HIVIS, amount=10)
    else:
        shirt = _jitter(rng, rng.integers(20, 236, 3).tolist(), 0)
    lean = _Frame(cx, cy, angle * 0.3)
    width = rng.uniform(2.0, 2.7) * a
    shoulder_y = rng.uniform(1.05, 1.25) * b
    neck = np.array([[-0.38 * a, 0.5 * b], [0.38 * a, 0.5 * b], [0.42 * a, shoulder_y + 0.3 * b],
                     [-0.42 * a, shoulder_y + 0.3 * b]])
    torso = np.concatenate([
        _ellipse(0, shoulder_y + 0.9 * b, width, 0.9 * b, math.pi, 2 * math.pi, 28),
        np.array([[width, 8.0 * b], [-width, 8.0 * b]]),
    ])
    prims = [_Prim(lean(torso), shirt), _Prim(lean(neck), _scale(skin, 0.85))]
    if shirt in _HIVIS or rng.random() < 0.05:  # reflective strips of a hi-vis vest
        for y in (shoulder_y + 1.6 * b, shoulder_y + 2.3 * b):
            prims.append(_Prim(lean(np.array([[-width, y], [width, y]])), (190, 190, 185),
                               _line_px(b, 0.18)))
    collar = np.array([[-0.5 * a, shoulder_y + 0.12 * b], [0.0, shoulder_y + 0.6 * b],
                       [0.5 * a, shoulder_y + 0.12 * b]])
    prims.append(_Prim(lean(collar), _scale(shirt, 0.7), _line_px(b, 0.06)))
    return prims


# ----------------------------------------------------------------------------- rasterisation


def _rasterize(prims: Sequence[_Prim], shape: tuple[int, int]) -> np.ndarray:
    """Union of ``prims`` as an ``(H, W)`` bool mask, clipped to the image."""
    canvas = np.zeros(shape, np.uint8)
    for p in prims:
        _draw(canvas, p, 1)
    return canvas.astype(bool)


def _head_masks(prims: Sequence[_Prim], shape: tuple[int, int],
                offset: tuple[float, float] = (0.0, 0.0)) -> tuple[np.ndarray, np.ndarray]:
    """``(union, cue)`` bool masks; cue pixels are those whose top-most primitive is a cue."""
    canvas = np.zeros(shape, np.uint8)
    for p in prims:
        _draw(canvas, p, 2 if p.cue else 1, offset)
    return canvas > 0, canvas == 2


def _full_areas(prims: Sequence[_Prim]) -> tuple[int, int]:
    """Pixel counts of the union of ``prims`` and of its cue, without clipping to the image."""
    pts = np.concatenate([p.points for p in prims])
    pad = max(p.thickness for p in prims) + 2
    lo = np.floor(pts.min(axis=0)) - pad
    hi = np.ceil(pts.max(axis=0)) + pad
    # Drawing at an integer offset keeps the rasterisation identical to the in-image one.
    shape = (int(hi[1] - lo[1]) + 1, int(hi[0] - lo[0]) + 1)
    union, cue = _head_masks(prims, shape, offset=(float(lo[0]), float(lo[1])))
    return int(np.count_nonzero(union)), int(np.count_nonzero(cue))


def _tight_box(mask: np.ndarray) -> tuple[float, float, float, float]:
    """``(x0, y0, x1, y1)`` of a non-empty bool mask, ``x1``/``y1`` exclusive."""
    cols = np.flatnonzero(mask.any(axis=0))
    rows = np.flatnonzero(mask.any(axis=1))
    return (float(cols[0]), float(rows[0]), float(cols[-1] + 1), float(rows[-1] + 1))


# ----------------------------------------------------------------------------- backgrounds


def _random_color(rng: np.random.Generator, lo: int = 30, hi: int = 230) -> np.ndarray:
    return rng.integers(lo, hi + 1, 3).astype(np.float32)


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A textured ``(H, W, 3)`` float32 RGB background in [0, 255]."""
    kind = rng.choice(["noise", "gradient", "stripes", "checker", "rects"])
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    c1, c2 = _random_color(rng), _random_color(rng)
    if kind == "noise":
        gh, gw = int(rng.integers(2, 9)), int(rng.integers(2, 9))
        grid = rng.uniform(0, 255, (gh, gw, 3)).astype(np.float32)
        img = cv2.resize(grid, (w, h), interpolation=cv2.INTER_CUBIC)
        img = 0.5 * img + 0.5 * c1
    elif kind == "gradient":
        t = math.radians(rng.uniform(0, 360))
        u = (xx * math.cos(t) + yy * math.sin(t)) / max(h, w)
        u = (u - u.min()) / max(float(u.max() - u.min()), 1e-6)
        img = c1 * (1 - u[..., None]) + c2 * u[..., None]
    elif kind == "stripes":
        t = math.radians(rng.choice([0.0, 90.0, rng.uniform(0, 180)]))
        period = rng.uniform(0.04, 0.25) * min(h, w)
        u = (xx * math.cos(t) + yy * math.sin(t)) / period
        on = (np.floor(u) % 2).astype(np.float32)[..., None]
        img = c1 * (1 - on) + c2 * on
    elif kind == "checker":
        s = rng.uniform(0.05, 0.2) * min(h, w)
        on = ((np.floor(xx / s) + np.floor(yy / s)) % 2).astype(np.float32)[..., None]
        img = c1 * (1 - on) + (0.6 * c2 + 0.4 * c1) * on
    else:  # a site or a shop: flat wall, shelves, windows, beams
        img = np.broadcast_to(c1, (h, w, 3)).copy()
    img = np.ascontiguousarray(img, dtype=np.float32)
    if kind == "rects" or rng.random() < 0.4:
        for _ in range(int(rng.integers(2, 10))):
            x0, y0 = rng.integers(-w // 4, w), rng.integers(-h // 4, h)
            rw, rh = rng.integers(w // 16 + 1, w // 2 + 2), rng.integers(h // 16 + 1, h // 2 + 2)
            col = tuple(float(v) for v in _random_color(rng, 10, 245))
            if rng.random() < 0.7:
                cv2.rectangle(img, (int(x0), int(y0)), (int(x0 + rw), int(y0 + rh)), col, -1)
            else:  # a beam or pole: a thick line
                cv2.line(img, (int(x0), int(y0)), (int(x0 + rw), int(y0 + rh)), col,
                         int(rng.integers(2, max(3, min(h, w) // 20))))
    # Fine grain so that flat walls are not perfectly flat.
    img += rng.standard_normal((h, w, 1), dtype=np.float32) * rng.uniform(0.0, 8.0)
    return img


# ----------------------------------------------------------------------------- people and images


def _place(rng: np.random.Generator, cfg: SyntheticConfig, h: int, w: int, a: float, b: float,
           previous: Sequence[tuple[float, float, float, float]]) -> tuple[float, float]:
    """Head centre (x, y) for a head of semi-axes ``a``, ``b``; ``previous`` holds (cx, cy, a, b)."""
    ext_x, ext_y = 1.3 * a, 1.25 * b  # headwear makes the head extent larger than the ellipse
    if previous and rng.random() < cfg.overlap_prob:
        px, py, pa, pb = previous[int(rng.integers(len(previous)))]
        side = 1.0 if rng.random() < 0.5 else -1.0
        dist = rng.uniform(0.55, 1.3) * (1.3 * pa + ext_x)
        # People in front stand a little lower in the picture.
        return px + side * dist, py + rng.uniform(-0.3, 0.9) * (pb + b)
    if rng.random() < cfg.edge_prob:
        out = rng.uniform(0.1, 0.55)  # fraction of the head extent beyond the edge
        edge = int(rng.integers(4))
        if edge in (0, 1):  # left, right
            x = -ext_x + 2 * ext_x * (1 - out) if edge == 0 else w + ext_x - 2 * ext_x * (1 - out)
            return x, rng.uniform(0, h)
        y = -ext_y + 2 * ext_y * (1 - out) if edge == 2 else h + ext_y - 2 * ext_y * (1 - out)
        return rng.uniform(0, w), y
    x = rng.uniform(ext_x, w - ext_x) if w > 2 * ext_x else w / 2
    y = rng.uniform(ext_y, h - 0.5 * ext_y) if h > 1.5 * ext_y else h / 2
    return x, y


def _sample_person(rng: np.random.Generator, cfg: SyntheticConfig, h: int, w: int, label: str,
                   previous: Sequence[tuple[float, float, float, float]]) -> _Person:
    """A person wearing ``label``, placed relative to ``previous`` heads' (cx, cy, a, b)."""
    head_h = rng.uniform(*cfg.head_size) * min(h, w)
    b = head_h / 2
    a = b * rng.uniform(0.74, 0.86)
    cx, cy = _place(rng, cfg, h, w, a, b, previous)
    angle = rng.uniform(-cfg.max_rotation, cfg.max_rotation)
    tilt = rng.uniform(-cfg.attire_tilt, cfg.attire_tilt)
    skin = _pick(rng, _SKIN, amount=10)
    person = _Person(label, (cx, cy, a, b))
    person.head = _head_prims(rng, label, cx, cy, a, b, angle, tilt, skin)
    person.body = _body_prims(rng, cx, cy, a, b, angle, label, person.head, skin)
    return person


def generate_image(rng: np.random.Generator,
                   cfg: SyntheticConfig | None = None) -> tuple[np.ndarray, list[Instance]]:
    """Draw one synthetic photo and its head instances.

    Args:
        rng: Source of all randomness; the same generator state gives the same image.
        cfg: What to draw; default :class:`SyntheticConfig`.

    Returns:
        ``(image, instances)``: image ``(H, W, 3)`` uint8 **RGB** with H, W in
        ``cfg.image_size``; instances in painting order (back to front), each with a non-empty
        ``(H, W)`` bool visibility mask, pairwise disjoint. Empty for a no-people image.
    """
    cfg = cfg or SyntheticConfig()
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy.random.Generator (np.random.default_rng(seed)); "
                        f"received {type(rng).__name__}")
    h = int(rng.integers(cfg.image_size[0], cfg.image_size[1] + 1))
    w = int(rng.integers(cfg.image_size[0], cfg.image_size[1] + 1))
    canvas = _background(rng, h, w)
    n = 0 if rng.random() < cfg.empty_prob else int(rng.integers(cfg.heads_per_image[0],
                                                                 cfg.heads_per_image[1] + 1))
    # owner[y, x] = k + 1 where person k's head is the front-most thing, 0 elsewhere.
    owner = np.zeros((h, w), np.int16)
    people: list[_Person] = []
    full: list[int] = []  # unclipped, unoccluded head areas
    cues: list[tuple[np.ndarray, int]] = []  # in-image cue masks and their unclipped areas

    def visible_enough(trial: np.ndarray) -> bool:
        # Each head keeps enough of itself *and* of its attire cue (a hat hidden behind
        # someone would leave a head labelled "cap" with no cap in sight).
        counts = np.bincount(trial.ravel(), minlength=len(full) + 1)
        frac = cfg.min_visible_fraction
        return all(counts[k + 1] >= max(cfg.min_visible_pixels, frac * full[k])
                   and np.count_nonzero(cue & (trial == k + 1)) >= frac * cue_area
                   for k, (cue, cue_area) in enumerate(cues))

    for _ in range(n):
        label = cfg.classes[int(rng.integers(len(cfg.classes)))]
        for _try in range(cfg.max_placement_tries):
            person = _sample_person(rng, cfg, h, w, label, [p.geometry for p in people])
            head, cue = _head_masks(person.head, (h, w))
            trial = owner.copy()
            trial[_rasterize(person.body, (h, w))] = 0
            trial[head] = len(people) + 1
            head_area, cue_area = _full_areas(person.head)
            full.append(head_area)
            cues.append((cue, cue_area))
            if visible_enough(trial):
                owner = trial
                people.append(person)
                break
            full.pop()  # this placement would hide a head (or its own): try another
            cues.pop()

    for person in people:  # paint back to front with the very calls that made the masks
        for prim in person.body + person.head:
            _draw(canvas, prim, tuple(float(v) for v in prim.color))

    # Photo-like finish: uneven light, slight blur, sensor noise. Masks stay the painted pixels.
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    t = rng.uniform(0, 2 * math.pi)
    light = 1.0 + rng.uniform(0.0, 0.2) * ((xx * math.cos(t) + yy * math.sin(t)) / max(h, w) - 0.5)
    canvas *= light[..., None] * rng.uniform(0.85, 1.1)
    if rng.random() < cfg.blur_prob:
        canvas = cv2.GaussianBlur(canvas, (0, 0), rng.uniform(0.4, 1.0))
    if cfg.max_noise > 0:
        canvas += rng.standard_normal(canvas.shape, dtype=np.float32) * rng.uniform(0.0, cfg.max_noise)
    image = np.clip(np.round(canvas), 0, 255).astype(np.uint8)

    instances = []
    for k, person in enumerate(people):
        mask = owner == k + 1
        instances.append(Instance(
            mask=mask, box_xyxy=_tight_box(mask), label=person.label,
            category_id=cfg.classes.index(person.label) + 1,
            visible_fraction=min(1.0, int(np.count_nonzero(mask)) / full[k]),
        ))
    return image, instances


# ----------------------------------------------------------------------------- COCO files


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write via a temporary file and a rename, so a killed run leaves no half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def image_rng(seed: int, split_name: str, index: int) -> np.random.Generator:
    """The generator that draws image ``index`` (0-based) of a split, to reproduce one image.

    Each image has its own stream, so image i is the same whatever ``num_images`` is, and
    splits differ because their name is part of the seed:
    ``generate_image(image_rng(seed, "train", 3), cfg)`` gives ``images/train_000003.png``.
    """
    entropy = [int(seed), zlib.crc32(split_name.encode()), int(index)]
    return np.random.default_rng(np.random.SeedSequence(entropy))


def make_synthetic_coco(out_dir: str | Path, num_images: int, cfg: SyntheticConfig | None = None,
                        seed: int | None = None, split_name: str = "train") -> Path:
    """Write ``num_images`` synthetic photos and their COCO annotations.

    Files: ``out_dir/images/<split>_000000.png`` ... and ``out_dir/<split>.json`` with
    ``file_name`` relative to ``out_dir`` (``images/<split>_000000.png``), image and annotation
    ids from 1, ``bbox`` ``[x, y, w, h]`` (the mask's tight box), ``area`` (mask pixel count),
    ``iscrowd`` 0, ``segmentation`` as compressed RLE with ``counts`` a str, ``category_id``
    1..K in ``cfg.classes`` order, categories with supercategory ``head``. The same arguments
    give byte-identical files.

    Args:
        out_dir: Dataset folder, created if missing.
        num_images: Number of images (>= 0).
        cfg: What to draw; default :class:`SyntheticConfig`.
        seed: Seed of this split; None uses ``cfg.seed``.
        split_name: Prefix of image files and name of the JSON file (``train``, ``val``...).

    Returns:
        Path of the JSON file.

    Raises:
        ValueError: ``num_images`` is negative or ``split_name`` is not a plain file name.
    """
    cfg = cfg or SyntheticConfig()
    if num_images < 0:
        raise ValueError(f"num_images={num_images} is negative; pass 0 or more")
    if not split_name or Path(split_name).name != split_name or split_name.startswith("."):
        raise ValueError(f"split_name={split_name!r} must be a plain name such as 'train'")
    seed = cfg.seed if seed is None else int(seed)
    out_dir = Path(out_dir)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    for i in range(num_images):
        rng = image_rng(seed, split_name, i)
        image, instances = generate_image(rng, cfg)
        file_name = f"images/{split_name}_{i:06d}.png"
        ok, png = cv2.imencode(".png", cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
        if not ok:
            raise RuntimeError(f"OpenCV could not encode {file_name} as PNG")
        _atomic_write_bytes(out_dir / file_name, png.tobytes())
        h, w = image.shape[:2]
        images.append({"id": i + 1, "file_name": file_name, "width": w, "height": h})
        for inst in instances:
            rle = mask_utils.encode(np.asfortranarray(inst.mask.astype(np.uint8)))
            x0, y0, x1, y1 = inst.box_xyxy
            annotations.append({
                "id": len(annotations) + 1,
                "image_id": i + 1,
                "category_id": inst.category_id,
                "bbox": [x0, y0, x1 - x0, y1 - y0],
                "area": int(np.count_nonzero(inst.mask)),
                "iscrowd": 0,
                "segmentation": {"size": [h, w], "counts": rle["counts"].decode("ascii")},
            })
    dataset = {
        "info": {
            "description": "Synthetic head-attire photos with exact instance masks "
                           "(drawn by datasets/synthetic.py; masks are the painted head pixels)",
            "version": "1.0",
            "split": split_name,
            "seed": seed,
            "config": dataclasses.asdict(cfg),
        },
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": [{"id": k + 1, "name": name, "supercategory": "head"}
                       for k, name in enumerate(cfg.classes)],
    }
    json_path = out_dir / f"{split_name}.json"
    _atomic_write_bytes(json_path, json.dumps(dataset, indent=1).encode())
    return json_path


def make_synthetic_splits(out_dir: str | Path, sizes: Mapping[str, int] | None = None,
                          cfg: SyntheticConfig | None = None, seed: int | None = None) -> dict[str, Path]:
    """Write several splits into one folder; each split draws from its own random stream.

    Args:
        out_dir: Dataset folder.
        sizes: Split name -> number of images; default ``{"train": 200, "val": 40, "test": 40}``.
        cfg: What to draw; default :class:`SyntheticConfig`.
        seed: Base seed; None uses ``cfg.seed``. Splits differ because the split name is mixed in.

    Returns:
        Split name -> path of its JSON file, in the order of ``sizes``.
    """
    sizes = dict(sizes) if sizes is not None else {"train": 200, "val": 40, "test": 40}
    return {name: make_synthetic_coco(out_dir, n, cfg, seed=seed, split_name=name)
            for name, n in sizes.items()}


# ----------------------------------------------------------------------------- command line


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line arguments; see the module docstring for an example."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("work_data/synthetic"), help="dataset folder")
    p.add_argument("--train", type=int, default=200, help="number of training images")
    p.add_argument("--val", type=int, default=40, help="number of validation images")
    p.add_argument("--test", type=int, default=40, help="number of test images")
    p.add_argument("--size", type=int, default=256, help="image side in pixels (square images)")
    p.add_argument("--max-size", type=int, default=None,
                   help="if given, height and width are drawn independently from [size, max-size]")
    p.add_argument("--heads", type=int, nargs=2, default=(1, 4), metavar=("MIN", "MAX"),
                   help="people per image")
    p.add_argument("--empty-prob", type=float, default=0.05, help="chance of an image with no people")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def main(args: argparse.Namespace) -> dict[str, Path]:
    """Write the splits named by ``args``; returns split name -> JSON path."""
    cfg = SyntheticConfig(image_size=(args.size, args.max_size or args.size),
                          heads_per_image=tuple(args.heads), empty_prob=args.empty_prob, seed=args.seed)
    sizes = {name: n for name in ("train", "val", "test") if (n := getattr(args, name)) > 0}
    paths = make_synthetic_splits(args.out, sizes, cfg, seed=args.seed)
    for name, path in paths.items():
        data = json.loads(path.read_text())
        print(f"{name}: {len(data['images'])} images, {len(data['annotations'])} heads -> {path}")
    return paths


if __name__ == "__main__":
    main(parse_args())
