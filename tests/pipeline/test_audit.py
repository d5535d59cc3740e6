"""`streetwatch audit`: a folder of real photos in; per-photo JSON, CSV, GeoJSON, HTML report and cases out."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from datetime import datetime
from html.parser import HTMLParser
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import ExifTags, Image

from models.classes import VIOLATIONS
from pipeline.audit import Audit, AuditConfig, AuditError
from pipeline.cases import JsonlSink
from pipeline.cli import main
from pipeline.decode import HEIF_SUPPORT
from pipeline.detect import Detector, TileConfig

REPO = Path(__file__).resolve().parents[2]
GPS = (31.2304, 121.4737)  # People's Square, Shanghai
NOTES = "notes <img src=x onerror=alert(1)>.jpg"
VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}


def exif_photo(src: Path, dst: Path, fmt: str = "JPEG") -> None:
    """``src`` stored a quarter turn off with EXIF orientation 6 (shown upright), GPS and a capture time
    without a UTC offset — what many phones write."""
    upright = Image.open(src).convert("RGB")
    stored = upright.transpose(Image.Transpose.ROTATE_90)  # counter-clockwise; orientation 6 turns it back
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = 6
    exif[ExifTags.Base.Make], exif[ExifTags.Base.Model] = "HUAWEI", "P40"
    exif.get_ifd(ExifTags.IFD.Exif)[ExifTags.Base.DateTimeOriginal] = "2026:11:20 09:15:30"
    gps = exif.get_ifd(ExifTags.IFD.GPSInfo)
    gps[ExifTags.GPS.GPSLatitudeRef], gps[ExifTags.GPS.GPSLatitude] = "N", (31, 13, 49.44)
    gps[ExifTags.GPS.GPSLongitudeRef], gps[ExifTags.GPS.GPSLongitude] = "E", (121, 28, 25.32)
    stored.save(dst, fmt, exif=exif.tobytes(), quality=92)


def mosaic(photos: list[Path], dst: Path, cell=(1000, 750)) -> None:
    """A 4000x3000 photo with real street photos in two of its corners: at full-photo scale their
    vehicles are small objects (a 640 px pass sees each photo 160 px wide)."""
    canvas = np.full((3000, 4000, 3), 128, np.uint8)
    for img_path, (x, y) in zip(photos, [(0, 0), (3000, 2250)], strict=False):
        canvas[y : y + cell[1], x : x + cell[0]] = cv2.resize(
            cv2.imread(str(img_path)), cell, interpolation=cv2.INTER_AREA
        )
    cv2.imwrite(str(dst), canvas, [cv2.IMWRITE_JPEG_QUALITY, 85])


@pytest.fixture(scope="module")
def photo_folder(tmp_path_factory, sample_photos) -> Path:
    """Good photos (JPEG, PNG, WebP, HEIC, in a subfolder too), a GPS+rotated photo, a 4000 px photo,
    a truncated JPEG and a text file named .jpg."""
    root = tmp_path_factory.mktemp("inspector") / "photos"
    (root / "day2").mkdir(parents=True)
    by_name = {p.stem: p for p in sample_photos}
    street = [by_name[n] for n in ("patrol-bikes-cardboard", "patrol-posters-scooter", "patrol-containers-cyclist")]
    shutil.copy(street[0], root / "bikes.jpg")
    shutil.copy(by_name["garbage-bins-roadside"], root / "bins.jpg")
    cv2.imwrite(str(root / "day2" / "scooter.png"), cv2.imread(str(street[1])))
    cv2.imwrite(str(root / "day2" / "cyclist.webp"), cv2.imread(str(street[2])), [cv2.IMWRITE_WEBP_QUALITY, 90])
    if HEIF_SUPPORT:
        Image.open(by_name["facade-shop-signs"]).save(root / "day2" / "facade.heic", "HEIF", quality=80)
    exif_photo(street[0], root / "gps-rotated.jpg")
    mosaic(street, root / "day2" / "large-4000px.jpg")
    data = street[1].read_bytes()
    (root / "broken.jpg").write_bytes(data[: len(data) // 3])
    (root / NOTES).write_text("inspection notes, not a photo\n")  # its name must not become markup
    return root


class Page(HTMLParser):
    """Collects what the tests look at in the report: ids, rows by class, images, scripts, links."""

    def __init__(self):
        super().__init__()
        self.ids: dict[str, list[str]] = {}
        self.rows: dict[str, list[dict]] = {}
        self.images: list[str] = []
        self.external: list[str] = []
        self.cards: list[dict] = []
        self.cells: list[str] = []
        self._open: list[tuple[str, str | None]] = []  # (tag, id) of the elements we are inside
        self._row: dict | None = None
        self._cell: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag not in VOID:
            self._open.append((tag, a.get("id")))
        if tag == "tr" and a.get("class"):
            self._row = {"class": a["class"], "attrs": a, "cells": []}
            self.rows.setdefault(a["class"], []).append(self._row)
        if tag == "td" and self._row is not None:
            self._cell = []
        if tag == "img":
            self.images.append(a.get("src", ""))
        if tag == "article" and "card" in a.get("class", ""):
            self.cards.append(a)
        for key in ("src", "href"):
            if a.get(key, "").startswith(("http:", "https:", "//")):
                self.external.append(a[key])

    def handle_endtag(self, tag):
        while self._open:
            if self._open.pop()[0] == tag:
                break
        if tag == "td" and self._cell is not None and self._row is not None:
            self._row["cells"].append(" ".join("".join(self._cell).split()))
            self._cell = None
        if tag == "tr":
            self._row = None

    def handle_data(self, data):
        for _, element_id in self._open:
            if element_id:
                self.ids.setdefault(element_id, []).append(data.strip())
        if self._cell is not None:
            self._cell.append(data)

    def text_of(self, element_id: str) -> str:
        return " ".join(t for t in self.ids.get(element_id, []) if t)


def parse_report(path: Path) -> Page:
    page = Page()
    page.feed(path.read_text(encoding="utf-8"))
    page.close()
    return page


def manifest_events(out: Path) -> list[dict]:
    """The manifest's events; a line cut short by a crash is skipped, as the audit does."""
    events = []
    for line in (out / "manifest.jsonl").read_text().splitlines():
        try:
            events.append(json.loads(line))
        except json.JSONDecodeError:
            assert line.endswith('"sta'), f"only the test's own half-written line may be broken: {line}"
    return events


def jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


@pytest.fixture(scope="module")
def audited(photo_folder, tmp_path_factory):
    """One audit of the folder with parking judged and cases filed to a JSON-lines file."""
    work = tmp_path_factory.mktemp("audit")
    out, cases = work / "out", work / "queue" / "cases.jsonl"
    args = [str(photo_folder), "--out", str(out), "--parking-anywhere", "--timezone", "Asia/Shanghai"]
    t = time.perf_counter()
    code = main(["audit", *args, "--file-cases", str(cases)])
    return {"out": out, "cases": cases, "args": args, "code": code, "seconds": time.perf_counter() - t}


def test_audit_processes_every_photo_and_lists_unreadable_ones(audited, photo_folder):
    out = audited["out"]
    assert audited["code"] == 0  # unreadable files are reported, they do not fail the run
    events = [e for e in manifest_events(out) if e["event"] == "photo"]
    inputs = sorted(str(p) for p in photo_folder.rglob("*") if p.is_file())
    assert sorted(e["path"] for e in events) == inputs  # every file exactly once
    errors = {Path(e["path"]).name: e["error"] for e in events if e["status"] == "error"}
    assert set(errors) == {"broken.jpg", NOTES}
    assert "corrupt or truncated" in errors["broken.jpg"] and "not an image" in errors[NOTES]
    results = {Path(e["path"]).name: json.loads((out / e["result"]).read_text()) for e in events if "result" in e}
    assert len(results) == len(inputs) - 2
    formats = {r["format"] for r in results.values()}
    assert {"jpeg", "png", "webp"} <= formats and (not HEIF_SUPPORT or "heic" in formats)
    for name, r in results.items():
        assert (out / r["thumbnail"]).is_file(), name
        for d in r["detections"]:
            assert 0 <= d["box"][0] <= d["box"][2] <= r["width"] and 0 <= d["box"][1] <= d["box"][3] <= r["height"]


def test_exif_rotation_gps_and_capture_time(audited, sample_photos):
    out = audited["out"]
    record = next(json.loads(p.read_text()) for p in (out / "photos").glob("gps-rotated-*.json"))
    upright = cv2.imread(str(next(p for p in sample_photos if p.stem == "patrol-bikes-cardboard")))
    assert (record["height"], record["width"]) == upright.shape[:2]  # stored turned, read upright
    assert record["location"] == pytest.approx({"lat": GPS[0], "lon": GPS[1]}, abs=1e-6)
    assert record["taken_at"] == "2026-11-20T09:15:30+08:00"
    assert record["time_source"] == "EXIF, no UTC offset: assumed Asia/Shanghai"
    assert record["camera"] == "HUAWEI P40"
    # read upright, the rotated copy gives the same detections as the original photo
    original = next(json.loads(p.read_text()) for p in (out / "photos").glob("bikes-*.json"))
    assert len(record["detections"]) == len(original["detections"]) > 0
    plain = next(json.loads(p.read_text()) for p in (out / "photos").glob("scooter-*.json"))
    assert plain["location"] is None and "file modified time" in plain["time_source"]


