"""The audit's outputs for people and other systems: one CSV of all detections, a GeoJSON of the
violations that have a position (for the city's GIS), and a self-contained HTML report.

Everything is rebuilt from the per-photo JSON files the manifest points to, so the outputs always
agree with each other and with what is on disk, whatever order photos were processed in and however
many runs it took. The HTML embeds its pictures (base64 JPEG thumbnails) and its chart (inline SVG):
it opens offline from disk, and stays readable when mailed on its own.
"""

from __future__ import annotations

import base64
import csv
import io
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from jinja2 import Environment, FileSystemLoader, select_autoescape

from models.classes import CLASS_IDS, CLASS_NAMES, DETECTOR_CLASSES, VIOLATIONS
from pipeline.annotate import PALETTE

if TYPE_CHECKING:
    from pipeline.audit import Audit, AuditData

TEMPLATES = Path(__file__).resolve().parent / "templates"
CSV_COLUMNS = (
    "file",
    "sha256",
    "taken_at",
    "time_source",
    "lat",
    "lon",
    "width",
    "height",
    "tiled",
    "index",
    "class",
    "class_zh",
    "score",
    "x1",
    "y1",
    "x2",
    "y2",
    "violation",
    "violation_zh",
    "case_key",
)
CLASS_ZH = {c.name: c.zh for c in DETECTOR_CLASSES}


# ---------------------------------------------------------------------------------------- CSV, GeoJSON


def detections_csv(data: AuditData) -> str:
    """One row per detection of every processed photo; UTF-8 with BOM so spreadsheet apps show Chinese."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for photo in data.photos:
        loc = photo.get("location") or {}
        keys = {v["detection"]: v["key"] for v in photo["violations"]}
        for i, det in enumerate(photo["detections"]):
            kind = det.get("violation")
            writer.writerow(
                [
                    photo["file"],
                    photo["sha256"],
                    photo["taken_at"],
                    photo["time_source"],
                    loc.get("lat", ""),
                    loc.get("lon", ""),
                    photo["width"],
                    photo["height"],
                    int(photo["tiled"]),
                    i,
                    det["class"],
                    CLASS_ZH[det["class"]],
                    det["score"],
                    *det["box"],
                    kind or "",
                    VIOLATIONS[kind].zh if kind else "",
                    keys.get(i, ""),
                ]
            )
    return "\ufeff" + buf.getvalue()


def violations_geojson(data: AuditData) -> dict[str, Any]:
    """RFC 7946 FeatureCollection: one Point per violation in a photo with a GPS position."""
    features = []
    for photo in data.photos:
        loc = photo.get("location")
        if not loc:
            continue
        for v in photo["violations"]:
            features.append(
                {
                    "type": "Feature",
                    "geometry": {"type": "Point", "coordinates": [loc["lon"], loc["lat"]]},
                    "properties": {
                        "key": v["key"],
                        "violation": v["type"],
                        "violation_zh": VIOLATIONS[v["type"]].zh,
                        "class": v["class"],
                        "score": v["score"],
                        "box": v["box"],
                        "file": photo["file"],
                        "sha256": photo["sha256"],
                        "taken_at": photo["taken_at"],
                        "time_source": photo["time_source"],
                        "model_version": photo["model_version"],
                    },
                }
            )
    return {"type": "FeatureCollection", "features": features}


# ------------------------------------------------------------------------------------------------ HTML


def hex_color(name: str) -> str:
    """The annotation colour of a detector class as #rrggbb (PALETTE is BGR)."""
    b, g, r = PALETTE[CLASS_IDS[name]]
    return f"#{r:02x}{g:02x}{b:02x}"


def data_uri(path: Path) -> str:
    """A JPEG file as a data: URI; empty when it is missing (the report still opens)."""
    try:
        return "data:image/jpeg;base64," + base64.b64encode(path.read_bytes()).decode()
    except OSError:
        return ""


def bar_chart(rows: list[dict[str, Any]], width: int = 560) -> str:
    """Inline SVG horizontal bar chart of violations per type (Chinese + English labels, counts)."""
    bar_h, gap, label_w, top = 26, 12, 190, 8
    peak = max([r["count"] for r in rows] + [1])
    span = width - label_w - 60
    height = top * 2 + len(rows) * (bar_h + gap) - gap
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" width="100%" '
        f'role="img" aria-label="violations per type" class="chart">'
    ]
    for i, r in enumerate(rows):
        y = top + i * (bar_h + gap)
        w = 0 if not r["count"] else max(3, round(span * r["count"] / peak))
        opacity = "1" if r["judged"] else "0.35"
        parts.append(
            f'<text x="{label_w - 10}" y="{y + bar_h * 0.68:.0f}" text-anchor="end" class="lbl">'
            f"{r['zh']} <tspan class=en>{r['en']}</tspan></text>"
            f'<rect x="{label_w}" y="{y}" width="{span}" height="{bar_h}" rx="4" class="track"/>'
            f'<rect x="{label_w}" y="{y}" width="{w}" height="{bar_h}" rx="4" fill="{r["color"]}" '
            f'fill-opacity="{opacity}"><title>{r["en"]}: {r["count"]}</title></rect>'
            f'<text x="{label_w + w + 8}" y="{y + bar_h * 0.68:.0f}" class="num">'
            f"{r['count'] if r['judged'] else 'not judged'}</text>"
        )
    parts.append("</svg>")
    return "".join(parts)


