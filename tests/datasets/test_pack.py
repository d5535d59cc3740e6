"""Packing a built dataset under a byte budget."""

import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

from datasets.pack import pack, settings_ladder
from datasets.recipe import PseudoConfig, Recipe, build
from datasets.sources import SourceSpec
from datasets.yolo import read_label_file
from models.classes import CLASS_NAMES
from pipeline.cli import main
from pipeline.decode import read_image

from .conftest import write_yolo_source


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("pack")
    src = write_yolo_source(root / "src", ["garbage", "garbage_bin", "overflow"], 14, 6, seed=3, size=(300, 400))
    out = root / "built"
    recipe = Recipe(
        name="p",
        sources=[SourceSpec(name="garbage", path=str(src), mapping="garbage")],
        pseudo=PseudoConfig(enabled=False),
    )
    build(recipe, Path("."), out, sheets=False)
    return out


def size_of(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def test_ladder_lowers_quality_before_size():
    ladder = settings_ladder(512, 72)
    assert ladder[0] == (512, 72) and ladder[1][0] == 512 and ladder[1][1] < 72
    assert [s for s, _ in ladder] == sorted((s for s, _ in ladder), reverse=True)


def test_pack_fits_the_budget_and_keeps_labels(dataset: Path, tmp_path: Path):
    unbounded = pack(dataset, tmp_path / "free", max_side=512, quality=90, budget_mb=None, workers=1)
    budget = unbounded.bytes_total * 0.6 / 1e6
    result = pack(dataset, tmp_path / "packed", max_side=512, quality=90, budget_mb=budget, workers=1)
    out = tmp_path / "packed"
    assert size_of(out) <= budget * 1e6 and result.bytes_total == size_of(out)
    assert (result.quality, result.max_side) < (90, 512) or result.max_side < 512  # it had to give something up
    for split, n in (("train", 14), ("val", 6)):
        images = sorted((out / "images" / split).glob("*.webp"))
        assert len(images) == n
        for im in images:
            assert max(read_image(im).shape[:2]) <= result.max_side
            a, _ = read_label_file(out / "labels" / split / f"{im.stem}.txt", len(CLASS_NAMES))
            b, _ = read_label_file(dataset / "labels" / split / f"{im.stem}.txt", len(CLASS_NAMES))
            np.testing.assert_array_equal(a, b)
    data = yaml.safe_load((out / "data.yaml").read_text())
    assert data["names"] == dict(enumerate(CLASS_NAMES))
    lst = (out / "val-garbage.txt").read_text().split()
    assert len(lst) == 6 and all((out / x).is_file() and x.endswith(".webp") for x in lst)
    assert (out / "source-manifest.json").is_file() and (out / "pack.json").is_file()


def test_a_small_pack_with_a_tight_budget_keeps_the_best_setting_that_fits(dataset: Path, tmp_path: Path):
    """What a pack writes besides its images is measured, not guessed: with a budget a few kB above what
    a ladder setting really takes, that setting is chosen (not a smaller one), and the budget holds."""
    ladder = settings_ladder(384, 90)  # the 400 px images are downscaled at every size of this ladder
    real = [
        pack(dataset, tmp_path / f"free{k}", max_side=s, quality=q, budget_mb=None, workers=1).bytes_total
        for k, (s, q) in enumerate(ladder[:3])
    ]
    budget = real[2] + 4_000
    assert real[0] > real[1] > budget  # the two better settings do not fit
    result = pack(dataset, tmp_path / "tight", max_side=384, quality=90, budget_mb=budget / 1e6, workers=1)
    assert (result.max_side, result.quality) == ladder[2]
    assert result.bytes_total == size_of(tmp_path / "tight") <= budget
    assert sum("actual_mb" in t for t in result.tried) == 1  # chosen from the estimate: written once
    # the best setting, with a budget just short of what it takes: the next one, still within the budget
    result = pack(dataset, tmp_path / "short", max_side=384, quality=90, budget_mb=(real[0] - 1) / 1e6, workers=1)
    assert (result.max_side, result.quality) == ladder[1]
    assert result.bytes_total == size_of(tmp_path / "short") <= real[0] - 1


def test_pack_a_subset_as_jpeg(dataset: Path, tmp_path: Path):
    result = pack(dataset, tmp_path / "val", fmt="jpeg", subset=["val"], budget_mb=None, max_side=256, workers=1)
    assert result.images == {"val": 6}
    assert len(list((tmp_path / "val" / "images" / "val").glob("*.jpg"))) == 6
    assert not (tmp_path / "val" / "images" / "train").exists()
    data = yaml.safe_load((tmp_path / "val" / "data.yaml").read_text())
    assert (tmp_path / "val" / data["train"]).is_dir()  # still loadable without a train split


def test_impossible_budget_is_a_clear_error(dataset: Path, tmp_path: Path):
    with pytest.raises(ValueError, match=r"cannot fit 20 images into 0\.01 MB"):
        pack(dataset, tmp_path / "tiny", budget_mb=0.01, workers=1)


def test_a_run_on_a_packed_copy_names_the_source_manifest(dataset: Path, tmp_path: Path):
    """Training on a pack (e.g. on a remote GPU) still records which dataset it was: the source's manifest."""
    import json

    from models.registry import file_sha256
    from training.train import RUN_NAME, _manifest, fill_manifest

    out = tmp_path / "packed"
    pack(dataset, out, max_side=256, quality=60, budget_mb=None, subset=["train"], workers=1)
    found = _manifest(out / "data.yaml")
    assert found is not None and found["sha256"] == file_sha256(dataset / "manifest.json")
    assert found["pack"]["max_side"] == 256 and found["pack"]["subset"] == ["train"]
    assert _manifest(dataset / "data.yaml")["path"] == str((dataset / "manifest.json").resolve())
    assert "pack" not in _manifest(dataset / "data.yaml")

    run = tmp_path / "run"
    run.mkdir()
    (run / RUN_NAME).write_text(json.dumps({"data": {"yaml": str(out / "data.yaml"), "manifest": None}}))
    assert fill_manifest(run)  # a record written where the manifest could not be seen
    assert json.loads((run / RUN_NAME).read_text())["data"]["manifest"]["sha256"] == found["sha256"]
    assert not fill_manifest(run)  # already named: left alone
    (run / RUN_NAME).write_text(json.dumps({"data": {"yaml": str(tmp_path / "gone.yaml"), "manifest": None}}))
    assert not fill_manifest(run)


def test_a_failed_pack_leaves_nothing_behind_and_a_retry_works(dataset: Path, tmp_path: Path):
    out = tmp_path / "pk"
    with pytest.raises(ValueError, match="cannot fit"):
        pack(dataset, out, budget_mb=0.01, workers=1)
    assert list(tmp_path.iterdir()) == []  # neither OUT nor a partial copy beside it
    result = pack(dataset, out, budget_mb=None, max_side=128, workers=1)
    assert result.out == out and (out / "pack.json").is_file() and result.bytes_total == size_of(out)
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    with pytest.raises(ValueError, match="cannot fit"):  # over an earlier pack: that pack stays as it was
        pack(dataset, out, budget_mb=0.01, workers=1)
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before
    assert [p.name for p in tmp_path.iterdir()] == ["pk"]


def test_a_full_disk_names_the_pack_folder_and_leaves_no_partial_copy(dataset: Path, full_disk: Path, capsys):
    """The error named a file in the hidden temporary folder the pack is written into before the rename."""
    out = full_disk / "pk"
    with pytest.raises(SystemExit) as exc:
        main(["data", "pack", str(dataset), "--out", str(out), "--budget-mb", "0"])
    err = capsys.readouterr().err
    assert exc.value.code == 1 and err.count("\n") == 1 and "Traceback" not in err, err
    assert f"error: {out}: No space left on device" in err and f"{full_disk}/." not in err, err
    assert [p.name for p in full_disk.iterdir()] == ["filler"]  # no partial copy beside it


@pytest.mark.parametrize(
    "options, needle",
    [
        ({"max_side": 0}, "--max-side must be at least 32"),
        ({"quality": 200}, "--quality must be 1..100"),
        ({"quality": 0}, "--quality must be 1..100"),
        ({"budget_mb": -5}, "--budget-mb must be a positive number"),
        ({"budget_mb": float("nan")}, "--budget-mb must be a positive number"),
    ],
)
def test_bad_options_are_refused_before_anything_is_written(dataset: Path, tmp_path: Path, options, needle):
    with pytest.raises(ValueError, match=needle):
        pack(dataset, tmp_path / "pk", workers=1, **options)
    assert list(tmp_path.iterdir()) == []


def test_a_dataset_changed_since_its_manifest_is_not_packed(dataset: Path, tmp_path: Path):
    # the pack names its source by the manifest's fingerprint: a changed dataset would be named wrongly
    changed = tmp_path / "changed"
    shutil.copytree(dataset, changed)
    label = sorted((changed / "labels" / "train").glob("*.txt"))[0]
    label.write_text("0 0.5 0.5 0.2 0.2\n")
    with pytest.raises(
        ValueError, match=rf"no longer matches its manifest.json \(1 file\(s\) differ: .*{label.name}: changed"
    ):
        pack(changed, tmp_path / "pk", workers=1)
    assert not (tmp_path / "pk").exists()
