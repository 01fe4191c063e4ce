"""ONNX export of the four stages, the manifest, the TensorRT op check and the onnxruntime backend.

Parity (onnxruntime CPU vs PyTorch float32, same random inputs, max |diff| over two sizes of
every dynamic axis): observed <= ~3e-6 on every output of both presets (tiny random weights,
EdgeTAM fixture weights at 1024 px); asserted at 1e-4 (mask logits 2e-4: they are the largest
values, tens in magnitude). The tracker with the onnxruntime backend matches the PyTorch one
to ~1e-7 on mask logits over 5 frames (3 objects, memory growing 64 -> 256 tokens); asserted
at 1e-4 (memory is stored in bfloat16 in between, which could turn a 1e-6 difference into
one bfloat16 step).
"""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from onnx import TensorProto, helper  # noqa: E402

from tinysam2_ros.backends import BackendError, make_backend  # noqa: E402
from tinysam2_ros.backends.manifest import Manifest, ManifestError, concrete_shape, sha256_file  # noqa: E402
from tinysam2_ros.backends.onnx_export import (  # noqa: E402
    INPUT_NAMES, OUTPUT_NAMES, dynamic_ranges, example_inputs, export_stages,
)
from tinysam2_ros.backends.onnxruntime_backend import OrtBackend  # noqa: E402
from tinysam2_ros.backends.opcheck import (  # noqa: E402
    UnsupportedOperatorError, check_export, check_graph, complex_tensors, supported_ops,
)
from tinysam2_ros.memory.config import MemoryConfig  # noqa: E402
from tinysam2_ros.modeling.build import build_model  # noqa: E402
from tinysam2_ros.modeling.common import LayerNorm2d, use_channels_last_norms  # noqa: E402
from tinysam2_ros.modeling.stages import STAGE_NAMES, build_stages  # noqa: E402

TOL = {"masks": 2e-4}  # everything else 1e-4


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    m = build_model("tiny")
    with torch.no_grad():  # as test_tracker: objects "present", so memory gets written
        m.sam_mask_decoder.pred_obj_score_head.layers[-1].bias.fill_(2.0)
    return m


