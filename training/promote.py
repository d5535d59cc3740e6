"""Promoting a model to the registry default, and rolling back.

:func:`promote` registers a model folder as a version in the registry (copied into the registry root
when it lies elsewhere; the dataset manifest it was trained on is kept beside its card) and makes it
the default when the promotion gate passed: the verdict ``streetwatch compare`` wrote into its card,
measured against the default in force (or a comparison run now when an evaluation set is given).
A refused model is promoted only with ``force`` and a reason, both recorded in the registry history.
Forced or not, a model becomes the default only when the service's detector loads it and runs one
warm-up detection (``force`` overrides the gate, never that). The registry write checks that the
default did not change meanwhile (concurrent promotions are safe, also of one folder from outside).

A model folder from outside is copied into a hidden incoming folder of the registry root
(:func:`pipeline.files.incoming_folder`) and renamed into place; the copying promotion holds a ``flock`` on a
lock file in it, so that a later promotion removes what a killed one left (:func:`pipeline.files.sweep_incoming`)
and never the folder of one still copying.
"""

from __future__ import annotations

import getpass
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from models.registry import (
    ModelCard,
    ModelError,
    ModelRef,
    RegistryConflict,
    describe_file,
    file_sha256,
    load_card,
    models_root,
    read_registry,
    resolve,
    rollback_default,
    set_default,
    write_card,
)
from pipeline.cli import one_line
from pipeline.files import incoming_folder, sweep_incoming
from training.compare import GATE_KEY

MANIFEST_NAME = "dataset-manifest.json"


class PromotionRefused(ModelError):
    """The gate did not pass (or was not run) and the promotion was not forced; the message says why."""


class AlreadyDefault(ModelError):
    """The model is the default already (perhaps made so by another promotion meanwhile): nothing to do."""


@dataclass
class Promotion:
    """What a promotion did."""

    ref: ModelRef
    event: dict[str, Any]
    copied: bool


def user() -> str:
    """Who runs the command (recorded in the history)."""
    try:
        return getpass.getuser()
    except Exception:  # no user name in some containers
        return "unknown"


def gate_verdict(ref: ModelRef, current: ModelRef | None) -> tuple[dict[str, Any] | None, str | None]:
    """The candidate's recorded gate verdict and, when it cannot be used, why: no comparison recorded, a
    comparison against another model than the default in force, or a refusal."""
    if current is None:
        return None, None  # the first model of a registry has nothing to be compared with
    record = ref.card.metrics.get(GATE_KEY)
    if not record:
        return None, (
            f"no promotion gate result in {ref.folder / 'card.json'}: run `streetwatch compare --candidate "
            f"{ref.card.name} --baseline default --data EVAL_YAML` first (or give --data here)"
        )
    base = record.get("baseline", {})
    if (base.get("name"), base.get("version")) != (current.card.name, current.card.version):
        return record, (
            f"the gate compared against {base.get('name')}@{base.get('version')}, but the default is now "
            f"{current.card.name}@{current.card.version}: compare again"
        )
    if not record.get("passed"):
        return record, "the promotion gate refused it: " + "; ".join(record.get("failures", []))
    return record, None


def same_model(card: ModelCard, other: ModelCard) -> bool:
    """Whether ``other`` is the model ``card`` describes: same name and version, each of its files there with
    the same hash (``other`` may hold more, e.g. the dataset manifest a promotion added)."""
    return (other.name, other.version) == (card.name, card.version) and all(
        role in other.files and other.files[role].sha256 == f.sha256 for role, f in card.files.items()
    )


def verify_files(ref: ModelRef) -> None:
    """Every file of the model against its card's sha256: a corrupt model is never registered, forced or not."""
    for role in ref.card.files:
        ref.file(role)


