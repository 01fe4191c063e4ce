"""SAM 2 mask decoder (also used unchanged by SAM 2.1 and EdgeTAM).

Output tokens ``[obj_score, iou, mask_0..mask_3]`` are prepended to the prompt tokens
and run through the two-way transformer against the (prompt-conditioned) image
embedding. The image embedding is upscaled 4x (with the stride-8 / stride-4 FPN
levels added in on the way when ``use_high_res_features``) and each mask token, through
its own hypernetwork MLP, becomes a per-pixel linear classifier over that map.

Mask 0 is the single-mask output, masks 1..3 the multimask outputs.

state_dict: ``transformer.*``, ``iou_token``, ``mask_tokens``, ``obj_score_token``,
``output_upscaling.{0,1,3}``, ``conv_s0``, ``conv_s1``, ``output_hypernetworks_mlps.N``,
``iou_prediction_head``, ``pred_obj_score_head``.
"""
from __future__ import annotations

from typing import List, Optional, Tuple

import torch
from torch import Tensor, nn

from .common import MLP, LayerNorm2d

__all__ = ["MaskDecoder"]


def _tracing() -> bool:
    """True under torch.jit tracing / ONNX export (skip Python-side shape checks there)."""
    return torch.jit.is_tracing() or torch.onnx.is_in_onnx_export()


