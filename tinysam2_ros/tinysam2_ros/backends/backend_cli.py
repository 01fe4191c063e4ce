"""``tinysam2 export``: the four stages to ONNX + manifest, with the TensorRT op check.

Wired into ``tinysam2_ros/cli.py`` with ``add_export_parser(subparsers)``; the parser's
default ``func`` is :func:`run_export`.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_export_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "export",
        help="export the model stages to ONNX (for the onnxruntime and tensorrt backends)",
        description="Export image encoder, mask decoder, memory attention and memory encoder to OUT/<stage>.onnx "
        "with dynamic objects (B), prompt points (N), memory-attention query tokens (Nq) and memory tokens (K), write OUT/manifest.json (shapes, "
        "dynamic ranges from the preset's memory settings, sha256) and check every graph against the operators "
        "the TensorRT 10 ONNX parser supports. Prints one row per stage; exit 1 if a graph has an unsupported "
        "operator or (when onnxruntime is installed) differs from PyTorch beyond --tol.",
    )
    p.add_argument("--preset", default="tinysam2", help="model preset (default: tinysam2)")
    p.add_argument("--checkpoint", help="weights (.pt or .safetensors); without one the weights are random")
    p.add_argument("--out", required=True, help="output directory (created if needed)")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset (default 17)")
    p.add_argument("--max-objects", type=int, default=16, help="largest object batch B (default 16)")
    p.add_argument("--max-points", type=int, default=16, help="largest number of clicks; N max = this + 2 (box)")
    p.add_argument("--opt-queries", type=int,
                   help="memory-attention query tokens TensorRT tunes for (axis Nq, 1..h*w; default h*w, dense)")
    p.add_argument("--skip-parity", action="store_true", help="do not compare onnxruntime with PyTorch")
    p.add_argument("--tol", type=float, default=1e-3, help="max |diff| onnxruntime vs PyTorch (default 1e-3)")
    p.add_argument("--int8-calibration", metavar="DIR",
                   help="then quantize the image encoder's convolutions to int8 (onnxruntime only, the node's "
                        "precision int8) calibrated on the .jpg/.png frames in DIR (at most 64, evenly spaced): "
                        "frames of your own camera; then run the node with engine_dir set to --out")
    g = p.add_argument_group("memory settings the K range is derived from (defaults from the preset)")
    g.add_argument("--memory", dest="compression", choices=["off", "tinysam2"], help="memory compression")
    g.add_argument("--pool-factor", type=int, help="average-pooling factor of memory token grids")
    g.add_argument("--token-budget", type=int, help="spatial memory tokens per object (0 = no limit)")
    g.add_argument("--num-slots", type=int, help="non-prompted memory frames per object")
    g.add_argument("--max-cond-frames", type=int, help="prompted frames kept per object")
    p.set_defaults(func=run_export)
    return p


def _memory_settings(preset: dict, args: argparse.Namespace) -> dict:
    overrides = {k: getattr(args, k) for k in ("compression", "pool_factor", "token_budget", "num_slots",
                                               "max_cond_frames") if getattr(args, k, None) is not None}
    memory = {**preset.get("memory", {}), **overrides}
    if memory.get("compression") == "off":  # as TrackerConfig.from_preset: "off" drops the preset's knobs
        memory = {"compression": "off", **{k: v for k, v in overrides.items() if k != "compression"}}
    return memory


MAX_CALIBRATION_FRAMES = 64


def _calibration_frames(directory: Path) -> list:
    """RGB frames of the images in ``directory`` (at most ``MAX_CALIBRATION_FRAMES``, evenly spaced)."""
    import cv2
    import numpy as np

    from ..evaluation.davis import IMAGE_SUFFIXES

    if not directory.is_dir():
        raise ValueError(f"{directory} is not a directory")
    files = sorted(f for f in directory.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ValueError(f"no .jpg / .png frames in {directory}")
    pick = np.linspace(0, len(files) - 1, min(len(files), MAX_CALIBRATION_FRAMES)).round().astype(int)
    frames = []
    for i in sorted(set(pick.tolist())):
        bgr = cv2.imread(str(files[i]), cv2.IMREAD_COLOR)
        if bgr is None:
            raise ValueError(f"cannot read {files[i]}")
        frames.append(np.ascontiguousarray(bgr[..., ::-1]))
    return frames


def _size(path: Path) -> str:
    n = path.stat().st_size
    return f"{n / 2**20:.1f} MiB" if n >= 2**20 else f"{n / 2**10:.0f} KiB"


def run_export(args: argparse.Namespace) -> int:
    from . import BackendError
    from ..checkpoint import CheckpointError, load_checkpoint
    from ..memory.config import MemoryConfig
    from ..modeling.build import build_model
    from ..modeling.presets import get_preset
    from .manifest import Manifest
    from .onnx_export import export_stages
    from .opcheck import UnsupportedOperatorError

    def fail(msg: str, code: int = 2) -> int:
        print(f"tinysam2 export: {msg}", file=sys.stderr)
        return code

    try:
        preset = get_preset(args.preset)
        memory = MemoryConfig.from_dict(_memory_settings(preset, args))
    except (KeyError, ValueError) as exc:
        return fail(str(exc).strip("'\""))
    try:
        import onnx  # noqa: F401
    except ImportError:
        return fail("exporting needs the onnx package: pip install onnx")
    model = build_model(preset)
    if args.checkpoint:
        try:
            report = load_checkpoint(model, args.checkpoint, preset=args.preset)
        except CheckpointError as exc:
            return fail(str(exc))
        print(f"preset {args.preset}: {report.loaded} tensors from {args.checkpoint}")
    else:
        print(f"preset {args.preset}: no checkpoint, random weights (graph structure only)")
    out = Path(args.out)
    try:
        export_stages(model, out, args.preset, opset=args.opset, max_objects=args.max_objects,
                      max_points=args.max_points, memory=memory, opt_queries=args.opt_queries)
        op_check = "ok (TensorRT 10 ONNX parser operators)"
        code = 0
    except UnsupportedOperatorError as exc:
        op_check, code = f"FAILED\n{exc}", 1
    except (ValueError, BackendError) as exc:
        return fail(str(exc))
    manifest = Manifest.load(out)

    parity: dict[str, dict[str, float]] = {}
    if not args.skip_parity:
        try:
            from .onnx_export import compare_with_torch

            parity = compare_with_torch(model, out)
        except BackendError as exc:  # onnxruntime not installed
            print(f"parity check skipped: {exc}")

    rows = [("stage", "file", "size", "dynamic axes (min/opt/max)", "max |ort - torch|")]
    for name, entry in manifest.stages.items():
        dyn = ", ".join(f"{k} {r['min']}/{r['opt']}/{r['max']}" for k, r in entry["dynamic"].items()) or "fixed"
        diff = f"{max(parity[name].values()):.2e}" if name in parity else "-"
        rows.append((name, entry["file"], _size(out / entry["file"]), dyn, diff))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for i, r in enumerate(rows):
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
        if i == 0:
            print("  ".join("-" * w for w in widths))
    if args.int8_calibration:
        from .precision import quantize_export

        try:
            frames = _calibration_frames(Path(args.int8_calibration))
            quantize_export(out, frames)
        except (OSError, ValueError, BackendError) as exc:
            return fail(f"int8: {exc}")
        print(f"int8: image encoder quantized, calibrated on {len(frames)} frames of {args.int8_calibration} "
              "(parity above is of the fp32 graphs)")
    print(f"memory settings for K: {memory.to_dict()}")
    print(f"manifest: {out / 'manifest.json'}")
    print(f"operator check: {op_check}")
    worst = max((d for diffs in parity.values() for d in diffs.values()), default=0.0)
    if parity:
        print(f"parity: max |onnxruntime - torch| = {worst:.2e} (tolerance {args.tol:g})")
        if worst > args.tol:
            code = max(code, 1)
    return code
