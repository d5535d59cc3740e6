"""Import, merge and manifest: a recipe built end to end on small generated sources (no teacher)."""

import errno
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml
from disks import fill, tmpfs

from datasets.manifest import dataset_manifest_summary, load_manifest, verify_manifest
from datasets.merge import check_output
from datasets.recipe import PseudoConfig, Recipe, build, load_recipe
from datasets.sources import SourceMissing, SourceSpec, load_source
from datasets.yolo import read_label_file
from models.classes import CLASS_IDS, CLASS_NAMES
from models.registry import file_sha256
from pipeline.cli import main


def recipe_for(garbage: Path, images: Path, labels: Path, **kw) -> Recipe:
    return Recipe(
        name="t",
        sources=[
            SourceSpec(name="garbage", path=str(garbage), mapping="garbage"),
            SourceSpec(name="patrol", kind="folder", path=str(images), labels=str(labels), mapping="product"),
            SourceSpec(
                name="later",
                kind="folder",
                path=str(images),
                labels=str(labels.parent / "nope"),
                mapping="product",
                required=False,
            ),
        ],
        pseudo=PseudoConfig(enabled=False),
        **kw,
    )


def test_folder_source_with_split_file(patrol_like):
    images, labels = patrol_like
    data = load_source(
        SourceSpec(name="patrol", kind="folder", path=str(images), labels=str(labels), mapping="product")
    )
    by = {s.image.stem: s for s in data.samples}
    assert sorted(by) == ["photo_0", "photo_1", "photo_2", "photo_3", "photo_4"]  # photo_5 is not in the split file
    assert [by[k].split for k in sorted(by)] == ["train", "train", "train", "val", "val"]
    assert by["photo_2"].tags == {"clean", "night_or_blur"} and len(by["photo_2"].boxes) == 0
    assert by["photo_0"].boxes[:, 0].tolist() == [CLASS_IDS["litter"], CLASS_IDS["garbage_bin"]]
    assert by["photo_0"].labelled == frozenset({CLASS_IDS["litter"], CLASS_IDS["garbage_bin"]})


def test_missing_labels_folder_is_a_clear_error(tmp_path: Path, patrol_like):
    images, _ = patrol_like
    spec = SourceSpec(name="p", kind="folder", path=str(images), labels=str(tmp_path / "none"), mapping="product")
    with pytest.raises(SourceMissing, match=r"labels folder .*none does not exist"):
        load_source(spec)


