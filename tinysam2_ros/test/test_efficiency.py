"""Sparse memory retrieval and query routing on the small preset (real model, few frames)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from tinysam2_ros.memory.config import MemoryConfig
from tinysam2_ros.memory.retrieval import grid_subset
from tinysam2_ros.memory.routing import Router, RoutingConfig, context_score
from tinysam2_ros.modeling.build import build_model
from tinysam2_ros.modeling.stages import dense_queries, tokens_to_map
from tinysam2_ros.tracking.tracker import Tracker, TrackerConfig
from test_tracker import frames, model  # noqa: F401  (the same small model fixture and frames)

BOX1 = {"box": [30, 20, 70, 50]}
BOX2 = {"box": [80, 40, 120, 90]}


def track(model, n: int, memory: dict | None = None, routing: dict | None = None, objects=((1, BOX1),)):
    mem = {"compression": "tinysam2", "pool_factor": 2, "token_budget": 0, "num_slots": 4, "keep_recent": 4,
           **(memory or {})}
    tracker = Tracker(model, TrackerConfig(memory=MemoryConfig(**mem), routing=RoutingConfig(**(routing or {}))))
    results = []
    for i, f in enumerate(frames(n)):
        if i == 0:
            for oid, kw in objects:
                tracker.add_prompt(oid, **kw)
        results.append(tracker.step(f))
    return tracker, results


def logits(results, oid=1):
    return torch.stack([r.objects[oid].low_res_logits for r in results])


def test_stage_with_all_tokens_in_any_order_equals_dense(model):
    """The memory-attention stage takes any token set with its own positions: all tokens
    in a shuffled order give the dense output in that order."""
    torch.manual_seed(1)
    h = model.feat_size
    pix = torch.randn(2, model.hidden_dim, h, h)
    mem = torch.randn(2, 3 * 64 + 4, model.mem_dim)
    mem_pos = torch.randn_like(mem)
    coords = torch.rand(2, 3 * 64, 2) * h
    with torch.no_grad():
        dense = model.condition_on_memory(pix, mem, mem_pos, 4, memory_coords=coords)
        tokens, pos, qc = dense_queries(pix, model.constants()["pix_pos"])
        perm = torch.randperm(h * h)
        shuffled = model.attend_memory(tokens[:, perm], pos[:, perm], qc[:, perm], mem, mem_pos, 4, coords)
        back = torch.empty_like(shuffled)
        back[:, perm] = shuffled
        sub = model.attend_memory(tokens[:, perm[:50]], pos[:, perm[:50]], qc[:, perm[:50]], mem, mem_pos, 4, coords)
    torch.testing.assert_close(tokens_to_map(back, h, h), dense, atol=1e-5, rtol=1e-5)
    assert sub.shape == (2, 50, model.hidden_dim)
    assert not torch.allclose(sub, back[:, perm[:50]], atol=1e-3)  # a subset is its own problem (self-attention)


def test_retrieval_keeping_every_token_equals_dense(model):
    off, dense = track(model, 7)
    on, sparse = track(model, 7, {"retrieval_keep": 0.999})  # the sparse path, keeping all 64 tokens
    assert on.object_memory.scorer.calls > 0 and off.object_memory.scorer.calls == 0
    torch.testing.assert_close(logits(sparse), logits(dense), atol=1e-5, rtol=1e-5)


def test_retrieval_selection_is_scored_once_and_reused(model):
    tracker = Tracker(model, TrackerConfig(memory=MemoryConfig(compression="tinysam2", pool_factor=2, num_slots=4,
                                                               keep_recent=4, retrieval_keep=0.25)))
    seen: dict[int, torch.Tensor] = {}
    for i, f in enumerate(frames(9)):
        if i == 0:
            tracker.add_prompt(1, **BOX1)
        tracker.step(f)
        obj = tracker.objects[1]
        for fr, e in obj.entries.items():
            if e.kept is not None:
                if fr in seen:
                    assert e.kept is seen[fr]  # the cached selection, not a new one
                seen[fr] = e.kept
                assert e.kept.numel() == 16  # 25 % of the 8x8 pooled frame
    # every tracked memory frame but the newest was recalled sparsely, each scored once
    assert tracker.object_memory.scorer.calls == len(seen) == 9 - 1 - 2
    assert tracker.objects[1].memory_tokens == 64 + 64 + 3 * 16  # prompted + newest dense, 3 sparse


def test_retrieval_scores_with_a_grid_subset_of_the_queries(model):
    tokens = torch.arange(64 * 64, dtype=torch.float32).view(1, -1, 1)
    (sub,) = grid_subset((tokens,), 64, 64, 1024)
    rows, cols = sub.flatten().long().div(64, rounding_mode="floor"), sub.flatten().long() % 64
    assert sub.shape == (1, 1024, 1) and set(rows.tolist()) == set(cols.tolist()) == set(range(1, 64, 2))
    assert grid_subset((tokens,), 64, 64, 0)[0] is tokens and grid_subset((tokens,), 64, 64, 4096)[0] is tokens
    (odd,) = grid_subset((tokens[:, :6 * 10],), 6, 10, 15)
    assert odd.shape[1] <= 15
    # the tracker scores with the subset: same frames scored, each once
    few_t, _ = track(model, 6, {"retrieval_keep": 0.5, "retrieval_queries": 9})
    all_t, _ = track(model, 6, {"retrieval_keep": 0.5, "retrieval_queries": 0})
    assert few_t.object_memory.scorer.calls == all_t.object_memory.scorer.calls > 0


def test_retrieval_composes_with_budget_and_batches(model):
    mem = {"retrieval_keep": 0.5, "token_budget": 150}
    both_t, both = track(model, 6, mem, objects=((1, BOX1), (2, BOX2)))
    _, one = track(model, 6, mem, objects=((1, BOX1),))
    _, two = track(model, 6, mem, objects=((2, BOX2),))
    # 5 memory frames (prompted, newest, 3 sparse at half their tokens): the budget shrinks to 150 * 3.5 / 5
    assert both_t.objects[1].memory_tokens == 105
    torch.testing.assert_close(logits(both, 1), logits(one, 1), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(logits(both, 2), logits(two, 2), atol=1e-4, rtol=1e-4)


def test_routing_covering_every_token_equals_dense(model):
    _, dense = track(model, 6)
    routed_t, routed = track(model, 6, routing={"enabled": True, "dense_every": 100, "context_keep": 1.0,
                                                "max_fraction": 1.0})
    assert routed_t.objects[1].query_tokens == model.feat_size ** 2
    torch.testing.assert_close(logits(routed), logits(dense), atol=1e-5, rtol=1e-5)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """The demo model and 8 frames of a generated held-out sequence with its first masks."""
    from PIL import Image

    from tinysam2_ros.checkpoint import load_checkpoint
    from tinysam2_ros.evaluation.davis import first_annotations, load_frames
    from tinysam2_ros.evaluation.synth import SynthConfig, generate_sequence
    from tinysam2_ros.weights import DEMO_MODEL, package_file

    root = tmp_path_factory.mktemp("synth")
    generate_sequence(root, "s", SynthConfig(num_frames=8, seed=1000, size=(256, 256)))
    m = build_model("tiny_norm")
    load_checkpoint(m, package_file(DEMO_MODEL), preset="tiny_norm")
    video = [np.asarray(Image.open(p).convert("RGB")) for p in load_frames(root, "s")]
    masks = {oid: mask for oid, (_, mask) in first_annotations(root, "s").items()}
    return m.eval(), video, masks


def test_routing_sends_a_subset_dense_on_schedule(demo):
    model, video, masks = demo
    h = model.feat_size
    routing = RoutingConfig(enabled=True, dense_every=3, dilation=1, max_fraction=1.0)
    tracker = Tracker(model, TrackerConfig(memory=MemoryConfig(compression="tinysam2", pool_factor=2),
                                           routing=routing))
    dense = Tracker(model, TrackerConfig(memory=MemoryConfig(compression="tinysam2", pool_factor=2)))
    went_dense = {oid: set() for oid in masks}
    for i, f in enumerate(video[:7]):
        if i == 0:
            for oid, mask in masks.items():
                tracker.add_prompt(oid, mask=mask)
                dense.add_prompt(oid, mask=mask)
        res, ref = tracker.step(f), dense.step(f)
        for oid, o in tracker.objects.items():
            if o.last_dense == i:
                went_dense[oid].add(i)
    for oid, frames in went_dense.items():
        # dense on frame 1 (first tracked), then every 3 frames at the object's phase
        assert frames == {1} | {t for t in range(2, 7) if (t + oid) % 3 == 0}, (oid, frames)
    for o in tracker.objects.values():
        region = tracker.object_memory.router.object_region(o.entry(5).low_res_logits, h, h)
        assert int(region.sum()) <= o.query_tokens < h * h
    for oid in masks:  # the routed masks stay close to the dense ones
        a, b = res.objects[oid].mask, ref.objects[oid].mask
        assert (a & b).sum() / max((a | b).sum(), 1) > 0.8


def _routed_tracker(model, video, masks, frames: int, **routing):
    cfg = RoutingConfig(**{"enabled": True, "dense_every": 100, **routing})
    tracker = Tracker(model, TrackerConfig(memory=MemoryConfig(compression="tinysam2", pool_factor=2), routing=cfg))
    for i, f in enumerate(video[:frames]):
        if i == 0:
            for oid, mask in masks.items():
                tracker.add_prompt(oid, mask=mask)
        tracker.step(f)
    return tracker


def test_routing_batches_objects_with_routes_of_one_length(demo):
    model, video, masks = demo
    assert len(masks) >= 2
    tracker = _routed_tracker(model, video, masks, 4, context_keep=0.0, dilation=0, max_fraction=1.0, min_tokens=1)
    router = tracker.object_memory.router
    objs = list(tracker.objects.values())
    pix = tracker._frames[3].feats.pix_feat
    singles = [router.route([o], pix, 4)[0] for o in objs]
    both = router.route(objs, pix, 4)
    # one row per object, as long as the longest single route, each holding its own route
    assert both.shape == (len(objs), max(len(r) for r in singles))
    for row, single in zip(both, singles):
        assert set(single.tolist()) <= set(row.tolist())
        assert bool((row[1:] > row[:-1]).all())  # sorted, no repeats
    assert len({o.query_tokens for o in objs}) == 1  # batched through one memory-attention call
    assert objs[0].last_dense == 1 and objs[0].query_tokens < model.feat_size ** 2


def test_a_dense_object_does_not_make_the_batch_dense(demo):
    model, video, masks = demo
    ids = sorted(masks)[:2]
    assert len(ids) == 2 and (ids[0] - ids[1]) % 2  # one id even, one odd
    n = model.feat_size ** 2
    tracker = _routed_tracker(model, video, {i: masks[i] for i in ids}, 2, dense_every=2)
    for t in range(2, 6):
        tracker.step(video[t])
        due = [o for o in tracker.objects.values() if (t + o.obj_id) % 2 == 0]
        assert len(due) == 1  # the refreshes alternate: one object dense per frame, the other routed
        for o in tracker.objects.values():
            assert (o.query_tokens == n) == (o is due[0]) and (o.last_dense == t) == (o is due[0]), (t, o.obj_id)


def test_a_coarse_refresh_routes_the_grid_and_interpolates_the_rest(demo):
    model, video, masks = demo
    ids = sorted(masks)[:2]
    h = model.feat_size
    n = h * h
    tracker = _routed_tracker(model, video, {i: masks[i] for i in ids}, 2, dense_every=2, refresh_stride=3,
                              max_fraction=0.1, min_tokens=1)
    router = tracker.object_memory.router
    rows, cols = router.grid(h, h, 3)
    assert rows.tolist() == list(range(1, h, 3))
    for t in range(2, 6):
        tracker.step(video[t])
        for o in tracker.objects.values():
            refreshed = (t + o.obj_id) % 2 == 0
            assert o.last_dense == 1  # a coarse refresh is not a dense frame
            if refreshed:  # the grid and the route: more than a route, far fewer than all
                assert rows.numel() * cols.numel() < o.query_tokens <= rows.numel() * cols.numel() + 26
            else:
                assert o.query_tokens <= 26
    # the refresh keeps the masks close to dense tracking
    dense = Tracker(model, TrackerConfig(memory=MemoryConfig(compression="tinysam2", pool_factor=2)))
    for i, f in enumerate(video[:6]):
        if i == 0:
            for oid in ids:
                dense.add_prompt(oid, mask=masks[oid])
        ref = dense.step(f)
    for oid in ids:
        a, b = tracker.objects[oid].entry(5).low_res_logits > 0, ref.objects[oid].low_res_logits > 0
        assert (a & b).sum() / max((a | b).sum(), 1) > 0.7


def test_an_absent_object_is_searched_with_its_own_grid(demo):
    model, video, masks = demo
    oid = sorted(masks)[0]
    h = model.feat_size
    tracker = _routed_tracker(model, video, {oid: masks[oid]}, 3, refresh_stride=2, search_stride=4)
    router = tracker.object_memory.router
    o = tracker.objects[oid]
    assert router.grid_stride(o, 3) == 0  # present, not due: the route alone
    o.entry(2).object_score = -3.0  # as if occluded on frame 2
    assert router.grid_stride(o, 3) == 4
    route = router.route([o], tracker._frames[2].feats.pix_feat, 3)[0]
    rows, cols = router.grid(h, h, 4)
    assert set((rows[:, None] * h + cols[None]).flatten().tolist()) <= set(route.tolist())
    router.config.search_stride = 1  # live: back to a dense search
    assert router.needs_dense(o, 3) and router.route([o], tracker._frames[2].feats.pix_feat, 3) is None


def test_an_absent_object_is_searched_every_search_every_frames_at_its_phase(demo):
    """``search_every`` > 1: the search pass (dense here) comes on the frames where
    ``(t + id) % search_every == 0``; between them the absent object sends its route alone
    (its uncertain and high-context tokens), a routed frame's cost instead of a dense one."""
    model, video, masks = demo
    oid = sorted(masks)[0]
    tracker = _routed_tracker(model, video, {oid: masks[oid]}, 3, search_every=3, max_fraction=0.1)
    router = tracker.object_memory.router
    o = tracker.objects[oid]
    o.entry(2).object_score = -3.0  # as if occluded on frame 2
    due = [t for t in range(3, 9) if (t + oid) % 3 == 0]
    for t in range(3, 9):
        o.entries.setdefault(t - 1, o.entry(2))  # absent on every frame before t
        assert router.grid_stride(o, t) == (1 if t in due else 0), t
    route = router.route([o], tracker._frames[2].feats.pix_feat, next(t for t in range(3, 9) if t not in due))
    assert route is not None and route.shape[1] <= router.budget(model.feat_size ** 2)
    router.config.search_every = 1  # live: every frame again
    assert all(router.grid_stride(o, t) == 1 for t in range(3, 9))


