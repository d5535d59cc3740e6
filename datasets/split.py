"""Train/val splits that never put near-duplicates on both sides.

Duplicate pairs (exact, pHash, same scene) join images into groups (union-find). A group takes one
side: if a source gives any member as ``val``, the group is val, and members given as train are
dropped (or, with ``leak_policy="move"``, moved to val) so a source's own validation set stays what it
was; a group with a given ``train`` member is train; other groups are held out deterministically
(a hash of the group's first key against the source's ``val_fraction``), so rebuilding gives the
same split.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import Literal

from datasets.checks import DuplicatePair
from datasets.dedup import UnionFind
from datasets.samples import Sample


def held_out(key: str, fraction: float, seed: int = 0) -> bool:
    """Deterministic coin for ``key``: True for about ``fraction`` of all keys."""
    digest = hashlib.sha256(f"{seed}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


def assign_splits(
    samples: Sequence[Sample],
    pairs: Sequence[DuplicatePair],
    val_fraction: Mapping[str, float],
    seed: int = 0,
    leak_policy: Literal["drop", "move"] = "drop",
) -> tuple[list[Sample], list[tuple[Sample, str]]]:
    """Set ``split`` on every sample; returns the kept samples and the ``(sample, reason)`` dropped.

    ``val_fraction`` gives per source the held-out fraction for groups without a given split.
    """
    uf = UnionFind(len(samples))
    for p in pairs:
        uf.union(p.a, p.b)
    partner: dict[int, DuplicatePair] = {}
    for p in pairs:
        partner.setdefault(p.a, p)
        partner.setdefault(p.b, p)
    dropped: list[tuple[Sample, str]] = []
    drop: set[int] = set()
    for group in uf.groups():
        members = [samples[i] for i in group]
        given = {s.split for s in members}
        if "val" in given:
            vals = [s for s in members if s.split == "val"]
            for i in group:
                s = samples[i]
                if s.split == "val":
                    continue
                p = partner.get(i)
                why = f"{p.kind} duplicate ({p.score}) in a group with val image {vals[0].key}" if p else "leak"
                if leak_policy == "move":
                    s.split = "val"
                    s.note = f"moved to val: {why}"
                else:
                    drop.add(i)
                    dropped.append((s, f"train image is a {why}"))
        elif "train" in given:
            for s in members:
                s.split = "train"
        else:
            first = min(members, key=lambda s: s.key)
            side = "val" if held_out(first.key, val_fraction.get(first.source, 0.0), seed) else "train"
            for s in members:
                s.split = side
    kept = [s for i, s in enumerate(samples) if i not in drop]
    return kept, dropped
