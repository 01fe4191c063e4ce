"""Resumable training state without pickle: tensors in safetensors, the rest in JSON.

``<out>/last.safetensors`` holds the model (``model.<key>``) and the optimizer's
per-parameter tensors (``optim.<index>.<name>``); ``<out>/last.json`` holds the
iteration, the optimizer's parameter groups and any other plain values. The JSON is
written last (both via a rename), so a present JSON always names a complete pair.
Nothing in it depends on the number of processes: any world size can resume it.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

WEIGHTS, META = "last.safetensors", "last.json"


def save_state(out: Path, model: torch.nn.Module, optim: torch.optim.Optimizer, iteration: int,
               extra: dict | None = None) -> None:
    """Write ``last.safetensors`` and ``last.json`` under ``out``."""
    tensors = {f"model.{k}": v.detach().cpu().clone().contiguous() for k, v in model.state_dict().items()}
    opt = optim.state_dict()
    plain: dict[str, dict] = {}
    for idx, entries in opt["state"].items():
        for name, value in entries.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim.{idx}.{name}"] = value.detach().cpu().clone().contiguous()
            else:
                plain.setdefault(str(idx), {})[name] = value
    meta = {"iteration": int(iteration), "param_groups": opt["param_groups"], "optim_plain": plain,
            **(extra or {})}
    out = Path(out)
    save_file(tensors, str(out / (WEIGHTS + ".tmp")))
    os.replace(out / (WEIGHTS + ".tmp"), out / WEIGHTS)
    (out / (META + ".tmp")).write_text(json.dumps(meta, indent=1))
    os.replace(out / (META + ".tmp"), out / META)


def has_state(out: Path) -> bool:
    return (Path(out) / META).is_file() and (Path(out) / WEIGHTS).is_file()


def load_state(out: Path, model: torch.nn.Module, optim: torch.optim.Optimizer) -> dict:
    """Restore model and optimizer from ``out``; returns the JSON (``iteration`` etc.)."""
    out = Path(out)
    meta = json.loads((out / META).read_text())
    tensors = load_file(str(out / WEIGHTS), device="cpu")
    model_sd = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    missing, unexpected = model.load_state_dict(model_sd, strict=False)
    if missing or unexpected:
        raise ValueError(f"{out / WEIGHTS} does not fit this model: {len(missing)} missing tensors "
                         f"({missing[:3]}...), {len(unexpected)} unexpected ({unexpected[:3]}...); "
                         "was it written with another --preset?")
    state: dict[int, dict] = {}
    for k, v in tensors.items():
        if k.startswith("optim."):
            _, idx, name = k.split(".", 2)
            state.setdefault(int(idx), {})[name] = v
    for idx, entries in meta.get("optim_plain", {}).items():
        state.setdefault(int(idx), {}).update(entries)
    optim.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    return meta
