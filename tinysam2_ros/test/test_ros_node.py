"""tracker_node with real rclpy: topics, services, lifecycle, parameters, bad input, floods."""
from __future__ import annotations

import threading
import time

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy")
pytest.importorskip("tinysam2_ros_msgs.msg", reason="ROS interfaces not built (run `make setup`)")

from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from geometry_msgs.msg import Point  # noqa: E402
from lifecycle_msgs.msg import Transition  # noqa: E402
from lifecycle_msgs.srv import ChangeState, GetState  # noqa: E402
from rcl_interfaces.srv import SetParameters  # noqa: E402
from rclpy.executors import MultiThreadedExecutor  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402
from std_srvs.srv import Trigger  # noqa: E402

from tinysam2_ros_msgs.msg import Prompt, PromptArray, TrackArray  # noqa: E402
from tinysam2_ros.ros.tracker_node import TrackerNode  # noqa: E402
from tinysam2_ros_msgs.srv import AddPrompts, RemoveObject  # noqa: E402

RELIABLE = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
H, W = 96, 128


class Harness:
    """The node under test plus a client node, spun by a background executor."""

    def __init__(self, checkpoint, **params):
        overrides = {"preset": "tiny", "checkpoint": str(checkpoint), "diagnostics_period": 0.2,
                     "memory.write_threshold": 0.0, **params}
        self.node = TrackerNode(parameter_overrides=[Parameter(k, value=v) for k, v in overrides.items()])
        self.client = rclpy.create_node("test_client")
        c = self.client
        self.image_pub = c.create_publisher(Image, "image", qos_profile_sensor_data)
        self.prompt_pub = c.create_publisher(PromptArray, "prompts", RELIABLE)
        self.click_pub = c.create_publisher(Point, "image_mouse_left", RELIABLE)
        self.tracks: list[TrackArray] = []
        self.masks: list[Image] = []
        self.overlays: list[Image] = []
        self.diags: list[DiagnosticArray] = []
        c.create_subscription(TrackArray, "tracks", self.tracks.append, RELIABLE)
        c.create_subscription(Image, "masks", self.masks.append, RELIABLE)
        c.create_subscription(Image, "overlay", self.overlays.append, RELIABLE)
        c.create_subscription(DiagnosticArray, "/diagnostics", self.diags.append, RELIABLE)
        self.add = c.create_client(AddPrompts, "/tracker_node/add_prompts")
        self.remove = c.create_client(RemoveObject, "/tracker_node/remove_object")
        self.reset = c.create_client(Trigger, "/tracker_node/reset")
        self.change_state = c.create_client(ChangeState, "/tracker_node/change_state")
        self.get_state = c.create_client(GetState, "/tracker_node/get_state")
        self.set_params = c.create_client(SetParameters, "/tracker_node/set_parameters")
        self.executor = MultiThreadedExecutor(num_threads=3)
        self.executor.add_node(self.node)
        self.executor.add_node(c)
        self.thread = threading.Thread(target=self.executor.spin, daemon=True)
        self.thread.start()
        self.rng = np.random.default_rng(0)
        self.background = self.rng.integers(0, 255, size=(H, W, 3), dtype=np.uint8)
        self.sent = 0

    def close(self):
        self.executor.shutdown(timeout_sec=2.0)
        self.node.on_shutdown(None)
        self.node.destroy_node()
        self.client.destroy_node()

    def image(self, encoding="rgb8", data=None, height=H, width=W, step=None):
        img = self.background.copy()
        x = 20 + 2 * (self.sent % 20)
        img[30:60, x : x + 30] = (220, 30, 30)
        msg = Image(height=height, width=width, encoding=encoding, step=step if step is not None else width * 3)
        msg.header.frame_id = "cam"
        msg.header.stamp = self.client.get_clock().now().to_msg()
        msg.data = img.tobytes() if data is None else data
        self.sent += 1
        return msg

    def publish_frames(self, n, rate_hz=20.0, **kw):
        stamps = []
        for _ in range(n):
            msg = self.image(**kw)
            stamps.append(msg.header.stamp)
            self.image_pub.publish(msg)
            time.sleep(1.0 / rate_hz)
        return stamps

    def call(self, client, request, timeout=30.0):
        assert client.wait_for_service(timeout_sec=10.0), f"service {client.srv_name} not available"
        future = client.call_async(request)
        end = time.time() + timeout
        while not future.done() and time.time() < end:
            time.sleep(0.01)
        assert future.done(), f"no answer from {client.srv_name}"
        return future.result()

    def wait_for(self, predicate, timeout=20.0):
        end = time.time() + timeout
        while time.time() < end:
            if predicate():
                return True
            time.sleep(0.05)
        return False

    def processed(self) -> int:
        return self.node.session.stats.processed.count if self.node.session else 0


