"""The manifest of an export directory: one type for the exporter, onnxruntime and TensorRT.

``tinysam2 export`` writes ``<dir>/manifest.json`` next to ``<stage>.onnx``; the
onnxruntime backend and the TensorRT engine builder read it back with
:meth:`Manifest.load`, which validates everything once (contract names, dtypes,
shapes, dynamic ranges, graph files present, sha256), so neither reader repeats
the checks. Format 2::

    {"format": 2, "preset": ..., "image_size": S, "hidden_dim": C, "mem_dim": m, "opset": 17,
     "max_objects": 16, "max_points": 16, "memory": {...}, "precision": "fp32",
     "versions": {"torch": ..., "onnx": ...},
     "stages": {"<stage>": {"file": "<stage>.onnx", "sha256": ...,
                            "inputs": [{"name": ..., "dtype": "float32", "shape": ["B", "Nq", 256]}, ...],
                            "outputs": [...], "dynamic": {"B": {"min": 1, "opt": 1, "max": 16}, ...}}}}

Shapes name their dynamic axes: ``B`` objects, ``N`` prompt points, ``Nq`` query
tokens (1..h*w: a routed subset of the image tokens, or all of them) and ``K``
memory tokens of memory attention. Format 1 (memory attention on the whole
``pix_feat`` grid, no ``precision``) is refused with a re-export hint.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path
from typing import Any

from . import BackendError

FORMAT = 2
MANIFEST_NAME = "manifest.json"

# the stage contracts of modeling/stages.py, in argument / return order
STAGE_INPUTS: dict[str, tuple[str, ...]] = {
    "image_encoder": ("images",),
    "mask_decoder": ("pix_feat", "high_res_0", "high_res_1", "point_coords", "point_labels", "mask_input",
                     "has_mask_input"),
    "memory_attention": ("tokens", "token_pos", "token_coords", "memory", "memory_pos", "memory_coords"),
    "memory_encoder": ("pix_feat", "mask_for_mem", "object_score_logits"),
}
STAGE_OUTPUTS: dict[str, tuple[str, ...]] = {
    "image_encoder": ("high_res_0", "high_res_1", "pix_feat"),
    "mask_decoder": ("masks", "iou_pred", "mask_tokens", "object_score_logits"),
    "memory_attention": ("conditioned",),
    "memory_encoder": ("memory",),
}
DTYPES = ("float32", "float16", "int32", "int64", "bool")
PRECISIONS = ("fp32", "int8")  # int8: the image encoder's convolutions quantized (onnxruntime only)


class ManifestError(BackendError):
    """An export directory that cannot be used: no/corrupt manifest, missing or changed graph."""


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


@dataclasses.dataclass
class Manifest:
    """What an export directory holds and for which model; ``stages`` maps a stage name
    to its JSON entry (file, sha256, inputs, outputs, dynamic)."""

    preset: str
    image_size: int
    hidden_dim: int
    mem_dim: int
    opset: int
    stages: dict[str, dict[str, Any]]
    max_objects: int = 16
    max_points: int = 16
    memory: dict[str, Any] = dataclasses.field(default_factory=dict)
    precision: str = "fp32"
    versions: dict[str, str] = dataclasses.field(default_factory=dict)
    format: int = FORMAT
    dir: Path | None = dataclasses.field(default=None, compare=False)  # where it was loaded from; not saved

    # ------------------------------------------------------------------ io
    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d.pop("dir")
        return d

    def save(self, directory: str | Path) -> Path:
        """Write ``<directory>/manifest.json`` atomically (a reader never sees half a file)."""
        path = Path(directory) / MANIFEST_NAME
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        os.replace(tmp, path)
        self.dir = Path(directory)
        return path

    @classmethod
    def load(cls, directory: str | Path, verify_sha: bool = True) -> "Manifest":
        """Read and :meth:`validate` ``<directory>/manifest.json``; ``ManifestError`` names
        the first problem and how to fix it."""
        directory = Path(directory)
        path = directory / MANIFEST_NAME
        if not directory.is_dir():
            raise ManifestError(
                f"export directory {directory} not found (create it with `tinysam2 export --out {directory}`)")
        if not path.is_file():
            raise ManifestError(f"{path} not found: is {directory} an export directory (`tinysam2 export`)?")
        try:
            data = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ManifestError(f"{path} is corrupt (not valid JSON: {exc}); re-run `tinysam2 export`") from exc
        if not isinstance(data, dict):
            raise ManifestError(f"{path} is corrupt: expected a JSON object")
        if data.get("format") != FORMAT:
            raise ManifestError(f"{path} has format {data.get('format')!r}, this version reads format {FORMAT}; "
                                "re-run `tinysam2 export`")
        names = {f.name for f in dataclasses.fields(cls)} - {"dir"}
        missing = [k for k in ("preset", "image_size", "hidden_dim", "mem_dim", "opset", "stages") if k not in data]
        if missing:
            raise ManifestError(f"{path} is corrupt: missing {', '.join(missing)}")
        manifest = cls(**{k: v for k, v in data.items() if k in names})
        manifest.validate(directory, verify_sha=verify_sha)
        manifest.dir = directory
        return manifest

    # ------------------------------------------------------------------ checks
    def validate(self, directory: str | Path, verify_sha: bool = True) -> None:
        """Every stage of the contract present with its graph in ``directory``, names in
        contract order, known dtypes, positive dims, every symbolic axis with an integer
        range ``1 <= min <= opt <= max``, and (``verify_sha``) each graph's sha256 as recorded."""
        directory = Path(directory)
        where0 = directory / MANIFEST_NAME
        for key in ("image_size", "hidden_dim", "mem_dim", "opset"):
            if not _is_int(getattr(self, key)) or getattr(self, key) < 1:
                raise ManifestError(f"{where0} is corrupt: {key} must be a positive integer")
        if self.precision not in PRECISIONS:
            raise ManifestError(f"{where0}: unknown precision {self.precision!r} (known: {', '.join(PRECISIONS)})")
        if not isinstance(self.stages, dict) or not self.stages:
            raise ManifestError(f"{where0} is corrupt: 'stages' must be a non-empty object")
        absent = [s for s in STAGE_INPUTS if s not in self.stages]
        if absent:
            raise ManifestError(f"{where0} lacks stage(s) {', '.join(absent)}")
        unknown = [s for s in self.stages if s not in STAGE_INPUTS]
        if unknown:
            raise ManifestError(f"{where0} has unknown stage(s) {', '.join(unknown)}")
        for name, entry in self.stages.items():
            self._validate_stage(directory, name, entry, verify_sha)

    def _validate_stage(self, directory: Path, name: str, entry: Any, verify_sha: bool) -> None:
        where = f"{directory / MANIFEST_NAME}: stage {name}"
        if not isinstance(entry, dict):
            raise ManifestError(f"{where}: expected an object")
        try:
            file, sha = entry["file"], entry["sha256"]
            dyn = entry.get("dynamic", {})
            if not isinstance(dyn, dict):
                raise ManifestError(f"{where}: 'dynamic' must be an object")
            for sym, r in dyn.items():
                lo, opt, hi = r["min"], r["opt"], r["max"]
                if not all(_is_int(v) for v in (lo, opt, hi)) or not 1 <= lo <= opt <= hi:
                    raise ManifestError(f"{where}: range of axis {sym!r} must be integers 1 <= min <= opt <= max, "
                                        f"got {r}")
            for io, expected in (("inputs", STAGE_INPUTS[name]), ("outputs", STAGE_OUTPUTS[name])):
                specs = entry[io]
                names = [spec["name"] for spec in specs]
                if names != list(expected):
                    raise ManifestError(f"{where} {io} are {names}, expected {list(expected)}")
                for spec in specs:
                    if spec["dtype"] not in DTYPES:
                        raise ManifestError(f"{where}: {spec['name']} has unknown dtype {spec['dtype']!r}")
                    if not isinstance(spec["shape"], list):
                        raise ManifestError(f"{where}: {spec['name']} has no shape list")
                    for d in spec["shape"]:
                        if isinstance(d, str):
                            if d not in dyn:
                                raise ManifestError(f"{where}: axis {d!r} of {spec['name']} has no range in 'dynamic'")
                        elif not _is_int(d) or d < 1:
                            raise ManifestError(f"{where}: bad dimension {d!r} of {spec['name']}")
        except (KeyError, TypeError) as exc:
            raise ManifestError(f"{where} is corrupt (missing or malformed {exc})") from exc
        graph = directory / str(file)
        if not graph.is_file():
            raise ManifestError(f"{where}: graph file {graph} is missing; re-run `tinysam2 export`")
        if verify_sha:
            actual = sha256_file(graph)
            if actual != sha:
                raise ManifestError(
                    f"{where}: sha256 of {graph.name} is {actual[:16]}..., the manifest says {str(sha)[:16]}... "
                    "(file changed or replaced after export); re-run `tinysam2 export`")

    # ------------------------------------------------------------------ views
    def path(self, stage: str) -> Path:
        """The graph file of ``stage``."""
        return Path(self.dir or ".") / self.stages[stage]["file"]

    def ranges(self) -> dict[str, dict[str, int]]:
        """Every symbolic axis's min/opt/max (the same range wherever it appears)."""
        out: dict[str, dict[str, int]] = {}
        for entry in self.stages.values():
            out.update(entry.get("dynamic", {}))
        return out

    def check_model(self, model, where: str = "") -> None:
        """``BackendError`` when ``model``'s geometry differs from the exported one."""
        for key in ("image_size", "hidden_dim", "mem_dim"):
            if int(getattr(model, key)) != int(getattr(self, key)):
                raise BackendError(
                    f"{where or self.dir} was exported for {key}={getattr(self, key)} (preset {self.preset!r}), "
                    f"the model has {key}={getattr(model, key)}")


def concrete_shape(spec: dict, sizes: dict[str, int]) -> tuple[int, ...]:
    """A manifest shape with its symbolic axes replaced by ``sizes``."""
    return tuple(sizes[d] if isinstance(d, str) else d for d in spec["shape"])
