"""Export the four model stages to ONNX, described by a :class:`manifest.Manifest`.

``export_stages`` writes ``<out_dir>/<stage>.onnx`` for every stage of
``modeling/stages.py`` (same input/output names as the stage contracts) and
``manifest.json`` (see ``manifest.py``), read back by the onnxruntime backend and
the TensorRT engine builder. The dynamic ranges come from the preset and the
tracker's memory settings (see :func:`dynamic_ranges`).

Exports use the TorchScript exporter (``dynamo=False``), constant folding on, on
a deep copy of the model in eval mode with the RepViT trunk fused; the caller's
model is not touched. Every graph is checked against the TensorRT 10 ONNX parser's
operator list (``opcheck.py``) and export fails loudly on an unsupported op.
"""
from __future__ import annotations

import copy
import hashlib
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import BackendError
from ..memory.config import MemoryConfig
from ..modeling.common import use_channels_last_norms
from ..modeling.rope import grid_coords
from ..modeling.stages import STAGE_NAMES, build_stages
from .manifest import STAGE_INPUTS, STAGE_OUTPUTS, Manifest, sha256_file

# which axes of which tensor are dynamic, per stage (axis -> symbolic name)
_BATCHED = {0: "B"}
DYNAMIC_AXES: dict[str, dict[str, dict[int, str]]] = {
    "image_encoder": {},
    "mask_decoder": {
        "pix_feat": _BATCHED, "high_res_0": _BATCHED, "high_res_1": _BATCHED,
        "point_coords": {0: "B", 1: "N"}, "point_labels": {0: "B", 1: "N"},
        "mask_input": _BATCHED, "has_mask_input": _BATCHED,
        "masks": _BATCHED, "iou_pred": _BATCHED, "mask_tokens": _BATCHED, "object_score_logits": _BATCHED,
    },
    "memory_attention": {
        "tokens": {0: "B", 1: "Nq"}, "token_pos": {0: "B", 1: "Nq"}, "token_coords": {0: "B", 1: "Nq"},
        "memory": {0: "B", 1: "K"}, "memory_pos": {0: "B", 1: "K"},
        "memory_coords": {0: "B", 1: "K"}, "conditioned": {0: "B", 1: "Nq"},
    },
    "memory_encoder": {
        "pix_feat": _BATCHED, "mask_for_mem": _BATCHED, "object_score_logits": _BATCHED, "memory": _BATCHED,
    },
}

INPUT_NAMES = {k: list(v) for k, v in STAGE_INPUTS.items()}
OUTPUT_NAMES = {k: list(v) for k, v in STAGE_OUTPUTS.items()}


