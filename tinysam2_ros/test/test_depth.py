"""3D outputs of tracker_node with real rclpy: depth + camera_info in, tracks_3d / markers /
points and Track 3D fields out, bad depth and camera_info refused and counted."""
from __future__ import annotations

import math
import threading
import time

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy")
pytest.importorskip("tinysam2_ros_msgs.msg", reason="ROS interfaces not built (run `make setup`)")
vision_msgs = pytest.importorskip("vision_msgs.msg")

from rclpy.executors import MultiThreadedExecutor  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from rclpy.qos import QoSProfile, ReliabilityPolicy  # noqa: E402
from sensor_msgs.msg import CameraInfo, Image, PointCloud2  # noqa: E402
from visualization_msgs.msg import Marker, MarkerArray  # noqa: E402

from tinysam2_ros.evaluation.synth_depth import camera_info  # noqa: E402
from tinysam2_ros.ros.render import track_color  # noqa: E402
from tinysam2_ros.ros.tracker_node import TrackerNode  # noqa: E402
from tinysam2_ros_msgs.msg import Prompt, PromptArray, Track, TrackArray  # noqa: E402
from tinysam2_ros_msgs.srv import AddPrompts, RemoveObject  # noqa: E402
from test_ros_node import Harness as NodeHarness  # noqa: E402  (call, wait_for)

RELIABLE = QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE)
H, W = 96, 128
Z = 2.0  # the scene is a wall at 2 m: every mask pixel has this depth


def info_msg(width=W, height=H, fx=None) -> CameraInfo:
    info = camera_info(height, width)
    msg = CameraInfo(width=width, height=height, distortion_model=info["distortion_model"])
    msg.k = [float(v) for v in info["K"]]
    if fx is not None:
        msg.k[0] = fx
    msg.d = info["D"]
    msg.header.frame_id = "cam"
    return msg


def depth_msg(encoding="16UC1", width=W, height=H, value=Z) -> Image:
    if encoding == "16UC1":
        arr = np.full((height, width), round(value * 1000) if np.isfinite(value) else 0, np.uint16)
    elif encoding == "32FC1":
        arr = np.full((height, width), value, np.float32)
    else:
        arr = np.zeros((height, width, 3), np.uint8)
    msg = Image(height=height, width=width, encoding=encoding, step=arr.strides[0], data=arr.tobytes())
    msg.header.frame_id = "cam"
    return msg


class Harness(NodeHarness):
    def __init__(self, checkpoint, **params):
        overrides = {"preset": "tiny", "checkpoint": str(checkpoint), "diagnostics_period": 0.2,
                     "memory.write_threshold": 0.0, "image_qos": "reliable", "depth3d.enabled": True,
                     "depth3d.erode_px": 0, "depth3d.max_samples": 10**6, **params}
        self.node = TrackerNode(parameter_overrides=[Parameter(k, value=v) for k, v in overrides.items()])
        c = self.client = rclpy.create_node("depth_test_client")
        self.image_pub = c.create_publisher(Image, "image", RELIABLE)
        self.depth_pub = c.create_publisher(Image, "depth", RELIABLE)
        self.info_pub = c.create_publisher(CameraInfo, "camera_info", RELIABLE)
        self.prompt_pub = c.create_publisher(PromptArray, "prompts", RELIABLE)
        self.tracks: list[TrackArray] = []
        self.dets: list = []
        self.markers: list[MarkerArray] = []
        self.clouds: list[PointCloud2] = []
        c.create_subscription(TrackArray, "tracks", self.tracks.append, RELIABLE)
        c.create_subscription(vision_msgs.Detection3DArray, "tracks_3d", self.dets.append, RELIABLE)
        c.create_subscription(MarkerArray, "markers", self.markers.append, RELIABLE)
        c.create_subscription(PointCloud2, "points", self.clouds.append, RELIABLE)
        self.add = c.create_client(AddPrompts, "/tracker_node/add_prompts")
        self.remove = c.create_client(RemoveObject, "/tracker_node/remove_object")
        self.executor = MultiThreadedExecutor(num_threads=3)
        self.executor.add_node(self.node)
        self.executor.add_node(c)
        self.thread = threading.Thread(target=self.executor.spin, daemon=True)
        self.thread.start()
        rng = np.random.default_rng(0)
        self.background = rng.integers(0, 255, size=(H, W, 3), dtype=np.uint8)
        self.sent = 0

    def close(self):
        self.executor.shutdown(timeout_sec=2.0)
        self.node.on_shutdown(None)
        self.node.destroy_node()
        self.client.destroy_node()

    def frame(self, depth: Image | None = None, info: CameraInfo | None = None, depth_offset: float = 0.0,
              wait: bool = True):
        """Publish camera_info, depth (stamped depth_offset s from the colour frame) and a colour frame;
        with ``wait``, return the tracks message of that frame."""
        img = self.background.copy()
        x = 20 + 2 * (self.sent % 20)
        img[30:60, x : x + 30] = (220, 30, 30)
        msg = Image(height=H, width=W, encoding="rgb8", step=W * 3, data=img.tobytes())
        msg.header.frame_id = "cam"
        msg.header.stamp = self.client.get_clock().now().to_msg()
        self.sent += 1
        stamp = msg.header.stamp
        info = info_msg() if info is None else info
        info.header.stamp = stamp
        self.info_pub.publish(info)
        depth = depth_msg() if depth is None else depth
        t = stamp.sec + stamp.nanosec * 1e-9 + depth_offset
        depth.header.stamp.sec, depth.header.stamp.nanosec = int(t), int(round((t - int(t)) * 1e9)) % 10**9
        self.depth_pub.publish(depth)
        time.sleep(0.05)  # depth before colour, as a camera driver publishes them together
        self.image_pub.publish(msg)
        if not wait:
            return stamp
        assert self.wait_for(lambda: any(m.header.stamp == stamp for m in self.tracks)), "no tracks for a frame"
        return next(m for m in self.tracks if m.header.stamp == stamp)

    def wait_for(self, predicate, timeout=30.0):
        return super().wait_for(predicate, timeout)

    def errors(self) -> dict:
        return dict(self.node.session.stats.errors)


