"""Everything the ROS node does that is not ROS: frames, prompts, ids, statistics.

``TrackingSession`` owns the tracker behind a lock, a one-frame slot that keeps
only the newest image (older ones are dropped and counted, so no queue grows
without bound), the id assignment for new objects, and the rates and latencies
reported on /diagnostics. The node (``tracker_node.py``) only converts messages.
"""
from __future__ import annotations

import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..tracking.prompts import PromptError
from ..tracking.tracker import FrameResult, Tracker, TrackerError
from .limits import MAX_TRACK_ID, PromptLimits, Refusal, prompt_refusal

ACTION_ADD, ACTION_REFINE, ACTION_REPLACE = 0, 1, 2


@dataclass
class PromptRequest:
    """One prompt as the node received it (coordinates in image pixels)."""

    obj_id: int = 0  # 0 = new object
    label: str = ""
    action: int = ACTION_ADD
    box: list[float] | None = None
    points: list[list[float]] | None = None
    labels: list[int] | None = None
    mask: np.ndarray | None = None  # H x W, nonzero = object (cannot be combined with box/points)
    stamp: float | None = None  # the image the prompt refers to; None = newest
    error: str = ""  # set when the message could not be converted: the prompt is refused with it


@dataclass
class PromptOutcome:
    obj_id: int = 0  # 0 when refused
    found: bool = False
    error: str = ""
    cause: str = ""  # set when a limit refused it (limits.Refusal.cause): logged once per cause


class SessionBusy(RuntimeError):
    """The tracker stayed busy longer than the caller may wait."""


class PromptInbox:
    """Prompts from the topic, waiting for the worker: bounded, what does not fit is counted."""

    def __init__(self, depth: int) -> None:
        self.depth = depth
        self._items: deque[PromptRequest] = deque()
        self._lock = threading.Lock()
        self.dropped = 0

    def put(self, requests: list[PromptRequest]) -> int:
        """Queue ``requests``; returns how many were dropped because the inbox is full."""
        with self._lock:
            room = max(self.depth - len(self._items), 0)
            self._items.extend(requests[:room])
            dropped = max(len(requests) - room, 0)
            self.dropped += dropped
            return dropped

    def take_all(self) -> list[PromptRequest]:
        with self._lock:
            items, self._items = list(self._items), deque()
            return items