@pytest.fixture
def harness(ros, checkpoint):
    h = Harness(checkpoint)
    yield h
    h.close()


def box_prompt(box, obj_id=0, action=Prompt.ACTION_ADD, label="cup", stamp=None):
    p = Prompt(obj_id=obj_id, label=label, action=action, has_box=True)
    p.box_xyxy = [float(v) for v in box]
    if stamp is not None:
        p.header.stamp = stamp
    return p


def mask_prompt(mask=None, encoding="mono8", height=H, width=W, data=None, obj_id=0, label="seg"):
    """A prompt with a mask image (default: the red square of the harness's latest frames)."""
    if mask is None:
        mask = np.zeros((height, width), np.uint8)
        mask[30:60, 20:50] = 255
    p = Prompt(obj_id=obj_id, label=label, action=Prompt.ACTION_ADD)
    p.mask = Image(height=mask.shape[0], width=mask.shape[1], encoding=encoding, step=mask.shape[1])
    p.mask.data = np.ascontiguousarray(mask, np.uint8).tobytes() if data is None else data
    return p


def assert_tracks_on_new_frames(h, expected: set[tuple[int, str]], bad_prompts: int, frames: int = 3) -> None:
    """Publish ``frames`` frames; the last one's tracks are ``expected`` (id, label) and
    ``bad_prompts`` prompts were refused so far."""
    stamps = h.publish_frames(frames)
    assert h.wait_for(lambda: any(m.header.stamp == stamps[-1] and len(m.tracks) == len(expected) for m in h.tracks))
    msg = next(m for m in h.tracks if m.header.stamp == stamps[-1])
    assert {(t.id, t.label) for t in msg.tracks} == expected
    assert h.node.session.stats.errors["bad_prompt"] == bad_prompts


def test_mask_prompt_creates_a_track(harness):
    h = harness
    h.publish_frames(2)
    assert h.wait_for(lambda: h.processed() >= 1)
    res = h.call(h.add, AddPrompts.Request(prompts=[mask_prompt()]))
    assert res.success, res.message
    assert list(res.obj_ids) == [1] and list(res.found) == [True]  # a non-empty first mask
    with h.node.session.lock:
        (entry,) = h.node.session.tracker.objects[1].cond.values()
    assert entry.prompt.mask is not None and int(entry.prompt.mask.sum()) == 30 * 30
    # 8UC1 with padded rows, through the prompts topic
    padded = np.zeros((H, W + 4), np.uint8)
    padded[10:40, 80:120] = 1
    padded[:, W:] = 9  # junk in the padding is ignored
    p = mask_prompt(encoding="8UC1", label="padded")
    p.mask.step, p.mask.data = W + 4, padded.tobytes()
    h.prompt_pub.publish(PromptArray(prompts=[p]))
    time.sleep(0.3)
    assert_tracks_on_new_frames(h, {(1, "seg"), (2, "padded")}, bad_prompts=0)


