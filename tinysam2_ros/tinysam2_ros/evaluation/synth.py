"""Procedural benchmark videos with exact ground truth, written in the DAVIS layout.

Each sequence shows 1..N textured *targets* (object ids 1..N, stable for the whole
sequence) moving over a large textured background seen through a panning, slightly
zooming camera. What makes tracking hard is generated on purpose and scaled by one
``difficulty`` knob (every effect also has its own knob in :class:`SynthConfig`):

* smooth object motion with scale change and rotation;
* *occluders*: unannotated world-fixed objects (poles, walls, bushes) in front of
  everything, placed on a target's path so that it passes behind them;
* targets passing in front of and behind each other (a depth order per frame);
* *distractors*: unannotated look-alikes of a target (same shape family, similar
  colour and pattern) that can also pass in front of targets;
* targets leaving the frame and coming back later (empty annotation while out);
* per-frame Gaussian noise and occasional motion blur (on the image only).

The annotation of a frame is the visible (modal) segmentation: every pixel belongs to
the front-most object there, and pixels of occluders, distractors and background are 0.
Frame 0 always shows every target with a minimum visible area, so every object can be
prompted on the first frame.

All randomness comes from one ``np.random.default_rng(seed)``; the same config gives
the same arrays and, for a given OpenCV build, the same JPEG bytes.

Coordinates: shapes are unit polygons (max radius 1, centred on their centroid) drawn
with ``cv2.fillPoly`` after rotation, scaling and translation; textures are square
images in the object's own frame, warped with the same similarity transform. The
background is a canvas larger than the frame; the camera is a per-frame affine map
(translation + zoom) from canvas to frame. Targets and distractors move in screen
space (their size follows the camera zoom); occluders are fixed in the world and so
move with the camera.
"""
from __future__ import annotations

import colorsys
import dataclasses
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from .davis import ANNOTATION_DIR, IMAGE_DIR, davis_palette, write_annotation

__all__ = [
    "SHAPES",
    "PATTERNS",
    "SynthConfig",
    "SynthFrame",
    "SynthScene",
    "SequenceInfo",
    "build_scene",
    "generate_sequence",
    "generate_dataset",
    "make_preview",
]

SHAPES = ("ellipse", "rectangle", "star", "polygon", "blob")
PATTERNS = ("stripes", "checker", "dots", "noise", "rings", "gradient")
OCCLUDER_SHAPES = ("bar", "wall", "bush")

_FRAME_NAME = re.compile(r"^\d{5}\.(jpg|png)$")


# --------------------------------------------------------------------------- config


@dataclass
class SynthConfig:
    """What to generate. Knobs left at ``None`` are derived from ``difficulty``.

    ``size`` is (height, width). ``num_objects`` is an inclusive (min, max) range of
    targets per sequence (an int means exactly that many). ``difficulty`` in [0, 1]
    sets the defaults of the knobs below (0: slow, unoccluded, clean; 1: fast,
    occluded, distractors, objects leaving, noisy, blurred):

    ==========================  =====================================================
    ``object_speed``            max speed, fraction of min(H, W) per frame
    ``scale_change``            max relative scale amplitude (size varies by x(1+a)^+-1)
    ``rotation``                max rotation speed, degrees per frame
    ``occluder_prob``           per target, chance an occluder stands on its path
    ``occluder_size``           max occluder width relative to the target's diameter
    ``num_distractors``         look-alike unannotated objects per sequence
    ``distractor_similarity``   1: same colour as the target; 0: hue off by ~45 deg
    ``camera_motion``           pan amplitude, fraction of the frame size (zoom +-half)
    ``noise_sigma``             std of the Gaussian pixel noise (0..255 scale)
    ``blur_prob``               chance per frame of a motion blur
    ``leave_prob``              per target, chance it leaves the frame and comes back
    ==========================  =====================================================
    """

    num_frames: int = 50
    size: tuple[int, int] = (256, 256)
    num_objects: tuple[int, int] = (1, 3)
    difficulty: float = 0.5
    seed: int = 0
    object_speed: float | None = None
    scale_change: float | None = None
    rotation: float | None = None
    occluder_prob: float | None = None
    occluder_size: float | None = None
    num_distractors: int | None = None
    distractor_similarity: float | None = None
    camera_motion: float | None = None
    noise_sigma: float | None = None
    blur_prob: float | None = None
    leave_prob: float | None = None
    min_first_visible: float = 0.01  # min visible area of every target on frame 0, fraction of the frame
    jpeg_quality: int = 95

    @staticmethod
    def knob_defaults(difficulty: float) -> dict:
        """The knob values that ``difficulty`` implies."""
        d = float(difficulty)
        return {
            "object_speed": 0.004 + 0.026 * d,
            "scale_change": 0.05 + 0.45 * d,
            "rotation": 0.5 + 5.5 * d,
            "occluder_prob": 0.9 * d,
            "occluder_size": 0.4 + 1.2 * d,
            "num_distractors": int(math.floor(3 * d + 0.5)),
            "distractor_similarity": 0.4 + 0.6 * d,
            "camera_motion": 0.02 + 0.18 * d,
            "noise_sigma": 1.0 + 9.0 * d,
            "blur_prob": 0.3 * d,
            "leave_prob": 0.6 * d,
        }

    def resolved(self) -> SynthConfig:
        """A validated copy with every knob filled in."""
        if int(self.num_frames) < 1:
            raise ValueError(f"num_frames must be >= 1, got {self.num_frames}")
        if len(tuple(self.size)) != 2:
            raise ValueError(f"size must be (height, width), got {self.size}")
        h, w = (int(v) for v in self.size)
        if h < 16 or w < 16:
            raise ValueError(f"size must be at least 16x16, got {h}x{w}")
        if not 0.0 <= float(self.difficulty) <= 1.0:
            raise ValueError(f"difficulty must lie in [0, 1], got {self.difficulty}")
        n = self.num_objects
        lo, hi = (int(n), int(n)) if isinstance(n, (int, np.integer)) else (int(n[0]), int(n[1]))
        if not 1 <= lo <= hi <= 254:
            raise ValueError(f"num_objects must be a range within 1..254, got {n}")
        if not 0.0 < float(self.min_first_visible) < 0.5:
            raise ValueError(f"min_first_visible must lie in (0, 0.5), got {self.min_first_visible}")
        if not 1 <= int(self.jpeg_quality) <= 100:
            raise ValueError(f"jpeg_quality must lie in 1..100, got {self.jpeg_quality}")
        knobs = self.knob_defaults(self.difficulty)
        for k in knobs:
            v = getattr(self, k)
            if v is not None:
                knobs[k] = v
        knobs["num_distractors"] = int(knobs["num_distractors"])
        for k in ("occluder_prob", "blur_prob", "leave_prob", "distractor_similarity"):
            if not 0.0 <= float(knobs[k]) <= 1.0:
                raise ValueError(f"{k} must lie in [0, 1], got {knobs[k]}")
        for k, v in knobs.items():
            if v < 0:
                raise ValueError(f"{k} must be >= 0, got {v}")
        return dataclasses.replace(
            self, num_frames=int(self.num_frames), size=(h, w), num_objects=(lo, hi),
            difficulty=float(self.difficulty), seed=int(self.seed), **knobs,
        )

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["size"] = list(self.size)
        d["num_objects"] = list(self.num_objects) if not isinstance(self.num_objects, int) else self.num_objects
        return d


