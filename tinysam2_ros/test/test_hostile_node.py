"""The hostile client's failures (issue 23), against the real node with real rclpy."""
from __future__ import annotations

import time

import numpy as np
import pytest
import torch

rclpy = pytest.importorskip("rclpy")
pytest.importorskip("tinysam2_ros_msgs.msg", reason="ROS interfaces not built (run `make setup`)")

from builtin_interfaces.msg import Time  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from rclpy.qos import qos_profile_sensor_data  # noqa: E402
from sensor_msgs.msg import CompressedImage  # noqa: E402

from test_input_limits import png_bomb  # noqa: E402
from test_ros_node import H, W, Harness, box_prompt  # noqa: E402
from tinysam2_ros.ros.tracker_node import TrackerNode  # noqa: E402
from tinysam2_ros_msgs.msg import Prompt, PromptArray  # noqa: E402
from tinysam2_ros_msgs.srv import AddPrompts  # noqa: E402


@pytest.fixture
def harness(ros, checkpoint):  # noqa: F811
    h = Harness(checkpoint)
    yield h
    h.close()


def diag_values(h) -> dict[str, str]:
    return h.node.session.diagnostics()


def publish_one(h, stamped=True):
    msg = h.image()
    if not stamped:
        msg.header.stamp = Time()
    before = h.processed()
    h.image_pub.publish(msg)
    assert h.wait_for(lambda: h.processed() > before), "frame not processed"
    return msg.header.stamp


def test_prompt_between_unstamped_and_stamped_frames_is_refused_not_fatal(harness):
    h = harness
    for _ in range(2):
        publish_one(h, stamped=False)
    first = publish_one(h)
    publish_one(h)
    with h.node.session.lock:
        window = [f.stamp for f in h.node.session.tracker._frames.values()]
    assert None in window and window[-1] is not None, window  # both kinds in the feature window
    between = Time(sec=first.sec - 1, nanosec=first.nanosec)
    res = h.call(h.add, AddPrompts.Request(prompts=[box_prompt([20, 30, 50, 60], stamp=between)]))
    assert not res.success and "no frame with stamp" in res.message
    h.prompt_pub.publish(PromptArray(prompts=[box_prompt([20, 30, 50, 60], stamp=between)]))
    assert h.wait_for(lambda: h.node.session.stats.errors["bad_prompt"] == 2)
    res = h.call(h.add, AddPrompts.Request(prompts=[box_prompt([20, 30, 50, 60])]))
    assert res.success, res.message  # the node lives on
    publish_one(h, stamped=False)
    publish_one(h)


def test_configure_without_the_device_logs_why(ros, checkpoint, capfd):  # noqa: F811
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here: cuda:0 would configure")
    node = TrackerNode(parameter_overrides=[Parameter("preset", value="tiny"), Parameter("device", value="cuda:0"),
                                            Parameter("checkpoint", value=str(checkpoint))])
    try:
        assert node.session is None and not node._configured
    finally:
        node.destroy_node()
    err = capfd.readouterr().err
    assert "configure failed: device 'cuda:0' needs CUDA" in err, err[-2000:]


def test_limits_on_ids_labels_points_and_stamps(harness):
    h = harness
    publish_one(h)
    assert h.call(h.add, AddPrompts.Request(prompts=[box_prompt([20, 30, 50, 60])])).success
    future = h.client.get_clock().now().to_msg()
    future.sec += 3600
    many = Prompt(label="dots", points=[], point_labels=[])
    from geometry_msgs.msg import Point

    many.points = [Point(x=30.0, y=40.0)] * 10_000
    many.point_labels = [1] * 10_000
    bad = [box_prompt([20, 30, 50, 60], obj_id=70000), box_prompt([20, 30, 50, 60], label="x" * 1_000_000), many,
           box_prompt([20, 30, 50, 60], stamp=future)]
    res = h.call(h.add, AddPrompts.Request(prompts=bad))
    assert not res.success and list(res.obj_ids) == [0, 0, 0, 0]
    for words in (("prompt 0", "obj_id 70000", "65535"), ("prompt 1", "1000000 characters", "max_label_length=64"),
                  ("prompt 2", "10000 points", "max_points_per_prompt=64"), ("prompt 3", "ahead", "stamp_tolerance")):
        for word in words:
            assert word in res.message, (word, res.message)
    # the same on the topic: refused, counted per cause; the valid track keeps its masks
    h.prompt_pub.publish(PromptArray(prompts=bad))
    errors = h.node.session.stats.errors
    causes = ("obj_id_too_large", "label_too_long", "too_many_points", "future_stamp")
    assert h.wait_for(lambda: all(errors[c] == 2 for c in causes)), dict(errors)
    n_masks = len(h.masks)
    stamps = h.publish_frames(3)
    assert h.wait_for(lambda: any(m.header.stamp == stamps[-1] and len(m.tracks) == 1 for m in h.tracks))
    assert h.wait_for(lambda: len(h.masks) > n_masks)
    assert not any(k.startswith("step_failed") for k in errors), dict(errors)
    values = diag_values(h)
    assert values["prompts_received"] == "9" and values["prompts_refused"] == "8"


