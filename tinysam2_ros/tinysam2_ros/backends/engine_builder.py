"""TensorRT engines from the exported ONNX stages (``tinysam2 build-engine``).

``build_engines(onnx_dir, out_dir)`` reads the export directory's ``manifest.json``
(``tinysam2 export``, :class:`manifest.Manifest`) and builds one serialized engine (plan) per stage with the
TensorRT 10 Python API: ``trt.OnnxParser`` -> FP16 with numerically sensitive layers
kept in FP32 -> one optimization profile from the manifest's dynamic ranges -> shared
timing cache -> ``builder.build_serialized_network``.

An engine directory (by default the export directory itself, so that one
``engine_dir`` serves both the onnxruntime and the tensorrt backend) holds::

    <stage>.<key>.plan   the serialized engine
    <stage>.<key>.json   its EngineMeta: what it was built from and for
    engines.json         index: stage -> plan of the latest build (what TrtBackend loads)
    timing.cache         TensorRT timing cache shared by all stage builds

``key`` hashes the ONNX file's sha256, the TensorRT version, the GPU name, the
precision and the profile shapes: a plan is reused only when all of them match, and
a plan built elsewhere (other GPU, other TensorRT) is never picked up by mistake.

Everything above the TensorRT boundary (profile shapes, cache
keys, metadata, the FP32-layer rule) is plain Python and imports nothing from
TensorRT; ``tensorrt`` is imported lazily by :func:`import_tensorrt`.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from . import BackendError
from .manifest import Manifest

INDEX_NAME = "engines.json"
INDEX_FORMAT = 1
TIMING_CACHE_NAME = "timing.cache"
META_FORMAT = 1
KEY_VERSION = 1  # bump when the build recipe changes in a way that must invalidate cached plans
TRT_MAJOR = 10  # the API this module is written against

INSTALL_HINT = (
    "TensorRT's Python bindings (`import tensorrt`) are not available. "
    "On a Jetson with JetPack 6.1 or later they come with JetPack (TensorRT 10.3) as the apt package "
    "python3-libnvinfer: `sudo apt install python3-libnvinfer` (for the system Python 3.10; a virtual "
    "environment must be created with --system-site-packages to see it). "
    "On x86_64 Linux with an NVIDIA GPU: `pip install tensorrt`."
)

Shape = tuple[int, ...]
ProfileShapes = dict[str, tuple[Shape, Shape, Shape]]


# ---------------------------------------------------------------------------- profiles
def profile_shapes(stage_manifest: dict[str, Any]) -> ProfileShapes:
    """``{input name: (min, opt, max)}`` of one manifest stage entry: every symbolic axis
    of an input shape replaced by its ``dynamic`` range (fixed axes stay as they are)."""
    dynamic = stage_manifest.get("dynamic", {})
    shapes: ProfileShapes = {}
    for spec in stage_manifest["inputs"]:
        dims: list[tuple[int, int, int]] = []
        for d in spec["shape"]:
            if isinstance(d, str):
                if d not in dynamic:
                    raise BackendError(f"input {spec['name']}: axis {d!r} has no min/opt/max in 'dynamic'")
                r = dynamic[d]
                dims.append((int(r["min"]), int(r["opt"]), int(r["max"])))
            else:
                dims.append((int(d), int(d), int(d)))
        shapes[spec["name"]] = (
            tuple(x[0] for x in dims), tuple(x[1] for x in dims), tuple(x[2] for x in dims)
        )
    return shapes


def dynamic_inputs(stage_manifest: dict[str, Any]) -> list[str]:
    """Names of the inputs with at least one symbolic axis (those that need a profile)."""
    return [s["name"] for s in stage_manifest["inputs"] if any(isinstance(d, str) for d in s["shape"])]


# ---------------------------------------------------------------------------- cache keys, metadata
def _profile_jsonable(profile: ProfileShapes | None) -> dict[str, list[list[int]]] | None:
    if profile is None:
        return None
    return {name: [list(map(int, s)) for s in mmo] for name, mmo in sorted(profile.items())}


def engine_cache_key(onnx_bytes_sha256: str, trt_version: str, gpu_name: str | None, fp16: bool,
                     profile: ProfileShapes | None = None) -> str:
    """16 hex digits identifying a plan: what it was built from (the ONNX bytes' sha256,
    the profile shapes), with what (TensorRT version) and for what (GPU name, precision)."""
    payload = json.dumps(
        [KEY_VERSION, str(onnx_bytes_sha256), str(trt_version), str(gpu_name), bool(fp16), _profile_jsonable(profile)],
        sort_keys=True,
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def engine_path(cache_dir: str | Path, stage: str, key: str) -> Path:
    """``<cache_dir>/<stage>.<key>.plan``; its metadata is ``meta_path`` of it."""
    return Path(cache_dir) / f"{stage}.{key}.plan"


def meta_path(plan: str | Path) -> Path:
    return Path(plan).with_suffix(".json")


@dataclasses.dataclass
class EngineMeta:
    """What a plan was built from and for; written as JSON next to it."""

    stage: str
    key: str
    onnx_sha256: str
    trt_version: str
    gpu_name: str | None
    fp16: bool
    built_at: str  # ISO 8601, UTC
    profile: ProfileShapes
    fp32_layers: int = 0  # layers pinned to FP32 in an FP16 build
    workspace_gb: float | None = None
    format: int = META_FORMAT

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["profile"] = _profile_jsonable(self.profile)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "EngineMeta":
        if not isinstance(d, dict) or d.get("format") != META_FORMAT:
            raise BackendError(f"engine metadata of unknown format {d.get('format') if isinstance(d, dict) else d!r}")
        try:
            profile = {name: tuple(tuple(int(x) for x in s) for s in mmo) for name, mmo in (d["profile"] or {}).items()}
            return cls(
                stage=str(d["stage"]), key=str(d["key"]), onnx_sha256=str(d["onnx_sha256"]),
                trt_version=str(d["trt_version"]), gpu_name=d["gpu_name"], fp16=bool(d["fp16"]),
                built_at=str(d["built_at"]), profile=profile, fp32_layers=int(d.get("fp32_layers", 0)),
                workspace_gb=d.get("workspace_gb"), format=int(d["format"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise BackendError(f"engine metadata is malformed ({exc!r})") from exc

    def write(self, path: str | Path) -> None:
        _atomic_write(Path(path), (json.dumps(self.to_dict(), indent=2) + "\n").encode())

    @classmethod
    def read(cls, path: str | Path) -> "EngineMeta":
        path = Path(path)
        try:
            return cls.from_dict(json.loads(path.read_text()))
        except FileNotFoundError as exc:
            raise BackendError(f"engine metadata {path} not found; rebuild with `tinysam2 build-engine`") from exc
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise BackendError(f"engine metadata {path} is not valid JSON ({exc})") from exc


def check_engine_meta(meta: EngineMeta | dict[str, Any], trt_version: str, gpu_name: str | None) -> None:
    """Raise ``BackendError`` unless ``meta`` was built with this TensorRT version for this GPU.

    A plan only deserializes with the exact TensorRT version that built it, and its
    kernels were chosen for the GPU it was built on, so both must match exactly."""
    if isinstance(meta, dict):
        meta = EngineMeta.from_dict(meta)
    problems = []
    if str(meta.trt_version) != str(trt_version):
        problems.append("TensorRT version")
    if meta.gpu_name != gpu_name:
        problems.append("GPU")
    if problems:
        raise BackendError(
            f"{meta.stage} engine built for {meta.gpu_name} with TensorRT {meta.trt_version}, "
            f"this is {gpu_name} with TensorRT {trt_version} ({' and '.join(problems)} "
            f"{'differ' if len(problems) > 1 else 'differs'}): "
            "rebuild with `tinysam2 build-engine ONNX_DIR` on this machine"
        )


def read_index(engine_dir: str | Path) -> dict[str, Any]:
    """``<engine_dir>/engines.json``: ``{"format", "model": {...}, "stages": {stage: plan file}}``."""
    path = Path(engine_dir) / INDEX_NAME
    try:
        index = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise BackendError(
            f"{path} not found: build the engines first with `tinysam2 build-engine ONNX_DIR --out {engine_dir}`"
        ) from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BackendError(f"{path} is not valid JSON ({exc}); rebuild with `tinysam2 build-engine`") from exc
    if not isinstance(index, dict) or index.get("format") != INDEX_FORMAT or not isinstance(index.get("stages"), dict):
        raise BackendError(f"{path} is not an engine index of format {INDEX_FORMAT}; rebuild with `tinysam2 build-engine`")
    return index


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


# ---------------------------------------------------------------------------- FP32 layers
# Layer types (trt.LayerType names) kept in FP32 in an FP16 build, with the operations
# that matter (None: every layer of the type). These are where FP16's range (max 65504)
# or precision breaks first in attention / normalisation blocks: LayerNorm (fused:
# NORMALIZATION; decomposed: REDUCE mean, POW, SQRT, DIV by it), softmax, exp/log.
FP32_LAYER_RULES: dict[str, frozenset[str] | None] = {
    "NORMALIZATION": None,
    "SOFTMAX": None,
    "REDUCE": None,
    "UNARY": frozenset({"EXP", "LOG", "SQRT", "RECIP"}),
    "ELEMENTWISE": frozenset({"POW"}),
}


def keeps_fp32(layer_type: str, op: str | None = None) -> bool:
    """Whether a layer of ``layer_type`` (``trt.LayerType`` name) with operation ``op``
    (``UnaryOperation`` / ``ElementWiseOperation`` name) stays FP32 in an FP16 build."""
    if layer_type not in FP32_LAYER_RULES:
        return False
    ops = FP32_LAYER_RULES[layer_type]
    return ops is None or (op is not None and op in ops)


def _pin_fp32_layers(trt, network) -> list[str]:
    """Set ``precision`` and output types to FP32 on the sensitive float layers of
    ``network`` (honoured with ``BuilderFlag.PREFER_PRECISION_CONSTRAINTS``)."""
    downcast = {"UNARY": trt.IUnaryLayer, "ELEMENTWISE": trt.IElementWiseLayer}
    pinned = []
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        type_name = layer.type.name
        if type_name not in FP32_LAYER_RULES:
            continue
        op = None
        if type_name in downcast:
            layer.__class__ = downcast[type_name]  # ILayer -> subclass to read .op (as polygraphy does)
            op = layer.op.name
        if not keeps_fp32(type_name, op):
            continue
        outputs = [layer.get_output(k) for k in range(layer.num_outputs)]
        if not outputs or any(t.dtype not in (trt.float32, trt.float16) for t in outputs):
            continue  # integer shape arithmetic and the like: nothing to protect
        layer.precision = trt.float32
        for k in range(layer.num_outputs):
            layer.set_output_type(k, trt.float32)
        pinned.append(layer.name)
    return pinned


# ---------------------------------------------------------------------------- TensorRT boundary
def gpu_name(device: int | str | None = None) -> str | None:
    """The CUDA GPU's name as PyTorch reports it (e.g. "Orin" on a Jetson AGX Orin), or
    None when PyTorch sees no CUDA GPU."""
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    return torch.cuda.get_device_name(device if device is not None else torch.cuda.current_device())


def import_tensorrt(require_major: int | None = TRT_MAJOR):
    """``import tensorrt`` or a ``BackendError`` with the install hint (and, with
    ``require_major``, a version check: JetPack 6.0 ships TensorRT 8.6)."""
    try:
        import tensorrt as trt
    except (ImportError, OSError) as exc:  # OSError: bindings present but libnvinfer not loadable
        raise BackendError(f"{INSTALL_HINT} (import failed: {exc})") from exc
    version = str(getattr(trt, "__version__", "unknown"))
    if require_major is not None:
        try:
            major = int(version.split(".")[0])
        except ValueError:
            major = None
        if major != require_major:
            raise BackendError(
                f"TensorRT {version} found; this builder is written for the TensorRT {require_major}.x API "
                "(JetPack 6.0 ships TensorRT 8.6: upgrade to JetPack 6.1 or later, which ships TensorRT 10.3)"
            )
    return trt


def require_cuda_gpu(device: int | str | None = None) -> str:
    """The GPU's name, or a ``BackendError`` when PyTorch sees no CUDA GPU."""
    name = gpu_name(device)
    if name is None:
        raise BackendError(
            "no CUDA GPU is visible (torch.cuda.is_available() is False). TensorRT builds and runs engines on "
            "the GPU of the machine it runs on, so build on the target itself; on a Jetson, install the PyTorch "
            "wheel built for your JetPack (NVIDIA's, not the CPU-only one from PyPI)"
        )
    return name


