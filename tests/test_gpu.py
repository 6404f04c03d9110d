"""CUDA paths against the CPU: opt in with ``pytest -m gpu`` on a machine with a GPU.

The CPU test suite checks each GPU form on the CPU (the loop-free crop blend, the batched
mask pasting); these check the same code on the device, with AMP and channels-last, and that
the bundled pipeline finds the same heads there.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision.models.detection.roi_heads import paste_masks_in_image

from headseg.crops import crop_heads
from headseg.io import read_image
from headseg.pipeline import HeadwearPipeline, ImageResult
from headseg.segmentation import paste_masks

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

SAMPLES = sorted((Path(__file__).resolve().parents[1] / "docs" / "samples").glob("*.jpg"))


def _box_iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - w * h
    return w * h / union if union > 0 else 0.0


def _agreement(want: list[ImageResult], got: list[ImageResult]) -> tuple[float, float]:
    """Share of ``want``'s heads found again (box IoU >= 0.9), and of those with the same label."""
    found = same = total = 0
    for a, b in zip(want, got):
        for head in a.heads:
            total += 1
            match = max(b.heads, key=lambda g: _box_iou(head.box_xyxy, g.box_xyxy), default=None)
            if match is not None and _box_iou(head.box_xyxy, match.box_xyxy) >= 0.9:
                found += 1
                same += match.label == head.label
    assert total > 0, "the samples gave no heads to compare"
    return found / total, same / max(found, 1)


@pytest.fixture(scope="module")
def cpu_results() -> list[ImageResult]:
    return HeadwearPipeline.from_pretrained("cpu")([read_image(p) for p in SAMPLES])


@pytest.mark.parametrize("amp", [False, True])
def test_bundled_pipeline_on_cuda_finds_the_cpu_heads(cpu_results: list[ImageResult], amp: bool) -> None:
    # Heads near the score threshold may flip with TF32 / fp16 rounding; nearly all must match.
    pipe = HeadwearPipeline.from_pretrained("cuda", amp=amp, batch_size=8)
    got = pipe([read_image(p) for p in SAMPLES])
    found, same_label = _agreement(cpu_results, got)
    assert found >= 0.9 and same_label >= 0.9, (found, same_label)


def test_cuda_batches_equal_one_by_one() -> None:
    images = [read_image(SAMPLES[0])] * 3
    pipe = HeadwearPipeline.from_pretrained("cuda", amp=False, batch_size=3)
    together = pipe(images)
    pipe.batch_size = 1
    alone = pipe(images)
    found, same_label = _agreement(alone, together)
    assert found == 1.0 and same_label == 1.0


def test_batched_pasting_on_cuda_matches_torchvision_on_cpu() -> None:
    gen = torch.Generator().manual_seed(0)
    masks = torch.rand(20, 1, 28, 28, generator=gen)
    corner = torch.rand(20, 2, generator=gen) * torch.tensor([600.0, 400.0])
    boxes = torch.cat([corner, corner + 5 + torch.rand(20, 2, generator=gen) * 40], dim=1)
    want = paste_masks_in_image(masks, boxes, (480, 640))
    got = paste_masks(masks.cuda(), boxes.cuda(), (480, 640)).cpu()
    assert (got - want).abs().max() < 1e-4


@pytest.mark.parametrize("fill", ["constant", "blur", "none"])
def test_crops_on_cuda_match_the_cpu(fill: str) -> None:
    rng = np.random.default_rng(0)
    images = torch.from_numpy(rng.integers(0, 256, (2, 3, 120, 160), dtype=np.uint8))
    boxes = torch.tensor([[10.0, 20.0, 50.0, 70.0], [-5.0, 90.0, 30.0, 130.0], [100.0, 0.0, 170.0, 60.0]])
    masks = torch.zeros(3, 120, 160, dtype=torch.bool)
    for m, (x0, y0, x1, y1) in zip(masks, boxes.round().long().clamp_min(0).tolist()):
        m[y0:y1, x0:x1] = True
    index = torch.tensor([0, 1, 1])
    want = crop_heads(images, masks, boxes, index, size=48, fill=fill)
    got = crop_heads(images.cuda(), masks.cuda(), boxes.cuda(), index.cuda(), size=48, fill=fill).cpu()
    assert (got - want).abs().max() < 1e-4
