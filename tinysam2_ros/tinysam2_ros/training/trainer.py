"""``tinysam2 train``: train or fine-tune a preset on videos (DAVIS, YouTube-VOS, MOSE, SA-V).

Each iteration draws ``batch_clips`` clips, unrolls the tracker over each with the memory
settings of the preset (or the overrides) and takes one AdamW step on SAM 2's losses,
averaged over the clips. Under torchrun the clips of an iteration are split over the
processes and DistributedDataParallel averages the gradients, so N processes take the
steps one process takes with the same global batch; process 0 logs, validates and saves.
Resumable with any number of processes from ``<out>/last.safetensors`` + ``last.json``
(state.py): the clips are derived from (seed, iteration, clip), loader.py.
"""
from __future__ import annotations

import csv
import json
import math
import time
from contextlib import nullcontext
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file
from tqdm import tqdm

from ..checkpoint import PRESET_METADATA_KEY
from ..memory.config import MemoryConfig
from ..modeling.build import build_model
from ..modeling.presets import get_preset
from .config import TrainConfig
from .data import ClipSampler
from .distributed import World, all_sum, join, leave, wrap
from .init_weights import init_from_checkpoint
from .loader import RankClips, clip_loader
from .losses import LossWeights
from .state import has_state, load_state, save_state
from .unroll import unroll_clip
from .videosets import open_videoset

__all__ = ["TrainConfig", "train", "recalibrate_batchnorm", "teacher_forcing_at", "save_weights"]

LOG_FIELDS = ("iteration", "loss", "focal", "dice", "iou", "object_score", "lr", "seconds", "appearance")
LOSS_KEYS = ("total", "focal", "dice", "iou", "object_score", "appearance")
AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def _batchnorms(model) -> list[torch.nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]


@torch.no_grad()
def recalibrate_batchnorm(model, sampler: ClipSampler, clips: int, seed: int, device) -> None:
    """Re-estimate BatchNorm statistics with the final weights (a cumulative average over
    ``clips`` training clips): running averages taken while the weights moved lag behind.
    Each BatchNorm keeps its momentum and train/eval mode."""
    from ..tracking.preprocess import preprocess_rgb

    bns = _batchnorms(model)
    if not bns or clips <= 0:
        return
    saved = [(bn.momentum, bn.training) for bn in bns]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None
        bn.train()
    for i in range(clips):
        clip = sampler.sample(np.random.default_rng([seed, 10**9 + i]))
        images = torch.cat([preprocess_rgb(f, model.image_size) for f in clip.frames]).to(device)
        model.image_encoder(images)
    for bn, (momentum, training) in zip(bns, saved):
        bn.momentum = momentum
        bn.train(training)


def _lr_at(cfg: TrainConfig, it: int) -> float:
    """Linear warm-up (at most a tenth of a short run), then cosine decay to 5 % of the peak."""
    warmup = max(1, min(cfg.warmup, cfg.iterations // 10))
    if it < warmup:
        return cfg.lr * (it + 1) / warmup
    progress = (it - warmup) / max(cfg.iterations - warmup, 1)
    return cfg.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0))))


def teacher_forcing_at(cfg: TrainConfig, it: int) -> float:
    end = cfg.teacher_forcing_until * cfg.iterations
    if cfg.teacher_forcing <= 0 or end <= 0:
        return 0.0
    return cfg.teacher_forcing * max(0.0, 1.0 - it / end)


def save_weights(model, path: Path, dtype: torch.dtype = torch.float16, preset: str | None = None) -> None:
    """Deployable weights as safetensors (half precision by default; the loader upcasts),
    naming ``preset`` in the metadata so tools build the right model for them."""
    sd = {k: (v.to(dtype) if v.is_floating_point() else v).contiguous() for k, v in model.state_dict().items()}
    save_file(sd, str(path), metadata={PRESET_METADATA_KEY: preset} if preset else None)


def train(cfg: TrainConfig, memory_overrides: dict | None = None, log=print) -> Path:
    """Run training (one process, or this process's share under torchrun); returns the
    path of the final weights (``<out>/model.safetensors``)."""
    world = join(cfg.device)
    try:
        return _train(cfg, memory_overrides or {}, log if world.main else (lambda *_: None), world)
    finally:
        leave(world)


def _workers(cfg: TrainConfig, device: torch.device) -> int:
    return cfg.workers if cfg.workers is not None else (4 if device.type == "cuda" else 0)


