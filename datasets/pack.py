"""A size-bounded copy of a built dataset, for moving it to a remote GPU machine with a transfer limit.

Images are downscaled to a maximum side and re-encoded (WebP or JPEG); labels are copied unchanged
(YOLO coordinates are normalised, so resizing keeps them valid); ``data.yaml``, the per-source lists
and their yaml files are rewritten for the new file names. When the copy would exceed the byte
budget, the quality and then the size are lowered, estimated on a sample first, until it fits.
"""

from __future__ import annotations

import json
import math
import shutil
import sys
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import yaml
from tqdm import tqdm

from datasets.manifest import MANIFEST, load_manifest, verify_manifest
from datasets.samples import SPLITS
from pipeline.decode import IMAGE_SUFFIXES, read_image
from pipeline.files import replace_folder, staged_folder

PACK_INFO = "pack.json"
#: the source dataset's manifest, copied into the pack
SOURCE_MANIFEST = f"source-{MANIFEST}"
#: the smallest longest side worth packing (the budget ladder lowers sizes to 256 px)
MIN_SIDE = 32


@dataclass
class PackResult:
    """What packing did."""

    out: Path
    max_side: int
    quality: int
    format: str
    images: dict[str, int]
    bytes_total: int
    budget_bytes: int | None
    tried: list[dict] = field(default_factory=list)

    def summary(self) -> str:
        """One paragraph for the terminal."""
        mb = self.bytes_total / 1e6
        budget = f" (budget {self.budget_bytes / 1e6:.1f} MB)" if self.budget_bytes else ""
        imgs = ", ".join(f"{k} {v}" for k, v in self.images.items())
        return (
            f"packed {imgs} images into {self.out}: {mb:.1f} MB{budget}; "
            f"{self.format} quality {self.quality}, max side {self.max_side} px"
        )


