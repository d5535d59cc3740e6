"""Rules that turn tracked detections into violations: one per real-world object, with a lifecycle.

:class:`RuleEngine` watches one camera. Each sample it matches tracked detections to *objects*
(real-world things it is watching), first by track id, then, for a new track id, by box overlap
with an object that was not seen in this sample. That second step makes it robust to what trackers
get wrong at low sample rates: a parked car whose detection is missed for a while, whose track id
switches, or whose track is lost across a camera outage stays the same object, so it never alerts
twice.

Rules, each with per-zone thresholds (:mod:`pipeline.cameras`):

- ``illegal_parking``: a car, motorbike or bicycle standing still (its box keeps overlapping the box
  where it stopped by ``stationary_iou``) inside a ``no_parking`` zone for ``dwell_s`` seconds.
- ``street_vending``: a vending stall present inside a ``no_vending`` zone for ``dwell_s`` seconds.
- ``small_ad`` / ``exposed_garbage`` / ``overflowing_bin``: present in at least ``min_fraction`` of the
  last ``window`` samples inside a ``watch`` zone, at one place (its box keeps overlapping where it was
  first seen by ``stationary_iou``): a bag carried past the bins is not exposed garbage.

A dwell is one stay that was seen. A gap in the object's detections (missed detections, a passing bus)
is bridged only when it is no longer than the time the object had been seen in its stay so far, and at
most ``BRIDGE_S`` (or one step between samples, when the camera's samples come further apart: keyframes
12 s apart); after a longer gap the stay starts again. So an object seen at least half the time keeps
its dwell, while cars glimpsed now and then at the same spot (a lane cars leave by, a looping clip) never
add up to one car that "stood" there all along. A pause in the samples longer than both ``BRIDGE_S``
and three steps (a camera outage) is such a gap for every object. The step is the camera's sample
interval, or the usual (median) time between its recent samples when that is longer.

Zone schedules gate the rules: time only counts while a zone's schedule is on. An object's violation
opens once (event ``open``), is updated when clearly better evidence is seen or every ``update_s``
seconds (``update``), and ends when the object has been unseen for the zone's ``gone_s``, or when the
zone's schedule ends (``ended``: parking there is allowed from then on). An object whose violation ended
with a schedule stays watched: another zone whose schedule is on judges its stay as it stands (a car in
two zones does not dwell again), and if it is still there when the schedule starts again, that is a new
violation, with its own key: a parked vehicle or stall once it has stood for the zone's dwell since the
restart, litter or ads as soon as most of the recent samples show it.
"""

from __future__ import annotations

import itertools
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Literal

import numpy as np

from models.classes import CLASS_IDS, CLASS_NAMES, VIOLATIONS, violation_for_class
from pipeline.detections import Detections, box_ios, box_iou
from pipeline.track import greedy_match
from pipeline.zones import Membership, Zone

ZONE_KIND_OF_VIOLATION = {
    "illegal_parking": "no_parking",
    "street_vending": "no_vending",
    "small_ad": "watch",
    "exposed_garbage": "watch",
    "overflowing_bin": "watch",
}
#: Consecutive samples away from where it stopped before an object counts as moved (one jumpy box is not a move).
MOVE_SAMPLES = 2
#: A new box this much inside (intersection over the smaller box) a seen object's box is the same object.
DUPLICATE_IOS = 0.85
#: Better evidence replaces the current one when its score is higher by this much.
EVIDENCE_GAIN = 0.1
#: The longest gap in an object's detections that its stay (the dwell) bridges.
BRIDGE_S = 10.0
#: Tracker ids an object keeps, newest last: a bin or a wall ad watched for weeks gets a new id after every
#: lost track; older ids, long retired by the tracker, are let go so its memory and its reports stay bounded.
MAX_TRACK_IDS = 16


def violation_of_class(name: str) -> str | None:
    """The violation type a detector class can become in zones (vehicles: parking)."""
    if name in VIOLATIONS["illegal_parking"].sources:
        return "illegal_parking"
    return violation_for_class(name)


