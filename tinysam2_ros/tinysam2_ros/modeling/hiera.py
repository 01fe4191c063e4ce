"""Hiera image-encoder trunk of SAM 2 / SAM 2.1 ("hieradet" variant).

A hierarchical vision transformer working on channels-last ``B x H x W x C`` token
maps. Four stages at stride 4, 8, 16 and 32; the first block of stages 2..4 halves
the map by max-pooling its *queries* (keys and values stay at full resolution) and
doubles the width. Most blocks attend inside non-overlapping windows (zero padded to
a multiple of the window size); the blocks listed in ``global_att_blocks`` attend
over the whole map.

Parameter names follow SAM 2, so ``image_encoder.trunk.*`` of a SAM 2.1 checkpoint
loads with ``load_state_dict`` after stripping that prefix. Inference only: stochastic
depth (``drop_path_rate``) is accepted for signature parity but never applied.

Everything here traces to ONNX (opset 17): shapes are Python ints, fixed for a fixed
input size, and no control flow looks at tensor values.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .common import MLP

# Constructor arguments of the SAM 2.1 trunks (sam2/configs/sam2.1/sam2.1_hiera_*.yaml,
# where base+ relies on the Hiera defaults). All knobs are spelled out.
HIERA_CONFIGS: dict[str, dict] = {
    "tiny": dict(
        embed_dim=96,
        num_heads=1,
        stages=(1, 2, 7, 2),
        global_att_blocks=(5, 7, 9),
        window_spec=(8, 4, 14, 7),
        window_pos_embed_bkg_spatial_size=(7, 7),
    ),
    "small": dict(
        embed_dim=96,
        num_heads=1,
        stages=(1, 2, 11, 2),
        global_att_blocks=(7, 10, 13),
        window_spec=(8, 4, 14, 7),
        window_pos_embed_bkg_spatial_size=(7, 7),
    ),
    "base_plus": dict(
        embed_dim=112,
        num_heads=2,
        stages=(2, 3, 16, 3),
        global_att_blocks=(12, 16, 20),
        window_spec=(8, 4, 14, 7),
        window_pos_embed_bkg_spatial_size=(14, 14),
    ),
    "large": dict(
        embed_dim=144,
        num_heads=2,
        stages=(2, 6, 36, 4),
        global_att_blocks=(23, 33, 43),
        window_spec=(8, 4, 16, 8),
        window_pos_embed_bkg_spatial_size=(7, 7),
    ),
}


def window_partition(x: torch.Tensor, window_size: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """Cut ``B x H x W x C`` into ``(B * nH * nW) x ws x ws x C`` windows.

    The map is zero padded at the bottom/right up to a multiple of ``window_size``.
    Windows are ordered batch-major, then row of windows, then column of windows.
    Returns the windows and the padded size ``(Hp, Wp)``.
    """
    b, h, w, c = x.shape
    pad_h = -h % window_size
    pad_w = -w % window_size
    if pad_h or pad_w:
        x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
    hp, wp = h + pad_h, w + pad_w
    x = x.reshape(b, hp // window_size, window_size, wp // window_size, window_size, c)
    windows = x.permute(0, 1, 3, 2, 4, 5).reshape(-1, window_size, window_size, c)
    return windows, (hp, wp)


def window_unpartition(
    windows: torch.Tensor, window_size: int, padded_hw: tuple[int, int], hw: tuple[int, int]
) -> torch.Tensor:
    """Inverse of :func:`window_partition`: reassemble the map and crop the padding."""
    hp, wp = padded_hw
    h, w = hw
    nh, nw = hp // window_size, wp // window_size
    b = windows.shape[0] // (nh * nw)
    x = windows.reshape(b, nh, nw, window_size, window_size, -1)
    x = x.permute(0, 1, 3, 2, 4, 5).reshape(b, hp, wp, -1)
    if hp > h or wp > w:
        x = x[:, :h, :w, :]
    return x


def _pool_nhwc(x: torch.Tensor, pool: nn.Module | None) -> torch.Tensor:
    """Apply an NCHW pooling module to a channels-last map (identity when ``pool`` is None)."""
    if pool is None:
        return x
    return pool(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)


class PatchEmbed(nn.Module):
    """7x7 stride-4 convolution, NCHW image in, ``B x H/4 x W/4 x C`` tokens out."""

    def __init__(
        self,
        kernel_size: tuple[int, int] = (7, 7),
        stride: tuple[int, int] = (4, 4),
        padding: tuple[int, int] = (3, 3),
        in_chans: int = 3,
        embed_dim: int = 768,
    ) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=kernel_size, stride=stride, padding=padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).permute(0, 2, 3, 1)


class GeluMLP(MLP):
    """SAM 2's MLP with GELU (exact, erf form) between layers; same ``layers.N`` names."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < last:
                x = F.gelu(x)
        return x


