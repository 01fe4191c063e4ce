"""``tinysam2 memory-report``: full SAM 2 memory vs TinySAM 2 memory settings.

Runs ``tinysam2 eval`` once per memory setting on the same data and checkpoint and
prints J&F, memory tokens (as a % of the model's own full memory and of SAM 2.1's
7 x 4096), memory bytes and ms per frame; writes a JSON and a PNG plot of J&F
against memory tokens.
"""
from __future__ import annotations

import json
from pathlib import Path

from ..modeling.presets import SAM21_MEMORY_TOKENS, get_preset
from .davis import PROMPT_KINDS
from .run_eval import run_eval, write_json

# name -> memory overrides; "off" is SAM 2's memory (the reference). Rows other than the
# last keep the preset's rule for which frames hold a slot; the last one applies TinySAM 2's
# quality rule (write threshold 0.3, quality-ranked slots) whatever the preset says.
DEFAULT_SETTINGS: dict[str, dict] = {
    "full (SAM 2)": {"compression": "off"},
    "slots only, pool 1": {"compression": "tinysam2", "pool_factor": 1, "token_budget": 0},
    "pool 2": {"compression": "tinysam2", "pool_factor": 2, "token_budget": 0},
    "pool 2, 14%": {"compression": "tinysam2", "pool_factor": 2, "token_budget": 256},
    "pool 2, 7%": {"compression": "tinysam2", "pool_factor": 2, "token_budget": 125},
    "pool 4, 3.5%": {"compression": "tinysam2", "pool_factor": 4, "token_budget": 63},
    "pool 2, 14%, quality slots": {"compression": "tinysam2", "pool_factor": 2, "token_budget": 256,
                                   "write_threshold": 0.3, "keep_recent": 1},
}


def full_memory_tokens(preset: dict) -> int:
    """Spatial tokens SAM 2's memory feeds this model per object (7 frames, full grid)."""
    sp = preset.get("spatial_perceiver")
    per_frame = (sp["num_latents"] + sp["num_latents_2d"]) if sp else (preset["image_size"] // 16) ** 2
    return preset["tracking"]["num_maskmem"] * per_frame


def memory_report(root: str | Path, preset: str, checkpoint: str | None, out_dir: str | Path,
                  settings: dict[str, dict] | None = None, prompt: str = "mask", max_frames: int | None = None,
                  log=print, random_weights: bool = False) -> list[dict]:
    settings = settings or DEFAULT_SETTINGS
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    full = full_memory_tokens(get_preset(preset))
    rows = []
    for name, overrides in settings.items():
        log(f"--- {name}: {overrides}")
        res = run_eval(root, preset=preset, checkpoint=checkpoint, memory_overrides=overrides, prompt=prompt,
                       max_frames=max_frames, log=log, random_weights=random_weights)
        o = res["overall"]
        rows.append({"setting": name, "memory": res["memory"], "JF": o["JF"], "J": o["J"], "F": o["F"],
                     "memory_tokens": o["memory_tokens"], "pct_full": 100 * o["memory_tokens"] / full,
                     "pct_sam21": 100 * o["memory_tokens"] / SAM21_MEMORY_TOKENS, "memory_bytes": o["memory_bytes"],
                     "ms_per_frame": o["ms_per_frame"]})
        write_json(res, out_dir / f"eval_{len(rows):02d}.json")
    ref = rows[0]["JF"]
    log(f"\npreset {preset}, checkpoint {checkpoint}, data {root}, prompt {prompt}; full memory = {full} tokens")
    width = max(16, *(len(r["setting"]) for r in rows))
    log(f"{'setting':<{width}} {'J&F':>6} {'vs full':>8} {'tokens':>7} {'% full':>7} {'% SAM2.1':>9} {'KiB':>6} "
        f"{'mem-attn ms':>11} {'total ms':>9}")
    for r in rows:
        rel = f"{100 * r['JF'] / ref:7.1f}%" if ref and ref == ref else "     n/a"
        r["pct_of_full_jf"] = 100 * r["JF"] / ref if ref and ref == ref else None
        log(f"{r['setting']:<{width}} {r['JF']:6.3f} {rel} {r['memory_tokens']:7.0f} "
            f"{r['pct_full']:6.1f}% {r['pct_sam21']:8.2f}% {r['memory_bytes'] / 1024:6.0f} "
            f"{r['ms_per_frame']['memory_attention']:11.1f} {r['ms_per_frame']['total']:9.1f}")
    (out_dir / "memory_report.json").write_text(json.dumps(rows, indent=2))
    _plot(rows, out_dir / "memory_report.png", preset)
    log(f"wrote {out_dir / 'memory_report.json'} and {out_dir / 'memory_report.png'}")
    return rows


def _plot(rows: list[dict], path: Path, preset: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    placed: list[tuple[float, float]] = []
    for r in rows:
        point = (r["memory_tokens"], r["JF"])
        ax.scatter(*point, s=40)
        stacked = sum(1 for p in placed if p == point)  # settings that landed on the same point
        ax.annotate(r["setting"], point, textcoords="offset points", xytext=(5, 4 - 11 * stacked), fontsize=8)
        placed.append(point)
    ax.set_xscale("log")
    ax.margins(x=0.35, y=0.1)  # room for the labels right of the points
    ax.set_xlabel("spatial memory tokens per object per frame (log)")
    ax.set_ylabel("J&F")
    ax.set_title(f"{preset}: J&F vs memory tokens")
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _cmd_memory_report(a) -> int:
    import sys

    from ..weights import choose_weights

    try:
        preset, checkpoint = choose_weights(a)
        memory_report(a.data_root, preset, checkpoint, a.out, prompt=a.prompt, max_frames=a.max_frames,
                      random_weights=a.random_weights)
    except (FileNotFoundError, ValueError, KeyError, RuntimeError) as exc:
        print(f"tinysam2 memory-report: {exc}", file=sys.stderr)
        return 2
    return 0


def add_memory_report_parser(subparsers):
    from ..weights import add_weights_args

    p = subparsers.add_parser(
        "memory-report",
        help="compare SAM 2's full memory with TinySAM 2 memory settings: J&F vs tokens table and plot",
        description="Run `tinysam2 eval` on the same data for the full SAM 2 memory and several TinySAM 2 memory "
        "settings; print J&F (and as a % of the full memory's), memory tokens (as a % of the model's full memory "
        "and of SAM 2.1's 7x4096), memory bytes and ms per frame; write memory_report.json and memory_report.png.",
    )
    p.add_argument("data_root", help="DAVIS-layout directory (e.g. a held-out `tinysam2 synth` set)")
    add_weights_args(p)
    p.add_argument("--out", default="out/memory_report", help="output directory (default: out/memory_report)")
    p.add_argument("--prompt", choices=PROMPT_KINDS, default="mask", help="prompt from the first annotation")
    p.add_argument("--max-frames", type=int, help="only the first N frames of each sequence")
    p.set_defaults(func=_cmd_memory_report)
    return p
