"""``tinysam2 demo``: the real ROS node on a video, end to end, with a report.

A driver node plays the video frame by frame on the ``image`` topic (the next frame
goes out when the node's tracks for the previous one have arrived, so every frame is
tracked and the run is reproducible), prompts the objects of the first annotated
frame through the node's ``add_prompts`` service (with their masks by default, as in
DAVIS semi-supervised evaluation; or their tight boxes, or one click inside each),
scores the ``masks`` label images it publishes (one id per pixel, what ``tinysam2 eval``
scores), writes the ``overlay`` images to a video, and finally prints J&F (when
annotations exist), memory tokens per object and milliseconds per frame.

With a simulated detector (``--detector``) nothing is prompted through the service: boxes
made from the annotations go out on ``detections`` (vision_msgs) after the frame they were
made on, or a few frames later, and the node's association creates and refines the tracks;
the report then says which track followed which object (one id per object is the aim).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import rclpy
import rclpy.executors
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image
from std_msgs.msg import Header

from ..evaluation.davis import annotation_paths, first_annotations, load_annotation, prompt_kwargs
from ..evaluation.metrics import j_and_f, summarize
from tinysam2_ros_msgs.msg import Prompt, TrackArray
from tinysam2_ros_msgs.srv import AddPrompts
from .image_codec import image_msg_to_rgb, mask_to_image_msg, rgb_to_image_msg
from .tracker_node import TrackerNode

RELIABLE = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)


@dataclass
class DemoResult:
    frames: int = 0
    jf: dict = field(default_factory=dict)  # overall J, F, JF (when annotated)
    per_object: dict = field(default_factory=dict)
    memory_tokens: float = 0.0
    ms_per_frame: float = 0.0
    overlay_path: Path | None = None
    tracks_per_object: dict = field(default_factory=dict)  # detector mode: object -> track ids that followed it
    tracks_on_nothing: list = field(default_factory=list)
    counts: dict = field(default_factory=dict)  # detector mode: the node's detections_* diagnostics
    arrays_sent: int = 0
    assignments: dict = field(default_factory=dict)  # (detector id, track id) -> boxes associated
    positions: dict = field(default_factory=dict)  # with depth: frame -> {id: (quality_3d, xyz or None, area)}
    mask_iou: dict = field(default_factory=dict)  # with depth and annotations: (frame, id) -> IoU of the 2D mask


class DemoDriver(Node):
    """Plays frames in lock-step with the tracker and records what comes back."""

    def __init__(self, frames: list[np.ndarray], namespace: str = "", depth: list[np.ndarray] | None = None,
                 camera: dict | None = None) -> None:
        super().__init__("tinysam2_demo", namespace=namespace)
        self.frames = frames
        self.depth, self.camera = depth, camera  # metres per frame, camera_info fields (synth_depth.camera_info)
        if depth is not None:
            from sensor_msgs.msg import CameraInfo

            self.depth_pub = self.create_publisher(Image, "depth", RELIABLE)
            self.info_pub = self.create_publisher(CameraInfo, "camera_info", RELIABLE)
        self.pub = self.create_publisher(Image, "image", RELIABLE)  # the node is set to reliable: no frame lost
        self.tracks: dict[int, TrackArray] = {}
        self.labels: dict[int, np.ndarray] = {}  # frame index -> the node's label image
        self.overlays: dict[int, np.ndarray] = {}
        self._stamp_to_idx: dict[tuple[int, int], int] = {}
        self.create_subscription(TrackArray, "tracks", self._on_tracks, RELIABLE)
        self.create_subscription(Image, "masks", self._on_masks, RELIABLE)
        self.create_subscription(Image, "overlay", self._on_overlay, RELIABLE)
        self.add = self.create_client(AddPrompts, "tracker_node/add_prompts")
        self.det_pub = None

    def _idx(self, header) -> int | None:
        return self._stamp_to_idx.get((header.stamp.sec, header.stamp.nanosec))

    def _on_tracks(self, msg: TrackArray) -> None:
        i = self._idx(msg.header)
        if i is not None:
            self.tracks[i] = msg

    def _on_masks(self, msg: Image) -> None:
        i = self._idx(msg.header)
        if i is not None:
            self.labels[i] = _label_ids(msg)

    def _on_overlay(self, msg: Image) -> None:
        i = self._idx(msg.header)
        if i is not None:
            self.overlays[i] = image_msg_to_rgb(msg)

    def publish(self, i: int) -> None:
        header = Header(frame_id="demo_camera")
        header.stamp = self.get_clock().now().to_msg()
        self._stamp_to_idx[(header.stamp.sec, header.stamp.nanosec)] = i
        if self.depth is not None:  # depth and camera_info first, stamped as the colour frame (an aligned camera)
            from sensor_msgs.msg import CameraInfo

            from ..evaluation.synth_depth import depth_to_mm

            c = self.camera
            info = CameraInfo(header=header, width=c["width"], height=c["height"], distortion_model=c["distortion_model"])
            info.k, info.d = [float(v) for v in c["K"]], [float(v) for v in c["D"]]
            self.info_pub.publish(info)
            mm = depth_to_mm(self.depth[i])
            self.depth_pub.publish(Image(header=header, height=mm.shape[0], width=mm.shape[1], encoding="16UC1",
                                         step=2 * mm.shape[1], data=mm.tobytes()))
        self.pub.publish(rgb_to_image_msg(self.frames[i], header, encoding="bgr8"))

    def publish_detections(self, made_on: int, boxes) -> None:
        """One vision_msgs/Detection2DArray stamped with the frame the boxes were made on."""
        from vision_msgs.msg import Detection2D, Detection2DArray, ObjectHypothesisWithPose

        if self.det_pub is None:
            self.det_pub = self.create_publisher(Detection2DArray, "detections", RELIABLE)
        stamp = next(k for k, v in self._stamp_to_idx.items() if v == made_on)
        msg = Detection2DArray()
        msg.header.frame_id = "demo_camera"
        msg.header.stamp.sec, msg.header.stamp.nanosec = stamp
        for (x1, y1, x2, y2), label, score, source in boxes:
            # the annotated object a box came from rides in the detector's id, for the report
            # only: the demo runs the node with detections.use_detector_ids false
            d = Detection2D(header=msg.header, id=f"object{source}" if source else "")
            d.bbox.center.position.x, d.bbox.center.position.y = (x1 + x2) / 2, (y1 + y2) / 2
            d.bbox.size_x, d.bbox.size_y = x2 - x1, y2 - y1
            hyp = ObjectHypothesisWithPose()
            hyp.hypothesis.class_id, hyp.hypothesis.score = label, score
            d.results.append(hyp)
            msg.detections.append(d)
        self.det_pub.publish(msg)


def _label_ids(msg: Image) -> np.ndarray:
    """The node's mono16 label image as an ``H x W`` array of track ids."""
    if msg.encoding != "mono16":
        raise ValueError(f"masks: expected a mono16 label image, got {msg.encoding}")
    dtype = ">u2" if msg.is_bigendian else "<u2"
    return np.frombuffer(bytes(msg.data), dtype).reshape(msg.height, msg.step // 2)[:, : msg.width].copy()


def _full_mask(track, shape) -> np.ndarray:
    """A Track's cropped mono8 mask placed back into a full-size boolean image."""
    out = np.zeros(shape, dtype=bool)
    m = track.mask
    if m.width and m.height:
        crop = np.frombuffer(bytes(m.data), np.uint8).reshape(m.height, m.step)[:, : m.width] > 0
        x, y = track.box.x_offset, track.box.y_offset
        out[y : y + m.height, x : x + m.width] = crop
    return out


def _wait(executor, predicate, timeout: float) -> bool:
    end = time.time() + timeout
    while time.time() < end:
        executor.spin_once(timeout_sec=0.02)
        if predicate():
            return True
    return False


def run_demo(
    frames: list[np.ndarray],
    prompts: dict[int, dict],  # obj_id -> on frame 0: {"mask": H x W bool}, {"box": [x1, y1, x2, y2]}
    #                            or {"points": [[x, y]], "labels": [1]}
    gt: dict[int, np.ndarray] | None,  # frame index -> id map (uint8), optional
    out_dir: Path,
    preset: str,
    checkpoint: str | None,
    params: dict | None = None,
    log=print,
    detections: dict | None = None,  # publish frame -> [(made on frame, boxes)] (sim_detector); replaces prompts
    depth: list[np.ndarray] | None = None,  # aligned depth (m) per frame: turns 3D on
    camera: dict | None = None,  # its camera_info fields
) -> DemoResult:
    out_dir.mkdir(parents=True, exist_ok=True)
    overrides = {"preset": preset, "checkpoint": checkpoint or "", "image_qos": "reliable", **(params or {})}
    if depth is not None:
        overrides["depth3d.enabled"] = True
    own_context = not rclpy.ok()
    if own_context:
        rclpy.init()
    node = TrackerNode(parameter_overrides=[Parameter(k, value=v) for k, v in overrides.items()])
    if node.session is None:
        raise RuntimeError("tracker_node failed to configure (see the log above)")
    if detections is not None and node.detections is None:
        raise RuntimeError("--detector needs vision_msgs, which is not importable here")
    driver = DemoDriver(frames, depth=depth, camera=camera)
    executor = rclpy.executors.MultiThreadedExecutor(num_threads=3)
    executor.add_node(node)
    executor.add_node(driver)
    result = DemoResult()
    try:
        if not driver.add.wait_for_service(timeout_sec=10.0):
            raise RuntimeError("add_prompts service did not appear")
        t_start = time.time()
        for i in range(len(frames)):
            driver.publish(i)
            if not _wait(executor, lambda: i in driver.tracks and i in driver.labels, timeout=120.0):
                raise RuntimeError(f"no tracks and label image for frame {i} within 120 s")
            if detections is not None:
                for made_on, boxes in detections.get(i, []):
                    driver.publish_detections(made_on, boxes)
                    result.arrays_sent += 1
                if not _wait(executor, lambda: node.detections.handled >= result.arrays_sent, timeout=30.0):
                    raise RuntimeError(f"the node did not take the detections of frame {i} within 30 s")
            elif i == 0:
                req = AddPrompts.Request()
                for oid, p in sorted(prompts.items()):
                    msg = Prompt(obj_id=oid, label=f"object {oid}", action=Prompt.ACTION_ADD)
                    if "mask" in p:
                        msg.mask = mask_to_image_msg(p["mask"])
                    elif "box" in p:
                        msg.has_box = True
                        msg.box_xyxy = [float(v) for v in p["box"]]
                    else:
                        from geometry_msgs.msg import Point

                        msg.points = [Point(x=float(x), y=float(y)) for x, y in p["points"]]
                        msg.point_labels = [int(v) for v in p["labels"]]
                    req.prompts.append(msg)
                future = driver.add.call_async(req)
                _wait(executor, future.done, timeout=120.0)
                res = future.result()
                if res is None or not res.success:
                    raise RuntimeError(f"prompts refused: {None if res is None else res.message}")
                log(f"prompted {len(res.obj_ids)} object(s) on frame 0 (first masks found: {list(res.found)})")
        elapsed = time.time() - t_start
        if detections is not None:
            result.counts = node.detections.diagnostics()
            result.assignments = dict(node.detections.assoc.assignments)
        _wait(executor, lambda: len(driver.overlays) >= len(frames) - 1, timeout=5.0)
    finally:
        # Stop the node's worker before the executor: a frame it publishes after the
        # executor is gone leaves a callback task that fails on the destroyed node.
        node.on_shutdown(None)
        _wait(executor, lambda: False, timeout=0.1)  # run what is already queued
        executor.shutdown(timeout_sec=2.0)
        node.destroy_node()
        driver.destroy_node()
        if own_context:
            rclpy.try_shutdown()

    h, w = frames[0].shape[:2]
    result.frames = len(frames)
    result.ms_per_frame = 1e3 * elapsed / len(frames)
    if depth is not None:
        result.positions = {
            i: {t.id: (t.quality_3d, np.array([t.position.x, t.position.y, t.position.z]) if t.quality_3d else None,
                       t.area) for t in m.tracks} for i, m in driver.tracks.items()}
    tokens = [t.memory_tokens for i, m in driver.tracks.items() if i > 0 for t in m.tracks]
    result.memory_tokens = float(np.mean(tokens)) if tokens else 0.0
    if gt and detections is not None:
        _score_detector_run(result, driver, gt, frames, (h, w))
    elif gt:
        scored = sorted(gt)
        if depth is not None:
            for i in scored:
                for oid in prompts:
                    p, g = driver.labels[i] == oid, gt[i] == oid
                    union = np.count_nonzero(p | g)
                    result.mask_iou[(i, oid)] = np.count_nonzero(p & g) / union if union else 1.0
        for oid in prompts:
            result.per_object[oid] = j_and_f([driver.labels[i] == oid for i in scored], [gt[i] == oid for i in scored])
        result.jf = summarize(result.per_object.values())
    path = out_dir / "overlay.mp4"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10.0, (w, h))
    for i in range(len(frames)):
        rgb = driver.overlays.get(i)  # image_msg_to_rgb gave RGB; the writer takes BGR
        writer.write(cv2.cvtColor(rgb if rgb is not None else frames[i], cv2.COLOR_RGB2BGR))
    writer.release()
    result.overlay_path = path
    return result