def test_build_merges_sources_into_the_product_layout(tmp_path: Path, garbage_like: Path, patrol_like):
    images, labels = patrol_like
    # a mislabelled line and a train copy of a val image: reported, line dropped, copy dropped
    (garbage_like / "train" / "labels" / "train000.txt").open("a").write("9 0.5 0.5 0.1 0.1\n")
    val0 = garbage_like / "val" / "images" / "val000.jpg"
    (garbage_like / "train" / "images" / "leak.jpg").write_bytes(val0.read_bytes())
    out = tmp_path / "out"
    result = build(recipe_for(garbage_like, images, labels), Path("."), out, sheets=True)

    data = yaml.safe_load((out / "data.yaml").read_text())
    assert data["names"] == dict(enumerate(CLASS_NAMES)) and data["train"] == "images/train" and "path" not in data
    train = sorted(p.name for p in (out / "images" / "train").iterdir())
    val = sorted(p.name for p in (out / "images" / "val").iterdir())
    assert "garbage__leak.jpg" not in train  # dropped: it duplicates a val image
    assert "garbage__train000.jpg" in train and "garbage__val000.jpg" in val
    assert {"patrol__photo_3.jpg", "patrol__photo_4.jpg"} <= set(val)
    assert len(train) == 6 + 3 and len(val) == 3 + 2
    # labels are mapped to product ids; unknown class ids never reach the output
    rows, _ = read_label_file(out / "labels" / "train" / "garbage__train000.txt", len(CLASS_NAMES))
    src, _ = read_label_file(garbage_like / "train" / "labels" / "train000.txt", 3)
    assert len(rows) == len(src) - 0 and set(rows[:, 0].astype(int)) <= {3, 4, 5}
    # per-source lists, yaml files for the evaluator, tagged subsets
    assert (out / "val-garbage.txt").read_text().split() == [
        "./images/val/garbage__val000.jpg",
        "./images/val/garbage__val001.jpg",
        "./images/val/garbage__val002.jpg",
    ]
    assert yaml.safe_load((out / "val-patrol.yaml").read_text())["val"] == "val-patrol.txt"
    assert (out / "val-patrol-clean.txt").read_text().split() == ["./images/val/patrol__photo_4.jpg"]
    assert (out / "train-patrol-clean.txt").read_text().split() == ["./images/train/patrol__photo_2.jpg"]
    # report: the bad line, the dropped copy and the skipped source are in it
    md = (out / "report" / "report.md").read_text()
    assert "unknown_class" in md and "garbage/leak" in md and "source later skipped" in md
    assert (out / "report" / "samples-train.jpg").is_file()
    assert result.skipped and "nope does not exist" in result.skipped[0]

    # manifest: every file hashed, counts, sources
    m = load_manifest(out)
    assert m["files"]["images/train/garbage__train000.jpg"] == file_sha256(out / "images/train/garbage__train000.jpg")
    assert m["files"]["images/train/garbage__train000.jpg"] == file_sha256(garbage_like / "train/images/train000.jpg")
    assert "labels/val/patrol__photo_3.txt" in m["files"] and "data.yaml" in m["files"]
    assert m["splits"]["train"]["images"] == 9 and m["tool"]["name"] == "streetwatch" and m["created"]
    assert [s["name"] for s in m["sources"]] == ["garbage", "patrol"]
    assert m["sources"][0]["mapping"] == "garbage" and m["sources"][0]["source_names"] == [
        "garbage",
        "garbage_bin",
        "overflow",
    ]
    assert m["dedup"]["dropped"][0]["image"] == "garbage/leak"
    assert verify_manifest(out) == []
    summary = dataset_manifest_summary(out)
    assert summary["fingerprint"] == m["fingerprint"] and summary["splits"]["val"]["images"] == 5
    assert summary["sources"][1] == {
        "name": "patrol",
        "kind": "folder",
        "path": str(images),
        "labels": str(labels),
        "mapping": "product",
        "images": {"train": 3, "val": 2},
    }
    assert "source later skipped" in summary["skipped_sources"][0]
    json.dumps(summary)  # embeddable in a model card

    # a changed file is caught; a rebuild into the same folder replaces the old build
    (out / "labels" / "train" / "garbage__train001.txt").write_text("")
    assert verify_manifest(out) == ["labels/train/garbage__train001.txt: changed"]
    build(recipe_for(garbage_like, images, labels), Path("."), out, sheets=False)
    assert verify_manifest(out) == []


def test_build_refuses_a_foreign_non_empty_folder(tmp_path: Path, garbage_like: Path, patrol_like):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.docx").write_text("precious")
    with pytest.raises(FileExistsError, match="no dataset manifest"):
        build(recipe_for(garbage_like, *patrol_like), Path("."), tmp_path / "mine")
    assert (tmp_path / "mine" / "thesis.docx").is_file()


def test_a_failed_build_leaves_no_partial_dataset_that_a_rerun_would_refuse(
    full_disk: Path, garbage_like: Path, patrol_like
):
    """A full disk mid-write left images and labels without a manifest: a rerun into the same folder was
    refused as a foreign non-empty folder, and the partial dataset was there for training to pick up."""
    recipe = recipe_for(garbage_like, *patrol_like)
    with pytest.raises(OSError, match="No space left"):
        build(recipe, Path("."), full_disk / "ds", sheets=False)
    assert [p.name for p in full_disk.iterdir()] == ["filler"]  # the folder it made, gone again
    (full_disk / "again" / "work" / "cache").mkdir(parents=True)  # an earlier build's caches stay for the rerun
    with pytest.raises(OSError, match="No space left"):
        build(recipe, Path("."), full_disk / "again", sheets=False)
    assert [p.name for p in (full_disk / "again").iterdir()] == ["work"]
    check_output(full_disk / "again")  # what the rerun does first: no refusal


