"""Promotion and rollback on a registry of real model folders: the gate verdict, forced overrides with
their reasons, the history, versions kept, concurrent promotions, and the commands."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from models.registry import (
    ModelError,
    RegistryConflict,
    default_chain,
    describe_file,
    history_events,
    load_card,
    read_registry,
    registry_lock,
    resolve,
    set_default,
    write_card,
)
from pipeline.cli import main
from training.cli import EXIT_GATE_REFUSED
from training.compare import GATE_KEY, Comparison, apply_gate, compare, gate_record, record_gate
from training.evaluate import EvalResult, load_split, make_predictor
from training.promote import AlreadyDefault, Promotion, PromotionRefused, promote, rollback


def variant(root: Path, name: str, version: str, source: Path) -> Path:
    """A registry folder holding the tiny model under another name and version (same files, same hashes)."""
    folder = root / name
    shutil.copytree(source, folder)
    card = load_card(folder)
    write_card(folder, card.model_copy(update={"name": name, "version": version, "metrics": {}}))
    return folder


@pytest.fixture
def registry(tiny_registry: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A registry with tiny (the default, history in the old list-of-names form) and tiny-v2, tiny-v3."""
    root = tmp_path / "registry"
    root.mkdir()
    for name, version in (("tiny", "t1"), ("tiny-v2", "t2"), ("tiny-v3", "t3")):
        variant(root, name, version, tiny_registry / "tiny")
    (root / "registry.json").write_text(json.dumps({"default": "tiny", "history": ["tiny"]}))
    monkeypatch.setenv("STREETWATCH_MODELS_DIR", str(root))
    return root


def verdict(root: Path, candidate: str, passed: bool, baseline: str = "tiny") -> None:
    """Record a gate verdict in a candidate's card as `streetwatch compare` does (the AP figures hand-made:
    a refused candidate loses 40 points on car)."""

    def figures(car: float) -> EvalResult:
        per = {"litter": {"ap50": 0.9, "n_gt": 9}, "car": {"ap50": car, "n_gt": 9}}
        return EvalResult("m", "eval.yaml", "val", 8, (0.9 + car) / 2, 0.5, per, np.zeros((1, 1)), [], 0.3)

    base, cand = figures(0.9), figures(0.9 if passed else 0.5)
    result = Comparison(base, cand, apply_gate(base, cand), "eval.yaml", "val", "f" * 64)
    record_gate(resolve(candidate, root), gate_record(result, resolve(baseline, root)))


def test_promotion_needs_a_passing_gate_against_the_default_in_force(registry: Path):
    with pytest.raises(PromotionRefused, match="no promotion gate result"):
        promote("tiny-v2")
    verdict(registry, "tiny-v2", passed=False)
    with pytest.raises(PromotionRefused, match=r"gate refused it: car lost 40\.00 points"):
        promote("tiny-v2")
    with pytest.raises(ValueError, match="--force needs --reason"):
        promote("tiny-v2", force=True)
    verdict(registry, "tiny-v2", passed=True)
    done = promote("tiny-v2")
    assert read_registry()["default"] == "tiny-v2" and done.event["previous"] == "tiny"
    assert done.event["gate"]["passed"] and done.event["forced"] is False
    assert done.event["gate"]["baseline"] == {"name": "tiny", "version": "t1"} and done.event["by"]
    # tiny-v3 was compared against tiny, which is no longer the default
    verdict(registry, "tiny-v3", passed=True, baseline="tiny")
    with pytest.raises(PromotionRefused, match=r"compared against tiny@t1, but the default is now tiny-v2@t2"):
        promote("tiny-v3")
    with pytest.raises(ModelError, match="already the default"):
        promote("tiny-v2")