def test_the_refresh_residual_is_exact_on_the_grid_and_linear_between(model):
    h = w = 16
    router = Router(model, RoutingConfig(enabled=True))
    rows, cols = router.grid(h, w, 4)
    y, x = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32),
                          indexing="ij")
    base = torch.randn(2, 3, h, w)
    cond = base + torch.stack([y, 2 * x - y, torch.zeros_like(x)])[None]  # a residual linear in (y, x)
    cond[:, :, 0] = 100.0  # off the grid (rows 2, 6, 10, 14): not seen
    out = router.interpolate_residual(cond, base, 4)
    torch.testing.assert_close(out[:, :, rows][:, :, :, cols], cond[:, :, rows][:, :, :, cols])
    inside = (slice(None), slice(None), slice(int(rows[0]), int(rows[-1]) + 1), slice(int(cols[0]), int(cols[-1]) + 1))
    torch.testing.assert_close(out[inside], (base + torch.stack([y, 2 * x - y, torch.zeros_like(x)]))[inside])
    # constant beyond the first grid row
    torch.testing.assert_close(out[:, :, 0] - base[:, :, 0], out[:, :, int(rows[0])] - base[:, :, int(rows[0])])


def test_routing_budget_caps_the_route_and_keeps_the_regions_structure(demo):
    model, video, masks = demo
    n = model.feat_size ** 2
    tracker = _routed_tracker(model, video, masks, 4, dilation=4, uncertainty=50.0, max_fraction=0.1, min_tokens=1)
    router = tracker.object_memory.router
    assert router.budget(n) == round(0.1 * n)
    for o in tracker.objects.values():  # uncertainty 50 puts every token in the region: the cap binds
        assert o.query_tokens == router.budget(n)
    o = next(iter(tracker.objects.values()))
    pix = tracker._frames[3].feats.pix_feat
    route = router.route([o], pix, 4)[0]
    # the whole frame is the region, so the route is the highest-context tokens
    expected = context_score(pix[:1])[0].topk(router.budget(n)).indices.sort().values
    assert route.tolist() == expected.tolist()