def test_large_photo_gets_sliced_inference_that_finds_small_objects(audited):
    out = audited["out"]
    records = [json.loads(p.read_text()) for p in (out / "photos").glob("*.json")]
    large = next(r for r in records if r["name"] == "large-4000px.jpg")
    assert large["tiled"] and (large["width"], large["height"]) == (4000, 3000)
    assert not any(r["tiled"] for r in records if r is not large)
    image = cv2.imread(large["file"])
    detector = Detector(threads=1)
    vehicles = {"car", "motorbike", "bicycle"}

    def count(dets) -> int:
        return sum(c in vehicles for c in dets.class_names)

    full_pass = count(detector.detect(image))
    # the two street photos of the mosaic, each on its own: what the model finds at their native scale
    native = count(detector.detect(image[:750, :1000])) + count(detector.detect(image[2250:, 3000:]))
    tiled = sum(d["class"] in vehicles for d in large["detections"])
    assert full_pass < tiled and native >= 4
    assert tiled >= 0.8 * native  # slicing recovers nearly all of them; the single pass misses some


def test_csv_and_geojson_agree_with_the_per_photo_results(audited):
    out = audited["out"]
    records = [json.loads(p.read_text()) for p in (out / "photos").glob("*.json")]
    text = (out / "detections.csv").read_text(encoding="utf-8-sig")
    rows = list(csv.DictReader(io.StringIO(text)))
    assert len(rows) == sum(len(r["detections"]) for r in records) > 0
    assert {r["violation"] for r in rows if r["class"] in ("car", "bicycle", "motorbike")} == {"illegal_parking"}
    assert all(r["violation_zh"] == "乱停乱放" for r in rows if r["violation"] == "illegal_parking")
    assert {r["class_zh"] for r in rows if r["class"] == "person"} <= {"行人"}
    assert all(r["violation"] == "" for r in rows if r["class"] == "person")
    geo = json.loads((out / "violations.geojson").read_text())
    located = [v for r in records if r["location"] for v in r["violations"]]
    assert geo["type"] == "FeatureCollection" and len(geo["features"]) == len(located) > 0
    for f in geo["features"]:
        assert f["geometry"] == {"type": "Point", "coordinates": [pytest.approx(GPS[1]), pytest.approx(GPS[0])]}
        assert f["properties"]["violation"] in VIOLATIONS and f["properties"]["taken_at"].endswith("+08:00")
    assert "illegal_parking" in {f["properties"]["violation"] for f in geo["features"]}  # this audit judges parking


def test_html_report_is_self_contained_and_counts_right(audited):
    out = audited["out"]
    records = [json.loads(p.read_text()) for p in (out / "photos").glob("*.json")]
    violations = [v for r in records for v in r["violations"]]
    page = parse_report(out / "report.html")
    assert page.text_of("kpi-photos") == str(len(records))
    assert page.text_of("kpi-violations") == str(len(violations))
    assert page.text_of("kpi-unreadable") == "2"
    assert page.text_of("kpi-with") == str(sum(1 for r in records if r["violations"]))
    rows = page.rows["violation"]
    assert sorted(r["attrs"]["data-key"] for r in rows) == sorted(v["key"] for v in violations)
    scores = [float(r["cells"][2].split()[0]) for r in rows]
    assert scores == sorted(scores, reverse=True)  # most confident first
    assert all(r["cells"][-1] == "filed" for r in rows)
    unreadable = {Path(r["cells"][0]).name: r["cells"][1] for r in page.rows["unreadable"]}
    assert set(unreadable) == {"broken.jpg", NOTES} and "not an image" in unreadable[NOTES]
    assert len(page.cards) == sum(1 for r in records if r["violations"])
    assert page.images and all(src.startswith("data:image/jpeg;base64,") for src in page.images)
    assert page.external == []  # opens offline: no CDN, no remote image
    html = (out / "report.html").read_text(encoding="utf-8")
    for kind in VIOLATIONS.values():
        assert kind.zh in html and kind.name in html  # Chinese and English names in the summary
    assert "<svg" in html and "<script src" not in html
    assert re.search(r"Generated \d{4}-\d\d-\d\d \d\d:\d\d CST", html)  # in the zone photo times are shown in


def test_filed_cases_are_complete_and_rerun_files_nothing_twice(audited, photo_folder, sample_photos):
    out, cases = audited["out"], audited["cases"]
    records = [json.loads(p.read_text()) for p in (out / "photos").glob("*.json")]
    violations = {v["key"]: (r, v) for r in records for v in r["violations"]}
    filed = jsonl(cases)
    assert sorted(c["key"] for c in filed) == sorted(violations)  # each violation once
    for case in filed:
        record, v = violations[case["key"]]
        assert case["source"] == "photo" and case["source_id"] == record["sha256"] and case["type"] == v["type"]
        assert case["model_version"] == record["model_version"] and case["detector_class"] == v["class"]
        assert datetime.fromisoformat(case["first_seen"]).tzinfo is not None
        assert {e["kind"] for e in case["evidence_files"]} == {"frame", "crop", "clean"}
        assert all(Path(e["path"]).is_file() for e in case["evidence_files"])
        w, h = case["frame_size"]
        assert max(w, h) <= 1600 and 0 <= case["box"][0] < case["box"][2] <= w
        if record["location"]:
            assert case["location"] == pytest.approx({"lat": GPS[0], "lon": GPS[1]}, abs=1e-6)
            assert case["first_seen"] == "2026-11-20T09:15:30+08:00"
    # rerun: nothing new, nothing filed
    assert main(["audit", *audited["args"], "--file-cases", str(cases)]) == 0
    assert len(jsonl(cases)) == len(filed)
    # a new photo in the folder: only it is processed and filed
    extra = photo_folder / "day2" / "new.jpg"
    img = cv2.imread(str(next(p for p in sample_photos if p.stem == "patrol-posters-scooter")))
    cv2.imwrite(str(extra), cv2.flip(img, 1))
    try:
        before = len([e for e in manifest_events(out) if e["event"] == "photo"])
        assert main(["audit", *audited["args"], "--file-cases", str(cases)]) == 0
        events = [e for e in manifest_events(out) if e["event"] == "photo"]
        assert len(events) == before + 1 and events[-1]["path"] == str(extra)
        now = jsonl(cases)
        assert len({c["key"] for c in now}) == len(now) > len(filed)
        assert {c["source_name"] for c in now[len(filed) :]} == {"new.jpg"}
    finally:
        extra.unlink()


