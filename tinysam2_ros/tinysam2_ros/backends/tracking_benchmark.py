"""``tinysam2 benchmark --tracking``: ms per tracked frame, end to end and per stage.

Variants (a preset plus settings, e.g. ``tinysam2:backend=onnxruntime,memory.retrieval_keep=0.5``)
run the real streaming tracker side by side in one run, on the same frames: a real
video (the shared EdgeTAM fixture's 960x540 frames by default) and a generated one,
with 1 and 5 objects prompted by boxes on the first frame. Speed does not depend on
the weights, so every preset runs with random weights (seed 0) at its own input size
(1024 for edgetam and tinysam2); the object-score bias is raised so objects stay
present and memory is written as in real tracking. Per case it prints the median ms
per tracked frame (prompted frame and warm-up frames left out), its ratio to the
first variant (the reference: EdgeTAM's dense tracker through torch by default), the
median ms of each stage, and the mean IoU of each variant's masks with those of the
first variant of the same preset (how far a backend, precision or speed feature moves
the output) and the memory-attention query tokens per object-frame as a share of the
h*w grid (below 100 % when query routing is on). Settings are generic: ``backend``, ``precision``, ``memory.<field>``,
``<section>.<field>`` of a ``TrackerConfig`` dataclass section, or a plain
``TrackerConfig`` field, ``checkpoint=PATH`` for trained weights; a setting this build
lacks skips the variant with a note.

Query routing depends on the weights a little: its route follows the previous mask, and
a random model's masks are arbitrary (often the whole frame, so each object routes its
full budget, ``routing.max_fraction``: the most a trained model's route can cost). The
``queries`` column shows the share that went through memory attention, dense frames
included; give trained weights (``checkpoint=``) for routes of real objects.
"""
from __future__ import annotations

import dataclasses
import json
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..modeling.build import build_model
from ..modeling.presets import get_preset
from ..tracking.tracker import STAGES, Tracker, TrackerConfig
from . import attach_backend

# each speed feature off and on, explicitly (whatever the preset's defaults), per backend
_OFF = "memory.retrieval_keep=1.0,memory.write_every=1,routing.enabled=false"
DEFAULT_VARIANTS = (
    "edgetam:backend=torch",  # the reference: EdgeTAM's dense tracker through torch
    f"tinysam2:backend=torch,{_OFF}",
    f"tinysam2:backend=onnxruntime,{_OFF}",
    "tinysam2:backend=onnxruntime,memory.write_every=1,routing.enabled=false",  # + retrieval
    "tinysam2:backend=onnxruntime,memory.retrieval_keep=1.0,routing.enabled=false",  # + write stride
    "tinysam2:backend=onnxruntime,memory.retrieval_keep=1.0,memory.write_every=1",  # + routing
    "tinysam2:backend=auto",  # what a user gets: the preset's own settings, the backend auto picks
)
FIXTURE_FRAMES = Path("shared") / "fixtures" / "edgetam_reference" / "frames"


def fixture_frames() -> Path:
    """The shared fixture's frames: ``shared/`` beside the checkout, looked for from the
    current directory upwards (the README's commands run in the repository root)."""
    here = Path.cwd().resolve()
    for base in (here, *here.parents):
        if (base / FIXTURE_FRAMES).is_dir():
            return base / FIXTURE_FRAMES
    return here.parent / FIXTURE_FRAMES  # named in the error when missing
STAGE_SHORT = {"image_encoder": "img enc", "memory_attention": "mem attn", "mask_decoder": "decoder",
               "memory_encoder": "mem enc"}