def test_bad_mask_prompts_are_refused_alone(harness):
    h = harness
    h.publish_frames(1)
    assert h.wait_for(lambda: h.processed() >= 1)
    good_mask = mask_prompt().mask
    both = box_prompt([20, 30, 50, 60])
    both.mask = good_mask
    bad = [
        mask_prompt(height=H // 2, width=W // 2),  # not the image's size
        mask_prompt(encoding="rgb8"),  # not a mask encoding
        mask_prompt(data=b"\x00" * (H * W - 1)),  # one byte short
        box_prompt([20, 30, 50, 60], label="cup"),  # valid: applied
        mask_prompt(mask=np.zeros((H, W), np.uint8)),  # empty
        both,  # a mask with a box
    ]
    res = h.call(h.add, AddPrompts.Request(prompts=bad))
    assert not res.success
    assert list(res.obj_ids) == [0, 0, 0, 1, 0, 0] and list(res.found) == [False, False, False, True, False, False]
    for i, words in enumerate([("prompt 0", f"{W // 2}x{H // 2}", f"image is {W}x{H}"),
                               ("prompt 1", "unsupported_encoding:rgb8", "mono8 or 8UC1"),
                               ("prompt 2", "short_data"), (), ("prompt 4", "empty"),
                               ("prompt 5", "either a mask or box/points")]):
        for word in words:
            assert word in res.message, (i, word, res.message)
    assert "prompt 3" not in res.message
    assert h.node.session.stats.errors["bad_prompt"] == 5
    # the prompts topic: a bad mask is logged and counted, the valid prompt beside it is queued
    h.prompt_pub.publish(PromptArray(prompts=[mask_prompt(encoding="bgr8"), mask_prompt(label="ok")]))
    assert h.wait_for(lambda: h.node.session.stats.errors["bad_prompt"] == 6)
    assert_tracks_on_new_frames(h, {(1, "cup"), (2, "ok")}, bad_prompts=6)


def test_end_to_end_tracks_masks_overlay_diagnostics(harness):
    h = harness
    h.publish_frames(2)
    assert h.wait_for(lambda: h.processed() >= 1)
    res = h.call(h.add, AddPrompts.Request(prompts=[box_prompt([20, 30, 50, 60])]))
    assert res.success, res.message
    assert list(res.obj_ids) == [1] and list(res.found) == [True]
    stamps = h.publish_frames(5)
    assert h.wait_for(lambda: any(m.header.stamp == stamps[-1] for m in h.tracks))
    msg = next(m for m in h.tracks if m.header.stamp == stamps[-1])
    assert msg.header.frame_id == "cam"
    (track,) = msg.tracks
    assert track.id == 1 and track.label == "cup" and track.state == 0 and track.area > 0
    assert track.mask.encoding == "mono8"
    assert (track.mask.width, track.mask.height) == (track.box.width, track.box.height)
    crop = np.frombuffer(bytes(track.mask.data), np.uint8).reshape(track.mask.height, track.mask.step)
    assert int((crop[:, : track.mask.width] == 255).sum()) == track.area
    assert h.wait_for(lambda: h.masks and h.overlays)
    labels = h.masks[-1]
    assert (labels.height, labels.width, labels.encoding) == (H, W, "mono16")
    ids = np.frombuffer(bytes(labels.data), np.uint16).reshape(H, W)
    assert set(np.unique(ids)) <= {0, 1}
    assert h.overlays[-1].encoding == "bgr8" and h.overlays[-1].height == H
    assert h.wait_for(lambda: any(s.values for d in h.diags for s in d.status))
    values = {kv.key: kv.value for kv in h.diags[-1].status[0].values}
    for key in ("input_rate_hz", "output_rate_hz", "latency_ms_median", "frames_dropped", "backend",
                "memory_tokens_per_object"):
        assert key in values
    # the default backend: auto, which here (no TensorRT, onnxruntime installed) runs the cached export
    assert values["backend"] == "onnxruntime (auto, cpu)"


def test_label_image_gives_overlaps_to_the_highest_logit(harness):
    """The published label image is what eval scores: one id per pixel by SAM 2's rule."""
    from tinysam2_ros.tracking.overlap import resolve_overlaps

    h = harness
    h.publish_frames(2)
    assert h.wait_for(lambda: h.processed() >= 1)
    res = h.call(h.add, AddPrompts.Request(prompts=[box_prompt([10, 10, 90, 80]), box_prompt([30, 20, 120, 90])]))
    assert res.success, res.message
    stamps = h.publish_frames(3)
    assert h.wait_for(lambda: any(m.header.stamp == stamps[-1] for m in h.masks))
    msg = next(m for m in h.masks if m.header.stamp == stamps[-1])
    ids = np.frombuffer(bytes(msg.data), np.uint16).reshape(H, W)
    with h.node.session.lock:
        tr = h.node.session.tracker
        logits = {oid: o.entry(tr.frame_idx).low_res_logits for oid, o in tr.objects.items()}
    np.testing.assert_array_equal(ids, resolve_overlaps(logits, (H, W)))
    tracks = next(m for m in h.tracks if m.header.stamp == stamps[-1]).tracks
    assert sum(t.area for t in tracks) > np.count_nonzero(ids)  # the two masks did overlap


def test_prompt_topic_and_clicks_create_tracks(harness):
    h = harness
    h.publish_frames(2)
    assert h.wait_for(lambda: h.processed() >= 1)
    h.prompt_pub.publish(PromptArray(prompts=[box_prompt([70, 40, 110, 80], label="box")]))
    h.click_pub.publish(Point(x=40.0, y=45.0))
    time.sleep(0.3)
    stamps = h.publish_frames(4)
    assert h.wait_for(lambda: any(m.header.stamp == stamps[-1] and len(m.tracks) == 2 for m in h.tracks))
    msg = next(m for m in h.tracks if m.header.stamp == stamps[-1])
    assert {t.label for t in msg.tracks} == {"box", "click"}
    assert sorted(t.id for t in msg.tracks) == [1, 2]


def test_bad_input_is_refused_and_the_node_keeps_running(harness):
    h = harness
    h.publish_frames(1)
    assert h.wait_for(lambda: h.processed() >= 1)
    # malformed images: short data, zero size, unsupported encoding, bad step. One at a
    # time: the node keeps only the newest image, so a busy worker would skip some
    errors = h.node.session.stats.errors
    malformed = [h.image(data=b"\x00" * 10), h.image(height=0, width=0, data=b""), h.image(encoding="bayer_rggb8"),
                 h.image(step=5)]
    for k, msg in enumerate(malformed, start=1):
        h.image_pub.publish(msg)
        assert h.wait_for(lambda: sum(errors.values()) >= k), (k, dict(errors))
    bad = [box_prompt([float("nan"), 0, 10, 10]), box_prompt([60, 60, 10, 10]), box_prompt([500, 500, 600, 600]),
           box_prompt([10, 10, 40, 40], obj_id=7, action=Prompt.ACTION_REFINE),
           box_prompt([10, 10, 40, 40], action=9)]
    res = h.call(h.add, AddPrompts.Request(prompts=bad))
    assert not res.success and list(res.obj_ids) == [0] * 5
    for word in ("non-finite", "inverted", "outside", "unknown track id 7", "unknown action"):
        assert word in res.message
    stale = h.client.get_clock().now().to_msg()
    stale.sec -= 600
    res = h.call(h.add, AddPrompts.Request(prompts=[box_prompt([10, 10, 40, 40], stamp=stale)]))
    assert not res.success and "feature window" in res.message
    res = h.call(h.remove, RemoveObject.Request(obj_id=99))
    assert not res.success and "unknown" in res.message
    res = h.call(h.add, AddPrompts.Request(prompts=[box_prompt([20, 30, 50, 60])]))
    assert res.success
    stamps = h.publish_frames(3)
    assert h.wait_for(lambda: any(m.header.stamp == stamps[-1] and m.tracks for m in h.tracks))


def test_services_remove_and_reset(harness):
    h = harness
    h.publish_frames(1)
    assert h.wait_for(lambda: h.processed() >= 1)
    res = h.call(h.add, AddPrompts.Request(prompts=[box_prompt([20, 30, 50, 60]), box_prompt([70, 40, 110, 80])]))
    assert res.success and list(res.obj_ids) == [1, 2]
    # a REPLACE whose prompt is refused leaves the object as it was
    res = h.call(h.add, AddPrompts.Request(prompts=[box_prompt([70, 40, 60, 80], obj_id=2, action=Prompt.ACTION_REPLACE)]))
    assert not res.success and 2 in h.node.session.tracker.object_ids
    res = h.call(h.add, AddPrompts.Request(prompts=[box_prompt([22, 30, 52, 60], obj_id=1, action=Prompt.ACTION_REFINE),
                                                    box_prompt([70, 40, 100, 80], obj_id=2, action=Prompt.ACTION_REPLACE)]))
    assert res.success and list(res.obj_ids) == [1, 2]
    res = h.call(h.add, AddPrompts.Request(prompts=[box_prompt([10, 10, 40, 40], obj_id=1)]))
    assert not res.success and "exists" in res.message
    assert h.call(h.remove, RemoveObject.Request(obj_id=1)).success
    stamps = h.publish_frames(2)
    assert h.wait_for(lambda: any(m.header.stamp == stamps[-1] for m in h.tracks))
    assert [t.id for t in next(m for m in h.tracks if m.header.stamp == stamps[-1]).tracks] == [2]
    assert h.call(h.reset, Trigger.Request()).success
    stamps = h.publish_frames(2)
    assert h.wait_for(lambda: any(m.header.stamp == stamps[-1] for m in h.tracks))
    assert next(m for m in h.tracks if m.header.stamp == stamps[-1]).tracks == []


def test_lifecycle_transitions(harness):
    h = harness
    assert h.call(h.get_state, GetState.Request()).current_state.label == "active"
    res = h.call(h.change_state, ChangeState.Request(transition=Transition(id=Transition.TRANSITION_DEACTIVATE)))
    assert res.success
    before = h.processed()
    h.publish_frames(3)
    time.sleep(0.5)
    assert h.processed() == before  # inactive: no subscriptions, nothing processed
    assert h.call(h.change_state, ChangeState.Request(transition=Transition(id=Transition.TRANSITION_CLEANUP))).success
    assert h.node.session is None
    assert h.call(h.change_state, ChangeState.Request(transition=Transition(id=Transition.TRANSITION_CONFIGURE))).success
    assert h.call(h.change_state, ChangeState.Request(transition=Transition(id=Transition.TRANSITION_ACTIVATE))).success
    h.publish_frames(2)
    assert h.wait_for(lambda: h.processed() >= 1)


def test_live_parameters(harness):
    h = harness

    def set_param(name, value):
        req = SetParameters.Request(parameters=[Parameter(name, value=value).to_parameter_msg()])
        return h.call(h.set_params, req).results[0]

    r = set_param("memory.token_budget", 300)
    assert r.successful, r.reason
    assert h.node.session.tracker.memory.token_budget == 300
    r = set_param("lost_after", 5)
    assert r.successful and h.node.session.tracker.config.lost_after == 5
    r = set_param("publish_overlay", False)
    assert r.successful
    r = set_param("memory.pool_factor", 4)
    assert not r.successful and "configure" in r.reason
    r = set_param("memory.token_budget", -5)
    assert not r.successful and "range" in r.reason
    r = set_param("memory.similarity", "magic")
    assert not r.successful and "one of" in r.reason
    r = set_param("memory.write_threshold", "high")
    assert not r.successful and ("type" in r.reason.lower() or "float" in r.reason)
    assert h.node.get_parameter("memory.token_budget").value == 300
    # back to "unset" restores the preset's value (issue 23: it used to stay at the last one)
    preset_budget = h.node._preset["memory"]["token_budget"]
    assert set_param("memory.token_budget", 1).successful and h.node.session.tracker.memory.token_budget == 1
    assert set_param("memory.token_budget", -1).successful
    assert h.node.session.tracker.memory.token_budget == preset_budget == 256
    assert set_param("memory.similarity", "recency").successful
    assert set_param("memory.similarity", "").successful
    assert h.node.session.tracker.memory.similarity == "redundancy"
    # the harness's configure-time override (memory.write_threshold 0.0) survives a live change
    assert h.node.session.tracker.memory.write_threshold == 0.0
    # routing settings are live too, and reach the router the next frame uses
    assert set_param("routing.refresh_stride", 5).successful
    assert h.node.session.tracker._mem.router.config.refresh_stride == 5
    r = set_param("routing.search_stride", 0)
    assert not r.successful and "search_stride must be in [1, 64]" in r.reason


def test_bad_checkpoint_fails_configure_cleanly(ros, tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_text("not a checkpoint")
    node = TrackerNode(parameter_overrides=[Parameter("preset", value="tiny"), Parameter("checkpoint", value=str(bad))])
    try:
        assert node.session is None and not node._configured  # stays unconfigured, process alive
    finally:
        node.destroy_node()
    # weights saved from another preset with the same tensors (tiny_norm) are refused too
    from tinysam2_ros.modeling.build import build_model
    from tinysam2_ros.training.trainer import save_weights

    other = tmp_path / "norm.safetensors"
    save_weights(build_model("tiny_norm"), other, preset="tiny_norm")
    node = TrackerNode(parameter_overrides=[Parameter("preset", value="tiny"), Parameter("checkpoint", value=str(other))])
    try:
        assert node.session is None and not node._configured
    finally:
        node.destroy_node()


def _bytes_per_object(text: str) -> dict[int, int]:
    """The diagnostics value "id:bytes, id:bytes" as a dict."""
    return {int(k): int(v) for k, v in (item.split(":") for item in text.split(", ") if item != "none")}


def test_flood_is_dropped_not_queued(ros, checkpoint):
    h = Harness(checkpoint)
    try:
        h.publish_frames(1)
        assert h.wait_for(lambda: h.processed() >= 1)
        assert h.call(h.add, AddPrompts.Request(prompts=[box_prompt([20, 30, 50, 60])])).success
        for _ in range(300):  # fill the memory (slots and the 15-frame pointer horizon)
            h.publish_frames(1, rate_hz=15.0)
            if h.processed() >= 22:
                break
        time.sleep(0.5)
        mid_bytes = h.node.session.diagnostics()["memory_bytes_per_object"]
        received_before = h.node.session.stats.received.count
        h.publish_frames(200, rate_hz=200.0)
        time.sleep(1.0)
        stats = h.node.session.stats
        dropped = h.node.session.frames.dropped
        # best-effort images may also be lost before the callback on a loaded machine;
        # what arrives is either processed or dropped (counted), never queued
        assert stats.received.count - received_before >= 50
        assert dropped > 0 and stats.processed.count + dropped <= stats.received.count + 1
        assert stats.processed.count < stats.received.count
        # memory stays bounded: no object holds more than the most any held before the flood
        # (an object's bytes move by one entry as frames enter or leave its window)
        assert max(_bytes_per_object(h.node.session.diagnostics()["memory_bytes_per_object"]).values()) <= max(
            _bytes_per_object(mid_bytes).values())
    finally:
        h.close()


# ---------------------------------------------------------------- launch file and parameter file
REPO = __import__("pathlib").Path(__file__).resolve().parents[1]  # the ament_python package dir


def test_launch_file_refers_to_what_the_package_installs():
    import ast

    from tinysam2_ros.ros.params import SPECS

    tree = ast.parse((REPO / "launch" / "track.launch.py").read_text())
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call)]
    declared = {n.args[0].value for n in calls if getattr(n.func, "id", "") == "DeclareLaunchArgument"}
    assert {"image", "prompts", "params_file", "preset", "checkpoint", "backend", "namespace", "use_rviz"} <= declared
    used = {n.args[0].value for n in calls if getattr(n.func, "id", "") == "LaunchConfiguration"}
    assert used <= declared, f"undeclared launch arguments: {used - declared}"
    nodes = [n for n in calls if getattr(n.func, "id", "") == "Node"]
    kw = {k.arg: k.value for k in nodes[0].keywords}
    assert kw["package"].value == "tinysam2_ros" and kw["executable"].value == "tracker_node"
    overridden = {k.value for k in kw["parameters"].elts[1].keys}
    assert overridden <= set(SPECS)
    setup_py = (REPO / "setup.py").read_text()
    assert '"tracker_node = tinysam2_ros.ros.tracker_node:main"' in setup_py
    for folder in ("launch", "config", "engine", "models"):
        assert f'_share("{folder}")' in setup_py
    assert "install_scripts=$base/lib/tinysam2_ros" in (REPO / "setup.cfg").read_text()  # where ros2 run looks
    source = (REPO / "launch" / "track.launch.py").read_text()
    for name in ("tracker.yaml", "track.rviz"):
        assert name in source and (REPO / "config" / name).is_file()


