"""TinySAM 2 memory: retention rule, pooling with true positions, token selection, config, eval."""
from __future__ import annotations

import json

import pytest
import torch

from tinysam2_ros.cli import main
from tinysam2_ros.evaluation.synth import SynthConfig, generate_sequence
from tinysam2_ros.memory.compression import TokenLayout, pool_tokens, select_tokens, token_scores
from tinysam2_ros.memory.config import MemoryConfig
from tinysam2_ros.memory.quality import frame_quality, mask_agreement, select_cond_frames, select_slots
from tinysam2_ros.modeling.presets import SAM21_MEMORY_TOKENS, get_preset
from tinysam2_ros.modeling.rope import grid_coords


def test_quality_combines_presence_iou_and_agreement():
    assert frame_quality(20.0, 0.9, 1.0) == pytest.approx(0.9)
    assert frame_quality(-20.0, 0.9, 1.0) < 1e-6  # object absent: worthless as memory
    assert frame_quality(0.0, 1.0, 0.5) == pytest.approx(0.25)
    a = torch.zeros(1, 8, 8)
    a[:, :4] = 1.0
    b = torch.zeros(1, 8, 8)
    b[:, 2:6] = 1.0
    assert mask_agreement(a, None) == 1.0
    assert mask_agreement(a, a) == 1.0
    assert mask_agreement(a, b) == pytest.approx(16 / 48)
    assert mask_agreement(-a, -b) == 1.0  # both empty


def test_slots_keep_newest_then_best_quality_with_recency_decay():
    cands = {10: 0.9, 11: 0.2, 12: 0.95, 13: 0.5, 14: 0.1}
    assert select_slots(cands, now=15, num_slots=5, keep_recent=1, half_life=30) == [10, 11, 12, 13, 14]
    # 3 slots: the newest (14) always, then the two best scores (12, 10)
    assert select_slots(cands, now=15, num_slots=3, keep_recent=1, half_life=30) == [10, 12, 14]
    # strong recency decay prefers the newer of two good frames
    assert select_slots({0: 0.9, 50: 0.8, 60: 0.1}, now=61, num_slots=2, keep_recent=1, half_life=5) == [50, 60]
    assert select_slots({0: 0.9, 50: 0.8, 60: 0.1}, now=61, num_slots=2, keep_recent=1, half_life=1e6) == [0, 60]


def test_prompted_frames_keep_first_and_newest():
    assert select_cond_frames([5, 1, 9], 4) == [1, 5, 9]
    assert select_cond_frames([0, 3, 6, 9, 12], 3) == [0, 9, 12]
    assert select_cond_frames([0, 3, 6], 1) == [6]


def test_pooling_averages_features_pos_and_positions():
    layout = TokenLayout(leading=2, grid_h=4, grid_w=6)
    n = layout.num_tokens
    feats = torch.randn(3, n, 5)
    pos = torch.randn(3, n, 5)
    coords = torch.cat([torch.zeros(2, 2), grid_coords(4, 6)])
    f, p, c, new = pool_tokens(feats, pos, coords, layout, 2)
    assert new == TokenLayout(2, 2, 3) and f.shape == (3, 2 + 6, 5) and c.shape == (8, 2)
    torch.testing.assert_close(f[:, :2], feats[:, :2])  # leading tokens untouched
    grid = feats[:, 2:].reshape(3, 4, 6, 5)
    torch.testing.assert_close(f[:, 2], grid[:, 0:2, 0:2].mean(dim=(1, 2)))  # top-left 2x2 cell
    torch.testing.assert_close(f[:, 2 + 5], grid[:, 2:4, 4:6].mean(dim=(1, 2)))
    torch.testing.assert_close(p[:, 3], pos[:, 2:].reshape(3, 4, 6, 5)[:, 0:2, 2:4].mean(dim=(1, 2)))
    assert c[2].tolist() == [0.5, 0.5] and c[3].tolist() == [2.5, 0.5] and c[7].tolist() == [4.5, 2.5]
    with pytest.raises(ValueError, match="does not divide"):
        pool_tokens(feats, pos, coords, layout, 4)


