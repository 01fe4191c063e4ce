"""Per-track 3D from an aligned depth image: robust position, extent and valid-point count.

Why robust: mask borders bleed onto the background (and depth cameras smear edges), so
the mean of the masked depth is pulled backwards. The mask is eroded first, pixels with
invalid depth (0, NaN, inf, outside [min_range, max_range]) are dropped, points farther
than a MAD gate from the median depth are trimmed, and the position is the mean of what
is left (a trimmed mean: the centroid of the object's visible surface, which a per-axis
median is not for asymmetric shapes; with the gate off it is the per-axis median); the
extent is a percentile box of the same points.

Camera model: pinhole from ``K`` (or ``P`` for rectified images). Distortion: with
``undistort`` on and non-zero ``D`` the pixel rays come from ``cv2.undistortPoints``
(``plumb_bob`` / ``rational_polynomial``) or ``cv2.fisheye.undistortPoints``
(``equidistant``), computed once per camera model; other models are not corrected.
The depth image must be aligned (registered) to the colour camera; a depth image of
another resolution but the same aspect ratio is sampled at the scaled pixel, another
aspect ratio is refused.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import cv2
import numpy as np

QUALITY_NONE, QUALITY_OK, QUALITY_FEW_POINTS = 0, 1, 2
ASPECT_TOLERANCE = 0.01  # relative difference of aspect ratios still taken as "the same camera, scaled"


class DepthError(ValueError):
    """Input that cannot give 3D; ``cause`` names it for logs and /diagnostics counts."""

    def __init__(self, cause: str, detail: str):
        self.cause = cause
        super().__init__(f"{cause}: {detail}")


def _f(default, help, range=None, choices=None, live=False):  # noqa: A002 - the settings convention's names
    return field(default=default, metadata={"help": help, "range": range, "choices": choices, "live": live})


@dataclass
class Depth3DConfig:
    """Settings of the 3D outputs (node parameters ``depth3d.<name>``)."""

    enabled: bool = _f(False, "subscribe to depth + camera_info and publish 3D per track (off: nothing is "
                              "subscribed or computed)")
    tolerance: float = _f(0.03, "seconds between a colour frame's stamp and its depth partner's", (0.0, 1.0),
                          live=True)
    wait_s: float = _f(0.05, "longest wait for a depth partner still on its way (only while depth is streaming "
                             "and none newer than the frame has arrived)", (0.0, 1.0), live=True)
    buffer_s: float = _f(2.0, "seconds of recent depth images kept for pairing", (0.05, 30.0))
    erode_px: int = _f(2, "mask erosion (pixels) before sampling depth: drops border pixels", (0, 20), live=True)
    min_range: float = _f(0.1, "depth below this (metres) is invalid", (0.0, 1000.0), live=True)
    max_range: float = _f(20.0, "depth above this (metres) is invalid", (0.0, 1000.0), live=True)
    min_valid_points: int = _f(30, "fewer valid points than this: quality FEW_POINTS (unreliable)", (1, 1_000_000),
                               live=True)
    max_samples: int = _f(4000, "at most this many mask pixels sampled per track (a regular grid)", (100, 10_000_000),
                          live=True)
    extent_percentile: float = _f(2.0, "the extent box spans percentiles p..100-p of the points", (0.0, 25.0),
                                  live=True)
    outlier_mad: float = _f(3.0, "points farther than this many robust sigmas (1.4826 MAD) from the median depth "
                                 "are dropped (0 = off)", (0.0, 100.0), live=True)
    outlier_min_m: float = _f(0.05, "the depth gate is at least this wide (metres)", (0.0, 100.0), live=True)
    camera_matrix: str = _f("K", "intrinsics: K (raw image, D applied when undistort) or P (rectified image, no D)",
                            choices=("K", "P"), live=True)
    undistort: bool = _f(True, "correct lens distortion (camera_info D) of the pixel rays", live=True)
    publish_points: bool = _f(False, "publish the masked points (PointCloud2 with a track id field) on 'points'",
                              live=True)
    points_per_track: int = _f(500, "most points per track on 'points' (decimated)", (1, 1_000_000), live=True)
    target_frame: str = _f("", "transform 3D outputs to this frame (needs tf2_ros; '' = camera frame)", live=True)
    max_depth_rate: float = _f(200.0, "depth messages per second above this are dropped as a flood", (1.0, 1e6),
                               live=True)

    def validate(self) -> None:
        if not self.min_range < self.max_range:
            raise ValueError(f"depth3d.min_range ({self.min_range}) must be below max_range ({self.max_range})")


@dataclass
class Estimate3D:
    """One track's 3D on one frame (metres, camera frame: x right, y down, z forward)."""

    quality: int = QUALITY_NONE
    position: np.ndarray | None = None  # robust position (mean of the depth-gated inliers)
    box_min: np.ndarray | None = None  # percentile box
    box_max: np.ndarray | None = None
    valid_points: int = 0  # sampled mask pixels with valid depth
    sampled: int = 0  # sampled mask pixels
    points: np.ndarray | None = None  # inlier points, N x 3 float32 (for the point cloud)

    @property
    def size(self) -> np.ndarray:
        return self.box_max - self.box_min

    @property
    def box_center(self) -> np.ndarray:
        return 0.5 * (self.box_min + self.box_max)