def test_parameter_file_matches_the_node(ros):
    import yaml

    from tinysam2_ros.ros.params import SPECS, yaml_text

    assert (REPO / "config" / "tracker.yaml").read_text() == yaml_text(), "regenerate config/tracker.yaml"
    data = yaml.safe_load((REPO / "config" / "tracker.yaml").read_text())
    params = data["/**"]["ros__parameters"]
    assert set(params) == set(SPECS)
    for name, value in params.items():
        assert value == SPECS[name].default, name
    node = TrackerNode(cli_args=["--ros-args", "--params-file", str(REPO / "config" / "tracker.yaml"),
                                 "-p", "autostart:=false", "-p", "memory.token_budget:=1234"])
    try:
        assert node.get_parameter("preset").value == "tinysam2"
        assert node.get_parameter("memory.token_budget").value == 1234
        assert node.get_parameter("image_qos").value == "sensor_data"
    finally:
        node.destroy_node()


def test_tinysam2_track_runs_the_node_on_a_video(tmp_path):
    import subprocess
    import sys

    from tinysam2_ros.evaluation.synth import SynthConfig, generate_sequence

    generate_sequence(tmp_path, "seq", SynthConfig(num_frames=5, size=(64, 96)))
    proc = subprocess.run(
        [sys.executable, "-m", "tinysam2_ros.cli", "track", "--video", str(tmp_path / "JPEGImages" / "seq"),
         "--preset", "tiny", "--rate", "20", "--namespace", "cam1"],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "active: listening on /cam1/image" in proc.stderr + proc.stdout


@pytest.mark.slow  # 30-160 s on a 2-core CPU (--durations)
def test_node_runs_the_onnxruntime_backend_and_refuses_a_missing_tensorrt(ros, checkpoint, tmp_path):
    from tinysam2_ros.backends.onnx_export import export_stages
    from tinysam2_ros.checkpoint import load_checkpoint
    from tinysam2_ros.modeling.build import build_model

    model = build_model("tiny")
    load_checkpoint(model, checkpoint)
    export_stages(model, tmp_path / "onnx", "tiny")
    h = Harness(checkpoint, backend="onnxruntime", engine_dir=str(tmp_path / "onnx"))
    try:
        assert h.node.session is not None
        assert type(h.node.session.tracker.model.backend).__name__ == "OrtBackend"
        h.publish_frames(1)
        assert h.wait_for(lambda: h.processed() >= 1)
        res = h.call(h.add, AddPrompts.Request(prompts=[box_prompt([20, 30, 50, 60])]))
        assert res.success and list(res.found) == [True]
    finally:
        h.close()
    node = TrackerNode(parameter_overrides=[Parameter("preset", value="tiny"), Parameter("backend", value="tensorrt"),
                                            Parameter("engine_dir", value=str(tmp_path / "onnx"))])
    try:
        assert node.session is None  # configure failed with the reason in the log; the process lives on
    finally:
        node.destroy_node()


def test_random_weights_are_the_same_on_every_start(ros, tmp_path, monkeypatch):
    """Without a checkpoint the node runs seeded random weights: a second start reuses the
    first one's cached export instead of writing another (they would pile up on disk)."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    for _ in range(2):
        h = Harness("", backend="auto")
        try:
            assert h.node.session is not None
        finally:
            h.close()
    assert len(list((tmp_path / "tinysam2_ros").iterdir())) == 1
