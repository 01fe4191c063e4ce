"""Streaming multi-object tracker: frames in one at a time, prompts at any moment.

The image encoder runs once per frame; objects that share the same memory layout
are decoded as one batch. With compression off the memory follows SAM 2's video
predictor exactly (all prompted frames, the last ``num_maskmem - 1`` frames, up to
16 object pointers, memory features stored in bfloat16), which is what
``tinysam2 fidelity`` checks.
"""
from __future__ import annotations

from collections import OrderedDict, defaultdict
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from ..modeling.sam2_model import NO_OBJ_SCORE, HeadOutput, ImageFeatures, SAM2Model
from .preprocess import preprocess_rgb, scale_points
from .prompts import Prompt, PromptError, make_prompt


class TrackerError(RuntimeError):
    """A request the tracker cannot serve (unknown id, prompt too old, ...)."""


@dataclass
class TrackerConfig:
    max_cond_frames: int = -1  # prompted frames fed to memory attention (-1: all, as SAM 2)
    video_length: int | None = None  # known length of an offline video (SAM 2 caps pointers by it)
    feature_window: int = 8  # recent frames whose encoder features are kept for late prompts


@dataclass
class MemoryEntry:
    """What one processed frame leaves in an object's memory."""

    frame_idx: int
    features: torch.Tensor  # N x mem_dim, bfloat16 as SAM 2 stores it
    pos: torch.Tensor  # N x mem_dim
    coords: torch.Tensor | None  # N x 2 rope positions, None = default grid
    obj_ptr: torch.Tensor  # C
    low_res_logits: torch.Tensor  # 1 x 4H x 4W (gated)
    object_score: float
    iou: float
    ious: torch.Tensor  # M, the decoder's IoU predictions for its candidate masks
    prompt: Prompt | None = None


@dataclass
class ObjectTrack:
    obj_id: int
    label: str = ""
    cond: dict[int, MemoryEntry] = field(default_factory=dict)
    recent: "OrderedDict[int, MemoryEntry]" = field(default_factory=OrderedDict)

    def entry(self, frame_idx: int) -> MemoryEntry | None:
        return self.cond.get(frame_idx) or self.recent.get(frame_idx)


@dataclass
class ObjectResult:
    obj_id: int
    mask: np.ndarray  # H x W bool, at the frame's resolution
    low_res_logits: torch.Tensor  # 1 x 4H x 4W
    iou: float
    object_score: float
    box_xyxy: tuple[int, int, int, int] | None


@dataclass
class FrameResult:
    frame_idx: int
    objects: dict[int, ObjectResult]


@dataclass
class _Frame:
    idx: int
    hw: tuple[int, int]
    feats: ImageFeatures


