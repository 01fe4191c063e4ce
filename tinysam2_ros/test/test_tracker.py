"""The streaming tracker on the small preset: prompts, late prompts, batching, states, bounded memory."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from tinysam2_ros.memory.config import MemoryConfig
from tinysam2_ros.modeling.build import build_model
from tinysam2_ros.tracking.prompts import PromptError
from tinysam2_ros.tracking.tracker import MemoryEntry, ObjectTrack, Tracker, TrackerConfig, TrackerError


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = build_model("tiny")
    # make the random model "see" objects so that memory is written and states change
    with torch.no_grad():
        m.sam_mask_decoder.pred_obj_score_head.layers[-1].bias.fill_(2.0)
    return m


def test_preprocess_rgb_is_sam2_normalisation_bit_for_bit():
    from PIL import Image

    from tinysam2_ros.tracking.preprocess import IMAGENET_MEAN, IMAGENET_STD, preprocess_rgb

    image = np.random.default_rng(3).integers(0, 256, size=(37, 53, 3), dtype=np.uint8)
    resized = np.asarray(Image.fromarray(image).resize((32, 32), Image.BICUBIC), dtype=np.float32)
    want = ((resized / 255.0 - IMAGENET_MEAN) / IMAGENET_STD).transpose(2, 0, 1)[None]
    got = preprocess_rgb(image, 32)
    assert got.dtype == torch.float32 and got.shape == (1, 3, 32, 32)
    assert torch.equal(got, torch.from_numpy(np.ascontiguousarray(want)))
    with pytest.raises(ValueError, match="uint8"):
        preprocess_rgb(image.astype(np.float32), 32)


def frames(n: int, seed: int = 0, hw=(96, 128)) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 255, size=(*hw, 3), dtype=np.uint8)
    out = []
    for i in range(n):
        f = base.copy()
        f[20 + i : 50 + i, 30 + 2 * i : 70 + 2 * i] = (200, 40, 40)
        out.append(f)
    return out


def run(tracker: Tracker, video, prompts: dict[int, list[tuple]]) -> list:
    """prompts: frame -> [(obj_id, kwargs)], added just before that frame."""
    results = []
    for i, f in enumerate(video):
        for obj_id, kw in prompts.get(i, []):
            tracker.add_prompt(obj_id, **kw)
        results.append(tracker.step(f))
    return results


BOX1 = {"box": [30, 20, 70, 50]}
BOX2 = {"box": [80, 40, 120, 90]}


def test_two_objects_batched_equal_each_alone(model):
    video = frames(6)
    both = run(Tracker(model), video, {0: [(1, BOX1), (2, BOX2)]})
    one = run(Tracker(model), video, {0: [(1, BOX1)]})
    two = run(Tracker(model), video, {0: [(2, BOX2)]})
    for b, o1, o2 in zip(both, one, two):
        torch.testing.assert_close(b.objects[1].low_res_logits, o1.objects[1].low_res_logits, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(b.objects[2].low_res_logits, o2.objects[2].low_res_logits, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("compression", ["off", "tinysam2"])
def test_late_prompt_equals_on_time_prompt(model, compression):
    video = frames(7, seed=1)
    mem = MemoryConfig(compression=compression, pool_factor=2, token_budget=100, write_threshold=0.0)
    on_time = run(Tracker(model, TrackerConfig(memory=mem)), video, {0: [(2, BOX2)], 1: [(1, BOX1)]})
    late = Tracker(model, TrackerConfig(memory=MemoryConfig(**mem.to_dict())))
    results = []
    for i, f in enumerate(video):
        if i == 0:
            late.add_prompt(2, **BOX2)
        if i == 4:  # the detector answers 3 frames late about frame 1
            assert late.add_prompt(1, frame=1, **BOX1) == 1
        results.append(late.step(f))
    assert 1 not in results[3].objects
    for i in range(4, 7):
        for obj_id in (1, 2):
            torch.testing.assert_close(
                results[i].objects[obj_id].low_res_logits, on_time[i].objects[obj_id].low_res_logits, atol=1e-4, rtol=1e-4
            )


def test_prompt_by_stamp_and_errors(model):
    tracker = Tracker(model, TrackerConfig(feature_window=3))
    video = frames(5)
    tracker.add_prompt(1, **BOX1)
    for i, f in enumerate(video):
        tracker.step(f, stamp=10.0 + 0.1 * i)
    assert tracker.frame_for_stamp(10.3) == 3
    assert tracker.frame_for_stamp(11.0) == 5  # newer than all frames: the next one
    with pytest.raises(TrackerError, match="feature window"):
        tracker.add_prompt(1, stamp=10.0, **BOX1)
    with pytest.raises(TrackerError, match="older than the feature window"):
        tracker.add_prompt(1, frame=0, **BOX1)
    with pytest.raises(TrackerError, match="future"):
        tracker.add_prompt(1, frame=9, **BOX1)
    with pytest.raises(PromptError, match="inverted"):
        tracker.add_prompt(1, box=[50, 50, 10, 10])
    with pytest.raises(PromptError, match="non-finite"):
        tracker.add_prompt(1, box=[np.nan, 0, 10, 10])
    with pytest.raises(PromptError, match="outside"):
        tracker.add_prompt(1, box=[500, 500, 600, 600])
    with pytest.raises(PromptError, match="foreground"):
        tracker.add_prompt(1, points=[[10, 10]], labels=[0])
    with pytest.raises(TrackerError, match="unknown object id"):
        tracker.remove(42)
    with pytest.raises(TrackerError, match="positive"):
        tracker.add_prompt(0, **BOX1)


def test_remove_and_readd(model):
    tracker = Tracker(model)
    video = frames(4)
    run(tracker, video[:2], {0: [(1, BOX1), (2, BOX2)]})
    tracker.remove(1)
    r = tracker.step(video[2])
    assert set(r.objects) == {2}
    tracker.add_prompt(1, points=[[40, 30], [100, 60]], labels=[1, 0])
    r = tracker.step(video[3])
    assert set(r.objects) == {1, 2} and r.objects[1].age == 0 and r.objects[2].age == 3
    tracker.reset()
    assert tracker.objects == {} and tracker.frame_idx == -1


def test_mask_prompt(model):
    tracker = Tracker(model)
    mask = np.zeros((96, 128), dtype=bool)
    mask[20:50, 30:70] = True
    tracker.add_prompt(3, mask=mask)
    r = tracker.step(frames(1)[0])
    res = r.objects[3]
    assert res.object_score == pytest.approx(10.0) and res.state == "tracked"
    assert abs(res.area - mask.sum()) < 0.1 * mask.sum()
    with pytest.raises(PromptError, match="empty"):
        tracker.add_prompt(3, mask=np.zeros((96, 128), dtype=bool))


def _entry(f: int, score: float) -> MemoryEntry:
    return MemoryEntry(f, None, torch.zeros(4), torch.full((1, 4, 4), score), score, 0.9, torch.zeros(3))


def test_states_follow_object_score(model):
    tracker = Tracker(model, TrackerConfig(lost_after=3))
    obj = ObjectTrack(1)
    obj.cond[0] = _entry(0, 5.0)
    states = []
    for t, score in enumerate([5.0, -1.0, -1.0, -1.0, -1.0, 2.0], start=1):
        e = _entry(t, score)
        tracker._write(obj, e, t)
        states.append((tracker._state(e), e.absent_frames))
    assert states == [("tracked", 0), ("occluded", 1), ("occluded", 2), ("lost", 3), ("lost", 4), ("tracked", 0)]


def test_memory_stays_bounded_on_long_streams(model):
    mem = MemoryConfig(
        compression="tinysam2", pool_factor=2, token_budget=200, write_threshold=0.0, num_slots=4, max_cond_frames=3
    )
    tracker = Tracker(model, TrackerConfig(memory=mem, feature_window=4))
    video = frames(1, seed=3)[0]
    tracker.add_prompt(1, **BOX1)
    tracker.add_prompt(2, **BOX2)
    sizes = {}
    for t in range(80):
        r = tracker.step(video)
        sizes[t] = {k: (o.memory_bytes, o.memory_tokens) for k, o in r.objects.items()}
        if t in range(40, 52, 2):  # repeated prompts: the prompted frames kept are capped too
            tracker.add_prompt(1, **BOX1)
    assert sizes[30][2] == sizes[79][2]
    assert sizes[70][1] == sizes[79][1]  # full again 15 frames (pointer horizon) after the last prompt
    assert len(tracker.objects[1].cond) == mem.max_cond_frames
    for obj in tracker.objects.values():
        assert len(obj.entries) <= 16 + 4 and len(obj.bank) <= 4 and len(obj.bank_at) <= 5
        assert obj.memory_tokens <= 200
    assert len(tracker._frames) == 4


def test_flush_applies_a_prompt_on_the_newest_frame(model):
    video = frames(3)
    a = Tracker(model)
    for f in video:
        a.step(f)
    a.add_prompt(1, frame=a.frame_idx, **BOX1)
    now = a.flush()
    b = Tracker(model)
    b.step(video[0])
    b.step(video[1])
    b.add_prompt(1, **BOX1)
    on_time = b.step(video[2])
    torch.testing.assert_close(now.objects[1].low_res_logits, on_time.objects[1].low_res_logits)
    assert Tracker(model).flush() is None
