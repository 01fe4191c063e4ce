"""Hiera trunk: checkpoint layout, output shapes, and invariants of the windowed attention."""
from __future__ import annotations

import ast

import pytest
import torch

from tinysam2_ros.modeling.hiera import (
    HIERA_CONFIGS,
    Hiera,
    MultiScaleBlock,
    window_partition,
    window_unpartition,
)

TRUNK_PREFIX = "image_encoder.trunk."

# backbone_channel_list of the FPN neck in sam2/configs/sam2.1/sam2.1_hiera_*.yaml.
PUBLIC_CHANNEL_LISTS = {
    "tiny": [768, 384, 192, 96],
    "small": [768, 384, 192, 96],
    "base_plus": [896, 448, 224, 112],
    "large": [1152, 576, 288, 144],
}


def _randomize_(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Give every parameter random values (SAM 2 initialises the position tables to zero)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.2)
    return module.eval()


@pytest.fixture(scope="module")
def tiny() -> Hiera:
    torch.manual_seed(0)
    return _randomize_(Hiera(**HIERA_CONFIGS["tiny"]))


def test_tiny_state_dict_matches_sam21_checkpoint(tiny, reference_dir):
    expected = {}
    for line in (reference_dir / "sam2.1_hiera_t_state_dict_keys.tsv").read_text().splitlines():
        name, shape = line.split("\t")
        if name.startswith(TRUNK_PREFIX):
            expected[name[len(TRUNK_PREFIX):]] = tuple(ast.literal_eval(shape))
    assert expected, "no trunk keys in the reference list"
    actual = {k: tuple(v.shape) for k, v in tiny.state_dict().items()}
    assert sorted(actual.keys() - expected.keys()) == []  # unexpected
    assert sorted(expected.keys() - actual.keys()) == []  # missing
    assert {k: v for k, v in actual.items() if expected[k] != v} == {}  # shape mismatch


def test_tiny_outputs_at_1024(tiny):
    assert tiny.channel_list == PUBLIC_CHANNEL_LISTS["tiny"]
    with torch.no_grad():
        feats = tiny(torch.randn(1, 3, 1024, 1024))
    assert [tuple(f.shape) for f in feats] == [
        (1, 96, 256, 256),
        (1, 192, 128, 128),
        (1, 384, 64, 64),
        (1, 768, 32, 32),
    ]
    assert all(torch.isfinite(f).all() for f in feats)


def test_tiny_block_layout(tiny):
    """Window size per block (lagging one block at stage starts), pooling blocks, heads."""
    windows = [b.window_size for b in tiny.blocks]
    assert windows == [8, 8, 4, 4, 14, 0, 14, 0, 14, 0, 14, 7]
    assert [i for i, b in enumerate(tiny.blocks) if b.q_stride] == [1, 3, 10]
    assert [b.attn.num_heads for b in tiny.blocks] == [1, 2, 2, 4, 4, 4, 4, 4, 4, 4, 8, 8]
    assert tiny.stage_ends == [0, 2, 9, 11]


