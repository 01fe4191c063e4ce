"""The failure census: wrong masks attributed to what the synthetic scene has under them."""
from __future__ import annotations

import numpy as np
import pytest

from tinysam2_ros.evaluation.failures import FailureCensus, classify, load_scene
from tinysam2_ros.evaluation.run_eval import run_eval
from tinysam2_ros.evaluation.synth import SynthConfig, generate_dataset


def test_classify_names_what_the_mask_covers():
    # layers: 0 the target (id 1), 1 an occluder, 2 a distractor, 3 another target (id 2)
    layers = [("target", 1), ("occluder", 0), ("distractor", 0), ("target", 2)]
    owner = np.full((10, 40), -1, np.int16)
    owner[:, 0:10], owner[:, 10:20], owner[:, 20:30], owner[:, 30:35] = 0, 1, 2, 3
    ids = np.zeros((10, 40), np.uint8)
    ids[owner == 0], ids[owner == 3] = 1, 2

    def box(x0, x1):
        m = np.zeros((10, 40), bool)
        m[:, x0:x1] = True
        return m

    assert classify(box(0, 10), ids, owner, layers, 1) == "."
    assert classify(box(0, 14), ids, owner, layers, 1) == ":"  # IoU 10/14
    assert classify(box(0, 0), ids, owner, layers, 1) == "e"
    assert classify(box(0, 3), ids, owner, layers, 1) == "t"  # on the target, too small
    assert classify(box(10, 20), ids, owner, layers, 1) == "O"
    assert classify(box(19, 30), ids, owner, layers, 1) == "D"  # mostly the distractor
    assert classify(box(30, 35), ids, owner, layers, 1) == "X"
    assert classify(box(35, 40), ids, owner, layers, 1) == "G"
    gone = np.where(ids == 1, 0, ids).astype(np.uint8)  # target absent: lower case
    assert classify(box(10, 20), gone, np.where(owner == 0, -1, owner), layers, 1) == "o"
    assert classify(box(0, 0), gone, owner, layers, 1) == "."  # nothing marked while absent is right


def test_census_over_a_tracker_run(tmp_path):
    root = tmp_path / "synth"
    generate_dataset(root, 2, SynthConfig(num_frames=4, size=(64, 64), num_objects=(1, 2), difficulty=0.8),
                     seed0=7, progress=False)
    census = FailureCensus(root)
    out = run_eval(root, preset="tiny", observe=census.observe, log=lambda *_: None, random_weights=True)
    objects = sum(len(r["objects"]) for r in out["sequences"])
    assert objects >= 2 and sum(census.counts.values()) == 4 * objects  # every object-frame labelled once
    assert all(len(line) == 4 for line in census.timelines.values())
    assert census.table().splitlines()[-1].split()[-1] == str(4 * objects)
    assert load_scene(root, "synth_0001").cfg.seed == 8  # the scene is rebuilt from meta.json's seed


def test_census_needs_a_synth_set(tmp_path):
    with pytest.raises(ValueError, match="meta.json not found"):
        load_scene(tmp_path, "x")
    generate_dataset(tmp_path, 1, SynthConfig(num_frames=2, size=(32, 32)), progress=False)
    with pytest.raises(ValueError, match="'other' is not in"):
        load_scene(tmp_path, "other")


def test_eval_failures_option(tmp_path, capsys):
    from tinysam2_ros.cli import main

    generate_dataset(tmp_path / "s", 1, SynthConfig(num_frames=3, size=(48, 48), num_objects=1), progress=False)
    assert main(["eval", str(tmp_path / "s"), "--preset", "tiny", "--random-weights", "--failures"]) == 0
    out = capsys.readouterr().out
    assert "what the mask covers" in out and "on an occluder" in out
    from tinysam2_ros.evaluation.synth import generate_sequence

    generate_sequence(tmp_path / "toy", "t", SynthConfig(num_frames=3, size=(48, 48), num_objects=1))  # no meta.json
    not_synth = ["eval", str(tmp_path / "toy"), "--preset", "tiny", "--random-weights", "--failures"]
    assert main(not_synth) == 2  # not a synth set
    assert "meta.json not found" in capsys.readouterr().err
