"""``tinysam2 train``: train or fine-tune a preset on DAVIS-layout videos.

Each iteration samples a clip, unrolls the tracker over it with the memory settings
of the preset (or the overrides), and takes an AdamW step on SAM 2's losses.
Resumable: ``<out>/last.pt`` holds model, optimizer and iteration; the sampling
is derived from (seed, iteration), so a resumed run continues the same sequence.
"""
from __future__ import annotations

import csv
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file
from tqdm import tqdm

from ..checkpoint import PRESET_METADATA_KEY, load_checkpoint
from ..memory.config import MemoryConfig
from ..modeling.build import build_model
from ..modeling.presets import get_preset
from .data import ClipSampler
from .losses import LossWeights
from .unroll import unroll_clip

LOG_FIELDS = ("iteration", "loss", "focal", "dice", "iou", "object_score", "lr", "seconds", "appearance")


@dataclass
class TrainConfig:
    data_root: str
    out_dir: str
    preset: str = "tiny_norm"
    init_checkpoint: str | None = None  # fine-tune from these weights
    iterations: int = 2000
    # From scratch, 2e-3 kept the model on a plateau where it segments every salient
    # object and ignores its memory; 5e-4 left it (models/README.md, item 6).
    lr: float = 5e-4
    weight_decay: float = 0.01
    warmup: int = 100
    clip_len: int = 6
    max_stride: int = 2  # clips take every 1st .. max_stride-th frame (faster apparent motion)
    max_objects: int = 3
    # Share of clips placed around an event (occlusion, exit) found in the annotations
    # (training/data.py); the demo model's failures start at such events (models/README.md).
    event_clips: float = 0.0
    # Share of clips with one sudden camera move inside (ClipSampler jump_prob), and its
    # largest offset as a fraction of the frame size.
    camera_jumps: float = 0.0
    max_jump: float = 0.25
    grad_clip: float = 1.0
    # SAM 2 weighs focal 20 : dice 1. Trained from scratch on small objects (a few % of the
    # frame) that mix collapses tracked frames to empty masks, which the focal term favours;
    # a heavier dice term keeps them (see models/README.md for the measurement).
    focal_weight: float = 20.0
    dice_weight: float = 10.0
    absent_mask_weight: float = 0.0  # train absent objects' masks towards empty (losses.py)
    # Weight of the label-propagation loss on the image features (losses.py): teaches the
    # trunk to tell an object from look-alikes by appearance, which mask losses alone
    # teach only at the rare frames where a look-alike passes (models/README.md, items
    # 11-12: +0.03-0.06 J&F from scratch). 0 = SAM 2's losses only.
    appearance_weight: float = 1.0
    # P(mask), P(box), P(clicks) on the first frame. Masks only: a mask-prompted first
    # frame writes a clean memory, so all the signal trains tracking. Measured on a
    # validation set after two 46-min runs (models/README.md, item 7), masks only beat
    # 0.7,0.15,0.15 with mask prompts (J&F 0.653 vs 0.486) and even with boxes (0.234 vs 0.142).
    prompt_mix: tuple[float, float, float] = (1.0, 0.0, 0.0)
    # Scheduled teacher forcing (see training/unroll.py): the probability that a frame's
    # memory is written from its ground truth starts here and falls linearly to 0 at
    # ``teacher_forcing_until`` x iterations. 0 = SAM 2's recipe (fine-tuning).
    teacher_forcing: float = 0.0
    teacher_forcing_until: float = 0.6
    seed: int = 0
    device: str = "cpu"
    time_budget_min: float | None = None  # stop (and save) after this many minutes
    save_every: int = 100
    threads: int | None = None
    # Keep BatchNorm statistics fixed (a plain affine): batch statistics over the frames of
    # one clip do not transfer to streaming inference, one frame at a time with running
    # statistics (measured: training dice 0.36 vs 0.73 in eval mode on the same clips).
    freeze_bn: bool = True
    bn_recalibration_clips: int = 64  # clips used to re-estimate BatchNorm statistics at the end
    # From scratch, fixed BatchNorm with its default statistics (mean 0, var 1) lets the
    # image signal fade layer by layer (measured in the untrained tiny trunk: feature std
    # 0.14 after the stem, 0.004 at the last stage, below the neck's biases). Estimating the
    # statistics from this many clips before the first step normalises every layer.
    bn_init_clips: int = 16
    # Fixed statistics stop normalising once the weights move: trained from scratch for
    # 7000 iterations, the tiny model's image features grew from std 0.11 to 3.3e3,
    # far above the prompt and mask embeddings (std ~1). Re-estimating the statistics
    # (from ``bn_init_clips`` clips) every this many iterations keeps the trunk
    # normalised (std 11 after the same run), but that run scored lower on held-out
    # videos (J&F 0.128 vs 0.195, see models/README.md), so it is off by default.
    bn_refresh_every: int = 0
    # From scratch, bias the memory cross-attention's queries and keys so that RoPE makes
    # it attend locally from step 1 (RoPEAttention.init_locality_prior); 0 = PyTorch's
    # default init. Ignored when fine-tuning (--init) or resuming.
    locality_prior: float = 3.5


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
    """Run training; returns the path of the final weights (``<out>/model.safetensors``)."""
    for name in ("focal_weight", "dice_weight", "absent_mask_weight", "appearance_weight"):
        if not getattr(cfg, name) >= 0:
            raise ValueError(f"{name} must be >= 0, got {getattr(cfg, name)}")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    device = torch.device(cfg.device)
    preset = get_preset(cfg.preset)
    memory = MemoryConfig.from_dict({**preset["memory"], **(memory_overrides or {})})
    torch.manual_seed(cfg.seed)
    model = build_model(preset).to(device)
    if cfg.init_checkpoint:
        load_checkpoint(model, cfg.init_checkpoint, preset=cfg.preset)
    optim = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    start = 0
    state_path = out / "last.pt"
    if state_path.exists():
        state = torch.load(state_path, map_location=device, weights_only=True)
        model.load_state_dict(state["model"])
        optim.load_state_dict(state["optimizer"])
        start = int(state["iteration"])
        log(f"resuming from {state_path} at iteration {start}")
    sampler = ClipSampler(cfg.data_root, clip_len=cfg.clip_len, max_objects=cfg.max_objects, max_stride=cfg.max_stride,
                          prompt_probs=cfg.prompt_mix, event_prob=cfg.event_clips,
                          jump_prob=cfg.camera_jumps, max_jump=cfg.max_jump)
    if start == 0 and not cfg.init_checkpoint and cfg.locality_prior > 0:
        for layer in model.memory_attention.layers:
            layer.cross_attn_image.init_locality_prior(cfg.locality_prior)
        log(f"memory cross-attention initialised with a locality prior of amplitude {cfg.locality_prior}")
    if start == 0 and not cfg.init_checkpoint and cfg.bn_init_clips > 0:
        recalibrate_batchnorm(model, sampler, cfg.bn_init_clips, cfg.seed + 1, device)
        log(f"BatchNorm statistics initialised from {cfg.bn_init_clips} clips")
    weights = LossWeights(focal=cfg.focal_weight, dice=cfg.dice_weight, absent_mask=cfg.absent_mask_weight,
                          appearance=cfg.appearance_weight)
    log_path = out / "train_log.csv"
    new_log = not log_path.exists() or start == 0
    with open(log_path, "w" if new_log else "a", newline="") as fh:
        writer = csv.writer(fh)
        if new_log:
            writer.writerow(LOG_FIELDS)
            (out / "train_config.json").write_text(
                __import__("json").dumps({"train": asdict(cfg), "memory": memory.to_dict()}, indent=2))
        t0 = time.time()
        model.train()
        freeze_bn = cfg.freeze_bn
        if freeze_bn:
            for bn in _batchnorms(model):
                bn.eval()
        bar = tqdm(range(start, cfg.iterations), initial=start, total=cfg.iterations, desc="train")
        it = start
        for it in bar:
            rng = np.random.default_rng([cfg.seed, it])
            clip = sampler.sample(rng)
            lr = _lr_at(cfg, it)
            for group in optim.param_groups:
                group["lr"] = lr
            losses = unroll_clip(model, clip, memory, weights, device, teacher_forcing_at(cfg, it), rng)
            optim.zero_grad(set_to_none=True)
            losses["total"].backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            optim.step()
            if freeze_bn and cfg.bn_refresh_every > 0 and (it + 1) % cfg.bn_refresh_every == 0:
                recalibrate_batchnorm(model, sampler, cfg.bn_init_clips, cfg.seed + it + 1, device)
            vals = {k: float(v.detach()) for k, v in losses.items()}
            writer.writerow([it + 1, f"{vals['total']:.5f}", f"{vals['focal']:.5f}", f"{vals['dice']:.5f}",
                             f"{vals['iou']:.5f}", f"{vals['object_score']:.5f}", f"{lr:.6f}",
                             f"{time.time() - t0:.1f}", f"{vals.get('appearance', 0.0):.5f}"])
            bar.set_postfix(loss=f"{vals['total']:.3f}", dice=f"{vals['dice']:.3f}")
            done = it + 1
            over_time = cfg.time_budget_min is not None and time.time() - t0 > cfg.time_budget_min * 60
            if done % cfg.save_every == 0 or done == cfg.iterations or over_time:
                fh.flush()
                torch.save({"model": model.state_dict(), "optimizer": optim.state_dict(), "iteration": done},
                           state_path)
            if over_time:
                log(f"time budget of {cfg.time_budget_min} min reached at iteration {done}")
                break
    if not freeze_bn:
        recalibrate_batchnorm(model, sampler, cfg.bn_recalibration_clips, cfg.seed, device)
    model.eval()
    final = out / "model.safetensors"
    save_weights(model, final, preset=cfg.preset)
    log(f"saved {final} ({final.stat().st_size / 1e6:.2f} MB) after {it + 1} iterations")
    return final