def test_keys_are_deterministic_across_fresh_audits(audited, photo_folder, tmp_path):
    cases = tmp_path / "again.jsonl"
    args = [str(photo_folder / "gps-rotated.jpg"), "--out", str(tmp_path / "out"), "--parking-anywhere"]
    assert main(["audit", *args, "--timezone", "Asia/Shanghai", "--file-cases", str(cases)]) == 0
    again = {c["key"] for c in jsonl(cases)}
    first = {c["key"] for c in jsonl(audited["cases"]) if c["source_name"] == "gps-rotated.jpg"}
    assert again == first and len(again) > 0


def test_without_parking_judged_vehicles_are_detections_not_violations(sample_photos, tmp_path, capsys):
    photo = next(p for p in sample_photos if p.stem == "patrol-bikes-cardboard")
    out = tmp_path / "out"
    assert main(["audit", str(photo), "--out", str(out)]) == 0
    record = json.loads(next((out / "photos").glob("*.json")).read_text())
    assert {d["class"] for d in record["detections"]} & {"car", "bicycle"}
    vehicles = [d for d in record["detections"] if d["class"] in ("car", "motorbike", "bicycle")]
    assert vehicles and all(d["violation"] is None for d in vehicles)
    assert "illegal_parking" not in {v["type"] for v in record["violations"]}  # garbage may still be reported
    html = (out / "report.html").read_text(encoding="utf-8")
    assert "not judged" in html and "--parking-anywhere" in html
    with pytest.raises(SystemExit) as exc:  # other settings in the same folder are refused, not mixed in
        main(["audit", str(photo), "--out", str(out), "--parking-anywhere"])
    assert exc.value.code == 2
    assert "other settings (parking_anywhere: False -> True)" in capsys.readouterr().err


def run_until(cmd: list[str], manifest: Path, photos_done: int, sig: int) -> subprocess.CompletedProcess:
    """Run the audit in a subprocess and send it ``sig`` once the manifest records ``photos_done`` photos."""
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if manifest.exists() and manifest.read_bytes().count(b'"event": "photo"') >= photos_done:
            break
        time.sleep(0.005)
    proc.send_signal(sig)
    stdout, stderr = proc.communicate(timeout=60)
    return subprocess.CompletedProcess(cmd, proc.returncode, stdout, stderr)


