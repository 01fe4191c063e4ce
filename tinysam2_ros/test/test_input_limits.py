"""Limits on hostile input, without ROS: stamps, ids, labels, points, image sizes, devices."""
from __future__ import annotations

import struct
import zlib

import cv2
import numpy as np
import pytest
import torch

from tinysam2_ros.modeling.build import build_model
from tinysam2_ros.ros.device_check import device_problem
from tinysam2_ros.ros.limits import (
    MAX_TRACK_ID,
    PromptLimits,
    compressed_refusal,
    compressed_size,
    image_size_refusal,
    prompt_refusal,
)
from tinysam2_ros.ros.session import PromptRequest, SessionBusy, TrackingSession
from tinysam2_ros.tracking.tracker import Tracker, TrackerConfig, TrackerError

H, W = 64, 96
BOX = [20.0, 20.0, 50.0, 50.0]


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_model("tiny").eval()


def frames(n):
    rng = np.random.default_rng(0)
    return [rng.integers(0, 255, (H, W, 3), dtype=np.uint8) for _ in range(n)]


def test_frame_for_stamp_with_unstamped_and_stamped_frames(model):
    tracker = Tracker(model, TrackerConfig(feature_window=8))
    video = frames(6)
    for f in video[:3]:
        tracker.step(f, stamp=None)  # a camera that sent stamp 0
    assert tracker.frame_for_stamp(5.0) == 3  # nothing stamped yet: the next frame
    for i, f in enumerate(video[3:]):
        tracker.step(f, stamp=10.0 + 0.1 * i)
    assert tracker.frame_for_stamp(10.1) == 4
    assert tracker.frame_for_stamp(11.0) == 6  # newer than all frames: the next one
    # between the unstamped and the stamped frames: refused with a reason (was a TypeError)
    with pytest.raises(TrackerError, match=r"no frame with stamp 9\.500 .* 10\.000\.\.10\.200"):
        tracker.frame_for_stamp(9.5)
    with pytest.raises(TrackerError, match="no frame with stamp"):
        tracker.add_prompt(1, stamp=9.5, box=BOX)


def test_prompt_refusals_name_the_limit():
    limits = PromptLimits(max_label_length=8, max_points=3)

    def refusal(obj_id=0, label="cup", points=1, stamp=None, newest=None, now=None):
        return prompt_refusal(obj_id, label, points, stamp, limits, newest, now, tolerance=0.05)

    assert refusal() is None and refusal(obj_id=MAX_TRACK_ID, label="x" * 8, points=3) is None
    r = refusal(obj_id=MAX_TRACK_ID + 1)
    assert r.cause == "obj_id_too_large" and "65535" in r.reason and "mono16" in r.reason
    r = refusal(label="x" * 9)
    assert r.cause == "label_too_long" and "max_label_length=8" in r.reason
    r = refusal(points=4)
    assert r.cause == "too_many_points" and "max_points_per_prompt=3" in r.reason
    # stamps: ahead of the newest image and of the clock by more than the tolerance
    assert refusal(stamp=100.04, newest=100.0, now=99.0) is None
    assert refusal(stamp=105.0, newest=100.0, now=110.0) is None  # the image may still be on its way
    assert refusal(stamp=105.0, newest=110.0, now=None) is None  # camera clock ahead of the node's
    r = refusal(stamp=3600.0 + 100.0, newest=100.0, now=100.5)
    assert r.cause == "future_stamp" and "3599.500 s ahead" in r.reason
    assert refusal(stamp=1e12, newest=None, now=None) is None  # nothing to compare with


