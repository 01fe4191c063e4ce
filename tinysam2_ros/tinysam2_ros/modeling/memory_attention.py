"""Memory attention of SAM 2 / SAM 2.1 and EdgeTAM (batch-first, explicit RoPE positions).

The current frame's pixel features (queries, ``Nq`` tokens, 256 channels) are
conditioned on the memory bank (keys/values, 64 channels) by a stack of
:class:`MemoryAttentionLayer` (self-attention, cross-attention, MLP; pre-norm) and a
final LayerNorm. Both attentions use 2D axial RoPE (:mod:`.rope`).

How positions are given
-----------------------
``MemoryAttention.forward`` takes ``q_coords`` (positions of the ``Nq`` query tokens)
and ``k_coords`` (positions of the leading ``Nk - num_obj_ptr_tokens`` memory tokens;
the trailing object-pointer tokens are never rotated). A position ``(0, 0)`` is the
identity rotation, so "this token gets no RoPE" is expressed by giving it ``(0, 0)``.
When coords are ``None`` the official grid formulation is used:

* queries: the ``s x s`` grid with ``s = sqrt(Nq)`` (SAM 2's ``w = h = sqrt(N)``);
* keys: the memory is read as whole frames of ``k_num_no_rope_per_frame`` unrotated
  tokens followed by a ``k_rope_grid`` grid (default: the query grid), repeated for
  as many frames as there are.

SAM 2 / SAM 2.1 (``k_rope_grid=None``, ``k_num_no_rope_per_frame=0``): every memory
frame is a 64x64 map and each frame's tokens get the same grid positions as the
queries (official ``RoPEAttention(rope_k_repeat=True)``: the query ``freqs_cis`` is
tiled ``Nk_rope / Nq`` times along the keys).

EdgeTAM (``k_rope_grid=(16, 16)``, ``k_num_no_rope_per_frame=256``): each memory frame
is the spatial perceiver's output, 256 global 1D latents followed by 256 2D latents
(a 16x16 grid, one per 4x4 window of the 64x64 memory map). The official
``RoPEAttentionv2`` (config ``cross_attention: RoPEAttentionv2, q_sizes [64, 64],
k_sizes [16, 16]``; ``apply_rotary_enc_v2(k, freqs_cis_k, repeat_freqs=num_spatial_mem)``)
rotates queries with the 64x64 integer grid, leaves the first 256 tokens of every
memory frame (the 1D latents) unrotated, rotates the last 256 tokens of every frame
with the **16x16 integer grid** (0..15, *not* rescaled to 64x64 units) and leaves the
trailing object-pointer tokens unrotated. In explicit form: per frame
``cat(zeros(256, 2), grid_coords(16, 16))``, which is what
:meth:`SpatialPerceiver.forward` returns as its third output.

Everything here is traceable for ONNX (opset 17): no complex numbers, no branching
on tensor values (only on shapes / Python ints). ``num_obj_ptr_tokens`` is a Python
int and is baked into a traced graph; for a graph with a variable number of pointer
tokens pass ``num_obj_ptr_tokens=0`` and give the pointer tokens position ``(0, 0)``
in ``k_coords`` (identical result). Likewise, pass ``q_coords``/``k_coords`` as graph
inputs rather than relying on the shape-derived defaults.
"""
from __future__ import annotations

import copy
import math
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .two_way_transformer import Attention
from .rope import apply_rope, grid_coords, rope_angles

__all__ = [
    "RoPEAttention",
    "MemoryAttentionLayer",
    "MemoryAttention",
    "build_sam2_memory_attention",
    "build_edgetam_memory_attention",
]

CosSin = Tuple[torch.Tensor, torch.Tensor]


