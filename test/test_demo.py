"""`tinysam2 demo`: the ROS node end to end on a generated video (small and fast here)."""
from __future__ import annotations

import cv2
import pytest
import torch

pytest.importorskip("tinysam2_ros.msg", reason="ROS interfaces not built (run `make setup`)")

from tinysam2_ros.cli import main  # noqa: E402
from tinysam2_ros.evaluation.synth import SynthConfig, generate_sequence  # noqa: E402
from tinysam2_ros.modeling.build import build_model  # noqa: E402


def test_demo_runs_the_node_and_reports(tmp_path, capsys):
    generate_sequence(tmp_path / "data", "clip", SynthConfig(num_frames=6, size=(96, 128), seed=3, num_objects=2))
    torch.manual_seed(0)
    model = build_model("tiny")
    ckpt = tmp_path / "tiny.pt"
    torch.save({"model": model.state_dict()}, ckpt)
    rc = main(["demo", "--data", str(tmp_path / "data"), "--sequence", "clip", "--out", str(tmp_path / "out"),
               "--checkpoint", str(ckpt), "--frames", "6"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "J&F" in out and "memory tokens per object per frame" in out and "ms per frame" in out
    video = cv2.VideoCapture(str(tmp_path / "out" / "overlay.mp4"))
    assert int(video.get(cv2.CAP_PROP_FRAME_COUNT)) == 6
    assert int(video.get(cv2.CAP_PROP_FRAME_WIDTH)) == 128


def test_demo_errors(tmp_path, capsys):
    assert main(["demo", "--video", str(tmp_path), "--checkpoint", str(tmp_path / "none.pt")]) == 2
    assert "not found" in capsys.readouterr().err
    torch.save({"model": build_model("tiny").state_dict()}, tmp_path / "w.pt")
    assert main(["demo", "--video", str(tmp_path), "--checkpoint", str(tmp_path / "w.pt")]) == 2
    assert "--box" in capsys.readouterr().err