def test_forced_promotion_records_the_override_and_rollback_walks_back(registry: Path):
    verdict(registry, "tiny-v2", passed=True)
    promote("tiny-v2")
    verdict(registry, "tiny-v3", passed=False, baseline="tiny-v2")
    forced = promote("tiny-v3", force=True, reason="night cameras need it; car drop checked by hand")
    assert forced.event["forced"] is True and "car lost" in forced.event["override"]
    assert forced.event["reason"] == "night cameras need it; car drop checked by hand"
    assert forced.event["gate"]["failures"] and forced.event["gate"]["classes"]["car"] == -40.0
    index = read_registry()
    assert default_chain(index) == ["tiny", "tiny-v2", "tiny-v3"]
    assert history_events(index)[0] == {"action": "promote", "name": "tiny"}  # the old entry, understood

    back = rollback("car regressions in the field")
    assert (back["action"], back["name"], back["previous"]) == ("rollback", "tiny-v2", "tiny-v3")
    assert resolve("default").card.version == "t2"
    assert rollback()["name"] == "tiny" and read_registry()["default"] == "tiny"
    with pytest.raises(ModelError, match="nothing to roll back to"):
        rollback()
    # every version stays in the registry with its card; the history keeps every step
    assert {p.name for p in registry.iterdir() if (p / "card.json").is_file()} == {"tiny", "tiny-v2", "tiny-v3"}
    actions = [(e["action"], e["name"]) for e in history_events(read_registry())]
    assert actions == [
        ("promote", "tiny"),
        ("promote", "tiny-v2"),
        ("promote", "tiny-v3"),
        ("rollback", "tiny-v2"),
        ("rollback", "tiny"),
    ]


def test_a_model_folder_outside_the_registry_is_copied_in_with_its_dataset_manifest(
    registry: Path, tiny_registry: Path, tmp_path: Path
):
    manifest = tmp_path / "dataset" / "manifest.json"
    manifest.parent.mkdir()
    manifest.write_text(json.dumps({"name": "product-v1+field-1", "fingerprint": "ab" * 32}))
    from models.registry import file_sha256

    outside = variant(tmp_path / "elsewhere", "tiny-field", "t4", tiny_registry / "tiny")
    card = load_card(outside)
    card.training = {"data": {"manifest": {"path": str(manifest), "sha256": file_sha256(manifest)}}}
    write_card(outside, card)
    verdict(tmp_path / "elsewhere", "tiny-field", passed=True, baseline=str(registry / "tiny"))
    done = promote(str(outside))
    assert done.copied and done.ref.folder == registry / "tiny-field"
    kept = resolve("default")
    assert kept.card.name == "tiny-field" and json.loads(kept.file("manifest").read_text())["name"] == (
        "product-v1+field-1"
    )
    for role in ("fp32", "pt", "manifest"):
        kept.file(role)  # every file verified against the card
    # a different model under a registered name is refused, not overwritten
    clash = variant(tmp_path / "other", "tiny-v2", "t9", tiny_registry / "tiny")
    verdict(tmp_path / "other", "tiny-v2", passed=True, baseline=str(registry / "tiny-field"))
    with pytest.raises(ModelError, match="already holds another model named 'tiny-v2'"):
        promote(str(clash))
    assert load_card(registry / "tiny-v2").version == "t2"


def test_a_corrupt_model_is_never_promoted_even_forced(registry: Path):
    onnx = registry / "tiny-v2" / "model.onnx"
    data = bytearray(onnx.read_bytes())
    data[-50] ^= 0xFF
    onnx.write_bytes(bytes(data))
    with pytest.raises(ModelError, match="sha256 does not match"):
        promote("tiny-v2", force=True, reason="testing")
    assert read_registry()["default"] == "tiny"


REPO = Path(__file__).resolve().parents[2]
APPEND = """
import sys
from models.registry import set_default
worker, n = sys.argv[1], int(sys.argv[2])
for k in range(n):
    set_default(["tiny", "tiny-v2", "tiny-v3"][k % 3], {"action": "promote", "by": "w" + worker, "k": k})
"""


def append_events(root: Path, workers: list[int], n: int) -> None:
    """Several processes appending ``n`` registry events each, all at once."""
    env = {**os.environ, "STREETWATCH_MODELS_DIR": str(root)}
    procs = [subprocess.Popen([sys.executable, "-c", APPEND, str(w), str(n)], cwd=REPO, env=env) for w in workers]
    for p in procs:
        assert p.wait(120) == 0


def test_concurrent_registry_writers_lose_nothing_and_racing_promotions_do_not_both_win(registry: Path):
    append_events(registry, [0, 1, 2, 9], 8)
    events = history_events(read_registry())
    assert len(events) == 1 + 4 * 8  # every write kept: read-modify-write under the lock
    for w in (0, 1, 2, 9):
        assert [e["k"] for e in events if e.get("by") == f"w{w}"] == list(range(8))
    assert not list(registry.glob(".registry.json.*"))  # no temporary files left behind

    # two promotions decided against the same default: the second write finds it changed
    index = read_registry()
    current = index["default"]
    set_default("tiny-v2" if current != "tiny-v2" else "tiny-v3", {"by": "first"}, expect_default=current)
    with pytest.raises(RegistryConflict, match="changed"):
        set_default("tiny", {"by": "second"}, expect_default=current)

    # a reader never sees a half-written index while writers replace it
    stop = threading.Event()
    bad: list[str] = []

    def read_loop() -> None:
        while not stop.is_set():
            try:
                json.loads((registry / "registry.json").read_text())
            except ValueError as exc:
                bad.append(str(exc))

    reader = threading.Thread(target=read_loop)
    reader.start()
    append_events(registry, [5], 12)
    stop.set()
    reader.join()
    assert bad == []
    with registry_lock(registry):  # the lock is free again
        pass