@dataclass
class WatchedObject:
    """One real-world object under watch on one camera."""

    uid: int
    violation: str
    class_id: int
    first_seen: float
    last_seen: float
    box: np.ndarray
    score: float
    anchor: np.ndarray
    dwell_since: float  # start of its stay: arrival, where a vehicle stopped, or return after a long gap
    best_score: float = 0.0
    moved: int = 0
    seen_s: float = 0.0  # seconds of its stay it was seen: the sample intervals ending in a sighting
    seen_now: bool = True
    membership: Membership = field(default_factory=Membership)
    history: deque[bool] = field(default_factory=lambda: deque(maxlen=1000))
    track_ids: list[int] = field(default_factory=list)  # the last MAX_TRACK_IDS, oldest first
    state: Literal["candidate", "open"] = "candidate"
    key: str | None = None
    zone: str | None = None
    evidence_score: float = 0.0
    evidence_ts: float = 0.0
    emitted_at: float = 0.0
    emitted_last_seen: float = 0.0

    @property
    def class_name(self) -> str:
        return CLASS_NAMES[self.class_id]


def _ref(obj: WatchedObject) -> np.ndarray:
    """The box a new detection is compared with: where a vehicle stopped, else where the object was last."""
    return obj.anchor if obj.violation == "illegal_parking" else obj.box


@dataclass
class RuleEvent:
    """What happened to a violation in this sample; ``evidence``: render new evidence from the current frame."""

    kind: Literal["open", "update", "ended"]
    obj: WatchedObject
    zone: Zone | None
    evidence: bool
    key: str = field(init=False)  # the violation's key when the event happened (an ended one's object may reopen)

    def __post_init__(self) -> None:
        assert self.obj.key is not None
        self.key = self.obj.key


