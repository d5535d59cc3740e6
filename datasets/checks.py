"""Dataset checks and their report.

:func:`scan_samples` decodes every image once (corrupt files, size, SHA-256, perceptual hash, ORB
features); :func:`check_box_sizes` drops boxes too small to be objects; :func:`find_duplicates` finds
exact, near-duplicate and same-scene pairs. :class:`CheckReport` gathers counts, findings and
duplicates and renders them as a terminal table, a markdown file, an HTML page and plots.
"""

from __future__ import annotations

import html
import json
import sys
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from datasets.dedup import (
    NEAR_DUPLICATE_BITS,
    SCENE_MIN_INLIERS,
    SceneFeatures,
    near_duplicate_pairs,
    phash_pair,
    same_scene_pairs,
    scene_features,
)
from datasets.samples import Issue, Sample, class_counts
from models.classes import CLASS_NAMES
from models.registry import file_sha256
from pipeline.decode import ImageReadError, read_image
from pipeline.files import atomic_write, write_figure, write_image

#: A box narrower or lower than this many pixels is degenerate (dropped).
MIN_BOX_PIXELS = 2.0


def scan_samples(
    samples: Sequence[Sample], features: bool = True, workers: int = 2, desc: str = "scan images"
) -> tuple[list[SceneFeatures | None], list[Issue]]:
    """Decode each image with :func:`pipeline.decode.read_image`: fill ``width``, ``height``, ``sha256``,
    ``phash``; mark unreadable ones (``readable=False``, an ``error`` finding). Returns ORB features per
    sample (``None`` when unreadable or ``features`` is off) and the findings.
    """

    def one(s: Sample) -> tuple[SceneFeatures | None, str | None]:
        try:
            image = read_image(s.image)
        except ImageReadError as exc:
            return None, exc.reason
        s.height, s.width = image.shape[:2]
        s.sha256 = file_sha256(s.image)
        s.phash = phash_pair(image)
        return (scene_features(image) if features else None), None

    issues: list[Issue] = []
    feats: list[SceneFeatures | None] = []
    with ThreadPoolExecutor(max_workers=workers) as pool:
        bar = tqdm(
            pool.map(one, samples),
            total=len(samples),
            desc=desc,
            unit="img",
            file=sys.stderr,
            disable=len(samples) < 50 or None,
        )
        for s, (f, error) in zip(samples, bar, strict=True):
            feats.append(f)
            if error is not None:
                s.readable = False
                issues.append(
                    Issue("error", "corrupt_image", str(s.image), f"unreadable image: {error}", None, s.source)
                )
    return feats, issues


def check_box_sizes(samples: Sequence[Sample], min_pixels: float = MIN_BOX_PIXELS) -> list[Issue]:
    """Drop boxes narrower or lower than ``min_pixels`` in the decoded image (needs :func:`scan_samples`)."""
    issues = []
    for s in samples:
        if not s.readable or not len(s.boxes):
            continue
        wpx, hpx = s.boxes[:, 3] * s.width, s.boxes[:, 4] * s.height
        bad = (wpx < min_pixels) | (hpx < min_pixels)
        for row, w, h in zip(s.boxes[bad], wpx[bad], hpx[bad], strict=True):
            issues.append(
                Issue(
                    "error",
                    "degenerate_box",
                    str(s.image),
                    f"{CLASS_NAMES[int(row[0])]} box of {w:.1f}x{h:.1f} px is too small: dropped",
                    None,
                    s.source,
                )
            )
        s.boxes = s.boxes[~bad]
    return issues


@dataclass(frozen=True)
class DuplicatePair:
    """Two samples (indices into the checked list) that are copies or show the same scene."""

    a: int
    b: int
    kind: str  # exact | near | scene
    score: int  # hamming bits (exact/near) or ORB inliers (scene)