@pytest.fixture(scope="module")
def tiny_export(tiny_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny_export")
    export_stages(tiny_model, out, "tiny", max_objects=8, max_points=4)
    return out


@pytest.fixture(scope="module")
def edgetam_export(edgetam_fixture_dir, tmp_path_factory):
    from tinysam2_ros.checkpoint import load_checkpoint

    model = build_model("edgetam")
    load_checkpoint(model, edgetam_fixture_dir / "checkpoint_fp16.pt")
    out = tmp_path_factory.mktemp("edgetam_export")
    export_stages(model, out, "edgetam")
    return model, out


def _graph_ops(path) -> set[str]:
    return {n.op_type for n in onnx.load(str(path)).graph.node}


def _parity(model, export_dir, sizes) -> dict[str, float]:
    """max |ort - torch| per stage output over ``sizes``, checking the output shapes too."""
    manifest = Manifest.load(export_dir)
    stages = build_stages(model)
    worst: dict[str, float] = {}
    for name in STAGE_NAMES:
        entry = manifest.stages[name]
        sess = ort.InferenceSession(str(export_dir / entry["file"]), providers=["CPUExecutionProvider"])
        for i, sz in enumerate(sizes):
            inputs = example_inputs(model, name, b=sz["B"], n=sz["N"], k=sz["K"], seed=10 + i, q=sz.get("Nq"))
            with torch.no_grad():
                ref = stages[name](*inputs.values())
            ref = ref if isinstance(ref, tuple) else (ref,)
            got = sess.run(None, {k: v.numpy() for k, v in inputs.items()})
            for spec, r, o in zip(entry["outputs"], ref, got):
                b = 1 if name == "image_encoder" else sz["B"]
                q = sz.get("Nq", model.feat_size ** 2)
                assert o.shape == concrete_shape(spec, {"B": b, "N": sz["N"], "K": sz["K"], "Nq": q}) == tuple(r.shape)
                key = f"{name}.{spec['name']}"
                worst[key] = max(worst.get(key, 0.0), float(np.abs(r.numpy() - o).max()))
    return worst


def _assert_parity(worst: dict[str, float]) -> None:
    bad = {k: v for k, v in worst.items() if v > TOL.get(k.split(".")[1], 1e-4)}
    assert not bad, f"onnxruntime differs from torch: {bad} (all: {worst})"


# ---------------------------------------------------------------------------------- tiny
def test_tiny_manifest(tiny_export, tiny_model):
    m = Manifest.load(tiny_export)
    assert m.format == 2 and m.preset == "tiny" and m.opset == 17 and m.precision == "fp32"
    assert m.versions == {"torch": torch.__version__, "onnx": onnx.__version__}
    assert (m.image_size, m.hidden_dim, m.mem_dim) == (256, 64, 32)
    st = m.stages
    assert set(st) == set(STAGE_NAMES)
    for name in STAGE_NAMES:
        assert [s["name"] for s in st[name]["inputs"]] == INPUT_NAMES[name]
        assert [s["name"] for s in st[name]["outputs"]] == OUTPUT_NAMES[name]
        assert st[name]["sha256"] == sha256_file(tiny_export / st[name]["file"])
    ie = st["image_encoder"]
    assert ie["inputs"][0]["shape"] == [1, 3, 256, 256] and ie["dynamic"] == {}
    assert [o["shape"] for o in ie["outputs"]] == [[1, 8, 64, 64], [1, 16, 32, 32], [1, 64, 16, 16]]
    md = st["mask_decoder"]
    spec = {s["name"]: s for s in md["inputs"]}
    assert spec["point_coords"]["shape"] == ["B", "N", 2] and spec["point_labels"]["dtype"] == "int32"
    assert spec["has_mask_input"]["shape"] == ["B"]
    assert [o["shape"] for o in md["outputs"]] == [["B", 4, 64, 64], ["B", 4], ["B", 4, 64], ["B", 1]]
    assert md["dynamic"] == {"B": {"min": 1, "opt": 1, "max": 8}, "N": {"min": 1, "opt": 2, "max": 6}}
    ma = st["memory_attention"]
    assert [s["shape"] for s in ma["inputs"]] == [["B", "Nq", 64], ["B", "Nq", 64], ["B", "Nq", 2],
                                                  ["B", "K", 32], ["B", "K", 32], ["B", "K", 2]]
    assert ma["outputs"][0]["shape"] == ["B", "Nq", 64]
    assert ma["dynamic"]["Nq"] == {"min": 1, "opt": 256, "max": 256}  # 16x16 grid, dense by default
    # tiny memory: 16x16 grid pooled 2x2 = 64 tokens/frame, budget 256, 4 prompted + 6 slots,
    # 16 pointers of 64 channels = 2 tokens of 32 each; pointers: 4 prompted + 15 recent
    assert ma["dynamic"]["K"] == {"min": 64, "opt": 256 + 16 * 2, "max": 256 + (4 + 15) * 2}
    me = st["memory_encoder"]
    assert me["outputs"][0]["shape"] == ["B", 256, 32]  # un-pooled: the tracker pools
    assert me["dynamic"] == {"B": {"min": 1, "opt": 1, "max": 8}}


def test_tiny_graphs_pass_op_check_and_no_complex(tiny_export):
    assert check_export(tiny_export) == {s: [] for s in STAGE_NAMES}
    for name in STAGE_NAMES:
        assert check_graph(tiny_export / f"{name}.onnx") == []
        assert complex_tensors(tiny_export / f"{name}.onnx") == []
    assert "LayerNormalization" in _graph_ops(tiny_export / "memory_attention.onnx")


def test_tiny_parity_two_sizes(tiny_export, tiny_model):
    k = Manifest.load(tiny_export).stages["memory_attention"]["dynamic"]["K"]
    # dense queries, then a routed subset (Nq < h*w) with the largest memory
    worst = _parity(tiny_model, tiny_export, [{"B": 1, "N": 1, "K": k["min"]},
                                              {"B": 3, "N": 5, "K": k["max"], "Nq": 37}])
    _assert_parity(worst)


def test_export_leaves_model_untouched(tmp_path):
    torch.manual_seed(1)
    model = build_model("tiny").train()
    keys = list(model.state_dict())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    export_stages(model, tmp_path, "tiny")
    assert model.training and all(m.training for m in model.modules())  # mode restored / never changed
    assert list(model.state_dict()) == keys  # RepViT trunk not fused in place
    assert not any(getattr(m, "channels_last", False) for m in model.modules())  # norms: SAM 2's form
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])