class RuleEngine:
    """The rules of one camera; feed :meth:`update` every sample in time order."""

    def __init__(
        self,
        camera_id: str,
        zones: list[Zone],
        *,
        update_s: float = 60.0,
        reassociate_iou: float = 0.5,
        evidence_interval_s: float = 10.0,
        sample_interval_s: float = 0.0,
    ):
        self.camera_id = camera_id
        self.sample_interval_s = sample_interval_s
        self._steps: deque[float] = deque(maxlen=15)  # recent times between samples
        self._bridge_s = BRIDGE_S  # the longest gap in an object's detections its stay bridges
        self._outage_s = BRIDGE_S  # no sample for longer (a camera outage): nothing was seen meanwhile
        self.zones = [z for z in zones if z.kind != "mask"]
        self.update_s = update_s
        self.reassociate_iou = reassociate_iou
        self.evidence_interval_s = evidence_interval_s
        self.objects: dict[int, WatchedObject] = {}
        self._by_track: dict[int, int] = {}
        self._last_ts: float | None = None  # the previous sample
        self._uids = itertools.count(1)
        # which zones judge each detector class
        self._zones_of: dict[int, list[Zone]] = {}
        for name in CLASS_NAMES:
            violation = violation_of_class(name)
            if violation is None:
                continue
            kind = ZONE_KIND_OF_VIOLATION[violation]
            judged = [
                z
                for z in self.zones
                if z.kind == kind and name in getattr(z.config, "classes", VIOLATIONS[violation].sources)
            ]
            if judged:
                self._zones_of[CLASS_IDS[name]] = judged

    @property
    def watched_classes(self) -> list[str]:
        """Detector classes some zone of this camera judges."""
        return [CLASS_NAMES[c] for c in self._zones_of]

    @property
    def open_violations(self) -> list[WatchedObject]:
        """Objects whose violation is open."""
        return [o for o in self.objects.values() if o.state == "open"]

    # ------------------------------------------------------------------------------------ per sample
    def update(self, ts: float, dets: Detections, frame_wh: tuple[int, int]) -> list[RuleEvent]:
        """One sample: tracked detections (``tracker_id`` set) of a frame of (width, height) at ``ts`` seconds."""
        paced = len(self._steps) >= 3  # until then the configured interval: a stall at the start is no pace
        step = max(self.sample_interval_s, float(np.median(self._steps)) if paced else 0.0)
        self._bridge_s, self._outage_s = max(BRIDGE_S, step), max(BRIDGE_S, 3 * step)
        for obj in self.objects.values():
            obj.seen_now = False
        relevant = np.array([int(c) in self._zones_of for c in dets.class_id], bool)
        dets = dets[relevant] if len(dets) else dets
        tids = dets.tracker_id if dets.tracker_id is not None else np.full(len(dets), -1, np.int64)
        unmatched = []
        for i in range(len(dets)):
            uid = self._by_track.get(int(tids[i]))
            obj = self.objects.get(uid) if uid is not None else None
            if obj is None or obj.seen_now or obj.class_id != int(dets.class_id[i]) or self._swapped(obj, dets.xyxy[i]):
                unmatched.append(i)
                continue
            self._observe(obj, dets, i, ts, frame_wh)
        if unmatched:
            self._associate(unmatched, dets, ts, frame_wh)
        for obj in self.objects.values():
            obj.history.append(obj.seen_now)
        if self._last_ts is not None:
            self._steps.append(ts - self._last_ts)
        self._last_ts = ts
        return self._judge(ts)

    def _associate(self, unmatched: list[int], dets: Detections, ts: float, frame_wh: tuple[int, int]) -> None:
        """New track ids: the same object as an unseen one they overlap (lost track, id switch), else new objects."""
        spare = [o for o in self.objects.values() if not o.seen_now]
        taken: set[int] = set()
        if spare:
            ref = np.stack([_ref(o) for o in spare])
            iou = box_iou(dets.xyxy[unmatched], ref)
            same = dets.class_id[unmatched][:, None] == np.array([o.class_id for o in spare])[None, :]
            for r, c in greedy_match(np.where(same, iou, 0.0), self.reassociate_iou):
                self._observe(spare[c], dets, unmatched[r], ts, frame_wh)
                taken.add(unmatched[r])
        seen = [o for o in self.objects.values() if o.seen_now]
        for i in sorted(unmatched, key=lambda k: -float(dets.confidence[k])):
            if i in taken or self._duplicate(dets, i, seen):
                continue
            cid = int(dets.class_id[i])
            violation = violation_of_class(CLASS_NAMES[cid])
            assert violation is not None
            obj = WatchedObject(
                uid=next(self._uids),
                violation=violation,
                class_id=cid,
                first_seen=ts,
                last_seen=ts,
                box=dets.xyxy[i],
                score=float(dets.confidence[i]),
                anchor=dets.xyxy[i].copy(),
                dwell_since=ts,
            )
            self.objects[obj.uid] = obj
            self._observe(obj, dets, i, ts, frame_wh, new=True)
            seen.append(obj)

    def _swapped(self, obj: WatchedObject, box: np.ndarray) -> bool:
        """The tracker gave ``obj``'s id to a box that sits on another object (an id switch)."""
        if float(box_iou(box, _ref(obj))[0, 0]) >= self.reassociate_iou:
            return False
        others = [o for o in self.objects.values() if o is not obj and o.class_id == obj.class_id]
        return bool(others) and float(box_iou(box, np.stack([_ref(o) for o in others])).max()) >= self.reassociate_iou

    @staticmethod
    def _duplicate(dets: Detections, i: int, seen: list[WatchedObject]) -> bool:
        """A second, nested box on an object already seen in this sample (one object, two detections)."""
        same = [o.box for o in seen if o.class_id == int(dets.class_id[i])]
        return bool(same) and float(box_ios(dets.xyxy[i], np.stack(same)).max()) >= DUPLICATE_IOS

    def _observe(
        self, obj: WatchedObject, dets: Detections, i: int, ts: float, frame_wh: tuple[int, int], new: bool = False
    ) -> None:
        box = dets.xyxy[i]
        previous = ts if self._last_ts is None or ts - self._last_ts > self._outage_s else self._last_ts
        if not new and previous - obj.last_seen > min(self._bridge_s, obj.seen_s):  # unseen longer than seen: anew
            obj.dwell_since, obj.seen_s = ts, 0.0
        obj.seen_s += ts - previous
        obj.box, obj.score, obj.last_seen, obj.seen_now = box, float(dets.confidence[i]), ts, True
        obj.best_score = max(obj.best_score, obj.score)
        if dets.tracker_id is not None and dets.tracker_id[i] >= 0:
            tid = int(dets.tracker_id[i])
            if tid not in obj.track_ids:
                obj.track_ids.append(tid)
                if len(obj.track_ids) > MAX_TRACK_IDS:
                    self._release(obj, obj.track_ids.pop(0))
            self._by_track[tid] = obj.uid
        zones = self._zones_of[obj.class_id]
        if not new and obj.violation != "street_vending":  # a stall's box changes with the people around it
            need = min(z.config.stationary_iou for z in zones)
            if float(box_iou(box, obj.anchor)[0, 0]) >= need:
                obj.moved = 0
            else:
                obj.moved += 1
                if obj.moved >= MOVE_SAMPLES:  # it really moved: where it stands now is a new stay
                    obj.anchor, obj.dwell_since, obj.moved, obj.seen_s = box.copy(), ts, 0, 0.0
                    obj.history.clear()
        foot = np.array([[(box[0] + box[2]) / 2, box[3]]])
        for zone in zones:
            obj.membership.update(zone, bool(zone.contains(foot, frame_wh)[0]), ts)

    # ---------------------------------------------------------------------------------------- judging
    def _gone_s(self, obj: WatchedObject) -> float:
        zones = self._zones_of[obj.class_id]
        if obj.zone is not None:
            return next(z.config.gone_s for z in zones if z.name == obj.zone)
        return max(z.config.gone_s for z in zones)

    def _due(self, obj: WatchedObject, zone: Zone, ts: float) -> bool:
        """Whether the object, inside ``zone`` now, meets the zone's rule."""
        on_since = zone.active_since(ts)
        if on_since is None or not obj.membership.inside.get(zone.name):
            return False
        cfg = zone.config
        if obj.violation in ("illegal_parking", "street_vending"):  # a vehicle moving off (moved) is not parked
            start = max(obj.dwell_since, obj.membership.since.get(zone.name, ts), on_since)
            return not obj.moved and ts - start >= cfg.dwell_s
        recent = list(obj.history)[-cfg.window :]
        return sum(recent) >= cfg.min_fraction * cfg.window

    def _judge(self, ts: float) -> list[RuleEvent]:
        events: list[RuleEvent] = []
        for obj in list(self.objects.values()):
            if not obj.seen_now and ts - obj.last_seen > self._gone_s(obj):
                if obj.state == "open":
                    events.append(RuleEvent("ended", obj, self._zone(obj.zone), evidence=False))
                self._forget(obj)
                continue
            zone = self._zone(obj.zone) if obj.state == "open" else None
            if zone is not None and zone.active_since(ts) is None:  # the schedule ended: allowed from now on
                events.append(RuleEvent("ended", obj, zone, evidence=False))
                self._reopenable(obj)  # its stay goes on: another zone may judge it now, this one when it restarts
            if not obj.seen_now:
                continue
            if obj.state == "candidate":
                for zone in self._zones_of[obj.class_id]:
                    if self._due(obj, zone, ts):
                        obj.state, obj.zone = "open", zone.name
                        obj.key = self._key(obj, ts)
                        self._mark(obj, ts, evidence=True)
                        events.append(RuleEvent("open", obj, zone, evidence=True))
                        break
                continue
            zone = self._zone(obj.zone)
            inside = zone is not None and obj.membership.inside.get(zone.name, False)
            if (
                inside
                and obj.score >= obj.evidence_score + EVIDENCE_GAIN
                and ts - obj.evidence_ts >= self.evidence_interval_s
            ):
                self._mark(obj, ts, evidence=True)
                events.append(RuleEvent("update", obj, zone, evidence=True))
            elif ts - obj.emitted_at >= self.update_s:
                self._mark(obj, ts, evidence=False)
                events.append(RuleEvent("update", obj, zone, evidence=False))
        return events

    def flush(self) -> list[RuleEvent]:
        """Updates for open violations seen since they were last emitted (call when stopping)."""
        events = []
        for obj in self.open_violations:
            if obj.last_seen > obj.emitted_last_seen:
                obj.emitted_last_seen = obj.last_seen
                events.append(RuleEvent("update", obj, self._zone(obj.zone), evidence=False))
        return events

    # -------------------------------------------------------------------------------------- helpers
    def _mark(self, obj: WatchedObject, ts: float, evidence: bool) -> None:
        obj.emitted_at, obj.emitted_last_seen = ts, obj.last_seen
        if evidence:
            obj.evidence_score, obj.evidence_ts = obj.score, ts

    def _zone(self, name: str | None) -> Zone | None:
        return next((z for z in self.zones if z.name == name), None)

    def _forget(self, obj: WatchedObject) -> None:
        del self.objects[obj.uid]
        for tid in obj.track_ids:
            self._release(obj, tid)

    def _release(self, obj: WatchedObject, tid: int) -> None:
        """Stop mapping tracker id ``tid`` to ``obj`` (unless the id has passed to another object meanwhile)."""
        if self._by_track.get(tid) == obj.uid:
            del self._by_track[tid]

    @staticmethod
    def _reopenable(obj: WatchedObject) -> None:
        """Its violation ended but the object stays watched (stay, zones): a later violation is a new one."""
        obj.state, obj.key, obj.zone = "candidate", None, None
        obj.evidence_score = obj.evidence_ts = obj.emitted_at = obj.emitted_last_seen = 0.0

    def _key(self, obj: WatchedObject, opened: float) -> str:
        """The violation's key: camera, type, when it opened and the object (one object may open several)."""
        at = datetime.fromtimestamp(opened, timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        return f"{self.camera_id}:{obj.violation}:{at}:{obj.uid}"
