"""Memory quality management: score each tracked frame, keep the informative ones.

Rule (TinySAM 2 memory, ``compression="tinysam2"``):
  quality q = sigmoid(object score) * predicted IoU * agreement,
  agreement = IoU of this frame's mask with the previous frame's (1 when both are
  empty), so a frame whose mask jumps is trusted less.
  A tracked frame is written to memory only if q >= ``write_threshold`` and, with a
  write stride ``write_every`` (which saves the memory encoder on the frames in
  between), it is the object's first tracked write or a frame ``t`` with
  ``(t + phase) % write_every == 0``. The phase is the object's id + 1: objects tracked
  together write on different frames, and an object writes on other frames than those
  of its routing refresh, so no frame pays every object's memory encoder at once.
  When the ``num_slots`` non-prompted slots are full, the ``keep_recent`` newest
  frames stay, and the remaining slots go to the frames with the highest
  q * 2 ** (-age / recency_half_life). Prompted frames are always kept (up to
  ``max_cond_frames``, see ``select_cond_frames``).
"""
from __future__ import annotations

import math
from collections.abc import Mapping

import torch

from .config import MemoryConfig


def mask_agreement(current: torch.Tensor, previous: torch.Tensor | None) -> float:
    """IoU of two low-res logit maps thresholded at 0 (1.0 when there is no previous)."""
    if previous is None:
        return 1.0
    a = current > 0
    b = previous > 0
    union = (a | b).sum().item()
    if union == 0:
        return 1.0
    return (a & b).sum().item() / union


def frame_quality(object_score: float, iou: float, agreement: float) -> float:
    """Quality in [0, 1] of a tracked frame's output."""
    presence = 1.0 / (1.0 + math.exp(-max(min(object_score, 50.0), -50.0)))
    return float(presence * min(max(iou, 0.0), 1.0) * min(max(agreement, 0.0), 1.0))


def select_slots(
    candidates: dict[int, float], now: int, num_slots: int, keep_recent: int, half_life: float
) -> list[int]:
    """Frame indices (of ``candidates``: frame -> quality) that keep a memory slot."""
    if len(candidates) <= num_slots:
        return sorted(candidates)
    newest = sorted(candidates, reverse=True)[:keep_recent]
    rest = [f for f in candidates if f not in newest]
    rest.sort(key=lambda f: (candidates[f] * 2.0 ** (-(now - f) / half_life), f), reverse=True)
    return sorted(newest + rest[: num_slots - len(newest)])


def select_cond_frames(frames: list[int], max_cond_frames: int) -> list[int]:
    """Prompted frames to keep: the first one (the object's definition) and the newest."""
    frames = sorted(frames)
    if len(frames) <= max_cond_frames:
        return frames
    if max_cond_frames == 1:
        return frames[-1:]
    return [frames[0]] + frames[-(max_cond_frames - 1):]


def next_bank(bank: tuple[int, ...], quality: Mapping[int, float], t: int, memory: MemoryConfig,
              window: int, phase: int = 0) -> tuple[int, ...]:
    """The tracked frames holding a memory slot once frame ``t`` is decoded (``quality``:
    frame -> quality, for the bank's frames and ``t``). SAM 2's memory (``compression
    "off"``) keeps the frames of the last ``window``; TinySAM 2's gates ``t`` by the write
    threshold and the write stride (after the first write, frames with ``(t + phase) %
    write_every == 0``) and ranks the slots (``select_slots``). Shared
    by the streaming tracker and the training unroll, so training sees the memory
    inference keeps."""
    if not memory.compressed:
        return tuple(f for f in (*bank, t) if f > t - window)
    candidates = {f: quality[f] for f in bank}
    due = not bank or (t + phase) % memory.write_every == 0
    if due and quality[t] >= memory.write_threshold:
        candidates[t] = quality[t]
    return tuple(select_slots(candidates, t, memory.num_slots, memory.keep_recent, memory.recency_half_life))
