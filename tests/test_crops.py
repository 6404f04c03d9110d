"""Head crops: geometry, fill modes, edges, errors, and NumPy vs batched torch parity."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from headseg.crops import _crop_squares, _masked_images, _masked_windows, crop_head, crop_heads, crop_square

GREY = 114


def smooth_image(rng: np.random.Generator, h: int, w: int, cell: int = 8) -> np.ndarray:
    """Random colours on a coarse grid, bicubic-upsampled: detail a few pixels wide, like a photo."""
    coarse = rng.uniform(0, 255, (h // cell + 2, w // cell + 2, 3)).astype(np.float32)
    return np.clip(cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC), 0, 255).astype(np.uint8)


def ellipse_mask(h: int, w: int, box: tuple[float, float, float, float]) -> np.ndarray:
    """Ellipse inscribed in ``box`` (clipped to the image), at least one pixel."""
    x0, y0, x1, y1 = box
    mask = np.zeros((h, w), np.uint8)
    centre = (int(np.clip((x0 + x1) / 2, 0, w - 1)), int(np.clip((y0 + y1) / 2, 0, h - 1)))
    cv2.ellipse(mask, centre, (int((x1 - x0) / 2), int((y1 - y0) / 2)), 0, 0, 360, 1, -1)
    mask[centre[1], centre[0]] = 1
    return mask.astype(bool)


def batched(images: np.ndarray, masks: np.ndarray | None, boxes, index, **kwargs) -> np.ndarray:
    """crop_heads on NumPy inputs; returns (N, size, size, 3) float in 0..255 for comparison."""
    out = crop_heads(torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2),
                     None if masks is None else torch.from_numpy(masks),
                     torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4), torch.tensor(index), **kwargs)
    assert out.dtype == torch.float32 and 0.0 <= float(out.min()) and float(out.max()) <= 1.0
    return out.permute(0, 2, 3, 1).numpy() * 255.0


@pytest.fixture(autouse=True)
def one_thread():
    """These tensors are tiny: a thread pool only adds barriers, which cost 10x on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def scene() -> tuple[np.ndarray, np.ndarray]:
    """An 80 x 100 image with a 2-pixel checkerboard (detail a blur must remove) and an elliptic head."""
    rng = np.random.default_rng(0)
    image = smooth_image(rng, 80, 100)
    image[::2, ::2] //= 2
    return image, ellipse_mask(80, 100, (30, 20, 62, 52))


# ----------------------------------------------------------------------------- geometry


coords, extents = st.floats(-50, 150), st.floats(0.01, 120)
boxes_st = st.tuples(coords, coords, extents, extents).map(lambda b: (b[0], b[1], b[0] + b[2], b[1] + b[3]))


@given(box=boxes_st, padding=st.floats(0, 2))
def test_crop_square_is_a_centred_square_holding_the_box(box, padding):
    x0, y0, x1, y1 = crop_square(box, padding)
    side = max(box[2] - box[0], box[3] - box[1]) * (1 + 2 * padding)
    assert x1 - x0 == pytest.approx(y1 - y0)
    assert x1 - x0 == pytest.approx(max(side, 1.0))
    assert (x0 + x1) / 2 == pytest.approx((box[0] + box[2]) / 2)
    assert (y0 + y1) / 2 == pytest.approx((box[1] + box[3]) / 2)
    assert x0 <= box[0] + 1e-9 and y0 <= box[1] + 1e-9 and x1 >= box[2] - 1e-9 and y1 >= box[3] - 1e-9


@given(boxes=st.lists(boxes_st, min_size=1, max_size=5), padding=st.floats(0, 1))
def test_batched_squares_match_crop_square(boxes, padding):
    got = _crop_squares(torch.tensor(boxes, dtype=torch.float64), padding)
    assert torch.allclose(got, torch.tensor([crop_square(b, padding) for b in boxes], dtype=torch.float64))


def test_tall_box_gives_a_square_crop_with_the_aspect_kept():
    image = np.zeros((100, 100, 3), np.uint8)
    image[30:70, 45:55] = 255  # the "head" fills a 10 x 40 box
    crop = crop_head(image, None, (45, 30, 55, 70), size=80, padding=0, fill="none")
    assert crop.shape == (80, 80, 3)
    bright = crop[..., 0] > 127
    rows, cols = np.nonzero(bright)
    assert rows.max() - rows.min() + 1 == 80  # 40 px tall -> the whole crop height
    assert cols.max() - cols.min() + 1 == 20  # 10 px wide -> a quarter of it, not stretched
    assert cols.min() == 30  # and centred


# ----------------------------------------------------------------------------- fill modes


