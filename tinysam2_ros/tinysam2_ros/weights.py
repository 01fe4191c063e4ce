"""Which weights a command runs with: one rule for demo, eval and memory-report.

Without ``--checkpoint`` they all take the shipped demo model (for its preset), so a
number printed by one command is comparable with the others'. Random weights only
run when asked for with ``--random-weights``, and then say so loudly: an untrained
model's J&F measures nothing.
"""
from __future__ import annotations

import argparse
from pathlib import Path

DEMO_MODEL = "models/demo_tiny_norm.safetensors"
DEMO_PRESET = "tiny_norm"

RANDOM_WARNING = "WARNING: RANDOM WEIGHTS ({preset}): the model is untrained, its masks and scores mean nothing"


def package_file(relative: str) -> str:
    """A shipped file (config/, models/): in the source tree, else in the package's share dir.

    The share dir is found from this file's own install prefix first (a colcon install,
    sourced or not), then through the ament index.
    """
    here = Path(__file__).resolve()
    source = here.parents[1] / relative
    if source.exists():
        return str(source)
    prefix_share = here.parents[4] / "share" / "tinysam2_ros" / relative  # <prefix>/lib/pythonX.Y/site-packages/
    if prefix_share.exists():
        return str(prefix_share)
    try:
        from ament_index_python.packages import get_package_share_directory

        return str(Path(get_package_share_directory("tinysam2_ros")) / relative)
    except Exception:  # no ament index (plain pip install): the caller reports the missing file
        return str(source)


def add_weights_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", help=f"model preset (default: the one named in the checkpoint, else {DEMO_PRESET}, "
                   "the demo model's)")
    p.add_argument("--checkpoint", help=f"weights (.pt or .safetensors; default for preset {DEMO_PRESET}: "
                   f"{DEMO_MODEL})")
    p.add_argument("--random-weights", action="store_true",
                   help="run an untrained model (tests and timing only: its J&F means nothing)")


def choose_weights(args: argparse.Namespace, log=print) -> tuple[str, str | None]:
    """(preset, checkpoint or None) for ``--preset/--checkpoint/--random-weights``.

    Raises ``ValueError``, ``FileNotFoundError`` or ``CheckpointError`` saying what to pass."""
    from .checkpoint import resolve_preset

    if args.random_weights:
        if args.checkpoint:
            raise ValueError("--random-weights and --checkpoint exclude each other")
        preset = args.preset or DEMO_PRESET
        log(RANDOM_WARNING.format(preset=preset))
        return preset, None
    checkpoint = args.checkpoint
    if checkpoint is None:
        if args.preset not in (None, DEMO_PRESET):
            raise ValueError(f"preset {args.preset} has no shipped weights: pass --checkpoint W "
                             "(or --random-weights for an untrained model)")
        checkpoint = package_file(DEMO_MODEL)
    if not Path(checkpoint).is_file():
        raise FileNotFoundError(f"checkpoint {checkpoint} not found")
    return resolve_preset(args.preset, checkpoint, DEMO_PRESET), checkpoint
