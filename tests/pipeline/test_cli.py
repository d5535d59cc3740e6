import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import pytest

from pipeline.cli import main


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipeline.cli", *args], capture_output=True, text=True, timeout=300)


def test_detect_json_reports_each_image_and_survives_bad_files(tmp_path, sample_photos):
    folder = tmp_path / "photos"
    folder.mkdir()
    for p in sample_photos[:3]:
        shutil.copy(p, folder / p.name)
    (folder / "broken.jpg").write_bytes(sample_photos[0].read_bytes()[:2000])
    (folder / "notes.jpg").write_text("not a photo")
    out = run_cli("detect", str(folder), "--json")
    assert out.returncode == 0, out.stderr
    records = [json.loads(line) for line in out.stdout.splitlines()]
    assert len(records) == 5
    by_name = {r["file"].rsplit("/", 1)[-1]: r for r in records}
    assert "corrupt or truncated" in by_name["broken.jpg"]["error"]
    assert "not an image" in by_name["notes.jpg"]["error"]
    good = [r for r in records if "error" not in r]
    assert len(good) == 3
    for r in good:
        assert set(r) == {"file", "width", "height", "detections"}
        for d in r["detections"]:
            assert set(d) == {"class", "score", "box"} and len(d["box"]) == 4
            assert 0 <= d["box"][0] <= d["box"][2] <= r["width"]
    assert sum(len(r["detections"]) for r in good) > 0


def test_detect_writes_annotated_images_and_json(tmp_path, sample_photos):
    photo = next(p for p in sample_photos if "scooter" in p.name)
    out_dir = tmp_path / "out"
    assert main(["detect", str(photo), "--out", str(out_dir)]) == 0
    image = cv2.imread(str(out_dir / f"{photo.stem}.jpg"))
    assert image is not None and image.shape == cv2.imread(str(photo)).shape
    record = json.loads((out_dir / f"{photo.stem}.json").read_text())
    assert any(d["class"] == "person" for d in record["detections"])


def test_detect_writes_results_for_a_photo_whose_name_is_not_utf8(tmp_path, sample_photos):
    """cv2.imwrite crashed the process (SIGSEGV) on such a name; the JSON could not be encoded either."""
    folder = tmp_path / "photos"
    folder.mkdir()
    shutil.copy(sample_photos[0], os.fsdecode(os.fsencode(folder) + b"/bad\xffname.jpg"))
    shutil.copy(sample_photos[1], folder / "good.jpg")
    out_dir = tmp_path / "out"
    out = run_cli("detect", str(folder), "--out", str(out_dir))
    assert out.returncode == 0, out.stderr
    assert "bad\\xffname.jpg: " in out.stdout and "good.jpg: " in out.stdout
    written = sorted(p.name for p in out_dir.iterdir())
    assert written == ["bad\ufffdname.jpg", "bad\ufffdname.json", "good.jpg", "good.json"]
    record = json.loads((out_dir / "bad\ufffdname.json").read_text())
    assert record["file"].endswith("bad\\xffname.jpg") and record["detections"]
    assert cv2.imread(str(out_dir / "bad\ufffdname.jpg")).shape == cv2.imread(str(sample_photos[0])).shape


def test_missing_input_is_a_clear_cli_error(tmp_path):
    out = run_cli("detect", str(tmp_path / "nowhere.jpg"))
    assert out.returncode == 2
    assert "nowhere.jpg: no such file" in out.stderr