def test_redundancy_selection_drops_repeated_tokens_and_keeps_positions():
    torch.manual_seed(0)
    b, t, n, c = 2, 3, 10, 8
    base = torch.randn(b, 1, n, c)
    frames = base.repeat(1, t, 1, 1).clone()
    frames[:, 2, :4] = torch.randn(b, 4, c)  # frame 2 carries 4 new tokens at places 0..3
    coords = grid_coords(2, 5)[None].expand(t, -1, -1)
    pos = torch.randn(b, t, n, c)
    scores = token_scores(frames, "redundancy")
    assert scores.shape == (b, t, n)
    kf, kp, kc = select_tokens(frames, pos, coords, budget=4, rule="redundancy")
    assert kf.shape == (b, 4, c) and kc.shape == (b, 4, 2)
    torch.testing.assert_close(kf, frames[:, 2, :4])
    torch.testing.assert_close(kp, pos[:, 2, :4])
    torch.testing.assert_close(kc[0], coords[2, :4])
    # recency keeps the newest frame's tokens; no budget keeps everything
    kf, _, _ = select_tokens(frames, pos, coords, budget=n, rule="recency")
    torch.testing.assert_close(kf, frames[:, 2])
    kf, _, kc = select_tokens(frames, pos, coords, budget=0, rule="redundancy")
    assert kf.shape == (b, t * n, c) and kc.shape == (b, t * n, 2)


def test_config_validation_and_presets():
    with pytest.raises(ValueError, match="pool_factor"):
        MemoryConfig(pool_factor=0)
    with pytest.raises(ValueError, match="similarity"):
        MemoryConfig(similarity="cosine?")
    with pytest.raises(ValueError, match="unknown memory settings"):
        MemoryConfig.from_dict({"budget": 3})
    mem = MemoryConfig.from_dict(get_preset("tinysam2")["memory"])
    per_frame = (64 // mem.pool_factor) ** 2
    fed = min(mem.token_budget, (mem.num_slots + 1) * per_frame)
    assert fed / SAM21_MEMORY_TOKENS <= 0.07
    assert get_preset("sam2.1_hiera_t")["memory"]["compression"] == "off"


def test_eval_command_reports_compression(tmp_path, capsys):
    for i in range(2):
        generate_sequence(tmp_path, f"seq{i}", SynthConfig(num_frames=6, size=(64, 96), num_objects=2, seed=i))
    out_json = tmp_path / "res.json"
    args = ["eval", str(tmp_path), "--preset", "tiny", "--random-weights", "--json", str(out_json), "--prompt", "box",
            "--write-threshold", "0", "--token-budget", "100"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "overall" in printed and "% SAM2.1" in printed
    res = json.loads(out_json.read_text())
    assert [s["sequence"] for s in res["sequences"]] == ["seq0", "seq1"]
    assert res["memory"]["compression"] == "tinysam2" and res["memory"]["token_budget"] == 100
    assert 0 < res["overall"]["memory_tokens"] <= 100
    assert set(res["sequences"][0]["objects"]) == {"1", "2"}
    for key in ("image_encoder", "memory_attention", "mask_decoder", "memory_encoder", "total"):
        assert res["overall"]["ms_per_frame"][key] >= 0
    assert main(["eval", str(tmp_path / "nothing")]) == 2
    # weights that name their preset: eval builds it without --preset and refuses another one
    from tinysam2_ros.modeling.build import build_model
    from tinysam2_ros.training.trainer import save_weights

    save_weights(build_model("tiny_norm"), tmp_path / "w.safetensors", preset="tiny_norm")
    capsys.readouterr()
    assert main(["eval", str(tmp_path), "--checkpoint", str(tmp_path / "w.safetensors"), "--max-frames", "2"]) == 0
    assert "overall" in capsys.readouterr().out
    assert main(["eval", str(tmp_path), "--preset", "tiny", "--checkpoint", str(tmp_path / "w.safetensors")]) == 2
    assert "saved from preset 'tiny_norm'" in capsys.readouterr().err


def test_memory_report_table_and_plot(tmp_path, capsys):
    generate_sequence(tmp_path, "seq0", SynthConfig(num_frames=5, size=(64, 96), num_objects=1, seed=0))
    settings = {"full": {"compression": "off"}, "small": {"compression": "tinysam2", "pool_factor": 2,
                                                          "token_budget": 40, "write_threshold": 0.0}}
    from tinysam2_ros.evaluation.sweep import memory_report

    rows = memory_report(tmp_path, "tiny", None, tmp_path / "rep", settings=settings, log=lambda *_: None,
                         random_weights=True)
    assert [r["setting"] for r in rows] == ["full", "small"]
    assert rows[1]["memory_tokens"] <= 40 < rows[0]["memory_tokens"]
    assert (tmp_path / "rep" / "memory_report.png").stat().st_size > 1000
    assert json.loads((tmp_path / "rep" / "memory_report.json").read_text())[0]["setting"] == "full"
