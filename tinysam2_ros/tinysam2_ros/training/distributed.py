"""torchrun data parallel: process group set-up and the module DDP wraps.

Under ``torchrun`` (``WORLD_SIZE`` > 1 in the environment) every process joins one
group: NCCL when training on CUDA (process ``LOCAL_RANK`` takes ``cuda:LOCAL_RANK``),
gloo on CPU. Without torchrun the trainer runs as one process with world size 1.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from .unroll import unroll_clip


@dataclass
class World:
    rank: int = 0
    size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


def join(device: str) -> World:
    """The process group of this torchrun process (or a world of one), and its device."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    dev = torch.device(device)
    if size <= 1:
        return World(0, 1, dev)
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if dev.type == "cuda":
        dev = torch.device("cuda", local)
        torch.cuda.set_device(dev)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    return World(dist.get_rank(), dist.get_world_size(), dev)


def leave(world: World) -> None:
    if world.distributed and dist.is_initialized():
        dist.destroy_process_group()


def all_sum(world: World, values: torch.Tensor) -> torch.Tensor:
    """Sum of ``values`` over all processes (itself in a world of one)."""
    if world.distributed:
        values = values.to(world.device)
        dist.all_reduce(values)
    return values.cpu()


class Unroll(nn.Module):
    """``unroll_clip`` as a module's forward, so DistributedDataParallel sees the call
    (it prepares its gradient reduction in forward) and averages gradients over processes."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, clip, memory, weights, device, teacher_forcing, rng):
        return unroll_clip(self.model, clip, memory, weights, device, teacher_forcing, rng)


def wrap(model: nn.Module, world: World) -> nn.Module:
    """The module to call for a training step: DDP over ``Unroll`` when distributed.
    ``find_unused_parameters``: a clip leaves parts unused (mask prompts skip the prompt
    encoder's point embeddings), and which parts differs between processes."""
    unroll = Unroll(model)
    if not world.distributed:
        return unroll
    ids = [world.device.index] if world.device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(unroll, device_ids=ids, find_unused_parameters=True)
