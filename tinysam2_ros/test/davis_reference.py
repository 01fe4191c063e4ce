"""An independent reading of the DAVIS 2017 semi-supervised rules, to score a results folder.

Written from the rules, not from ``tinysam2_ros.evaluation.metrics``, so a test that
compares the two catches a mistake in either:

* results: ``RES/<seq>/<frame>.png``, one object id per pixel (palette indices);
* objects: ids 1..max of the first annotation; void (255) counts as background;
* frames: every annotated frame but the first and the last;
* J: |P & G| / |P | G|, 1 when both are empty;
* F: contours are pixels that differ from their right, lower or lower-right neighbour,
  the image edge repeating itself (so the border is no contour); a contour pixel
  matches when the other contour has a pixel within the disk x^2 + y^2 <= r^2,
  r = ceil(0.008 * diagonal); F = 2PR / (P + R); both contours empty: 1, one: 0;
* J&F: the mean over objects of (mean J + mean F) / 2 of each object over frames.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from PIL import Image


def _ids(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        assert im.mode == "P", f"{path}: a DAVIS result is a palette PNG, got mode {im.mode}"
        return np.array(im)


def jaccard(p: np.ndarray, g: np.ndarray) -> float:
    union = np.logical_or(p, g).sum()
    return 1.0 if union == 0 else float(np.logical_and(p, g).sum() / union)


def contour(m: np.ndarray) -> np.ndarray:
    e = np.pad(m, ((0, 1), (0, 1)), mode="edge")
    return (m != e[:-1, 1:]) | (m != e[1:, :-1]) | (m != e[1:, 1:])


def near(b: np.ndarray, r: int) -> np.ndarray:
    """Pixels within distance r (x^2 + y^2 <= r^2) of a True pixel of b."""
    h, w = b.shape
    padded = np.pad(b, r)
    out = np.zeros_like(b)
    for dy in range(-r, r + 1):
        for dx in range(-r, r + 1):
            if dx * dx + dy * dy <= r * r:
                out |= padded[r + dy : r + dy + h, r + dx : r + dx + w]
    return out


def f_measure(p: np.ndarray, g: np.ndarray) -> float:
    r = math.ceil(0.008 * math.sqrt(p.shape[0] ** 2 + p.shape[1] ** 2))
    cp, cg = contour(p), contour(g)
    if not cp.any() and not cg.any():
        return 1.0
    if not cp.any() or not cg.any():
        return 0.0
    precision = (cp & near(cg, r)).sum() / cp.sum()
    recall = (cg & near(cp, r)).sum() / cg.sum()
    return 0.0 if precision + recall == 0 else float(2 * precision * recall / (precision + recall))


def score_results(annotations: Path, results: Path, sequences: list[str]) -> dict[str, dict[int, float]]:
    """{sequence: {object id: J&F}} of a results folder against ``annotations/<seq>``."""
    out = {}
    for seq in sequences:
        gts = sorted((annotations / seq).glob("*.png"))
        first = _ids(gts[0])
        objects = range(1, int(first[first != 255].max()) + 1)
        scored = gts[1:-1]
        preds = [_ids(results / seq / p.name) for p in scored]
        gt = [_ids(p) for p in scored]
        out[seq] = {}
        for oid in objects:
            j = np.mean([jaccard(p == oid, g == oid) for p, g in zip(preds, gt)])
            f = np.mean([f_measure(p == oid, g == oid) for p, g in zip(preds, gt)])
            out[seq][oid] = float((j + f) / 2)
    return out
