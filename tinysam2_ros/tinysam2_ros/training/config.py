"""Every option of ``tinysam2 train``, declared once.

Each field carries its own help, range and choices (the settings convention of issue
24); ``add_arguments`` makes the command-line flags from them and ``from_arguments``
builds the config back, so a new option is one field here and nothing else.
"""
from __future__ import annotations

import argparse
import types
import typing
from dataclasses import MISSING, dataclass, field, fields

DATA_FORMATS = ("auto", "davis", "ytvos", "mose", "sav")
AMP_MODES = ("off", "bf16", "fp16")


def setting(default, help: str, range: tuple | None = None, choices: tuple | None = None, live: bool = False,
            **extra):
    """A dataclass field with its description (help, range, choices, live) in metadata.
    ``extra`` keys for the flag generator: ``flag`` (its name), ``positional``, ``parse``
    (a converter for text), ``metavar``."""
    meta = {"help": help, "range": range, "choices": choices, "live": live, **extra}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


def prompt_mix(text: str) -> tuple[float, float, float]:
    """``MASK,BOX,CLICKS`` relative frequencies of the first-frame prompt kinds."""
    try:
        mix = tuple(float(x) for x in text.split(","))
    except ValueError:
        mix = ()
    if len(mix) != 3 or min(mix) < 0 or sum(mix) <= 0:
        raise argparse.ArgumentTypeError(f"expected three non-negative weights MASK,BOX,CLICKS, got {text!r}")
    return mix


@dataclass
class TrainConfig:
    data_root: str = setting(MISSING, "dataset root (DAVIS, YouTube-VOS, MOSE or SA-V layout, see --data-format)",
                             positional=True)
    out_dir: str = setting(MISSING, "output directory (checkpoints, log, final weights)", flag="--out")
    data_format: str = setting("auto", "dataset layout; auto: SA-V if *_manual.json files exist, YouTube-VOS/MOSE "
                               "if a meta*.json exists, else DAVIS", choices=DATA_FORMATS)
    preset: str = setting("tiny_norm", "model preset (tiny_norm: the demo model's; tinysam2: the full model)")
    init_checkpoint: str | None = setting(
        None, "start from these weights: this preset's, or an EdgeTAM / SAM 2.1 checkpoint (official key layout), "
        "from which every tensor with the same name and shape is taken and the rest initialised (listed in "
        "OUT/init_report.json)", flag="--init")
    freeze_image_encoder: bool = setting(False, "train everything but the image encoder (trunk and neck)")
    iterations: int = setting(2000, "training iterations", range=(1, None))
    batch_clips: int = setting(1, "clips per iteration over all processes (the global batch); each of N torchrun "
                               "processes unrolls batch_clips / N of them", range=(1, None))
    # From scratch, 2e-3 kept the model on a plateau where it segments every salient
    # object and ignores its memory; 5e-4 left it (models/README.md).
    lr: float = setting(5e-4, "peak learning rate", range=(0.0, None))
    weight_decay: float = setting(0.01, "AdamW weight decay", range=(0.0, None))
    warmup: int = setting(100, "linear warm-up iterations (at most a tenth of the run)", range=(0, None))
    clip_len: int = setting(6, "frames per clip", range=(2, None))
    max_stride: int = setting(2, "a clip takes every k-th frame, k drawn from 1..MAX_STRIDE", range=(1, None))
    max_objects: int = setting(3, "objects per clip", range=(1, None))
    # The demo model's failures start at occlusions and exits (models/README.md).
    event_clips: float = setting(0.0, "share of clips placed around an occlusion or exit found in the annotations "
                                 "(an object's visible area halving), with the event inside the clip",
                                 range=(0.0, 1.0), metavar="P")
    camera_jumps: float = setting(0.0, "share of clips where the camera jumps once: from a random frame on, the "
                                  "frames shift by up to --max-jump of their size, so the object must be found by "
                                  "appearance", range=(0.0, 1.0), metavar="P")
    max_jump: float = setting(0.25, "largest camera jump, as a fraction of the frame size per axis", range=(0.0, 1.0))
    grad_clip: float = setting(1.0, "gradient norm clip", range=(0.0, None))
    # SAM 2 weighs focal 20 : dice 1; from scratch on small objects that mix collapses
    # tracked frames to empty masks (models/README.md).
    focal_weight: float = setting(20.0, "focal loss weight (SAM 2: 20)", range=(0.0, None))
    dice_weight: float = setting(10.0, "dice loss weight (SAM 2 uses 1, which collapses small objects to empty "
                                 "masks when training from scratch)", range=(0.0, None))
    absent_mask_weight: float = setting(0.0, "also train the mask of an absent object (hidden or out of frame) "
                                        "towards empty, with this weight (0: SAM 2 trains only the object score)",
                                        range=(0.0, None))
    appearance_weight: float = setting(1.0, "weight of a label-propagation loss on the image features: frame 0's "
                                       "masks are carried to the other frames by feature similarity alone and "
                                       "scored (0: SAM 2's losses only)", range=(0.0, None))
    # Masks only: a mask-prompted first frame writes a clean memory, so all the signal
    # trains tracking (models/README.md, item 7).
    prompt_mix: tuple[float, float, float] = setting((1.0, 0.0, 0.0), "relative frequencies of first-frame prompt "
                                                     "kinds", parse=prompt_mix, metavar="MASK,BOX,CLICKS")
    teacher_forcing: float = setting(0.0, "initial probability of writing a frame's memory from its ground truth "
                                     "instead of the prediction, falling linearly to 0 (0 = SAM 2's recipe)",
                                     range=(0.0, 1.0))
    teacher_forcing_until: float = setting(0.6, "fraction of the iterations at which teacher forcing reaches 0",
                                           range=(0.0, 1.0))
    seed: int = setting(0, "random seed (clip i of iteration t is drawn from (seed, t, i), whatever the number "
                        "of processes)")
    device: str = setting("cpu", "torch device: cpu or cuda (under torchrun each process takes cuda:LOCAL_RANK)")
    amp: str = setting("off", "mixed precision: autocast to bf16 or fp16 (fp16 with a gradient scaler)",
                       choices=AMP_MODES)
    workers: int | None = setting(None, "DataLoader worker processes decoding clips (default: 4 on CUDA, so the "
                                  "GPU is not starved; 0 on CPU, where the cores train: decoding in the training "
                                  "process)", range=(0, None))
    time_budget_min: float | None = setting(None, "stop and save after this many minutes", range=(0.0, None))
    stop_at: int | None = setting(None, "stop (and save) after this iteration, as an interrupted run would, for "
                                  "jobs with a time limit; the schedule still runs to --iterations",
                                  range=(1, None))
    save_every: int = setting(100, "save OUT/last.safetensors + last.json every N iterations", range=(1, None))
    threads: int | None = setting(None, "torch CPU threads per process", range=(1, None))
    val_data: str | None = setting(None, "held-out dataset (same layouts); process 0 logs its loss to "
                                   "OUT/val_log.csv every --val-every iterations")
    val_every: int = setting(0, "validation interval in iterations (0: only at the end when --val-data)",
                             range=(0, None))
    val_clips: int = setting(8, "clips of --val-data per validation", range=(1, None))
    # Batch statistics over the frames of one clip do not transfer to streaming
    # inference, one frame at a time (measured: dice 0.36 vs 0.73 in eval mode).
    freeze_bn: bool = setting(True, "keep BatchNorm statistics fixed, so training and streaming inference "
                              "normalise alike (--no-freeze-bn trains them and re-estimates them at the end)")
    bn_recalibration_clips: int = setting(64, "clips used to re-estimate BatchNorm statistics at the end "
                                          "(--no-freeze-bn)", range=(0, None))
    # From scratch, fixed BatchNorm at its default statistics lets the image signal fade
    # layer by layer; estimating them first normalises every layer.
    bn_init_clips: int = setting(16, "from scratch: clips used to estimate BatchNorm statistics before the first "
                                 "step", range=(0, None))
    bn_refresh_every: int = setting(0, "with --freeze-bn, re-estimate BatchNorm statistics every N iterations "
                                    "(0 = never; see models/README.md)", range=(0, None))
    locality_prior: float = setting(3.5, "from scratch: initialise the memory cross-attention to attend near each "
                                    "query's own position, with this amplitude (0 = PyTorch's init)",
                                    range=(0.0, None))

    def __post_init__(self) -> None:
        for f in fields(self):
            value, meta = getattr(self, f.name), f.metadata
            if value is None:
                continue
            if meta.get("choices") and value not in meta["choices"]:
                raise ValueError(f"{f.name} must be one of {meta['choices']}, got {value!r}")
            lo, hi = meta.get("range") or (None, None)
            if (lo is not None and value < lo) or (hi is not None and value > hi):
                raise ValueError(f"{f.name} must lie in [{lo}, {'inf' if hi is None else hi}], got {value}")


