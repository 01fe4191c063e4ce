"""Image encoder (RepViT trunk + FPN neck): key layout, SAM 2 neck semantics, fidelity to EdgeTAM."""
from __future__ import annotations

import ast
import io

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tinysam2_ros.modeling.image_encoder import FpnNeck, ImageEncoder
from tinysam2_ros.modeling.position_encoding import PositionEmbeddingSine
from tinysam2_ros.modeling.repvit import RepViTTrunk

PREFIX = "image_encoder."


def _edgetam_encoder() -> ImageEncoder:
    """EdgeTAM's configuration (edgetam.yaml)."""
    neck = FpnNeck(
        d_model=256,
        backbone_channel_list=[384, 192, 96, 48],
        fpn_top_down_levels=[2, 3],
        fpn_interp_model="nearest",
        fuse_type="sum",
    )
    return ImageEncoder(RepViTTrunk(), neck, scalp=1).eval()


class _StubTrunk(nn.Module):
    """The trunk contract: ``channel_list`` deepest first, forward returns maps high-res first."""

    def __init__(self, channels=(8, 16, 24, 32)) -> None:
        super().__init__()
        self.channel_list = list(channels)[::-1]
        self.projs = nn.ModuleList(nn.Conv2d(3, c, 1) for c in channels)

    def forward(self, x):
        return [p(F.avg_pool2d(x, 4 * 2**i)) for i, p in enumerate(self.projs)]


@pytest.fixture(scope="module")
def fixture_encoder(edgetam_state_dict) -> ImageEncoder:
    encoder = _edgetam_encoder()
    weights = {k[len(PREFIX):]: v for k, v in edgetam_state_dict.items() if k.startswith(PREFIX)}
    encoder.load_state_dict(weights, strict=True)
    return encoder


@pytest.fixture(scope="module")
def frame0_output(fixture_encoder, edgetam_reference_outputs):
    x = torch.from_numpy(edgetam_reference_outputs["frame0_input"]).float()[None]
    with torch.no_grad():
        return fixture_encoder(x)


def test_state_dict_matches_official_layout(reference_dir):
    expected = {}
    for line in (reference_dir / "edgetam_state_dict_keys.tsv").read_text().splitlines():
        key, _, shape = line.partition("\t")
        if key.startswith(PREFIX):
            expected[key[len(PREFIX):]] = tuple(ast.literal_eval(shape.strip()))
    got = {k: tuple(v.shape) for k, v in _edgetam_encoder().state_dict().items()}
    assert sorted(set(expected) - set(got)) == [], "missing keys"
    assert sorted(set(got) - set(expected)) == [], "unexpected keys"
    assert got == expected


def test_fidelity_frame0(frame0_output, edgetam_state_dict, edgetam_reference_outputs):
    """backbone_fpn after the mask decoder's conv_s0/conv_s1, vs the official fp32 run (stored fp16)."""
    sd = edgetam_state_dict
    fpn = frame0_output["backbone_fpn"]
    got = [
        F.conv2d(fpn[0], sd["sam_mask_decoder.conv_s0.weight"], sd["sam_mask_decoder.conv_s0.bias"]),
        F.conv2d(fpn[1], sd["sam_mask_decoder.conv_s1.weight"], sd["sam_mask_decoder.conv_s1.bias"]),
        fpn[2],
    ]
    for i, g in enumerate(got):
        ref = torch.from_numpy(edgetam_reference_outputs[f"frame0_backbone_fpn{i}"]).float()
        assert g.shape == ref.shape
        scale = ref.abs().max().item()
        err = (g - ref).abs().max().item()
        print(f"backbone_fpn{i}: max abs diff {err:.3g}, scale {scale:.3g}, relative {err / scale:.3g}")
        assert err <= 1e-2 * scale


