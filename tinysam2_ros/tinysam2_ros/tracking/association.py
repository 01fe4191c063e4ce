"""Detector boxes -> track actions: which detection is which track, and what to do about it.

A detector publishes boxes every frame; the tracker wants one prompt per new object and
an occasional correction, not a new track per box. ``Associator`` matches each array of
detections to the live tracks by IoU (optimal assignment, ``scipy.optimize.
linear_sum_assignment``) and answers with actions for ``TrackingSession``: ``create``
(an unmatched box, after ``min_hits`` consecutive arrays), ``refine`` (a matched track
that drifted or is occluded/lost: re-acquisition keeps the id) and ``drop`` (a track no
detection confirmed for ``drop_after`` arrays; off by default). Plain Python: no ROS.

A track's reference boxes on the detection's frame are its mask box there and its last
detection box, as it was and moved on at the velocity of its last detections (at most
``MAX_PREDICT`` frames; the better of the two counts, since objects also stop): these keeps a just-created (still pending) track, an occluded
one and a track whose mask is poor from being created again. A mask box that disagrees with
the track's own predicted detection (IoU below ``match_iou``) has drifted and is not used
for matching, so a drifted mask cannot take another object's detection.
"""
from __future__ import annotations

import math
from collections import Counter, OrderedDict
from dataclasses import dataclass, field, fields

import numpy as np
from scipy.optimize import linear_sum_assignment

Box = tuple[float, float, float, float]  # x1, y1, x2, y2 in image pixels
MAX_PREDICT = 15  # frames a track's detection box is extrapolated at most
HIDDEN_AFTER = 2  # arrays without a confirming box after which a track counts as hidden from the detector


def _f(default, help: str, range=None, live: bool = True):
    return field(default=default, metadata={"help": help, "range": range, "choices": None, "live": live})


@dataclass
class AssociationConfig:
    """Thresholds of the association (node parameters ``detections.<name>``)."""

    match_iou: float = _f(0.2, "least IoU of a detection with a track's box (mask box on the detection's frame, or "
                          "its last detection box, as it was or moved on at its velocity) for the two to be the same object",
                          (0.01, 1.0))
    refine_iou: float = _f(0.5, "a matched track whose mask box overlaps the detection less than this has drifted: "
                           "the box is given to it as a REFINE prompt (0 = never refine for drift)", (0.0, 1.0))
    refine_lost: bool = _f(True, "REFINE an occluded or lost track with the box that matched it (re-acquisition, "
                           "same id)")
    refine_gap: int = _f(2, "fewest frames between two REFINEs of one track (each re-decodes the frames since the "
                         "box's frame)", (0, 1000))
    min_score: float = _f(0.3, "detections scoring less are ignored (counted, not an error)", (0.0, 1.0))
    create_score: float = _f(0.5, "least score of an unmatched detection to start a new track", (0.0, 1.0))
    min_hits: int = _f(1, "consecutive detection arrays an unmatched object must appear in before it becomes a "
                       "track (1 = at once)", (1, 100))
    drop_after: int = _f(0, "drop a track after this many consecutive detection arrays that do not confirm it "
                         "(0 = never; applies to every track, prompted ones too)", (0, 100000))
    reacquire_distance: float = _f(1.0, "a box no IoU matched may still re-acquire a hidden track (occluded, lost, "
                                   "or unconfirmed in the last 2 arrays) of its class whose (predicted) box "
                                   "centre is within this many box diagonals (0 = IoU only)", (0.0, 10.0))
    class_aware: bool = _f(True, "a detection matches only tracks of its class (tracks without a label match any)")
    use_detector_ids: bool = _f(True, "a detection carrying the detector's own id goes to the track that id "
                                "matched before, whatever the IoU (class permitting)")
    classes: str = _f("", "comma-separated class ids accepted; others are refused as unknown ('' = all)")
    max_ahead: float = _f(1.0, "seconds a detection's stamp may be ahead of the newest image; later ones are "
                          "refused", (0.0, 60.0))

    def validate(self) -> None:
        for f in fields(self):
            lo_hi = f.metadata.get("range")
            v = getattr(self, f.name)
            if lo_hi is not None and not (lo_hi[0] <= v <= lo_hi[1]):
                raise ValueError(f"detections.{f.name} must be in [{lo_hi[0]}, {lo_hi[1]}], got {v}")

    @property
    def class_set(self) -> set[str]:
        return {c.strip() for c in self.classes.split(",") if c.strip()}


