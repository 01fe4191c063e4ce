"""The procedural benchmark generator (``tinysam2 synth``): determinism, DAVIS layout,
ground-truth consistency and the effect of the difficulty knobs. Tiny sizes only."""
from __future__ import annotations

import argparse
import json

import cv2
import numpy as np
import pytest

from tinysam2_ros.evaluation import davis
from tinysam2_ros.evaluation.synth import SynthConfig, build_scene, generate_dataset, generate_sequence
from tinysam2_ros.evaluation.synth_cli import add_synth_parser

TINY = dict(num_frames=8, size=(64, 64))


def _read(info):
    ids = np.stack([davis.load_annotation(p) for p in info.annotation_paths])
    jpgs = [p.read_bytes() for p in info.frame_paths]
    return ids, jpgs


def test_same_seed_same_files_different_seed_different(tmp_path):
    cfg = SynthConfig(**TINY, difficulty=0.7, seed=3)
    a = generate_sequence(tmp_path / "a", "s", cfg)
    b = generate_sequence(tmp_path / "b", "s", cfg)
    c = generate_sequence(tmp_path / "c", "s", SynthConfig(**TINY, difficulty=0.7, seed=4))
    ids_a, jpg_a = _read(a)
    ids_b, jpg_b = _read(b)
    ids_c, jpg_c = _read(c)
    np.testing.assert_array_equal(ids_a, ids_b)
    assert jpg_a == jpg_b
    assert not np.array_equal(ids_a, ids_c)
    assert jpg_a != jpg_c
    np.testing.assert_array_equal(a.visible_area, b.visible_area)


def test_dataset_is_davis_readable_with_every_object_on_frame_0(tmp_path):
    cfg = SynthConfig(**TINY, num_objects=(2, 3), difficulty=1.0)
    names = generate_dataset(tmp_path, 4, cfg, seed0=10, prefix="syn", progress=False)
    assert davis.list_sequences(tmp_path) == names == ["syn_0000", "syn_0001", "syn_0002", "syn_0003"]
    meta = json.loads((tmp_path / "meta.json").read_text())
    assert meta["sequences"] == names and meta["seeds"] == [10, 11, 12, 13]
    assert meta["config"]["size"] == [64, 64] and meta["config"]["num_frames"] == 8
    for name in names:
        n = meta["stats"][name]["num_objects"]
        assert 2 <= n <= 3
        first = davis.first_annotations(tmp_path, name)
        assert sorted(first) == list(range(1, n + 1))
        for t, mask in first.values():
            assert t == 0
            assert mask.sum() >= 0.01 * 64 * 64
        assert len(davis.load_frames(tmp_path, name)) == 8
        assert len(davis.annotation_paths(tmp_path, name)) == 8


def test_ids_stable_and_within_range(tmp_path):
    for seed in range(4):
        info = generate_sequence(tmp_path, f"s{seed}", SynthConfig(**TINY, num_objects=(1, 3), difficulty=0.8, seed=seed))
        n = len(info.object_ids)
        assert info.object_ids == list(range(1, n + 1))
        ids, _ = _read(info)
        assert set(np.unique(ids).tolist()) <= set(range(n + 1))
        assert set(np.unique(ids[0]).tolist()) == set(range(n + 1))  # every object (and background) on frame 0
        counts = np.stack([np.bincount(f.ravel(), minlength=n + 1)[1:] for f in ids])
        np.testing.assert_array_equal(counts, info.visible_area)


def test_images_have_the_requested_size(tmp_path):
    info = generate_sequence(tmp_path, "r", SynthConfig(num_frames=3, size=(48, 80), difficulty=0.5, seed=1))
    for fp, ap in zip(info.frame_paths, info.annotation_paths):
        img = cv2.imread(str(fp), cv2.IMREAD_COLOR)
        assert img.shape == (48, 80, 3)
        assert davis.load_annotation(ap).shape == (48, 80)
    assert info.size == (48, 80)


