"""vision_msgs in and out: detector boxes become track prompts, tracks become detections.

``DetectionInput`` takes one ``vision_msgs/Detection2DArray`` at a time: finds the frame
it was made on (by stamp; a late detector's boxes go to their own frame), refuses bad
boxes one cause at a time, asks ``Associator`` what to do, and applies the answer to the
``TrackingSession`` (ADD / REFINE prompts, removals). ``tracked_detections_msg`` turns a
frame's tracks into a ``Detection2DArray`` for any vision_msgs consumer.
vision_msgs is optional: ``VISION_MSGS`` is False when it cannot be imported.
"""
from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field

from ..tracking.association import (
    AssociationConfig,
    Associator,
    Detection,
    TrackBox,
    check_detection,
    clip_box,
)
from ..tracking.tracker import FrameResult, TrackerError
from .session import ACTION_ADD, ACTION_REFINE, PromptRequest, TrackingSession

try:
    from vision_msgs.msg import Detection2D, Detection2DArray, ObjectHypothesisWithPose

    VISION_MSGS, VISION_MSGS_ERROR = True, ""
except ImportError as exc:  # the node runs without the detector input then
    Detection2D = Detection2DArray = ObjectHypothesisWithPose = None
    VISION_MSGS, VISION_MSGS_ERROR = False, str(exc)


def _sec(stamp) -> float | None:
    return stamp.sec + stamp.nanosec * 1e-9 if (stamp.sec or stamp.nanosec) else None


def detection_from_msg(d) -> Detection:
    """One ``vision_msgs/Detection2D`` (center + size in pixels) -> ``Detection`` (xyxy).
    The best-scoring hypothesis gives class and score; none: class '' and score 1."""
    cx, cy = float(d.bbox.center.position.x), float(d.bbox.center.position.y)
    sx, sy = float(d.bbox.size_x), float(d.bbox.size_y)
    label, score = "", 1.0
    if d.results:
        best = max(d.results, key=lambda r: r.hypothesis.score if math.isfinite(r.hypothesis.score) else -1.0)
        label, score = str(best.hypothesis.class_id), float(best.hypothesis.score)
    return Detection((cx - sx / 2, cy - sy / 2, cx + sx / 2, cy + sy / 2), label, score, str(d.id))


def tracked_detections_msg(header, result: FrameResult) -> "Detection2DArray":
    """Tracks with a non-empty mask as detections: id = track id, bbox = the mask's box,
    class_id = the label, score = the model's object presence probability."""
    out = Detection2DArray(header=header)
    for oid, r in sorted(result.objects.items()):
        if r.box_xyxy is None:
            continue
        x1, y1, x2, y2 = r.box_xyxy
        d = Detection2D(header=header, id=str(oid))
        d.bbox.center.position.x, d.bbox.center.position.y = (x1 + x2) / 2.0, (y1 + y2) / 2.0
        d.bbox.size_x, d.bbox.size_y = float(x2 - x1), float(y2 - y1)
        h = ObjectHypothesisWithPose()
        h.hypothesis.class_id = r.label
        h.hypothesis.score = 1.0 / (1.0 + math.exp(-max(min(r.object_score, 50.0), -50.0)))
        d.results.append(h)
        out.detections.append(d)
    return out


@dataclass
class Outcome:
    """What one array did: refusals as (cause, reason), applied actions counted."""

    refused: list[tuple[str, str]] = field(default_factory=list)
    created: list[int] = field(default_factory=list)
    refined: list[int] = field(default_factory=list)
    dropped: list[int] = field(default_factory=list)


