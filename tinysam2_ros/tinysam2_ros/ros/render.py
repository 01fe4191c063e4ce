"""Drawing and mask products for the tracking node: track colours, label image, cropped masks, overlay.

Conventions: masks are boolean ``H x W`` arrays; boxes are ``(x1, y1, x2, y2)`` pixel boxes with an
exclusive max (as ``tracking.tracker.mask_box`` returns) or ``None``; colours are BGR (OpenCV).
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

import cv2
import numpy as np

from ..tracking.overlap import resolve_overlaps

__all__ = ["track_color", "label_image", "crop_mask", "draw_overlay", "MASK_ALPHA"]

MASK_ALPHA = 0.5
_GOLDEN = 0.618033988749895
_FONT = cv2.FONT_HERSHEY_SIMPLEX
_FONT_SCALE = 0.5
_FONT_THICKNESS = 1
_BOX_THICKNESS = 2
_DASH = 6  # dash and gap length (pixels) of the box of an occluded / lost track

Box = tuple[int, int, int, int]


def track_color(track_id: int) -> tuple[int, int, int]:
    """A deterministic, well separated BGR colour for a track id (golden-ratio hue steps)."""
    hue = (int(track_id) * _GOLDEN) % 1.0
    # alternate the saturation/value slightly so that ids whose hues nearly coincide still differ
    sat = 220 if int(track_id) % 2 == 0 else 170
    hsv = np.array([[[round(hue * 180) % 180, sat, 255]]], dtype=np.uint8)
    b, g, r = cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)[0, 0]
    return int(b), int(g), int(r)


def label_image(logits: Mapping, shape: Sequence[int]) -> np.ndarray:
    """``H x W`` uint16 image the node publishes on ``masks``: pixel = track id, 0 = background.

    ``logits``: each track's low-res mask logits. Where tracks overlap, the highest logit
    wins, as SAM 2 writes DAVIS results (``tracking.overlap``), so the published image is
    what ``tinysam2 eval`` scores. Ids must be in 1..65535. ``shape`` may be ``(H, W)`` or
    an image shape ``(H, W, C)``.
    """
    for tid in logits:
        if not 1 <= int(tid) <= 0xFFFF:
            raise ValueError(f"track id {tid} does not fit a uint16 label image (1..65535)")
    return resolve_overlaps(logits, (int(shape[0]), int(shape[1]))).astype(np.uint16)


def _clip_box(box, h: int, w: int) -> Box | None:
    """Integer box clipped to the image (floats: floor the min, ceil the max); None if empty."""
    if box is None:
        return None
    x1, y1, x2, y2 = box
    x1 = min(max(int(math.floor(x1)), 0), w)
    y1 = min(max(int(math.floor(y1)), 0), h)
    x2 = min(max(int(math.ceil(x2)), 0), w)
    y2 = min(max(int(math.ceil(y2)), 0), h)
    if x2 <= x1 or y2 <= y1:
        return None
    return x1, y1, x2, y2


def crop_mask(mask: np.ndarray, box_xyxy) -> tuple[np.ndarray, int, int]:
    """Cut the box out of a mask: ``(uint8 crop with 255 = object, x_offset, y_offset)``.

    The box is clipped to the image. A ``None`` or empty box gives a 0 x 0 array (offsets are the
    clipped box corner, or 0, 0 for ``None``).
    """
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"mask must be H x W, got shape {mask.shape}")
    h, w = mask.shape
    clipped = _clip_box(box_xyxy, h, w)
    if clipped is None:
        if box_xyxy is None:
            return np.zeros((0, 0), dtype=np.uint8), 0, 0
        x1 = min(max(int(math.floor(box_xyxy[0])), 0), w)
        y1 = min(max(int(math.floor(box_xyxy[1])), 0), h)
        return np.zeros((0, 0), dtype=np.uint8), x1, y1
    x1, y1, x2, y2 = clipped
    crop = np.where(mask[y1:y2, x1:x2].astype(bool, copy=False), np.uint8(255), np.uint8(0))
    return np.ascontiguousarray(crop), x1, y1


def _dashed_rect(img: np.ndarray, box: Box, color, thickness: int = 1, dash: int = _DASH) -> None:
    x1, y1, x2, y2 = box[0], box[1], box[2] - 1, box[3] - 1  # inclusive corners
    edges = (((x1, y1), (x2, y1)), ((x2, y1), (x2, y2)), ((x2, y2), (x1, y2)), ((x1, y2), (x1, y1)))
    for (ax, ay), (bx, by) in edges:
        length = max(abs(bx - ax), abs(by - ay))
        if length == 0:
            cv2.line(img, (ax, ay), (bx, by), color, thickness)
            continue
        for s in range(0, length + 1, 2 * dash):
            e = min(s + dash - 1, length)
            p = (ax + (bx - ax) * s // length, ay + (by - ay) * s // length)
            q = (ax + (bx - ax) * e // length, ay + (by - ay) * e // length)
            cv2.line(img, p, q, color, thickness)


def _mask_box(mask: np.ndarray) -> Box | None:
    ys = np.flatnonzero(mask.any(axis=1))
    if ys.size == 0:
        return None
    xs = np.flatnonzero(mask.any(axis=0))
    return int(xs[0]), int(ys[0]), int(xs[-1]) + 1, int(ys[-1]) + 1


def _blend_mask(img: np.ndarray, mask: np.ndarray, color) -> None:
    """In place: img = (1 - alpha) img + alpha color where mask, working on the mask's bounding box only."""
    mb = _mask_box(mask)
    if mb is None:
        return
    x1, y1, x2, y2 = mb
    roi = img[y1:y2, x1:x2]  # a view: rows strided, pixels contiguous (OpenCV takes it as is)
    layer = cv2.merge([np.full((y2 - y1, x2 - x1), c, np.uint8) for c in color])
    blended = cv2.addWeighted(roi, 1.0 - MASK_ALPHA, layer, MASK_ALPHA, 0.0)
    # masked copy in OpenCV: ~100x faster than numpy boolean indexing / np.copyto(where=) at 1080p
    sel = np.ascontiguousarray(mask[y1:y2, x1:x2]).view(np.uint8)
    res = cv2.copyTo(blended, sel, roi)
    if res is not roi:  # OpenCV wrote into a temporary instead of the view
        roi[...] = res


