"""Rules on scripted track sequences: a car that stops, one that passes, detection gaps, id switches."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

import numpy as np

from models.classes import CLASS_IDS
from pipeline.cameras import NoParkingZone, NoVendingZone, WatchZone
from pipeline.detections import Detections
from pipeline.rules import MAX_TRACK_IDS, RuleEngine
from pipeline.zones import build_zones

WH = (1000, 500)
T0 = datetime(2026, 11, 26, 10, 0, tzinfo=ZoneInfo("Asia/Shanghai")).timestamp()
BOTTOM_HALF = [[0, 0.5], [1, 0.5], [1, 1], [0, 1]]


def dets(*objs: tuple[str, list[float], float, int]) -> Detections:
    """Detections from (class, box, score, track id) tuples."""
    if not objs:
        d = Detections.empty()
        d.tracker_id = np.zeros(0, np.int64)
        return d
    return Detections(
        np.array([o[1] for o in objs], np.float32),
        np.array([o[2] for o in objs], np.float32),
        np.array([CLASS_IDS[o[0]] for o in objs]),
        np.array([o[3] for o in objs]),
    )


def parking_engine(**zone) -> RuleEngine:
    cfg = NoParkingZone(kind="no_parking", name="curb", polygon=BOTTOM_HALF, dwell_s=10, gone_s=20, **zone)
    return RuleEngine("cam", build_zones([cfg], ZoneInfo("Asia/Shanghai")), update_s=1e9)


def run(engine: RuleEngine, script: dict[int, Detections], seconds: int) -> list[tuple[int, str, str]]:
    """Feed one sample per second; returns (second, event kind, key) of every event."""
    out = []
    for t in range(seconds):
        for e in engine.update(T0 + t, script.get(t, dets()), WH):
            out.append((t, e.kind, e.key))
    return out


PARKED = [400, 300, 600, 420]  # bottom-centre (500, 420): inside the bottom half


def test_a_car_that_stops_is_one_violation_with_first_and_last_seen():
    engine = parking_engine()
    jitter = np.random.default_rng(0).normal(0, 2, (40, 4))
    script = {t: dets(("car", list(np.add(PARKED, jitter[t])), 0.8, 7)) for t in range(40)}
    events = run(engine, script, 70)
    opened = [e for e in events if e[1] == "open"]
    assert len(opened) == 1
    # inertia 3: inside from t=0 (the first sample of the streak); dwell 10 s -> opens at t=10
    assert opened[0][0] == 10
    ended = [e for e in events if e[1] == "ended"]
    assert [(t, k) for t, _, k in ended] == [(60, opened[0][2])]  # last seen t=39, gone for > 20 s
    assert not engine.objects


def test_a_car_that_passes_or_stops_outside_the_zone_is_not_a_violation():
    engine = parking_engine()
    passing = {t: dets(("car", [t * 30, 300, t * 30 + 200, 420], 0.9, 3)) for t in range(30)}
    assert run(engine, passing, 30) == []
    engine = parking_engine()
    above = {t: dets(("car", [400, 50, 600, 200], 0.9, 4)) for t in range(30)}  # bottom-centre y=200 < 250
    assert run(engine, above, 30) == []


def test_a_creeping_car_restarts_its_dwell_but_one_jumpy_box_does_not():
    engine = parking_engine()
    # 40 px forward every 2 s: each step still overlaps the last (IoU 0.67), but not where it stopped
    creeping = {t: dets(("car", [400 + 40 * (t // 2), 300, 600 + 40 * (t // 2), 420], 0.8, 1)) for t in range(30)}
    assert run(engine, creeping, 30) == []
    engine = parking_engine()
    jumpy = {t: dets(("car", PARKED if t != 6 else [300, 250, 500, 400], 0.8, 1)) for t in range(15)}
    assert [(t, k) for t, k, _ in run(engine, jumpy, 15)] == [(10, "open")]


def test_missed_detections_and_light_change_do_not_realert():
    engine = parking_engine()
    script = {}
    for t in range(80):
        if 20 <= t < 35 or t % 4 == 3:  # a 15 s outage (e.g. lighting) and regular misses
            continue
        score = 0.8 if t < 40 else 0.45  # dusk: weaker detections
        script[t] = dets(("car", PARKED, score, 5 if t < 40 else 9))  # new track id after the outage
    events = run(engine, script, 80)
    assert [e[1] for e in events] == ["open"]
    (obj,) = engine.objects.values()
    assert obj.track_ids == [5, 9] and obj.last_seen == T0 + 78


def test_an_object_watched_for_long_keeps_a_bounded_list_of_track_ids():
    # a parked car whose track is lost and found again with a new id every few samples (weeks on a camera)
    engine = parking_engine()
    script = {t: dets(("car", PARKED, 0.8, 100 + t // 3)) for t in range(150)}  # 50 track ids
    events = run(engine, script, 150)
    assert [e[1] for e in events] == ["open"]  # still one car, one violation
    (obj,) = engine.objects.values()
    assert obj.track_ids == list(range(100 + 50 - MAX_TRACK_IDS, 150))  # the newest, oldest first
    assert set(engine._by_track) == set(obj.track_ids)  # retired ids no longer map to it


def test_id_switch_between_two_parked_cars_keeps_two_violations():
    engine = parking_engine()
    left, right = [100, 300, 300, 420], [700, 300, 900, 420]
    script = {}
    for t in range(30):
        a, b = (1, 2) if t < 15 else (2, 1)  # the tracker swaps their ids half way
        script[t] = dets(("car", left, 0.8, a), ("car", right, 0.8, b))
    events = run(engine, script, 30)
    assert [e[1] for e in events] == ["open", "open"]
    keys = {e[2] for e in events}
    assert len(keys) == 2
    assert all(len(o.track_ids) == 2 for o in engine.objects.values())
    assert {tuple(o.anchor.astype(int)) for o in engine.objects.values()} == {tuple(left), tuple(right)}


def test_a_car_that_leaves_and_a_new_one_that_parks_are_two_violations():
    engine = parking_engine()
    script = {t: dets(("car", PARKED, 0.8, 1)) for t in range(15)}
    script.update({t: dets(("car", PARKED, 0.8, 2)) for t in range(50, 65)})
    events = run(engine, script, 90)
    assert [e[1] for e in events] == ["open", "ended", "open", "ended"]
    assert events[0][2] != events[2][2]


def test_glimpses_at_one_spot_are_not_a_stay():
    # cars passing the same spot every 15 s (a lane, a looping clip): each glimpse overlaps the last one's
    # box, but nothing was seen in between, so no car stood there for dwell_s however long it goes on
    engine = parking_engine()
    script = {t + d: dets(("car", PARKED, 0.9, t)) for t in range(0, 300, 15) for d in (0, 1)}
    assert run(engine, script, 300) == []
    vending = NoVendingZone(kind="no_vending", name="square", polygon=BOTTOM_HALF, dwell_s=12, inertia=1)
    engine = RuleEngine("cam", build_zones([vending]), update_s=1e9)
    script = {t + d: dets(("street_vending", [300, 260, 560, 460], 0.6, t)) for t in range(0, 300, 15) for d in (0, 1)}
    assert run(engine, script, 300) == []


def test_a_stay_bridges_gaps_no_longer_than_it_was_seen_and_at_most_bridge_s():
    engine = parking_engine()
    # seen standing 0-4, hidden 5-8 (a passing bus, 4 s): bridged, it opens at t=10 as if always seen
    script = {t: dets(("car", PARKED, 0.8, 1)) for t in range(40) if not 5 <= t < 9}
    assert [(t, k) for t, k, _ in run(engine, script, 40)] == [(10, "open")]
    engine = parking_engine()
    # seen every other second from t=1 (night, a weak detector): each 1 s gap is bridged -> opens at 11
    script = {t: dets(("car", PARKED, 0.4, 1)) for t in range(1, 40, 2)}
    assert [(t, k) for t, k, _ in run(engine, script, 40)] == [(11, "open")]
    engine = parking_engine()
    # seen one second in three: unseen longer than seen, never a stay
    script = {t: dets(("car", PARKED, 0.4, 1)) for t in range(1, 40, 3)}
    assert run(engine, script, 40) == []
    engine = parking_engine()
    # seen 0-1 (a 1 s stay), then nothing until t=17: a new stay from 17 -> opens at 27
    script = {t: dets(("car", PARKED, 0.8, 1)) for t in [0, 1, *range(17, 40)]}
    assert [(t, k) for t, k, _ in run(engine, script, 40)] == [(27, "open")]
    cfg = NoParkingZone(kind="no_parking", name="curb", polygon=BOTTOM_HALF, dwell_s=30, gone_s=30)
    for back, opened in [(25, 30), (28, 58)]:  # seen 0-15, unseen for 9 s (bridged) or 12 s (> BRIDGE_S)
        engine = RuleEngine("cam", build_zones([cfg]), update_s=1e9)
        script = {t: dets(("car", PARKED, 0.8, 1)) for t in [*range(0, 16), *range(back, 70)]}
        assert [(t, k) for t, k, _ in run(engine, script, 70)] == [(opened, "open")]


def test_a_camera_outage_is_unseen_time_not_a_stay():
    # samples every second; the camera is down from t=6 to t=65 (no samples at all), a car at the spot before
    # and after: it may not be the same car, so its stay starts again when the camera is back
    engine = RuleEngine("cam", parking_engine().zones, update_s=1e9, sample_interval_s=1.0)
    opened = []
    for t in [*range(0, 6), *range(65, 90)]:
        opened += [t for e in engine.update(T0 + t, dets(("car", PARKED, 0.8, 1)), WH) if e.kind == "open"]
    assert opened == [75]
    # sampled every 20 s (a slow camera): each step is a sample interval, not an outage
    engine = RuleEngine("cam", parking_engine().zones, update_s=1e9, sample_interval_s=20.0)
    opened = [t for t in range(0, 200, 20) for e in engine.update(T0 + t, dets(("car", PARKED, 0.8, 1)), WH)]
    assert opened == [40]  # inside the zone after 3 samples (inertia)


def test_an_open_violation_outlasts_a_camera_outage_longer_than_gone_s():
    # opened at t=10 (dwell 10 s); the camera is down from t=15 to t=200, far longer than gone_s (20 s):
    # nobody saw the car leave, so it stays open, and the same car after the outage is the same violation
    engine = parking_engine()
    events = []
    for t in [*range(0, 15), *range(200, 230)]:
        events += [(t, e.kind, e.key) for e in engine.update(T0 + t, dets(("car", PARKED, 0.8, 1)), WH)]
    assert [(t, kind) for t, kind, _ in events] == [(10, "open")]
    assert len(engine.open_violations) == 1
    # the car is gone when the camera is back: its violation ends with the first sample
    engine = parking_engine()
    events = []
    for t in [*range(0, 15), *range(200, 205)]:
        seen = dets(("car", PARKED, 0.8, 1)) if t < 15 else dets()
        events += [(t, e.kind) for e in engine.update(T0 + t, seen, WH)]
    assert events == [(10, "open"), (200, "ended")]
    assert engine.open_violations == []


def test_samples_further_apart_than_configured_are_the_cameras_pace_not_outages():
    # decode: keyframes with a keyframe every 12 s: the camera asks for a sample a second but gets one per 12 s.
    # Once three steps show that pace (until then each is an outage: the stay starts at 36), the car missed in
    # one keyframe (a passing bus) keeps its stay and opens once, 30 s after 36
    cfg = NoParkingZone(kind="no_parking", name="curb", polygon=BOTTOM_HALF, dwell_s=30, gone_s=60)
    engine = RuleEngine("cam", build_zones([cfg], ZoneInfo("Asia/Shanghai")), update_s=1e9, sample_interval_s=1.0)
    events = []
    for t in range(0, 180, 12):
        seen = dets() if t == 60 else dets(("car", PARKED, 0.8, 1))
        events += [(t, e.kind) for e in engine.update(T0 + t, seen, WH)]
    assert events == [(72, "open")]
    # while at a second a sample, the same 12 s pause is an outage: the stay starts again
    engine = RuleEngine("cam", build_zones([cfg], ZoneInfo("Asia/Shanghai")), update_s=1e9, sample_interval_s=1.0)
    times = [*range(0, 20), *range(32, 80)]
    opened = [t for t in times for e in engine.update(T0 + t, dets(("car", PARKED, 0.8, 1)), WH) if e.kind == "open"]
    assert opened == [62]


def scheduled_engine(start: str, end: str, dwell_s: int, update_s: float = 1e9) -> RuleEngine:
    """Parking forbidden from ``start`` to ``end`` (Shanghai time) on the bottom half of the frame."""
    cfg = NoParkingZone(
        kind="no_parking", name="hours", polygon=BOTTOM_HALF, dwell_s=dwell_s, schedule=[{"start": start, "end": end}]
    )
    return RuleEngine("cam", build_zones([cfg], ZoneInfo("Asia/Shanghai")), update_s=update_s)


def test_a_violation_ends_when_its_zone_schedule_does():
    # parking forbidden 07:00-09:00: a car parked at 08:50 is a violation until 09:00, when parking is allowed
    engine = scheduled_engine("07:00", "09:00", dwell_s=60, update_s=60)
    start = datetime(2026, 11, 26, 8, 50, tzinfo=ZoneInfo("Asia/Shanghai")).timestamp()
    events = []
    for t in range(0, 1200, 5):
        events += [
            (t, e.kind, e.obj.last_seen - start) for e in engine.update(start + t, dets(("car", PARKED, 0.8, 1)), WH)
        ]
    kinds = [(t, k) for t, k, _ in events]
    assert kinds[0] == (60, "open") and kinds[-1] == (600, "ended")
    assert all(t <= 600 for t, _ in kinds) and events[-1][2] == 600  # nothing after 09:00, when it still stood


def test_a_car_in_two_scheduled_zones_is_judged_by_the_second_when_the_first_ends():
    # "school run" forbids parking 07:00-09:00, "market" 08:00-10:00, on the same kerb: a car parked from 08:50
    # is a violation of the first until 09:00 and of the second from then on, without dwelling again
    cfgs = [
        NoParkingZone(kind="no_parking", name=name, polygon=BOTTOM_HALF, dwell_s=60, schedule=[{"start": a, "end": b}])
        for name, a, b in (("school run", "07:00", "09:00"), ("market", "08:00", "10:00"))
    ]
    engine = RuleEngine("cam", build_zones(cfgs, ZoneInfo("Asia/Shanghai")), update_s=1e9)
    start = datetime(2026, 11, 26, 8, 50, tzinfo=ZoneInfo("Asia/Shanghai")).timestamp()
    car = dets(("car", PARKED, 0.8, 1))
    events = []
    for t in range(0, 4500, 5):
        events += [(t, e.kind, e.zone.name, e.key) for e in engine.update(start + t, car, WH)]
    assert [e[:3] for e in events] == [
        (60, "open", "school run"),
        (600, "ended", "school run"),
        (600, "open", "market"),
        (4200, "ended", "market"),
    ]
    assert events[0][3] == events[1][3] != events[2][3] == events[3][3]  # two violations, each with its own key
    # still there the next morning: a new violation once it has stood for the dwell after 07:00
    morning = datetime(2026, 11, 27, 7, 0, tzinfo=ZoneInfo("Asia/Shanghai")).timestamp() - start
    later = []
    for t in range(4500, int(morning) + 300, 30):
        later += [(t - morning, e.kind, e.zone.name) for e in engine.update(start + t, car, WH)]
    assert later == [(60, "open", "school run")]


def test_schedule_gates_the_dwell_across_midnight():
    # parking forbidden 22:00-06:00; the car arrives 21:59:50 and may stand until 22:00
    engine = scheduled_engine("22:00", "06:00", dwell_s=30)
    start = datetime(2026, 11, 26, 21, 59, 50, tzinfo=ZoneInfo("Asia/Shanghai")).timestamp()
    opened = []
    for t in range(60):
        for _e in engine.update(start + t, dets(("car", PARKED, 0.8, 1)), WH):
            opened.append(t)
    assert opened == [40]  # 30 s after 22:00, not 30 s after arrival


def test_unseen_zone_classes_and_people_are_ignored():
    engine = parking_engine(classes=["bicycle"])
    script = {t: dets(("car", PARKED, 0.9, 1), ("person", [0, 300, 50, 480], 0.9, 2)) for t in range(30)}
    assert run(engine, script, 30) == []
    assert engine.watched_classes == ["bicycle"]


def test_street_vending_counts_presence_not_stillness():
    cfg = NoVendingZone(kind="no_vending", name="square", polygon=BOTTOM_HALF, dwell_s=12, inertia=2)
    engine = RuleEngine("cam", build_zones([cfg]), update_s=1e9)
    # a stall whose box changes a lot (people around it, goods moved) is still one present stall
    script = {
        t: dets(("street_vending", [300 + 25 * (t % 3), 260, 560 + 30 * (t % 2), 460], 0.6, 1)) for t in range(20)
    }
    events = run(engine, script, 20)
    assert [(t, k) for t, k, _ in events] == [(12, "open")]


def test_watch_zone_needs_most_of_the_last_k_samples():
    cfg = WatchZone(kind="watch", name="wall", polygon=BOTTOM_HALF, window=10, min_fraction=0.6, inertia=1)
    engine = RuleEngine("cam", build_zones([cfg]), update_s=1e9)
    flicker = {t: dets(("litter", [100, 400, 200, 480], 0.5, 1)) for t in range(0, 30, 2)}  # half the samples
    assert run(engine, flicker, 30) == []
    engine = RuleEngine("cam", build_zones([cfg]), update_s=1e9)
    steady = {t: dets(("litter", [100, 400, 200, 480], 0.5, 1)) for t in range(30) if t % 3}  # 2 of 3 samples
    events = run(engine, steady, 30)
    assert [e[1] for e in events] == ["open"]


def test_garbage_carried_through_a_watch_zone_is_not_exposed_garbage():
    cfg = WatchZone(kind="watch", name="bins", polygon=BOTTOM_HALF, window=10, min_fraction=0.6)
    engine = RuleEngine("cam", build_zones([cfg]), update_s=1e9)
    # a bag carried to the bins: seen in every sample, 40 px further each second (IoU 0.43 step to step)
    carried = {t: dets(("litter", [40 * t, 380, 40 * t + 100, 460], 0.7, 1)) for t in range(20)}
    assert run(engine, carried, 20) == []
    # the bag set down at the kerb stays: exposed garbage once it has been there for most of the window
    engine = RuleEngine("cam", build_zones([cfg]), update_s=1e9)
    jitter = np.random.default_rng(1).normal(0, 6, (40, 4))
    dropped = {
        t: dets(("litter", list(np.add([40 * min(t, 12), 380, 40 * min(t, 12) + 100, 460], jitter[t])), 0.7, 1))
        for t in range(40)
    }
    events = run(engine, dropped, 40)
    assert [(k, engine.objects[1].anchor[0] > 400) for _, k, _ in events] == [("open", True)]
    # 6 samples at its place: counted from t=11 or 12 (at t=11 it was one step short of where it stopped)
    assert 16 <= events[0][0] <= 18


def test_no_zones_watch_the_whole_frame_and_do_not_judge_parking():
    engine = RuleEngine("cam", build_zones([]), update_s=1e9)
    assert "car" not in engine.watched_classes and "small_ad" in engine.watched_classes
    script = {t: dets(("car", PARKED, 0.9, 1), ("small_ad", [10, 10, 40, 60], 0.5, 2)) for t in range(15)}
    events = run(engine, script, 15)
    assert [e[1] for e in events] == ["open"]
    assert events[0][2].split(":")[1] == "small_ad" and engine.open_violations[0].zone == "whole-frame"


def test_a_nested_second_box_on_the_same_object_is_not_a_second_violation():
    engine = parking_engine()
    script = {
        t: dets(("bicycle", [0, 260, 60, 480], 0.6, 1), ("bicycle", [0, 290, 40, 478], 0.3, 2)) for t in range(20)
    }
    events = run(engine, script, 20)
    assert [e[1] for e in events] == ["open"]


def test_better_evidence_and_periodic_updates_reuse_the_key():
    cfg = NoParkingZone(kind="no_parking", name="curb", polygon=BOTTOM_HALF, dwell_s=5)
    engine = RuleEngine("cam", build_zones([cfg]), update_s=20, evidence_interval_s=5)
    script = {t: dets(("car", PARKED, 0.5 if t < 12 else 0.9, 1)) for t in range(40)}
    events = run(engine, script, 40)
    kinds = [(t, k) for t, k, _ in events]
    assert kinds[0] == (5, "open")
    assert (12, "update") in kinds  # clearly better evidence (0.9 vs 0.5)
    assert (32, "update") in kinds  # 20 s after the last emission
    assert len({key for _, _, key in events}) == 1
    flushed = engine.flush()
    assert [e.kind for e in flushed] == ["update"] and flushed[0].obj.last_seen == T0 + 39
