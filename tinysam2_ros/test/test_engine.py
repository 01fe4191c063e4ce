"""TensorRT engine tooling up to the TensorRT boundary.

TensorRT cannot be installed here (no GPU), so these tests cover everything that does
not need ``import tensorrt``: manifest reading, profile shapes, cache keys, engine
metadata, the version / GPU check, the FP32-layer rule, dtype mapping, the CLI and the
errors raised when TensorRT is missing. The tests at the end build and run real
engines and are skipped unless TensorRT and a CUDA GPU are present.
"""
from __future__ import annotations

import argparse
import json
import sys

import pytest
import torch

from tinysam2_ros.backends import BackendError
from tinysam2_ros.backends.engine_builder import (
    INSTALL_HINT,
    EngineMeta,
    build_engines,
    check_engine_meta,
    dynamic_inputs,
    engine_cache_key,
    engine_path,
    keeps_fp32,
    meta_path,
    profile_shapes,
    read_index,
)
from tinysam2_ros.backends.engine_cli import add_build_engine_parser
from tinysam2_ros.backends.manifest import Manifest, sha256_file
from tinysam2_ros.backends.tensorrt_backend import STAGE_INPUTS, STAGE_OUTPUTS, TrtBackend, torch_dtype
from tinysam2_ros.modeling.stages import STAGE_NAMES

MASK_DECODER = {
    "file": "mask_decoder.onnx",
    "sha256": "0" * 64,
    "inputs": [
        {"name": "pix_feat", "dtype": "float32", "shape": ["B", 64, 16, 16]},
        {"name": "high_res_0", "dtype": "float32", "shape": ["B", 8, 64, 64]},
        {"name": "high_res_1", "dtype": "float32", "shape": ["B", 16, 32, 32]},
        {"name": "point_coords", "dtype": "float32", "shape": ["B", "N", 2]},
        {"name": "point_labels", "dtype": "int32", "shape": ["B", "N"]},
        {"name": "mask_input", "dtype": "float32", "shape": ["B", 1, 64, 64]},
        {"name": "has_mask_input", "dtype": "float32", "shape": ["B"]},
    ],
    "outputs": [
        {"name": "masks", "dtype": "float32", "shape": ["B", 4, 64, 64]},
        {"name": "iou_pred", "dtype": "float32", "shape": ["B", 4]},
        {"name": "mask_tokens", "dtype": "float32", "shape": ["B", 4, 64]},
        {"name": "object_score_logits", "dtype": "float32", "shape": ["B", 1]},
    ],
    "dynamic": {"B": {"min": 1, "opt": 1, "max": 16}, "N": {"min": 1, "opt": 2, "max": 18}},
}
IMAGE_ENCODER = {
    "file": "image_encoder.onnx",
    "sha256": "1" * 64,
    "inputs": [{"name": "images", "dtype": "float32", "shape": [1, 3, 256, 256]}],
    "outputs": [{"name": "high_res_0", "dtype": "float32", "shape": [1, 8, 64, 64]},
                {"name": "high_res_1", "dtype": "float32", "shape": [1, 16, 32, 32]},
                {"name": "pix_feat", "dtype": "float32", "shape": [1, 64, 16, 16]}],
    "dynamic": {},
}
MEMORY_ATTENTION = {
    "file": "memory_attention.onnx",
    "sha256": "2" * 64,
    "inputs": [{"name": n, "dtype": "float32", "shape": s} for n, s in zip(
        STAGE_INPUTS["memory_attention"],
        (["B", "Nq", 64], ["B", "Nq", 64], ["B", "Nq", 2], ["B", "K", 32], ["B", "K", 32], ["B", "K", 2]))],
    "outputs": [{"name": "conditioned", "dtype": "float32", "shape": ["B", "Nq", 64]}],
    "dynamic": {"B": {"min": 1, "opt": 1, "max": 16}, "K": {"min": 64, "opt": 288, "max": 294},
                "Nq": {"min": 1, "opt": 64, "max": 256}},
}
MEMORY_ENCODER = {
    "file": "memory_encoder.onnx",
    "sha256": "3" * 64,
    "inputs": [{"name": "pix_feat", "dtype": "float32", "shape": ["B", 64, 16, 16]},
               {"name": "mask_for_mem", "dtype": "float32", "shape": ["B", 1, 256, 256]},
               {"name": "object_score_logits", "dtype": "float32", "shape": ["B", 1]}],
    "outputs": [{"name": "memory", "dtype": "float32", "shape": ["B", 256, 32]}],
    "dynamic": {"B": {"min": 1, "opt": 1, "max": 16}},
}


