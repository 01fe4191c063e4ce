"""One object per pixel, as SAM 2 writes DAVIS results.

Each object's mask is its own logits > 0, so two objects may claim a pixel. A DAVIS
results folder, and the node's label image, hold one id per pixel. SAM 2's
``vos_inference`` (``non_overlap_masks``) keeps, at each pixel, the object with the
highest logit at the video's resolution and writes background where that logit is
not > 0; equal logits go to the object decoded first, the lower id. This is the one
place that rule lives: ``tinysam2 eval`` scores and saves what it returns and the
node publishes it.
"""
from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
import torch.nn.functional as F


def resolve_overlaps(logits: Mapping[int, torch.Tensor], hw: tuple[int, int]) -> np.ndarray:
    """``H x W`` int32 id map from each object's low-res logits (``... x h x w``).

    Logits are upsampled to ``hw`` exactly as the tracker makes its masks (bilinear,
    ``align_corners=False``), so an object alone keeps its own mask.
    """
    h, w = int(hw[0]), int(hw[1])
    best = label = None
    for oid in sorted(logits):
        if int(oid) <= 0:
            raise ValueError(f"object ids are positive integers, got {oid}")
        lg = logits[oid]
        up = F.interpolate(lg.reshape(1, 1, *lg.shape[-2:]).float(), size=(h, w), mode="bilinear",
                           align_corners=False)[0, 0]
        if best is None:
            best, label = up, torch.full((h, w), int(oid), dtype=torch.int32, device=up.device)
            continue
        win = up > best  # strict: a tie stays with the lower id (torch.argmax's first index)
        label[win] = int(oid)
        best = torch.where(win, up, best)
    if best is None:
        return np.zeros((h, w), dtype=np.int32)
    label[~(best > 0)] = 0
    return label.cpu().numpy()


def overlap_pixels(masks: Mapping[int, np.ndarray]) -> int:
    """Pixels claimed by two or more objects' own masks (what ``resolve_overlaps`` decides)."""
    if not masks:
        return 0
    count = np.zeros(np.asarray(next(iter(masks.values()))).shape, dtype=np.int32)
    for m in masks.values():
        count += np.asarray(m, dtype=bool)
    return int(np.count_nonzero(count >= 2))
