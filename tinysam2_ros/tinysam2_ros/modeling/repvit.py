"""RepViT trunk (RepViT-M1 layout) as used by EdgeTAM's image encoder.

EdgeTAM builds its trunk as timm's ``repvit_m1`` with ``features_only=True``; this
module rebuilds that network without timm, with the same module names so the
official checkpoint loads under ``image_encoder.trunk.`` (``body.stem...``,
``body.stages_0...``), and with the same ops (GELU, ReLU/sigmoid squeeze-excite on
every other block, BatchNorm eps 1e-5) so the numbers match.

``RepViTTrunk.fuse()`` re-parameterises the network for deployment: every
BatchNorm is folded into its convolution and each RepVGG depthwise mixer
(3x3 dw + 1x1 dw + identity) becomes a single 3x3 depthwise convolution.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def _make_divisible(value: float, divisor: int = 8) -> int:
    """Round a channel count to a multiple of ``divisor`` (timm's rule, no 90% floor)."""
    return max(divisor, int(value + divisor / 2) // divisor * divisor)


class ConvNorm(nn.Sequential):
    """Bias-free conv followed by BatchNorm (``c``, ``bn``), foldable into one conv."""

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        kernel_size: int = 1,
        stride: int = 1,
        padding: int = 0,
        groups: int = 1,
    ) -> None:
        super().__init__()
        self.add_module("c", nn.Conv2d(in_dim, out_dim, kernel_size, stride, padding, groups=groups, bias=False))
        self.add_module("bn", nn.BatchNorm2d(out_dim))

    @torch.no_grad()
    def folded_weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Weight and bias of the equivalent conv, computed in float64 to keep fusion exact."""
        conv, bn = self.c, self.bn
        scale = bn.weight.double() / torch.sqrt(bn.running_var.double() + bn.eps)
        weight = conv.weight.double() * scale[:, None, None, None]
        bias = bn.bias.double() - bn.running_mean.double() * scale
        return weight, bias

    @torch.no_grad()
    def fused(self) -> nn.Conv2d:
        weight, bias = self.folded_weights()
        return _conv_like(self.c, weight, bias)


def _conv_like(ref: nn.Conv2d, weight: torch.Tensor, bias: torch.Tensor) -> nn.Conv2d:
    """A biased Conv2d with ``ref``'s geometry holding the given (float64) weights."""
    conv = nn.Conv2d(
        ref.in_channels,
        ref.out_channels,
        ref.kernel_size,
        ref.stride,
        ref.padding,
        ref.dilation,
        ref.groups,
        bias=True,
        device=ref.weight.device,
        dtype=ref.weight.dtype,
    )
    conv.weight.copy_(weight.to(conv.weight.dtype))
    conv.bias.copy_(bias.to(conv.bias.dtype))
    return conv


class RepVggDw(nn.Module):
    """RepVGG-style depthwise token mixer: ``conv_kxk(x) + conv_1x1(x) + x``.

    This is timm's "legacy" variant (RepViT-M1/M2/M3): the 1x1 branch has its own
    BatchNorm and there is no BatchNorm after the sum.
    """

    def __init__(self, dim: int, kernel_size: int = 3) -> None:
        super().__init__()
        self.conv = ConvNorm(dim, dim, kernel_size, 1, (kernel_size - 1) // 2, groups=dim)
        self.conv1 = ConvNorm(dim, dim, 1, 1, 0, groups=dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x) + self.conv1(x) + x

    @torch.no_grad()
    def fused(self) -> nn.Conv2d:
        """One depthwise kxk conv: the 1x1 kernel and the identity sit at the kernel centre."""
        weight, bias = self.conv.folded_weights()
        weight1, bias1 = self.conv1.folded_weights()
        centre = (weight.shape[-1] - 1) // 2
        weight[:, :, centre, centre] += weight1[:, :, 0, 0] + 1.0
        return _conv_like(self.conv.c, weight, bias + bias1)


class SqueezeExcite(nn.Module):
    """Channel gating: global mean -> 1x1 conv -> ReLU -> 1x1 conv -> sigmoid (timm ``SEModule``)."""

    def __init__(self, dim: int, rd_ratio: float = 0.25) -> None:
        super().__init__()
        hidden = _make_divisible(dim * rd_ratio, 8)
        self.fc1 = nn.Conv2d(dim, hidden, 1)
        self.fc2 = nn.Conv2d(hidden, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.mean((2, 3), keepdim=True)
        s = self.fc2(F.relu(self.fc1(s)))
        return x * torch.sigmoid(s)


class RepViTMlp(nn.Module):
    """Pointwise feed-forward: 1x1 ConvNorm -> GELU -> 1x1 ConvNorm."""

    def __init__(self, dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.conv1 = ConvNorm(dim, hidden_dim)
        self.act = nn.GELU()
        self.conv2 = ConvNorm(hidden_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.act(self.conv1(x)))


class RepViTBlock(nn.Module):
    """Token mixer (+ optional SE), then a residual channel mixer."""

    def __init__(self, dim: int, mlp_ratio: int, kernel_size: int, use_se: bool) -> None:
        super().__init__()
        self.token_mixer = RepVggDw(dim, kernel_size)
        self.se = SqueezeExcite(dim) if use_se else nn.Identity()
        self.channel_mixer = RepViTMlp(dim, dim * mlp_ratio)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.se(self.token_mixer(x))
        return x + self.channel_mixer(x)


class RepViTStem(nn.Module):
    """Two stride-2 3x3 ConvNorms with GELU between: stride 4."""

    def __init__(self, in_chans: int, out_chans: int) -> None:
        super().__init__()
        self.conv1 = ConvNorm(in_chans, out_chans // 2, 3, 2, 1)
        self.act1 = nn.GELU()
        self.conv2 = ConvNorm(out_chans // 2, out_chans, 3, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.act1(self.conv1(x)))


class RepViTDownsample(nn.Module):
    """Stage entry: a block without SE, stride-2 depthwise conv, 1x1 channel change, residual FFN."""

    def __init__(self, in_dim: int, out_dim: int, mlp_ratio: int, kernel_size: int) -> None:
        super().__init__()
        self.pre_block = RepViTBlock(in_dim, mlp_ratio, kernel_size, use_se=False)
        self.spatial_downsample = ConvNorm(in_dim, in_dim, kernel_size, 2, (kernel_size - 1) // 2, groups=in_dim)
        self.channel_downsample = ConvNorm(in_dim, out_dim, 1, 1)
        self.ffn = RepViTMlp(out_dim, out_dim * mlp_ratio)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.channel_downsample(self.spatial_downsample(self.pre_block(x)))
        return x + self.ffn(x)


class RepViTStage(nn.Module):
    """Optional downsample, then ``depth`` blocks with SE on the even-indexed ones."""

    def __init__(
        self, in_dim: int, out_dim: int, depth: int, mlp_ratio: int, kernel_size: int, downsample: bool
    ) -> None:
        super().__init__()
        if downsample:
            self.downsample = RepViTDownsample(in_dim, out_dim, mlp_ratio, kernel_size)
        else:
            assert in_dim == out_dim, "a stage without downsample keeps its width"
            self.downsample = nn.Identity()
        self.blocks = nn.Sequential(
            *(RepViTBlock(out_dim, mlp_ratio, kernel_size, use_se=(i % 2 == 0)) for i in range(depth))
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.downsample(x))


class RepViTTrunk(nn.Module):
    """Multi-scale RepViT feature extractor for the SAM 2 image encoder.

    ``forward(x)`` returns the output of every stage, NCHW, from stride 4 to stride
    ``4 * 2**(len(depths)-1)``. ``channel_list`` lists those widths deepest first,
    the order the SAM 2 FPN neck expects. Defaults are RepViT-M1 (EdgeTAM).
    """

    def __init__(
        self,
        in_chans: int = 3,
        embed_dims: Sequence[int] = (48, 96, 192, 384),
        depths: Sequence[int] = (2, 2, 14, 2),
        mlp_ratio: int = 2,
        kernel_size: int = 3,
    ) -> None:
        super().__init__()
        assert len(embed_dims) == len(depths)
        # ``body`` mirrors timm's FeatureListNet naming (``stages.0`` -> ``stages_0``).
        self.body = nn.ModuleDict({"stem": RepViTStem(in_chans, embed_dims[0])})
        in_dim = embed_dims[0]
        for i, (dim, depth) in enumerate(zip(embed_dims, depths)):
            self.body[f"stages_{i}"] = RepViTStage(in_dim, dim, depth, mlp_ratio, kernel_size, downsample=i > 0)
            in_dim = dim
        self.num_stages = len(embed_dims)
        self.channel_list = list(embed_dims)[::-1]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.body["stem"](x)
        outs = []
        for i in range(self.num_stages):
            x = self.body[f"stages_{i}"](x)
            outs.append(x)
        return outs

    @torch.no_grad()
    def fuse(self) -> "RepViTTrunk":
        """Fold BatchNorms and RepVGG branches into plain convs, in place (for inference).

        The result computes the same function as the eval-mode network but has a
        different state_dict, so load checkpoints before fusing.
        """

        def visit(module: nn.Module) -> None:
            for name, child in module.named_children():
                if isinstance(child, (ConvNorm, RepVggDw)):
                    setattr(module, name, child.fused())
                else:
                    visit(child)

        visit(self)
        return self.eval()