def _write_export(tmp_path, **replace) -> None:
    """A complete export directory of fake graphs (their sha256 right) with stage entries
    taken from ``replace`` where given."""
    stages = {"image_encoder": IMAGE_ENCODER, "mask_decoder": MASK_DECODER, "memory_attention": MEMORY_ATTENTION,
              "memory_encoder": MEMORY_ENCODER}
    stages = json.loads(json.dumps({**stages, **replace}))
    for entry in stages.values():
        (tmp_path / entry["file"]).write_bytes(b"not really onnx: " + entry["file"].encode())
        entry["sha256"] = sha256_file(tmp_path / entry["file"])
    manifest = {"format": 2, "preset": "tiny", "image_size": 256, "hidden_dim": 64, "mem_dim": 32, "opset": 17,
                "stages": stages}
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))


def _no_tensorrt(monkeypatch) -> None:
    """Make ``import tensorrt`` fail, whatever is installed (a None entry in sys.modules
    makes the import raise ImportError)."""
    monkeypatch.setitem(sys.modules, "tensorrt", None)


# ---------------------------------------------------------------------------- profile shapes
def test_profile_shapes_substitute_symbolic_axes():
    shapes = profile_shapes(MASK_DECODER)
    assert list(shapes) == [s["name"] for s in MASK_DECODER["inputs"]]
    assert shapes["pix_feat"] == ((1, 64, 16, 16), (1, 64, 16, 16), (16, 64, 16, 16))
    assert shapes["point_coords"] == ((1, 1, 2), (1, 2, 2), (16, 18, 2))
    assert shapes["point_labels"] == ((1, 1), (1, 2), (16, 18))
    assert shapes["has_mask_input"] == ((1,), (1,), (16,))
    assert dynamic_inputs(MASK_DECODER) == [s["name"] for s in MASK_DECODER["inputs"]]


def test_memory_attention_profile_has_a_query_axis():
    """The TensorRT profile of memory attention spans 1..h*w query tokens (routing) and
    min..max memory tokens, with the opt shapes TensorRT tunes its kernels for."""
    shapes = profile_shapes(MEMORY_ATTENTION)
    assert shapes["tokens"] == ((1, 1, 64), (1, 64, 64), (16, 256, 64))
    assert shapes["token_coords"] == ((1, 1, 2), (1, 64, 2), (16, 256, 2))
    assert shapes["memory"] == ((1, 64, 32), (1, 288, 32), (16, 294, 32))


def test_profile_shapes_fixed_stage_and_missing_range():
    assert profile_shapes(IMAGE_ENCODER) == {"images": ((1, 3, 256, 256),) * 3}
    assert dynamic_inputs(IMAGE_ENCODER) == []
    bad = {**MASK_DECODER, "dynamic": {"B": {"min": 1, "opt": 1, "max": 4}}}
    with pytest.raises(BackendError, match="'N'"):
        profile_shapes(bad)


