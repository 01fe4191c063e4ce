"""SAM 2 memory encoder: fuses a frame's pixel features with its predicted mask.

Same layout for SAM 2.1 and EdgeTAM (state-dict prefix ``memory_encoder.``):

* ``mask_downsampler.encoder``: 4 x [Conv2d 3x3 stride 2 pad 1, LayerNorm2d, GELU]
  taking the 1024x1024 mask from 1 to 4, 16, 64, 256 channels (64x64), then a 1x1
  Conv2d 256->256 (indices 0..12; GELUs at 2, 5, 8, 11 hold no weights);
* ``pix_feat_proj``: 1x1 Conv2d 256->256 on the image features;
* ``fuser.layers.{0,1}``: ConvNeXt blocks (:class:`CXBlock`);
* ``out_proj``: 1x1 Conv2d 256->64;
* position encoding: ``PositionEmbeddingSine(64)`` of the 64x64 output (no weights).
"""
from __future__ import annotations

import copy
import math
from typing import Optional, Tuple

import torch
from torch import nn

from .common import LayerNorm2d
from .position_encoding import PositionEmbeddingSine

__all__ = ["MaskDownSampler", "CXBlock", "Fuser", "MemoryEncoder"]


class MaskDownSampler(nn.Module):
    """Downsample a 1-channel mask by ``total_stride`` in steps of ``stride``.

    Each step multiplies the channels by ``stride ** 2`` (conv, LayerNorm2d, GELU);
    a final 1x1 conv maps to ``embed_dim``.
    """

    def __init__(
        self,
        embed_dim: int = 256,
        kernel_size: int = 3,
        stride: int = 2,
        padding: int = 1,
        total_stride: int = 16,
    ) -> None:
        super().__init__()
        num_steps = int(round(math.log(total_stride) / math.log(stride)))
        if stride**num_steps != total_stride:
            raise ValueError("total_stride must be a power of stride")
        layers = []
        c_in = 1
        for _ in range(num_steps):
            c_out = c_in * stride * stride
            layers += [
                nn.Conv2d(c_in, c_out, kernel_size, stride=stride, padding=padding),
                LayerNorm2d(c_out),
                nn.GELU(),
            ]
            c_in = c_out
        layers.append(nn.Conv2d(c_in, embed_dim, kernel_size=1))
        self.encoder = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, 1, H, W)`` -> ``(B, embed_dim, H / total_stride, W / total_stride)``."""
        return self.encoder(x)


class CXBlock(nn.Module):
    """ConvNeXt block: depthwise conv, LayerNorm2d, Linear-GELU-Linear, layer scale."""

    def __init__(
        self,
        dim: int = 256,
        kernel_size: int = 7,
        padding: int = 3,
        layer_scale_init_value: float = 1e-6,
        use_dwconv: bool = True,
    ) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(
            dim, dim, kernel_size, padding=padding, groups=dim if use_dwconv else 1
        )
        self.norm = LayerNorm2d(dim, eps=1e-6)
        self.pwconv1 = nn.Linear(dim, 4 * dim)
        self.act = nn.GELU()
        self.pwconv2 = nn.Linear(4 * dim, dim)
        self.gamma = (
            nn.Parameter(layer_scale_init_value * torch.ones(dim))
            if layer_scale_init_value > 0
            else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.norm(self.dwconv(x)).permute(0, 2, 3, 1)  # NCHW -> NHWC
        y = self.pwconv2(self.act(self.pwconv1(y)))
        if self.gamma is not None:
            y = self.gamma * y
        return x + y.permute(0, 3, 1, 2)


class Fuser(nn.Module):
    """``num_layers`` :class:`CXBlock` in sequence (optional 1x1 input projection)."""

    def __init__(
        self,
        layer: Optional[CXBlock] = None,
        num_layers: int = 2,
        dim: Optional[int] = None,
        input_projection: bool = False,
    ) -> None:
        super().__init__()
        if layer is None:
            layer = CXBlock()
        self.proj = nn.Identity()
        if input_projection:
            if dim is None:
                raise ValueError("input_projection needs dim")
            self.proj = nn.Conv2d(dim, dim, kernel_size=1)
        self.layers = nn.ModuleList(copy.deepcopy(layer) for _ in range(num_layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.proj(x)
        for layer in self.layers:
            x = layer(x)
        return x


class MemoryEncoder(nn.Module):
    """Encode (pixel features, mask logits) of a frame into a 64-channel memory map."""

    def __init__(
        self,
        out_dim: int = 64,
        mask_downsampler: Optional[MaskDownSampler] = None,
        fuser: Optional[Fuser] = None,
        position_encoding: Optional[nn.Module] = None,
        in_dim: int = 256,
    ) -> None:
        super().__init__()
        self.mask_downsampler = mask_downsampler if mask_downsampler is not None else MaskDownSampler(in_dim)
        self.pix_feat_proj = nn.Conv2d(in_dim, in_dim, kernel_size=1)
        self.fuser = fuser if fuser is not None else Fuser(CXBlock(in_dim), num_layers=2)
        self.position_encoding = (
            position_encoding if position_encoding is not None else PositionEmbeddingSine(out_dim)
        )
        self.out_proj = nn.Identity() if out_dim == in_dim else nn.Conv2d(in_dim, out_dim, kernel_size=1)

    def forward(
        self,
        pix_feat: torch.Tensor,
        masks: torch.Tensor,
        skip_mask_sigmoid: bool = False,
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """
        Args:
            pix_feat: ``(B, 256, 64, 64)`` image features of the frame.
            masks: ``(B, 1, 1024, 1024)`` mask logits, or already-squashed masks when
                ``skip_mask_sigmoid`` (SAM 2 passes ``sigmoid(logits) * 20 - 10``).
            skip_mask_sigmoid: do not apply ``sigmoid`` to ``masks``.

        Returns:
            ``(vision_features (B, 64, 64, 64), vision_pos_enc (B, 64, 64, 64))``.
        """
        if not skip_mask_sigmoid:
            masks = torch.sigmoid(masks)
        masks = self.mask_downsampler(masks)
        x = self.pix_feat_proj(pix_feat) + masks
        x = self.fuser(x)
        x = self.out_proj(x)
        pos = self.position_encoding(x).to(x.dtype)
        return x, pos
