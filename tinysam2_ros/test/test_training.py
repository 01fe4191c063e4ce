"""Training: losses behave, a short run lowers the loss on held-out clips, runs resume."""
from __future__ import annotations

import csv
import dataclasses
import json

import numpy as np
import pytest
import torch

from tinysam2_ros.checkpoint import load_checkpoint, saved_preset
from tinysam2_ros.evaluation.synth import SynthConfig, generate_sequence
from tinysam2_ros.memory.config import MemoryConfig
from tinysam2_ros.modeling.build import build_model
from tinysam2_ros.modeling.presets import get_preset
from tinysam2_ros.training.data import ClipSampler, shifted
from tinysam2_ros.training.losses import LossWeights, dice_loss, frame_loss, propagation_loss, sigmoid_focal_loss
from tinysam2_ros.training.trainer import TrainConfig, train
from tinysam2_ros.training.unroll import unroll_clip


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("toy")
    easy = SynthConfig(num_frames=10, size=(96, 96), num_objects=2, difficulty=0.0)  # clean, slow, unoccluded
    for i in range(3):
        generate_sequence(root, f"train{i}", dataclasses.replace(easy, seed=i))
    generate_sequence(root / "heldout", "val0", dataclasses.replace(easy, seed=100))
    return root


def test_losses():
    target = torch.zeros(1, 1, 8, 8)
    target[..., 2:6, 2:6] = 1
    good = (target * 20 - 10).expand(1, 3, 8, 8).clone()
    good[:, 1:] = -good[:, 1:]  # only candidate 0 is right
    bad = -good
    assert dice_loss(good, target.expand_as(good))[0, 0] < 0.01
    assert sigmoid_focal_loss(good, target.expand_as(good))[0, 0] < sigmoid_focal_loss(bad, target.expand_as(bad))[0, 0]
    ious = torch.tensor([[1.0, 0.0, 0.0]])
    res = frame_loss(good, ious, torch.tensor([[5.0]]), target, LossWeights())
    assert res["dice"] < 0.01 and res["iou"] < 1e-6 and res["object_score"] < 0.01  # best candidate is trained
    absent = frame_loss(good, ious, torch.tensor([[5.0]]), torch.zeros_like(target), LossWeights())
    assert absent["dice"] == 0 and absent["object_score"] > 4  # absent object: only the score is trained
    assert absent["absent_mask"] > 1 and torch.isclose(absent["total"], absent["object_score"])  # ... by default
    trained = frame_loss(good, ious, torch.tensor([[5.0]]), torch.zeros_like(target), LossWeights(absent_mask=0.5))
    assert torch.isclose(trained["total"], absent["object_score"] + 0.5 * absent["absent_mask"])
    empty = frame_loss(-good.abs(), ious, torch.tensor([[-5.0]]), torch.zeros_like(target), LossWeights(absent_mask=1))
    assert empty["absent_mask"] < 0.1  # an empty mask for an absent object costs (almost) nothing


def _two_frames(object_look, background_look):
    """4 x 4 features of two frames: frame 0 has the object (look e0) in its top-left 2 x 2
    on background e1; frame 1 has it in the bottom-right, with the given looks."""
    e = torch.eye(3)
    feats = e[1].view(3, 1, 1).repeat(2, 1, 4, 4)
    labels = torch.zeros(2, 1, 4, 4)
    feats[0, :, :2, :2] = e[0].view(3, 1, 1)
    labels[0, 0, :2, :2] = 1
    feats[1] = background_look.view(3, 1, 1)
    feats[1, :, 2:, 2:] = object_look.view(3, 1, 1)
    labels[1, 0, 2:, 2:] = 1
    return feats, labels


