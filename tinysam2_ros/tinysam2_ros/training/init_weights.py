"""Start a preset from a published checkpoint of another SAM 2-family model.

TinySAM 2 is SAM 2.1's pipeline with EdgeTAM's RepViT image encoder and a compressed
memory: from an EdgeTAM checkpoint its image encoder, prompt encoder, mask decoder and
memory encoder carry over (and EdgeTAM's 2 memory-attention layers of its 4); from SAM
2.1 everything but the Hiera trunk and the neck's input convolutions. The rule is
plain: a tensor is taken when the model has one of the same name and shape (the official
key layout, see ../shared/reference/*.tsv); every other tensor keeps its initialisation.
The report says which tensors came from where, so nothing is transferred silently.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from torch import nn

from ..checkpoint import read_state_dict, resolve_preset


@dataclass
class InitReport:
    checkpoint: str
    from_checkpoint: list[str] = field(default_factory=list)  # taken (same name and shape)
    initialised: list[str] = field(default_factory=list)  # the model's, not in the file
    shape_mismatch: list[str] = field(default_factory=list)  # "key: file shape vs model shape" (initialised)
    unused: list[str] = field(default_factory=list)  # in the file, not in the model

    def summary(self) -> str:
        return (f"{len(self.from_checkpoint)} tensors from {self.checkpoint}, "
                f"{len(self.initialised) + len(self.shape_mismatch)} initialised "
                f"({len(self.shape_mismatch)} of them present with another shape), "
                f"{len(self.unused)} tensors of the checkpoint unused")

    def initialised_groups(self) -> str:
        """The initialised tensors by module (``memory_attention.layers.2 (13)``), for the log."""
        groups: dict[str, int] = {}
        for key in self.initialised + [k.split(":")[0] for k in self.shape_mismatch]:
            parts = key.split(".")
            name = ".".join(parts[:3]) if len(parts) > 3 else ".".join(parts[:-1]) or key
            groups[name] = groups.get(name, 0) + 1
        return ", ".join(f"{k} ({n})" for k, n in groups.items())

    def write(self, path: Path) -> None:
        counts = {"from_checkpoint": len(self.from_checkpoint), "initialised": len(self.initialised),
                  "shape_mismatch": len(self.shape_mismatch), "unused": len(self.unused)}
        Path(path).write_text(json.dumps({"counts": counts, **asdict(self)}, indent=1))


def init_from_checkpoint(model: nn.Module, path: str | Path, preset: str) -> InitReport:
    """Copy every tensor of ``path`` that fits ``model`` (same name and shape).

    A ``tinysam2 train`` file naming another preset is refused (CheckpointError)."""
    resolve_preset(preset, path, preset)
    theirs = read_state_dict(path)
    own = model.state_dict()
    report = InitReport(str(path))
    usable = {}
    for key, value in own.items():
        if key not in theirs:
            report.initialised.append(key)
        elif tuple(theirs[key].shape) != tuple(value.shape):
            report.shape_mismatch.append(f"{key}: {tuple(theirs[key].shape)} vs {tuple(value.shape)}")
        else:
            t = theirs[key]
            usable[key] = t.to(value.dtype) if t.is_floating_point() else t
            report.from_checkpoint.append(key)
    report.unused = [k for k in theirs if k not in own]
    if not usable:
        raise ValueError(f"no tensor of {path} fits preset {preset!r} (no shared name and shape): "
                         "is it a SAM 2-family checkpoint?")
    model.load_state_dict(usable, strict=False)
    return report
