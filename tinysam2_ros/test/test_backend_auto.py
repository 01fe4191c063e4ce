"""``backend: auto``: which backend it picks and why, and the export cache it keeps.

Real model (``tiny`` preset, random weights), real export, real onnxruntime; TensorRT
is absent here, so its branch is checked up to the reason auto gives for skipping it.
"""
from __future__ import annotations

import json
import sys

import pytest
import torch

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from tinysam2_ros.backends import BackendError, attach_backend  # noqa: E402
from tinysam2_ros.backends.auto import cache_root, export_key, resolve_auto  # noqa: E402
from tinysam2_ros.backends.onnx_export import example_inputs  # noqa: E402
from tinysam2_ros.modeling.build import build_model  # noqa: E402


def _tiny(seed: int = 0):
    torch.manual_seed(seed)
    return build_model("tiny")


def test_resolve_auto_reasons(tmp_path, monkeypatch):
    assert resolve_auto(None, "cpu") == ("onnxruntime", "no TensorRT (no engine_dir); onnxruntime is installed")
    (tmp_path / "engines.json").write_text("{}")
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # as if TensorRT were not installed
    name, why = resolve_auto(tmp_path, "cpu")
    assert name == "onnxruntime" and "TensorRT's Python bindings" in why
    name, why = resolve_auto(tmp_path / "none", "cpu")
    assert name == "onnxruntime" and "no engines.json" in why
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    name, why = resolve_auto(None, "cpu")
    assert name == "torch" and "onnxruntime" in why


def test_cache_root_follows_xdg(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert cache_root() == tmp_path / "tinysam2_ros"


def test_export_key_depends_on_weights_preset_and_precision():
    a, b = _tiny(0), _tiny(1)
    key = export_key(a, "tiny")
    assert key == export_key(_tiny(0), "tiny")  # same weights, same key
    assert len({key, export_key(b, "tiny"), export_key(a, "tiny_x"), export_key(a, "tiny", "int8")}) == 4


def test_auto_exports_once_reuses_and_recovers_from_corruption(tmp_path):
    logs: list[str] = []
    model = _tiny(0)
    backend = attach_backend(model, "auto", "tiny", cache_dir=tmp_path, log=logs.append)
    assert backend.name == "onnxruntime" and model.backend is backend
    assert any(line.startswith("backend auto: onnxruntime (no TensorRT") for line in logs)
    assert any("exporting tiny once into the cache" in line for line in logs)
    entries = [p for p in tmp_path.iterdir()]
    assert len(entries) == 1 and (entries[0] / "manifest.json").is_file()  # no temporary left behind
    cached = entries[0]

    # the cached graphs compute what torch computes
    inputs = example_inputs(model, "mask_decoder", b=2, n=3)
    got = backend.mask_decoder(*inputs.values())
    model.set_backend(None)
    with torch.no_grad():
        ref = model.backend.mask_decoder(*inputs.values())
    torch.testing.assert_close(got[0], ref[0], atol=2e-4, rtol=1e-4)

    # second configure (a new model with the same weights): no export
    logs.clear()
    mtime = (cached / "manifest.json").stat().st_mtime_ns
    again = _tiny(0)
    assert attach_backend(again, "auto", "tiny", cache_dir=tmp_path, log=logs.append).name == "onnxruntime"
    assert any("reusing the cached export" in line for line in logs)
    assert not any("exporting" in line for line in logs)
    assert (cached / "manifest.json").stat().st_mtime_ns == mtime

    # a graph changed on disk: warned about, exported again, runs
    with open(cached / "memory_encoder.onnx", "ab") as f:
        f.write(b"\0garbage")
    logs.clear()
    assert attach_backend(_tiny(0), "auto", "tiny", cache_dir=tmp_path, log=logs.append).name == "onnxruntime"
    assert any(line.startswith("warning: cached export") and "sha256" in line for line in logs)
    assert any("exporting tiny once" in line for line in logs)

    # a truncated manifest likewise
    text = (cached / "manifest.json").read_text()
    (cached / "manifest.json").write_text(text[: len(text) // 3])
    logs.clear()
    attach_backend(_tiny(0), "onnxruntime", "tiny", cache_dir=tmp_path, log=logs.append)
    assert any("not valid JSON" in line for line in logs)
    assert json.loads((cached / "manifest.json").read_text())["format"] == 2


def test_auto_without_onnxruntime_runs_torch(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    logs: list[str] = []
    backend = attach_backend(_tiny(0), "auto", "tiny", cache_dir=tmp_path, log=logs.append)
    assert backend.name == "torch" and logs[0].startswith("backend auto: torch (no TensorRT")
    assert not any(tmp_path.iterdir())


def test_precision_checks(tmp_path):
    with pytest.raises(BackendError, match="precision 'int8' is not available with the torch backend"):
        attach_backend(_tiny(0), "torch", "tiny", precision="int8")
    with pytest.raises(BackendError, match="unknown backend"):
        attach_backend(_tiny(0), "onnx", "tiny")
    logs: list[str] = []
    model = _tiny(0)
    backend = attach_backend(model, "torch", "tiny", precision="bf16", log=logs.append)
    assert backend.dtype == torch.bfloat16


def test_int8_export_is_quantized_and_cached_apart(tmp_path):
    """precision int8: the cached export's image encoder becomes a calibrated QDQ int8
    graph (the other stages stay fp32), the manifest says int8 with the new graph's
    sha256, and the encoder's outputs change (computed in int8) but stay close."""
    import onnx

    from tinysam2_ros.backends.manifest import Manifest

    model = _tiny(0)
    logs: list[str] = []
    int8 = attach_backend(model, "onnxruntime", "tiny", precision="int8", cache_dir=tmp_path, log=logs.append)
    fp32 = attach_backend(model, "onnxruntime", "tiny", precision="fp32", cache_dir=tmp_path, log=logs.append)
    assert int8.engine_dir != fp32.engine_dir  # two cache entries
    m = Manifest.load(int8.engine_dir)
    assert m.precision == "int8" and Manifest.load(fp32.engine_dir).precision == "fp32"
    ops = {n.op_type for n in onnx.load(str(m.path("image_encoder"))).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    for stage in ("mask_decoder", "memory_attention", "memory_encoder"):
        assert m.stages[stage]["sha256"] == Manifest.load(fp32.engine_dir).stages[stage]["sha256"]
    images = example_inputs(model, "image_encoder")["images"]
    for a, b in zip(int8.image_encoder(images), fp32.image_encoder(images)):
        assert not torch.equal(a, b)
        assert float((a - b).norm() / b.norm()) < 0.5


def test_int8_keeps_the_demo_models_masks():
    """With the trained demo model on a generated video, int8 masks overlap the fp32
    ones (random weights and inputs are int8's worst case; trained ones are what counts)."""
    from pathlib import Path

    from tinysam2_ros.backends.tracking_benchmark import run_tracking_benchmark

    demo = Path(__file__).resolve().parents[1] / "models" / "demo_tiny_norm.safetensors"
    results = run_tracking_benchmark(
        [f"tiny_norm:backend=onnxruntime,checkpoint={demo}", f"tiny_norm:backend=onnxruntime,precision=int8,"
         f"checkpoint={demo}"], objects=(2,), sources=("synthetic",), frames=3, warmup=0, log=lambda *a: None)
    assert results[1].iou > 0.9, results[1].iou