def test_propagation_loss_matches_by_appearance_not_position():
    e = torch.eye(3)
    feats, labels = _two_frames(e[0], e[1])  # the object moved and kept its look
    assert float(propagation_loss(feats, labels)) < 1e-3
    # a look-alike swap: the object's place shows the background's look and vice versa
    swapped, _ = _two_frames(e[1], e[0])
    assert float(propagation_loss(swapped, labels)) > 5
    # only the 4 object positions wrong (background kept): still half the loss, since
    # classes weigh alike however small
    hidden, _ = _two_frames(e[1], e[1])
    assert float(propagation_loss(hidden, labels)) > 0.4 * float(propagation_loss(swapped, labels))
    assert float(propagation_loss(feats[:1], labels[:1])) == 0.0  # nothing to propagate to
    grad_feats = swapped.clone().requires_grad_(True)
    propagation_loss(grad_feats, labels).backward()
    assert grad_feats.grad[1].abs().sum() > 0 and grad_feats.grad[0].abs().sum() > 0


def test_propagation_loss_pools_large_grids():
    torch.manual_seed(0)
    feats, labels = torch.randn(3, 8, 64, 64), (torch.rand(3, 2, 64, 64) > 0.7).float()
    pooled = propagation_loss(torch.nn.functional.avg_pool2d(feats, 2), torch.nn.functional.avg_pool2d(labels, 2))
    assert torch.allclose(propagation_loss(feats, labels), pooled)  # 64 x 64 is pooled to 32 x 32 first
    assert not torch.allclose(propagation_loss(feats, labels, max_side=64), pooled)


def test_negative_loss_weights_are_refused(data, tmp_path):
    with pytest.raises(ValueError, match="appearance_weight"):
        train(TrainConfig(str(data), str(tmp_path / "run"), iterations=1, appearance_weight=-1), log=lambda *_: None)


def test_appearance_weight_trains_and_logs_the_propagation_loss(data, tmp_path):
    rows = {}
    for w in (0.0, 1.0):
        train(TrainConfig(str(data), str(tmp_path / f"w{w}"), iterations=2, warmup=1, clip_len=3, bn_init_clips=1,
                          appearance_weight=w), log=lambda *_: None)
        rows[w] = list(csv.DictReader(open(tmp_path / f"w{w}" / "train_log.csv")))
    assert all(float(r["appearance"]) == 0 for r in rows[0.0])
    assert all(float(r["appearance"]) > 0 for r in rows[1.0])
    # same clips and weights at iteration 1: the total differs by the weighted term
    assert float(rows[1.0][0]["loss"]) > float(rows[0.0][0]["loss"])


def test_clip_sampler_and_prompts(data):
    sampler = ClipSampler(data, clip_len=4, max_objects=2)
    clip = sampler.sample(np.random.default_rng(0))
    assert clip.frames.shape[:1] == (4,) and clip.masks.shape[:2] == (4, len(clip.obj_ids))
    assert all(clip.masks[0, k].any() for k in range(len(clip.obj_ids)))
    kinds = {sampler.sample(np.random.default_rng(s)).prompts[0].kind for s in range(30)}
    assert kinds == {"mask", "box", "points"}
    for bad in ({"clip_len": 1}, {"max_objects": 0}, {"max_stride": 0}):
        with pytest.raises(ValueError, match="clip_len >= 2"):
            ClipSampler(data, **bad)


def _video_with_an_occlusion(root):
    """One 12-frame video: object 1 always visible, object 2 hidden on frames 6-8."""
    import cv2

    from tinysam2_ros.evaluation.davis import write_annotation

    (root / "JPEGImages" / "occ").mkdir(parents=True)
    for i in range(12):
        ids = np.zeros((32, 32), np.uint8)
        ids[2:10, 2 + i : 10 + i] = 1
        if not 6 <= i <= 8:
            ids[20:28, 20:28] = 2
        cv2.imwrite(str(root / "JPEGImages" / "occ" / f"{i:05d}.jpg"), np.dstack([ids * 100] * 3))
        write_annotation(root / "Annotations" / "occ" / f"{i:05d}.png", ids)
    return root