# ---------------------------------------------------------------------------- ranges
def memory_tokens_per_frame(model, memory: MemoryConfig) -> tuple[int, int]:
    """(tokens the memory encoder writes per frame, tokens of a stored frame after pooling)."""
    sp = model.spatial_perceiver
    if sp is not None:
        lead, side = int(sp.num_latents), int(round(sp.num_latents_2d ** 0.5))
    else:
        lead, side = 0, int(model.feat_size)
    written = lead + side * side
    factor = memory.pool_factor if memory.compressed else 1
    if side % factor:
        raise ValueError(f"pool_factor {factor} does not divide the {side}x{side} memory grid")
    return written, lead + (side // factor) ** 2


def dynamic_ranges(model, memory: MemoryConfig, max_objects: int = 16, max_points: int = 16,
                   opt_queries: int | None = None) -> dict[str, dict]:
    """min/opt/max of the symbolic axes, from the model and the tracker's memory settings.

    B: 1..max_objects (opt 1). N: 1..max_points + 2 (opt 2: a box as two corners).
    Nq: memory-attention query tokens, 1..h*w; opt ``opt_queries`` (default h*w: dense, what
      prompted frames and dense refreshes run; a routed tracker may tune it lower).
    K = spatial memory tokens + object-pointer tokens, as ``Tracker._condition`` feeds them:
      min: one stored memory frame (pooled when compressed; capped by the token budget),
           no pointers;
      opt: a prompted frame + a full bank of memory frames (capped by the budget), plus
           ``max_obj_ptrs_in_encoder`` pointers;
      max: ``max_cond_frames`` prompted frames + a full bank (``num_slots`` when compressed,
           ``num_maskmem - 1`` otherwise), capped by the budget, plus every pointer the
           tracker can gather: one per kept prompted frame and ``max_obj_ptrs_in_encoder - 1``
           recent frames, each split into ``hidden_dim / mem_dim`` tokens.
    """
    if max_objects < 1 or max_points < 1:
        raise ValueError("max_objects and max_points must be >= 1")
    _, per_frame = memory_tokens_per_frame(model, memory)
    budget = memory.token_budget if memory.compressed else 0

    def capped(n: int) -> int:
        return min(n, budget) if budget > 0 else n

    bank = memory.num_slots if memory.compressed else model.num_maskmem - 1
    split = model.hidden_dim // model.mem_dim if model.mem_dim < model.hidden_dim else 1
    max_ptrs = int(model.max_obj_ptrs_in_encoder)
    k_min = capped(per_frame)
    k_opt = capped((1 + bank) * per_frame) + max_ptrs * split
    k_max = capped((memory.max_cond_frames + bank) * per_frame) + (memory.max_cond_frames + max_ptrs - 1) * split
    dense = int(model.feat_size) ** 2
    q_opt = dense if opt_queries is None else int(opt_queries)
    if not 1 <= q_opt <= dense:
        raise ValueError(f"opt_queries must be in [1, {dense}], got {q_opt}")
    return {
        "B": {"min": 1, "opt": 1, "max": int(max_objects)},
        "N": {"min": 1, "opt": 2, "max": int(max_points) + 2},
        "K": {"min": int(k_min), "opt": int(k_opt), "max": int(k_max)},
        "Nq": {"min": 1, "opt": q_opt, "max": dense},
    }


# ---------------------------------------------------------------------------- inputs
def example_inputs(
    model, stage: str, b: int = 2, n: int = 3, k: int | None = None, seed: int = 0, q: int | None = None
) -> dict[str, torch.Tensor]:
    """Random inputs of ``stage`` following its contract (realistic value ranges); ``q``
    memory-attention queries (default all ``h*w``; fewer: a random routed subset)."""
    g = torch.Generator().manual_seed(seed)
    s, c, m, h = model.image_size, model.hidden_dim, model.mem_dim, model.feat_size

    def randn(*shape):
        return torch.randn(*shape, generator=g)

    if stage == "image_encoder":
        return {"images": randn(1, 3, s, s)}
    if stage == "mask_decoder":
        labels = torch.randint(-1, 4, (b, n), generator=g, dtype=torch.int32)
        labels[:, 0] = 1  # at least one real point per object
        return {
            "pix_feat": randn(b, c, h, h),
            "high_res_0": randn(b, c // 8, 4 * h, 4 * h),
            "high_res_1": randn(b, c // 4, 2 * h, 2 * h),
            "point_coords": torch.rand(b, n, 2, generator=g) * s,
            "point_labels": labels,
            "mask_input": randn(b, 1, 4 * h, 4 * h) * 5.0,
            "has_mask_input": (torch.arange(b) % 2).float(),
        }
    if stage == "memory_attention":
        k = k if k is not None else 2 * h * h + 7
        coords = torch.rand(b, k, 2, generator=g) * h
        coords[:, -3:] = 0.0  # trailing pointer-like tokens: no rotation
        q = h * h if q is None else int(q)
        if not 1 <= q <= h * h:
            raise ValueError(f"query tokens must be in [1, {h * h}], got {q}")
        # a routed subset: q distinct grid cells per object, in raster order
        cells = torch.stack([torch.randperm(h * h, generator=g)[:q].sort().values for _ in range(b)])
        q_coords = grid_coords(h, h)[cells]
        return {"tokens": randn(b, q, c), "token_pos": randn(b, q, c), "token_coords": q_coords,
                "memory": randn(b, k, m), "memory_pos": randn(b, k, m), "memory_coords": coords}
    if stage == "memory_encoder":
        score = randn(b, 1) * 5.0
        score[0] = 3.0  # one present object
        if b > 1:
            score[1] = -3.0  # one absent object (no-object embedding path)
        return {"pix_feat": randn(b, c, h, h), "mask_for_mem": randn(b, 1, s, s) * 10.0, "object_score_logits": score}
    raise ValueError(f"unknown stage {stage!r}")


def _dtype_name(t: torch.Tensor) -> str:
    return str(t.dtype).replace("torch.", "")


def _tensor_specs(names: list[str], tensors, axes: dict[str, dict[int, str]]) -> list[dict[str, Any]]:
    specs = []
    for name, t in zip(names, tensors):
        dyn = axes.get(name, {})
        shape = [dyn.get(i, int(d)) for i, d in enumerate(t.shape)]
        specs.append({"name": name, "dtype": _dtype_name(t), "shape": shape})
    return specs


def _inference_copy(model):
    """A deep copy of ``model`` for export: eval mode, no backend, RepViT trunk fused,
    wide channel LayerNorms in their channels-last form (``use_channels_last_norms``)."""
    memo = {}
    if getattr(model, "_backend", None) is not None:
        memo[id(model._backend)] = None
    if getattr(model, "_constants", None) is not None:
        memo[id(model._constants)] = {}
    with torch.no_grad():
        clone = copy.deepcopy(model, memo)
    if hasattr(clone, "set_backend"):
        clone.set_backend(None)
    clone.eval()
    trunk = getattr(getattr(clone, "image_encoder", None), "trunk", None)
    if trunk is not None and hasattr(trunk, "fuse"):
        trunk.fuse()
    use_channels_last_norms(clone)
    for p in clone.parameters():
        p.requires_grad_(False)
    return clone.float().cpu().eval()  # exported on CPU whatever the caller's device


# ---------------------------------------------------------------------------- export
class _KeepInputs(torch.nn.Module):
    """A stage whose inputs at ``positions`` do not influence its outputs (the exporter
    would drop them from the graph) made to keep them: exact zeros shaped from each such
    input (``ConstantOfShape(Shape(x))``) are added to the first output, so the graph
    keeps the contract's inputs and their batch axis stays tied to the output's."""

    def __init__(self, stage: torch.nn.Module, positions: list[int]) -> None:
        super().__init__()
        self.stage = stage
        self.positions = list(positions)

    def forward(self, *args):
        outs = self.stage(*args)
        single = not isinstance(outs, tuple)
        outs = [outs] if single else list(outs)
        first = outs[0]
        for i in self.positions:
            x = args[i]
            z = torch.zeros_like(x, dtype=first.dtype).reshape(x.shape[0], -1)[:, :1]
            first = first + z.reshape(z.shape[0], *([1] * (first.dim() - 1)))
        outs[0] = first
        return outs[0] if single else tuple(outs)


def _graph_input_names(path: Path) -> set[str]:
    import onnx

    return {i.name for i in onnx.load(str(path), load_external_data=False).graph.input}


def _dedupe_constants(path: Path, min_elements: int = 16) -> int:
    """Merge identical ``Constant`` nodes (the tracer folds per-layer copies of the rope
    tables, ~2 MB each at 1024 px); returns how many were removed. Pure renaming, the
    graph computes the same thing."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    canonical: dict[tuple, str] = {}
    rename: dict[str, str] = {}
    keep = []
    for node in model.graph.node:
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx") and len(node.attribute) == 1 \
                and node.attribute[0].name == "value":
            arr = numpy_helper.to_array(node.attribute[0].t)
            if arr.size >= min_elements:
                key = (str(arr.dtype), arr.shape, hashlib.sha256(arr.tobytes()).hexdigest())
                if key in canonical:
                    rename[node.output[0]] = canonical[key]
                    continue
                canonical[key] = node.output[0]
        keep.append(node)
    if not rename:
        return 0
    graph_outputs = {o.name for o in model.graph.output}
    if graph_outputs & set(rename):
        return 0  # a graph output is a constant: leave the graph alone

    def apply(graph) -> None:
        for node in graph.node:
            for i, name in enumerate(node.input):
                if name in rename:
                    node.input[i] = rename[name]
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.GRAPH:
                    apply(attr.g)
                elif attr.type == onnx.AttributeProto.GRAPHS:
                    for g in attr.graphs:
                        apply(g)

    del model.graph.node[:]
    model.graph.node.extend(keep)
    apply(model.graph)
    onnx.save(model, str(path))
    return len(rename)


def _export_one(module, name: str, inputs: dict, path: Path, axes: dict, opset: int) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # deprecation / tracer chatter of the TorchScript exporter
        torch.onnx.export(
            module,
            tuple(inputs.values()),
            str(path),
            input_names=INPUT_NAMES[name],
            output_names=OUTPUT_NAMES[name],
            dynamic_axes={k: dict(v) for k, v in axes.items()} or None,
            opset_version=opset,
            do_constant_folding=True,
            training=torch.onnx.TrainingMode.EVAL,
            dynamo=False,
        )


def export_stages(
    model,
    out_dir: str | Path,
    preset_name: str,
    opset: int = 17,
    max_objects: int = 16,
    max_points: int = 16,
    memory: MemoryConfig | dict | None = None,
    check_ops: bool = True,
    opt_queries: int | None = None,
) -> Path:
    """Export the four stages of ``model`` to ``out_dir`` and return the manifest path.

    ``memory``: the tracker's memory settings the K range is derived from (default:
    ``model.preset["memory"]``). Raises ``UnsupportedOperatorError`` (from ``opcheck``)
    when a graph holds an operator the TensorRT 10 ONNX parser lacks.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if memory is None:
        memory = MemoryConfig.from_dict((getattr(model, "preset", None) or {}).get("memory"))
    elif isinstance(memory, dict):
        memory = MemoryConfig.from_dict(memory)
    ranges = dynamic_ranges(model, memory, max_objects, max_points, opt_queries)

    clone = _inference_copy(model)
    stages = build_stages(clone)
    stages["image_encoder"].fold_high_res()
    import onnx

    manifest = Manifest(
        preset=preset_name, image_size=int(clone.image_size), hidden_dim=int(clone.hidden_dim),
        mem_dim=int(clone.mem_dim), opset=int(opset), stages={}, max_objects=int(max_objects),
        max_points=int(max_points), memory=memory.to_dict(),
        versions={"torch": torch.__version__, "onnx": onnx.__version__},
    )
    # example sizes distinct from 1 and from each other, so no axis is specialised
    k_example = max(ranges["K"]["min"] + 5, 7)
    q_example = ranges["Nq"]["max"] // 2 + 1  # a routed subset: the query axis must not be specialised
    if q_example in (k_example, 2, 3):
        q_example += 1
    for name in STAGE_NAMES:
        module = stages[name]
        inputs = example_inputs(clone, name, b=2, n=3, k=k_example, q=q_example)
        with torch.no_grad():
            outputs = module(*inputs.values())
        outputs = outputs if isinstance(outputs, tuple) else (outputs,)
        axes = DYNAMIC_AXES[name]
        path = out_dir / f"{name}.onnx"
        _export_one(module, name, inputs, path, axes, opset)
        unused = [i for i, n in enumerate(INPUT_NAMES[name]) if n not in _graph_input_names(path)]
        if unused:  # e.g. object_score_logits of a model without no-object embedding
            _export_one(_KeepInputs(module, unused), name, inputs, path, axes, opset)
            still = [n for n in INPUT_NAMES[name] if n not in _graph_input_names(path)]
            if still:
                raise RuntimeError(f"export of {name} dropped input(s) {still}")
        _dedupe_constants(path)
        used = sorted({sym for spec in axes.values() for sym in spec.values()})
        manifest.stages[name] = {
            "file": path.name,
            "sha256": sha256_file(path),
            "inputs": _tensor_specs(INPUT_NAMES[name], inputs.values(), axes),
            "outputs": _tensor_specs(OUTPUT_NAMES[name], outputs, axes),
            "dynamic": {sym: dict(ranges[sym]) for sym in used},
        }
    manifest_path = manifest.save(out_dir)
    if check_ops:
        from .opcheck import check_export

        check_export(out_dir)
    return manifest_path


# ---------------------------------------------------------------------------- parity
def compare_with_torch(
    model, export_dir: str | Path, sizes: list[dict[str, int]] | None = None, seed: int = 0
) -> dict[str, dict[str, float]]:
    """Run every exported stage in onnxruntime (CPU) and the torch stages on the same
    random inputs; returns ``{stage: {output: max |diff|}}`` over all ``sizes``
    (default: B=1,N=1,K=min,Nq dense and B=3,N=5,K=opt,Nq a third of the grid: routed)."""
    try:
        import onnxruntime as ort
    except ImportError as exc:
        raise BackendError("onnxruntime is not installed (pip install onnxruntime)") from exc
    manifest = Manifest.load(export_dir)
    export_dir = Path(export_dir)
    dyn = manifest.ranges()
    if sizes is None:
        dense = dyn["Nq"]["max"]
        sizes = [{"B": 1, "N": 1, "K": dyn["K"]["min"], "Nq": dense},
                 {"B": 3, "N": 5, "K": dyn["K"]["opt"], "Nq": max(1, dense // 3)}]
    modes = {mod: mod.training for mod in model.modules()}  # build_stages puts submodules in eval
    try:
        return _compare(model, export_dir, manifest, sizes, seed, ort)
    finally:
        for mod, training in modes.items():
            mod.train(training)


def _compare(model, export_dir: Path, manifest: Manifest, sizes: list[dict[str, int]], seed: int, ort):
    stages = build_stages(model)
    device = next(model.parameters()).device
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    result: dict[str, dict[str, float]] = {}
    for name in STAGE_NAMES:
        sess = ort.InferenceSession(str(manifest.path(name)), opts,
                                    providers=["CPUExecutionProvider"])
        diffs: dict[str, float] = {}
        for i, sz in enumerate(sizes):
            inputs = example_inputs(model, name, b=sz["B"], n=sz["N"], k=sz["K"], seed=seed + i, q=sz.get("Nq"))
            with torch.no_grad():
                ref = stages[name](*(v.to(device) for v in inputs.values()))
            ref = tuple(r.cpu() for r in (ref if isinstance(ref, tuple) else (ref,)))
            got = sess.run(None, {k: v.numpy() for k, v in inputs.items()})
            for out_name, r, o in zip(OUTPUT_NAMES[name], ref, got):
                if tuple(r.shape) != o.shape:
                    raise AssertionError(
                        f"{name}.{out_name}: onnxruntime shape {o.shape} != torch {tuple(r.shape)} at {sz}"
                    )
                d = float(np.abs(r.numpy() - o).max()) if o.size else 0.0
                diffs[out_name] = max(diffs.get(out_name, 0.0), d)
        result[name] = diffs
    return result
