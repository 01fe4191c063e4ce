"""Interchangeable runners of the four model stages (see ``modeling/stages.py``).

A backend has one method per stage with the stage's tensor contract. ``torch``
runs the stage modules directly; ``onnxruntime`` and ``tensorrt`` run exported
graphs / engines. ``make_backend`` gives a clear error naming what is missing.
"""
from __future__ import annotations

from typing import Protocol

import torch


class BackendError(RuntimeError):
    """A backend that cannot run here (not installed, wrong engine, ...)."""


class Backend(Protocol):
    name: str

    def image_encoder(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]: ...

    def mask_decoder(self, pix_feat, high_res_0, high_res_1, point_coords, point_labels, mask_input,
                     has_mask_input) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]: ...

    def memory_attention(self, pix_feat, memory, memory_pos, memory_coords) -> torch.Tensor: ...

    def memory_encoder(self, pix_feat, mask_for_mem, object_score_logits) -> torch.Tensor: ...


BACKENDS = ("torch", "onnxruntime", "tensorrt")


def make_backend(name: str, model, engine_dir=None, device: str = "cpu", dtype: torch.dtype = torch.float32):
    """The backend ``name`` for ``model``; ``engine_dir`` holds exported graphs / engines
    (``tinysam2 export`` / ``tinysam2 build-engine``) for onnxruntime / tensorrt."""
    if name == "torch":
        from .torch_backend import TorchBackend

        return TorchBackend(model, dtype=dtype)
    if name == "onnxruntime":
        from .onnxruntime_backend import OrtBackend

        return OrtBackend(engine_dir, device=device)
    if name == "tensorrt":
        from .tensorrt_backend import TrtBackend

        return TrtBackend(engine_dir, device=device)
    raise BackendError(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}")
