"""The onnxruntime backend: the exported stage graphs (``tinysam2 export``) in onnxruntime.

``OrtBackend(engine_dir, device)`` opens one ``InferenceSession`` per stage from the
export directory's manifest (checked: files present, sha256, input names and
dtypes). Providers follow ``device`` and what the installed onnxruntime offers:
``cuda`` -> TensorRT EP (when present), CUDA EP, CPU fallback for unsupported
nodes; ``cpu`` -> CPU EP. Asking for ``cuda`` from a build without the CUDA
provider (the ``onnxruntime`` wheel is CPU-only; ``onnxruntime-gpu`` has it) is a
``BackendError``.

Stage methods take and return torch tensors (float32, ``point_labels`` int32) on
the caller's device; data crosses to onnxruntime through host numpy arrays.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from . import BackendError, GraphBackend
from .manifest import STAGE_INPUTS, STAGE_OUTPUTS, Manifest

_ORT_TYPES = {"float32": "tensor(float)", "int32": "tensor(int32)", "float16": "tensor(float16)",
              "int64": "tensor(int64)", "bool": "tensor(bool)"}


def _import_ort():
    try:
        import onnxruntime as ort
    except ImportError as exc:
        raise BackendError(
            "the onnxruntime backend needs the onnxruntime package: pip install onnxruntime "
            "(CPU) or pip install onnxruntime-gpu (CUDA / TensorRT execution providers)"
        ) from exc
    return ort


def choose_providers(device: str, available: list[str]) -> list:
    """Execution providers for ``device`` ("cpu", "cuda", "cuda:N") from ``available``."""
    dev = torch.device(device)
    if dev.type == "cpu":
        return ["CPUExecutionProvider"]
    if dev.type != "cuda":
        raise BackendError(f"the onnxruntime backend runs on cpu or cuda, not {device!r}")
    if "CUDAExecutionProvider" not in available:
        raise BackendError(
            f"device {device!r} needs onnxruntime's CUDAExecutionProvider, but this onnxruntime build only "
            f"offers {', '.join(available) or 'no providers'}; install onnxruntime-gpu (and uninstall the "
            "CPU-only onnxruntime wheel) or use device cpu"
        )
    index = dev.index or 0
    providers: list = []
    if "TensorrtExecutionProvider" in available:
        providers.append(("TensorrtExecutionProvider", {"device_id": index}))
    providers.append(("CUDAExecutionProvider", {"device_id": index}))
    providers.append("CPUExecutionProvider")
    return providers


class OrtBackend(GraphBackend):
    """Runs the four exported stages with onnxruntime."""

    name = "onnxruntime"

    def __init__(self, engine_dir, device: str = "cpu", threads: int | None = None) -> None:
        ort = _import_ort()
        if engine_dir is None:
            raise BackendError("the onnxruntime backend needs engine_dir: a directory written by `tinysam2 export`")
        self.engine_dir = Path(engine_dir)
        self.manifest = Manifest.load(self.engine_dir)
        self.device = torch.device(device)
        self.providers = choose_providers(device, list(ort.get_available_providers()))
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        # The tracker interleaves these graphs with small torch ops; onnxruntime's worker
        # threads spin-wait after each run by default and starve them
        # (docs/efficiency-backends.md). TINYSAM2_ORT_SPIN=1 restores onnxruntime's default.
        spin = os.environ.get("TINYSAM2_ORT_SPIN", "0") == "1"
        opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
        if threads:
            opts.intra_op_num_threads = int(threads)
        self.sessions = {}
        self._dtypes: dict[str, dict[str, np.dtype]] = {}
        for name, entry in self.manifest.stages.items():
            path = self.engine_dir / entry["file"]
            try:
                sess = ort.InferenceSession(str(path), opts, providers=self.providers)
            except Exception as exc:  # onnxruntime raises its own exception types
                raise BackendError(f"onnxruntime cannot load {path}: {exc}") from exc
            self._validate(name, entry, sess)
            self.sessions[name] = sess
            self._dtypes[name] = {spec["name"]: np.dtype(spec["dtype"]) for spec in entry["inputs"]}

    @staticmethod
    def _validate(stage: str, entry: dict, sess) -> None:
        got = [(i.name, i.type) for i in sess.get_inputs()]
        want = [(s["name"], _ORT_TYPES[s["dtype"]]) for s in entry["inputs"]]
        if [g[0] for g in got] != list(STAGE_INPUTS[stage]) or got != want:
            raise BackendError(
                f"{entry['file']} does not match the {stage} contract: graph inputs {got}, manifest {want}; "
                "re-run `tinysam2 export`"
            )
        outs = [o.name for o in sess.get_outputs()]
        if outs != list(STAGE_OUTPUTS[stage]):
            raise BackendError(f"{entry['file']}: graph outputs {outs}, expected {list(STAGE_OUTPUTS[stage])}")

    def check_model(self, model) -> None:
        """Raise ``BackendError`` when ``model``'s geometry differs from the exported one."""
        self.manifest.check_model(model)

    def _run(self, stage: str, *args: torch.Tensor):
        dtypes = self._dtypes[stage]
        feeds = {}
        for name, t in zip(STAGE_INPUTS[stage], args):
            arr = t.detach().to("cpu").numpy() if torch.is_tensor(t) else np.asarray(t)
            feeds[name] = np.ascontiguousarray(arr, dtype=dtypes[name])
        outs = self.sessions[stage].run(None, feeds)
        device = args[0].device if torch.is_tensor(args[0]) else self.device
        return tuple(torch.from_numpy(o).to(device) for o in outs)
