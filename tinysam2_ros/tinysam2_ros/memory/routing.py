"""Object-aware query routing (Efficient-SAM2 / Fast SAM2 ideas, training-free).

Memory attention costs in proportion to the image tokens sent through it. Per frame
each object sends only its own route, ranked by priority:
  1. its previous mask region (logits > 0, dilated by ``dilation`` tokens) and its
     uncertain tokens (previous logits within ``uncertainty`` of 0);
  2. the top ``context_keep`` fraction of the image by a light visual-context score (the
     distance of a token's features from the mean of its 3x3 neighbourhood: edges and
     small structures, where a re-appearing or fast object shows first);
  3. the rest.
Within each tier tokens rank by that context score: when a large region exceeds the
budget, its edges and structure go through memory attention and its flat inside keeps
the previous features (measured against ranking by closeness to the mask boundary or
by mask logit: docs/efficiency.md).
Every object of a batch routes the same number of tokens ``k`` (the largest route of
the batch, at least ``min_tokens``, at most ``max_fraction`` of the tokens), so objects
batch through one memory-attention call with per-object token sets: no padding, no
attention mask, and a compute bound per object whatever its masks look like.
The other tokens take the ``fill``: "previous" (the object's previous memory-conditioned
features at those tokens), "no_memory" (the features of a frame decoded without memory:
pix_feat + the learned no-memory embedding) or "raw" (pix_feat); docs/efficiency.md has
the measured comparison.
Dense processing, decided per object (objects batch by how they go through): when
routing is off, when the object has no previous output, was prompted on the previous
frame, or has never been dense.
Every ``dense_every`` frames an object is refreshed (so drift is corrected and a part
that left the route is found again), at a phase set by its id so that objects tracked
together do not all refresh on the same frame; an object absent on the previous frame
(occluded, lost) is searched for on every ``search_every``-th frame (every frame by
default), again at a phase set by its id. With ``refresh_stride`` (or
``search_stride``) 1 these passes are dense. With a larger stride they are coarse: the
route plus every stride-th row and column go through memory attention, and every other
token takes the fill plus the memory residual (output - fill) of the grid tokens,
interpolated bilinearly: memory conditioning everywhere at a fraction of the dense cost
(docs/efficiency.md).
Prompted frames never reach memory attention.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

import torch
import torch.nn.functional as F

from ..settings import check_fields

FILLS = ("no_memory", "raw", "previous")


@dataclass
class RoutingConfig:
    """Settings of query routing before memory attention (``routing`` section of a preset)."""

    enabled: bool = field(default=False, metadata={
        "help": "send only the object's region, uncertain and high-context tokens through memory attention",
        "range": None, "choices": None, "live": True})
    dilation: int = field(default=2, metadata={
        "help": "tokens the previous mask region is dilated by", "range": (0, 32), "choices": None, "live": True})
    uncertainty: float = field(default=2.0, metadata={
        "help": "previous logits within this of 0 count as uncertain and are routed", "range": (0.0, 50.0),
        "choices": None, "live": True})
    context_keep: float = field(default=0.05, metadata={
        "help": "fraction of tokens routed by the visual-context score", "range": (0.0, 1.0), "choices": None,
        "live": True})
    dense_every: int = field(default=8, metadata={
        "help": "refresh each object's memory attention every this many frames (drift, re-entering parts): "
                "dense or coarse by refresh_stride", "range": (1, 10000),
        "choices": None, "live": True})
    min_tokens: int = field(default=16, metadata={
        "help": "fewest tokens one object routes", "range": (1, 1 << 20), "choices": None, "live": True})
    max_fraction: float = field(default=0.75, metadata={
        "help": "most tokens one object routes, as a fraction of h*w; a larger route keeps its mask region "
                "first, then the high-context tokens", "range": (0.0, 1.0), "choices": None, "live": True})
    refresh_stride: int = field(default=1, metadata={
        "help": "periodic refreshes send the route plus every this-many-th token row and column through memory "
                "attention and interpolate the rest (1: dense refresh)", "range": (1, 64), "choices": None,
        "live": True})
    search_stride: int = field(default=1, metadata={
        "help": "the same for an object absent on the previous frame, searched for while it stays absent "
                "(1: dense search)", "range": (1, 64), "choices": None, "live": True})
    search_every: int = field(default=1, metadata={
        "help": "an absent object is searched for every this many frames (phase set by its id), and sends "
                "only its route on the frames between (1: every frame)", "range": (1, 10000), "choices": None,
        "live": True})
    fill: str = field(default="previous", metadata={
        "help": "features of tokens not routed", "range": None, "choices": FILLS, "live": True})

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        errors = check_fields(self)
        if errors:
            raise ValueError("invalid routing config: " + "; ".join(errors))

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> "RoutingConfig":
        data = dict(data or {})
        unknown = set(data) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown routing settings: {sorted(unknown)}; known: {sorted(f.name for f in fields(cls))}")
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def context_score(pix_feat: torch.Tensor) -> torch.Tensor:
    """``B x h*w`` distance of each token's features from its 3x3 neighbourhood mean."""
    local = F.avg_pool2d(pix_feat, 3, stride=1, padding=1, count_include_pad=False)
    return (pix_feat - local).norm(dim=1).flatten(1)


