"""``tinysam2 soak``: the real node on an endless synthetic stream, printing its memory.

A driver node plays frames in lock-step (the next goes out when the tracks of the
previous one came back, so every frame is tracked), prompts a few moving squares,
and every ``--churn`` frames removes one track and prompts a new one (new ids, as a
detector would). Every ``--every`` frames it prints the process's resident memory,
the tracker's memory per object and ms per frame: a leak shows as a rising RSS.
"""
from __future__ import annotations

import argparse
import threading
import time
from pathlib import Path

import numpy as np

ROW = "{:>8} {:>9} {:>8} {:>14} {:>9}"


def rss_mib() -> float:
    """Resident set size of this process (Linux /proc), in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    return float("nan")


class _Scene:
    """A fixed textured background with ``n`` squares moving back and forth."""

    def __init__(self, h: int, w: int, n: int, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.h, self.w, self.n = h, w, n
        self.background = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
        self.side = max(8, min(h, w) // 5)
        self.colors = rng.integers(60, 255, (n, 3))

    def box(self, k: int, t: int) -> list[float]:
        span = max(self.w - self.side - 1, 1)
        x = (7 * t + k * span // max(self.n, 1)) % (2 * span)
        x = x if x < span else 2 * span - x
        y = (k * (self.h - self.side)) // max(self.n, 1)
        return [float(x), float(y), float(x + self.side), float(y + self.side)]

    def frame(self, t: int) -> np.ndarray:
        img = self.background.copy()
        for k in range(self.n):
            x1, y1, x2, y2 = (int(v) for v in self.box(k, t))
            img[y1:y2, x1:x2] = self.colors[k]
        return img


def run_soak(frames: int, preset: str, checkpoint: str, size: tuple[int, int], objects: int, every: int,
             churn: int, device: str = "cpu") -> list[tuple]:
    import rclpy
    import rclpy.executors
    from rclpy.parameter import Parameter
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import Image

    from tinysam2_ros_msgs.msg import Prompt, TrackArray
    from tinysam2_ros_msgs.srv import AddPrompts, RemoveObject

    from .image_codec import rgb_to_image_msg
    from .tracker_node import TrackerNode

    reliable = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
    rclpy.init()
    params = {"preset": preset, "checkpoint": checkpoint, "device": device, "image_qos": "reliable",
              "memory.write_threshold": 0.0}
    node = TrackerNode(parameter_overrides=[Parameter(k, value=v) for k, v in params.items()])
    if node.session is None:
        rclpy.try_shutdown()
        raise RuntimeError("tracker_node did not configure (see its log above)")
    driver = rclpy.create_node("tinysam2_soak")
    pub = driver.create_publisher(Image, "image", reliable)
    done = threading.Event()
    waiting: list = [None]

    def on_tracks(msg) -> None:
        if msg.header.stamp == waiting[0]:
            done.set()

    driver.create_subscription(TrackArray, "tracks", on_tracks, reliable)
    add = driver.create_client(AddPrompts, "tracker_node/add_prompts")
    remove = driver.create_client(RemoveObject, "tracker_node/remove_object")
    executor = rclpy.executors.MultiThreadedExecutor(num_threads=3)
    executor.add_node(node)
    executor.add_node(driver)
    spinner = threading.Thread(target=executor.spin, daemon=True)
    spinner.start()
    scene = _Scene(size[0], size[1], objects)

    def call(client, request):
        if not client.wait_for_service(timeout_sec=10.0):
            raise RuntimeError(f"service {client.srv_name} not available")
        future = client.call_async(request)
        end = time.time() + 30.0
        while not future.done() and time.time() < end:
            time.sleep(0.005)
        return future.result() if future.done() else None

    def prompt(k: int, t: int):
        p = Prompt(label=f"square{k}", has_box=True)
        p.box_xyxy = scene.box(k, t)
        return p

    rows, lost, ids = [], 0, []
    print(ROW.format("frame", "RSS MiB", "objects", "memory bytes", "ms/frame"), flush=True)
    t_start = time.perf_counter()
    try:
        for t in range(frames):
            if not rclpy.ok():  # SIGINT / SIGTERM
                break
            msg = rgb_to_image_msg(scene.frame(t), encoding="rgb8")
            msg.header.stamp = driver.get_clock().now().to_msg()
            msg.header.frame_id = "soak"
            waiting[0] = msg.header.stamp
            done.clear()
            pub.publish(msg)
            if not done.wait(30.0) and rclpy.ok():
                lost += 1
            if t == 0:
                res = call(add, AddPrompts.Request(prompts=[prompt(k, t) for k in range(objects)]))
                ids = list(res.obj_ids) if res is not None else []
            elif churn and t % churn == 0 and ids:
                call(remove, RemoveObject.Request(obj_id=int(ids.pop(0))))
                res = call(add, AddPrompts.Request(prompts=[prompt(objects - 1, t)]))
                ids += [i for i in (res.obj_ids if res is not None else []) if i]
            if (t + 1) % every == 0 or t + 1 == frames:
                values = node.session.diagnostics()
                mem = sum(int(v.split(":")[1]) for v in values["memory_bytes_per_object"].split(", ") if ":" in v)
                ms = (time.perf_counter() - t_start) * 1e3 / every
                t_start = time.perf_counter()
                row = (t + 1, round(rss_mib(), 1), int(values["objects"]), mem, round(ms, 1))
                rows.append(row)
                print(ROW.format(*row), flush=True)
    finally:
        executor.shutdown(timeout_sec=2.0)
        node.on_shutdown(None)
        node.destroy_node()
        driver.destroy_node()
        rclpy.try_shutdown()
    if lost:
        print(f"{lost} frame(s) got no tracks within 30 s", flush=True)
    return rows


def _size(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must be HxW, e.g. 96x128, not {text!r}") from None
    if h < 32 or w < 32:
        raise argparse.ArgumentTypeError("size must be at least 32x32")
    return h, w


def _cmd_soak(args: argparse.Namespace) -> int:
    rows = run_soak(args.frames, args.preset, args.checkpoint or "", args.size, args.objects, args.every,
                    args.churn, args.device)
    if len(rows) >= 2:
        first, last = rows[0], rows[-1]
        print(f"RSS {first[1]} MiB after {first[0]} frames -> {last[1]} MiB after {last[0]} frames "
              f"({last[1] - first[1]:+.1f} MiB); tracker memory {first[3]} -> {last[3]} bytes", flush=True)
    return 0


def add_soak_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "soak", help="run the ROS node on an endless synthetic stream and print its memory (a leak check)",
        description="Start tracker_node in this process, play FRAMES synthetic frames in lock-step on its image "
        "topic, prompt OBJECTS moving squares through add_prompts, replace one track every CHURN frames, and print "
        "the process's RSS, the tracker's memory and ms per frame every EVERY frames.",
    )
    p.add_argument("--frames", type=int, default=10000, help="frames to play (default 10000)")
    p.add_argument("--preset", default="tiny", help="model preset (default tiny)")
    p.add_argument("--checkpoint", default="", help="weights (default: random weights, which still exercise memory)")
    p.add_argument("--size", type=_size, default=(96, 128), metavar="HxW", help="frame size (default 96x128)")
    p.add_argument("--objects", type=int, default=2, help="tracked objects (default 2)")
    p.add_argument("--every", type=int, default=500, help="print a row every N frames (default 500)")
    p.add_argument("--churn", type=int, default=1000, help="replace one track every N frames, 0 = never (default 1000)")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.set_defaults(func=_cmd_soak)
    return p