def _make_logger(trt):
    """A ``trt.ILogger`` that prints warnings and errors above the progress bar and keeps
    the errors, so a failed parse or build can name them."""
    from tqdm import tqdm

    class _Logger(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.errors: list[str] = []

        def log(self, severity, msg) -> None:
            if int(severity) <= int(trt.ILogger.Severity.ERROR):
                self.errors.append(msg)
            if int(severity) <= int(trt.ILogger.Severity.WARNING):
                tqdm.write(f"[TensorRT {severity.name}] {msg}", file=sys.stderr)

    return _Logger()


class _TimingCache:
    """One ``ITimingCache`` shared by every stage build, loaded from and saved to a file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.cache = None

    def attach(self, config) -> None:
        if self.cache is None:
            data = self.path.read_bytes() if self.path.is_file() else b""
            cache = None
            try:
                cache = config.create_timing_cache(data)
            except Exception:  # corrupt file: start afresh
                cache = None
            if cache is None or not config.set_timing_cache(cache, False):
                if data:
                    from tqdm import tqdm

                    tqdm.write(f"timing cache {self.path} is from another TensorRT/GPU or corrupt: starting a new one",
                               file=sys.stderr)
                cache = config.create_timing_cache(b"")
                config.set_timing_cache(cache, False)
            self.cache = cache
        elif not config.set_timing_cache(self.cache, False):
            raise BackendError("could not attach the timing cache to the builder config")

    def save(self, config) -> None:
        cache = config.get_timing_cache() or self.cache
        if cache is not None:
            self.cache = cache
            self.path.parent.mkdir(parents=True, exist_ok=True)
            _atomic_write(self.path, bytes(memoryview(cache.serialize())))


def _parse_onnx(trt, builder, logger, onnx_path: Path):
    network = builder.create_network(0)  # TensorRT 10: explicit batch is the only mode
    parser = trt.OnnxParser(network, logger)
    ok = parser.parse_from_file(str(onnx_path))
    if not ok or parser.num_errors:
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)] or logger.errors[-5:]
        listing = "\n".join(f"  {i + 1}. {e}" for i, e in enumerate(errors)) or "  (the parser gave no details)"
        raise BackendError(f"TensorRT's ONNX parser rejected {onnx_path} ({len(errors)} error(s)):\n{listing}")
    return network, parser


def _build_stage(trt, builder, logger, timing: _TimingCache, onnx_path: Path, entry: dict[str, Any],
                 shapes: ProfileShapes, fp16: bool, workspace_gb: float) -> tuple[bytes, list[str]]:
    network, parser = _parse_onnx(trt, builder, logger, onnx_path)
    present = {network.get_input(i).name for i in range(network.num_inputs)}
    missing = [s["name"] for s in entry["inputs"] if s["name"] not in present]
    if missing:
        raise BackendError(f"{onnx_path.name}: the graph lacks input(s) {', '.join(missing)} listed in the manifest; "
                           "re-run `tinysam2 export`")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gb * (1 << 30)))
    dyn = dynamic_inputs(entry)
    if dyn:
        profile = builder.create_optimization_profile()
        for name in dyn:
            lo, opt, hi = shapes[name]
            profile.set_shape(name, lo, opt, hi)
        if config.add_optimization_profile(profile) < 0:
            raise BackendError(f"{onnx_path.name}: TensorRT refused the optimization profile {shapes}")
    pinned: list[str] = []
    if fp16:
        config.set_flag(trt.BuilderFlag.FP16)
        config.set_flag(trt.BuilderFlag.PREFER_PRECISION_CONSTRAINTS)
        pinned = _pin_fp32_layers(trt, network)
    else:
        config.clear_flag(trt.BuilderFlag.TF32)  # TensorRT allows TF32 by default; --fp32 means full FP32
    timing.attach(config)
    logger.errors.clear()
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        details = "\n".join(f"  {e}" for e in logger.errors[-10:]) or "  (no error was logged)"
        raise BackendError(f"TensorRT could not build an engine from {onnx_path.name}:\n{details}")
    timing.save(config)
    del parser
    return bytes(memoryview(serialized)), pinned


def build_engines(onnx_dir: str | Path, out_dir: str | Path | None = None, fp16: bool = True,
                  workspace_gb: float = 2.0, timing_cache: str | Path | None = None, force: bool = False,
                  progress: bool = True) -> list[Path]:
    """Build (or reuse) one TensorRT engine per stage of ``<onnx_dir>/manifest.json``.

    ``out_dir`` (default ``onnx_dir``) receives ``<stage>.<key>.plan`` + ``.json`` metadata
    and ``engines.json``; ``timing_cache`` (default ``<out_dir>/timing.cache``) is loaded
    before and saved after each build. A plan whose key matches (same ONNX bytes,
    TensorRT version, GPU, precision, profile) is reused unless ``force``. Returns the
    plan paths in manifest order. Raises ``BackendError`` (TensorRT missing, no GPU,
    bad manifest, parser or builder errors).
    """
    if workspace_gb <= 0:
        raise BackendError(f"workspace must be positive, got {workspace_gb} GB")
    onnx_dir = Path(onnx_dir)
    manifest = Manifest.load(onnx_dir)  # validated once, sha256 of every graph included
    if manifest.precision != "fp32":
        raise BackendError(f"{onnx_dir} is a {manifest.precision} export, which is for onnxruntime; build engines "
                           "from an fp32 export (TensorRT chooses fp16 / fp32 per layer itself)")
    trt = import_tensorrt()
    gpu = require_cuda_gpu()
    out_dir = Path(out_dir) if out_dir is not None else onnx_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    timing = _TimingCache(Path(timing_cache) if timing_cache is not None else out_dir / TIMING_CACHE_NAME)
    try:
        index = read_index(out_dir)
    except BackendError:
        index = {"format": INDEX_FORMAT, "stages": {}}
    index["model"] = {k: getattr(manifest, k) for k in ("preset", "image_size", "hidden_dim", "mem_dim")}
    index["onnx_dir"] = str(onnx_dir.resolve())

    from tqdm import tqdm

    logger = _make_logger(trt)
    builder = trt.Builder(logger)
    version = str(trt.__version__)
    plans: list[Path] = []
    bar = tqdm(list(manifest.stages.items()), desc="build-engine", unit="stage", disable=not progress)
    for stage, entry in bar:
        onnx_path = manifest.path(stage)
        sha = entry["sha256"]  # checked against the file by Manifest.load
        shapes = profile_shapes(entry)
        key = engine_cache_key(sha, version, gpu, fp16, profile=shapes)
        plan = engine_path(out_dir, stage, key)
        reuse = False
        if not force and plan.is_file() and plan.stat().st_size > 0 and meta_path(plan).is_file():
            try:
                reuse = EngineMeta.read(meta_path(plan)).key == key
            except BackendError:
                reuse = False
        if reuse:
            bar.set_postfix_str(f"{stage}: cached")
        else:
            bar.set_postfix_str(f"{stage}: building")
            data, pinned = _build_stage(trt, builder, logger, timing, onnx_path, entry, shapes, fp16, workspace_gb)
            _atomic_write(plan, data)
            EngineMeta(
                stage=stage, key=key, onnx_sha256=sha, trt_version=version, gpu_name=gpu, fp16=bool(fp16),
                built_at=datetime.now(timezone.utc).isoformat(timespec="seconds"), profile=shapes,
                fp32_layers=len(pinned), workspace_gb=float(workspace_gb),
            ).write(meta_path(plan))
        index["stages"][stage] = plan.name
        plans.append(plan)
    # the index is written once every stage is built, so a failed build never leaves it
    # pointing at a mix of engines from different exports
    _atomic_write(out_dir / INDEX_NAME, (json.dumps(index, indent=2) + "\n").encode())
    return plans
