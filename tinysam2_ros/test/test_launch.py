"""`ros2 launch tinysam2_ros track.launch.py` for real, as a user runs it from a sourced workspace.

Needs the ROS 2 launch stack (`ros2`, launch, launch_ros), which PyPI lacks: `make setup`
installs it from ../shared/ros/launch_stack when that folder exists. Each test starts the
real launch process, talks to the node over real topics and stops it with SIGINT.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import threading
import time

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy")
pytest.importorskip("tinysam2_ros_msgs.msg", reason="ROS interfaces not built (run `make setup`)")
if shutil.which("ros2") is None:
    pytest.skip("the ROS 2 launch stack is not installed (`ros2` not on PATH): `make setup` installs it from "
                "../shared/ros/launch_stack when ../shared is beside the clone", allow_module_level=True)
try:
    from ament_index_python.packages import get_package_share_directory

    get_package_share_directory("tinysam2_ros")
except Exception as exc:  # noqa: BLE001 - any failure means the workspace is not sourced
    pytest.skip(f"tinysam2_ros is not in the ament index ({exc}): source install/setup.bash",
                allow_module_level=True)

from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402

from tinysam2_ros_msgs.msg import Prompt, PromptArray, TrackArray  # noqa: E402

RELIABLE = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
H, W = 96, 128


class Launch:
    """A `ros2 launch` process with its output collected."""

    def __init__(self, *args: str, domain: int, **env_vars: str) -> None:
        env = dict(os.environ, ROS_DOMAIN_ID=str(domain), PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1", **env_vars)
        self.proc = subprocess.Popen(["ros2", "launch", "tinysam2_ros", "track.launch.py", *args],
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                                     start_new_session=True)
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line)

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def stop(self, timeout: float = 60.0) -> int:
        """SIGINT to the whole process group, as Ctrl-C in a terminal does (`ros2 launch`
        then leaves the SIGINT to its children and sends SIGTERM only to those still running
        5 s later); the whole process group must be gone afterwards."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGINT)
        try:
            rc = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            raise AssertionError(f"ros2 launch did not stop on SIGINT:\n{self.output[-3000:]}")
        self._reader.join(timeout=5)
        return rc


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


class Client:
    """Publishes frames and a box prompt in its own ROS domain, collects tracks."""

    def __init__(self, domain: int, image_topic: str, ns: str) -> None:
        self.context = rclpy.Context()
        rclpy.init(context=self.context, domain_id=domain)
        self.node = rclpy.create_node("launch_test_client", context=self.context)
        self.image_pub = self.node.create_publisher(Image, image_topic, qos_profile_sensor_data)
        self.prompt_pub = self.node.create_publisher(PromptArray, f"{ns}/prompts", RELIABLE)
        self.tracks: list[TrackArray] = []
        self.node.create_subscription(TrackArray, f"{ns}/tracks", self.tracks.append, RELIABLE)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self.thread = threading.Thread(target=self.executor.spin, daemon=True)
        self.thread.start()
        self.rng = np.random.default_rng(0)
        self.background = self.rng.integers(0, 255, size=(H, W, 3), dtype=np.uint8)

    def frame(self, i: int) -> Image:
        img = self.background.copy()
        x = 20 + 2 * (i % 20)
        img[30:60, x : x + 30] = (220, 30, 30)
        msg = Image(height=H, width=W, encoding="rgb8", step=W * 3, data=img.tobytes())
        msg.header.frame_id = "cam"
        msg.header.stamp = self.node.get_clock().now().to_msg()
        return msg

    def run(self, seconds: float) -> bool:
        """Stream frames; prompt a box once the node has subscribed (again every 10 frames while no
        track exists: the node keeps only the newest frame, so a prompt stamped with a frame it
        dropped is refused); True once a track with a mask arrives."""
        prompted_at = None
        end = time.time() + seconds
        i = 0
        while time.time() < end:
            msg = self.frame(i)
            self.image_pub.publish(msg)
            waiting = prompted_at is None or (i - prompted_at >= 10 and not any(t.tracks for t in list(self.tracks)))
            if waiting and self.prompt_pub.get_subscription_count() > 0 and i > 2:
                x = 20 + 2 * (i % 20)
                p = Prompt(action=Prompt.ACTION_ADD, label="box", has_box=True)
                p.header = msg.header
                p.box_xyxy = [float(x), 30.0, float(x + 30), 60.0]
                self.prompt_pub.publish(PromptArray(header=msg.header, prompts=[p]))
                prompted_at = i
            if any(t.tracks and t.tracks[0].area > 0 for t in list(self.tracks)):
                return True
            i += 1
            time.sleep(0.1)
        return False

    def close(self) -> None:
        self.executor.shutdown(timeout_sec=2.0)
        self.node.destroy_node()
        rclpy.shutdown(context=self.context)


