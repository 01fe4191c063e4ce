"""Health check of a trained model: are its features normalised, do prompts matter?

A model whose image features have grown far beyond its prompt and mask embeddings
(std ~1) decodes the same mask whatever the box, and tracks the same mask whatever
the memory. This prints the feature scale and how much the first-frame mask and the
next frame's tracked mask change between two objects of one DAVIS-layout sequence.

    .venv/bin/python tools/probe_model.py out/synth_heldout --checkpoint models/demo_tiny_norm.safetensors
"""
from __future__ import annotations

import argparse

import numpy as np
import torch
from PIL import Image

from tinysam2_ros.checkpoint import load_checkpoint, resolve_preset
from tinysam2_ros.evaluation.davis import first_annotations, list_sequences, load_frames
from tinysam2_ros.evaluation.davis import prompt_kwargs
from tinysam2_ros.modeling.build import build_model
from tinysam2_ros.modeling.presets import get_preset
from tinysam2_ros.tracking.preprocess import preprocess_rgb
from tinysam2_ros.tracking.tracker import Tracker, TrackerConfig


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data_root")
    ap.add_argument("--preset", help="default: the one named in the checkpoint, else tiny")
    ap.add_argument("--checkpoint")
    args = ap.parse_args()
    name = resolve_preset(args.preset, args.checkpoint, "tiny")
    preset = get_preset(name)
    model = build_model(preset)
    if args.checkpoint:
        load_checkpoint(model, args.checkpoint, preset=name)
    for seq in list_sequences(args.data_root):
        on_first_frame = [(oid, mask) for oid, (f, mask) in first_annotations(args.data_root, seq).items() if f == 0]
        if len(on_first_frame) >= 2:
            break
    else:
        raise SystemExit(f"no sequence under {args.data_root} has two objects annotated on its first frame")
    (a, mask_a), (b, mask_b) = on_first_frame[:2]
    frames = [np.asarray(Image.open(p).convert("RGB")) for p in load_frames(args.data_root, seq)[:2]]
    with torch.no_grad():
        feats = model.encode_image(preprocess_rgb(frames[0], model.image_size))
    print(f"sequence {seq}, objects {a} and {b}")
    print(f"image feature std {feats.pix_feat.std():.3g}; high-res feature std "
          + ", ".join(f"{h.std():.3g}" for h in feats.high_res))
    for kind in ("box", "mask"):
        logits = {}
        for oid, mask in ((a, mask_a), (b, mask_b)):
            tracker = Tracker(model, TrackerConfig.from_preset(preset))
            tracker.add_prompt(oid, **prompt_kwargs(kind, mask))
            logits[oid] = [tracker.step(f).objects[oid].low_res_logits for f in frames]
        diff = [float((logits[a][t] - logits[b][t]).abs().max()) for t in range(2)]
        print(f"{kind} prompts: max logit difference between the two objects: "
              f"prompted frame {diff[0]:.3g}, next (tracked) frame {diff[1]:.3g}")


if __name__ == "__main__":
    main()
