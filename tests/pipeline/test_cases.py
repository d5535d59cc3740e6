import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from pydantic import ValidationError

from pipeline.cases import EvidenceImage, JsonlSink, Violation, ViolationSink


def violation(**kw) -> Violation:
    t = datetime(2026, 11, 26, 8, 0, tzinfo=timezone.utc)
    base = dict(
        key="cam1:illegal_parking:7",
        type="illegal_parking",
        source="camera",
        source_id="cam1",
        zone="gate",
        first_seen=t,
        last_seen=t + timedelta(seconds=90),
        detector_class="car",
        score=0.8,
        box=(10, 20, 110, 90),
        frame_size=(768, 432),
        model_version="m@1/fp32",
        evidence=[EvidenceImage(kind="crop", jpeg=b"\xff\xd8fake")],
    )
    return Violation(**{**base, **kw})


def test_jsonl_sink_writes_lines_and_content_addressed_evidence(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    sink = JsonlSink("v.jsonl")  # a relative target, as `--sink v.jsonl` gives
    assert isinstance(sink, ViolationSink)
    sink.emit(violation())
    sink.emit(violation(state="ended"))
    sink.close()
    lines = [json.loads(x) for x in (tmp_path / "v.jsonl").read_text().splitlines()]
    assert [x["state"] for x in lines] == ["open", "ended"] and lines[0]["key"] == lines[1]["key"]
    files = lines[0]["evidence_files"]
    assert len(files) == 1 and files[0]["kind"] == "crop"
    monkeypatch.chdir(tmp_path.parent)  # a reader elsewhere still finds the pictures
    assert Path(files[0]["path"]).is_absolute() and Path(files[0]["path"]).read_bytes() == b"\xff\xd8fake"
    assert "jpeg" not in json.dumps(lines[0])


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("type", "jaywalking", "unknown violation type"),
        ("detector_class", "dog", "unknown detector class"),
        ("first_seen", datetime(2026, 1, 1), "timezone-aware"),
        ("first_seen", datetime(1, 1, 1, tzinfo=timezone.utc), "year 1 is out of range"),
        ("score", 1.5, "less than or equal"),
        ("colour", "red", "Extra inputs"),
    ],
)
def test_invalid_violations_are_refused(field, value, message):
    with pytest.raises(ValidationError, match=message):
        violation(**{field: value})


def test_json_round_trip_keeps_evidence_bytes():
    v = violation()
    back = Violation.model_validate_json(v.model_dump_json())
    assert back == v
