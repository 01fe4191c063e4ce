"""A differentiable run of the tracker over one clip, with the TinySAM 2 memory.

Frame 0 is decoded from the simulated prompts (no memory); every later frame is
conditioned on the prompted frame and the object's memory bank through the streaming
tracker's own object memory (``memory/object_memory.py``: pooling, token selection,
pointers, bank rule), so the model learns to work with the memory it tracks with. The bank
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

import numpy as np
import torch
import torch.nn.functional as F

from ..memory.config import MemoryConfig
from ..memory.object_memory import ObjectMemory, ObjectTrack
from ..modeling.sam2_model import HeadOutput, SAM2Model
from ..tracking.preprocess import preprocess_mask, preprocess_rgb, scale_points
from .data import Clip
from .losses import LossWeights, frame_loss, propagation_loss


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
    images = torch.cat([preprocess_rgb(f, size) for f in clip.frames]).to(device)
    feats = model.encode_image(images)
    targets = torch.from_numpy(clip.masks.astype(np.float32)).to(device)  # T x O x H x W
    targets_low = (F.interpolate(targets, size=(low, low), mode="area") > 0.5).float()

    def written(t: int, pix: torch.Tensor, hr: list[torch.Tensor], predicted: HeadOutput) -> HeadOutput:
        """What frame ``t`` writes to memory: its prediction, or (teacher forcing) its truth."""
        if teacher_forcing <= 0.0 or rng.random() >= teacher_forcing:
            return predicted
        return model.mask_as_output(pix, hr, preprocess_mask(targets[t], size))

    n_obj = targets.shape[1]
    # the tracker's object memory (memory/object_memory.py), features kept in float32 with gradients
    mem_io = ObjectMemory(model, memory, store_dtype=None)

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
    tracks = [ObjectTrack(k) for k in range(n_obj)]
    for track, entry in zip(tracks, mem_io.entries(out, [0] * n_obj, mem_io.encode(pix0, out, False))):
        track.cond[0] = entry

    # each object's memory bank, kept by the tracker's own rule (memory/quality.py): with
    # the TinySAM 2 rule objects may keep different frames, so they are decoded in
    # groups that share a memory layout, as the streaming tracker batches them
    for t in range(1, t_len):
        pix, hr = frame_feats(t)
        order, parts = [], []
        for objs in mem_io.groups(tracks, t):
            idx = torch.tensor(objs, device=device)
            cond = mem_io.condition([tracks[k] for k in objs], pix[idx], t)
            parts.append(model.forward_heads(cond, [x[idx] for x in hr], multimask_output=model.use_multimask(False, 0)))
            order += objs
        o = _cat_heads(parts)
        if order != list(range(n_obj)):
            back = torch.tensor(sorted(range(n_obj), key=order.__getitem__), device=device)
            o = HeadOutput(*[getattr(o, f)[back] for f in HeadOutput.__dataclass_fields__])
        losses.append(frame_loss(o.low_res_multimasks, o.ious, o.object_score_logits, targets_low[t][:, None], weights))
        entries = mem_io.entries(o, [t] * n_obj)
        for track, entry in zip(tracks, entries):
            mem_io.write(track, entry, t)
        if banks_out is not None:
            banks_out.append([track.bank for track in tracks])
        o = written(t, pix, hr, o)
        tokens = mem_io.encode(pix, o, False)
        for k, entry in enumerate(entries):  # memory and pointer from what is written (teacher forcing)
            entry.features, entry.obj_ptr = tokens[k], o.obj_ptr[k]
    keys = losses[0].keys()
    result = {k: torch.stack([l[k] for l in losses]).mean() for k in keys}
    if weights.appearance > 0:
        result["appearance"] = propagation_loss(feats.pix_feat, targets)
        result["total"] = result["total"] + weights.appearance * result["appearance"]
    return result
