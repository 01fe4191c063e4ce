"""The ``tinysam2`` command line: one entry point, one subcommand per job."""
from __future__ import annotations

import argparse
import sys

from .evaluation.davis import PROMPT_KINDS


def _cmd_fidelity(args: argparse.Namespace) -> int:
    from .fidelity import Tolerances, run_fidelity

    tol = Tolerances(
        lowres_logits=args.tol_logits, object_score=args.tol_score, iou_pred=args.tol_iou_pred, mask_iou=args.min_mask_iou
    )
    try:
        ok = run_fidelity(args.fixture_dir, tol, device=args.device, backend=args.backend, engine_dir=args.engine_dir,
                          precision=args.precision)
    except (FileNotFoundError, ValueError, RuntimeError) as exc:
        print(f"tinysam2 fidelity: {exc}", file=sys.stderr)
        return 2
    return 0 if ok else 1


def _memory_overrides(args: argparse.Namespace) -> dict:
    keys = ("compression", "pool_factor", "token_budget", "similarity", "write_threshold", "num_slots",
            "max_cond_frames", "keep_recent")
    return {k: getattr(args, k) for k in keys if getattr(args, k, None) is not None}


def _add_memory_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("memory (defaults from the preset)")
    g.add_argument("--memory", dest="compression", choices=["off", "tinysam2"],
                   help="'off' = SAM 2's memory, 'tinysam2' = quality-managed, compressed memory")
    g.add_argument("--pool-factor", type=int, help="average-pooling factor of memory token grids")
    g.add_argument("--token-budget", type=int, help="spatial memory tokens per object (0 = no limit)")
    g.add_argument("--similarity", choices=["redundancy", "recency"], help="token selection rule")
    g.add_argument("--write-threshold", type=float, help="minimum frame quality to enter memory")
    g.add_argument("--num-slots", type=int, help="non-prompted memory frames per object")
    g.add_argument("--max-cond-frames", type=int, help="prompted frames kept per object")
    g.add_argument("--keep-recent", type=int, help="newest frames kept regardless of quality")


def _add_backend_args(p: argparse.ArgumentParser, default: str = "auto") -> None:
    from .backends import BACKENDS, PRECISIONS

    p.add_argument("--backend", choices=BACKENDS, default=default,
                   help=f"stage runner (default {default}; auto = TensorRT engines of --engine-dir if they run here, "
                        "else onnxruntime, else torch; onnxruntime without --engine-dir exports the model once into "
                        "$XDG_CACHE_HOME/tinysam2_ros)")
    p.add_argument("--engine-dir", help="directory from `tinysam2 export` / `tinysam2 build-engine`")
    p.add_argument("--precision", choices=PRECISIONS, default="fp32",
                   help="fp32 (default), bf16 (torch backend) or int8 (onnxruntime dynamic quantization); "
                        "see docs/efficiency-backends.md")


def _cmd_eval(args: argparse.Namespace) -> int:
    from .checkpoint import resolve_preset
    from .evaluation.failures import FAIR_IOU, FailureCensus
    from .evaluation.oracle import GroundTruthQuality
    from .evaluation.run_eval import run_eval, write_json

    census = FailureCensus(args.data_root) if args.failures else None
    oracle = GroundTruthQuality(args.data_root) if args.oracle_quality else None
    overrides = _memory_overrides(args)
    if oracle:  # ground-truth scores are 0 or 1: any threshold in (0, 1] keeps exactly the right frames
        overrides.setdefault("write_threshold", 0.5)
    try:
        preset = resolve_preset(args.preset, args.checkpoint, "tinysam2")
        out = run_eval(
            args.data_root, preset=preset, checkpoint=args.checkpoint, memory_overrides=overrides,
            prompt=args.prompt, sequences=args.sequences.split(",") if args.sequences else None,
            max_frames=args.max_frames, device=args.device, backend=args.backend, engine_dir=args.engine_dir,
            precision=args.precision, observe=census.observe if census else None, quality_oracle=oracle,
        )
    except (FileNotFoundError, ValueError, KeyError, RuntimeError) as exc:
        print(f"tinysam2 eval: {exc}", file=sys.stderr)
        return 2
    if oracle:
        print(f"memory written by the ground truth: {oracle.wrong} of {oracle.scored} tracked object-frames "
              f"had a wrong mask (IoU < {FAIR_IOU}) and were kept out")
    if census:
        print("\nper object and frame, what the mask covers (lower case: while the target is absent):")
        print("\n".join(census.timeline_lines()))
        print("\n" + census.table())
    if args.json:
        write_json(out, args.json)
        print(f"wrote {args.json}")
    return 0


