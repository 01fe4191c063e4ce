"""`tinysam2 probe` (is a model healthy?) and `tinysam2 camera-jump` (a set with a sudden camera move)."""
from __future__ import annotations

import numpy as np

from tinysam2_ros.cli import main
from tinysam2_ros.evaluation.davis import annotation_paths, load_annotation, load_frames
from tinysam2_ros.evaluation.synth import SynthConfig, generate_dataset
from tinysam2_ros.training.data import shifted


def test_probe_reports_feature_scale_prompt_effect_and_appearance(tmp_path, capsys):
    """The check that found an earlier demo model ignoring its prompts, on the demo model."""
    generate_dataset(tmp_path, 1, SynthConfig(num_frames=7, size=(96, 96), num_objects=2, seed=100), progress=False)
    assert main(["probe", str(tmp_path), "--step", "3"]) == 0
    out = capsys.readouterr().out
    assert "image feature std" in out
    lines = [line for line in out.splitlines() if "max logit difference" in line]
    assert [line.split()[0] for line in lines] == ["box", "mask"]
    # a mask prompt is its own output: two different objects differ on the prompted frame, and the
    # demo model's memory keeps them apart on the next one
    assert float(lines[1].split("prompted frame ")[1].split(",")[0]) > 1.0
    assert float(lines[1].split("next (tracked) frame ")[1]) > 1.0
    appearance = [line for line in out.splitlines() if line.startswith("appearance alone")]
    assert len(appearance) == 1 and float(appearance[0].split("propagation loss ")[1].split(",")[0]) > 0
    assert int(appearance[0].split(" of ")[-1]) > 0  # object positions were scored
    assert main(["probe", str(tmp_path), "--step", "0"]) == 2
    assert "--step" in capsys.readouterr().err


def test_camera_jump_shifts_the_second_half(tmp_path, capsys):
    src, dst = tmp_path / "src", tmp_path / "dst"
    generate_dataset(src, 1, SynthConfig(num_frames=6, size=(48, 64), num_objects=(1, 1)), progress=False)
    assert main(["camera-jump", str(src), str(dst), "--max-jump", "0.3"]) == 0
    out = capsys.readouterr().out
    dy, dx = (int(v) for v in out.split("= (")[1].split(")")[0].split(","))
    assert (dy, dx) != (0, 0) and "frames 3-5 shifted" in out
    seq = "synth_0000"
    a, b = load_frames(src, seq), load_frames(dst, seq)
    assert [p.name for p in a] == [p.name for p in b]
    assert all(a[i].read_bytes() == b[i].read_bytes() for i in range(3))  # before the jump: copied as they were
    for i, (pa, pb) in enumerate(zip(annotation_paths(src, seq).values(), annotation_paths(dst, seq).values())):
        ids = load_annotation(pa)
        assert np.array_equal(load_annotation(pb), shifted(ids, dy, dx) if i >= 3 else ids)
    assert main(["camera-jump", str(src), str(tmp_path / "x"), "--max-jump", "1.5"]) == 2
    assert "max_jump" in capsys.readouterr().err
