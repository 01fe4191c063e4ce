"""EdgeTAM's 2D spatial perceiver: compresses a 64x64 memory map into 512 latents.

Per memory frame (state-dict prefix ``spatial_perceiver.``, EdgeTAM config
``depth 2, dim 64, dim_head 64, heads 1, ff_mult 4, use_self_attn true,
concat_kv_latents false, pos_enc_at_key_value true, num_latents 256,
num_latents_2d 256, position_encoding PositionEmbeddingSine(64)``):

* ``latents`` (256 global 1D latents) cross-attend to all 4096 memory tokens; the
  memory's sine position encoding is added to the projected keys *and* values.
  Their output position encoding is zeros.
* ``latents_2d`` (256 = 16x16) each cross-attend only to their own 4x4 window of the
  memory map (no position encoding inside). Their output position encoding is the
  normalized sine encoding of the 16x16 latent grid.
* Both sets share the same ``layers`` (cross-attn ``attn`` + ``ff``, then latent
  self-attention ``self_attn`` + ``self_ff``) and the final ``norm``; the 2D latents'
  self-attention runs within each window, i.e. over a single latent.

Output order per frame: the 256 1D latents, then the 256 2D latents (row-major over
the 16x16 windows). The third output gives the positions the official EdgeTAM
memory attention uses for RoPE on these tokens (see :mod:`.memory_attention`):
``(0, 0)`` (= no rotation) for the 1D latents and the integer 16x16 grid (units of
one latent / one 4x4 window, not memory-map pixels) for the 2D latents.
"""
from __future__ import annotations

import math
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .position_encoding import PositionEmbeddingSine
from .rope import grid_coords

__all__ = ["PerceiverAttention", "LatentSelfAttention", "PerceiverEncoderLayer", "SpatialPerceiver"]


def _feed_forward(dim: int, mult: int) -> nn.Sequential:
    """``LayerNorm, Linear (no bias), GELU, Linear (no bias)`` -> keys ``0``, ``1``, ``3``."""
    inner = int(dim * mult)
    return nn.Sequential(
        nn.LayerNorm(dim),
        nn.Linear(dim, inner, bias=False),
        nn.GELU(),
        nn.Linear(inner, dim, bias=False),
    )


def _split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    return x.unflatten(-1, (heads, -1)).transpose(1, 2)  # (B, heads, N, dh)


def _merge_heads(x: torch.Tensor) -> torch.Tensor:
    return x.transpose(1, 2).flatten(2)


class PerceiverAttention(nn.Module):
    """Latents (queries) attend to inputs ``x``; optional ``pos`` added to k and v."""

    def __init__(self, dim: int, dim_head: int = 64, heads: int = 1, concat_kv_latents: bool = False) -> None:
        super().__init__()
        inner = dim_head * heads
        self.heads = heads
        self.norm_x = nn.LayerNorm(dim)
        self.norm_latents = nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(dim, 2 * inner, bias=False)
        self.to_out = nn.Linear(inner, dim, bias=False)
        self.concat_kv_latents = concat_kv_latents

    def forward(self, latents: torch.Tensor, x: torch.Tensor, pos: Optional[torch.Tensor] = None) -> torch.Tensor:
        latents = self.norm_latents(latents)
        x = self.norm_x(x)
        q = _split_heads(self.to_q(latents), self.heads)
        kv_in = torch.cat((x, latents), dim=-2) if self.concat_kv_latents else x
        k, v = self.to_kv(kv_in).chunk(2, dim=-1)
        k = _split_heads(k, self.heads)
        v = _split_heads(v, self.heads)
        if pos is not None:
            if self.concat_kv_latents:
                raise ValueError("pos is not supported with concat_kv_latents")
            pos = _split_heads(pos, self.heads)
            k = k + pos
            v = v + pos
        return self.to_out(_merge_heads(F.scaled_dot_product_attention(q, k, v)))