def encode(image: np.ndarray, max_side: int, fmt: str, quality: int) -> bytes:
    """Downscale (never up) to ``max_side`` and encode as WebP or JPEG."""
    h, w = image.shape[:2]
    scale = max_side / max(h, w)
    if scale < 1:
        image = cv2.resize(image, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
    flag = cv2.IMWRITE_WEBP_QUALITY if fmt == "webp" else cv2.IMWRITE_JPEG_QUALITY
    ok, buf = cv2.imencode(f".{fmt if fmt == 'webp' else 'jpg'}", image, [flag, int(quality)])
    if not ok:
        raise ValueError(f"cannot encode image as {fmt}")
    return buf.tobytes()


def settings_ladder(max_side: int, quality: int, min_side: int = 256, min_quality: int = 35) -> list[tuple[int, int]]:
    """Settings from best to smallest: lower the quality first (to ``min_quality``), then the size."""
    sides = list(range(max_side, min_side - 1, -64)) or [max_side]
    qualities = sorted({quality, *range(quality, min_quality - 1, -8), min_quality}, reverse=True)
    return [(s, q) for s in sides for q in qualities if q <= quality]


def _select(root: Path, subset: Sequence[str], sources: Sequence[str] | None) -> list[tuple[str, Path]]:
    out = []
    for split in subset:
        for p in sorted((root / "images" / split).glob("*")):
            if p.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            if sources and p.name.split("__", 1)[0] not in sources:
                continue
            out.append((split, p))
    return out


def pack(
    root: Path,
    out: Path,
    max_side: int = 512,
    fmt: str = "webp",
    quality: int = 72,
    subset: Sequence[str] = SPLITS,
    sources: Sequence[str] | None = None,
    budget_mb: float | None = 40.0,
    workers: int = 2,
    sample_size: int = 120,
) -> PackResult:
    """Write a packed copy of the dataset at ``root`` into ``out`` (see the module docstring)."""
    if fmt not in ("webp", "jpeg"):
        raise ValueError(f"format must be webp or jpeg, not {fmt!r}")
    if max_side < MIN_SIDE:
        raise ValueError(f"--max-side must be at least {MIN_SIDE} px, not {max_side}")
    if not 1 <= quality <= 100:
        raise ValueError(f"--quality must be 1..100 (the encoders' quality scale), not {quality}")
    if budget_mb is not None and not (math.isfinite(budget_mb) and budget_mb >= 0):
        raise ValueError(f"--budget-mb must be a positive number of MB (0: no budget), not {budget_mb}")
    if not (root / "data.yaml").is_file():
        raise FileNotFoundError(f"{root}: not a dataset folder (no data.yaml)")
    if (root / MANIFEST).is_file():  # the pack names the source by its manifest: it must still be that dataset
        problems = verify_manifest(root)
        if problems:
            raise ValueError(
                f"{root}: the dataset no longer matches its {MANIFEST} ({len(problems)} file(s) differ: "
                f"{'; '.join(problems[:3])}{'; ...' if len(problems) > 3 else ''}); rebuild it with "
                "`streetwatch data build`, or see `streetwatch data verify`"
            )
    for split in subset:
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; use {', '.join(SPLITS)}")
    items = _select(root, subset, sources)
    if not items:
        raise ValueError(f"{root}: no images in {', '.join(subset)}" + (f" of {', '.join(sources)}" if sources else ""))
    if out.resolve() == root.resolve():
        raise ValueError("the packed copy needs its own folder")
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{out}: exists and is not a folder; choose a new --out")
    if out.exists() and any(out.iterdir()) and not (out / PACK_INFO).is_file():
        raise FileExistsError(f"{out}: folder is not empty and is no earlier pack; choose a new --out")
    with staged_folder(out) as work:  # a failed pack leaves nothing behind (nor touches an earlier one)
        result = _pack(root, work, items, max_side, fmt, quality, subset, sources, budget_mb, workers, sample_size)
        replace_folder(work, out)  # the earlier pack, replaced only now that the new one is complete
    result.out = out
    return result


def _pack(
    root: Path,
    out: Path,
    items: list[tuple[str, Path]],
    max_side: int,
    fmt: str,
    quality: int,
    subset: Sequence[str],
    sources: Sequence[str] | None,
    budget_mb: float | None,
    workers: int,
    sample_size: int,
) -> PackResult:
    """Write the packed copy into ``out`` (a fresh folder), lowering the settings until it fits the budget.

    The files besides the images (labels, lists, yaml files, manifest copy) do not depend on the settings:
    they are written first and measured, so only the images and ``pack.json`` are estimated."""
    budget = int(budget_mb * 1e6) if budget_mb else None
    suffix = ".webp" if fmt == "webp" else ".jpg"
    fixed = _write_fixed(root, out, items, suffix)
    ladder = settings_ladder(max_side, quality) if budget else [(max_side, quality)]
    images = {sp: sum(1 for s, _ in items if s == sp) for sp in subset}
    tried: list[dict] = []
    source: dict[str, object] = {}
    if (root / MANIFEST).is_file():
        m = load_manifest(root)
        source = {"source_fingerprint": m.get("fingerprint"), "source_name": m.get("name")}

    def info_text(side: int, q: int) -> str:
        info = {
            "source_dataset": str(root),
            "format": fmt,
            "quality": q,
            "max_side": side,
            "subset": list(subset),
            "sources": list(sources) if sources else None,
            "images": images,
            "budget_mb": budget_mb,
            "tried": tried,
            **source,
        }
        return json.dumps(info, indent=1)

    start = 0
    if budget and len(ladder) > 1:  # estimate on a sample; binary search for the best setting that fits
        rng = np.random.default_rng(0)
        pick = [items[i][1] for i in rng.choice(len(items), min(sample_size, len(items)), replace=False)]
        sample_images = [read_image(p) for p in pick]
        # pack.json grows by one entry (< 128 bytes) per estimate and write below: room for all of them
        entries = 3 + math.ceil(math.log2(len(ladder)))
        overhead = fixed + len(info_text(max_side, quality).encode()) + 128 * entries
        # a sample of every image estimates exactly (encoding is deterministic); a part of them, within 5 %
        target = overhead + (budget - overhead) * (1.0 if len(pick) == len(items) else 0.95)
        estimates: dict[int, float] = {}

        def estimate(k: int) -> float:
            if k not in estimates:
                side, q = ladder[k]
                est = np.mean([len(encode(im, side, fmt, q)) for im in sample_images]) * len(items) + overhead
                estimates[k] = est
                tried.append({"max_side": side, "quality": q, "estimated_mb": round(est / 1e6, 2)})
            return estimates[k]

        if estimate(0) <= target:
            start = 0
        elif estimate(len(ladder) - 1) > target:
            start = len(ladder) - 1
        else:  # estimate(lo) > target >= estimate(hi)
            lo, hi = 0, len(ladder) - 1
            while hi - lo > 1:
                mid = (lo + hi) // 2
                lo, hi = (mid, hi) if estimate(mid) > target else (lo, mid)
            start = hi
    for side, q in ladder[start:]:
        written = fixed + _write_images(out, items, side, fmt, q, suffix, workers)
        tried.append({"max_side": side, "quality": q, "actual_mb": round(written / 1e6, 2)})
        total = written + len(info_text(side, q).encode())  # with pack.json as it will be written
        if budget is None or total <= budget:
            break
        print(f"pack: {total / 1e6:.1f} MB is over the budget; trying smaller", file=sys.stderr)
    else:
        raise ValueError(
            f"cannot fit {len(items)} images into {budget_mb} MB even at {side} px quality {q}; "
            "pack a subset (--subset / --sources) or raise --budget-mb"
        )
    (out / PACK_INFO).write_text(info_text(side, q))
    total = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    return PackResult(out, side, q, fmt, images, total, budget, tried)


def _write_fixed(root: Path, out: Path, items: list[tuple[str, Path]], suffix: str) -> int:
    """Write what does not depend on the image settings (labels, lists, yaml files, pseudo.json, the source
    manifest) into ``out``; return the bytes of all files written."""
    splits = {sp for sp, _ in items}
    for split in splits:
        (out / "labels" / split).mkdir(parents=True, exist_ok=True)
    for split, path in items:
        label = root / "labels" / split / f"{path.stem}.txt"
        dest = out / "labels" / split / f"{path.stem}.txt"
        if label.is_file():
            shutil.copyfile(label, dest)
        else:
            dest.write_text("")
    kept = {f"./images/{sp}/{p.name}": f"./images/{sp}/{p.stem}{suffix}" for sp, p in items}
    for lst in sorted(root.glob("*.txt")):
        lines = [kept[x] for x in lst.read_text().split() if x in kept]
        if lines:
            (out / lst.name).write_text("\n".join(lines) + "\n")
    for yml in sorted(root.glob("*.yaml")):
        doc = yaml.safe_load(yml.read_text())
        if yml.name == "data.yaml":
            for sp in SPLITS:  # a split left out points at what is there, so the yaml stays loadable
                if sp not in splits:
                    doc[sp] = f"images/{next(iter(splits))}"
        elif not all((out / str(doc.get(k))).is_file() for k in ("train", "val")):
            continue
        (out / yml.name).write_text(yaml.safe_dump(doc, sort_keys=False))
    if (root / "pseudo.json").is_file():
        pseudo = json.loads((root / "pseudo.json").read_text())
        keep = {f"labels/{sp}/{p.stem}.txt" for sp, p in items}
        (out / "pseudo.json").write_text(json.dumps({k: v for k, v in pseudo.items() if k in keep}))
    if (root / MANIFEST).is_file():
        shutil.copyfile(root / MANIFEST, out / SOURCE_MANIFEST)
    return sum(p.stat().st_size for p in out.rglob("*") if p.is_file())


def _write_images(
    out: Path, items: list[tuple[str, Path]], side: int, fmt: str, q: int, suffix: str, workers: int
) -> int:
    """(Re)write every image under ``out/images`` at one setting; return their bytes."""
    shutil.rmtree(out / "images", ignore_errors=True)
    for split in {sp for sp, _ in items}:
        (out / "images" / split).mkdir(parents=True, exist_ok=True)

    def one(item: tuple[str, Path]) -> int:
        split, path = item
        data = encode(read_image(path), side, fmt, q)
        (out / "images" / split / f"{path.stem}{suffix}").write_bytes(data)
        return len(data)

    with ThreadPoolExecutor(max_workers=workers) as pool:
        sizes = list(
            tqdm(
                pool.map(one, items),
                total=len(items),
                desc=f"pack {side}px q{q}",
                unit="img",
                file=sys.stderr,
                disable=len(items) < 50 or None,
            )
        )
    return sum(sizes)
