"""The camera config file: valid files load, every mistake names the line, the camera and the field."""

from __future__ import annotations

import shutil
import typing
from pathlib import Path

import pytest

from pipeline.cameras import (
    DEMO_CAMERAS,
    BackoffConfig,
    CameraConfigError,
    CamerasConfig,
    load_cameras,
    parse_cameras,
)

VIDEO = Path(__file__).resolve().parents[2] / "pipeline" / "samples" / "videos" / "car-detection.mp4"

GOOD = """\
timezone: Asia/Shanghai
cameras:
  - id: gate-2
    name: East gate
    url: rtsp://127.0.0.1:8554/cam
    decode: keyframes
    zones:
      - name: bus-stop
        kind: no_parking
        polygon: [[0.1, 0.5], [0.6, 0.5], [0.6, 1.0], [0.1, 1.0]]
        dwell_s: 120
        schedule: [{start: "07:00", end: "22:00", days: [mon, tue, wed, thu, fri]}]
      - name: wall
        kind: watch
        polygon: [[0, 0], [0.3, 0], [0.3, 0.4]]
  - id: lobby
    url: clip.mp4
    loop: true
"""


def problems(text: str, tmp_path: Path | None = None) -> list[str]:
    with pytest.raises(CameraConfigError) as info:
        parse_cameras(text, "cams.yaml", base_dir=tmp_path)
    return info.value.problems


def test_a_valid_file_loads_and_resolves_video_paths(tmp_path):
    shutil.copy(VIDEO, tmp_path / "clip.mp4")
    (tmp_path / "cams.yaml").write_text(GOOD)
    cfg = load_cameras(tmp_path / "cams.yaml")
    gate, lobby = cfg.cameras
    assert gate.is_stream and gate.decode == "keyframes" and gate.zones[0].dwell_s == 120
    assert gate.zones[1].kind == "watch" and gate.zones[1].window == 10
    assert lobby.url == str(tmp_path / "clip.mp4") and lobby.loop and not lobby.is_stream
    assert str(cfg.tz_of(gate)) == "Asia/Shanghai"


def test_the_demo_config_is_valid_and_attributes_the_video():
    cfg = load_cameras(DEMO_CAMERAS)
    assert any(Path(c.url).name == "car-detection.mp4" for c in cfg.cameras)
    assert any(z.kind == "no_parking" for c in cfg.cameras for z in c.zones)
    assert "CC BY 4.0" in DEMO_CAMERAS.read_text() and "Intel" in DEMO_CAMERAS.read_text()


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (
            ("dwell_s: 120", "dwell_s: -5"),
            "cams.yaml:11: camera 'gate-2': zones[0].dwell_s: Input should be greater than 0",
        ),
        (
            ("        dwell_s: 120\n", "        dwell_s: 120\n        dwel_s: 3\n"),
            "cams.yaml:12: camera 'gate-2': zones[0].dwel_s: unknown field",
        ),
        (
            ("[0.6, 0.5], [0.6, 1.0], [0.1, 1.0]]", "[0.6, 0.5]]"),
            "cams.yaml:10: camera 'gate-2': zones[0].polygon: a polygon needs at least 3",
        ),
        (
            ("[[0, 0], [0.3, 0], [0.3, 0.4]]", "[[0, 0], [1.3, 0], [0.3, 0.4]]"),
            "cams.yaml:15: camera 'gate-2': zones[1].polygon[1][0]: Input should be less than or equal to 1",
        ),
        (
            ("kind: watch", "kind: parking"),
            "cams.yaml:14: camera 'gate-2': zones[1].kind: unknown or missing zone kind",
        ),
        (
            ("decode: keyframes", "decode: iframes"),
            "cams.yaml:6: camera 'gate-2': decode: Input should be 'full' or 'keyframes'",
        ),
        (
            ('end: "22:00"', 'end: "07:00"'),
            "cams.yaml:12: camera 'gate-2': zones[0].schedule[0]: start and end are equal",
        ),
        (  # unquoted, YAML reads 7:00 as the number 420: not 00:07
            ('start: "07:00"', "start: 7:00"),
            "cams.yaml:12: camera 'gate-2': zones[0].schedule[0].start: write times in quotes, \"07:00\"",
        ),
        (
            ('start: "07:00"', 'start: "07:00+08:00"'),
            "cams.yaml:12: camera 'gate-2': zones[0].schedule[0].start: '07:00+08:00': a local time without",
        ),
        (("    url: rtsp://127.0.0.1:8554/cam\n", ""), "cams.yaml:3: camera 'gate-2': url: required field is missing"),
        (
            ("rtsp://127.0.0.1:8554/cam", "ftp://x/cam"),
            "cams.yaml:5: camera 'gate-2': url: unsupported URL scheme 'ftp'",
        ),
        (
            ("timezone: Asia/Shanghai", "timezone: Mars/Olympus"),
            "cams.yaml:1: timezone: unknown time zone 'Mars/Olympus'",
        ),
        (("id: lobby", "id: gate-2"), "cams.yaml:16: camera id 'gate-2' is used twice (first at line 3)"),
        (  # a camera named "off" (or no, yes, on): YAML 1.1 reads the bare word as a boolean
            ("id: lobby", "id: off"),
            "cams.yaml:16: camera #2: id: YAML read False as true/false (YAML reads unquoted yes, no, on, off so)",
        ),
        (("name: wall", "name: 2024"), "cams.yaml:13: camera 'gate-2': zones[1].name: YAML read 2024 as a number"),
        (("name: wall", "name: bus-stop"), "cams.yaml:7: camera 'gate-2': zones: zone name 'bus-stop' is used twice"),
        (
            ("url: rtsp://127.0.0.1:8554/cam", "url: rtsp://127.0.0.1:8554/cam\n    loop: true"),
            "cams.yaml:3: camera 'gate-2': loop and speed apply to video files only",
        ),
    ],
)
def test_errors_name_line_camera_and_field(tmp_path, edit, expected):
    shutil.copy(VIDEO, tmp_path / "clip.mp4")
    old, new = edit
    assert old in GOOD
    found = problems(GOOD.replace(old, new), tmp_path)
    assert any(p.startswith(expected) for p in found), found


