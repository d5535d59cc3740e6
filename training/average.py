"""Weight averaging of checkpoints that were fine-tuned one from another (WiSE-FT, "model soups").

A fine-tune moves its parent's weights towards the new training data; the average of parent and child
often keeps the child's gains there while holding on to what the parent did better elsewhere, which shows
on images unlike the training data (robustness under distribution shift; Wortsman et al., 2022). It
needs checkpoints of one architecture and class list, and ones that lie in one basin, i.e. one fine-tuned
from the other. The result is an ultralytics checkpoint in a run folder, with a run record naming its
inputs, so ``streetwatch export`` and the model card say where it came from.
"""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from models.registry import ModelError, file_sha256, now_iso, resolve
from pipeline.files import atomic_write
from training.train import RUN_NAME, resolve_base, run_record


class AverageError(ValueError):
    """Checkpoints that cannot be averaged; the message names them."""


def _record(ref: str, path: Path) -> dict[str, Any]:
    """What is known of how a checkpoint was trained: its run record, or a registry model's card."""
    record = run_record(path)
    if record:
        return record
    try:
        card = resolve(ref).card
    except ModelError:
        return {}
    return {"model": f"{card.name}@{card.version}", **card.training}


def average_checkpoints(models: Sequence[str], out: Path, weights: Sequence[float] | None = None) -> Path:
    """Average the weights of ``models`` (.pt paths or registry names) into ``out/weights/best.pt``; returns
    that path. ``weights`` default to equal shares and are normalised to sum to 1."""
    import torch

    from training import ultra

    if len(models) < 2:
        raise AverageError("averaging needs at least two checkpoints")
    shares = [1.0] * len(models) if weights is None else [float(w) for w in weights]
    if len(shares) != len(models) or any(w <= 0 for w in shares):
        raise AverageError(f"weights must be {len(models)} positive numbers, got {list(weights or [])}")
    shares = [w / sum(shares) for w in shares]
    paths = [resolve_base(m) for m in models]
    ultra.setup()
    ckpts = [torch.load(p, map_location="cpu", weights_only=False) for p in paths]
    nets = [c.get("ema") or c["model"] for c in ckpts]
    names, states = nets[0].names, [n.state_dict() for n in nets]
    shapes = {k: tuple(v.shape) for k, v in states[0].items()}
    for path, net, state in zip(paths[1:], nets[1:], states[1:], strict=True):
        if net.names != names:
            raise AverageError(f"{path}: classes {list(net.names.values())} differ from {paths[0]}'s")
        if {k: tuple(v.shape) for k, v in state.items()} != shapes:
            raise AverageError(f"{path}: a different architecture from {paths[0]} (layers or shapes differ)")
    averaged = {}
    for key, last in states[-1].items():
        if last.is_floating_point():
            total = sum(w * s[key].float() for w, s in zip(shares, states, strict=True))
            averaged[key] = total.to(last.dtype)
        else:  # counters such as BatchNorm's num_batches_tracked
            averaged[key] = last
    ckpt = ckpts[-1]
    net = nets[-1]
    net.load_state_dict(averaged)
    ckpt.update({"model": net, "ema": None, "optimizer": None, "updates": None, "date": now_iso()})
    target = out / "weights" / "best.pt"
    buf = io.BytesIO()
    torch.save(ckpt, buf)
    atomic_write(target, buf.getvalue())  # a full disk leaves no truncated checkpoint, and an earlier one stays
    records = [_record(m, p) for m, p in zip(models, paths, strict=True)]
    record = {
        "created": now_iso(),
        "averaged": [
            {"model": m, "path": str(p), "sha256": file_sha256(p), "weight": round(w, 6), "record": r}
            for m, p, w, r in zip(models, paths, shares, records, strict=True)
        ],
        # the training data of the last checkpoint (the fine-tune), for the card's dataset manifest
        "data": next((r["data"] for r in reversed(records) if r.get("data")), None),
        "best": str(target),
    }
    atomic_write(out / RUN_NAME, json.dumps(record, indent=1, ensure_ascii=False) + "\n")
    return target
