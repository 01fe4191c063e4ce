"""Tiny deterministic DAVIS-layout sequences for unit tests.

Each sequence is a textured, slowly panning background with a few textured ellipses
and rectangles of distinct colours moving across it; object k carries id k in the
palette annotations. Objects are drawn in id order, so a higher id occludes a lower
one where they overlap. The same arguments always give the same files (up to the
JPEG encoder, which is deterministic for a given OpenCV build).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from .davis import ANNOTATION_DIR, IMAGE_DIR, write_annotation

# Well separated, saturated object colours (BGR for OpenCV).
_COLOURS_BGR = [
    (40, 40, 220),
    (40, 200, 40),
    (220, 80, 30),
    (30, 210, 230),
    (200, 40, 200),
    (230, 220, 40),
    (20, 120, 250),
    (150, 90, 240),
]


@dataclass(frozen=True)
class ToySequence:
    """What ``make_toy_sequence`` wrote."""

    name: str
    frame_paths: list[Path]
    annotation_paths: list[Path]
    ids: np.ndarray  # T x H x W uint8 ground-truth object ids (what the PNGs hold)

    def object_ids(self) -> list[int]:
        return sorted(int(i) for i in np.unique(self.ids) if i != 0)


def _texture(rng: np.random.Generator, h: int, w: int, cell: int) -> np.ndarray:
    """Smooth random texture in [-1, 1], H x W float32 (upsampled noise)."""
    small = rng.standard_normal((h // cell + 2, w // cell + 2)).astype(np.float32)
    big = cv2.resize(small, (w + 2 * cell, h + 2 * cell), interpolation=cv2.INTER_CUBIC)
    big = big[cell : cell + h, cell : cell + w]
    return np.clip(big / (np.abs(big).max() + 1e-6), -1, 1)


def make_toy_sequence(
    root,
    name: str,
    num_frames: int = 6,
    size: tuple[int, int] = (96, 128),
    num_objects: int = 2,
    seed: int = 0,
    appear_at: Sequence[int] | None = None,
    jpeg_quality: int = 92,
) -> ToySequence:
    """Write ``root/JPEGImages/<name>/%05d.jpg`` and ``root/Annotations/<name>/%05d.png``.

    ``size`` is (height, width). ``appear_at`` optionally gives, per object, the first
    frame in which it is drawn (default: all objects from frame 0), to test objects
    that enter later. Every object stays visible from its first frame on (objects
    move within their own horizontal lane, so they never hide each other completely).
    """
    h, w = int(size[0]), int(size[1])
    if num_frames < 1:
        raise ValueError("num_frames must be >= 1")
    if not 1 <= num_objects <= len(_COLOURS_BGR):
        raise ValueError(f"num_objects must be in 1..{len(_COLOURS_BGR)}")
    if h < 8 * num_objects or w < 32:
        raise ValueError(f"size {size} is too small for {num_objects} objects")
    appear = [0] * num_objects if appear_at is None else [int(a) for a in appear_at]
    if len(appear) != num_objects:
        raise ValueError(f"appear_at has {len(appear)} entries for {num_objects} objects")

    rng = np.random.default_rng(seed)
    pan = 3  # background pans by up to `pan` pixels per frame
    bg_h, bg_w = h + pan * num_frames + 2, w + pan * num_frames + 2
    # A low-saturation base colour so the saturated objects always stand out.
    base = (rng.uniform(90, 160) + rng.uniform(-15, 15, size=3)).astype(np.float32)
    bg_tex = _texture(rng, bg_h, bg_w, cell=6)
    bg_fine = rng.standard_normal((bg_h, bg_w)).astype(np.float32)
    background = base[None, None, :] + 45 * bg_tex[..., None] + 10 * bg_fine[..., None]
    pan_dx, pan_dy = rng.integers(0, pan + 1, size=2)

    # One horizontal lane per object (shuffled). With half-heights <= 0.45 lane, aspect
    # <= 1.8, tilt <= 20 degrees and sway <= 0.1 lane, an object reaches at most ~0.33
    # lane into a neighbour's lane, so the centre of every object stays uncovered.
    lane_h = h / num_objects
    lanes = rng.permutation(num_objects)
    objects = []
    for k in range(num_objects):
        cy = (lanes[k] + 0.5) * lane_h
        ry = max(3.0, lane_h * rng.uniform(0.3, 0.45))
        rx = max(4.0, min(w * 0.2, ry * rng.uniform(1.0, 1.8)))
        cx = rng.uniform(rx + 1, w - rx - 1)
        speed = rng.uniform(2.0, 5.0) * rng.choice([-1, 1])
        objects.append(
            {
                "shape": "ellipse" if k % 2 == 0 else "rect",
                "c": (cx, cy),
                "r": (rx, ry),
                "v": speed,
                "wobble": lane_h * 0.1,  # vertical sway amplitude
                "phase": rng.uniform(0, 2 * np.pi, size=2),
                "tilt": float(rng.uniform(5, 20)),  # rotation sways within +-20 degrees
                "colour": np.array(_COLOURS_BGR[k], dtype=np.float32),
                "tex": _texture(rng, h, w, cell=3),
            }
        )

    img_dir = Path(root) / IMAGE_DIR / name
    ann_dir = Path(root) / ANNOTATION_DIR / name
    img_dir.mkdir(parents=True, exist_ok=True)
    ann_dir.mkdir(parents=True, exist_ok=True)

    all_ids = np.zeros((num_frames, h, w), dtype=np.uint8)
    frame_paths, annotation_paths = [], []
    for t in range(num_frames):
        oy, ox = int(t * pan_dy), int(t * pan_dx)
        frame = background[oy : oy + h, ox : ox + w].copy()
        ids = all_ids[t]
        for k, ob in enumerate(objects):
            if t < appear[k]:
                continue
            cx = _bounce(ob["c"][0] + ob["v"] * t, ob["r"][0], w)
            cy = ob["c"][1] + ob["wobble"] * np.sin(ob["phase"][0] + 0.5 * t)
            angle = ob["tilt"] * np.sin(ob["phase"][1] + 0.4 * t)
            shape_mask = np.zeros((h, w), dtype=np.uint8)
            if ob["shape"] == "ellipse":
                cv2.ellipse(
                    shape_mask,
                    (int(round(cx)), int(round(cy))),
                    (int(round(ob["r"][0])), int(round(ob["r"][1]))),
                    angle,
                    0,
                    360,
                    1,
                    thickness=-1,
                )
            else:
                box = cv2.boxPoints(((cx, cy), (2 * ob["r"][0], 2 * ob["r"][1]), angle))
                cv2.fillPoly(shape_mask, [np.round(box).astype(np.int32)], 1)
            m = shape_mask.astype(bool)
            frame[m] = ob["colour"] + 35 * ob["tex"][m][:, None]
            ids[m] = k + 1
        frame_path = img_dir / f"{t:05d}.jpg"
        cv2.imwrite(str(frame_path), np.clip(frame, 0, 255).astype(np.uint8), [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality])
        frame_paths.append(frame_path)
        annotation_paths.append(write_annotation(ann_dir / f"{t:05d}.png", ids))
    return ToySequence(name, frame_paths, annotation_paths, all_ids)


def _bounce(x: float, r: float, w: int) -> float:
    """Reflect a centre moving along a line back into [r, w - 1 - r]."""
    lo, hi = r, w - 1 - r
    span = hi - lo
    if span <= 0:
        return w / 2
    p = (x - lo) % (2 * span)
    return lo + (p if p <= span else 2 * span - p)
