"""Model presets as plain data: every architecture knob of a SAM 2 family model.

A preset is a nested dict of JSON-compatible values; ``build_model`` turns it
into modules. Keep defaults here, not in constructors, so one glance shows what
differs between EdgeTAM, SAM 2.1 and TinySAM 2.
"""
from __future__ import annotations

import copy
from typing import Any

Preset = dict[str, Any]

# SAM 2.1 Hiera trunk sizes (facebookresearch/sam2 configs/sam2.1/*.yaml).
_HIERA = {
    "t": {"embed_dim": 96, "num_heads": 1, "stages": [1, 2, 7, 2], "global_att_blocks": [5, 7, 9],
          "window_pos_embed_bkg_spatial_size": [7, 7], "window_spec": [8, 4, 14, 7]},
    "s": {"embed_dim": 96, "num_heads": 1, "stages": [1, 2, 11, 2], "global_att_blocks": [7, 10, 13],
          "window_pos_embed_bkg_spatial_size": [7, 7], "window_spec": [8, 4, 14, 7]},
    "b+": {"embed_dim": 112, "num_heads": 2, "stages": [2, 3, 16, 3], "global_att_blocks": [12, 16, 20],
           "window_pos_embed_bkg_spatial_size": [14, 14], "window_spec": [8, 4, 14, 7]},
    "l": {"embed_dim": 144, "num_heads": 2, "stages": [2, 6, 36, 4], "global_att_blocks": [23, 33, 43],
          "window_pos_embed_bkg_spatial_size": [7, 7], "window_spec": [8, 4, 16, 8]},
}

# The tracking behaviour shared by the SAM 2 family (SAM2Base arguments).
_SAM2_TRACKING = {
    "num_maskmem": 7,
    "max_obj_ptrs_in_encoder": 16,
    "sigmoid_scale_for_mem_enc": 20.0,
    "sigmoid_bias_for_mem_enc": -10.0,
    "multimask_output_in_sam": True,
    "multimask_output_for_tracking": True,
    "multimask_min_pt_num": 0,
    "multimask_max_pt_num": 1,
    "use_multimask_token_for_obj_ptr": True,
    "iou_prediction_use_sigmoid": True,
    "pred_obj_scores": True,
    "pred_obj_scores_mlp": True,
    "fixed_no_obj_ptr": True,
    "only_obj_ptrs_in_the_past_for_eval": True,
    "dynamic_multimask_via_stability": True,  # SAM 2 video predictor's post-processing default
}

# Memory handling of the streaming tracker; "off" (no compression) everywhere but
# in TinySAM 2, whose defaults are set by the tracker issue.
_MEMORY_OFF = {"compression": "off"}


def _sam21(size: str) -> Preset:
    trunk = dict(_HIERA[size])
    dims = [trunk["embed_dim"] * 2**i for i in range(4)]
    return {
        "image_size": 1024,
        "hidden_dim": 256,
        "mem_dim": 64,
        "trunk": {"type": "hiera", **trunk},
        "neck": {"backbone_channel_list": dims[::-1], "fpn_top_down_levels": [2, 3],
                 "fpn_interp_model": "nearest", "fuse_type": "sum", "scalp": 1},
        "memory_attention": {"num_layers": 4, "dim_feedforward": 2048, "rope_theta": 10000.0},
        "spatial_perceiver": None,
        "tracking": {**_SAM2_TRACKING, "add_tpos_enc_to_obj_ptrs": True, "proj_tpos_enc_in_obj_ptrs": True,
                     "use_signed_tpos_enc_to_obj_ptrs": True, "no_obj_embed_spatial": True},
        "memory": dict(_MEMORY_OFF),
    }


_REPVIT_M1 = {"type": "repvit", "embed_dims": [48, 96, 192, 384], "depths": [2, 2, 14, 2]}

PRESETS: dict[str, Preset] = {
    # EdgeTAM (facebookresearch/EdgeTAM, configs/edgetam.yaml): RepViT-M1, 2-layer
    # memory attention, 2D spatial perceiver; SAM 2.0-style object pointers.
    "edgetam": {
        "image_size": 1024,
        "hidden_dim": 256,
        "mem_dim": 64,
        "trunk": dict(_REPVIT_M1),
        "neck": {"backbone_channel_list": [384, 192, 96, 48], "fpn_top_down_levels": [2, 3],
                 "fpn_interp_model": "nearest", "fuse_type": "sum", "scalp": 1},
        "memory_attention": {"num_layers": 2, "dim_feedforward": 2048, "rope_theta": 10000.0},
        "spatial_perceiver": {"depth": 2, "num_latents": 256, "num_latents_2d": 256, "heads": 1,
                              "dim_head": 64, "ff_mult": 4, "use_self_attn": True},
        "tracking": {**_SAM2_TRACKING, "add_tpos_enc_to_obj_ptrs": False, "proj_tpos_enc_in_obj_ptrs": False,
                     "use_signed_tpos_enc_to_obj_ptrs": False, "no_obj_embed_spatial": False},
        "memory": dict(_MEMORY_OFF),
    },
    "sam2.1_hiera_t": _sam21("t"),
    "sam2.1_hiera_s": _sam21("s"),
    "sam2.1_hiera_b+": _sam21("b+"),
    "sam2.1_hiera_l": _sam21("l"),
}