def png_bytes(width: int, height: int, idat: bytes = b"") -> bytes:
    """A PNG with a valid IHDR declaring ``width`` x ``height`` (RGB, 8 bit)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def png_bomb(side: int) -> bytes:
    """A real, decodable all-black PNG of ``side`` x ``side`` pixels: tiny compressed, huge decoded."""
    comp = zlib.compressobj(9)
    row = b"\x00" * (1 + 3 * side)  # filter byte + pixels
    body = b"".join(comp.compress(row) for _ in range(side)) + comp.flush()
    return png_bytes(side, side, body)


def jpeg_declaring(width: int, height: int) -> bytes:
    """A small real JPEG whose SOF0 header is patched to declare ``width`` x ``height``."""
    ok, enc = cv2.imencode(".jpg", np.zeros((8, 8, 3), np.uint8))
    data = bytearray(enc.tobytes())
    sof = data.index(b"\xff\xc0")
    data[sof + 5:sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def test_compressed_size_is_read_from_the_header():
    ok, enc = cv2.imencode(".png", np.zeros((H, W, 3), np.uint8))
    assert compressed_size(enc.tobytes()) == (W, H)
    ok, enc = cv2.imencode(".jpg", np.zeros((H, W, 3), np.uint8))
    assert compressed_size(enc.tobytes()) == (W, H)
    assert compressed_size(png_bytes(10000, 10000)) == (10000, 10000)  # body missing: header suffices
    assert compressed_size(jpeg_declaring(10000, 10000)) == (10000, 10000)
    assert compressed_size(b"\x00" * 100) is None


def test_decompression_bombs_are_refused_before_decoding():
    bomb = png_bomb(5000)
    assert len(bomb) < 100_000  # 75 MB of pixels in under 100 KB
    decoded = cv2.imdecode(np.frombuffer(bomb, np.uint8), cv2.IMREAD_COLOR)
    assert decoded.shape == (5000, 5000, 3)  # a real image, which the node must not decode
    del decoded
    r = compressed_refusal(bomb, max_pixels=16_777_216)
    assert r.cause == "image_too_large" and "5000x5000" in r.reason and "max_image_pixels=16777216" in r.reason
    assert compressed_refusal(jpeg_declaring(10000, 10000), 16_777_216).cause == "image_too_large"
    assert compressed_refusal(bomb, max_pixels=25_000_000) is None
    assert compressed_refusal(b"garbage" * 10, 16_777_216).cause == "compressed_header"
    assert image_size_refusal(4000, 4000, 16_000_000) is None
    assert image_size_refusal(4001, 4000, 16_000_000).cause == "image_too_large"


def request(**kw):
    return PromptRequest(box=BOX, **kw)


def test_session_refuses_over_the_limits_and_counts(model):
    session = TrackingSession(Tracker(model), limits=PromptLimits(max_label_length=4, max_points=2))
    session.step(frames(1)[0], stamp=100.0)
    session.submit(object(), stamp=100.0)
    outs = session.add_prompts([
        request(obj_id=70000), request(label="x" * 5),
        PromptRequest(points=[[1, 1]] * 3, labels=[1] * 3), request(stamp=200.0), request(label="cup"),
    ], apply_now=True, now=100.0)
    assert [o.cause for o in outs] == ["obj_id_too_large", "label_too_long", "too_many_points", "future_stamp", ""]
    assert [o.obj_id for o in outs] == [0, 0, 0, 0, 1]  # refused prompts use no id
    values = session.diagnostics()
    assert values["prompts_received"] == "5" and values["prompts_refused"] == "4"
    for cause in ("obj_id_too_large", "label_too_long", "too_many_points", "future_stamp"):
        assert values[f"errors_{cause}"] == "1"


def test_assigned_ids_stay_within_the_label_image(model):
    session = TrackingSession(Tracker(model))
    session._next_id = MAX_TRACK_ID  # an endless stream of new objects reaches the top
    outs = session.add_prompts([request(), request()], apply_now=False)
    assert [o.obj_id for o in outs] == [MAX_TRACK_ID, 1]


def test_prompt_inbox_is_bounded_and_counts_drops(model):
    session = TrackingSession(Tracker(model), prompt_queue_depth=3)
    assert session.queue_prompts([request() for _ in range(2)]) == 0
    assert session.queue_prompts([request() for _ in range(4)]) == 3
    outs = session.apply_queued()
    assert [o.obj_id for o in outs] == [1, 2, 3]
    values = session.diagnostics()
    assert (values["prompts_received"], values["prompts_dropped"], values["prompts_refused"]) == ("6", "3", "0")
    assert session.apply_queued() == []


def test_a_busy_session_answers_instead_of_waiting(model):
    import threading

    session = TrackingSession(Tracker(model))
    held, release = threading.Event(), threading.Event()

    def hold():
        with session.lock:
            held.set()
            release.wait(10)

    t = threading.Thread(target=hold)
    t.start()
    held.wait(10)
    try:
        with pytest.raises(SessionBusy, match="busy"):
            session.add_prompts([request()], apply_now=True, timeout=0.05)
        with pytest.raises(SessionBusy):
            session.reset(timeout=0.05)
    finally:
        release.set()
        t.join()
    assert session.diagnostics()["errors_busy"] == "2"
    assert [o.obj_id for o in session.add_prompts([request()], apply_now=False, timeout=0.05)] == [1]


def test_device_problems_are_explained():
    assert device_problem("cpu") is None
    assert "not a torch device" in device_problem("gpu:0")
    if not torch.cuda.is_available():
        reason = device_problem("cuda:0")
        assert "needs CUDA" in reason and "device:=cpu" in reason
    else:
        assert device_problem("cuda:0") is None
        assert "does not exist" in device_problem(f"cuda:{torch.cuda.device_count()}")
