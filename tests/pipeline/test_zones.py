"""Zones: polygon membership by bottom-centre, enter/leave inertia, schedules across midnight, masks."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

import cv2
import numpy as np

from models.classes import CLASS_IDS
from pipeline.cameras import CameraConfig, MaskZone, NoParkingZone, ScheduleWindow
from pipeline.detections import Detections
from pipeline.sources import Frame
from pipeline.streams import CameraWorker
from pipeline.zones import Membership, Zone, build_zones, points_in_polygon, window_start

SH = ZoneInfo("Asia/Shanghai")
TRIANGLE = [[0.1, 0.1], [0.9, 0.1], [0.5, 0.9]]


def test_points_in_polygon_including_edges():
    pts = np.array([[0.5, 0.3], [0.1, 0.8], [0.5, 0.9], [0.95, 0.5], [0.3, 0.1]])
    assert points_in_polygon(pts, np.array(TRIANGLE)).tolist() == [True, False, True, False, True]


def test_zone_scales_to_frames_and_uses_pixels():
    zone = Zone(NoParkingZone(kind="no_parking", name="z", polygon=[[0, 0.5], [1, 0.5], [1, 1], [0, 1]]))
    feet = np.array([[100, 700], [100, 300], [1919, 1080]])
    assert zone.contains(feet, (1920, 1080)).tolist() == [True, False, True]
    assert zone.polygon_px((200, 100)).tolist()[1] == [200, 50]


def test_inertia_needs_consecutive_samples_to_enter_and_leave():
    zone = Zone(NoParkingZone(kind="no_parking", name="z", polygon=TRIANGLE, inertia=3))
    m = Membership()
    seq = [True, False, True, True, True, False, True, False, False, False, True]
    states = [m.update(zone, s, float(t)) for t, s in enumerate(seq)]
    assert states == [False, False, False, False, True, True, True, True, True, False, False]
    assert "z" not in m.since
    m.update(zone, True, 20.0), m.update(zone, True, 21.0), m.update(zone, True, 22.0)
    assert m.since["z"] == 10.0  # inside since the first sample of the streak (t=10, 20, 21)


def test_schedule_windows_across_midnight_and_days():
    night = ScheduleWindow(start="22:00", end="06:00", days=["fri"])
    fri = datetime(2026, 11, 27, 23, 30, tzinfo=SH)  # a Friday
    assert window_start(night, fri) == datetime(2026, 11, 27, 22, 0, tzinfo=SH)
    assert window_start(night, datetime(2026, 11, 28, 5, 59, tzinfo=SH)) == datetime(2026, 11, 27, 22, 0, tzinfo=SH)
    assert window_start(night, datetime(2026, 11, 28, 6, 0, tzinfo=SH)) is None
    assert window_start(night, datetime(2026, 11, 28, 23, 0, tzinfo=SH)) is None  # Saturday night: not listed
    day = Zone(
        NoParkingZone(kind="no_parking", name="d", polygon=TRIANGLE, schedule=[{"start": "07:00", "end": "22:00"}]), SH
    )
    assert (
        day.active_since(datetime(2026, 11, 26, 12, 0, tzinfo=SH).timestamp())
        == datetime(2026, 11, 26, 7, 0, tzinfo=SH).timestamp()
    )
    assert day.active_since(datetime(2026, 11, 26, 22, 0, tzinfo=SH).timestamp()) is None
    always = Zone(NoParkingZone(kind="no_parking", name="a", polygon=TRIANGLE))
    assert always.active_since(0.0) == float("-inf")


def test_no_zones_means_whole_frame_watch():
    (zone,) = build_zones([])
    assert zone.kind == "watch" and zone.contains(np.array([[0, 0], [640, 480]]), (640, 480)).all()


def test_mask_zone_drops_detections_before_tracking_and_rules():
    cam = CameraConfig(
        id="c",
        url="rtsp://127.0.0.1/x",
        zones=[
            MaskZone(kind="mask", name="screen", polygon=[[0, 0], [0.5, 0], [0.5, 1], [0, 1]]),
            NoParkingZone(
                kind="no_parking", name="all", polygon=[[0, 0], [1, 0], [1, 1], [0, 1]], dwell_s=2, inertia=1
            ),
        ],
    )
    worker = CameraWorker(cam, SH)
    image = np.zeros((100, 200, 3), np.uint8)
    left, right = [10, 40, 60, 90], [120, 40, 180, 90]
    dets = Detections(np.array([left, right], np.float32), np.array([0.9, 0.9]), np.array([CLASS_IDS["car"]] * 2))
    out = []
    for t in range(5):
        out += worker.process(Frame("c", image, 1000.0 + t, 0.0, t), dets, "m@1")
    assert [v.box for v in out] == [tuple(float(v) for v in right)]
    assert out[0].evidence and {e.kind for e in out[0].evidence} == {"frame", "crop", "clean"}
    clean = next(e for e in out[0].evidence if e.kind == "clean")
    assert cv2.imdecode(np.frombuffer(clean.jpeg, np.uint8), cv2.IMREAD_COLOR).shape == image.shape  # no caption band
