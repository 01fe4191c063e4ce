"""Message side of the 3D outputs: depth / camera_info in; Track fields, Detection3DArray,
MarkerArray and PointCloud2 out. The math lives in ``geometry/depth3d.py``.

``Depth3DStage`` is what the node holds when ``depth3d.enabled`` is set: it buffers depth
messages (undecoded) for pairing, keeps the newest valid camera model, and per processed
colour frame returns the per-track estimates plus the messages to publish. Every refusal
goes through ``report(cause, message)`` (the node logs once per cause and counts it on
/diagnostics); 2D tracking never depends on it.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
from sensor_msgs.msg import PointCloud2, PointField
from std_msgs.msg import ColorRGBA
from visualization_msgs.msg import Marker, MarkerArray

from ..geometry.depth3d import (
    QUALITY_FEW_POINTS,
    QUALITY_NONE,
    QUALITY_OK,
    CameraModel,
    Depth3DConfig,
    DepthError,
    Estimate3D,
    decode_depth_raw,
    estimate_track,
    transform_estimate,
    valid_fraction,
)
from ..geometry.pairing import DepthBuffer
from .render import track_color

try:  # optional: standard 3D detections for consumers that speak vision_msgs
    from vision_msgs.msg import BoundingBox3D, Detection3D, Detection3DArray, ObjectHypothesisWithPose
except ImportError:  # pragma: no cover - depends on the install
    Detection3DArray = None

try:  # optional: outputs in another frame
    import tf2_ros  # noqa: F401
    HAVE_TF2 = True
except ImportError:
    HAVE_TF2 = False

MIN_MARKER_SIZE = 0.01  # metres: a planar object still shows as a thin box
MARKER_NS_BOX, MARKER_NS_LABEL = "tinysam2_box", "tinysam2_label"


def stamp_sec(stamp) -> float:
    return stamp.sec + stamp.nanosec * 1e-9


def camera_from_info(msg, cfg: Depth3DConfig) -> CameraModel:
    """sensor_msgs/CameraInfo -> CameraModel (DepthError when unusable)."""
    if cfg.camera_matrix == "P":
        P = np.asarray(msg.p, dtype=np.float64)
        if P.size != 12:
            raise DepthError("camera_info_bad_k", f"P has {P.size} entries, need 12")
        K, D = P.reshape(3, 4)[:, :3], ()
    else:
        K, D = np.asarray(msg.k, dtype=np.float64), np.asarray(msg.d, dtype=np.float64)
        if K.size != 9:
            raise DepthError("camera_info_bad_k", f"K has {K.size} entries, need 9")
    return CameraModel(K, msg.width, msg.height, D, msg.distortion_model, undistort=cfg.undistort)


def depth_from_msg(msg) -> tuple[np.ndarray, float]:
    """(depth array over the message's data, metres per unit); DepthError when malformed."""
    return decode_depth_raw(msg.encoding, int(msg.height), int(msg.width), int(msg.step), bool(msg.is_bigendian),
                            msg.data)


def fill_track(track, est: Estimate3D | None) -> None:
    """Set the 3D fields of a tinysam2_ros_msgs/Track (quality NONE when there is no estimate)."""
    if est is None or est.position is None:
        track.quality_3d = QUALITY_NONE
        track.valid_points = 0 if est is None else est.valid_points
        return
    track.quality_3d = est.quality
    track.valid_points = est.valid_points
    _set_xyz(track.position, est.position)
    _set_xyz(track.box_center, est.box_center)
    _set_xyz(track.size, est.size)


def _set_xyz(msg, v) -> None:
    """In place: constructing rosidl messages costs more than the 3D math, so they are reused."""
    msg.x, msg.y, msg.z = float(v[0]), float(v[1]), float(v[2])


def detections_msg(header, items: list[tuple[int, str, float, Estimate3D]], cache: dict | None = None):
    """vision_msgs/Detection3DArray (None without vision_msgs): id = track id, bbox centre = robust
    position, bbox size = percentile extent, one hypothesis (class = label, score = predicted IoU).
    ``cache`` (track id -> Detection3D) reuses the messages of earlier frames (publish copies them)."""
    if Detection3DArray is None:
        return None
    cache = {} if cache is None else cache
    out = Detection3DArray(header=header)
    for oid, label, score, est in items:
        d = cache.get(oid)
        if d is None:
            d = cache[oid] = Detection3D(id=str(oid), bbox=BoundingBox3D(), results=[ObjectHypothesisWithPose()])
            d.bbox.center.orientation.w = 1.0
            d.results[0].pose.pose.orientation.w = 1.0
        d.header = header
        _set_xyz(d.bbox.center.position, est.position)
        _set_xyz(d.bbox.size, est.size)
        h = d.results[0]
        h.hypothesis.class_id = label or "object"
        h.hypothesis.score = float(score)
        _set_xyz(h.pose.pose.position, est.position)
        out.detections.append(d)
    return out


def _rgba(track_id: int, alpha: float):
    b, g, r = track_color(track_id)  # the overlay's BGR colour
    return ColorRGBA(r=r / 255.0, g=g / 255.0, b=b / 255.0, a=float(alpha))


@dataclass
class MarkerBook:
    """Which tracks have markers in RViz, so ended ones get a DELETE."""

    shown: set[int] = field(default_factory=set)
    _cache: dict = field(default_factory=dict)  # track id -> (box, text) Marker, reused frame to frame

    def _pair(self, oid: int) -> tuple[Marker, Marker]:
        pair = self._cache.get(oid)
        if pair is None:
            box = Marker(ns=MARKER_NS_BOX, id=int(oid), type=Marker.CUBE, action=Marker.ADD)
            box.pose.orientation.w = 1.0
            box.color = _rgba(oid, 0.45)
            text = Marker(ns=MARKER_NS_LABEL, id=int(oid), type=Marker.TEXT_VIEW_FACING, action=Marker.ADD)
            text.pose.orientation.w = 1.0
            text.scale.z = 0.08
            text.color = _rgba(oid, 1.0)
            pair = self._cache[oid] = (box, text)
        return pair

    def markers(self, header, items: list[tuple[int, str, Estimate3D]], keep: set[int] | None = None) -> MarkerArray:
        """A box and a text per item; DELETE for tracks shown before and neither in ``items``
        nor in ``keep`` (tracks that still exist but have no new 3D on this frame)."""
        out = MarkerArray()
        now = set()
        for oid, label, est in items:
            now.add(oid)
            box, text = self._pair(oid)
            box.header = text.header = header
            _set_xyz(box.pose.position, est.box_center)
            _set_xyz(box.scale, np.maximum(est.size, MIN_MARKER_SIZE))
            p = est.position
            _set_xyz(text.pose.position, (p[0], est.box_min[1] - 0.05, p[2]))
            text.text = f"{oid} {label}".strip() + f" {float(np.linalg.norm(p)):.2f} m"
            out.markers += [box, text]
        for oid in sorted(self.shown - now - (keep or set())):
            self._cache.pop(oid, None)
            for ns in (MARKER_NS_BOX, MARKER_NS_LABEL):
                out.markers.append(Marker(header=header, ns=ns, id=int(oid), action=Marker.DELETE))
        self.shown = now | (self.shown & (keep or set()))
        return out

    def delete_all(self, header) -> MarkerArray:
        self.shown = set()
        self._cache.clear()
        return MarkerArray(markers=[Marker(header=header, action=Marker.DELETEALL)])


def cloud_msg(header, items: list[tuple[int, np.ndarray]]) -> PointCloud2:
    """PointCloud2 of x, y, z (float32, m) and track_id (uint32) for each (track id, N x 3 points)."""
    dt = np.dtype([("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("track_id", "<u4")])
    n = sum(len(p) for _, p in items)
    arr = np.empty(n, dtype=dt)
    i = 0
    for oid, pts in items:
        k = len(pts)
        arr["x"][i : i + k], arr["y"][i : i + k], arr["z"][i : i + k] = pts[:, 0], pts[:, 1], pts[:, 2]
        arr["track_id"][i : i + k] = oid
        i += k
    fields = [PointField(name=name, offset=off, datatype=dtype, count=1) for name, off, dtype in
              (("x", 0, PointField.FLOAT32), ("y", 4, PointField.FLOAT32), ("z", 8, PointField.FLOAT32),
               ("track_id", 12, PointField.UINT32))]
    return PointCloud2(header=header, height=1, width=n, fields=fields, is_bigendian=False, point_step=16,
                       row_step=16 * n, data=arr.tobytes(), is_dense=True)


def quaternion_matrix(x: float, y: float, z: float, w: float) -> np.ndarray:
    n = math.sqrt(x * x + y * y + z * z + w * w) or 1.0
    x, y, z, w = x / n, y / n, z / n, w / n
    return np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
                     [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
                     [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]])


@dataclass
class Frame3D:
    """What one processed colour frame gives: estimates per track and the messages to publish."""

    estimates: dict[int, Estimate3D] = field(default_factory=dict)
    detections: Any = None
    markers: MarkerArray | None = None
    cloud: PointCloud2 | None = None


class Depth3DStage:
    """Pairing, camera model and estimation for the node (no publishers, no subscriptions)."""

    def __init__(self, cfg: Depth3DConfig, report: Callable[[str, str], None], tf_buffer=None) -> None:
        cfg.validate()
        self.cfg = cfg
        self.report = report
        self.buffer = DepthBuffer(keep_s=cfg.buffer_s, max_rate=cfg.max_depth_rate)
        self.book = MarkerBook()
        self._detections: dict = {}  # reused Detection3D messages
        self.tf_buffer = tf_buffer
        self._camera: CameraModel | None = None  # as received (camera_info resolution)
        self._scaled: dict[tuple[int, int], CameraModel] = {}
        self.paired = 0

    # inputs (executor threads) ---------------------------------------------------------
    def on_depth(self, msg) -> None:
        before = self.buffer.flooded
        if not self.buffer.put(stamp_sec(msg.header.stamp), msg):
            self.report("depth_flood", f"depth arrives faster than depth3d.max_depth_rate="
                                       f"{self.cfg.max_depth_rate:g}/s: extra depth images dropped "
                                       f"({self.buffer.flooded - before} now)")

    def on_camera_info(self, msg) -> None:
        try:
            cam = camera_from_info(msg, self.cfg)
        except DepthError as exc:
            self.report(exc.cause, f"camera_info refused (the last good one stays in use): {exc}")
            return
        old = self._camera
        if old is not None and (old.width, old.height) != (cam.width, cam.height):
            self.report("camera_info_size_changed", f"camera_info size changed from {old.width}x{old.height} to "
                                                    f"{cam.width}x{cam.height}: using the new one")
        if cam.uncorrected:
            self.report("camera_info_distortion", f"distortion model {cam.distortion_model!r} with non-zero D is "
                                                  "not corrected (plumb_bob, rational_polynomial, equidistant are)")
        if old is None or not (np.array_equal(old.K, cam.K) and np.array_equal(old.D, cam.D)
                               and (old.width, old.height) == (cam.width, cam.height)
                               and old.corrected == cam.corrected):
            self._camera = cam
            self._scaled = {}

    def set_config(self, cfg: Depth3DConfig) -> None:
        cfg.validate()
        rebuild = (cfg.camera_matrix, cfg.undistort) != (self.cfg.camera_matrix, self.cfg.undistort)
        self.cfg = cfg
        self.buffer.max_rate = cfg.max_depth_rate
        if rebuild:
            self._camera, self._scaled = None, {}  # the next camera_info builds it again

    def reset(self) -> None:
        self.buffer.clear()

    # per frame (worker thread) ---------------------------------------------------------
    def _camera_for(self, h: int, w: int) -> CameraModel:
        cam = self._camera
        if cam is None:
            raise DepthError("no_camera_info", "no valid camera_info received yet: no 3D")
        key = (w, h)
        if key not in self._scaled:
            self._scaled[key] = cam.scaled(w, h)
        return self._scaled[key]

    def _depth_for(self, stamp: float) -> tuple[np.ndarray, float]:
        msg, dt = self.buffer.nearest(stamp, self.cfg.tolerance)
        if msg is None and self._partner_on_its_way(stamp):
            deadline = time.monotonic() + self.cfg.wait_s
            while msg is None and time.monotonic() < deadline:
                time.sleep(0.002)
                msg, dt = self.buffer.nearest(stamp, self.cfg.tolerance)
        if msg is None:
            if dt is None:
                raise DepthError("no_depth", "no depth image received yet: no 3D")
            raise DepthError("no_depth_partner", f"nearest depth image is {dt:.3f} s from the colour frame "
                                                 f"(> depth3d.tolerance {self.cfg.tolerance:g} s): no 3D")
        depth, scale = depth_from_msg(msg)
        if valid_fraction(depth, self.cfg.min_range, self.cfg.max_range, depth_scale=scale) == 0.0:
            raise DepthError("depth_all_invalid", f"depth image ({msg.encoding}) has no valid value in "
                                                  f"[{self.cfg.min_range:g}, {self.cfg.max_range:g}] m: no 3D")
        return depth, scale

    def _partner_on_its_way(self, stamp: float) -> bool:
        """Depth is streaming (an image in the last second) but none as new as this frame yet."""
        newest = self.buffer.newest_stamp()
        return (self.cfg.wait_s > 0 and newest is not None and newest < stamp - self.cfg.tolerance
                and time.monotonic() - self.buffer.last_arrival < 1.0)

    def _transform(self, header):
        """(header, R, t) for depth3d.target_frame, or None to stay in the camera frame."""
        target = self.cfg.target_frame
        if not target or target == header.frame_id:
            return None
        if self.tf_buffer is None:
            raise DepthError("no_tf2", f"depth3d.target_frame={target!r} needs tf2_ros, which is not installed")
        from rclpy.time import Time

        tr = self.tf_buffer.lookup_transform(target, header.frame_id, Time.from_msg(header.stamp))
        q, p = tr.transform.rotation, tr.transform.translation
        from std_msgs.msg import Header

        return Header(stamp=header.stamp, frame_id=target), quaternion_matrix(q.x, q.y, q.z, q.w), \
            np.array([p.x, p.y, p.z])

    def process(self, header, result) -> Frame3D:
        """Estimates for every track of a FrameResult and the 3D messages (DepthError: no 3D)."""
        objects = result.objects
        out = Frame3D()
        if not objects:
            return out  # messages() still DELETEs markers of tracks that ended
        first = next(iter(objects.values()))
        h, w = first.mask.shape
        cam = self._camera_for(h, w)
        depth, scale = self._depth_for(stamp_sec(header.stamp))
        self.paired += 1
        cfg = self.cfg
        keep = cfg.points_per_track if cfg.publish_points else 0
        for oid, r in objects.items():
            if r.area == 0:
                continue
            out.estimates[oid] = estimate_track(r.mask, depth, cam, cfg, box=r.box_xyxy, keep_points=keep,
                                                depth_scale=scale)
        return out

    def messages(self, header, result, frame: Frame3D) -> Frame3D:
        """Fill ``frame``'s messages (in depth3d.target_frame when set) from its estimates."""
        objects = result.objects
        try:
            tf = self._transform(header)
        except DepthError:
            raise
        except Exception as exc:  # tf2 lookup errors: no 3D messages this frame
            raise DepthError("tf_lookup", f"no transform {header.frame_id} -> {self.cfg.target_frame}: {exc}")
        out_header = header
        ests = frame.estimates
        if tf is not None:
            out_header, R, t = tf
            ests = {k: transform_estimate(e, R, t) for k, e in ests.items()}
        shown = [(oid, ests[oid]) for oid in sorted(ests) if ests[oid].quality == QUALITY_OK]
        for oid in set(self._detections) - set(objects):
            del self._detections[oid]
        frame.detections = detections_msg(
            out_header, [(oid, objects[oid].label, objects[oid].iou, e) for oid, e in shown], self._detections)
        frame.markers = self.book.markers(out_header, [(oid, objects[oid].label, e) for oid, e in shown], keep=set())
        if self.cfg.publish_points:
            frame.cloud = cloud_msg(out_header, [(oid, e.points) for oid, e in shown if e.points is not None])
        return frame

    def markers_without_depth(self, header, result) -> MarkerArray | None:
        """On a frame with no 3D: DELETE the markers of tracks that ended, keep the others."""
        gone = self.book.shown - set(result.objects)
        if not gone:
            return None
        return self.book.markers(header, [], keep=self.book.shown & set(result.objects))


__all__ = ["Depth3DStage", "Frame3D", "MarkerBook", "camera_from_info", "cloud_msg", "depth_from_msg",
           "detections_msg", "fill_track", "QUALITY_OK", "QUALITY_NONE", "QUALITY_FEW_POINTS"]
