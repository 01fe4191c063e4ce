"""Object-aware query routing (Efficient-SAM2 / Fast SAM2 ideas, training-free).

Memory attention costs in proportion to the image tokens sent through it. Per frame
and batch of objects only a routed subset goes:
  * the previous frame's mask region (logits > 0), dilated by ``dilation`` tokens;
  * uncertain tokens, where the previous logits come within ``uncertainty`` of 0;
  * the top ``context_keep`` fraction of a light visual-context score (the distance of
    a token's features from the mean of its 3x3 neighbourhood: edges and small
    structures, where a re-appearing or fast object shows first);
  * topped up to ``min_tokens`` from that score.
Objects batched together share the union of their routes (one gather, no padding).
The other tokens take the ``fill``: "no_memory" (the features of a frame decoded
without memory: pix_feat + the learned no-memory embedding), "raw" (pix_feat) or
"previous" (the object's previous memory-conditioned features at those tokens);
docs/efficiency.md has the measured comparison.
Dense processing: when routing is off, when any object of the batch has no previous
output, was prompted on the previous frame, or was absent on it (occluded / lost), every ``dense_every``
frames (so a re-entering object is found), and when the route would cover most
tokens anyway. Prompted frames never reach memory attention.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

import torch
import torch.nn.functional as F

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
        "help": "run memory attention densely every this many frames (re-entering objects)", "range": (1, 10000),
        "choices": None, "live": True})
    min_tokens: int = field(default=16, metadata={
        "help": "fewest tokens routed per batch", "range": (1, 1 << 20), "choices": None, "live": True})
    max_fraction: float = field(default=0.75, metadata={
        "help": "a route covering more than this fraction of the tokens runs dense instead", "range": (0.0, 1.0),
        "choices": None, "live": True})
    fill: str = field(default="previous", metadata={
        "help": "features of tokens not routed", "range": None, "choices": FILLS, "live": True})

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        errors = []
        for f in fields(self):
            value, meta = getattr(self, f.name), f.metadata
            if meta.get("range") is not None:
                lo, hi = meta["range"]
                if not lo <= value <= hi:
                    errors.append(f"{f.name} must lie in [{lo}, {hi}], got {value}")
            if meta.get("choices") is not None and value not in meta["choices"]:
                errors.append(f"{f.name} must be one of {meta['choices']}, got {value!r}")
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


class Router:
    """Chooses the tokens of a batch of objects that go through memory attention."""

    def __init__(self, model, config: RoutingConfig) -> None:
        self.model = model
        self.config = config

    def needs_dense(self, objs, t: int) -> bool:
        c = self.config
        if not c.enabled:
            return True
        for o in objs:
            prev = o.entry(t - 1)
            if prev is None or prev.low_res_logits is None or prev.object_score <= 0 or (t - 1) in o.cond:
                return True
            if o.last_dense < 0 or t - o.last_dense >= c.dense_every:
                return True
        return False

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

    @torch.no_grad()
    def route(self, objs, pix_feat: torch.Tensor, t: int) -> torch.Tensor | None:
        """Sorted token indices routed for ``objs`` at frame ``t`` (``None``: dense)."""
        if self.needs_dense(objs, t):
            return None
        c = self.config
        h, w = pix_feat.shape[-2:]
        n = h * w
        chosen = torch.zeros(n, dtype=torch.bool, device=pix_feat.device)
        for o in objs:
            chosen |= self.object_region(o.entry(t - 1).low_res_logits, h, w)
        score = context_score(pix_feat[:1])[0]
        order = score.argsort(descending=True)
        n_ctx = int(round(c.context_keep * n))
        if n_ctx > 0:
            chosen[order[:n_ctx]] = True
        missing = min(c.min_tokens, n) - int(chosen.sum())
        if missing > 0:
            free = order[~chosen[order]]
            chosen[free[:missing]] = True
        if int(chosen.sum()) > c.max_fraction * n:
            return None
        return chosen.nonzero()[:, 0]

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
