"""The four heavy stages of the model, each with a fixed tensor contract.

These are what a backend runs (PyTorch here, onnxruntime or TensorRT from the
exported graphs, see ``tinysam2_ros/engine``); everything else the tracker does
(choosing masks, object pointers, temporal encodings) is light glue in
``SAM2Model``. Per-frame constants (the dense position encoding of the prompt
encoder, the sine position encodings of memory features) are buffers baked into the
stages, not inputs. The memory-attention queries are an input token set with their own
positions, so a caller may send any subset of the image tokens (query routing); the
dense set (all ``h*w`` tokens in raster order) comes from :func:`dense_queries`.

``normalize_image_features`` (presets trained from scratch, see ``presets.py``)
normalises the three image-encoder outputs over channels, per position.

Contracts (B objects, S input size, h = w = S/16, C hidden dim, m memory dim):
  image_encoder:    images (1,3,S,S) -> high_res_0 (1,C/8,4h,4w), high_res_1 (1,C/4,2h,2w), pix_feat (1,C,h,w)
  mask_decoder:     pix_feat (B,C,h,w), high_res_0, high_res_1 (B,...), point_coords (B,N,2) float,
                    point_labels (B,N) int32, mask_input (B,1,4h,4w), has_mask_input (B,) float
                    -> masks (B,4,4h,4w), iou_pred (B,4), mask_tokens (B,4,C), object_score_logits (B,1)
  memory_attention: tokens (B,Q,C), token_pos (B,Q,C), token_coords (B,Q,2),
                    memory (B,K,m), memory_pos (B,K,m), memory_coords (B,K,2)
                    -> conditioned (B,Q,C)
                    [tokens: Q image tokens (Q = h*w when dense), token_pos their sine position
                     encoding, token_coords their rope grid positions (x, y); object pointers in
                     memory: coords (0,0) = no rotation]
  memory_encoder:   pix_feat (B,C,h,w), mask_for_mem (B,1,S,S) (already scaled), object_score_logits (B,1)
                    -> memory (B,N,m)
"""
from __future__ import annotations

import torch
from torch import nn

from .common import normalize_channels
from .rope import grid_coords

STAGE_NAMES = ("image_encoder", "mask_decoder", "memory_attention", "memory_encoder")


def compose_pointwise(first: nn.Conv2d, second: nn.Conv2d) -> nn.Conv2d:
    """One 1x1 conv computing ``second(first(x))`` (both 1x1, stride 1, no padding):
    ``W = W2 W1``, ``b = W2 b1 + b2``, composed in float64."""
    for conv in (first, second):
        if conv.kernel_size != (1, 1) or conv.stride != (1, 1) or conv.padding != (0, 0) or conv.groups != 1:
            raise ValueError(f"not a plain 1x1 conv: {conv}")
    w1, w2 = first.weight.double()[:, :, 0, 0], second.weight.double()[:, :, 0, 0]
    b1 = first.bias.double() if first.bias is not None else w1.new_zeros(w1.shape[0])
    b2 = second.bias.double() if second.bias is not None else w2.new_zeros(w2.shape[0])
    fused = nn.Conv2d(w1.shape[1], w2.shape[0], 1).to(first.weight.device)
    with torch.no_grad():
        fused.weight.copy_((w2 @ w1)[:, :, None, None])
        fused.bias.copy_(w2 @ b1 + b2)
    return fused


class ImageEncoderStage(nn.Module):
    def __init__(self, model) -> None:
        super().__init__()
        self.image_encoder = model.image_encoder
        self.conv_s0 = model.sam_mask_decoder.conv_s0
        self.conv_s1 = model.sam_mask_decoder.conv_s1
        self.normalize = model.normalize_image_features
        self.folded: nn.ModuleList | None = None

    def fold_high_res(self) -> bool:
        """For export: fold the neck's lateral conv of each high-res level into the
        decoder's projection of it (``conv_s0``/``conv_s1``), both 1x1, into one conv.

        The neck widens the stride-4 and stride-8 trunk maps to 256 channels only for the
        decoder to narrow them again to 32 and 64; at 1024 px that is a 256x256x256 map
        written and read per frame (7-11 % of the stage's time on a 2-core CPU,
        docs/efficiency-backends.md). Same function up to float rounding (~1e-7). The
        torch backend keeps the unfolded reference computation. Returns False and
        changes nothing when those levels take a top-down path or are the last kept
        level (then their 256-channel maps are needed).
        """
        neck, scalp = self.image_encoder.neck, self.image_encoder.scalp
        n = len(neck.convs) - 1
        if any(level in neck.fpn_top_down_levels for level in (0, 1)) or n - scalp < 2:
            return False
        try:
            self.folded = nn.ModuleList([compose_pointwise(neck.convs[n].conv, self.conv_s0),
                                         compose_pointwise(neck.convs[n - 1].conv, self.conv_s1)])
        except ValueError:
            return False
        return True

    def forward(self, images: torch.Tensor):
        if self.folded is None:
            fpn = self.image_encoder(images)["backbone_fpn"]
            out = (self.conv_s0(fpn[0]), self.conv_s1(fpn[1]), fpn[-1])
        else:
            encoder = self.image_encoder
            xs = encoder.trunk(images)
            fpn, _ = encoder.neck(xs, lowest_level=2)
            out = (self.folded[0](xs[0]), self.folded[1](xs[1]), fpn[len(fpn) - 1 - encoder.scalp])
        if self.normalize:
            out = tuple(normalize_channels(x, eps=1e-5) for x in out)
        return out


