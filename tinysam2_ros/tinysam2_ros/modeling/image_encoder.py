"""SAM 2 image encoder: a multi-scale trunk followed by a small FPN neck.

Semantics follow SAM 2's ``ImageEncoder``/``FpnNeck``: the neck projects every
trunk level to ``d_model`` channels with its own conv (``convs.0`` takes the
deepest level), adds an upsampled top-down path only on ``fpn_top_down_levels``,
and attaches a sine position encoding to each level. The encoder then drops the
``scalp`` lowest-resolution levels. All branching depends on configuration only,
never on tensor values, so the module traces/exports to ONNX as is.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .position_encoding import PositionEmbeddingSine


class FpnNeck(nn.Module):
    """Feature pyramid over trunk levels given high-res first, with SAM 2's top-down rule.

    ``backbone_channel_list`` is deepest-first (the trunk's ``channel_list``).
    Levels are indexed high-res first (0 = stride 4). A level ``i`` listed in
    ``fpn_top_down_levels`` gets the 2x upsampled output of level ``i + 1`` added
    (or averaged, ``fuse_type="avg"``); other levels are the lateral projection alone.
    """

    def __init__(
        self,
        d_model: int = 256,
        backbone_channel_list: Sequence[int] = (384, 192, 96, 48),
        kernel_size: int = 1,
        stride: int = 1,
        padding: int = 0,
        fpn_interp_model: str = "nearest",
        fuse_type: str = "sum",
        fpn_top_down_levels: Sequence[int] | None = (2, 3),
        position_encoding: nn.Module | None = None,
    ) -> None:
        super().__init__()
        assert fuse_type in ("sum", "avg"), fuse_type
        self.d_model = d_model
        self.backbone_channel_list = list(backbone_channel_list)
        self.position_encoding = position_encoding if position_encoding is not None else PositionEmbeddingSine(d_model)
        # ``convs.N.conv`` matches the official state_dict layout.
        self.convs = nn.ModuleList(
            nn.Sequential(OrderedDict(conv=nn.Conv2d(dim, d_model, kernel_size, stride, padding)))
            for dim in self.backbone_channel_list
        )
        self.fpn_interp_model = fpn_interp_model
        self.fuse_type = fuse_type
        n_levels = len(self.convs)
        levels = range(n_levels) if fpn_top_down_levels is None else fpn_top_down_levels
        self.fpn_top_down_levels = [int(level) for level in levels]

    def forward(
        self, xs: Sequence[torch.Tensor], lowest_level: int = 0
    ) -> tuple[list[torch.Tensor | None], list[torch.Tensor | None]]:
        """``xs`` high-res first -> (features, position encodings), both high-res first.

        Levels below ``lowest_level`` are not computed (their slots hold ``None``): a
        caller that projects those levels itself skips their lateral convs.
        """
        n = len(self.convs) - 1
        assert len(xs) == n + 1, f"expected {n + 1} trunk levels, got {len(xs)}"
        out: list[torch.Tensor | None] = [None] * (n + 1)
        pos: list[torch.Tensor | None] = [None] * (n + 1)
        prev: torch.Tensor | None = None
        for i in range(n, lowest_level - 1, -1):
            lateral = self.convs[n - i](xs[i])
            if i in self.fpn_top_down_levels and prev is not None:
                top_down = F.interpolate(
                    prev.to(torch.float32),
                    scale_factor=2.0,
                    mode=self.fpn_interp_model,
                    align_corners=None if self.fpn_interp_model == "nearest" else False,
                    antialias=False,
                )
                prev = lateral + top_down
                if self.fuse_type == "avg":
                    prev = prev / 2
            else:
                prev = lateral
            out[i] = prev
            pos[i] = self.position_encoding(prev).to(prev.dtype)
        return out, pos


class ImageEncoder(nn.Module):
    """Trunk + neck; returns SAM 2's backbone dict without the ``scalp`` coarsest levels.

    ``trunk`` is any module with a ``channel_list`` (deepest first) whose forward
    returns its feature maps high-res first.
    """

    def __init__(self, trunk: nn.Module, neck: FpnNeck, scalp: int = 0) -> None:
        super().__init__()
        self.trunk = trunk
        self.neck = neck
        self.scalp = scalp
        assert list(trunk.channel_list) == list(neck.backbone_channel_list), (
            f"trunk channels {trunk.channel_list} != neck channels {neck.backbone_channel_list}"
        )

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor | list[torch.Tensor]]:
        """``x``: normalised ``B x 3 x H x W`` image.

        Returns ``backbone_fpn`` (d_model-channel maps, high-res first),
        ``vision_pos_enc`` (matching position encodings) and ``vision_features``
        (the last, lowest-resolution kept map).
        """
        features, pos = self.neck(self.trunk(x))
        if self.scalp > 0:
            features, pos = features[: -self.scalp], pos[: -self.scalp]
        return {"vision_features": features[-1], "vision_pos_enc": pos, "backbone_fpn": features}
