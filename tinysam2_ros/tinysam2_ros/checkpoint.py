"""Loading SAM 2 / EdgeTAM / TinySAM 2 checkpoints safely and strictly.

Accepted files: the official ``{"model": state_dict}`` (or a bare state_dict) in a
``.pt``/``.pth`` read with ``torch.load(weights_only=True)`` (no arbitrary
unpickling), or a ``.safetensors`` file. Half-precision tensors are upcast to the
model's dtype. A mismatch is reported key by key, with a guess at the preset the
file was made for. Weights saved by ``tinysam2 train`` name their preset in the
safetensors metadata: presets with the same tensors (``tiny`` and ``tiny_norm``)
compute different things, so a file is refused under another preset, and the
command-line tools take the preset from the file when none is given.
"""
from __future__ import annotations

import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn


PRESET_METADATA_KEY = "tinysam2_ros.preset"


class CheckpointError(RuntimeError):
    """A checkpoint file that cannot be used with the requested model."""


def saved_preset(path: str | Path | None) -> str | None:
    """The preset a ``.safetensors`` file was saved from (its metadata), else ``None``."""
    if not path or Path(path).suffix != ".safetensors" or not Path(path).is_file():
        return None
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as fh:
            return (fh.metadata() or {}).get(PRESET_METADATA_KEY)
    except (SafetensorError, OSError, ValueError):
        return None  # unreadable: read_state_dict reports it


def _canonical(preset: str) -> str:
    from .modeling.presets import ALIASES

    return ALIASES.get(preset, preset)


def resolve_preset(requested: str | None, checkpoint: str | Path | None, default: str) -> str:
    """The preset to build: the requested one, else the checkpoint's own, else ``default``.

    Raises CheckpointError when the checkpoint names a different preset."""
    own = saved_preset(checkpoint)
    if requested is None:
        return own or default
    if own is not None and _canonical(own) != _canonical(requested):
        raise CheckpointError(f"{checkpoint} was saved from preset {own!r}, not {requested!r}: "
                              f"use --preset {own} (or leave --preset out)")
    return requested


@dataclass
class LoadReport:
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[tuple[str, tuple, tuple]] = field(default_factory=list)  # key, file shape, model shape
    loaded: int = 0

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    def format(self, limit: int = 12) -> str:
        lines = [f"loaded {self.loaded} tensors"]
        for title, items in (("missing from the file", self.missing), ("unexpected in the file", self.unexpected)):
            if items:
                lines.append(f"{len(items)} {title}:")
                lines += [f"  {k}" for k in items[:limit]]
                if len(items) > limit:
                    lines.append(f"  ... and {len(items) - limit} more")
        if self.mismatched:
            lines.append(f"{len(self.mismatched)} with a different shape (file vs model):")
            lines += [f"  {k}: {tuple(a)} vs {tuple(b)}" for k, a, b in self.mismatched[:limit]]
            if len(self.mismatched) > limit:
                lines.append(f"  ... and {len(self.mismatched) - limit} more")
        return "\n".join(lines)


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a checkpoint file, on CPU, without executing pickled code."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    if path.stat().st_size == 0:
        raise CheckpointError(f"checkpoint {path} is empty")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except (SafetensorError, OSError, ValueError) as exc:
            raise CheckpointError(f"{path} is not a readable safetensors file ({exc})") from exc
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except (zipfile.BadZipFile, EOFError) as exc:
        raise CheckpointError(f"{path} is truncated or corrupt ({exc})") from exc
    except Exception as exc:  # torch raises UnpicklingError/RuntimeError for non-checkpoints
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CheckpointError(
            f"{path} is not a PyTorch checkpoint that can be read safely (weights_only=True): {msg}"
        ) from exc
    if isinstance(obj, dict) and "model" in obj and isinstance(obj["model"], dict):
        obj = obj["model"]
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path} holds no state_dict (expected {{'model': state_dict}} or a state_dict)")
    return obj


def guess_preset(state_dict: dict[str, torch.Tensor]) -> str | None:
    """Which preset a state_dict was most likely saved from (for error messages)."""
    keys = state_dict.keys()
    neck0 = state_dict.get("image_encoder.neck.convs.0.conv.weight")
    if any(k.startswith("spatial_perceiver.") for k in keys):
        return "edgetam"
    if any(k.startswith("image_encoder.trunk.body.") for k in keys):
        return "tinysam2"
    if neck0 is not None and any(k.startswith("image_encoder.trunk.blocks.") for k in keys):
        blocks = {int(k.split(".")[3]) for k in keys if k.startswith("image_encoder.trunk.blocks.")}
        width = neck0.shape[1]
        if width == 768:
            return "sam2.1_hiera_t" if len(blocks) <= 12 else "sam2.1_hiera_s"
        return {896: "sam2.1_hiera_b+", 1152: "sam2.1_hiera_l"}.get(width)
    return None


def load_state_dict_into(model: nn.Module, state_dict: dict[str, torch.Tensor], strict: bool = True) -> LoadReport:
    """Copy matching tensors into ``model``; raise on any mismatch when ``strict``."""
    own = model.state_dict()
    report = LoadReport()
    report.missing = [k for k in own if k not in state_dict]
    report.unexpected = [k for k in state_dict if k not in own]
    usable = {}
    for k, v in state_dict.items():
        if k not in own:
            continue
        if tuple(v.shape) != tuple(own[k].shape):
            report.mismatched.append((k, tuple(v.shape), tuple(own[k].shape)))
            continue
        usable[k] = v.to(own[k].dtype) if v.is_floating_point() else v
    if strict and not report.ok:
        guess = guess_preset(state_dict)
        hint = f"; the file looks like preset {guess!r}" if guess else ""
        raise CheckpointError(f"checkpoint does not fit this model{hint}\n{report.format()}")
    model.load_state_dict(usable, strict=False)
    report.loaded = len(usable)
    return report


def load_checkpoint(model: nn.Module, path: str | Path, strict: bool = True, preset: str | None = None) -> LoadReport:
    """Load ``path`` into ``model`` (strict by default) and return what happened.

    ``preset``: the name ``model`` was built from; refused if the file names another."""
    if preset is not None:
        resolve_preset(preset, path, preset)
    return load_state_dict_into(model, read_state_dict(path), strict=strict)


def state_dict_from_key_listing(tsv_path: str | Path) -> dict[str, torch.Tensor]:
    """Zero tensors with the keys and shapes of a ``key<TAB>(shape)`` listing."""
    out = {}
    for line in Path(tsv_path).read_text().splitlines():
        if not line.strip():
            continue
        key, shape = line.split("\t")
        dims = tuple(int(d) for d in shape.strip("()").replace(" ", "").split(",") if d)
        dtype = torch.int64 if key.endswith("num_batches_tracked") else torch.float32
        out[key] = torch.zeros(dims, dtype=dtype)
    return out