class LatestFrame:
    """A single-slot mailbox: ``put`` replaces an unprocessed item (counted as dropped)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._item: Any = None
        self.dropped = 0

    def put(self, item: Any) -> bool:
        with self._cond:
            replaced = self._item is not None
            if replaced:
                self.dropped += 1
            self._item = item
            self._cond.notify()
            return replaced

    def take(self, timeout: float | None = None) -> Any:
        with self._cond:
            if self._item is None:
                self._cond.wait(timeout)
            item, self._item = self._item, None
            return item

    def clear(self) -> None:
        with self._cond:
            self._item = None
            self._cond.notify_all()


class RateMeter:
    """Events per second over a sliding window of the last ``window_s`` seconds."""

    def __init__(self, window_s: float = 5.0) -> None:
        self.window_s = window_s
        self._times: deque[float] = deque(maxlen=10_000)
        self.count = 0

    def tick(self, now: float | None = None) -> None:
        self._times.append(time.monotonic() if now is None else now)
        self.count += 1

    def rate(self, now: float | None = None) -> float:
        now = time.monotonic() if now is None else now
        while self._times and self._times[0] < now - self.window_s:
            self._times.popleft()
        if len(self._times) < 2:
            return 0.0
        span = max(now - self._times[0], 1e-9)
        return len(self._times) / span


@dataclass
class SessionStats:
    received: RateMeter = field(default_factory=RateMeter)
    processed: RateMeter = field(default_factory=RateMeter)
    latencies_ms: deque = field(default_factory=lambda: deque(maxlen=100))
    stage_ms: dict[str, float] = field(default_factory=dict)
    errors: Counter = field(default_factory=Counter)
    prompts: Counter = field(default_factory=Counter)  # received, refused, dropped


class TrackingSession:
    """Thread-safe front of the tracker for the ROS node."""

    def __init__(self, tracker: Tracker, max_objects: int = 32, limits: PromptLimits | None = None,
                 prompt_queue_depth: int = 100) -> None:
        self.tracker = tracker
        self.max_objects = max_objects
        self.limits = limits or PromptLimits()
        self.lock = threading.RLock()
        self.frames = LatestFrame()
        self.inbox = PromptInbox(prompt_queue_depth)
        self.stats = SessionStats()
        self.newest_stamp: float | None = None  # of the images received (processed or not)
        self._next_id = 1

    # ------------------------------------------------------------------ frames
    def submit(self, item: Any, stamp: float | None = None) -> None:
        """Hand over the newest raw image (the worker decodes it)."""
        self.stats.received.tick()
        if stamp is not None and (self.newest_stamp is None or stamp > self.newest_stamp):
            self.newest_stamp = stamp
        self.frames.put(item)

    def step(self, rgb: np.ndarray, stamp: float | None) -> FrameResult:
        with self.lock:
            result = self.tracker.step(rgb, stamp)
        self.stats.processed.tick()
        self.stats.stage_ms = dict(result.stage_ms)
        if stamp is not None:
            self.stats.latencies_ms.append((time.time() - stamp) * 1e3)
        return result

    # ------------------------------------------------------------------ prompts
    def _new_id(self) -> int:
        """The next free id; after MAX_TRACK_ID it starts again at 1 (ids must fit the label image)."""
        taken = set(self.tracker.object_ids)
        while self._next_id in taken or self._next_id > MAX_TRACK_ID:
            self._next_id = 1 if self._next_id > MAX_TRACK_ID else self._next_id + 1
        oid = self._next_id
        self._next_id += 1
        return oid

    def queue_prompts(self, requests: list[PromptRequest]) -> int:
        """Leave topic prompts for the worker (cheap: the subscription never waits for the
        tracker); returns how many were dropped because ``prompt_queue_depth`` are waiting."""
        self.stats.prompts["received"] += len(requests)
        dropped = self.inbox.put(requests)
        self.stats.prompts["dropped"] += dropped
        return dropped

    def apply_queued(self, now: float | None = None) -> list[PromptOutcome]:
        """Queue the waiting topic prompts on the tracker (for the next frame or their stamp's)."""
        requests = self.inbox.take_all()
        return self._add(requests, apply_now=False, now=now) if requests else []

    def add_prompts(self, requests: list[PromptRequest], apply_now: bool, now: float | None = None,
                    timeout: float | None = None) -> list[PromptOutcome]:
        """Validate and queue prompts; with ``apply_now`` decode them on the newest frame at once.

        ``now``: the node clock, against which future stamps are refused. ``timeout``: seconds
        to wait for the tracker (it may be busy with a frame) before raising ``SessionBusy``.
        """
        self.stats.prompts["received"] += len(requests)
        return self._add(requests, apply_now, now, timeout)

    def _add(self, requests: list[PromptRequest], apply_now: bool, now: float | None = None,
             timeout: float | None = None) -> list[PromptOutcome]:
        outcomes: list[PromptOutcome] = []
        try:
            self._acquire(timeout)
        except SessionBusy:
            self.stats.prompts["refused"] += len(requests)
            raise
        try:
            tr = self.tracker
            for req in requests:
                out = PromptOutcome()
                next_id = self._next_id
                try:
                    if req.error:
                        raise PromptError(req.error)
                    refusal = prompt_refusal(req.obj_id, req.label, len(req.points or ()), req.stamp, self.limits,
                                             self.newest_stamp, now, tr.config.stamp_tolerance)
                    if refusal is not None:
                        raise _Refused(refusal)
                    oid = self._resolve_id(req)
                    if req.stamp is not None:
                        frame = tr.frame_for_stamp(req.stamp)
                    else:
                        frame = tr.frame_idx if apply_now and tr.frame_idx >= 0 else None
                    tr.add_prompt(oid, box=req.box, points=req.points, labels=req.labels, mask=req.mask, frame=frame,
                                  label=req.label, replace=req.action == ACTION_REPLACE)
                    out.obj_id = oid
                except _Refused as exc:
                    out.error, out.cause = exc.refusal.reason, exc.refusal.cause
                    self.stats.errors[exc.refusal.cause] += 1
                except (PromptError, TrackerError, ValueError) as exc:
                    self._next_id = next_id  # a refused prompt does not use up an id
                    out.error = str(exc)
                    self.stats.errors["bad_prompt"] += 1
                outcomes.append(out)
            self.stats.prompts["refused"] += sum(1 for o in outcomes if o.error)
            if apply_now and any(o.obj_id for o in outcomes):
                result = tr.flush()
                for o in outcomes:
                    if o.obj_id and result is not None and o.obj_id in result.objects:
                        o.found = result.objects[o.obj_id].area > 0
        finally:
            self.lock.release()
        return outcomes

    def _resolve_id(self, req: PromptRequest) -> int:
        existing = set(self.tracker.object_ids)
        if req.action not in (ACTION_ADD, ACTION_REFINE, ACTION_REPLACE):
            raise ValueError(f"unknown action {req.action} (0 add, 1 refine, 2 replace)")
        if req.action == ACTION_ADD:
            if req.obj_id == 0:
                if len(existing) >= self.max_objects:
                    raise ValueError(f"already tracking max_objects={self.max_objects} objects")
                return self._new_id()
            if req.obj_id in existing:
                raise ValueError(f"track {req.obj_id} exists: use action REFINE (1) or REPLACE (2)")
            if len(existing) >= self.max_objects:
                raise ValueError(f"already tracking max_objects={self.max_objects} objects")
            return req.obj_id
        if req.obj_id not in existing:
            raise ValueError(f"unknown track id {req.obj_id} (known: {sorted(existing)})")
        return req.obj_id

    def _acquire(self, timeout: float | None) -> None:
        """Take the lock, or raise ``SessionBusy`` after ``timeout`` seconds (None: wait)."""
        if not self.lock.acquire(timeout=-1 if timeout is None else timeout):
            self.stats.errors["busy"] += 1
            raise SessionBusy(f"busy: the tracker did not become free within {timeout} s; try again")

    def remove(self, obj_id: int, timeout: float | None = None) -> None:
        self._acquire(timeout)
        try:
            self.tracker.remove(obj_id)
        finally:
            self.lock.release()

    def reset(self, timeout: float | None = None) -> None:
        self._acquire(timeout)
        try:
            self.tracker.reset()
            self.frames.clear()
            self._next_id = 1
        finally:
            self.lock.release()

    # ------------------------------------------------------------------ diagnostics
    def diagnostics(self) -> dict[str, str]:
        s = self.stats
        lat = sorted(s.latencies_ms)
        with self.lock:
            objs = {oid: (o.memory_tokens, self.tracker.memory_bytes(o)) for oid, o in self.tracker.objects.items()}
        values = {
            "input_rate_hz": f"{s.received.rate():.2f}",
            "output_rate_hz": f"{s.processed.rate():.2f}",
            "frames_received": str(s.received.count),
            "frames_processed": str(s.processed.count),
            "frames_dropped": str(self.frames.dropped),
            **{f"prompts_{k}": str(s.prompts[k]) for k in ("received", "refused", "dropped")},
            "latency_ms_median": f"{lat[len(lat) // 2]:.1f}" if lat else "n/a",
            "latency_ms_max": f"{lat[-1]:.1f}" if lat else "n/a",
            "objects": str(len(objs)),
            "memory_tokens_per_object": ", ".join(f"{k}:{v[0]}" for k, v in sorted(objs.items())) or "none",
            "memory_bytes_per_object": ", ".join(f"{k}:{v[1]}" for k, v in sorted(objs.items())) or "none",
        }
        values.update({f"ms_{k}": f"{v:.1f}" for k, v in s.stage_ms.items()})
        values.update({f"errors_{k}": str(v) for k, v in sorted(s.errors.items())})
        return values


class _Refused(Exception):
    def __init__(self, refusal: Refusal) -> None:
        super().__init__(refusal.reason)
        self.refusal = refusal
