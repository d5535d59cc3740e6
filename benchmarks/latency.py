"""End-to-end latency per image (file decode to final detections) at 640 px, all engines in one run.

Engines, on the same model: ultralytics YOLO(.pt).predict, ultralytics YOLO(.onnx).predict,
streetwatch fp32 ONNX, streetwatch int8 ONNX (when the model has one). Median over >= 30 runs after
warm-up; speed-ups are against ultralytics .pt measured in this same run. Needs the train extra.

    python benchmarks/latency.py [--model default] [--runs 32] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def machine() -> str:
    """CPU model and core count of this machine."""
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} cores, {platform.system()} {platform.machine()}"


def measure(fn: Callable[[Path], object], photos: list[Path], runs: int, warmup: int = 3) -> float:
    """Median milliseconds of ``fn(photo)`` over ``runs`` calls cycling through the photos."""
    for i in range(warmup):
        fn(photos[i % len(photos)])
    times = []
    for i in range(runs):
        t = time.perf_counter()
        fn(photos[i % len(photos)])
        times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="default")
    parser.add_argument("--runs", type=int, default=32)
    parser.add_argument("--imgsz", type=int, default=640)
    parser.add_argument("--photos", default=str(REPO / "pipeline" / "samples" / "photos"))
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", str(os.cpu_count()))  # ultralytics would pin torch to 1 thread

    from models.registry import resolve
    from pipeline.decode import iter_image_paths, read_image
    from pipeline.detect import Detector
    from training import ultra

    ref = resolve(args.model)
    photos = iter_image_paths([args.photos])
    kept = [i for i, c in enumerate(ref.card.class_map) if c is not None]
    import torch

    torch.set_num_threads(os.cpu_count() or 1)

    engines: dict[str, Callable[[Path], object]] = {}
    pt_model = ultra.yolo(ref.file("pt"))
    engines["ultralytics_pt"] = lambda p: pt_model.predict(str(p), imgsz=args.imgsz, classes=kept, verbose=False)
    onnx_model = ultra.yolo(ref.file("fp32"))
    engines["ultralytics_onnx"] = lambda p: onnx_model.predict(str(p), imgsz=args.imgsz, classes=kept, verbose=False)
    for variant in ("fp32", "int8"):
        if variant in ref.card.files:
            det = Detector(model=args.model, variant=variant, imgsz=args.imgsz)
            engines[f"streetwatch_{variant}"] = lambda p, d=det: d.detect(read_image(p))

    results = []
    for name, fn in engines.items():
        ms = measure(fn, photos, args.runs)
        results.append({"name": name, "ms_median": round(ms, 2)})
    base = results[0]["ms_median"]
    for r in results:
        r["speedup_vs_ultralytics_pt"] = round(base / r["ms_median"], 2)
    report = {
        "machine": machine(),
        "imgsz": args.imgsz,
        "model": f"{ref.card.name}@{ref.card.version}",
        "photos": len(photos),
        "runs": args.runs,
        "results": results,
    }
    if args.json:
        print(json.dumps(report))
    else:
        print(
            f"{report['machine']}\nmodel {report['model']}, {len(photos)} photos, imgsz {args.imgsz}, "
            f"median of {args.runs} runs (end to end: file decode to final detections)"
        )
        for r in results:
            print(f"  {r['name']:18} {r['ms_median']:8.1f} ms/image   {r['speedup_vs_ultralytics_pt']:5.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
