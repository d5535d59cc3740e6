"""Train/val splits that never put near-duplicates on both sides.

Duplicate pairs (exact, pHash, same scene) join images into groups (union-find). A group takes one
side: if a source gives any member as ``val``, the group is val, and members given as train are
dropped (or, with ``leak_policy="move"``, moved to val) so a source's own validation set stays what it
was; a group with a given ``train`` member is train; other groups are held out deterministically and
stratified by their rarest class (``val_fraction`` of each source's images, groups taken in the order
of a hash of their first key), so rebuilding gives the same split.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Literal

from datasets.checks import DuplicatePair
from datasets.dedup import UnionFind
from datasets.samples import Sample


def _rank(key: str, seed: int) -> float:
    """A deterministic pseudo-random number in [0, 1) for ``key``."""
    digest = hashlib.sha256(f"{seed}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def held_out(key: str, fraction: float, seed: int = 0) -> bool:
    """Deterministic coin for ``key``: True for about ``fraction`` of all keys."""
    return _rank(key, seed) < fraction


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
    free: list[list[Sample]] = []
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
            free.append(members)
    _hold_out(free, val_fraction, seed)
    kept = [s for i, s in enumerate(samples) if i not in drop]
    return kept, dropped


def _hold_out(groups: list[list[Sample]], val_fraction: Mapping[str, float], seed: int) -> None:
    """Hold out groups without a given split, stratified: per source, groups are binned by the rarest class
    they contain (so a rare class such as the facades' window ads gets its share of val), and in each bin
    the groups whose key hashes lowest make up the source's ``val_fraction``."""
    by_source: dict[str, list[list[Sample]]] = {}
    for g in groups:
        by_source.setdefault(min(g, key=lambda s: s.key).source, []).append(g)
    for source, source_groups in by_source.items():
        counts = Counter(int(c) for g in source_groups for s in g for c in s.boxes[:, 0])
        strata: dict[int, list[list[Sample]]] = {}
        for g in source_groups:
            present = {int(c) for s in g for c in s.boxes[:, 0]}
            strata.setdefault(min(present, key=lambda c: (counts[c], c)) if present else -1, []).append(g)
        fraction = val_fraction.get(source, 0.0)
        for stratum in strata.values():
            stratum.sort(key=lambda g: _rank(min(s.key for s in g), seed))
            n_val = round(fraction * sum(len(g) for g in stratum))
            taken = 0
            for g in stratum:
                side = "val" if taken < n_val else "train"
                taken += len(g) if side == "val" else 0
                for s in g:
                    s.split = side
