"""Depth channel and camera_info of ``synth`` scenes, for exact 3D ground truth.

Every layer of a synthetic scene is a fronto-parallel plane: its metric depth follows
the scene's own layer order (``_Layer.depth``, smaller = nearer) as
``DEPTH_BASE_M + DEPTH_GAIN_M * depth``, so targets and distractors lie at about
2.15-3.85 m, occluders (depth about -1) at about 1.5 m and the background at
``BACKGROUND_M``. The depth image takes, per pixel, the depth of the front-most layer
(``SynthFrame.owner``), exactly the layer that owns the pixel in the annotation, so the
visible surface of every target is known exactly. The camera is an ideal pinhole (no
distortion) with a ``HFOV_DEG`` horizontal field of view. synth.py itself is unchanged.
"""
from __future__ import annotations

import math

import numpy as np

from ..geometry.depth3d import CameraModel
from .synth import SynthFrame, SynthScene

DEPTH_BASE_M = 2.5
DEPTH_GAIN_M = 1.0
BACKGROUND_M = 6.0
HFOV_DEG = 60.0


def camera_info(height: int, width: int, hfov_deg: float = HFOV_DEG) -> dict:
    """camera_info fields (K row-major, D, size, model) of the ideal camera of an H x W frame."""
    f = (width / 2.0) / math.tan(math.radians(hfov_deg) / 2.0)
    cx, cy = (width - 1) / 2.0, (height - 1) / 2.0
    return {"width": int(width), "height": int(height), "distortion_model": "plumb_bob", "D": [0.0] * 5,
            "K": [f, 0.0, cx, 0.0, f, cy, 0.0, 0.0, 1.0]}


def scene_camera(scene: SynthScene) -> CameraModel:
    h, w = scene.cfg.size
    info = camera_info(h, w)
    return CameraModel(info["K"], w, h, info["D"], info["distortion_model"])


def layer_depths(scene: SynthScene, t: int) -> np.ndarray:
    """Metric depth (m) of every layer on frame t, in ``scene.layers`` order."""
    return np.array([DEPTH_BASE_M + DEPTH_GAIN_M * float(L.depth[t]) for L in scene.layers], dtype=np.float32)


def render_depth(scene: SynthScene, t: int, frame: SynthFrame | None = None) -> np.ndarray:
    """H x W float32 depth in metres of frame t (pass its ``SynthFrame`` to skip rendering again)."""
    if frame is None:
        frame = scene.render(t, image=False)
    lut = np.append(layer_depths(scene, t), np.float32(BACKGROUND_M))  # owner -1 -> the last entry
    return lut[frame.owner.astype(np.intp)]


def depth_to_mm(depth_m: np.ndarray) -> np.ndarray:
    """metres -> uint16 millimetres (16UC1); invalid (NaN, inf, <= 0, > 65.535 m) -> 0."""
    mm = np.where(np.isfinite(depth_m) & (depth_m > 0), np.round(depth_m * 1000.0), 0.0)
    return np.where(mm <= 65535, mm, 0).astype(np.uint16)


def truth_position(frame: SynthFrame, depth_m: np.ndarray, camera: CameraModel, oid: int) -> np.ndarray | None:
    """True 3D centroid (m) of target ``oid``'s visible surface: the mean of its annotated
    pixels back-projected with the exact depth; None when it is not visible."""
    ys, xs = np.nonzero(frame.ids == oid)
    if ys.size == 0:
        return None
    z = depth_m[ys, xs].astype(np.float64)
    rays = camera.rays()
    rx, ry = rays[0][ys, xs].astype(np.float64), rays[1][ys, xs].astype(np.float64)
    return np.array([np.mean(rx * z), np.mean(ry * z), np.mean(z)])