class RoPEAttention(Attention):
    """Multi-head attention with 2D RoPE applied to projected queries and keys.

    The projections are the decoder's ``Attention`` ones (``q_proj``, ``k_proj``,
    ``v_proj`` with input ``kv_in_dim``, ``out_proj``). Inference only (no dropout).
    """

    def __init__(
        self,
        embedding_dim: int = 256,
        num_heads: int = 1,
        downsample_rate: int = 1,
        kv_in_dim: Optional[int] = None,
        rope_theta: float = 10000.0,
    ) -> None:
        super().__init__(embedding_dim, num_heads, downsample_rate=downsample_rate, kv_in_dim=kv_in_dim)
        self.head_dim = self.internal_dim // num_heads
        self.rope_theta = rope_theta

    @torch.no_grad()
    def init_locality_prior(self, amplitude: float, num_freqs: int = 4) -> None:
        """Bias queries and keys so that, before any training, a query attends to the
        keys at (and near) its own position.

        RoPE turns a vector ``c`` shared by a query at ``p`` and a key at ``p'`` into a
        score ``sum_j |c_j|^2 cos(w_j (p' - p))``, which peaks at ``p' = p``. Setting
        both projection biases to ``amplitude`` on the channel pairs of the
        ``num_freqs`` highest frequencies of each axis makes the cross-attention a
        local average of the memory from the first step, so the memory-conditioned
        features already say where the object was. Trained from scratch without it the
        memory path starts as a global average that carries no position, and short CPU
        runs mostly never learned to use it (models/README.md). For training from
        scratch only; loaded checkpoints overwrite the biases.
        """
        if not 0 < num_freqs <= self.head_dim // 4:
            raise ValueError(f"num_freqs must lie in [1, {self.head_dim // 4}], got {num_freqs}")
        quarter = self.head_dim // 4  # channel pairs per axis: x pairs first, then y
        pairs = torch.cat((torch.arange(num_freqs), quarter + torch.arange(num_freqs)))
        bias = torch.zeros(self.head_dim)
        bias[2 * pairs] = amplitude  # the real part of each rotated pair
        bias = bias.repeat(self.num_heads)
        self.q_proj.bias.copy_(bias)
        self.k_proj.bias.copy_(bias)

    def _split_heads(self, x: torch.Tensor) -> torch.Tensor:
        return x.unflatten(-1, (self.num_heads, self.head_dim)).transpose(1, 2)

    def rope(self, coords: torch.Tensor) -> CosSin:
        """``(cos, sin)`` for this attention's head size at ``coords (..., N, 2)``."""
        return rope_angles(coords, self.head_dim, self.rope_theta)

    def forward(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        q_rope: Optional[CosSin] = None,
        k_rope: Optional[CosSin] = None,
        num_k_exclude_rope: int = 0,
    ) -> torch.Tensor:
        """
        Args:
            q: ``(B, Nq, embedding_dim)``; k, v: ``(B, Nk, kv_in_dim)``.
            q_rope: ``(cos, sin)`` for all ``Nq`` queries (``None``: no rotation).
            k_rope: ``(cos, sin)`` for the first ``Nk - num_k_exclude_rope`` keys.
            num_k_exclude_rope: trailing keys left unrotated (object pointers).

        Returns:
            ``(B, Nq, embedding_dim)``.
        """
        q = self._split_heads(self.q_proj(q))
        k = self._split_heads(self.k_proj(k))
        v = self._split_heads(self.v_proj(v))

        if q_rope is not None:
            q = apply_rope(q, *q_rope)
        if k_rope is not None:
            if num_k_exclude_rope > 0:
                k_rot = apply_rope(k[:, :, :-num_k_exclude_rope], *k_rope)
                k = torch.cat((k_rot, k[:, :, -num_k_exclude_rope:]), dim=2)
            else:
                k = apply_rope(k, *k_rope)

        out = F.scaled_dot_product_attention(q, k, v)
        out = out.transpose(1, 2).flatten(2)
        return self.out_proj(out)


