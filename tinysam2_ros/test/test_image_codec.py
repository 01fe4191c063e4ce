"""sensor_msgs Image / CompressedImage <-> numpy conversion (built-in path; no cv_bridge, no node)."""
from __future__ import annotations

import time

import cv2
import numpy as np
import pytest
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import Header

from tinysam2_ros.ros.image_codec import (
    ImageDecodeError,
    bgr_to_image_msg,
    compressed_msg_to_rgb,
    image_msg_to_mask,
    image_msg_to_rgb,
    mask_to_image_msg,
    mono_to_image_msg,
    rgb_to_image_msg,
)

H, W = 7, 10  # small, even width (4:2:2 needs it), odd height


def decode(msg):
    return image_msg_to_rgb(msg, use_cv_bridge=False)


def make_msg(pixels: np.ndarray, encoding: str, pad: int = 0, bigendian: int = 0, pad_byte: int = 0xAB) -> Image:
    """Image message from an H x W x bytes-per-pixel uint8 array, with `pad` junk bytes per row."""
    h, w = pixels.shape[:2]
    rows = pixels.reshape(h, -1)
    if pad:
        rows = np.concatenate([rows, np.full((h, pad), pad_byte, np.uint8)], axis=1)
    msg = Image()
    msg.header.frame_id = "cam"
    msg.height, msg.width = h, w
    msg.encoding = encoding
    msg.is_bigendian = bigendian
    msg.step = rows.shape[1]
    msg.data = rows.tobytes()
    return msg


@pytest.fixture
def rgb() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, size=(H, W, 3), dtype=np.uint8)


def check_rgb(out: np.ndarray, h: int = H, w: int = W) -> None:
    assert out.dtype == np.uint8 and out.shape == (h, w, 3) and out.flags.c_contiguous


def yuv601_to_rgb(y, u, v) -> np.ndarray:
    """Independent BT.601 limited-range reference (what OpenCV's 4:2:2 conversions implement)."""
    y, u, v = (np.asarray(a, np.float64) for a in (y, u, v))
    c = 1.164 * (y - 16)
    rgb = np.stack([c + 1.596 * (v - 128), c - 0.813 * (v - 128) - 0.391 * (u - 128), c + 2.018 * (u - 128)], -1)
    return np.clip(np.round(rgb), 0, 255)


# ------------------------------------------------------------------------- colour encodings
@pytest.mark.parametrize("pad", [0, 5])
def test_rgb8(rgb, pad):
    out = decode(make_msg(rgb, "rgb8", pad))
    check_rgb(out)
    np.testing.assert_array_equal(out, rgb)


@pytest.mark.parametrize("pad", [0, 3])
def test_bgr8(rgb, pad):
    out = decode(make_msg(np.ascontiguousarray(rgb[..., ::-1]), "bgr8", pad))
    check_rgb(out)
    np.testing.assert_array_equal(out, rgb)


@pytest.mark.parametrize("pad", [0, 2])
def test_rgba8_bgra8(rgb, pad):
    alpha = np.random.default_rng(1).integers(0, 256, size=(H, W, 1), dtype=np.uint8)
    np.testing.assert_array_equal(decode(make_msg(np.concatenate([rgb, alpha], -1), "rgba8", pad)), rgb)
    bgra = np.concatenate([rgb[..., ::-1], alpha], -1)
    out = decode(make_msg(bgra, "bgra8", pad))
    check_rgb(out)
    np.testing.assert_array_equal(out, rgb)


@pytest.mark.parametrize("pad", [0, 1])
def test_mono8(pad):
    gray = np.random.default_rng(2).integers(0, 256, size=(H, W), dtype=np.uint8)
    out = decode(make_msg(gray[..., None], "mono8", pad))
    check_rgb(out)
    np.testing.assert_array_equal(out, np.repeat(gray[..., None], 3, -1))


