"""Short training clips from DAVIS-layout videos, with simulated prompts.

A clip is ``clip_len`` consecutive frames (optionally strided) starting on a frame
where at least one object is visible; up to ``max_objects`` of the objects visible
on that first frame are tracked. Prompts on the first frame are simulated the way
SAM 2 trains: the ground-truth mask, a jittered box, or clicks sampled inside the
object (plus sometimes a background click).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ..evaluation.davis import annotation_paths, list_sequences, load_annotation, load_frames


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


class ClipSampler:
    """Random clips of a DAVIS-layout dataset (annotated frames only)."""

    def __init__(self, root: str | Path, clip_len: int = 6, max_objects: int = 3, max_stride: int = 2,
                 prompt_probs=(0.3, 0.4, 0.3), sequences: list[str] | None = None) -> None:
        if clip_len < 2 or max_objects < 1 or max_stride < 1:
            raise ValueError(f"need clip_len >= 2 (a prompted and a tracked frame), max_objects >= 1 and "
                             f"max_stride >= 1; got {clip_len}, {max_objects}, {max_stride}")
        self.root = Path(root)
        self.clip_len = clip_len
        self.max_objects = max_objects
        self.max_stride = max_stride
        self.prompt_probs = np.asarray(prompt_probs, dtype=np.float64) / np.sum(prompt_probs)
        self.sequences = sequences or list_sequences(self.root)
        if not self.sequences:
            raise ValueError(f"no sequences under {self.root}")
        self._frames = {s: load_frames(self.root, s) for s in self.sequences}
        self._ann = {s: annotation_paths(self.root, s) for s in self.sequences}
        self._cache: dict[Path, np.ndarray] = {}

    def _rgb(self, path: Path) -> np.ndarray:
        return np.asarray(Image.open(path).convert("RGB"))

    def _ids(self, path: Path) -> np.ndarray:
        if path not in self._cache:
            if len(self._cache) > 4096:
                self._cache.clear()
            self._cache[path] = load_annotation(path)
        return self._cache[path]

    def sample(self, rng: np.random.Generator) -> Clip:
        for _ in range(100):
            seq = self.sequences[rng.integers(len(self.sequences))]
            ann = self._ann[seq]
            stride = int(rng.integers(1, self.max_stride + 1))
            starts = [i for i in sorted(ann) if all(i + k * stride in ann for k in range(self.clip_len))]
            if not starts:
                continue
            start = starts[rng.integers(len(starts))]
            idx = [start + k * stride for k in range(self.clip_len)]
            first = self._ids(ann[idx[0]])
            present = [int(i) for i in np.unique(first) if i not in (0, 255) and (first == i).sum() >= 16]
            if not present:
                continue
            rng.shuffle(present)
            obj_ids = sorted(present[: self.max_objects])
            frames = np.stack([self._rgb(self._frames[seq][i]) for i in idx])
            ids = np.stack([self._ids(ann[i]) for i in idx])
            masks = np.stack([ids == o for o in obj_ids], axis=1)
            if rng.random() < 0.5:  # the same horizontal flip for the whole clip
                frames, masks = frames[:, :, ::-1].copy(), masks[..., ::-1].copy()
            prompts = [self._prompt(rng, masks[0, k]) for k in range(len(obj_ids))]
            return Clip(frames, masks, obj_ids, prompts)
        raise ValueError(f"no clip of {self.clip_len} annotated frames with a visible object in {self.root}")

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