@dataclass
class Variant:
    spec: str
    preset: str
    backend: str = "torch"
    precision: str = "fp32"
    checkpoint: str | None = None  # weights; random (seed 0) without
    settings: dict = field(default_factory=dict)  # everything else, by dotted name

    @classmethod
    def parse(cls, spec: str) -> "Variant":
        """``preset[:key=value,key=value]``; values are JSON (numbers, true/false) or text."""
        preset, _, rest = spec.partition(":")
        v = cls(spec=spec, preset=preset.strip())
        for item in filter(None, (s.strip() for s in rest.split(","))):
            key, eq, text = item.partition("=")
            if not eq:
                raise ValueError(f"variant {spec!r}: expected key=value, got {item!r}")
            try:
                value = json.loads(text)
            except json.JSONDecodeError:
                value = text
            if key in ("backend", "precision", "checkpoint"):
                setattr(v, key, str(value))
            else:
                v.settings[key] = value
        return v

    def tracker_config(self, preset: dict) -> TrackerConfig:
        """The preset's tracker settings with this variant's applied; ``ValueError`` names
        a setting this build does not have."""
        memory = {k.split(".", 1)[1]: v for k, v in self.settings.items() if k.startswith("memory.")}
        plain = {k: v for k, v in self.settings.items() if "." not in k}
        names = {f.name for f in dataclasses.fields(TrackerConfig)}
        for k in plain:
            if k not in names:
                raise ValueError(f"TrackerConfig has no setting {k!r}")
        cfg = TrackerConfig.from_preset(preset, memory, **plain)
        for key, value in self.settings.items():
            section, _, name = key.partition(".")
            if not name or section == "memory":
                continue
            current = getattr(cfg, section, None)
            if current is None or not dataclasses.is_dataclass(current):
                raise ValueError(f"TrackerConfig has no settings section {section!r} (setting {key})")
            if name not in {f.name for f in dataclasses.fields(current)}:
                raise ValueError(f"{type(current).__name__} has no setting {name!r}")
            setattr(cfg, section, dataclasses.replace(current, **{name: value}))
        return cfg


# ---------------------------------------------------------------------------- frames and prompts
def _grid_boxes(h: int, w: int, n: int) -> list[list[float]]:
    """``n`` boxes spread over the frame (row-major over a 3x2 grid), each a sixth of it."""
    boxes = []
    for i in range(n):
        r, c = divmod(i, 3)
        x0, y0 = (c + 0.25) * w / 3, (r + 0.25) * h / 2
        boxes.append([x0, y0, x0 + w / 6, y0 + h / 4])
    return boxes


