"""The ceiling of a memory-quality rule: frames scored by the ground truth.

TinySAM 2's memory-quality manager lets a tracked frame into memory by a score from
the model's own heads (object score, predicted IoU, agreement with the previous mask).
Scoring each frame by its annotation instead (1 when the mask is right, 0 when it is
wrong) shows what the best possible rule could gain for a model: if even this ceiling
is low, the model loses objects in a way that keeping bad frames out of memory cannot
repair (``tinysam2 eval --oracle-quality``; models/README.md, item 10).
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from .davis import annotation_paths, load_annotation
from .failures import FAIR_IOU
from .metrics import VOID_ID, region_similarity


class GroundTruthQuality:
    """``Tracker(quality_fn=...)`` that scores a frame 1.0 when its mask is right by the
    annotation and 0.0 when it is wrong; frames without an annotation keep the model's
    score. Call ``start(seq)`` before tracking each sequence of ``root``."""

    def __init__(self, root, resolution: str | None = None) -> None:
        self.root = Path(root)
        self.resolution = resolution
        self._paths: dict[int, Path] = {}
        self._read: tuple[int, object] = (-1, None)  # (frame, id map): objects of a frame share one read
        self.scored = 0  # frames scored by the ground truth
        self.wrong = 0  # of which the mask was wrong

    def start(self, seq: str) -> None:
        self._paths = annotation_paths(self.root, seq, self.resolution)
        self._read = (-1, None)

    def __call__(self, obj_id: int, frame_idx: int, low_res_logits: torch.Tensor, object_score: float) -> float | None:
        path = self._paths.get(frame_idx)
        if path is None:
            return None
        if self._read[0] != frame_idx:
            self._read = (frame_idx, load_annotation(path))
        ids = self._read[1]
        # the mask the tracker outputs (absent objects' logits are already -1024)
        logits = F.interpolate(low_res_logits[None].float(), size=ids.shape, mode="bilinear", align_corners=False)
        mask = (logits[0, 0] > 0).cpu().numpy()
        # right: at least the failure census's "fair" (both empty counts as IoU 1)
        right = region_similarity(mask, ids == obj_id, void=ids == VOID_ID) >= FAIR_IOU
        self.scored += 1
        self.wrong += not right
        return 1.0 if right else 0.0
