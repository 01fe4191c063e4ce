"""2D axial RoPE on explicit positions vs. SAM 2's complex grid formulation."""
from __future__ import annotations

import pytest
import torch

from tinysam2_ros.modeling.rope import (
    apply_rope,
    grid_coords,
    pooled_grid_coords,
    rope_angles,
    rope_frequencies,
)


# --- straightforward complex reference of SAM 2's grid RoPE (tests only) ----------
def ref_axial_cis(dim: int, end_x: int, end_y: int, theta: float = 10000.0) -> torch.Tensor:
    freqs = 1.0 / (theta ** (torch.arange(0, dim, 4)[: dim // 4].float() / dim))
    t = torch.arange(end_x * end_y, dtype=torch.float32)
    t_x = t % end_x
    t_y = torch.div(t, end_x, rounding_mode="floor")
    fx = torch.outer(t_x, freqs)
    fy = torch.outer(t_y, freqs)
    return torch.cat([torch.polar(torch.ones_like(fx), fx), torch.polar(torch.ones_like(fy), fy)], dim=-1)


def ref_rotate(x: torch.Tensor, freqs_cis: torch.Tensor) -> torch.Tensor:
    """x (B, H, N, D), freqs_cis (n, D/2) with N a multiple of n (tiled along N)."""
    xc = torch.view_as_complex(x.float().reshape(*x.shape[:-1], -1, 2))
    r = xc.shape[-2] // freqs_cis.shape[0]
    f = freqs_cis.repeat(r, 1) if r > 1 else freqs_cis
    return torch.view_as_real(xc * f).flatten(3)


@pytest.mark.parametrize("h,w,dim", [(64, 64, 256), (16, 16, 256), (8, 12, 64), (5, 3, 16)])
def test_integer_grid_matches_complex_reference(h, w, dim):
    torch.manual_seed(0)
    x = torch.randn(2, 1 if dim == 256 else 2, h * w, dim)
    cos, sin = rope_angles(grid_coords(h, w), dim)
    got = apply_rope(x, cos, sin)
    want = ref_rotate(x, ref_axial_cis(dim, end_x=w, end_y=h))
    assert (got - want).abs().max().item() <= 1e-5


def test_grid_coords_order():
    g = grid_coords(3, 5)
    t = torch.arange(15)
    assert torch.equal(g[:, 0], (t % 5).float())
    assert torch.equal(g[:, 1], (t // 5).float())


def test_frequencies_match_sam2():
    dim = 256
    want = 1.0 / (10000.0 ** (torch.arange(0, dim, 4)[: dim // 4].float() / dim))
    assert torch.equal(rope_frequencies(dim), want)


def test_batched_positions_and_zero_is_identity():
    torch.manual_seed(0)
    x = torch.randn(3, 2, 7, 32)
    coords = torch.rand(3, 7, 2) * 10
    cos, sin = rope_angles(coords, 32)  # (B, N, D/2): one set of positions per batch entry
    got = apply_rope(x, cos, sin)
    for b in range(3):
        cb, sb = rope_angles(coords[b], 32)
        torch.testing.assert_close(got[b : b + 1], apply_rope(x[b : b + 1], cb, sb))
    c0, s0 = rope_angles(torch.zeros(7, 2), 32)
    torch.testing.assert_close(apply_rope(x, c0, s0), x, rtol=0, atol=0)
    # the norm of every channel pair is preserved
    pairs_in = x.unflatten(-1, (-1, 2)).norm(dim=-1)
    pairs_out = got.unflatten(-1, (-1, 2)).norm(dim=-1)
    torch.testing.assert_close(pairs_out, pairs_in, rtol=1e-5, atol=1e-5)


def test_fractional_positions_are_continuous():
    torch.manual_seed(0)
    dim = 256
    x = torch.randn(1, 1, 1, dim)
    base = torch.tensor([[10.0, 20.0]])
    # composing rotations: rotating the result at (x, y) by (0.5, 0.5) == position (x+.5, y+.5)
    half = apply_rope(apply_rope(x, *rope_angles(base, dim)), *rope_angles(torch.tensor([[0.5, 0.5]]), dim))
    direct = apply_rope(x, *rope_angles(base + 0.5, dim))
    torch.testing.assert_close(half, direct, rtol=1e-5, atol=1e-5)
    # small position changes give small output changes (Lipschitz in the position)
    prev = apply_rope(x, *rope_angles(base, dim))
    for eps in (1e-1, 1e-2, 1e-3):
        moved = apply_rope(x, *rope_angles(base + eps, dim))
        assert (moved - prev).abs().max().item() <= 2 * eps * x.abs().max().item()


def test_pooled_grid_coords():
    g = pooled_grid_coords(4, 6, 2)
    assert g.shape == (2 * 3, 2)
    want = grid_coords(2, 3) * 2 + 0.5
    torch.testing.assert_close(g, want)
    # the mean position of a pooled window equals the mean of its members
    fine = grid_coords(4, 6).reshape(2, 2, 3, 2, 2).permute(0, 2, 1, 3, 4).reshape(6, 4, 2)
    torch.testing.assert_close(g, fine.mean(1))


def test_relative_position_invariance():
    """<R(p + o) q, R(r + o) k> == <R(p) q, R(r) k> for any (fractional) offset o."""
    torch.manual_seed(0)
    dim = 64
    q = torch.randn(1, 1, 5, dim, dtype=torch.float64)
    k = torch.randn(1, 1, 9, dim, dtype=torch.float64)
    pq = torch.rand(5, 2) * 16
    pk = torch.rand(9, 2) * 16

    def scores(offset):
        qr = apply_rope(q, *[t.double() for t in rope_angles(pq + offset, dim)])
        kr = apply_rope(k, *[t.double() for t in rope_angles(pk + offset, dim)])
        return qr @ kr.transpose(-1, -2)

    s0 = scores(torch.zeros(2))
    for off in ([3.0, -7.0], [0.25, 11.5], [-40.5, 2.75]):
        torch.testing.assert_close(scores(torch.tensor(off)), s0, rtol=1e-4, atol=1e-4)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_onnx_export(tmp_path):
    ort = pytest.importorskip("onnxruntime")

    class M(torch.nn.Module):
        def forward(self, x, coords):
            return apply_rope(x, *rope_angles(coords, 32))

    x = torch.randn(2, 1, 48, 32)
    coords = torch.rand(2, 48, 2) * 16
    path = tmp_path / "rope.onnx"
    torch.onnx.export(M(), (x, coords), str(path), opset_version=17, dynamo=False,
                      input_names=["x", "coords"], output_names=["y"])
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (got,) = sess.run(None, {"x": x.numpy(), "coords": coords.numpy()})
    torch.testing.assert_close(torch.from_numpy(got), M()(x, coords), rtol=1e-4, atol=1e-4)