def test_routing_settings_are_validated_and_described():
    with pytest.raises(ValueError, match="dilation"):
        RoutingConfig(dilation=-1)
    with pytest.raises(ValueError, match="fill"):
        RoutingConfig(fill="zeros")
    with pytest.raises(ValueError, match="retrieval_keep"):
        MemoryConfig(retrieval_keep=0.0)
    from dataclasses import fields

    assert all("help" in f.metadata and "live" in f.metadata for f in fields(RoutingConfig))


def test_context_score_ranks_structure_over_flat(model):
    pix = torch.zeros(1, 8, 6, 6)
    pix[0, :, 2, 3] = 5.0  # one distinct token on a flat map
    score = context_score(pix)
    assert int(score.argmax()) == 2 * 6 + 3


def test_frames_the_memory_drops_are_not_encoded_and_memory_stays_bounded(model):
    tracker, _ = track(model, 10, {"write_threshold": 1.0, "retrieval_keep": 0.5})  # no tracked frame qualifies
    obj = tracker.objects[1]
    assert obj.bank == ()
    assert all(e.features is None for e in obj.entries.values())
    tracker, _ = track(model, 12, {"retrieval_keep": 0.5})
    obj = tracker.objects[1]
    with_features = [f for f, e in obj.entries.items() if e.features is not None]
    assert len(obj.bank) == 4 and set(obj.bank) <= set(with_features)
    assert len(with_features) <= 4 + tracker.config.feature_window