def real_frames(directory: Path, count: int) -> tuple[list[np.ndarray], list[list[float]]]:
    """``count`` RGB frames of an image folder (played forth and back if it is shorter),
    and five prompt boxes: the fixture's own box first when ``fixture.json`` names one."""
    from PIL import Image

    from ..evaluation.davis import IMAGE_SUFFIXES

    paths = sorted(p for p in Path(directory).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise FileNotFoundError(f"no frames in {directory}")
    loop = paths + paths[-2:0:-1] if len(paths) > 1 else paths
    frames = [np.asarray(Image.open(loop[i % len(loop)]).convert("RGB")) for i in range(count)]
    h, w = frames[0].shape[:2]
    boxes = _grid_boxes(h, w, 5)
    spec = Path(directory).parent / "fixture.json"
    if spec.is_file():
        prompts = [p for p in json.loads(spec.read_text()).get("prompts", []) if "box_xyxy" in p]
        if prompts:
            boxes[0] = [float(v) for v in prompts[0]["box_xyxy"]]
    return frames, boxes


def synthetic_frames(count: int, size=(540, 960), seed: int = 0) -> tuple[list[np.ndarray], list[list[float]]]:
    """``count`` frames of a generated video with five moving objects, and their boxes on frame 0."""
    from ..evaluation.synth import SynthConfig, build_scene

    scene = build_scene(SynthConfig(num_frames=count, size=tuple(size), num_objects=(5, 5), seed=seed))
    frames, boxes = [], _grid_boxes(size[0], size[1], 5)
    for t in range(count):
        f = scene.render(t)
        frames.append(np.ascontiguousarray(f.image[..., ::-1]))  # BGR -> RGB
        if t == 0:
            for oid in range(1, 6):
                ys, xs = np.nonzero(f.ids == oid)
                if len(xs):
                    boxes[oid - 1] = [float(xs.min()), float(ys.min()), float(xs.max()), float(ys.max())]
    return frames, boxes


# ---------------------------------------------------------------------------- running
@dataclass
class Result:
    variant: str
    source: str
    objects: int
    ms: float = float("nan")  # median per tracked frame
    mean_ms: float = float("nan")  # mean per tracked frame (counts routing's periodic refresh frames)
    max_ms: float = float("nan")  # slowest tracked frame: the latency a robot waits for at worst
    stage_ms: dict = field(default_factory=dict)
    iou: float = float("nan")
    query_share: float = float("nan")  # memory-attention query tokens per object-frame / h*w
    note: str = ""
    masks: list = field(default_factory=list, repr=False)


def _model(preset_name: str, checkpoint: str | None, cache: dict):
    key = (preset_name, checkpoint)
    if key not in cache:
        torch.manual_seed(0)
        model = build_model(get_preset(preset_name))
        if checkpoint:
            from ..checkpoint import load_checkpoint

            load_checkpoint(model, checkpoint, preset=preset_name)
        else:
            with torch.no_grad():  # objects present, so memory is written as in real tracking
                model.sam_mask_decoder.pred_obj_score_head.layers[-1].bias.fill_(2.0)
        cache[key] = model.eval()
    return cache[key]


def run_case(model, cfg: TrackerConfig, frames, boxes, objects: int, warmup: int):
    """``(ms per timed frame, stage ms per timed frame, masks per timed frame, query
    tokens per timed object-frame)`` of one tracker run."""
    tracker = Tracker(model, cfg)
    for oid in range(1, objects + 1):
        tracker.add_prompt(oid, box=boxes[oid - 1])
    totals, stages, masks, queries = [], [], [], []
    for i, frame in enumerate(frames):
        t0 = time.perf_counter()
        res = tracker.step(frame)
        dt = (time.perf_counter() - t0) * 1e3
        if i > warmup:  # frame 0 is the prompted one
            totals.append(dt)
            stages.append(dict(res.stage_ms))
            masks.append({o: r.mask for o, r in res.objects.items()})
            for oid in res.objects:
                q = getattr(tracker.objects.get(oid), "query_tokens", None)  # set by routing-aware trackers
                if q:
                    queries.append(q)
    return totals, stages, masks, queries


def _mean_iou(a: list, b: list) -> float:
    ious = []
    for fa, fb in zip(a, b):
        for oid in fa.keys() & fb.keys():
            union = np.logical_or(fa[oid], fb[oid]).sum()
            ious.append(1.0 if union == 0 else float(np.logical_and(fa[oid], fb[oid]).sum() / union))
    return float(np.mean(ious)) if ious else float("nan")


def run_tracking_benchmark(variants: list[str], objects=(1, 5), sources=("real", "synthetic"), frames: int = 4,
                           warmup: int = 1, video: str | Path | None = None, device: str = "cpu",
                           plot: str | Path | None = None, log=print) -> list[Result]:
    parsed = [Variant.parse(s) for s in variants]
    count = frames + warmup + 1
    clips = {}
    for source in sources:
        if source == "real":
            try:
                clips["real"] = real_frames(Path(video) if video else fixture_frames(), count)
            except FileNotFoundError as exc:
                log(f"real frames skipped: {exc}")
        elif source == "synthetic":
            clips["synthetic"] = synthetic_frames(count)
        else:
            raise ValueError(f"unknown source {source!r} (real, synthetic)")
    models: dict = {}
    results: list[Result] = []
    for source, (clip, boxes) in clips.items():
        for n in objects:
            first_of_preset: dict[str, Result] = {}
            for v in parsed:
                r = Result(v.spec, source, n)
                results.append(r)
                try:
                    preset = get_preset(v.preset)
                    cfg = v.tracker_config(preset)
                    model = _model(v.preset, v.checkpoint, models)
                    lines: list[str] = []
                    backend = attach_backend(model, v.backend, v.preset, device=device, memory=cfg.memory.to_dict(),
                                             precision=v.precision, log=lines.append)
                    for line in lines:
                        if "backend auto" in line or "warning" in line:
                            log(f"{v.spec}: {line}")
                    totals, stages, r.masks, queries = run_case(model, cfg, clip, boxes, n, warmup)
                    if queries:
                        r.query_share = float(np.mean(queries)) / model.feat_size ** 2
                    model.set_backend(None)
                except (ValueError, KeyError, RuntimeError) as exc:
                    r.note = f"skipped: {exc}"
                    log(f"{v.spec}: {r.note}")
                    continue
                r.ms = statistics.median(totals)
                r.mean_ms = statistics.fmean(totals)
                r.max_ms = max(totals)
                r.stage_ms = {s: statistics.median(st[s] for st in stages) for s in STAGES}
                if v.backend == "auto":
                    r.note = f"auto -> {backend.name}"
                ref = first_of_preset.setdefault(f"{v.preset}:{v.checkpoint}", r)
                r.iou = _mean_iou(r.masks, ref.masks)
                log(f"  {v.spec} | {source}, {n} object(s): {r.ms:.1f} ms per tracked frame")
    print_table(results, parsed, frames, log)
    if plot:
        save_plot(results, plot)
        log(f"plot: {plot}")
    return results


def print_table(results: list[Result], variants: list[Variant], frames: int, log=print) -> None:
    sizes = {}
    for v in variants:
        try:
            sizes[v.preset] = get_preset(v.preset)["image_size"]
        except KeyError:
            pass
    presets = ", ".join(f"{p} at {s}x{s}" for p, s in sizes.items())
    weights = "random weights" if not any(v.checkpoint for v in variants) else "weights as given (else random)"
    log(f"\ntracking benchmark: {weights} of {presets} input, median (mean, max) of {frames} tracked "
        f"frames, {torch.get_num_threads()} torch threads; ratio = median ms / median ms of {variants[0].spec} "
        "in the same case")
    wide = max(len(r.variant) for r in results) + 2 if results else 10
    head = (f"{'variant':<{wide}}{'source':<11}{'obj':>4}{'ms/frame':>10}{'ratio':>7}{'mean ms':>9}{'max ms':>9}"
            + "".join(f"{STAGE_SHORT[s]:>10}" for s in STAGES) + f"{'queries':>8}{'IoU':>7}  note")
    log(head)
    log("-" * len(head))
    for r in results:
        ref = next(x for x in results if x.source == r.source and x.objects == r.objects)
        ratio = r.ms / ref.ms if ref.ms == ref.ms and r.ms == r.ms else float("nan")
        stages = "".join(f"{r.stage_ms.get(s, float('nan')):>10.1f}" for s in STAGES)
        log(f"{r.variant:<{wide}}{r.source:<11}{r.objects:>4}{r.ms:>10.1f}{ratio:>7.2f}{r.mean_ms:>9.1f}{r.max_ms:>9.1f}{stages}{100 * r.query_share:>7.1f}%{r.iou:>7.3f}  {r.note}")


def save_plot(results: list[Result], path: str | Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cases = list(dict.fromkeys((r.source, r.objects) for r in results))
    names = list(dict.fromkeys(r.variant for r in results))
    fig, ax = plt.subplots(figsize=(2.2 + 1.6 * len(cases) * max(1, len(names)) / 3, 4.5))
    width = 0.8 / max(1, len(names))
    for i, name in enumerate(names):
        ys = [next((r.ms for r in results if (r.source, r.objects) == c and r.variant == name), np.nan) for c in cases]
        ax.bar(np.arange(len(cases)) + i * width, ys, width, label=name)
    ax.set_xticks(np.arange(len(cases)) + width * (len(names) - 1) / 2)
    ax.set_xticklabels([f"{s}, {n} obj" for s, n in cases])
    ax.set_ylabel("median ms per tracked frame")
    ax.set_title("tinysam2 benchmark --tracking (random weights)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
