"""Multi-object tracking across samples: a compact ByteTrack in numpy (no torch, no scipy).

ByteTrack (Zhang et al., 2022) associates in two stages: confident detections first, then the
low-score ones (often occluded or blurred objects) with the tracks left over, so a track survives a
weak detection instead of breaking. Each track runs a constant-velocity Kalman filter on
(centre x, centre y, aspect, height). Matching is greedy on IoU, class-aware. Lost tracks are kept
for ``lost_s`` seconds so they can be picked up again.

    tracker = ByteTracker(TrackerConfig())
    dets = tracker.update(detections, timestamp)   # same detections, ``tracker_id`` filled in
"""

from __future__ import annotations

import itertools

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from pipeline.detections import Detections, box_iou


class TrackerConfig(BaseModel):
    """ByteTrack settings."""

    model_config = ConfigDict(extra="forbid")

    high_score: float = Field(0.45, ge=0, le=1, description="Detections at or above this are matched first")
    low_score: float = Field(0.1, ge=0, le=1, description="Weaker detections down to this only extend existing tracks")
    new_track_score: float = Field(0.25, ge=0, le=1, description="Unmatched detections at or above this start a track")
    match_iou: float = Field(0.2, gt=0, le=1, description="Minimum IoU with a track's predicted box, first stage")
    low_match_iou: float = Field(0.5, gt=0, le=1, description="Minimum IoU for the low-score second stage")
    lost_s: float = Field(10.0, ge=0, description="Seconds a lost track is kept for re-identification")


# ------------------------------------------------------------------------------------------ Kalman filter

_STD_POS, _STD_VEL = 1.0 / 20, 1.0 / 160  # ByteTrack's noise weights, relative to the box height
_F = np.eye(8)
_F[:4, 4:] = np.eye(4)
_H = np.eye(4, 8)


def _xyxy_to_xyah(box: np.ndarray) -> np.ndarray:
    w, h = box[2] - box[0], max(box[3] - box[1], 1e-3)
    return np.array([box[0] + w / 2, box[1] + h / 2, w / h, h], np.float64)


def _xyah_to_xyxy(m: np.ndarray) -> np.ndarray:
    w, h = m[2] * m[3], m[3]
    return np.array([m[0] - w / 2, m[1] - h / 2, m[0] + w / 2, m[1] + h / 2], np.float32)


class _KalmanBox:
    """Constant-velocity Kalman filter over (cx, cy, a, h) and their velocities."""

    def __init__(self, box: np.ndarray):
        z = _xyxy_to_xyah(box)
        self.x = np.r_[z, np.zeros(4)]
        h = z[3]
        std = [2 * _STD_POS * h, 2 * _STD_POS * h, 1e-2, 2 * _STD_POS * h]
        std += [10 * _STD_VEL * h, 10 * _STD_VEL * h, 1e-5, 10 * _STD_VEL * h]
        self.P = np.diag(np.square(std))

    def predict(self) -> None:
        h = self.x[3]
        q = [_STD_POS * h, _STD_POS * h, 1e-2, _STD_POS * h, _STD_VEL * h, _STD_VEL * h, 1e-5, _STD_VEL * h]
        self.x = _F @ self.x
        self.P = _F @ self.P @ _F.T + np.diag(np.square(q))

    def update(self, box: np.ndarray) -> None:
        z = _xyxy_to_xyah(box)
        h = self.x[3]
        r = np.diag(np.square([_STD_POS * h, _STD_POS * h, 1e-1, _STD_POS * h]))
        s = _H @ self.P @ _H.T + r
        k = np.linalg.solve(s, _H @ self.P).T
        self.x = self.x + k @ (z - _H @ self.x)
        self.P = (np.eye(8) - k @ _H) @ self.P

    @property
    def box(self) -> np.ndarray:
        return _xyah_to_xyxy(self.x)


class Track:
    """One tracked object."""

    def __init__(self, track_id: int, box: np.ndarray, score: float, class_id: int, ts: float):
        self.id = track_id
        self.kf = _KalmanBox(box)
        self.box = np.asarray(box, np.float32)
        self.score = score
        self.class_id = class_id
        self.last_seen = ts
        self.hits = 1

    def predict(self) -> None:
        self.kf.predict()

    def update(self, box: np.ndarray, score: float, ts: float) -> None:
        self.kf.update(box)
        self.box = np.asarray(box, np.float32)
        self.score = score
        self.last_seen = ts
        self.hits += 1


def greedy_match(iou: np.ndarray, threshold: float) -> list[tuple[int, int]]:
    """Pairs (row, col) by descending IoU, each row and column used once, IoU >= threshold."""
    if iou.size == 0:
        return []
    rows, cols = np.nonzero(iou >= threshold)
    order = np.argsort(-iou[rows, cols], kind="stable")
    used_r: set[int] = set()
    used_c: set[int] = set()
    pairs = []
    for k in order:
        r, c = int(rows[k]), int(cols[k])
        if r in used_r or c in used_c:
            continue
        used_r.add(r)
        used_c.add(c)
        pairs.append((r, c))
    return pairs


class ByteTracker:
    """ByteTrack over :class:`Detections`; call :meth:`update` once per sample, in time order."""

    def __init__(self, config: TrackerConfig | None = None):
        self.config = config or TrackerConfig()
        self.tracks: list[Track] = []
        self._ids = itertools.count(1)

    def update(self, dets: Detections, ts: float) -> Detections:
        """Assign track ids; returns the detections kept (weak unmatched ones are dropped), ``tracker_id`` set."""
        cfg = self.config
        self.tracks = [t for t in self.tracks if ts - t.last_seen <= cfg.lost_s]
        for t in self.tracks:
            t.predict()
        ids = np.full(len(dets), -1, np.int64)
        high = np.flatnonzero(dets.confidence >= cfg.high_score)
        low = np.flatnonzero((dets.confidence < cfg.high_score) & (dets.confidence >= cfg.low_score))
        free = list(range(len(self.tracks)))
        for idx, thr in ((high, cfg.match_iou), (low, cfg.low_match_iou)):
            if not len(idx) or not free:
                continue
            pred = np.stack([self.tracks[i].kf.box for i in free])
            iou = box_iou(pred, dets.xyxy[idx])
            same = np.array([self.tracks[i].class_id for i in free])[:, None] == dets.class_id[idx][None, :]
            iou = np.where(same, iou, 0.0)
            matched = set()
            for r, c in greedy_match(iou, thr):
                track, d = self.tracks[free[r]], int(idx[c])
                track.update(dets.xyxy[d], float(dets.confidence[d]), ts)
                ids[d] = track.id
                matched.add(free[r])
            free = [i for i in free if i not in matched]
        for d in np.flatnonzero((ids < 0) & (dets.confidence >= cfg.new_track_score)):
            track = Track(next(self._ids), dets.xyxy[d], float(dets.confidence[d]), int(dets.class_id[d]), ts)
            self.tracks.append(track)
            ids[d] = track.id
        keep = ids >= 0
        out = dets[keep]
        out.tracker_id = ids[keep]
        return out
