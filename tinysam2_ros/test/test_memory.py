"""Memory attention, memory encoder and EdgeTAM spatial perceiver.

The memory-attention references below are straightforward re-statements of the
official SAM 2 (``RoPEAttention`` with ``rope_k_repeat``) and EdgeTAM
(``RoPEAttentionv2``: 64x64 query grid, per memory frame 256 unrotated 1D latents +
a 16x16 key grid, trailing object pointers unrotated) formulations, using complex
numbers, explicit softmax attention and the module's weights read from its
state_dict.
"""
from __future__ import annotations

import ast
import math

import pytest
import torch
import torch.nn.functional as F

from tinysam2_ros.modeling.memory_attention import (
    MemoryAttention,
    RoPEAttention,
    build_edgetam_memory_attention,
    build_sam2_memory_attention,
)
from tinysam2_ros.modeling.memory_encoder import MemoryEncoder
from tinysam2_ros.modeling.position_encoding import PositionEmbeddingSine
from tinysam2_ros.modeling.rope import apply_rope, grid_coords
from tinysam2_ros.modeling.spatial_perceiver import SpatialPerceiver

TSVS = {"sam2.1_t": "sam2.1_hiera_t_state_dict_keys.tsv", "edgetam": "edgetam_state_dict_keys.tsv"}


# ------------------------------------------------------------------ helpers
def _read_tsv(reference_dir, name, prefix):
    out = {}
    for line in (reference_dir / TSVS[name]).read_text().splitlines():
        if not line.strip():
            continue
        key, shape = line.split("\t")
        if key.startswith(prefix):
            out[key[len(prefix):]] = tuple(ast.literal_eval(shape))
    return out


def _shapes(module):
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


def _sub_state_dict(sd, prefix):
    return {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}


def _randomize_(module, seed=0, scale=0.05):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if "norm" in name and name.endswith("weight"):
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=gen))
            else:
                p.copy_(scale * torch.randn(p.shape, generator=gen) + 0.02 * torch.randn(p.shape, generator=gen))
    return module.eval()


def _maxdiff(a, b):
    return (a - b).abs().max().item()