class MultiScaleAttention(nn.Module):
    """Multi-head self-attention over a ``B x H x W x dim`` map, optionally pooling queries.

    With ``q_pool`` the queries are max-pooled on the 2D grid before attention (keys and
    values are not), so the output is ``B x H' x W' x dim_out`` at the pooled size.
    """

    def __init__(self, dim: int, dim_out: int, num_heads: int, q_pool: nn.Module | None = None) -> None:
        super().__init__()
        if dim_out % num_heads:
            raise ValueError(f"dim_out={dim_out} is not divisible by num_heads={num_heads}")
        self.dim = dim
        self.dim_out = dim_out
        self.num_heads = num_heads
        self.q_pool = q_pool
        self.qkv = nn.Linear(dim, dim_out * 3)
        self.proj = nn.Linear(dim_out, dim_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, _ = x.shape
        # Channel layout of qkv's output: (3, heads, head_dim).
        qkv = self.qkv(x).reshape(b, h * w, 3, self.num_heads, -1)
        q, k, v = qkv.unbind(2)  # each B x HW x heads x head_dim
        if self.q_pool is not None:
            q = _pool_nhwc(q.reshape(b, h, w, -1), self.q_pool)
            h, w = q.shape[1], q.shape[2]
            q = q.reshape(b, h * w, self.num_heads, -1)
        # Default SDPA scale is head_dim ** -0.5, as in SAM 2.
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        out = out.transpose(1, 2).reshape(b, h, w, -1)
        return self.proj(out)


class MultiScaleBlock(nn.Module):
    """Pre-norm transformer block: (windowed) attention with optional query pooling, then MLP.

    When ``dim != dim_out`` the residual branch is ``proj(norm1(x))`` (note: taken after
    the norm), max-pooled like the queries when ``q_stride`` is set. ``window_size == 0``
    means global attention.
    """

    def __init__(
        self,
        dim: int,
        dim_out: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        q_stride: tuple[int, int] | None = None,
        window_size: int = 0,
    ) -> None:
        super().__init__()
        self.dim = dim
        self.dim_out = dim_out
        self.window_size = window_size
        self.q_stride = tuple(q_stride) if q_stride else None
        self.pool = None
        if self.q_stride is not None:
            # Windows stay square after pooling, and the pooled windows must tile exactly.
            if self.q_stride[0] != self.q_stride[1] or (window_size and window_size % self.q_stride[0]):
                raise ValueError(f"q_stride={self.q_stride} must be square and divide window_size={window_size}")
            # Parameter-free; shared by the residual branch and the attention's queries.
            self.pool = nn.MaxPool2d(kernel_size=self.q_stride, stride=self.q_stride, ceil_mode=False)

        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = MultiScaleAttention(dim, dim_out, num_heads=num_heads, q_pool=self.pool)
        self.norm2 = nn.LayerNorm(dim_out, eps=1e-6)
        self.mlp = GeluMLP(dim_out, int(dim_out * mlp_ratio), dim_out, num_layers=2)
        self.proj = nn.Linear(dim, dim_out) if dim != dim_out else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        x = self.norm1(x)
        if self.proj is not None:
            shortcut = self.proj(x)
        shortcut = _pool_nhwc(shortcut, self.pool)

        ws = self.window_size
        if ws > 0:
            x, (hp, wp) = window_partition(x, ws)
        x = self.attn(x)
        if ws > 0:
            if self.q_stride is not None:
                # Each window shrank by the stride; so did the padded map.
                s = self.q_stride[0]
                ws, hp, wp = ws // s, hp // s, wp // s
            x = window_unpartition(x, ws, (hp, wp), (shortcut.shape[1], shortcut.shape[2]))

        x = shortcut + x
        return x + self.mlp(self.norm2(x))


class Hiera(nn.Module):
    """SAM 2's Hiera trunk; ``forward`` returns NCHW maps of every stage, shallowest first.

    ``channel_list`` gives the output channels deepest first (the FPN neck's
    ``backbone_channel_list``), e.g. ``[768, 384, 192, 96]`` for tiny.
    The input height and width must be multiples of ``4 * window_spec[0]`` (32 for
    all SAM 2.1 sizes) so that the window position embedding tiles the patch grid.
    """

    def __init__(
        self,
        embed_dim: int = 96,
        num_heads: int = 1,
        drop_path_rate: float = 0.0,
        q_pool: int = 3,
        q_stride: tuple[int, int] = (2, 2),
        stages: Sequence[int] = (2, 3, 16, 3),
        dim_mul: float = 2.0,
        head_mul: float = 2.0,
        window_pos_embed_bkg_spatial_size: tuple[int, int] = (14, 14),
        window_spec: Sequence[int] = (8, 4, 14, 7),
        global_att_blocks: Sequence[int] = (12, 16, 20),
        return_interm_layers: bool = True,
    ) -> None:
        super().__init__()
        if len(stages) != len(window_spec):
            raise ValueError("stages and window_spec must have the same length")
        self.window_spec = tuple(window_spec)
        self.q_stride = tuple(q_stride)
        self.drop_path_rate = drop_path_rate  # unused: inference only
        self.return_interm_layers = return_interm_layers
        self.global_att_blocks = tuple(global_att_blocks or ())
        self.stage_ends = [sum(stages[: i + 1]) - 1 for i in range(len(stages))]
        if not 0 <= q_pool <= len(stages) - 1:
            raise ValueError(f"q_pool={q_pool} must be in [0, {len(stages) - 1}]")
        # Query pooling happens in the first block of stages 2 .. q_pool + 1.
        self.q_pool_blocks = [end + 1 for end in self.stage_ends[:-1]][:q_pool]

        self.patch_embed = PatchEmbed(embed_dim=embed_dim)
        # Windowed absolute position embedding (arXiv:2311.05613): a background table
        # resized to the patch grid plus one window-sized table tiled over it.
        self.window_pos_embed_bkg_spatial_size = tuple(window_pos_embed_bkg_spatial_size)
        self.pos_embed = nn.Parameter(torch.zeros(1, embed_dim, *self.window_pos_embed_bkg_spatial_size))
        self.pos_embed_window = nn.Parameter(torch.zeros(1, embed_dim, self.window_spec[0], self.window_spec[0]))

        self.blocks = nn.ModuleList()
        stage = 0
        dim = embed_dim
        for i in range(sum(stages)):
            # The window size lags one block behind the stage: the first block of a stage
            # still uses the previous stage's window (which its query pooling shrinks).
            window_size = 0 if i in self.global_att_blocks else self.window_spec[stage]
            dim_out = dim
            if i - 1 in self.stage_ends:
                dim_out = int(dim * dim_mul)
                num_heads = int(num_heads * head_mul)
                stage += 1
            self.blocks.append(
                MultiScaleBlock(
                    dim=dim,
                    dim_out=dim_out,
                    num_heads=num_heads,
                    q_stride=self.q_stride if i in self.q_pool_blocks else None,
                    window_size=window_size,
                )
            )
            dim = dim_out

        ends = self.stage_ends[::-1] if return_interm_layers else self.stage_ends[-1:]
        self.channel_list = [self.blocks[i].dim_out for i in ends]

    def _get_pos_embed(self, hw: tuple[int, int]) -> torch.Tensor:
        """Position embedding for an ``h x w`` patch grid, channels last (``1 x h x w x C``)."""
        h, w = hw
        win = self.pos_embed_window
        wh, ww = win.shape[-2], win.shape[-1]
        if h % wh or w % ww:
            raise ValueError(f"patch grid {h}x{w} is not a multiple of the {wh}x{ww} window position embedding")
        pos = F.interpolate(self.pos_embed, size=(h, w), mode="bicubic")
        pos = pos + win.repeat(1, 1, h // wh, w // ww)
        return pos.permute(0, 2, 3, 1)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.patch_embed(x)
        x = x + self._get_pos_embed((x.shape[1], x.shape[2]))
        outputs = []
        last = self.stage_ends[-1]
        for i, blk in enumerate(self.blocks):
            x = blk(x)
            if i == last or (self.return_interm_layers and i in self.stage_ends):
                outputs.append(x.permute(0, 3, 1, 2))
        return outputs
