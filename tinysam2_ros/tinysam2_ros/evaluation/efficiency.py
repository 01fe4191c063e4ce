"""``tinysam2 efficiency``: J&F of sparse retrieval and query routing against dense, one table.

Runs the tracker over a DAVIS-layout set once per mode with the same model and prints,
per mode: J&F and its ratio to the first mode (dense), spatial memory tokens per object
per frame, the share of image tokens sent through memory attention (routing), and ms
per frame of memory attention and in total. A mode is a comma-separated list of
settings: ``dense``, ``keep=X`` (memory.retrieval_keep), ``route`` (routing.enabled),
any other ``name=value`` of ``MemoryConfig`` or ``RoutingConfig``; modes are separated
by ``;``. ``--image-size`` runs the model at another input size (rope and sine
position encodings extend to any grid).
"""
from __future__ import annotations

import math
from dataclasses import fields
from pathlib import Path

import numpy as np
import torch

from ..checkpoint import load_checkpoint
from ..memory.config import MemoryConfig
from ..memory.routing import RoutingConfig
from ..modeling.build import build_model
from ..modeling.presets import get_preset
from ..tracking.tracker import Tracker, TrackerConfig
from .davis import list_sequences
from .metrics import summarize
from .run_eval import evaluate_sequence_with_tracker

DEFAULT_MODES = "dense;keep=0.5;route;keep=0.5,route"


def parse_mode(text: str) -> tuple[dict, dict]:
    """``"keep=0.5,route,fill=raw"`` -> (memory overrides, routing overrides)."""
    mem_names = {f.name: f.type for f in fields(MemoryConfig)}
    route_names = {f.name: f.type for f in fields(RoutingConfig)}
    memory, routing = {}, {}
    for item in filter(None, (x.strip() for x in text.split(","))):
        if item == "dense":
            routing["enabled"] = False
            memory["retrieval_keep"] = 1.0
            continue
        if item == "route":
            routing["enabled"] = True
            continue
        if "=" not in item:
            raise ValueError(f"mode item {item!r} is not dense, route or name=value")
        key, value = (s.strip() for s in item.split("=", 1))
        key = "retrieval_keep" if key == "keep" else key
        target = memory if key in mem_names else routing if key in route_names else None
        if target is None:
            raise ValueError(f"unknown setting {key!r} (memory: {sorted(mem_names)}; routing: {sorted(route_names)})")
        default = getattr(MemoryConfig() if target is memory else RoutingConfig(), key)
        if isinstance(default, bool):
            target[key] = value.lower() in ("1", "true", "yes", "on")
        else:
            target[key] = type(default)(value)
    return memory, routing


def run_efficiency(root: str | Path, checkpoint: str | None, preset: str, modes: str = DEFAULT_MODES,
                   image_size: int | None = None, sequences: list[str] | None = None, max_frames: int | None = None,
                   log=print) -> list[dict]:
    root = Path(root)
    seqs = sequences or list_sequences(root)
    if not seqs:
        raise ValueError(f"no sequences under {root / 'JPEGImages'}")
    p = dict(get_preset(preset))
    if image_size:
        if image_size % 16:
            raise ValueError(f"image size must be a multiple of 16, got {image_size}")
        p["image_size"] = image_size
    torch.manual_seed(0)
    model = build_model(p)
    if checkpoint:
        load_checkpoint(model, checkpoint, preset=preset)
    n_grid = model.feat_size ** 2
    rows = []
    for mode in (m.strip() for m in modes.split(";") if m.strip()):
        mem, route = parse_mode(mode)
        config = TrackerConfig.from_preset(p, mem, route)
        tracker = Tracker(model, config)
        queries = []

        def observe(seq, i, result, tracker=tracker, queries=queries):
            for oid in result.objects:
                o = tracker.objects.get(oid)
                if o is not None and o.query_tokens and o.entry(i) is not None and i not in o.cond:
                    queries.append(o.query_tokens)

        reports = [evaluate_sequence_with_tracker(tracker, root, s, "mask", max_frames, observe) for s in seqs]
        overall = summarize([o for r in reports for o in r.objects.values()])
        frames = sum(r.frames for r in reports)
        ms = {k: sum(r.stage_ms[k] * r.frames for r in reports) / max(frames, 1) for k in reports[0].stage_ms}
        rows.append({
            "mode": mode, "JF": overall["JF"], "J": overall["J"], "F": overall["F"],
            "memory_tokens": float(np.mean([r.memory_tokens for r in reports])),
            "query_share": float(np.mean(queries)) / n_grid if queries else math.nan,
            "retrieval_keep": config.memory.retrieval_keep, "scored_frames": tracker.object_memory.scorer.calls,
            "ms_memory_attention": ms["memory_attention"], "ms_total": sum(ms.values()),
        })
        log(f"  {mode}: J&F {overall['JF']:.3f}")
    dense = rows[0]["JF"]
    log(f"preset {preset}, input {model.image_size} ({model.feat_size}x{model.feat_size} tokens), {len(seqs)} "
        f"sequences under {root}, mask prompts; 'of first' = J&F / J&F of the first mode")
    log(f"{'mode':<34} {'J&F':>6} {'of first':>8} {'J':>6} {'F':>6} {'mem tok':>8} {'queries':>8} "
        f"{'scored':>7} {'ms attn':>8} {'ms total':>9}")
    for r in rows:
        log(f"{r['mode']:<34} {r['JF']:6.3f} {100 * r['JF'] / dense:7.1f}% {r['J']:6.3f} {r['F']:6.3f} "
            f"{r['memory_tokens']:8.1f} {100 * r['query_share']:7.1f}% {r['scored_frames']:7d} "
            f"{r['ms_memory_attention']:8.1f} {r['ms_total']:9.1f}")
    return rows


def add_efficiency_parser(subparsers):
    p = subparsers.add_parser(
        "efficiency",
        help="J&F, memory tokens and routed query share of sparse retrieval / query routing vs dense (table)",
        description=__doc__,
    )
    p.add_argument("data_root", help="DAVIS-layout set (e.g. from `tinysam2 synth`)")
    p.add_argument("--checkpoint", help="weights (the demo model: models/demo_tiny_norm.safetensors)")
    p.add_argument("--preset", help="model preset (default: the one named in the checkpoint, else tinysam2)")
    p.add_argument("--modes", default=DEFAULT_MODES, help=f"';'-separated modes (default {DEFAULT_MODES!r})")
    p.add_argument("--image-size", type=int, help="run the model at this input size (default: the preset's)")
    p.add_argument("--sequences", help="comma-separated sequence names (default: all)")
    p.add_argument("--max-frames", type=int, help="only the first N frames of each sequence")

    def run(a) -> int:
        import sys

        from ..checkpoint import resolve_preset

        try:
            preset = resolve_preset(a.preset, a.checkpoint, "tinysam2")
            run_efficiency(a.data_root, a.checkpoint, preset, a.modes, a.image_size,
                           a.sequences.split(",") if a.sequences else None, a.max_frames)
        except (FileNotFoundError, ValueError, KeyError) as exc:
            print(f"tinysam2 efficiency: {exc}", file=sys.stderr)
            return 2
        return 0

    p.set_defaults(func=run)
    return p
