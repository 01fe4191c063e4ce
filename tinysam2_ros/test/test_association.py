"""Association of detector boxes with tracks, without ROS (tracking/association.py)."""
from __future__ import annotations

import math

import numpy as np
import pytest

from tinysam2_ros.tracking.association import (
    AssociationConfig,
    Associator,
    Detection,
    TrackBox,
    check_detection,
    clip_box,
    iou_matrix,
)


def kinds(actions):
    return sorted((a.kind, a.track_id, a.label) for a in actions)


def test_iou_matrix():
    a = np.array([[0, 0, 10, 10], [0, 0, 0, 5]])
    b = np.array([[5, 0, 15, 10], [0, 0, 10, 10], [20, 20, 30, 30]])
    iou = iou_matrix(a, b)
    assert iou.shape == (2, 3)
    assert iou[0].tolist() == pytest.approx([50 / 150, 1.0, 0.0])
    assert iou[1].tolist() == [0.0, 0.0, 0.0]  # a zero-area box overlaps nothing (no division by zero)


def test_one_track_per_object_and_optimal_matching():
    a = Associator()
    dets = [Detection((10, 10, 50, 50), "cup", 0.9), Detection((60, 10, 100, 50), "cup", 0.9)]
    acts = a.associate(0, dets, live={})
    assert [x.kind for x in acts] == ["create", "create"]
    for tid, x in zip((1, 2), acts):
        a.created(tid, x.box, 0)
    a.record(0, {1: TrackBox((10, 10, 50, 50)), 2: TrackBox((60, 10, 100, 50))})
    # the same objects, moved: matched, no new track; the greedy choice (det 0 -> track 2, IoU
    # 0.33) would leave det 1 unmatched, the optimal assignment keeps both ids
    moved = [Detection((40, 10, 80, 50), "cup", 0.9), Detection((12, 10, 52, 50), "cup", 0.9)]
    a.record(1, {1: TrackBox((12, 10, 52, 50)), 2: TrackBox((45, 10, 85, 50))})
    assert kinds(a.associate(1, moved, live={1: "cup", 2: "cup"})) == []
    assert a.counts["matched"] == 2 and a.counts["created"] == 2
    assert a.tracks[2].box == (40, 10, 80, 50) and a.tracks[1].box == (12, 10, 52, 50)


def test_pending_track_is_not_created_twice():
    """A track created from a box has no mask yet: its detection box is its reference."""
    a = Associator()
    (x,) = a.associate(5, [Detection((10, 10, 50, 50), "", 0.9)], live={})
    a.created(1, x.box, 5)
    assert a.associate(5, [Detection((11, 10, 51, 50), "", 0.9)], live={1: ""}) == []


def test_class_aware():
    a = Associator()
    a.created(1, (10, 10, 50, 50), 0)
    a.record(0, {1: TrackBox((10, 10, 50, 50), label="person")})
    acts = a.associate(0, [Detection((10, 10, 50, 50), "dog", 0.9)], live={1: "person"})
    assert kinds(acts) == [("create", 0, "dog")]  # same place, other class: another object
    b = Associator(AssociationConfig(class_aware=False))
    b.created(1, (10, 10, 50, 50), 0)
    assert b.associate(0, [Detection((10, 10, 50, 50), "dog", 0.9)], live={1: "person"}) == []
    c = Associator()
    c.created(1, (10, 10, 50, 50), 0)  # a track without a label (a click) matches any class
    assert c.associate(0, [Detection((10, 10, 50, 50), "dog", 0.9)], live={1: ""}) == []


def test_min_hits_needs_consecutive_arrays_and_scores():
    a = Associator(AssociationConfig(min_hits=3))
    box = Detection((10, 10, 50, 50), "cup", 0.9)
    assert a.associate(0, [box], live={}) == []
    assert a.associate(1, [box], live={}) == []
    assert a.associate(2, [], live={}) == []  # missed once: starts again
    assert a.associate(3, [box], live={}) == []
    assert a.associate(4, [box], live={}) == []
    assert kinds(a.associate(5, [box], live={})) == [("create", 0, "cup")]
    weak = Associator()
    assert weak.associate(0, [Detection((10, 10, 50, 50), "cup", 0.4)], live={}) == []  # < create_score
    assert weak.associate(0, [Detection((10, 10, 50, 50), "cup", 0.1)], live={}) == []  # < min_score
    assert weak.counts["weak_unmatched"] == 1 and weak.counts["low_score"] == 1


