"""Photos per second of `streetwatch audit` against a plain loop over ultralytics predict, same model.

The photos are real and at their real size: the bundled samples (``pipeline/samples/photos``) plus,
when present, ``../shared/data/patrol-photos``. The reference is what one would write without
streetwatch: ``for photo in photos: YOLO(model.pt).predict(photo)`` with torch given every core. The
audit is timed end to end as an inspector runs it — decoding, detection, the per-photo JSON,
thumbnails, evidence crops, CSV, GeoJSON and HTML report — into a fresh folder, with the fp32 ONNX
export of the same weights (and the int8 one, for information); then a rerun on the same folder
(nothing new: resume) is timed too. The load average is printed: other jobs on the machine lower
the ratio, since the audit keeps every core busy and the reference mostly one. Each engine runs
``--repeats`` times, alternating; medians are reported. Needs the train extra (for the reference).

    python benchmarks/audit.py [--model default] [--repeats 3] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))


def shared_photos() -> Path | None:
    """``shared/data/patrol-photos`` beside the checkout or a folder above it (worktrees nest deeper)."""
    for parent in REPO.parents:
        folder = parent / "shared" / "data" / "patrol-photos"
        if folder.is_dir():
            return folder
    return None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="default")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, default=None, help="audit decoding threads (default: the CLI's)")
    parser.add_argument("--batch", type=int, default=None, help="photos per detector call (default: the CLI's)")
    parser.add_argument("--photos", nargs="*", help="photo folders (default: bundled samples + shared patrol photos)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", str(os.cpu_count()))  # ultralytics would pin torch to 1 thread

    from latency import machine

    from models.registry import resolve
    from pipeline.audit import Audit, AuditConfig
    from pipeline.decode import iter_image_paths, read_image
    from pipeline.detect import Detector, TileConfig
    from training import ultra

    folders = args.photos or [str(REPO / "pipeline" / "samples" / "photos")]
    if not args.photos and (shared := shared_photos()) is not None:
        folders.append(str(shared))
    photos = iter_image_paths(folders)
    ref = resolve(args.model)
    kept = [i for i, c in enumerate(ref.card.class_map) if c is not None]
    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    yolo = ultra.yolo(ref.file("pt"))
    tile = TileConfig(enabled=True, min_side=1920)  # the CLI's defaults: one single-threaded call per core
    detectors = {v: Detector(model=args.model, variant=v, threads=1, tile=tile) for v in ref.card.files if v != "pt"}
    for p in photos[:2]:  # warm-up, every engine
        yolo.predict(str(p), imgsz=ref.card.imgsz, classes=kept, verbose=False)
        for detector in detectors.values():
            detector.detect(read_image(p))

    cpu: dict[str, list[float]] = {}

    def reference() -> float:
        c = time.process_time()
        t = time.perf_counter()
        for p in photos:
            yolo.predict(str(p), imgsz=ref.card.imgsz, classes=kept, verbose=False)
        cpu.setdefault("ultralytics_pt", []).append(time.process_time() - c)
        return time.perf_counter() - t

    workers = args.workers or min(4, os.cpu_count() or 1)
    scratch = Path(tempfile.mkdtemp(prefix="audit-bench-"))

    def audit(variant: str = "fp32", rerun: bool = False) -> float:
        out = scratch / variant
        if not rerun:
            shutil.rmtree(out, ignore_errors=True)
        config = AuditConfig(out=out, workers=workers, **({"batch": args.batch} if args.batch else {}))
        run = Audit(detectors[variant], config, progress=False)
        c = time.process_time()
        t = time.perf_counter()
        result = run.run(photos)
        seconds = time.perf_counter() - t
        name = "streetwatch_audit" + ("_rerun" if rerun else "" if variant == "fp32" else f"_{variant}")
        cpu.setdefault(name, []).append(time.process_time() - c)
        run.close()
        assert result.processed + result.skipped + result.duplicates + result.unreadable == len(photos)
        assert (result.skipped == len(photos)) if rerun else (result.processed > 0)
        return seconds

    times: dict[str, list[float]] = {"ultralytics_pt": [], "streetwatch_audit": [], "streetwatch_audit_rerun": []}
    if "int8" in detectors:
        times["streetwatch_audit_int8"] = []
    try:
        for _ in range(args.repeats):  # alternating, so that a busy moment hits every engine alike
            times["ultralytics_pt"].append(reference())
            times["streetwatch_audit"].append(audit())
            times["streetwatch_audit_rerun"].append(audit(rerun=True))
            if "int8" in detectors:
                times["streetwatch_audit_int8"].append(audit("int8"))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    rates = {name: len(photos) / statistics.median(ts) for name, ts in times.items()}
    base = rates["ultralytics_pt"]
    sizes = [read_image(p).shape[:2] for p in photos]
    report = {
        "date": date.today().isoformat(),
        "machine": machine(),
        "model": f"{ref.card.name}@{ref.card.version}",
        "photos": len(photos),
        "folders": folders,
        "long_side_px": [min(max(s) for s in sizes), max(max(s) for s in sizes)],
        "workers": workers,
        "repeats": args.repeats,
        "load_average": round(os.getloadavg()[0], 2),
        "results": [
            {
                "name": name,
                "seconds_median": round(statistics.median(times[name]), 3),
                "cpu_ms_per_photo": round(1000 * statistics.median(cpu[name]) / len(photos), 1),
                "photos_per_s": round(rate, 2),
                "speedup_vs_ultralytics_pt": round(rate / base, 2),
            }
            for name, rate in rates.items()
        ],
    }
    if args.json:
        print(json.dumps(report))
    else:
        print(
            f"{report['machine']}\nmodel {report['model']}, {len(photos)} real photos "
            f"(long side {report['long_side_px'][0]}-{report['long_side_px'][1]} px), median of {args.repeats} runs"
        )
        for r in report["results"]:
            print(
                f"  {r['name']:24} {r['photos_per_s']:8.2f} photos/s  {r['seconds_median']:7.2f} s  "
                f"{r['speedup_vs_ultralytics_pt']:6.2f}x   {r['cpu_ms_per_photo']:6.1f} CPU-ms/photo"
            )
        ratio = rates["streetwatch_audit"] / base
        print(
            f"audit (fp32, the same weights) vs plain ultralytics loop: {ratio:.2f}x "
            f"({'meets' if ratio >= 2 else 'MISSES'} the 2x target); load average {os.getloadavg()[0]:.1f} "
            f"on {os.cpu_count()} cores"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