def render_html(audit: Audit, data: AuditData) -> str:
    """The report page: summary with chart, photos with violations, all violations, unreadable files."""
    parking_judged = audit.config.parking_anywhere
    counts: Counter[str] = Counter()
    photos_with: Counter[str] = Counter()
    best: dict[str, float] = {}
    class_counts: Counter[str] = Counter()
    rows, cards, clean = [], [], []
    for photo in data.photos:
        class_counts.update(d["class"] for d in photo["detections"])
        anchor = f"p-{photo['sha256'][:12]}"
        if not photo["violations"]:
            summary = Counter(d["class"] for d in photo["detections"])
            clean.append(
                {
                    "photo": photo,
                    "thumb": data_uri(audit.out / photo["thumbnail"]),
                    "summary": ", ".join(f"{n} ×{c}" for n, c in summary.most_common()) or "nothing detected",
                }
            )
            continue
        vios = []
        for v in sorted(photo["violations"], key=lambda v: -v["score"]):
            counts[v["type"]] += 1
            best[v["type"]] = max(best.get(v["type"], 0.0), v["score"])
            status = "filed" if v["key"] in data.filed else "failed" if v["key"] in data.failed else ""
            row = {
                **v,
                "zh": VIOLATIONS[v["type"]].zh,
                "order": list(VIOLATIONS).index(v["type"]),
                "color": hex_color(v["class"]),
                "crop": data_uri(audit.out / v["crop"]) if v.get("crop") else "",
                "photo": photo,
                "anchor": anchor,
                "status": status,
                "error": data.failed.get(v["key"], ""),
            }
            vios.append(row)
            rows.append(row)
        groups = []
        for kind in VIOLATIONS:
            of_kind = [v for v in vios if v["type"] == kind]
            if not of_kind:
                continue
            photos_with[kind] += 1
            statuses = {v["status"] for v in of_kind}
            groups.append(
                {
                    "type": kind,
                    "zh": VIOLATIONS[kind].zh,
                    "color": of_kind[0]["color"],
                    "best": of_kind[0]["score"],
                    "what": ", ".join(f"{n} ×{c}" for n, c in Counter(v["class"] for v in of_kind).most_common()),
                    "status": "failed" if "failed" in statuses else "filed" if statuses == {"filed"} else "",
                }
            )
        cards.append(
            {
                "photo": photo,
                "anchor": anchor,
                "thumb": data_uri(audit.out / photo["thumbnail"]),
                "violations": vios,
                "groups": groups,
                "types": [g["type"] for g in groups],
                "top": vios[0],
            }
        )
    summary_rows = [
        {
            "type": name,
            "zh": vt.zh,
            "en": name.replace("_", " "),
            "description": vt.description,
            "count": counts[name],
            "photos": photos_with[name],
            "best": best.get(name),
            "color": hex_color(vt.sources[0]),
            "judged": name != "illegal_parking" or parking_judged,
            "sources": ", ".join(vt.sources),
        }
        for name, vt in VIOLATIONS.items()
    ]
    times = sorted(datetime.fromisoformat(p["taken_at"]) for p in data.photos)
    card = audit.detector.ref.card
    context = {
        "title": "巡查照片审核报告 · Patrol photo audit",
        "generated": datetime.now(audit.tz).strftime("%Y-%m-%d %H:%M %Z"),  # the zone photo times are shown in
        "out": str(audit.out),
        "model": audit.detector.version,
        "card": card,
        "knows": ", ".join(card.product_classes()),
        "settings": audit.settings,
        "parking_judged": parking_judged,
        "kpi": {
            "photos": len(data.photos),
            "with_violations": len(cards),
            "violations": len(rows),
            "unreadable": len(data.errors),
            "located": sum(1 for r in rows if r["photo"].get("location")),
            "copies": len(data.copies),
            "tiled": sum(1 for p in data.photos if p["tiled"]),
        },
        "time_range": (times[0].strftime("%Y-%m-%d %H:%M"), times[-1].strftime("%Y-%m-%d %H:%M")) if times else None,
        "time_sources": Counter(p["time_source"] for p in data.photos).most_common(),
        "chart": bar_chart(summary_rows),
        "summary": summary_rows,
        "classes": [
            {"name": n, "zh": CLASS_ZH[n], "count": class_counts[n], "color": hex_color(n)}
            for n in CLASS_NAMES
            if class_counts[n]
        ],
        "cards": sorted(cards, key=lambda c: -c["top"]["score"]),
        "rows": sorted(rows, key=lambda r: -r["score"]),
        "errors": data.errors,
        "copies": data.copies,
        "clean": clean,
        "filing": {
            "target": data.target,
            "filed": sum(1 for r in rows if r["status"] == "filed"),
            "failed": sum(1 for r in rows if r["status"] == "failed"),
        },
        "violation_types": [(n, v.zh) for n, v in VIOLATIONS.items()],
    }
    env = Environment(loader=FileSystemLoader(TEMPLATES), autoescape=select_autoescape(["html"]))
    env.filters["pct"] = lambda x: f"{100 * x:.0f}%"
    return env.get_template("audit_report.html").render(**context)
