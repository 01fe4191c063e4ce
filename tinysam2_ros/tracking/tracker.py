"""Streaming multi-object tracker: frames in one at a time, prompts at any moment.

The image encoder runs once per frame; objects whose memory has the same layout
are decoded as one batch (memory attention, mask decoder, memory encoder). With
``compression="off"`` the memory is SAM 2's video predictor exactly (every
prompted frame, the last ``num_maskmem - 1`` frames, up to 16 object pointers,
memory features stored in bfloat16), which ``tinysam2 fidelity`` checks. With
``compression="tinysam2"`` frames enter memory by quality (``memory/quality.py``)
and tokens are pooled and selected (``memory/compression.py``).

Memory per object is bounded: prompted frames up to ``max_cond_frames``, memory
slots, a ring of object pointers, and per-frame snapshots only inside the feature
window kept for late prompts.
"""
from __future__ import annotations

import time
from collections import OrderedDict, defaultdict
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from ..memory.config import MemoryConfig
from ..memory.object_memory import MemoryEntry, ObjectMemory, ObjectTrack
from ..memory.quality import select_cond_frames
from ..memory.routing import RoutingConfig
from ..modeling.sam2_model import HeadOutput, ImageFeatures, SAM2Model
from .preprocess import preprocess_mask, preprocess_rgb, scale_points
from .prompts import Prompt, PromptError, make_prompt

STATES = ("tracked", "occluded", "lost")
STAGES = ("image_encoder", "memory_attention", "mask_decoder", "memory_encoder")


class TrackerError(RuntimeError):
    """A request the tracker cannot serve (unknown id, prompt too old, ...)."""


@dataclass
class TrackerConfig:
    memory: MemoryConfig = field(default_factory=MemoryConfig)
    routing: RoutingConfig = field(default_factory=RoutingConfig)
    video_length: int | None = None  # known length of an offline video (SAM 2 caps pointers by it)
    feature_window: int = 8  # recent frames whose encoder features are kept for late prompts
    lost_after: int = 30  # frames absent before an occluded object is reported lost
    stamp_tolerance: float = 0.05  # seconds: a prompt's stamp matches the nearest frame within this

    @classmethod
    def from_preset(cls, preset: dict, memory_overrides: dict | None = None, routing_overrides: dict | None = None,
                    **kwargs) -> "TrackerConfig":
        """The preset's memory and routing settings (``preset["memory"]``, ``preset["routing"]``)
        with overrides applied."""
        memory = {**preset.get("memory", {}), **(memory_overrides or {})}
        if memory.get("compression") == "off":
            memory = {"compression": "off", **{k: v for k, v in (memory_overrides or {}).items() if k != "compression"}}
        routing = {**preset.get("routing", {}), **(routing_overrides or {})}
        return cls(memory=MemoryConfig.from_dict(memory), routing=RoutingConfig.from_dict(routing), **kwargs)

    def __post_init__(self) -> None:
        if self.feature_window < 1:
            raise ValueError("feature_window must be >= 1")
        if self.lost_after < 1:
            raise ValueError("lost_after must be >= 1")


@dataclass
class ObjectResult:
    obj_id: int
    label: str
    state: str  # tracked | occluded | lost
    mask: np.ndarray  # H x W bool at the frame's resolution
    low_res_logits: torch.Tensor  # 1 x 4H x 4W
    iou: float
    object_score: float
    box_xyxy: tuple[int, int, int, int] | None
    area: int
    age: int  # frames since the object's first prompt
    frames_since_seen: int
    memory_tokens: int
    memory_bytes: int


@dataclass
class FrameResult:
    frame_idx: int
    stamp: float | None
    objects: dict[int, ObjectResult]
    stage_ms: dict[str, float]


@dataclass
class _Frame:
    idx: int
    hw: tuple[int, int]
    stamp: float | None
    feats: ImageFeatures


