"""Without vision_msgs the node still runs and says once, clearly, that the detector input is off."""
from __future__ import annotations

import subprocess
import sys

import pytest

pytest.importorskip("rclpy")
pytest.importorskip("tinysam2_ros_msgs.msg", reason="ROS interfaces not built (run `make setup`)")

SCRIPT = """
import sys
sys.modules["vision_msgs"] = sys.modules["vision_msgs.msg"] = None  # as if not installed
import rclpy
from rclpy.parameter import Parameter
from tinysam2_ros.ros.tracker_node import TrackerNode
rclpy.init()
node = TrackerNode(parameter_overrides=[Parameter("preset", value="tiny")])
assert node.session is not None, "configure failed"
assert node.detections is None and "tracked_detections" not in node._pub_handles
print("topics:", sorted(name for s in node._sub_handles for name in [s.topic_name]))
node.on_shutdown(None)
node.destroy_node()
rclpy.shutdown()
"""


def test_node_runs_without_vision_msgs_and_says_so_once():
    proc = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=120,
                          env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert out.count("vision_msgs is not importable") == 1, out[-3000:]
    assert "'detections' input and the 'tracked_detections' output are OFF" in out
    assert "/detections" not in out.split("topics:")[1]