class MaskDecoderStage(nn.Module):
    def __init__(self, model) -> None:
        super().__init__()
        self.prompt_encoder = model.sam_prompt_encoder
        self.mask_decoder = model.sam_mask_decoder
        self.register_buffer("image_pe", model.sam_prompt_encoder.get_dense_pe().detach().clone(), persistent=False)

    def forward(self, pix_feat, high_res_0, high_res_1, point_coords, point_labels, mask_input, has_mask_input):
        pe = self.prompt_encoder
        sparse, _ = pe(points=(point_coords, point_labels), boxes=None, masks=None)
        has = has_mask_input.to(pix_feat.dtype).view(-1, 1, 1, 1)
        no_mask = pe.no_mask_embed.weight.reshape(1, -1, 1, 1)
        dense = has * pe.mask_downscaling(mask_input) + (1.0 - has) * no_mask
        return self.mask_decoder.predict_masks(
            image_embeddings=pix_feat,
            image_pe=self.image_pe,
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            repeat_image=False,
            high_res_features=[high_res_0, high_res_1],
        )


def dense_queries(pix_feat: torch.Tensor, pix_pos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """All ``h*w`` image tokens as memory-attention queries, raster order.

    ``pix_feat`` (B,C,h,w), ``pix_pos`` its sine position encoding ((1 or B),C,h,w) ->
    ``tokens`` (B,h*w,C), ``token_pos`` (B,h*w,C), ``token_coords`` (B,h*w,2).
    """
    b, c, h, w = pix_feat.shape
    tokens = pix_feat.flatten(2).transpose(1, 2)
    pos = pix_pos.flatten(2).transpose(1, 2).expand(b, -1, -1)
    coords = grid_coords(h, w, device=pix_feat.device).unsqueeze(0).expand(b, -1, -1)
    return tokens, pos, coords


def tokens_to_map(tokens: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Dense (B,h*w,C) tokens in raster order back to a (B,C,h,w) map."""
    return tokens.transpose(1, 2).reshape(tokens.shape[0], -1, h, w)


class MemoryAttentionStage(nn.Module):
    """Memory attention of any set of query tokens (each with its own sine encoding and
    rope position) to the memory tokens; the queries attend to each other too, so a
    subset of the image tokens is a self-contained (cheaper) problem."""

    def __init__(self, model) -> None:
        super().__init__()
        self.memory_attention = model.memory_attention

    def forward(self, tokens, token_pos, token_coords, memory, memory_pos, memory_coords):
        return self.memory_attention(
            tokens, token_pos, memory, memory_pos,
            num_obj_ptr_tokens=0, q_coords=token_coords, k_coords=memory_coords,
        )


class MemoryEncoderStage(nn.Module):
    def __init__(self, model) -> None:
        super().__init__()
        self.memory_encoder = model.memory_encoder
        self.spatial_perceiver = model.spatial_perceiver
        self.no_obj_embed_spatial = model.no_obj_embed_spatial

    def forward(self, pix_feat, mask_for_mem, object_score_logits):
        feats, pos = self.memory_encoder(pix_feat, mask_for_mem, skip_mask_sigmoid=True)
        if self.no_obj_embed_spatial is not None:
            absent = (object_score_logits <= 0).to(feats.dtype)
            feats = feats + absent[:, :, None, None] * self.no_obj_embed_spatial[..., None, None]
        if self.spatial_perceiver is not None:
            tokens, _, _ = self.spatial_perceiver(feats, pos)
            return tokens
        return feats.flatten(2).transpose(1, 2)


def build_stages(model) -> dict[str, nn.Module]:
    """The stage modules of ``model``, sharing its parameters (and its train/eval mode)."""
    return {
        "image_encoder": ImageEncoderStage(model),
        "mask_decoder": MaskDecoderStage(model),
        "memory_attention": MemoryAttentionStage(model),
        "memory_encoder": MemoryEncoderStage(model),
    }