def test_promote_and_rollback_commands(registry: Path, shapes_data: Path, capsys):
    # promote with --data runs the comparison now (tiny-v2 has tiny's weights: nothing drops)
    assert main(["promote", "tiny-v2", "--data", str(shapes_data)]) == 0
    out = capsys.readouterr().out
    assert "tiny-v2@t2 is now the default model" in out and "gate passed against tiny@t1" in out
    assert load_card(registry / "tiny-v2").metrics[GATE_KEY]["images"] == 8
    verdict(registry, "tiny-v3", passed=False, baseline="tiny-v2")
    assert main(["promote", "tiny-v3"]) == EXIT_GATE_REFUSED
    err = capsys.readouterr().err
    assert "not promoted: the promotion gate refused it: car lost" in err and "--force --reason" in err
    with pytest.raises(SystemExit):
        main(["promote", "tiny-v3", "--force"])
    assert "--force needs --reason" in capsys.readouterr().err
    assert main(["promote", "tiny-v3", "--force", "--reason", "hotfix for bins"]) == 0
    assert "FORCED past the gate" in capsys.readouterr().out
    assert main(["models", "--history"]) == 0
    history = capsys.readouterr().out.splitlines()
    assert len(history) == 3 and "FORCED, reason: hotfix for bins" in history[-1] and "gate REFUSED" in history[-1]
    assert main(["rollback", "--reason", "bins look worse"]) == 0
    assert "tiny-v2@t2 is the default model again" in capsys.readouterr().out
    assert main(["models", "--history", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[-1]["reason"] == "bins look worse"
    assert main(["models", "--history", "tiny-v3"]) == 0  # one model's part: promoted, then left for tiny-v2
    history = capsys.readouterr().out.splitlines()
    assert len(history) == 2 and "tiny-v3@t3" in history[0] and "bins look worse" in history[1]


def test_compare_then_promote_on_real_models(registry: Path, shapes_data: Path):
    split = load_split(shapes_data)
    result = compare(make_predictor("tiny"), make_predictor("tiny-v2"), split, str(shapes_data), progress=False)
    assert result.gate.passed and result.baseline.map50 == result.candidate.map50 > 0.5
    record_gate(resolve("tiny-v2"), gate_record(result, resolve("default")))
    assert promote("tiny-v2").event["gate"]["fingerprint"] == result.fingerprint


def test_history_shows_the_gate_baseline_and_what_a_forced_promotion_overrode(registry: Path, capsys):
    verdict(registry, "tiny-v2", passed=True)
    promote("tiny-v2")
    verdict(registry, "tiny-v3", passed=True, baseline="tiny")  # measured against the default before tiny-v2
    promote("tiny-v3", force=True, reason="the field needs it today")
    assert main(["models", "--history"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3 and "promote  tiny-v2@t2 by " in lines[1] and "gate passed against tiny@t1" in lines[1]
    forced = "gate passed against tiny@t1; FORCED, reason: the field needs it today; overrode: the gate compared "
    assert forced in lines[2]
    assert lines[2].endswith("but the default is now tiny-v2@t2: compare again; was tiny-v2")


def test_a_model_the_detector_cannot_run_never_becomes_the_default_even_forced(
    registry: Path, tmp_path: Path, shapes_data: Path, capsys
):
    before = (registry / "registry.json").read_bytes()
    folder = registry / "tiny-v2"  # a cut-short ONNX file whose hash went into the card: sha256 cannot tell
    (folder / "model.onnx").write_bytes((folder / "model.onnx").read_bytes()[:4096])
    card = load_card(folder)
    card.files["fp32"] = describe_file(folder, "model.onnx")
    write_card(folder, card)
    verdict(registry, "tiny-v2", passed=True)
    refused = rf"{re.escape(str(folder))}: cannot become the default model: the detector cannot load or run its fp32"
    for force in (False, True):
        with pytest.raises(ModelError, match=refused + r" .*cannot load ONNX model"):
            promote("tiny-v2", force=force, reason="forced" if force else None)
    # a card naming an input size the network does not take, from outside the registry: not even copied in
    outside = variant(tmp_path / "elsewhere", "tiny-odd", "t5", registry / "tiny")
    write_card(outside, load_card(outside).model_copy(update={"imgsz": 100}))
    odd = r"tiny-odd/card.json: invalid model card: imgsz: 100 is not a multiple of the model stride 32"
    with pytest.raises(ModelError, match=odd):  # the card itself is refused when read
        promote(str(outside), force=True, reason="forced")
    with pytest.raises(ModelError, match=odd):  # refused before comparing
        promote(str(outside), data=str(shapes_data))
    with pytest.raises(SystemExit) as exited:  # the command: a one-line error, not the gate's "--force" advice
        main(["promote", str(outside), "--force", "--reason", "forced"])
    err = capsys.readouterr().err
    assert exited.value.code == 2 and err.count("\n") == 1 and "imgsz: 100 is not a multiple" in err
    assert not (registry / "tiny-odd").exists() and (registry / "registry.json").read_bytes() == before


def test_promoting_the_default_again_changes_nothing(registry: Path, tmp_path: Path, capsys):
    before = (registry / "registry.json").read_bytes()
    copy = tmp_path / "export" / "tiny"  # the same model from elsewhere (the folder it was exported to)
    shutil.copytree(registry / "tiny", copy)
    with pytest.raises(AlreadyDefault, match=r"tiny@t1 is already the default model; nothing changed"):
        promote(str(copy), force=True, reason="redeploy")
    with pytest.raises(AlreadyDefault, match=r"tiny@t1 is already the default model; nothing changed"):
        promote("tiny")
    assert main(["promote", str(copy), "--force", "--reason", "redeploy"]) == 0  # a deploy script may run it again
    assert "tiny@t1 is already the default model" in capsys.readouterr().out
    assert (registry / "registry.json").read_bytes() == before


def test_concurrent_promotions_of_one_outside_folder_copy_it_once(registry: Path, tmp_path: Path):
    for k in range(3):
        name = f"tiny-field{k}"
        outside = variant(tmp_path / f"elsewhere{k}", name, f"f{k}", registry / "tiny")
        start = threading.Barrier(2)
        outcomes: list[Promotion | Exception] = []

        def run(outside: Path = outside, start: threading.Barrier = start, outcomes: list = outcomes) -> None:
            start.wait()
            try:
                outcomes.append(promote(str(outside), force=True, reason="both at once"))
            except Exception as exc:
                outcomes.append(exc)

        threads = [threading.Thread(target=run) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        promoted = [o for o in outcomes if isinstance(o, Promotion)]
        others = [o for o in outcomes if not isinstance(o, Promotion)]
        assert len(promoted) == 1 and promoted[0].copied, outcomes
        assert len(others) == 1 and type(others[0]) is AlreadyDefault, outcomes  # a message, not a traceback
        assert f"{name}@f{k} is already the default model" in str(others[0])
        assert sorted(p.name for p in registry.iterdir() if name in p.name) == [name]  # one copy, no leftovers
        load_card(registry / name)
        assert read_registry()["default"] == name
        assert [e["name"] for e in history_events(read_registry())].count(name) == 1


PAUSED_PROMOTE = """
import sys
from pathlib import Path
from training.promote import promote

def pause_before_moving_the_copy_in(event, args):  # a real promotion, stopped where a kill hurts most
    if event == "os.rename" and Path(args[1]).name == sys.argv[2]:
        print(args[0], flush=True)
        sys.stdin.readline()

sys.addaudithook(pause_before_moving_the_copy_in)
try:
    promote(sys.argv[1], force=True, reason="r")
    print("promoted")
except Exception as exc:
    print(type(exc).__name__)
"""


def test_a_later_promotion_removes_what_killed_ones_left_and_spares_live_ones(registry: Path, tmp_path: Path):
    """The incoming copy of a promotion killed with SIGKILL, and one from before the lock an hour old, are
    removed by the next promotion; the copy of a promotion still running, or a lockless folder just made,
    are not."""
    env = {**os.environ, "STREETWATCH_MODELS_DIR": str(registry)}

    def paused(name: str) -> tuple[subprocess.Popen, Path]:
        """A promotion of an outside folder, in its own process, paused with its copy made, not moved in."""
        outside = variant(tmp_path / name, name, "p1", registry / "tiny")
        proc = subprocess.Popen(
            [sys.executable, "-c", PAUSED_PROMOTE, str(outside), name],
            cwd=REPO,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        copy = Path(proc.stdout.readline().strip())
        assert copy.is_relative_to(registry) and (copy / "card.json").is_file()
        return proc, registry / copy.relative_to(registry).parts[0]  # the hidden folder in the registry root

    killed, killed_folder = paused("tiny-killed")
    live, live_folder = paused("tiny-live")
    try:
        killed.kill()
        assert killed.wait(30) == -9 and killed_folder.is_dir()  # left behind
        old = registry / ".tiny-x.incoming-oldcopy1"  # killed before incoming folders had a lock
        (old / "model").mkdir(parents=True)
        os.utime(old, (os.path.getmtime(old) - 7200,) * 2)
        just_made = registry / ".tiny-y.incoming-justmade"  # lockless but new: maybe being locked right now
        just_made.mkdir()

        outside = variant(tmp_path / "elsewhere", "tiny-field", "f1", registry / "tiny")
        assert promote(str(outside), force=True, reason="r").copied
        assert not killed_folder.exists() and not old.exists()
        assert live_folder.is_dir() and just_made.is_dir()
    finally:
        out, _ = live.communicate("\n", timeout=60)  # the live promotion goes on
    assert live.returncode == 0 and out.splitlines()[-1] == "RegistryConflict"  # the default changed meanwhile
    assert load_card(registry / "tiny-live").version == "p1" and not live_folder.exists()
    assert [p.name for p in registry.iterdir() if ".incoming-" in p.name] == [just_made.name]


def test_a_default_that_cannot_be_read_is_replaced_only_by_a_forced_promotion(registry: Path):
    (registry / "tiny" / "card.json").write_text("{ cut short")  # the default in force is broken
    with pytest.raises(PromotionRefused, match="the default in force, tiny, cannot be read"):
        promote("tiny-v2")
    done = promote("tiny-v2", force=True, reason="tiny's folder was damaged; v2 is the same network")
    assert read_registry(registry)["default"] == "tiny-v2"
    assert "tiny, cannot be read" in done.event["override"] and done.event["forced"] is True
    assert "note" not in done.event  # not "the first model of the registry"


def test_a_card_is_replaced_whole_keeping_its_permissions(registry: Path):
    """A service reading the card while a promotion records its verdict sees the old card or the new one."""
    folder = registry / "tiny-v2"
    os.chmod(folder / "card.json", 0o640)
    card = load_card(folder)
    with open(folder / "card.json") as reader:  # opened before the write, read after it
        write_card(folder, card.model_copy(update={"version": "t2b"}))
        assert json.loads(reader.read())["version"] == "t2"  # whole, and not the new text
    assert load_card(folder).version == "t2b"
    assert (folder / "card.json").stat().st_mode & 0o777 == 0o640
    assert [p.name for p in folder.iterdir() if p.name.startswith(".")] == []  # no temporary file left


def test_an_outside_folder_taking_a_registered_name_is_refused_before_the_gate(registry: Path, tmp_path: Path):
    outside = variant(tmp_path / "export", "tiny-v2", "other", registry / "tiny")  # not the registered tiny-v2
    for forced in (False, True):  # the gate's advice would name the registered model; --force would not help
        with pytest.raises(ModelError, match=rf"already holds another model named 'tiny-v2'; export {outside}"):
            promote(str(outside), force=forced, reason="r")
    assert read_registry(registry)["default"] == "tiny"


def test_a_folder_that_cannot_be_copied_is_a_message_not_a_traceback(registry: Path, tmp_path: Path):
    outside = variant(tmp_path / "export", "tiny-field", "f1", registry / "tiny")
    (outside / "train-run").symlink_to(tmp_path / "gone")  # a dangling link beside the model
    with pytest.raises(ModelError, match=rf"cannot copy {outside} into {registry}"):
        promote(str(outside), force=True, reason="r")
    assert not (registry / "tiny-field").exists() and not list(registry.glob(".tiny-field*"))


def test_rolling_back_to_a_folder_that_is_gone_says_what_to_do(registry: Path):
    promote("tiny-v2", force=True, reason="r")
    shutil.rmtree(registry / "tiny")
    with pytest.raises(ModelError, match=r"cannot roll back to tiny: .*Promote another model instead"):
        rollback()
    assert read_registry(registry)["default"] == "tiny-v2"