def _flag(f) -> str:
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")


def _base_type(annotation: str):
    """int / float / str / bool of a field's annotation (``X | None`` gives X)."""
    hint = typing.get_type_hints(TrainConfig)[annotation]
    if isinstance(hint, types.UnionType):
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
    return hint


def add_arguments(parser: argparse.ArgumentParser, cls=TrainConfig) -> None:
    """One flag (or positional) per field of ``cls``, its help text and default from the field."""
    for f in fields(cls):
        meta, kind = f.metadata, _base_type(f.name)
        text = meta["help"]
        if meta.get("range"):
            lo, hi = meta["range"]
            text += f" [{lo if lo is not None else '-inf'}, {hi if hi is not None else 'inf'}]"
        if meta.get("positional"):
            parser.add_argument(f.name, help=text)
            continue
        kw: dict = {"dest": f.name, "help": text}
        if f.default is MISSING:
            kw["required"] = True
        else:
            kw["default"] = f.default
            kw["help"] += f" (default: {f.default})" if f.default is not None else ""
        if kind is bool:
            kw["action"] = argparse.BooleanOptionalAction
        else:
            kw["type"] = meta.get("parse") or kind
            if meta.get("choices"):
                kw["choices"] = meta["choices"]
            if meta.get("metavar"):
                kw["metavar"] = meta["metavar"]
        parser.add_argument(_flag(f), **kw)


def from_arguments(args: argparse.Namespace, cls=TrainConfig):
    """The config the parsed flags describe (fields absent from ``args`` keep their default)."""
    return cls(**{f.name: getattr(args, f.name) for f in fields(cls) if hasattr(args, f.name)})
