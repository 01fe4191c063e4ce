"""Turn an object's memory frames and pointers into memory-attention inputs.

Shared by the streaming tracker and the training unroll, so that what the model
is trained with is exactly what it tracks with.
"""
from __future__ import annotations

import torch

from .compression import select_tokens


def assemble_memory(
    model,
    frame_features: torch.Tensor,  # B x T x N x m, oldest memory frame first
    t_rels: torch.Tensor,  # B x T temporal offsets (0 = prompted frame)
    memory_pos: torch.Tensor,  # N x m position encoding of one stored frame
    memory_coords: torch.Tensor,  # N x 2 rope positions of one stored frame
    token_budget: int,
    similarity: str,
    pointers: torch.Tensor | None,  # B x P x C object pointers
    pointer_offsets: list[int],
    max_ptrs: int,
    allowed: torch.Tensor | None = None,  # B x T x N bool: tokens that may be kept (sparse retrieval)
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """(memory B x K x m, memory_pos B x K x m, spatial coords B x K' x 2, pointer tokens)."""
    b, t = frame_features.shape[:2]
    t_rel_idx = torch.where(t_rels > 0, t_rels, torch.full_like(t_rels, model.num_maskmem)) - 1
    pos = memory_pos[None, None] + model.maskmem_tpos_enc[t_rel_idx].view(b, t, 1, -1)
    coords = memory_coords[None].expand(t, -1, -1)
    mem, mem_pos, kept_coords = select_tokens(frame_features, pos, coords, token_budget, similarity, allowed)
    num_ptr = 0
    if pointers is not None and pointer_offsets:
        offsets = torch.tensor(pointer_offsets, device=frame_features.device)
        tok, tok_pos = model.object_pointer_tokens(pointers, offsets, max_ptrs)
        mem = torch.cat([mem, tok], dim=1)
        mem_pos = torch.cat([mem_pos, tok_pos], dim=1)
        num_ptr = tok.shape[1]
    return mem, mem_pos, kept_coords, num_ptr
