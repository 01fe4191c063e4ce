"""The SAM 2 family model as a set of stages the tracker calls one by one.

Names of submodules and parameters follow the official checkpoints
(``image_encoder``, ``sam_prompt_encoder``, ``sam_mask_decoder``,
``memory_attention``, ``memory_encoder``, ``spatial_perceiver``, ``maskmem_tpos_enc``,
...). Unlike SAM2Base the model keeps no per-video state: the tracker owns the
memory bank and passes memory tokens in, so the same stages can be exported to
ONNX/TensorRT and batched across objects. All tensors are batch-first.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .common import MLP
from .rope import grid_coords
from .stages import dense_queries, tokens_to_map

NO_OBJ_SCORE = -1024.0  # logit written into masks of objects judged absent


def sine_pe_1d(positions: torch.Tensor, dim: int, temperature: float = 10000.0) -> torch.Tensor:
    """1D sine/cosine encoding of (normalised) temporal offsets, ``(..., dim)``."""
    half = dim // 2
    idx = torch.arange(half, dtype=torch.float32, device=positions.device)
    dim_t = temperature ** (2 * torch.div(idx, 2, rounding_mode="floor") / half)
    angles = positions.float().unsqueeze(-1) / dim_t
    return torch.cat([angles.sin(), angles.cos()], dim=-1)


@dataclass
class ImageFeatures:
    """One frame's encoder output, ready for the heads (batch of 1 image)."""

    high_res: list[torch.Tensor]  # [B x C/8 x 4H x 4W, B x C/4 x 2H x 2W] after conv_s0/conv_s1
    pix_feat: torch.Tensor  # B x C x H x W, top level (stride 16)
    pix_pos: torch.Tensor  # B x C x H x W, its sine position encoding

    def select(self, batch: int) -> "ImageFeatures":
        """The same image expanded to ``batch`` objects (views, no copies)."""
        return ImageFeatures(
            [f.expand(batch, -1, -1, -1) for f in self.high_res],
            self.pix_feat.expand(batch, -1, -1, -1),
            self.pix_pos.expand(batch, -1, -1, -1),
        )


@dataclass
class HeadOutput:
    """What the prompt encoder + mask decoder give for a batch of objects."""

    low_res_multimasks: torch.Tensor  # B x M x 4H x 4W raw logits (before no-object gating)
    ious: torch.Tensor  # B x M
    low_res_masks: torch.Tensor  # B x 1 x 4H x 4W chosen, gated logits
    high_res_masks: torch.Tensor  # B x 1 x S x S (S = image_size), gated logits
    obj_ptr: torch.Tensor  # B x C
    object_score_logits: torch.Tensor  # B x 1
    best_iou: torch.Tensor  # B, predicted IoU of the chosen mask


@dataclass
class MemoryTokens:
    """One frame's spatial memory for a batch of objects."""

    features: torch.Tensor  # B x N x mem_dim
    pos: torch.Tensor  # B x N x mem_dim
    coords: torch.Tensor | None  # N x 2 (x, y) token positions on the rope grid, None = default grid