@dataclass
class Detection:
    box: Box
    label: str = ""
    score: float = 1.0
    det_id: str = ""  # the detector's own tracking id, '' when not set


@dataclass
class TrackBox:
    """What the tracker showed for a track on one frame."""

    box: Box | None  # the mask's box; None when the mask is empty
    state: str = "tracked"  # tracked | occluded | lost
    label: str = ""


@dataclass
class Action:
    kind: str  # "create" | "refine" | "drop"
    box: Box | None = None
    label: str = ""
    track_id: int = 0  # 0 for create
    det_id: str = ""  # the detector's id of the box


@dataclass
class _Candidate:
    box: Box
    label: str
    hits: int = 1


@dataclass
class _Memory:
    box: Box | None = None  # last detection box matched to (or creating) the track
    frame: int = -1
    misses: int = 0  # consecutive arrays that did not confirm it
    last_refine: int = -10**9
    velocity: np.ndarray | None = None  # box corners per frame

    def predict(self, frame: int) -> Box | None:
        if self.box is None:
            return None
        if self.velocity is None:
            return self.box
        dt = float(np.clip(frame - self.frame, -MAX_PREDICT, MAX_PREDICT))
        return tuple(float(v) for v in np.add(self.box, self.velocity * dt))

    def update(self, box: Box, frame: int) -> None:
        """A detection confirmed the track on ``frame`` (older news than what it has is ignored)."""
        if self.box is not None and frame > self.frame:
            v = (np.asarray(box) - np.asarray(self.box)) / (frame - self.frame)
            self.velocity = v if self.velocity is None else 0.5 * (self.velocity + v)
        if self.box is None or frame >= self.frame:
            self.box, self.frame = box, frame
        self.misses = 0


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box in ``a`` (N x 4 xyxy) with every box in ``b`` (M x 4); N x M."""
    a = np.asarray(a, float).reshape(-1, 4)
    b = np.asarray(b, float).reshape(-1, 4)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(-1)
    area_a = np.clip(a[:, 2:] - a[:, :2], 0, None).prod(-1)
    area_b = np.clip(b[:, 2:] - b[:, :2], 0, None).prod(-1)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def check_detection(det: Detection, hw: tuple[int, int], classes: set[str]) -> tuple[str, str] | None:
    """(cause, reason) when a detection must be refused, else None. Clipping is left to ``clip_box``."""
    x1, y1, x2, y2 = det.box
    if not all(math.isfinite(v) for v in (x1, y1, x2, y2, det.score)):
        return "non_finite", f"non-finite box or score {det.box}, {det.score}"
    if x2 <= x1 or y2 <= y1:
        return "bad_size", f"box of size {x2 - x1:g} x {y2 - y1:g} (sizes must be > 0)"
    h, w = hw
    if x2 <= 0 or y2 <= 0 or x1 >= w or y1 >= h:
        return "outside_image", f"box {tuple(round(v, 1) for v in det.box)} lies outside the {w}x{h} image"
    if classes and det.label not in classes:
        return "unknown_class", f"class id {det.label!r} is not in detections.classes {sorted(classes)}"
    return None


def clip_box(box: Box, hw: tuple[int, int]) -> Box:
    h, w = hw
    x1, y1, x2, y2 = box
    return max(x1, 0.0), max(y1, 0.0), min(x2, float(w)), min(y2, float(h))


class Associator:
    """Turns arrays of detections into create / refine / drop actions (see the module doc)."""

    def __init__(self, config: AssociationConfig | None = None, history: int = 16) -> None:
        self.config = config or AssociationConfig()
        self.config.validate()
        self.history = history
        self.frames: OrderedDict[int, dict[int, TrackBox]] = OrderedDict()  # frame -> track -> box
        self.tracks: dict[int, _Memory] = {}
        self.det_ids: dict[str, int] = {}  # detector id -> track id
        self.candidates: list[_Candidate] = []
        self.counts: Counter = Counter()
        self.assignments: Counter = Counter()  # (detector id, track id) -> times: which box went where

    # ------------------------------------------------------------------ tracker side
    def record(self, frame: int, boxes: dict[int, TrackBox]) -> None:
        """The tracker's boxes on ``frame`` (called after every step)."""
        self.frames[frame] = boxes
        while len(self.frames) > self.history:
            self.frames.popitem(last=False)

    def created(self, track_id: int, box: Box, frame: int, det_id: str = "") -> None:
        """A create action was applied as ``track_id``."""
        self.tracks[track_id] = _Memory(box=box, frame=frame, last_refine=frame)
        self.assignments[(det_id, track_id)] += 1
        if det_id:
            self.det_ids[det_id] = track_id

    def forget(self, track_id: int) -> None:
        self.tracks.pop(track_id, None)
        self.det_ids = {k: v for k, v in self.det_ids.items() if v != track_id}

    def reset(self) -> None:
        self.frames.clear()
        self.tracks.clear()
        self.det_ids.clear()
        self.candidates.clear()

    def boxes_on(self, frame: int) -> dict[int, TrackBox]:
        """The recorded boxes of ``frame``, or of the newest recorded frame before it."""
        older = [f for f in self.frames if f <= frame]
        return self.frames[max(older)] if older else {}

    # ------------------------------------------------------------------ association
    def associate(self, frame: int, detections: list[Detection], live: dict[int, str]) -> list[Action]:
        """Actions for the detections made on ``frame``. ``live``: track id -> label of every
        track the tracker has now (pending ones included). Detections must be checked
        (``check_detection``) and clipped already."""
        c = self.config
        for tid in [t for t in self.tracks if t not in live]:
            self.forget(tid)
        for tid in live:
            self.tracks.setdefault(tid, _Memory())
        dets = [d for d in detections if d.score >= c.min_score]
        self.counts["low_score"] += len(detections) - len(dets)
        shown = self.boxes_on(frame)
        ids = sorted(live)
        cost = np.full((len(dets), len(ids)), np.inf)
        mask_iou = np.zeros((len(dets), len(ids)))
        if dets and ids:
            dboxes = np.array([d.box for d in dets])
            mask_boxes = [shown.get(t).box if shown.get(t) else None for t in ids]
            for j, tid in enumerate(ids):
                predicted = self.tracks[tid].predict(frame)
                mb = mask_boxes[j]
                if mb is not None:
                    mask_iou[:, j] = iou_matrix(dboxes, np.array([mb]))[:, 0]
                    if predicted is not None and iou_matrix([mb], [predicted])[0, 0] < c.match_iou:
                        mb = None  # the mask drifted away from the track's own detections
                refs = [b for b in (mb, predicted, self.tracks[tid].box) if b is not None]
                if not refs:
                    continue
                best = iou_matrix(dboxes, np.array(refs)).max(axis=1)
                for i, d in enumerate(dets):
                    if c.class_aware and d.label and live[tid] and d.label != live[tid]:
                        continue
                    if c.use_detector_ids and d.det_id and self.det_ids.get(d.det_id) == tid:
                        cost[i, j] = -1.0  # the detector says it is this track
                    elif best[i] >= c.match_iou:
                        cost[i, j] = -best[i]
        matched: dict[int, int] = {}
        if dets and ids and np.isfinite(cost).any():
            finite = np.where(np.isfinite(cost), cost, 1e6)
            for i, j in zip(*linear_sum_assignment(finite)):
                if np.isfinite(cost[i, j]):
                    matched[int(i)] = ids[j]
        again = self._reacquire(frame, dets, matched, ids, live, shown)
        matched.update(again)
        actions: list[Action] = []
        for i, tid in matched.items():
            d, mem = dets[i], self.tracks[tid]
            self.counts["matched"] += 1
            mem.update(d.box, frame)
            self.assignments[(d.det_id, tid)] += 1
            if d.det_id:
                self.det_ids[d.det_id] = tid
            tb = shown.get(tid)
            j = ids.index(tid)
            # no box recorded for it on this frame (a track still pending): nothing to judge
            lost = i in again or (tb is not None and (tb.box is None or tb.state != "tracked"))
            drifted = tb is not None and not lost and mask_iou[i, j] < c.refine_iou
            if ((lost and c.refine_lost) or drifted) and frame - mem.last_refine >= c.refine_gap:
                mem.last_refine = frame
                self.counts["refined"] += 1
                self.counts["reacquired" if lost else "drift_refined"] += 1
                actions.append(Action("refine", d.box, d.label, tid, d.det_id))
        unmatched = [i for i in range(len(dets)) if i not in matched]
        actions += self._candidates(frame, dets, unmatched)
        confirmed = set(matched.values())
        for tid in ids:
            mem = self.tracks[tid]
            if tid in confirmed:
                continue
            mem.misses += 1
            if c.drop_after > 0 and mem.misses >= c.drop_after:
                self.counts["dropped"] += 1
                actions.append(Action("drop", track_id=tid))
        return actions

    def _reacquire(self, frame, dets, matched, ids, live, shown) -> dict[int, int]:
        """Second stage: boxes no IoU matched, to hidden tracks by the distance of their centres
        in box diagonals (the larger of the two boxes); an object that moved while occluded
        comes back with its id instead of as a new track. Hidden: no mask on this frame
        (occluded, lost), or no box confirmed it in the last ``HIDDEN_AFTER`` arrays (the
        detector lost it, whatever the mask shows)."""
        c = self.config
        hidden = [t for t in ids if t not in matched.values() and self.tracks[t].box is not None and (
            self.tracks[t].misses >= HIDDEN_AFTER
            or (shown.get(t) is not None and (shown[t].box is None or shown[t].state != "tracked")))]
        free = [i for i in range(len(dets)) if i not in matched]
        if c.reacquire_distance <= 0 or not hidden or not free:
            return {}
        refs = np.array([self.tracks[t].predict(frame) for t in hidden])
        boxes = np.array([dets[i].box for i in free])
        centre = lambda b: (b[:, :2] + b[:, 2:]) / 2  # noqa: E731
        diag = lambda b: np.hypot(b[:, 2] - b[:, 0], b[:, 3] - b[:, 1])  # noqa: E731
        scale = np.maximum(diag(boxes)[:, None], diag(refs)[None])
        dist = np.linalg.norm(centre(boxes)[:, None] - centre(refs)[None], axis=-1) / np.maximum(scale, 1e-6)
        area = lambda b: (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])  # noqa: E731
        ratio = area(boxes)[:, None] / np.maximum(area(refs), 1e-6)[None]
        ok = (dist <= c.reacquire_distance) & (ratio > 0.25) & (ratio < 4.0)
        for a, i in enumerate(free):
            for b, t in enumerate(hidden):
                if c.class_aware and dets[i].label and live[t] and dets[i].label != live[t]:
                    ok[a, b] = False
        out = {}
        if ok.any():
            cost = np.where(ok, dist, 1e6)
            for a, b in zip(*linear_sum_assignment(cost)):
                if ok[a, b]:
                    out[free[a]] = hidden[b]
        return out

    def _candidates(self, frame: int, dets: list[Detection], unmatched: list[int]) -> list[Action]:
        """Unmatched detections become tracks after ``min_hits`` consecutive arrays."""
        c = self.config
        strong = [i for i in unmatched if dets[i].score >= c.create_score]
        self.counts["weak_unmatched"] += len(unmatched) - len(strong)
        hits = {i: 1 for i in strong}
        if self.candidates and strong:
            iou = iou_matrix(np.array([dets[i].box for i in strong]), np.array([k.box for k in self.candidates]))
            for a, b in zip(*linear_sum_assignment(-iou)):
                same_class = not c.class_aware or dets[strong[a]].label == self.candidates[b].label
                if iou[a, b] >= c.match_iou and same_class:
                    hits[strong[a]] = self.candidates[b].hits + 1
        actions, waiting = [], []
        for i in strong:
            d = dets[i]
            if hits[i] >= c.min_hits:
                self.counts["created"] += 1
                actions.append(Action("create", d.box, d.label, 0, d.det_id))
            else:
                waiting.append(_Candidate(d.box, d.label, hits[i]))
        self.candidates = waiting  # consecutive: a candidate missing from this array starts again
        self.counts["candidates"] = len(waiting)
        return actions