def test_missing_video_file_and_yaml_syntax_and_duplicate_keys(tmp_path):
    found = problems(GOOD, tmp_path)  # clip.mp4 is not in tmp_path
    assert found == [f"cams.yaml:17: camera 'lobby': url: no such video file: {tmp_path / 'clip.mp4'}"]
    found = problems("cameras:\n  - id: a\n    url: [unclosed\n")
    assert found[0].startswith("cams.yaml:4: invalid YAML")
    found = problems(GOOD.replace("    decode: keyframes\n", "    decode: keyframes\n    decode: full\n"))
    assert found == ["cams.yaml:7: key 'decode' is given twice"]
    assert problems("- just a list\n") == ["cams.yaml:1: expected a mapping with a 'cameras' list"]


def test_every_config_field_has_a_description():
    def models_in(annotation):
        if isinstance(annotation, type) and hasattr(annotation, "model_fields"):
            yield annotation
        for arg in typing.get_args(annotation):
            yield from models_in(arg)

    def walk(model, seen):
        if model in seen:
            return
        seen.add(model)
        assert model.model_config.get("extra") == "forbid", model.__name__
        for name, field in model.model_fields.items():
            assert field.description, f"{model.__name__}.{name} has no description"
            for inner in models_in(field.annotation):
                walk(inner, seen)

    seen: set = set()
    walk(CamerasConfig, seen)
    assert {"CameraConfig", "NoParkingZone", "WatchZone", "MaskZone", "ScheduleWindow", "TrackerConfig"} <= {
        m.__name__ for m in seen
    }


@pytest.mark.parametrize("password", ["s3cret", "p@ss", "ab/cd"])
def test_a_camera_password_is_masked_in_ffmpeg_errors(password):
    import socket

    import av

    from pipeline.cameras import hide_passwords

    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]  # closed again at once: nothing listens there
    url = f"rtsp://admin:{password}@127.0.0.1:{port}/stream1"
    with pytest.raises(Exception) as refused:  # FFmpeg's error names the URL, password and all
        av.open(url, timeout=(2, 2))
    text = f"{type(refused.value).__name__}: {refused.value}"
    assert password in text
    masked = hide_passwords(text, url)
    assert password not in masked and "rtsp://admin:***@127.0.0.1" in masked


def test_a_camera_retries_up_to_max_s_even_after_days_of_failures():
    backoff = BackoffConfig(initial_s=1, max_s=60)
    assert 0.9 <= backoff.delay(0) <= 1 and 28.8 <= backoff.delay(5) <= 32
    assert 54 <= backoff.delay(5000) <= 60  # ~17 hours down at 60 s a retry


@pytest.mark.parametrize("text", ["a: &a [*a]\n", "cameras: &c\n  - id: a\n    url: x.mp4\n    more: *c\n"])
def test_a_self_referencing_alias_is_a_config_error_naming_the_file(tmp_path: Path, capsys, text: str):
    from pipeline.cli import main

    path = tmp_path / "recursive.yaml"
    path.write_text(text)
    with pytest.raises(SystemExit) as exc:  # was: RecursionError traceback
        main(["watch", str(path), "--duration", "3"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "Traceback" not in err
    assert f"{path}:" in err and "an alias refers to the node that contains it" in err


def test_a_stream_url_needs_a_host_and_a_port_that_exists():
    def url_problems(url: str) -> list[str]:
        return problems(f"cameras:\n  - id: a\n    url: {url}\n")

    assert url_problems("rtsp://10.0.0.1:99999/x") == [
        "cams.yaml:3: camera 'a': url: the port in rtsp://10.0.0.1:99999/x is not a number 1-65535"
    ]  # was: accepted, and the camera failed to connect forever
    assert "the port in rtsp://admin:***@cam:0/x is not" in url_problems("rtsp://admin:pw@cam:0/x")[0]
    assert "the port in" in url_problems("http://cam:http/x")[0]
    assert url_problems("rtsp:///x") == ["cams.yaml:3: camera 'a': url: rtsp:///x names no host"]
