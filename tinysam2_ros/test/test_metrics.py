"""DAVIS-style evaluation: J and F metrics, DAVIS layout I/O, prompts from masks, toy data."""
from __future__ import annotations

import math
import time

import numpy as np
import pytest
from PIL import Image

from tinysam2_ros.evaluation.davis import (
    annotation_paths,
    davis_palette,
    first_annotations,
    list_sequences,
    load_annotation,
    load_frames,
    mask_to_box,
    mask_to_point,
    write_annotation,
)
from tinysam2_ros.evaluation.metrics import (
    boundary_f_measure,
    boundary_tolerance,
    disk,
    evaluate_sequence,
    j_and_f,
    region_similarity,
    seg2bmap,
    summarize,
)
from tinysam2_ros.evaluation.synth import SynthConfig, generate_sequence


def rect(shape=(40, 60), y0=10, y1=30, x0=10, x1=40) -> np.ndarray:
    m = np.zeros(shape, dtype=bool)
    m[y0:y1, x0:x1] = True
    return m


# ---------------------------------------------------------------------------- J


def test_j_identical_disjoint_half():
    a = rect()
    assert region_similarity(a, a) == 1.0
    assert region_similarity(a, rect(x0=45, x1=55)) == 0.0
    left = rect(x0=10, x1=25)  # exactly half of `a`
    assert region_similarity(left, a) == pytest.approx(0.5)
    # Two half-overlapping equal squares: IoU = 1/3.
    assert region_similarity(rect(x0=0, x1=20), rect(x0=10, x1=30)) == pytest.approx(1 / 3)


def test_j_empty_cases_and_void():
    z = np.zeros((10, 10), dtype=bool)
    assert region_similarity(z, z) == 1.0
    assert region_similarity(z, rect((10, 10), 2, 5, 2, 5)) == 0.0
    assert region_similarity(rect((10, 10), 2, 5, 2, 5), z) == 0.0
    # A wrong region under void does not count.
    gt = rect((10, 10), 0, 5, 0, 10)
    pred = rect((10, 10), 0, 10, 0, 10)
    void = rect((10, 10), 5, 10, 0, 10)
    assert region_similarity(pred, gt) == pytest.approx(0.5)
    assert region_similarity(pred, gt, void=void) == 1.0


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="pred is"):
        region_similarity(np.zeros((4, 5), bool), np.zeros((5, 4), bool))


# ---------------------------------------------------------------------------- F


def test_seg2bmap_matches_davis_rule():
    m = rect((8, 8), 2, 5, 2, 6)  # rows 2..4, cols 2..5
    b = seg2bmap(m)
    # Inside pixels that differ from a right/bottom/bottom-right neighbour, plus the
    # background pixels just above/left of the object (they differ from theirs).
    expected = np.zeros((8, 8), bool)
    expected[1, 1:6] = True  # row above: its bottom or bottom-right neighbour is inside
    expected[1:5, 1] = True  # column to the left
    expected[4, 2:6] = True  # last object row
    expected[2:5, 5] = True  # last object column
    assert np.array_equal(b, expected)
    # A mask touching the image border has no contour along the border.
    full = np.ones((5, 5), bool)
    assert not seg2bmap(full).any()


def test_tolerance_formula_davis_480p():
    assert boundary_tolerance((480, 854)) == 8 == math.ceil(0.008 * math.hypot(480, 854))
    assert boundary_tolerance((480, 854), bound_th=3) == 3
    # The DAVIS (scikit-image) disk, not OpenCV's fatter MORPH_ELLIPSE.
    assert disk(8).sum() == 197 and disk(1).sum() == 5 and disk(0).sum() == 1


def test_f_identical_shifted_far():
    a = rect((60, 80), 10, 40, 10, 50)
    assert boundary_f_measure(a, a) == 1.0
    shifted = np.roll(a, 1, axis=1)
    assert boundary_f_measure(shifted, a, bound_th=2) == 1.0
    assert boundary_f_measure(shifted, a, bound_th=1) == 1.0
    assert boundary_f_measure(np.roll(a, 1, axis=0), a, bound_th=2) == 1.0
    far = np.roll(a, (15, 20), axis=(0, 1))  # contours only meet where the edges cross
    f_far = boundary_f_measure(far, a, bound_th=2)
    assert f_far < 0.1
    disjoint = rect((60, 80), 45, 55, 60, 75)
    assert boundary_f_measure(disjoint, a, bound_th=2) == 0.0
    # Partial credit in between, and symmetry of F.
    f_mid = boundary_f_measure(np.roll(a, 4, axis=1), a, bound_th=2)
    assert f_far < f_mid < 1.0
    assert f_mid == pytest.approx(boundary_f_measure(a, np.roll(a, 4, axis=1), bound_th=2))