def test_tinysam2_ranges():
    model = build_model("tinysam2")
    mem = MemoryConfig.from_dict(model.preset["memory"])
    r = dynamic_ranges(model, mem, max_objects=16, max_points=16)
    # 64x64 memory grid pooled 2x2 -> 1024 tokens/frame; budget 2000; 16 pointers x 4 tokens
    assert r["B"] == {"min": 1, "opt": 1, "max": 16} and r["N"] == {"min": 1, "opt": 2, "max": 18}
    assert r["K"] == {"min": 1024, "opt": 2000 + 64, "max": 2000 + (4 + 15) * 4}
    off = dynamic_ranges(model, MemoryConfig(), 4, 2)
    # SAM 2 memory: 4096 tokens/frame, 16 prompted frames + 6 recent ones, no budget
    assert off["K"] == {"min": 4096, "opt": 7 * 4096 + 64, "max": 22 * 4096 + (16 + 15) * 4}


def test_tracker_with_ort_backend_matches_torch(tiny_model, tiny_export):
    from tinysam2_ros.tracking.tracker import Tracker, TrackerConfig

    rng = np.random.default_rng(0)
    base = rng.integers(0, 255, size=(96, 128, 3), dtype=np.uint8)
    video = []
    for i in range(5):
        f = base.copy()
        f[20 + i: 50 + i, 30 + 2 * i: 70 + 2 * i] = (200, 40, 40)
        video.append(f)

    def run():
        tracker = Tracker(tiny_model, TrackerConfig.from_preset(tiny_model.preset, {"write_threshold": 0.0}))
        out = []
        for i, f in enumerate(video):
            if i == 0:
                tracker.add_prompt(1, box=[30, 20, 70, 50])
                tracker.add_prompt(2, box=[80, 40, 120, 90])
            if i == 2:
                tracker.add_prompt(3, points=[[100, 30], [20, 80], [60, 60]], labels=[1, 0, 1])
            out.append(tracker.step(f))
        return out

    tiny_model.set_backend(None)
    ref = run()
    backend = make_backend("onnxruntime", tiny_model, engine_dir=tiny_export)
    assert isinstance(backend, OrtBackend) and backend.name == "onnxruntime"
    backend.check_model(tiny_model)
    tiny_model.set_backend(backend)
    try:
        got = run()
    finally:
        tiny_model.set_backend(None)
    assert any(r.objects[1].memory_tokens > 64 for r in ref[2:])  # K grew over the frames
    for r, g in zip(ref, got):
        assert set(r.objects) == set(g.objects)
        for obj_id, ro in r.objects.items():
            go = g.objects[obj_id]
            torch.testing.assert_close(go.low_res_logits, ro.low_res_logits, atol=1e-4, rtol=1e-4)
            assert go.state == ro.state and go.memory_tokens == ro.memory_tokens
            assert abs(go.object_score - ro.object_score) < 1e-4
            assert (go.mask != ro.mask).mean() < 1e-3


# ------------------------------------------------------------------------------- edgetam
@pytest.mark.slow  # 30-160 s on a 2-core CPU (--durations)
def test_edgetam_export_with_fixture_weights(edgetam_export):
    model, out = edgetam_export
    m = Manifest.load(out)
    assert (m.image_size, m.hidden_dim, m.mem_dim) == (1024, 256, 64)
    st = m.stages
    assert st["image_encoder"]["inputs"][0]["shape"] == [1, 3, 1024, 1024]
    assert [o["shape"] for o in st["image_encoder"]["outputs"]] == [[1, 32, 256, 256], [1, 64, 128, 128],
                                                                     [1, 256, 64, 64]]
    # spatial perceiver: 256 1D + 256 2D latents per frame; EdgeTAM has no no-object
    # embedding, its object_score_logits input is still part of the contract
    assert st["memory_encoder"]["outputs"][0]["shape"] == ["B", 512, 64]
    assert [s["name"] for s in st["memory_encoder"]["inputs"]] == INPUT_NAMES["memory_encoder"]
    # compression off: 16 prompted + 6 recent frames of 512 tokens, (16 + 15) pointers x 4 tokens
    assert st["memory_attention"]["dynamic"]["K"] == {"min": 512, "opt": 7 * 512 + 64, "max": 22 * 512 + 31 * 4}
    check_export(out)
    for name in STAGE_NAMES:
        assert complex_tensors(out / f"{name}.onnx") == []
    # the 64- and 256-channel LayerNorm2d of the mask downsampler and the fuser's two are one
    # LayerNormalization node each; only the 4- and 16-channel ones keep their two reductions
    nodes = [n.op_type for n in onnx.load(str(out / "memory_encoder.onnx")).graph.node
             if "/memory_encoder/" in n.name]  # not the spatial perceiver's
    assert nodes.count("LayerNormalization") == 4 and nodes.count("ReduceMean") == 4