class Tracker:
    """Track prompted objects through a stream of RGB frames."""

    def __init__(self, model: SAM2Model, config: TrackerConfig | None = None, device: str | torch.device = "cpu",
                 quality_fn=None):
        """``quality_fn(obj_id, frame_idx, low_res_logits, object_score)``, when given,
        scores tracked frames for the memory instead of the model's heads (a float, or
        ``None`` to keep the heads' score): ``tinysam2 eval --oracle-quality`` scores them
        by the ground truth to measure the best any memory-quality rule could do."""
        self.model = model.eval()
        self.quality_fn = quality_fn
        self.config = config or TrackerConfig()
        self.config.memory.validate()
        self.device = torch.device(device)
        self.objects: dict[int, ObjectTrack] = {}
        self.frame_idx = -1
        self.stage_ms: dict[str, float] = dict.fromkeys(STAGES, 0.0)
        self._frames: OrderedDict[int, _Frame] = OrderedDict()
        self._pending: list[tuple[int, int, Prompt, str]] = []  # (obj_id, frame_idx, prompt, label)
        self.object_memory = ObjectMemory(model, self.config.memory, self.config.routing, self.config.video_length)

    # ------------------------------------------------------------------ public API
    @property
    def memory(self) -> MemoryConfig:
        return self.config.memory

    @property
    def _mem(self) -> ObjectMemory:
        """The object-memory component, following live changes of ``config.memory``/``routing``."""
        om = self.object_memory
        if om.config is not self.config.memory or om.routing is not self.config.routing:
            self.config.memory.validate()
            om = ObjectMemory(self.model, self.config.memory, self.config.routing, self.config.video_length)
            om.scorer = self.object_memory.scorer
            self.object_memory = om
        return om

    def frame_for_stamp(self, stamp: float) -> int:
        """The frame a prompt stamped ``stamp`` refers to (the next one if newer than all)."""
        if not self._frames or stamp > max(f.stamp or -np.inf for f in self._frames.values()) + self.config.stamp_tolerance:
            return self.frame_idx + 1
        best = min(self._frames.values(), key=lambda f: abs((f.stamp if f.stamp is not None else -np.inf) - stamp))
        if best.stamp is None or abs(best.stamp - stamp) > self.config.stamp_tolerance:
            oldest = next(iter(self._frames.values())).stamp
            raise TrackerError(
                f"no frame with stamp {stamp:.3f} in the feature window (it holds stamps from "
                f"{oldest:.3f}; feature_window={self.config.feature_window} frames)"
            )
        return best.idx

    def add_prompt(
        self, obj_id: int, box=None, points=None, labels=None, mask=None,
        frame: int | None = None, stamp: float | None = None, label: str = "", replace: bool = False,
    ) -> int:
        """Queue a prompt for ``obj_id``; returns the frame it applies to.

        ``frame`` or ``stamp`` name the frame the prompt was made on (default: the
        next frame). A past frame still in the feature window is re-decoded with the
        prompt at the next ``step`` and the object propagated forward to the present.
        ``replace``: drop the object's memory and restart it from this prompt, only once
        the prompt is known to be valid (a refused prompt leaves the object as it was).
        """
        if obj_id <= 0:
            raise TrackerError(f"object ids are positive integers, got {obj_id}")
        target = self.frame_for_stamp(stamp) if stamp is not None and frame is None else (
            self.frame_idx + 1 if frame is None else int(frame))
        if target > self.frame_idx + 1:
            raise TrackerError(f"prompt for frame {target} is in the future (next frame is {self.frame_idx + 1})")
        hw = None
        if target <= self.frame_idx:
            if target not in self._frames:
                oldest = next(iter(self._frames)) if self._frames else self.frame_idx + 1
                raise TrackerError(
                    f"prompt for frame {target} is older than the feature window (frames {oldest}..{self.frame_idx} "
                    f"are kept; feature_window={self.config.feature_window})"
                )
            hw = self._frames[target].hw
        elif self._frames:
            hw = next(reversed(self._frames.values())).hw  # validate against the stream's size
        prompt = make_prompt(box=box, points=points, labels=labels, mask=mask, frame_hw=hw)
        if replace:
            self.remove(obj_id)
        self._pending.append((int(obj_id), target, prompt, label))
        return target

    def remove(self, obj_id: int) -> None:
        if obj_id not in self.objects and not any(p[0] == obj_id for p in self._pending):
            raise TrackerError(f"unknown object id {obj_id}")
        self.objects.pop(obj_id, None)
        self._pending = [p for p in self._pending if p[0] != obj_id]

    def reset(self) -> None:
        self.objects.clear()
        self._frames.clear()
        self._pending.clear()
        self.frame_idx = -1

    @property
    def object_ids(self) -> list[int]:
        return sorted(set(self.objects) | {p[0] for p in self._pending})

    @torch.inference_mode()
    def flush(self) -> FrameResult | None:
        """Apply prompts queued for frames already processed, now, and return the newest
        frame's result (what a synchronous "add prompt" service answers with)."""
        if self.frame_idx < 0 or self.frame_idx not in self._frames:
            return None
        self.stage_ms = dict.fromkeys(STAGES, 0.0)
        late = [p for p in self._pending if p[1] <= self.frame_idx]
        self._pending = [p for p in self._pending if p[1] > self.frame_idx]
        self._apply_late_prompts(late)
        return self._results(self._frames[self.frame_idx])

    @torch.inference_mode()
    def step(self, image_rgb: np.ndarray, stamp: float | None = None) -> FrameResult:
        """Process the next frame; returns masks and states for every tracked object."""
        self.stage_ms = dict.fromkeys(STAGES, 0.0)
        t = self.frame_idx + 1
        images = preprocess_rgb(image_rgb, self.model.image_size).to(self.device)
        with self._timed("image_encoder"):
            frame = _Frame(t, tuple(image_rgb.shape[:2]), stamp, self.model.encode_image(images))
        late = [p for p in self._pending if p[1] < t]
        now = [p for p in self._pending if p[1] == t]
        self._pending = []
        self._apply_late_prompts(late)
        self.frame_idx = t
        self._frames[t] = frame
        while len(self._frames) > self.config.feature_window:
            self._frames.popitem(last=False)
        prompted = self._apply_prompts(frame, now)
        self._track(frame, [o for oid, o in self.objects.items() if oid not in prompted])
        for obj in self.objects.values():
            self._collect(obj, t)
        return self._results(frame)

    # ------------------------------------------------------------------ prompts
    def _apply_prompts(self, frame: _Frame, prompts) -> set[int]:
        by_obj: dict[int, list[Prompt]] = defaultdict(list)
        labels: dict[int, str] = {}
        for obj_id, _, prompt, label in prompts:
            by_obj[obj_id].append(prompt)
            if label:
                labels[obj_id] = label
        for obj_id, plist in by_obj.items():
            obj = self.objects.get(obj_id)
            if obj is None:
                obj = self.objects[obj_id] = ObjectTrack(obj_id, first_frame=frame.idx)
            obj.label = labels.get(obj_id, obj.label)
            self._prompt_object(frame, obj, plist)
        return set(by_obj)

    @staticmethod
    def _merge_prompts(prompts: list[Prompt]) -> Prompt:
        """Clicks on one frame accumulate (as in SAM 2's demo); a mask or box restarts them."""
        merged: Prompt | None = None
        for p in prompts:
            if p.mask is not None or merged is None or merged.mask is not None or 2 in p.labels:
                merged = p
            else:
                merged = Prompt(np.concatenate([merged.points_xy, p.points_xy]), np.concatenate([merged.labels, p.labels]))
        return merged

    def _prompt_object(self, frame: _Frame, obj: ObjectTrack, prompts: list[Prompt]) -> None:
        m = self.model
        t = frame.idx
        previous = obj.entry(t)
        if previous is not None and previous.prompt is not None and prompts[0].mask is None and previous.prompt.mask is None:
            prompts = [previous.prompt] + prompts
        prompt = self._merge_prompts(prompts)
        feats = frame.feats
        with self._timed("mask_decoder"):
            if prompt.mask is not None:
                out = self._mask_as_output(feats, prompt.mask)
            else:
                coords = torch.from_numpy(scale_points(prompt.points_xy, frame.hw, m.image_size))[None].to(self.device)
                labels = torch.from_numpy(prompt.labels)[None].to(self.device)
                # SAM 2: a prompted frame is decoded from the prompt alone (no memory);
                # logits of an earlier prompt on the same frame are fed back with it.
                # (A prompt on an already tracked frame arrives here after the object
                # was rolled back to before that frame, see _apply_late_prompts.)
                mask_in = None
                if previous is not None and previous.low_res_logits is not None:
                    mask_in = previous.low_res_logits[None].clamp(-32.0, 32.0)
                pix = m.condition_without_memory(feats.pix_feat)
                out = m.forward_heads(pix, feats.high_res, coords, labels, mask_in, m.use_multimask(True, prompt.num_points))
        entry = self._make_entries(feats, out, [t], [obj], is_mask_from_pts=True)[0]
        entry.prompt = prompt
        entry.absent_frames = 0 if entry.object_score > 0 else self._absent_before(obj, t) + 1
        self._drop_tracked(obj, t)
        obj.cond[t] = entry
        keep = set(select_cond_frames(list(obj.cond), self.memory.max_cond_frames))
        obj.cond = {f: e for f, e in obj.cond.items() if f in keep}
        obj.bank_at[t] = obj.bank

    def _drop_tracked(self, obj: ObjectTrack, t: int) -> None:
        obj.entries.pop(t, None)
        obj.bank = tuple(f for f in obj.bank if f != t)

    def _mask_as_output(self, feats: ImageFeatures, mask: np.ndarray) -> HeadOutput:
        """SAM 2's mask prompt, resized to the model input and binarised as SAM 2 does."""
        mask_t = torch.from_numpy(np.ascontiguousarray(mask))[None].to(self.device)
        mask_t = preprocess_mask(mask_t, self.model.image_size)
        return self.model.mask_as_output(feats.pix_feat, feats.high_res, mask_t)

    def _apply_late_prompts(self, late) -> None:
        """Apply prompts stamped on past frames, then re-propagate those objects to now."""
        if not late:
            return
        start: dict[int, int] = {}
        for obj_id, f, _, _ in late:
            start[obj_id] = min(start.get(obj_id, f), f)
        for obj_id, s in start.items():
            if s not in self._frames:
                raise TrackerError(f"frame {s} left the feature window before its prompt could be applied")
            obj = self.objects.get(obj_id) or self.objects.setdefault(obj_id, ObjectTrack(obj_id, first_frame=s))
            obj.first_frame = min(obj.first_frame, s)
            # roll the object back to just before frame s; prompts made after s are re-applied
            replay = defaultdict(list, {f: [e.prompt] for f, e in obj.cond.items() if f > s and e.prompt is not None})
            for late_id, f, p, label in late:
                if late_id == obj_id:
                    replay[f].append(p)
                    obj.label = label or obj.label
            obj.cond = {f: e for f, e in obj.cond.items() if f <= s}
            obj.entries = {f: e for f, e in obj.entries.items() if f < s}
            obj.bank = obj.bank_at.get(s - 1, ())
            obj.bank_at = OrderedDict((f, b) for f, b in obj.bank_at.items() if f < s)
            for f in range(s, self.frame_idx + 1):
                frame = self._frames[f]
                if f in replay:
                    self._prompt_object(frame, obj, replay[f])
                else:
                    self._track(frame, [obj])
                self._collect(obj, f)

    # ------------------------------------------------------------------ tracking
    def _track(self, frame: _Frame, objs: list[ObjectTrack]) -> None:
        """Decode every object from memory, batching objects with the same memory layout.

        A tracked frame is encoded into memory only for the objects whose memory keeps it
        (nothing reads the memory features of a frame outside the bank)."""
        t = frame.idx
        m = self.model
        mem = self._mem
        for idx in mem.groups(objs, t):
            group = [objs[i] for i in idx]
            fb = frame.feats.select(len(group))
            pix = mem.condition(group, fb.pix_feat, t, timer=self._timed)
            with self._timed("mask_decoder"):
                out = m.forward_heads(pix, fb.high_res, multimask_output=m.use_multimask(False, 0))
            entries = mem.entries(out, [t] * len(group))
            kept = [i for i, (o, e) in enumerate(zip(group, entries)) if self._write(o, e, t)]
            if kept:
                sel = torch.tensor(kept, device=self.device)
                heads = HeadOutput(*[getattr(out, f)[sel] for f in HeadOutput.__dataclass_fields__])
                with self._timed("memory_encoder"):
                    tokens = mem.encode(frame.feats.select(len(kept)).pix_feat, heads, is_mask_from_pts=False)
                for i, tok in zip(kept, tokens):
                    entries[i].features = tok

    def _write(self, obj: ObjectTrack, e: MemoryEntry, t: int) -> bool:
        """Store a tracked frame; True when it takes a memory slot."""
        given = None
        if self.quality_fn is not None:
            given = self.quality_fn(obj.obj_id, t, e.low_res_logits, e.object_score)
        return self._mem.write(obj, e, t, given)

    def _absent_before(self, obj: ObjectTrack, t: int) -> int:
        prev = obj.entry(t - 1)
        return prev.absent_frames if prev else 0

    def _make_entries(self, feats, out: HeadOutput, frames, objs, is_mask_from_pts: bool) -> list[MemoryEntry]:
        b = out.high_res_masks.shape[0]
        with self._timed("memory_encoder"):
            tokens = self._mem.encode(feats.select(b).pix_feat, out, is_mask_from_pts)
        return self._mem.entries(out, frames, tokens)

    def _collect(self, obj: ObjectTrack, t: int) -> None:
        """Forget what no future frame or late prompt can use (keeps memory bounded)."""
        window_start = t - self.config.feature_window + 1
        for f in [f for f in obj.bank_at if f < window_start - 1]:
            del obj.bank_at[f]
        with_features = set(obj.bank).union(*obj.bank_at.values()) if obj.bank_at else set(obj.bank)
        ptr_start = t - (self.model.max_obj_ptrs_in_encoder - 1)
        for f in list(obj.entries):
            e = obj.entries[f]
            if f not in with_features and f < ptr_start and f < window_start:
                del obj.entries[f]
                continue
            if f not in with_features and f < window_start:
                e.features = None
            if f < window_start:
                e.low_res_logits = None
        for f, e in obj.cond.items():
            if f < window_start:
                e.low_res_logits = None

    # ------------------------------------------------------------------ outputs
    def memory_bytes(self, obj: ObjectTrack) -> int:
        return obj.memory_bytes(self.frame_idx, self.model.max_obj_ptrs_in_encoder, self.config.feature_window)

    def _state(self, e: MemoryEntry) -> str:
        if e.object_score > 0:
            return "tracked"
        return "lost" if e.absent_frames >= self.config.lost_after else "occluded"

    def _results(self, frame: _Frame) -> FrameResult:
        objects = {}
        h, w = frame.hw
        for obj_id, obj in self.objects.items():
            e = obj.entry(frame.idx)
            if e is None or e.low_res_logits is None:
                continue
            logits = F.interpolate(e.low_res_logits[None].float(), size=(h, w), mode="bilinear", align_corners=False)
            mask = (logits[0, 0] > 0).cpu().numpy()
            objects[obj_id] = ObjectResult(
                obj_id=obj_id,
                label=obj.label,
                state=self._state(e),
                mask=mask,
                low_res_logits=e.low_res_logits,
                iou=e.iou,
                object_score=e.object_score,
                box_xyxy=mask_box(mask),
                area=int(mask.sum()),
                age=frame.idx - obj.first_frame,
                frames_since_seen=e.absent_frames,
                memory_tokens=obj.memory_tokens,
                memory_bytes=self.memory_bytes(obj),
            )
        return FrameResult(frame.idx, frame.stamp, objects, dict(self.stage_ms))

    @contextmanager
    def _timed(self, stage: str):
        """Add the wall time of the block to ``stage_ms[stage]`` (per-stage timings)."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.stage_ms[stage] += (time.perf_counter() - start) * 1e3


def mask_box(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """Tight (x1, y1, x2, y2) box of a boolean mask, exclusive max; None if empty."""
    ys = np.flatnonzero(mask.any(axis=1))
    if ys.size == 0:
        return None
    xs = np.flatnonzero(mask.any(axis=0))
    return int(xs[0]), int(ys[0]), int(xs[-1]) + 1, int(ys[-1]) + 1


__all__ = ["Tracker", "TrackerConfig", "TrackerError", "PromptError", "FrameResult", "ObjectResult", "STATES", "STAGES"]
