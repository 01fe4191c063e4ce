"""Training at scale: flags from TrainConfig, torchrun data parallel (gloo), resume with
another world size, mixed precision, loader workers, and starting from published weights."""
from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from tinysam2_ros.checkpoint import state_dict_from_key_listing
from tinysam2_ros.evaluation.synth import SynthConfig, generate_sequence
from tinysam2_ros.modeling.build import build_model
from tinysam2_ros.training.config import TrainConfig, add_arguments, from_arguments
from tinysam2_ros.training.init_weights import init_from_checkpoint
from tinysam2_ros.training.trainer import train

REPO = Path(__file__).resolve().parents[1]
QUIET = dict(log=lambda *_: None)


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    root = tmp_path_factory.mktemp("toy")
    for i in range(3):
        generate_sequence(root, f"v{i}", SynthConfig(num_frames=6, size=(64, 64), num_objects=2, seed=i))
    return root


def _rows(out: Path) -> list[dict]:
    return list(csv.DictReader(open(out / "train_log.csv")))


# a short run of the tiny preset: 2 clips of 2 frames per iteration
SHORT = dict(preset="tiny", iterations=3, batch_clips=2, clip_len=2, max_objects=1, warmup=1, bn_init_clips=1,
             workers=0, save_every=1, appearance_weight=0.5)


def _cli(cfg: dict) -> list[str]:
    args = []
    for k, v in cfg.items():
        args += [f"--{k.replace('_', '-')}", str(v)]
    return args


def test_every_train_option_is_one_flag_with_its_help():
    p = argparse.ArgumentParser()
    add_arguments(p)
    flags = {a.dest: a for a in p._actions if a.dest != "help"}
    assert set(flags) == {f.name for f in fields(TrainConfig)}
    assert all(f.metadata["help"] and flags[f.name].help.startswith(f.metadata["help"]) for f in fields(TrainConfig))
    args = p.parse_args(["d", "--out", "o", "--init", "w.pt", "--prompt-mix", "1,1,0", "--amp", "bf16",
                         "--no-freeze-bn", "--batch-clips", "4"])
    cfg = from_arguments(args)
    assert (cfg.data_root, cfg.out_dir, cfg.init_checkpoint, cfg.prompt_mix) == ("d", "o", "w.pt", (1.0, 1.0, 0.0))
    assert cfg.amp == "bf16" and cfg.freeze_bn is False and cfg.batch_clips == 4 and cfg.lr == TrainConfig.lr
    with pytest.raises(SystemExit):
        p.parse_args(["d", "--out", "o", "--amp", "fp8"])
    with pytest.raises(ValueError, match="batch_clips must lie in"):
        from_arguments(p.parse_args(["d", "--out", "o", "--batch-clips", "0"]))


def test_bad_option_is_a_clear_cli_error(toy, tmp_path, capsys):
    from tinysam2_ros.cli import main

    assert main(["train", str(toy), "--out", str(tmp_path), "--event-clips", "2"]) == 2
    assert "event_clips must lie in [0.0, 1.0]" in capsys.readouterr().err


