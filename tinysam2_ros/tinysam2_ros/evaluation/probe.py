"""``tinysam2 probe``: health check of a trained model.

Are its features normalised, do prompts matter, do its features tell objects apart?
A model whose image features have grown far beyond its prompt and mask embeddings
(std ~1) decodes the same mask whatever the box, and tracks the same mask whatever
the memory. This prints the feature scale and how much the first-frame mask and the
next frame's tracked mask change between two objects of one DAVIS-layout sequence.
Then, over every sequence, how well the image features alone carry the first frame's
masks to later frames (``training.losses.propagate_labels``, no memory, no position):
the loss and the share of object positions that get their own object's label.
"""
from __future__ import annotations

import argparse
import sys

import numpy as np
import torch
from PIL import Image

from .davis import annotation_paths, first_annotations, list_sequences, load_annotation, load_frames, prompt_kwargs


@torch.no_grad()
def appearance_match(model, root, step: int = 10) -> tuple[float, float, int]:
    """Mean propagation loss from frame 0 to every ``step``-th annotated frame, the
    share of object positions (feature grid cells mostly inside an object) whose
    propagated label is that object, and how many such positions were scored."""
    from ..tracking.preprocess import preprocess_rgb
    from ..training.losses import propagate_labels, propagation_cross_entropy

    losses, right, total = [], 0, 0
    for seq in list_sequences(root):
        frames, annotated = load_frames(root, seq), annotation_paths(root, seq)
        picks = [i for i in sorted(annotated)[::step] if i < len(frames)]
        if len(picks) < 2 or picks[0] != 0:
            continue
        ids = [load_annotation(annotated[i]) for i in picks]
        objects = sorted(set(np.unique(ids[0]).tolist()) - {0})
        if not objects:
            continue
        images = torch.cat([preprocess_rgb(np.asarray(Image.open(frames[i]).convert("RGB")), model.image_size)
                            for i in picks])
        feats = model.encode_image(images).pix_feat
        masks = torch.from_numpy(np.stack([[a == o for o in objects] for a in ids]))
        propagated, own = propagate_labels(feats, masks)
        losses.append(float(propagation_cross_entropy(propagated, own)))
        guess = propagated.argmax(1)  # (T-1) x N, 0 = background
        for k in range(1, own.shape[1]):
            cells = own[1:, k] > 0.5  # positions mostly inside object k
            right += int((guess[cells] == k).sum())
            total += int(cells.sum())
    return float(np.mean(losses)) if losses else float("nan"), right / max(total, 1), total


def probe(root, preset: str, checkpoint: str | None, step: int = 10, log=print) -> None:
    from ..checkpoint import load_checkpoint
    from ..modeling.build import build_model
    from ..modeling.presets import get_preset
    from ..tracking.preprocess import preprocess_rgb
    from ..tracking.tracker import Tracker, TrackerConfig

    p = get_preset(preset)
    model = build_model(p)
    if checkpoint:
        load_checkpoint(model, checkpoint, preset=preset)
    for seq in list_sequences(root):
        on_first_frame = [(oid, mask) for oid, (f, mask) in first_annotations(root, seq).items() if f == 0]
        if len(on_first_frame) >= 2:
            break
    else:
        raise ValueError(f"no sequence under {root} has two objects annotated on its first frame")
    (a, mask_a), (b, mask_b) = on_first_frame[:2]
    frames = [np.asarray(Image.open(f).convert("RGB")) for f in load_frames(root, seq)[:2]]
    with torch.no_grad():
        feats = model.encode_image(preprocess_rgb(frames[0], model.image_size))
    log(f"sequence {seq}, objects {a} and {b}")
    log(f"image feature std {feats.pix_feat.std():.3g}; high-res feature std "
        + ", ".join(f"{h.std():.3g}" for h in feats.high_res))
    for kind in ("box", "mask"):
        logits = {}
        for oid, mask in ((a, mask_a), (b, mask_b)):
            tracker = Tracker(model, TrackerConfig.from_preset(p))
            tracker.add_prompt(oid, **prompt_kwargs(kind, mask))
            logits[oid] = [tracker.step(f).objects[oid].low_res_logits for f in frames]
        diff = [float((logits[a][t] - logits[b][t]).abs().max()) for t in range(2)]
        log(f"{kind} prompts: max logit difference between the two objects: "
            f"prompted frame {diff[0]:.3g}, next (tracked) frame {diff[1]:.3g}")
    loss, share, cells = appearance_match(model, root, step)
    log(f"appearance alone (frame 0's masks carried to frames {step}, {2 * step}, ... by feature similarity): "
        f"propagation loss {loss:.3f}, object positions labelled right {100 * share:.1f} % of {cells}")


def add_probe_parser(subparsers) -> argparse.ArgumentParser:
    from ..weights import add_weights_args

    p = subparsers.add_parser(
        "probe",
        help="health check of a model: feature scale, do prompts matter, do features tell objects apart",
        description=__doc__.split("\n\n", 1)[1],
    )
    p.add_argument("data_root", help="DAVIS-layout root with a sequence of two objects on its first frame")
    add_weights_args(p)
    p.add_argument("--step", type=int, default=10, help="appearance check: every STEP-th annotated frame (default 10)")
    p.set_defaults(func=_cmd_probe)
    return p


def _cmd_probe(args: argparse.Namespace) -> int:
    from ..weights import choose_weights

    try:
        if args.step < 1:
            raise ValueError("--step must be >= 1")
        preset, checkpoint = choose_weights(args)
        probe(args.data_root, preset, checkpoint, args.step)
    except (FileNotFoundError, ValueError, RuntimeError) as exc:
        print(f"tinysam2 probe: {exc}", file=sys.stderr)
        return 2
    return 0
