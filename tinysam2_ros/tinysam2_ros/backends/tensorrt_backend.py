"""The TensorRT backend: the four stage engines of ``tinysam2 build-engine``.

``TrtBackend(engine_dir, device="cuda:0")`` reads ``<engine_dir>/engines.json`` (written
by :func:`engine_builder.build_engines`), checks every engine's metadata against the
running TensorRT version and GPU (a plan only loads with the TensorRT that built it,
and is tuned for the GPU it was built on), deserializes the plans and keeps one
execution context per stage.

Stage methods take torch tensors and return torch CUDA tensors on ``device``: inputs
are moved / cast to what the engine expects (float32, ``point_labels`` int32) and made
contiguous, outputs are allocated with torch, and the engine runs on the backend's own
``torch.cuda.Stream`` (``execute_async_v3(stream.cuda_stream)``), ordered after the
caller's current stream and before it again, so results can be used right away on the
caller's stream without an explicit synchronisation.

``tensorrt`` is imported when a backend is created; without it ``BackendError`` says how
to install it. :func:`check_engine_meta` (the version / GPU check) and
:func:`torch_dtype` (TensorRT -> torch dtypes) are plain functions, tested without
TensorRT.
"""
from __future__ import annotations

from pathlib import Path

import torch

from . import BackendError, GraphBackend
from .manifest import STAGE_INPUTS, STAGE_OUTPUTS
from .engine_builder import (
    EngineMeta,
    check_engine_meta,
    import_tensorrt,
    meta_path,
    read_index,
    require_cuda_gpu,
)

__all__ = ["TrtBackend", "check_engine_meta", "torch_dtype", "STAGE_INPUTS", "STAGE_OUTPUTS"]

# trt.DataType member name -> torch dtype
_TORCH_DTYPES: dict[str, torch.dtype] = {
    "FLOAT": torch.float32,
    "HALF": torch.float16,
    "BF16": torch.bfloat16,
    "INT8": torch.int8,
    "UINT8": torch.uint8,
    "INT32": torch.int32,
    "INT64": torch.int64,
    "BOOL": torch.bool,
    "FP8": torch.float8_e4m3fn,
}


def torch_dtype(trt_dtype) -> torch.dtype:
    """The torch dtype of a ``trt.DataType`` (or of its member name, e.g. ``"HALF"``)."""
    name = trt_dtype if isinstance(trt_dtype, str) else trt_dtype.name
    try:
        return _TORCH_DTYPES[name]
    except KeyError:
        raise BackendError(f"TensorRT data type {name} has no torch equivalent here") from None


class _StageEngine:
    """One deserialized engine + execution context, with its I/O names and dtypes."""

    def __init__(self, trt, runtime, stage: str, plan: Path) -> None:
        self.stage = stage
        engine = runtime.deserialize_cuda_engine(plan.read_bytes())
        if engine is None:
            raise BackendError(f"TensorRT could not deserialize {plan}; rebuild with `tinysam2 build-engine`")
        self.engine = engine
        self.context = engine.create_execution_context()
        if self.context is None:
            raise BackendError(f"could not create an execution context for {plan} (out of GPU memory?)")
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        if set(inputs) != set(STAGE_INPUTS[stage]) or set(outputs) != set(STAGE_OUTPUTS[stage]):
            raise BackendError(
                f"{plan.name} does not match the {stage} contract: engine inputs {inputs}, outputs {outputs}; "
                f"expected {list(STAGE_INPUTS[stage])} -> {list(STAGE_OUTPUTS[stage])}"
            )
        self.dtypes = {n: torch_dtype(engine.get_tensor_dtype(n)) for n in names}

    def _profile(self, name: str) -> str:
        try:
            lo, _, hi = self.engine.get_tensor_profile_shape(name, 0)
            return f"min {tuple(lo)} max {tuple(hi)}"
        except Exception:  # a fixed-shape input has no profile
            return f"fixed {tuple(self.engine.get_tensor_shape(name))}"

    def run(self, device: torch.device, stream: torch.cuda.Stream, args) -> tuple[torch.Tensor, ...]:
        ctx = self.context
        caller = torch.cuda.current_stream(device)
        stream.wait_stream(caller)  # inputs written on the caller's stream are ready
        with torch.cuda.stream(stream):
            feeds = []
            for name, t in zip(STAGE_INPUTS[self.stage], args):
                t = torch.as_tensor(t).to(device=device, dtype=self.dtypes[name], non_blocking=True).contiguous()
                if not ctx.set_input_shape(name, tuple(t.shape)):
                    raise BackendError(
                        f"{self.stage}: input {name} of shape {tuple(t.shape)} is outside the engine's profile "
                        f"{self._profile(name)}; re-export / rebuild with larger ranges"
                    )
                ctx.set_tensor_address(name, t.data_ptr())
                feeds.append(t)
            outs = []
            for name in STAGE_OUTPUTS[self.stage]:
                shape = tuple(ctx.get_tensor_shape(name))
                if any(d < 0 for d in shape):
                    raise BackendError(f"{self.stage}: TensorRT could not resolve the shape of {name} ({shape})")
                out = torch.empty(shape, dtype=self.dtypes[name], device=device)
                ctx.set_tensor_address(name, out.data_ptr())
                outs.append(out)
            if not ctx.execute_async_v3(stream.cuda_stream):
                raise BackendError(f"{self.stage}: TensorRT execution failed (see the TensorRT log above)")
        caller.wait_stream(stream)  # the caller sees finished outputs
        for t in feeds:
            t.record_stream(stream)  # keep converted inputs alive until the engine has read them
        for out in outs:
            out.record_stream(caller)
        return tuple(outs)