def test_two_gloo_processes_take_the_steps_of_one_and_resume_with_any_world_size(toy, tmp_path):
    """2 torchrun processes (1 clip each) log the losses of 1 process with both clips;
    stopped at iteration 2, the run resumes in one process and ends where the
    uninterrupted one-process run ends."""
    single = tmp_path / "single"
    train(TrainConfig(str(toy), str(single), **SHORT), **QUIET)

    ddp = tmp_path / "ddp"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "tinysam2_ros.cli", "train", str(toy), "--out", str(ddp), "--stop-at", "2", "--val-data", str(toy),
           "--val-clips", "1", *_cli(SHORT)]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "2 processes (gloo), 1 of 2 clips per iteration each" in res.stdout + res.stderr
    assert json.loads((ddp / "last.json").read_text())["world_size"] == 2
    assert [r["iteration"] for r in _rows(ddp)] == ["1", "2"]
    val = (ddp / "val_log.csv").read_text().splitlines()  # process 0 validated once, where it stopped
    assert val[0] == "iteration,val_loss" and len(val) == 2 and val[1].startswith("2,") and float(val[1][2:]) > 0

    messages = []
    train(TrainConfig(str(toy), str(ddp), **SHORT), log=messages.append)
    assert any("at iteration 2 (saved by 2 process(es), continued by 1)" in m for m in messages)
    a, b = _rows(single), _rows(ddp)
    assert [r["iteration"] for r in b] == ["1", "2", "3"]
    for ra, rb in zip(a, b):
        for k in ("loss", "dice", "focal", "appearance"):
            assert float(rb[k]) == pytest.approx(float(ra[k]), rel=1e-3, abs=1e-5), (ra["iteration"], k)
    assert float(a[0]["loss"]) != pytest.approx(float(a[-1]["loss"]), rel=1e-3)  # training moved the loss
    wa, wb = load_file(str(single / "last.safetensors")), load_file(str(ddp / "last.safetensors"))
    assert wa.keys() == wb.keys()
    # Adam moves a parameter by about lr per step whatever its gradient's size, so the float
    # rounding of a 2-process gradient average can move a near-zero-gradient weight by a
    # part of one step (1.01e-4 seen in CI); a lost optimizer state or a wrong data shard moves them by about a step or more.
    half_step = TrainConfig(str(toy), str(single), **SHORT).lr / 2
    assert max(float((wa[k].double() - wb[k].double()).abs().max()) for k in wa if wa[k].is_floating_point()) < half_step


def test_loader_workers_give_the_clips_of_the_training_process(toy, tmp_path):
    train(TrainConfig(str(toy), str(tmp_path / "w0"), **{**SHORT, "iterations": 2}), **QUIET)
    train(TrainConfig(str(toy), str(tmp_path / "w2"), **{**SHORT, "iterations": 2, "workers": 2}), **QUIET)
    assert [r["loss"] for r in _rows(tmp_path / "w0")] == [r["loss"] for r in _rows(tmp_path / "w2")]


def test_bf16_autocast_trains_on_cpu(toy, tmp_path):
    out = tmp_path / "bf16"
    train(TrainConfig(str(toy), str(out), **{**SHORT, "iterations": 2, "amp": "bf16"}), **QUIET)
    plain = tmp_path / "fp32"
    train(TrainConfig(str(toy), str(plain), **{**SHORT, "iterations": 2}), **QUIET)
    bf, fp = _rows(out), _rows(plain)
    assert all(np.isfinite(float(r["loss"])) for r in bf)
    # same clips, lower precision: close to the float32 losses but not identical
    assert float(bf[0]["loss"]) == pytest.approx(float(fp[0]["loss"]), rel=0.05)
    assert bf[0]["loss"] != fp[0]["loss"]


def test_fp16_keeps_its_gradient_scaler_across_a_resume(toy, tmp_path):
    """fp16 autocast steps through a GradScaler, whose scale (halved on every overflow)
    is saved in last.json and taken up again by the resumed run."""
    out = tmp_path / "fp16"
    train(TrainConfig(str(toy), str(out), **{**SHORT, "amp": "fp16", "stop_at": 2}), **QUIET)
    saved = json.loads((out / "last.json").read_text())["scaler"]
    # the first steps overflow at the initial 2**16 and are skipped: the scale is lower now
    assert 0 < saved["scale"] < 65536.0 and all(np.isfinite(float(r["loss"])) for r in _rows(out))
    messages = []
    train(TrainConfig(str(toy), str(out), **{**SHORT, "amp": "fp16", "iterations": 3}), log=messages.append)
    after = json.loads((out / "last.json").read_text())["scaler"]
    assert after["scale"] in (saved["scale"], saved["scale"] / 2)  # continued, not restarted at 65536
    assert any("at iteration 2" in m for m in messages)


def test_resume_refuses_a_pickled_state(toy, tmp_path):
    torch.save({"iteration": 1}, tmp_path / "last.pt")
    with pytest.raises(ValueError, match="pickled state of an older version"):
        train(TrainConfig(str(toy), str(tmp_path), **SHORT), **QUIET)


