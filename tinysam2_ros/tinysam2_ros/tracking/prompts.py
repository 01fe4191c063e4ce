"""Validated prompts: a box, clicks with labels, or a mask, on one object.

Everything a detector or a person sends goes through ``make_prompt`` so that bad
input (NaN, inverted or out-of-image boxes, unknown labels, empty masks) becomes a
``PromptError`` with a reason, never a silently wrong mask.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


class PromptError(ValueError):
    """A prompt that cannot be applied, with the reason."""


@dataclass(frozen=True)
class Prompt:
    """A prompt in original-frame pixels. Boxes become two labelled corner points."""

    points_xy: np.ndarray | None = None  # N x 2 float32, box corners first (labels 2, 3)
    labels: np.ndarray | None = None  # N int32: 1 fg, 0 bg, 2/3 box corners
    mask: np.ndarray | None = None  # H x W bool

    @property
    def num_points(self) -> int:
        return 0 if self.points_xy is None else len(self.points_xy)


def _check_box(box, frame_hw) -> np.ndarray:
    b = np.asarray(box, dtype=np.float64).reshape(-1)
    if b.size != 4:
        raise PromptError(f"a box needs 4 numbers (x1, y1, x2, y2), got {b.size}")
    if not np.all(np.isfinite(b)):
        raise PromptError(f"box has non-finite values: {b.tolist()}")
    x1, y1, x2, y2 = b
    if x2 <= x1 or y2 <= y1:
        raise PromptError(f"box is empty or inverted (need x2 > x1 and y2 > y1): {b.tolist()}")
    if frame_hw is not None:
        h, w = frame_hw
        if x2 <= 0 or y2 <= 0 or x1 >= w or y1 >= h:
            raise PromptError(f"box {b.tolist()} lies outside the {w}x{h} image")
        b = np.array([max(x1, 0), max(y1, 0), min(x2, w), min(y2, h)])
    return b.astype(np.float32)


def make_prompt(
    box=None,
    points=None,
    labels=None,
    mask=None,
    frame_hw: tuple[int, int] | None = None,
) -> Prompt:
    """Validate and normalise one object's prompt (coordinates in frame pixels)."""
    if mask is not None:
        if box is not None or points is not None:
            raise PromptError("give either a mask or box/points, not both")
        m = np.asarray(mask)
        if m.ndim != 2:
            raise PromptError(f"a mask prompt must be 2-D, got shape {m.shape}")
        if frame_hw is not None and m.shape != tuple(frame_hw):
            raise PromptError(f"mask prompt is {m.shape[1]}x{m.shape[0]}, image is {frame_hw[1]}x{frame_hw[0]}")
        m = m > 0
        if not m.any():
            raise PromptError("mask prompt is empty")
        return Prompt(mask=m)

    pts: list[np.ndarray] = []
    labs: list[np.ndarray] = []
    if box is not None:
        b = _check_box(box, frame_hw)
        pts.append(b.reshape(2, 2))
        labs.append(np.array([2, 3], dtype=np.int32))
    if points is not None:
        p = np.asarray(points, dtype=np.float64).reshape(-1, 2) if len(points) else np.zeros((0, 2))
        lab = np.ones(len(p), dtype=np.int32) if labels is None else np.asarray(labels, dtype=np.int64).reshape(-1)
        if len(lab) != len(p):
            raise PromptError(f"{len(p)} points but {len(lab)} labels")
        if not np.all(np.isfinite(p)):
            raise PromptError("points have non-finite coordinates")
        if np.any((lab != 0) & (lab != 1)):
            raise PromptError(f"point labels must be 1 (foreground) or 0 (background), got {sorted(set(lab.tolist()))}")
        if frame_hw is not None and len(p):
            h, w = frame_hw
            outside = (p[:, 0] < 0) | (p[:, 1] < 0) | (p[:, 0] >= w) | (p[:, 1] >= h)
            if outside.any():
                raise PromptError(f"point(s) {p[outside].tolist()} lie outside the {w}x{h} image")
        if len(p):
            pts.append(p.astype(np.float32))
            labs.append(lab.astype(np.int32))
    if not pts:
        raise PromptError("a prompt needs a box, at least one point, or a mask")
    if box is None and not np.any(np.concatenate(labs) == 1):
        raise PromptError("point prompts need at least one foreground point (label 1)")
    return Prompt(points_xy=np.concatenate(pts), labels=np.concatenate(labs))
