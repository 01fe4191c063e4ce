"""Copy a DAVIS-layout set with one camera jump per sequence.

From the middle frame on, every frame and its annotation shift by one whole-pixel offset
(drawn per sequence, up to --max-jump of the frame per axis; what moves in is black and
unannotated). A tracker that finds its object by where it was loses it at the jump; one
that matches appearance finds it again (models/README.md, item 10). Frames before the
jump are copied unchanged.

    .venv/bin/python tools/camera_jump_set.py out/synth_heldout out/synth_heldout_jump
"""
from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import cv2
import numpy as np

from tinysam2_ros.evaluation.davis import (annotation_paths, list_sequences, load_annotation, load_frames,
                                           write_annotation)
from tinysam2_ros.training.data import shifted


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("src", help="DAVIS-layout root")
    ap.add_argument("dst", help="new root (created)")
    ap.add_argument("--max-jump", type=float, default=0.25, help="largest offset per axis, fraction of the frame")
    ap.add_argument("--seed", type=int, default=0, help="seed of the offsets")
    args = ap.parse_args()
    src, dst = Path(args.src), Path(args.dst)
    rng = np.random.default_rng(args.seed)
    for seq in list_sequences(src):
        frames = load_frames(src, seq)
        at = len(frames) // 2
        h, w = cv2.imread(str(frames[0])).shape[:2]
        dy, dx = np.round(rng.uniform(-args.max_jump, args.max_jump, 2) * (h, w)).astype(int)
        out = dst / "JPEGImages" / seq
        out.mkdir(parents=True, exist_ok=True)
        for i, f in enumerate(frames):
            if i < at:
                shutil.copyfile(f, out / f.name)
            else:
                img = shifted(cv2.imread(str(f)), int(dy), int(dx), axes=(0, 1))
                cv2.imwrite(str(out / f.name), img, [cv2.IMWRITE_JPEG_QUALITY, 95])
        for i, p in annotation_paths(src, seq).items():
            ids = load_annotation(p)
            write_annotation(dst / "Annotations" / seq / p.name, shifted(ids, int(dy), int(dx)) if i >= at else ids)
        print(f"{seq}: frames {at}-{len(frames) - 1} shifted by (dy, dx) = ({dy}, {dx})")


if __name__ == "__main__":
    main()