def test_event_clips_contain_the_occlusion(tmp_path):
    root = _video_with_an_occlusion(tmp_path)
    sampler = ClipSampler(root, clip_len=4, max_objects=1, max_stride=1, event_prob=1.0)
    assert sampler.events == [("occ", 2, 6)]  # object 2's area falls to 0 on frame 6; object 1 never drops
    for s in range(20):
        clip = sampler.sample(np.random.default_rng(s))
        assert clip.obj_ids == [2]  # the occluded object is tracked, prompted while visible
        seen = clip.masks[:, 0].any(axis=(1, 2))
        assert seen[0] and not seen[1:-1].all()  # the occlusion falls inside the clip, after the prompt
    assert ClipSampler(root, clip_len=4).events == []  # found only when asked for
    with pytest.raises(ValueError, match="event_prob"):
        ClipSampler(root, event_prob=1.5)


def held_out_loss(model, root) -> float:
    sampler = ClipSampler(root / "heldout", clip_len=4, max_objects=2, prompt_probs=(0, 1, 0))
    mem = MemoryConfig.from_dict(get_preset("tiny")["memory"])
    with torch.no_grad():
        return float(np.mean([unroll_clip(model, sampler.sample(np.random.default_rng(s)), mem, LossWeights(),
                                          torch.device("cpu"))["total"] for s in range(6)]))


@pytest.mark.slow
def test_short_training_beats_the_untrained_model(data, tmp_path):
    torch.manual_seed(0)
    cfg = TrainConfig(str(data), str(tmp_path / "run"), iterations=80, warmup=5, clip_len=4, save_every=40)
    untrained = held_out_loss(build_model(cfg.preset).eval(), data)
    weights = train(cfg, log=lambda *_: None)
    trained = build_model(cfg.preset)
    assert load_checkpoint(trained, weights, preset=cfg.preset).ok
    assert saved_preset(weights) == cfg.preset == "tiny_norm"
    assert held_out_loss(trained.eval(), data) < 0.9 * untrained
    rows = list(csv.DictReader(open(tmp_path / "run" / "train_log.csv")))
    assert len(rows) == 80 and float(rows[-1]["loss"]) > 0


def test_training_resumes(data, tmp_path):
    out = tmp_path / "run"
    train(TrainConfig(str(data), str(out), iterations=4, warmup=1, clip_len=3, save_every=2), log=lambda *_: None)
    assert json.loads((out / "last.json").read_text())["iteration"] == 4
    messages = []
    train(TrainConfig(str(data), str(out), iterations=6, warmup=1, clip_len=3, save_every=2), log=messages.append)
    assert any("resuming" in m and "iteration 4" in m for m in messages)
    rows = list(csv.DictReader(open(out / "train_log.csv")))
    assert [int(r["iteration"]) for r in rows] == [1, 2, 3, 4, 5, 6]


def test_from_scratch_training_estimates_batchnorm_statistics(data, tmp_path):
    """Fixed BatchNorm at its default statistics lets the signal fade; training from scratch
    first estimates them from clips (and keeps them fixed while it trains)."""
    messages = []
    weights = train(TrainConfig(str(data), str(tmp_path / "run"), iterations=1, warmup=1, clip_len=3, bn_init_clips=2),
                    log=messages.append)
    assert any("locality prior of amplitude 3.5" in m for m in messages)
    model = build_model("tiny_norm")
    load_checkpoint(model, weights)
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns and all(not torch.allclose(bn.running_var, torch.ones_like(bn.running_var)) for bn in bns)


def test_batchnorm_statistics_follow_the_weights_while_training(data, tmp_path):
    """With fixed BatchNorm, the statistics are re-estimated every ``bn_refresh_every``
    iterations from the current weights; without it they stay at their first estimate."""
    def final_stats(refresh: int):
        cfg = TrainConfig(str(data), str(tmp_path / f"run{refresh}"), iterations=4, warmup=1, clip_len=2,
                          lr=5e-2, bn_init_clips=2, bn_refresh_every=refresh)
        model = build_model("tiny_norm")
        load_checkpoint(model, train(cfg, log=lambda *_: None))
        return torch.cat([m.running_mean for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)])

    initial = final_stats(0)
    refreshed = final_stats(2)
    # same seed: identical first estimate; the refreshed one moved with four large steps
    assert not torch.allclose(initial, refreshed, atol=1e-3)