def test_interrupted_runs_resume_and_process_each_photo_once(sample_photos, tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    for p in sample_photos:  # 24 distinct real photos
        img = cv2.imread(str(p))
        cv2.imwrite(str(folder / f"{p.stem}.jpg"), img)
        cv2.imwrite(str(folder / f"{p.stem}-mirrored.jpg"), cv2.flip(img, 1))
        cv2.imwrite(str(folder / f"{p.stem}-small.jpg"), cv2.resize(img, None, fx=0.75, fy=0.75))
    out = tmp_path / "out"
    manifest = out / "manifest.jsonl"
    cmd = [sys.executable, "-m", "pipeline.cli", "audit", str(folder), "--out", str(out), "--parking-anywhere"]
    # stopped (Ctrl-C / SIGTERM): finishes the photos in hand, writes the report of what is done, exit 130
    stopped = run_until([*cmd, "--workers", "1"], manifest, 3, signal.SIGTERM)
    assert stopped.returncode == 130, stopped.stderr
    assert "interrupted" in stopped.stdout and "rerun the same command" in stopped.stdout
    done = [e for e in manifest_events(out) if e["event"] == "photo"]
    assert 3 <= len(done) < 24, "the run was not stopped in the middle"
    assert parse_report(out / "report.html").text_of("kpi-photos") == str(len(done))
    # killed (a crash): no clean-up of any kind
    killed = run_until([*cmd, "--workers", "1"], manifest, len(done) + 3, signal.SIGKILL)
    assert killed.returncode == -signal.SIGKILL
    first = [e for e in manifest_events(out) if e["event"] == "photo"]
    assert len(done) + 3 <= len(first) < 24, "the run was not killed in the middle"
    assert first[: len(done)] == done
    with open(manifest, "ab") as fh:  # and a half-written line, as a crash during a write leaves
        fh.write(b'{"event": "photo", "path": "/nowhere/x.jpg", "sta')
    (out / "photos" / ".left-behind.json.1234.5678.tmp").write_text("{")  # a write the crash cut short
    assert main(["audit", str(folder), "--out", str(out), "--parking-anywhere"]) == 0
    events = [e for e in manifest_events(out) if e["event"] == "photo"]
    paths = [e["path"] for e in events]
    assert sorted(paths) == sorted(str(p) for p in folder.iterdir())  # each photo exactly once
    assert paths[: len(first)] == [e["path"] for e in first]  # the stopped runs' work was kept, not redone
    records = [json.loads((out / e["result"]).read_text()) for e in events]
    assert len(list((out / "photos").glob("*.json"))) == 24 == len({r["sha256"] for r in records})
    rows = list(csv.DictReader(io.StringIO((out / "detections.csv").read_text(encoding="utf-8-sig"))))
    assert len(rows) == sum(len(r["detections"]) for r in records)
    page = parse_report(out / "report.html")
    assert page.text_of("kpi-photos") == "24"
    assert page.text_of("kpi-violations") == str(sum(len(r["violations"]) for r in records))
    assert not list(out.rglob("*.tmp"))  # temporary files of the crashed run are swept away


def test_a_replaced_photo_leaves_only_its_current_results(sample_photos, tmp_path):
    """The same file name with another picture in it (re-exported, swapped): the folder shows what is there now."""
    by_name = {p.stem: p for p in sample_photos}
    folder, out = tmp_path / "photos", tmp_path / "out"
    folder.mkdir()
    shutil.copy(by_name["patrol-bikes-cardboard"], folder / "a.jpg")
    shutil.copy(by_name["patrol-bikes-cardboard"], folder / "copy.jpg")  # the same picture twice
    shutil.copy(by_name["patrol-posters-scooter"], folder / "b.jpg")
    assert main(["audit", str(folder), "--out", str(out), "--parking-anywhere"]) == 0
    first = {p.name for p in (out / "photos").glob("*.json")}
    shutil.copy(by_name["facade-shop-signs"], folder / "b.jpg")  # b replaced
    shutil.copy(by_name["facade-shop-signs"], folder / "a.jpg")  # a replaced, but its copy still shows it
    assert main(["audit", str(folder), "--out", str(out), "--parking-anywhere"]) == 0
    records = [json.loads(p.read_text()) for p in (out / "photos").glob("*.json")]
    assert len(records) == 2 and len(first) == 2  # results of the bikes (still in copy.jpg) and the facade
    shown = {p.relative_to(out).as_posix() for d in ("thumbs", "annotated", "crops") for p in (out / d).glob("*")}
    wanted = {r["thumbnail"] for r in records} | {r["annotated"] for r in records if r["annotated"]}
    wanted |= {v["crop"] for r in records for v in r["violations"]}
    assert shown == wanted  # no picture of the old b.jpg is left
    page = parse_report(out / "report.html")  # two pictures: the facade (b.jpg, a.jpg) and the bikes, now copy.jpg
    assert page.text_of("kpi-photos") == "2"
    assert {c["data-file"] for c in page.cards} >= {"copy.jpg"}
    # b's first picture comes back, whose results were removed: it is audited afresh, not pointed at them
    shutil.copy(by_name["patrol-posters-scooter"], folder / "b.jpg")
    assert (
        main(["audit", str(folder), "--out", str(out), "--parking-anywhere", "--file-cases", str(tmp_path / "c.jsonl")])
        == 0
    )
    page = parse_report(out / "report.html")
    assert page.text_of("kpi-photos") == "3" and page.text_of("kpi-unreadable") == "0"
    assert {c["data-file"] for c in page.cards} >= {"copy.jpg", "b.jpg"}
    filed = {json.loads(line)["source_name"] for line in (tmp_path / "c.jsonl").read_text().splitlines()}
    assert filed >= {"copy.jpg", "b.jpg"}  # the bikes filed from the copy that holds them


def test_two_audits_cannot_write_one_folder_at_once(sample_photos, tmp_path):
    detector = Detector(threads=1)
    config = AuditConfig(out=tmp_path / "out")
    first = Audit(detector, config)
    try:
        with pytest.raises(AuditError, match="another audit is writing to"):
            Audit(detector, config)
    finally:
        first.close()
    Audit(detector, config).close()  # free again once the first is done


class FlakySink(JsonlSink):
    """A real JSON-lines sink behind a connection that drops: the first ``fail_first`` emits of each
    key raise, like a case queue that times out."""

    def __init__(self, path: Path, fail_first: int, only_source: str | None = None):
        super().__init__(path)
        self.fail_first, self.only_source = fail_first, only_source
        self.tries: dict[str, int] = {}

    def emit(self, violation):
        self.tries[violation.key] = self.tries.get(violation.key, 0) + 1
        if (self.only_source in (None, violation.source_name)) and self.tries[violation.key] <= self.fail_first:
            raise ConnectionError("case queue timed out")
        super().emit(violation)


def test_sink_failures_are_retried_then_recorded_and_filed_by_the_next_run(sample_photos, tmp_path):
    photos = [p for p in sample_photos if p.stem in ("patrol-bikes-cardboard", "facade-shop-signs")]
    detector = Detector(threads=1, tile=TileConfig(enabled=True, min_side=1920))
    config = AuditConfig(out=tmp_path / "out", parking_anywhere=True, retry_delay=0, file_attempts=3)
    target = tmp_path / "cases.jsonl"
    # a transient failure: retried within the run, every violation filed once
    sink = FlakySink(target, fail_first=2)
    audit = Audit(detector, config, sink=sink, target=str(target))
    result = audit.run(photos)
    audit.close()
    sink.close()
    assert result.filing_failed == 0 and result.filed == result.violations > 0
    assert set(sink.tries.values()) == {3}
    assert len(jsonl(target)) == result.violations
    # the queue is down for one photo: its violations are recorded as not filed, the others go through
    target2 = tmp_path / "cases2.jsonl"
    sink = FlakySink(target2, fail_first=10, only_source="facade-shop-signs.jpg")
    audit = Audit(detector, config, sink=sink, target=str(target2))
    result = audit.run(photos)
    audit.close()
    sink.close()
    failed = [e for e in manifest_events(tmp_path / "out") if e["event"] == "filing_failed"]
    assert result.processed == 0 and result.skipped == 2  # photos were done: only their filing is retried
    assert result.filing_failed == sum(len(e["keys"]) for e in failed) > 0
    assert "ConnectionError: case queue timed out" in failed[0]["error"]
    assert {c["source_name"] for c in jsonl(target2)} == {"patrol-bikes-cardboard.jpg"}
    html = (tmp_path / "out" / "report.html").read_text(encoding="utf-8")
    assert "not filed" in html and 'class="tag failed"' in html
    # the next run, the queue is back: exactly the missing violations are filed, then nothing more
    sink = JsonlSink(target2)
    audit = Audit(detector, config, sink=sink, target=str(target2))
    result = audit.run(photos)
    assert result.filed == len(failed[0]["keys"]) and result.filing_failed == 0
    assert audit.run(photos).filed == 0
    audit.close()
    sink.close()
    keys = [c["key"] for c in jsonl(target2)]
    assert len(keys) == len(set(keys)) == len(jsonl(target))


def test_unwritable_case_target_fails_the_run_visibly(sample_photos, tmp_path):
    photo = next(p for p in sample_photos if p.stem == "patrol-bikes-cardboard")
    (tmp_path / "evidence").write_text("a file where the evidence folder should be")  # emit() fails
    target = ["--parking-anywhere", "--file-cases", str(tmp_path / "cases.jsonl")]
    out = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "audit", str(photo), "--out", str(tmp_path / "out"), *target],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 1
    assert "not filed" in out.stderr and "NOT filed (rerun to retry)" in out.stdout


