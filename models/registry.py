"""The model registry: model folders with ONNX files and a JSON model card; ``default`` names one.

A model folder holds ``card.json`` and the files it lists (``fp32``: ONNX float, ``int8``: ONNX
static-quantised, ``pt``: the ultralytics checkpoint for fine-tuning, ``manifest``: the manifest of the
dataset it was trained on). The registry root is this package's folder unless ``STREETWATCH_MODELS_DIR``
points elsewhere; ``registry.json`` in it names the default model and keeps the history of promotions
and rollbacks (who, when, the promotion gate's verdict, any forced override with its reason).

Every change of ``registry.json`` runs under an exclusive lock (``registry.lock``, :func:`registry_lock`)
and replaces the file atomically, so concurrent promotions never lose one another's entries and a
reader (a service following the default) sees the old or the new index, never half of one.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import tempfile
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic_core import PydanticCustomError

from models.classes import CLASS_NAMES

CARD_NAME = "card.json"
REGISTRY_FILE = "registry.json"
LOCK_FILE = "registry.lock"


#: A model or run name: it becomes a folder name, so one path component (no ``/``, not ``.`` or ``..``).
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.+-]{0,63}$"


def name_problem(name: str) -> str | None:
    """Why ``name`` cannot name a model or run folder (see :data:`NAME_PATTERN`), or None."""
    if re.fullmatch(NAME_PATTERN, name):
        return None
    return f"{name!r} is not a name: 1-64 letters, digits, _ . + - starting with a letter or digit (it names a folder)"


class ModelError(ValueError):
    """A model cannot be found, verified or loaded; the message says which and why."""


class ModelFile(BaseModel):
    """One file of a model, with the hash that proves it is the file the card describes."""

    model_config = ConfigDict(extra="forbid")

    path: str = Field(description="File name relative to the model folder")
    sha256: str = Field(description="SHA-256 of the file's bytes, hex")
    bytes: int = Field(description="File size in bytes")


class ModelCard(BaseModel):
    """What a model is, what it outputs, what it was trained on and how well it does."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=NAME_PATTERN, description="Registry name of the model (its folder name)")
    version: str = Field(description="Version string recorded on every case this model finds")
    created: str = Field(description="ISO-8601 creation time")
    interim: bool = Field(False, description="True for a stand-in model that is not trained on product data")
    description: str = Field("", description="One paragraph: what the model is and what it is for")
    architecture: str = Field(description="Network architecture, e.g. yolo11n")
    imgsz: int = Field(gt=0, description="Square input size the model was trained at, in pixels")
    stride: int = Field(32, gt=0, description="Largest stride of the network; input sides are multiples of it")
    names: list[str] = Field(description="The model's own output class names, in output order")
    class_map: list[str | None] = Field(
        description="Product class for each model output (same order as names); null drops that output"
    )
    files: dict[str, ModelFile] = Field(description="Files by role: fp32, int8, pt")
    training: dict[str, Any] = Field(default_factory=dict, description="Data manifest, config, hardware")
    metrics: dict[str, Any] = Field(default_factory=dict, description="Validation metrics by dataset")
    notes: str = Field("", description="Limitations and anything a user of the model should know")

    @model_validator(mode="after")
    def _runnable(self) -> ModelCard:
        """What the detector relies on: it letterboxes to ``imgsz`` (a size the network cannot take fails at
        the first image) and maps each output through ``class_map`` onto product classes."""
        problem = imgsz_problem(self.imgsz, self.stride)
        if problem:
            raise PydanticCustomError("card", "imgsz: {problem}", {"problem": problem})
        unknown = [c for c in dict.fromkeys(self.class_map) if c is not None and c not in CLASS_NAMES]
        if unknown:  # the detector maps every output onto a product class: an unknown one fails at each image
            problem = f"{', '.join(map(repr, unknown))} not a product class (known: {', '.join(CLASS_NAMES)})"
            raise PydanticCustomError("card", "class_map: {problem}", {"problem": problem})
        if len(self.class_map) != len(self.names):
            problem = f"{len(self.class_map)} entries for {len(self.names)} names (one per model output)"
            raise PydanticCustomError("card", "class_map: {problem}", {"problem": problem})
        return self

    def product_classes(self) -> list[str]:
        """Product classes this model can report."""
        return [c for c in CLASS_NAMES if c in self.class_map]