class Tracker:
    """Track prompted objects through a stream of RGB frames."""

    def __init__(self, model: SAM2Model, config: TrackerConfig | None = None, device: str | torch.device = "cpu"):
        self.model = model.eval()
        self.config = config or TrackerConfig()
        self.device = torch.device(device)
        self.objects: dict[int, ObjectTrack] = {}
        self.frame_idx = -1
        self._frames: OrderedDict[int, _Frame] = OrderedDict()
        self._pending: list[tuple[int, int, Prompt]] = []  # (obj_id, frame_idx, prompt)

    # ------------------------------------------------------------------ public API
    def add_prompt(self, obj_id: int, box=None, points=None, labels=None, mask=None, frame: int | None = None) -> None:
        """Queue a prompt for ``obj_id`` on ``frame`` (default: the next frame to arrive).

        A frame already processed but still in the feature window is re-decoded
        with the prompt at the next ``step`` and the object propagated forward.
        """
        target = self.frame_idx + 1 if frame is None else int(frame)
        if target > self.frame_idx + 1:
            raise TrackerError(f"prompt for frame {target} is in the future (next frame is {self.frame_idx + 1})")
        hw = None
        if target <= self.frame_idx:
            if target not in self._frames:
                oldest = min(self._frames) if self._frames else self.frame_idx + 1
                raise TrackerError(
                    f"prompt for frame {target} is older than the feature window "
                    f"(frames {oldest}..{self.frame_idx} are kept; feature_window={self.config.feature_window})"
                )
            hw = self._frames[target].hw
        prompt = make_prompt(box=box, points=points, labels=labels, mask=mask, frame_hw=hw)
        self._pending.append((int(obj_id), target, prompt))

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

    @torch.inference_mode()
    def step(self, image_rgb: np.ndarray) -> FrameResult:
        """Process the next frame; returns masks for every tracked object."""
        t = self.frame_idx + 1
        images = preprocess_rgb(image_rgb, self.model.image_size).to(self.device)
        frame = _Frame(t, tuple(image_rgb.shape[:2]), self.model.encode_image(images))
        late = [p for p in self._pending if p[1] < t]
        now = [p for p in self._pending if p[1] == t]
        self._pending = []
        self._apply_late_prompts(late)
        self.frame_idx = t
        self._frames[t] = frame
        while len(self._frames) > max(self.config.feature_window, 1):
            self._frames.popitem(last=False)
        prompted = self._apply_prompts(frame, now)
        to_track = [o for oid, o in self.objects.items() if oid not in prompted and (o.cond or o.recent)]
        self._track(frame, to_track)
        return self._results(frame)

    # ------------------------------------------------------------------ prompts
    def _apply_prompts(self, frame: _Frame, prompts: list[tuple[int, int, Prompt]]) -> set[int]:
        by_obj: dict[int, list[Prompt]] = defaultdict(list)
        for obj_id, _, prompt in prompts:
            by_obj[obj_id].append(prompt)
        for obj_id, plist in by_obj.items():
            obj = self.objects.setdefault(obj_id, ObjectTrack(obj_id))
            self._prompt_object(frame, obj, plist)
        return set(by_obj)

    def _merge_prompts(self, prompts: list[Prompt]) -> Prompt:
        """Clicks on one frame accumulate (as in SAM 2); a mask or box restarts them."""
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
        if prompt.mask is not None:
            out = self._mask_as_output(feats, prompt.mask)
        else:
            coords = torch.from_numpy(scale_points(prompt.points_xy, frame.hw, m.image_size))[None].to(self.device)
            labels = torch.from_numpy(prompt.labels)[None].to(self.device)
            # SAM 2: a frame not yet tracked for this object is decoded from the prompt
            # alone; a tracked frame uses memory. Earlier logits on the frame are fed back.
            is_init = t not in obj.recent
            mask_in = None if previous is None else previous.low_res_logits[None].clamp(-32.0, 32.0)
            if is_init:
                pix = m.condition_without_memory(feats.pix_feat)
            else:
                obj.recent.pop(t, None)
                pix = self._condition([obj], feats, t)
            multimask = m.use_multimask(is_init, prompt.num_points)
            out = m.forward_heads(pix, feats.high_res, coords, labels, mask_in, multimask)
        entry = self._make_entries(feats, out, [t], is_mask_from_pts=True)[0]
        entry.prompt = prompt
        obj.recent.pop(t, None)
        obj.cond[t] = entry
        self._prune_cond(obj, t)

    def _mask_as_output(self, feats: ImageFeatures, mask: np.ndarray) -> HeadOutput:
        """SAM 2's mask prompt: the mask itself is the output; the decoder gives the pointer."""
        m = self.model
        size = m.image_size
        mask_t = torch.from_numpy(mask.astype(np.float32))[None, None].to(self.device)
        mask_t = F.interpolate(mask_t, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        mask_t = (mask_t >= 0.5).float()
        high_res = mask_t * 20.0 - 10.0
        low_res = F.interpolate(high_res, size=(m.low_res_size,) * 2, mode="bilinear", align_corners=False, antialias=True)
        heads = m.forward_heads(feats.pix_feat, feats.high_res, mask_inputs=m.mask_downsample(mask_t))
        present = mask_t.flatten(1).gt(0).any(dim=1, keepdim=True).float()
        score = present * 20.0 - 10.0
        obj_ptr = present * heads.obj_ptr + (1 - present) * m.no_obj_ptr
        ious = torch.ones(1, 1, device=self.device)
        return HeadOutput(low_res, ious, low_res, high_res, obj_ptr, score, ious[:, 0])

    def _prune_cond(self, obj: ObjectTrack, t: int) -> None:
        """Keep the pointer/memory history bounded (SAM 2 never looks further back)."""
        horizon = max(self.model.num_maskmem - 1, self.model.max_obj_ptrs_in_encoder - 1)
        for f in [f for f in obj.recent if f < t - horizon]:
            del obj.recent[f]

    def _apply_late_prompts(self, late: list[tuple[int, int, Prompt]]) -> None:
        """Apply prompts stamped on past frames, then re-propagate those objects to now."""
        if not late:
            return
        start: dict[int, int] = {}
        for obj_id, f, _ in late:
            start[obj_id] = min(start.get(obj_id, f), f)
        for obj_id, s in start.items():
            if s not in self._frames:
                raise TrackerError(f"frame {s} left the feature window before its prompt could be applied")
            obj = self.objects.setdefault(obj_id, ObjectTrack(obj_id))
            # forget what was inferred from frame s on: it is recomputed with the prompt
            for f in [f for f in obj.recent if f >= s]:
                del obj.recent[f]
            for f in [f for f in obj.cond if f > s]:
                del obj.cond[f]
            for f in range(s, self.frame_idx + 1):
                frame = self._frames[f]
                plist = [p for p in late if p[0] == obj_id and p[1] == f]
                if plist:
                    self._prompt_object(frame, obj, [p[2] for p in plist])
                elif obj.cond or obj.recent:
                    self._track(frame, [obj])

    # ------------------------------------------------------------------ tracking
    def _memory_frames(self, obj: ObjectTrack, t: int) -> list[tuple[int, MemoryEntry]]:
        """(t_rel, entry) pairs SAM 2 attends to at frame t: prompted frames (t_rel 0) + last frames."""
        cond = {f: e for f, e in obj.cond.items() if f != t}
        selected, unselected = _select_closest_cond_frames(t, cond, self.config.max_cond_frames)
        frames = [(0, e) for _, e in sorted(selected.items())]
        for t_rel in range(self.model.num_maskmem - 1, 0, -1):
            e = obj.recent.get(t - t_rel) or unselected.get(t - t_rel)
            if e is not None:
                frames.append((t_rel, e))
        return frames

    def _pointers(self, obj: ObjectTrack, t: int) -> tuple[list[int], list[torch.Tensor], int]:
        m = self.model
        max_ptrs = m.max_obj_ptrs_in_encoder
        if self.config.video_length is not None:
            max_ptrs = min(self.config.video_length, max_ptrs)
        cond = {f: e for f, e in obj.cond.items() if f != t}
        selected, unselected = _select_closest_cond_frames(t, cond, self.config.max_cond_frames)
        offsets, ptrs = [], []
        for f, e in sorted(selected.items()):
            if m.only_obj_ptrs_in_the_past_for_eval and f > t:
                continue
            offsets.append(t - f if m.use_signed_tpos_enc_to_obj_ptrs else abs(t - f))
            ptrs.append(e.obj_ptr)
        for t_diff in range(1, max_ptrs):
            f = t - t_diff
            if f < 0:
                break
            e = obj.recent.get(f) or unselected.get(f)
            if e is not None:
                offsets.append(t_diff)
                ptrs.append(e.obj_ptr)
        return offsets, ptrs, max_ptrs

    def _memory_signature(self, obj: ObjectTrack, t: int) -> tuple:
        frames = self._memory_frames(obj, t)
        offsets, _, _ = self._pointers(obj, t)
        return tuple((r, e.features.shape[0]) for r, e in frames), tuple(offsets)

    def _condition(self, objs: list[ObjectTrack], feats: ImageFeatures, t: int) -> torch.Tensor:
        """Memory attention for objects with identical memory layout, as one batch."""
        m = self.model
        mem, mem_pos = [], []
        per_obj_frames = [self._memory_frames(o, t) for o in objs]
        coords = None
        coord_parts = []
        for frames in zip(*per_obj_frames):
            t_rel = frames[0][0]
            mem.append(torch.stack([e.features for _, e in frames]).float())
            mem_pos.append(torch.stack([e.pos for _, e in frames]) + m.memory_tpos(t_rel if t_rel > 0 else m.num_maskmem))
            coord_parts.append(frames[0][1].coords)
        if coord_parts and all(c is not None for c in coord_parts):
            coords = torch.cat(coord_parts, dim=0)
        pointer_info = [self._pointers(o, t) for o in objs]
        offsets, _, max_ptrs = pointer_info[0]
        num_ptr_tokens = 0
        if offsets:
            ptrs = torch.stack([torch.stack(p) for _, p, _ in pointer_info])  # B x P x C
            tok, tok_pos = m.object_pointer_tokens(ptrs, torch.tensor(offsets, device=self.device), max_ptrs)
            mem.append(tok)
            mem_pos.append(tok_pos)
            num_ptr_tokens = tok.shape[1]
        b = len(objs)
        feats_b = feats.select(b)
        return m.condition_on_memory(
            feats_b.pix_feat,
            feats_b.pix_pos,
            torch.cat(mem, dim=1),
            torch.cat(mem_pos, dim=1),
            num_ptr_tokens,
            memory_coords=coords,
        )

    def _track(self, frame: _Frame, objs: list[ObjectTrack]) -> None:
        """Decode every object from memory, batching objects with the same memory layout."""
        t = frame.idx
        groups: dict[tuple, list[ObjectTrack]] = defaultdict(list)
        for o in objs:
            if not self._memory_frames(o, t):
                continue  # nothing to track from
            groups[self._memory_signature(o, t)].append(o)
        m = self.model
        for group in groups.values():
            feats_b = frame.feats.select(len(group))
            pix = self._condition(group, frame.feats, t)
            out = m.forward_heads(pix, feats_b.high_res, multimask_output=m.use_multimask(False, 0))
            entries = self._make_entries(frame.feats, out, [t] * len(group), is_mask_from_pts=False)
            for o, e in zip(group, entries):
                o.recent[t] = e
                self._prune_cond(o, t)

    def _make_entries(self, feats: ImageFeatures, out: HeadOutput, frames: list[int], is_mask_from_pts: bool):
        b = out.high_res_masks.shape[0]
        mem = self.model.encode_memory(feats.select(b).pix_feat, out.high_res_masks, out.object_score_logits, is_mask_from_pts)
        return [
            MemoryEntry(
                frame_idx=f,
                features=mem.features[i].to(torch.bfloat16),
                pos=mem.pos[i],
                coords=mem.coords,
                obj_ptr=out.obj_ptr[i],
                low_res_logits=out.low_res_masks[i],
                object_score=float(out.object_score_logits[i, 0]),
                iou=float(out.best_iou[i]),
                ious=out.ious[i],
            )
            for i, f in enumerate(frames)
        ]

    # ------------------------------------------------------------------ outputs
    def _results(self, frame: _Frame) -> FrameResult:
        objects = {}
        h, w = frame.hw
        for obj_id, obj in self.objects.items():
            e = obj.entry(frame.idx)
            if e is None:
                continue
            logits = F.interpolate(e.low_res_logits[None].float(), size=(h, w), mode="bilinear", align_corners=False)
            mask = (logits[0, 0] > 0).cpu().numpy()
            objects[obj_id] = ObjectResult(obj_id, mask, e.low_res_logits, e.iou, e.object_score, mask_box(mask))
        return FrameResult(frame.idx, objects)


def mask_box(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """Tight (x1, y1, x2, y2) box of a boolean mask, exclusive max; None if empty."""
    ys = np.flatnonzero(mask.any(axis=1))
    if ys.size == 0:
        return None
    xs = np.flatnonzero(mask.any(axis=0))
    return int(xs[0]), int(ys[0]), int(xs[-1]) + 1, int(ys[-1]) + 1


def _select_closest_cond_frames(t: int, cond: dict[int, MemoryEntry], max_num: int):
    """SAM 2's choice of prompted frames: the closest before and after t, then nearest others."""
    if max_num < 0 or len(cond) <= max_num:
        return dict(cond), {}
    selected = {}
    before = max((f for f in cond if f < t), default=None)
    if before is not None:
        selected[before] = cond[before]
    after = min((f for f in cond if f >= t), default=None)
    if after is not None:
        selected[after] = cond[after]
    rest = sorted((f for f in cond if f not in selected), key=lambda f: abs(f - t))
    for f in rest[: max(max_num - len(selected), 0)]:
        selected[f] = cond[f]
    return selected, {f: e for f, e in cond.items() if f not in selected}


__all__ = ["Tracker", "TrackerConfig", "TrackerError", "PromptError", "FrameResult", "ObjectResult", "NO_OBJ_SCORE"]