# --------------------------------------------------------------------------- camera


class CameraModel:
    """Pinhole camera (+ distortion) at one resolution; pixel -> unit-depth ray lookup."""

    def __init__(self, K, width: int, height: int, D=(), distortion_model: str = "", undistort: bool = True):
        K = np.asarray(K, dtype=np.float64).reshape(3, 3)
        D = np.asarray(D, dtype=np.float64).ravel()
        if not np.all(np.isfinite(K)):
            raise DepthError("camera_info_bad_k", f"K has NaN or inf entries: {K.ravel().tolist()}")
        if not (K[0, 0] > 0 and K[1, 1] > 0):
            raise DepthError("camera_info_bad_k", f"focal lengths must be > 0, got fx={K[0, 0]} fy={K[1, 1]}")
        if not np.all(np.isfinite(D)):
            raise DepthError("camera_info_bad_d", f"D has NaN or inf entries: {D.tolist()}")
        if int(width) <= 0 or int(height) <= 0:
            raise DepthError("camera_info_size", f"size must be positive, got {width}x{height}")
        self.K, self.D = K, D
        self.width, self.height = int(width), int(height)
        self.distortion_model = distortion_model
        self.corrected = bool(undistort and D.size and np.any(D != 0)
                              and distortion_model in ("plumb_bob", "rational_polynomial", "equidistant"))
        self.uncorrected = bool(undistort and D.size and np.any(D != 0) and not self.corrected)
        self._rays: np.ndarray | None = None

    @property
    def fx(self) -> float:
        return float(self.K[0, 0])

    @property
    def fy(self) -> float:
        return float(self.K[1, 1])

    def scaled(self, width: int, height: int) -> CameraModel:
        """The same camera at another resolution of the same aspect ratio (DepthError otherwise)."""
        if (width, height) == (self.width, self.height):
            return self
        check_same_aspect((self.width, self.height), (width, height), "camera_info_size", "camera_info", "colour image")
        sx, sy = width / self.width, height / self.height
        K = self.K.copy()
        K[0, :] *= sx
        K[1, :] *= sy
        K[0, 2] = (self.K[0, 2] + 0.5) * sx - 0.5  # pixel centres at integers
        K[1, 2] = (self.K[1, 2] + 0.5) * sy - 0.5
        out = CameraModel(K, width, height, self.D, self.distortion_model, undistort=self.corrected)
        return out

    def rays(self) -> np.ndarray:
        """2 x H x W float32: x/z and y/z of every pixel centre (computed once; planes, so
        that boolean indexing of a crop stays a fast contiguous gather)."""
        if self._rays is None:
            u, v = np.meshgrid(np.arange(self.width, dtype=np.float64), np.arange(self.height, dtype=np.float64))
            if self.corrected:
                pts = np.stack([u.ravel(), v.ravel()], axis=1)[:, None, :]
                if self.distortion_model == "equidistant":
                    n = cv2.fisheye.undistortPoints(pts, self.K, self.D[:4])
                else:
                    n = cv2.undistortPoints(pts, self.K, self.D)
                r = n.reshape(self.height, self.width, 2)
            else:
                y = (v - self.K[1, 2]) / self.fy
                r = np.stack([(u - self.K[0, 2] - self.K[0, 1] * y) / self.fx, y], axis=-1)  # K[0, 1]: skew
            self._rays = np.ascontiguousarray(np.moveaxis(r, -1, 0), dtype=np.float32)
        return self._rays

    def project(self, points: np.ndarray) -> np.ndarray:
        """N x 3 camera points -> N x 2 pixels (pinhole, no distortion; for tests and truth)."""
        p = np.asarray(points, dtype=np.float64)
        return np.stack([self.fx * p[:, 0] / p[:, 2] + self.K[0, 2], self.fy * p[:, 1] / p[:, 2] + self.K[1, 2]], 1)