class LatentSelfAttention(nn.Module):
    """Pre-norm self-attention among latents (keys ``norm``, ``to_q``, ``to_kv``, ``to_out``)."""

    def __init__(self, dim: int, dim_head: int = 64, heads: int = 1) -> None:
        super().__init__()
        inner = dim_head * heads
        self.heads = heads
        self.norm = nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(dim, 2 * inner, bias=False)
        self.to_out = nn.Linear(inner, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(x)
        q = _split_heads(self.to_q(x), self.heads)
        k, v = self.to_kv(x).chunk(2, dim=-1)
        out = F.scaled_dot_product_attention(q, _split_heads(k, self.heads), _split_heads(v, self.heads))
        return self.to_out(_merge_heads(out))


class PerceiverEncoderLayer(nn.Module):
    """``attn`` + ``ff`` (residual), then optionally ``self_attn`` + ``self_ff``."""

    def __init__(
        self,
        dim: int,
        dim_head: int = 64,
        heads: int = 1,
        ff_mult: int = 4,
        concat_kv_latents: bool = False,
        use_self_attn: bool = True,
    ) -> None:
        super().__init__()
        self.attn = PerceiverAttention(dim, dim_head, heads, concat_kv_latents)
        self.ff = _feed_forward(dim, ff_mult)
        self.use_self_attn = use_self_attn
        if use_self_attn:
            self.self_attn = LatentSelfAttention(dim, dim_head, heads)
            self.self_ff = _feed_forward(dim, ff_mult)

    def forward(self, latents: torch.Tensor, x: torch.Tensor, pos: Optional[torch.Tensor] = None) -> torch.Tensor:
        latents = latents + self.attn(latents, x, pos)
        latents = latents + self.ff(latents)
        if self.use_self_attn:
            latents = latents + self.self_attn(latents)
            latents = latents + self.self_ff(latents)
        return latents


class SpatialPerceiver(nn.Module):
    """EdgeTAM ``PerceiverResampler`` with global (1D) and windowed (2D) latents."""

    def __init__(
        self,
        dim: int = 64,
        depth: int = 2,
        dim_head: int = 64,
        heads: int = 1,
        num_latents: int = 256,
        num_latents_2d: int = 256,
        ff_mult: int = 4,
        pos_enc_at_key_value: bool = True,
        concat_kv_latents: bool = False,
        use_self_attn: bool = True,
        position_encoding: Optional[nn.Module] = None,
    ) -> None:
        super().__init__()
        self.dim = dim
        self.num_latents = num_latents
        self.num_latents_2d = num_latents_2d
        if num_latents > 0:
            self.latents = nn.Parameter(torch.randn(num_latents, dim))
        if num_latents_2d > 0:
            self.latents_2d = nn.Parameter(torch.randn(num_latents_2d, dim))
            self.num_windows = int(round(math.sqrt(num_latents_2d)))
            if self.num_windows**2 != num_latents_2d:
                raise ValueError("num_latents_2d must be a square")
        self.position_encoding = position_encoding if position_encoding is not None else PositionEmbeddingSine(dim)
        self.layers = nn.ModuleList(
            PerceiverEncoderLayer(dim, dim_head, heads, ff_mult, concat_kv_latents, use_self_attn)
            for _ in range(depth)
        )
        self.norm = nn.LayerNorm(dim)
        # Kept for reference only: the official forward adds the memory's position
        # encoding at the 1D latents' keys/values whenever one is passed, whatever
        # this flag says (EdgeTAM's config sets it True anyway). Same here.
        self.pos_enc_at_key_value = pos_enc_at_key_value

    def rope_coords(self, device=None) -> torch.Tensor:
        """``(num_latents + num_latents_2d, 2)`` RoPE positions of the output tokens.

        ``(0, 0)`` (identity rotation) for the 1D latents, the integer
        ``num_windows x num_windows`` grid for the 2D latents, as the official EdgeTAM
        ``RoPEAttentionv2(k_sizes=(16, 16))`` rotates them.
        """
        parts = []
        if self.num_latents > 0:
            parts.append(torch.zeros(self.num_latents, 2, device=device))
        if self.num_latents_2d > 0:
            parts.append(grid_coords(self.num_windows, self.num_windows, device=device))
        return torch.cat(parts, dim=0)

    def _forward_1d(self, x: torch.Tensor, pos: Optional[torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor]:
        B = x.shape[0]
        latents = self.latents.unsqueeze(0).expand(B, -1, -1)
        tokens = x.flatten(2).transpose(1, 2)  # (B, HW, C)
        tok_pos = pos.flatten(2).transpose(1, 2) if pos is not None else None
        for layer in self.layers:
            latents = layer(latents, tokens, tok_pos)
        return self.norm(latents), torch.zeros_like(latents)

    def _forward_2d(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        B, C, H, W = x.shape
        n = self.num_windows
        ws_h, ws_w = H // n, W // n
        # (B, C, H, W) -> (B * n * n windows, ws_h * ws_w tokens, C), windows row-major
        windows = (
            x.reshape(B, C, n, ws_h, n, ws_w)
            .permute(0, 2, 4, 3, 5, 1)
            .reshape(B * n * n, ws_h * ws_w, C)
        )
        latents = self.latents_2d.unsqueeze(0).expand(B, -1, -1).reshape(B * n * n, 1, C)
        for layer in self.layers:
            latents = layer(latents, windows)
        latents = self.norm(latents.reshape(B, n * n, C))
        pos = self.position_encoding.encode_grid(n, n, device=x.device, dtype=x.dtype)  # (1, C, n, n)
        pos = pos.flatten(2).transpose(1, 2).expand(B, -1, -1)
        return latents, pos

    def forward(
        self, x: torch.Tensor, pos: Optional[torch.Tensor] = None
    ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """
        Args:
            x: ``(B, 64, 64, 64)`` memory-encoder features.
            pos: ``(B, 64, 64, 64)`` their sine position encoding (EdgeTAM passes it;
                it is added to the 1D latents' keys and values).

        Returns:
            ``latents (B, 512, 64)`` (1D then 2D), ``pos (B, 512, 64)`` (zeros for 1D,
            16x16 sine for 2D) and ``rope_coords (B, 512, 2)`` (see :meth:`rope_coords`).
        """
        out_lat, out_pos = [], []
        if self.num_latents > 0:
            lat, p = self._forward_1d(x, pos)
            out_lat.append(lat)
            out_pos.append(p)
        if self.num_latents_2d > 0:
            lat, p = self._forward_2d(x)
            out_lat.append(lat)
            out_pos.append(p)
        latents = torch.cat(out_lat, dim=1)
        lat_pos = torch.cat(out_pos, dim=1)
        coords = self.rope_coords(device=x.device).unsqueeze(0).expand(x.shape[0], -1, -1)
        return latents, lat_pos, coords