def test_compressed_bomb_is_refused_from_its_header(ros, checkpoint):  # noqa: F811
    import cv2

    h = Harness(checkpoint, image_transport="compressed")
    try:
        pub = h.client.create_publisher(CompressedImage, "image/compressed", qos_profile_sensor_data)
        ok, enc = cv2.imencode(".png", h.background)
        good = CompressedImage(format="png", data=enc.tobytes())
        pub.publish(good)
        assert h.wait_for(lambda: h.processed() >= 1)
        bomb = CompressedImage(format="png", data=png_bomb(10000))
        pub.publish(bomb)
        errors = h.node.session.stats.errors
        assert h.wait_for(lambda: errors["image_too_large"] == 1), dict(errors)
        time.sleep(0.5)
        assert h.processed() == 1  # never decoded nor tracked
        pub.publish(good)
        assert h.wait_for(lambda: h.processed() == 2)
    finally:
        h.close()


def test_concurrent_service_calls_are_all_answered(harness):
    h = harness
    publish_one(h)
    assert h.add.wait_for_service(timeout_sec=10.0)
    futures = [h.add.call_async(AddPrompts.Request(prompts=[box_prompt([20, 30, 50, 60], label=f"c{i}")]))
               for i in range(20)]
    for _ in range(5):
        h.image_pub.publish(h.image())  # the worker competes for the tracker meanwhile
        time.sleep(0.05)
    assert h.wait_for(lambda: all(f.done() for f in futures), timeout=60.0), \
        f"{sum(not f.done() for f in futures)} of 20 calls never answered"
    answers = [f.result() for f in futures]
    assert all(a.success or "busy" in a.message for a in answers), [a.message for a in answers]
    assert sum(a.success for a in answers) >= 1


def test_prompt_flood_is_counted(ros, checkpoint):  # noqa: F811
    h = Harness(checkpoint, prompt_queue_depth=2, max_objects=1024)
    try:
        publish_one(h)
        for i in range(300):  # 200 prompts/s while frames stream
            h.prompt_pub.publish(PromptArray(prompts=[box_prompt([20, 30, 50, 60], label=f"p{i}")]))
            if i % 10 == 0:
                h.image_pub.publish(h.image())
            time.sleep(0.005)
        time.sleep(1.0)
        s = h.node.session.stats.prompts

        def settled():
            applied = len(h.node.session.tracker.object_ids)
            return s["received"] > 0 and s["received"] == s["dropped"] + s["refused"] + applied

        assert h.wait_for(settled), (dict(s), len(h.node.session.tracker.object_ids))
        assert s["dropped"] > 0  # a queue of 2 cannot hold a flood: what it drops is counted
        values = diag_values(h)
        assert int(values["prompts_dropped"]) == s["dropped"] and int(values["prompts_received"]) == s["received"]
    finally:
        h.close()


def test_soak_prints_memory_rows(tmp_path):
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "tinysam2_ros.cli", "soak", "--frames", "12", "--every", "6",
                           "--churn", "5", "--size", "64x96"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [line.split() for line in proc.stdout.splitlines() if line.strip()[:1].isdigit()]
    assert [r[0] for r in rows] == ["6", "12"] and all(float(r[1]) > 0 for r in rows)
    assert "RSS" in proc.stdout and "after 12 frames" in proc.stdout
