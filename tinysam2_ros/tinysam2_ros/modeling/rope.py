"""2D axial rotary position encoding (RoPE) on explicit token positions.

SAM 2 / EdgeTAM rotate queries and keys of the memory attention by an angle that
depends on each token's 2D position. The head dimension ``D`` is split into
``D // 2`` channel pairs ``(2i, 2i + 1)``; each pair is rotated like a complex
number. The first ``D // 4`` pairs use the token's x coordinate, the last ``D // 4``
its y coordinate, both with frequencies ``1 / theta ** (4 j / D)``,
``j = 0 .. D // 4 - 1``::

    angle[..., j]          = x * freq[j]
    angle[..., D//4 + j]   = y * freq[j]
    out[2i]   = x[2i] * cos(angle[i]) - x[2i+1] * sin(angle[i])
    out[2i+1] = x[2i] * sin(angle[i]) + x[2i+1] * cos(angle[i])

With the integer grid from :func:`grid_coords` (``x = t % w``, ``y = t // w``) this is
exactly SAM 2's ``compute_axial_cis`` + ``apply_rotary_enc``; here it is written with
real ``cos``/``sin`` (no complex tensors, so it exports to ONNX) and takes an
explicit ``(x, y)`` per token, so tokens that were pooled, selected or that live on
another grid can be given their own (possibly fractional) positions. Position
``(0, 0)`` is the identity rotation: a token that must not be rotated can simply be
given that position.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F

__all__ = [
    "rope_frequencies",
    "grid_coords",
    "pooled_grid_coords",
    "rope_angles",
    "apply_rope",
]


def rope_frequencies(head_dim: int, theta: float = 10000.0, device=None) -> torch.Tensor:
    """The ``head_dim // 4`` per-axis frequencies (float32), as in SAM 2."""
    if head_dim % 4 != 0:
        raise ValueError(f"2D axial RoPE needs head_dim divisible by 4, got {head_dim}")
    exponents = torch.arange(0, head_dim, 4, device=device)[: head_dim // 4].float() / head_dim
    return 1.0 / (theta**exponents)


def grid_coords(h: int, w: int, device=None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``(h * w, 2)`` positions ``(x, y)`` of an ``h x w`` map flattened row-major.

    Token ``t`` of ``x.flatten(-2)`` sits at ``(t % w, t // w)``, the order SAM 2 uses.
    """
    xs = torch.arange(w, device=device, dtype=dtype).view(1, w).expand(h, w)
    ys = torch.arange(h, device=device, dtype=dtype).view(h, 1).expand(h, w)
    return torch.stack((xs, ys), dim=-1).reshape(h * w, 2)


def pooled_grid_coords(
    h: int,
    w: int,
    kernel_size: int | Tuple[int, int],
    stride: Optional[int | Tuple[int, int]] = None,
    device=None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Positions of the tokens of ``F.avg_pool2d(map_hxw, kernel_size, stride)``.

    Each pooled token gets the mean position of the cells it averages, in units of the
    original ``h x w`` grid (a 2x2 pool of cells ``x, x+1`` / ``y, y+1`` lands on
    ``(x + 0.5, y + 0.5)``). Returns ``(h_out * w_out, 2)`` flattened row-major.
    """
    g = grid_coords(h, w, device=device, dtype=dtype)  # (h*w, 2)
    g = g.t().reshape(1, 2, h, w)
    pooled = F.avg_pool2d(g, kernel_size, stride)  # (1, 2, h_out, w_out)
    return pooled.flatten(2)[0].t().contiguous()


def rope_angles(
    coords: torch.Tensor, head_dim: int, theta: float = 10000.0
) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(cos, sin)`` of the rotation angles for tokens at ``coords``.

    Args:
        coords: ``(..., N, 2)`` float positions ``(x, y)``.
        head_dim: channels per attention head (divisible by 4).
        theta: RoPE base.

    Returns:
        ``cos, sin`` each ``(..., N, head_dim // 2)`` float32: x-angles in the first
        half, y-angles in the second half (SAM 2's channel order).
    """
    freqs = rope_frequencies(head_dim, theta, device=coords.device)
    coords = coords.float()
    ang_x = coords[..., 0:1] * freqs
    ang_y = coords[..., 1:2] * freqs
    angles = torch.cat((ang_x, ang_y), dim=-1)
    return torch.cos(angles), torch.sin(angles)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate adjacent channel pairs of ``x`` by the angles given as ``cos``/``sin``.

    Args:
        x: ``(B, heads, N, head_dim)``.
        cos, sin: from :func:`rope_angles`; ``(N, head_dim // 2)`` (shared by the
            batch), ``(B, N, head_dim // 2)`` (one set of positions per batch entry)
            or anything broadcastable to ``(B, heads, N, head_dim // 2)``.

    Returns:
        The rotated tensor, same shape and dtype as ``x`` (computed in float32).
    """
    if cos.dim() == 3:  # (B, N, D/2): insert the heads axis
        cos = cos.unsqueeze(1)
        sin = sin.unsqueeze(1)
    a, b = x.float().unflatten(-1, (-1, 2)).unbind(-1)
    out = torch.stack((a * cos - b * sin, a * sin + b * cos), dim=-1).flatten(-2)
    return out.to(x.dtype)
