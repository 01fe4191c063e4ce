"""Conversion between ``sensor_msgs`` image messages and numpy arrays.

Decoding (camera -> tracker) always yields an ``H x W x 3`` contiguous ``uint8`` RGB array that
owns its memory (never a view into the message buffer).  ``cv_bridge`` is used when it can be
imported; otherwise (and as a fallback when cv_bridge refuses an encoding we know) the module's own
numpy/OpenCV conversion handles::

    rgb8, bgr8, rgba8, bgra8, mono8, mono16,
    yuv422 (ROS name for UYVY), uyvy, yuv422_yuy2, yuyv

Every message is validated *before* its buffer is touched (also on the cv_bridge path, which can
crash or silently mis-read truncated data).  Problems raise :class:`ImageDecodeError`, whose
``cause`` is a short machine-friendly tag so that a node can report each kind of problem once.

Masks (a prompt's ``sensor_msgs/Image mask``) decode with :func:`image_msg_to_mask` to an
``H x W`` bool array (mono8 or 8UC1, nonzero = object) and encode with :func:`mask_to_image_msg`.

Encoding (tracker -> ROS) builds ``data`` from ``ndarray.tobytes()``: assigning a ``bytes`` object to
a ``uint8[]`` field is a single buffer copy in rclpy (milliseconds for a 1080p frame), whereas
assigning a numpy array or a list converts element by element (hundreds of milliseconds).
"""
from __future__ import annotations

import re

import cv2
import numpy as np
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import Header

__all__ = [
    "ImageDecodeError",
    "OWN_ENCODINGS",
    "image_msg_to_rgb",
    "image_msg_to_mask",
    "MASK_ENCODINGS",
    "compressed_msg_to_rgb",
    "rgb_to_image_msg",
    "bgr_to_image_msg",
    "mono_to_image_msg",
    "mask_to_image_msg",
    "cv_bridge_available",
]


class ImageDecodeError(ValueError):
    """An image message that cannot be turned into an RGB array.

    ``cause`` is one of ``zero_size``, ``bad_step``, ``short_data``, ``odd_width``,
    ``unsupported_encoding:<encoding>``, ``compressed_decode`` or ``unsupported_format:<format>``.
    """

    def __init__(self, cause: str, detail: str = ""):
        self.cause = cause
        self.detail = detail
        super().__init__(f"{cause}: {detail}" if detail else cause)


# encoding -> bytes per pixel, for the encodings converted here
_OWN_BPP = {
    "rgb8": 3,
    "bgr8": 3,
    "rgba8": 4,
    "bgra8": 4,
    "mono8": 1,
    "mono16": 2,
    "yuv422": 2,  # ROS "yuv422" is UYVY (U0 Y0 V0 Y1)
    "uyvy": 2,
    "yuv422_yuy2": 2,  # YUYV (Y0 U0 Y1 V0)
    "yuyv": 2,
}
OWN_ENCODINGS = frozenset(_OWN_BPP)
_YUV_CODES = {
    "yuv422": cv2.COLOR_YUV2RGB_UYVY,
    "uyvy": cv2.COLOR_YUV2RGB_UYVY,
    "yuv422_yuy2": cv2.COLOR_YUV2RGB_YUYV,
    "yuyv": cv2.COLOR_YUV2RGB_YUYV,
}
# further encodings whose layout we know well enough to validate, left to cv_bridge when present
_BAYER_RE = re.compile(r"^bayer_(rggb|bggr|gbrg|grbg)(8|16)$")
_GENERIC_RE = re.compile(r"^(8|16|32|64)(u|s|f)c([1-4])$")


def _bytes_per_pixel(enc: str) -> int | None:
    if enc in _OWN_BPP:
        return _OWN_BPP[enc]
    m = _BAYER_RE.match(enc)
    if m:
        return int(m.group(2)) // 8
    m = _GENERIC_RE.match(enc)
    if m:
        return int(m.group(1)) // 8 * int(m.group(3))
    return None


# ----------------------------------------------------------------------------------- cv_bridge
_bridge = None
_bridge_tried = False


def _get_bridge():
    """The shared CvBridge instance, or None when cv_bridge is not importable (tried once)."""
    global _bridge, _bridge_tried
    if not _bridge_tried:
        _bridge_tried = True
        try:
            from cv_bridge import CvBridge  # noqa: PLC0415 - optional dependency

            _bridge = CvBridge()
        except Exception:  # ImportError, or a broken binary install
            _bridge = None
    return _bridge


def cv_bridge_available() -> bool:
    return _get_bridge() is not None