class MaskDecoder(nn.Module):
    def __init__(
        self,
        transformer_dim: int = 256,
        transformer: Optional[nn.Module] = None,
        num_multimask_outputs: int = 3,
        activation: type[nn.Module] = nn.GELU,
        iou_head_depth: int = 3,
        iou_head_hidden_dim: int = 256,
        use_high_res_features: bool = True,
        iou_prediction_use_sigmoid: bool = True,
        dynamic_multimask_via_stability: bool = True,
        dynamic_multimask_stability_delta: float = 0.05,
        dynamic_multimask_stability_thresh: float = 0.98,
        pred_obj_scores: bool = True,
        pred_obj_scores_mlp: bool = True,
        use_multimask_token_for_obj_ptr: bool = True,
    ) -> None:
        super().__init__()
        if transformer is None:
            from .two_way_transformer import TwoWayTransformer

            transformer = TwoWayTransformer(depth=2, embedding_dim=transformer_dim, num_heads=8, mlp_dim=2048)
        self.transformer_dim = transformer_dim
        self.transformer = transformer

        self.num_multimask_outputs = num_multimask_outputs
        self.num_mask_tokens = num_multimask_outputs + 1
        self.iou_token = nn.Embedding(1, transformer_dim)
        self.mask_tokens = nn.Embedding(self.num_mask_tokens, transformer_dim)

        self.pred_obj_scores = pred_obj_scores
        if pred_obj_scores:
            self.obj_score_token = nn.Embedding(1, transformer_dim)
        self.use_multimask_token_for_obj_ptr = use_multimask_token_for_obj_ptr

        self.output_upscaling = nn.Sequential(
            nn.ConvTranspose2d(transformer_dim, transformer_dim // 4, kernel_size=2, stride=2),
            LayerNorm2d(transformer_dim // 4),
            activation(),
            nn.ConvTranspose2d(transformer_dim // 4, transformer_dim // 8, kernel_size=2, stride=2),
            activation(),
        )
        self.use_high_res_features = use_high_res_features
        if use_high_res_features:
            # Applied by the model to FPN levels 0 / 1 before they reach this decoder.
            self.conv_s0 = nn.Conv2d(transformer_dim, transformer_dim // 8, kernel_size=1, stride=1)
            self.conv_s1 = nn.Conv2d(transformer_dim, transformer_dim // 4, kernel_size=1, stride=1)

        self.output_hypernetworks_mlps = nn.ModuleList(
            MLP(transformer_dim, transformer_dim, transformer_dim // 8, 3) for _ in range(self.num_mask_tokens)
        )
        self.iou_prediction_head = MLP(
            transformer_dim,
            iou_head_hidden_dim,
            self.num_mask_tokens,
            iou_head_depth,
            sigmoid_output=iou_prediction_use_sigmoid,
        )
        if pred_obj_scores:
            if pred_obj_scores_mlp:
                self.pred_obj_score_head = MLP(transformer_dim, transformer_dim, 1, 3)
            else:
                self.pred_obj_score_head = nn.Linear(transformer_dim, 1)

        self.dynamic_multimask_via_stability = dynamic_multimask_via_stability
        self.dynamic_multimask_stability_delta = dynamic_multimask_stability_delta
        self.dynamic_multimask_stability_thresh = dynamic_multimask_stability_thresh

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        image_embeddings: Tensor,
        image_pe: Tensor,
        sparse_prompt_embeddings: Tensor,
        dense_prompt_embeddings: Tensor,
        multimask_output: bool,
        repeat_image: bool,
        high_res_features: Optional[List[Tensor]] = None,
    ) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
        """Predict masks for a batch of B prompts (e.g. B objects).

        Args:
            image_embeddings: ``B x C x H x W`` (or ``b x C x H x W`` with ``repeat_image``,
                each image then repeated ``B // b`` times consecutively).
            image_pe: ``1 x C x H x W`` (``PromptEncoder.get_dense_pe()``).
            sparse_prompt_embeddings: ``B x N x C``.
            dense_prompt_embeddings: ``B x C x H x W``.
            multimask_output: return the 3 multimask outputs instead of one mask.
            repeat_image: repeat ``image_embeddings`` along the batch to match the prompts.
            high_res_features: ``[B|1 x C/8 x 4H x 4W, B|1 x C/4 x 2H x 2W]`` (after
                ``conv_s0`` / ``conv_s1``); required when ``use_high_res_features``.

        Returns:
            masks ``B x M x 4H x 4W`` logits (M = 3 if multimask_output else 1),
            iou_pred ``B x M``,
            sam_tokens_out ``B x 3 x C`` (multimask with use_multimask_token_for_obj_ptr)
            else ``B x 1 x C`` (the single-mask token), the object-pointer source,
            object_score_logits ``B x 1``.
        """
        masks, iou_pred, mask_tokens_out, object_score_logits = self.predict_masks(
            image_embeddings=image_embeddings,
            image_pe=image_pe,
            sparse_prompt_embeddings=sparse_prompt_embeddings,
            dense_prompt_embeddings=dense_prompt_embeddings,
            repeat_image=repeat_image,
            high_res_features=high_res_features,
        )
        masks, iou_pred, sam_tokens_out = self.select_outputs(masks, iou_pred, mask_tokens_out, multimask_output)
        return masks, iou_pred, sam_tokens_out, object_score_logits

    def select_outputs(
        self, masks: Tensor, iou_pred: Tensor, mask_tokens_out: Tensor, multimask_output: bool
    ) -> Tuple[Tensor, Tensor, Tensor]:
        """From all mask tokens' outputs to what SAM 2 uses: the 3 multimask outputs, or the
        single mask (falling back to the best multimask one when unstable), and the token(s)
        the object pointer is made from."""
        if multimask_output:
            masks = masks[:, 1:]
            iou_pred = iou_pred[:, 1:]
        elif self.dynamic_multimask_via_stability and not self.training:
            masks, iou_pred = self._dynamic_multimask_via_stability(masks, iou_pred)
        else:
            masks = masks[:, 0:1]
            iou_pred = iou_pred[:, 0:1]

        if multimask_output and self.use_multimask_token_for_obj_ptr:
            sam_tokens_out = mask_tokens_out[:, 1:]
        else:
            # SAM 2 always uses the single-mask token as the object-memory token here
            # (even when the dynamic fallback picked a multimask output).
            sam_tokens_out = mask_tokens_out[:, 0:1]
        return masks, iou_pred, sam_tokens_out

    def predict_masks(
        self,
        image_embeddings: Tensor,
        image_pe: Tensor,
        sparse_prompt_embeddings: Tensor,
        dense_prompt_embeddings: Tensor,
        repeat_image: bool,
        high_res_features: Optional[List[Tensor]] = None,
    ) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
        """All ``num_mask_tokens`` masks / IoUs, the mask tokens and the object score."""
        b = sparse_prompt_embeddings.shape[0]
        if self.pred_obj_scores:
            out_tokens = torch.cat([self.obj_score_token.weight, self.iou_token.weight, self.mask_tokens.weight], dim=0)
            s = 1
        else:
            out_tokens = torch.cat([self.iou_token.weight, self.mask_tokens.weight], dim=0)
            s = 0
        out_tokens = out_tokens.unsqueeze(0).expand(b, -1, -1)
        tokens = torch.cat([out_tokens, sparse_prompt_embeddings.to(out_tokens.dtype)], dim=1)

        if repeat_image:
            src = torch.repeat_interleave(image_embeddings, b // image_embeddings.shape[0], dim=0)
        else:
            if not _tracing() and image_embeddings.shape[0] != b:
                raise ValueError("image_embeddings batch must equal the prompt batch unless repeat_image")
            src = image_embeddings
        src = src + dense_prompt_embeddings
        if not _tracing() and image_pe.shape[0] != 1:
            raise ValueError("image_pe must have batch size 1 (from PromptEncoder.get_dense_pe())")
        pos_src = image_pe.expand(b, -1, -1, -1)
        _, c, h, w = src.shape

        hs, src = self.transformer(src, pos_src, tokens)
        iou_token_out = hs[:, s]
        mask_tokens_out = hs[:, s + 1 : s + 1 + self.num_mask_tokens]

        src = src.transpose(1, 2).reshape(b, c, h, w)
        if self.use_high_res_features:
            if high_res_features is None:
                raise ValueError("this decoder uses high-res features; pass [feat_s0, feat_s1]")
            dc1, ln1, act1, dc2, act2 = self.output_upscaling
            feat_s0, feat_s1 = high_res_features
            up = act1(ln1(dc1(src) + feat_s1))
            up = act2(dc2(up) + feat_s0)
        else:
            up = self.output_upscaling(src)

        hyper_in = torch.stack(
            [mlp(mask_tokens_out[:, i]) for i, mlp in enumerate(self.output_hypernetworks_mlps)], dim=1
        )  # B x T x C/8
        _, cu, hu, wu = up.shape
        masks = (hyper_in @ up.reshape(b, cu, hu * wu)).reshape(b, -1, hu, wu)

        iou_pred = self.iou_prediction_head(iou_token_out)
        if self.pred_obj_scores:
            object_score_logits = self.pred_obj_score_head(hs[:, 0])
        else:
            object_score_logits = 10.0 * iou_pred.new_ones(iou_pred.shape[0], 1)
        return masks, iou_pred, mask_tokens_out, object_score_logits

    # ------------------------------------------------------- dynamic multimask
    def _get_stability_scores(self, mask_logits: Tensor) -> Tensor:
        """IoU of the masks thresholded at +delta and -delta (``B x M``)."""
        flat = mask_logits.flatten(-2)
        delta = self.dynamic_multimask_stability_delta
        area_i = (flat > delta).to(torch.float32).sum(dim=-1)
        area_u = (flat > -delta).to(torch.float32).sum(dim=-1)
        return torch.where(area_u > 0, area_i / area_u.clamp(min=1.0), torch.ones_like(area_u))

    def _dynamic_multimask_via_stability(self, all_mask_logits: Tensor, all_iou_scores: Tensor) -> Tuple[Tensor, Tensor]:
        """Single-mask output, falling back to the best-IoU multimask output when the
        single-mask logits are unstable (stability < thresh). Branch-free (torch.where)."""
        multi_logits = all_mask_logits[:, 1:]
        multi_iou = all_iou_scores[:, 1:]
        best = torch.argmax(multi_iou, dim=-1, keepdim=True)  # B x 1
        b, _, h, w = multi_logits.shape
        best_logits = torch.gather(multi_logits, 1, best.view(b, 1, 1, 1).expand(b, 1, h, w))
        best_iou = torch.gather(multi_iou, 1, best)

        single_logits = all_mask_logits[:, 0:1]
        single_iou = all_iou_scores[:, 0:1]
        is_stable = self._get_stability_scores(single_logits) >= self.dynamic_multimask_stability_thresh  # B x 1
        masks = torch.where(is_stable[..., None, None], single_logits, best_logits)
        iou = torch.where(is_stable, single_iou, best_iou)
        return masks, iou
