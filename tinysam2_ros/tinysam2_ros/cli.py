"""The ``tinysam2`` command line: one entry point, one subcommand per job."""
from __future__ import annotations

import argparse
import sys

from .evaluation.davis import PROMPT_KINDS
from .weights import add_weights_args, choose_weights, package_file


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
    from .memory.config import MemoryConfig
    from .settings import cli_overrides

    return cli_overrides(args, MemoryConfig)


def _routing_overrides(args: argparse.Namespace) -> dict:
    from .memory.routing import RoutingConfig
    from .settings import cli_overrides

    return cli_overrides(args, RoutingConfig, prefix="routing-")


def _add_memory_args(p: argparse.ArgumentParser) -> None:
    from .memory.config import MemoryConfig
    from .settings import add_cli_flags

    add_cli_flags(p, MemoryConfig, "memory (defaults from the preset)")


def _add_routing_args(p: argparse.ArgumentParser) -> None:
    from .memory.routing import RoutingConfig
    from .settings import add_cli_flags

    add_cli_flags(p, RoutingConfig, "query routing (defaults from the preset)", prefix="routing-")


def _add_backend_args(p: argparse.ArgumentParser, default: str = "auto") -> None:
    from .backends import BACKENDS, PRECISIONS

    p.add_argument("--backend", choices=BACKENDS, default=default,
                   help=f"stage runner (default {default}; auto = TensorRT engines of --engine-dir if they run here, "
                        "else onnxruntime, else torch; onnxruntime without --engine-dir exports the model once into "
                        "$XDG_CACHE_HOME/tinysam2_ros)")
    p.add_argument("--engine-dir", help="directory from `tinysam2 export` / `tinysam2 build-engine`")
    p.add_argument("--precision", choices=PRECISIONS, default="fp32",
                   help="fp32 (default), bf16 (torch backend) or int8 (onnxruntime: the image encoder's "
                        "convolutions in int8); see docs/efficiency-backends.md")