def test_recalibrating_batchnorm_keeps_its_mode(data):
    """A refresh between frozen-BatchNorm steps must not leave BatchNorm in train mode."""
    from tinysam2_ros.training.trainer import recalibrate_batchnorm

    model = build_model("tiny").train()
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for bn in bns[::2]:
        bn.eval()
    modes = [bn.training for bn in bns]
    recalibrate_batchnorm(model, ClipSampler(data, clip_len=2), 1, 0, torch.device("cpu"))
    assert [bn.training for bn in bns] == modes


def test_tiny_preset_tracks_with_one_mask():
    """Tracked frames of the demo preset decode a single mask (no IoU ranking); a
    one-click prompt still gets SAM's three candidates."""
    model = build_model("tiny")
    assert not model.use_multimask(False, 0)
    assert model.use_multimask(True, 1)


def test_learning_rate_schedule():
    from tinysam2_ros.training.trainer import _lr_at

    long = TrainConfig("d", "o", iterations=2000, warmup=100, lr=1e-3)
    assert _lr_at(long, 0) == pytest.approx(1e-5) and _lr_at(long, 99) == pytest.approx(1e-3)
    assert _lr_at(long, 1999) == pytest.approx(5e-5, rel=1e-2)  # cosine down to 5 %
    short = TrainConfig("d", "o", iterations=100, warmup=100, lr=1e-3)  # warm-up capped at a tenth
    assert _lr_at(short, 9) == pytest.approx(1e-3) and _lr_at(short, 50) < 1e-3


def test_prompt_mix_argument():
    import argparse

    from tinysam2_ros.training.config import prompt_mix as _prompt_mix

    assert _prompt_mix("1,0,0") == (1.0, 0.0, 0.0)
    for bad in ("1,2", "a,b,c", "-1,1,1", "0,0,0"):
        with pytest.raises(argparse.ArgumentTypeError):
            _prompt_mix(bad)


def test_teacher_forcing_schedule_and_unroll(data):
    from tinysam2_ros.training.trainer import teacher_forcing_at

    cfg = TrainConfig(str(data), "unused", iterations=100, teacher_forcing=0.8, teacher_forcing_until=0.5)
    assert teacher_forcing_at(cfg, 0) == pytest.approx(0.8)
    assert teacher_forcing_at(cfg, 25) == pytest.approx(0.4)
    assert teacher_forcing_at(cfg, 50) == 0.0 and teacher_forcing_at(cfg, 99) == 0.0
    assert teacher_forcing_at(TrainConfig(str(data), "unused"), 0) == 0.0  # off by default (SAM 2's recipe)

    torch.manual_seed(0)
    model = build_model("tiny").eval()
    mem = MemoryConfig.from_dict(get_preset("tiny")["memory"])
    clip = ClipSampler(data, clip_len=4, max_objects=2, prompt_probs=(0, 1, 0)).sample(np.random.default_rng(3))

    def loss(tf):
        with torch.no_grad():
            return float(unroll_clip(model, clip, mem, LossWeights(), torch.device("cpu"), tf,
                                     np.random.default_rng(0))["total"])

    assert loss(1.0) == loss(1.0)  # deterministic for a given generator
    assert loss(1.0) != loss(0.0)  # memory written from the truth, not the prediction
    with pytest.raises(ValueError, match="teacher_forcing"):
        loss(1.5)


