"""The numpy ByteTrack: stable ids for moving objects, low-score recovery, lost-track expiry, classes."""

from __future__ import annotations

import numpy as np

from models.classes import CLASS_IDS
from pipeline.detections import Detections
from pipeline.track import ByteTracker, TrackerConfig, greedy_match


def frame(*objs: tuple[str, list[float], float]) -> Detections:
    if not objs:
        return Detections.empty()
    return Detections(
        np.array([o[1] for o in objs], np.float32),
        np.array([o[2] for o in objs], np.float32),
        np.array([CLASS_IDS[o[0]] for o in objs]),
    )


def test_two_crossing_cars_keep_their_ids():
    tracker = ByteTracker()
    ids = []
    for t in range(12):
        a = [100 + 30 * t, 100, 200 + 30 * t, 160]  # moving right
        b = [500 - 30 * t, 110, 600 - 30 * t, 170]  # moving left, they cross around t=6-7
        out = tracker.update(frame(("car", a, 0.9), ("car", b, 0.85)), float(t))
        assert len(out) == 2
        ids.append(tuple(int(i) for i in out.tracker_id))
    assert len(set(ids)) == 1 and len(set(ids[0])) == 2


def test_a_weak_detection_extends_a_track_but_does_not_start_one():
    tracker = ByteTracker(TrackerConfig(high_score=0.5, new_track_score=0.4))
    first = tracker.update(frame(("car", [0, 0, 100, 50], 0.9)), 0.0)
    weak = tracker.update(frame(("car", [5, 0, 105, 50], 0.2)), 1.0)  # occluded: low score, same place
    assert weak.tracker_id.tolist() == first.tracker_id.tolist()
    stray = tracker.update(frame(("car", [5, 0, 105, 50], 0.9), ("car", [400, 300, 450, 350], 0.2)), 2.0)
    assert len(stray) == 1  # the weak stray box far from any track is dropped


def test_lost_tracks_are_found_again_within_lost_s_only():
    tracker = ByteTracker(TrackerConfig(lost_s=5))
    box = [10, 10, 60, 40]
    tid = int(tracker.update(frame(("bicycle", box, 0.8)), 0.0).tracker_id[0])
    for t in (1.0, 2.0, 3.0):
        assert len(tracker.update(frame(), t)) == 0
    assert int(tracker.update(frame(("bicycle", box, 0.8)), 4.0).tracker_id[0]) == tid
    assert int(tracker.update(frame(("bicycle", box, 0.8)), 20.0).tracker_id[0]) != tid


def test_matching_is_class_aware():
    tracker = ByteTracker()
    car = int(tracker.update(frame(("car", [0, 0, 100, 50], 0.9)), 0.0).tracker_id[0])
    out = tracker.update(frame(("motorbike", [0, 0, 100, 50], 0.9)), 1.0)
    assert int(out.tracker_id[0]) != car


def test_greedy_match_takes_best_pairs_first():
    iou = np.array([[0.9, 0.8], [0.85, 0.1]])
    assert sorted(greedy_match(iou, 0.05)) == [(0, 0), (1, 1)]
    assert greedy_match(iou, 0.5) == [(0, 0)]
    assert greedy_match(np.zeros((0, 3)), 0.1) == []