def find_duplicates(
    samples: Sequence[Sample],
    features: Sequence[SceneFeatures | None] | None = None,
    phash_bits: int = NEAR_DUPLICATE_BITS,
    scene_inliers: int = SCENE_MIN_INLIERS,
    seed: int = 0,
) -> list[DuplicatePair]:
    """Exact copies (same SHA-256), near-duplicates (pHash) and, with ``features``, same-scene pairs."""
    readable = [i for i, s in enumerate(samples) if s.readable and s.phash is not None]
    found: dict[tuple[int, int], DuplicatePair] = {}
    by_sha: dict[str, int] = {}
    for i in readable:
        j = by_sha.setdefault(samples[i].sha256, i)
        if j != i:
            found[(j, i)] = DuplicatePair(j, i, "exact", 0)
    if readable:
        hashes = np.stack([samples[i].phash for i in readable])
        for a, b, d in near_duplicate_pairs(hashes, phash_bits):
            pair = (readable[a], readable[b])
            found.setdefault(pair, DuplicatePair(*pair, "near", d))
    if features is not None:
        usable = [i for i in readable if features[i] is not None]
        bar = tqdm(
            total=len(usable), desc="same-scene matching", unit="img", file=sys.stderr, disable=len(usable) < 50 or None
        )
        pairs = same_scene_pairs(
            [features[i] for i in usable], min_inliers=scene_inliers, seed=seed, progress=bar.update
        )
        bar.close()
        for a, b, inl in pairs:
            pair = (usable[a], usable[b])
            found.setdefault(pair, DuplicatePair(*pair, "scene", inl))
    return sorted(found.values(), key=lambda p: (p.a, p.b))


# ---------------------------------------------------------------------------------------------- report