class MemoryAttentionLayer(nn.Module):
    """Pre-norm block: RoPE self-attention, RoPE cross-attention to memory, MLP.

    State dict: ``self_attn``, ``cross_attn_image``, ``linear1``, ``linear2``,
    ``norm1``, ``norm2``, ``norm3``.
    """

    def __init__(
        self,
        d_model: int = 256,
        dim_feedforward: int = 2048,
        num_heads: int = 1,
        kv_in_dim: int = 64,
        rope_theta: float = 10000.0,
        pos_enc_at_attn: bool = False,
        pos_enc_at_cross_attn_keys: bool = True,
        pos_enc_at_cross_attn_queries: bool = False,
        activation: str = "relu",
    ) -> None:
        super().__init__()
        self.d_model = d_model
        self.self_attn = RoPEAttention(d_model, num_heads, 1, None, rope_theta)
        self.cross_attn_image = RoPEAttention(d_model, num_heads, 1, kv_in_dim, rope_theta)
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.norm3 = nn.LayerNorm(d_model)
        if activation not in ("relu", "gelu"):
            raise ValueError(f"unsupported activation {activation!r}")
        self.activation = activation
        self.pos_enc_at_attn = pos_enc_at_attn
        self.pos_enc_at_cross_attn_keys = pos_enc_at_cross_attn_keys
        self.pos_enc_at_cross_attn_queries = pos_enc_at_cross_attn_queries

    def forward(
        self,
        tgt: torch.Tensor,
        memory: torch.Tensor,
        query_pos: Optional[torch.Tensor],
        pos: Optional[torch.Tensor],
        sa_rope: Optional[CosSin] = None,
        ca_q_rope: Optional[CosSin] = None,
        ca_k_rope: Optional[CosSin] = None,
        num_k_exclude_rope: int = 0,
    ) -> torch.Tensor:
        """
        Args:
            tgt: ``(B, Nq, d_model)``; query_pos: same shape (or ``None``).
            memory: ``(B, Nk, kv_in_dim)``; pos: same shape (or ``None``).
            sa_rope: ``(cos, sin)`` of the queries for the self-attention (q and k).
            ca_q_rope / ca_k_rope: for the cross-attention queries / leading keys.
            num_k_exclude_rope: trailing memory tokens (object pointers) not rotated.
        """
        # self-attention
        t2 = self.norm1(tgt)
        qk = t2 + query_pos if self.pos_enc_at_attn else t2
        tgt = tgt + self.self_attn(qk, qk, t2, sa_rope, sa_rope)
        # cross-attention to the memory
        t2 = self.norm2(tgt)
        tgt = tgt + self.cross_attn_image(
            t2 + query_pos if self.pos_enc_at_cross_attn_queries else t2,
            memory + pos if self.pos_enc_at_cross_attn_keys else memory,
            memory,
            ca_q_rope,
            ca_k_rope,
            num_k_exclude_rope,
        )
        # MLP
        t2 = self.linear1(self.norm3(tgt))
        t2 = F.relu(t2) if self.activation == "relu" else F.gelu(t2)
        return tgt + self.linear2(t2)


