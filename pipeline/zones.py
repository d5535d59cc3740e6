"""Zones at run time: polygon membership by a box's bottom-centre, schedules, enter/leave inertia.

Zones are configured in relative coordinates (:mod:`pipeline.cameras`); :class:`Zone` scales them
to each frame. An object stands where its box's bottom-centre is. :class:`Membership` adds inertia:
an object enters a zone only after ``inertia`` consecutive samples inside and leaves only after as
many outside, so one missed or jumpy detection never flips it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta, tzinfo

import numpy as np

from pipeline.cameras import ScheduleWindow, WatchZone, ZoneConfig

#: The zone used when a camera has none: the whole frame, watched for ads and garbage.
WHOLE_FRAME = WatchZone(kind="watch", name="whole-frame", polygon=[[0, 0], [1, 0], [1, 1], [0, 1]], inertia=1)


def points_in_polygon(points: np.ndarray, polygon: np.ndarray) -> np.ndarray:
    """(N,) bool: which (N,2) points lie inside the (M,2) polygon (even-odd rule, edges count as inside)."""
    points = np.asarray(points, np.float64).reshape(-1, 2)
    poly = np.asarray(polygon, np.float64).reshape(-1, 2)
    x, y = points[:, 0:1], points[:, 1:2]
    x1, y1 = poly[:, 0][None, :], poly[:, 1][None, :]
    x2, y2 = np.roll(poly[:, 0], -1)[None, :], np.roll(poly[:, 1], -1)[None, :]
    crosses = (y1 > y) != (y2 > y)
    with np.errstate(divide="ignore", invalid="ignore"):
        x_at = x1 + (y - y1) * (x2 - x1) / (y2 - y1)
    inside = (crosses & (x < x_at)).sum(axis=1) % 2 == 1
    # points on an edge (e.g. a box touching the frame's bottom edge) count as inside
    ex, ey = x2 - x1, y2 - y1
    length2 = np.maximum(ex * ex + ey * ey, 1e-18)
    t = np.clip(((x - x1) * ex + (y - y1) * ey) / length2, 0, 1)
    dist2 = (x1 + t * ex - x) ** 2 + (y1 + t * ey - y) ** 2
    return inside | (dist2 < 1e-12).any(axis=1)


def window_start(window: ScheduleWindow, when: datetime) -> datetime | None:
    """Start of the occurrence of ``window`` that contains local time ``when``, or None when outside it."""
    crosses = window.end <= window.start
    for back in (0, 1) if crosses else (0,):
        day = (when - timedelta(days=back)).date()
        if ("mon", "tue", "wed", "thu", "fri", "sat", "sun")[day.weekday()] not in window.days:
            continue
        start = datetime.combine(day, window.start, when.tzinfo)
        end = datetime.combine(day + timedelta(days=1 if crosses else 0), window.end, when.tzinfo)
        if start <= when < end:
            return start
    return None


@dataclass
class Zone:
    """A configured zone, ready to test points in pixel frames and to answer 'is the rule on now?'."""

    config: ZoneConfig
    tz: tzinfo | None = None
    _poly: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._poly = np.asarray(self.config.polygon, np.float64)

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def kind(self) -> str:
        return self.config.kind

    def polygon_px(self, frame_wh: tuple[int, int]) -> np.ndarray:
        """Polygon corners in pixels of a (width, height) frame."""
        return self._poly * np.asarray(frame_wh, np.float64)

    def contains(self, points_px: np.ndarray, frame_wh: tuple[int, int]) -> np.ndarray:
        """(N,) bool for (N,2) pixel points of a frame of (width, height)."""
        rel = np.asarray(points_px, np.float64).reshape(-1, 2) / np.asarray(frame_wh, np.float64)
        return points_in_polygon(rel, self._poly)

    def active_since(self, ts: float) -> float | None:
        """When the current schedule window began (epoch seconds); -inf when always on; None when off now."""
        schedule = getattr(self.config, "schedule", None)
        if not schedule:
            return float("-inf")
        when = datetime.fromtimestamp(ts, self.tz) if self.tz else datetime.fromtimestamp(ts).astimezone()
        starts = [s for w in schedule if (s := window_start(w, when)) is not None]
        return min(starts).timestamp() if starts else None


def build_zones(configs: list[ZoneConfig], tz: tzinfo | None = None) -> list[Zone]:
    """Runtime zones of a camera; none configured: the whole frame as a watch zone."""
    return [Zone(c, tz) for c in (configs or [WHOLE_FRAME])]


@dataclass
class Membership:
    """Which zones one object is in, with enter/leave inertia (consecutive samples)."""

    inside: dict[str, bool] = field(default_factory=dict)
    streak: dict[str, int] = field(default_factory=dict)
    since: dict[str, float] = field(default_factory=dict)  # zone -> when the object entered it
    _first_in: dict[str, float] = field(default_factory=dict, repr=False)  # start of a streak inside

    def update(self, zone: Zone, is_in: bool, ts: float) -> bool:
        """Feed one observation; returns whether the object now counts as inside ``zone``."""
        inertia = getattr(zone.config, "inertia", 1)
        name = zone.name
        current = self.inside.get(name, False)
        if is_in == current:
            self.streak[name] = 0
            if is_in and name not in self.since:
                self.since[name] = ts
            return current
        self.streak[name] = self.streak.get(name, 0) + 1
        if self.streak[name] >= inertia:
            self.inside[name] = is_in
            self.streak[name] = 0
            if is_in:
                self.since[name] = self._first_in.get(name, ts)
            else:
                self.since.pop(name, None)
            self._first_in.pop(name, None)
            return is_in
        if is_in and self.streak[name] == 1:
            self._first_in[name] = ts  # the object has been inside since its first sample of the streak
        return current
