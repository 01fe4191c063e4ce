"""``tracker_node``: a managed (lifecycle) ROS 2 node around ``TrackingSession``.

configure: loads the model and builds the tracker, publishers and services.
activate:  subscribes to images, prompts and rqt_image_view clicks, starts the worker.
deactivate / cleanup: release them again. With ``autostart`` (default) the node
configures and activates itself, so a lifecycle manager is optional.

Topics (relative names, remap or namespace them per camera):
  in:  image (sensor_msgs/Image, or image/compressed), prompts (PromptArray: boxes, points
       or masks),
       <image>_mouse_left and overlay_mouse_left (geometry_msgs/Point clicks)
       detections (vision_msgs/Detection2DArray from a detector; see docs/detections.md)
  out: tracks (TrackArray), masks (mono16 label image, pixel = track id; overlaps go to the
       highest logit, as SAM 2 writes DAVIS results),
       overlay (bgr8), tracked_detections (vision_msgs/Detection2DArray), /diagnostics
  3D (depth3d.enabled): in depth (16UC1 mm / 32FC1 m, aligned to the colour image) and
       camera_info; out tracks_3d (vision_msgs/Detection3DArray), markers (MarkerArray),
       points (PointCloud2, depth3d.publish_points) and the 3D fields of tracks (docs/3d.md)
Services: ~/add_prompts (AddPrompts), ~/remove_object (RemoveObject), ~/reset (std_srvs/Trigger)
"""
from __future__ import annotations

import threading
from typing import Any

import rclpy
import rclpy.executors
import torch
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from geometry_msgs.msg import Point
from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor, SetParametersResult
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from sensor_msgs.msg import CompressedImage, Image, RegionOfInterest
from std_srvs.srv import Trigger

from ..tracking.tracker import FrameResult
from tinysam2_ros_msgs.msg import PromptArray, Track, TrackArray
from tinysam2_ros_msgs.srv import AddPrompts, RemoveObject
from .detections import VISION_MSGS, VISION_MSGS_ERROR, Detection2DArray, DetectionInput, tracked_detections_msg
from .image_codec import (
    ImageDecodeError,
    bgr_to_image_msg,
    compressed_msg_to_rgb,
    image_msg_to_mask,
    image_msg_to_rgb,
    mono_to_image_msg,
)
from .device_check import device_problem
from .limits import PromptLimits, compressed_refusal, image_size_refusal
from .params import PARAMS, SPECS, association_config, memory_overrides, routing_overrides, validate
from .render import crop_mask, draw_overlay, label_image
from .session import PromptRequest, SessionBusy, TrackingSession

RELIABLE = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
STATE_CODES = {"tracked": Track.STATE_TRACKED, "occluded": Track.STATE_OCCLUDED, "lost": Track.STATE_LOST}


def stamp_to_sec(stamp) -> float:
    return stamp.sec + stamp.nanosec * 1e-9


def prompt_from_msg(p, default_stamp=None) -> PromptRequest:
    """Prompt message -> PromptRequest (a zero stamp means "the newest frame").

    Never raises for a bad mask image: the request then carries the reason in ``error``
    and ``TrackingSession.add_prompts`` refuses that prompt alone (the others of the same
    message are applied).
    """
    stamp = stamp_to_sec(p.header.stamp) if (p.header.stamp.sec or p.header.stamp.nanosec) else default_stamp
    points = [[pt.x, pt.y] for pt in p.points] or None
    mask, error = None, ""
    if p.mask.width and p.mask.height:
        try:
            mask = image_msg_to_mask(p.mask)
        except ImageDecodeError as exc:
            error = f"bad mask image ({p.mask.width}x{p.mask.height}, {p.mask.encoding!r}): {exc}"
    return PromptRequest(
        obj_id=int(p.obj_id), label=p.label, action=int(p.action),
        box=[float(v) for v in p.box_xyxy] if p.has_box else None,
        points=points, labels=[int(v) for v in p.point_labels] if points else None, mask=mask, stamp=stamp,
        error=error,
    )


