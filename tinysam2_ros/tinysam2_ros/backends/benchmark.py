"""``tinysam2 benchmark``: milliseconds per stage for each backend available here.

Every stage runs on the same random inputs of its contract, with B objects and the
memory-token count K the tracker feeds with the preset's memory settings (the
manifest's "opt" K). Prints a table; speed numbers belong in this command's output,
not in tests.
"""
from __future__ import annotations

import statistics
import time

import torch

from ..checkpoint import load_checkpoint
from ..memory.config import MemoryConfig
from ..modeling.build import build_model
from ..modeling.presets import get_preset
from ..modeling.stages import STAGE_NAMES
from . import BackendError, make_backend
from .onnx_export import dynamic_ranges, example_inputs
from .tracking_benchmark import DEFAULT_VARIANTS


def _time(fn, inputs, warmup: int, iters: int) -> float:
    for _ in range(warmup):
        fn(*inputs)
    samples = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn(*inputs)
        samples.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(samples)


def run_benchmark(preset: str, backends: list[str], objects: int = 1, iters: int = 10, warmup: int = 2,
                  checkpoint: str | None = None, engine_dir: str | None = None, device: str = "cpu",
                  threads: int | None = None, log=print) -> dict[str, dict[str, float]]:
    if threads:
        torch.set_num_threads(threads)
    p = get_preset(preset)
    model = build_model(p).to(device)
    if checkpoint:
        load_checkpoint(model, checkpoint, preset=preset)
    memory = MemoryConfig.from_dict(p["memory"])
    k = dynamic_ranges(model, memory)["K"]["opt"]
    inputs = {s: list(example_inputs(model, s, b=objects, n=2, k=k).values()) for s in STAGE_NAMES}
    results: dict[str, dict[str, float]] = {}
    for name in backends:
        try:
            if name in ("onnxruntime", "onnxruntime-int8") and not engine_dir:
                from .auto import cached_export

                export_dir = cached_export(model, preset, precision="int8" if name.endswith("int8") else "fp32",
                                           log=log)
                backend = make_backend("onnxruntime", model, export_dir, device=device)
            elif name.startswith("torch"):
                dtype = {"torch": torch.float32, "torch-fp16": torch.float16, "torch-bf16": torch.bfloat16}[name]
                backend = make_backend("torch", model, device=device, dtype=dtype)
            else:
                backend = make_backend(name, model, engine_dir, device=device)
        except (BackendError, KeyError) as exc:
            log(f"{name}: skipped ({exc})")
            continue
        with torch.inference_mode():
            results[name] = {
                s: _time(getattr(backend, s), [x.to(device) for x in inputs[s]], warmup, iters) for s in STAGE_NAMES
            }
    header = f"{'backend':<14}" + "".join(f"{s:>18}" for s in STAGE_NAMES) + f"{'sum':>10}"
    log(f"preset {preset}, B={objects} object(s), K={k} memory tokens, device {device}, "
        f"{torch.get_num_threads()} threads, median of {iters} runs (ms)")
    log(header)
    for name, row in results.items():
        log(f"{name:<14}" + "".join(f"{row[s]:>18.1f}" for s in STAGE_NAMES) + f"{sum(row.values()):>10.1f}")
    return results


def add_benchmark_parser(subparsers):
    p = subparsers.add_parser(
        "benchmark",
        help="milliseconds per model stage for each backend, or per tracked frame with --tracking (prints a table)",
        description="Without --tracking: time the four stages (image encoder, mask decoder, memory attention, "
        "memory encoder) on random inputs of their contracts, for each backend that can run here, with the "
        "memory-token count the preset's memory settings give. Backends: torch, torch-fp16, torch-bf16, "
        "onnxruntime, onnxruntime-int8 (image encoder convolutions in int8), tensorrt. With --tracking: run the streaming tracker end to end for each --variant on a real "
        "and a generated video with 1 and 5 objects, and print median ms per tracked frame and per stage, side by "
        "side, as ratios to the first variant (see tinysam2_ros/backends/tracking_benchmark.py).",
    )
    p.add_argument("--preset", default="tinysam2", help="model preset (default: tinysam2)")
    p.add_argument("--backends", default="torch,onnxruntime", help="comma-separated (default: torch,onnxruntime)")
    p.add_argument("--objects", help="objects per batch B, comma-separated (default 1; with --tracking 1,5)")
    p.add_argument("--iters", type=int, default=10, help="timed runs per stage (default 10)")
    p.add_argument("--checkpoint", help="weights (timings do not depend on them)")
    p.add_argument("--engine-dir", help="export / engine directory for onnxruntime / tensorrt")
    p.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    p.add_argument("--threads", type=int, help="torch CPU threads")
    g = p.add_argument_group("end-to-end tracking (--tracking)")
    g.add_argument("--tracking", action="store_true", help="time the tracker per frame instead of single stages")
    g.add_argument("--variant", action="append", metavar="PRESET[:KEY=VALUE,...]",
                   help="a preset and its settings (backend, precision, memory.<field>, <section>.<field>); "
                        "repeat for each; the first is the reference of the ratios (default: "
                        + "; ".join(DEFAULT_VARIANTS) + ")")
    g.add_argument("--frames", type=int, default=4, help="timed frames per case, after the prompted frame and "
                                                        "--warmup frames (default 4)")
    g.add_argument("--warmup", type=int, default=1, help="tracked frames left out of the timing (default 1)")
    g.add_argument("--sources", default="real,synthetic", help="real (--video) and/or synthetic (default both)")
    g.add_argument("--video", help="image folder of the real video (default: the shared EdgeTAM fixture's frames)")
    g.add_argument("--plot", help="also save a bar chart (PNG) here")
    p.set_defaults(func=_run_cli)
    return p


def _run_cli(a) -> int:
    if a.threads:
        torch.set_num_threads(a.threads)
    if a.tracking:
        from .tracking_benchmark import run_tracking_benchmark

        objects = [int(x) for x in (a.objects or "1,5").split(",")]
        results = run_tracking_benchmark(a.variant or list(DEFAULT_VARIANTS), objects=objects,
                                         sources=a.sources.split(","), frames=a.frames, warmup=a.warmup,
                                         video=a.video, device=a.device, plot=a.plot)
        return 0 if any(r.ms == r.ms for r in results) else 1
    for n in [int(x) for x in (a.objects or "1").split(",")]:
        run_benchmark(a.preset, a.backends.split(","), n, a.iters, checkpoint=a.checkpoint, engine_dir=a.engine_dir,
                      device=a.device, threads=a.threads)
    return 0