def tree(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` with its bytes."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_rebuild_that_fails_midway_leaves_the_previous_dataset_as_it_was(
    tmp_path: Path, garbage_like: Path, patrol_like, monkeypatch: pytest.MonkeyPatch
):
    """A rebuild deleted the previous dataset first: one that failed (a missing file, Ctrl-C) left none."""
    import datasets.recipe

    recipe = recipe_for(garbage_like, *patrol_like)
    out = tmp_path / "ds"
    build(recipe, Path("."), out, sheets=False)
    before, around = tree(out), sorted(p.name for p in tmp_path.iterdir())

    def broken(*args, **kwargs):  # images, labels and report written; the manifest fails
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(datasets.recipe, "write_manifest", broken)
    with pytest.raises(OSError, match="Input/output error"):
        build(recipe, Path("."), out, sheets=False)
    assert tree(out) == before and verify_manifest(out) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == around  # no staged or set-aside folder left
    monkeypatch.undo()

    (garbage_like / "train" / "images" / "train000.jpg").unlink()  # the sources changed: the rebuild replaces
    build(recipe, Path("."), out, sheets=False)
    assert not (out / "images" / "train" / "garbage__train000.jpg").exists() and verify_manifest(out) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == around


def test_a_full_disk_keeps_the_previous_dataset_and_says_so_in_one_line(
    tmp_path: Path, garbage_like: Path, patrol_like, capsys: pytest.CaptureFixture[str]
):
    """A rebuild onto a full disk deleted the previous dataset, then failed writing the new one."""
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(recipe_for(garbage_like, *patrol_like).model_dump(mode="json")))
    command = ["data", "build", str(recipe), "--shared", str(tmp_path), "--no-sheets"]
    with tmpfs(tmp_path / "disk", "4m") as disk:
        out = disk / "ds"
        assert main([*command, "--out", str(out)]) == 0
        before = tree(out)
        filler = fill(disk)
        rng = np.random.default_rng(1)
        for i in range(4):  # the new dataset is larger than the old one
            cv2.imwrite(str(garbage_like / "train" / "images" / f"noise{i}.jpg"), rng.integers(0, 256, (160, 200, 3)))
            (garbage_like / "train" / "labels" / f"noise{i}.txt").write_text("0 0.5 0.5 0.2 0.2\n")
        capsys.readouterr()
        with pytest.raises(SystemExit) as exc:
            main([*command, "--out", str(out)])
        err = capsys.readouterr().err
        assert exc.value.code == 1 and "Traceback" not in err
        assert err.splitlines()[-1] == (
            f"streetwatch: error: {out}: No space left on device (free some space, or write the output elsewhere)"
        )
        assert tree(out) == before and sorted(p.name for p in disk.iterdir()) == ["ds", "filler"]
        filler.unlink()
        assert main([*command, "--out", str(out)]) == 0 and verify_manifest(out) == []
        assert sorted(p.name for p in disk.iterdir()) == ["ds"]


def test_shipped_recipe_is_valid_and_a_bad_one_names_its_file(tmp_path: Path):
    r = load_recipe("product-v1")
    assert [s.name for s in r.sources] == ["garbage", "facades", "vendors", "patrol"]
    assert r.sources[3].required is False and r.pseudo.teacher == "yolo11n-coco-interim"
    bad = tmp_path / "r.yaml"
    bad.write_text("name: x\nsources: [{name: a, path: p, mapping: garbage, colour: 1}]\n")
    with pytest.raises(ValueError, match=r"(?s)r.yaml: invalid recipe.*colour"):
        load_recipe(bad)
    bad.write_text("name: x\nsources: [{name: a, path: p, mapping: m}]\nsynth_ads: {backgrounds: {b: 3}}\n")
    with pytest.raises(ValueError, match="background 'b' is not a source"):
        load_recipe(bad)


def test_recipe_with_teacher_and_synthetic_ads(tmp_path: Path, garbage_like: Path):
    from datasets.recipe import SynthAdsConfig

    recipe = Recipe(
        name="full",
        sources=[SourceSpec(name="garbage", path=str(garbage_like), mapping="garbage")],
        pseudo=PseudoConfig(teacher="yolo11n-coco-interim", conf=0.5),
        synth_ads=SynthAdsConfig(backgrounds={"garbage": 4}, val_backgrounds={"garbage": 2}, seed=3),
    )
    out = tmp_path / "full"
    result = build(recipe, Path("."), out, sheets=True)
    train = (out / "train-synth-ads.txt").read_text().split()
    val = (out / "val-synth-ads.txt").read_text().split()
    assert len(train) == 4 and len(val) == 2 and (out / "val-synth-ads.yaml").is_file()
    for rel in train:
        rows, _ = read_label_file(out / "labels" / "train" / f"{Path(rel).stem}.txt", len(CLASS_NAMES))
        assert (rows[:, 0] == CLASS_IDS["small_ad"]).sum() >= 1
    m = load_manifest(out)
    assert m["synthetic"]["images"] == {"train": 4, "val": 2} and m["synthetic"]["ads"] >= 6
    assert m["pseudo"]["teacher"] == "yolo11n-coco-interim" and m["pseudo"]["conf"] == 0.5
    assert m["pseudo"]["images"] == 6 + 4  # the training images, real and synthetic
    assert [s["name"] for s in m["sources"]] == ["garbage", "synth-ads"]
    assert result.report.leaks() == [] and (out / "report" / "synth-ads.jpg").is_file()
    assert (out / "work" / "cache").is_dir()  # the teacher's detections are cached for the next build
