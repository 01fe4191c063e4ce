"""int8 for onnxruntime: the image encoder's convolutions, statically quantized.

Once memory attention is routed and sparse, the image encoder is about half of a CPU
frame (RepViT-M1 at 1024 px, docs/efficiency-backends.md). ``quantize_export(dir)``
replaces the export's image-encoder graph with a QDQ int8 graph
(``onnxruntime.quantization.quantize_static``: int8 weights per output channel, uint8
activations whose ranges are calibrated on frames), so onnxruntime runs its
convolutions with int8 kernels (VNNI where the CPU has them), and rewrites the manifest
(``precision: "int8"``, new sha256). The other stages stay fp32: dynamically quantized
MatMuls (no calibration) were measured slower there, and they hold the memory path.

Calibration frames: a generated video (``tinysam2 synth``'s scenes, seeded, so every
machine builds the same graph) unless the caller passes its own frames. What int8 costs
in J&F and gains in time is in docs/efficiency-backends.md with its commands.
"""
from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

import numpy as np

from . import BackendError
from .manifest import Manifest, sha256_file

QUANTIZED_STAGES = ("image_encoder",)
# convolutions only: with the adds and muls between them quantized too (GELU, squeeze-
# excite, the demo model's output normalisation) the encoder was 0.1 faster but the demo
# model's held-out J&F fell from 0.69 to 0.15 (measured while choosing this list)
QUANTIZED_OPS = ("Conv",)
CALIBRATION_FRAMES = 8


def calibration_frames(count: int = CALIBRATION_FRAMES, seed: int = 0) -> list[np.ndarray]:
    """``count`` RGB frames of a generated video (deterministic): the tracking benchmark's."""
    from .tracking_benchmark import synthetic_frames

    return synthetic_frames(count, seed=seed)[0]


def quantize_export(directory: str | Path, frames: list[np.ndarray] | None = None) -> Manifest:
    """Quantize the image encoder of the export in ``directory`` (calibrated on ``frames``,
    RGB uint8, default ``calibration_frames()``) and mark the manifest int8."""
    try:
        from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
        from onnxruntime.quantization.shape_inference import quant_pre_process
    except ImportError as exc:
        raise BackendError("int8 needs onnxruntime's quantization tools (pip install onnxruntime onnx)") from exc
    from ..tracking.preprocess import preprocess_rgb

    manifest = Manifest.load(directory)
    if manifest.precision != "fp32":
        raise BackendError(f"{directory} is already {manifest.precision}")
    frames = calibration_frames() if frames is None else frames
    if not frames:
        raise BackendError("int8 calibration needs at least one frame")
    images = [preprocess_rgb(f, manifest.image_size).numpy() for f in frames]

    class Frames(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter(images)

        def get_next(self):
            x = next(self.it, None)
            return None if x is None else {"images": x}

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # the quantizer's advice lines
    try:
        for stage in QUANTIZED_STAGES:
            src = manifest.path(stage)
            with tempfile.TemporaryDirectory(dir=src.parent) as tmp:
                pre, out = Path(tmp) / "pre.onnx", Path(tmp) / "int8.onnx"
                # shape inference + graph cleanup the static quantizer expects
                quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
                quantize_static(str(pre), str(out), Frames(), quant_format=QuantFormat.QDQ, per_channel=True,
                                activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                                op_types_to_quantize=list(QUANTIZED_OPS))
                os.replace(out, src)
            manifest.stages[stage]["sha256"] = sha256_file(src)
    finally:
        root.setLevel(level)
    manifest.precision = "int8"
    manifest.save(directory)
    return manifest
