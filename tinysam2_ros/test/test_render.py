"""Track colours, label image, cropped masks and the overlay drawing."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from tinysam2_ros.ros.render import MASK_ALPHA, crop_mask, draw_overlay, label_image, track_color

H, W = 120, 160


def rect_mask(x1, y1, x2, y2, h=H, w=W) -> np.ndarray:
    m = np.zeros((h, w), bool)
    m[y1:y2, x1:x2] = True
    return m


@pytest.fixture
def rgb() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, size=(H, W, 3), dtype=np.uint8)


# ------------------------------------------------------------------------- colours
def test_track_color_deterministic_and_distinct():
    cols = [track_color(i) for i in range(1, 21)]
    assert cols == [track_color(i) for i in range(1, 21)]
    for c in cols:
        assert isinstance(c, tuple) and len(c) == 3
        assert all(isinstance(v, int) and 0 <= v <= 255 for v in c)
    assert len(set(cols)) == len(cols)
    dist = min(np.linalg.norm(np.subtract(a, b)) for a, b in itertools.combinations(cols, 2))
    assert dist > 30
    assert track_color(123456) == track_color(123456)


# ------------------------------------------------------------------------- label image
def logits_of(mask: np.ndarray, inside: float = 4.0) -> torch.Tensor:
    """Full-resolution logits: ``inside`` on the mask, -4 elsewhere."""
    return torch.from_numpy(np.where(mask, inside, -4.0).astype(np.float32))[None]


def test_label_image_overlap_highest_logit_wins():
    logits = {3: logits_of(rect_mask(0, 0, 50, 50), 6.0), 7: logits_of(rect_mask(40, 40, 100, 100), 2.0),
              1: logits_of(rect_mask(45, 45, 48, 48), 9.0)}
    lab = label_image(logits, (H, W, 3))
    assert lab.dtype == np.uint16 and lab.shape == (H, W)
    assert lab[10, 10] == 3
    assert lab[42, 42] == 3  # overlap of 3 (logit 6) and 7 (logit 2): 3 wins
    assert lab[46, 46] == 1  # 1 has the highest logit of the three
    assert lab[90, 90] == 7
    assert lab[110, 150] == 0 and lab[0, 100] == 0
    assert set(np.unique(lab)) == {0, 1, 3, 7}
    big = label_image({40000: logits_of(rect_mask(0, 0, 5, 5))}, (H, W))
    assert big[0, 0] == 40000


def test_label_image_empty_and_errors():
    lab = label_image({}, (H, W))
    assert lab.shape == (H, W) and not lab.any()
    with pytest.raises(ValueError):
        label_image({0: logits_of(rect_mask(0, 0, 5, 5))}, (H, W))
    with pytest.raises(ValueError):
        label_image({70000: logits_of(rect_mask(0, 0, 5, 5))}, (H, W))


# ------------------------------------------------------------------------- crop
def test_crop_mask_box():
    mask = rect_mask(30, 20, 60, 50)
    crop, x, y = crop_mask(mask, (25, 15, 70, 55))
    assert (x, y) == (25, 15) and crop.shape == (40, 45) and crop.dtype == np.uint8
    assert crop.flags.c_contiguous
    assert set(np.unique(crop)) == {0, 255}
    np.testing.assert_array_equal(crop == 255, mask[15:55, 25:70])
    # tight box (exclusive max) gives an all-object crop
    crop, x, y = crop_mask(mask, (30, 20, 60, 50))
    assert (x, y) == (30, 20) and crop.shape == (30, 30) and (crop == 255).all()


def test_crop_mask_clipped_and_float_box():
    mask = rect_mask(0, 0, 10, 10)
    crop, x, y = crop_mask(mask, (-5, -3, 8, 6))
    assert (x, y) == (0, 0) and crop.shape == (6, 8) and (crop == 255).all()
    crop, x, y = crop_mask(mask, (W - 4, H - 2, W + 10, H + 10))
    assert (x, y) == (W - 4, H - 2) and crop.shape == (2, 4) and not crop.any()
    crop, x, y = crop_mask(mask, (2.4, 3.6, 5.2, 7.0))  # floor the min, ceil the max
    assert (x, y) == (2, 3) and crop.shape == (4, 4)


@pytest.mark.parametrize("box", [None, (10, 10, 10, 20), (10, 20, 30, 20), (50, 50, 40, 60), (W + 5, 0, W + 9, 5)])
def test_crop_mask_empty_box(box):
    crop, x, y = crop_mask(rect_mask(0, 0, W, H), box)
    assert crop.shape == (0, 0) and crop.dtype == np.uint8
    assert 0 <= x <= W and 0 <= y <= H


# ------------------------------------------------------------------------- overlay
def test_overlay_basic(rgb):
    before = rgb.copy()
    mask = rect_mask(40, 50, 80, 90)
    box = (40, 50, 80, 90)
    out = draw_overlay(rgb, [(5, "cup", "tracked", mask, box)])
    np.testing.assert_array_equal(rgb, before)  # input untouched
    assert out.dtype == np.uint8 and out.shape == (H, W, 3) and out.flags.c_contiguous
    bgr = rgb[..., ::-1].astype(np.int16)
    color = np.array(track_color(5), np.int16)

    # mask interior (away from the box outline and tag): 50 % blend with the track colour
    inner = rect_mask(43, 53, 77, 87)
    expected = bgr[inner] * (1 - MASK_ALPHA) + color * MASK_ALPHA
    assert np.abs(out[inner].astype(np.int16) - expected).max() <= 1
    assert (out[inner] != rgb[..., ::-1][inner]).any()

    # box outline drawn in the track colour
    np.testing.assert_array_equal(out[70, 40], color)
    np.testing.assert_array_equal(out[89, 60], color)

    # the tag sits above the box; everything outside box (+1 px for the 2 px line) and tag is unchanged
    touched = np.zeros((H, W), bool)
    touched[49:91, 39:81] = True
    assert (out[:49, 39:81] != rgb[:49, 39:81, ::-1]).any()  # tag text above the box
    touched[:50, 39:] = True  # generous tag region
    np.testing.assert_array_equal(out[~touched], rgb[..., ::-1][~touched])


def test_overlay_no_tracks_is_bgr_copy(rgb):
    out = draw_overlay(rgb, [])
    np.testing.assert_array_equal(out, rgb[..., ::-1])
    assert not np.shares_memory(out, rgb)


def test_overlay_occluded_track_dashed_box_no_fill(rgb):
    empty = np.zeros((H, W), bool)
    box = (30, 60, 110, 110)
    out = draw_overlay(rgb, [(2, "person", "occluded", empty, box)])
    bgr = rgb[..., ::-1]
    color = np.array(track_color(2), np.uint8)
    # interior untouched (no fill), dashed outline: some outline pixels coloured, some not
    np.testing.assert_array_equal(out[62:108, 32:108], bgr[62:108, 32:108])
    top_edge = out[60, 30:110]
    coloured = (top_edge == color).all(axis=1)
    assert coloured.any() and not coloured.all()
    # thin (1 px) box: the row just inside/outside the edge is not part of it
    np.testing.assert_array_equal(out[61, 40:100], bgr[61, 40:100])
    np.testing.assert_array_equal(out[111:, :], bgr[111:, :])
    assert (out[:60] != bgr[:60]).any()  # tag with the state


def test_overlay_mask_without_box_and_lost_without_anything(rgb):
    mask = rect_mask(100, 10, 130, 40)
    out = draw_overlay(rgb, [(1, "", "tracked", mask, None), (9, "gone", "lost", np.zeros((H, W), bool), None)])
    bgr = rgb[..., ::-1]
    assert (out[20:30, 105:125] != bgr[20:30, 105:125]).any()
    # the lost track with no box draws nothing: far away region is untouched
    np.testing.assert_array_equal(out[60:, :], bgr[60:, :])
    # masks of non-tracked states are not filled even when given
    out2 = draw_overlay(rgb, [(1, "x", "lost", mask, None)])
    np.testing.assert_array_equal(out2[32:38, 102:128], bgr[32:38, 102:128])  # below the tag


def test_overlay_several_tracks_and_edge_boxes(rgb):
    tracks = [
        (1, "a", "tracked", rect_mask(0, 0, 20, 20), (0, 0, 20, 20)),  # at the image corner: tag inside
        (2, "b\u00e9", "tracked", rect_mask(W - 20, H - 20, W, H), (W - 20, H - 20, W + 5, H + 5)),  # clipped
        (3, None, "occluded", np.zeros((H, W), bool), (60, 60, 61, 61)),  # 1 px box
        (4, "c", "tracked", None, (70, 10, 90, 30)),  # no mask given at all
    ]
    out = draw_overlay(rgb, tracks)
    assert out.shape == (H, W, 3)
    np.testing.assert_array_equal(out[60, 60], np.array(track_color(3), np.uint8))


def test_overlay_bad_inputs(rgb):
    with pytest.raises(ValueError):
        draw_overlay(rgb[..., 0], [])
    with pytest.raises(ValueError):
        draw_overlay(rgb, [(1, "a", "tracked", np.zeros((H + 1, W), bool), None)])


def test_overlay_full_hd():
    rgb = np.zeros((1080, 1920, 3), np.uint8)
    masks = [(i, f"obj{i}", "tracked", rect_mask(100 * i, 100, 100 * i + 300, 700, 1080, 1920),
              (100 * i, 100, 100 * i + 300, 700)) for i in range(1, 6)]
    out = draw_overlay(rgb, masks)
    assert out.shape == (1080, 1920, 3)


def test_overlay_mask_dtype_and_layout_do_not_matter(rgb):
    mask = rect_mask(20, 30, 90, 100)
    ref = draw_overlay(rgb, [(4, "a", "tracked", mask, (20, 30, 90, 100))])
    for alt in (mask.astype(np.uint8) * 255, np.asfortranarray(mask), mask.T.copy().T):
        out = draw_overlay(rgb, [(4, "a", "tracked", alt, (20, 30, 90, 100))])
        np.testing.assert_array_equal(out, ref)


def test_overlay_overlapping_masks_both_blended(rgb):
    m1, m2 = rect_mask(10, 10, 60, 60), rect_mask(40, 40, 100, 100)
    out = draw_overlay(rgb, [(1, "a", "tracked", m1, None), (2, "b", "tracked", m2, None)])
    bgr = rgb[..., ::-1].astype(np.float64)
    c1, c2 = np.array(track_color(1), float), np.array(track_color(2), float)
    expected = (bgr[50, 50] * 0.5 + c1 * 0.5) * 0.5 + c2 * 0.5  # painted in the order given
    assert np.abs(out[50, 50] - expected).max() <= 1.5