def _frozen_bn_train_mode(model, freeze_bn: bool) -> None:
    model.train()
    if freeze_bn:
        for bn in _batchnorms(model):
            bn.eval()


@torch.no_grad()
def validation_loss(model, sampler: ClipSampler, memory: MemoryConfig, weights: LossWeights, device,
                    clips: int, amp: str) -> float:
    """Mean loss over ``clips`` fixed clips of a held-out set (the same clips every time)."""
    model.eval()
    dtype = AMP_DTYPES.get(amp)
    total = 0.0
    for k in range(clips):
        rng = np.random.default_rng([7919, k])
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            total += float(unroll_clip(model, sampler.sample(rng), memory, weights, device, 0.0, rng)["total"])
    return total / clips


def _train(cfg: TrainConfig, memory_overrides: dict, log, world: World) -> Path:
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if cfg.batch_clips % world.size:
        raise ValueError(f"batch_clips ({cfg.batch_clips}) must be a multiple of the number of processes "
                         f"({world.size})")
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    device = world.device
    preset = get_preset(cfg.preset)
    memory = MemoryConfig.from_dict({**preset["memory"], **memory_overrides})
    torch.manual_seed(cfg.seed)
    model = build_model(preset).to(device)
    if world.distributed:
        log(f"{world.size} processes ({'nccl' if device.type == 'cuda' else 'gloo'}), "
            f"{cfg.batch_clips // world.size} of {cfg.batch_clips} clips per iteration each")
    if (out / "last.pt").exists() and not has_state(out):
        raise ValueError(f"{out / 'last.pt'} is a pickled state of an older version, which is not read: "
                         "train into a new --out (or start again with --init OUT/model.safetensors)")
    resuming = has_state(out)
    if cfg.init_checkpoint and not resuming:
        report = init_from_checkpoint(model, cfg.init_checkpoint, cfg.preset)
        log(report.summary() + f"; listed in {out / 'init_report.json'}")
        if report.initialised or report.shape_mismatch:
            log(f"initialised, not from the checkpoint: {report.initialised_groups()}")
        if world.main:
            report.write(out / "init_report.json")
    if cfg.freeze_image_encoder:
        for p in model.image_encoder.parameters():
            p.requires_grad_(False)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optim = torch.optim.AdamW(trainable, lr=cfg.lr, weight_decay=cfg.weight_decay)
    dtype = AMP_DTYPES.get(cfg.amp)
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.amp == "fp16")
    start = 0
    if resuming:
        meta = load_state(out, model, optim)
        if meta.get("scaler") and cfg.amp == "fp16":
            scaler.load_state_dict(meta["scaler"])
        start = int(meta["iteration"])
        log(f"resuming from {out / 'last.json'} at iteration {start} (saved by {meta.get('world_size', 1)} "
            f"process(es), continued by {world.size})")
    sampler = ClipSampler(open_videoset(cfg.data_root, cfg.data_format), clip_len=cfg.clip_len,
                          max_objects=cfg.max_objects, max_stride=cfg.max_stride, prompt_probs=cfg.prompt_mix,
                          event_prob=cfg.event_clips, jump_prob=cfg.camera_jumps, max_jump=cfg.max_jump)
    if start == 0 and not cfg.init_checkpoint and cfg.locality_prior > 0:
        for layer in model.memory_attention.layers:
            layer.cross_attn_image.init_locality_prior(cfg.locality_prior)
        log(f"memory cross-attention initialised with a locality prior of amplitude {cfg.locality_prior}")
    if start == 0 and not cfg.init_checkpoint and cfg.bn_init_clips > 0:
        recalibrate_batchnorm(model, sampler, cfg.bn_init_clips, cfg.seed + 1, device)
        log(f"BatchNorm statistics initialised from {cfg.bn_init_clips} clips")
    val = None
    if cfg.val_data and world.main:
        val = ClipSampler(open_videoset(cfg.val_data, "auto"), clip_len=cfg.clip_len, max_objects=cfg.max_objects,
                          max_stride=1, prompt_probs=cfg.prompt_mix)
    weights = LossWeights(focal=cfg.focal_weight, dice=cfg.dice_weight, absent_mask=cfg.absent_mask_weight,
                          appearance=cfg.appearance_weight)
    net = wrap(model, world)
    per = cfg.batch_clips // world.size
    loader = iter(clip_loader(sampler, cfg.seed, model.image_size,
                              RankClips(start, cfg.iterations, cfg.batch_clips, world.rank, world.size),
                              _workers(cfg, device), pin=device.type == "cuda"))
    log_path = out / "train_log.csv"
    new_log = not log_path.exists() or start == 0
    fh = open(log_path, "w" if new_log else "a", newline="") if world.main else None
    writer = csv.writer(fh) if fh else None
    if writer and new_log:
        writer.writerow(LOG_FIELDS)
        (out / "train_config.json").write_text(json.dumps(
            {"train": asdict(cfg), "memory": memory.to_dict(), "world_size": world.size}, indent=2))
    t0 = time.time()
    _frozen_bn_train_mode(model, cfg.freeze_bn)
    bar = tqdm(range(start, cfg.iterations), initial=start, total=cfg.iterations, desc="train",
               disable=not world.main)
    it = start - 1
    try:
        for it in bar:
            lr = _lr_at(cfg, it)
            for group in optim.param_groups:
                group["lr"] = lr
            optim.zero_grad(set_to_none=True)
            sums = torch.zeros(len(LOSS_KEYS), dtype=torch.float64)
            for j in range(per):
                key, clip, rng = next(loader)
                assert key[0] == it, f"loader out of step: clip {key} at iteration {it}"
                last = j == per - 1
                with (net.no_sync() if world.distributed and not last else nullcontext()):
                    with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                        losses = net(clip, memory, weights, device, teacher_forcing_at(cfg, it), rng)
                    scaler.scale(losses["total"] / per).backward()
                sums += torch.tensor([float(losses[k].detach()) if k in losses else 0.0 for k in LOSS_KEYS],
                                     dtype=torch.float64)
            scaler.unscale_(optim)
            torch.nn.utils.clip_grad_norm_(trainable, cfg.grad_clip)
            scaler.step(optim)
            scaler.update()
            if cfg.freeze_bn and cfg.bn_refresh_every > 0 and (it + 1) % cfg.bn_refresh_every == 0:
                recalibrate_batchnorm(model, sampler, cfg.bn_init_clips, cfg.seed + it + 1, device)
                _frozen_bn_train_mode(model, True)
            vals = dict(zip(LOSS_KEYS, (all_sum(world, sums) / cfg.batch_clips).tolist()))
            done = it + 1
            over_time = cfg.time_budget_min is not None and time.time() - t0 > cfg.time_budget_min * 60
            stop = cfg.stop_at is not None and done >= cfg.stop_at
            if cfg.time_budget_min is not None and world.distributed:  # process 0's clock decides for all
                over_time = bool(all_sum(world, torch.tensor([float(over_time and world.main)]))[0] > 0)
            if not world.main:
                if over_time or stop:
                    break
                continue
            writer.writerow([done, f"{vals['total']:.5f}", f"{vals['focal']:.5f}", f"{vals['dice']:.5f}",
                             f"{vals['iou']:.5f}", f"{vals['object_score']:.5f}", f"{lr:.6f}",
                             f"{time.time() - t0:.1f}", f"{vals['appearance']:.5f}"])
            bar.set_postfix(loss=f"{vals['total']:.3f}", dice=f"{vals['dice']:.3f}")
            end = done == cfg.iterations or over_time or stop
            if done % cfg.save_every == 0 or end:
                fh.flush()
                save_state(out, model, optim, done, {"world_size": world.size, "scaler": scaler.state_dict(),
                                                     "preset": cfg.preset})
            if val is not None and ((cfg.val_every and done % cfg.val_every == 0) or end):
                loss = validation_loss(model, val, memory, weights, device, cfg.val_clips, cfg.amp)
                _frozen_bn_train_mode(model, cfg.freeze_bn)
                new_val = not (out / "val_log.csv").exists()
                with open(out / "val_log.csv", "a", newline="") as vh:
                    if new_val:
                        vh.write("iteration,val_loss\n")
                    vh.write(f"{done},{loss:.5f}\n")
                log(f"iteration {done}: validation loss {loss:.4f} over {cfg.val_clips} clips of {cfg.val_data}")
            if over_time:
                log(f"time budget of {cfg.time_budget_min} min reached at iteration {done}")
            if over_time or stop:
                break
    finally:
        if fh:
            fh.close()
    final = out / "model.safetensors"
    if world.main:
        if not cfg.freeze_bn:
            recalibrate_batchnorm(model, sampler, cfg.bn_recalibration_clips, cfg.seed, device)
        model.eval()
        save_weights(model, final, preset=cfg.preset)
        log(f"saved {final} ({final.stat().st_size / 1e6:.2f} MB) after {it + 1} iterations")
    if world.distributed:
        torch.distributed.barrier()
    return final