def test_reacquisition_after_occlusion_keeps_the_id():
    a = Associator()
    a.created(1, (10, 10, 50, 50), 0)
    a.record(0, {1: TrackBox((10, 10, 50, 50))})
    a.record(5, {1: TrackBox(None, state="occluded")})  # no mask while hidden
    acts = a.associate(5, [Detection((14, 10, 54, 50), "", 0.9)], live={1: ""})
    assert kinds(acts) == [("refine", 1, "")] and acts[0].box == (14, 10, 54, 50)
    assert a.counts["reacquired"] == 1 and a.counts["created"] == 0
    a.record(7, {1: TrackBox((14, 10, 54, 50), state="lost")})
    assert kinds(a.associate(7, [Detection((14, 10, 54, 50), "", 0.9)], live={1: ""})) == [("refine", 1, "")]
    off = Associator(AssociationConfig(refine_lost=False))
    off.created(1, (10, 10, 50, 50), 0)
    off.record(5, {1: TrackBox(None, state="occluded")})
    assert off.associate(5, [Detection((14, 10, 54, 50), "", 0.9)], live={1: ""}) == []


def test_drift_is_refined_with_a_gap():
    a = Associator(AssociationConfig(refine_iou=0.5, refine_gap=3))
    a.created(1, (10, 10, 50, 50), 0)
    a.record(3, {1: TrackBox((10, 10, 50, 50))})
    assert a.associate(3, [Detection((12, 10, 52, 50), "", 0.9)], live={1: ""}) == []  # on target
    # the mask shrank to a corner: the detection still matches through its last box, and is given as REFINE
    a.record(4, {1: TrackBox((12, 10, 22, 20))})
    assert kinds(a.associate(4, [Detection((12, 10, 52, 50), "", 0.9)], live={1: ""})) == [("refine", 1, "")]
    a.record(5, {1: TrackBox((12, 10, 22, 20))})
    assert a.associate(5, [Detection((12, 10, 52, 50), "", 0.9)], live={1: ""}) == []  # within refine_gap
    a.record(7, {1: TrackBox((12, 10, 22, 20))})
    assert kinds(a.associate(7, [Detection((12, 10, 52, 50), "", 0.9)], live={1: ""})) == [("refine", 1, "")]
    assert a.counts["drift_refined"] == 2


def test_drop_after_misses_is_off_by_default():
    a = Associator()
    a.created(1, (10, 10, 50, 50), 0)
    for f in range(50):
        assert a.associate(f, [], live={1: ""}) == []
    b = Associator(AssociationConfig(drop_after=3))
    b.created(1, (10, 10, 50, 50), 0)
    b.created(2, (60, 10, 100, 50), 0)
    seen = Detection((60, 10, 100, 50), "", 0.9)
    assert b.associate(1, [seen], live={1: "", 2: ""}) == []
    assert b.associate(2, [seen], live={1: "", 2: ""}) == []
    assert kinds(b.associate(3, [seen], live={1: "", 2: ""})) == [("drop", 1, "")]
    assert b.counts["dropped"] == 1


def test_detector_ids_follow_their_track():
    a = Associator()
    (x,) = a.associate(0, [Detection((10, 10, 50, 50), "", 0.9, det_id="7")], live={})
    a.created(1, x.box, 0, det_id="7")
    # a jump no IoU would follow: the detector's id says it is the same object
    assert a.associate(1, [Detection((70, 60, 110, 90), "", 0.9, det_id="7")], live={1: ""}) == []
    assert kinds(a.associate(2, [Detection((10, 60, 30, 90), "", 0.9, det_id="8")], live={1: ""}))[0][0] == "create"


def test_removed_tracks_are_forgotten():
    a = Associator()
    a.created(1, (10, 10, 50, 50), 0)
    acts = a.associate(1, [Detection((10, 10, 50, 50), "", 0.9)], live={})  # track 1 was removed meanwhile
    assert kinds(acts) == [("create", 0, "")] and 1 not in a.tracks


@pytest.mark.parametrize("box,score,cause", [
    ((float("nan"), 0, 10, 10), 0.9, "non_finite"),
    ((0, 0, math.inf, 10), 0.9, "non_finite"),
    ((0, 0, 10, 10), float("nan"), "non_finite"),
    ((10, 10, 5, 20), 0.9, "bad_size"),
    ((10, 10, 10, 20), 0.9, "bad_size"),
    ((200, 10, 250, 20), 0.9, "outside_image"),
    ((-50, -50, -1, -1), 0.9, "outside_image"),
])
def test_bad_detections_are_refused(box, score, cause):
    bad = check_detection(Detection(box, "cup", score), (96, 128), set())
    assert bad is not None and bad[0] == cause and bad[1]


def test_class_list_and_clipping():
    assert check_detection(Detection((0, 0, 10, 10), "cup", 0.9), (96, 128), {"cup"}) is None
    cause, reason = check_detection(Detection((0, 0, 10, 10), "ufo", 0.9), (96, 128), {"cup", "dog"})
    assert cause == "unknown_class" and "'ufo'" in reason
    assert clip_box((-5, 10, 140, 100), (96, 128)) == (0.0, 10, 128.0, 96.0)
    assert AssociationConfig(classes=" cup, dog ,").class_set == {"cup", "dog"}


