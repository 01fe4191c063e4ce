"""int8 graphs for onnxruntime: dynamic quantization of an export directory.

``quantize_export(dir)`` replaces every stage graph with its dynamically quantized
version (``onnxruntime.quantization.quantize_dynamic``: int8 weights of MatMul, and
activations quantized per call from their observed range, so no calibration data is
needed) and rewrites the manifest (``precision: "int8"``, new sha256). What it costs
in accuracy and gains in time is measured by ``tinysam2 benchmark --precision`` and
written in docs/efficiency-backends.md.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

from . import BackendError
from .manifest import Manifest, sha256_file

QUANTIZED_OPS = ("MatMul",)  # ConvInteger has no fast CPU kernel in onnxruntime: convolutions stay fp32


def quantize_export(directory: str | Path, op_types: tuple[str, ...] = QUANTIZED_OPS) -> Manifest:
    try:
        from onnxruntime.quantization import QuantType, quantize_dynamic
    except ImportError as exc:
        raise BackendError("int8 needs onnxruntime's quantization tools (pip install onnxruntime onnx)") from exc
    manifest = Manifest.load(directory)
    if manifest.precision != "fp32":
        raise BackendError(f"{directory} is already {manifest.precision}")
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # quantize_dynamic's advice to pre-process is for static quantization
    try:
        for stage, entry in manifest.stages.items():
            src = manifest.path(stage)
            tmp = src.with_name(src.stem + ".int8.onnx")
            quantize_dynamic(str(src), str(tmp), weight_type=QuantType.QInt8, op_types_to_quantize=list(op_types))
            os.replace(tmp, src)
            entry["sha256"] = sha256_file(src)
    finally:
        root.setLevel(level)
    manifest.precision = "int8"
    manifest.save(directory)
    return manifest
