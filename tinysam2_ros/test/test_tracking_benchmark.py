"""``tinysam2 benchmark --tracking``: variants parsed and applied to the real tracker, a
real (small) run whose table and plot come out. Timings themselves are not asserted
(speed lives in the command's output, not in tests)."""
from __future__ import annotations

from pathlib import Path

import pytest

from tinysam2_ros.backends.tracking_benchmark import Variant, run_tracking_benchmark, synthetic_frames
from tinysam2_ros.modeling.presets import get_preset

DEMO = Path(__file__).resolve().parents[1] / "models" / "demo_tiny_norm.safetensors"  # trained: masks fit objects


def test_variant_parsing_and_settings():
    v = Variant.parse("tinysam2:backend=onnxruntime,precision=int8,memory.token_budget=128,lost_after=5")
    assert (v.preset, v.backend, v.precision) == ("tinysam2", "onnxruntime", "int8")
    cfg = v.tracker_config(get_preset("tinysam2"))
    assert cfg.memory.token_budget == 128 and cfg.lost_after == 5
    assert cfg.memory.compression == get_preset("tinysam2")["memory"]["compression"]  # the rest from the preset
    assert Variant.parse("edgetam").backend == "torch"
    with pytest.raises(ValueError, match="key=value"):
        Variant.parse("tiny:backend")
    with pytest.raises(ValueError, match="no settings section 'nosuch'"):
        Variant.parse("tiny:nosuch.keep=0.3").tracker_config(get_preset("tiny"))
    with pytest.raises(ValueError, match="unknown memory settings"):
        Variant.parse("tiny:memory.nosuch=1").tracker_config(get_preset("tiny"))


def test_synthetic_frames_give_five_boxes_inside_the_frame():
    frames, boxes = synthetic_frames(2, size=(96, 128))
    assert len(frames) == 2 and frames[0].shape == (96, 128, 3)
    assert len(boxes) == 5 and all(0 <= b[0] < b[2] <= 128 and 0 <= b[1] < b[3] <= 96 for b in boxes)


def test_tracking_benchmark_runs_variants_side_by_side(tmp_path):
    lines: list[str] = []
    results = run_tracking_benchmark(
        ["tiny:backend=torch", "tiny:backend=onnxruntime", "tiny:memory.token_budget=64", "tiny:nosuch.x=1"],
        objects=(1, 2), sources=("synthetic",), frames=1, warmup=0, plot=tmp_path / "plot.png", log=lines.append)
    assert [(r.variant, r.objects) for r in results][:4] == [
        ("tiny:backend=torch", 1), ("tiny:backend=onnxruntime", 1), ("tiny:memory.token_budget=64", 1),
        ("tiny:nosuch.x=1", 1)]
    assert len(results) == 8
    ok = [r for r in results if not r.note.startswith("skipped")]
    assert len(ok) == 6 and all(r.ms > 0 and set(r.stage_ms) >= {"image_encoder", "memory_attention"} for r in ok)
    ort = [r for r in ok if r.variant == "tiny:backend=onnxruntime"]
    assert all(r.iou > 0.99 for r in ort)  # onnxruntime's masks are torch's
    text = "\n".join(lines)
    assert "ratio = median ms / median ms of tiny:backend=torch" in text and "random weights of tiny at 256x256" in text
    assert "skipped: TrackerConfig has no settings section 'nosuch'" in text
    assert (tmp_path / "plot.png").stat().st_size > 1000


def test_routed_tracking_through_onnxruntime_matches_torch():
    """Query routing sends fewer than h*w tokens through memory attention; the exported
    graph (dynamic query axis) gives the masks torch gives."""
    lines: list[str] = []
    routed = f"checkpoint={DEMO},routing.enabled=true,routing.dense_every=100,memory.retrieval_keep=0.5"
    results = run_tracking_benchmark([f"tiny_norm:backend=torch,{routed}", f"tiny_norm:backend=onnxruntime,{routed}"],
                                     objects=(2,), sources=("synthetic",), frames=3, warmup=0, log=lines.append)
    torch_run, ort_run = results
    assert not torch_run.note and not ort_run.note
    assert ort_run.iou > 0.99, ort_run.iou
    assert torch_run.query_share < 1.0 and ort_run.query_share == torch_run.query_share  # routed: Nq < h*w