_DOMAINS = iter(range(60, 90))


def test_show_args_lists_the_launch_arguments():
    out = subprocess.run(["ros2", "launch", "tinysam2_ros", "track.launch.py", "--show-args"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    for arg in ("image", "prompts", "detections", "preset", "checkpoint", "backend", "namespace", "use_rviz"):
        assert f"'{arg}'" in out.stdout


@pytest.mark.parametrize("namespace,extra", [
    ("", []),
    ("front", ["backend:=torch"]),
    ("", ["use_rviz:=true"]),
    ("", ["detections:=/yolo/detections"]),
], ids=["plain", "namespace+backend", "rviz_missing", "detections_remap"])
def test_ros2_launch_tracks_a_prompted_object(checkpoint, namespace, extra):
    domain = next(_DOMAINS)
    image_topic = "/camera/color/image_raw"
    args = [f"image:={image_topic}", "preset:=tiny", f"checkpoint:={checkpoint}", *extra]
    if namespace:
        args.append(f"namespace:={namespace}")
    launch = Launch(*args, domain=domain)
    client = Client(domain, image_topic, f"/{namespace}" if namespace else "")
    try:
        got = client.run(seconds=90.0)
    finally:
        client.close()
        rc = launch.stop()
    out = launch.output
    assert got, f"no track with a mask came out of the launched node:\n{out[-3000:]}"
    if "use_rviz:=true" in extra and shutil.which("rviz2") is None:
        assert "rviz2 is not installed" in out
    if "detections:=/yolo/detections" in extra:
        assert "detector input on /yolo/detections" in out, out[-3000:]
    assert not _group_alive(launch.proc.pid), f"processes left behind by ros2 launch:\n{out[-2000:]}"
    assert "Traceback" not in out and "Failed to publish" not in out, out[-3000:]
    assert rc == 0, f"ros2 launch exited with {rc}:\n{out[-3000:]}"


def test_ctrl_c_during_start_up_exits_cleanly(checkpoint, tmp_path):
    """SIGINT while the node is still configuring (here: its first onnxruntime export into an
    empty cache) ends it with a log line, exit code 0, no traceback and no half-written export."""
    cache = tmp_path / "cache"
    launch = Launch("preset:=tiny", f"checkpoint:={checkpoint}", "backend:=auto", domain=next(_DOMAINS),
                    XDG_CACHE_HOME=str(cache))
    end = time.time() + 120
    while time.time() < end and "exporting tiny once into the cache" not in launch.output and launch.proc.poll() is None:
        time.sleep(0.05)
    assert "exporting tiny once into the cache" in launch.output, launch.output[-3000:]
    rc = launch.stop()
    out = launch.output
    assert rc == 0, f"ros2 launch exited with {rc}:\n{out[-3000:]}"
    assert "Traceback" not in out and "KeyboardInterrupt" not in out, out[-3000:]
    # the node got the SIGINT itself (not launch's SIGTERM 5 s later), during or right after its export
    assert "SIGINT: interrupted during start-up" in out or "SIGINT: shutting down" in out, out[-3000:]
    assert not _group_alive(launch.proc.pid), f"processes left behind by ros2 launch:\n{out[-2000:]}"
    entries = list((cache / "tinysam2_ros").iterdir()) if (cache / "tinysam2_ros").exists() else []
    assert not [e for e in entries if e.name.startswith(".")], entries  # no temporary export left behind
