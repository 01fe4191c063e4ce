"""Check exported graphs against the operators the TensorRT 10 ONNX parser supports.

The list (``tensorrt_onnx_ops.txt``, beside this file) comes from onnx-tensorrt's
``docs/operators.md`` for TensorRT 10.x (see its header). A node is supported when
its domain is the default ONNX domain (``""`` or ``"ai.onnx"``) and its op type is
listed; nodes inside subgraphs (``If``/``Loop``/``Scan`` bodies) and model-local
functions are checked too. Complex tensors (which neither TensorRT nor our stages
use) are rejected as well.
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from . import BackendError

OPS_FILE = Path(__file__).with_name("tensorrt_onnx_ops.txt")
DEFAULT_DOMAINS = ("", "ai.onnx")


class UnsupportedOperatorError(BackendError):
    """An exported graph uses operators (or dtypes) the TensorRT ONNX parser cannot import."""

    def __init__(self, message: str, problems: dict[str, list[str]] | None = None) -> None:
        super().__init__(message)
        self.problems = problems or {}  # stage -> unsupported ops / dtypes


@lru_cache(maxsize=4)
def supported_ops(path: str | None = None) -> frozenset[str]:
    """The supported op types (one per line in the list file, ``#`` comments)."""
    file = Path(path) if path else OPS_FILE
    if not file.is_file():
        raise BackendError(f"TensorRT operator list {file} not found (is the package installed with its data files?)")
    ops = set()
    for line in file.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            ops.add(line)
    return frozenset(ops)


def _load(graph_or_path):
    import onnx

    if isinstance(graph_or_path, onnx.ModelProto):
        return graph_or_path
    try:
        return onnx.load(str(graph_or_path), load_external_data=False)
    except Exception as exc:  # protobuf decode errors have no common base class
        raise BackendError(f"cannot read ONNX graph {graph_or_path}: {exc}") from exc


def _walk_nodes(graph):
    """Every node of ``graph`` and of its subgraphs, depth first."""
    import onnx

    for node in graph.node:
        yield node
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from _walk_nodes(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for g in attr.graphs:
                    yield from _walk_nodes(g)


def _op_name(node) -> str:
    return node.op_type if node.domain in DEFAULT_DOMAINS else f"{node.domain}::{node.op_type}"


def check_graph(onnx_path, ops_file: str | None = None) -> list[str]:
    """Sorted names of the unsupported operators in the graph (``domain::Op`` for nodes
    outside the default ONNX domain); empty when every node is supported."""
    model = _load(onnx_path)
    allowed = supported_ops(ops_file)
    bad = set()
    nodes = list(_walk_nodes(model.graph))
    for fn in model.functions:  # model-local functions: TensorRT inlines them, their bodies count
        nodes.extend(fn.node)
    for node in nodes:
        if node.domain not in DEFAULT_DOMAINS or node.op_type not in allowed:
            bad.add(_op_name(node))
    return sorted(bad)


def complex_tensors(onnx_path) -> list[str]:
    """Names of tensors with a complex element type (inputs, outputs, initializers, and
    every intermediate onnx shape inference can type)."""
    import onnx

    complex_types = {onnx.TensorProto.COMPLEX64, onnx.TensorProto.COMPLEX128}
    model = _load(onnx_path)
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # inference is best effort; the declared types are still checked
        inferred = model
    found = set()

    def visit(graph):
        for vi in list(graph.input) + list(graph.output) + list(graph.value_info):
            if vi.type.HasField("tensor_type") and vi.type.tensor_type.elem_type in complex_types:
                found.add(vi.name)
        for init in graph.initializer:
            if init.data_type in complex_types:
                found.add(init.name)
        for node in graph.node:
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.TENSOR and attr.t.data_type in complex_types:
                    found.add(node.output[0] if node.output else node.name)
                elif attr.type == onnx.AttributeProto.GRAPH:
                    visit(attr.g)
                elif attr.type == onnx.AttributeProto.GRAPHS:
                    for g in attr.graphs:
                        visit(g)

    visit(inferred.graph)
    return sorted(found)


def check_export(manifest_dir, ops_file: str | None = None) -> dict[str, list[str]]:
    """Check every stage graph of an export directory; raise ``UnsupportedOperatorError``
    naming the stage and ops (or complex tensors) when any is found. Returns the
    (empty) per-stage problem lists otherwise."""
    from .manifest import Manifest

    manifest = Manifest.load(manifest_dir)
    problems: dict[str, list[str]] = {}
    lines = []
    for name, entry in manifest.stages.items():
        path = manifest.path(name)
        bad = check_graph(path, ops_file)
        cplx = complex_tensors(path)
        problems[name] = bad + [f"complex tensor {t}" for t in cplx]
        if bad:
            lines.append(f"  {name} ({entry['file']}): unsupported operator(s) {', '.join(bad)}")
        if cplx:
            lines.append(f"  {name} ({entry['file']}): complex-typed tensor(s) {', '.join(cplx[:8])}"
                         + (" ..." if len(cplx) > 8 else ""))
    if lines:
        raise UnsupportedOperatorError(
            "the exported graphs cannot be imported by the TensorRT 10 ONNX parser:\n" + "\n".join(lines)
            + f"\n(supported operators: {OPS_FILE.name}; domain must be the default ONNX domain)",
            problems,
        )
    return problems
