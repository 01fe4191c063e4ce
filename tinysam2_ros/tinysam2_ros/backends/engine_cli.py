"""``tinysam2 build-engine``: TensorRT engines from a ``tinysam2 export`` directory.

Wired into ``tinysam2_ros/cli.py`` with ``add_build_engine_parser(subparsers)``; the
parser's default ``func`` is :func:`run_build_engine`.
"""
from __future__ import annotations

import argparse
import sys
import textwrap
from pathlib import Path

DESCRIPTION = (
    "Build one TensorRT engine per model stage from the ONNX graphs and manifest.json of `tinysam2 export`, "
    "on the machine that will run them (engines are specific to the GPU and the TensorRT version). "
    "FP16 by default, with normalization, softmax, reduce, pow, sqrt, exp, log and reciprocal layers kept in FP32; one "
    "optimization profile from the manifest's dynamic ranges (objects B, points N, memory tokens K). "
    "Writes DIR/<stage>.<key>.plan, DIR/<stage>.<key>.json (what the engine was built from and for), "
    "DIR/engines.json (what the tensorrt backend loads) and DIR/timing.cache. A stage whose engine was "
    "already built from the same graph, TensorRT version, GPU, precision and ranges is reused."
)

EPILOG = """\
examples:
  tinysam2 export --preset tinysam2 --checkpoint tinysam2.safetensors --out ~/tinysam2_engine
  tinysam2 build-engine ~/tinysam2_engine
then run the node with backend tensorrt, device cuda:0 and engine_dir ~/tinysam2_engine
(engine/README.md in the repository has the steps for a Jetson).

needs TensorRT 10 (`import tensorrt`) and a CUDA GPU visible to PyTorch. On a Jetson:
JetPack 6.1 or later, `sudo apt install python3-libnvinfer`; on x86_64: `pip install tensorrt`.
Rebuild (this command again) after every JetPack / TensorRT upgrade.
"""


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def add_build_engine_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "build-engine",
        help="build TensorRT engines from an export directory (run on the target GPU, e.g. the Jetson)",
        description=textwrap.fill(DESCRIPTION, 88),
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("onnx_dir", metavar="ONNX_DIR", help="directory written by `tinysam2 export` (manifest.json + *.onnx)")
    p.add_argument("--out", metavar="DIR", help="engine directory (default: ONNX_DIR, so one engine_dir serves "
                                                "the onnxruntime and tensorrt backends)")
    p.add_argument("--fp32", action="store_true", help="build FP32 engines, TF32 off (default: FP16 with sensitive layers in FP32)")
    p.add_argument("--workspace-gb", type=_positive_float, default=2.0, metavar="GB",
                   help="TensorRT builder workspace limit in GiB (default 2; lower it on small Jetsons if the "
                        "build runs out of memory)")
    p.add_argument("--timing-cache", metavar="FILE", help="timing cache file (default: DIR/timing.cache)")
    p.add_argument("--force", action="store_true", help="rebuild every engine even if a matching one exists")
    p.set_defaults(func=run_build_engine)
    return p


def run_build_engine(args: argparse.Namespace) -> int:
    from . import BackendError
    from .engine_builder import EngineMeta, build_engines, meta_path

    out = Path(args.out) if args.out else Path(args.onnx_dir)
    try:
        plans = build_engines(args.onnx_dir, out, fp16=not args.fp32, workspace_gb=args.workspace_gb,
                              timing_cache=args.timing_cache, force=args.force)
    except BackendError as exc:
        print(f"tinysam2 build-engine: {exc}", file=sys.stderr)
        return 2
    for plan in plans:
        meta = EngineMeta.read(meta_path(plan))
        size = plan.stat().st_size / 2**20
        precision = f"fp16 ({meta.fp32_layers} layers fp32)" if meta.fp16 else "fp32"
        print(f"{meta.stage:<17} {plan.name}  {size:.1f} MiB  {precision}  built {meta.built_at}")
    if plans:
        meta = EngineMeta.read(meta_path(plans[0]))
        print(f"TensorRT {meta.trt_version} on {meta.gpu_name}")
    print(f"engine_dir: {out.resolve()}  (with backend tensorrt)")
    return 0