def check_runs(ref: ModelRef) -> None:
    """Build the service's detector for each ONNX file of the model and run one warm-up detection on a grey
    image, as a running service does before it takes a new default; refuse a model that fails there (a file
    onnxruntime cannot read, a card whose input size or classes do not fit the network)."""
    from pipeline.detect import Detector

    card = ref.card
    for variant in [v for v in ("fp32", "int8") if v in card.files] or ["fp32"]:
        try:
            detector = Detector(model=str(ref.folder.resolve()), variant=variant)
            probe = np.full((detector.imgsz, detector.imgsz, 3), 114, np.uint8)
            detector.detect_batch([probe])
        except Exception as exc:  # ModelError, onnxruntime's own errors, shape errors in post-processing
            raise ModelError(
                f"{ref.folder}: cannot become the default model: the detector cannot load or run its {variant} "
                f"model (card: imgsz {card.imgsz}, stride {card.stride}, {len(card.names)} classes): {exc}"
            ) from None


def name_taken(ref: ModelRef, root: Path) -> str | None:
    """Why ``ref`` cannot take its name in the registry root: another model of that name is there (None when
    the name is free, or holds this very model)."""
    target = root / ref.card.name
    if ref.folder.resolve() == target.resolve() or not target.exists():
        return None
    try:
        there = load_card(target)
    except ModelError:
        there = None
    if there is not None and same_model(ref.card, there):
        return None
    return (
        f"{target} already holds another model named {ref.card.name!r}; export {ref.folder} under a new --name "
        "(every version keeps its own folder)"
    )


def register_folder(ref: ModelRef, root: Path) -> tuple[ModelRef, bool]:
    """The model as a folder of the registry root: itself, or a copy made now (refusing a different model
    of the same name already there). Every file is verified against the card first. The copy goes to a
    unique hidden folder renamed into place, so concurrent promotions of one folder make one copy; what
    killed promotions left there is removed first."""
    verify_files(ref)
    target = root / ref.card.name
    if ref.folder.resolve() == target.resolve():
        return ref, False
    if not target.exists():
        sweep_incoming(root)
        try:
            with incoming_folder(root, ref.card.name) as incoming:
                copy = incoming / "model"
                shutil.copytree(ref.folder, copy)
                copy.rename(target)
                return resolve(target), True
        except OSError as exc:  # shutil.Error too: a full disk, a dangling link in the folder
            if not target.exists():
                raise ModelError(f"cannot copy {ref.folder} into {root}: {one_line(str(exc))}") from None
            # another promotion renamed its copy into place first: is it this model?
    problem = name_taken(ref, root)
    if problem:
        raise ModelError(problem)
    return resolve(target), False


def keep_manifest(ref: ModelRef) -> str | None:
    """Copy the manifest of the dataset the model was trained on into its folder (listed in the card as
    ``manifest``), when the run record names one that is still there unchanged; returns a note otherwise."""
    if "manifest" in ref.card.files:
        return None
    info = ((ref.card.training or {}).get("data") or {}).get("manifest")
    if not info:
        return "its card names no dataset manifest (trained on a dataset built without one)"
    src = Path(info.get("path", ""))
    if not src.is_file():
        return f"dataset manifest {src} is not on this machine; the card keeps its summary and hash"
    if info.get("sha256") and file_sha256(src) != info["sha256"]:
        return f"dataset manifest {src} changed since training (sha256 differs); not copied"
    shutil.copyfile(src, ref.folder / MANIFEST_NAME)
    ref.card.files["manifest"] = describe_file(ref.folder, MANIFEST_NAME)
    write_card(ref.folder, ref.card)
    return None