# --------------------------------------------------------------------------- helpers


def _hsv(h_deg: float, s: float, v: float) -> np.ndarray:
    """BGR float32 colour (0..255) from hue in degrees and saturation/value in [0, 1]."""
    r, g, b = colorsys.hsv_to_rgb((h_deg % 360.0) / 360.0, float(np.clip(s, 0, 1)), float(np.clip(v, 0, 1)))
    return np.array([b, g, r], dtype=np.float32) * 255.0


def _smooth_noise(rng: np.random.Generator, h: int, w: int, cell: float) -> np.ndarray:
    """Smooth random field, H x W float32 in [-1, 1] (bicubic upsampling of white noise)."""
    cell = max(1.0, float(cell))
    gh, gw = int(h / cell) + 4, int(w / cell) + 4
    small = rng.standard_normal((gh, gw)).astype(np.float32)
    big = cv2.resize(small, (int(gw * cell), int(gh * cell)), interpolation=cv2.INTER_CUBIC)
    o = int(cell)
    big = big[o : o + h, o : o + w]
    return big / (np.abs(big).max() + 1e-6)


def _wave(rng: np.random.Generator, t: np.ndarray, n_frames: int, drift: float = 0.5) -> np.ndarray:
    """Smooth signal over frames t, scaled to max |value| = 1, value 0 at t = 0."""
    period = max(n_frames, 20)
    x = drift * rng.uniform(-1, 1) * t / period
    for _ in range(2):
        om = rng.uniform(0.6, 3.0) * 2 * np.pi / period
        ph = rng.uniform(0, 2 * np.pi)
        x = x + rng.uniform(0.3, 1.0) * (np.sin(om * t + ph) - np.sin(ph))
    m = np.abs(x).max()
    return x / m if m > 1e-9 else x