def _cmd_track(args: argparse.Namespace) -> int:
    """Run tracker_node (and a demo image source) in this process, as track.launch.py would."""
    from pathlib import Path

    import rclpy
    import rclpy.executors

    from .ros.tracker_node import TrackerNode

    params_file = Path(args.params_file)
    if not params_file.is_file():
        print(f"tinysam2 track: parameter file {params_file} not found", file=sys.stderr)
        return 2
    ros_args = ["--ros-args", "--params-file", str(params_file), "-r", f"image:={args.image}", "-r",
                f"prompts:={args.prompts}"]
    for name in ("preset", "checkpoint", "backend", "device"):
        if getattr(args, name) is not None:
            ros_args += ["-p", f"{name}:={getattr(args, name)}"]
    if args.namespace:
        ros_args += ["-r", f"__ns:=/{args.namespace.strip('/')}"]
    rclpy.init(args=["tinysam2"] + ros_args)
    executor = rclpy.executors.MultiThreadedExecutor(num_threads=3)
    node = TrackerNode()
    executor.add_node(node)
    source = None
    if args.video:
        from .ros.video_source import VideoSource

        source = VideoSource(args.video, topic=args.image, rate_hz=args.rate, loop=args.loop,
                             namespace=args.namespace or None)
        executor.add_node(source)
    try:
        while rclpy.ok():
            executor.spin_once(timeout_sec=0.1)
            if source is not None and source.finished:
                break
    except (KeyboardInterrupt, rclpy.executors.ExternalShutdownException):
        pass
    finally:
        node.on_shutdown(None)
        node.destroy_node()
        if source is not None:
            source.destroy_node()
        rclpy.try_shutdown()
    return 0


def _prompt_mix(text: str) -> tuple[float, float, float]:
    try:
        mix = tuple(float(x) for x in text.split(","))
    except ValueError:
        mix = ()
    if len(mix) != 3 or min(mix) < 0 or sum(mix) <= 0:
        raise argparse.ArgumentTypeError(f"expected three non-negative weights MASK,BOX,CLICKS, got {text!r}")
    return mix


def _cmd_train(args: argparse.Namespace) -> int:
    from .training.trainer import TrainConfig, train

    cfg = TrainConfig(
        data_root=args.data_root, out_dir=args.out, preset=args.preset, init_checkpoint=args.init,
        iterations=args.iterations, lr=args.lr, clip_len=args.clip_len, max_stride=args.max_stride,
        max_objects=args.max_objects, event_clips=args.event_clips, camera_jumps=args.camera_jumps,
        max_jump=args.max_jump,
        seed=args.seed, device=args.device, time_budget_min=args.time_budget_min, threads=args.threads,
        freeze_bn=args.freeze_bn, bn_refresh_every=args.bn_refresh_every, locality_prior=args.locality_prior,
        focal_weight=args.focal_weight, dice_weight=args.dice_weight, absent_mask_weight=args.absent_mask_weight,
        appearance_weight=args.appearance_weight,
        prompt_mix=tuple(args.prompt_mix),
        teacher_forcing=args.teacher_forcing, teacher_forcing_until=args.teacher_forcing_until,
    )
    try:
        train(cfg, memory_overrides=_memory_overrides(args))
    except (FileNotFoundError, ValueError, KeyError) as exc:
        print(f"tinysam2 train: {exc}", file=sys.stderr)
        return 2
    return 0


DEMO_MODEL = "models/demo_tiny_norm.safetensors"
DEMO_PRESET = "tiny_norm"


