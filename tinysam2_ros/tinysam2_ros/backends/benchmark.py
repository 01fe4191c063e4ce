"""``tinysam2 benchmark``: milliseconds per stage for each backend available here.

Every stage runs on the same random inputs of its contract, with B objects and the
memory-token count K the tracker feeds with the preset's memory settings (the
manifest's "opt" K). Prints a table; speed numbers belong in this command's output,
not in tests.
"""
from __future__ import annotations

import statistics
import tempfile
import time

import torch

from ..checkpoint import load_checkpoint
from ..memory.config import MemoryConfig
from ..modeling.build import build_model
from ..modeling.presets import get_preset
from ..modeling.stages import STAGE_NAMES
from . import BackendError, make_backend
from .onnx_export import dynamic_ranges, example_inputs, export_stages


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
            if name == "onnxruntime" and not engine_dir:
                export_dir = tempfile.mkdtemp(prefix="tinysam2_bench_")
                export_stages(model, export_dir, preset)
                backend = make_backend(name, model, export_dir, device=device)
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
        help="milliseconds per model stage for each available backend (prints a table)",
        description="Time the four stages (image encoder, mask decoder, memory attention, memory encoder) on random "
        "inputs of their contracts, for each backend that can run here, with the memory-token count the preset's "
        "memory settings give. Backends: torch, torch-fp16, torch-bf16, onnxruntime, tensorrt.",
    )
    p.add_argument("--preset", default="tinysam2", help="model preset (default: tinysam2)")
    p.add_argument("--backends", default="torch,onnxruntime", help="comma-separated (default: torch,onnxruntime)")
    p.add_argument("--objects", type=int, default=1, help="objects per batch B (default 1)")
    p.add_argument("--iters", type=int, default=10, help="timed runs per stage (default 10)")
    p.add_argument("--checkpoint", help="weights (timings do not depend on them)")
    p.add_argument("--engine-dir", help="export / engine directory for onnxruntime / tensorrt")
    p.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.set_defaults(func=lambda a: (run_benchmark(a.preset, a.backends.split(","), a.objects, a.iters,
                                                 checkpoint=a.checkpoint, engine_dir=a.engine_dir, device=a.device,
                                                 threads=a.threads), 0)[1])
    return p