# ---------------------------------------------------------------------------- manifest
def test_read_manifest_accepts_export_layout(tmp_path):
    _write_export(tmp_path)
    manifest = Manifest.load(tmp_path)
    assert set(manifest.stages) == set(STAGE_NAMES) and manifest.precision == "fp32"
    assert manifest.ranges()["K"] == {"min": 64, "opt": 288, "max": 294}
    assert manifest.path("mask_decoder") == tmp_path / "mask_decoder.onnx"
    (tmp_path / "manifest.json").unlink()
    manifest.save(tmp_path)  # what load gives back, save writes again
    assert Manifest.load(tmp_path) == manifest


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda m: m.update(format=1), "format 1.*re-run"),
        (lambda m: m.update(stages={}), "non-empty"),
        (lambda m: m["stages"].pop("memory_encoder"), "lacks stage.*memory_encoder"),
        (lambda m: m["stages"]["mask_decoder"].update(file="gone.onnx"), "gone.onnx is missing"),
        (lambda m: m["stages"]["mask_decoder"].update(sha256="f" * 64), "sha256 of mask_decoder.onnx"),
        (lambda m: m["stages"]["mask_decoder"]["inputs"].reverse(), "inputs are"),
        (lambda m: m.update(precision="int4"), "unknown precision"),
        (lambda m: m["stages"]["mask_decoder"]["dynamic"].pop("N"), "'N'"),
        (lambda m: m["stages"]["mask_decoder"]["dynamic"].update(B={"min": 4, "opt": 2, "max": 8}), "min <= opt"),
        (lambda m: m["stages"]["mask_decoder"]["inputs"][0].update(shape=["B", 0, 16, 16]), "bad dimension"),
    ],
)
def test_read_manifest_rejects(tmp_path, change, message):
    _write_export(tmp_path)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    change(manifest)
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BackendError, match=message):
        Manifest.load(tmp_path)


def test_read_manifest_missing_dir_and_bad_json(tmp_path):
    with pytest.raises(BackendError, match="not found"):
        Manifest.load(tmp_path / "nope")
    with pytest.raises(BackendError, match="manifest.json not found"):
        Manifest.load(tmp_path)
    (tmp_path / "manifest.json").write_text("{broken")
    with pytest.raises(BackendError, match="not valid JSON"):
        Manifest.load(tmp_path)


def test_real_export_manifest_profiles_run_in_onnxruntime(tmp_path):
    """The manifest of the real exporter reads here, and the min/opt/max shapes of every
    profile are valid inputs of the exported graphs (onnxruntime, CPU)."""
    onnx_export = pytest.importorskip("tinysam2_ros.backends.onnx_export", reason="ONNX exporter not available")
    ort = pytest.importorskip("onnxruntime", reason="onnxruntime not installed")
    pytest.importorskip("onnx", reason="onnx not installed")
    import numpy as np

    from tinysam2_ros.modeling.build import build_model

    model = build_model("tiny")
    onnx_export.export_stages(model, tmp_path, "tiny", max_objects=3, max_points=2, check_ops=False)
    manifest = Manifest.load(tmp_path)
    assert set(manifest.stages) == set(STAGE_NAMES)
    for stage, entry in manifest.stages.items():
        assert [s["name"] for s in entry["inputs"]] == list(STAGE_INPUTS[stage])
        assert [s["name"] for s in entry["outputs"]] == list(STAGE_OUTPUTS[stage])
        shapes = profile_shapes(entry)
        dtypes = {s["name"]: np.dtype(s["dtype"]) for s in entry["inputs"]}
        sess = ort.InferenceSession(str(tmp_path / entry["file"]), providers=["CPUExecutionProvider"])
        rng = np.random.default_rng(0)
        for which in range(3):  # min, opt, max
            feeds = {}
            for name, mmo in shapes.items():
                shape = mmo[which]
                if dtypes[name] == np.int32:
                    feeds[name] = rng.integers(0, 2, size=shape).astype(np.int32)
                else:
                    feeds[name] = rng.standard_normal(shape).astype(dtypes[name])
            outs = sess.run(None, feeds)
            assert all(np.isfinite(o).all() for o in outs), (stage, which)


# ---------------------------------------------------------------------------- keys, paths, metadata
def test_cache_key_changes_with_each_input():
    base = dict(onnx_bytes_sha256="a" * 64, trt_version="10.3.0", gpu_name="Orin", fp16=True)
    key = engine_cache_key(**base)
    assert key == engine_cache_key(**base)
    assert len(key) == 16 and int(key, 16) >= 0
    variants = [
        {**base, "onnx_bytes_sha256": "b" * 64},
        {**base, "trt_version": "10.7.0"},
        {**base, "gpu_name": "NVIDIA GeForce RTX 4090"},
        {**base, "gpu_name": None},
        {**base, "fp16": False},
    ]
    keys = {engine_cache_key(**v) for v in variants}
    assert key not in keys and len(keys) == len(variants)
    profile = profile_shapes(MASK_DECODER)
    wider = {**profile, "pix_feat": (profile["pix_feat"][0], profile["pix_feat"][1], (32, 64, 16, 16))}
    assert engine_cache_key(**base, profile=profile) not in (key, engine_cache_key(**base, profile=wider))


