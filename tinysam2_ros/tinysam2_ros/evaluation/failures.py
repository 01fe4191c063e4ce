"""Where tracking goes wrong on synthetic videos: what each wrong mask covers.

J&F says how much is lost, not why. On a ``tinysam2 synth`` set the generator can
rebuild every scene from ``meta.json`` (config and seed), so for each object and frame
the predicted mask can be attributed to what is really under it: the target, an
occluder, a look-alike distractor, another target, or the background. Counting those
over a set tells which event a model fails at (``tinysam2 eval --failures``).
"""
from __future__ import annotations

import dataclasses
import json
from collections import Counter
from pathlib import Path

import numpy as np

from .metrics import region_similarity
from .synth import SynthConfig, SynthScene, build_scene

GOOD_IOU = 0.8  # a mask this close to the annotation is "good"
FAIR_IOU = 0.5  # from here it is at least "fair": still on the target

# One character per (object, frame), for timelines. O, D, X, G in lower case: the target
# is absent (hidden or out of frame) and the mask marks that thing instead.
LABELS = {
    ".": f"good (IoU >= {GOOD_IOU}; empty while absent)",
    ":": f"fair (IoU {FAIR_IOU}-{GOOD_IOU})",
    "e": "empty while the target is visible",
    "t": f"wrong shape on the target itself (IoU < {FAIR_IOU})",
    "O": "on an occluder",
    "D": "on a look-alike distractor",
    "X": "on another target",
    "G": "on the background",
}


class FailureCensus:
    """Labels every object-frame of a tracker run on a synthetic set; ``observe`` is
    called with each frame's result (``run_eval(..., observe=census.observe)``)."""

    def __init__(self, root) -> None:
        self.root = Path(root)
        self.counts: Counter = Counter()  # label (upper case) -> object-frames
        self.absent: Counter = Counter()  # label -> object-frames where the target was absent
        self.timelines: dict[tuple[str, int], str] = {}  # (sequence, object) -> one label per frame
        self._seq: str | None = None

    def observe(self, seq: str, i: int, result) -> None:
        if seq != self._seq:
            self._seq, self._scene = seq, load_scene(self.root, seq)
            self._layers = [(layer.kind, layer.oid) for layer in self._scene.layers]
        frame = self._scene.render(i, image=False)  # its ids are the annotation written for frame i
        for oid, res in result.objects.items():
            label = classify(res.mask, frame.ids, frame.owner, self._layers, oid)
            self.timelines[(seq, oid)] = self.timelines.get((seq, oid), "") + label
            absent = label in "odxg"
            self.counts[label.upper() if absent else label] += 1
            if absent:
                self.absent[label.upper()] += 1

    def table(self) -> str:
        total = sum(self.counts.values())
        lines = [f"{'':<2}{'what the mask covers':<48} {'object-frames':>13} {'share':>7} {'target absent':>13}"]
        for key, text in LABELS.items():
            n = self.counts.get(key, 0)
            lines.append(f"{key:<2}{text:<48} {n:>13} {100 * n / max(total, 1):>6.1f}% {self.absent.get(key, 0):>13}")
        lines.append(f"{'':<2}{'all':<48} {total:>13}")
        return "\n".join(lines)

    def timeline_lines(self) -> list[str]:
        width = max((len(s) for s, _ in self.timelines), default=0)
        return [f"{s:<{width}} {oid:>3} {line}" for (s, oid), line in self.timelines.items()]


def load_scene(root, seq: str) -> SynthScene:
    """The generator's scene of a sequence written by ``tinysam2 synth`` (from meta.json)."""
    meta_path = Path(root) / "meta.json"
    if not meta_path.is_file():
        raise ValueError(f"{meta_path} not found: the failure census needs a set written by `tinysam2 synth`")
    meta = json.loads(meta_path.read_text())
    if seq not in meta.get("stats", {}):
        raise ValueError(f"sequence {seq!r} is not in {meta_path}")
    known = {f.name for f in dataclasses.fields(SynthConfig)}
    cfg = {k: tuple(v) if isinstance(v, list) else v for k, v in meta["config"].items() if k in known}
    return build_scene(SynthConfig(**cfg, seed=int(meta["stats"][seq]["seed"])))


def classify(pred: np.ndarray, ids: np.ndarray, owner: np.ndarray, layers: list[tuple[str, int]], oid: int) -> str:
    """The label of object ``oid``'s mask on one frame (see ``LABELS``). ``ids``: the
    annotation; ``owner``: the scene layer in front at each pixel (-1: background);
    ``layers``: each layer's kind ("target", "occluder", "distractor") and object id."""
    target = ids == oid
    iou = region_similarity(pred, target)
    if iou >= GOOD_IOU:
        return "."
    if iou >= FAIR_IOU:
        return ":"
    if not pred.any():
        return "e"
    votes: Counter = Counter()
    for layer, n in zip(*np.unique(owner[pred], return_counts=True)):
        if layer < 0:
            votes["G"] += int(n)
        else:
            kind, layer_oid = layers[layer]
            if kind == "target":
                votes["t" if layer_oid == oid else "X"] += int(n)
            else:
                votes["O" if kind == "occluder" else "D"] += int(n)
    label = votes.most_common(1)[0][0]
    return label if target.any() or label == "t" else label.lower()