def grid_lines(n: int, stride: int, device=None) -> torch.Tensor:
    """Indices of every ``stride``-th of ``n`` rows (or columns), cell centres."""
    return torch.arange(min(stride // 2, n - 1), n, stride, device=device)


def grid_tokens(h: int, w: int, stride: int, device=None) -> torch.Tensor:
    """Raster indices of the tokens on every ``stride``-th row and column of an ``h x w`` grid."""
    return (grid_lines(h, stride, device)[:, None] * w + grid_lines(w, stride, device)[None]).flatten()


def interpolation_matrix(lines: torch.Tensor, n: int) -> torch.Tensor:
    """``n x len(lines)`` weights interpolating values given at ``lines`` linearly to all
    ``n`` positions (constant beyond the first and last line)."""
    x = torch.arange(n, dtype=torch.float32, device=lines.device)
    at = lines.float()
    if at.numel() == 1:
        return torch.ones(n, 1, device=lines.device)
    j = torch.searchsorted(at, x, right=True).clamp(1, at.numel() - 1)
    lo, hi = at[j - 1], at[j]
    frac = ((x - lo) / (hi - lo)).clamp(0.0, 1.0)
    weights = torch.zeros(n, at.numel(), device=lines.device)
    weights[torch.arange(n), j - 1] = 1.0 - frac
    weights[torch.arange(n), j] += frac
    return weights


class Router:
    """Chooses the tokens of a batch of objects that go through memory attention."""

    def __init__(self, model, config: RoutingConfig) -> None:
        self.model = model
        self.config = config

    def grid_stride(self, obj, t: int) -> int:
        """The token grid ``obj`` sends through memory attention at frame ``t`` besides its
        route: 1 (every token: dense) with routing off or without a usable previous output
        (none, prompted on ``t - 1``, never dense yet); ``search_stride`` when it was absent
        on ``t - 1`` (every ``search_every`` frames; the route alone between); ``refresh_stride``
        on its periodic refresh, every ``dense_every``
        frames at a phase set by the object's id so that objects tracked together refresh
        on different frames (a frame pays for about B / dense_every refreshes, not B);
        else 0 (the route alone). ``ObjectMemory.groups`` batches strides apart."""
        c = self.config
        if not c.enabled:
            return 1
        prev = obj.entry(t - 1)
        if prev is None or prev.low_res_logits is None or (t - 1) in obj.cond or obj.last_dense < 0:
            return 1
        if prev.object_score <= 0:
            return c.search_stride if (t + obj.obj_id) % c.search_every == 0 else 0
        if (t + obj.obj_id) % c.dense_every == 0:
            return c.refresh_stride
        return 0

    def needs_dense(self, obj, t: int) -> bool:
        """Whether ``obj`` goes through memory attention densely at frame ``t``."""
        return self.grid_stride(obj, t) == 1

    @staticmethod
    def grid(h: int, w: int, stride: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
        """(rows, cols) of a coarse pass's token grid."""
        return grid_lines(h, stride, device), grid_lines(w, stride, device)

    def object_region(self, logits: torch.Tensor, h: int, w: int) -> torch.Tensor:
        """``h*w`` bool: dilated mask region and uncertain tokens of ``1 x 4h x 4w`` logits."""
        c = self.config
        x = logits.float()[None]  # 1 x 1 x 4h x 4w
        region = F.adaptive_max_pool2d(x, (h, w)) > 0
        if c.dilation > 0:
            k = 2 * c.dilation + 1
            region = F.max_pool2d(region.float(), k, stride=1, padding=c.dilation) > 0
        uncertain = -F.adaptive_max_pool2d(-x.abs(), (h, w)) < c.uncertainty
        return (region | uncertain).flatten()

    def budget(self, n: int) -> int:
        """Most tokens one object routes out of ``n``."""
        c = self.config
        return min(n, max(c.min_tokens, int(round(c.max_fraction * n))))

    @torch.no_grad()
    def route(self, objs, pix_feat: torch.Tensor, t: int) -> torch.Tensor | None:
        """``B x k`` sorted token indices routed per object at frame ``t`` (``None``: dense).
        A batch with a grid stride (coarse refresh or search) routes that grid too."""
        strides = [self.grid_stride(o, t) for o in objs]
        if 1 in strides:
            return None
        stride = strides[0]
        c = self.config
        h, w = pix_feat.shape[-2:]
        n = h * w
        score = context_score(pix_feat[:1])[0]
        score = score / score.max().clamp_min(1e-12)  # [0, 1]
        context = torch.zeros(n, dtype=torch.bool, device=pix_feat.device)
        n_ctx = int(round(c.context_keep * n))
        if n_ctx > 0:
            context[score.topk(n_ctx).indices] = True
        priority, wanted = [], 0
        for o in objs:
            region = self.object_region(o.entry(t - 1).low_res_logits, h, w).to(pix_feat.device)
            # tiers (region, context, rest) 2 apart, ranked inside by the context score in [0, 1]
            priority.append(score + torch.where(region, 4.0, torch.where(context, 2.0, 0.0)))
            wanted = max(wanted, int((region | context).sum()))
        k = min(self.budget(n), max(wanted, min(c.min_tokens, n)))
        priority = torch.stack(priority)
        if stride > 1:
            on_grid = grid_tokens(h, w, stride, pix_feat.device)
            priority[:, on_grid] += 8.0  # a tier above the route
            k = min(n, k + on_grid.numel())
        if k >= n:
            return None  # every token routed: that is the dense computation
        return priority.topk(k, dim=1).indices.sort(dim=1).values

    def interpolate_residual(self, cond: torch.Tensor, base: torch.Tensor, stride: int) -> torch.Tensor:
        """``B x C x h x w``: ``base`` plus the residual ``cond - base`` of the stride's grid
        tokens, interpolated bilinearly to every token (exact on the grid)."""
        h, w = cond.shape[-2:]
        rows, cols = self.grid(h, w, stride, cond.device)
        on_grid = (slice(None), slice(None), rows[:, None], cols[None])
        residual = (cond[on_grid] - base[on_grid]).float()
        wy, wx = interpolation_matrix(rows, h), interpolation_matrix(cols, w)
        return base + (wy @ residual @ wx.T).to(base.dtype)

    def fill(self, objs, pix_feat: torch.Tensor) -> torch.Tensor:
        """``B x C x h x w`` features of the tokens not routed."""
        m = self.model
        if self.config.fill == "raw":
            return pix_feat
        base = m.condition_without_memory(pix_feat)
        if self.config.fill == "previous":
            prev = [o.conditioned if o.conditioned is not None else base[i] for i, o in enumerate(objs)]
            return torch.stack(prev)
        return base