def check_same_aspect(a: tuple[int, int], b: tuple[int, int], cause: str, name_a: str, name_b: str) -> None:
    ra, rb = a[0] / a[1], b[0] / b[1]
    if abs(ra - rb) > ASPECT_TOLERANCE * ra:
        raise DepthError(cause, f"{name_a} is {a[0]}x{a[1]} but {name_b} is {b[0]}x{b[1]}: aspect ratios differ, "
                                "so they are not the same camera scaled (is the depth aligned to colour?)")


# --------------------------------------------------------------------------- depth image

DEPTH_ENCODINGS = {"16UC1": (np.dtype("<u2"), 1e-3), "32FC1": (np.dtype("<f4"), 1.0)}


def decode_depth(encoding: str, height: int, width: int, step: int, is_bigendian: bool, data) -> np.ndarray:
    """Raw depth image fields -> H x W float32 metres (16UC1 in mm, 32FC1 in m); DepthError if malformed."""
    raw, scale = decode_depth_raw(encoding, height, width, step, is_bigendian, data)
    out = raw.astype(np.float32)
    if scale != 1.0:
        out *= np.float32(scale)
    return out


def decode_depth_raw(encoding: str, height: int, width: int, step: int, is_bigendian: bool,
                     data) -> tuple[np.ndarray, float]:
    """(H x W array over the message's bytes, metres per unit): no copy of the whole image,
    only the sampled pixels are converted (``estimate_track(depth_scale=...)``)."""
    if encoding not in DEPTH_ENCODINGS:
        raise DepthError(f"depth_encoding:{encoding}", f"unsupported depth encoding {encoding!r} "
                                                       "(need 16UC1 in millimetres or 32FC1 in metres)")
    dtype, scale = DEPTH_ENCODINGS[encoding]
    if height <= 0 or width <= 0:
        raise DepthError("depth_size", f"depth image is {width}x{height}")
    row = width * dtype.itemsize
    if step < row:
        raise DepthError("depth_step", f"step {step} < width {width} x {dtype.itemsize} bytes")
    buf = memoryview(data).cast("B") if not isinstance(data, np.ndarray) else data.view(np.uint8).ravel()
    if len(buf) < step * (height - 1) + row:
        raise DepthError("depth_short_data", f"{len(buf)} bytes for {height} rows of step {step}")
    rows = np.frombuffer(buf, dtype=np.uint8, count=step * height if len(buf) >= step * height else len(buf))
    if len(rows) < step * height:
        rows = np.concatenate([rows, np.zeros(step * height - len(rows), np.uint8)])
    img = rows.reshape(height, step)[:, :row].view(dtype.newbyteorder(">" if is_bigendian else "<"))
    return img, scale


def valid_fraction(depth: np.ndarray, min_range: float, max_range: float, stride: int = 8,
                   depth_scale: float = 1.0) -> float:
    """Share of valid depth on a coarse grid (cheap check for an all-invalid image)."""
    d = depth[::stride, ::stride] * np.float32(depth_scale)
    return float(np.count_nonzero((d >= min_range) & (d <= max_range))) / max(d.size, 1)


# --------------------------------------------------------------------------- estimate


def _crop(mask: np.ndarray, box, pad: int) -> tuple[np.ndarray, int, int]:
    h, w = mask.shape
    if box is None:
        ys = np.flatnonzero(mask.any(axis=1))
        if ys.size == 0:
            return mask[:0, :0], 0, 0
        xs = np.flatnonzero(mask.any(axis=0))
        box = (xs[0], ys[0], xs[-1] + 1, ys[-1] + 1)
    x1, y1, x2, y2 = (int(v) for v in box)
    x1, y1, x2, y2 = max(x1 - pad, 0), max(y1 - pad, 0), min(x2 + pad, w), min(y2 + pad, h)
    return mask[y1:y2, x1:x2], x1, y1


