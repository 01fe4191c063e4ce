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

    def memory_attention(self, tokens, token_pos, token_coords, memory, memory_pos,
                         memory_coords) -> torch.Tensor: ...

    def memory_encoder(self, pix_feat, mask_for_mem, object_score_logits) -> torch.Tensor: ...


BACKENDS = ("torch", "onnxruntime", "tensorrt")


class GraphBackend:
    """The four stage methods on top of ``_run(stage, *inputs) -> tuple of outputs``,
    for runtimes that execute one exported graph / engine per stage."""

    def _run(self, stage: str, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        raise NotImplementedError

    def image_encoder(self, images):
        return self._run("image_encoder", images)

    def mask_decoder(self, pix_feat, high_res_0, high_res_1, point_coords, point_labels, mask_input, has_mask_input):
        return self._run("mask_decoder", pix_feat, high_res_0, high_res_1, point_coords, point_labels, mask_input,
                         has_mask_input)

    def memory_attention(self, tokens, token_pos, token_coords, memory, memory_pos, memory_coords):
        return self._run("memory_attention", tokens, token_pos, token_coords, memory, memory_pos, memory_coords)[0]

    def memory_encoder(self, pix_feat, mask_for_mem, object_score_logits):
        return self._run("memory_encoder", pix_feat, mask_for_mem, object_score_logits)[0]


def make_backend(name: str, model, engine_dir=None, device: str = "cpu", dtype: torch.dtype = torch.float32):
    """The backend ``name`` for ``model``; ``engine_dir`` holds exported graphs / engines
    (``tinysam2 export`` / ``tinysam2 build-engine``) for onnxruntime / tensorrt."""
    if name == "torch":
        from .torch_backend import TorchBackend

        return TorchBackend(model, dtype=dtype)
    if name == "tensorrt":  # say first that TensorRT is missing, if it is
        from .engine_builder import import_tensorrt

        import_tensorrt()
    if name in ("onnxruntime", "tensorrt") and not engine_dir:
        raise BackendError(f"the {name} backend needs engine_dir (made by `tinysam2 export`"
                           f"{' and `tinysam2 build-engine`' if name == 'tensorrt' else ''})")
    if name == "onnxruntime":
        from .onnxruntime_backend import OrtBackend

        backend = OrtBackend(engine_dir, device=device)
        backend.check_model(model)
        return backend
    if name == "tensorrt":
        from .tensorrt_backend import TrtBackend

        backend = TrtBackend(engine_dir, device=device)
        backend.check_model(model)
        return backend
    raise BackendError(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}")


def attach_backend(model, name: str, preset_name: str, engine_dir=None, device: str = "cpu", memory=None, log=print):
    """Run ``model``'s stages with backend ``name``. For onnxruntime without an
    ``engine_dir``, the model is exported first (to a temporary directory)."""
    if name == "torch":
        model.set_backend(None)
        return model.backend
    if name == "onnxruntime" and not engine_dir:
        import tempfile

        from .onnx_export import export_stages

        engine_dir = tempfile.mkdtemp(prefix="tinysam2_onnx_")
        log(f"exporting {preset_name} to {engine_dir} for onnxruntime")
        export_stages(model, engine_dir, preset_name, memory=memory)
    backend = make_backend(name, model, engine_dir, device=device)
    model.set_backend(backend)
    return backend
