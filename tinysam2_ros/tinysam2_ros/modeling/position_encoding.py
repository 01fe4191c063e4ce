"""Fixed sine position encodings for feature maps (DETR/SAM 2 style)."""
from __future__ import annotations

import math

import torch
from torch import nn


class PositionEmbeddingSine(nn.Module):
    """2D sine/cosine encoding of a ``B x C x H x W`` map's pixel grid.

    Half of ``num_pos_feats`` channels encode y, half encode x; with ``normalize``
    the coordinates run over (0, 2*pi] so the encoding does not depend on map size.
    Holds no parameters (nothing in the state_dict).
    """

    def __init__(
        self,
        num_pos_feats: int,
        temperature: int = 10000,
        normalize: bool = True,
        scale: float | None = None,
    ) -> None:
        super().__init__()
        assert num_pos_feats % 2 == 0, "num_pos_feats must be even"
        self.num_pos_feats = num_pos_feats // 2
        self.temperature = temperature
        self.normalize = normalize
        self.scale = 2 * math.pi if scale is None else scale

    def encode_grid(self, h: int, w: int, device=None, dtype=torch.float32) -> torch.Tensor:
        """Encoding of an ``h x w`` grid, shape ``1 x C x h x w``."""
        y_embed = torch.arange(1, h + 1, dtype=torch.float32, device=device).view(1, h, 1).expand(1, h, w)
        x_embed = torch.arange(1, w + 1, dtype=torch.float32, device=device).view(1, 1, w).expand(1, h, w)
        if self.normalize:
            eps = 1e-6
            y_embed = y_embed / (y_embed[:, -1:, :] + eps) * self.scale
            x_embed = x_embed / (x_embed[:, :, -1:] + eps) * self.scale
        dim_t = torch.arange(self.num_pos_feats, dtype=torch.float32, device=device)
        dim_t = self.temperature ** (2 * (dim_t // 2) / self.num_pos_feats)
        pos_x = x_embed[:, :, :, None] / dim_t
        pos_y = y_embed[:, :, :, None] / dim_t
        pos_x = torch.stack((pos_x[:, :, :, 0::2].sin(), pos_x[:, :, :, 1::2].cos()), dim=4).flatten(3)
        pos_y = torch.stack((pos_y[:, :, :, 0::2].sin(), pos_y[:, :, :, 1::2].cos()), dim=4).flatten(3)
        return torch.cat((pos_y, pos_x), dim=3).permute(0, 3, 1, 2).to(dtype)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pos = self.encode_grid(x.shape[-2], x.shape[-1], device=x.device, dtype=x.dtype)
        return pos.expand(x.shape[0], -1, -1, -1)