@pytest.fixture
def harness(ros, checkpoint):
    h = Harness(checkpoint)
    yield h
    h.close()


def mask_prompt(x=20, label="box", stamp=None) -> Prompt:
    mask = np.zeros((H, W), np.uint8)
    mask[30:60, x : x + 30] = 255
    p = Prompt(obj_id=0, label=label, action=Prompt.ACTION_ADD)
    p.mask = Image(height=H, width=W, encoding="mono8", step=W, data=mask.tobytes())
    if stamp is not None:
        p.header.stamp = stamp
    return p


def full_mask(track) -> np.ndarray:
    out = np.zeros((H, W), bool)
    m = track.mask
    crop = np.frombuffer(bytes(m.data), np.uint8).reshape(m.height, m.step)[:, : m.width] > 0
    out[track.box.y_offset : track.box.y_offset + m.height, track.box.x_offset : track.box.x_offset + m.width] = crop
    return out


def expected_position(mask: np.ndarray) -> np.ndarray:
    """The wall at Z seen through the ideal camera: the mean of the mask's back-projected pixels."""
    k = camera_info(H, W)["K"]
    ys, xs = np.nonzero(mask)
    return np.array([np.mean((xs - k[2]) / k[0] * Z), np.mean((ys - k[5]) / k[4] * Z), Z])