def _cmd_demo(args: argparse.Namespace) -> int:
    """The main job: the ROS node on a (generated or given) video, with a report."""
    from pathlib import Path

    from .checkpoint import CheckpointError, resolve_preset
    from .ros.demo import load_davis_sequence, run_demo

    out = Path(args.out)
    checkpoint = args.checkpoint or (_package_file(DEMO_MODEL) if args.preset in (None, DEMO_PRESET) else None)
    if checkpoint and not Path(checkpoint).is_file():
        print(f"tinysam2 demo: checkpoint {checkpoint} not found", file=sys.stderr)
        return 2
    try:
        preset = resolve_preset(args.preset, checkpoint, DEMO_PRESET)
    except CheckpointError as exc:
        print(f"tinysam2 demo: {exc}", file=sys.stderr)
        return 2
    if args.video:
        from .ros.video_source import FrameReader

        if not args.box:
            print("tinysam2 demo: --video needs --box x1,y1,x2,y2 on the first frame", file=sys.stderr)
            return 2
        if args.prompt not in (None, "box"):
            print(f"tinysam2 demo: --video has no annotation to take a {args.prompt} prompt from; it is prompted "
                  "with --box", file=sys.stderr)
            return 2
        prompt_kind = "box"
        reader = FrameReader(args.video)
        frames = []
        while len(frames) < args.frames and (f := reader.read()) is not None:
            frames.append(f)
        prompts = {1: {"box": [float(v) for v in args.box.split(",")]}}
        gt = None
        source = args.video
    else:
        root = Path(args.data) if args.data else out / "data"
        seq = args.sequence
        if not args.data:
            from .evaluation.synth import SynthConfig, generate_sequence

            seq = f"heldout{args.seed:05d}"
            generate_sequence(root, seq, SynthConfig(num_frames=args.frames, seed=args.seed,
                                                     size=tuple(int(v) for v in args.size.split("x"))))
        if not seq:
            print("tinysam2 demo: --data needs --sequence", file=sys.stderr)
            return 2
        prompt_kind = args.prompt or "mask"
        frames, prompts, gt = load_davis_sequence(root, seq, prompt=prompt_kind)
        frames = frames[: args.frames]
        gt = {i: g for i, g in gt.items() if i < len(frames)}
        source = f"{root}/{seq}"
    params = {f"memory.{k}": v for k, v in _memory_overrides(args).items()}
    params["device"] = args.device
    print(f"demo: {len(frames)} frames of {source}, {prompt_kind} prompts, preset {preset}, "
          f"weights {checkpoint or 'random'}")
    res = run_demo(frames, prompts, gt, out, preset, checkpoint, params=params)
    print(f"overlay video: {res.overlay_path}")
    if res.jf.get("objects"):
        print(f"J&F {res.jf['JF']:.3f} (J {res.jf['J']:.3f}, F {res.jf['F']:.3f}) over {res.jf['objects']} object(s)")
    elif gt:
        print("J&F not measured: no annotated frame left to score (DAVIS leaves out the prompted and the last frame)")
    from .modeling.presets import SAM21_MEMORY_TOKENS

    print(f"memory tokens per object per frame: {res.memory_tokens:.0f} "
          f"({100 * res.memory_tokens / SAM21_MEMORY_TOKENS:.2f}% of SAM 2.1's {SAM21_MEMORY_TOKENS})")
    print(f"ms per frame (end to end through ROS, {args.device}): {res.ms_per_frame:.1f}")
    return 0