# ------------------------------------------------------- complex references
def _cis(dim, end_x, end_y, theta=10000.0):
    freqs = 1.0 / (theta ** (torch.arange(0, dim, 4)[: dim // 4].float() / dim))
    t = torch.arange(end_x * end_y, dtype=torch.float32)
    fx = torch.outer(t % end_x, freqs)
    fy = torch.outer(torch.div(t, end_x, rounding_mode="floor"), freqs)
    return torch.cat([torch.polar(torch.ones_like(fx), fx), torch.polar(torch.ones_like(fy), fy)], -1)


def _rot(x, cis):
    """x (B, H, N, D) rotated by cis (N, D/2) in the complex plane."""
    xc = torch.view_as_complex(x.float().reshape(*x.shape[:-1], -1, 2))
    return torch.view_as_real(xc * cis).flatten(3)


def _ref_attention(p, q, k, v, q_side, n_excl, mode):
    """One head; ``mode`` 'sam2': keys tiled on the query grid; 'edgetam': v2 layout."""
    q = F.linear(q, p["q_proj.weight"], p["q_proj.bias"]).unsqueeze(1)
    k = F.linear(k, p["k_proj.weight"], p["k_proj.bias"]).unsqueeze(1)
    v = F.linear(v, p["v_proj.weight"], p["v_proj.bias"]).unsqueeze(1)
    dim = q.shape[-1]
    cis_q = _cis(dim, q_side, q_side)
    q = _rot(q, cis_q)
    n_rope = k.shape[2] - n_excl
    k_rope, k_tail = k[:, :, :n_rope], k[:, :, n_rope:]
    if mode == "sam2":
        r = n_rope // q.shape[2]
        k_rope = _rot(k_rope, cis_q.repeat(r, 1))
    else:  # EdgeTAM RoPEAttentionv2: per frame [256 unrotated | 16x16 grid]
        cis_k = _cis(dim, 16, 16)
        frame = 512
        frames = k_rope.reshape(k.shape[0], 1, n_rope // frame, frame, dim)
        rotated = _rot(frames[..., 256:, :].flatten(2, 3), cis_k.repeat(n_rope // frame, 1))
        rotated = rotated.reshape(k.shape[0], 1, n_rope // frame, 256, dim)
        k_rope = torch.cat((frames[..., :256, :], rotated), dim=3).flatten(2, 3)
    k = torch.cat((k_rope, k_tail), dim=2)
    attn = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(dim), dim=-1)
    out = (attn @ v).squeeze(1)
    return F.linear(out, p["out_proj.weight"], p["out_proj.bias"])


def _ref_memory_attention(sd, num_layers, curr, curr_pos, memory, memory_pos, n_ptr, mode):
    def ln(x, name):
        return F.layer_norm(x, (x.shape[-1],), sd[name + ".weight"], sd[name + ".bias"])

    q_side = int(math.sqrt(curr.shape[1]))
    out = curr + 0.1 * curr_pos
    for i in range(num_layers):
        pre = f"layers.{i}."
        sa = _sub_state_dict(sd, pre + "self_attn.")
        ca = _sub_state_dict(sd, pre + "cross_attn_image.")
        t2 = ln(out, pre + "norm1")
        out = out + _ref_attention(sa, t2, t2, t2, q_side, 0, "sam2")  # self-attn: same grid
        t2 = ln(out, pre + "norm2")
        out = out + _ref_attention(ca, t2, memory + memory_pos, memory, q_side, n_ptr, mode)
        t2 = ln(out, pre + "norm3")
        t2 = F.linear(F.relu(F.linear(t2, sd[pre + "linear1.weight"], sd[pre + "linear1.bias"])),
                      sd[pre + "linear2.weight"], sd[pre + "linear2.bias"])
        out = out + t2
    return ln(out, "norm")


# ------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def sam2_attn():
    return _randomize_(build_sam2_memory_attention(num_layers=4), seed=1)


@pytest.fixture(scope="module")
def edgetam_modules(edgetam_state_dict):
    attn = build_edgetam_memory_attention()
    attn.load_state_dict(_sub_state_dict(edgetam_state_dict, "memory_attention."), strict=True)
    enc = MemoryEncoder()
    enc.load_state_dict(_sub_state_dict(edgetam_state_dict, "memory_encoder."), strict=True)
    perc = SpatialPerceiver()
    perc.load_state_dict(_sub_state_dict(edgetam_state_dict, "spatial_perceiver."), strict=True)
    return attn.eval(), enc.eval(), perc.eval()


# ------------------------------------------------------ (b) key layout
@pytest.mark.parametrize(
    "tsv,prefix,factory",
    [
        ("sam2.1_t", "memory_attention.", lambda: build_sam2_memory_attention(4)),
        ("edgetam", "memory_attention.", lambda: build_edgetam_memory_attention(2)),
        ("sam2.1_t", "memory_encoder.", MemoryEncoder),
        ("edgetam", "memory_encoder.", MemoryEncoder),
        ("edgetam", "spatial_perceiver.", SpatialPerceiver),
    ],
)
def test_state_dict_layout_matches_reference(reference_dir, tsv, prefix, factory):
    want = _read_tsv(reference_dir, tsv, prefix)
    assert want, f"no {prefix} keys in {tsv}"
    got = _shapes(factory())
    assert sorted(got) == sorted(want)
    assert got == want


def test_sam2_checkpoint_has_no_spatial_perceiver(reference_dir):
    assert not _read_tsv(reference_dir, "sam2.1_t", "spatial_perceiver.")


def test_edgetam_fixture_loads_strictly(edgetam_modules):
    attn, enc, perc = edgetam_modules
    assert len(attn.layers) == 2 and len(enc.fuser.layers) == 2 and len(perc.layers) == 2


# --------------------------------------- (a) memory attention vs references
@torch.no_grad()
def test_sam2_memory_attention_matches_complex_reference(sam2_attn):
    torch.manual_seed(0)
    B, side, frames, n_ptr = 2, 16, 3, 8
    nq, nk = side * side, frames * side * side + n_ptr
    curr, curr_pos = torch.randn(B, nq, 256), torch.randn(B, nq, 256)
    mem, mem_pos = torch.randn(B, nk, 64), torch.randn(B, nk, 64)
    want = _ref_memory_attention(sam2_attn.state_dict(), 4, curr, curr_pos, mem, mem_pos, n_ptr, "sam2")
    got = sam2_attn(curr, curr_pos, mem, mem_pos, num_obj_ptr_tokens=n_ptr)
    assert _maxdiff(got, want) <= 1e-5
    # the same with explicit positions: query grid, keys = that grid once per frame
    q_coords = grid_coords(side, side)
    k_coords = q_coords.repeat(frames, 1).unsqueeze(0).expand(B, -1, -1)
    got_explicit = sam2_attn(curr, curr_pos, mem, mem_pos, n_ptr, q_coords=q_coords, k_coords=k_coords)
    assert _maxdiff(got_explicit, want) <= 1e-5
    # object pointers given position (0, 0) (identity rotation) instead of being excluded
    k_all = torch.cat((k_coords, torch.zeros(B, n_ptr, 2)), dim=1)
    got_zero_ptr = sam2_attn(curr, curr_pos, mem, mem_pos, 0, q_coords=q_coords, k_coords=k_all)
    assert _maxdiff(got_zero_ptr, want) <= 1e-5
    # no object pointers at all
    want0 = _ref_memory_attention(sam2_attn.state_dict(), 4, curr, curr_pos, mem[:, :-n_ptr], mem_pos[:, :-n_ptr], 0, "sam2")
    assert _maxdiff(sam2_attn(curr, curr_pos, mem[:, :-n_ptr], mem_pos[:, :-n_ptr]), want0) <= 1e-5


@torch.no_grad()
def test_sam2_memory_attention_full_64x64_grid():
    torch.manual_seed(0)
    attn = _randomize_(build_sam2_memory_attention(num_layers=1), seed=2)
    nq, n_ptr = 64 * 64, 4
    curr, curr_pos = torch.randn(1, nq, 256), torch.randn(1, nq, 256)
    mem, mem_pos = torch.randn(1, 2 * nq + n_ptr, 64), torch.randn(1, 2 * nq + n_ptr, 64)
    want = _ref_memory_attention(attn.state_dict(), 1, curr, curr_pos, mem, mem_pos, n_ptr, "sam2")
    assert _maxdiff(attn(curr, curr_pos, mem, mem_pos, n_ptr), want) <= 1e-5


@torch.no_grad()
def test_edgetam_memory_attention_matches_v2_reference(edgetam_modules):
    attn, _, perc = edgetam_modules
    torch.manual_seed(0)
    B, frames, n_ptr = 1, 3, 16
    nq, nk = 64 * 64, frames * 512 + n_ptr
    curr, curr_pos = torch.randn(B, nq, 256), torch.randn(B, nq, 256)
    mem, mem_pos = torch.randn(B, nk, 64), torch.randn(B, nk, 64)
    want = _ref_memory_attention(attn.state_dict(), 2, curr, curr_pos, mem, mem_pos, n_ptr, "edgetam")
    got = attn(curr, curr_pos, mem, mem_pos, num_obj_ptr_tokens=n_ptr)
    assert _maxdiff(got, want) <= 1e-5
    # explicit positions as produced by the spatial perceiver, concatenated per frame
    k_coords = perc.rope_coords().repeat(frames, 1).unsqueeze(0).expand(B, -1, -1)
    got_explicit = attn(curr, curr_pos, mem, mem_pos, n_ptr, q_coords=grid_coords(64, 64), k_coords=k_coords)
    assert _maxdiff(got_explicit, want) <= 1e-5


def test_default_key_coords_layouts():
    sam2 = build_sam2_memory_attention(1)
    k = sam2.default_key_coords(2 * 16, 16)
    assert torch.equal(k, grid_coords(4, 4).repeat(2, 1))
    edge = build_edgetam_memory_attention(1)
    k = edge.default_key_coords(2 * 512, 4096)
    frame = torch.cat((torch.zeros(256, 2), grid_coords(16, 16)))
    assert torch.equal(k, frame.repeat(2, 1))
    with pytest.raises(ValueError):
        edge.default_key_coords(700, 4096)


# ------------------------------------------------------ memory encoder
def _ref_memory_encoder(sd, pix_feat, masks):
    def ln2d(x, name, eps=1e-6):
        return F.layer_norm(x.permute(0, 2, 3, 1), (x.shape[1],), sd[name + ".weight"], sd[name + ".bias"], eps).permute(0, 3, 1, 2)

    m = torch.sigmoid(masks)
    for i in (0, 3, 6, 9):
        m = F.conv2d(m, sd[f"mask_downsampler.encoder.{i}.weight"], sd[f"mask_downsampler.encoder.{i}.bias"], stride=2, padding=1)
        m = F.gelu(ln2d(m, f"mask_downsampler.encoder.{i + 1}"))
    m = F.conv2d(m, sd["mask_downsampler.encoder.12.weight"], sd["mask_downsampler.encoder.12.bias"])
    x = F.conv2d(pix_feat, sd["pix_feat_proj.weight"], sd["pix_feat_proj.bias"]) + m
    for j in range(2):
        pre = f"fuser.layers.{j}."
        y = F.conv2d(x, sd[pre + "dwconv.weight"], sd[pre + "dwconv.bias"], padding=3, groups=x.shape[1])
        y = ln2d(y, pre + "norm").permute(0, 2, 3, 1)
        y = F.linear(F.gelu(F.linear(y, sd[pre + "pwconv1.weight"], sd[pre + "pwconv1.bias"])), sd[pre + "pwconv2.weight"], sd[pre + "pwconv2.bias"])
        x = x + (sd[pre + "gamma"] * y).permute(0, 3, 1, 2)
    return F.conv2d(x, sd["out_proj.weight"], sd["out_proj.bias"])


@torch.no_grad()
def test_memory_encoder_shapes_semantics_and_batch(edgetam_modules):
    _, enc, _ = edgetam_modules
    torch.manual_seed(0)
    full, full_pos = enc(torch.randn(1, 256, 64, 64), torch.randn(1, 1, 1024, 1024))
    assert full.shape == (1, 64, 64, 64) and full_pos.shape == (1, 64, 64, 64)
    # the rest on a smaller map (the encoder is size-agnostic; keeps the suite fast)
    pix = torch.randn(2, 256, 16, 16)
    logits = torch.randn(2, 1, 256, 256) * 4
    feats, pos = enc(pix, logits)
    assert feats.shape == (2, 64, 16, 16) and pos.shape == (2, 64, 16, 16)
    want = _ref_memory_encoder(enc.state_dict(), pix, logits)
    torch.testing.assert_close(feats, want, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(pos, PositionEmbeddingSine(64)(feats))
    # skip_mask_sigmoid: the caller's own squashing is used as is
    feats_skip, _ = enc(pix, torch.sigmoid(logits), skip_mask_sigmoid=True)
    torch.testing.assert_close(feats_skip, feats, rtol=1e-5, atol=1e-5)
    # batch of 2 objects == each alone
    for b in range(2):
        alone, _ = enc(pix[b : b + 1], logits[b : b + 1])
        torch.testing.assert_close(feats[b : b + 1], alone, rtol=1e-5, atol=1e-5)


# ----------------------------------------------------- spatial perceiver
@torch.no_grad()
def test_spatial_perceiver_outputs(edgetam_modules):
    _, _, perc = edgetam_modules
    torch.manual_seed(0)
    x = torch.randn(2, 64, 64, 64)
    pos = PositionEmbeddingSine(64)(x)
    lat, lat_pos, coords = perc(x, pos)
    assert lat.shape == (2, 512, 64) and lat_pos.shape == (2, 512, 64) and coords.shape == (2, 512, 2)
    assert torch.equal(lat_pos[:, :256], torch.zeros(2, 256, 64))
    sine16 = PositionEmbeddingSine(64).encode_grid(16, 16).flatten(2).transpose(1, 2)
    torch.testing.assert_close(lat_pos[:, 256:], sine16.expand(2, -1, -1))
    assert torch.equal(coords[0, :256], torch.zeros(256, 2))
    assert torch.equal(coords[0, 256:], grid_coords(16, 16))
    # the memory's position encoding reaches the 1D latents only
    lat_nopos, _, _ = perc(x, None)
    assert _maxdiff(lat_nopos[:, :256], lat[:, :256]) > 1e-3
    torch.testing.assert_close(lat_nopos[:, 256:], lat[:, 256:])
    # batch of 2 == each alone
    for b in range(2):
        alone, _, _ = perc(x[b : b + 1], pos[b : b + 1])
        torch.testing.assert_close(lat[b : b + 1], alone, rtol=1e-5, atol=1e-5)


@torch.no_grad()
def test_spatial_perceiver_2d_latents_see_only_their_window(edgetam_modules):
    _, _, perc = edgetam_modules
    torch.manual_seed(0)
    x = torch.randn(1, 64, 64, 64)
    lat, _, _ = perc(x)
    wy, wx = 5, 11  # window row 5, column 11 -> 2D latent 5 * 16 + 11
    idx = 256 + wy * 16 + wx
    # a direct computation of that latent from its 4x4 window
    tokens = x[0, :, 4 * wy : 4 * wy + 4, 4 * wx : 4 * wx + 4].reshape(64, 16).t().unsqueeze(0)
    latent = perc.latents_2d[wy * 16 + wx].view(1, 1, 64)
    for layer in perc.layers:
        latent = layer(latent, tokens)
    torch.testing.assert_close(lat[0, idx], perc.norm(latent)[0, 0], rtol=1e-5, atol=1e-5)
    # changing that window changes that 2D latent and no other 2D latent
    x2 = x.clone()
    x2[:, :, 4 * wy : 4 * wy + 4, 4 * wx : 4 * wx + 4] += torch.randn(1, 64, 4, 4)
    lat2, _, _ = perc(x2)
    changed = (lat2[0, 256:] - lat[0, 256:]).abs().amax(-1) > 1e-6
    assert changed.nonzero().flatten().tolist() == [wy * 16 + wx]


# --------------------------------------------------- (c) batch / shapes
@torch.no_grad()
def test_memory_attention_batch_consistency(edgetam_modules, sam2_attn):
    attn, _, _ = edgetam_modules
    torch.manual_seed(0)
    n_ptr = 16
    curr, curr_pos = torch.randn(2, 1024, 256), torch.randn(2, 1024, 256)  # a 32x32 query map
    mem, mem_pos = torch.randn(2, 2 * 512 + n_ptr, 64), torch.randn(2, 2 * 512 + n_ptr, 64)
    out = attn(curr, curr_pos, mem, mem_pos, n_ptr)
    assert out.shape == (2, 1024, 256)
    for b in range(2):
        alone = attn(curr[b : b + 1], curr_pos[b : b + 1], mem[b : b + 1], mem_pos[b : b + 1], n_ptr)
        torch.testing.assert_close(out[b : b + 1], alone, rtol=1e-5, atol=1e-5)
    # per-object key positions (B, Nk, 2) act per batch entry
    side = 16
    c, cp = torch.randn(2, side * side, 256), torch.randn(2, side * side, 256)
    m, mp = torch.randn(2, 300 + 4, 64), torch.randn(2, 300 + 4, 64)
    kc = torch.rand(2, 300, 2) * side
    out = sam2_attn(c, cp, m, mp, 4, q_coords=grid_coords(side, side), k_coords=kc)
    for b in range(2):
        alone = sam2_attn(c[b : b + 1], cp[b : b + 1], m[b : b + 1], mp[b : b + 1], 4,
                          q_coords=grid_coords(side, side), k_coords=kc[b])
        torch.testing.assert_close(out[b : b + 1], alone, rtol=1e-5, atol=1e-5)


def test_locality_prior_makes_cross_attention_attend_to_its_own_position():
    torch.manual_seed(0)
    attn = RoPEAttention(64, 1, kv_in_dim=32)
    coords = grid_coords(8, 8)

    @torch.no_grad()
    def scores() -> torch.Tensor:  # content-free queries and keys: only the biases speak
        q = apply_rope(attn._split_heads(attn.q_proj(torch.zeros(1, 64, 64))), *attn.rope(coords))
        k = apply_rope(attn._split_heads(attn.k_proj(torch.zeros(1, 64, 32))), *attn.rope(coords))
        return (q @ k.transpose(-1, -2))[0, 0] / math.sqrt(attn.head_dim)

    assert (scores().argmax(-1) == torch.arange(64)).float().mean() < 0.5  # default init: no locality
    attn.init_locality_prior(3.5)
    s = scores()
    assert torch.equal(s.argmax(-1), torch.arange(64))
    weights = s.softmax(-1)
    dist = torch.cdist(coords, coords)
    assert float(weights[dist <= 1.5].sum() / 64) > 0.8  # most attention within one cell
    with pytest.raises(ValueError, match="num_freqs"):
        attn.init_locality_prior(1.0, num_freqs=17)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_memory_attention_onnx_export(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    attn = _randomize_(build_edgetam_memory_attention(num_layers=1), seed=3)

    class Wrapped(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.attn = attn

        def forward(self, curr, curr_pos, mem, mem_pos, q_coords, k_coords):
            return self.attn(curr, curr_pos, mem, mem_pos, 8, q_coords=q_coords, k_coords=k_coords)

    torch.manual_seed(0)
    nq = 16 * 16
    args = (torch.randn(1, nq, 256), torch.randn(1, nq, 256), torch.randn(1, 2 * 512 + 8, 64),
            torch.randn(1, 2 * 512 + 8, 64), grid_coords(16, 16),
            SpatialPerceiver().rope_coords().repeat(2, 1)[None] + 0.25)
    path = tmp_path / "memattn.onnx"
    names = ["curr", "curr_pos", "memory", "memory_pos", "q_coords", "k_coords"]
    torch.onnx.export(Wrapped().eval(), args, str(path), opset_version=17, dynamo=False,
                      input_names=names, output_names=["out"],
                      dynamic_axes={"memory": {1: "nk"}, "memory_pos": {1: "nk"}, "k_coords": {1: "nkr"}})
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (got,) = sess.run(None, {n: a.numpy() for n, a in zip(names, args)})
    with torch.no_grad():
        want = Wrapped()(*args)
    torch.testing.assert_close(torch.from_numpy(got), want, rtol=1e-4, atol=1e-4)
    # a different number of memory frames through the same graph
    args3 = args[:2] + (torch.randn(1, 3 * 512 + 8, 64), torch.randn(1, 3 * 512 + 8, 64), args[4],
                        torch.rand(1, 3 * 512, 2) * 16)
    (got3,) = sess.run(None, {n: a.numpy() for n, a in zip(names, args3)})
    with torch.no_grad():
        want3 = Wrapped()(*args3)
    torch.testing.assert_close(torch.from_numpy(got3), want3, rtol=1e-4, atol=1e-4)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_perceiver_onnx_export(tmp_path, edgetam_modules):
    ort = pytest.importorskip("onnxruntime")
    _, _, perc = edgetam_modules
    torch.manual_seed(0)
    x = torch.randn(1, 64, 64, 64)
    pos = PositionEmbeddingSine(64)(x)
    path = tmp_path / "perceiver.onnx"
    torch.onnx.export(perc, (x, pos), str(path), opset_version=17, dynamo=False,
                      input_names=["x", "pos"], output_names=["latents", "latents_pos", "coords"])
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = sess.run(None, {"x": x.numpy(), "pos": pos.numpy()})
    with torch.no_grad():
        want = perc(x, pos)
    for g, w in zip(got, want):
        torch.testing.assert_close(torch.from_numpy(g), w, rtol=1e-4, atol=1e-4)
