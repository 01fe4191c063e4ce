"""``tinysam2 camera-jump``: copy a DAVIS-layout set with one camera jump per sequence.

From the middle frame on, every frame and its annotation shift by one whole-pixel
offset (drawn per sequence, up to ``max_jump`` of the frame per axis; what moves in is
black and unannotated). A tracker that finds its object by where it was loses it at the
jump; one that matches appearance finds it again (models/README.md, item 10). Frames
before the jump are copied unchanged.
"""
from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import cv2
import numpy as np

from .davis import annotation_paths, list_sequences, load_annotation, load_frames, write_annotation


def camera_jump_set(src, dst, max_jump: float = 0.25, seed: int = 0, log=print) -> dict[str, tuple[int, int]]:
    """Write the jumped copy of ``src`` to ``dst``; returns each sequence's (dy, dx)."""
    from ..training.data import shifted

    if not 0 < max_jump < 1:
        raise ValueError(f"max_jump must lie in (0, 1), got {max_jump}")
    src, dst = Path(src), Path(dst)
    rng = np.random.default_rng(seed)
    offsets = {}
    for seq in list_sequences(src):
        frames = load_frames(src, seq)
        at = len(frames) // 2
        h, w = cv2.imread(str(frames[0])).shape[:2]
        dy, dx = (int(v) for v in np.round(rng.uniform(-max_jump, max_jump, 2) * (h, w)))
        out = dst / "JPEGImages" / seq
        out.mkdir(parents=True, exist_ok=True)
        for i, f in enumerate(frames):
            if i < at:
                shutil.copyfile(f, out / f.name)
            else:
                cv2.imwrite(str(out / f.name), shifted(cv2.imread(str(f)), dy, dx, axes=(0, 1)),
                            [cv2.IMWRITE_JPEG_QUALITY, 95])
        for i, p in annotation_paths(src, seq).items():
            ids = load_annotation(p)
            write_annotation(dst / "Annotations" / seq / p.name, shifted(ids, dy, dx) if i >= at else ids)
        offsets[seq] = (dy, dx)
        log(f"{seq}: frames {at}-{len(frames) - 1} shifted by (dy, dx) = ({dy}, {dx})")
    return offsets


def add_camera_jump_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "camera-jump",
        help="copy a DAVIS-layout set with one sudden camera move per sequence (frames and annotations)",
        description=__doc__.split("\n\n", 1)[1],
    )
    p.add_argument("src", help="DAVIS-layout root")
    p.add_argument("dst", help="new root (created)")
    p.add_argument("--max-jump", type=float, default=0.25, help="largest offset per axis, fraction of the frame "
                   "(default 0.25)")
    p.add_argument("--seed", type=int, default=0, help="seed of the offsets (default 0)")
    p.set_defaults(func=_cmd_camera_jump)
    return p


def _cmd_camera_jump(args: argparse.Namespace) -> int:
    try:
        camera_jump_set(args.src, args.dst, args.max_jump, args.seed)
    except (FileNotFoundError, ValueError) as exc:
        print(f"tinysam2 camera-jump: {exc}", file=sys.stderr)
        return 2
    return 0