def _draw_tag(img: np.ndarray, text: str, box: Box, color) -> None:
    """Filled tag in the track colour with black text, above the box (inside it if no room)."""
    h, w = img.shape[:2]
    (tw, th), base = cv2.getTextSize(text, _FONT, _FONT_SCALE, _FONT_THICKNESS)
    x = min(max(box[0], 0), max(w - tw - 2, 0))
    top = box[1] - th - base - 2
    if top < 0:
        top = min(box[1], max(h - th - base - 2, 0))
    cv2.rectangle(img, (x, top), (x + tw + 1, top + th + base + 1), color, cv2.FILLED)
    cv2.putText(img, text, (x + 1, top + th + 1), _FONT, _FONT_SCALE, (0, 0, 0), _FONT_THICKNESS, cv2.LINE_AA)


def draw_overlay(rgb: np.ndarray, tracks: Iterable[tuple]) -> np.ndarray:
    """BGR uint8 visualisation: the camera image with each track's mask, box and tag.

    ``tracks``: ``(track_id, label, state, mask, box_xyxy)`` tuples; ``state`` is ``tracked``,
    ``occluded`` or ``lost``. Tracked objects get their mask blended in their colour (alpha 0.5), a
    solid box and an ``"<id> <label>"`` tag; other states get a thin dashed box, no mask fill and the
    state appended to the tag. A track with neither box nor mask pixels draws nothing. Where no box is
    given the tag sits at the mask's bounding box. The input is never modified.
    """
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"expected an H x W x 3 uint8 RGB image, got {rgb.dtype} {rgb.shape}")
    out = cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2BGR)  # a new array
    h, w = out.shape[:2]
    tags = []
    # masks first (all tracks), then boxes and tags on top so that no fill covers a tag
    for track_id, label, state, mask, box in tracks:
        color = track_color(track_id)
        tracked = state == "tracked"
        m = None
        if mask is not None:
            m = np.asarray(mask)
            if m.shape != (h, w):
                raise ValueError(f"mask of track {track_id} has shape {m.shape}, expected {(h, w)}")
            m = m.astype(bool, copy=False)
            if tracked:
                _blend_mask(out, m, color)
        b = _clip_box(box, h, w)
        if b is None and m is not None:
            b = _mask_box(m)
        if b is None:
            continue
        text = f"{int(track_id)} {label}".strip() if label not in (None, "") else f"{int(track_id)}"
        if not tracked:
            text += f" ({state})"
        # Hershey fonts only draw ASCII
        tags.append((b, color, tracked, text.encode("ascii", "replace").decode("ascii")))
    for b, color, tracked, text in tags:
        if tracked:
            cv2.rectangle(out, (b[0], b[1]), (b[2] - 1, b[3] - 1), color, _BOX_THICKNESS)
        else:
            _dashed_rect(out, b, color, 1)
    for b, color, _, text in tags:
        _draw_tag(out, text, b, color)
    return out