def _cmd_eval(args: argparse.Namespace) -> int:
    from .evaluation.failures import FAIR_IOU, FailureCensus
    from .evaluation.oracle import GroundTruthQuality
    from .evaluation.run_eval import run_eval, write_json

    census = FailureCensus(args.data_root) if args.failures else None
    oracle = GroundTruthQuality(args.data_root) if args.oracle_quality else None
    overrides = _memory_overrides(args)
    if oracle:  # ground-truth scores are 0 or 1: any threshold in (0, 1] keeps exactly the right frames
        overrides.setdefault("write_threshold", 0.5)
    try:
        preset, checkpoint = choose_weights(args)
        out = run_eval(
            args.data_root, preset=preset, checkpoint=checkpoint, memory_overrides=overrides,
            routing_overrides=_routing_overrides(args),
            prompt=args.prompt, sequences=args.sequences.split(",") if args.sequences else None,
            max_frames=args.max_frames, device=args.device, backend=args.backend, engine_dir=args.engine_dir,
            precision=args.precision, observe=census.observe if census else None, quality_oracle=oracle,
            save_masks=args.save_masks, random_weights=args.random_weights,
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
    if args.save_masks:
        print(f"wrote DAVIS results (one palette PNG per frame, overlaps resolved as SAM 2) to {args.save_masks}")
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


def _cmd_train(args: argparse.Namespace) -> int:
    from .training.config import from_arguments
    from .training.trainer import train

    try:
        train(from_arguments(args), memory_overrides=_memory_overrides(args))
    except (FileNotFoundError, ValueError, KeyError) as exc:
        print(f"tinysam2 train: {exc}", file=sys.stderr)
        return 2
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    """The main job: the ROS node on a (generated or given) video, with a report."""
    from pathlib import Path

    from .ros.demo import load_davis_sequence, run_demo

    out = Path(args.out)
    try:
        preset, checkpoint = choose_weights(args)
    except (FileNotFoundError, ValueError, RuntimeError) as exc:
        print(f"tinysam2 demo: {exc}", file=sys.stderr)
        return 2
    if args.detector and args.video:
        print("tinysam2 demo: --detector simulates a detector from annotations; --video has none (use --data or "
              "the generated video)", file=sys.stderr)
        return 2
    if args.depth and (args.video or args.data):
        print("tinysam2 demo: --depth needs the generated video (its exact depth and camera are the truth)",
              file=sys.stderr)
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
    from .memory.config import MemoryConfig
    from .memory.routing import RoutingConfig
    from .ros.params import MEMORY_PREFIX, ROUTING_PREFIX
    from .settings import param_values

    params = param_values(_memory_overrides(args), MemoryConfig, MEMORY_PREFIX)
    params.update(param_values(_routing_overrides(args), RoutingConfig, ROUTING_PREFIX))
    params["device"] = args.device
    if args.detector:
        return _demo_with_detector(args, frames, gt, out, preset, checkpoint, params, source)
    print(f"demo: {len(frames)} frames of {source}, {prompt_kind} prompts, preset {preset}, "
          f"weights {checkpoint or 'random'}")
    depth3d = _demo_depth(root, seq, args, len(frames)) if args.depth else None
    res = run_demo(frames, prompts, gt, out, preset, checkpoint, params=params,
                   **({"depth": depth3d["depth"], "camera": depth3d["camera"]} if depth3d else {}))
    print(f"overlay video: {res.overlay_path}")
    if depth3d:
        _print_demo_3d(res, depth3d)
    if res.jf.get("objects"):
        print(f"J&F {res.jf['JF']:.3f} (J {res.jf['J']:.3f}, F {res.jf['F']:.3f}) over {res.jf['objects']} object(s)")
    elif gt:
        print("J&F not measured: no annotated frame left to score (DAVIS leaves out the prompted and the last frame)")
    from .modeling.presets import SAM21_MEMORY_TOKENS

    print(f"memory tokens per object per frame: {res.memory_tokens:.0f} "
          f"({100 * res.memory_tokens / SAM21_MEMORY_TOKENS:.2f}% of SAM 2.1's {SAM21_MEMORY_TOKENS})")
    print(f"ms per frame (end to end through ROS, {args.device}): {res.ms_per_frame:.1f}")
    return 0


def _demo_depth(root, seq: str, args: argparse.Namespace, n: int) -> dict:
    """The generated video's exact depth, camera_info and per-frame true 3D centroids (issue 22)."""
    from .evaluation.synth import SynthConfig, build_scene
    from .evaluation.synth_depth import camera_info, render_depth, scene_camera, truth_position

    scene = build_scene(SynthConfig(num_frames=args.frames, seed=args.seed,
                                    size=tuple(int(v) for v in args.size.split("x"))))
    cam = scene_camera(scene)
    depth, truth = [], {}
    for t in range(n):
        fr = scene.render(t, image=False)
        d = render_depth(scene, t, fr)
        depth.append(d)
        for oid in range(1, scene.num_objects + 1):  # tracked and unoccluded: the issue's target
            vis = int((fr.ids == oid).sum())
            if vis >= 100 and vis >= 0.97 * fr.frame_area[oid - 1]:
                truth[(t, oid)] = truth_position(fr, d, cam, oid)
    return {"depth": depth, "camera": camera_info(*scene.cfg.size), "truth": truth}


def _print_demo_3d(res, depth3d: dict) -> None:
    import numpy as np

    errs, good, with_3d, tracked, empty = [], [], 0, 0, 0
    for i, tracks in res.positions.items():
        for oid, (quality, pos, area) in tracks.items():
            tracked += 1
            with_3d += quality == 1
            empty += area == 0
            truth = depth3d["truth"].get((i, oid))
            if truth is not None and pos is not None and quality == 1:
                errs.append(float(np.linalg.norm(pos - truth) / np.linalg.norm(truth)))
                if res.mask_iou.get((i, oid), 0.0) >= 0.5:
                    good.append(errs[-1])
    print(f"3D: {with_3d} of {tracked} track-frames have 3D (quality OK; {empty} have an empty mask); position error vs the exact centroid, "
          f"unoccluded objects, {len(errs)} track-frames: median {100 * np.median(errs):.2f}% of the distance, "
          f"p90 {100 * np.percentile(errs, 90):.2f}%" if errs else "3D: no unoccluded track-frame with 3D to score")
    if good:
        print(f"3D where the 2D mask is on the object (IoU >= 0.5 with the annotation), {len(good)} track-frames: "
              f"median {100 * np.median(good):.2f}% of the distance, p90 {100 * np.percentile(good, 90):.2f}%")


def _demo_with_detector(args, frames, gt, out, preset, checkpoint, params, source) -> int:
    """``demo --detector``: the tracks come from simulated detector boxes on ``detections``."""
    from .evaluation.sim_detector import DetectorSim, simulate_detections
    from .ros.demo import run_demo

    sim = DetectorSim(every=args.detector_every, seed=args.detector_seed)
    arrays = simulate_detections(gt, len(frames), sim)
    params["detections.min_hits"] = args.min_hits
    params["detections.use_detector_ids"] = False  # the simulated ids name the true object: for the report only
    print(f"demo: {len(frames)} frames of {source}, simulated detector on 'detections' ({sim.describe()}), "
          f"detections.min_hits {args.min_hits}, preset {preset}, weights {checkpoint or 'random'}")
    try:
        res = run_demo(frames, {}, gt, out, preset, checkpoint, params=params, detections=arrays)
    except RuntimeError as exc:
        print(f"tinysam2 demo: {exc}", file=sys.stderr)
        return 2
    print(f"overlay video: {res.overlay_path}")
    c = res.counts
    print(f"detection arrays sent {res.arrays_sent}; the node: associated {c['detections_arrays']}, matched "
          f"{c['detections_matched']}, created {c['detections_created']}, refined {c['detections_refined']} "
          f"(re-acquired {c['detections_reacquired']}, drift {c['detections_drift_refined']}), dropped "
          f"{c['detections_dropped']}; ignored: " + (", ".join(f"{k[len('detections_ignored_'):]} {v}" for k, v in c.items()
                                                          if k.startswith("detections_ignored_")) or "none"))
    stable = sum(len(t) == 1 for t in res.tracks_per_object.values())
    for oid, tids in sorted(res.tracks_per_object.items()):
        print(f"object {oid}: its boxes went to track(s) {tids or 'none'}")
    print(f"one track per object: {stable} of {len(res.tracks_per_object)} objects; tracks made from false "
          f"positives only: {res.tracks_on_nothing or 'none'}")
    if res.jf.get("objects"):
        print(f"J&F {res.jf['JF']:.3f} (J {res.jf['J']:.3f}, F {res.jf['F']:.3f}) over {res.jf['objects']} "
              "object(s), each by its longest track")
    print(f"ms per frame (end to end through ROS, {args.device}): {res.ms_per_frame:.1f}")
    return 0


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
        "track to the end and print per sequence and overall: J&F (DAVIS 2017 semi-supervised rules, scored on one "
        "id per pixel: where objects' masks overlap the highest logit wins, as SAM 2 writes DAVIS results), spatial "
        "memory tokens per object per frame and as a % of SAM 2.1's 7x4096, memory bytes per object, pixels where "
        "masks overlapped, and ms per frame per stage. Weights: the demo model unless --checkpoint or "
        "--random-weights.",
    )
    p.add_argument("data_root", help="directory with JPEGImages/<seq>/*.jpg and Annotations/<seq>/*.png")
    add_weights_args(p)
    p.add_argument("--prompt", choices=PROMPT_KINDS, default="mask", help="prompt from the first annotation")
    p.add_argument("--sequences", help="comma-separated sequence names (default: all)")
    p.add_argument("--max-frames", type=int, help="only the first N frames of each sequence")
    p.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    p.add_argument("--json", help="also write the results to this JSON file")
    p.add_argument("--save-masks", metavar="DIR",
                   help="write DAVIS results: DIR/<sequence>/<frame name>.png, palette PNGs of the id maps that "
                        "were scored (one id per pixel, overlaps resolved as SAM 2: highest logit wins)")
    p.add_argument("--failures", action="store_true",
                   help="on a `tinysam2 synth` set: label every object-frame by what the mask covers (target, "
                        "occluder, distractor, another target, background) and print timelines and a table")
    p.add_argument("--oracle-quality", action="store_true",
                   help="score tracked frames for the memory by the annotations (1 right, 0 wrong) instead of the "
                        "model's heads: the J&F a perfect memory-quality rule would reach (write threshold 0.5 "
                        "unless given)")
    _add_backend_args(p)
    _add_memory_args(p)
    _add_routing_args(p)
    p.set_defaults(func=_cmd_eval)

    default_params = package_file("config/tracker.yaml")
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
        help="train or fine-tune a preset on DAVIS, YouTube-VOS, MOSE or SA-V videos (TinySAM 2 memory in the "
        "loop); one process or several under torchrun",
        description="Sample short clips, simulate prompts (mask, box, clicks) on their first frame, unroll the tracker "
        "with the preset's memory (pooling, token selection) and minimise SAM 2's losses (focal + dice, IoU, object "
        "score). Under `torchrun --nproc_per_node N -m tinysam2_ros.cli train ...` the clips of each iteration are split "
        "over N processes (DistributedDataParallel). Resumes from OUT/last.safetensors + OUT/last.json with any "
        "number of processes; writes OUT/train_log.csv and OUT/model.safetensors.",
    )
    from .training.config import add_arguments

    add_arguments(p)
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
    add_weights_args(p)
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
    p.add_argument("--detector", action="store_true",
                   help="no prompts: a simulated detector (the annotations' boxes every k-th frame, jittered, some "
                        "missed, some late, an occasional false positive) publishes vision_msgs on 'detections' "
                        "and the node's association makes the tracks; prints track ids per object and the counts")
    p.add_argument("--detector-every", type=int, default=3, help="--detector: an array every k-th frame (default 3)")
    p.add_argument("--detector-seed", type=int, default=0, help="--detector: seed of its noise (default 0)")
    p.add_argument("--min-hits", type=int, default=2,
                   help="--detector: detections.min_hits, consecutive arrays before a new track (default 2)")
    p.add_argument("--depth", action="store_true",
                   help="also publish the generated video's exact depth and camera_info, turn the node's 3D on and "
                        "print the 3D position error against the truth (see docs/3d.md)")
    _add_memory_args(p)
    _add_routing_args(p)
    p.set_defaults(func=_cmd_demo)

    from .backends.backend_cli import add_export_parser
    from .backends.engine_cli import add_build_engine_parser

    from .backends.benchmark import add_benchmark_parser
    from .evaluation.efficiency import add_efficiency_parser
    from .evaluation.sweep import add_memory_report_parser
    from .evaluation.camera_jump import add_camera_jump_parser
    from .evaluation.probe import add_probe_parser
    from .evaluation.synth_cli import add_synth_parser
    from .ros.soak import add_soak_parser

    add_memory_report_parser(sub)
    add_efficiency_parser(sub)
    add_benchmark_parser(sub)
    add_export_parser(sub)
    add_build_engine_parser(sub)
    add_synth_parser(sub)
    add_camera_jump_parser(sub)
    add_probe_parser(sub)
    add_soak_parser(sub)
    from .geometry.benchmark3d import add_benchmark3d_parser

    add_benchmark3d_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
