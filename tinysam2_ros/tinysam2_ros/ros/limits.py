"""Limits on what a client may send, checked before any costly work.

A hostile or buggy client must not be able to crash the node, make it allocate
gigabytes, or break its outputs. Each check returns a ``Refusal`` (a short cause
tag, counted in /diagnostics, and a sentence for the log / service answer) or
None. Plain Python: tested without ROS.
"""
from __future__ import annotations

import io
from dataclasses import dataclass

from PIL import Image as PILImage

HUGE = (1 << 31) - 1
MAX_TRACK_ID = 0xFFFF  # the 'masks' label image is mono16: pixel = track id


@dataclass(frozen=True)
class Refusal:
    cause: str  # e.g. "obj_id_too_large": the /diagnostics counter and the once-per-cause log key
    reason: str


@dataclass(frozen=True)
class PromptLimits:
    max_label_length: int = 64
    max_points: int = 64


def prompt_refusal(obj_id: int, label: str, num_points: int, stamp: float | None, limits: PromptLimits,
                   newest_image_stamp: float | None, now: float | None, tolerance: float) -> Refusal | None:
    """Why a prompt must be refused before it reaches the tracker, or None.

    A stamp may lie ahead of the newest image the tracker processed (the image it was
    made on may still be on its way), but not ahead of both the newest image received
    and the node's clock by more than ``tolerance``: such a prompt names no image.
    """
    if obj_id > MAX_TRACK_ID:
        return Refusal("obj_id_too_large", f"obj_id {obj_id} is above {MAX_TRACK_ID}, the largest id the mono16 "
                                           "label image 'masks' can carry")
    if len(label) > limits.max_label_length:
        return Refusal("label_too_long", f"label of {len(label)} characters is longer than "
                                         f"max_label_length={limits.max_label_length}")
    if num_points > limits.max_points:
        return Refusal("too_many_points", f"{num_points} points are more than "
                                          f"max_points_per_prompt={limits.max_points}")
    if stamp is not None:
        known = [t for t in (newest_image_stamp, now) if t is not None]
        if known and stamp > max(known) + tolerance:
            return Refusal("future_stamp", f"stamp {stamp:.3f} is {stamp - max(known):.3f} s ahead of the newest "
                                           f"image and the node's clock (stamp_tolerance={tolerance} s): "
                                           "a prompt must name an image already sent")
    return None


def compressed_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a compressed image's header, without decoding it; None if unreadable.

    PIL reads only the header here (PNG IHDR, JPEG SOF, ...): the pixels are not decoded.
    """
    try:
        with PILImage.open(io.BytesIO(data)) as im:
            return im.size
    except PILImage.DecompressionBombError:  # above 2 x PIL's own limit: no size given, treat as huge
        return HUGE, HUGE
    except Exception:  # UnidentifiedImageError, truncated header, ...
        return None


def image_size_refusal(width: int, height: int, max_pixels: int) -> Refusal | None:
    if width * height > max_pixels:
        return Refusal("image_too_large", f"{width}x{height} image ({width * height} pixels) is above "
                                          f"max_image_pixels={max_pixels}")
    return None


def compressed_refusal(data: bytes, max_pixels: int) -> Refusal | None:
    """Refuse a compressed image whose header is unreadable or declares too many pixels."""
    size = compressed_size(data)
    if size is None:
        return Refusal("compressed_header", f"cannot read the image size from the header of {len(data)} bytes "
                                            "(not a PNG, JPEG or other format PIL identifies): not decoded")
    return image_size_refusal(size[0], size[1], max_pixels)
