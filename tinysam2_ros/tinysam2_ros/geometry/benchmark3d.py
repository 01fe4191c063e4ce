"""``tinysam2 benchmark-3d``: accuracy and cost of the per-track 3D, on generated scenes.

Accuracy: synthetic scenes (``evaluation/synth_depth``: exact depth, ideal camera) at the
given size; every target that is visible and unoccluded on a frame is estimated from
masks of several qualities: the annotation itself, the annotation grown by k pixels
(a ring of whatever is behind the object, i.e. mask-border pixels in the mix) and the
annotation shifted by k pixels (a mask that lags the object). The error is the distance
between the estimate and the true centroid of the visible surface, as a % of the
true distance; the plain mean of the masked depth is shown beside it for contrast.

Cost: what 3D adds per frame in the node with N tracks: decoding the 16UC1 depth
message, the all-invalid check, the estimates, the Track fields, the Detection3DArray
and the MarkerArray (medians over repeated frames, this machine, one run).
"""
from __future__ import annotations

import argparse
import time

import cv2
import numpy as np

from .depth3d import CameraModel, Depth3DConfig, estimate_track


def _shifted(mask: np.ndarray, k: int) -> np.ndarray:
    return np.roll(np.roll(mask, k, axis=0), k, axis=1)


def _grown(mask: np.ndarray, k: int) -> np.ndarray:
    return cv2.dilate(mask.view(np.uint8), cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * k + 1,) * 2)).astype(bool)


def accuracy(size=(480, 640), sequences=4, frames=20, difficulty=0.5, border=2, seed0=2000,
             noise=0.0, cfg: Depth3DConfig | None = None) -> dict[str, np.ndarray]:
    """Relative position errors (fraction of the distance) per mask kind over unoccluded objects."""
    from ..evaluation.synth import SynthConfig, build_scene
    from ..evaluation.synth_depth import render_depth, scene_camera, truth_position

    cfg = cfg or Depth3DConfig()
    kinds = {"annotation": lambda m: m, f"grown {border} px": lambda m: _grown(m, border),
             f"shifted {border} px": lambda m: _shifted(m, border)}
    errs: dict[str, list] = {k: [] for k in kinds}
    errs.update({f"{k} (mean depth)": [] for k in kinds})
    border_share: list[float] = []
    rng = np.random.default_rng(seed0)
    for s in range(sequences):
        scene = build_scene(SynthConfig(num_frames=frames, size=size, difficulty=difficulty, seed=seed0 + s,
                                        num_objects=(1, 5)))
        cam = scene_camera(scene)
        for t in range(frames):
            fr = scene.render(t, image=False)
            depth = render_depth(scene, t, fr)
            if noise > 0:  # relative depth noise (stereo-like: grows with distance)
                depth = depth * (1 + noise * rng.standard_normal(depth.shape).astype(np.float32))
            for oid in range(1, scene.num_objects + 1):
                gt = fr.ids == oid
                n = int(gt.sum())
                if n < 100 or n < 0.97 * fr.frame_area[oid - 1]:
                    continue  # hidden, partly occluded or out of the frame
                truth = truth_position(fr, render_depth(scene, t, fr), cam, oid)
                dist = float(np.linalg.norm(truth))
                for name, make in kinds.items():
                    m = make(gt)
                    est = estimate_track(m, depth, cam, cfg)
                    if est.position is not None:
                        errs[name].append(np.linalg.norm(est.position - truth) / dist)
                    ys, xs = np.nonzero(m)
                    z = depth[ys, xs]
                    rx, ry = cam.rays()[0][ys, xs], cam.rays()[1][ys, xs]
                    naive = np.array([np.mean(rx * z), np.mean(ry * z), np.mean(z)])
                    errs[f"{name} (mean depth)"].append(np.linalg.norm(naive - truth) / dist)
                    if name.startswith("grown"):
                        border_share.append(float(np.mean(m[ys, xs] & ~gt[ys, xs])))
    out = {k: np.asarray(v) for k, v in errs.items()}
    out["_border_share"] = np.asarray(border_share)
    return out


