"""The memory-quality ceiling: tracked frames scored by the ground truth."""
from __future__ import annotations

import cv2
import numpy as np
import torch

from tinysam2_ros.evaluation.davis import write_annotation
from tinysam2_ros.evaluation.oracle import GroundTruthQuality
from tinysam2_ros.evaluation.synth import SynthConfig, generate_dataset
from tinysam2_ros.modeling.build import build_model
from tinysam2_ros.modeling.presets import get_preset
from tinysam2_ros.tracking.tracker import Tracker, TrackerConfig


def _logits(mask: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.where(mask, 10.0, -1024.0)).float()[None]


def test_ground_truth_quality_scores_masks_by_the_annotation(tmp_path):
    seq = "s"
    (tmp_path / "JPEGImages" / seq).mkdir(parents=True)
    for i in range(3):
        cv2.imwrite(str(tmp_path / "JPEGImages" / seq / f"{i:05d}.jpg"), np.zeros((16, 16, 3), np.uint8))
    ids = np.zeros((16, 16), np.uint8)
    ids[4:12, 4:12] = 1
    for i in (0, 2):  # frame 1 has no annotation (sparse, as in SA-V)
        write_annotation(tmp_path / "Annotations" / seq / f"{i:05d}.png", ids)
    oracle = GroundTruthQuality(tmp_path)
    oracle.start(seq)
    right, shifted, empty = ids == 1, np.roll(ids == 1, 6, axis=1), np.zeros((16, 16), bool)
    assert oracle(1, 2, _logits(right), 3.0) == 1.0
    assert oracle(1, 2, _logits(shifted), 3.0) == 0.0  # IoU 2/14
    assert oracle(1, 1, _logits(shifted), 3.0) is None  # no annotation: the model's score stays
    assert oracle(2, 0, _logits(empty), -5.0) == 1.0  # absent and nothing marked: right
    assert oracle(2, 0, _logits(right), 3.0) == 0.0  # absent but marked
    assert (oracle.scored, oracle.wrong) == (4, 2)


def test_tracker_keeps_frames_the_quality_fn_rejects_out_of_memory():
    torch.manual_seed(0)
    preset = get_preset("tiny")
    calls = []

    def even_frames_only(obj_id, t, logits, score):
        calls.append((obj_id, t))
        return 1.0 if t % 2 == 0 else 0.0

    config = TrackerConfig.from_preset(preset, {"write_threshold": 0.5, "keep_recent": 6})
    tracker = Tracker(build_model(preset), config, quality_fn=even_frames_only)
    rng = np.random.default_rng(0)
    mask = np.zeros((64, 64), bool)
    mask[20:40, 20:40] = True
    tracker.add_prompt(1, mask=mask)
    for _ in range(7):
        tracker.step(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))
        bank = tracker.objects[1].bank
        assert all(f % 2 == 0 for f in bank), bank
    assert tracker.objects[1].bank == (2, 4, 6)  # frame 0 is the prompted frame, not a slot
    assert calls == [(1, t) for t in range(1, 7)]


def test_eval_oracle_quality_option(tmp_path, capsys):
    from tinysam2_ros.cli import main

    generate_dataset(tmp_path, 1, SynthConfig(num_frames=4, size=(64, 64), num_objects=(1, 1)), progress=False)
    assert main(["eval", str(tmp_path), "--preset", "tiny", "--random-weights", "--oracle-quality"]) == 0
    out = capsys.readouterr().out
    assert "memory written by the ground truth:" in out and "of 3 tracked object-frames" in out
    off = ["eval", str(tmp_path), "--preset", "tiny", "--random-weights", "--oracle-quality", "--memory", "off"]
    assert main(off) == 2
    assert "a quality oracle needs the tinysam2 memory" in capsys.readouterr().err
