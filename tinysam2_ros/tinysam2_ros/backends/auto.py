"""``backend: auto`` and the export cache: the fastest backend available, without an export step.

Order: TensorRT engines when ``engine_dir`` holds them and TensorRT and a CUDA GPU are
here; else onnxruntime (CPU, or CUDA when its CUDA provider is installed) with the
stages of ``engine_dir``, or exported once into the cache and reused on every later
start; else torch. Every choice is logged with its reason.

The cache lives in ``$XDG_CACHE_HOME/tinysam2_ros/<key>`` (``~/.cache`` without
``XDG_CACHE_HOME``). ``key`` hashes what the graphs depend on: the preset, the
weights (sha256 of the state dict), the precision, the manifest format, the torch /
onnx versions and the source of the exported code (``CODE_FILES``). Memory settings only set the
manifest's TensorRT ranges, not the graphs, so they are not part of the key. A
corrupt or half-written entry is re-exported with a warning; exports go to a
temporary directory renamed into place, so a killed export never leaves a
half-written entry under its key.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import torch

from . import BackendError
from .manifest import FORMAT, Manifest

# sources whose change may change an exported graph (not the benchmarks, CLIs, runtimes)
CODE_FILES = ("modeling/*.py", "backends/onnx_export.py", "backends/precision.py", "backends/manifest.py")


def cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "tinysam2_ros"


def weights_sha256(model) -> str:
    """sha256 over the state dict (names, dtypes, shapes, bytes) in name order."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().to("cpu").contiguous().reshape(-1)
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def _code_sha256() -> str:
    h = hashlib.sha256()
    package = Path(__file__).resolve().parents[1]
    for pattern in CODE_FILES:
        for path in sorted(package.glob(pattern)):
            h.update(path.name.encode())
            h.update(path.read_bytes())
    return h.hexdigest()


def export_key(model, preset_name: str, precision: str = "fp32") -> str:
    """16 hex digits naming a cached export (see the module docstring)."""
    import onnx

    payload = json.dumps({
        "preset": preset_name, "weights": weights_sha256(model), "precision": precision, "format": FORMAT,
        "image_size": int(model.image_size), "torch": torch.__version__, "onnx": onnx.__version__,
        "code": _code_sha256(),
    }, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def cached_export(model, preset_name: str, memory=None, precision: str = "fp32", cache_dir: str | Path | None = None,
                  log=print) -> Path:
    """The export directory of ``model`` in the cache: reused when its manifest validates
    (sha256 of every graph included), exported (again, with a warning if it was corrupt)
    otherwise."""
    from .onnx_export import export_stages

    root = Path(cache_dir) if cache_dir is not None else cache_root()
    key = export_key(model, preset_name, precision)
    target = root / key
    if target.exists():
        try:
            Manifest.load(target)
            log(f"onnxruntime: reusing the cached export {target}")
            return target
        except BackendError as exc:
            log(f"warning: cached export {target} is unusable ({exc}); exporting again")
            shutil.rmtree(target, ignore_errors=True)
    root.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    log(f"onnxruntime: exporting {preset_name} once into the cache {target} (reused on the next start)")
    tmp = Path(tempfile.mkdtemp(prefix=f".{key}.", dir=root))
    try:
        export_stages(model, tmp, preset_name, memory=memory, check_ops=False)
        if precision == "int8":
            from .precision import quantize_export

            quantize_export(tmp)
        try:
            os.replace(tmp, target)
        except OSError:  # another process finished the same export first: keep theirs
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log(f"onnxruntime: export took {time.perf_counter() - t0:.1f} s")
    return target


def _tensorrt_reason(engine_dir) -> str | None:
    """None when TensorRT engines can run here, else why not."""
    if not engine_dir:
        return "no engine_dir"
    if not (Path(engine_dir) / "engines.json").is_file():
        return f"no engines.json in {engine_dir}"
    from .engine_builder import import_tensorrt, require_cuda_gpu

    try:
        import_tensorrt()
        require_cuda_gpu()
    except BackendError as exc:
        return str(exc).split(" (")[0].split(". ")[0]
    return None


def _onnxruntime_reason(device: str) -> str | None:
    """None when onnxruntime (and onnx, to export) can run the stages on ``device``."""
    try:
        import onnx  # noqa: F401
        import onnxruntime as ort
    except ImportError as exc:
        return f"{exc.name} is not installed"
    if torch.device(device).type == "cuda" and "CUDAExecutionProvider" not in ort.get_available_providers():
        return "this onnxruntime has no CUDA provider (torch on the GPU is faster than onnxruntime on the CPU)"
    if torch.device(device).type not in ("cpu", "cuda"):
        return f"onnxruntime does not run on {device}"
    return None


def resolve_auto(engine_dir, device: str) -> tuple[str, str]:
    """``(backend, reason)`` for ``backend: auto``."""
    trt_why = _tensorrt_reason(engine_dir)
    if trt_why is None:
        return "tensorrt", f"TensorRT engines in {engine_dir}"
    ort_why = _onnxruntime_reason(device)
    if ort_why is None:
        return "onnxruntime", f"no TensorRT ({trt_why}); onnxruntime is installed"
    return "torch", f"no TensorRT ({trt_why}); no onnxruntime ({ort_why})"
