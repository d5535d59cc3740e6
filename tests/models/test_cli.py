"""``streetwatch models``: the registry's list as a person reads it."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from models.registry import list_models
from pipeline.cli import main


def test_models_lists_every_model_in_aligned_columns_with_the_default_marked(capsys):
    assert main(["models", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert len({len(m["name"]) for m in listed}) > 1 and len({len(m["version"]) for m in listed}) > 1
    assert main(["models"]) == 0
    rows = [re.match(r"([* ]) (\S+) +(\S+) +(\S+) +(\S.*)", line) for line in capsys.readouterr().out.splitlines()]
    assert all(rows)
    expected = [("*" if m["default"] else " ", m["name"], m["version"]) for m in listed]
    assert [(r[1], r[2], r[3]) for r in rows] == expected
    # names and versions of different lengths: version, files and classes each start at one place on every line
    for column in (3, 4, 5):
        assert len({r.start(column) for r in rows}) == 1, column


@pytest.fixture
def registry(tiny_registry: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A copy of the tiny model's registry, the product's registry for one test."""
    root = tmp_path / "registry"
    shutil.copytree(tiny_registry, root)
    monkeypatch.setenv("STREETWATCH_MODELS_DIR", str(root))
    return root


def test_an_invalid_registry_index_is_a_one_line_error_naming_it(registry: Path, capsys):
    (registry / "registry.json").write_text('{"default": "tiny",')  # cut short
    for argv in (["models"], ["models", "--json"], ["models", "--history"]):
        with pytest.raises(SystemExit) as exited:
            main(argv)
        assert exited.value.code == 2, argv
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith(f"streetwatch: error: {registry / 'registry.json'}: invalid")
    assert main(["models", "tiny"]) == 0  # a card by name does not need the index
    assert json.loads(capsys.readouterr().out)["name"] == "tiny"


def test_a_model_folder_with_a_bad_card_is_listed_as_unreadable_beside_the_others(registry: Path, capsys):
    shutil.copytree(registry / "tiny", registry / "broken")
    (registry / "broken" / "card.json").write_text('{"name": "broken"}')  # most fields missing
    assert main(["models"]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and re.match(r"\* tiny +t1 +fp32\+int8\+pt +litter, car$", lines[0])
    assert lines[1].startswith(f"! broken  unreadable: {registry / 'broken' / 'card.json'}: invalid model card: ")
    assert "version: Field required; created: Field required" in lines[1]
    assert main(["models", "--json"]) == 1
    listed = json.loads(capsys.readouterr().out)
    assert [(m["name"], m["default"]) for m in listed] == [("tiny", True), ("broken", False)]
    assert "invalid model card" in listed[1]["error"] and "version" not in listed[1]


def test_hidden_folders_such_as_a_promotion_s_temporary_copy_are_not_models(registry: Path, capsys):
    shutil.copytree(registry / "tiny", registry / ".tiny.incoming-k2j4")
    assert [r.folder.name for r in list_models()] == ["tiny"]
    assert main(["models", "--json"]) == 0
    assert [m["folder"] for m in json.loads(capsys.readouterr().out)] == [str(registry / "tiny")]
    with pytest.raises(SystemExit) as exited:  # nor can one be named as a model
        main(["models", ".tiny.incoming-k2j4"])
    assert exited.value.code == 2 and "no such model" in capsys.readouterr().err


def test_a_copied_model_folder_is_not_a_second_default(registry: Path, capsys):
    # copied by hand under another name, its card still names "tiny": listed as what it is, never resolved
    shutil.copytree(registry / "tiny", registry / "tiny-backup")
    assert [r.folder.name for r in list_models()] == ["tiny"]
    assert main(["models"]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert [line[:1] for line in lines] == ["*", "!"]  # one default
    assert "names the model 'tiny', but its folder is 'tiny-backup'" in lines[1]
    with pytest.raises(SystemExit) as exited:
        main(["models", "tiny-backup"])
    assert exited.value.code == 2 and "rename the folder" in capsys.readouterr().err


@pytest.mark.parametrize(
    "index",
    [
        {"default": 5, "history": []},
        {"default": "tiny", "history": "tiny"},
        {"default": "tiny", "history": [{"name": "tiny", "version": "t1", "gate": "passed"}]},
        {"default": "tiny", "history": [{"name": "tiny", "version": "t1", "gate": {"baseline": "t0"}}]},
    ],
)
def test_a_registry_index_of_the_wrong_shape_is_a_one_line_error(registry: Path, index: dict, capsys):
    (registry / "registry.json").write_text(json.dumps(index))
    for argv in (["models"], ["models", "--history"], ["models", "default"], ["rollback"]):
        with pytest.raises(SystemExit) as exited:
            main(argv)
        assert exited.value.code == 2, argv
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "registry.json: invalid registry index" in err, (argv, err)


def test_a_default_without_its_folder_is_listed_as_missing(registry: Path, capsys):
    (registry / "registry.json").write_text(json.dumps({"default": "ghost", "history": ["tiny", "ghost"]}))
    assert main(["models"]) == 1  # the state in which a service cannot start
    lines = capsys.readouterr().out.splitlines()
    assert re.match(r"  tiny +t1 ", lines[0])
    assert lines[1].startswith("* ghost  unreadable: registry.json names it the default, but there is no model folder")
    assert main(["models", "--json"]) == 1
    listed = json.loads(capsys.readouterr().out)
    assert [(m["name"], m["default"]) for m in listed] == [("tiny", False), ("ghost", True)]


@pytest.mark.parametrize(
    ("field", "value", "said"),
    [
        ("imgsz", 13, "invalid model card: imgsz: 13 is not a multiple of the model stride 32"),
        ("class_map", ["litter", "dragon"], "invalid model card: class_map: 'dragon' not a product class (known: "),
        ("class_map", ["litter"], "invalid model card: class_map: 1 entries for 2 names"),
        ("name", "../odd", "invalid model card: name: String should match pattern"),
    ],
    ids=["imgsz", "unknown-class", "short-class-map", "name-with-a-path"],
)
def test_a_card_the_detector_cannot_run_is_refused_when_read_by_every_command(
    registry: Path, sample_photos: list[Path], capsys, field: str, value: object, said: str
):
    shutil.copytree(registry / "tiny", registry / "odd")
    card = json.loads((registry / "odd" / "card.json").read_text())
    card.update({"name": "odd", field: value})
    (registry / "odd" / "card.json").write_text(json.dumps(card))
    where = f"{registry / 'odd' / 'card.json'}: invalid model card: "
    assert main(["models"]) == 1
    assert re.search(rf"! odd +unreadable: {re.escape(where + said.split(': ', 1)[1])}", capsys.readouterr().out)
    with pytest.raises(SystemExit) as exc:  # not an onnxruntime traceback at the first image
        main(["detect", str(sample_photos[0]), "--model", "odd", "--threads", "1"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and where in err and said in err and "Traceback" not in err
    with pytest.raises(SystemExit) as exc:  # promote says which card and why (was: just 'dragon')
        main(["promote", "odd", "--force", "--reason", "test"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and where in err and said in err
