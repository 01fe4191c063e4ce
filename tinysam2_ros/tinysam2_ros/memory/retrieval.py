"""Sparse memory retrieval (Efficient-SAM2): score a memory frame's tokens once.

When a tracked memory frame is recalled for the first time, its tokens are scored by
the attention they receive from the current frame's queries, and only the top
``memory.retrieval_keep`` fraction take part in memory attention from then on (the
selection is cached on the frame's ``MemoryEntry`` until the frame leaves memory).

The score is a cheap proxy of what memory attention will do: the first layer's
cross-attention projections applied to the raw query tokens (its self-attention and
the other layers are skipped), rotary positions as in the real attention, softmax over
the frame's own tokens, attention mass summed over queries and heads. One such pass
costs about one cross-attention of one frame in one layer, paid once per memory frame;
``memory.retrieval_queries`` caps the queries that score to a regular grid subset of
the image (``grid_subset``), so the pass costs the same at any input size.
"""
from __future__ import annotations

import math

import torch

from ..modeling.rope import apply_rope
from .routing import grid_tokens


class RetrievalScorer:
    """Attention mass each memory token receives from the current queries (first layer's proxy)."""

    def __init__(self, model) -> None:
        self.model = model
        self.calls = 0  # frames scored (tests check that selections are reused)

    @torch.no_grad()
    def score(self, feats: torch.Tensor, pos: torch.Tensor, coords: torch.Tensor,
              queries: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None) -> torch.Tensor:
        """``feats``/``pos``: B x N x m tokens of one memory frame, ``coords`` N x 2,
        ``queries``: (tokens B x Q x C, pos, coords B x Q x 2) -> B x N scores (higher = keep).
        Without queries the score is the token norm (kept for callers with no frame)."""
        self.calls += 1
        if queries is None:
            return feats.norm(dim=-1)
        ma = self.model.memory_attention
        layer = ma.layers[0]
        attn = layer.cross_attn_image
        tokens, q_pos, q_coords = queries
        x = tokens + 0.1 * q_pos if ma.pos_enc_at_input else tokens
        x = layer.norm2(x)
        if layer.pos_enc_at_cross_attn_queries:
            x = x + q_pos
        keys = feats + pos if layer.pos_enc_at_cross_attn_keys else feats
        q = attn._split_heads(attn.q_proj(x))
        k = attn._split_heads(attn.k_proj(keys))
        q = apply_rope(q, *attn.rope(q_coords))
        k = apply_rope(k, *attn.rope(coords.expand(feats.shape[0], -1, -1)))
        probs = torch.softmax(q @ k.transpose(-1, -2) / attn.head_dim ** 0.5, dim=-1)  # B x H x Q x N
        return probs.sum(dim=(1, 2))


def grid_subset(queries: tuple[torch.Tensor, ...], h: int, w: int, most: int) -> tuple[torch.Tensor, ...]:
    """Tokens of raster-order ``B x h*w x .`` tensors on every ``s``-th row and column
    (cell centres), ``s`` the smallest stride leaving at most ``most`` (0 = all)."""
    if most <= 0 or h * w <= most:
        return queries
    s = max(1, math.ceil(math.sqrt(h * w / most)))
    while math.ceil(h / s) * math.ceil(w / s) > most:
        s += 1
    idx = grid_tokens(h, w, s, queries[0].device)
    return tuple(x[:, idx] for x in queries)