def test_missing_input_and_bad_options_are_clear_cli_errors(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["audit", str(tmp_path / "nowhere"), "--out", str(tmp_path / "out")])
    assert exc.value.code == 2 and "nowhere: no such file" in capsys.readouterr().err
    photo = REPO / "pipeline" / "samples" / "photos" / "patrol-dumped-bags.jpg"
    with pytest.raises(SystemExit) as exc:
        main(["audit", str(photo), "--out", str(tmp_path / "out"), "--timezone", "Mars/Olympus"])
    assert exc.value.code == 2 and "unknown timezone 'Mars/Olympus'" in capsys.readouterr().err


def shared_patrol_photos() -> Path | None:
    for parent in REPO.parents:
        if (folder := parent / "shared" / "data" / "patrol-photos").is_dir():
            return folder
    return None


@pytest.mark.slow
def test_real_patrol_photos_end_to_end(tmp_path):
    folder = shared_patrol_photos()
    if folder is None:
        pytest.skip("../shared/data/patrol-photos is not here")
    photos = sorted(folder.glob("*.jpg"))[:6]
    out = tmp_path / "out"
    assert main(["audit", *map(str, photos), "--out", str(out), "--parking-anywhere"]) == 0
    records = [json.loads(p.read_text()) for p in (out / "photos").glob("*.json")]
    assert sorted(r["name"] for r in records) == sorted(p.name for p in photos)
    assert sum(len(r["violations"]) for r in records) > 0  # Amsterdam streets: parked cars and bikes
    page = parse_report(out / "report.html")
    assert page.text_of("kpi-photos") == "6" and page.text_of("kpi-unreadable") == "0"
    assert os.path.getsize(out / "report.html") < 5_000_000