def test_an_output_path_that_cannot_be_a_folder_is_a_one_line_error(tmp_path, sample_photos):
    taken = tmp_path / "notes.txt"
    taken.write_text("a file, not a folder")
    cameras = tmp_path / "cameras.yaml"
    (tmp_path / "aud" / "report.html" / "inner").mkdir(parents=True)
    video = Path(__file__).resolve().parents[2] / "pipeline" / "samples" / "videos" / "car-detection.mp4"
    cameras.write_text(f"cameras:\n  - id: a\n    url: {video}\n")
    for args, reason in [
        (["detect", str(sample_photos[0]), "--out", str(taken)], "notes.txt: exists and is not a folder"),
        (["audit", str(sample_photos[0]), "--out", str(taken / "out")], "a part of this path is a file, not a folder"),
        (["watch", str(cameras), "--sink", str(taken / "cases.jsonl")], "notes.txt: exists and is not a folder"),
        (["watch", str(cameras), "--sink", f"sqlite:///{taken}"], "notes.txt: (sqlite3.DatabaseError) file is not a"),
        (["serve", "--db", "mysql://x", "--port", "0"], "unsupported database 'mysql'"),
        # the report is written beside and renamed: the error names the report, not its temporary file
        (["audit", str(sample_photos[0]), "--out", str(tmp_path / "aud")], "aud/report.html: Is a directory"),
    ]:
        out = run_cli(*args)
        assert out.returncode == 2 and reason in out.stderr and "Traceback" not in out.stderr, (args, out.stderr)
    assert taken.read_text() == "a file, not a folder"


@pytest.mark.parametrize("command", ["detect", "models"])
def test_unknown_model_is_a_clear_cli_error(command, sample_photos):
    args = [str(sample_photos[0]), "--model", "nope"] if command == "detect" else ["nope"]
    out = run_cli(command, *args)
    assert out.returncode == 2 and "nope: no such model" in out.stderr and "Traceback" not in out.stderr


@pytest.mark.parametrize(
    ("option", "reason"),
    [
        (["--conf", "2"], "conf: Input should be less than or equal to 1"),
        (["--imgsz", "100"], "imgsz: Input should be a multiple of 32"),  # the network's stride
        (["--threads", "0"], "threads: Input should be greater than or equal to 1"),
    ],
)
def test_invalid_detector_options_are_one_line_errors(option, reason, sample_photos):
    out = run_cli("detect", str(sample_photos[0]), *option)
    assert out.returncode == 2 and f"streetwatch: error: invalid option: {reason}" in out.stderr
    assert "Traceback" not in out.stderr and "pydantic.dev" not in out.stderr


def test_output_into_a_closed_pipe_ends_quietly():
    """`streetwatch models NAME | head -1`: the reader goes away first; no traceback follows."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipeline.cli", "models", "default"], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    proc.stdout.close()  # before the command has started writing
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141 and "Traceback" not in err and "BrokenPipe" not in err, err


@pytest.mark.parametrize("command", ["detect", "models", "export"])
def test_help_for_every_command(command):
    out = run_cli(command, "--help")
    assert out.returncode == 0 and "usage: streetwatch" in out.stdout


def test_a_full_disk_is_a_one_line_error_naming_the_output_folder(full_disk: Path, sample_photos):
    for args in (
        ["detect", str(sample_photos[0]), "--out", str(full_disk / "det")],
        ["audit", str(sample_photos[0]), "--out", str(full_disk / "aud"), "--threads", "1"],
    ):
        out = run_cli(*args)
        assert out.returncode == 1 and "Traceback" not in out.stderr, (args, out.stderr)
        assert out.stderr.count("\n") == 1 and "No space left on device" in out.stderr, (args, out.stderr)
        assert str(full_disk) in out.stderr, out.stderr


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["watch", "--demo", "--duration", "-5"], "argument --duration: must be a number above 0, not -5"),
        (["watch", "--demo", "--duration", "0"], "argument --duration: must be a number above 0, not 0"),
        (["watch", "--demo", "--duration", "nan"], "argument --duration: must be a number above 0, not nan"),
        (["evaluate", "--data", "d.yaml", "--operating-conf", "5"], "argument --operating-conf: must be from 0 to 1"),
        (["evaluate", "--data", "d.yaml", "--conf", "-0.1"], "argument --conf: must be from 0 to 1, not -0.1"),
        (["compare", "--candidate", "m", "--data", "d.yaml", "--conf", "2"], "argument --conf: must be from 0 to 1"),
        (["export", "m.pt", "--name", "m", "--calib-max", "-3"], "argument --calib-max: must be at least 1, not -3"),
    ],
)
def test_out_of_range_options_are_refused_naming_the_option(args: list[str], said: str, capsys):
    with pytest.raises(SystemExit) as exc:  # was: accepted, then wrong (no stop, nothing flagged, a bad slice)
        main(args)
    err = capsys.readouterr().err
    assert exc.value.code == 2 and said in err and "Traceback" not in err