# TinySAM 2 memory defaults: 2x2 pooling (1024 tokens per frame), at most 2000
# spatial memory tokens per object = 2000 / (7 x 4096) = 6.98% of SAM 2.1's.
TINYSAM2_MEMORY = {
    "compression": "tinysam2",
    "num_slots": 6,
    "max_cond_frames": 4,
    "pool_factor": 2,
    "token_budget": 2000,
    "similarity": "redundancy",
    "write_threshold": 0.3,
    "keep_recent": 1,
    "recency_half_life": 30.0,
}
SAM21_MEMORY_TOKENS = 7 * 64 * 64  # spatial memory tokens SAM 2.1 feeds per object

# TinySAM 2: the SAM 2.1 pipeline (memory attention, pointers, no-object embeddings)
# with the RepViT-M1 image encoder and the small memory above.
# Its tracker also reads memory frames sparsely, writes memory every other frame and
# routes at most a tenth of the image tokens per object through memory attention, and
# every 2nd frame refreshes each object coarsely, the route plus a stride-3 token grid
# (memory/retrieval.py, memory/quality.py, memory/routing.py); the values are the ones
# measured safe on the demo model (docs/efficiency.md). The reference presets keep all
# of it off (SAM 2's exact computation).
TINYSAM2_SPEED = {"retrieval_keep": 0.5, "write_every": 2}
TINYSAM2_ROUTING = {"enabled": True, "max_fraction": 0.1, "dense_every": 2, "refresh_stride": 3}
PRESETS["tinysam2"] = {
    **copy.deepcopy(PRESETS["sam2.1_hiera_t"]),
    "trunk": dict(_REPVIT_M1),
    "neck": dict(PRESETS["edgetam"]["neck"]),
    "memory": {**TINYSAM2_MEMORY, **TINYSAM2_SPEED},
    "routing": dict(TINYSAM2_ROUTING),
}

# A small model for fast tests and CPU training: same structure, 256 px input,
# narrow trunk and heads.
PRESETS["tiny"] = {
    "image_size": 256,
    "hidden_dim": 64,
    "mem_dim": 32,
    "trunk": {"type": "repvit", "embed_dims": [16, 32, 48, 64], "depths": [1, 1, 2, 1]},
    "neck": {"backbone_channel_list": [64, 48, 32, 16], "fpn_top_down_levels": [2, 3],
             "fpn_interp_model": "nearest", "fuse_type": "sum", "scalp": 1},
    "memory_attention": {"num_layers": 1, "dim_feedforward": 256, "rope_theta": 10000.0},
    "spatial_perceiver": None,
    # SAM 2's inference-time fallback from an unstable single mask to a multimask output
    # is off: a briefly trained model's single masks are rarely "stable", and its training
    # (like SAM 2's) never selects that way, so the fallback would pick untrained outputs.
    # Tracked frames decode one mask, not three ranked by predicted IoU: early in training
    # the IoU head ranks badly and the memory is written from the wrong candidate (measured
    # after 1257 iterations: IoU 0.02 for the chosen candidate, 0.25 for the best one).
    "tracking": {**_SAM2_TRACKING, "add_tpos_enc_to_obj_ptrs": True, "proj_tpos_enc_in_obj_ptrs": True,
                 "use_signed_tpos_enc_to_obj_ptrs": True, "no_obj_embed_spatial": True,
                 "dynamic_multimask_via_stability": False, "multimask_output_for_tracking": False},
    # 16x16 memory grid: pool 2 -> 64 tokens/frame, budget 256
    "memory": {**TINYSAM2_MEMORY, "token_budget": 256},
}

# ``tiny`` with its three image-encoder outputs normalised over channels, per position
# (no weights). Trained from scratch with fixed BatchNorm, ``tiny``'s high-res maps grew
# to std 40 and its image features to 3e3 while mask, prompt and memory signals stay near
# 1; the decoder adds the high-res maps to the memory-conditioned features before a
# LayerNorm, so it saw only them and segmented every salient object whatever the memory.
# Normalised (and trained at a lower learning rate with a local start for the memory
# attention, models/README.md), the model tracks with its memory; the demo model uses it.
#
# Its memory keeps the newest ``num_slots`` frames, every frame written (no quality gate):
# the demo model was trained with that memory. TinySAM 2's quality rule (threshold 0.3,
# quality-ranked slots) costs it held-out J&F 0.636 -> 0.571 (README, memory report), the
# pooling and token budget nothing; training with the rule did not remove the cost
# (models/README.md, item 8).
PRESETS["tiny_norm"] = {**copy.deepcopy(PRESETS["tiny"]), "normalize_image_features": True}
PRESETS["tiny_norm"]["memory"].update(write_threshold=0.0, keep_recent=TINYSAM2_MEMORY["num_slots"])

ALIASES = {"sam2.1_hiera_tiny": "sam2.1_hiera_t", "sam2.1_hiera_small": "sam2.1_hiera_s",
           "sam2.1_hiera_base_plus": "sam2.1_hiera_b+", "sam2.1_hiera_large": "sam2.1_hiera_l"}


def get_preset(name: str) -> Preset:
    """A deep copy of the named preset (callers may edit it freely)."""
    key = ALIASES.get(name, name)
    if key not in PRESETS:
        raise KeyError(f"unknown preset {name!r}; available: {', '.join(sorted(PRESETS))}")
    return copy.deepcopy(PRESETS[key])
