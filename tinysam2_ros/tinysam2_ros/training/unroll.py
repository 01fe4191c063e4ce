"""A differentiable run of the tracker over one clip, with the TinySAM 2 memory.

Frame 0 is decoded from the simulated prompts (no memory); every later frame is
conditioned on the prompted frame and the object's memory bank through the same
pooling, token selection and pointer handling the streaming tracker uses
(``memory/assemble.py``), so the model learns to work with compressed memory. The bank
is kept by the tracker's rule too (``memory/quality.py``: quality-gated writes and
quality-ranked slots under the TinySAM 2 memory, the newest frames under SAM 2's), so
a clip longer than the slots teaches the model the memory it will have at inference.
All objects of the clip form the batch.

Teacher forcing (optional, a departure from SAM 2's recipe for training from scratch):
with probability ``teacher_forcing`` a frame's memory and object pointer are written
from its ground-truth mask instead of the prediction. An untrained model predicts
(near) empty masks, so memory written from its own outputs holds no trace of the
object and there is nothing for memory attention to learn to retrieve; ground-truth
memory holds that signal from the first step. Annealed to 0, the model then learns to
live with its own masks, as at inference. (Measured on the tiny preset over ~1000
iterations it made no clear difference; see models/README.md.)
"""
from __future__ import annotations

from collections import defaultdict

import numpy as np
import torch
import torch.nn.functional as F

from ..memory.assemble import assemble_memory
from ..memory.compression import TokenLayout, pool_tokens
from ..memory.config import MemoryConfig
from ..memory.quality import frame_quality, mask_agreement, next_bank
from ..modeling.sam2_model import HeadOutput, SAM2Model
from ..tracking.preprocess import preprocess_mask, preprocess_rgb, scale_points
from .data import Clip
from .losses import LossWeights, frame_loss, propagation_loss


def _layout(model: SAM2Model) -> TokenLayout:
    sp = model.spatial_perceiver
    if sp is not None:
        side = int(round(sp.num_latents_2d ** 0.5))
        return TokenLayout(sp.num_latents, side, side)
    return TokenLayout(0, model.feat_size, model.feat_size)


def _cat_heads(outs: list[HeadOutput]) -> HeadOutput:
    return HeadOutput(*[torch.cat([getattr(o, f) for o in outs], 0) for f in HeadOutput.__dataclass_fields__])