class TrtBackend(GraphBackend):
    """Runs the four stages as TensorRT engines on one CUDA device."""

    name = "tensorrt"

    def __init__(self, engine_dir, device: str = "cuda:0") -> None:
        trt = import_tensorrt(require_major=None)  # the metadata check below pins the exact version
        dev = torch.device(device)
        if dev.type != "cuda":
            raise BackendError(f"the tensorrt backend runs on a CUDA device (e.g. cuda:0), not {device!r}")
        self.device = torch.device("cuda", dev.index if dev.index is not None else 0)
        gpu = require_cuda_gpu(self.device.index)
        if engine_dir is None:
            raise BackendError("the tensorrt backend needs engine_dir: the directory of `tinysam2 build-engine`")
        self.engine_dir = Path(engine_dir)
        index = read_index(self.engine_dir)
        self.model_info = index.get("model", {})
        missing = [s for s in STAGE_INPUTS if s not in index["stages"]]
        if missing:
            raise BackendError(f"{self.engine_dir / 'engines.json'} has no engine for {', '.join(missing)}; "
                               "rebuild with `tinysam2 build-engine`")
        version = str(trt.__version__)
        plans, self.meta = {}, {}
        for stage in STAGE_INPUTS:
            plan = self.engine_dir / index["stages"][stage]
            if not plan.is_file():
                raise BackendError(f"engine {plan} listed in engines.json is missing; rebuild with `tinysam2 build-engine`")
            meta = EngineMeta.read(meta_path(plan))
            try:
                check_engine_meta(meta, version, gpu)
            except BackendError as exc:
                rebuild = f"tinysam2 build-engine {index.get('onnx_dir', 'ONNX_DIR')} --out {self.engine_dir} --force"
                raise BackendError(f"{plan}: {exc} (here: `{rebuild}`)") from None
            plans[stage], self.meta[stage] = plan, meta

        from .engine_builder import _make_logger

        self._logger = _make_logger(trt)  # must outlive runtime and engines
        with torch.cuda.device(self.device):
            torch.cuda.init()
            self._runtime = trt.Runtime(self._logger)
            self.stream = torch.cuda.Stream(self.device)
            self.engines = {stage: _StageEngine(trt, self._runtime, stage, plan) for stage, plan in plans.items()}

    def check_model(self, model) -> None:
        """Raise ``BackendError`` when ``model``'s geometry differs from the exported one."""
        for key in ("image_size", "hidden_dim", "mem_dim"):
            want = self.model_info.get(key)
            if want is not None and int(getattr(model, key)) != int(want):
                raise BackendError(
                    f"the engines in {self.engine_dir} were built for {key}={want} (preset "
                    f"{self.model_info.get('preset')!r}), the model has {key}={getattr(model, key)}"
                )

    def _run(self, stage: str, *args):
        with torch.cuda.device(self.device):
            return self.engines[stage].run(self.device, self.stream, args)