def _reflect(x: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Fold positions into [lo, hi] (a ball bouncing off the walls)."""
    span = hi - lo
    if span <= 0:
        return np.full_like(x, (lo + hi) / 2)
    p = np.mod(x - lo, 2 * span)
    return lo + np.where(p <= span, p, 2 * span - p)


def _smoothstep(x):
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3 - 2 * x)


def _chaikin(p: np.ndarray, n: int) -> np.ndarray:
    for _ in range(n):
        q = np.roll(p, -1, axis=0)
        p = np.stack([0.75 * p + 0.25 * q, 0.25 * p + 0.75 * q], axis=1).reshape(-1, 2)
    return p


def _normalise_poly(p: np.ndarray) -> np.ndarray:
    """Centre a polygon on its centroid and scale it to max radius 1."""
    p = np.asarray(p, dtype=np.float64)
    m = cv2.moments(p.astype(np.float32))
    if abs(m["m00"]) > 1e-9:
        p = p - np.array([m["m10"] / m["m00"], m["m01"] / m["m00"]])
    else:
        p = p - p.mean(axis=0)
    return p / np.linalg.norm(p, axis=1).max()


def _make_shape(rng: np.random.Generator, shape: str) -> np.ndarray:
    """Unit polygon (K x 2) of a shape family, random proportions."""
    th = np.linspace(0, 2 * np.pi, 64, endpoint=False)
    if shape == "ellipse":
        a = rng.uniform(0.45, 1.0)
        p = np.stack([np.cos(th), a * np.sin(th)], axis=1)
    elif shape == "rectangle":
        a = rng.uniform(0.35, 1.0)
        p = np.array([[-1, -a], [1, -a], [1, a], [-1, a]], dtype=np.float64)
        if rng.random() < 0.5:  # rounded corners
            p = _chaikin(p, 3)
    elif shape == "star":
        k = int(rng.integers(4, 8))
        depth = rng.uniform(0.2, 0.45)
        th = np.linspace(0, 2 * np.pi, 16 * k, endpoint=False)
        r = 1 - depth * (0.5 + 0.5 * np.cos(k * th))
        p = np.stack([r * np.cos(th), r * np.sin(th)], axis=1)
    elif shape == "polygon":
        k = int(rng.integers(3, 7))
        a = np.arange(k) * 2 * np.pi / k + rng.uniform(-0.25, 0.25, size=k) * np.pi / k
        r = rng.uniform(0.8, 1.0, size=k)
        p = np.stack([r * np.cos(a), r * np.sin(a)], axis=1)
    elif shape == "blob":
        k = int(rng.integers(5, 10))
        a = np.sort(np.arange(k) * 2 * np.pi / k + rng.uniform(-0.3, 0.3, size=k) * np.pi / k)
        r = rng.uniform(0.45, 1.0, size=k)
        p = _chaikin(np.stack([r * np.cos(a), r * np.sin(a)], axis=1), 4)
    elif shape == "bar":
        a = 1.0  # proportions set by the caller (it stretches x)
        p = np.array([[-1, -a], [1, -a], [1, a], [-1, a]], dtype=np.float64)
    else:
        raise ValueError(f"unknown shape {shape!r}")
    return _normalise_poly(p)


def _texture_spec(rng: np.random.Generator, hue: float, sat: float, val: float, pattern: str | None = None) -> dict:
    return {
        "pattern": pattern or str(rng.choice(PATTERNS)),
        "hue": float(hue),
        "sat": float(sat),
        "val": float(val),
        "hue2": float(hue + rng.uniform(-40, 40)),
        "sat2": float(np.clip(sat * rng.uniform(0.5, 1.2), 0, 1)),
        "val2": float(np.clip(val * rng.uniform(0.45, 0.8), 0, 1)),
        "freq": float(rng.uniform(1.5, 4.0)),  # pattern cycles per unit radius
        "angle": float(rng.uniform(0, np.pi)),
        "phase": float(rng.uniform(0, 2 * np.pi)),
    }


def _similar_spec(rng: np.random.Generator, spec: dict, similarity: float) -> dict:
    """A look-alike texture: same pattern, colours and frequency jittered."""
    jit = 5.0 + 40.0 * (1.0 - similarity)
    dh = rng.uniform(-jit, jit)
    out = dict(spec)
    out["hue"] = spec["hue"] + dh
    out["hue2"] = spec["hue2"] + dh
    out["sat"] = float(np.clip(spec["sat"] * rng.uniform(0.85, 1.15), 0, 1))
    out["val"] = float(np.clip(spec["val"] * rng.uniform(0.85, 1.15), 0, 1))
    out["freq"] = spec["freq"] * rng.uniform(0.8, 1.25)
    out["angle"] = spec["angle"] + rng.uniform(-0.6, 0.6)
    out["phase"] = float(rng.uniform(0, 2 * np.pi))
    return out


def _make_texture(rng: np.random.Generator, size: int, spec: dict) -> np.ndarray:
    """Square S x S x 3 float32 BGR texture; the unit radius spans S / 2 pixels."""
    s = int(size)
    u = (np.arange(s, dtype=np.float32) - (s - 1) / 2) / (s / 2)
    x, y = u[None, :], u[:, None]
    f, a, ph = spec["freq"], spec["angle"], spec["phase"]
    along = x * np.cos(a) + y * np.sin(a)
    across = -x * np.sin(a) + y * np.cos(a)
    pat = spec["pattern"]
    if pat == "stripes":
        p = 0.5 + 0.5 * np.sin(2 * np.pi * f * along + ph)
    elif pat == "checker":
        p = (np.sin(np.pi * f * along + ph) * np.sin(np.pi * f * across) > 0).astype(np.float32)
    elif pat == "dots":
        p = np.clip(3.0 * np.sin(np.pi * f * along + ph) * np.sin(np.pi * f * across) - 1.0, 0, 1)
    elif pat == "rings":
        p = 0.5 + 0.5 * np.sin(2 * np.pi * f * np.sqrt(x * x + y * y) + ph)
    elif pat == "gradient":
        p = 0.5 + 0.5 * np.clip(along, -1, 1)
    else:  # noise
        p = 0.5 + 0.5 * _smooth_noise(rng, s, s, cell=s / (2 * f + 1))
    p = np.broadcast_to(p, (s, s)).astype(np.float32)
    c1 = _hsv(spec["hue"], spec["sat"], spec["val"])
    c2 = _hsv(spec["hue2"], spec["sat2"], spec["val2"])
    grain = _smooth_noise(rng, s, s, cell=max(1.5, s / 40))
    tex = c1 + (c2 - c1) * p[..., None] + 10.0 * grain[..., None]
    return np.ascontiguousarray(tex, dtype=np.float32)


def _blend_poly(img: np.ndarray, pts: np.ndarray, colour: np.ndarray, alpha: float) -> None:
    """Alpha-blend an anti-aliased filled polygon of one colour into img, in place."""
    h, w = img.shape[:2]
    x0, y0 = np.floor(pts.min(axis=0)).astype(int) - 1
    x1, y1 = np.ceil(pts.max(axis=0)).astype(int) + 2
    x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
    if x1 <= x0 or y1 <= y0:
        return
    a = np.zeros((y1 - y0, x1 - x0), dtype=np.uint8)
    cv2.fillPoly(a, [np.round((pts - (x0, y0)) * 16).astype(np.int32)], 255, cv2.LINE_AA, shift=4)
    af = a.astype(np.float32)[..., None] * (alpha / 255.0)
    roi = img[y0:y1, x0:x1]
    roi += af * (colour - roi)


_SS = 4  # supersampling factor of the coverage masks


def _coverage(pts: np.ndarray, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
    """Area coverage (uint8, 255 = full) of a polygon over the pixels [y0:y1, x0:x1].

    Filled at 4x resolution and box-averaged: unlike OpenCV's own anti-aliased fill
    (which puts every pixel an edge touches inside, growing shapes by ~0.5 px), this
    is centred, so ``coverage >= 128`` has the polygon's area.
    """
    big = np.zeros(((y1 - y0) * _SS, (x1 - x0) * _SS), dtype=np.uint8)
    q = (pts - (x0 - 0.5, y0 - 0.5)) * _SS - 0.5  # pixel-centre coordinates at the fine scale
    cv2.fillPoly(big, [np.round(q * 16).astype(np.int32)], 255, cv2.LINE_8, shift=4)
    return cv2.resize(big, (x1 - x0, y1 - y0), interpolation=cv2.INTER_AREA)


# --------------------------------------------------------------------------- scene


@dataclass
class _Layer:
    kind: str  # "target" | "distractor" | "occluder"
    oid: int  # value written to the annotation (0 for non-targets)
    shape: str
    poly: np.ndarray  # unit polygon, K x 2
    cx: np.ndarray  # per-frame pose (screen pixels, radians)
    cy: np.ndarray
    scale: np.ndarray  # pixels per polygon unit (the polygon's max radius on screen)
    angle: np.ndarray
    depth: np.ndarray  # smaller is nearer the camera
    spec: dict
    texture: np.ndarray | None = None
    tex_radius: float = 1.0  # texture pixels per polygon unit

    def polygon(self, t: int) -> np.ndarray:
        c, s = math.cos(self.angle[t]), math.sin(self.angle[t])
        k = self.scale[t]
        m = np.array([[c * k, -s * k], [s * k, c * k]])
        return self.poly @ m.T + (self.cx[t], self.cy[t])


@dataclass
class SynthFrame:
    """One rendered frame. ``owner`` is the index in ``scene.layers`` of the front-most
    layer at each pixel (-1: background); ``amodal`` holds, when asked for, the full
    silhouette of every target (``{id: bool H x W}``) including occluded parts."""

    image: np.ndarray  # H x W x 3 uint8 BGR
    ids: np.ndarray  # H x W uint8 object ids
    owner: np.ndarray  # H x W int16
    frame_area: np.ndarray  # N int: pixels of each target inside the frame, ignoring occlusion
    amodal: dict[int, np.ndarray] | None = None


@dataclass
class SynthScene:
    """A fully sampled sequence: camera path, background canvas and layers."""

    cfg: SynthConfig
    layers: list[_Layer]
    num_objects: int
    background: np.ndarray  # canvas, float32 BGR
    cam_x: np.ndarray  # canvas point at the frame centre, per frame
    cam_y: np.ndarray
    zoom: np.ndarray  # frame pixels per canvas pixel
    blur: list  # per frame: None or (length, angle in degrees)
    noise: np.ndarray  # per-frame noise sigma
    frame_seeds: np.ndarray
    leaving: list[int] = field(default_factory=list)  # target ids scheduled to leave and re-enter

    @property
    def num_frames(self) -> int:
        return self.cfg.num_frames

    @property
    def targets(self) -> list[_Layer]:
        return sorted((L for L in self.layers if L.kind == "target"), key=lambda L: L.oid)

    def shape_area(self) -> np.ndarray:
        """T x N full area of every target (no frame border, no occlusion), pixels."""
        out = np.zeros((self.num_frames, self.num_objects))
        for L in self.targets:
            out[:, L.oid - 1] = abs(cv2.contourArea(L.poly.astype(np.float32))) * L.scale**2
        return out

    def render(self, t: int, amodal: bool = False, image: bool = True) -> SynthFrame:
        h, w = self.cfg.size
        return _composite(self, t, h, w, with_image=image, with_amodal=amodal)


def _composite(scene: SynthScene, t: int, h: int, w: int, with_image: bool, with_amodal: bool,
               layers: list[_Layer] | None = None) -> SynthFrame:
    layers = scene.layers if layers is None else layers
    n = scene.num_objects
    ids = np.zeros((h, w), dtype=np.uint8)
    owner = np.full((h, w), -1, dtype=np.int16)
    frame_area = np.zeros(n, dtype=np.int64)
    amodal = {} if with_amodal else None
    frame = None
    if with_image:
        z, cx, cy = scene.zoom[t], scene.cam_x[t], scene.cam_y[t]
        m = np.array([[z, 0, w / 2 - z * cx], [0, z, h / 2 - z * cy]], dtype=np.float64)
        frame = cv2.warpAffine(scene.background, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    depth = np.array([L.depth[t] for L in layers])
    for i in np.argsort(-depth, kind="stable"):  # far to near
        L = layers[i]
        pts = L.polygon(t)
        x0, y0 = np.floor(pts.min(axis=0)).astype(int) - 1
        x1, y1 = np.ceil(pts.max(axis=0)).astype(int) + 2
        x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
        if x1 <= x0 or y1 <= y0:
            if amodal is not None and L.kind == "target":
                amodal[L.oid] = np.zeros((h, w), dtype=bool)
            continue
        alpha = _coverage(pts, x0, y0, x1, y1)
        hard = alpha >= 128  # the annotation: pixels the layer covers at least half
        ids[y0:y1, x0:x1][hard] = L.oid
        owner[y0:y1, x0:x1][hard] = i
        if L.kind == "target":
            frame_area[L.oid - 1] = int(np.count_nonzero(hard))
            if amodal is not None:
                full = np.zeros((h, w), dtype=bool)
                full[y0:y1, x0:x1] = hard
                amodal[L.oid] = full
        if frame is not None:
            c, s = math.cos(L.angle[t]), math.sin(L.angle[t])
            k = L.scale[t] / L.tex_radius
            a = np.array([[c * k, -s * k], [s * k, c * k]])
            ctex = (L.texture.shape[1] - 1) / 2, (L.texture.shape[0] - 1) / 2
            b = np.array([L.cx[t] - x0, L.cy[t] - y0]) - a @ np.array(ctex)
            warped = cv2.warpAffine(L.texture, np.hstack([a, b[:, None]]), (x1 - x0, y1 - y0),
                                    flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
            af = alpha.astype(np.float32)[..., None] * (1.0 / 255.0)
            roi = frame[y0:y1, x0:x1]
            roi += af * (warped - roi)
    img = None
    if frame is not None:
        rng = np.random.default_rng(int(scene.frame_seeds[t]))
        if scene.blur[t] is not None:
            length, ang = scene.blur[t]
            ker = np.zeros((length, length), dtype=np.float32)
            r = (length - 1) / 2
            dx, dy = r * math.cos(math.radians(ang)), r * math.sin(math.radians(ang))
            p0 = (int(round((r - dx) * 16)), int(round((r - dy) * 16)))
            p1 = (int(round((r + dx) * 16)), int(round((r + dy) * 16)))
            cv2.line(ker, p0, p1, 1.0, 1, cv2.LINE_AA, shift=4)
            ker /= ker.sum()
            frame = cv2.filter2D(frame, -1, ker, borderType=cv2.BORDER_REFLECT)
        if scene.noise[t] > 0:
            frame += scene.noise[t] * rng.standard_normal(frame.shape, dtype=np.float32)
        img = np.clip(frame + 0.5, 0, 255).astype(np.uint8)
    return SynthFrame(img, ids, owner, frame_area, amodal)


def _first_frame_ok(scene: SynthScene, layers: list[_Layer], min_area: float, min_frac: float) -> bool:
    """Every target on frame 0 shows >= min_area pixels and >= min_frac of its in-frame area."""
    h, w = scene.cfg.size
    fr = _composite(scene, 0, h, w, with_image=False, with_amodal=False, layers=layers)
    vis = np.bincount(fr.ids.ravel(), minlength=scene.num_objects + 1)[1:]
    targets = [L.oid for L in layers if L.kind == "target"]
    return all(vis[k - 1] >= min_area and vis[k - 1] >= min_frac * fr.frame_area[k - 1] for k in targets)


def _moving_layer(rng, cfg: SynthConfig, kind: str, oid: int, shape: str, poly: np.ndarray, radius0: float,
                  zoom: np.ndarray, spec: dict) -> _Layer:
    """A target or distractor on a smooth screen-space path; fully inside the frame at t = 0."""
    h, w = cfg.size
    n = cfg.num_frames
    t = np.arange(n, dtype=np.float64)
    speed = cfg.object_speed * min(h, w)
    # scale: log-sinusoid through the frame-0 size (within (1 + a)^+-1 of it), times the camera zoom
    amp = math.log1p(cfg.scale_change * rng.uniform(0.3, 1.0))
    om, ph = rng.uniform(0.05, 0.25), rng.uniform(0, 2 * np.pi)
    scale = radius0 * np.exp(0.5 * amp * (np.sin(om * t + ph) - math.sin(ph))) * zoom / zoom[0]
    # rotation: steady spin plus a sway
    rot = math.radians(cfg.rotation)
    om_r, ph_r = rng.uniform(0.1, 0.4), rng.uniform(0, 2 * np.pi)
    angle = rng.uniform(0, 2 * np.pi) + rot * rng.uniform(-1, 1) * t \
        + rot * rng.uniform(0, 3) * (np.sin(om_r * t + ph_r) - math.sin(ph_r))
    # position: drift + two smooth wander waves per axis, folded back into the frame
    r0 = min(radius0 + 1, min(h, w) / 2)
    p0 = np.array([rng.uniform(r0, w - r0), rng.uniform(r0, h - r0)])
    beta = rng.uniform(0, 2 * np.pi)
    v0 = speed * rng.uniform(0.4, 1.0) * np.array([math.cos(beta), math.sin(beta)])
    pos = []
    for ax in range(2):
        x = p0[ax] + v0[ax] * t
        for _ in range(2):
            om_w, ph_w = rng.uniform(0.05, 0.35), rng.uniform(0, 2 * np.pi)
            x = x + speed * rng.uniform(0.2, 0.6) / om_w * (np.sin(om_w * t + ph_w) - math.sin(ph_w))
        lim = (w, h)[ax]
        m = min(0.3 * radius0, lim / 2)
        pos.append(_reflect(x, m, lim - m))
    om_d, ph_d = rng.uniform(0.05, 0.25), rng.uniform(0, 2 * np.pi)
    depth = rng.uniform(0, 1) + 0.35 * np.sin(om_d * t + ph_d)
    return _Layer(kind, oid, shape, poly, pos[0], pos[1], scale, angle, depth, spec)


def _schedule_leave(rng, cfg: SynthConfig, L: _Layer) -> bool:
    """Make a target leave through the nearest border, stay out a while and come back."""
    h, w = cfg.size
    n = cfg.num_frames
    if n < 5:
        return False
    reach = float(L.scale.max()) + 3.0  # beyond this distance from the border it is fully out
    ramp_max = max(1, (n - 2) // 4)
    hold = int(rng.integers(max(1, round(0.08 * n)), max(1, round(0.3 * n)) + 1))
    # exit speed: a few times the object speed, at least 2 px per frame
    v_exit = max(2.0, cfg.object_speed * min(h, w) * rng.uniform(1.5, 3.0))
    a_guess = int(rng.integers(1, max(2, n // 2)))
    px, py = L.cx[a_guess], L.cy[a_guess]
    exits = [px + reach, w - px + reach, py + reach, h - py + reach]  # left, right, top, bottom
    side = int(np.argmin(exits))
    ramp = int(np.clip(math.ceil(exits[side] / v_exit), 1, ramp_max))
    hold = min(hold, n - 2 - 2 * ramp)
    if hold < 1:
        return False
    a = int(rng.integers(1, n - 2 * ramp - hold + 1))  # last frame before the exit starts
    t = np.arange(n, dtype=np.float64)
    out0, out1 = a + ramp, a + ramp + hold - 1  # fully out on frames out0..out1
    s = np.where(t <= a, 0.0, np.where(t < out0, _smoothstep((t - a) / ramp),
                 np.where(t <= out1, 1.0, _smoothstep((out1 + ramp - t) / ramp))))
    target = (-reach, w + reach, -reach, h + reach)[side]
    if side < 2:
        L.cx = (1 - s) * L.cx + s * target
    else:
        L.cy = (1 - s) * L.cy + s * target
    return True


def _occluder(rng, cfg: SynthConfig, scene: SynthScene, target: _Layer, idx: int) -> _Layer:
    """A world-fixed unannotated occluder standing on the target's path at a random time."""
    h, w = cfg.size
    n = cfg.num_frames
    t_occ = int(rng.integers(min(n - 1, max(1, n // 5)), n)) if n > 1 else 0
    r_t = float(target.scale[t_occ])
    sx = target.cx[t_occ] + rng.uniform(-0.3, 0.3) * r_t
    sy = target.cy[t_occ] + rng.uniform(-0.3, 0.3) * r_t
    z = scene.zoom
    wx = scene.cam_x[t_occ] + (sx - w / 2) / z[t_occ]  # world (canvas) position
    wy = scene.cam_y[t_occ] + (sy - h / 2) / z[t_occ]
    kind = str(rng.choice(OCCLUDER_SHAPES))
    width = 2 * r_t * rng.uniform(0.25, max(0.3, cfg.occluder_size))  # on screen at t_occ
    if kind in ("bar", "wall"):
        half_len = rng.uniform(0.6, 1.2) * max(h, w) if kind == "bar" else rng.uniform(1.2, 2.5) * r_t
        poly = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], dtype=np.float64) * [1.0, width / 2 / half_len]
        poly = poly / np.linalg.norm(poly, axis=1).max()
        size = math.hypot(half_len, width / 2)
        ang = rng.normal(math.pi / 2, 0.25) if rng.random() < 0.6 else rng.uniform(0, np.pi)
        shape = kind
    else:
        poly = _make_shape(rng, "blob")
        size = width * rng.uniform(0.6, 1.0)
        ang = rng.uniform(0, 2 * np.pi)
        shape = "bush"
    size_world = size / z[t_occ]
    spec = _texture_spec(rng, rng.uniform(0, 360), rng.uniform(0.1, 0.7), rng.uniform(0.25, 0.9))
    cx = z * (wx - scene.cam_x) + w / 2
    cy = z * (wy - scene.cam_y) + h / 2
    return _Layer("occluder", 0, shape, poly, cx, cy, size_world * z, np.full(n, ang),
                  np.full(n, -1.0 - 0.01 * idx), spec)


def _background(rng, hc: int, wc: int) -> np.ndarray:
    hue = rng.uniform(0, 360)
    c1 = _hsv(hue, rng.uniform(0.05, 0.45), rng.uniform(0.25, 0.55))
    c2 = _hsv(hue + rng.uniform(-70, 70), rng.uniform(0.05, 0.5), rng.uniform(0.55, 0.9))
    side = min(hc, wc)
    f = (0.55 * _smooth_noise(rng, hc, wc, side / 5) + 0.3 * _smooth_noise(rng, hc, wc, side / 20)
         + 0.15 * _smooth_noise(rng, hc, wc, 3))
    g = rng.uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[0:hc, 0:wc].astype(np.float32)
    grad = ((xx - wc / 2) * math.cos(g) + (yy - hc / 2) * math.sin(g)) / max(hc, wc)
    p = np.clip(0.5 + 0.5 * f + rng.uniform(0.2, 0.8) * grad, 0, 1)
    bg = c1 + (c2 - c1) * p[..., None]
    n_shapes = int(rng.integers(6, 16) * max(1.0, hc * wc / 600.0**2))
    for _ in range(n_shapes):
        kind = int(rng.integers(0, 3))
        c = np.array([rng.uniform(0, wc), rng.uniform(0, hc)])
        r = rng.uniform(0.03, 0.15) * side
        if kind == 0:
            th = np.linspace(0, 2 * np.pi, 32, endpoint=False)
            pts = c + r * np.stack([np.cos(th), rng.uniform(0.3, 1) * np.sin(th)], axis=1)
        elif kind == 1:
            pts = c + r * np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]]) * [1, rng.uniform(0.2, 1)]
        else:
            k = int(rng.integers(3, 7))
            a = np.sort(rng.uniform(0, 2 * np.pi, size=k))
            pts = c + r * np.stack([np.cos(a), np.sin(a)], axis=1) * rng.uniform(0.5, 1, size=(k, 1))
        colour = _hsv(rng.uniform(0, 360), rng.uniform(0.05, 0.5), rng.uniform(0.2, 0.9))
        _blend_poly(bg, pts, colour, rng.uniform(0.25, 0.7))
    bg = cv2.GaussianBlur(bg, (0, 0), 0.8)
    bg += 4.0 * rng.standard_normal(bg.shape, dtype=np.float32)
    return np.ascontiguousarray(bg, dtype=np.float32)


