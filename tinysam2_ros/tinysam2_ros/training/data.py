"""Short training clips from videos (any layout of ``videosets.py``), with simulated prompts.

A clip is ``clip_len`` consecutive frames (optionally strided) starting on an
annotated frame where at least one object is visible; up to ``max_objects`` of the
objects visible on that first frame are tracked. With sparse annotations (YouTube-VOS:
every 5th frame) a clip may hold unannotated frames: they are tracked but carry no loss
(``Clip.annotated``); a clip needs at least one annotated frame after the first.

Drift happens at *events*: an object hidden by an occluder or a look-alike passing in
front, or leaving the frame. A random short clip rarely contains one, so with
probability ``event_prob`` a clip is placed around an event found in the annotations
alone (an object's visible area falls below half of what it was just before), with
the event inside the clip and frames after it, so the model learns to come through.

A model that finds its object mostly by where it was (the demo model: models/README.md,
items 9-10) loses it whenever it moves far between two frames. With probability
``jump_prob`` the camera jumps once inside a clip: from a random tracked frame on, frames
and masks shift by up to ``max_jump`` of the frame size, so the memory's positions no
longer say where the object is and only its appearance does.

Prompts on the first frame are simulated the way SAM 2 trains: the ground-truth mask,
a jittered box, or clicks sampled inside the object (plus sometimes a background click).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .videosets import VideoSet, open_videoset


@dataclass
class ClipPrompt:
    kind: str  # "mask" | "box" | "points"
    mask: np.ndarray | None = None  # H x W bool
    points: np.ndarray | None = None  # N x 2 (x, y) pixels, box corners first when kind == "box"
    labels: np.ndarray | None = None  # N int32 (2, 3 box corners; 1 fg; 0 bg)


@dataclass
class Clip:
    frames: np.ndarray  # T x H x W x 3 uint8 RGB
    masks: np.ndarray  # T x O x H x W bool
    obj_ids: list[int]
    prompts: list[ClipPrompt]
    annotated: np.ndarray | None = None  # T bool: frames with ground truth (None: all)
    images: torch.Tensor | None = None  # T x 3 x S x S model input, when a loader worker made it

    def pin_memory(self) -> "Clip":
        """Called by ``DataLoader(pin_memory=True)``: page-locked model input for fast,
        asynchronous copies to the GPU."""
        if self.images is not None:
            self.images = self.images.pin_memory()
        return self


_MIN_PIXELS = 16  # smaller is not visible: not prompted on a clip's first frame, no event to lose


class ClipSampler:
    """Random clips of a dataset: a ``VideoSet`` reader or a root (layout detected)."""

    def __init__(self, root: str | Path | VideoSet, clip_len: int = 6, max_objects: int = 3, max_stride: int = 2,
                 prompt_probs=(0.3, 0.4, 0.3), sequences: list[str] | None = None, event_prob: float = 0.0,
                 jump_prob: float = 0.0, max_jump: float = 0.25) -> None:
        if clip_len < 2 or max_objects < 1 or max_stride < 1:
            raise ValueError(f"need clip_len >= 2 (a prompted and a tracked frame), max_objects >= 1 and "
                             f"max_stride >= 1; got {clip_len}, {max_objects}, {max_stride}")
        if not 0.0 <= event_prob <= 1.0:
            raise ValueError(f"event_prob must lie in [0, 1], got {event_prob}")
        if not (0.0 <= jump_prob <= 1.0 and 0.0 <= max_jump < 1.0):
            raise ValueError(f"jump_prob must lie in [0, 1] and max_jump in [0, 1), got {jump_prob}, {max_jump}")
        self.videos = root if isinstance(root, VideoSet) else open_videoset(root)
        self.root = self.videos.root
        self.clip_len = clip_len
        self.max_objects = max_objects
        self.max_stride = max_stride
        self.prompt_probs = np.asarray(prompt_probs, dtype=np.float64) / np.sum(prompt_probs)
        self.sequences = sequences or self.videos.sequences
        if not self.sequences:
            raise ValueError(f"no sequences under {self.root}")
        self._n = {s: self.videos.num_frames(s) for s in self.sequences}
        self._ann = {s: set(self.videos.annotated(s)) for s in self.sequences}
        # sequences with no clip at all (YouTube-VOS validation: one annotated frame) are left out
        self.sequences = [s for s in self.sequences if any(
            self._usable(s, [i + k * d for k in range(clip_len)]) for i in self._ann[s] for d in range(1, max_stride + 1))]
        if not self.sequences:
            raise ValueError(f"no sequence under {self.root} has a clip of {clip_len} frames (stride up to "
                             f"{max_stride}) with its first and one more frame annotated")
        self._cache: dict[tuple[str, int], np.ndarray] = {}
        self._cache_bytes = 0
        self.event_prob = event_prob
        self.events = self._find_events() if event_prob > 0 else []
        self.jump_prob = jump_prob
        self.max_jump = max_jump

    _CACHE_BYTES = 512 * 2**20  # decoded id maps kept (SA-V's are full-HD int32: 8 MB each)

    def _ids(self, seq: str, i: int) -> np.ndarray:
        if (seq, i) not in self._cache:
            if self._cache_bytes > self._CACHE_BYTES:
                self._cache.clear()
                self._cache_bytes = 0
            self._cache[seq, i] = self.videos.ids(seq, i)
            self._cache_bytes += self._cache[seq, i].nbytes
        return self._cache[seq, i]

    def _usable(self, seq: str, idx: list[int]) -> bool:
        """In range, first frame annotated, and at least one annotated frame after it."""
        ann = self._ann[seq]
        return (bool(idx) and idx[0] >= 0 and idx[-1] < self._n[seq] and idx[0] in ann
                and any(i in ann for i in idx[1:]))

    def _find_events(self, drop: float = 0.5, lookback: int = 3) -> list[tuple[str, int, int]]:
        """(sequence, object, frame) where the object's visible area first falls below ``drop``
        x its largest area over the ``lookback`` annotated frames before (occluded or gone)."""
        events = []
        for seq in self.sequences:
            frames = sorted(self._ann[seq])
            areas = []
            for i in frames:
                ids = self._ids(seq, i)
                counts = np.bincount(ids.ravel(), minlength=256)
                areas.append(counts[:255] if self.videos.void == 255 else counts)
            width = max((len(a) for a in areas), default=255)
            areas = np.stack([np.pad(a, (0, width - len(a))) for a in areas]) if areas else np.zeros((0, 255))
            low = np.zeros(areas.shape[1], dtype=bool)  # inside an event: count its onset only
            for n in range(1, len(frames)):
                before = areas[max(0, n - lookback) : n].max(axis=0)
                now = (before >= _MIN_PIXELS) & (areas[n] < drop * before)
                for oid in np.nonzero(now & ~low)[0]:
                    if oid != 0:
                        events.append((seq, int(oid), frames[n]))
                low = now
        return events

    def _window(self, rng: np.random.Generator) -> tuple[str, list[int], int | None]:
        """Frames of one clip (and the object an event clip must track, else None)."""
        if self.events and rng.random() < self.event_prob:
            seq, oid, frame = self.events[rng.integers(len(self.events))]
            stride = int(rng.integers(1, self.max_stride + 1))
            at = int(rng.integers(1, max(self.clip_len - 1, 2)))  # the event's place: not first, not last
            start = frame - at * stride
            return seq, [start + k * stride for k in range(self.clip_len)], oid
        seq = self.sequences[rng.integers(len(self.sequences))]
        stride = int(rng.integers(1, self.max_stride + 1))
        starts = [i for i in sorted(self._ann[seq])
                  if self._usable(seq, [i + k * stride for k in range(self.clip_len)])]
        if not starts:
            return seq, [], None
        start = starts[rng.integers(len(starts))]
        return seq, [start + k * stride for k in range(self.clip_len)], None

    def sample(self, rng: np.random.Generator) -> Clip:
        for _ in range(100):
            seq, idx, must = self._window(rng)
            ann = self._ann[seq]
            if not self._usable(seq, idx):
                continue
            first = self._ids(seq, idx[0])
            present = [int(i) for i in np.unique(first)
                       if i not in (0, self.videos.void) and (first == i).sum() >= _MIN_PIXELS]
            if not present or (must is not None and must not in present):
                continue
            rng.shuffle(present)
            if must is not None:
                present.remove(must)
                present.insert(0, must)
            obj_ids = sorted(present[: self.max_objects])
            frames = self.videos.frames(seq, idx)
            annotated = np.array([i in ann for i in idx])
            ids = np.stack([self._ids(seq, i) if i in ann else np.zeros_like(first) for i in idx])
            masks = np.stack([ids == o for o in obj_ids], axis=1)
            if rng.random() < 0.5:  # the same horizontal flip for the whole clip
                frames, masks = frames[:, :, ::-1].copy(), masks[..., ::-1].copy()
            if self.jump_prob > 0 and rng.random() < self.jump_prob:
                frames, masks = camera_jump(frames, masks, rng, self.max_jump)
            prompts = [self._prompt(rng, masks[0, k]) for k in range(len(obj_ids))]
            return Clip(frames, masks, obj_ids, prompts, annotated)
        raise ValueError(f"no clip of {self.clip_len} frames (the first and one more annotated) with a visible object in {self.root}")

    def _prompt(self, rng: np.random.Generator, mask: np.ndarray) -> ClipPrompt:
        kind = ["mask", "box", "points"][rng.choice(3, p=self.prompt_probs)]
        ys, xs = np.nonzero(mask)
        if kind == "mask":
            return ClipPrompt("mask", mask=mask)
        if kind == "box":
            x1, y1, x2, y2 = xs.min(), ys.min(), xs.max() + 1, ys.max() + 1
            w, h = x2 - x1, y2 - y1
            jitter = rng.normal(0, 0.1, size=4) * np.array([w, h, w, h])
            box = np.array([x1, y1, x2, y2], dtype=np.float32) + jitter.astype(np.float32)
            H, W = mask.shape
            box = np.clip(box, 0, [W, H, W, H]).astype(np.float32)
            if box[2] <= box[0] + 1 or box[3] <= box[1] + 1:
                box = np.array([x1, y1, x2, y2], dtype=np.float32)
            return ClipPrompt("box", points=box.reshape(2, 2), labels=np.array([2, 3], dtype=np.int32))
        n = int(rng.integers(1, 4))
        pick = rng.integers(len(xs), size=n)
        pts = [np.stack([xs[pick], ys[pick]], axis=1).astype(np.float32)]
        labels = [np.ones(n, dtype=np.int32)]
        bg_y, bg_x = np.nonzero(~mask)
        if rng.random() < 0.3 and len(bg_x):
            j = rng.integers(len(bg_x))
            pts.append(np.array([[bg_x[j], bg_y[j]]], dtype=np.float32))
            labels.append(np.zeros(1, dtype=np.int32))
        return ClipPrompt("points", points=np.concatenate(pts), labels=np.concatenate(labels))


def camera_jump(frames: np.ndarray, masks: np.ndarray, rng: np.random.Generator, max_jump: float):
    """The clip with one sudden camera move: from a random frame after the first on,
    frames (T x H x W x 3) and masks (T x O x H x W) shift by a whole-pixel offset of up
    to ``max_jump`` x the frame size per axis; what moves in is black and unannotated."""
    t, h, w = frames.shape[:3]
    k = int(rng.integers(1, t))
    dy, dx = (np.round(rng.uniform(-max_jump, max_jump, 2) * (h, w))).astype(int)
    frames, masks = frames.copy(), masks.copy()
    frames[k:] = shifted(frames[k:], dy, dx, axes=(-3, -2))
    masks[k:] = shifted(masks[k:], dy, dx)
    return frames, masks


def shifted(a: np.ndarray, dy: int, dx: int, axes: tuple[int, int] = (-2, -1)) -> np.ndarray:
    """``a`` moved down by ``dy`` and right by ``dx`` pixels along its (row, column)
    ``axes`` (default the last two; ``(-3, -2)`` for H x W x C images), zeros behind."""
    h, w = a.shape[axes[0]], a.shape[axes[1]]
    out = np.zeros_like(a)
    if abs(dy) >= h or abs(dx) >= w:
        return out
    src, dst = [slice(None)] * a.ndim, [slice(None)] * a.ndim
    src[axes[0]], dst[axes[0]] = slice(max(0, -dy), h - max(0, dy)), slice(max(0, dy), h - max(0, -dy))
    src[axes[1]], dst[axes[1]] = slice(max(0, -dx), w - max(0, dx)), slice(max(0, dx), w - max(0, -dx))
    out[tuple(dst)] = a[tuple(src)]
    return out