class DetectionInput:
    """Detector arrays -> session prompts, with counts for /diagnostics."""

    def __init__(self, session: TrackingSession, config: AssociationConfig) -> None:
        self.session = session
        self.assoc = Associator(config, history=session.tracker.config.feature_window + 2)
        self.ignored: Counter = Counter()
        self.arrays = 0  # arrays associated
        self.handled = 0  # arrays received, refused ones included
        self._done: list[int] = []  # frames that already had an array (flood guard)
        self._last_frame = -1

    # ------------------------------------------------------------------ tracker side
    def record(self, result: FrameResult) -> None:
        """The tracker's boxes after a step (call it from the worker after ``session.step``)."""
        with self.session.lock:
            if result.frame_idx <= self._last_frame:  # the session was reset: old frames mean nothing
                self.assoc.frames.clear()
                self._done.clear()
            self._last_frame = result.frame_idx
            self.assoc.record(result.frame_idx, {oid: TrackBox(r.box_xyxy, r.state, r.label)
                                                 for oid, r in result.objects.items()})

    # ------------------------------------------------------------------ detector side
    def _frame(self, stamp: float | None) -> tuple[int, float | None, tuple[int, int]]:
        """(frame index, its stamp, its image size) of a detection array, or TrackerError."""
        tr = self.session.tracker
        frames = tr._frames  # the feature window: index -> frame (stamp, size)
        if not frames:
            raise TrackerError("no image processed yet: detections need an image to refer to")
        newest = next(reversed(frames.values()))
        if stamp is None:
            return newest.idx, newest.stamp, newest.hw
        if newest.stamp is not None and stamp > newest.stamp + self.assoc.config.max_ahead:
            raise TrackerError(f"stamp {stamp:.3f} is {stamp - newest.stamp:.2f} s ahead of the newest image "
                               f"(detections.max_ahead={self.assoc.config.max_ahead})")
        if newest.stamp is not None and stamp > newest.stamp + tr.config.stamp_tolerance:
            return tr.frame_idx + 1, None, newest.hw  # made on an image the tracker has not processed yet
        stamped = [f for f in frames.values() if f.stamp is not None]
        oldest = stamped[0].stamp if stamped else None
        if oldest is None or stamp < oldest - tr.config.stamp_tolerance:
            raise TrackerError(f"stamp {stamp:.3f} is older than the feature window (images from "
                               f"{oldest if oldest is None else round(oldest, 3)}; feature_window="
                               f"{tr.config.feature_window})")
        best = min(stamped, key=lambda f: abs(f.stamp - stamp))  # images the tracker skipped snap to the nearest
        return best.idx, best.stamp, best.hw

    def handle(self, msg) -> Outcome:
        """Associate one ``Detection2DArray`` and apply the actions."""
        try:
            return self._handle(msg)
        finally:
            self.handled += 1

    def _handle(self, msg) -> Outcome:
        out = Outcome()
        stamp = _sec(msg.header.stamp)
        if stamp is None and msg.detections:
            stamp = _sec(msg.detections[0].header.stamp)
        with self.session.lock:
            try:
                frame, frame_stamp, hw = self._frame(stamp)
            except TrackerError as exc:
                cause = "no_image" if "no image" in str(exc) else ("future_stamp" if "ahead" in str(exc) else
                                                                   "stale_stamp")
                return self._refuse(out, cause, f"detection array refused: {exc}")
            if frame in self._done:
                return self._refuse(out, "flood", f"detection array for frame {frame} ignored: that frame already "
                                    "had one (more arrays than images; the first one per image is used)")
            self._done = (self._done + [frame])[-64:]
            self.arrays += 1
            if not msg.detections:
                self._refuse(out, "empty_array", "empty detection array (no boxes: nothing to associate; "
                             "counted as a miss for every track)")
            dets = []
            for k, d in enumerate(msg.detections):
                det = detection_from_msg(d)
                bad = check_detection(det, hw, self.assoc.config.class_set)
                if bad:
                    self._refuse(out, bad[0], f"detection {k} refused: {bad[1]}")
                    continue
                det.box = clip_box(det.box, hw)
                dets.append(det)
            tr = self.session.tracker
            live = {oid: (tr.objects[oid].label if oid in tr.objects else
                          next((p[3] for p in tr._pending if p[0] == oid), "")) for oid in tr.object_ids}
            actions = self.assoc.associate(frame, dets, live)
            p_stamp = frame_stamp if frame <= tr.frame_idx else None
            for a in actions:
                self._apply(a, frame, p_stamp, out)
        return out

    def _apply(self, a, frame: int, stamp: float | None, out: Outcome) -> None:
        if a.kind == "drop":
            try:
                self.session.remove(a.track_id)
                out.dropped.append(a.track_id)
            except TrackerError:
                pass
            self.assoc.forget(a.track_id)
            return
        req = PromptRequest(obj_id=a.track_id, label=a.label, box=list(a.box), stamp=stamp,
                            action=ACTION_ADD if a.kind == "create" else ACTION_REFINE)
        (res,) = self.session.add_prompts([req], apply_now=False)
        if res.error:
            self.session.stats.errors["bad_prompt"] -= 1  # counted here under its own cause instead
            cause = "max_objects" if "max_objects" in res.error else "prompt_refused"
            self._refuse(out, cause, f"detection box not applied ({a.kind}): {res.error}")
        elif a.kind == "create":
            self.assoc.created(res.obj_id, a.box, frame, a.det_id)
            out.created.append(res.obj_id)
        else:
            out.refined.append(a.track_id)

    def _refuse(self, out: Outcome, cause: str, reason: str) -> Outcome:
        self.ignored[cause] += 1
        out.refused.append((cause, reason))
        return out

    def diagnostics(self) -> dict[str, str]:
        c = self.assoc.counts
        values = {"detections_arrays": str(self.arrays)}
        for key in ("matched", "refined", "reacquired", "drift_refined", "created", "dropped", "candidates",
                    "low_score", "weak_unmatched"):
            values[f"detections_{key}"] = str(c[key])
        values.update({f"detections_ignored_{k}": str(v) for k, v in sorted(self.ignored.items())})
        return values
