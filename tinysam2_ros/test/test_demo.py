"""`tinysam2 demo`: the ROS node end to end on a generated video (small and fast here)."""
from __future__ import annotations

import cv2
import pytest
import torch

pytest.importorskip("tinysam2_ros_msgs.msg", reason="ROS interfaces not built (run `make setup`)")

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
    assert "mask prompts" in out  # the default: the first annotation itself, as in DAVIS semi-supervised
    assert "prompted 2 object(s) on frame 0 (first masks found: [True, True])" in out
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
    assert main(["demo", "--video", str(tmp_path), "--box", "1,1,5,5", "--prompt", "mask",
                 "--checkpoint", str(tmp_path / "w.pt")]) == 2
    assert "--box" in capsys.readouterr().err


def test_demo_prompt_kinds(tmp_path, capsys):
    from tinysam2_ros.evaluation.davis import first_annotations, mask_to_box
    from tinysam2_ros.ros.demo import load_davis_sequence

    generate_sequence(tmp_path / "data", "clip", SynthConfig(num_frames=3, size=(64, 80), seed=5, num_objects=2))
    firsts = {oid: m for oid, (f, m) in first_annotations(tmp_path / "data", "clip").items() if f == 0}
    assert firsts
    frames, masks, gt = load_davis_sequence(tmp_path / "data", "clip")
    assert len(frames) == 3 and sorted(gt) == [0, 1, 2] and sorted(masks) == sorted(firsts)
    for oid, m in firsts.items():
        assert masks[oid]["mask"].dtype == bool and (masks[oid]["mask"] == m).all()
    _, boxes, _ = load_davis_sequence(tmp_path / "data", "clip", prompt="box")
    assert {oid: p["box"] for oid, p in boxes.items()} == {oid: mask_to_box(m) for oid, m in firsts.items()}
    _, points, _ = load_davis_sequence(tmp_path / "data", "clip", prompt="point")
    for oid, p in points.items():
        (x, y), = p["points"]
        assert p["labels"] == [1] and firsts[oid][int(y), int(x)]  # a positive click inside the object
    with pytest.raises(ValueError, match="unknown prompt kind 'scribble'"):
        load_davis_sequence(tmp_path / "data", "clip", prompt="scribble")
    # the box prompt still runs end to end (2 frames: cheap)
    torch.save({"model": build_model("tiny").state_dict()}, tmp_path / "w.pt")
    rc = main(["demo", "--data", str(tmp_path / "data"), "--sequence", "clip", "--out", str(tmp_path / "out"),
               "--checkpoint", str(tmp_path / "w.pt"), "--frames", "2", "--prompt", "box"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "box prompts" in out
    assert "J&F not measured: no annotated frame left to score" in out  # 2 frames: the prompted and the last