def estimate_track(mask: np.ndarray, depth: np.ndarray, camera: CameraModel, cfg: Depth3DConfig,
                   box=None, keep_points: int = 0, depth_scale: float = 1.0) -> Estimate3D:
    """3D of one track from its colour-resolution mask and the aligned depth (metres).

    ``camera`` must be at the mask's resolution (``CameraModel.scaled``); ``depth`` may be
    another resolution of the same aspect ratio, in units of ``depth_scale`` metres (raw
    16UC1 millimetres: 0.001). ``keep_points`` > 0 keeps up to that many inlier points
    (evenly decimated) for a point cloud.
    """
    mh, mw = mask.shape
    if (camera.width, camera.height) != (mw, mh):
        raise ValueError(f"camera model is {camera.width}x{camera.height}, mask {mw}x{mh}")
    dh, dw = depth.shape
    if (dh, dw) != (mh, mw):
        check_same_aspect((dw, dh), (mw, mh), "depth_size", "depth image", "colour image")
    r = int(cfg.erode_px)
    crop, x0, y0 = _crop(mask, box, r + 1)
    if crop.size == 0:
        return Estimate3D()
    m = np.ascontiguousarray(crop).view(np.uint8) if crop.dtype == bool else (crop > 0).astype(np.uint8)
    if r > 0:
        eroded = cv2.erode(m, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1)))
        if cv2.countNonZero(eroded) >= cfg.min_valid_points:
            m = eroded  # else a tiny object: sample it whole rather than not at all
    area = cv2.countNonZero(m)
    if area == 0:
        return Estimate3D()
    s = max(1, int(math.ceil(math.sqrt(area / cfg.max_samples))))
    sel = m[::s, ::s].view(bool)  # a regular grid of the crop; m holds 0/1
    ch, cw = m.shape
    rays = camera.rays()[:, y0 : y0 + ch : s, x0 : x0 + cw : s]
    if (dh, dw) == (mh, mw):
        z = depth[y0 : y0 + ch : s, x0 : x0 + cw : s][sel]
    else:  # another resolution, same aspect: sample the depth pixel under each mask pixel
        ys, xs = np.nonzero(sel)
        yd = ((ys * s + y0 + 0.5) * (dh / mh)).astype(np.intp)
        xd = ((xs * s + x0 + 0.5) * (dw / mw)).astype(np.intp)
        z = depth[yd, xd]
    z = z * np.float32(depth_scale) if (depth_scale != 1.0 or z.dtype != np.float32) else z
    out = Estimate3D(sampled=int(z.size))
    valid = (z >= cfg.min_range) & (z <= cfg.max_range)  # NaN compares false; inf is beyond max_range
    n_valid = int(np.count_nonzero(valid))
    out.valid_points = n_valid
    if n_valid == 0:
        return out
    zv = z[valid]
    zm = _median(zv)
    if cfg.outlier_mad > 0:
        gate = max(cfg.outlier_mad * 1.4826 * _median(np.abs(zv - zm)), cfg.outlier_min_m)
        valid &= np.abs(z - zm) <= gate  # NaN stays out
    z = z[valid]
    if (dh, dw) == (mh, mw):
        xyz = (rays[0][sel][valid] * z, rays[1][sel][valid] * z, z)
    else:
        xyz = (rays[0][ys, xs][valid] * z, rays[1][ys, xs][valid] * z, z)
    n = z.size
    if cfg.outlier_mad > 0:  # the gate trimmed the outliers: the mean of the rest is the surface centroid
        out.position = np.array([float(np.add.reduce(c, dtype=np.float64)) / n for c in xyz])
    else:
        out.position = np.array([_median(c) for c in xyz])
    lo_k = int(round(cfg.extent_percentile / 100.0 * (n - 1)))
    ks = sorted({lo_k, n - 1 - lo_k})
    out.box_min, out.box_max = np.empty(3), np.empty(3)
    for k, c in enumerate(xyz):  # the percentile box: nearest-rank percentiles by partial sort
        part = np.partition(c, ks)
        out.box_min[k], out.box_max[k] = part[ks[0]], part[ks[-1]]
    out.quality = QUALITY_OK if n_valid >= cfg.min_valid_points else QUALITY_FEW_POINTS
    if keep_points > 0:
        step = max(1, int(math.ceil(n / keep_points)))
        out.points = np.stack([c[::step] for c in xyz], axis=1).astype(np.float32, copy=False)
    return out


def _median(a: np.ndarray) -> float:
    """Median by one partial sort (np.median's overhead is most of its cost on a few thousand values)."""
    n = a.size
    if n % 2:
        return float(np.partition(a, n // 2)[n // 2])
    part = np.partition(a, [n // 2 - 1, n // 2])
    return 0.5 * (float(part[n // 2 - 1]) + float(part[n // 2]))


def transform_estimate(est: Estimate3D, rotation: np.ndarray, translation: np.ndarray) -> Estimate3D:
    """The estimate in another frame (p' = R p + t); the box is re-fitted around its 8 turned corners."""
    if est.position is None:
        return est
    R, t = np.asarray(rotation, float).reshape(3, 3), np.asarray(translation, float).ravel()
    corners = np.array([[x, y, z] for x in (est.box_min[0], est.box_max[0]) for y in (est.box_min[1], est.box_max[1])
                        for z in (est.box_min[2], est.box_max[2])])
    turned = corners @ R.T + t
    pts = None if est.points is None else (est.points @ R.T.astype(np.float32) + t.astype(np.float32))
    return Estimate3D(est.quality, R @ est.position + t, turned.min(axis=0), turned.max(axis=0), est.valid_points,
                      est.sampled, pts)