def test_write_every_strides_memory_writes_and_skips_their_encoding(model):
    tracker, _ = track(model, 9, {"write_every": 3, "num_slots": 6, "keep_recent": 6})
    obj = tracker.objects[1]
    # frame 0 is prompted; the first tracked frame is written, then those with (t + id + 1) % 3 == 0
    assert obj.bank == (1, 4, 7)
    assert [f for f, e in obj.entries.items() if e.features is not None] == [1, 4, 7]
    every, _ = track(model, 9, {"num_slots": 6, "keep_recent": 6})
    assert every.objects[1].bank == (3, 4, 5, 6, 7, 8)
    with pytest.raises(ValueError, match="write_every"):
        MemoryConfig(write_every=0)


def test_objects_tracked_together_write_memory_on_different_frames(model):
    """With a write stride, objects prompted on the same frame write their first tracked
    frame, then take their phase from their id: after that no frame runs every object's
    memory encoder (the slowest frame of several objects)."""
    mem = {"write_every": 2, "num_slots": 6, "keep_recent": 6}
    tracker, _ = track(model, 9, mem, objects=((1, BOX1), (2, BOX2)))
    banks = {oid: tracker.objects[oid].bank for oid in (1, 2)}
    assert banks == {1: (1, 2, 4, 6, 8), 2: (1, 3, 5, 7)}
    encoded = {oid: {f for f, e in tracker.objects[oid].entries.items() if e.features is not None} for oid in (1, 2)}
    assert encoded[1] & encoded[2] == {1}


def test_an_object_writes_memory_between_its_routing_refreshes(model):
    """With routing refreshing every 2nd frame and a write every 2nd frame, an object's
    memory write falls on the frames between its refreshes, not on the same ones."""
    mem = MemoryConfig(compression="tinysam2", pool_factor=2, token_budget=0, write_every=2, num_slots=6,
                       keep_recent=6)
    routing = RoutingConfig(enabled=True, dense_every=2, refresh_stride=3, max_fraction=0.1)
    tracker = Tracker(model, TrackerConfig(memory=mem, routing=routing))
    queries, writes = {}, set()
    for t, f in enumerate(frames(9)):
        if t == 0:
            tracker.add_prompt(1, **BOX1)
        tracker.step(f)
        queries[t] = tracker.objects[1].query_tokens
        entry = tracker.objects[1].entries.get(t)  # None on the prompted frame
        if entry is not None and entry.features is not None:
            writes.add(t)
    routed = min(queries[t] for t in range(2, 9))
    refreshes = {t for t in range(2, 9) if queries[t] > routed}  # route + stride-3 grid
    assert refreshes and writes - {0, 1}
    assert not refreshes & writes