class SAM2Model(nn.Module):
    def __init__(
        self,
        image_encoder: nn.Module,
        prompt_encoder: nn.Module,
        mask_decoder: nn.Module,
        memory_attention: nn.Module,
        memory_encoder: nn.Module,
        spatial_perceiver: nn.Module | None = None,
        *,
        image_size: int = 1024,
        hidden_dim: int = 256,
        mem_dim: int = 64,
        num_maskmem: int = 7,
        max_obj_ptrs_in_encoder: int = 16,
        sigmoid_scale_for_mem_enc: float = 20.0,
        sigmoid_bias_for_mem_enc: float = -10.0,
        multimask_output_in_sam: bool = True,
        multimask_output_for_tracking: bool = True,
        multimask_min_pt_num: int = 0,
        multimask_max_pt_num: int = 1,
        add_tpos_enc_to_obj_ptrs: bool = True,
        proj_tpos_enc_in_obj_ptrs: bool = True,
        use_signed_tpos_enc_to_obj_ptrs: bool = True,
        no_obj_embed_spatial: bool = True,
        fixed_no_obj_ptr: bool = True,
        only_obj_ptrs_in_the_past_for_eval: bool = True,
        normalize_image_features: bool = False,
    ) -> None:
        super().__init__()
        self.image_encoder = image_encoder
        self.sam_prompt_encoder = prompt_encoder
        self.sam_mask_decoder = mask_decoder
        self.memory_attention = memory_attention
        self.memory_encoder = memory_encoder
        self.spatial_perceiver = spatial_perceiver

        self.image_size = image_size
        self.hidden_dim = hidden_dim
        self.mem_dim = mem_dim
        self.num_maskmem = num_maskmem
        self.max_obj_ptrs_in_encoder = max_obj_ptrs_in_encoder
        self.sigmoid_scale_for_mem_enc = sigmoid_scale_for_mem_enc
        self.sigmoid_bias_for_mem_enc = sigmoid_bias_for_mem_enc
        self.multimask_output_in_sam = multimask_output_in_sam
        self.multimask_output_for_tracking = multimask_output_for_tracking
        self.multimask_min_pt_num = multimask_min_pt_num
        self.multimask_max_pt_num = multimask_max_pt_num
        self.add_tpos_enc_to_obj_ptrs = add_tpos_enc_to_obj_ptrs
        self.proj_tpos_enc_in_obj_ptrs = proj_tpos_enc_in_obj_ptrs
        self.use_signed_tpos_enc_to_obj_ptrs = use_signed_tpos_enc_to_obj_ptrs
        self.fixed_no_obj_ptr = fixed_no_obj_ptr
        self.only_obj_ptrs_in_the_past_for_eval = only_obj_ptrs_in_the_past_for_eval
        self.normalize_image_features = normalize_image_features

        self.maskmem_tpos_enc = nn.Parameter(torch.zeros(num_maskmem, 1, 1, mem_dim))
        self.no_mem_embed = nn.Parameter(torch.zeros(1, 1, hidden_dim))
        self.no_mem_pos_enc = nn.Parameter(torch.zeros(1, 1, hidden_dim))
        self.no_obj_ptr = nn.Parameter(torch.zeros(1, hidden_dim))
        self.no_obj_embed_spatial = nn.Parameter(torch.zeros(1, mem_dim)) if no_obj_embed_spatial else None
        # 4x4 stride-4 conv turning a full-res mask prompt into a low-res one
        self.mask_downsample = nn.Conv2d(1, 1, kernel_size=4, stride=4)
        self.obj_ptr_proj = MLP(hidden_dim, hidden_dim, hidden_dim, 3)
        if add_tpos_enc_to_obj_ptrs and proj_tpos_enc_in_obj_ptrs:
            self.obj_ptr_tpos_proj = nn.Linear(hidden_dim, mem_dim)
        else:
            self.obj_ptr_tpos_proj = nn.Identity()
        # the runner of the heavy stages (plain attribute, not a submodule); stages
        # snapshot constants derived from weights, so a weight load resets it
        self._backend = None
        self._constants: dict[str, torch.Tensor] = {}
        self.register_load_state_dict_post_hook(lambda module, keys: module.set_backend(None))

    # ------------------------------------------------------------------ backend
    @property
    def backend(self):
        if self._backend is None:
            from ..backends.torch_backend import TorchBackend

            self._backend = TorchBackend(self)
        return self._backend

    def set_backend(self, backend) -> None:
        """Run the four stages with ``backend`` (None: PyTorch, rebuilt lazily)."""
        self._backend = backend
        self._constants = {}

    def _apply(self, fn, *args, **kwargs):  # .to()/.cuda()/.half(): stage constants must follow
        self.set_backend(None)
        return super()._apply(fn, *args, **kwargs)

    @torch.no_grad()
    def constants(self) -> dict[str, torch.Tensor]:
        """Per-model constants computed once: image and memory position encodings,
        memory token positions for the rotary encoding."""
        if not self._constants:
            device = self.no_mem_embed.device
            h = self.feat_size
            pix_pos = self.image_encoder.neck.position_encoding.encode_grid(h, h, device=device)
            feats, pos = self.memory_encoder(
                torch.zeros(1, self.hidden_dim, h, h, device=device),
                torch.zeros(1, 1, self.image_size, self.image_size, device=device), skip_mask_sigmoid=True)
            if self.spatial_perceiver is not None:
                _, mem_pos, coords = self.spatial_perceiver(feats, pos)
                mem_pos, coords = mem_pos[0], coords[0]
            else:
                mem_pos, coords = pos[0].flatten(1).t(), grid_coords(h, h, device=device)
            self._constants = {"pix_pos": pix_pos, "memory_pos": mem_pos.contiguous(), "memory_coords": coords}
        return self._constants

    # ------------------------------------------------------------------ geometry
    @property
    def feat_size(self) -> int:
        """Side of the top-level feature map (64 for a 1024 input)."""
        return self.image_size // 16

    @property
    def low_res_size(self) -> int:
        return self.feat_size * 4

    # ------------------------------------------------------------------ stages
    def encode_image(self, images: torch.Tensor) -> ImageFeatures:
        """Image encoder + the decoder's high-res projections (run once per frame)."""
        hr0, hr1, pix = self.backend.image_encoder(images)
        return ImageFeatures([hr0, hr1], pix, self.constants()["pix_pos"].expand(pix.shape[0], -1, -1, -1))

    def use_multimask(self, is_init_cond_frame: bool, num_points: int) -> bool:
        return (
            self.multimask_output_in_sam
            and (is_init_cond_frame or self.multimask_output_for_tracking)
            and self.multimask_min_pt_num <= num_points <= self.multimask_max_pt_num
        )

    def condition_without_memory(self, pix_feat: torch.Tensor) -> torch.Tensor:
        """A frame decoded from its prompt alone gets the learned no-memory embedding."""
        return pix_feat + self.no_mem_embed.view(1, -1, 1, 1)

    def condition_on_memory(
        self,
        pix_feat: torch.Tensor,
        memory: torch.Tensor,
        memory_pos: torch.Tensor,
        num_obj_ptr_tokens: int,
        memory_coords: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Memory attention of all the current frame's tokens (dense), as a ``B x C x h x w`` map.

        ``memory_coords`` (``K - P x 2`` or ``B x (K - P) x 2``) are the rope positions of
        the spatial tokens (default: the memory grid of each frame); the ``P`` trailing
        object-pointer tokens get position (0, 0), i.e. no rotation.
        """
        h, w = pix_feat.shape[-2:]
        tokens, pos, coords = dense_queries(pix_feat, self.constants()["pix_pos"])
        out = self.attend_memory(tokens, pos, coords, memory, memory_pos, num_obj_ptr_tokens, memory_coords)
        return tokens_to_map(out, h, w)

    def attend_memory(
        self,
        tokens: torch.Tensor,
        token_pos: torch.Tensor,
        token_coords: torch.Tensor,
        memory: torch.Tensor,
        memory_pos: torch.Tensor,
        num_obj_ptr_tokens: int,
        memory_coords: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Memory attention of ``B x Q`` query tokens (any subset of the image tokens, with
        their sine encoding and rope positions) -> ``B x Q x C`` conditioned tokens."""
        b, k = memory.shape[:2]
        spatial = k - num_obj_ptr_tokens
        if memory_coords is None:
            per_frame = self.constants()["memory_coords"]
            memory_coords = per_frame.repeat(spatial // per_frame.shape[0], 1)
        if memory_coords.dim() == 2:
            memory_coords = memory_coords.unsqueeze(0).expand(b, -1, -1)
        coords = torch.cat([memory_coords, memory_coords.new_zeros(b, num_obj_ptr_tokens, 2)], dim=1)
        return self.backend.memory_attention(tokens, token_pos, token_coords, memory, memory_pos, coords)

    def forward_heads(
        self,
        pix_feat: torch.Tensor,
        high_res: list[torch.Tensor],
        point_coords: torch.Tensor | None = None,
        point_labels: torch.Tensor | None = None,
        mask_inputs: torch.Tensor | None = None,
        multimask_output: bool = False,
    ) -> HeadOutput:
        """Prompt encoder + mask decoder + object pointer, SAM 2 semantics.

        ``point_coords`` are in input-image pixels (``image_size`` square), boxes
        come as two points labelled 2 and 3. ``mask_inputs`` are low-res logits.
        """
        b = pix_feat.shape[0]
        if point_coords is None:
            point_coords = pix_feat.new_zeros(b, 1, 2)
            point_labels = -torch.ones(b, 1, dtype=torch.int32, device=pix_feat.device)
        if mask_inputs is not None and mask_inputs.shape[-2:] != (self.low_res_size, self.low_res_size):
            mask_inputs = F.interpolate(
                mask_inputs.float(), size=(self.low_res_size,) * 2, mode="bilinear", align_corners=False, antialias=True
            )
        has_mask = torch.full((b,), 1.0 if mask_inputs is not None else 0.0, device=pix_feat.device)
        if mask_inputs is None:
            mask_inputs = pix_feat.new_zeros(b, 1, self.low_res_size, self.low_res_size)
        masks, ious, tokens, object_score_logits = self.backend.mask_decoder(
            pix_feat, high_res[0], high_res[1], point_coords, point_labels.to(torch.int32), mask_inputs, has_mask
        )
        multimasks, ious, sam_tokens = self.sam_mask_decoder.select_outputs(masks, ious, tokens, multimask_output)
        is_present = object_score_logits > 0
        gated = torch.where(is_present[:, :, None, None], multimasks, torch.full_like(multimasks, NO_OBJ_SCORE))
        batch = torch.arange(b, device=pix_feat.device)
        if multimask_output:
            best = torch.argmax(ious, dim=-1)
            low_res = gated[batch, best].unsqueeze(1)
            best_iou = ious[batch, best]
            token = sam_tokens[batch, best] if sam_tokens.shape[1] > 1 else sam_tokens[:, 0]
        else:
            low_res = gated[:, :1]
            best_iou = ious[:, 0]
            token = sam_tokens[:, 0]
        high_res_masks = F.interpolate(low_res, size=(self.image_size,) * 2, mode="bilinear", align_corners=False)
        obj_ptr = self.obj_ptr_proj(token)
        present = is_present.to(obj_ptr.dtype)
        if self.fixed_no_obj_ptr:
            obj_ptr = present * obj_ptr
        obj_ptr = obj_ptr + (1 - present) * self.no_obj_ptr
        return HeadOutput(multimasks, ious, low_res, high_res_masks, obj_ptr, object_score_logits, best_iou)

    def mask_as_output(self, pix_feat: torch.Tensor, high_res: list[torch.Tensor], masks: torch.Tensor) -> HeadOutput:
        """A mask prompt is taken as the output itself (+/-10 logits, SAM 2's
        ``use_mask_input_as_output_without_sam``); the decoder, given the mask, only
        supplies the object pointer. ``masks``: B x 1 x S x S binary float."""
        high_res_masks = masks * 20.0 - 10.0
        low_res = F.interpolate(high_res_masks, size=(self.low_res_size,) * 2, mode="bilinear", align_corners=False,
                                antialias=True)
        heads = self.forward_heads(pix_feat, high_res, mask_inputs=self.mask_downsample(masks))
        present = masks.flatten(1).gt(0).any(dim=1, keepdim=True).to(masks.dtype)
        obj_ptr = present * heads.obj_ptr + (1 - present) * self.no_obj_ptr
        ious = torch.ones(masks.shape[0], 1, device=masks.device)
        return HeadOutput(low_res, ious, low_res, high_res_masks, obj_ptr, present * 20.0 - 10.0, ious[:, 0])

    def encode_memory(
        self,
        pix_feat: torch.Tensor,
        high_res_masks: torch.Tensor,
        object_score_logits: torch.Tensor,
        is_mask_from_pts: bool,
    ) -> MemoryTokens:
        """Memory encoder (+ spatial perceiver) on the un-conditioned frame features."""
        if is_mask_from_pts:
            mask_for_mem = (high_res_masks > 0).to(high_res_masks.dtype)
        else:
            mask_for_mem = torch.sigmoid(high_res_masks)
        mask_for_mem = mask_for_mem * self.sigmoid_scale_for_mem_enc + self.sigmoid_bias_for_mem_enc
        feats = self.backend.memory_encoder(pix_feat, mask_for_mem, object_score_logits)
        c = self.constants()
        return MemoryTokens(feats, c["memory_pos"].unsqueeze(0).expand(feats.shape[0], -1, -1), c["memory_coords"])

    def object_pointer_tokens(
        self, obj_ptrs: torch.Tensor, temporal_offsets: torch.Tensor, max_ptrs: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Object pointers ``B x P x C`` -> memory tokens ``B x P*C/mem x mem`` and their pos."""
        b, p, c = obj_ptrs.shape
        if self.add_tpos_enc_to_obj_ptrs:
            t_max = max(max_ptrs - 1, 1)
            tpos_dim = c if self.proj_tpos_enc_in_obj_ptrs else self.mem_dim
            pos = self.obj_ptr_tpos_proj(sine_pe_1d(temporal_offsets.float() / t_max, tpos_dim).to(obj_ptrs))
            pos = pos.unsqueeze(0).expand(b, p, self.mem_dim)
        else:
            pos = obj_ptrs.new_zeros(b, p, self.mem_dim)
        if self.mem_dim < c:
            split = c // self.mem_dim
            obj_ptrs = obj_ptrs.reshape(b, p * split, self.mem_dim)
            pos = pos.repeat_interleave(split, dim=1)
        return obj_ptrs, pos

    def memory_tpos(self, t_rel: int) -> torch.Tensor:
        """Temporal encoding of a memory frame ``t_rel`` frames back (0 = prompted frame)."""
        return self.maskmem_tpos_enc[t_rel - 1].view(1, 1, -1)