@pytest.mark.parametrize("encoding", ["16UC1", "32FC1"])
def test_tracks_3d_markers_and_track_fields(ros, checkpoint, encoding):
    h = Harness(checkpoint, **{"depth3d.publish_points": True})
    try:
        h.frame(depth_msg(encoding))
        res = h.call(h.add, AddPrompts.Request(prompts=[mask_prompt(label="cup")]))
        assert res.success, res.message
        for _ in range(3):
            tracks = h.frame(depth_msg(encoding))
        stamp = tracks.header.stamp
        (t,) = tracks.tracks
        assert t.area > 0 and t.quality_3d == Track.QUALITY_OK
        mask = full_mask(t)
        expect = expected_position(mask)
        got = np.array([t.position.x, t.position.y, t.position.z])
        np.testing.assert_allclose(got, expect, atol=1e-4)
        assert t.valid_points == int(mask.sum())
        assert h.wait_for(lambda: any(m.header.stamp == stamp for m in h.dets))
        det_msg = next(m for m in h.dets if m.header.stamp == stamp)
        assert det_msg.header.frame_id == "cam"
        (det,) = det_msg.detections
        assert det.id == str(t.id) and det.results[0].hypothesis.class_id == "cup"
        c = det.bbox.center.position
        np.testing.assert_allclose([c.x, c.y, c.z], got, atol=1e-6)
        assert det.bbox.size.x == pytest.approx(t.size.x) and det.bbox.size.z == pytest.approx(0.0, abs=1e-6)
        assert h.wait_for(lambda: any(m.markers and m.markers[0].header.stamp == stamp for m in h.markers))
        mk = next(m for m in h.markers if m.markers and m.markers[0].header.stamp == stamp)
        kinds = {(m.ns, m.type, m.id, m.action) for m in mk.markers}
        assert kinds == {("tinysam2_box", Marker.CUBE, t.id, Marker.ADD),
                         ("tinysam2_label", Marker.TEXT_VIEW_FACING, t.id, Marker.ADD)}
        assert all(m.header.frame_id == "cam" for m in mk.markers)
        b, g, r = track_color(t.id)
        col = mk.markers[0].color
        assert (round(col.r * 255), round(col.g * 255), round(col.b * 255)) == (r, g, b)
        assert h.wait_for(lambda: any(m.header.stamp == stamp for m in h.clouds))
        cloud = next(m for m in h.clouds if m.header.stamp == stamp)
        pts = np.frombuffer(bytes(cloud.data), dtype=[("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("id", "<u4")])
        assert [f.name for f in cloud.fields] == ["x", "y", "z", "track_id"]
        assert 0 < len(pts) <= 500 and set(pts["id"]) == {t.id} and np.allclose(pts["z"], Z)
    finally:
        h.close()


def test_marker_deleted_when_the_track_ends(harness):
    h = harness
    h.frame()
    assert h.call(h.add, AddPrompts.Request(prompts=[mask_prompt()])).success
    h.frame()
    h.frame()
    assert 1 in h.node._depth3d.book.shown
    assert h.call(h.remove, RemoveObject.Request(obj_id=1)).success
    stamp = h.frame().header.stamp
    assert h.wait_for(lambda: any(m.markers and m.markers[0].header.stamp == stamp for m in h.markers))
    mk = next(m for m in h.markers if m.markers and m.markers[0].header.stamp == stamp)
    assert {(m.ns, m.id, m.action) for m in mk.markers} == {("tinysam2_box", 1, Marker.DELETE),
                                                             ("tinysam2_label", 1, Marker.DELETE)}
    det = next(m for m in h.dets if m.header.stamp == stamp)
    assert det.detections == []


def test_bad_depth_and_camera_info_are_refused_and_counted(harness):
    h = harness
    h.frame()
    assert h.call(h.add, AddPrompts.Request(prompts=[mask_prompt()])).success
    cases = [
        (dict(depth=depth_msg("rgb8")), "depth_encoding"),
        (dict(depth=depth_msg(width=W, height=H // 2)), "depth_size"),
        (dict(depth=depth_msg("32FC1", value=float("nan"))), "depth_all_invalid"),
        (dict(depth=depth_msg(value=0.0)), "depth_all_invalid"),
        (dict(depth_offset=0.5), "no_depth_partner"),
    ]
    for kwargs, cause in cases:
        before = h.errors().get(cause, 0)
        tracks = h.frame(**kwargs)
        assert h.errors().get(cause, 0) == before + 1, (cause, h.errors())
        (t,) = tracks.tracks
        assert t.area > 0 and t.quality_3d == Track.QUALITY_NONE  # 2D goes on, no 3D for that frame
    # bad camera_info: refused, counted, the last good one stays in use
    for info, cause in ((info_msg(fx=0.0), "camera_info_bad_k"), (info_msg(fx=float("nan")), "camera_info_bad_k")):
        before = h.errors().get(cause, 0)
        tracks = h.frame(info=info)
        assert h.errors().get(cause, 0) == before + 1
        assert tracks.tracks[0].quality_3d == Track.QUALITY_OK
    before = h.errors().get("camera_info_size_changed", 0)
    tracks = h.frame(info=info_msg(width=2 * W, height=H))  # another aspect ratio than the colour image
    assert h.errors()["camera_info_size_changed"] == before + 1
    assert h.errors()["camera_info_size"] >= 1 and tracks.tracks[0].quality_3d == Track.QUALITY_NONE
    tracks = h.frame()  # a good one again
    assert tracks.tracks[0].quality_3d == Track.QUALITY_OK
    assert h.wait_for(lambda: "errors_depth_encoding" in h.node.session.diagnostics())


def test_no_camera_info_or_depth_yet(ros, checkpoint):
    h = Harness(checkpoint)
    try:
        res = h.call(h.add, AddPrompts.Request(prompts=[mask_prompt()]))  # queued for the first image
        assert res.success, res.message

        def colour_only():
            msg = Image(height=H, width=W, encoding="rgb8", step=W * 3, data=h.background.tobytes())
            msg.header.stamp = h.client.get_clock().now().to_msg()
            h.image_pub.publish(msg)
            assert h.wait_for(lambda: any(m.header.stamp == msg.header.stamp for m in h.tracks))
            return next(m for m in h.tracks if m.header.stamp == msg.header.stamp)

        tracks = colour_only()
        assert h.errors().get("no_camera_info") == 1 and tracks.tracks[0].quality_3d == Track.QUALITY_NONE
        h.info_pub.publish(info_msg())
        time.sleep(0.2)
        tracks = colour_only()
        assert h.errors().get("no_depth") == 1 and tracks.tracks[0].area > 0
    finally:
        h.close()


def test_late_prompt_on_a_past_frame_yields_3d(harness):
    h = harness
    first = h.frame().header.stamp
    h.frame()
    h.frame()
    h.prompt_pub.publish(PromptArray(prompts=[mask_prompt(x=20, label="late", stamp=first)]))
    time.sleep(0.3)
    tracks = [h.frame() for _ in range(2)]
    (t,) = tracks[-1].tracks
    assert t.label == "late" and t.quality_3d == Track.QUALITY_OK
    assert t.position.z == pytest.approx(Z)


def test_depth_off_subscribes_and_publishes_nothing_3d(ros, checkpoint):
    h = Harness(checkpoint, **{"depth3d.enabled": False})
    try:
        assert h.node._depth3d is None
        assert h.client.count_subscribers("/depth") == 0 and h.client.count_subscribers("/camera_info") == 0
        assert h.client.count_publishers("/tracks_3d") == 0 and h.client.count_publishers("/markers") == 0
        tracks = h.frame()
        assert all(t.quality_3d == Track.QUALITY_NONE for t in tracks.tracks)
    finally:
        h.close()


def test_depth_flood_is_dropped_and_counted(ros, checkpoint):
    h = Harness(checkpoint, **{"depth3d.max_depth_rate": 20.0})
    try:
        h.frame()
        assert h.call(h.add, AddPrompts.Request(prompts=[mask_prompt()])).success
        start = time.monotonic()
        # about 200 depth images per second, of which 20 per second are taken, until 20 were
        # dropped: a loaded machine loses some of the burst in transport before the node
        # sees it (a CI run counted only 9 drops of a fixed 100), so the burst runs until then
        while h.errors().get("depth_flood", 0) < 20 and time.monotonic() - start < 20.0:
            d = depth_msg()
            d.header.stamp = h.client.get_clock().now().to_msg()
            h.depth_pub.publish(d)
            time.sleep(0.005)
        assert h.wait_for(lambda: h.errors().get("depth_flood", 0) >= 20), h.errors()
        # at most 20 in any one second; on a loaded machine the 100 arrive over more than one
        # (a CI run kept 40 after the burst took longer than a second)
        assert len(h.node._depth3d.buffer) <= 20 * math.ceil(time.monotonic() - start) + 1
        time.sleep(1.1)
        tracks = h.frame()  # a second later depth is taken again and 3D comes back
        assert tracks.tracks[0].quality_3d == Track.QUALITY_OK
    finally:
        h.close()


def test_ros2_launch_with_depth3d_subscribes_to_the_remapped_topics(checkpoint):
    """`ros2 launch ... depth3d:=true depth:=... camera_info:=...` turns 3D on, on those topics."""
    import os
    import shutil

    if shutil.which("ros2") is None:
        pytest.skip("the ROS 2 launch stack is not installed (`ros2` not on PATH)")
    import subprocess

    domain = 40 + os.getpid() % 50
    env = dict(os.environ, ROS_DOMAIN_ID=str(domain), PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    proc = subprocess.Popen(["ros2", "launch", "tinysam2_ros", "track.launch.py", "preset:=tiny",
                             f"checkpoint:={checkpoint}", "depth3d:=true", "depth:=/cam/aligned_depth",
                             "camera_info:=/cam/color_info"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=env, start_new_session=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)
    reader.start()
    context = rclpy.Context()
    rclpy.init(context=context, domain_id=domain)
    node = rclpy.create_node("launch_depth_probe", context=context)
    try:
        end = time.time() + 90
        while time.time() < end and not (node.count_subscribers("/cam/aligned_depth") and
                                         node.count_subscribers("/cam/color_info") and
                                         node.count_publishers("/tracks_3d") and node.count_publishers("/markers")):
            time.sleep(0.2)
        assert node.count_subscribers("/cam/aligned_depth") == 1, "".join(lines)[-2000:]
        assert node.count_subscribers("/cam/color_info") == 1
        assert node.count_publishers("/tracks_3d") == 1 and node.count_publishers("/markers") == 1
    finally:
        node.destroy_node()
        rclpy.shutdown(context=context)
        import signal

        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def test_demo_depth_reports_3d_against_the_truth(tmp_path, capsys):
    """`tinysam2 demo --depth` with the shipped demo model on a small generated video."""
    from tinysam2_ros.cli import main

    rc = main(["demo", "--depth", "--frames", "6", "--size", "128x160", "--seed", "1000", "--out", str(tmp_path)])
    assert rc == 0
    out = capsys.readouterr().out
    line = next(ln for ln in out.splitlines() if ln.startswith("3D: "))
    assert "have 3D (quality OK" in line and "median" in line, line
    median = float(line.split("median ")[1].split("%")[0])
    assert median <= 2.0  # the target, with the demo model's own masks
    assert main(["demo", "--depth", "--video", str(tmp_path), "--box", "1,1,5,5"]) == 2
    assert "--depth needs the generated video" in capsys.readouterr().err
