"""DAVIS video object segmentation metrics: region similarity J and boundary measure F.

Definitions follow the DAVIS benchmark (Perazzi et al. 2016; Pont-Tuset et al. 2017):

* ``J`` is the intersection over union of a predicted and a ground-truth mask; two
  empty masks score 1.
* ``F`` compares the one-pixel contours of the two masks. A contour pixel is a pixel
  that differs from its right, bottom or bottom-right neighbour (DAVIS ``seg2bmap``;
  on the last row only the right neighbour is looked at, on the last column only the
  bottom one, so the image border itself is never a contour). A predicted contour
  pixel counts as correct when a ground-truth contour pixel lies within a disk of
  radius ``ceil(bound_th * image diagonal)`` pixels (``bound_th`` itself when it is
  >= 1); precision and recall are the matched fractions each way, ``F = 2PR/(P+R)``.
  Both contours empty scores 1, exactly one empty scores 0.
* Void pixels (label 255 in DAVIS annotations) are left out of both measures only
  where void masks are passed (``evaluate_sequence`` passes them). The DAVIS 2017
  toolkit's semi-supervised evaluation passes none, so there void is background, and
  so it is in ``tinysam2 eval``.

The tolerance disk is the digital disk ``x^2 + y^2 <= r^2`` that DAVIS uses
(scikit-image ``disk``), built here with numpy. OpenCV's ``MORPH_ELLIPSE`` element of
the same size is slightly fatter (213 pixels instead of 197 at r = 8) and would shift
F upwards, so it is not used for the scores.

Frame selection (``j_and_f``): in semi-supervised evaluation the first frame carries
the prompt and is never scored. The DAVIS 2017 toolkit (davis2017-evaluation) also
leaves out the last frame of every sequence (it scores frames ``[1:-1]``); this is
the default here (``skip_first=True, skip_last=True``) so numbers are comparable with
published DAVIS 2017 results. Pass ``skip_last=False`` to score every frame after the
prompt (the DAVIS 2016 rule).
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

import cv2
import numpy as np

VOID_ID = 255
DEFAULT_BOUND_TH = 0.008


def _as_bool(mask, name: str) -> np.ndarray:
    m = np.asarray(mask)
    if m.ndim != 2:
        raise ValueError(f"{name} must be a 2-D mask, got shape {m.shape}")
    return m.astype(bool, copy=False)


def _check_pair(pred, gt, void=None) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    p = _as_bool(pred, "pred")
    g = _as_bool(gt, "gt")
    if p.shape != g.shape:
        raise ValueError(f"pred is {p.shape[1]}x{p.shape[0]} but gt is {g.shape[1]}x{g.shape[0]}")
    v = None
    if void is not None:
        v = _as_bool(void, "void")
        if v.shape != g.shape:
            raise ValueError(f"void mask shape {v.shape} differs from the mask shape {g.shape}")
    return p, g, v


def region_similarity(pred, gt, void=None) -> float:
    """Jaccard index J (IoU) of two boolean masks; 1.0 when both are empty.

    ``void`` (optional boolean mask) marks pixels that are ignored.
    """
    p, g, v = _check_pair(pred, gt, void)
    inter = p & g
    union = p | g
    if v is not None:
        keep = ~v
        inter &= keep
        union &= keep
    n_union = int(np.count_nonzero(union))
    if n_union == 0:
        return 1.0
    return int(np.count_nonzero(inter)) / n_union


def seg2bmap(mask) -> np.ndarray:
    """One-pixel contour of a boolean mask, DAVIS ``seg2bmap`` rule (same shape, bool)."""
    m = _as_bool(mask, "mask")
    h, w = m.shape
    right = np.zeros_like(m)
    down = np.zeros_like(m)
    diag = np.zeros_like(m)
    right[:, :-1] = m[:, 1:]
    down[:-1, :] = m[1:, :]
    diag[:-1, :-1] = m[1:, 1:]
    b = (m ^ right) | (m ^ down) | (m ^ diag)
    # The virtual pixels beyond the image are not background: on the last row only the
    # horizontal neighbour decides, on the last column only the vertical one.
    b[-1, :] = m[-1, :] ^ right[-1, :]
    b[:, -1] = m[:, -1] ^ down[:, -1]
    b[-1, -1] = False
    return b


def boundary_tolerance(shape: Sequence[int], bound_th: float = DEFAULT_BOUND_TH) -> int:
    """Matching radius in pixels: ``bound_th`` if >= 1, else ceil(bound_th * diagonal).

    For a 480x854 DAVIS frame and the default 0.008 this is 8 pixels.
    """
    if bound_th >= 1:
        return int(math.ceil(bound_th))
    h, w = int(shape[0]), int(shape[1])
    return int(math.ceil(bound_th * math.hypot(h, w)))


def disk(radius: int) -> np.ndarray:
    """Digital disk ``x^2 + y^2 <= r^2`` as a (2r+1) x (2r+1) uint8 structuring element."""
    r = int(radius)
    if r < 0:
        raise ValueError(f"radius must be >= 0, got {radius}")
    y, x = np.mgrid[-r : r + 1, -r : r + 1]
    return (x * x + y * y <= r * r).astype(np.uint8)


def _dilate(b: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    # BORDER_CONSTANT with value 0 so nothing outside the image dilates inwards.
    out = cv2.dilate(b.astype(np.uint8), kernel, borderType=cv2.BORDER_CONSTANT, borderValue=0)
    return out.astype(bool)


def boundary_f_measure(pred, gt, bound_th: float = DEFAULT_BOUND_TH, void=None) -> float:
    """DAVIS contour accuracy F of two boolean masks (see the module docstring)."""
    p, g, v = _check_pair(pred, gt, void)
    if v is not None:
        p = p & ~v
        g = g & ~v
    pb = seg2bmap(p)
    gb = seg2bmap(g)
    n_p = int(np.count_nonzero(pb))
    n_g = int(np.count_nonzero(gb))
    if n_p == 0 and n_g == 0:
        return 1.0
    if n_p == 0 or n_g == 0:
        return 0.0  # DAVIS: precision 1 / recall 0 (or the reverse) -> F = 0
    kernel = disk(boundary_tolerance(p.shape, bound_th))
    precision = np.count_nonzero(pb & _dilate(gb, kernel)) / n_p
    recall = np.count_nonzero(gb & _dilate(pb, kernel)) / n_g
    if precision + recall == 0:
        return 0.0
    return float(2 * precision * recall / (precision + recall))


def _frame_range(n: int, skip_first: bool, skip_last: bool) -> range:
    start = 1 if skip_first else 0
    stop = n - 1 if skip_last else n
    return range(start, max(start, stop))


def per_frame_scores(
    pred_masks: Sequence,
    gt_masks: Sequence,
    void_masks: Sequence | None = None,
    skip_first: bool = True,
    skip_last: bool = True,
    bound_th: float = DEFAULT_BOUND_TH,
) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """Per-frame J and F of one object and the indices of the frames that were scored."""
    if len(pred_masks) != len(gt_masks):
        raise ValueError(f"{len(pred_masks)} predicted masks but {len(gt_masks)} ground-truth masks")
    if void_masks is not None and len(void_masks) != len(gt_masks):
        raise ValueError(f"{len(void_masks)} void masks but {len(gt_masks)} ground-truth masks")
    frames = list(_frame_range(len(gt_masks), skip_first, skip_last))
    j = np.empty(len(frames))
    f = np.empty(len(frames))
    for k, t in enumerate(frames):
        v = None if void_masks is None else void_masks[t]
        j[k] = region_similarity(pred_masks[t], gt_masks[t], void=v)
        f[k] = boundary_f_measure(pred_masks[t], gt_masks[t], bound_th=bound_th, void=v)
    return j, f, frames


def j_and_f(
    pred_masks: Sequence,
    gt_masks: Sequence,
    skip_first: bool = True,
    skip_last: bool = True,
    void_masks: Sequence | None = None,
    bound_th: float = DEFAULT_BOUND_TH,
) -> dict[str, float]:
    """Mean J, mean F and JF = (J + F) / 2 of one object over a sequence.

    The lists are aligned with the sequence's frames, index 0 being the prompted frame.
    By default the first and the last frame are not scored (DAVIS 2017 toolkit rule;
    see the module docstring). When no frame is left the scores are NaN.
    """
    j, f, _ = per_frame_scores(pred_masks, gt_masks, void_masks, skip_first, skip_last, bound_th)
    if j.size == 0:
        return {"J": math.nan, "F": math.nan, "JF": math.nan}
    jm, fm = float(j.mean()), float(f.mean())
    return {"J": jm, "F": fm, "JF": (jm + fm) / 2}


def object_ids(id_maps: Iterable[np.ndarray]) -> list[int]:
    """Sorted object ids present in label maps (0 = background and 255 = void left out)."""
    found: set[int] = set()
    for ids in id_maps:
        found.update(int(i) for i in np.unique(np.asarray(ids)))
    found.discard(0)
    found.discard(VOID_ID)
    return sorted(found)


def evaluate_sequence(
    pred_ids: Sequence[np.ndarray],
    gt_ids: Sequence[np.ndarray],
    objects: Iterable[int] | None = None,
    skip_first: bool = True,
    skip_last: bool = True,
    bound_th: float = DEFAULT_BOUND_TH,
) -> dict[int, dict[str, float]]:
    """Per-object J/F/JF of a sequence given as label maps (uint8 H x W of object ids).

    ``gt_ids`` may mark void pixels with 255; they are ignored in both measures.
    ``objects`` defaults to every id found in the ground truth. An object missing from
    the prediction scores as an empty mask, as in DAVIS.
    """
    if len(pred_ids) != len(gt_ids):
        raise ValueError(f"{len(pred_ids)} predicted frames but {len(gt_ids)} ground-truth frames")
    gts = [np.asarray(g) for g in gt_ids]
    preds = [np.asarray(p) for p in pred_ids]
    for t, (p, g) in enumerate(zip(preds, gts)):
        if p.shape != g.shape:
            raise ValueError(f"frame {t}: prediction is {p.shape} but ground truth is {g.shape}")
    voids = [g == VOID_ID for g in gts]
    if not any(v.any() for v in voids):
        voids = None
    ids = object_ids(gts) if objects is None else sorted(int(o) for o in objects)
    results: dict[int, dict[str, float]] = {}
    for oid in ids:
        results[oid] = j_and_f(
            [p == oid for p in preds],
            [g == oid for g in gts],
            skip_first=skip_first,
            skip_last=skip_last,
            void_masks=voids,
            bound_th=bound_th,
        )
    return results


def summarize(per_object: Iterable[Mapping[str, float]]) -> dict[str, float]:
    """Benchmark summary: J, F and J&F averaged over all objects (of all sequences).

    DAVIS averages per object, not per sequence; objects with no scored frame (NaN) are
    skipped.
    """
    rows = [r for r in per_object if not math.isnan(r["J"])]
    if not rows:
        return {"J": math.nan, "F": math.nan, "JF": math.nan, "objects": 0}
    jm = float(np.mean([r["J"] for r in rows]))
    fm = float(np.mean([r["F"] for r in rows]))
    return {"J": jm, "F": fm, "JF": (jm + fm) / 2, "objects": len(rows)}