def test_sam21_layout_transfers_all_but_the_trunk_and_neck_inputs(reference_dir, tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "sam21.safetensors"
    save_file(state_dict_from_key_listing(reference_dir / "sam2.1_hiera_t_state_dict_keys.tsv"), str(path))
    model = build_model("tinysam2")
    report = init_from_checkpoint(model, path, "tinysam2")
    assert report.from_checkpoint and not any(k.startswith("image_encoder.trunk.") for k in report.from_checkpoint)
    assert all(k.startswith("image_encoder.trunk.") for k in report.initialised)
    assert {k.split(":")[0] for k in report.shape_mismatch} == {f"image_encoder.neck.convs.{i}.conv.weight"
                                                               for i in range(4)}
    assert "memory_attention.layers.3.cross_attn_image.q_proj.weight" in report.from_checkpoint
    assert float(model.state_dict()["sam_mask_decoder.iou_token.weight"].abs().sum()) == 0  # the file's zeros
    with pytest.raises(ValueError, match="no tensor of"):
        save_file({"x": torch.zeros(2)}, str(tmp_path / "other.safetensors"))
        init_from_checkpoint(model, tmp_path / "other.safetensors", "tinysam2")


@pytest.mark.slow
def test_tinysam2_from_edgetam_weights_loads_steps_and_saves(edgetam_fixture_dir, toy, tmp_path, capsys):
    """The TinySAM 2 recipe from an EdgeTAM checkpoint (the fixture's weights as a stand-in):
    what transfers is reported, the frozen image encoder stays the checkpoint's, the rest trains."""
    from tinysam2_ros.cli import main

    ckpt = edgetam_fixture_dir / "checkpoint_fp16.pt"
    out = tmp_path / "ft"
    assert main(["train", str(toy), "--out", str(out), "--preset", "tinysam2", "--init", str(ckpt),
                 "--freeze-image-encoder", "--iterations", "1", "--clip-len", "2", "--max-objects", "1",
                 "--workers", "0", "--lr", "1e-3"]) == 0
    printed = capsys.readouterr().out
    report = json.loads((out / "init_report.json").read_text())
    assert f"{report['counts']['from_checkpoint']} tensors from {ckpt}" in printed
    assert "memory_attention.layers.2 (26), memory_attention.layers.3 (26)" in printed  # the log names them
    assert report["counts"]["from_checkpoint"] == len(report["from_checkpoint"]) > 900
    assert "memory_attention.layers.2.linear1.weight" in report["initialised"]  # EdgeTAM has 2 of the 4 layers
    assert any(k.startswith("spatial_perceiver.") for k in report["unused"])
    theirs = torch.load(ckpt, map_location="cpu", weights_only=True)["model"]
    saved = load_file(str(out / "model.safetensors"))  # fp16, like the checkpoint
    enc = [k for k in saved if k.startswith("image_encoder.") and saved[k].is_floating_point()]
    assert enc and all(torch.equal(saved[k], theirs[k]) for k in enc)
    moved = [k for k in report["from_checkpoint"] if k.startswith("sam_mask_decoder.") and
             not torch.equal(saved[k], theirs[k])]
    assert moved, "nothing outside the frozen encoder was trained"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (the prepared check for a GPU machine)")
@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_cuda_training_with_autocast_and_pinned_workers(toy, tmp_path, amp):
    """On a GPU: autocast, pinned clips from 2 workers; the losses are those of float32
    on the same clips within autocast's precision."""
    runs = {}
    for mode in ("off", amp):
        out = tmp_path / mode
        train(TrainConfig(str(toy), str(out), **{**SHORT, "iterations": 2, "device": "cuda", "amp": mode,
                                                 "workers": 2}), **QUIET)
        runs[mode] = _rows(out)
    assert all(np.isfinite(float(r["loss"])) for r in runs[amp])
    assert float(runs[amp][0]["loss"]) == pytest.approx(float(runs["off"][0]["loss"]), rel=0.05)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA GPUs (NCCL)")
def test_two_nccl_processes_take_the_steps_of_one(toy, tmp_path):
    cfg = {**SHORT, "device": "cuda"}
    train(TrainConfig(str(toy), str(tmp_path / "one"), **cfg), **QUIET)
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    res = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          "-m", "tinysam2_ros.cli", "train", str(toy), "--out", str(tmp_path / "two"), *_cli(cfg)],
                         env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "2 processes (nccl)" in res.stdout + res.stderr
    for ra, rb in zip(_rows(tmp_path / "one"), _rows(tmp_path / "two")):
        assert float(rb["loss"]) == pytest.approx(float(ra["loss"]), rel=1e-3)
