"""Interchangeable runners of the four model stages (see ``modeling/stages.py``).

A backend has one method per stage with the stage's tensor contract. ``torch``
runs the stage modules directly; ``onnxruntime`` and ``tensorrt`` run exported
graphs / engines; ``auto`` picks the fastest that can run here (``auto.py``).
``make_backend`` gives a clear error naming what is missing.
"""
from __future__ import annotations

import torch


class BackendError(RuntimeError):
    """A backend that cannot run here (not installed, wrong engine, ...)."""


BACKENDS = ("auto", "torch", "onnxruntime", "tensorrt")
PRECISIONS = ("fp32", "bf16", "int8")
# what each backend offers: bf16 = torch autocast-free bfloat16 weights and activations,
# int8 = onnxruntime, the image encoder's convolutions statically quantized (``precision.py``); TensorRT chooses fp16 at build time
PRECISION_OF = {"torch": ("fp32", "bf16"), "onnxruntime": ("fp32", "int8"), "tensorrt": ("fp32",)}


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
    if name == "auto":
        raise BackendError("backend auto is resolved by attach_backend (it may export the model first)")
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


def attach_backend(model, name: str, preset_name: str, engine_dir=None, device: str = "cpu", memory=None, log=print,
                   precision: str = "fp32", cache_dir=None):
    """Run ``model``'s stages with backend ``name`` and return the backend. ``auto`` picks
    one (``auto.resolve_auto``) and logs which and why; onnxruntime without an
    ``engine_dir`` runs the model's export from the cache (exported on first use)."""
    if name not in BACKENDS:
        raise BackendError(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}")
    if name != "auto" and precision not in PRECISION_OF[name]:
        raise BackendError(f"precision {precision!r} is not available with the {name} backend "
                           f"(it offers {', '.join(PRECISION_OF[name])})")
    if name == "auto":
        from .auto import resolve_auto

        name, why = resolve_auto(engine_dir, device)
        log(f"backend auto: {name} ({why})")
        if precision not in PRECISION_OF[name]:
            log(f"precision {precision} does not apply to {name}: running fp32")
            precision = "fp32"
        if name != "torch":
            try:
                return attach_backend(model, name, preset_name, engine_dir, device, memory, log, precision, cache_dir)
            except Exception as exc:  # noqa: BLE001 - auto must end with a running backend
                log(f"warning: backend auto: {name} failed ({exc}); running torch")
                name, precision = "torch", "fp32"
    if name == "torch":
        model.set_backend(None if precision == "fp32" else make_backend("torch", model, dtype=torch.bfloat16))
        return model.backend
    cached = name == "onnxruntime" and not engine_dir
    if cached:
        from .auto import cached_export

        engine_dir = cached_export(model, preset_name, memory=memory, precision=precision, cache_dir=cache_dir,
                                   log=log)
    try:
        backend = make_backend(name, model, engine_dir, device=device)
    except BackendError as exc:
        if not cached:
            raise
        import shutil

        from .auto import cached_export

        log(f"warning: cached export {engine_dir} does not load ({exc}); exporting again")
        shutil.rmtree(engine_dir, ignore_errors=True)
        engine_dir = cached_export(model, preset_name, memory=memory, precision=precision, cache_dir=cache_dir,
                                   log=log)
        backend = make_backend(name, model, engine_dir, device=device)
    model.set_backend(backend)
    return backend