class TrackerNode(LifecycleNode):
    def __init__(self, node_name: str = "tracker_node", **kwargs: Any) -> None:
        super().__init__(node_name, **kwargs)
        for spec in PARAMS:
            self.declare_parameter(spec.name, spec.default, self._descriptor(spec))
        self.add_on_set_parameters_callback(self._on_set_parameters)
        self.session: TrackingSession | None = None
        self._sub_handles: list = []
        self._pub_handles: dict[str, Any] = {}
        self._srv_handles: list = []
        self._worker: threading.Thread | None = None
        self._running = threading.Event()
        self._diag_timer = None
        self._reported: set[str] = set()
        self._configured = False
        self.detections: DetectionInput | None = None
        self._det_reported: set[str] = set()
        self._depth3d = None  # outputs3d.Depth3DStage while configured with depth3d.enabled
        if self.get_parameter("autostart").value:
            if self.trigger_configure() == TransitionCallbackReturn.SUCCESS:
                self.trigger_activate()

    # ------------------------------------------------------------------ parameters
    @staticmethod
    def _descriptor(spec) -> ParameterDescriptor:
        d = ParameterDescriptor(description=spec.description + ("" if spec.live else " (on configure)"))
        if spec.choices:
            d.additional_constraints = "one of: " + ", ".join(repr(c) for c in spec.choices)
        if spec.range is not None:
            if isinstance(spec.default, float):
                d.floating_point_range = [FloatingPointRange(from_value=float(spec.range[0]), to_value=float(spec.range[1]))]
            elif isinstance(spec.default, int) and not isinstance(spec.default, bool):
                d.integer_range = [IntegerRange(from_value=int(spec.range[0]), to_value=int(spec.range[1]), step=1)]
        return d

    def _param_values(self) -> dict[str, Any]:
        return {name: self.get_parameter(name).value for name in SPECS}

    def _on_set_parameters(self, params) -> SetParametersResult:
        for p in params:
            reason = validate(p.name, p.value, self._configured)
            if reason:
                return SetParametersResult(successful=False, reason=reason)
        if self.session is not None:
            values = {**self._param_values(), **{p.name: p.value for p in params}}
            try:
                self._apply_live(values)
            except ValueError as exc:
                return SetParametersResult(successful=False, reason=str(exc))
        return SetParametersResult(successful=True)

    def _apply_live(self, values: dict[str, Any]) -> None:
        """Push live-changeable values into the running tracker (validated as a whole).

        The memory is rebuilt from the preset and every set parameter, not from the
        tracker's current memory, so a parameter set back to '' / -1 restores the preset."""
        from ..tracking.tracker import TrackerConfig

        tr = self.session.tracker
        config = TrackerConfig.from_preset(self._preset, memory_overrides(values), routing_overrides(values))
        mem = config.memory
        if mem.compression != tr.memory.compression or mem.pool_factor != tr.memory.pool_factor:
            raise ValueError("memory.compression and memory.pool_factor change on configure only")
        tr.config.memory = mem
        if config.routing != tr.config.routing:
            tr.config.routing = config.routing
        tr.config.lost_after = int(values["lost_after"])
        tr.config.stamp_tolerance = float(values["stamp_tolerance"])
        self._apply_live_detections(values)
        self._apply_live_3d(values)

    # ------------------------------------------------------------------ lifecycle
    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        from ..backends import attach_backend
        from ..checkpoint import CheckpointError, load_checkpoint
        from ..modeling.build import build_model
        from ..modeling.presets import get_preset
        from ..tracking.tracker import Tracker, TrackerConfig

        v = self._param_values()
        problem = device_problem(v["device"])
        if problem:
            self.get_logger().error(f"configure failed: {problem}")
            return TransitionCallbackReturn.FAILURE
        try:
            preset = get_preset(v["preset"])
            with torch.random.fork_rng(devices=[]):  # seeded, without touching the process's RNG:
                torch.manual_seed(0)  # random weights (no checkpoint) are the same on every start,
                model = build_model(preset)  # so their cached export is reused, not written again
            model = model.to(v["device"])
            if v["checkpoint"]:
                load_checkpoint(model, v["checkpoint"], preset=v["preset"])
            else:
                self.get_logger().warning("no checkpoint set: running with random weights (masks are meaningless)")
            config = TrackerConfig.from_preset(
                preset, memory_overrides(v), routing_overrides(v), feature_window=v["feature_window"], lost_after=v["lost_after"],
                stamp_tolerance=v["stamp_tolerance"],
            )
            logger = self.get_logger()
            attach_backend(model, v["backend"], v["preset"], v["engine_dir"] or None, device=v["device"],
                           memory=config.memory.to_dict(), precision=v["precision"],
                           log=lambda msg: (logger.warning if msg.startswith("warning") else logger.info)(msg))
            tracker = Tracker(model, config, device=v["device"])
        except (KeyError, ValueError, CheckpointError, RuntimeError) as exc:  # BackendError is a RuntimeError
            self.get_logger().error(f"configure failed: {exc}")
            return TransitionCallbackReturn.FAILURE
        except Exception as exc:  # anything else too: the lifecycle would swallow it without a word
            self.get_logger().error(f"configure failed: {type(exc).__name__}: {exc}")
            return TransitionCallbackReturn.FAILURE
        self._preset = preset  # live memory changes start again from it
        self.session = TrackingSession(tracker, max_objects=v["max_objects"], **self._limit_settings(v))
        self._pub_handles = {
            "tracks": self.create_lifecycle_publisher(TrackArray, "tracks", RELIABLE),
            "masks": self.create_lifecycle_publisher(Image, "masks", RELIABLE),
            "overlay": self.create_lifecycle_publisher(Image, "overlay", RELIABLE),
            "diagnostics": self.create_publisher(DiagnosticArray, "/diagnostics", RELIABLE),
        }
        srv = self._service_options(v)
        self._srv_handles = [
            self.create_service(AddPrompts, "~/add_prompts", self._on_add_prompts, **srv),
            self.create_service(RemoveObject, "~/remove_object", self._on_remove, **srv),
            self.create_service(Trigger, "~/reset", self._on_reset, **srv),
        ]
        self._diag_timer = self.create_timer(v["diagnostics_period"], self._publish_diagnostics,
                                             callback_group=MutuallyExclusiveCallbackGroup())
        if not (self._configure_detections(v) and self._configure_3d(v)):
            self._release()
            return TransitionCallbackReturn.FAILURE
        self._configured = True
        self.get_logger().info(
            f"configured: preset {v['preset']}, backend {model.backend.name} ({v['backend']}, {v['precision']}) on "
            f"{v['device']}, memory {config.memory.compression}"
        )
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        v = self._param_values()
        image_qos = qos_profile_sensor_data if v["image_qos"] == "sensor_data" else RELIABLE
        if v["image_transport"] == "compressed":  # remapping applies to exact names: resolve the base name first
            compressed = self.resolve_topic_name("image") + "/compressed"
            self._sub_handles.append(self.create_subscription(CompressedImage, compressed, self._on_image, image_qos))
        else:
            self._sub_handles.append(self.create_subscription(Image, "image", self._on_image, image_qos))
        self._sub_handles.append(self.create_subscription(
            PromptArray, "prompts", self._on_prompts,
            QoSProfile(depth=v["prompt_queue_depth"], reliability=ReliabilityPolicy.RELIABLE)))
        self._activate_detections()
        image_topic = self.resolve_topic_name("image")
        for click_topic in (image_topic + "_mouse_left", self.resolve_topic_name("overlay") + "_mouse_left"):
            self._sub_handles.append(self.create_subscription(Point, click_topic, self._on_click, RELIABLE))
        self._activate_3d(image_qos)
        self._running.set()
        self._worker = threading.Thread(target=self._work, name="tinysam2_worker", daemon=True)
        self._worker.start()
        self.get_logger().info(f"active: listening on {image_topic} ({v['image_transport']}, {v['image_qos']} QoS)")
        return super().on_activate(state)

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop_worker()
        for sub in self._sub_handles:
            self.destroy_subscription(sub)
        self._sub_handles = []
        return super().on_deactivate(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._release()
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop_worker()
        self._release()
        return TransitionCallbackReturn.SUCCESS

    def _stop_worker(self) -> None:
        self._running.clear()
        if self.session is not None:
            self.session.frames.clear()
        if self._worker is not None:
            self._worker.join(timeout=30.0)
            self._worker = None

    def _release(self) -> None:
        for sub in self._sub_handles:
            self.destroy_subscription(sub)
        self._sub_handles = []
        for name, pub in self._pub_handles.items():
            if name == "diagnostics":
                self.destroy_publisher(pub)
            else:
                self.destroy_lifecycle_publisher(pub)
        self._pub_handles = {}
        for srv in self._srv_handles:
            self.destroy_service(srv)
        self._srv_handles = []
        if self._diag_timer is not None:
            self.destroy_timer(self._diag_timer)
            self._diag_timer = None
        self.session = None
        self.detections = None
        self._depth3d = None
        self._configured = False

    # ------------------------------------------------------------------ inputs
    def _report_once(self, cause: str, message: str) -> None:
        if self.session is not None:
            self.session.stats.errors[cause.split(":")[0]] += 1
        if cause not in self._reported:
            self._reported.add(cause)
            self.get_logger().error(f"{message} (reported once per cause; further ones are counted in /diagnostics)")

    def _on_image(self, msg) -> None:
        if self.session is not None and not self._image_refused(msg):
            stamp = stamp_to_sec(msg.header.stamp) if (msg.header.stamp.sec or msg.header.stamp.nanosec) else None
            self.session.submit(msg, stamp)

    def _on_prompts(self, msg: PromptArray) -> None:
        """Only converts and queues (the worker applies them), so a flood cannot stall the executor."""
        session = self.session
        if session is None:
            return
        default = stamp_to_sec(msg.header.stamp) if (msg.header.stamp.sec or msg.header.stamp.nanosec) else None
        dropped = session.queue_prompts([prompt_from_msg(p, default) for p in msg.prompts])
        if dropped:
            self._log_once("prompts_dropped", f"prompts dropped: more than prompt_queue_depth="
                           f"{session.inbox.depth} wait for the tracker (counted as prompts_dropped in /diagnostics)")

    # ------------------------------------------------------------------ limits (docs/robustness.md)
    @staticmethod
    def _limit_settings(v: dict[str, Any]) -> dict[str, Any]:
        limits = PromptLimits(max_label_length=v["max_label_length"], max_points=v["max_points_per_prompt"])
        return {"limits": limits, "prompt_queue_depth": v["prompt_queue_depth"]}

    @staticmethod
    def _service_options(v: dict[str, Any]) -> dict[str, Any]:
        """Services in their own group (a waiting call never blocks images or prompts) with a
        request queue deep enough for bursts of concurrent calls."""
        qos = QoSProfile(depth=v["service_queue_depth"], reliability=ReliabilityPolicy.RELIABLE)
        return {"qos_profile": qos, "callback_group": MutuallyExclusiveCallbackGroup()}

    def _log_once(self, cause: str, message: str) -> None:
        """Log the first refusal of each cause (the session counts them all for /diagnostics)."""
        if cause not in self._reported:
            self._reported.add(cause)
            self.get_logger().error(f"{message} (reported once per cause; further ones are counted in /diagnostics)")

    def _image_refused(self, msg) -> bool:
        """Refuse an image above max_image_pixels (a compressed one from its header, before decoding)."""
        max_pixels = self.get_parameter("max_image_pixels").value
        if isinstance(msg, CompressedImage):
            refusal = compressed_refusal(bytes(msg.data), max_pixels)
        else:
            refusal = image_size_refusal(int(msg.width), int(msg.height), max_pixels)
        if refusal is not None:
            self._report_once(refusal.cause, f"image skipped: {refusal.reason}")
        return refusal is not None

    def _apply_queued_prompts(self, session: TrackingSession) -> None:
        """Worker side of the prompts topic: apply what waits, log refusals (limits once per cause)."""
        try:
            outcomes = session.apply_queued(now=self._now())
        except Exception as exc:  # never let a prompt end the worker
            self._report_once(f"prompt_failed:{type(exc).__name__}", f"prompts failed: {exc!r}")
            return
        queued = [o.obj_id for o in outcomes if not o.error]
        for o in outcomes:
            if o.cause:
                self._log_once(o.cause, f"prompt refused: {o.error}")
            elif o.error:
                self.get_logger().warning(f"prompt refused: {o.error}", throttle_duration_sec=1.0)
        if queued:
            self.get_logger().info(f"prompt(s) queued for track(s) {queued}", throttle_duration_sec=1.0)

    def _now(self) -> float:
        return self.get_clock().now().nanoseconds * 1e-9

    def _on_click(self, msg: Point) -> None:
        if self.session is None:
            return
        req = PromptRequest(points=[[msg.x, msg.y]], labels=[1], label="click")
        for o in self.session.add_prompts([req], apply_now=False):
            if o.error:
                self.get_logger().warning(f"click refused: {o.error}")
            else:
                self.get_logger().info(f"click at ({msg.x:.0f}, {msg.y:.0f}) starts track {o.obj_id}")

    # ------------------------------------------------------------------ services
    def _on_add_prompts(self, request, response):
        """Always answers: refusals and 'busy' in ``message``, an unexpected error too."""
        session = self.session
        if session is None:
            response.success, response.message = False, "node is not configured"
            return response
        try:
            outcomes = session.add_prompts([prompt_from_msg(p) for p in request.prompts], apply_now=True,
                                           now=self._now(), timeout=self.get_parameter("service_busy_timeout").value)
        except SessionBusy as exc:
            response.success, response.message = False, str(exc)
            return response
        except Exception as exc:
            self._report_once(f"service_failed:{type(exc).__name__}", f"add_prompts failed: {exc!r}")
            response.success, response.message = False, f"internal error: {exc!r}"
            return response
        for o in outcomes:
            if o.cause:
                self._log_once(o.cause, f"prompt refused: {o.error}")
        self._fill_add_response(session, outcomes, response)
        return response

    def _fill_add_response(self, session, outcomes, response):
        response.obj_ids = [o.obj_id for o in outcomes]
        response.found = [o.found for o in outcomes]
        errors = [f"prompt {i}: {o.error}" for i, o in enumerate(outcomes) if o.error]
        response.success = bool(outcomes) and not errors
        response.message = "; ".join(errors) if errors else ("no prompts given" if not outcomes else "ok")
        if session.tracker.frame_idx < 0 and response.success:
            response.message = "queued: applied to the first image"

    def _on_remove(self, request, response):
        if self.session is None:
            response.success, response.message = False, "node is not configured"
            return response
        try:
            self.session.remove(int(request.obj_id), timeout=self.get_parameter("service_busy_timeout").value)
            response.success, response.message = True, f"removed track {request.obj_id}"
        except Exception as exc:  # TrackerError: unknown id; SessionBusy
            response.success, response.message = False, str(exc)
        return response

    def _on_reset(self, request, response):
        if self.session is None:
            response.success, response.message = False, "node is not configured"
            return response
        try:
            self.session.reset(timeout=self.get_parameter("service_busy_timeout").value)
        except SessionBusy as exc:
            response.success, response.message = False, str(exc)
            return response
        self._reset_3d()
        response.success, response.message = True, "all tracks removed"
        return response

    # ------------------------------------------------------------------ worker
    def _work(self) -> None:
        while self._running.is_set():
            session = self.session
            if session is None:
                return
            self._apply_queued_prompts(session)
            msg = session.frames.take(timeout=0.1)
            if msg is None:
                continue
            self._apply_queued_prompts(session)
            try:
                rgb = compressed_msg_to_rgb(msg) if isinstance(msg, CompressedImage) else image_msg_to_rgb(msg)
            except ImageDecodeError as exc:
                self._report_once(exc.cause, f"image skipped: {exc}")
                continue
            stamp = stamp_to_sec(msg.header.stamp) if (msg.header.stamp.sec or msg.header.stamp.nanosec) else None
            try:
                result = session.step(rgb, stamp)
                self._publish(msg.header, rgb, result)
            except Exception as exc:  # keep the node alive; the cause goes to the log and /diagnostics
                self._report_once(f"step_failed:{type(exc).__name__}", f"frame failed: {exc!r}")

    def _publish(self, header, rgb, result: FrameResult) -> None:
        if self.detections is not None:  # before anything goes out: a client may answer with boxes at once
            self.detections.record(result)
        frame3d = self._compute_3d(header, result)
        out = TrackArray(header=header)
        for oid, r in sorted(result.objects.items()):
            t = Track(id=oid, label=r.label, state=STATE_CODES[r.state], predicted_iou=float(r.iou),
                      object_score=float(r.object_score), area=r.area, age=r.age,
                      frames_since_seen=r.frames_since_seen, memory_tokens=r.memory_tokens)
            crop, x0, y0 = crop_mask(r.mask, r.box_xyxy)
            if r.box_xyxy is not None:
                x1, y1, x2, y2 = r.box_xyxy
                t.box = RegionOfInterest(x_offset=x1, y_offset=y1, width=x2 - x1, height=y2 - y1)
            t.mask = mono_to_image_msg(crop, header)
            if self._depth3d is not None:
                self._fill_track_3d(t, frame3d)
            out.tracks.append(t)
        self._pub_handles["tracks"].publish(out)
        self._publish_3d(header, result, frame3d)
        if self.get_parameter("publish_masks").value:
            logits = {oid: r.low_res_logits for oid, r in result.objects.items() if r.area}  # empty: wins nothing
            self._pub_handles["masks"].publish(mono_to_image_msg(label_image(logits, rgb.shape[:2]), header))
        overlay = self._pub_handles["overlay"]
        if self.get_parameter("publish_overlay").value and overlay.get_subscription_count() > 0:
            tracks = [(oid, r.label, r.state, r.mask, r.box_xyxy) for oid, r in sorted(result.objects.items())]
            overlay.publish(bgr_to_image_msg(draw_overlay(rgb, tracks), header, encoding="bgr8"))  # already BGR
        self._publish_detections(header, result)

    # ------------------------------------------------------------------ 3D (issue 22, docs/3d.md)
    def _configure_3d(self, v: dict[str, Any]) -> bool:
        """With depth3d.enabled: the 3D stage and its publishers (nothing at all otherwise)."""
        if not v["depth3d.enabled"]:
            return True
        from visualization_msgs.msg import MarkerArray

        from .outputs3d import HAVE_TF2, Depth3DStage, Detection3DArray
        from .params import depth3d_config

        try:
            cfg = depth3d_config(v)
        except ValueError as exc:
            self.get_logger().error(f"configure failed: {exc}")
            return False
        tf_buffer = None
        if HAVE_TF2:
            import tf2_ros

            tf_buffer = tf2_ros.Buffer()
            self._tf_listener = tf2_ros.TransformListener(tf_buffer, self)
        elif cfg.target_frame:
            self.get_logger().warning(f"depth3d.target_frame={cfg.target_frame!r} needs tf2_ros (not installed): "
                                      "3D outputs need it and are not published")
        self._depth3d = Depth3DStage(cfg, self._report_once, tf_buffer)
        if Detection3DArray is not None:
            self._pub_handles["tracks_3d"] = self.create_lifecycle_publisher(Detection3DArray, "tracks_3d", RELIABLE)
        else:
            self.get_logger().warning("vision_msgs not installed: no tracks_3d (the 3D fields of tracks remain)")
        self._pub_handles["markers"] = self.create_lifecycle_publisher(MarkerArray, "markers", RELIABLE)
        from sensor_msgs.msg import PointCloud2

        self._pub_handles["points"] = self.create_lifecycle_publisher(PointCloud2, "points", RELIABLE)
        return True

    def _activate_3d(self, qos) -> None:
        if self._depth3d is None:
            return
        from sensor_msgs.msg import CameraInfo

        stage = self._depth3d
        self._sub_handles.append(self.create_subscription(Image, "depth", stage.on_depth, qos))
        self._sub_handles.append(self.create_subscription(CameraInfo, "camera_info", stage.on_camera_info, qos))
        self.get_logger().info(f"3D on: depth from {self.resolve_topic_name('depth')}, camera model from "
                               f"{self.resolve_topic_name('camera_info')}")

    def _apply_live_3d(self, values: dict[str, Any]) -> None:
        if self._depth3d is not None:
            from .params import depth3d_config

            self._depth3d.set_config(depth3d_config(values))

    def _reset_3d(self) -> None:
        if self._depth3d is not None and "markers" in self._pub_handles:
            from std_msgs.msg import Header

            self._depth3d.reset()
            self._pub_handles["markers"].publish(self._depth3d.book.delete_all(Header()))

    def _compute_3d(self, header, result: FrameResult):
        """Per-track estimates and 3D messages of this frame; None when off or refused (logged, counted)."""
        if self._depth3d is None:
            return None
        from ..geometry.depth3d import DepthError

        try:
            frame = self._depth3d.process(header, result)
        except DepthError as exc:
            self._report_once(exc.cause, f"no 3D for this frame: {exc}")
            return None
        try:
            self._depth3d.messages(header, result, frame)
        except DepthError as exc:  # e.g. no transform to depth3d.target_frame: the Track fields still get 3D
            self._report_once(exc.cause, f"no tracks_3d / markers for this frame: {exc}")
        return frame

    def _fill_track_3d(self, track, frame3d) -> None:
        from .outputs3d import fill_track

        fill_track(track, None if frame3d is None else frame3d.estimates.get(track.id))

    def _publish_3d(self, header, result: FrameResult, frame3d) -> None:
        if self._depth3d is None:
            return
        pubs = self._pub_handles
        if frame3d is None:
            markers = self._depth3d.markers_without_depth(header, result)
            if markers is not None:
                pubs["markers"].publish(markers)
            return
        if frame3d.detections is not None and "tracks_3d" in pubs:
            pubs["tracks_3d"].publish(frame3d.detections)
        if frame3d.markers is not None:
            pubs["markers"].publish(frame3d.markers)
        if frame3d.cloud is not None:
            pubs["points"].publish(frame3d.cloud)

    def _publish_diagnostics(self) -> None:
        if self.session is None:
            return
        values = self.session.diagnostics()
        running = self.session.tracker.model.backend.name
        values["backend"] = f"{running} ({self.get_parameter('backend').value}, {self.get_parameter('device').value})"
        values["lifecycle"] = "active" if self._running.is_set() else "inactive"
        values.update(self.detections.diagnostics() if self.detections is not None else
                      {"detections_input": "off (vision_msgs not importable)"})
        if self._depth3d is not None:
            values["depth3d_frames_with_depth"] = str(self._depth3d.paired)
        status = DiagnosticStatus(
            level=DiagnosticStatus.OK, name=f"{self.get_name()}: tracker", hardware_id=self.get_fully_qualified_name(),
            message="ok" if not any(k.startswith("errors_") for k in values) else "input errors (see values)",
        )
        if any(k.startswith("errors_") for k in values):
            status.level = DiagnosticStatus.WARN
        status.values = [KeyValue(key=k, value=str(v)) for k, v in values.items()]
        msg = DiagnosticArray(status=[status])
        msg.header.stamp = self.get_clock().now().to_msg()
        self._pub_handles["diagnostics"].publish(msg)

    # ------------------------------------------------------------------ detector input (issue 21)
    def _configure_detections(self, v: dict[str, Any]) -> bool:
        """The association and the tracked_detections publisher (nothing without vision_msgs)."""
        if not VISION_MSGS:
            self.get_logger().warning(
                f"vision_msgs is not importable ({VISION_MSGS_ERROR}): the 'detections' input and the "
                "'tracked_detections' output are OFF (install ros-$ROS_DISTRO-vision-msgs to use a detector)")
            return True
        try:
            self.detections = DetectionInput(self.session, association_config(v))
        except ValueError as exc:
            self.get_logger().error(f"configure failed: {exc}")
            return False
        self._pub_handles["tracked_detections"] = self.create_lifecycle_publisher(
            Detection2DArray, "tracked_detections", RELIABLE)
        return True

    def _activate_detections(self) -> None:
        if self.detections is not None:
            self._sub_handles.append(self.create_subscription(
                Detection2DArray, "detections", self._on_detections, RELIABLE))
            self.get_logger().info(f"detector input on {self.resolve_topic_name('detections')}")

    def _apply_live_detections(self, values: dict[str, Any]) -> None:
        if self.detections is not None:
            config = association_config(values)
            config.validate()
            self.detections.assoc.config = config

    def _on_detections(self, msg) -> None:
        if self.detections is None:
            return
        out = self.detections.handle(msg)
        for cause, reason in out.refused:
            if cause not in self._det_reported:
                self._det_reported.add(cause)
                self.get_logger().warning(f"{reason} (reported once per cause; all are counted in /diagnostics as "
                                          f"detections_ignored_{cause})")
        for oid in out.created:
            self.get_logger().info(f"detection starts track {oid}")
        for oid in out.dropped:
            self.get_logger().info(f"track {oid} dropped: no detection confirmed it for "
                                   f"detections.drop_after={self.detections.assoc.config.drop_after} arrays")

    def _publish_detections(self, header, result: FrameResult) -> None:
        if self.detections is not None:
            self._pub_handles["tracked_detections"].publish(tracked_detections_msg(header, result))


class _StartupInterrupted(BaseException):
    """A signal arrived while the node was still starting (configure can take ~30 s)."""


def main(args: list[str] | None = None) -> int:
    """Run the node until SIGINT/SIGTERM (``ros2 run tinysam2_ros tracker_node``).

    rclpy's own handler would invalidate the context while the worker still publishes;
    instead a signal ends the spin, the node goes through its lifecycle shutdown (worker
    joined, publishers released), and only then is the context shut down. The handlers
    are installed before the node is built: a signal during start-up (the first
    onnxruntime export takes about 30 s) ends it with a log line, not a traceback.
    """
    import signal

    from rclpy.signals import SignalHandlerOptions

    node: TrackerNode | None = None
    stop = threading.Event()
    received: list[str] = []  # signals so far

    def on_signal(signum, _frame) -> None:
        name = signal.Signals(signum).name
        received.append(name)
        first = not stop.is_set()
        stop.set()
        if node is None:
            if first:  # a second one (Ctrl-C twice) must not interrupt the unwinding
                raise _StartupInterrupted(name)
            return
        node.get_logger().info(f"{name}: shutting down")

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, on_signal)
    rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.NO)
    try:
        node = TrackerNode()
    except _StartupInterrupted as exc:
        rclpy.logging.get_logger("tracker_node").info(f"{exc}: interrupted during start-up, exiting")
        rclpy.try_shutdown()
        return 0
    if stop.is_set():  # the start-up exception was swallowed on its way (a __del__, a callback)
        node.get_logger().info(f"{received[0]}: interrupted during start-up, exiting")
    executor = rclpy.executors.MultiThreadedExecutor(num_threads=4)  # topics, services, diagnostics
    executor.add_node(node)
    try:
        while not stop.is_set() and rclpy.ok():
            executor.spin_once(timeout_sec=0.1)
    finally:
        if node.session is not None or node._worker is not None:
            node.trigger_shutdown()
        executor.shutdown(timeout_sec=2.0)
        node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