# ----------------------------------------------------------------------------------- decoding
def _as_u8(data) -> np.ndarray:
    """A flat uint8 view of a message's data field (array.array, bytes, memoryview or list)."""
    try:
        return np.frombuffer(data, dtype=np.uint8)
    except (TypeError, ValueError):
        return np.asarray(data, dtype=np.uint8).reshape(-1)


def _validate(msg: Image) -> tuple[str, np.ndarray]:
    """Check geometry and encoding; returns (normalised encoding, flat uint8 buffer)."""
    h, w, step = int(msg.height), int(msg.width), int(msg.step)
    enc_raw = str(msg.encoding)
    if h <= 0 or w <= 0:
        raise ImageDecodeError("zero_size", f"{w}x{h}")
    enc = enc_raw.strip().lower()
    bpp = _bytes_per_pixel(enc)
    if bpp is None:
        raise ImageDecodeError(f"unsupported_encoding:{enc_raw}")
    if step < w * bpp:
        raise ImageDecodeError("bad_step", f"step {step} < width {w} * {bpp} bytes per pixel")
    buf = _as_u8(msg.data)
    if buf.size < h * step:
        raise ImageDecodeError("short_data", f"{buf.size} bytes < height {h} * step {step}")
    if enc in _YUV_CODES and w % 2:
        raise ImageDecodeError("odd_width", f"4:2:2 image of odd width {w}")
    return enc, buf


def _own_convert(msg: Image, enc: str, buf: np.ndarray) -> np.ndarray:
    h, w, step = int(msg.height), int(msg.width), int(msg.step)
    bpp = _OWN_BPP[enc]
    # rows keep their stride (padding stays in the buffer, sliced away, no copy yet)
    rows = buf[: h * step].reshape(h, step)[:, : w * bpp]
    if enc == "rgb8":
        return np.array(rows.reshape(h, w, 3), dtype=np.uint8, order="C", copy=True)
    if enc == "bgr8":
        return cv2.cvtColor(rows.reshape(h, w, 3), cv2.COLOR_BGR2RGB)
    if enc == "rgba8":
        return cv2.cvtColor(rows.reshape(h, w, 4), cv2.COLOR_RGBA2RGB)
    if enc == "bgra8":
        return cv2.cvtColor(rows.reshape(h, w, 4), cv2.COLOR_BGRA2RGB)
    if enc == "mono8":
        return cv2.cvtColor(np.ascontiguousarray(rows), cv2.COLOR_GRAY2RGB)
    if enc == "mono16":
        # 16 -> 8 bit by keeping the most significant byte (== value >> 8)
        hi = 0 if msg.is_bigendian else 1
        return cv2.cvtColor(np.ascontiguousarray(rows[:, hi::2]), cv2.COLOR_GRAY2RGB)
    # 4:2:2 packed
    return cv2.cvtColor(rows.reshape(h, w, 2), _YUV_CODES[enc])


def _finish(arr: np.ndarray, h: int, w: int) -> np.ndarray:
    arr = np.asarray(arr)
    if arr.shape != (h, w, 3) or arr.dtype != np.uint8:
        raise ImageDecodeError("bad_conversion", f"got {arr.dtype} {arr.shape}, want uint8 ({h}, {w}, 3)")
    return np.ascontiguousarray(arr)


def image_msg_to_rgb(msg: Image, *, use_cv_bridge: bool = True) -> np.ndarray:
    """Decode a ``sensor_msgs/Image`` to an ``H x W x 3`` contiguous uint8 RGB array.

    ``use_cv_bridge=False`` forces the built-in conversion (tests, or to avoid cv_bridge).
    Raises :class:`ImageDecodeError` for malformed or unsupported messages.
    """
    enc, buf = _validate(msg)
    h, w = int(msg.height), int(msg.width)
    bridge = _get_bridge() if use_cv_bridge else None
    if bridge is not None:
        try:
            out = bridge.imgmsg_to_cv2(msg, desired_encoding="rgb8")
        except Exception as exc:  # CvBridgeError, cv2.error, ...
            if enc not in _OWN_BPP:
                raise ImageDecodeError(f"unsupported_encoding:{msg.encoding}", str(exc)) from exc
        else:
            return _finish(out, h, w)
    if enc not in _OWN_BPP:
        raise ImageDecodeError(f"unsupported_encoding:{msg.encoding}", "needs cv_bridge")
    return _finish(_own_convert(msg, enc, buf), h, w)


MASK_ENCODINGS = ("mono8", "8uc1")  # lower case, as compared


