"""Is the requested torch device usable here? Asked before configure builds anything.

Without it, ``device: cuda:0`` on a machine without CUDA failed deep inside
``model.to()`` with an exception the lifecycle swallowed: no log line at all.
"""
from __future__ import annotations

import torch


def device_problem(name: str) -> str | None:
    """Why ``name`` cannot be used as a torch device on this machine, or None."""
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError) as exc:
        return f"device {name!r} is not a torch device ({exc}); use e.g. cpu or cuda:0"
    if device.type == "cuda":
        if not torch.cuda.is_available():
            built = "without CUDA" if torch.version.cuda is None else f"with CUDA {torch.version.cuda}, but no GPU is visible"
            return f"device {name!r} needs CUDA, but torch {torch.__version__} is built {built}; set device:=cpu"
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            return f"device {name!r} does not exist: {count} CUDA device(s) visible (cuda:0..cuda:{count - 1})"
    elif device.type == "mps" and not torch.backends.mps.is_available():
        return f"device {name!r} needs Apple MPS, which is not available here; set device:=cpu"
    elif device.type not in ("cpu", "cuda", "mps"):
        return f"device {name!r}: only cpu, cuda[:N] and mps are supported"
    return None