@pytest.mark.parametrize("bigendian", [0, 1])
@pytest.mark.parametrize("pad", [0, 6])
def test_mono16_scaled_to_8bit(bigendian, pad):
    vals = np.random.default_rng(3).integers(0, 65536, size=(H, W), dtype=np.uint16)
    vals[0, :4] = [0, 255, 256, 65535]
    raw = vals.astype(">u2" if bigendian else "<u2").view(np.uint8).reshape(H, W, 2)
    out = decode(make_msg(raw, "mono16", pad, bigendian=bigendian))
    check_rgb(out)
    expected = (vals >> 8).astype(np.uint8)
    np.testing.assert_array_equal(out, np.repeat(expected[..., None], 3, -1))
    assert list(out[0, :4, 0]) == [0, 0, 1, 255]


def pack_422(y: np.ndarray, u: np.ndarray, v: np.ndarray, order: str) -> np.ndarray:
    """Pack per-pixel Y and per-pair U/V (H x W/2) into H x W x 2 bytes, order 'uyvy' or 'yuyv'."""
    h, w = y.shape
    out = np.empty((h, w // 2, 4), np.uint8)
    y0, y1 = y[:, 0::2], y[:, 1::2]
    out[...] = np.stack([u, y0, v, y1] if order == "uyvy" else [y0, u, y1, v], -1)
    return out.reshape(h, w, 2)


@pytest.mark.parametrize(
    "encoding,order", [("yuv422", "uyvy"), ("uyvy", "uyvy"), ("yuv422_yuy2", "yuyv"), ("yuyv", "yuyv")]
)
@pytest.mark.parametrize("pad", [0, 4])
def test_yuv422_variants(encoding, order, pad):
    rng = np.random.default_rng(4)
    y = rng.integers(16, 236, size=(H, W), dtype=np.uint8)
    u = rng.integers(16, 241, size=(H, W // 2), dtype=np.uint8)
    v = rng.integers(16, 241, size=(H, W // 2), dtype=np.uint8)
    out = decode(make_msg(pack_422(y, u, v, order), encoding, pad))
    check_rgb(out)
    ref = yuv601_to_rgb(y, np.repeat(u, 2, 1), np.repeat(v, 2, 1))
    assert np.abs(out.astype(np.int16) - ref).max() <= 2
    # neutral chroma: grey output that follows Y pixel by pixel (a byte-order mix-up would not)
    grey = decode(make_msg(pack_422(y, np.full_like(u, 128), np.full_like(v, 128), order), encoding, pad))
    assert (grey[..., 0] == grey[..., 1]).all() and (grey[..., 1] == grey[..., 2]).all()
    assert np.abs(grey[..., 0].astype(np.int16) - yuv601_to_rgb(y, 128, 128)[..., 0]).max() <= 1


def test_encoding_name_is_case_insensitive(rgb):
    np.testing.assert_array_equal(decode(make_msg(rgb, "RGB8")), rgb)


def test_data_as_bytes_or_list(rgb):
    msg = make_msg(rgb, "rgb8")
    assert type(msg.data).__name__ == "array"  # what rclpy stores
    np.testing.assert_array_equal(decode(msg), rgb)
    msg.data = list(rgb.tobytes())
    np.testing.assert_array_equal(decode(msg), rgb)


def test_result_does_not_alias_message(rgb):
    msg = make_msg(rgb, "rgb8")
    out = decode(msg)
    out[:] = 0
    np.testing.assert_array_equal(np.frombuffer(msg.data, np.uint8).reshape(H, W, 3), rgb)


def test_default_path_matches_builtin(rgb):
    """With or without cv_bridge installed the default call gives the same pixels for bgr8."""
    msg = make_msg(np.ascontiguousarray(rgb[..., ::-1]), "bgr8", pad=3)
    np.testing.assert_array_equal(image_msg_to_rgb(msg), rgb)


# ------------------------------------------------------------------------- malformed messages
def cause_of(msg, **kw) -> str:
    with pytest.raises(ImageDecodeError) as ei:
        image_msg_to_rgb(msg, **kw)
    assert isinstance(ei.value, ValueError)
    return ei.value.cause


@pytest.mark.parametrize("use_cv_bridge", [False, True])
def test_malformed(rgb, use_cv_bridge):
    kw = {"use_cv_bridge": use_cv_bridge}
    good = make_msg(rgb, "rgb8", pad=2)

    msg = make_msg(rgb, "rgb8")
    msg.height = 0
    assert cause_of(msg, **kw) == "zero_size"
    msg = make_msg(rgb, "rgb8")
    msg.width = 0
    assert cause_of(msg, **kw) == "zero_size"

    msg = make_msg(rgb, "rgb8")
    msg.step = W * 3 - 1
    assert cause_of(msg, **kw) == "bad_step"
    msg.step = 0
    assert cause_of(msg, **kw) == "bad_step"

    msg = make_msg(rgb, "rgb8", pad=2)
    msg.data = bytes(msg.data)[:-1]  # one byte short (even though the last row's padding is "spare")
    assert cause_of(msg, **kw) == "short_data"
    msg.data = b""
    assert cause_of(msg, **kw) == "short_data"
    good.height = H + 1  # claims more rows than sent
    assert cause_of(good, **kw) == "short_data"

    msg = make_msg(rgb, "rgb8")
    msg.encoding = "weird42"
    assert cause_of(msg, **kw) == "unsupported_encoding:weird42"
    msg.encoding = ""
    assert cause_of(msg, **kw) == "unsupported_encoding:"

    msg = make_msg(np.zeros((H, W - 1, 2), np.uint8), "yuv422")
    assert cause_of(msg, **kw) == "odd_width"


def test_bayer_needs_cv_bridge():
    msg = make_msg(np.zeros((H, W, 1), np.uint8), "bayer_rggb8")
    assert cause_of(msg, use_cv_bridge=False) == "unsupported_encoding:bayer_rggb8"
    # geometry of such encodings is still validated first
    msg.step = W - 1
    assert cause_of(msg, use_cv_bridge=False) == "bad_step"


def test_bad_step_for_wide_pixels(rgb):
    msg = make_msg(np.zeros((H, W, 2), np.uint8), "mono16")
    msg.step = W  # mono16 needs 2 bytes per pixel
    assert cause_of(msg, use_cv_bridge=False) == "bad_step"


# ------------------------------------------------------------------------- compressed
def compressed(data: bytes, fmt: str) -> CompressedImage:
    msg = CompressedImage()
    msg.format = fmt
    msg.data = data
    return msg


def smooth_rgb(h=48, w=64) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    return np.stack([xx * 255 // (w - 1), yy * 255 // (h - 1), np.full_like(xx, 90)], -1).astype(np.uint8)


def test_compressed_png_exact():
    rgb = np.random.default_rng(5).integers(0, 256, size=(20, 30, 3), dtype=np.uint8)
    ok, enc = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    assert ok
    out = compressed_msg_to_rgb(compressed(enc.tobytes(), "bgr8; png compressed bgr8"))
    check_rgb(out, 20, 30)
    np.testing.assert_array_equal(out, rgb)


def test_compressed_jpeg_close():
    rgb = smooth_rgb()
    ok, enc = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 95])
    assert ok
    out = compressed_msg_to_rgb(compressed(enc.tobytes(), "jpeg"))
    check_rgb(out, 48, 64)
    assert np.abs(out.astype(np.int16) - rgb).mean() < 3  # channel order right, lossy but close


def test_compressed_grayscale_gives_three_channels():
    gray = np.random.default_rng(6).integers(0, 256, size=(12, 16), dtype=np.uint8)
    ok, enc = cv2.imencode(".png", gray)
    out = compressed_msg_to_rgb(compressed(enc.tobytes(), "mono8; png compressed mono8"))
    check_rgb(out, 12, 16)
    np.testing.assert_array_equal(out, np.repeat(gray[..., None], 3, -1))


@pytest.mark.parametrize("data", [b"", b"\x00" * 10, b"not an image at all" * 20, b"\xff\xd8\xff\xe0garbage"])
def test_compressed_garbage(data):
    with pytest.raises(ImageDecodeError) as ei:
        compressed_msg_to_rgb(compressed(data, "jpeg"))
    assert ei.value.cause == "compressed_decode"


def test_compressed_depth_refused():
    ok, enc = cv2.imencode(".png", np.zeros((4, 4), np.uint16))
    with pytest.raises(ImageDecodeError) as ei:
        compressed_msg_to_rgb(compressed(b"\x00" * 12 + enc.tobytes(), "16UC1; compressedDepth png"))
    assert ei.value.cause == "unsupported_format:compressedDepth"


# ------------------------------------------------------------------------- encoding
def test_rgb_to_image_msg(rgb):
    header = Header()
    header.frame_id = "camera_optical"
    header.stamp.sec = 12
    msg = rgb_to_image_msg(rgb, header)  # default bgr8
    assert (msg.height, msg.width, msg.encoding, msg.step, msg.is_bigendian) == (H, W, "bgr8", W * 3, 0)
    assert msg.header.frame_id == "camera_optical" and msg.header.stamp.sec == 12
    assert bytes(msg.data) == np.ascontiguousarray(rgb[..., ::-1]).tobytes()
    np.testing.assert_array_equal(decode(msg), rgb)

    msg = rgb_to_image_msg(rgb, header, encoding="rgb8")
    assert msg.encoding == "rgb8" and bytes(msg.data) == rgb.tobytes()
    np.testing.assert_array_equal(decode(msg), rgb)

    # non-contiguous input is fine
    big = np.zeros((H, W * 2, 3), np.uint8)
    big[:, ::2] = rgb
    np.testing.assert_array_equal(decode(rgb_to_image_msg(big[:, ::2], None, "rgb8")), rgb)

    with pytest.raises(ValueError):
        rgb_to_image_msg(rgb, header, encoding="mono8")
    with pytest.raises(ValueError):
        rgb_to_image_msg(rgb[..., 0], header)


def test_bgr_to_image_msg(rgb):
    bgr = np.ascontiguousarray(rgb[..., ::-1])
    msg = bgr_to_image_msg(bgr, None)
    assert msg.encoding == "bgr8" and bytes(msg.data) == bgr.tobytes()
    np.testing.assert_array_equal(decode(bgr_to_image_msg(bgr, None, "rgb8")), rgb)


def test_mono_to_image_msg():
    m8 = np.random.default_rng(7).integers(0, 256, size=(H, W), dtype=np.uint8)
    msg = mono_to_image_msg(m8, None)
    assert (msg.encoding, msg.step, msg.height, msg.width) == ("mono8", W, H, W)
    assert bytes(msg.data) == m8.tobytes()

    m16 = np.random.default_rng(8).integers(0, 65536, size=(H, W), dtype=np.uint16)
    msg = mono_to_image_msg(m16, Header(frame_id="x"))
    assert (msg.encoding, msg.step, msg.is_bigendian, msg.header.frame_id) == ("mono16", 2 * W, 0, "x")
    np.testing.assert_array_equal(np.frombuffer(bytes(msg.data), "<u2").reshape(H, W), m16)
    np.testing.assert_array_equal(decode(msg)[..., 0], (m16 >> 8).astype(np.uint8))

    empty = mono_to_image_msg(np.zeros((0, 0), np.uint8), None)  # e.g. the crop of an empty box
    assert (empty.height, empty.width, len(empty.data)) == (0, 0, 0)

    with pytest.raises(TypeError):
        mono_to_image_msg(np.zeros((2, 2), np.float32), None)
    with pytest.raises(ValueError):
        mono_to_image_msg(np.zeros((2, 2, 1), np.uint8), None)


# ------------------------------------------------------------------------- masks (prompts)
def mask_values() -> np.ndarray:
    """0 = background; any nonzero value (1, 7, 255) = object."""
    v = np.zeros((H, W), np.uint8)
    v[1:5, 2:6] = 255
    v[6, 0] = 1
    v[0, 9] = 7
    return v


@pytest.mark.parametrize("encoding", ["mono8", "8UC1", "8uc1", " MONO8 "])
def test_mask_mono8_and_8uc1(encoding):
    v = mask_values()
    out = image_msg_to_mask(make_msg(v[..., None], encoding))
    assert out.dtype == np.bool_ and out.shape == (H, W) and out.flags.c_contiguous
    np.testing.assert_array_equal(out, v != 0)


def test_mask_padded_step_ignores_the_padding():
    v = mask_values()
    msg = make_msg(v[..., None], "mono8", pad=3, pad_byte=0xFF)  # nonzero junk in the padding
    assert msg.step == W + 3
    out = image_msg_to_mask(msg)
    assert out.shape == (H, W)
    np.testing.assert_array_equal(out, v != 0)
    msg.data = list(bytes(msg.data))  # a list-valued data field works too
    np.testing.assert_array_equal(image_msg_to_mask(msg), v != 0)


def test_mask_does_not_alias_the_message():
    msg = make_msg(mask_values()[..., None], "mono8")
    out = image_msg_to_mask(msg)
    assert out.base is None or not np.shares_memory(out, np.frombuffer(msg.data, np.uint8))
    out[:] = False
    np.testing.assert_array_equal(image_msg_to_mask(msg), mask_values() != 0)


@pytest.mark.parametrize("encoding", ["rgb8", "bgr8", "mono16", "16UC1", "8UC3", "32FC1", "", "weird"])
def test_mask_other_encodings_refused(encoding):
    msg = make_msg(np.zeros((H, W, 1), np.uint8), "mono8")
    msg.encoding = encoding
    with pytest.raises(ImageDecodeError) as ei:
        image_msg_to_mask(msg)
    assert ei.value.cause == f"unsupported_encoding:{encoding}"
    assert "mono8 or 8UC1" in str(ei.value)


def test_mask_bad_geometry_refused():
    v = mask_values()[..., None]
    msg = make_msg(v, "mono8")
    msg.data = bytes(msg.data)[:-1]  # one byte short
    with pytest.raises(ImageDecodeError, match="short_data"):
        image_msg_to_mask(msg)
    msg = make_msg(v, "mono8")
    msg.height = H + 1  # more rows than sent
    with pytest.raises(ImageDecodeError, match="short_data"):
        image_msg_to_mask(msg)
    msg = make_msg(v, "8UC1")
    msg.step = W - 1
    with pytest.raises(ImageDecodeError, match="bad_step"):
        image_msg_to_mask(msg)
    msg = make_msg(v, "mono8")
    msg.width = 0
    with pytest.raises(ImageDecodeError, match="zero_size"):
        image_msg_to_mask(msg)


def test_mask_to_image_msg_roundtrip():
    v = mask_values()
    for arr in (v != 0, v, v.astype(np.int64)):
        msg = mask_to_image_msg(arr, Header(frame_id="m"))
        assert (msg.encoding, msg.height, msg.width, msg.step, msg.header.frame_id) == ("mono8", H, W, W, "m")
        assert set(np.unique(np.frombuffer(bytes(msg.data), np.uint8))) == {0, 255}
        np.testing.assert_array_equal(image_msg_to_mask(msg), v != 0)
    with pytest.raises(ValueError):
        mask_to_image_msg(np.zeros((2, 2, 1), bool))


# ------------------------------------------------------------------------- full HD
def test_full_hd_bgr8_roundtrip():
    """1920x1080: vectorised both ways (no per-pixel Python loop); timings printed, not asserted."""
    rgb = np.random.default_rng(9).integers(0, 256, size=(1080, 1920, 3), dtype=np.uint8)
    t0 = time.perf_counter()
    msg = rgb_to_image_msg(rgb, None)  # includes the msg.data assignment
    t1 = time.perf_counter()
    out = image_msg_to_rgb(msg)
    t2 = time.perf_counter()
    check_rgb(out, 1080, 1920)
    np.testing.assert_array_equal(out, rgb)
    print(f"1080p encode {1e3 * (t1 - t0):.1f} ms, decode {1e3 * (t2 - t1):.1f} ms")