def _score_detector_run(result: DemoResult, driver: DemoDriver, gt, frames, hw) -> None:
    """Which track each object's boxes went to (by the association, not by masks), and J&F
    of each object's main track (the one most of its boxes went to)."""
    pred = {i: {t.id: _full_mask(t, hw) for t in msg.tracks} for i, msg in driver.tracks.items()}
    objects = sorted({int(v) for g in gt.values() for v in np.unique(g) if v not in (0, 255)})
    per_object: dict[int, dict[int, int]] = {oid: {} for oid in objects}
    tracks = {tid for (_, tid) in result.assignments}
    for (det_id, tid), n in result.assignments.items():
        if det_id.startswith("object"):
            per_object[int(det_id[6:])][tid] = per_object[int(det_id[6:])].get(tid, 0) + n
    result.tracks_per_object = {oid: sorted(t) for oid, t in per_object.items()}
    result.tracks_on_nothing = sorted(tracks - {t for m in per_object.values() for t in m})
    scored = sorted(gt)
    for oid in objects:
        main = max(per_object[oid], key=per_object[oid].get, default=None)
        masks = [pred.get(i, {}).get(main, np.zeros(hw, bool)) for i in scored]
        result.per_object[oid] = j_and_f(masks, [gt[i] == oid for i in scored])
    result.jf = summarize(result.per_object.values())


def load_davis_sequence(
    root: Path, seq: str, prompt: str = "mask"
) -> tuple[list[np.ndarray], dict[int, dict], dict[int, np.ndarray]]:
    """Frames, the first frame's objects prompted as ``prompt`` (mask, box or point), and the annotations."""
    from ..evaluation.davis import load_frames

    frames = [cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB) for p in load_frames(root, seq)]
    firsts = first_annotations(root, seq)
    prompts = {oid: prompt_kwargs(prompt, mask) for oid, (f, mask) in firsts.items() if f == 0}
    gt = {i: load_annotation(p) for i, p in annotation_paths(root, seq).items()}
    return frames, prompts, gt