def test_config_ranges():
    with pytest.raises(ValueError, match="detections.match_iou"):
        AssociationConfig(match_iou=1.5).validate()
    with pytest.raises(ValueError, match="detections.min_hits"):
        Associator(AssociationConfig(min_hits=0))


def test_velocity_follows_a_moving_object_between_sparse_detections():
    """Every 3rd frame, 8 px per frame: the last box alone overlaps the next one too little."""
    a = Associator(AssociationConfig(match_iou=0.3))
    a.created(1, (0, 0, 40, 40), 0)
    acts = a.associate(3, [Detection((24, 0, 64, 40), "", 0.9)], live={1: ""})  # IoU 0.25 with the last box
    assert kinds(acts) == [("create", 0, "")]  # no velocity known yet: taken for another object
    b = Associator(AssociationConfig(match_iou=0.3))
    b.created(1, (0, 0, 40, 40), 0)
    assert b.associate(1, [Detection((8, 0, 48, 40), "", 0.9)], live={1: ""}) == []  # learns 8 px per frame
    assert b.associate(4, [Detection((32, 0, 72, 40), "", 0.9)], live={1: ""}) == []  # predicted: IoU 1
    assert b.associate(7, [Detection((56, 0, 96, 40), "", 0.9)], live={1: ""}) == []
    assert b.counts["matched"] == 3 and b.counts["created"] == 0
    # the object stops: the unmoved last box still matches
    assert b.associate(16, [Detection((57, 0, 97, 40), "", 0.9)], live={1: ""}) == []
    assert b.counts["created"] == 0


def test_a_drifted_mask_cannot_take_another_objects_detection():
    a = Associator()
    a.created(1, (10, 10, 50, 50), 0)
    a.created(2, (100, 10, 140, 50), 0)
    # track 2's mask drifted onto object 1; its own detections say it is elsewhere
    a.record(5, {1: TrackBox((10, 10, 50, 50)), 2: TrackBox((10, 10, 50, 50))})
    acts = a.associate(5, [Detection((11, 10, 51, 50), "", 0.9), Detection((101, 10, 141, 50), "", 0.9)],
                       live={1: "", 2: ""})
    assert kinds(acts) == [("refine", 2, "")]  # matched by its own detection, and refined back onto it
    assert a.assignments == {("", 1): 2, ("", 2): 2}  # created + matched each; no swap


def test_an_object_that_moved_while_occluded_comes_back_with_its_id():
    a = Associator()
    a.created(1, (10, 10, 50, 50), 0)
    a.created(2, (200, 10, 240, 50), 0)
    a.record(20, {1: TrackBox(None, state="occluded"), 2: TrackBox((200, 10, 240, 50))})
    back = Detection((50, 20, 90, 60), "", 0.9)  # IoU 0 with where it was hidden, 0.9 diagonals away
    assert kinds(a.associate(20, [back], live={1: "", 2: ""})) == [("refine", 1, "")]
    assert a.counts["reacquired"] == 1 and a.counts["created"] == 0
    far = Associator()
    far.created(1, (10, 10, 50, 50), 0)
    far.record(20, {1: TrackBox(None, state="occluded")})
    assert kinds(far.associate(20, [Detection((150, 20, 190, 60), "", 0.9)], live={1: ""})) == [("create", 0, "")]
    # a visible track (its mask on this frame) is not taken by distance: that is another object
    vis = Associator()
    vis.created(1, (10, 10, 50, 50), 0)
    vis.record(20, {1: TrackBox((10, 10, 50, 50))})
    assert kinds(vis.associate(20, [Detection((50, 20, 90, 60), "", 0.9)], live={1: ""})) == [("create", 0, "")]
    off = Associator(AssociationConfig(reacquire_distance=0.0))
    off.created(1, (10, 10, 50, 50), 0)
    off.record(20, {1: TrackBox(None, state="lost")})
    assert kinds(off.associate(20, [Detection((50, 20, 90, 60), "", 0.9)], live={1: ""})) == [("create", 0, "")]


def test_a_track_the_detector_lost_is_reacquired_even_if_its_mask_wanders():
    """A weak model keeps a mask somewhere; two arrays without the object make it hidden."""
    a = Associator()
    a.created(1, (100, 100, 140, 140), 0)
    for f in (3, 6):
        a.record(f, {1: TrackBox((0, 0, 20, 20))})  # the mask went elsewhere
        assert a.associate(f, [], live={1: ""}) == []
    a.record(9, {1: TrackBox((0, 0, 20, 20))})
    assert kinds(a.associate(9, [Detection((130, 110, 170, 150), "", 0.9)], live={1: ""})) == [("refine", 1, "")]
    assert a.counts["reacquired"] == 1