def test_audit_help_names_every_option(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["audit", "--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    for option in ("--out", "--model", "--tile", "--tile-above", "--file-cases", "--workers", "--parking-anywhere"):
        assert option in text


def test_unreadable_files_are_named_with_their_reason_as_they_happen(tmp_path, capsys):
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 cut short")
    assert main(["audit", str(folder), "--out", str(tmp_path / "out")]) == 1  # nothing could be read
    captured = capsys.readouterr()
    assert f"{folder / 'broken.jpg'}: unreadable: " in captured.err
    assert "0 new photos audited, 0 already done, 1 unreadable" in captured.out


def chromium() -> str | None:
    """A headless-capable Chromium on this machine, if any."""
    return next((b for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None)


@pytest.mark.slow
def test_report_sorts_photos_in_a_real_browser(audited):
    browser = chromium()
    if browser is None:
        pytest.skip("no Chromium on this machine")

    def cards(fragment: str = "", out_dir: Path = audited["out"]) -> list[dict]:
        url = (out_dir / "report.html").as_uri()
        out = subprocess.run(
            [browser, "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom", url + fragment],
            capture_output=True,
            text=True,
            timeout=120,
        )
        page = Page()
        page.feed(out.stdout)
        assert page.cards, out.stderr[-2000:]
        return page.cards

    default = cards()
    confs = [float(c["data-conf"]) for c in default]
    assert confs == sorted(confs, reverse=True)
    by_file = [c["data-file"] for c in cards("#sort=file")]  # the page's script reorders the cards
    assert by_file == sorted(by_file, key=str.lower) and by_file != [c["data-file"] for c in default]
    counts = [int(c["data-count"]) for c in cards("#sort=count")]
    assert counts == sorted(counts, reverse=True)
    taken = [datetime.fromisoformat(c["data-time"]) for c in cards("#sort=time")]
    assert taken == sorted(taken)
    # photos taken under different UTC offsets sort by instant, not by the text of their times: 09:00 in New
    # York (14:00 UTC) comes after 20:00 in Shanghai (12:00 UTC) the same day
    copy = audited["out"].parent / "offsets"
    shutil.copytree(audited["out"], copy)
    shown = {c["data-file"] for c in default}
    records = [p for p in sorted((copy / "photos").glob("*.json")) if json.loads(p.read_text())["name"] in shown]
    for path, when in zip(records, ["2026-11-20T09:00:00-05:00", "2026-11-20T20:00:00+08:00"], strict=False):
        path.write_text(json.dumps({**json.loads(path.read_text()), "taken_at": when}))
    args = audited["args"]
    out_at = args.index("--out") + 1
    assert main(["audit", *args[:out_at], str(copy), *args[out_at + 1 :]]) == 0  # nothing new: the report again
    by_time = [c["data-time"] for c in cards("#sort=time", copy)]
    assert by_time.index("2026-11-20T20:00:00+08:00") < by_time.index("2026-11-20T09:00:00-05:00")
    assert [datetime.fromisoformat(t) for t in by_time] == sorted(datetime.fromisoformat(t) for t in by_time)


def test_batched_detection_finds_what_single_photo_calls_find(sample_photos, tmp_path):
    photos = [p for p in sample_photos if p.stem.startswith("patrol-")]  # two share a letterbox shape
    detector = Detector(threads=1, tile=TileConfig(enabled=True, min_side=1920))
    found = {}
    for batch in (1, 4):
        audit = Audit(detector, AuditConfig(out=tmp_path / f"b{batch}", batch=batch), progress=False)
        assert audit.parallelism()[0] == batch
        assert audit.run(photos).processed == len(photos)
        audit.close()
        records = [json.loads(p.read_text()) for p in (tmp_path / f"b{batch}" / "photos").glob("*.json")]
        found[batch] = {r["name"]: r["detections"] for r in records}
    assert found[1].keys() == found[4].keys() and sum(map(len, found[1].values())) > 0
    for name, dets in found[1].items():
        assert [d["class"] for d in dets] == [d["class"] for d in found[4][name]], name
        for a, b in zip(dets, found[4][name], strict=True):
            assert a["score"] == pytest.approx(b["score"], abs=1e-3)
            assert a["box"] == pytest.approx(b["box"], abs=0.5)


def test_a_garbage_utc_offset_in_one_photo_neither_aborts_the_audit_nor_loses_the_photo(sample_photos, tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    src = next(p for p in sample_photos if p.stem == "patrol-posters-scooter")
    exif = Image.Exif()
    sub = exif.get_ifd(ExifTags.IFD.Exif)
    sub[ExifTags.Base.DateTimeOriginal], sub[ExifTags.Base.OffsetTimeOriginal] = "2026:11:20 09:15:30", "+25:00"
    Image.open(src).save(folder / "offset.jpg", "JPEG", exif=exif.tobytes(), quality=90)
    shutil.copy(src.with_name("patrol-dumped-bags.jpg"), folder / "bags.jpg")
    out = tmp_path / "out"
    assert main(["audit", str(folder), "--out", str(out), "--timezone", "Asia/Shanghai"]) == 0
    records = {r["name"]: r for r in (json.loads(p.read_text()) for p in (out / "photos").glob("*.json"))}
    assert set(records) == {"offset.jpg", "bags.jpg"}
    assert records["offset.jpg"]["taken_at"] == "2026-11-20T09:15:30+08:00"  # the offset dropped, the time kept
    assert records["offset.jpg"]["time_source"] == "EXIF, no UTC offset: assumed Asia/Shanghai"


def test_photos_whose_names_are_not_utf8_are_audited_and_reruns_find_them(sample_photos, tmp_path, capsys):
    """Such a name (kept by Python as lone surrogates) stopped every run when its results were written."""
    by_name = {p.stem: p for p in sample_photos}
    folder, out, cases = tmp_path / "photos", tmp_path / "out", tmp_path / "cases.jsonl"
    folder.mkdir()
    raw = os.fsencode(folder)
    shutil.copy(by_name["garbage-bins-roadside"], os.fsdecode(raw + b"/bins\xff.jpg"))
    Path(os.fsdecode(raw + b"/notes\xfe.jpg")).write_text("not a photo")
    shutil.copy(by_name["patrol-posters-scooter"], folder / "good.jpg")
    assert main(["audit", str(folder), "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "notes\\xfe.jpg: unreadable: not an image" in err
    records = {r["name"]: r for r in (json.loads(p.read_text()) for p in (out / "photos").glob("*.json"))}
    assert set(records) == {"bins\\xff.jpg", "good.jpg"}
    assert records["bins\\xff.jpg"]["file"] == str(folder / "bins\\xff.jpg") and records["bins\\xff.jpg"]["violations"]
    assert (out / records["bins\\xff.jpg"]["thumbnail"]).is_file()
    assert "bins\\xff.jpg" in (out / "detections.csv").read_text()
    page = parse_report(out / "report.html")
    assert page.text_of("kpi-photos") == "2" and page.text_of("kpi-unreadable") == "1"
    # a rerun finds all three, and files the cases of the photo from its real file
    assert main(["audit", str(folder), "--out", str(out), "--file-cases", str(cases)]) == 0
    assert "0 new photos audited, 2 already done" in capsys.readouterr().out
    assert "bins\\xff.jpg" in {c["source_name"] for c in jsonl(cases)}
    assert len([e for e in manifest_events(out) if e.get("event") == "photo"]) == 3


def test_an_unreadable_settings_file_is_a_clear_error_naming_it(sample_photos, tmp_path, capsys):
    """A truncated audit.json raised JSONDecodeError (a traceback) on every rerun."""
    folder, out = tmp_path / "photos", tmp_path / "out"
    folder.mkdir()
    shutil.copy(sample_photos[0], folder / "a.jpg")
    assert main(["audit", str(folder), "--out", str(out)]) == 0
    settings = out / "audit.json"
    settings.write_bytes(settings.read_bytes()[:50])
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        main(["audit", str(folder), "--out", str(out)])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "Traceback" not in err
    assert f"streetwatch: error: {settings} is unreadable (JSONDecodeError" in err
    assert "delete it to go on with this run's settings" in err
    settings.unlink()  # as the message says: the audit goes on, nothing redone
    assert main(["audit", str(folder), "--out", str(out)]) == 0
    assert "0 new photos audited, 1 already done" in capsys.readouterr().out
    assert json.loads(settings.read_text())["settings"]["model_version"]


def test_a_corrupt_result_file_is_redone_by_the_next_run(sample_photos, tmp_path, capsys):
    """A photos/*.json cut short was listed as unreadable, but reruns counted its photo as done forever."""
    folder, out = tmp_path / "photos", tmp_path / "out"
    folder.mkdir()
    by_name = {p.stem: p for p in sample_photos}
    shutil.copy(by_name["garbage-bins-roadside"], folder / "a.jpg")
    shutil.copy(by_name["garbage-bins-roadside"], folder / "copy.jpg")
    shutil.copy(by_name["patrol-posters-scooter"], folder / "b.jpg")
    assert main(["audit", str(folder), "--out", str(out)]) == 0
    results = {json.loads(p.read_text())["name"]: p for p in (out / "photos").glob("*.json")}
    assert set(results) == {"a.jpg", "b.jpg"}
    good = results["a.jpg"].read_text()
    results["a.jpg"].write_text("{")
    capsys.readouterr()
    assert main(["audit", str(folder), "--out", str(out)]) == 0
    assert "1 new photos audited, 1 already done, 1 copies of audited photos" in capsys.readouterr().out
    assert json.loads(results["a.jpg"].read_text())["detections"] == json.loads(good)["detections"]
    page = parse_report(out / "report.html")
    assert page.text_of("kpi-photos") == "2" and page.text_of("kpi-unreadable") == "0"
    assert main(["audit", str(folder), "--out", str(out)]) == 0
    assert "0 new photos audited, 3 already done" in capsys.readouterr().out
