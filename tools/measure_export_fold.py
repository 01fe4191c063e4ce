"""Image-encoder stage through onnxruntime with and without the export's high-res fold.

`ImageEncoderStage.fold_high_res` (tinysam2_ros/modeling/stages.py) folds the neck's
lateral conv of the stride-4 and stride-8 levels into the decoder's conv_s0 / conv_s1.
This exports the stage of a preset (random weights: speed does not depend on them) both
ways and times them alternately in one process, so the ratio is measured under the same
load. Prints a table; the figures in docs/efficiency-backends.md come from it.

    python tools/measure_export_fold.py [--preset tinysam2] [--rounds 5] [--iters 5]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tinysam2_ros"))

from tinysam2_ros.backends.onnx_export import DYNAMIC_AXES, _export_one, _inference_copy  # noqa: E402
from tinysam2_ros.modeling.build import build_model  # noqa: E402
from tinysam2_ros.modeling.stages import build_stages  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="tinysam2")
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds (default 5)")
    parser.add_argument("--iters", type=int, default=5, help="timed runs per graph per round (default 5)")
    args = parser.parse_args()
    import onnxruntime as ort

    torch.manual_seed(0)
    model = _inference_copy(build_model(args.preset))
    images = torch.randn(1, 3, model.image_size, model.image_size)
    sessions, outputs = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in ("unfolded", "folded"):
            stage = build_stages(model)["image_encoder"]
            if name == "folded" and not stage.fold_high_res():
                print(f"{args.preset}: its neck cannot be folded")
                return 1
            path = Path(tmp) / f"{name}.onnx"
            _export_one(stage, "image_encoder", {"images": images}, path, DYNAMIC_AXES["image_encoder"], 17)
            opts = ort.SessionOptions()
            opts.add_session_config_entry("session.intra_op.allow_spinning", "0")  # as the backend runs it
            sessions[name] = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
            feeds = {"images": images.numpy()}
            outputs[name] = sessions[name].run(None, feeds)
        times: dict[str, list[float]] = {name: [] for name in sessions}
        for _ in range(args.rounds):
            for name, session in sessions.items():
                for _ in range(args.iters):
                    t0 = time.perf_counter()
                    session.run(None, feeds)
                    times[name].append((time.perf_counter() - t0) * 1e3)
    diff = max(float(np.abs(a - b).max()) for a, b in zip(outputs["unfolded"], outputs["folded"]))
    print(f"image encoder stage of {args.preset} at {model.image_size} px, onnxruntime CPU, "
          f"{args.rounds} alternating rounds x {args.iters} runs; max |folded - unfolded| = {diff:.1e}")
    print(f"{'graph':<10}{'median ms':>11}{'min ms':>9}{'ratio':>8}")
    base = statistics.median(times["unfolded"])
    for name, samples in times.items():
        med = statistics.median(samples)
        print(f"{name:<10}{med:>11.1f}{min(samples):>9.1f}{med / base:>8.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