@pytest.mark.parametrize("name", ["small", "base_plus", "large"])
def test_other_sizes_build_and_run(name):
    cfg = HIERA_CONFIGS[name]
    model = Hiera(**cfg).eval()
    assert model.channel_list == PUBLIC_CHANNEL_LISTS[name]
    assert len(model.blocks) == sum(cfg["stages"])
    assert [i for i, b in enumerate(model.blocks) if b.window_size == 0] == list(cfg["global_att_blocks"])
    with torch.no_grad():
        feats = model(torch.randn(1, 3, 128, 128))  # stage-3 maps (8x8) get padded windows
    assert [tuple(f.shape) for f in feats] == [
        (1, c, 32 // 2**i, 32 // 2**i) for i, c in enumerate(reversed(model.channel_list))
    ]
    assert all(torch.isfinite(f).all() for f in feats)


def test_return_last_layer_only():
    model = Hiera(**HIERA_CONFIGS["tiny"], return_interm_layers=False).eval()
    assert model.channel_list == [768]
    with torch.no_grad():
        (feat,) = model(torch.randn(1, 3, 128, 128))
    assert feat.shape == (1, 768, 4, 4)


@pytest.mark.parametrize("hw,ws", [((13, 10), 4), ((8, 8), 4), ((5, 7), 8)])
def test_window_partition_contents_and_round_trip(hw, ws):
    h, w = hw
    x = torch.randn(2, h, w, 3)
    windows, (hp, wp) = window_partition(x, ws)
    assert (hp, wp) == (-(-h // ws) * ws, -(-w // ws) * ws)
    padded = torch.zeros(2, hp, wp, 3)
    padded[:, :h, :w] = x
    expected = [
        padded[b, i * ws:(i + 1) * ws, j * ws:(j + 1) * ws]
        for b in range(2)
        for i in range(hp // ws)
        for j in range(wp // ws)
    ]
    torch.testing.assert_close(windows, torch.stack(expected), rtol=0, atol=0)
    torch.testing.assert_close(window_unpartition(windows, ws, (hp, wp), (h, w)), x, rtol=0, atol=0)


def _twin_blocks(dim, dim_out, heads, q_stride, ws):
    """A windowed block and a global-attention block with identical weights."""
    torch.manual_seed(1)
    windowed = _randomize_(MultiScaleBlock(dim, dim_out, heads, q_stride=q_stride, window_size=ws), seed=1)
    global_ = MultiScaleBlock(dim, dim_out, heads, q_stride=q_stride, window_size=0).eval()
    global_.load_state_dict(windowed.state_dict())
    return windowed, global_


@pytest.mark.parametrize(
    "dim,dim_out,heads,q_stride",
    [(16, 16, 2, None), (16, 32, 4, (2, 2))],  # plain block; stage-start block with q pooling
)
@pytest.mark.parametrize("n_windows", [1, 3])
def test_windowed_block_equals_global_block_on_each_window(dim, dim_out, heads, q_stride, n_windows):
    """Everything but attention is per token, so window k of the output must equal the
    global-attention block run on window k of the input alone (no padding here)."""
    ws = 4
    windowed, global_ = _twin_blocks(dim, dim_out, heads, q_stride, ws)
    x = torch.randn(2, ws * n_windows, ws * (n_windows + 1), dim)
    with torch.no_grad():
        out = windowed(x)
        s = q_stride[0] if q_stride else 1
        assert out.shape == (2, x.shape[1] // s, x.shape[2] // s, dim_out)
        o = ws // s
        for i in range(n_windows):
            for j in range(n_windows + 1):
                ref = global_(x[:, i * ws:(i + 1) * ws, j * ws:(j + 1) * ws])
                torch.testing.assert_close(out[:, i * o:(i + 1) * o, j * o:(j + 1) * o], ref)


def test_padded_window_sees_zero_tokens():
    """A 6x6 map in one 8x8 window: attention also covers the 28 zero-padded tokens
    (keys = qkv bias), so the result differs from global attention over the 36 tokens,
    and equals the global block run on the map padded with tokens that norm1 maps to 0."""
    windowed, global_ = _twin_blocks(16, 32, 4, (2, 2), 8)
    x = torch.randn(1, 6, 6, 16)
    with torch.no_grad():
        out = windowed(x)
        assert out.shape == (1, 3, 3, 32)
        assert not torch.allclose(out, global_(x))
        # Make norm1 an exact zero map on padding tokens: constant input -> (x - mean) = 0,
        # so norm1 outputs its bias; zero the bias for this check.
        windowed.norm1.bias.zero_()
        global_.norm1.bias.zero_()
        padded = torch.zeros(1, 8, 8, 16)
        padded[:, :6, :6] = x
        torch.testing.assert_close(windowed(x), global_(padded)[:, :3, :3])


def test_window_pos_embed_is_tiled_over_the_grid():
    model = Hiera(**HIERA_CONFIGS["tiny"])
    with torch.no_grad():
        model.pos_embed_window.normal_()
        # Background constant per channel -> its bicubic resize is the same constant.
        model.pos_embed.copy_(torch.arange(96.0).reshape(1, 96, 1, 1).expand_as(model.pos_embed))
        pos = model._get_pos_embed((16, 24))
    assert pos.shape == (1, 16, 24, 96)
    win = model.pos_embed_window[0].permute(1, 2, 0)
    for i in range(16):
        for j in range(24):
            torch.testing.assert_close(pos[0, i, j], win[i % 8, j % 8] + torch.arange(96.0))


def test_onnx_export_matches_torch(tiny, tmp_path):
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    x = torch.randn(1, 3, 256, 256)
    path = tmp_path / "hiera_t.onnx"
    torch.onnx.export(
        tiny, (x,), str(path), opset_version=17, dynamo=False,
        input_names=["image"], output_names=[f"feat_s{4 * 2**i}" for i in range(4)],
    )
    # No control flow in the graph (a traced tile() used to leave If nodes behind).
    assert "If" not in {n.op_type for n in onnx.load(str(path)).graph.node}
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = sess.run(None, {"image": x.numpy()})
    with torch.no_grad():
        want = tiny(x)
    for g, w in zip(got, want):
        torch.testing.assert_close(torch.from_numpy(g), w, rtol=1e-3, atol=1e-3)