def test_difficulty_makes_objects_less_visible(tmp_path):
    def stats(d):
        vis, occ, absent = [], [], []
        for seed in range(6):
            info = generate_sequence(tmp_path / str(d), f"s{seed}", SynthConfig(num_frames=12, size=(80, 80), difficulty=d,
                                                                              num_objects=(2, 3), seed=seed))
            vis.append(info.visible_fraction().mean())
            occ.append(info.occluded_frames().sum())
            absent.append(info.absent_frames().sum())
        return np.mean(vis), np.sum(occ), np.sum(absent)

    vis0, occ0, abs0 = stats(0.0)
    vis1, occ1, abs1 = stats(1.0)
    assert vis1 < vis0 - 0.1
    assert occ1 > occ0
    assert abs1 >= abs0
    # the knobs follow the difficulty
    k0, k1 = SynthConfig(difficulty=0.0).resolved(), SynthConfig(difficulty=1.0).resolved()
    for name in ("object_speed", "scale_change", "rotation", "occluder_prob", "num_distractors", "camera_motion",
                 "noise_sigma", "blur_prob", "leave_prob"):
        assert getattr(k1, name) > getattr(k0, name), name
    assert k0.occluder_prob == 0 and k0.num_distractors == 0 and k0.leave_prob == 0


def test_objects_leave_and_come_back(tmp_path):
    seen = 0
    for seed in range(4):
        cfg = SynthConfig(**TINY, difficulty=0.0, leave_prob=1.0, seed=seed)
        info = generate_sequence(tmp_path, f"s{seed}", cfg)
        assert info.leaving == info.object_ids  # every target was scheduled to leave
        for k in range(len(info.object_ids)):
            present = info.visible_area[:, k] > 0
            assert present[0]
            gone = np.flatnonzero(~present)
            if gone.size and present[gone[-1] + 1 :].any():
                seen += 1
    assert seen > 0


def test_occluded_pixels_are_not_annotated():
    hidden = 0
    for seed in range(4):
        scene = build_scene(SynthConfig(**TINY, difficulty=1.0, occluder_prob=1.0, num_distractors=2, seed=seed))
        kinds = [L.kind for L in scene.layers]
        assert "occluder" in kinds
        oid_of = np.array([L.oid for L in scene.layers] + [0])  # owner -1 -> background
        for t in range(scene.num_frames):
            fr = scene.render(t, amodal=True)
            np.testing.assert_array_equal(fr.ids, oid_of[fr.owner])  # front-most layer decides
            for oid, full in fr.amodal.items():
                assert not (fr.ids[~full] == oid).any()  # never outside the silhouette
                behind = full & (fr.ids != oid)
                hidden += int(behind.sum())
                owners = fr.owner[behind]
                assert (owners >= 0).all()
                # hidden by an occluder or a distractor -> 0; by another target -> that target's id
                for i in np.unique(owners):
                    expect = 0 if kinds[i] != "target" else scene.layers[i].oid
                    assert (fr.ids[behind & (fr.owner == i)] == expect).all()
                    assert expect != oid
    assert hidden > 0


def test_config_validation():
    with pytest.raises(ValueError):
        SynthConfig(difficulty=1.5).resolved()
    with pytest.raises(ValueError):
        SynthConfig(num_objects=(3, 1)).resolved()
    with pytest.raises(ValueError):
        SynthConfig(size=(8, 8)).resolved()
    r = SynthConfig(num_objects=2, size=(480, 854), difficulty=0.25, object_speed=0.1).resolved()
    assert r.num_objects == (2, 2) and r.size == (480, 854) and r.object_speed == 0.1
    assert r.noise_sigma == SynthConfig.knob_defaults(0.25)["noise_sigma"]


def test_cli(tmp_path, capsys):
    parser = argparse.ArgumentParser(prog="tinysam2")
    add_synth_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["synth", str(tmp_path / "out"), "--sequences", "2", "--frames", "4", "--size", "40x56",
                              "--difficulty", "0.3", "--seed", "5", "--objects", "1-2",
                              "--preview", str(tmp_path / "p.png")])
    assert args.size == (40, 56) and args.objects == (1, 2)
    assert args.func(args) == 0
    assert davis.list_sequences(tmp_path / "out") == ["synth_0000", "synth_0001"]
    assert json.loads((tmp_path / "out" / "meta.json").read_text())["seeds"] == [5, 6]
    assert cv2.imread(str(tmp_path / "p.png")).shape[0] == 80
    defaults = parser.parse_args(["synth", "x"])
    assert (defaults.sequences, defaults.frames, defaults.size, defaults.difficulty, defaults.seed, defaults.objects) == (
        10, 50, (256, 256), 0.5, 0, (1, 3))
    for bad in (["--size", "64"], ["--objects", "3-1"], ["--difficulty", "2"]):
        with pytest.raises(SystemExit):
            parser.parse_args(["synth", "x", *bad])