def promote(
    model: str,
    *,
    force: bool = False,
    reason: str | None = None,
    data: str | None = None,
    split: str = "val",
    data_map: str | None = None,
    gate_config: Any = None,
    root: Path | None = None,
    progress: bool = False,
) -> Promotion:
    """Register ``model`` (registry name or model folder) and make it the default; see the module docstring."""
    root = root or models_root()
    if force and not (reason or "").strip():
        raise ValueError("--force needs --reason: say why a model the gate refused goes into production")
    ref = resolve(model, root)
    index = read_registry(root)
    current_name = index.get("default")
    current, broken = None, None
    if current_name:
        try:
            current = resolve(current_name, root)
        except ModelError as exc:  # a forced promotion is the way out of a broken default
            broken = f"the default in force, {current_name}, cannot be read: nothing to compare with ({exc})"
    if current is not None and same_model(ref.card, current.card):
        raise AlreadyDefault(f"{ref.card.name}@{ref.card.version} is already the default model; nothing changed")
    problem = name_taken(ref, root)  # before the gate: its advice would name the other model
    if problem:
        raise ModelError(problem)
    verify_files(ref)
    check_runs(ref)  # before any comparison; force overrides the gate, not this (every serve start would fail)
    if data and current is not None:
        record = _compare_now(ref, current, data, split, data_map, gate_config, progress)
        ref = resolve(model, root)  # the card now holds the verdict
    record, problem = gate_verdict(ref, current) if broken is None else (None, broken)
    if problem and not force:
        raise PromotionRefused(f"{ref.card.name} not promoted: {problem}")
    ref, copied = register_folder(ref, root)
    note = keep_manifest(ref)
    event: dict[str, Any] = {
        "action": "promote",
        "by": user(),
        "gate": _gate_summary(record) if record else None,
        "forced": bool(problem and force),
    }
    if current is None and broken is None:
        event["note"] = "first model of the registry: nothing to compare with"
    if problem and force:
        event["override"] = problem
        event["reason"] = reason.strip()
    elif reason:
        event["reason"] = reason.strip()
    if note:
        event["manifest_note"] = note
    try:
        entry = set_default(ref.card.name, event, root, expect_default=current_name)
    except RegistryConflict as exc:
        now = read_registry(root).get("default")
        if now == ref.card.name and same_model(ref.card, resolve(now, root).card):
            raise AlreadyDefault(
                f"{ref.card.name}@{ref.card.version} is already the default model (another promotion made it so "
                "meanwhile); nothing changed"
            ) from None
        where = f" (its folder {ref.folder} is in the registry)" if copied else ""
        raise RegistryConflict(
            f"{ref.card.name} was not made the default{where}: {exc}. Its gate verdict was measured against "
            f"{current_name}: run `streetwatch compare --candidate {ref.card.name} --baseline default` and promote "
            "again"
        ) from None
    return Promotion(ref, entry, copied)


def _gate_summary(record: dict[str, Any]) -> dict[str, Any]:
    """The part of a gate verdict the registry history keeps."""
    keep = ("passed", "failures", "baseline", "data", "split", "images", "fingerprint", "mean", "config", "at")
    out = {k: record[k] for k in keep if k in record}
    out["classes"] = {name: c.get("delta") for name, c in record.get("classes", {}).items()}
    return out


def _compare_now(
    ref: ModelRef, current: ModelRef, data: str, split: str, data_map: str | None, gate_config: Any, progress: bool
) -> dict[str, Any]:
    """Run the comparison against the default in force now and record it in the candidate's card."""
    from datasets.mapping import identity_mapping, load_mapping
    from training.compare import compare, gate_record, record_gate
    from training.evaluate import load_split, make_predictor

    labelled = load_split(data, split, load_mapping(data_map) if data_map else identity_mapping())
    result = compare(
        make_predictor(str(current.folder)),
        make_predictor(str(ref.folder)),
        labelled,
        str(data),
        gate_config,
        progress=progress,
    )
    record = gate_record(result, current)
    record_gate(ref, record)
    return record


def rollback(reason: str | None = None, root: Path | None = None) -> dict[str, Any]:
    """Go back one version (see :func:`models.registry.rollback_default`)."""
    details: dict[str, Any] = {"by": user()}
    if reason:
        details["reason"] = reason
    return rollback_default(root or models_root(), **details)