def test_channels_last_layer_norm_matches_sam2_form():
    torch.manual_seed(0)
    ln = LayerNorm2d(64)
    with torch.no_grad():
        ln.weight.normal_()
        ln.bias.normal_()
    x = torch.randn(2, 64, 9, 7) * 3 + 1
    ref = ln(x)
    narrow = LayerNorm2d(16)
    assert use_channels_last_norms(torch.nn.Sequential(ln, narrow)) == 1 and ln.channels_last
    assert not narrow.channels_last  # below 32 channels the transposes cost more than they save
    out = ln(x)
    assert out.shape == ref.shape
    torch.testing.assert_close(out, ref, rtol=0, atol=2e-6)


@pytest.mark.slow  # 30-160 s on a 2-core CPU (--durations)
def test_edgetam_parity_two_sizes(edgetam_export):
    model, out = edgetam_export
    _assert_parity(_parity(model, out, [{"B": 1, "N": 1, "K": 512},
                                        {"B": 3, "N": 5, "K": 3 * 512 + 12, "Nq": 700}]))  # routed: 700 of 4096


# ------------------------------------------------------------------------------ op check
def _model(nodes, inputs, outputs, opset_imports=None):
    graph = helper.make_graph(nodes, "g", inputs, outputs)
    return helper.make_model(graph, opset_imports=opset_imports or [helper.make_opsetid("", 17)])


def _vi(name, dtype=TensorProto.FLOAT, shape=(2, 3)):
    return helper.make_tensor_value_info(name, dtype, list(shape))