def imgsz_problem(imgsz: int, stride: int = 32) -> str | None:
    """Why ``imgsz`` cannot be a model's input size (a positive multiple of ``stride``), or None."""
    if imgsz < stride or imgsz % stride:
        return f"{imgsz} is not a multiple of the model stride {stride} (e.g. {stride * 10}, {stride * 20})"
    return None


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file, streamed."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def describe_file(folder: Path, name: str) -> ModelFile:
    """A :class:`ModelFile` entry for a file in a model folder."""
    path = folder / name
    return ModelFile(path=name, sha256=file_sha256(path), bytes=path.stat().st_size)


def now_iso() -> str:
    """Current UTC time, ISO-8601, seconds precision."""
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat()


class ModelRef(BaseModel):
    """A resolved model: its folder and card."""

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)

    folder: Path = Field(description="Model folder")
    card: ModelCard = Field(description="The model card")
    role: str | None = Field(None, description="The file a path named (fp32, int8, pt); None: a name or folder")

    def file(self, role: str, verify: bool = True) -> Path:
        """Path of a model file by role (fp32/int8/pt); verifies its hash unless told not to."""
        if role not in self.card.files:
            have = ", ".join(sorted(self.card.files)) or "none"
            raise ModelError(f"model {self.card.name!r} has no {role} file (has: {have})")
        entry = self.card.files[role]
        path = self.folder / entry.path
        if not path.is_file():
            raise ModelError(f"{path}: model file listed in the card is missing")
        if verify and file_sha256(path) != entry.sha256:
            raise ModelError(f"{path}: sha256 does not match the model card; the file is corrupt or replaced")
        return path

    @property
    def version(self) -> str:
        return self.card.version


def models_root() -> Path:
    """The registry's root folder."""
    env = os.environ.get("STREETWATCH_MODELS_DIR")
    return Path(env) if env else Path(__file__).resolve().parent


def read_registry(root: Path | None = None) -> dict[str, Any]:
    """The registry index: ``{"default": name, "history": [events, oldest first]}``.

    An event is a dict (:func:`history_events` also turns the bare model names older indexes hold into
    ``{"action": "promote", "name": ...}``)."""
    root = root or models_root()
    path = root / REGISTRY_FILE
    if not path.is_file():
        return {"default": None, "history": []}
    try:
        index = json.loads(path.read_text())
    except ValueError as exc:
        raise ModelError(f"{path}: invalid registry index: {exc}") from None
    if not isinstance(index, dict):
        raise ModelError(f"{path}: invalid registry index: expected an object with 'default' and 'history'")
    index.setdefault("default", None)
    index.setdefault("history", [])
    if not (index["default"] is None or isinstance(index["default"], str)):
        raise ModelError(f"{path}: invalid registry index: 'default' must be a model name, not {index['default']!r}")
    history = index["history"]
    if not isinstance(history, list) or not all(isinstance(e, (str, dict)) for e in history):
        raise ModelError(f"{path}: invalid registry index: 'history' must be a list of events")
    for e in history:
        gate = e.get("gate") if isinstance(e, dict) else None
        if gate is not None and not (isinstance(gate, dict) and isinstance(gate.get("baseline") or {}, dict)):
            raise ModelError(f"{path}: invalid registry index: a 'gate' must be an object (its 'baseline' too): {e}")
    return index


def write_registry(index: dict[str, Any], root: Path | None = None) -> None:
    """Atomically replace the registry index. Callers that read, change and write the index hold
    :func:`registry_lock` around all three."""
    root = root or models_root()
    root.mkdir(parents=True, exist_ok=True)
    replace_file(root / REGISTRY_FILE, json.dumps(index, indent=2, ensure_ascii=False) + "\n")