def test_pixels_inside_the_mask_are_copied_exactly(scene):
    image, mask = scene
    # Box side 32 == size and integer corners: each output pixel centre is an image pixel centre.
    crop = crop_head(image, mask, (30, 20, 62, 52), size=32, padding=0)
    inside = mask[20:52, 30:62]
    assert np.array_equal(crop[inside], image[20:52, 30:62][inside])
    assert (crop[~inside] == GREY).all()
    assert inside.any() and (~inside).any()


def test_fill_modes_differ_outside_the_mask_only(scene):
    image, mask = scene
    crops = {fill: crop_head(image, mask, (30, 20, 62, 52), size=32, padding=0, fill=fill, fill_value=7)
             for fill in ("constant", "blur", "none")}
    window, inside = image[20:52, 30:62], mask[20:52, 30:62]
    for crop in crops.values():
        assert np.array_equal(crop[inside], window[inside])
    assert np.array_equal(crops["none"], window)
    assert (crops["constant"][~inside] == 7).all()
    blur_outside = crops["blur"][~inside].astype(int)
    assert np.abs(blur_outside - window[~inside]).mean() > 10  # the checkerboard detail is gone
    assert np.abs(blur_outside - 7).mean() > 30  # but it is the scene's colour, not the fill


def test_blur_keeps_the_colour_of_the_surroundings():
    image = np.zeros((60, 60, 3), np.uint8)
    image[:, :30] = (200, 0, 0)  # left half red, right half blue (channel order is kept as given)
    image[:, 30:] = (0, 0, 200)
    mask = np.zeros((60, 60), bool)
    mask[25:35, 25:35] = True
    crop = crop_head(image, mask, (20, 20, 40, 40), size=40, padding=0.3, fill="blur").astype(int)
    assert crop[20, 1, 0] > 120 and crop[20, 1, 2] < 80  # far left: still red
    assert crop[20, -2, 2] > 120 and crop[20, -2, 0] < 80  # far right: still blue


def test_channel_order_is_kept_and_strided_views_work(scene):
    image, mask = scene
    rgb = crop_head(image, mask, (30, 20, 62, 52), size=24, fill="blur")
    bgr = crop_head(image[..., ::-1], mask, (30, 20, 62, 52), size=24, fill="blur")
    assert np.array_equal(rgb[..., ::-1], bgr)


# ----------------------------------------------------------------------------- edges


@pytest.mark.parametrize("box", [(0, 0, 20, 20), (80, 60, 100, 80), (-15, -10, 12, 14), (85, 70, 130, 110)])
def test_boxes_at_and_beyond_the_image_edge_fill_outside(box):
    rng = np.random.default_rng(1)
    image = smooth_image(rng, 80, 100)
    image[image == 201] = 200  # so that only fill reads 201
    mask = ellipse_mask(80, 100, box)
    for fill in ("constant", "blur", "none"):
        crop = crop_head(image, mask, box, size=40, padding=0, fill=fill, fill_value=201)
        x0, y0, x1, y1 = crop_square(box, 0)
        scale = (x1 - x0) / 40
        centres_x = x0 + (np.arange(40) + 0.5) * scale
        centres_y = y0 + (np.arange(40) + 0.5) * scale
        # Output pixels whose sample lies a full pixel outside the image are pure fill.
        outside = ((centres_y[:, None] < -0.5) | (centres_y[:, None] > 80.5)
                   | (centres_x[None, :] < -0.5) | (centres_x[None, :] > 100.5))
        assert (crop[outside] == 201).all()
        assert (crop[~outside] != 201).any()
        torch_crop = batched(image[None], mask[None], [box], [0], size=40, padding=0, fill=fill,
                             fill_value=201)
        assert np.abs(torch_crop[0][outside] - 201).max(initial=0) < 1e-3
        assert np.abs(torch_crop[0] - crop).mean() < 3


def test_a_square_wholly_outside_the_image_is_all_fill(scene):
    image, mask = scene
    crop = crop_head(image, mask, (200, 200, 230, 240), size=16)
    assert (crop == GREY).all()


def test_one_pixel_mask(scene):
    image, _ = scene
    mask = np.zeros(image.shape[:2], bool)
    mask[40, 50] = True
    crop = crop_head(image, mask, (48, 38, 53, 43), size=5, padding=0)
    expected = np.full((5, 5, 3), GREY, np.uint8)
    expected[2, 2] = image[40, 50]
    assert np.array_equal(crop, expected)
    # A one-pixel box too, blown up to 16 x 16: the middle of the crop is that pixel.
    tiny = crop_head(image, mask, (50, 40, 51, 41), size=16, padding=0)
    assert np.abs(tiny[7:9, 7:9].astype(int) - image[40, 50]).max() <= 20
    torch_tiny = batched(image[None], mask[None], [(50, 40, 51, 41)], [0], size=16, padding=0)
    assert np.abs(torch_tiny[0] - tiny).mean() < 3


# ----------------------------------------------------------------------------- errors


