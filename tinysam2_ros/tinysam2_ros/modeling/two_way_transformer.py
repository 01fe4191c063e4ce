"""SAM 2 two-way transformer (prompt tokens <-> image embedding) of the mask decoder.

Each block: token self-attention, token->image cross-attention, a ReLU MLP on the
tokens, then image->token cross-attention; LayerNorm after every residual. The first
block's self-attention skips the positional encoding and the residual (SAM
semantics). After the blocks a final token->image attention and LayerNorm.

state_dict (per block ``layers.N``): ``self_attn``, ``norm1``,
``cross_attn_token_to_image``, ``norm2``, ``mlp.layers.{0,1}``, ``norm3``, ``norm4``,
``cross_attn_image_to_token``; then ``final_attn_token_to_image`` and
``norm_final_attn``. Each attention has ``{q,k,v,out}_proj``.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .common import MLP

__all__ = ["Attention", "TwoWayAttentionBlock", "TwoWayTransformer"]


class Attention(nn.Module):
    """Multi-head attention whose q/k/v projections may shrink the width.

    ``internal_dim = embedding_dim // downsample_rate``; keys/values may come from a
    ``kv_in_dim``-wide input. Uses ``F.scaled_dot_product_attention``.
    """

    def __init__(
        self,
        embedding_dim: int,
        num_heads: int,
        downsample_rate: int = 1,
        dropout: float = 0.0,
        kv_in_dim: Optional[int] = None,
    ) -> None:
        super().__init__()
        self.embedding_dim = embedding_dim
        self.kv_in_dim = kv_in_dim if kv_in_dim is not None else embedding_dim
        self.internal_dim = embedding_dim // downsample_rate
        self.num_heads = num_heads
        if self.internal_dim % num_heads != 0:
            raise ValueError("num_heads must divide embedding_dim // downsample_rate")
        self.q_proj = nn.Linear(embedding_dim, self.internal_dim)
        self.k_proj = nn.Linear(self.kv_in_dim, self.internal_dim)
        self.v_proj = nn.Linear(self.kv_in_dim, self.internal_dim)
        self.out_proj = nn.Linear(self.internal_dim, embedding_dim)
        self.dropout_p = dropout

    def _split(self, x: Tensor) -> Tensor:
        b, n, _ = x.shape
        return x.reshape(b, n, self.num_heads, self.internal_dim // self.num_heads).transpose(1, 2)

    def forward(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        """``q``: B x Nq x C, ``k``/``v``: B x Nk x C_kv -> B x Nq x C."""
        qh = self._split(self.q_proj(q))
        kh = self._split(self.k_proj(k))
        vh = self._split(self.v_proj(v))
        p = self.dropout_p if self.training else 0.0
        out = F.scaled_dot_product_attention(qh, kh, vh, dropout_p=p)
        b, _, n, _ = out.shape
        out = out.transpose(1, 2).reshape(b, n, self.internal_dim)
        return self.out_proj(out)


class TwoWayAttentionBlock(nn.Module):
    def __init__(
        self,
        embedding_dim: int,
        num_heads: int,
        mlp_dim: int = 2048,
        attention_downsample_rate: int = 2,
        skip_first_layer_pe: bool = False,
    ) -> None:
        super().__init__()
        self.self_attn = Attention(embedding_dim, num_heads)
        self.norm1 = nn.LayerNorm(embedding_dim)
        self.cross_attn_token_to_image = Attention(embedding_dim, num_heads, downsample_rate=attention_downsample_rate)
        self.norm2 = nn.LayerNorm(embedding_dim)
        self.mlp = MLP(embedding_dim, mlp_dim, embedding_dim, num_layers=2)  # ReLU between
        self.norm3 = nn.LayerNorm(embedding_dim)
        self.norm4 = nn.LayerNorm(embedding_dim)
        self.cross_attn_image_to_token = Attention(embedding_dim, num_heads, downsample_rate=attention_downsample_rate)
        self.skip_first_layer_pe = skip_first_layer_pe

    def forward(self, queries: Tensor, keys: Tensor, query_pe: Tensor, key_pe: Tensor) -> Tuple[Tensor, Tensor]:
        # 1) token self-attention (first layer: no PE and no residual)
        if self.skip_first_layer_pe:
            queries = self.self_attn(queries, queries, queries)
        else:
            qp = queries + query_pe
            queries = queries + self.self_attn(qp, qp, queries)
        queries = self.norm1(queries)

        # 2) tokens attend to the image
        kp = keys + key_pe
        queries = self.norm2(queries + self.cross_attn_token_to_image(queries + query_pe, kp, keys))

        # 3) MLP on tokens
        queries = self.norm3(queries + self.mlp(queries))

        # 4) image attends to tokens
        keys = self.norm4(keys + self.cross_attn_image_to_token(kp, queries + query_pe, queries))
        return queries, keys


class TwoWayTransformer(nn.Module):
    def __init__(
        self,
        depth: int = 2,
        embedding_dim: int = 256,
        num_heads: int = 8,
        mlp_dim: int = 2048,
        attention_downsample_rate: int = 2,
    ) -> None:
        super().__init__()
        self.depth = depth
        self.embedding_dim = embedding_dim
        self.num_heads = num_heads
        self.mlp_dim = mlp_dim
        self.layers = nn.ModuleList(
            TwoWayAttentionBlock(
                embedding_dim,
                num_heads,
                mlp_dim=mlp_dim,
                attention_downsample_rate=attention_downsample_rate,
                skip_first_layer_pe=(i == 0),
            )
            for i in range(depth)
        )
        self.final_attn_token_to_image = Attention(embedding_dim, num_heads, downsample_rate=attention_downsample_rate)
        self.norm_final_attn = nn.LayerNorm(embedding_dim)

    def forward(self, image_embedding: Tensor, image_pe: Tensor, point_embedding: Tensor) -> Tuple[Tensor, Tensor]:
        """
        Args:
            image_embedding: ``B x C x H x W``.
            image_pe: ``B x C x H x W`` (or broadcastable batch 1).
            point_embedding: ``B x N x C`` prompt + output tokens.

        Returns:
            (tokens ``B x N x C``, image ``B x HW x C``).
        """
        keys = image_embedding.flatten(2).transpose(1, 2)
        key_pe = image_pe.flatten(2).transpose(1, 2)
        queries = point_embedding
        for layer in self.layers:
            queries, keys = layer(queries, keys, point_embedding, key_pe)
        attn = self.final_attn_token_to_image(queries + point_embedding, keys + key_pe, keys)
        queries = self.norm_final_attn(queries + attn)
        return queries, keys