def test_engine_path_and_meta_path(tmp_path):
    plan = engine_path(tmp_path, "mask_decoder", "0123456789abcdef")
    assert plan == tmp_path / "mask_decoder.0123456789abcdef.plan"
    assert meta_path(plan) == tmp_path / "mask_decoder.0123456789abcdef.json"


def _meta(**kw) -> EngineMeta:
    fields = dict(stage="mask_decoder", key="0123456789abcdef", onnx_sha256="a" * 64, trt_version="10.3.0",
                  gpu_name="Orin", fp16=True, built_at="2025-01-01T00:00:00+00:00",
                  profile=profile_shapes(MASK_DECODER), fp32_layers=12, workspace_gb=2.0)
    fields.update(kw)
    return EngineMeta(**fields)


def test_meta_round_trip(tmp_path):
    meta = _meta()
    path = meta_path(engine_path(tmp_path, meta.stage, meta.key))
    meta.write(path)
    on_disk = json.loads(path.read_text())
    assert on_disk["profile"]["point_coords"] == [[1, 1, 2], [1, 2, 2], [16, 18, 2]]
    assert on_disk["trt_version"] == "10.3.0" and on_disk["gpu_name"] == "Orin" and on_disk["fp16"] is True
    assert EngineMeta.read(path) == meta
    assert EngineMeta.from_dict(meta.to_dict()) == meta


def test_meta_read_errors(tmp_path):
    with pytest.raises(BackendError, match="not found"):
        EngineMeta.read(tmp_path / "x.json")
    (tmp_path / "x.json").write_text(json.dumps({"format": 99}))
    with pytest.raises(BackendError, match="format"):
        EngineMeta.read(tmp_path / "x.json")
    (tmp_path / "x.json").write_text(json.dumps({"format": 1, "stage": "s"}))
    with pytest.raises(BackendError, match="malformed"):
        EngineMeta.read(tmp_path / "x.json")


# ---------------------------------------------------------------------------- version / GPU check
def test_check_engine_meta_accepts_same_version_and_gpu():
    check_engine_meta(_meta(), "10.3.0", "Orin")
    check_engine_meta(_meta().to_dict(), "10.3.0", "Orin")


def test_check_engine_meta_names_trt_mismatch():
    with pytest.raises(BackendError) as err:
        check_engine_meta(_meta(), "10.7.0", "Orin")
    msg = str(err.value)
    assert "built for Orin with TensorRT 10.3.0" in msg
    assert "this is Orin with TensorRT 10.7.0" in msg
    assert "(TensorRT version differs)" in msg and "tinysam2 build-engine" in msg


def test_check_engine_meta_names_gpu_mismatch():
    with pytest.raises(BackendError) as err:
        check_engine_meta(_meta(), "10.7.0", "NVIDIA GeForce RTX 4090")
    msg = str(err.value)
    assert "this is NVIDIA GeForce RTX 4090 with TensorRT 10.7.0" in msg
    assert "(TensorRT version and GPU differ)" in msg
    with pytest.raises(BackendError, match=r"\(GPU differs\)"):
        check_engine_meta(_meta(), "10.3.0", None)


# ---------------------------------------------------------------------------- FP32 rule, dtypes
def test_fp32_layer_rule():
    for layer_type in ("NORMALIZATION", "SOFTMAX", "REDUCE"):
        assert keeps_fp32(layer_type)
    assert keeps_fp32("UNARY", "EXP") and keeps_fp32("UNARY", "SQRT")
    assert keeps_fp32("ELEMENTWISE", "POW")
    assert not keeps_fp32("UNARY", "ABS")
    assert not keeps_fp32("ELEMENTWISE", "SUM")
    assert not keeps_fp32("ELEMENTWISE")
    assert not keeps_fp32("CONVOLUTION") and not keeps_fp32("MATRIX_MULTIPLY")