def test_f_empty_cases():
    z = np.zeros((20, 20), bool)
    a = rect((20, 20), 5, 10, 5, 10)
    assert boundary_f_measure(z, z) == 1.0
    assert boundary_f_measure(a, z) == 0.0
    assert boundary_f_measure(z, a) == 0.0


def test_f_ignores_void():
    gt = rect((40, 40), 10, 30, 10, 30)
    pred = gt.copy()
    pred[30:38, 10:30] = True  # extra blob below the object
    void = np.zeros_like(gt)
    void[30:40, :] = True
    assert boundary_f_measure(pred, gt, bound_th=1) < 1.0
    assert boundary_f_measure(pred, gt, bound_th=1, void=void) == 1.0


# ---------------------------------------------------------------------- J and F


def test_j_and_f_frame_rule():
    gt = [rect() for _ in range(5)]
    pred = [np.zeros_like(gt[0])] + [g.copy() for g in gt[1:4]] + [np.zeros_like(gt[0])]
    # Frames 0 (prompt) and 4 (last) are wrong; the DAVIS 2017 rule skips both.
    assert j_and_f(pred, gt) == {"J": 1.0, "F": 1.0, "JF": 1.0}
    r = j_and_f(pred, gt, skip_last=False)
    assert r["J"] == pytest.approx(3 / 4) and r["F"] == pytest.approx(3 / 4)
    r = j_and_f(pred, gt, skip_first=False, skip_last=False)
    assert r["J"] == pytest.approx(3 / 5) and r["JF"] == pytest.approx((r["J"] + r["F"]) / 2)
    assert all(math.isnan(v) for v in j_and_f(gt[:2], gt[:2]).values())
    with pytest.raises(ValueError):
        j_and_f(pred[:3], gt)


def test_evaluate_sequence_and_summary():
    gt = np.zeros((4, 20, 20), np.uint8)
    gt[:, 2:8, 2:8] = 1
    gt[:, 10:18, 10:18] = 2
    gt[:, 0, :] = 255  # void row
    pred = gt.copy()
    pred[pred == 255] = 0
    pred[2][pred[2] == 2] = 0  # object 2 lost in frame 2
    res = evaluate_sequence(list(pred), list(gt))
    assert set(res) == {1, 2}
    assert res[1]["JF"] == 1.0
    assert res[2]["J"] == pytest.approx(0.5) and res[2]["F"] == pytest.approx(0.5)
    s = summarize(res.values())
    assert s["objects"] == 2 and s["J"] == pytest.approx(0.75) and s["JF"] == pytest.approx(0.75)


# ------------------------------------------------------------------ DAVIS layout


def test_palette_is_the_voc_colour_map():
    pal = davis_palette().reshape(256, 3)
    assert pal[0].tolist() == [0, 0, 0]
    assert pal[1].tolist() == [128, 0, 0]
    assert pal[2].tolist() == [0, 128, 0]
    assert pal[3].tolist() == [128, 128, 0]
    assert pal[5].tolist() == [128, 0, 128]
    assert pal[255].tolist() == [224, 224, 192]
    assert len({tuple(c) for c in pal.tolist()}) == 256


def test_annotation_round_trip(tmp_path):
    ids = np.zeros((12, 16), np.uint8)
    ids[1:4, 1:5] = 1
    ids[5:9, 2:7] = 2
    ids[9:12, 10:16] = 5
    ids[0, :] = 255
    p = write_annotation(tmp_path / "Annotations" / "seq" / "00000.png", ids)
    with Image.open(p) as im:
        assert im.mode == "P"
        assert np.asarray(im.getpalette()[:9]).tolist() == [0, 0, 0, 128, 0, 0, 0, 128, 0]
    back = load_annotation(p)
    assert back.dtype == np.uint8 and np.array_equal(back, ids)
    # An annotation re-saved as RGB by an editor maps back through the palette.
    with Image.open(p) as im:
        im.convert("RGB").save(tmp_path / "rgb.png")
    assert np.array_equal(load_annotation(tmp_path / "rgb.png"), ids)
    Image.fromarray(np.full((4, 4, 3), 7, np.uint8)).save(tmp_path / "bad.png")
    with pytest.raises(ValueError, match="not a DAVIS palette colour"):
        load_annotation(tmp_path / "bad.png")


def synth(root, name, frames=6, size=(96, 128), objects=2, seed=0):
    return generate_sequence(root, name, SynthConfig(num_frames=frames, size=size, num_objects=objects, seed=seed))


