"""The PyTorch backend: the stage modules themselves (CPU or CUDA, any float dtype)."""
from __future__ import annotations

import torch

from ..modeling.stages import build_stages


class TorchBackend:
    """Runs the stages in PyTorch; ``dtype`` (float32/float16/bfloat16) is the compute
    precision, inputs and outputs stay float32 for the tracker."""

    name = "torch"

    def __init__(self, model, dtype: torch.dtype = torch.float32) -> None:
        self.dtype = dtype
        self.stages = build_stages(model)
        if dtype != torch.float32:
            self.stages = {k: _Cast(v, dtype) for k, v in self.stages.items()}

    def image_encoder(self, images):
        return self.stages["image_encoder"](images)

    def mask_decoder(self, pix_feat, high_res_0, high_res_1, point_coords, point_labels, mask_input, has_mask_input):
        return self.stages["mask_decoder"](pix_feat, high_res_0, high_res_1, point_coords, point_labels, mask_input,
                                           has_mask_input)

    def memory_attention(self, tokens, token_pos, token_coords, memory, memory_pos, memory_coords):
        return self.stages["memory_attention"](tokens, token_pos, token_coords, memory, memory_pos, memory_coords)

    def memory_encoder(self, pix_feat, mask_for_mem, object_score_logits):
        return self.stages["memory_encoder"](pix_feat, mask_for_mem, object_score_logits)


class _Cast:
    """Run a stage in reduced precision on a copy of its weights; float tensors in and out
    are cast (integer inputs such as point labels pass through)."""

    def __init__(self, stage: torch.nn.Module, dtype: torch.dtype) -> None:
        import copy

        self.stage = copy.deepcopy(stage).to(dtype)
        self.dtype = dtype

    def __call__(self, *args):
        cast = [a.to(self.dtype) if torch.is_tensor(a) and a.is_floating_point() else a for a in args]
        out = self.stage(*cast)
        if isinstance(out, tuple):
            return tuple(o.float() if o.is_floating_point() else o for o in out)
        return out.float()