def build_scene(cfg: SynthConfig) -> SynthScene:
    """Sample a whole sequence (geometry, textures, camera) from ``cfg.seed``."""
    cfg = cfg.resolved()
    rng = np.random.default_rng(cfg.seed)
    h, w = cfg.size
    n = cfg.num_frames
    t = np.arange(n, dtype=np.float64)

    # camera: smooth pan (canvas pixels) and slight zoom
    amp = cfg.camera_motion
    pan_x = amp * w * rng.uniform(0.4, 1.0) * _wave(rng, t, n)
    pan_y = amp * h * rng.uniform(0.4, 1.0) * _wave(rng, t, n)
    zoom = np.exp(0.5 * amp * rng.uniform(0.0, 1.0) * _wave(rng, t, n, drift=1.0))
    zmin = float(zoom.min())
    wc = int(math.ceil(w / zmin + 2 * np.abs(pan_x).max() + 8))
    hc = int(math.ceil(h / zmin + 2 * np.abs(pan_y).max() + 8))
    scene = SynthScene(cfg, [], 0, np.zeros((1, 1, 3), np.float32), wc / 2 + pan_x, hc / 2 + pan_y, zoom,
                       [None] * n, np.zeros(n), np.zeros(n, dtype=np.int64))

    # targets: resample the layout until every target is clearly visible on frame 0
    lo, hi = cfg.num_objects
    num = int(rng.integers(lo, hi + 1))
    scene.num_objects = num
    min_area = cfg.min_first_visible * h * w
    min_frac = 0.95 - 0.45 * cfg.difficulty  # share of each target left unhidden on frame 0
    shrink = 1.0
    for attempt in range(400):
        hue0 = rng.uniform(0, 360)
        targets = []
        for k in range(num):
            shape = str(rng.choice(SHAPES))
            poly = _make_shape(rng, shape)
            unit_area = abs(cv2.contourArea(poly.astype(np.float32)))
            r_min = math.sqrt(1.5 * min_area / unit_area)
            r_max = min(h, w) / 2 - 2
            radius0 = min(max(rng.uniform(0.08, 0.17) * min(h, w) * shrink, r_min), r_max)
            spec = _texture_spec(rng, hue0 + 360.0 * k / num + rng.uniform(-15, 15), rng.uniform(0.45, 0.95),
                                 rng.uniform(0.5, 0.95))
            targets.append(_moving_layer(rng, cfg, "target", k + 1, shape, poly, radius0, zoom, spec))
        if _first_frame_ok(scene, targets, min_area, min_frac):
            break
        if attempt >= 20:
            shrink = max(0.3, shrink * 0.97)
    else:
        raise ValueError(f"cannot place {num} targets visibly in a {h}x{w} frame; use fewer objects or a larger size")
    layers = list(targets)

    for L in targets:
        if rng.random() < cfg.leave_prob and _schedule_leave(rng, cfg, L):
            scene.leaving.append(L.oid)

    # occluders on the targets' paths, distractors imitating targets; dropped if they
    # would hide a target too much on frame 0
    n_occ = 0
    for L in targets:
        if rng.random() < cfg.occluder_prob:
            for _ in range(10):
                occ = _occluder(rng, cfg, scene, L, n_occ)
                if _first_frame_ok(scene, layers + [occ], min_area, min_frac):
                    layers.append(occ)
                    n_occ += 1
                    break
    for _ in range(cfg.num_distractors):
        src = targets[int(rng.integers(0, num))]
        for _ in range(10):
            poly = _make_shape(rng, src.shape)
            radius0 = float(src.scale[0]) * rng.uniform(0.75, 1.25)
            spec = _similar_spec(rng, src.spec, cfg.distractor_similarity)
            dis = _moving_layer(rng, cfg, "distractor", 0, src.shape, poly, radius0, zoom, spec)
            if _first_frame_ok(scene, layers + [dis], min_area, min_frac):
                layers.append(dis)
                break
    scene.layers = layers

    # appearance
    for L in layers:
        reach = float(L.scale.max())
        size = int(np.clip(2 * math.ceil(reach) + 4, 16, 384))
        L.texture = _make_texture(rng, size, L.spec)
        L.tex_radius = size / 2
    scene.background = _background(rng, hc, wc)
    for i in range(n):
        if rng.random() < cfg.blur_prob:
            length = int(rng.integers(3, 6 + int(round(10 * cfg.difficulty)) + 1)) | 1
            scene.blur[i] = (length, float(rng.uniform(0, 180)))
    scene.noise = cfg.noise_sigma * rng.uniform(0.6, 1.4, size=n)
    scene.frame_seeds = rng.integers(0, 2**62, size=n)
    return scene