def test_encoder_output_structure(frame0_output):
    fpn, pos = frame0_output["backbone_fpn"], frame0_output["vision_pos_enc"]
    # scalp=1 drops the stride-32 level: strides 4, 8, 16 remain.
    assert [tuple(f.shape) for f in fpn] == [(1, 256, 256, 256), (1, 256, 128, 128), (1, 256, 64, 64)]
    assert [p.shape for p in pos] == [f.shape for f in fpn]
    assert frame0_output["vision_features"] is fpn[-1]
    torch.testing.assert_close(pos[-1], PositionEmbeddingSine(256)(fpn[-1]))


def test_neck_top_down_rule():
    """Only levels in fpn_top_down_levels receive the upsampled coarser level (SAM 2 semantics)."""
    torch.manual_seed(0)
    neck = FpnNeck(d_model=16, backbone_channel_list=[32, 24, 16, 8], fpn_top_down_levels=[2, 3]).eval()
    xs = [torch.randn(2, c, 64 // 2**i, 48 // 2**i) for i, c in enumerate([8, 16, 24, 32])]
    with torch.no_grad():
        out, pos = neck(xs)
        lateral = [neck.convs[3 - i](x) for i, x in enumerate(xs)]
    assert [tuple(o.shape) for o in out] == [(2, 16, 64 // 2**i, 48 // 2**i) for i in range(4)]
    assert [p.shape for p in pos] == [o.shape for o in out]
    torch.testing.assert_close(out[3], lateral[3])
    torch.testing.assert_close(out[2], lateral[2] + F.interpolate(out[3], scale_factor=2.0, mode="nearest"))
    torch.testing.assert_close(out[1], lateral[1])
    torch.testing.assert_close(out[0], lateral[0])


def test_neck_all_levels_avg():
    torch.manual_seed(0)
    neck = FpnNeck(d_model=8, backbone_channel_list=[16, 8], fpn_top_down_levels=None, fuse_type="avg")
    xs = [torch.randn(1, 8, 8, 8), torch.randn(1, 16, 4, 4)]
    with torch.no_grad():
        out, _ = neck(xs)
        expected0 = (neck.convs[1](xs[0]) + F.interpolate(out[1], scale_factor=2.0)) / 2
    torch.testing.assert_close(out[0], expected0)


@pytest.mark.parametrize("scalp", [0, 1, 2])
def test_scalp_with_any_trunk(scalp):
    trunk = _StubTrunk()
    neck = FpnNeck(d_model=32, backbone_channel_list=trunk.channel_list)
    with torch.no_grad():
        out = ImageEncoder(trunk, neck, scalp=scalp)(torch.randn(1, 3, 128, 128))
    sizes = [32, 16, 8, 4][: 4 - scalp]
    assert [f.shape[-1] for f in out["backbone_fpn"]] == sizes
    assert [p.shape[-1] for p in out["vision_pos_enc"]] == sizes
    assert out["vision_features"].shape == (1, 32, sizes[-1], sizes[-1])


def test_channel_mismatch_rejected():
    with pytest.raises(AssertionError):
        ImageEncoder(_StubTrunk(), FpnNeck(backbone_channel_list=[384, 192, 96, 48]))


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # legacy TorchScript exporter (no onnxscript)
def test_onnx_export_matches_torch():
    """The encoder (fused or not) exports to ONNX and runs identically in onnxruntime."""
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")

    class Flat(nn.Module):
        def __init__(self, encoder):
            super().__init__()
            self.encoder = encoder

        def forward(self, x):
            out = self.encoder(x)
            return (out["vision_features"], *out["backbone_fpn"], *out["vision_pos_enc"])

    torch.manual_seed(0)
    trunk = RepViTTrunk(embed_dims=(16, 32, 48, 64), depths=(1, 2, 2, 1))
    encoder = ImageEncoder(trunk, FpnNeck(d_model=32, backbone_channel_list=trunk.channel_list), scalp=1)
    x = torch.randn(1, 3, 128, 128)
    for fuse in (False, True):
        if fuse:
            trunk.fuse()
        model = Flat(encoder).eval()
        buf = io.BytesIO()
        torch.onnx.export(model, (x,), buf, dynamo=False, opset_version=17)
        session = ort.InferenceSession(buf.getvalue(), providers=["CPUExecutionProvider"])
        got = session.run(None, {session.get_inputs()[0].name: x.numpy()})
        with torch.no_grad():
            expected = model(x)
        for g, e in zip(got, expected):
            torch.testing.assert_close(torch.from_numpy(g), e, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("preset_name, normalized", [("tiny_norm", True), ("tiny", False), ("edgetam", False)])
def test_image_feature_normalisation_follows_the_preset(preset_name, normalized):
    """``tiny_norm`` normalises the encoder outputs over channels; ``tiny`` (the demo
    model's) and the presets of published checkpoints pass them through unchanged."""
    from tinysam2_ros.modeling.build import build_model
    from tinysam2_ros.modeling.presets import get_preset
    from tinysam2_ros.modeling.stages import build_stages

    preset = get_preset(preset_name)
    if preset_name == "edgetam":  # a small input keeps the test fast; the rule is the same
        preset["image_size"] = 256
    model = build_model(preset)
    assert model.normalize_image_features is normalized
    torch.manual_seed(0)
    images = torch.randn(1, 3, preset["image_size"], preset["image_size"]) * 3
    with torch.no_grad():
        outputs = build_stages(model)["image_encoder"](images)
        fpn = model.image_encoder(images)["backbone_fpn"]
    for x in outputs:
        mean, var = x.mean(1), x.var(1, unbiased=False)
        assert torch.allclose(mean, torch.zeros_like(mean), atol=1e-4) is normalized
        assert torch.allclose(var, torch.ones_like(var), atol=0.02) is normalized  # eps 1e-5
    if not normalized:
        assert torch.equal(outputs[2], fpn[-1])


@pytest.mark.parametrize("preset_name", ["tiny_norm", "tinysam2"])
def test_folded_high_res_projections_compute_the_same_stage(preset_name):
    """``fold_high_res`` (used by the export) turns the neck's lateral conv and the
    decoder's ``conv_s0``/``conv_s1`` of each high-res level into one conv: same outputs
    up to float rounding, and the stage no longer runs those lateral convs."""
    from tinysam2_ros.modeling.build import build_model
    from tinysam2_ros.modeling.presets import get_preset
    from tinysam2_ros.modeling.stages import build_stages

    preset = get_preset(preset_name)
    preset["image_size"] = 256  # the rule does not depend on the size; keeps the test fast
    torch.manual_seed(0)
    model = build_model(preset).eval()
    stage = build_stages(model)["image_encoder"]
    images = torch.randn(1, 3, 256, 256)
    with torch.no_grad():
        expected = stage(images)
        assert stage.fold_high_res()
        n = len(model.image_encoder.neck.convs) - 1
        calls = []
        hooks = [model.image_encoder.neck.convs[n - i].register_forward_hook(lambda *a, i=i: calls.append(i))
                 for i in range(n + 1)]
        got = stage(images)
        for h in hooks:
            h.remove()
    assert sorted(calls) == [2, 3]  # the two high-res lateral convs are folded away
    for g, e in zip(got, expected):
        assert g.shape == e.shape
        torch.testing.assert_close(g, e, atol=1e-5, rtol=1e-5)
    assert torch.equal(got[2], expected[2])


def test_fold_high_res_refuses_a_neck_with_top_down_high_res_levels():
    """A high-res level that takes the top-down path needs its 256-channel map: no fold."""
    from tinysam2_ros.modeling.build import build_model
    from tinysam2_ros.modeling.presets import get_preset
    from tinysam2_ros.modeling.stages import build_stages

    preset = get_preset("tiny")
    preset["neck"]["fpn_top_down_levels"] = [1, 2, 3]
    stage = build_stages(build_model(preset))["image_encoder"]
    assert not stage.fold_high_res()
    assert stage.folded is None