def test_torch_dtype_mapping():
    assert torch_dtype("FLOAT") is torch.float32
    assert torch_dtype("HALF") is torch.float16
    assert torch_dtype("INT32") is torch.int32
    assert torch_dtype("BOOL") is torch.bool
    with pytest.raises(BackendError, match="INT4"):
        torch_dtype("INT4")


def test_stage_contracts_match_stages_module():
    assert tuple(STAGE_INPUTS) == STAGE_NAMES == tuple(STAGE_OUTPUTS)


# ---------------------------------------------------------------------------- without TensorRT
def test_build_engines_without_tensorrt_gives_install_hint(tmp_path, monkeypatch):
    _no_tensorrt(monkeypatch)
    _write_export(tmp_path)
    with pytest.raises(BackendError) as err:
        build_engines(tmp_path)
    msg = str(err.value)
    assert INSTALL_HINT in msg
    assert "python3-libnvinfer" in msg and "JetPack" in msg and "pip install tensorrt" in msg
    assert not (tmp_path / "engines.json").exists()


def test_build_engines_refuses_an_int8_export(tmp_path, monkeypatch):
    """An int8 export (QDQ image encoder, for onnxruntime) is refused before TensorRT is
    even looked for: the engines are built from fp32 graphs."""
    _no_tensorrt(monkeypatch)
    _write_export(tmp_path)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    (tmp_path / "manifest.json").write_text(json.dumps({**manifest, "precision": "int8"}))
    with pytest.raises(BackendError, match="int8 export, which is for onnxruntime; build engines from an fp32"):
        build_engines(tmp_path)


def test_trt_backend_without_tensorrt_gives_install_hint(tmp_path, monkeypatch):
    _no_tensorrt(monkeypatch)
    with pytest.raises(BackendError, match="python3-libnvinfer"):
        TrtBackend(tmp_path, device="cuda:0")


def test_make_backend_tensorrt_without_tensorrt(tmp_path, monkeypatch):
    from tinysam2_ros.backends import make_backend

    _no_tensorrt(monkeypatch)
    with pytest.raises(BackendError, match="pip install tensorrt"):
        make_backend("tensorrt", None, engine_dir=tmp_path, device="cuda:0")


def test_build_engines_rejects_bad_workspace(tmp_path):
    with pytest.raises(BackendError, match="workspace"):
        build_engines(tmp_path, workspace_gb=0)


def test_read_index_missing_says_how_to_build(tmp_path):
    with pytest.raises(BackendError, match="tinysam2 build-engine"):
        read_index(tmp_path)
    (tmp_path / "engines.json").write_text(json.dumps({"format": 1, "stages": {"image_encoder": "x.plan"}}))
    assert read_index(tmp_path)["stages"] == {"image_encoder": "x.plan"}


# ---------------------------------------------------------------------------- CLI
def _parser():
    parser = argparse.ArgumentParser(prog="tinysam2")
    sub = parser.add_subparsers(dest="command", required=True)
    p = add_build_engine_parser(sub)
    return parser, p


def test_cli_help_text():
    _, p = _parser()
    text = p.format_help()
    for option in ("ONNX_DIR", "--out", "--fp32", "--workspace-gb", "--force", "--timing-cache"):
        assert option in text
    assert "tinysam2 export" in text
    assert "python3-libnvinfer" in text and "pip install tensorrt" in text
    assert "Rebuild" in text


def test_cli_parses_defaults_and_options(tmp_path):
    from tinysam2_ros.backends.engine_cli import run_build_engine

    parser, _ = _parser()
    args = parser.parse_args(["build-engine", str(tmp_path)])
    assert args.onnx_dir == str(tmp_path) and args.out is None
    assert args.fp32 is False and args.force is False and args.workspace_gb == 2.0 and args.timing_cache is None
    assert args.func is run_build_engine
    args = parser.parse_args(["build-engine", "x", "--out", "y", "--fp32", "--workspace-gb", "1.5", "--force"])
    assert (args.out, args.fp32, args.workspace_gb, args.force) == ("y", True, 1.5, True)
    with pytest.raises(SystemExit):
        parser.parse_args(["build-engine", "x", "--workspace-gb", "0"])


