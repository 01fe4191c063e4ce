"""Check the model + tracker against reference outputs of the official code.

A fixture directory holds ``fixture.json`` (preset, frame count and size, prompts
per object), ``frames/*.jpg``, a checkpoint and ``reference_outputs.npz`` (see
``../shared/fixtures/edgetam_reference/README.md``). We run the streaming tracker
frame by frame with compression off and compare, per frame and object, the
low-res mask logits, the object score, the decoder's IoU predictions and the
final masks.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .backends import attach_backend
from .checkpoint import load_checkpoint
from .modeling.build import build_model
from .tracking.preprocess import preprocess_rgb
from .tracking.tracker import Tracker, TrackerConfig


@dataclass
class Tolerances:
    lowres_logits: float = 1e-2  # max |diff| of low-res mask logits
    object_score: float = 1e-3  # |diff| of object score logits
    iou_pred: float = 1e-3  # |diff| of the decoder's IoU predictions
    mask_iou: float = 0.995  # IoU of final masks against the reference
    fp16_rel: float = 1e-2  # relative diff of fp16-stored intermediates (max|d| / max|ref|)


@dataclass
class Row:
    frame: int
    obj_id: int
    logits_diff: float
    score_diff: float
    iou_pred_diff: float | None
    mask_iou: float
    ok: bool


def load_fixture(fixture_dir: Path) -> dict:
    spec_path = fixture_dir / "fixture.json"
    if not spec_path.is_file():
        raise FileNotFoundError(f"{spec_path} not found: is {fixture_dir} a fixture directory?")
    spec = json.loads(spec_path.read_text())
    for key in ("preset", "frames", "prompts"):
        if key not in spec:
            raise ValueError(f"{spec_path} lacks {key!r}")
    return spec


def _frame_paths(fixture_dir: Path, count: int) -> list[Path]:
    paths = sorted(p for p in (fixture_dir / "frames").iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    if len(paths) < count:
        raise ValueError(f"fixture declares {count} frames, found {len(paths)} in {fixture_dir / 'frames'}")
    return paths[:count]


def _mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


def run_fidelity(fixture_dir: str | Path, tol: Tolerances | None = None, device: str = "cpu", log=print,
                 backend: str = "torch", engine_dir: str | None = None, precision: str = "fp32") -> bool:
    """Run the check, print a table, return True when every comparison is within tolerance."""
    tol = tol or Tolerances()
    fixture_dir = Path(fixture_dir)
    spec = load_fixture(fixture_dir)
    ref = dict(np.load(fixture_dir / "reference_outputs.npz"))
    ckpt = fixture_dir / spec.get("checkpoint", "checkpoint_fp16.pt")
    model = build_model(spec["preset"]).to(device)
    report = load_checkpoint(model, ckpt)
    log(f"preset {spec['preset']}: {report.loaded} tensors from {ckpt.name}, backend {backend}")
    attach_backend(model, backend, spec["preset"], engine_dir, device=device, memory={"compression": "off"}, log=log,
                   precision=precision)

    n_frames = int(spec["frames"])
    obj_ids = sorted({int(p["obj_id"]) for p in spec["prompts"]})
    first_prompt = {o: min(int(p["frame"]) for p in spec["prompts"] if int(p["obj_id"]) == o) for o in obj_ids}
    tracker = Tracker(model, TrackerConfig(video_length=n_frames), device=device)
    checks_ok = True

    rows: list[Row] = []
    for i, path in enumerate(_frame_paths(fixture_dir, n_frames)):
        rgb = np.asarray(Image.open(path).convert("RGB"))
        if i == 0 and "frame0_input" in ref:
            ours = preprocess_rgb(rgb, model.image_size)[0].numpy()
            checks_ok &= _check_fp16(log, "frame0_input", ours, ref["frame0_input"], tol)
            if "frame0_backbone_fpn0" in ref:
                with torch.inference_mode():
                    feats = model.encode_image(torch.from_numpy(ours)[None].to(device))
                for lvl, arr in enumerate([*feats.high_res, feats.pix_feat]):
                    key = f"frame0_backbone_fpn{lvl}"
                    if key in ref:
                        checks_ok &= _check_fp16(log, key, arr.cpu().numpy(), ref[key], tol)
        for p in spec["prompts"]:
            if int(p["frame"]) == i:
                tracker.add_prompt(
                    int(p["obj_id"]),
                    box=p.get("box_xyxy"),
                    points=p.get("points_xy"),
                    labels=p.get("point_labels"),
                )
        result = tracker.step(rgb)
        dec_iou = ref.get(f"dec{i:02d}_iou")
        for k, obj_id in enumerate(obj_ids):
            if i < first_prompt[obj_id]:
                continue
            res = result.objects[obj_id]
            entry = tracker.objects[obj_id].entry(i)
            logits_diff = float(np.abs(res.low_res_logits.cpu().numpy()[0] - ref["lowres_logits"][i, k, 0]).max())
            score_diff = abs(res.object_score - float(ref["object_score_logits"][i, k].reshape(-1)[0]))
            iou_diff = None
            if dec_iou is not None and dec_iou.shape[0] == len(obj_ids) and entry.ious.numel() == dec_iou.shape[1]:
                iou_diff = float(np.abs(entry.ious.cpu().numpy() - dec_iou[k]).max())
            m_iou = _mask_iou(res.mask, ref["video_res_masks"][i, k, 0] > 0)
            ok = (
                logits_diff <= tol.lowres_logits
                and score_diff <= tol.object_score
                and (iou_diff is None or iou_diff <= tol.iou_pred)
                and m_iou >= tol.mask_iou
            )
            rows.append(Row(i, obj_id, logits_diff, score_diff, iou_diff, m_iou, ok))

    log(f"{'frame':>5} {'obj':>4} {'max|dlogit|':>12} {'|dscore|':>10} {'|diou_pred|':>12} {'mask IoU':>9}  ok")
    for r in rows:
        iou_txt = "-" if r.iou_pred_diff is None else f"{r.iou_pred_diff:.2e}"
        log(f"{r.frame:>5} {r.obj_id:>4} {r.logits_diff:>12.2e} {r.score_diff:>10.2e} {iou_txt:>12} {r.mask_iou:>9.5f}  "
            f"{'yes' if r.ok else 'NO'}")
    all_ok = checks_ok and bool(rows) and all(r.ok for r in rows)
    log(
        f"tolerances: logits <= {tol.lowres_logits}, score <= {tol.object_score}, iou_pred <= {tol.iou_pred}, "
        f"mask IoU >= {tol.mask_iou}; fp16 intermediates rel <= {tol.fp16_rel}"
    )
    log("FIDELITY PASS" if all_ok else "FIDELITY FAIL")
    return all_ok


def _check_fp16(log, name: str, ours: np.ndarray, ref: np.ndarray, tol: Tolerances) -> bool:
    ref = ref.astype(np.float32).reshape(ours.shape)
    rel = float(np.abs(ours - ref).max() / max(np.abs(ref).max(), 1e-12))
    ok = rel <= tol.fp16_rel
    log(f"{name:>22}: max|d|/max|ref| = {rel:.2e} {'ok' if ok else 'OUT OF TOLERANCE'}")
    return ok