class MemoryAttention(nn.Module):
    """Stack of :class:`MemoryAttentionLayer` + final ``norm`` (batch-first).

    Args:
        d_model: query channels (256).
        pos_enc_at_input: add ``0.1 * curr_pos`` to the input.
        layer: layer to clone ``num_layers`` times (default: SAM 2 / EdgeTAM layer).
        num_layers: 4 for SAM 2.1 tiny, 2 for EdgeTAM.
        k_rope_grid: ``(h, w)`` grid of the rotated tokens of one memory frame when
            ``k_coords`` is not given; ``None`` = the query grid (SAM 2).
        k_num_no_rope_per_frame: unrotated tokens at the start of every memory frame
            when ``k_coords`` is not given (EdgeTAM: its 256 1D latents).
    """

    def __init__(
        self,
        d_model: int = 256,
        pos_enc_at_input: bool = True,
        layer: Optional[MemoryAttentionLayer] = None,
        num_layers: int = 4,
        k_rope_grid: Optional[Tuple[int, int]] = None,
        k_num_no_rope_per_frame: int = 0,
    ) -> None:
        super().__init__()
        if layer is None:
            layer = MemoryAttentionLayer(d_model=d_model)
        self.d_model = d_model
        self.layers = nn.ModuleList(copy.deepcopy(layer) for _ in range(num_layers))
        self.num_layers = num_layers
        self.norm = nn.LayerNorm(d_model)
        self.pos_enc_at_input = pos_enc_at_input
        self.k_rope_grid = tuple(k_rope_grid) if k_rope_grid is not None else None
        self.k_num_no_rope_per_frame = int(k_num_no_rope_per_frame)

    # ------------------------------------------------------------------ positions
    @staticmethod
    def default_query_coords(num_queries: int, device=None) -> torch.Tensor:
        """The ``s x s`` grid, ``s = sqrt(Nq)``, as SAM 2 assumes (square maps)."""
        side = int(round(math.sqrt(num_queries)))
        if side * side != num_queries:
            raise ValueError(f"{num_queries} query tokens are not a square map; pass q_coords")
        return grid_coords(side, side, device=device)

    def default_key_coords(self, num_rope_tokens: int, num_queries: int, device=None) -> torch.Tensor:
        """Official per-frame key positions for ``num_rope_tokens`` memory tokens.

        Frames of ``k_num_no_rope_per_frame`` tokens at ``(0, 0)`` (identity rotation)
        followed by the ``k_rope_grid`` grid (default: the query grid), tiled.
        """
        if self.k_rope_grid is None:
            grid = self.default_query_coords(num_queries, device=device)
        else:
            grid = grid_coords(*self.k_rope_grid, device=device)
        if self.k_num_no_rope_per_frame > 0:
            zeros = grid.new_zeros(self.k_num_no_rope_per_frame, 2)
            grid = torch.cat((zeros, grid), dim=0)
        frame_len = grid.shape[0]
        if num_rope_tokens % frame_len != 0:
            raise ValueError(
                f"{num_rope_tokens} memory tokens (object pointers excluded) are not a "
                f"whole number of {frame_len}-token frames; pass k_coords"
            )
        return grid.repeat(num_rope_tokens // frame_len, 1)

    # -------------------------------------------------------------------- forward
    def forward(
        self,
        curr: torch.Tensor,
        curr_pos: Optional[torch.Tensor],
        memory: torch.Tensor,
        memory_pos: Optional[torch.Tensor],
        num_obj_ptr_tokens: int = 0,
        q_coords: Optional[torch.Tensor] = None,
        k_coords: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """
        Args:
            curr: ``(B, Nq, 256)`` current-frame features (``Nq = 64*64`` at 1024 px).
            curr_pos: ``(B, Nq, 256)`` their sine position encoding.
            memory: ``(B, Nk, 64)`` memory tokens; the last ``num_obj_ptr_tokens`` are
                object-pointer tokens (never rotated).
            memory_pos: ``(B, Nk, 64)`` memory position encoding (spatial + temporal).
            num_obj_ptr_tokens: number of trailing object-pointer tokens (Python int).
            q_coords: ``(Nq, 2)`` or ``(B, Nq, 2)`` query positions ``(x, y)``;
                ``None`` = the square integer grid.
            k_coords: ``(Nk - num_obj_ptr_tokens, 2)`` or ``(B, Nk - num_obj_ptr_tokens, 2)``
                memory-token positions; ``None`` = official per-frame layout (see
                class docstring). ``(0, 0)`` means "not rotated".

        Returns:
            ``(B, Nq, 256)`` memory-conditioned features.
        """
        output = curr
        if self.pos_enc_at_input and curr_pos is not None:
            output = output + 0.1 * curr_pos

        num_q = curr.shape[1]
        if q_coords is None:
            q_coords = self.default_query_coords(num_q, device=curr.device)
        if k_coords is None:
            k_coords = self.default_key_coords(
                memory.shape[1] - num_obj_ptr_tokens, num_q, device=curr.device
            )

        first = self.layers[0]
        sa_rope = first.self_attn.rope(q_coords)
        ca_q_rope = first.cross_attn_image.rope(q_coords)
        ca_k_rope = first.cross_attn_image.rope(k_coords)

        for layer in self.layers:
            output = layer(
                output,
                memory,
                curr_pos,
                memory_pos,
                sa_rope=sa_rope,
                ca_q_rope=ca_q_rope,
                ca_k_rope=ca_k_rope,
                num_k_exclude_rope=num_obj_ptr_tokens,
            )
        return self.norm(output)


def build_sam2_memory_attention(num_layers: int = 4) -> MemoryAttention:
    """SAM 2 / SAM 2.1 memory attention (tiny: 4 layers); keys share the query grid."""
    return MemoryAttention(d_model=256, pos_enc_at_input=True, num_layers=num_layers)


def build_edgetam_memory_attention(
    num_layers: int = 2, num_latents_1d: int = 256, latent_grid: Tuple[int, int] = (16, 16)
) -> MemoryAttention:
    """EdgeTAM memory attention: memory frames = 256 unrotated 1D latents + 16x16 grid."""
    return MemoryAttention(
        d_model=256,
        pos_enc_at_input=True,
        num_layers=num_layers,
        k_rope_grid=latent_grid,
        k_num_no_rope_per_frame=num_latents_1d,
    )
