"""`streetwatch data ...` as a user runs it."""

from pathlib import Path

import pytest
import yaml

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