def test_empty_mask_is_refused_unless_fill_is_none(scene):
    image, _ = scene
    empty = np.zeros(image.shape[:2], bool)
    with pytest.raises(ValueError, match="empty mask has nothing to classify"):
        crop_head(image, empty, (30, 20, 62, 52))
    crop_head(image, empty, (30, 20, 62, 52), fill="none")
    with pytest.raises(ValueError, match=r"masks \[1\] are empty: an empty mask has nothing to classify"):
        batched(image[None], np.stack([ellipse_mask(80, 100, (30, 20, 62, 52)), empty]),
                [(30, 20, 62, 52)] * 2, [0, 0])


@pytest.mark.parametrize("box", [(10, 10, 10, 30), (10, 30, 40, 30), (40, 10, 10, 30),
                                 (0, 0, float("nan"), 5)])
def test_degenerate_box_is_refused(scene, box):
    image, mask = scene
    with pytest.raises(ValueError, match="box_xyxy=.*expected"):
        crop_head(image, mask, box)
    with pytest.raises(ValueError, match=r"boxes \[0\] are degenerate.*x1 > x0"):
        batched(image[None], mask[None], [box], [0])


@pytest.mark.parametrize(("change", "error", "match"), [
    (lambda im, m: (im.astype(np.float32), m), TypeError, "image has dtype float32; expected uint8"),
    (lambda im, m: (im[..., 0], m), ValueError, r"image has shape \(80, 100\); expected \(H, W, 3\)"),
    (lambda im, m: (im.transpose(2, 0, 1), m), ValueError, r"shape \(3, 80, 100\); expected \(H, W, 3\)"),
    (lambda im, m: (im, m.astype(np.float32)), TypeError, "mask has dtype float32.*mask > 0.5"),
    (lambda im, m: (im, m[:-1]), ValueError, r"mask has shape \(79, 100\) but the image is \(80, 100\)"),
    (lambda im, m: (im, None), ValueError, "mask is None with fill='constant'"),
    (lambda im, m: (torch.zeros(80, 100, 3), m), TypeError, "image is a Tensor; expected"),
])
def test_bad_arrays_are_refused_with_the_fix(scene, change, error, match):
    image, mask = change(*scene)
    with pytest.raises(error, match=match):
        crop_head(image, mask, (30, 20, 62, 52))


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"fill": "mean"}, "fill='mean' is not one of"),
    ({"size": 0}, "size=0; expected an integer >= 1"),
    ({"padding": -0.1}, "padding=-0.1; expected a finite number >= 0"),
    ({"fill_value": 300}, "fill_value=300; expected an integer grey level in 0..255"),
])
def test_bad_options_are_refused(scene, kwargs, match):
    image, mask = scene
    with pytest.raises(ValueError, match=match):
        crop_head(image, mask, (30, 20, 62, 52), **kwargs)
    with pytest.raises(ValueError, match=match):
        batched(image[None], mask[None], [(30, 20, 62, 52)], [0], **kwargs)


def test_bad_batches_are_refused(scene):
    image, mask = scene
    images = torch.from_numpy(image).permute(2, 0, 1)[None]
    masks, boxes, index = torch.from_numpy(mask)[None], torch.tensor([[30.0, 20, 62, 52]]), torch.tensor([0])
    with pytest.raises(ValueError, match=r"maximum 2\d\d; expected \[0, 1\]"):
        crop_heads(images.float(), masks, boxes, index)
    with pytest.raises(ValueError, match=r"image_index spans 1..1 but there are 1 images"):
        crop_heads(images, masks, boxes, torch.tensor([1]))
    with pytest.raises(ValueError, match=r"masks has shape \(1, 1, 80, 100\); expected \(N, H, W\)"):
        crop_heads(images, masks[:, None], boxes, index)
    with pytest.raises(ValueError, match=r"images has shape \(3, 80, 100\); expected \(B, 3, H, W\)"):
        crop_heads(images[0], masks, boxes, index)
    with pytest.raises(TypeError, match="images has dtype torch.int32"):
        crop_heads(images.int(), masks, boxes, index)
    with pytest.raises(ValueError, match=r"image_index has shape \(1,\) and dtype torch.float32"):
        crop_heads(images, masks, boxes, index.float())


# ----------------------------------------------------------------------------- batched


def test_no_heads_gives_an_empty_batch(scene):
    image, _ = scene
    images = torch.from_numpy(image).permute(2, 0, 1)[None]
    for fill, masks in (("constant", torch.zeros(0, 80, 100, dtype=torch.bool)), ("none", None)):
        out = crop_heads(images, masks, torch.zeros(0, 4), torch.zeros(0, dtype=torch.long), size=24,
                         fill=fill)
        assert out.shape == (0, 3, 24, 24) and out.dtype == torch.float32


