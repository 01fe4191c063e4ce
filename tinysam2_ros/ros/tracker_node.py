"""``tracker_node``: a managed (lifecycle) ROS 2 node around ``TrackingSession``.

configure: loads the model and builds the tracker, publishers and services.
activate:  subscribes to images, prompts and rqt_image_view clicks, starts the worker.
deactivate / cleanup: release them again. With ``autostart`` (default) the node
configures and activates itself, so a lifecycle manager is optional.

Topics (relative names, remap or namespace them per camera):
  in:  image (sensor_msgs/Image, or image/compressed), prompts (PromptArray: boxes, points
       or masks),
       <image>_mouse_left and overlay_mouse_left (geometry_msgs/Point clicks)
  out: tracks (TrackArray), masks (mono16 label image, pixel = track id),
       overlay (bgr8), /diagnostics
Services: ~/add_prompts (AddPrompts), ~/remove_object (RemoveObject), ~/reset (std_srvs/Trigger)
"""
from __future__ import annotations

import threading
from typing import Any

import rclpy
import rclpy.executors
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from geometry_msgs.msg import Point
from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor, SetParametersResult
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from sensor_msgs.msg import CompressedImage, Image, RegionOfInterest
from std_srvs.srv import Trigger

from ..tracking.tracker import FrameResult
from ..msg import PromptArray, Track, TrackArray
from ..srv import AddPrompts, RemoveObject
from .image_codec import (
    ImageDecodeError,
    compressed_msg_to_rgb,
    image_msg_to_mask,
    image_msg_to_rgb,
    mono_to_image_msg,
    rgb_to_image_msg,
)
from .params import PARAMS, SPECS, memory_overrides, validate
from .render import crop_mask, draw_overlay, label_image
from .session import PromptRequest, TrackingSession

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
        """Push live-changeable values into the running tracker (validated as a whole)."""
        from ..memory.config import MemoryConfig

        tr = self.session.tracker
        mem = MemoryConfig.from_dict({**tr.memory.to_dict(), **memory_overrides(values)})
        if mem.compression != tr.memory.compression or mem.pool_factor != tr.memory.pool_factor:
            raise ValueError("memory.compression and memory.pool_factor change on configure only")
        tr.config.memory = mem
        tr.config.lost_after = int(values["lost_after"])
        tr.config.stamp_tolerance = float(values["stamp_tolerance"])

    # ------------------------------------------------------------------ lifecycle
    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        from ..backends import attach_backend
        from ..checkpoint import CheckpointError, load_checkpoint
        from ..modeling.build import build_model
        from ..modeling.presets import get_preset
        from ..tracking.tracker import Tracker, TrackerConfig

        v = self._param_values()
        try:
            preset = get_preset(v["preset"])
            model = build_model(preset).to(v["device"])
            if v["checkpoint"]:
                load_checkpoint(model, v["checkpoint"], preset=v["preset"])
            else:
                self.get_logger().warning("no checkpoint set: running with random weights (masks are meaningless)")
            config = TrackerConfig.from_preset(
                preset, memory_overrides(v), feature_window=v["feature_window"], lost_after=v["lost_after"],
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
        self.session = TrackingSession(tracker, max_objects=v["max_objects"])
        self._pub_handles = {
            "tracks": self.create_lifecycle_publisher(TrackArray, "tracks", RELIABLE),
            "masks": self.create_lifecycle_publisher(Image, "masks", RELIABLE),
            "overlay": self.create_lifecycle_publisher(Image, "overlay", RELIABLE),
            "diagnostics": self.create_publisher(DiagnosticArray, "/diagnostics", RELIABLE),
        }
        self._srv_handles = [
            self.create_service(AddPrompts, "~/add_prompts", self._on_add_prompts),
            self.create_service(RemoveObject, "~/remove_object", self._on_remove),
            self.create_service(Trigger, "~/reset", self._on_reset),
        ]
        self._diag_timer = self.create_timer(v["diagnostics_period"], self._publish_diagnostics)
        self._configured = True
        self.get_logger().info(
            f"configured: preset {v['preset']}, backend {model.backend.name} ({v['backend']}, {v['precision']}) on "
            f"{v['device']}, memory {config.memory.compression}"
        )
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        v = self._param_values()
        image_qos = qos_profile_sensor_data if v["image_qos"] == "sensor_data" else RELIABLE
        if v["image_transport"] == "compressed":
            self._sub_handles.append(self.create_subscription(CompressedImage, "image/compressed", self._on_image, image_qos))
        else:
            self._sub_handles.append(self.create_subscription(Image, "image", self._on_image, image_qos))
        self._sub_handles.append(self.create_subscription(PromptArray, "prompts", self._on_prompts, RELIABLE))
        image_topic = self.resolve_topic_name("image")
        for click_topic in (image_topic + "_mouse_left", self.resolve_topic_name("overlay") + "_mouse_left"):
            self._sub_handles.append(self.create_subscription(Point, click_topic, self._on_click, RELIABLE))
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
        self._configured = False

    # ------------------------------------------------------------------ inputs
    def _report_once(self, cause: str, message: str) -> None:
        if self.session is not None:
            self.session.stats.errors[cause.split(":")[0]] += 1
        if cause not in self._reported:
            self._reported.add(cause)
            self.get_logger().error(f"{message} (reported once per cause; further ones are counted in /diagnostics)")

    def _on_image(self, msg) -> None:
        if self.session is not None:
            self.session.submit(msg)

    def _on_prompts(self, msg: PromptArray) -> None:
        if self.session is None:
            return
        default = stamp_to_sec(msg.header.stamp) if (msg.header.stamp.sec or msg.header.stamp.nanosec) else None
        outcomes = self.session.add_prompts([prompt_from_msg(p, default) for p in msg.prompts], apply_now=False)
        for o in outcomes:
            if o.error:
                self.get_logger().warning(f"prompt refused: {o.error}")
            else:
                self.get_logger().info(f"prompt queued for track {o.obj_id}")

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
        if self.session is None:
            response.success, response.message = False, "node is not configured"
            return response
        outcomes = self.session.add_prompts([prompt_from_msg(p) for p in request.prompts], apply_now=True)
        response.obj_ids = [o.obj_id for o in outcomes]
        response.found = [o.found for o in outcomes]
        errors = [f"prompt {i}: {o.error}" for i, o in enumerate(outcomes) if o.error]
        response.success = bool(outcomes) and not errors
        response.message = "; ".join(errors) if errors else ("no prompts given" if not outcomes else "ok")
        if self.session.tracker.frame_idx < 0 and response.success:
            response.message = "queued: applied to the first image"
        return response

    def _on_remove(self, request, response):
        if self.session is None:
            response.success, response.message = False, "node is not configured"
            return response
        try:
            self.session.remove(int(request.obj_id))
            response.success, response.message = True, f"removed track {request.obj_id}"
        except Exception as exc:  # TrackerError: unknown id
            response.success, response.message = False, str(exc)
        return response

    def _on_reset(self, request, response):
        if self.session is None:
            response.success, response.message = False, "node is not configured"
            return response
        self.session.reset()
        response.success, response.message = True, "all tracks removed"
        return response

    # ------------------------------------------------------------------ worker
    def _work(self) -> None:
        while self._running.is_set():
            session = self.session
            if session is None:
                return
            msg = session.frames.take(timeout=0.1)
            if msg is None:
                continue
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
            out.tracks.append(t)
        self._pub_handles["tracks"].publish(out)
        masks = {oid: r.mask for oid, r in result.objects.items()}
        if self.get_parameter("publish_masks").value:
            self._pub_handles["masks"].publish(mono_to_image_msg(label_image(masks, rgb.shape[:2]), header))
        overlay = self._pub_handles["overlay"]
        if self.get_parameter("publish_overlay").value and overlay.get_subscription_count() > 0:
            tracks = [(oid, r.label, r.state, r.mask, r.box_xyxy) for oid, r in sorted(result.objects.items())]
            overlay.publish(rgb_to_image_msg(draw_overlay(rgb, tracks), header, encoding="bgr8"))

    def _publish_diagnostics(self) -> None:
        if self.session is None:
            return
        values = self.session.diagnostics()
        running = self.session.tracker.model.backend.name if self.session is not None else "-"
        values["backend"] = f"{running} ({self.get_parameter('backend').value}, {self.get_parameter('device').value})"
        values["lifecycle"] = "active" if self._running.is_set() else "inactive"
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


def main(args: list[str] | None = None) -> int:
    """Run the node until Ctrl-C (``ros2 run tinysam2_ros tracker_node``)."""
    rclpy.init(args=args)
    node = TrackerNode()
    executor = rclpy.executors.MultiThreadedExecutor(num_threads=2)
    executor.add_node(node)
    try:
        executor.spin()
    except (KeyboardInterrupt, rclpy.executors.ExternalShutdownException):
        pass
    finally:
        node.on_shutdown(None)
        node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
