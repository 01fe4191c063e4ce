"""``tinysam2 eval``: run the streaming tracker over DAVIS-layout videos and measure it.

Per sequence and overall: J&F (DAVIS definitions, when annotations exist), spatial
memory tokens per object per frame (and as a % of SAM 2.1's 7 x 4096), memory
bytes per object, and milliseconds per frame for each stage.

What is scored is what a DAVIS results folder holds: one id per pixel, overlaps
resolved as SAM 2 does (``tracking.overlap``); ``save_masks`` writes exactly those
maps as palette PNGs, so the official toolkit scores the same thing.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from ..backends import attach_backend
from ..checkpoint import load_checkpoint
from ..modeling.build import build_model
from ..modeling.presets import SAM21_MEMORY_TOKENS, get_preset
from ..tracking.overlap import overlap_pixels, resolve_overlaps
from ..tracking.tracker import STAGES, Tracker, TrackerConfig
from .davis import (PROMPT_KINDS, annotation_paths, first_annotations, list_sequences, load_annotation,
                    load_frames, prompt_kwargs, write_annotation)
from .metrics import j_and_f, summarize

@dataclass
class SequenceReport:
    name: str
    frames: int
    objects: dict[int, dict[str, float]] = field(default_factory=dict)  # obj_id -> J, F, JF
    memory_tokens: float = 0.0  # mean spatial memory tokens per object per memory-conditioned frame
    memory_bytes: int = 0  # largest memory held by one object at the end of the sequence
    stage_ms: dict[str, float] = field(default_factory=dict)  # mean ms per frame
    overlap_pixels: int = 0  # pixels two objects' own masks both claimed (resolved to one id)

    def summary(self) -> dict:
        s = summarize(self.objects.values()) if self.objects else {"J": math.nan, "F": math.nan, "JF": math.nan}
        return {
            "sequence": self.name,
            "frames": self.frames,
            "J": s["J"], "F": s["F"], "JF": s["JF"],
            "memory_tokens": self.memory_tokens,
            "memory_tokens_pct_sam21": 100.0 * self.memory_tokens / SAM21_MEMORY_TOKENS,
            "memory_bytes": self.memory_bytes,
            "overlap_pixels": self.overlap_pixels,
            "ms_per_frame": {**self.stage_ms, "total": sum(self.stage_ms.values())},
            "objects": {str(k): v for k, v in self.objects.items()},
        }


def evaluate_sequence_with_tracker(
    tracker: Tracker, root: Path, seq: str, prompt: str = "mask", max_frames: int | None = None, observe=None,
    save_dir: Path | None = None,
) -> SequenceReport:
    """Prompt every object on its first annotated frame, track to the end, score the
    per-pixel id maps. ``observe(seq, frame, result)``, when given, sees every frame's
    result; ``save_dir`` receives ``<seq>/<frame name>.png`` for every frame."""
    tracker.reset()
    frames = load_frames(root, seq)[:max_frames]
    firsts = first_annotations(root, seq)
    ann = annotation_paths(root, seq)
    id_maps: list[np.ndarray] = []
    tokens, stage_sum, overlaps = [], dict.fromkeys(STAGES, 0.0), 0
    for i, path in enumerate(frames):
        rgb = np.asarray(Image.open(path).convert("RGB"))
        for oid, (f, mask) in firsts.items():
            if f == i:
                tracker.add_prompt(oid, **prompt_kwargs(prompt, mask))
        result = tracker.step(rgb)
        if observe is not None:
            observe(seq, i, result)
        for k in STAGES:
            stage_sum[k] += result.stage_ms[k]
        # an object with an empty mask has no logit > 0 and so wins no pixel
        ids = resolve_overlaps({oid: r.low_res_logits for oid, r in result.objects.items() if r.area}, rgb.shape[:2])
        overlaps += overlap_pixels({oid: r.mask for oid, r in result.objects.items()})
        id_maps.append(ids)
        if save_dir is not None:
            write_annotation(Path(save_dir) / seq / f"{path.stem}.png", ids)
        for oid, res in result.objects.items():
            if i > firsts[oid][0]:
                tokens.append(res.memory_tokens)
    report = SequenceReport(seq, len(frames), overlap_pixels=overlaps)
    gt_frames = {i: load_annotation(p) for i, p in ann.items() if i < len(frames)}
    for oid, (f0, _) in firsts.items():
        scored = sorted(i for i in gt_frames if i >= f0)
        if len(scored) < 2:
            continue
        # void (255) counts as background, as davis2017-evaluation's semi-supervised mode does
        report.objects[oid] = j_and_f(
            [id_maps[i] == oid for i in scored], [gt_frames[i] == oid for i in scored],
            skip_first=True, skip_last=len(scored) > 2,
        )
    report.memory_tokens = float(np.mean(tokens)) if tokens else 0.0
    report.memory_bytes = max((tracker.memory_bytes(o) for o in tracker.objects.values()), default=0)
    report.stage_ms = {k: v / max(len(frames), 1) for k, v in stage_sum.items()}
    return report


def run_eval(
    root: str | Path,
    preset: str = "tinysam2",
    checkpoint: str | Path | None = None,
    memory_overrides: dict | None = None,
    routing_overrides: dict | None = None,
    prompt: str = "mask",
    sequences: list[str] | None = None,
    max_frames: int | None = None,
    device: str = "cpu",
    seed: int = 0,
    log=print,
    backend: str = "torch",
    engine_dir: str | None = None,
    precision: str = "fp32",
    observe=None,
    quality_oracle=None,
    save_masks: str | Path | None = None,
    random_weights: bool = False,
) -> dict:
    """Evaluate and print a table; returns the same numbers as a dict (for ``--json``).
    ``observe(seq, frame, result)`` sees every frame's result (e.g. the failure census);
    ``quality_oracle`` (an ``oracle.GroundTruthQuality``) scores frames for the memory;
    ``save_masks`` is a folder for DAVIS results (``<seq>/<frame>.png``). Without a
    checkpoint the weights are random, which must be asked for (``random_weights``)."""
    root = Path(root)
    if prompt not in PROMPT_KINDS:
        raise ValueError(f"prompt must be one of {PROMPT_KINDS}")
    seqs = sequences or list_sequences(root)
    if not seqs:
        raise ValueError(f"no sequences under {root / 'JPEGImages'}")
    preset_dict = get_preset(preset)
    torch.manual_seed(seed)
    model = build_model(preset_dict).to(device)
    if checkpoint:
        load_checkpoint(model, checkpoint, preset=preset)
    elif random_weights:
        log(f"WARNING: RANDOM WEIGHTS: {preset} is not trained; J&F says nothing about the model")
    else:
        raise ValueError("no checkpoint given (pass --random-weights to evaluate an untrained model)")
    config = TrackerConfig.from_preset(preset_dict, memory_overrides, routing_overrides)
    if quality_oracle is not None and not (config.memory.compressed and 0 < config.memory.write_threshold <= 1):
        raise ValueError("a quality oracle needs the tinysam2 memory with a write threshold in (0, 1] "
                         f"(got compression {config.memory.compression!r}, write threshold {config.memory.write_threshold})")
    attach_backend(model, backend, preset, engine_dir, device=device, memory=config.memory.to_dict(), log=log,
                   precision=precision)
    tracker = Tracker(model, config, device=device, quality_fn=quality_oracle)
    reports = []
    for s in tqdm(seqs, desc="eval", leave=False):
        if quality_oracle is not None:
            quality_oracle.start(s)
        reports.append(evaluate_sequence_with_tracker(tracker, root, s, prompt, max_frames, observe,
                                                      Path(save_masks) if save_masks else None))

    rows = [r.summary() for r in reports]
    overall = summarize([o for r in reports for o in r.objects.values()]) if any(r.objects for r in reports) else {}
    total_frames = sum(r.frames for r in reports)
    mean_ms = {k: sum(r.stage_ms[k] * r.frames for r in reports) / max(total_frames, 1) for k in STAGES}
    tok = float(np.mean([r.memory_tokens for r in reports]))
    out = {
        "preset": preset,
        "checkpoint": str(checkpoint) if checkpoint else None,
        "backend": backend,
        "memory": config.memory.to_dict(),
        "prompt": prompt,
        "sequences": rows,
        "overall": {
            "J": overall.get("J", math.nan), "F": overall.get("F", math.nan), "JF": overall.get("JF", math.nan),
            "objects": overall.get("objects", 0),
            "memory_tokens": tok,
            "memory_tokens_pct_sam21": 100.0 * tok / SAM21_MEMORY_TOKENS,
            "memory_bytes": max(r.memory_bytes for r in reports),
            "overlap_pixels": sum(r.overlap_pixels for r in reports),
            "ms_per_frame": {**mean_ms, "total": sum(mean_ms.values())},
        },
    }
    _print_table(out, log)
    return out


def _print_table(out: dict, log) -> None:
    head = f"{'sequence':<20} {'frames':>6} {'J&F':>6} {'J':>6} {'F':>6} {'mem tok':>8} {'% SAM2.1':>8} {'mem KiB':>8}"
    head += "".join(f" {s[:10]:>10}" for s in STAGES) + f" {'ms total':>9}"
    log(head)

    def fmt(name, frames, d):
        ms = d["ms_per_frame"]
        jf = lambda v: "   -  " if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:6.3f}"  # noqa: E731
        line = (f"{name:<20} {frames:>6} {jf(d['JF'])} {jf(d['J'])} {jf(d['F'])} {d['memory_tokens']:>8.0f} "
                f"{d['memory_tokens_pct_sam21']:>7.2f}% {d['memory_bytes'] / 1024:>8.0f}")
        return line + "".join(f" {ms[s]:>10.1f}" for s in STAGES) + f" {ms['total']:>9.1f}"

    for r in out["sequences"]:
        log(fmt(r["sequence"], r["frames"], r))
    log(fmt("overall", sum(r["frames"] for r in out["sequences"]), out["overall"]))
    log(f"pixels claimed by two or more objects' masks, given to the highest logit: {out['overall']['overlap_pixels']}")


def write_json(out: dict, path: str | Path) -> None:
    def clean(v):
        if isinstance(v, float) and math.isnan(v):
            return None
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        if isinstance(v, list):
            return [clean(x) for x in v]
        return v

    Path(path).write_text(json.dumps(clean(out), indent=2))
