"""Official scoring: one id per pixel (SAM 2's rule), DAVIS results on disk, scored independently."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from davis_reference import score_results
from tinysam2_ros.cli import main
from tinysam2_ros.evaluation.davis import davis_palette
from tinysam2_ros.evaluation.synth import SynthConfig, generate_dataset
from tinysam2_ros.tracking.overlap import overlap_pixels, resolve_overlaps
from tinysam2_ros.weights import DEMO_MODEL, package_file


def test_highest_logit_wins_and_background_where_none_is_positive():
    a = torch.tensor([[2.0, 3.0, -1.0, 1.0, 0.0]])
    b = torch.tensor([[5.0, -1.0, -2.0, 1.0, -3.0]])
    ids = resolve_overlaps({2: b, 1: a}, (1, 5))
    # b beats a; a alone; neither > 0; a tie goes to the lower id; a logit of exactly 0 is background
    assert ids.tolist() == [[2, 1, 0, 1, 0]]
    assert resolve_overlaps({}, (2, 3)).shape == (2, 3) and not resolve_overlaps({}, (2, 3)).any()
    with pytest.raises(ValueError, match="positive"):
        resolve_overlaps({0: a}, (1, 5))


def test_one_object_keeps_the_trackers_own_mask():
    torch.manual_seed(0)
    low = torch.randn(1, 16, 16)
    ids = resolve_overlaps({7: low}, (50, 70))
    own = F.interpolate(low[None], size=(50, 70), mode="bilinear", align_corners=False)[0, 0] > 0
    np.testing.assert_array_equal(ids == 7, own.numpy())
    assert overlap_pixels({1: own.numpy(), 2: own.numpy()}) == int(own.sum())


@pytest.fixture(scope="module")
def synth_set(tmp_path_factory):
    root = tmp_path_factory.mktemp("davis")
    names = generate_dataset(root, 3, SynthConfig(num_frames=8, size=(96, 128), num_objects=(2, 3), seed=40),
                             seed0=40, prefix="s", progress=False)
    return root, names


def test_saved_masks_score_as_the_davis_rules_say(synth_set, tmp_path):
    """The demo model with click prompts (its masks spill onto each other): what eval
    prints equals an independent DAVIS scoring of what --save-masks wrote."""
    root, names = synth_set
    res, js = tmp_path / "results", tmp_path / "eval.json"
    assert main(["eval", str(root), "--prompt", "point", "--save-masks", str(res), "--json", str(js)]) == 0
    out = json.loads(js.read_text())
    assert out["checkpoint"].endswith("models/demo_tiny_norm.safetensors")  # the demo model by default
    assert out["overall"]["overlap_pixels"] > 0  # overlaps happened and were resolved
    for seq in names:
        frames = sorted(p.name for p in (root / "JPEGImages" / seq).iterdir())
        saved = sorted(p.name for p in (res / seq).iterdir())
        assert saved == [f.replace(".jpg", ".png") for f in frames]
        with Image.open(res / seq / saved[0]) as im:
            assert im.mode == "P" and im.size == (128, 96)
            assert bytes(im.getpalette()[:768]) == davis_palette().tobytes()
    reference = score_results(root / "Annotations", res, names)
    for row in out["sequences"]:
        mine = {int(k): v["JF"] for k, v in row["objects"].items()}
        assert mine == pytest.approx(reference[row["sequence"]], abs=1e-9)
    ref_all = np.mean([v for seq in reference.values() for v in seq.values()])
    assert out["overall"]["JF"] == pytest.approx(ref_all, abs=1e-9)


def test_evaluating_commands_take_the_demo_model_and_random_weights_only_when_asked(synth_set, tmp_path, capsys):
    root, names = synth_set
    one = ["--sequences", names[0], "--max-frames", "3"]
    assert main(["eval", str(root), "--preset", "tiny", *one]) == 2
    assert "--random-weights" in capsys.readouterr().err  # no silent random weights
    assert main(["eval", str(root), "--random-weights", "--checkpoint", "w.pt", *one]) == 2
    assert "exclude each other" in capsys.readouterr().err
    assert main(["eval", str(root), "--preset", "tiny", "--random-weights", *one]) == 0
    assert "WARNING: RANDOM WEIGHTS (tiny)" in capsys.readouterr().out
    rep, small = tmp_path / "rep", tmp_path / "small"
    generate_dataset(small, 1, SynthConfig(num_frames=3, size=(64, 64), num_objects=1, seed=1), progress=False)
    assert main(["memory-report", str(small), "--out", str(rep)]) == 0
    assert "checkpoint " + package_file(DEMO_MODEL) \
        in capsys.readouterr().out
    assert main(["memory-report", str(small), "--preset", "tiny", "--out", str(rep)]) == 2
    assert "--random-weights" in capsys.readouterr().err
