"""SAM 2's training losses: focal + dice on masks, IoU prediction, object score.

For multimask outputs only the candidate with the lowest mask loss is trained
(the others are free to specialise), as in SAM / SAM 2; the IoU head is trained on
every candidate against the IoU that candidate really has.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class LossWeights:
    focal: float = 20.0
    dice: float = 1.0
    iou: float = 1.0
    object_score: float = 1.0
    # SAM 2 trains masks only where the object is present and leaves absent frames to the
    # object score. With this weight > 0 the mask of an absent object is trained towards
    # empty too (same focal + dice mix), so the decoder itself learns not to mark the
    # occluder or look-alike that hides it.
    absent_mask: float = 0.0
    # Weight of ``propagation_loss`` on the image features (0: off, SAM 2's recipe).
    appearance: float = 0.0


def sigmoid_focal_loss(logits: torch.Tensor, target: torch.Tensor, alpha: float = 0.25, gamma: float = 2.0):
    """Per-mask mean focal loss, ``B x M`` for ``B x M x H x W`` inputs."""
    prob = logits.sigmoid()
    ce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    p_t = prob * target + (1 - prob) * (1 - target)
    loss = ce * (1 - p_t) ** gamma
    loss = (alpha * target + (1 - alpha) * (1 - target)) * loss
    return loss.flatten(2).mean(-1)


def dice_loss(logits: torch.Tensor, target: torch.Tensor, eps: float = 1.0):
    """Per-mask dice loss, ``B x M``."""
    prob = logits.sigmoid().flatten(2)
    t = target.flatten(2)
    inter = (prob * t).sum(-1)
    return 1 - (2 * inter + eps) / (prob.sum(-1) + t.sum(-1) + eps)


def mask_iou(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """IoU of thresholded masks with the target, ``B x M`` (no gradient)."""
    pred = (logits > 0).flatten(2)
    t = target.flatten(2) > 0.5
    inter = (pred & t).sum(-1).float()
    union = (pred | t).sum(-1).float()
    return torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))


def frame_loss(
    multimask_logits: torch.Tensor,  # B x M x h x w (low-res, raw)
    ious: torch.Tensor,  # B x M predicted
    object_score_logits: torch.Tensor,  # B x 1
    target: torch.Tensor,  # B x 1 x h x w in {0, 1} (at the logits' resolution)
    w: LossWeights,
) -> dict[str, torch.Tensor]:
    present = (target.flatten(1).sum(-1) > 0).float()  # B
    tgt = target.expand_as(multimask_logits)
    focal = sigmoid_focal_loss(multimask_logits, tgt)
    dice = dice_loss(multimask_logits, tgt)
    combined = w.focal * focal + w.dice * dice
    best = combined.argmin(dim=1, keepdim=True)
    # mask and IoU losses only where the object is present (SAM 2 convention)
    norm = present.sum().clamp(min=1.0)
    focal_l = (focal.gather(1, best).squeeze(1) * present).sum() / norm
    dice_l = (dice.gather(1, best).squeeze(1) * present).sum() / norm
    true_iou = mask_iou(multimask_logits.detach(), tgt)
    iou_l = (F.l1_loss(ious, true_iou, reduction="none").mean(1) * present).sum() / norm
    score_l = F.binary_cross_entropy_with_logits(object_score_logits.squeeze(1), present)
    # absent objects (optional): the emptiest candidate towards empty, averaged over all objects
    absent_l = (combined.gather(1, best).squeeze(1) * (1 - present)).sum() / present.numel()
    total = w.focal * focal_l + w.dice * dice_l + w.iou * iou_l + w.object_score * score_l
    if w.absent_mask > 0:
        total = total + w.absent_mask * absent_l
    return {"total": total, "focal": focal_l, "dice": dice_l, "iou": iou_l, "object_score": score_l,
            "absent_mask": absent_l}


PROPAGATION_TEMPERATURE = 0.1  # of the cosine similarities in ``propagation_loss``
PROPAGATION_MAX_SIDE = 32  # larger grids are average-pooled first: the similarity is N x N


def propagate_labels(features: torch.Tensor, masks: torch.Tensor,
                     temperature: float = PROPAGATION_TEMPERATURE,
                     max_side: int = PROPAGATION_MAX_SIDE) -> tuple[torch.Tensor, torch.Tensor]:
    """Frame 0's labels carried to frames 1.. by appearance alone: each position takes
    the labels of frame 0's positions in proportion to ``softmax(cosine / temperature)``
    of their image features.

    ``features``: T x C x h x w image features (no positional encoding); ``masks``:
    T x O x H x W object masks at any size, averaged over each grid cell (soft labels).
    Returns the propagated labels, (T-1) x K x N, and every frame's own, T x K x N, where
    K = 1 + O (class 0 is the background: what no object covers) and N the grid
    positions. Grids larger than ``max_side`` (the 64 x 64 of 1024-px presets) are
    average-pooled to at most ``max_side`` per side, so the (T-1) x N x N similarities
    stay small.
    """
    h, w = features.shape[-2:]
    grid = (min(h, max_side), min(w, max_side))
    if grid != (h, w):
        features = F.adaptive_avg_pool2d(features, grid)
    f = F.normalize(features.flatten(2), dim=1)  # T x C x N
    objects = F.adaptive_avg_pool2d(masks.float(), grid).flatten(2).clamp(0, 1)  # T x O x N
    background = (1 - objects.sum(1, keepdim=True)).clamp(min=0)
    y = torch.cat([background, objects], 1)  # T x K x N
    attn = torch.softmax(torch.einsum("tcn,cm->tnm", f[1:], f[0]) / temperature, dim=-1)  # (T-1) x N x N
    return torch.einsum("tnm,km->tkn", attn, y[0]), y


def propagation_cross_entropy(propagated: torch.Tensor, own: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of ``propagate_labels``'s outputs, averaged per class, then over the
    classes present, so a small object weighs as much as the background."""
    nll = -(own[1:] * torch.log(propagated.clamp(min=1e-6)))  # (T-1) x K x N
    mass = own[1:].sum(-1)  # (T-1) x K
    per_class = nll.sum(-1) / mass.clamp(min=1e-6)
    present = (mass > 0.5).float()  # at least half a position of the class
    return (per_class * present).sum() / present.sum().clamp(min=1.0)


def propagation_loss(features: torch.Tensor, masks: torch.Tensor,
                     temperature: float = PROPAGATION_TEMPERATURE,
                     max_side: int = PROPAGATION_MAX_SIDE) -> torch.Tensor:
    """A loss that shapes the image features so that an object matches itself across
    frames and not a look-alike, occluder or the background in its place, which the
    memory attention can then use: ``propagation_cross_entropy`` of ``propagate_labels``
    (same arguments). No learned parameters. 0 for a single frame.
    """
    if features.shape[0] < 2:
        return features.sum() * 0.0
    return propagation_cross_entropy(*propagate_labels(features, masks, temperature, max_side))