def _package_file(relative: str) -> str:
    """A shipped file (config/, models/): in a source checkout, else in the ROS package's share dir."""
    from pathlib import Path

    source = Path(__file__).resolve().parents[1] / relative
    if source.exists():
        return str(source)
    try:
        from ament_index_python.packages import get_package_share_directory

        return str(Path(get_package_share_directory("tinysam2_ros")) / relative)
    except Exception:  # no ament index (plain pip install): the caller reports the missing file
        return str(source)


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
    _add_backend_args(p, default="torch")  # the check is of the model against the reference, not of a runtime
    p.set_defaults(func=_cmd_fidelity)

    p = sub.add_parser(
        "eval",
        help="run the tracker over DAVIS-layout videos: J&F, memory tokens and bytes, ms per stage",
        description="Prompt each object on its first annotated frame (mask, box from the mask, or a point inside it), "
        "track to the end and print per sequence and overall: J&F (DAVIS definitions), spatial memory tokens per "
        "object per frame and as a % of SAM 2.1's 7x4096, memory bytes per object, and ms per frame per stage.",
    )
    p.add_argument("data_root", help="directory with JPEGImages/<seq>/*.jpg and Annotations/<seq>/*.png")
    p.add_argument("--preset", help="model preset (default: the one named in the checkpoint, else tinysam2)")
    p.add_argument("--checkpoint", help="checkpoint (.pt or .safetensors); without one the weights are random")
    p.add_argument("--prompt", choices=PROMPT_KINDS, default="mask", help="prompt from the first annotation")
    p.add_argument("--sequences", help="comma-separated sequence names (default: all)")
    p.add_argument("--max-frames", type=int, help="only the first N frames of each sequence")
    p.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    p.add_argument("--json", help="also write the results to this JSON file")
    p.add_argument("--failures", action="store_true",
                   help="on a `tinysam2 synth` set: label every object-frame by what the mask covers (target, "
                        "occluder, distractor, another target, background) and print timelines and a table")
    p.add_argument("--oracle-quality", action="store_true",
                   help="score tracked frames for the memory by the annotations (1 right, 0 wrong) instead of the "
                        "model's heads: the J&F a perfect memory-quality rule would reach (write threshold 0.5 "
                        "unless given)")
    _add_backend_args(p)
    _add_memory_args(p)
    p.set_defaults(func=_cmd_eval)

    default_params = _package_file("config/tracker.yaml")
    p = sub.add_parser(
        "track",
        help="run the ROS 2 tracker node (what track.launch.py starts), optionally with a demo video source",
        description="Start tracker_node with a parameter file, as `ros2 launch tinysam2_ros track.launch.py` does, "
        "in this process. With --video, also publish a video file, camera index or image folder as "
        "sensor_msgs/Image on the image topic.",
    )
    p.add_argument("--params-file", default=default_params, help="parameter file (default: config/tracker.yaml)")
    p.add_argument("--image", default="image", help="image topic (default: image)")
    p.add_argument("--prompts", default="prompts", help="prompt topic (default: prompts)")
    p.add_argument("--namespace", default="", help="namespace of the node (one per camera)")
    p.add_argument("--preset", help="override the preset parameter")
    p.add_argument("--checkpoint", help="override the checkpoint parameter")
    p.add_argument("--backend", help="override the backend parameter")
    p.add_argument("--device", help="override the device parameter")
    p.add_argument("--video", help="publish this video file / camera index / image folder on the image topic")
    p.add_argument("--rate", type=float, default=10.0, help="frames per second of --video (default 10)")
    p.add_argument("--loop", action="store_true", help="loop --video forever")
    p.set_defaults(func=_cmd_track)

    p = sub.add_parser(
        "train",
        help="train or fine-tune a preset on DAVIS-layout videos (TinySAM 2 memory in the loop)",
        description="Sample short clips, simulate prompts (mask, box, clicks) on their first frame, unroll the tracker "
        "with the preset's memory (pooling, token selection) and minimise SAM 2's losses (focal + dice, IoU, object "
        "score). Resumes from OUT/last.pt; writes OUT/train_log.csv and OUT/model.safetensors.",
    )
    p.add_argument("data_root", help="directory with JPEGImages/ and Annotations/")
    p.add_argument("--out", required=True, help="output directory (checkpoints, log, final weights)")
    p.add_argument("--preset", default="tiny_norm", help="model preset (default: tiny_norm, the demo model's)")
    p.add_argument("--init", help="start from these weights (fine-tuning)")
    p.add_argument("--iterations", type=int, default=2000, help="training iterations (default 2000)")
    p.add_argument("--lr", type=float, default=5e-4, help="peak learning rate (default 5e-4)")
    p.add_argument("--clip-len", type=int, default=6, help="frames per clip (default 6)")
    p.add_argument("--max-stride", type=int, default=2,
                   help="a clip takes every k-th frame, k drawn from 1..MAX_STRIDE (default 2)")
    p.add_argument("--max-objects", type=int, default=3, help="objects per clip (default 3)")
    p.add_argument("--event-clips", type=float, default=0.0, metavar="P",
                   help="share of clips placed around an occlusion or exit found in the annotations (an object's "
                        "visible area halving), with the event inside the clip (default 0: clips anywhere)")
    p.add_argument("--camera-jumps", type=float, default=0.0, metavar="P",
                   help="share of clips where the camera jumps once: from a random frame on, the frames shift by "
                        "up to --max-jump of their size, so the object must be found by appearance (default 0)")
    p.add_argument("--max-jump", type=float, default=0.25,
                   help="largest camera jump, as a fraction of the frame size per axis (default 0.25)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    p.add_argument("--time-budget-min", type=float, help="stop and save after this many minutes")
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument("--focal-weight", type=float, default=20.0, help="focal loss weight (default 20, as SAM 2)")
    p.add_argument("--dice-weight", type=float, default=10.0,
                   help="dice loss weight (default 10; SAM 2 uses 1, which collapses small objects to empty masks "
                        "when training from scratch)")
    p.add_argument("--absent-mask-weight", type=float, default=0.0,
                   help="also train the mask of an object that is absent (hidden or out of frame) towards empty, "
                        "with this weight (default 0: SAM 2 trains only the object score there)")
    p.add_argument("--appearance-weight", type=float, default=1.0,
                   help="weight of a label-propagation loss on the image features: frame 0's masks are carried "
                        "to the clip's other frames by feature similarity alone and scored, so objects learn to "
                        "look unlike their look-alikes (default 1, as the demo model; 0: SAM 2's losses only)")
    p.add_argument("--prompt-mix", type=_prompt_mix, default=(1.0, 0.0, 0.0), metavar="MASK,BOX,CLICKS",
                   help="relative frequencies of first-frame prompt kinds (default 1,0,0: masks only)")
    p.add_argument("--teacher-forcing", type=float, default=0.0,
                   help="initial probability of writing a frame's memory from its ground truth instead of the "
                        "prediction, falling linearly to 0 (default 0 = SAM 2's recipe; helps training from scratch)")
    p.add_argument("--teacher-forcing-until", type=float, default=0.6,
                   help="fraction of the iterations at which teacher forcing reaches 0 (default 0.6)")
    p.add_argument("--freeze-bn", action=argparse.BooleanOptionalAction, default=True,
                   help="keep BatchNorm statistics fixed, so training and streaming inference normalise alike "
                        "(default: on; --no-freeze-bn trains them and re-estimates them at the end)")
    p.add_argument("--bn-refresh-every", type=int, default=0,
                   help="with --freeze-bn, re-estimate BatchNorm statistics every N iterations so features stay "
                        "normalised as the weights move (default 0 = never; see models/README.md)")
    p.add_argument("--locality-prior", type=float, default=3.5,
                   help="from scratch: initialise the memory cross-attention to attend near each query's own "
                        "position, with this amplitude (default 3.5; 0 = PyTorch's init; see models/README.md)")
    _add_memory_args(p)
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser(
        "demo",
        help="the main job: run the ROS node on a video with the demo model; overlay video, J&F, tokens, ms",
        description="Generate a held-out synthetic video (or take --data/--sequence, or --video with --box), start "
        "tracker_node, play the frames on its image topic, prompt the objects of the first annotated frame through "
        "its add_prompts service (--prompt: their masks by default), collect tracks from ROS topics, write "
        "OUT/overlay.mp4 and print J&F, memory tokens and ms per frame.",
    )
    p.add_argument("--out", default="out/demo", help="output directory (default: out/demo)")
    p.add_argument("--preset", help=f"model preset (default: the one named in the checkpoint, else {DEMO_PRESET}, "
                   "the demo model's)")
    p.add_argument("--checkpoint", help=f"weights (default for preset {DEMO_PRESET}: {DEMO_MODEL})")
    p.add_argument("--data", help="DAVIS-layout root to take the sequence from instead of generating one")
    p.add_argument("--sequence", help="sequence name under --data")
    p.add_argument("--video", help="a video file, camera index or image folder (needs --box)")
    p.add_argument("--box", help="x1,y1,x2,y2 of the object on the first frame of --video")
    p.add_argument("--prompt", choices=PROMPT_KINDS,
                   help="prompt from the first annotated frame: its mask (default, as in DAVIS semi-supervised "
                        "evaluation), its tight box, or one click at the mask's pixel farthest from its border; "
                        "--video is prompted with --box")
    p.add_argument("--frames", type=int, default=50, help="frames to run (default 50)")
    p.add_argument("--size", default="256x256", help="HxW of the generated video (default 256x256)")
    p.add_argument("--seed", type=int, default=1000, help="seed of the generated video (default 1000, held out)")
    p.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    _add_memory_args(p)
    p.set_defaults(func=_cmd_demo)

    from .backends.backend_cli import add_export_parser
    from .backends.engine_cli import add_build_engine_parser

    from .backends.benchmark import add_benchmark_parser
    from .evaluation.efficiency import add_efficiency_parser
    from .evaluation.sweep import add_memory_report_parser
    from .evaluation.synth_cli import add_synth_parser

    add_memory_report_parser(sub)
    add_efficiency_parser(sub)
    add_benchmark_parser(sub)
    add_export_parser(sub)
    add_build_engine_parser(sub)
    add_synth_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