def test_davis_layout_and_first_annotations(tmp_path):
    seq = synth(tmp_path, "toy")
    late = synth(tmp_path, "late", frames=5, objects=3, seed=3)
    for t, p in enumerate(late.annotation_paths[:4]):  # object 2 enters on frame 2, object 3 on frame 4
        ids = load_annotation(p)
        ids[(ids == 2) & (t < 2) | (ids == 3)] = 0
        write_annotation(p, ids)
    assert list_sequences(tmp_path) == ["late", "toy"]

    frames = load_frames(tmp_path, "toy")
    assert [p.name for p in frames] == [f"{i:05d}.jpg" for i in range(6)]
    with Image.open(frames[0]) as im:
        assert im.size == (128, 96) and im.mode == "RGB"
    assert list(annotation_paths(tmp_path, "toy")) == list(range(6))
    first = first_annotations(tmp_path, "toy")
    assert list(first) == seq.object_ids == [1, 2]
    ids0 = load_annotation(seq.annotation_paths[0])
    for oid, (t, mask) in first.items():
        assert t == 0 and mask.dtype == bool and mask.shape == (96, 128)
        assert np.array_equal(mask, ids0 == oid) and mask.sum() > 20
    assert {k: v[0] for k, v in first_annotations(tmp_path, "late").items()} == {1: 0, 2: 2, 3: 4}


def test_sparse_annotations_match_frames_by_name(tmp_path):
    synth(tmp_path, "s", frames=4, seed=1)
    for p in sorted((tmp_path / "Annotations" / "s").glob("*.png"))[:2]:
        p.unlink()
    assert list(annotation_paths(tmp_path, "s")) == [2, 3]
    assert all(t == 2 for t, _ in first_annotations(tmp_path, "s").values())


def test_official_davis_layout_reads_its_480p_level(tmp_path, capsys):
    """A DAVIS download (JPEGImages/480p/<seq>) evaluates as it unpacks."""
    from tinysam2_ros.evaluation.run_eval import run_eval

    synth(tmp_path, "480p/bear", frames=4, seed=1)
    synth(tmp_path, "Full-Resolution/bear", frames=2, size=(48, 64), seed=1)
    assert list_sequences(tmp_path) == ["bear"]
    assert len(load_frames(tmp_path, "bear")) == 4 and list(annotation_paths(tmp_path, "bear")) == [0, 1, 2, 3]
    assert len(load_frames(tmp_path, "bear", resolution="Full-Resolution")) == 2
    assert list_sequences(tmp_path, resolution="") == ["480p", "Full-Resolution"]
    out = run_eval(tmp_path, preset="tiny", log=lambda *a: None, random_weights=True)
    assert [r["sequence"] for r in out["sequences"]] == ["bear"] and out["sequences"][0]["frames"] == 4


def test_perfect_prediction_scores_one(tmp_path):
    seq = synth(tmp_path, "toy", objects=3, seed=2)
    ids = [load_annotation(p) for p in seq.annotation_paths]
    res = evaluate_sequence(ids, ids)
    assert set(res) == {1, 2, 3} and all(r["JF"] == 1.0 for r in res.values())


# ---------------------------------------------------------------- prompts, merge


def test_mask_to_box():
    m = np.zeros((20, 30), bool)
    m[3:8, 5:12] = True
    m[10, 20] = True
    assert mask_to_box(m) == (5.0, 3.0, 21.0, 11.0)
    with pytest.raises(ValueError):
        mask_to_box(np.zeros((4, 4), bool))


def test_mask_to_point_is_inside_and_central():
    m = rect((40, 60), 10, 31, 5, 26)  # 21x21 square, centre (15, 20)
    assert mask_to_point(m) == (15.0, 20.0)
    # A ring-like shape: the point must not fall into the hole.
    ring = rect((50, 50), 5, 45, 5, 45)
    ring[15:35, 15:35] = False
    x, y = mask_to_point(ring)
    assert ring[int(y), int(x)]
    # Object cut by the image border: the point stays off the border.
    edge = rect((30, 30), 0, 30, 0, 10)
    x, y = mask_to_point(edge)
    assert edge[int(y), int(x)] and 2 <= x <= 7 and 2 <= y <= 27
    assert mask_to_point(edge) == mask_to_point(edge.copy())  # deterministic
    with pytest.raises(ValueError):
        mask_to_point(np.zeros((4, 4), bool))


def test_mask_to_point_inside_toy_objects(tmp_path):
    synth(tmp_path, "toy", objects=4, seed=5)
    for _, mask in first_annotations(tmp_path, "toy").values():
        x, y = mask_to_point(mask)
        assert mask[int(y), int(x)]
        x1, y1, x2, y2 = mask_to_box(mask)
        assert x1 <= x < x2 and y1 <= y < y2


