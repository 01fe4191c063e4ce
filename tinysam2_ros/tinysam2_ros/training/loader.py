"""Clips for each process, decoded by DataLoader workers.

Clip ``i`` of iteration ``t`` is drawn from a generator seeded with (seed, t, i)
((seed, t) for i = 0, the single-clip recipe), so the clips of an iteration do not
depend on how many processes share them, and a run resumed at iteration t, with any
number of processes, sees the clips it would have seen. Process r of N takes clips
r*B/N .. (r+1)*B/N - 1 of each iteration's B.
"""
from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from ..tracking.preprocess import preprocess_rgb
from .data import ClipSampler


def clip_rng(seed: int, iteration: int, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, iteration] if index == 0 else [seed, iteration, index])


class ClipDataset(Dataset):
    """Item (t, i): the clip (with its model input) and the generator after drawing it,
    which the unroll continues (teacher forcing)."""

    def __init__(self, sampler: ClipSampler, seed: int, image_size: int) -> None:
        self.sampler, self.seed, self.image_size = sampler, seed, image_size

    def __getitem__(self, key: tuple[int, int]):
        rng = clip_rng(self.seed, *key)
        clip = self.sampler.sample(rng)
        clip.images = torch.cat([preprocess_rgb(f, self.image_size) for f in clip.frames])
        return key, clip, rng


class RankClips(Sampler):
    """The (iteration, clip) keys of one process, from ``start`` to ``stop``."""

    def __init__(self, start: int, stop: int, batch_clips: int, rank: int, world: int) -> None:
        if batch_clips % world:
            raise ValueError(f"batch_clips ({batch_clips}) must be a multiple of the number of processes ({world})")
        per = batch_clips // world
        self.keys = [(t, i) for t in range(start, stop) for i in range(rank * per, (rank + 1) * per)]

    def __iter__(self):
        return iter(self.keys)

    def __len__(self) -> int:
        return len(self.keys)


def _single(item):
    return item


def clip_loader(sampler: ClipSampler, seed: int, image_size: int, keys: RankClips, workers: int,
                pin: bool) -> DataLoader:
    return DataLoader(ClipDataset(sampler, seed, image_size), batch_size=None, sampler=keys, num_workers=workers,
                      pin_memory=pin, collate_fn=_single, persistent_workers=False,
                      prefetch_factor=4 if workers else None)