def image_msg_to_mask(msg: Image) -> np.ndarray:
    """Decode a mask image (``mono8`` or ``8UC1``, nonzero = object) to an ``H x W`` bool array.

    Rows may be padded (``step > width``); the padding is ignored. The result owns its memory.
    Raises :class:`ImageDecodeError` (``unsupported_encoding:<encoding>``, ``zero_size``,
    ``bad_step`` or ``short_data``) for anything else.
    """
    enc = str(msg.encoding).strip().lower()
    if enc not in MASK_ENCODINGS:
        raise ImageDecodeError(f"unsupported_encoding:{msg.encoding}",
                               "a mask must be mono8 or 8UC1 (nonzero = object)")
    _, buf = _validate(msg)
    h, w, step = int(msg.height), int(msg.width), int(msg.step)
    return buf[: h * step].reshape(h, step)[:, :w] != 0


def compressed_msg_to_rgb(msg: CompressedImage) -> np.ndarray:
    """Decode a ``sensor_msgs/CompressedImage`` (JPEG, PNG, ... anything cv2.imdecode reads).

    Grayscale and 16-bit images come back as 3-channel 8-bit RGB; alpha is dropped.
    ``compressedDepth`` payloads (image_transport's depth format) are refused.
    """
    fmt = str(msg.format)
    if "compresseddepth" in fmt.lower().replace(" ", ""):
        raise ImageDecodeError("unsupported_format:compressedDepth", fmt)
    buf = _as_u8(msg.data)
    if buf.size == 0:
        raise ImageDecodeError("compressed_decode", "empty data")
    try:
        bgr = cv2.imdecode(buf, cv2.IMREAD_COLOR)
    except cv2.error as exc:
        raise ImageDecodeError("compressed_decode", str(exc)) from exc
    if bgr is None or bgr.ndim != 3 or bgr.shape[0] == 0 or bgr.shape[1] == 0:
        raise ImageDecodeError("compressed_decode", f"cv2.imdecode failed ({buf.size} bytes, format {fmt!r})")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


# ----------------------------------------------------------------------------------- encoding
def _new_msg(header: Header | None, h: int, w: int, encoding: str, step: int, data: bytes) -> Image:
    msg = Image()
    msg.header = header if header is not None else Header()
    msg.height = int(h)
    msg.width = int(w)
    msg.encoding = encoding
    msg.is_bigendian = 0
    msg.step = int(step)
    msg.data = data  # bytes: one buffer copy inside rclpy
    return msg


def _color_to_msg(arr: np.ndarray, order: str, header: Header | None, encoding: str) -> Image:
    arr = np.asarray(arr)
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.dtype != np.uint8:
        raise ValueError(f"expected an H x W x 3 uint8 array, got {arr.dtype} {arr.shape}")
    if encoding not in ("bgr8", "rgb8"):
        raise ValueError(f"encoding must be 'bgr8' or 'rgb8', not {encoding!r}")
    h, w = arr.shape[:2]
    if encoding[:3] != order and h and w:
        arr = cv2.cvtColor(np.ascontiguousarray(arr), cv2.COLOR_RGB2BGR)  # same swap both ways
    return _new_msg(header, h, w, encoding, w * 3, arr.tobytes())


def rgb_to_image_msg(rgb: np.ndarray, header: Header | None = None, encoding: str = "bgr8") -> Image:
    """An RGB-ordered ``H x W x 3`` uint8 array as an Image in ``encoding`` ("bgr8" or "rgb8")."""
    return _color_to_msg(rgb, "rgb", header, encoding)


def bgr_to_image_msg(bgr: np.ndarray, header: Header | None = None, encoding: str = "bgr8") -> Image:
    """Same for a BGR-ordered array (e.g. the output of ``render.draw_overlay``)."""
    return _color_to_msg(bgr, "bgr", header, encoding)


def mono_to_image_msg(arr: np.ndarray, header: Header | None = None) -> Image:
    """An ``H x W`` uint8 (-> mono8) or uint16 (-> mono16, little-endian) array as an Image."""
    arr = np.asarray(arr)
    if arr.ndim != 2:
        raise ValueError(f"expected an H x W array, got shape {arr.shape}")
    h, w = arr.shape
    if arr.dtype == np.uint8:
        return _new_msg(header, h, w, "mono8", w, arr.tobytes())
    if arr.dtype == np.uint16:
        return _new_msg(header, h, w, "mono16", w * 2, arr.astype("<u2", copy=False).tobytes())
    raise TypeError(f"mono image must be uint8 or uint16, not {arr.dtype}")


def mask_to_image_msg(mask: np.ndarray, header: Header | None = None) -> Image:
    """An ``H x W`` mask (bool, or any numbers: nonzero = object) as a mono8 Image (object = 255)."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"expected an H x W mask, got shape {mask.shape}")
    return mono_to_image_msg(np.where(mask != 0, np.uint8(255), np.uint8(0)), header)
