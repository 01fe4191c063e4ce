"""Joint spatial-temporal compression of memory tokens (TinySAM 2).

Spatial: each memory frame's token grid (features and position encodings) is
average-pooled by ``pool_factor``; every pooled token keeps the mean (x, y) of
the cells it averages, which the rotary encoding of memory attention uses.

Temporal: across the frames of an object's memory, each token is scored and the
best ``token_budget`` survive, each with its own position:
  "redundancy": 1 - max cosine similarity to the tokens at the same place in the
    other memory frames (a token that repeats what another frame already holds
    adds little); ties go to the newer frame.
  "recency": tokens of newer frames first (a baseline).
Object-pointer tokens never pass through here.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class TokenLayout:
    """How a memory frame's tokens are arranged: ``leading`` free tokens, then an h x w grid."""

    leading: int
    grid_h: int
    grid_w: int

    @property
    def num_tokens(self) -> int:
        return self.leading + self.grid_h * self.grid_w


def pool_tokens(
    features: torch.Tensor, pos: torch.Tensor, coords: torch.Tensor, layout: TokenLayout, factor: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, TokenLayout]:
    """Average-pool the grid part of ``B x N x C`` tokens (and their pos and coords).

    ``coords`` is ``N x 2`` (x, y). Leading tokens pass through unchanged. Returns the
    pooled tokens, pos, coords and the new layout.
    """
    if factor == 1:
        return features, pos, coords, layout
    if layout.grid_h % factor or layout.grid_w % factor:
        raise ValueError(f"pool_factor {factor} does not divide the {layout.grid_h}x{layout.grid_w} memory grid")
    lead = layout.leading

    def pool_grid(x: torch.Tensor) -> torch.Tensor:  # B x HW x C -> B x hw x C
        b, _, c = x.shape
        g = x.transpose(1, 2).reshape(b, c, layout.grid_h, layout.grid_w)
        return F.avg_pool2d(g.float(), factor).flatten(2).transpose(1, 2).to(x.dtype)

    f = torch.cat([features[:, :lead], pool_grid(features[:, lead:])], dim=1)
    p = torch.cat([pos[:, :lead], pool_grid(pos[:, lead:])], dim=1)
    c = torch.cat([coords[:lead], pool_grid(coords[None, lead:])[0]], dim=0)
    return f, p, c, TokenLayout(lead, layout.grid_h // factor, layout.grid_w // factor)


def token_scores(frames: torch.Tensor, rule: str) -> torch.Tensor:
    """Informativeness of every token, ``B x T x N`` for ``frames`` of ``B x T x N x C``.

    Frames are ordered oldest to newest; a small recency term breaks ties.
    """
    b, t, n, _ = frames.shape
    recency = torch.arange(t, dtype=torch.float32, device=frames.device).view(1, t, 1) / max(t, 1)
    if rule == "recency" or t == 1:
        return recency.expand(b, t, n) + 0.0
    if rule != "redundancy":
        raise ValueError(f"unknown similarity rule {rule!r}")
    unit = F.normalize(frames.float(), dim=-1)
    sim = torch.einsum("btnc,bsnc->bnts", unit, unit)  # same place, frame vs frame
    eye = torch.eye(t, dtype=torch.bool, device=frames.device)
    sim = sim.masked_fill(eye, -1.0)
    redundancy = sim.max(dim=-1).values.transpose(1, 2)  # B x T x N
    return (1.0 - redundancy) + 1e-3 * recency


def select_tokens(
    features: torch.Tensor, pos: torch.Tensor, coords: torch.Tensor, budget: int, rule: str,
    allowed: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Keep the ``budget`` most informative tokens across memory frames.

    ``features``/``pos``: ``B x T x N x C`` (T memory frames of N tokens, same layout),
    ``coords``: ``T x N x 2``. ``allowed`` (``B x T x N`` bool, the same count per
    object), when given, are the only tokens that may be kept (sparse retrieval).
    Returns ``B x K x C``, ``B x K x C`` and ``B x K x 2`` with K = min(budget, T * N)
    (or the allowed count), tokens kept in (frame, place) order.
    """
    b, t, n, c = features.shape
    flat_f = features.reshape(b, t * n, c)
    flat_p = pos.reshape(b, t * n, pos.shape[-1])
    flat_c = coords.reshape(1, t * n, 2).expand(b, -1, -1)
    avail = t * n if allowed is None else int(allowed[0].sum())
    if allowed is None and (budget <= 0 or budget >= t * n):
        return flat_f, flat_p, flat_c
    k = avail if budget <= 0 else min(budget, avail)
    if budget <= 0 or budget >= avail:
        scores = torch.zeros(b, t * n, device=features.device)
    else:
        scores = token_scores(features, rule).reshape(b, t * n)
    if allowed is not None:
        scores = scores.masked_fill(~allowed.reshape(b, t * n), float("-inf"))
    keep = scores.topk(k, dim=1).indices.sort(dim=1).values
    gather = lambda x: torch.gather(x, 1, keep[..., None].expand(-1, -1, x.shape[-1]))  # noqa: E731
    return gather(flat_f), gather(flat_p), gather(flat_c)
