"""The ``tinysam2`` command line: one entry point, one subcommand per job."""
from __future__ import annotations

import argparse
import sys


def _cmd_fidelity(args: argparse.Namespace) -> int:
    from .fidelity import Tolerances, run_fidelity

    tol = Tolerances(
        lowres_logits=args.tol_logits, object_score=args.tol_score, iou_pred=args.tol_iou_pred, mask_iou=args.min_mask_iou
    )
    try:
        ok = run_fidelity(args.fixture_dir, tol, device=args.device)
    except (FileNotFoundError, ValueError) as exc:
        print(f"tinysam2 fidelity: {exc}", file=sys.stderr)
        return 2
    return 0 if ok else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tinysam2", description="TinySAM 2 video object tracking: model checks, tracking, export and ROS 2 node."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser(
        "fidelity",
        help="compare the model and tracker with reference outputs of the official code",
        description="Run the streaming tracker (compression off) on a reference fixture and print, per frame and "
        "object, the largest differences of low-res mask logits, object score and IoU predictions and the IoU of the "
        "final masks; exit 1 if any is outside its tolerance.",
    )
    p.add_argument("fixture_dir", help="directory with fixture.json, frames/, a checkpoint and reference_outputs.npz")
    p.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    p.add_argument("--tol-logits", type=float, default=1e-2, help="max |diff| of low-res mask logits (default 1e-2)")
    p.add_argument("--tol-score", type=float, default=1e-3, help="max |diff| of object score logits (default 1e-3)")
    p.add_argument("--tol-iou-pred", type=float, default=1e-3, help="max |diff| of predicted IoUs (default 1e-3)")
    p.add_argument("--min-mask-iou", type=float, default=0.995, help="min IoU of final masks (default 0.995)")
    p.set_defaults(func=_cmd_fidelity)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
