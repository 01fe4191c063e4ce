"""3D from depth without ROS: exact truth from synthetic depth, erosion, invalid depth,
resolution mismatch, bad camera models, depth decoding and the pairing buffer."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from tinysam2_ros.evaluation.synth import SynthConfig, build_scene
from tinysam2_ros.evaluation.synth_depth import (
    BACKGROUND_M,
    camera_info,
    depth_to_mm,
    layer_depths,
    render_depth,
    scene_camera,
    truth_position,
)
from tinysam2_ros.geometry.depth3d import (
    QUALITY_FEW_POINTS,
    QUALITY_NONE,
    QUALITY_OK,
    CameraModel,
    Depth3DConfig,
    DepthError,
    decode_depth,
    decode_depth_raw,
    estimate_track,
    transform_estimate,
)
from tinysam2_ros.geometry.pairing import DepthBuffer

H, W = 120, 160


def plane_scene(z_obj=2.0, z_bg=5.0, box=(60, 40, 100, 80)):
    """A square object at z_obj in front of a wall at z_bg, ideal camera."""
    info = camera_info(H, W)
    cam = CameraModel(info["K"], W, H, info["D"], info["distortion_model"])
    depth = np.full((H, W), z_bg, np.float32)
    mask = np.zeros((H, W), bool)
    x1, y1, x2, y2 = box
    depth[y1:y2, x1:x2] = z_obj
    mask[y1:y2, x1:x2] = True
    ys, xs = np.nonzero(mask)
    truth = np.array([np.mean((xs - cam.K[0, 2]) / cam.fx * z_obj), np.mean((ys - cam.K[1, 2]) / cam.fy * z_obj), z_obj])
    return cam, depth, mask, truth


def test_exact_plane_position_and_extent():
    cam, depth, mask, truth = plane_scene()
    est = estimate_track(mask, depth, cam, Depth3DConfig(erode_px=0, extent_percentile=0.0))
    assert est.quality == QUALITY_OK
    np.testing.assert_allclose(est.position, truth, atol=0.5 * 2.0 / cam.fx)  # within half a pixel at 2 m
    # extent of 40 px at 2 m: 39 pixel steps between the outermost pixel centres
    np.testing.assert_allclose(est.size[:2], [39 * 2.0 / cam.fx, 39 * 2.0 / cam.fy], rtol=1e-5)
    assert est.size[2] == pytest.approx(0.0, abs=1e-6)
    assert est.valid_points == 1600


def test_border_bleed_needs_robust_estimate():
    """A mask 3 px too wide takes in the wall behind: the mean would be pulled back, the estimate is not."""
    cam, depth, mask, truth = plane_scene()
    fat = cv2.dilate(mask.view(np.uint8), np.ones((7, 7), np.uint8)).astype(bool)
    z = depth[fat]
    assert np.mean(z) - 2.0 > 0.5  # what a mean would do
    for erode in (0, 2):
        est = estimate_track(fat, depth, cam, Depth3DConfig(erode_px=erode))
        assert abs(est.position[2] - 2.0) < 1e-6
        assert np.linalg.norm(est.position - truth) < 0.01 * np.linalg.norm(truth)
        assert est.box_max[2] - est.box_min[2] < 1e-6  # the wall's points are gated out of the extent


def test_erosion_removes_border_pixels():
    cam, depth, mask, _ = plane_scene()
    n0 = estimate_track(mask, depth, cam, Depth3DConfig(erode_px=0)).sampled
    n2 = estimate_track(mask, depth, cam, Depth3DConfig(erode_px=2)).sampled
    assert n0 == 1600 and n2 == 36 * 36
    # a mask touching the image border is not eroded from that side (no background there)
    edge = np.zeros((H, W), bool)
    edge[0:20, 0:20] = True
    assert estimate_track(edge, depth, cam, Depth3DConfig(erode_px=2)).sampled == 18 * 18


def test_tiny_object_falls_back_to_whole_mask():
    cam, depth, _, _ = plane_scene()
    mask = np.zeros((H, W), bool)
    mask[50:53, 50:53] = True
    est = estimate_track(mask, depth, cam, Depth3DConfig(erode_px=2, min_valid_points=30))
    assert est.sampled == 9 and est.quality == QUALITY_FEW_POINTS and est.position is not None


@pytest.mark.parametrize("bad", [0.0, np.nan, np.inf, -1.0, 0.05, 25.0])
def test_invalid_depth_is_ignored(bad):
    cam, depth, mask, truth = plane_scene()
    depth[40:80, 60:75] = bad  # a part of the object has no (valid) depth
    est = estimate_track(mask, depth, cam, Depth3DConfig(erode_px=0, min_range=0.1, max_range=20.0))
    assert est.valid_points == 1600 - 40 * 15
    assert est.position[2] == pytest.approx(2.0)
    depth[mask] = bad
    est = estimate_track(mask, depth, cam, Depth3DConfig(erode_px=0))
    assert est.quality == QUALITY_NONE and est.position is None and est.valid_points == 0


def test_raw_millimetres_give_the_same_estimate():
    cam, depth, mask, truth = plane_scene(z_obj=2.345, z_bg=5.0)
    mm = np.round(depth * 1000).astype(np.uint16)
    raw, scale = decode_depth_raw("16UC1", H, W, 2 * W, False, mm.tobytes())
    a = estimate_track(mask, raw, cam, Depth3DConfig(), depth_scale=scale)
    b = estimate_track(mask, depth, cam, Depth3DConfig())
    np.testing.assert_allclose(a.position, b.position, rtol=1e-6)
    assert a.position[2] == pytest.approx(2.345, abs=1e-6)
    half = cv2.resize(mm, (W // 2, H // 2), interpolation=cv2.INTER_NEAREST)
    c = estimate_track(mask, half, cam, Depth3DConfig(), depth_scale=scale)
    assert np.linalg.norm(c.position - truth) < 0.01 * np.linalg.norm(truth)


def test_depth_of_another_resolution():
    cam, depth, mask, truth = plane_scene()
    half = cv2.resize(depth, (W // 2, H // 2), interpolation=cv2.INTER_NEAREST)
    double = cv2.resize(depth, (W * 2, H * 2), interpolation=cv2.INTER_NEAREST)
    for d in (half, double):
        est = estimate_track(mask, d, cam, Depth3DConfig(erode_px=1))
        assert np.linalg.norm(est.position - truth) < 0.01 * np.linalg.norm(truth)
    with pytest.raises(DepthError) as exc:
        estimate_track(mask, depth[:, : W // 2], cam, Depth3DConfig())
    assert exc.value.cause == "depth_size"


def test_camera_model_scaling_and_refusals():
    info = camera_info(H, W)
    cam = CameraModel(info["K"], W, H)
    big = cam.scaled(2 * W, 2 * H)
    assert big.fx == pytest.approx(2 * cam.fx) and big.K[0, 2] == pytest.approx((cam.K[0, 2] + 0.5) * 2 - 0.5)
    with pytest.raises(DepthError) as exc:
        cam.scaled(W, 2 * H)
    assert exc.value.cause == "camera_info_size"
    for k in ([0, 0, 80, 0, 100, 60, 0, 0, 1], [np.nan, 0, 80, 0, 100, 60, 0, 0, 1], [100, 0, 80, 0, -5, 60, 0, 0, 1]):
        with pytest.raises(DepthError) as exc:
            CameraModel(k, W, H)
        assert exc.value.cause == "camera_info_bad_k"
    with pytest.raises(DepthError):
        CameraModel(info["K"], W, H, D=[np.nan, 0, 0, 0, 0], distortion_model="plumb_bob")


def test_rays_invert_the_pinhole_with_skew():
    K = np.array([[150.0, 3.0, 70.0], [0, 140.0, 50.0], [0, 0, 1]])
    rays = CameraModel(K, W, H).rays()
    v, u = np.mgrid[0:H, 0:W]
    np.testing.assert_allclose(K[0, 0] * rays[0] + K[0, 1] * rays[1] + K[0, 2], u, atol=1e-3)
    np.testing.assert_allclose(K[1, 1] * rays[1] + K[1, 2], v, atol=1e-3)


def test_distortion_is_corrected_by_rays():
    """Points seen through a distorted lens back-project to their true position."""
    K = np.array([[150.0, 0, 79.5], [0, 150.0, 59.5], [0, 0, 1]])
    D = np.array([-0.25, 0.08, 0.001, -0.002, 0.0])
    cam = CameraModel(K, W, H, D, "plumb_bob")
    assert cam.corrected
    true = np.array([[0.3, -0.2, 2.0], [-0.35, 0.25, 2.0]])
    pix, _ = cv2.projectPoints(true, np.zeros(3), np.zeros(3), K, D)
    for (u, v), p in zip(np.round(pix.reshape(-1, 2)).astype(int), true):
        ray = cam.rays()[:, v, u]
        # rounding the pixel moves the point by at most half a pixel at 2 m
        assert np.hypot(ray[0] * 2.0 - p[0], ray[1] * 2.0 - p[1]) < 2.0 / 150.0
    plain = CameraModel(K, W, H, D, "plumb_bob", undistort=False)
    assert not plain.corrected
    assert CameraModel(K, W, H, D, "weird_model").uncorrected


def test_decode_depth_encodings_and_refusals():
    mm = np.array([[0, 1000], [2500, 65535]], np.uint16)
    out = decode_depth("16UC1", 2, 2, 4, False, mm.tobytes())
    np.testing.assert_allclose(out, mm * 1e-3, rtol=1e-6)
    big = decode_depth("16UC1", 2, 2, 4, True, mm.byteswap().tobytes())
    np.testing.assert_array_equal(big, out)
    padded = np.zeros((2, 6), np.uint8)
    padded[:, :4] = mm.view(np.uint8).reshape(2, 4)
    np.testing.assert_array_equal(decode_depth("16UC1", 2, 2, 6, False, padded.tobytes()), out)
    m = np.array([[1.5, np.nan]], np.float32)
    np.testing.assert_array_equal(decode_depth("32FC1", 1, 2, 8, False, m.tobytes()), m)
    for args, cause in ((("rgb8", 2, 2, 6, False, bytes(12)), "depth_encoding:rgb8"),
                        (("16UC1", 2, 2, 2, False, bytes(8)), "depth_step"),
                        (("16UC1", 2, 2, 4, False, bytes(5)), "depth_short_data"),
                        (("32FC1", 0, 2, 8, False, b""), "depth_size")):
        with pytest.raises(DepthError) as exc:
            decode_depth(*args)
        assert exc.value.cause == cause


@pytest.mark.parametrize("seed,difficulty", [(2, 0.6), (7, 0.3)])  # with and without occluders
def test_synthetic_depth_follows_layer_order_and_gives_exact_truth(seed, difficulty):
    scene = build_scene(SynthConfig(num_frames=4, size=(120, 160), num_objects=2, difficulty=difficulty, seed=seed))
    cam = scene_camera(scene)
    cfg = Depth3DConfig()
    checked = 0
    for t in range(scene.num_frames):
        fr = scene.render(t, image=False)
        d = render_depth(scene, t, fr)
        z = layer_depths(scene, t)
        assert np.all(d[fr.owner < 0] == BACKGROUND_M)
        for i in np.unique(fr.owner[fr.owner >= 0]):
            assert np.all(d[fr.owner == i] == z[i])
            assert z[i] < BACKGROUND_M
        # the nearer of two layers owns the pixels where both are: depth order == drawing order
        assert np.all(np.diff(np.sort(z)) >= 0)
        np.testing.assert_array_equal(depth_to_mm(d), np.round(d * 1000).astype(np.uint16))
        for oid in range(1, scene.num_objects + 1):
            truth = truth_position(fr, d, cam, oid)
            if truth is None or np.count_nonzero(fr.ids == oid) < 200:
                continue
            exact = estimate_track(fr.ids == oid, d, cam, Depth3DConfig(erode_px=0, max_samples=10**6))
            np.testing.assert_allclose(exact.position, truth, atol=1e-5)  # the visible surface's centroid
            unoccluded = np.count_nonzero(fr.ids == oid) >= 0.97 * fr.frame_area[oid - 1]
            if unoccluded:  # erosion moves the centroid of a ragged visible part; not of a whole object
                est = estimate_track(fr.ids == oid, d, cam, cfg)
                assert abs(est.position[2] - truth[2]) < 1e-5  # a plane: the depth is exact
                assert np.linalg.norm(est.position - truth) < 0.02 * np.linalg.norm(truth)
                checked += 1
    assert checked >= 4


def test_transform_estimate():
    cam, depth, mask, truth = plane_scene()
    est = estimate_track(mask, depth, cam, Depth3DConfig(erode_px=0, extent_percentile=0.0))
    R = np.array([[0, 0, 1], [-1, 0, 0], [0, -1, 0]], float)  # optical frame -> x forward, z up
    t = np.array([1.0, 2.0, 3.0])
    moved = transform_estimate(est, R, t)
    np.testing.assert_allclose(moved.position, R @ est.position + t)
    np.testing.assert_allclose(np.sort(np.abs(moved.size)), np.sort(np.abs(est.size)), atol=1e-9)


def test_depth_buffer_pairs_nearest_within_tolerance():
    buf = DepthBuffer(keep_s=1.0, max_rate=1000)
    for i in range(30):
        buf.put(10.0 + i / 30, f"d{i}", now=i * 0.001)
    item, dt = buf.nearest(10.0 + 5 / 30 + 0.004, tolerance=0.01)
    assert item == "d5" and dt == pytest.approx(0.004)
    item, dt = buf.nearest(20.0, tolerance=0.01)
    assert item is None and dt == pytest.approx(20.0 - (10.0 + 29 / 30))
    assert DepthBuffer().nearest(1.0, 1.0) == (None, None)
    # old items fall out behind the newest stamp; out-of-order arrivals are sorted in
    buf.put(12.0, "late-new", now=0.1)
    buf.put(11.5, "older", now=0.1)
    assert len(buf) == 2 and buf.nearest(11.49, 0.05)[0] == "older"


def test_depth_buffer_refuses_floods():
    buf = DepthBuffer(keep_s=5.0, max_rate=50)
    accepted = sum(buf.put(i * 1e-3, i, now=i * 1e-4) for i in range(200))  # 200 in 20 ms
    assert accepted == 50 and buf.flooded == 150
    assert buf.put(1.0, "after", now=5.0)  # a second later it takes depth again