def test_op_check_flags_unknown_domain_and_subgraph_ops(tmp_path):
    assert {"Conv", "MatMul", "LayerNormalization", "Resize"} <= supported_ops()
    assert "NonMaxSuppression" in supported_ops() and "Unique" not in supported_ops()
    then_g = helper.make_graph([helper.make_node("Unique", ["x"], ["u"])], "then", [], [_vi("u", shape=(6,))])
    else_g = helper.make_graph([helper.make_node("Identity", ["x"], ["e"])], "else", [], [_vi("e")])
    nodes = [
        helper.make_node("Relu", ["x"], ["r"]),
        helper.make_node("FusedMatMul", ["r", "r"], ["f"], domain="com.microsoft"),
        helper.make_node("FrobnicateTensor", ["f"], ["y"]),
        helper.make_node("If", ["c"], ["z"], then_branch=then_g, else_branch=else_g),
    ]
    model = _model(nodes, [_vi("x"), _vi("c", TensorProto.BOOL, ())], [_vi("y"), _vi("z")],
                   [helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    path = tmp_path / "bad.onnx"
    onnx.save(model, str(path))
    assert check_graph(path) == ["FrobnicateTensor", "Unique", "com.microsoft::FusedMatMul"]


def test_check_export_raises_naming_stage_and_op(tiny_export, tmp_path):
    out = tmp_path / "exp"
    shutil.copytree(tiny_export, out)
    bad = _model([helper.make_node("FrobnicateTensor", ["x"], ["y"])], [_vi("x")], [_vi("y")])
    onnx.save(bad, str(out / "memory_encoder.onnx"))
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["stages"]["memory_encoder"]["sha256"] = sha256_file(out / "memory_encoder.onnx")
    (out / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(UnsupportedOperatorError, match=r"memory_encoder.*FrobnicateTensor") as info:
        check_export(out)
    assert info.value.problems["memory_encoder"] == ["FrobnicateTensor"]
    assert info.value.problems["mask_decoder"] == []


def test_complex_tensors_are_flagged(tmp_path):
    model = _model([helper.make_node("Identity", ["x"], ["y"])], [_vi("x", TensorProto.COMPLEX64)],
                   [_vi("y", TensorProto.COMPLEX64)])
    path = tmp_path / "cplx.onnx"
    onnx.save(model, str(path))
    assert complex_tensors(path) == ["x", "y"]


# ------------------------------------------------------------------------------ manifest
def test_manifest_errors(tiny_export, tmp_path):
    with pytest.raises(ManifestError, match="not found"):
        Manifest.load(tmp_path / "nowhere")
    with pytest.raises(ManifestError, match="manifest.json not found"):
        Manifest.load(tmp_path)

    out = tmp_path / "exp"
    shutil.copytree(tiny_export, out)
    good = (out / "manifest.json").read_text()
    (out / "manifest.json").write_text(good[: len(good) // 2])
    with pytest.raises(ManifestError, match="corrupt"):
        Manifest.load(out)
    broken = json.loads(good)
    del broken["stages"]["mask_decoder"]["sha256"]
    (out / "manifest.json").write_text(json.dumps(broken))
    with pytest.raises(ManifestError, match="mask_decoder.*corrupt.*sha256"):
        Manifest.load(out)
    (out / "manifest.json").write_text(good)
    Manifest.load(out)

    (out / "memory_attention.onnx").rename(out / "moved.onnx")
    with pytest.raises(ManifestError, match="memory_attention.onnx is missing"):
        Manifest.load(out)
    (out / "moved.onnx").rename(out / "memory_attention.onnx")

    with open(out / "image_encoder.onnx", "ab") as f:
        f.write(b"\0")
    with pytest.raises(ManifestError, match="image_encoder.*sha256"):
        Manifest.load(out)
    with pytest.raises(BackendError, match="sha256"):  # ManifestError is a BackendError
        OrtBackend(out)


# ------------------------------------------------------------------------------- backend
@pytest.mark.skipif("CUDAExecutionProvider" in ort.get_available_providers(), reason="onnxruntime has CUDA here")
def test_cuda_request_on_cpu_only_onnxruntime(tiny_export):
    with pytest.raises(BackendError, match="CUDAExecutionProvider.*onnxruntime-gpu"):
        OrtBackend(tiny_export, device="cuda")


def test_backend_errors(tiny_export, tiny_model, monkeypatch):
    with pytest.raises(BackendError, match="engine_dir"):
        OrtBackend(None)
    with pytest.raises(BackendError, match="cpu or cuda"):
        OrtBackend(tiny_export, device="mps")
    other = build_model("tinysam2")
    with pytest.raises(BackendError, match="image_size"):
        OrtBackend(tiny_export).check_model(other)
    monkeypatch.setitem(__import__("sys").modules, "onnxruntime", None)  # as if not installed
    with pytest.raises(BackendError, match="pip install onnxruntime"):
        OrtBackend(tiny_export)


def test_backend_stage_calls_accept_expanded_inputs(tiny_export, tiny_model):
    backend = OrtBackend(tiny_export)
    stages = build_stages(tiny_model)
    inputs = example_inputs(tiny_model, "mask_decoder", b=1, n=2)
    expanded = [t.expand(3, *t.shape[1:]) if t.dim() > 0 else t for t in inputs.values()]
    got = backend.mask_decoder(*expanded)
    with torch.no_grad():
        ref = stages["mask_decoder"](*expanded)
    assert all(g.dtype == torch.float32 for g in got)
    for g, r in zip(got, ref):
        torch.testing.assert_close(g, r, atol=2e-4, rtol=1e-4)


# ----------------------------------------------------------------------------------- cli
def _cli(argv):
    import argparse

    from tinysam2_ros.backends.backend_cli import add_export_parser

    parser = argparse.ArgumentParser(prog="tinysam2")
    add_export_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return args.func(args)


@pytest.mark.slow  # 30-160 s on a 2-core CPU (--durations)
def test_cli_export_table_and_failing_op_check(tmp_path, capsys, monkeypatch):
    assert _cli(["export", "--preset", "tiny", "--out", str(tmp_path / "a"), "--max-objects", "4"]) == 0
    text = capsys.readouterr().out
    assert "memory_attention.onnx" in text and "B 1/1/4, K 64/288/294, Nq 1/256/256" in text and "N 1/2/18" in text
    assert "operator check: ok" in text and "parity: max |onnxruntime - torch|" in text
    Manifest.load(tmp_path / "a")

    from tinysam2_ros.backends import opcheck

    monkeypatch.setattr(opcheck, "supported_ops", lambda path=None: frozenset({"Relu", "Add"}))
    with pytest.raises(UnsupportedOperatorError, match=r"image_encoder \(image_encoder.onnx\): unsupported .*Conv"):
        export_stages(build_model("tiny"), tmp_path / "b", "tiny")
    assert _cli(["export", "--preset", "tiny", "--out", str(tmp_path / "c"), "--skip-parity"]) == 1
    assert "operator check: FAILED" in capsys.readouterr().out
    assert _cli(["export", "--preset", "nope", "--out", str(tmp_path / "d")]) == 2


def test_cli_export_int8_calibrated_on_a_folder(tmp_path, capsys):
    """``--int8-calibration DIR``: the export's image encoder becomes a QDQ int8 graph
    calibrated on the user's frames, and the onnxruntime backend runs it from --out."""
    import cv2
    import onnx

    from tinysam2_ros.backends.precision import calibration_frames

    frames = tmp_path / "frames"
    frames.mkdir()
    for i, f in enumerate(calibration_frames(3)):
        assert cv2.imwrite(str(frames / f"{i:05d}.jpg"), f[..., ::-1])
    out = tmp_path / "int8"
    assert _cli(["export", "--preset", "tiny", "--out", str(out), "--skip-parity",
                 "--int8-calibration", str(frames)]) == 0
    assert f"calibrated on 3 frames of {frames}" in capsys.readouterr().out
    m = Manifest.load(out)
    assert m.precision == "int8"
    assert "QuantizeLinear" in {n.op_type for n in onnx.load(str(m.path("image_encoder"))).graph.node}
    backend = make_backend("onnxruntime", build_model("tiny"), out)
    feats = backend.image_encoder(example_inputs(build_model("tiny"), "image_encoder")["images"])
    assert all(bool(torch.isfinite(x).all()) for x in feats)
    # a folder without frames: a clear error, exit 2
    (tmp_path / "empty").mkdir()
    assert _cli(["export", "--preset", "tiny", "--out", str(tmp_path / "x"), "--skip-parity",
                 "--int8-calibration", str(tmp_path / "empty")]) == 2
    assert "no .jpg / .png frames" in capsys.readouterr().err


@pytest.mark.slow  # 30-160 s on a 2-core CPU (--durations)
def test_eval_gives_the_same_jf_with_onnxruntime_and_torch(tmp_path):
    """`tinysam2 eval --backend onnxruntime` vs `--backend torch` on the same data and weights."""
    import torch as _torch

    from tinysam2_ros.evaluation.run_eval import run_eval
    from tinysam2_ros.evaluation.synth import SynthConfig, generate_sequence
    from tinysam2_ros.modeling.build import build_model as _build

    generate_sequence(tmp_path / "data", "seq0", SynthConfig(num_frames=6, size=(64, 96), num_objects=2, seed=1))
    _torch.manual_seed(0)
    model = _build("tiny")
    with _torch.no_grad():
        model.sam_mask_decoder.pred_obj_score_head.layers[-1].bias.fill_(3.0)
    ckpt = tmp_path / "w.pt"
    _torch.save({"model": model.state_dict()}, ckpt)
    kw = dict(preset="tiny", checkpoint=ckpt, memory_overrides={"write_threshold": 0.0}, log=lambda *_: None)
    a = run_eval(tmp_path / "data", backend="torch", **kw)["overall"]
    b = run_eval(tmp_path / "data", backend="onnxruntime", **kw)["overall"]
    assert abs(a["JF"] - b["JF"]) <= 1e-3  # stated tolerance: 0.001 J&F
    assert a["memory_tokens"] == b["memory_tokens"]


@pytest.mark.slow  # 30-160 s on a 2-core CPU (--durations)
def test_tiny_norm_exports_with_parity(tmp_path):
    """The channel normalisation of ``tiny_norm`` survives export (and passes the TensorRT
    operator check inside ``export_stages``)."""
    torch.manual_seed(0)
    model = build_model("tiny_norm")
    export_stages(model, tmp_path, "tiny_norm", max_objects=2, max_points=2)
    k = Manifest.load(tmp_path).stages["memory_attention"]["dynamic"]["K"]
    _assert_parity(_parity(model, tmp_path, [{"B": 1, "N": 1, "K": k["min"]}]))
    inputs = example_inputs(model, "image_encoder", b=1, n=1, k=1, seed=3)
    with torch.no_grad():
        for r in build_stages(model)["image_encoder"](*inputs.values()):
            assert float(r.var(1, unbiased=False).mean()) == pytest.approx(1.0, abs=0.02)