def cost(size=(480, 640), tracks=5, repeats=200, seed=3000, cfg: Depth3DConfig | None = None) -> dict[str, float]:
    """Median ms per frame of each 3D step with ``tracks`` objects (needs the ROS message packages)."""
    from std_msgs.msg import Header

    from ..evaluation.synth import SynthConfig, build_scene
    from ..evaluation.synth_depth import depth_to_mm, render_depth, scene_camera
    from ..ros.outputs3d import MarkerBook, depth_from_msg, detections_msg, fill_track
    from ..geometry.depth3d import valid_fraction
    from sensor_msgs.msg import Image
    from tinysam2_ros_msgs.msg import Track

    cfg = cfg or Depth3DConfig()
    scene = build_scene(SynthConfig(num_frames=1, size=size, difficulty=0.2, seed=seed, num_objects=tracks))
    fr = scene.render(0, image=False)
    mm = depth_to_mm(render_depth(scene, 0, fr))
    msg = Image(height=size[0], width=size[1], encoding="16UC1", step=2 * size[1], data=mm.tobytes())
    cam = scene_camera(scene)
    cam.rays()  # built once per camera model in the node too
    masks = {oid: _grown(fr.ids == oid, 2) for oid in range(1, tracks + 1)}
    boxes = {}
    for oid, m in masks.items():
        ys, xs = np.nonzero(m)
        boxes[oid] = (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)
    header = Header(frame_id="camera")
    book = MarkerBook()
    names = ("decode depth", "valid check", "estimates", "messages", "total")
    wall = {k: [] for k in names}
    cpu = {k: [] for k in names}
    for _ in range(repeats):
        marks = [(time.perf_counter(), time.thread_time())]
        depth, scale = depth_from_msg(msg)
        marks.append((time.perf_counter(), time.thread_time()))
        valid_fraction(depth, cfg.min_range, cfg.max_range, depth_scale=scale)
        marks.append((time.perf_counter(), time.thread_time()))
        ests = {oid: estimate_track(m, depth, cam, cfg, box=boxes[oid], depth_scale=scale) for oid, m in masks.items()}
        marks.append((time.perf_counter(), time.thread_time()))
        for oid, e in ests.items():
            fill_track(Track(id=oid), e)
        detections_msg(header, [(oid, "obj", 0.9, e) for oid, e in ests.items()])
        book.markers(header, [(oid, "obj", e) for oid, e in ests.items()])
        marks.append((time.perf_counter(), time.thread_time()))
        spans = [(b[0] - a[0], b[1] - a[1]) for a, b in zip(marks, marks[1:])]
        spans.append((marks[-1][0] - marks[0][0], marks[-1][1] - marks[0][1]))
        for k, (w, c) in zip(names, spans):
            wall[k].append(1e3 * w)
            cpu[k].append(1e3 * c)
    out = {k: (float(np.median(wall[k])), float(np.min(wall[k])), float(np.median(cpu[k]))) for k in names}
    out["_mask_px"] = [int(m.sum()) for m in masks.values()]
    return out


def _cmd(args: argparse.Namespace) -> int:
    h, w = (int(v) for v in args.size.split("x"))
    cfg = Depth3DConfig(erode_px=args.erode)
    print(f"3D accuracy: {args.sequences} generated scenes x {args.frames} frames at {h}x{w}, difficulty "
          f"{args.difficulty}, unoccluded targets, erode {args.erode} px, depth noise {args.noise:.2%}")
    acc = accuracy((h, w), args.sequences, args.frames, args.difficulty, args.border, noise=args.noise, cfg=cfg)
    share = acc.pop("_border_share")
    print(f"(grown masks: {np.median(share):.1%} of their pixels are border pixels off the object, median)")
    print(f"{'mask':34s} {'n':>5s} {'median %':>9s} {'p90 %':>7s} {'max %':>7s}")
    for name, e in acc.items():
        if e.size:
            print(f"{name:34s} {e.size:5d} {100 * np.median(e):9.3f} {100 * np.percentile(e, 90):7.3f} "
                  f"{100 * e.max():7.3f}")
    if args.tracks > 0:
        c = cost((h, w), args.tracks, args.repeats, cfg=cfg)
        px = c.pop("_mask_px")
        print(f"\n3D cost per frame: {args.tracks} tracks at {h}x{w} (mask pixels {px}), {args.repeats} frames "
              "(ms; CPU = this thread's CPU time, which other processes' load does not inflate)")
        print(f"{'step':14s} {'wall median':>11s} {'wall min':>9s} {'CPU median':>11s}")
        for k, (med, low, cpu) in c.items():
            print(f"{k:14s} {med:11.3f} {low:9.3f} {cpu:11.3f}")
    return 0


def add_benchmark3d_parser(sub) -> None:
    p = sub.add_parser(
        "benchmark-3d",
        help="accuracy (%% of distance) and cost (ms per frame) of the per-track 3D on generated scenes",
        description="Generate scenes with exact depth, estimate every unoccluded target's 3D position from its "
        "annotation, the annotation grown by --border px and shifted by --border px, print the error as a %% of "
        "the distance (median, p90, max; the plain mean depth beside it), then time what 3D adds per frame with "
        "--tracks objects (depth decode, estimates, Track fields, Detection3DArray, MarkerArray).",
    )
    p.add_argument("--size", default="480x640", help="HxW (default 480x640)")
    p.add_argument("--sequences", type=int, default=4, help="generated scenes (default 4)")
    p.add_argument("--frames", type=int, default=20, help="frames per scene (default 20)")
    p.add_argument("--difficulty", type=float, default=0.5, help="synth difficulty (default 0.5)")
    p.add_argument("--border", type=int, default=2, help="pixels masks are grown / shifted by (default 2)")
    p.add_argument("--erode", type=int, default=Depth3DConfig.erode_px, help="depth3d.erode_px (default 2)")
    p.add_argument("--noise", type=float, default=0.0, help="relative depth noise sigma, e.g. 0.01 (default 0)")
    p.add_argument("--tracks", type=int, default=5, help="tracks in the cost run (0: skip it; default 5)")
    p.add_argument("--repeats", type=int, default=200, help="frames timed (default 200)")
    p.set_defaults(func=_cmd)


__all__ = ["accuracy", "cost", "add_benchmark3d_parser", "CameraModel"]