def test_uint8_and_float_images_agree_and_batching_changes_nothing():
    rng = np.random.default_rng(2)
    images = np.stack([smooth_image(rng, 60, 70), smooth_image(rng, 60, 70)])
    boxes = [(10, 10, 30, 40), (40, 5, 66, 25), (-5, 30, 20, 62), (20, 20, 50, 50)]
    index = [1, 0, 1, 0]
    masks = np.stack([ellipse_mask(60, 70, b) for b in boxes])
    for fill in ("constant", "blur", "none"):
        together = batched(images, masks, boxes, index, size=32, fill=fill)
        as_float = crop_heads(torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255,
                              torch.from_numpy(masks), torch.tensor(boxes, dtype=torch.float32),
                              torch.tensor(index), size=32, fill=fill)
        assert np.abs(as_float.permute(0, 2, 3, 1).numpy() * 255 - together).max() < 1e-3
        for k in range(len(boxes)):
            alone = batched(images[index[k]][None], masks[k][None], [boxes[k]], [0], size=32, fill=fill)
            assert np.abs(alone[0] - together[k]).max() < 1e-3


# Parity tolerances, measured on 1,500 random heads of this kind (output 16..64 px, squares up
# to 2x the output, heads at and beyond image edges, detail about 8 px wide like a photo):
# - the mean stays under ~2 grey levels: on smooth content both are the same bilinear resize;
# - the 99th percentile reaches ~22 (constant, blur) and ~29 (none). It lies on hard steps, the
#   mask outline and the image border, where grey 114 meets pixels up to 255. roi_align averages
#   2 x 2 samples a quarter of an output pixel either side of the warp's single sample, so on a
#   step the two differ by up to half the step, and in a 16 px crop over 1% of pixels are steps.
# On pixel noise the 2 x 2 averaging alone would differ by tens of levels everywhere, and beyond
# 2x shrinking both alias (1 vs 4 samples per pixel), hence smooth images and squares <= 2x.
MEAN_TOL, P99_TOL = 3.0, 35.0


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), size=st.integers(16, 64), padding=st.floats(0, 0.5),
       heads=st.integers(1, 4))
def test_batched_matches_numpy_reference(seed, size, padding, heads):
    rng = np.random.default_rng(seed)
    h, w = (int(v) for v in rng.integers(24, 96, 2))
    images = np.stack([smooth_image(rng, h, w), smooth_image(rng, h, w)])
    longest = 2 * size / (1 + 2 * padding)  # square side <= 2 x output
    boxes, index = [], []
    for k in range(heads):
        bw, bh = rng.uniform(1, longest, 2)
        x0, y0 = rng.uniform(-bw / 2, w - bw / 2), rng.uniform(-bh / 2, h - bh / 2)
        boxes.append((x0, y0, x0 + bw, y0 + bh))
        index.append(k % 2)
    masks = np.stack([ellipse_mask(h, w, b) for b in boxes])
    for fill in ("constant", "blur", "none"):
        got = batched(images, masks, boxes, index, size=size, padding=padding, fill=fill)
        for k in range(heads):
            want = crop_head(images[index[k]], masks[k], boxes[k], size=size, padding=padding, fill=fill)
            diff = np.abs(got[k] - want)
            assert diff.mean() < MEAN_TOL, (fill, k, diff.mean())
            assert np.percentile(diff, 99) < P99_TOL, (fill, k, np.percentile(diff, 99))


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), size=st.integers(8, 48), heads=st.integers(1, 6),
       budget=st.sampled_from([1, 2**20, 2**28]))
def test_gpu_blend_matches_cpu_windows(seed, size, heads, budget):
    """The loop-free form the GPU takes gives the CPU windows' values, in chunks of any size."""
    rng = np.random.default_rng(seed)
    h, w = (int(v) for v in rng.integers(8, 80, 2))
    images = torch.from_numpy(np.stack([smooth_image(rng, h, w), smooth_image(rng, h, w)])).permute(0, 3, 1, 2)
    source = torch.nn.functional.pad(torch.cat([images.float() / 255, torch.ones(2, 1, h, w)], dim=1),
                                     (1, 1, 1, 1))
    corner = rng.uniform(-0.3, 0.9, (heads, 2)) * (w, h)
    boxes = np.concatenate([corner, corner + rng.uniform(1, 0.7 * max(h, w), (heads, 2))], axis=1)
    masks = torch.from_numpy(np.stack([ellipse_mask(h, w, b) for b in boxes]))
    squares = _crop_squares(torch.tensor(boxes, dtype=torch.float32), 0.15)
    index = torch.from_numpy(rng.integers(0, 2, heads))
    windows = _masked_windows(source, masks, squares, index, size)
    whole = _masked_images(source, masks, squares, index, size, budget_bytes=budget)
    assert (windows - whole).abs().max() < 1e-5
