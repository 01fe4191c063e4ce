"""Build a SAM 2 family model from a preset (see ``presets.py``)."""
from __future__ import annotations

from typing import Any

from torch import nn

from .hiera import Hiera
from .image_encoder import FpnNeck, ImageEncoder
from .mask_decoder import MaskDecoder
from .memory_attention import MemoryAttention, MemoryAttentionLayer
from .memory_encoder import CXBlock, Fuser, MaskDownSampler, MemoryEncoder
from .position_encoding import PositionEmbeddingSine
from .presets import Preset, get_preset
from .prompt_encoder import PromptEncoder
from .repvit import RepViTTrunk
from .sam2_model import SAM2Model
from .spatial_perceiver import SpatialPerceiver
from .two_way_transformer import TwoWayTransformer


def _build_trunk(cfg: dict[str, Any]) -> nn.Module:
    cfg = dict(cfg)
    kind = cfg.pop("type")
    if kind == "repvit":
        return RepViTTrunk(**cfg)
    if kind == "hiera":
        return Hiera(**cfg)
    raise ValueError(f"unknown trunk type {kind!r} (expected 'repvit' or 'hiera')")


def build_model(preset: str | Preset) -> SAM2Model:
    """A freshly initialised model for ``preset`` (a name or a preset dict), in eval mode."""
    p = get_preset(preset) if isinstance(preset, str) else preset
    hidden, mem = p["hidden_dim"], p["mem_dim"]
    feat = p["image_size"] // 16
    trk = p["tracking"]

    neck_cfg = dict(p["neck"])
    scalp = neck_cfg.pop("scalp", 1)
    trunk = _build_trunk(p["trunk"])
    neck = FpnNeck(d_model=hidden, position_encoding=PositionEmbeddingSine(hidden), **neck_cfg)
    image_encoder = ImageEncoder(trunk, neck, scalp=scalp)

    prompt_encoder = PromptEncoder(
        embed_dim=hidden,
        image_embedding_size=(feat, feat),
        input_image_size=(p["image_size"], p["image_size"]),
        mask_in_chans=16,
    )
    mask_decoder = MaskDecoder(
        transformer_dim=hidden,
        transformer=TwoWayTransformer(depth=2, embedding_dim=hidden, num_heads=8, mlp_dim=2048 if hidden >= 256 else hidden * 4),
        num_multimask_outputs=3,
        iou_head_depth=3,
        iou_head_hidden_dim=hidden,
        use_high_res_features=True,
        iou_prediction_use_sigmoid=trk["iou_prediction_use_sigmoid"],
        dynamic_multimask_via_stability=trk.get("dynamic_multimask_via_stability", True),
        pred_obj_scores=trk["pred_obj_scores"],
        pred_obj_scores_mlp=trk["pred_obj_scores_mlp"],
        use_multimask_token_for_obj_ptr=trk["use_multimask_token_for_obj_ptr"],
    )
    ma = p["memory_attention"]
    sp = p.get("spatial_perceiver")
    perceiver = SpatialPerceiver(dim=mem, **sp) if sp else None
    layer = MemoryAttentionLayer(
        d_model=hidden, dim_feedforward=ma["dim_feedforward"], kv_in_dim=mem, rope_theta=ma["rope_theta"]
    )
    grid = int(round(sp["num_latents_2d"] ** 0.5)) if sp else None
    memory_attention = MemoryAttention(
        d_model=hidden,
        layer=layer,
        num_layers=ma["num_layers"],
        # default key layout when no explicit coords are given (see memory_attention.py)
        k_rope_grid=(grid, grid) if sp else None,
        k_num_no_rope_per_frame=sp["num_latents"] if sp else 0,
    )
    memory_encoder = MemoryEncoder(
        out_dim=mem,
        in_dim=hidden,
        mask_downsampler=MaskDownSampler(embed_dim=hidden),
        fuser=Fuser(CXBlock(dim=hidden), num_layers=2),
    )

    tracking = {k: trk[k] for k in (
        "num_maskmem", "max_obj_ptrs_in_encoder", "sigmoid_scale_for_mem_enc", "sigmoid_bias_for_mem_enc",
        "multimask_output_in_sam", "multimask_output_for_tracking", "multimask_min_pt_num",
        "multimask_max_pt_num", "add_tpos_enc_to_obj_ptrs", "proj_tpos_enc_in_obj_ptrs",
        "use_signed_tpos_enc_to_obj_ptrs", "no_obj_embed_spatial", "fixed_no_obj_ptr",
        "only_obj_ptrs_in_the_past_for_eval")}
    model = SAM2Model(
        image_encoder, prompt_encoder, mask_decoder, memory_attention, memory_encoder, perceiver,
        image_size=p["image_size"], hidden_dim=hidden, mem_dim=mem,
        normalize_image_features=p.get("normalize_image_features", False), **tracking,
    )
    model.preset = p
    return model.eval()
