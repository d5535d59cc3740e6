"""`streetwatch data ...` as a user runs it."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml
from disks import fill, tmpfs

from pipeline.cli import main

from .conftest import shared_data

REPO = Path(__file__).resolve().parents[2]


def run(argv: list[str], capsys) -> tuple[int, str, str]:
    try:
        code = main(argv)
    except SystemExit as exc:
        code = exc.code
    out = capsys.readouterr()
    return code, out.out, out.err


def test_mappings_lists_the_shipped_mappings(capsys):
    code, out, _ = run(["data", "mappings"], capsys)
    assert code == 0 and "win_ad->small_ad" in out and "dropped: window, arch, door" in out


def test_check_prints_a_table_and_writes_the_report(garbage_like: Path, tmp_path: Path, capsys):
    (garbage_like / "train" / "images" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    (garbage_like / "train" / "labels" / "train001.txt").write_text("4 0.5 0.5 0.2 0.2\n")
    code, out, _ = run(
        ["data", "check", str(garbage_like), "--map", "garbage", "--report", str(tmp_path / "r"), "--strict"], capsys
    )
    assert code == 1  # --strict: errors found
    assert "garbage  train" in out and "corrupt_image" in out and "unknown_class" in out
    assert "broken.jpg" in out and (tmp_path / "r" / "report.html").is_file()


def test_bad_inputs_are_cli_errors_naming_the_file(tmp_path: Path, capsys):
    code, _, err = run(["data", "check", str(tmp_path / "nowhere"), "--map", "garbage"], capsys)
    assert code == 2 and "nowhere" in err
    bad = tmp_path / "recipe.yaml"
    bad.write_text("name: x\nsources: []\n")
    code, _, err = run(["data", "build", str(bad), "--shared", str(tmp_path), "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and "recipe.yaml: invalid recipe" in err
    code, _, err = run(["data", "pack", str(tmp_path), "--out", str(tmp_path / "p")], capsys)
    assert code == 2 and "not a dataset folder" in err


def test_import_show_pack_verify(garbage_like: Path, tmp_path: Path, capsys):
    out = tmp_path / "ds"
    code, text, _ = run(
        ["data", "import", str(garbage_like), "--map", "garbage", "--name", "g", "--out", str(out), "--no-sheets"],
        capsys,
    )
    assert code == 0 and "dataset:" in text and (out / "val-g.yaml").is_file()
    code, text, _ = run(["data", "show", str(out), "--split", "val", "--out", str(tmp_path / "sheet.png")], capsys)
    assert code == 0 and (tmp_path / "sheet.png").stat().st_size > 1000
    code, text, _ = run(["data", "pack", str(out), "--out", str(tmp_path / "packed"), "--budget-mb", "1"], capsys)
    assert code == 0 and "packed train 6, val 3 images" in text
    code, text, _ = run(["data", "verify", str(out)], capsys)
    assert code == 0 and "intact" in text
    (out / "data.yaml").write_text("tampered")
    code, text, _ = run(["data", "verify", str(out)], capsys)
    assert code == 1 and "data.yaml: changed" in text


def test_synth_preview_on_the_bundled_photos(tmp_path: Path, capsys):
    photos = REPO / "pipeline" / "samples" / "photos"
    code, text, _ = run(
        [
            "data",
            "synth-ads",
            str(photos / "garbage-bins-roadside.jpg"),
            str(photos / "patrol-dumped-bags.jpg"),
            "--n",
            "3",
            "--out",
            str(tmp_path / "s"),
        ],
        capsys,
    )
    assert code == 0 and "3 synthetic images" in text and (tmp_path / "s" / "synth-ads.jpg").is_file()


def test_synth_rerun_replaces_the_first_run_and_names_a_bad_photo(tmp_path: Path, capsys):
    photos = REPO / "pipeline" / "samples" / "photos"
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 truncated")
    out = tmp_path / "s"
    code, _, err = run(
        ["data", "synth-ads", str(photos / "garbage-bins-roadside.jpg"), str(broken), "--n", "2", "--out", str(out)],
        capsys,
    )
    assert code == 0 and f"warning: {broken}: unreadable image" in err
    first = {p.name for p in (out / "images" / "train").iterdir()}
    assert len(first) == 2 and all("garbage-bins-roadside" in n for n in first)
    code, text, _ = run(
        ["data", "synth-ads", str(photos / "facade-shop-signs.jpg"), "--n", "1", "--out", str(out)], capsys
    )
    assert code == 0 and "1 synthetic images" in text
    images = [p.name for p in (out / "images" / "train").iterdir()]
    labels = [p.name for p in (out / "labels" / "train").iterdir()]
    assert len(images) == len(labels) == 1 and "facade-shop-signs" in images[0]  # nothing left of the first run
    assert [p.name for p in (out / "work" / "synth-ads" / "images").iterdir()] == [images[0].split("__", 1)[1]]
    for n in ("0", "-3"):
        code, _, err = run(["data", "synth-ads", str(broken), "--n", n, "--out", str(tmp_path / "t")], capsys)
        assert code == 2 and f"--n must be at least 1 (the number of images to make), not {n}" in err
    code, _, err = run(["data", "synth-ads", str(broken), "--out", str(tmp_path / "t")], capsys)
    assert code == 2 and "no readable background photos among the 1 given" in err and not (tmp_path / "t").exists()


def test_a_mapping_that_fits_none_of_the_classes_is_an_error(garbage_like: Path, tmp_path: Path, capsys):
    code, _, err = run(
        ["data", "check", str(garbage_like), "--map", "facades", "--report", str(tmp_path / "r"), "--strict"], capsys
    )
    assert code == 2 and "no class of the source is mapped onto a product class by mapping 'facades'" in err
    assert "garbage, garbage_bin, overflow" in err and "win_ad" in err
    out = tmp_path / "ds"
    code, _, err = run(["data", "import", str(garbage_like), "--map", "facades", "--out", str(out)], capsys)
    assert code == 2 and "no class of the source is mapped" in err and not (out / "data.yaml").exists()


def test_import_counts_the_unreadable_images_it_leaves_out(garbage_like: Path, tmp_path: Path, capsys):
    for k in range(2):
        (garbage_like / "train" / "images" / f"broken{k}.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    code, text, _ = run(
        ["data", "import", str(garbage_like), "--map", "garbage", "--out", str(tmp_path / "ds"), "--no-sheets"], capsys
    )
    assert code == 0 and "images: 9 (2 unreadable, not imported)" in text and text.count("corrupt_image") >= 1


def test_pack_options_are_checked(garbage_like: Path, tmp_path: Path, capsys):
    out = tmp_path / "ds"
    run(["data", "import", str(garbage_like), "--map", "garbage", "--out", str(out), "--no-sheets"], capsys)
    for option, value, needle in (
        ("--max-side", "0", "--max-side must be at least 32 px, not 0"),
        ("--quality", "200", "--quality must be 1..100"),
        ("--budget-mb", "-5", "--budget-mb must be a positive number of MB (0: no budget), not -5.0"),
    ):
        code, _, err = run(["data", "pack", str(out), "--out", str(tmp_path / "p"), option, value], capsys)
        assert code == 2 and needle in err and not (tmp_path / "p").exists()
    code, _, err = run(["data", "pack", str(out), "--out", str(tmp_path / "p"), "--budget-mb", "0.001"], capsys)
    assert code == 2 and "cannot fit" in err and not (tmp_path / "p").exists()
    code, text, _ = run(["data", "pack", str(out), "--out", str(tmp_path / "p"), "--budget-mb", "0"], capsys)
    assert code == 0 and "packed train 6, val 3 images" in text  # 0: no budget


def test_shared_sources_import_with_their_mappings():
    """The real sources load with the shipped mappings and the counts their README gives."""
    from datasets.recipe import load_recipe
    from datasets.sources import load_source
    from models.classes import CLASS_IDS

    shared = shared_data()
    recipe = load_recipe("product-v1")
    specs = {s.name: s for s in recipe.sources}
    garbage = load_source(specs["garbage"], shared)
    counts = garbage.counts()
    assert counts["train"] == {"images": 1400, "boxes": 3713} and counts["val"] == {"images": 200, "boxes": 560}
    facades = load_source(specs["facades"], shared)
    boxes = [int(c) for s in facades.samples for c in s.boxes[:, 0]]
    assert boxes.count(CLASS_IDS["small_ad"]) == 164 and boxes.count(CLASS_IDS["shop_sign"]) == 1219 + 362
    assert sum(len(s.context) for s in facades.samples) == 4557 + 125 + 447  # windows, arches, doors kept as context
    vendors = load_source(specs["vendors"], shared)
    assert {s.split for s in vendors.samples} == {"train", "val"} and len(vendors.samples) == 406
    assert yaml.safe_load((shared / "data" / "garbage" / "data.yaml").read_text())["names"][2] == "overflow"


if __name__ == "__main__":
    pytest.main([__file__])


def test_synth_ads_on_a_photo_whose_name_is_not_utf8(tmp_path: Path):
    """cv2.imwrite crashed the process (SIGSEGV) writing an image named after such a photo."""
    photos = tmp_path / "photos"
    photos.mkdir()
    bad = os.fsdecode(os.fsencode(photos) + b"/bad\xffname.jpg")
    shutil.copy(REPO / "pipeline" / "samples" / "photos" / "facade-shop-signs.jpg", bad)
    out = tmp_path / "s"
    proc = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "data", "synth-ads", str(photos), "--n", "1", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "1 synthetic images" in proc.stdout
    images = list((out / "images" / "train").iterdir())
    assert len(images) == 1 and "bad\ufffdname" in images[0].name and images[0].stat().st_size > 1000


def test_a_file_that_is_not_utf8_is_named_in_the_error(garbage_like: Path, tmp_path: Path, capsys):
    """A binary file given as a recipe, mapping or manifest printed only "'utf-8' codec can't decode ..."."""
    binary = tmp_path / "garbage.yaml"
    binary.write_bytes(bytes(range(0xA5, 0x100)) * 4)
    for argv in (
        ["data", "build", str(binary), "--out", str(tmp_path / "b")],
        ["data", "check", str(garbage_like), "--map", str(binary), "--no-scene", "--report", str(tmp_path / "r")],
        ["data", "verify", str(binary)],
    ):
        code, _, err = run(argv, capsys)
        assert code == 2, argv
        assert f"streetwatch: error: {binary}: not UTF-8 text (byte 0xa5 at offset 0)" in err, argv


def test_build_of_a_source_with_image_names_that_are_not_utf8(garbage_like: Path, tmp_path: Path, capsys):
    """Such names stopped the build when the image lists were written ("surrogates not allowed")."""
    for split, stem, bad in (("train", "train001", b"x\xff"), ("train", "train002", b"x\xfe")):
        for sub, ext in (("images", ".jpg"), ("labels", ".txt")):
            src = garbage_like / split / sub / f"{stem}{ext}"
            src.rename(os.fsdecode(os.fsencode(src.parent) + b"/" + bad + ext.encode()))
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        yaml.safe_dump(
            {
                "name": "bn",
                "sources": [{"name": "g", "kind": "yolo", "path": str(garbage_like), "mapping": "garbage"}],
                "pseudo": {"enabled": False},
            }
        )
    )
    out = tmp_path / "out"
    argv = ["data", "build", str(recipe), "--out", str(out), "--shared", str(tmp_path), "--no-sheets"]
    code, _, err = run(argv, capsys)
    assert code == 0, err
    train = sorted(p.name for p in (out / "images" / "train").iterdir())
    bad = [n for n in train if n.startswith("g__x\ufffd-")]
    assert len(bad) == 2 and len(train) == len(set(train))  # two names that differ only in bad bytes stay two
    listed = (out / "train-g.txt").read_text().split()
    assert all(f"./images/train/{n}" in listed for n in bad)
    for n in bad:
        assert (out / "labels" / "train" / f"{Path(n).stem}.txt").read_text().strip()
    code, out_text, _ = run(["data", "verify", str(out)], capsys)
    assert code == 0 and "intact" in out_text


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        ("[1, 2]", "not a dataset manifest: a JSON object is expected, not list"),
        ('{"files": 5}', "not a dataset manifest: 'files' must map each file to its SHA-256"),
        ('{"name": "g"}', "not a dataset manifest: 'files' must map each file to its SHA-256"),
    ],
)
def test_a_manifest_of_the_wrong_shape_is_an_error_naming_it(
    garbage_like: Path, tmp_path: Path, capsys, content: str, needle: str
):
    out = tmp_path / "ds"
    run(["data", "import", str(garbage_like), "--map", "garbage", "--out", str(out), "--no-sheets"], capsys)
    (out / "manifest.json").write_text(content)  # valid JSON, but no manifest (was: TypeError traceback)
    for argv in (["data", "verify", str(out)], ["data", "pack", str(out), "--out", str(tmp_path / "p")]):
        code, _, err = run(argv, capsys)
        assert code == 2 and f"{out / 'manifest.json'}: {needle}" in err, (argv, err)
    assert not (tmp_path / "p").exists()


def test_show_options_are_checked_before_drawing(garbage_like: Path, tmp_path: Path, capsys):
    out = tmp_path / "ds"
    run(["data", "import", str(garbage_like), "--map", "garbage", "--out", str(out), "--no-sheets"], capsys)
    (tmp_path / "folder").mkdir()
    for sheet, n, needle in (
        ("sheet", "24", f"--out {tmp_path / 'sheet'}: does not end in .jpg or .png"),  # was: cv2.error
        ("folder", "24", f"--out {tmp_path / 'folder'}: is a folder"),
        ("s.jpg", "-4", "--n must be at least 1 image, not -4"),  # was: ValueError traceback
        ("s.jpg", "0", "--n must be at least 1 image, not 0"),  # was: "no train images"
    ):
        code, _, err = run(["data", "show", str(out), "--out", str(tmp_path / sheet), "--n", n], capsys)
        assert code == 2 and needle in err and "Traceback" not in err, err
    assert not (tmp_path / "sheet").exists() and not (tmp_path / "s.jpg").exists()
    code, text, _ = run(["data", "show", str(out), "--out", str(tmp_path / "s.PNG"), "--n", "2"], capsys)
    assert code == 0 and "contact sheet" in text and (tmp_path / "s.PNG").stat().st_size > 1000


def test_check_on_a_full_disk_keeps_the_earlier_report_and_says_so_in_one_line(
    garbage_like: Path, tmp_path: Path, capsys
):
    """savefig and write_text straight to the report's files: a full disk left a truncated box_sizes.png."""
    with tmpfs(tmp_path / "disk", "1m") as disk:
        report = disk / "r"
        command = ["data", "check", str(garbage_like), "--map", "garbage", "--report", str(report)]
        code, _, _ = run(command, capsys)
        assert code == 0 and (report / "box_sizes.png").is_file()
        before = {p.name: p.read_bytes() for p in report.iterdir()}
        fill(disk)
        rng = np.random.default_rng(1)
        for i in range(4):  # more images and boxes: a larger report than the earlier one
            cv2.imwrite(str(garbage_like / "train" / "images" / f"noise{i}.jpg"), rng.integers(0, 256, (160, 200, 3)))
            boxes = [f"{i % 3} 0.5 0.5 {w:.3f} {h:.3f}" for w, h in rng.uniform(0.02, 0.9, (100, 2))]
            (garbage_like / "train" / "labels" / f"noise{i}.txt").write_text("\n".join(boxes) + "\n")
        code, _, err = run(command, capsys)
        assert code == 1 and "Traceback" not in err
        assert err.splitlines()[-1] == (
            f"streetwatch: error: {report / 'box_sizes.png'}: No space left on device "
            "(free some space, or write the output elsewhere)"
        )
        assert {p.name: p.read_bytes() for p in report.iterdir()} == before