# --------------------------------------------------------------------------- writing


@dataclass
class SequenceInfo:
    """What ``generate_sequence`` wrote, with per-frame ground-truth statistics.

    Areas are T x N arrays (column k is object id k + 1): ``visible_area`` the
    annotated pixels, ``frame_area`` the pixels the object would cover inside the frame
    if nothing occluded it, ``shape_area`` its whole area ignoring frame borders.
    """

    name: str
    seed: int
    size: tuple[int, int]
    num_frames: int
    object_ids: list[int]
    shapes: dict[int, str]
    num_distractors: int
    num_occluders: int
    leaving: list[int]
    visible_area: np.ndarray
    frame_area: np.ndarray
    shape_area: np.ndarray
    frame_paths: list[Path]
    annotation_paths: list[Path]

    def visible_fraction(self) -> np.ndarray:
        """T x N visible area / full area (0 when out of the frame or hidden)."""
        return self.visible_area / np.maximum(self.shape_area, 1e-9)

    def occlusion(self) -> np.ndarray:
        """T x N fraction of the in-frame silhouette hidden by something in front (nan when out)."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(self.frame_area > 0, 1.0 - self.visible_area / self.frame_area, np.nan)

    def occluded_frames(self, threshold: float = 0.1) -> np.ndarray:
        """Per object, frames where more than ``threshold`` of its in-frame silhouette is hidden."""
        return np.sum(np.nan_to_num(self.occlusion(), nan=0.0) > threshold, axis=0)

    def absent_frames(self) -> np.ndarray:
        """Per object, frames with an empty annotation."""
        return np.sum(self.visible_area == 0, axis=0)

    def summary(self) -> dict:
        return {
            "seed": self.seed,
            "num_objects": len(self.object_ids),
            "shapes": {str(k): v for k, v in self.shapes.items()},
            "num_distractors": self.num_distractors,
            "num_occluders": self.num_occluders,
            "leaving": self.leaving,
            "mean_visible_fraction": round(float(self.visible_fraction().mean()), 4),
            "occluded_frames": self.occluded_frames().tolist(),
            "absent_frames": self.absent_frames().tolist(),
        }


def _clear_frames(d: Path) -> None:
    if d.is_dir():
        for p in d.iterdir():
            if p.is_file() and _FRAME_NAME.match(p.name):
                p.unlink()


def generate_sequence(root, name: str, cfg: SynthConfig | None = None) -> SequenceInfo:
    """Write ``root/JPEGImages/<name>/%05d.jpg`` and ``root/Annotations/<name>/%05d.png``.

    Frames already in those two folders (``%05d.jpg`` / ``%05d.png``) are replaced.
    """
    scene = build_scene(cfg or SynthConfig())
    cfg = scene.cfg
    img_dir = Path(root) / IMAGE_DIR / name
    ann_dir = Path(root) / ANNOTATION_DIR / name
    _clear_frames(img_dir)
    _clear_frames(ann_dir)
    img_dir.mkdir(parents=True, exist_ok=True)
    ann_dir.mkdir(parents=True, exist_ok=True)
    n, num = cfg.num_frames, scene.num_objects
    visible = np.zeros((n, num), dtype=np.int64)
    in_frame = np.zeros((n, num), dtype=np.int64)
    frame_paths, ann_paths = [], []
    for t in range(n):
        fr = scene.render(t)
        visible[t] = np.bincount(fr.ids.ravel(), minlength=num + 1)[1 : num + 1]
        in_frame[t] = fr.frame_area
        p = img_dir / f"{t:05d}.jpg"
        if not cv2.imwrite(str(p), fr.image, [cv2.IMWRITE_JPEG_QUALITY, cfg.jpeg_quality]):
            raise OSError(f"could not write {p}")
        frame_paths.append(p)
        ann_paths.append(write_annotation(ann_dir / f"{t:05d}.png", fr.ids))
    kinds = [L.kind for L in scene.layers]
    return SequenceInfo(
        name=name, seed=cfg.seed, size=cfg.size, num_frames=n, object_ids=list(range(1, num + 1)),
        shapes={L.oid: L.shape for L in scene.targets}, num_distractors=kinds.count("distractor"),
        num_occluders=kinds.count("occluder"), leaving=sorted(scene.leaving), visible_area=visible,
        frame_area=in_frame, shape_area=scene.shape_area(), frame_paths=frame_paths, annotation_paths=ann_paths,
    )


def generate_dataset(root, num_sequences: int, cfg: SynthConfig | None = None, seed0: int = 0,
                     prefix: str = "synth", progress: bool = True) -> list[str]:
    """Write ``num_sequences`` sequences ``<prefix>_0000``... with seeds ``seed0 + i``
    and ``root/meta.json`` (config, seeds, names, per-sequence statistics)."""
    from tqdm import tqdm

    if num_sequences < 0:
        raise ValueError(f"num_sequences must be >= 0, got {num_sequences}")
    cfg = (cfg or SynthConfig()).resolved()
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    width = max(4, len(str(max(num_sequences - 1, 0))))
    names, seeds, stats = [], [], {}
    for i in tqdm(range(num_sequences), desc="synth", unit="seq", disable=not progress):
        name = f"{prefix}_{i:0{width}d}"
        seed = int(seed0) + i
        info = generate_sequence(root, name, dataclasses.replace(cfg, seed=seed))
        names.append(name)
        seeds.append(seed)
        stats[name] = info.summary()
    meta = {
        "generator": "tinysam2_ros.evaluation.synth",
        "config": {k: v for k, v in cfg.to_dict().items() if k != "seed"},
        "seed0": int(seed0),
        "seeds": seeds,
        "sequences": names,
        "stats": stats,
    }
    (root / "meta.json").write_text(json.dumps(meta, indent=1))
    return names


def make_preview(root, name: str, frames=None, out=None) -> np.ndarray:
    """Frames of a written sequence side by side (top) over their annotations (bottom,
    DAVIS colours over a darkened frame). Default frames: first, middle, last."""
    from .davis import annotation_paths, load_annotation, load_frames

    paths = load_frames(root, name)
    anns = annotation_paths(root, name)
    if frames is None:
        frames = sorted({0, len(paths) // 2, len(paths) - 1})
    pal = davis_palette().reshape(256, 3)[:, ::-1]  # BGR
    cols = []
    for t in frames:
        img = cv2.imread(str(paths[t]), cv2.IMREAD_COLOR)
        ids = load_annotation(anns[t])
        colour = pal[ids].astype(np.float32)
        over = np.where((ids > 0)[..., None], 0.35 * img + 0.65 * colour, 0.4 * img).astype(np.uint8)
        col = np.concatenate([img, over], axis=0)
        cv2.putText(col, f"t={t}", (4, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 255), 1, cv2.LINE_AA)
        cols.append(np.pad(col, ((0, 0), (0, 4), (0, 0)), constant_values=255))
    sheet = np.concatenate(cols, axis=1)[:, :-4]
    if out is not None:
        cv2.imwrite(str(out), sheet)
    return sheet