def replace_file(path: Path, text: str) -> None:
    """Replace ``path`` atomically: a unique temporary file beside it, fsynced, renamed over the old one, the
    folder synced; the old file's permissions kept (0644 for a new one: services run as other users read it).
    A reader sees the old text or the new, never half of it."""
    try:
        mode = path.stat().st_mode & 0o7777
    except FileNotFoundError:
        mode = 0o644
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")  # mkstemp makes it 0600
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    with contextlib.suppress(OSError):  # the rename itself survives a crash once the folder is synced
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


@contextlib.contextmanager
def registry_lock(root: Path | None = None) -> Iterator[Path]:
    """Hold the registry's exclusive lock (``flock`` on ``registry.lock``; processes and threads queue)."""
    root = root or models_root()
    root.mkdir(parents=True, exist_ok=True)
    with open(root / LOCK_FILE, "a+") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield root
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def history_events(index: dict[str, Any]) -> list[dict[str, Any]]:
    """The index's history as event dicts (a bare name, as older indexes hold, is a promotion of it)."""
    return [e if isinstance(e, dict) else {"action": "promote", "name": str(e)} for e in index.get("history", [])]


def default_chain(index: dict[str, Any]) -> list[str]:
    """The defaults in force, oldest first, as promotions and rollbacks left them: a promotion pushes a
    model, a rollback pops one; the last entry is the default in force."""
    chain: list[str] = []
    for event in history_events(index):
        if event.get("action") == "rollback":
            if chain:
                chain.pop()
        elif event.get("name"):
            chain.append(event["name"])
    default = index.get("default")
    if default and (not chain or chain[-1] != default):
        chain.append(default)  # an index edited by hand: its default is the one in force
    return chain


class RegistryConflict(ModelError):
    """The registry changed between a decision and its write (another promotion won the race)."""


_UNCHECKED = object()


def set_default(
    name: str, event: dict[str, Any], root: Path | None = None, expect_default: Any = _UNCHECKED
) -> dict[str, Any]:
    """Make registered model ``name`` the default and append ``event`` (plus name, version, time and the
    previous default) to the history, under the lock. With ``expect_default``, refuse
    (:class:`RegistryConflict`) when the default in force is no longer that one."""
    root = root or models_root()
    card = resolve(name, root).card
    with registry_lock(root):
        index = read_registry(root)
        previous = index.get("default")
        if expect_default is not _UNCHECKED and previous != expect_default:
            raise RegistryConflict(
                f"the default model changed from {expect_default!r} to {previous!r} meanwhile; run again"
            )
        entry = {
            "action": "promote",
            **event,
            "name": card.name,
            "version": card.version,
            "at": now_iso(),
            "previous": previous,
        }
        index["default"] = card.name
        index["history"] = [*index.get("history", []), entry]
        write_registry(index, root)
    return entry


def rollback_default(root: Path | None = None, **details: Any) -> dict[str, Any]:
    """Go back one version: the default before the one in force becomes the default again (recorded as
    a ``rollback`` event with ``details``, e.g. who and why)."""
    root = root or models_root()
    with registry_lock(root):
        index = read_registry(root)
        chain = default_chain(index)
        if len(chain) < 2:
            raise ModelError(
                f"nothing to roll back to: {chain[-1] if chain else 'no model'} is the only default "
                f"in the history of {root / REGISTRY_FILE}"
            )
        current, target = chain[-1], chain[-2]
        try:
            ref = resolve(target, root)  # the folder must still be there and valid
            for role in ref.card.files:
                ref.file(role)
        except ModelError as exc:
            raise ModelError(
                f"cannot roll back to {target}: {exc}. Promote another model instead (`streetwatch promote NAME`, "
                "with --force --reason if the gate cannot judge it)"
            ) from None
        card = ref.card
        entry = {
            "action": "rollback",
            **details,
            "name": card.name,
            "version": card.version,
            "at": now_iso(),
            "previous": current,
        }
        index["default"] = target
        index["history"] = [*index.get("history", []), entry]
        write_registry(index, root)
    return entry


