"""A simulated detector made from a video's annotations, to drive the node like a real one.

Real detectors run slower than the camera, jitter, miss objects, arrive late and now and
then see something that is not there; ``simulate_detections`` does each of these from
the annotation masks with a seeded generator, so ``tinysam2 demo --detector`` is
reproducible. Each box carries the annotated object it came from, so a report can say
which track each object's boxes went to (association judged by ids, not by masks).
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import numpy as np

from .davis import mask_to_box


@dataclass
class DetectorSim:
    every: int = 3  # a detection array on every k-th frame
    jitter: float = 0.05  # box corner noise, as a fraction of the box's size (std)
    miss: float = 0.1  # probability that an object is missed in an array
    late: float = 0.3  # probability that an array arrives late
    max_late: int = 2  # frames a late array lags behind (1..max_late)
    false_positive: float = 0.1  # probability of one box on nothing in an array
    label: str = "object"
    seed: int = 0

    def describe(self) -> str:
        return (f"every {self.every} frames, jitter {self.jitter:.0%} of the box size, {self.miss:.0%} misses, "
                f"{self.late:.0%} of arrays 1-{self.max_late} frames late, a false positive in "
                f"{self.false_positive:.0%} of arrays (seed {self.seed})")


def simulate_detections(gt: dict[int, np.ndarray], num_frames: int, sim: DetectorSim):
    """``{publish_frame: [(made_on_frame, [(box_xyxy, label, score, source_obj_id or 0)])]}``:
    the arrays to send after the tracker has processed ``publish_frame``."""
    rng = np.random.default_rng(sim.seed)
    out: dict[int, list] = defaultdict(list)
    for f in range(0, num_frames, sim.every):
        if f not in gt:
            continue
        ids = gt[f]
        h, w = ids.shape
        boxes = []
        for oid in sorted(int(v) for v in np.unique(ids) if v not in (0, 255)):
            if rng.random() < sim.miss:
                continue
            x1, y1, x2, y2 = mask_to_box(ids == oid)
            bw, bh = x2 - x1, y2 - y1
            noisy = np.add([x1, y1, x2, y2], rng.normal(0, sim.jitter, 4) * [bw, bh, bw, bh])
            box = (max(noisy[0], 0.0), max(noisy[1], 0.0), min(noisy[2], w), min(noisy[3], h))
            if box[2] > box[0] + 1 and box[3] > box[1] + 1:
                boxes.append((box, sim.label, float(rng.uniform(0.6, 0.95)), oid))
        if rng.random() < sim.false_positive:
            bw, bh = rng.uniform(0.1, 0.25) * w, rng.uniform(0.1, 0.25) * h
            x, y = rng.uniform(0, w - bw), rng.uniform(0, h - bh)
            boxes.append(((x, y, x + bw, y + bh), sim.label, float(rng.uniform(0.5, 0.8)), 0))
        delay = int(rng.integers(1, sim.max_late + 1)) if rng.random() < sim.late else 0
        out[min(f + delay, num_frames - 1)].append((f, boxes))
    return dict(out)