def unroll_clip(model: SAM2Model, clip: Clip, memory: MemoryConfig, weights: LossWeights,
                device: torch.device, teacher_forcing: float = 0.0,
                rng: np.random.Generator | None = None,
                banks_out: list[list[tuple[int, ...]]] | None = None) -> dict[str, torch.Tensor]:
    """Mean losses over the clip's frames (and objects), with gradients.

    ``teacher_forcing``: probability that a predicted frame's memory is written from its
    ground-truth mask (drawn per frame from ``rng``). ``banks_out``, when given, receives
    for every tracked frame each object's memory bank after that frame (clip indices)."""
    if not 0.0 <= teacher_forcing <= 1.0:
        raise ValueError(f"teacher_forcing must lie in [0, 1], got {teacher_forcing}")
    rng = rng if rng is not None else np.random.default_rng()
    t_len, h, w = clip.frames.shape[:3]
    size, low = model.image_size, model.low_res_size
    if clip.images is not None:  # made by a DataLoader worker (pinned: the copy overlaps)
        images = clip.images.to(device, non_blocking=True)
    else:
        images = torch.cat([preprocess_rgb(f, size) for f in clip.frames]).to(device)
    feats = model.encode_image(images)
    # sparse annotations (YouTube-VOS): unannotated frames are tracked but carry no loss
    annotated = np.ones(t_len, bool) if clip.annotated is None else np.asarray(clip.annotated, bool)
    targets = torch.from_numpy(clip.masks.astype(np.float32)).to(device)  # T x O x H x W
    targets_low = (F.interpolate(targets, size=(low, low), mode="area") > 0.5).float()

    def written(t: int, pix: torch.Tensor, hr: list[torch.Tensor], predicted: HeadOutput) -> HeadOutput:
        """What frame ``t`` writes to memory: its prediction, or (teacher forcing) its truth."""
        if teacher_forcing <= 0.0 or not annotated[t] or rng.random() >= teacher_forcing:
            return predicted
        return model.mask_as_output(pix, hr, preprocess_mask(targets[t], size))

    n_obj = targets.shape[1]
    layout = _layout(model)
    factor = memory.pool_factor if memory.compressed else 1
    const = model.constants()
    _, mem_pos, mem_coords, _ = pool_tokens(const["memory_pos"][None], const["memory_pos"][None],
                                            const["memory_coords"], layout, factor)
    mem_pos = mem_pos[0]

    def frame_feats(t: int):
        return (feats.pix_feat[t : t + 1].expand(n_obj, -1, -1, -1),
                [x[t : t + 1].expand(n_obj, -1, -1, -1) for x in feats.high_res])

    # frame 0: from the prompts alone (each object separately: prompts differ in length)
    pix0, hr0 = frame_feats(0)
    outs = []
    for k, p in enumerate(clip.prompts):
        if p.kind == "mask":
            m = preprocess_mask(torch.from_numpy(np.ascontiguousarray(p.mask))[None].to(device), size)
            outs.append(model.mask_as_output(pix0[k : k + 1], [x[k : k + 1] for x in hr0], m))
        else:
            coords = torch.from_numpy(scale_points(p.points, (h, w), size))[None].to(device)
            labels = torch.from_numpy(p.labels)[None].to(device)
            pix = model.condition_without_memory(pix0[k : k + 1])
            outs.append(model.forward_heads(pix, [x[k : k + 1] for x in hr0], coords, labels, None,
                                            model.use_multimask(True, len(p.labels))))
    losses = []
    decoded = [k for k, p in enumerate(clip.prompts) if p.kind != "mask"]
    for k in decoded:  # a mask prompt is its own output: nothing to learn on frame 0
        o = outs[k]
        losses.append(frame_loss(o.low_res_multimasks, o.ious, o.object_score_logits, targets_low[0, k : k + 1, None],
                                 weights))
    out = _cat_heads([HeadOutput(o.low_res_masks, o.best_iou[:, None], o.low_res_masks, o.high_res_masks, o.obj_ptr,
                                 o.object_score_logits, o.best_iou) for o in outs])
    if decoded:  # frame 0 decoded from boxes or clicks may be written from its truth too
        out = written(0, pix0, hr0, out)
    memories = [_encode(model, pix0, out, layout, factor)]
    pointers = [out.obj_ptr]

    # each object's memory bank, kept by the tracker's own rule (memory/quality.py): with
    # the TinySAM 2 rule objects may keep different frames, so they are decoded in
    # groups that share a bank, as the streaming tracker batches them
    banks: list[tuple[int, ...]] = [() for _ in range(n_obj)]
    quality: list[dict[int, float]] = [{} for _ in range(n_obj)]
    previous_logits = out.low_res_masks.detach()
    budget = memory.token_budget if memory.compressed else 0
    max_rel = model.num_maskmem - 1
    for t in range(1, t_len):
        pix, hr = frame_feats(t)
        offsets = [t] + list(range(1, t))  # prompted frame, then the previous frames
        ptrs = torch.stack([pointers[0]] + [pointers[t - d] for d in range(1, t)], dim=1)
        groups: dict[tuple[int, ...], list[int]] = defaultdict(list)
        for k, bank in enumerate(banks):
            groups[bank].append(k)
        order, parts = [], []
        for bank, objs in groups.items():
            idx = torch.tensor(objs, device=device)
            stacked = torch.stack([memories[0][idx]] + [memories[f][idx] for f in bank], dim=1)
            t_rels = torch.tensor([0] + [min(t - f, max_rel) for f in bank], device=device).expand(len(objs), -1)
            mem, mpos, coords, n_ptr = assemble_memory(model, stacked, t_rels, mem_pos, mem_coords, budget,
                                                       memory.similarity, ptrs[idx], offsets[: ptrs.shape[1]],
                                                       model.max_obj_ptrs_in_encoder)
            cond = model.condition_on_memory(pix[idx], mem, mpos, n_ptr, memory_coords=coords)
            parts.append(model.forward_heads(cond, [x[idx] for x in hr], multimask_output=model.use_multimask(False, 0)))
            order += objs
        o = _cat_heads(parts)
        if order != list(range(n_obj)):
            back = torch.tensor(sorted(range(n_obj), key=order.__getitem__), device=device)
            o = HeadOutput(*[getattr(o, f)[back] for f in HeadOutput.__dataclass_fields__])
        if annotated[t]:
            losses.append(frame_loss(o.low_res_multimasks, o.ious, o.object_score_logits, targets_low[t][:, None],
                                     weights))
        for k in range(n_obj):
            logits = o.low_res_masks[k].detach()
            q = frame_quality(float(o.object_score_logits[k, 0].detach()), float(o.best_iou[k].detach()),
                              mask_agreement(logits, previous_logits[k]))
            quality[k][t] = q
            banks[k] = next_bank(banks[k], quality[k], t, memory, max_rel)
        if banks_out is not None:
            banks_out.append(list(banks))
        previous_logits = o.low_res_masks.detach()
        o = written(t, pix, hr, o)
        memories.append(_encode(model, pix, o, layout, factor))
        pointers.append(o.obj_ptr)
    keys = losses[0].keys()
    result = {k: torch.stack([l[k] for l in losses]).mean() for k in keys}
    if weights.appearance > 0:
        keep = torch.from_numpy(np.nonzero(annotated)[0]).to(device)
        result["appearance"] = propagation_loss(feats.pix_feat[keep], targets[keep])
        result["total"] = result["total"] + weights.appearance * result["appearance"]
    return result


def _encode(model: SAM2Model, pix: torch.Tensor, out: HeadOutput, layout: TokenLayout, factor: int) -> torch.Tensor:
    mem = model.encode_memory(pix, out.high_res_masks, out.object_score_logits, is_mask_from_pts=False)
    tokens, _, _, _ = pool_tokens(mem.features, mem.features, mem.coords, layout, factor)
    return tokens