def test_unroll_keeps_the_memory_bank_the_tracker_keeps(tmp_path):
    """Training must unroll the memory inference will have: over a clip longer than the
    slots, with TinySAM 2's quality gate and ranking, the unroll's bank after every frame
    is the streaming tracker's."""
    from pathlib import Path

    from PIL import Image

    from tinysam2_ros.evaluation.davis import annotation_paths, load_annotation, load_frames
    from tinysam2_ros.evaluation.synth import SynthConfig, generate_sequence
    from tinysam2_ros.tracking.tracker import Tracker, TrackerConfig
    from tinysam2_ros.training.data import Clip, ClipPrompt

    demo = Path(__file__).resolve().parents[1] / "models" / "demo_tiny_norm.safetensors"
    preset = get_preset("tiny_norm")
    model = build_model(preset).eval()
    load_checkpoint(model, demo, preset="tiny_norm")
    overrides = {"num_slots": 3, "keep_recent": 1, "write_threshold": 0.3}
    mem = MemoryConfig.from_dict({**preset["memory"], **overrides})
    generate_sequence(tmp_path, "s", SynthConfig(num_frames=12, difficulty=0.8, seed=7))
    frames = np.stack([np.asarray(Image.open(p).convert("RGB")) for p in load_frames(tmp_path, "s")])
    ids = np.stack([load_annotation(p) for _, p in sorted(annotation_paths(tmp_path, "s").items())])
    objs = [int(i) for i in np.unique(ids[0]) if i not in (0, 255)]
    masks = np.stack([ids == o for o in objs], axis=1)
    clip = Clip(frames, masks, objs, [ClipPrompt("mask", mask=masks[0, k]) for k in range(len(objs))])

    banks: list = []
    with torch.no_grad():
        unroll_clip(model, clip, mem, LossWeights(), torch.device("cpu"), banks_out=banks)
    tracker = Tracker(model, TrackerConfig.from_preset(preset, overrides))
    for k, o in enumerate(objs):
        tracker.add_prompt(o, mask=masks[0, k])
    tracked = []
    for t, rgb in enumerate(frames):
        tracker.step(rgb)
        if t:
            tracked.append([tracker.objects[o].bank for o in objs])
    assert banks == tracked
    newest = [tuple(range(max(1, t - 2), t + 1)) for t in range(1, len(frames))]
    assert any(b != newest[i] for i, row in enumerate(banks) for b in row), "the quality rule never acted"


def test_shifted_moves_content_and_fills_zeros():
    a = np.arange(1, 13).reshape(3, 4)
    assert shifted(a, 1, -1).tolist() == [[0, 0, 0, 0], [2, 3, 4, 0], [6, 7, 8, 0]]
    assert shifted(a, -2, 2).tolist() == [[0, 0, 9, 10], [0, 0, 0, 0], [0, 0, 0, 0]]
    assert shifted(a[None], 0, 0)[0].tolist() == a.tolist() and not shifted(a, 3, 0).any()
    assert np.array_equal(shifted(np.dstack([a, -a]), 1, -1, axes=(0, 1)), np.dstack([shifted(a, 1, -1), -shifted(a, 1, -1)]))

def test_camera_jumps_move_frames_and_masks_together(tmp_path):
    root = _video_with_an_occlusion(tmp_path)
    plain = ClipSampler(root, clip_len=4, max_objects=1, max_stride=1)
    jumpy = ClipSampler(root, clip_len=4, max_objects=1, max_stride=1, jump_prob=1.0, max_jump=0.3)
    moved = 0
    for s in range(10):
        a, b = plain.sample(np.random.default_rng(s)), jumpy.sample(np.random.default_rng(s))
        assert a.obj_ids == b.obj_ids and np.array_equal(a.frames[0], b.frames[0])  # the prompt frame stays
        offsets = set()
        for t in range(1, 4):
            if np.array_equal(a.frames[t], b.frames[t]):
                continue
            moved += 1
            # the jumped frame is the plain one moved by one offset (up to 0.3 x 32 px), and so is its mask
            found = [(dy, dx) for dy in range(-10, 11) for dx in range(-10, 11)
                     if np.array_equal(b.frames[t], shifted(a.frames[t], dy, dx, axes=(0, 1)))]
            assert len(found) == 1 and found[0] != (0, 0)
            offsets.add(found[0])
            assert np.array_equal(b.masks[t], shifted(a.masks[t], *found[0]))
        assert len(offsets) <= 1  # one jump per clip: every frame after it keeps the same offset
    assert moved > 0
    with pytest.raises(ValueError, match="jump_prob"):
        ClipSampler(root, jump_prob=2.0)