def test_cli_without_tensorrt_exits_2_with_hint(tmp_path, monkeypatch, capsys):
    _no_tensorrt(monkeypatch)
    _write_export(tmp_path)
    parser, _ = _parser()
    args = parser.parse_args(["build-engine", str(tmp_path)])
    assert args.func(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("tinysam2 build-engine: ") and "python3-libnvinfer" in err


# ---------------------------------------------------------------------------- with TensorRT (skipped here)
def _require_trt_gpu():
    trt = pytest.importorskip(
        "tensorrt", reason="TensorRT is not installed (needs an NVIDIA GPU: JetPack 6.1+ or `pip install tensorrt`)"
    )
    if not torch.cuda.is_available():
        pytest.skip("TensorRT is installed but no CUDA GPU is visible to PyTorch")
    return trt


@pytest.fixture(scope="module")
def tiny_export(tmp_path_factory):
    _require_trt_gpu()
    onnx_export = pytest.importorskip("tinysam2_ros.backends.onnx_export", reason="ONNX exporter not available")
    from tinysam2_ros.modeling.build import build_model

    torch.manual_seed(0)
    model = build_model("tiny")
    out = tmp_path_factory.mktemp("tiny_export")
    onnx_export.export_stages(model, out, "tiny", max_objects=4, max_points=4)
    return model, out


@pytest.mark.parametrize("fp16", [False, True], ids=["fp32", "fp16"])
def test_build_and_run_engines_match_torch(tiny_export, tmp_path, fp16):
    """Build the tiny model's engines and compare every stage with PyTorch on the GPU."""
    _require_trt_gpu()
    from tinysam2_ros.backends.onnx_export import example_inputs
    from tinysam2_ros.modeling.stages import build_stages

    model, onnx_dir = tiny_export
    plans = build_engines(onnx_dir, tmp_path, fp16=fp16, workspace_gb=1.0, progress=False)
    assert [p.name.split(".")[0] for p in plans] == list(STAGE_NAMES)
    assert (tmp_path / "timing.cache").stat().st_size > 0
    # second call reuses every plan (same keys, untouched files)
    mtimes = [p.stat().st_mtime_ns for p in plans]
    assert build_engines(onnx_dir, tmp_path, fp16=fp16, progress=False) == plans
    assert [p.stat().st_mtime_ns for p in plans] == mtimes

    backend = TrtBackend(tmp_path, device="cuda:0")
    backend.check_model(model)
    stages = build_stages(model)
    tol = 5e-2 if fp16 else 1e-3
    for stage in STAGE_NAMES:
        inputs = example_inputs(model, stage, b=2, n=3, k=None if stage != "memory_attention" else 100)
        with torch.no_grad():
            ref = stages[stage](*inputs.values())
        ref = ref if isinstance(ref, tuple) else (ref,)
        got = getattr(backend, stage)(*[t.cuda() for t in inputs.values()])
        got = got if isinstance(got, tuple) else (got,)
        for name, r, g in zip(STAGE_OUTPUTS[stage], ref, got):
            assert g.is_cuda and g.shape == r.shape, (stage, name)
            scale = max(float(r.abs().max()), 1.0)
            assert float((g.float().cpu() - r).abs().max()) <= tol * scale, (stage, name)


def test_trt_backend_refuses_engine_of_other_version(tiny_export, tmp_path):
    trt = _require_trt_gpu()
    _, onnx_dir = tiny_export
    plans = build_engines(onnx_dir, tmp_path, fp16=False, progress=False)
    meta = EngineMeta.read(meta_path(plans[0]))
    meta.trt_version = "9.9.9"
    meta.write(meta_path(plans[0]))
    with pytest.raises(BackendError, match=rf"TensorRT 9\.9\.9, this is .* TensorRT {trt.__version__}"):
        TrtBackend(tmp_path, device="cuda:0")
