"""The dataset manifest: what a built dataset holds and where it came from, so a model can name it.

``manifest.json`` sits in the dataset folder: sources (path, kind, mapping), counts per split and class,
pseudo-labelling and synthesis settings, the SHA-256 of every file and a ``fingerprint`` over them, the
creation time and the tool version. :func:`dataset_manifest_summary` is the short form a model card
embeds.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

from models.registry import file_sha256
from pipeline.files import read_text

MANIFEST = "manifest.json"
REPO = Path(__file__).resolve().parents[1]


def tool_version() -> dict[str, str]:
    """streetwatch's version and, in a git checkout, the commit (``+dirty`` with uncommitted changes)."""
    try:
        version = metadata.version("streetwatch")
    except metadata.PackageNotFoundError:
        version = "unknown"
    out = {"name": "streetwatch", "version": version}
    try:
        commit = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10
        ).stdout.strip()
        if commit:
            dirty = subprocess.run(
                ["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
                capture_output=True,
                text=True,
                timeout=10,
            ).stdout.strip()
            out["git"] = commit + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        pass
    return out


def hash_files(root: Path, exclude: tuple[str, ...] = (MANIFEST,)) -> dict[str, str]:
    """SHA-256 of every file under ``root`` (posix relative paths, sorted), except ``exclude``, report/, work/
    and the ``*.cache`` label caches ultralytics writes beside the labels when it loads a dataset."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        if p.is_file() and rel not in exclude and not rel.startswith(("report/", "work/")) and p.suffix != ".cache":
            out[rel] = file_sha256(p)
    return out


def fingerprint(files: dict[str, str]) -> str:
    """One SHA-256 over all ``path sha256`` lines: equal fingerprints mean identical datasets."""
    h = hashlib.sha256()
    for rel in sorted(files):
        h.update(f"{rel} {files[rel]}\n".encode())
    return h.hexdigest()


def write_manifest(root: Path, manifest: dict[str, Any]) -> Path:
    """Add created time, tool version, file hashes and fingerprint; write ``root/manifest.json``."""
    files = hash_files(root)
    full = {
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "tool": tool_version(),
        **manifest,
        "fingerprint": fingerprint(files),
        "files": files,
    }
    path = root / MANIFEST
    path.write_text(json.dumps(full, ensure_ascii=False, indent=1), encoding="utf-8")
    return path


def load_manifest(path: str | Path) -> dict[str, Any]:
    """A manifest from its file or its dataset folder; errors name the file."""
    p = Path(path)
    if p.is_dir():
        p = p / MANIFEST
    try:
        manifest = json.loads(read_text(p))
    except FileNotFoundError:
        raise FileNotFoundError(f"{p}: no dataset manifest (build the dataset with `streetwatch data build`)") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"{p}: invalid manifest JSON: {exc}") from None
    if not isinstance(manifest, dict):
        raise ValueError(f"{p}: not a dataset manifest: a JSON object is expected, not {type(manifest).__name__}")
    files = manifest.get("files")
    if not isinstance(files, dict) or not all(isinstance(v, str) for v in files.values()):
        raise ValueError(f"{p}: not a dataset manifest: 'files' must map each file to its SHA-256")
    return manifest


def verify_manifest(root: Path) -> list[str]:
    """Files whose hash differs from the manifest, and files missing or not listed: empty when intact."""
    manifest = load_manifest(root)
    listed: dict[str, str] = manifest["files"]
    actual = hash_files(root)
    problems = [f"{rel}: changed" for rel in listed if rel in actual and actual[rel] != listed[rel]]
    problems += [f"{rel}: missing" for rel in listed if rel not in actual]
    problems += [f"{rel}: not in the manifest" for rel in actual if rel not in listed]
    return problems


def dataset_manifest_summary(manifest: dict[str, Any] | str | Path) -> dict[str, Any]:
    """The part of a manifest a model card embeds: name, fingerprint, sources, counts, pseudo-labels, synthesis."""
    m = manifest if isinstance(manifest, dict) else load_manifest(manifest)
    return {
        "name": m.get("name"),
        "created": m.get("created"),
        "fingerprint": m.get("fingerprint"),
        "tool": m.get("tool"),
        "files": len(m.get("files", {})),
        "sources": [
            {k: s.get(k) for k in ("name", "kind", "path", "labels", "mapping", "synthetic") if s.get(k) is not None}
            | {"images": {sp: c["images"] for sp, c in s.get("splits", {}).items()}}
            for s in m.get("sources", [])
        ],
        "splits": {
            sp: {
                "images": c["images"],
                "boxes": c["boxes"],
                "pseudo_boxes": c.get("pseudo", 0),
                "classes": c["classes"],
            }
            for sp, c in m.get("splits", {}).items()
        },
        "pseudo_labels": {k: v for k, v in (m.get("pseudo") or {}).items() if k != "thresholds"} or None,
        "synthetic": m.get("synthetic"),
        "dropped_near_duplicates": len((m.get("dedup") or {}).get("dropped", [])),
        "skipped_sources": m.get("skipped_sources") or [],
    }