@dataclass
class CheckReport:
    """Everything a person checks before training on a dataset."""

    title: str
    samples: list[Sample]
    issues: list[Issue] = field(default_factory=list)
    duplicates: list[DuplicatePair] = field(default_factory=list)
    dropped: list[tuple[Sample, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    # ---- numbers
    def table(self) -> list[dict]:
        """One row per (source, split): images, boxes (own / pseudo), background images, boxes per class."""
        rows: dict[tuple[str, str], dict] = {}
        for s in self.samples:
            if not s.readable:
                continue
            r = rows.setdefault(
                (s.source, s.split or "-"),
                {
                    "source": s.source,
                    "split": s.split or "-",
                    "images": 0,
                    "boxes": 0,
                    "pseudo": 0,
                    "empty": 0,
                    "classes": Counter(),
                    "pseudo_classes": Counter(),
                },
            )
            r["images"] += 1
            r["boxes"] += len(s.boxes)
            r["pseudo"] += len(s.pseudo)
            r["empty"] += int(len(s.boxes) + len(s.pseudo) == 0)
            r["classes"].update(class_counts(s.boxes))
            r["pseudo_classes"].update(class_counts(s.pseudo))
        return [rows[k] for k in sorted(rows)]

    def issue_counts(self) -> list[tuple[str, str, int]]:
        """``(severity, kind, count)``, errors first."""
        order = {"error": 0, "warning": 1, "info": 2}
        c = Counter((i.severity, i.kind) for i in self.issues)
        return sorted(((s, k, n) for (s, k), n in c.items()), key=lambda t: (order[t[0]], -t[2]))

    def leaks(self) -> list[DuplicatePair]:
        """Duplicate pairs with one image in train and the other in val (must be none in a built dataset)."""
        return [p for p in self.duplicates if {self.samples[p.a].split, self.samples[p.b].split} == {"train", "val"}]

    def box_sizes(self) -> dict[str, np.ndarray]:
        """Per class, ``(N, 2)`` box width and height in pixels (own labels and pseudo-labels)."""
        out: dict[str, list] = {}
        for s in self.samples:
            b = s.all_boxes()
            for c, w, h in zip(b[:, 0].astype(int), b[:, 3] * s.width, b[:, 4] * s.height, strict=True):
                out.setdefault(CLASS_NAMES[c], []).append((w, h))
        return {c: np.array(out[c], np.float32) for c in CLASS_NAMES if c in out}

    # ---- rendering
    def _count_rows(self) -> tuple[list[str], list[list[str]]]:
        classes = [c for c in CLASS_NAMES if any(r["classes"][c] or r["pseudo_classes"][c] for r in self.table())]
        header = ["source", "split", "images", "empty", "boxes", "pseudo", *classes]
        rows = []
        for r in self.table():
            cells = [r["source"], r["split"], str(r["images"]), str(r["empty"]), str(r["boxes"]), str(r["pseudo"])]
            for c in classes:
                own, ps = r["classes"][c], r["pseudo_classes"][c]
                cells.append(f"{own}+{ps}p" if ps else str(own) if own else "")
            rows.append(cells)
        tot = self.table()
        cells = [
            "total",
            "",
            str(sum(r["images"] for r in tot)),
            str(sum(r["empty"] for r in tot)),
            str(sum(r["boxes"] for r in tot)),
            str(sum(r["pseudo"] for r in tot)),
        ]
        for c in classes:
            own = sum(r["classes"][c] for r in tot)
            ps = sum(r["pseudo_classes"][c] for r in tot)
            cells.append(f"{own}+{ps}p" if ps else str(own) if own else "")
        rows.append(cells)
        return header, rows

    def to_text(self, max_issues: int = 15) -> str:
        """The terminal summary: counts table, finding counts, a few findings, duplicates and leaks."""
        header, rows = self._count_rows()
        lines = [self.title, "", _text_table(header, rows), ""]
        unreadable = sum(not s.readable for s in self.samples)
        listed = {str(s.image) for s in self.samples}
        left_out = len({i.file for i in self.issues if i.kind == "corrupt_image"} - listed)  # a build drops them
        counted = [f"{unreadable} unreadable"] if unreadable or not left_out else []
        counted += [f"{left_out} unreadable, not imported"] if left_out else []
        lines.append(f"images: {len(self.samples)} ({'; '.join(counted)}); boxes as own+pseudo ('p')")
        if self.issue_counts():
            lines += [
                "",
                _text_table(["severity", "finding", "count"], [[s, k, str(n)] for s, k, n in self.issue_counts()]),
            ]
            shown = [i for i in self.issues if i.severity != "info"][:max_issues]
            lines += [f"  {i}" for i in shown]
            rest = sum(i.severity != "info" for i in self.issues) - len(shown)
            if rest > 0:
                lines.append(f"  ... and {rest} more (see the report file)")
        kinds = Counter(p.kind for p in self.duplicates)
        lines += [
            "",
            "duplicates: "
            + (", ".join(f"{n} {k}" for k, n in sorted(kinds.items())) or "none")
            + f"; train/val leaks: {len(self.leaks())}",
        ]
        if self.dropped:
            lines.append(f"dropped from the dataset: {len(self.dropped)} images (see the report file)")
        lines += self.notes
        return "\n".join(lines)

    def to_markdown(self, plots: Sequence[str] = ()) -> str:
        """The full report as markdown."""
        header, rows = self._count_rows()
        out = [
            f"# {self.title}",
            "",
            "## Images and boxes",
            "",
            "Boxes per class are the source's own labels, `+Np` pseudo-labels added by the teacher.",
            "",
            _md_table(header, rows),
            "",
        ]
        for p in plots:
            out += [f"![{Path(p).stem}]({p})", ""]
        out += ["## Findings", ""]
        if self.issue_counts():
            out += [
                _md_table(["severity", "finding", "count"], [[s, k, str(n)] for s, k, n in self.issue_counts()]),
                "",
            ]
            out += [f"- `{i}`" for i in self.issues[:500] if i.severity != "info"]
            out += [f"- `{i}`" for i in self.issues[:500] if i.severity == "info"][:50]
        else:
            out.append("No findings.")
        out += ["", "## Duplicates and near-duplicates", ""]
        out.append(f"{len(self.duplicates)} pairs; {len(self.leaks())} straddle train and val.")
        if self.duplicates:
            out += [
                "",
                _md_table(
                    ["image", "split", "image", "split", "kind", "score"],
                    self._duplicate_rows(),
                ),
            ]
        if self.dropped:
            out += ["", "## Dropped", "", _md_table(["image", "why"], [[s.key, why] for s, why in self.dropped])]
        if self.notes:
            out += ["", "## Notes", "", *[f"- {n}" for n in self.notes]]
        return "\n".join(out) + "\n"

    def _duplicate_rows(self) -> list[list[str]]:
        """Rows (image, split, image, split, kind, score) of the first 300 duplicate pairs, for both formats."""
        return [
            [
                self.samples[p.a].key,
                self.samples[p.a].split or "-",
                self.samples[p.b].key,
                self.samples[p.b].split or "-",
                p.kind,
                str(p.score),
            ]
            for p in self.duplicates[:300]
        ]

    def to_html(self, plots: Sequence[str] = ()) -> str:
        """The full report as a standalone HTML page (plots referenced beside it)."""
        header, rows = self._count_rows()
        parts = [
            f"<h1>{html.escape(self.title)}</h1>",
            "<h2>Images and boxes</h2>",
            "<p>Own labels per class; <code>+Np</code>: pseudo-labels added by the teacher.</p>",
            _html_table(header, rows),
        ]
        parts += [f'<p><img src="{html.escape(p)}" style="max-width:100%"></p>' for p in plots]
        parts.append("<h2>Findings</h2>")
        if self.issue_counts():
            parts.append(
                _html_table(["severity", "finding", "count"], [[s, k, str(n)] for s, k, n in self.issue_counts()])
            )
            items = [i for i in self.issues if i.severity != "info"][:500]
            parts.append(
                "<ul>"
                + "".join(f"<li class='{i.severity}'><code>{html.escape(str(i))}</code></li>" for i in items)
                + "</ul>"
            )
        else:
            parts.append("<p>No findings.</p>")
        parts.append(
            f"<h2>Duplicates</h2><p>{len(self.duplicates)} pairs; "
            f"<b>{len(self.leaks())}</b> straddle train and val.</p>"
        )
        if self.duplicates:
            parts.append(
                _html_table(
                    ["image", "split", "image", "split", "kind", "score"],
                    self._duplicate_rows(),
                )
            )
        if self.dropped:
            parts += ["<h2>Dropped</h2>", _html_table(["image", "why"], [[s.key, why] for s, why in self.dropped])]
        if self.notes:
            parts.append("<h2>Notes</h2><ul>" + "".join(f"<li>{html.escape(n)}</li>" for n in self.notes) + "</ul>")
        style = (
            "body{font-family:sans-serif;margin:2em;max-width:1400px}table{border-collapse:collapse;margin:1em 0}"
            "td,th{border:1px solid #ccc;padding:2px 8px;text-align:right}td:first-child{text-align:left}"
            ".error{color:#b00}.warning{color:#a60}"
        )
        return (
            f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(self.title)}</title>"
            f"<style>{style}</style></head><body>{''.join(parts)}</body></html>\n"
        )

    def to_json(self) -> dict:
        """Machine-readable summary."""
        return {
            "title": self.title,
            "counts": [
                {
                    **{k: v for k, v in r.items() if k not in ("classes", "pseudo_classes")},
                    "classes": dict(r["classes"]),
                    "pseudo_classes": dict(r["pseudo_classes"]),
                }
                for r in self.table()
            ],
            "issues": [
                {
                    "severity": i.severity,
                    "kind": i.kind,
                    "file": i.file,
                    "line": i.line,
                    "message": i.message,
                    "source": i.source,
                }
                for i in self.issues
            ],
            "duplicates": [
                {
                    "a": self.samples[p.a].key,
                    "b": self.samples[p.b].key,
                    "kind": p.kind,
                    "score": p.score,
                    "splits": [self.samples[p.a].split, self.samples[p.b].split],
                }
                for p in self.duplicates
            ],
            "leaks": len(self.leaks()),
            "dropped": [{"image": s.key, "why": why} for s, why in self.dropped],
        }

    def write(self, folder: Path, plots: bool = True) -> dict[str, Path]:
        """Write ``report.md``, ``report.html``, ``report.json`` and the plots into ``folder``."""
        folder.mkdir(parents=True, exist_ok=True)
        files: dict[str, Path] = {}
        names: list[str] = []
        if plots:
            sizes = self.box_sizes()
            if sizes:
                files["box_sizes"] = plot_box_sizes(sizes, folder / "box_sizes.png")
                names.append("box_sizes.png")
            dup = [p for p in self.duplicates if p.kind != "exact"]
            if dup:
                leaks = set(self.leaks())
                files["duplicates"] = duplicate_sheet(
                    self.samples, sorted(dup, key=lambda p: p not in leaks)[:24], folder / "duplicates.png"
                )
                names.append("duplicates.png")
        files["md"] = folder / "report.md"
        atomic_write(files["md"], self.to_markdown(names))  # each file complete, or the earlier one
        files["html"] = folder / "report.html"
        atomic_write(files["html"], self.to_html(names))
        files["json"] = folder / "report.json"
        atomic_write(files["json"], json.dumps(self.to_json(), ensure_ascii=False, indent=1))
        return files


def _text_table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        return "  ".join(
            str(c).rjust(w) if k else str(c).ljust(w) for k, (c, w) in enumerate(zip(cells, widths, strict=True))
        )

    return "\n".join([line(header), "  ".join("-" * w for w in widths), *(line(r) for r in rows)])


def _md_table(header: list[str], rows: list[list[str]]) -> str:
    esc = lambda c: str(c).replace("|", "\\|")  # noqa: E731
    return "\n".join(
        [
            "| " + " | ".join(header) + " |",
            "|" + "---|" * len(header),
            *("| " + " | ".join(esc(c) for c in r) + " |" for r in rows),
        ]
    )


def _html_table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


# ------------------------------------------------------------------------------------------------ plots


def plot_box_sizes(sizes: dict[str, np.ndarray], path: Path) -> Path:
    """Box-size distribution per class: histogram of box side (sqrt of area, px) and width vs height."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from pipeline.annotate import PALETTE

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 5))
    allside = np.concatenate([np.sqrt(v[:, 0] * v[:, 1]) for v in sizes.values()])
    bins = np.geomspace(max(allside.min(), 1.0), max(allside.max(), 2.0), 40)
    for name, wh in sizes.items():
        b, g, r = PALETTE[CLASS_NAMES.index(name)]
        colour = (r / 255, g / 255, b / 255)
        side = np.sqrt(wh[:, 0] * wh[:, 1])
        ax1.hist(side, bins=bins, histtype="step", linewidth=1.6, color=colour, label=f"{name} ({len(wh)})")
        ax2.scatter(wh[:, 0], wh[:, 1], s=3, alpha=0.35, color=colour, label=name)
    for t in (16, 32, 96):
        ax1.axvline(t, color="#999", linestyle=":", linewidth=0.8)
    ax1.set(xscale="log", xlabel="box side: sqrt(w*h) in image pixels", ylabel="boxes", title="box sizes")
    ax1.legend(fontsize=8)
    ax2.set(xscale="log", yscale="log", xlabel="width px", ylabel="height px", title="box width vs height")
    fig.tight_layout()
    write_figure(path, fig, dpi=90)  # a full disk leaves no truncated picture
    plt.close(fig)
    return path


def duplicate_sheet(samples: Sequence[Sample], pairs: Sequence[DuplicatePair], path: Path, side: int = 180) -> Path:
    """A contact sheet of duplicate pairs side by side, captioned with kind, score and splits."""
    tiles = []
    for p in pairs:
        ims = []
        for i in (p.a, p.b):
            try:
                im = read_image(samples[i].image)
            except ImageReadError:
                im = np.zeros((side, side, 3), np.uint8)
            ims.append(cv2.resize(im, (side, side), interpolation=cv2.INTER_AREA))
        tile = np.hstack([ims[0], np.full((side, 4, 3), 255, np.uint8), ims[1]])
        leak = {samples[p.a].split, samples[p.b].split} == {"train", "val"}
        text = f"{p.kind} {p.score} {samples[p.a].split or '-'}/{samples[p.b].split or '-'}"
        cv2.rectangle(tile, (0, 0), (tile.shape[1], 18), (0, 0, 180) if leak else (40, 40, 40), -1)
        cv2.putText(tile, text, (4, 13), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 255), 1, cv2.LINE_AA)
        tiles.append(tile)
    return save_sheet(tiles, path, cols=4)


def save_sheet(tiles: Sequence[np.ndarray], path: Path, cols: int = 4, gap: int = 6) -> Path:
    """Lay equally sized tiles out in a grid and write it (PNG or JPEG by suffix)."""
    if not tiles:
        raise ValueError("no tiles to lay out")
    h = max(t.shape[0] for t in tiles)
    w = max(t.shape[1] for t in tiles)
    rows = (len(tiles) + cols - 1) // cols
    sheet = np.full((rows * (h + gap) + gap, cols * (w + gap) + gap, 3), 255, np.uint8)
    for k, t in enumerate(tiles):
        y, x = gap + (k // cols) * (h + gap), gap + (k % cols) * (w + gap)
        sheet[y : y + t.shape[0], x : x + t.shape[1]] = t
    path.parent.mkdir(parents=True, exist_ok=True)
    write_image(path, sheet)
    return path