def validation_problems(exc: ValidationError) -> str:
    """What pydantic refused, in one line: each field with its reason."""
    parts = []
    for e in exc.errors(include_url=False):
        where = ".".join(str(part) for part in e["loc"])
        parts.append(f"{where}: {e['msg']}" if where else e["msg"])
    return "; ".join(parts)


def load_card(folder: Path) -> ModelCard:
    """Read and validate the card of a model folder."""
    path = folder / CARD_NAME
    try:
        return ModelCard.model_validate_json(path.read_text())
    except FileNotFoundError:
        raise ModelError(f"{folder}: not a model folder (no {CARD_NAME})") from None
    except ValidationError as exc:
        raise ModelError(f"{path}: invalid model card: {validation_problems(exc)}") from None
    except ValueError as exc:
        raise ModelError(f"{path}: invalid model card: {exc}") from None


def write_card(folder: Path, card: ModelCard) -> Path:
    """Write a card into a model folder (atomically)."""
    path = folder / CARD_NAME
    replace_file(path, card.model_dump_json(indent=2) + "\n")  # a service may be reading it
    return path


def scan_models(root: Path | None = None) -> tuple[list[ModelRef], dict[Path, str]]:
    """Every model folder in the registry, by name, and the folders whose card cannot be read, with why.
    A folder whose name starts with ``.`` is not a model (e.g. a promotion's temporary copy)."""
    root = root or models_root()
    refs, unreadable = [], {}
    for card_path in sorted(root.glob(f"*/{CARD_NAME}")):
        folder = card_path.parent
        if folder.name.startswith("."):
            continue
        try:
            card = load_card(folder)
        except (ModelError, OSError) as exc:
            unreadable[folder] = str(exc)
            continue
        if card.name != folder.name:  # a copied folder: two "default"s, or a name that resolves to another model
            unreadable[folder] = misplaced(card.name, folder)
            continue
        refs.append(ModelRef(folder=folder, card=card))
    return refs, unreadable


def misplaced(name: str, folder: Path) -> str:
    """Why a registry folder whose card names another model is not that model."""
    return (
        f"{folder / CARD_NAME} names the model {name!r}, but its folder is {folder.name!r}: a registered model "
        f"lives in the folder of its name (rename the folder, or export the copy under a name of its own)"
    )


def list_models(root: Path | None = None) -> list[ModelRef]:
    """Every model folder in the registry with a valid card, by name (:func:`scan_models` also says which
    folders have none)."""
    return scan_models(root)[0]


def resolve(ref: str | os.PathLike[str] | None = "default", root: Path | None = None) -> ModelRef:
    """Find a model by ``default``, registry name, model folder or the path of a file its card lists (then
    ``role`` says which: a path to ``model.int8.onnx`` means the int8 model)."""
    root = root or models_root()
    text = "default" if ref is None else str(ref)
    if text == "default":
        name = read_registry(root).get("default")
        if not name:
            raise ModelError(f"no default model registered in {root / REGISTRY_FILE}")
        text = name
    path = Path(text)
    hidden = bool(path.parts) and path.parts[0].startswith(".")  # a promotion's temporary copy is no model
    if (root / text / CARD_NAME).is_file() and not path.is_absolute() and not hidden:
        folder = root / text
    elif path.is_dir():
        folder = path
    elif path.is_file() and path.suffix in (".onnx", ".pt"):
        folder = path.parent
        if not (folder / CARD_NAME).is_file():
            raise ModelError(
                f"{path}: a model file runs from its model folder, beside the card.json that names its classes "
                f"(none in {folder}; `streetwatch export` writes one)"
            )
        card = load_card(folder)
        role = next((r for r, f in card.files.items() if f.path == path.name), None)
        if role is None:
            raise ModelError(f"{path}: the model card in {folder} does not list this file")
        return ModelRef(folder=folder, card=card, role=role)
    else:
        known = ", ".join(r.card.name for r in list_models(root)) or "none"
        raise ModelError(f"{text}: no such model (registered: {known}; or give a model folder path)")
    card = load_card(folder)
    if folder.parent == root and card.name != folder.name:
        raise ModelError(misplaced(card.name, folder))
    return ModelRef(folder=folder, card=card)
