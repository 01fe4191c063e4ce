"""The ``tinysam2 synth`` subcommand (wired into ``tinysam2_ros.cli``)::

    from .evaluation.synth_cli import add_synth_parser
    add_synth_parser(sub)   # sets func=run_synth
"""
from __future__ import annotations

import argparse
import re
import sys


def _size(text: str) -> tuple[int, int]:
    m = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", text)
    if not m:
        raise argparse.ArgumentTypeError(f"expected HEIGHTxWIDTH such as 256x256 or 480x854, got {text!r}")
    return int(m.group(1)), int(m.group(2))


def _objects(text: str) -> tuple[int, int]:
    m = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", text)
    if not m:
        raise argparse.ArgumentTypeError(f"expected a count or a range such as 2 or 1-3, got {text!r}")
    lo = int(m.group(1))
    hi = int(m.group(2)) if m.group(2) is not None else lo
    if not 1 <= lo <= hi <= 254:
        raise argparse.ArgumentTypeError(f"object range must lie within 1..254 with min <= max, got {text!r}")
    return lo, hi


def _difficulty(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0.0 <= v <= 1.0:
        raise argparse.ArgumentTypeError(f"difficulty must lie in [0, 1], got {v}")
    return v


def add_synth_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``synth`` subcommand to an ``add_subparsers()`` object; returns its parser."""
    p = subparsers.add_parser(
        "synth",
        help="generate procedural benchmark videos with exact ground truth (DAVIS layout)",
        description="Write OUT_DIR/JPEGImages/<seq>/%05d.jpg, OUT_DIR/Annotations/<seq>/%05d.png (palette ids "
        "1..N, stable per sequence) and OUT_DIR/meta.json. Each sequence shows textured targets moving, scaling and "
        "rotating over a textured background seen by a panning, zooming camera. DIFFICULTY (0..1) scales the speed, "
        "scale change and rotation, the occluders on the targets' paths, the look-alike distractors, targets leaving "
        "the frame and coming back, camera motion, pixel noise and motion blur. Every target is visible on frame 0; "
        "sequence i uses seed SEED + i, so the same arguments give the same data.",
    )
    p.add_argument("out_dir", help="dataset root to write (created if missing)")
    p.add_argument("--sequences", type=int, default=10, metavar="N", help="number of sequences (default 10)")
    p.add_argument("--frames", type=int, default=50, help="frames per sequence (default 50)")
    p.add_argument("--size", type=_size, default=(256, 256), metavar="HxW",
                   help="frame size, height x width (default 256x256; e.g. 480x854)")
    p.add_argument("--difficulty", type=_difficulty, default=0.5, help="0 (easy) .. 1 (hard), default 0.5")
    p.add_argument("--seed", type=int, default=0, help="seed of the first sequence (default 0)")
    p.add_argument("--objects", type=_objects, default=(1, 3), metavar="MIN-MAX",
                   help="targets per sequence, a range like 1-3 (default) or a count like 2")
    p.add_argument("--prefix", default="synth", help="sequence name prefix (default: synth)")
    p.add_argument("--preview", metavar="PNG", help="also write frames and annotations of the first sequence here")
    p.set_defaults(func=run_synth)
    return p


def run_synth(args: argparse.Namespace) -> int:
    from .synth import SynthConfig, generate_dataset, make_preview

    if args.sequences < 1:
        print("tinysam2 synth: --sequences must be >= 1", file=sys.stderr)
        return 2
    cfg = SynthConfig(num_frames=args.frames, size=tuple(args.size), num_objects=tuple(args.objects),
                      difficulty=args.difficulty, seed=args.seed)
    try:
        names = generate_dataset(args.out_dir, args.sequences, cfg, seed0=args.seed, prefix=args.prefix)
    except ValueError as exc:
        print(f"tinysam2 synth: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {len(names)} sequences ({names[0]} .. {names[-1]}) to {args.out_dir}")
    if args.preview:
        make_preview(args.out_dir, names[0], out=args.preview)
        print(f"wrote {args.preview}")
    return 0
