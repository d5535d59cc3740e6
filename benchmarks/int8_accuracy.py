"""INT8 accuracy and speed against fp32 for each quantisation recipe, on one model and validation set.

Exports the checkpoint to ONNX once, quantises it with each calibration method (minmax, percentile,
entropy), with and without the head's output convolutions kept in float, and evaluates every variant
with the product's detector on the same split (mAP50, mAP50-95, the drop in points against fp32, median
milliseconds per image on this CPU)::

    python benchmarks/int8_accuracy.py runs/train/x/weights/best.pt --data ../shared/data/garbage/data.yaml \
        --data-map garbage --calib ../shared/data/garbage/train/images --imgsz 320
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from datasets.mapping import identity_mapping, load_mapping  # noqa: E402
from models.registry import describe_file, load_card, write_card  # noqa: E402
from pipeline.decode import iter_image_paths, read_image  # noqa: E402
from training.evaluate import evaluate, load_split, make_predictor  # noqa: E402
from training.export import FP32_NAME, INT8_NAME, build_model_folder  # noqa: E402
from training.quantize import quantize_int8  # noqa: E402


def speed_ms(variants: list[tuple[Path, str]], images: list, rounds: int = 3) -> list[float]:
    """Median ms per image of the product detector for each (model folder, variant), measured round-robin
    so that a change in machine load hits every variant alike."""
    from pipeline.detect import Detector

    detectors = [Detector(model=str(folder), variant=variant, conf=0.25) for folder, variant in variants]
    for det in detectors:
        det.detect(images[0])
    times: list[list[float]] = [[] for _ in detectors]
    for _ in range(rounds):
        for det, acc in zip(detectors, times, strict=True):
            for img in images:
                t = time.perf_counter()
                det.detect(img)
                acc.append((time.perf_counter() - t) * 1000)
    return [statistics.median(t) for t in times]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("weights")
    parser.add_argument("--data", required=True)
    parser.add_argument("--split", default="val")
    parser.add_argument("--data-map")
    parser.add_argument("--map", help="class mapping of the checkpoint (default: identity)")
    parser.add_argument("--calib", nargs="+", required=True)
    parser.add_argument("--calib-max", type=int, default=100)
    parser.add_argument("--imgsz", type=int, default=640)
    parser.add_argument("--methods", nargs="+", default=["minmax", "percentile", "entropy"])
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    split = load_split(args.data, args.split, load_mapping(args.data_map) if args.data_map else None)
    calib = iter_image_paths(args.calib)[: args.calib_max]
    speed_images = [read_image(i.path) for i in split.images[:16]]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp) / "fp32"
        build_model_folder(
            Path(args.weights),
            base,
            name="bench",
            version="fp32",
            mapping=load_mapping(args.map) if args.map else identity_mapping(),
            imgsz=args.imgsz,
        )
        fp32 = evaluate(make_predictor(str(base)), split, args.data, progress=False)
        rows.append(["fp32", fp32.map50, fp32.map50_95, 0.0])
        variants = [(base, "fp32")]
        for method in args.methods:
            for float_out in (False, True):
                name = f"int8 {method}" + (" + float output convs" if float_out else "")
                folder = Path(tmp) / name.replace(" ", "_").replace("+", "")
                shutil.copytree(base, folder)
                t = time.perf_counter()
                quantize_int8(
                    folder / FP32_NAME,
                    folder / INT8_NAME,
                    calib,
                    args.imgsz,
                    method=method,
                    float_output_convs=float_out,
                )
                seconds = time.perf_counter() - t
                card = load_card(folder)
                card.files["int8"] = describe_file(folder, INT8_NAME)
                write_card(folder, card)
                r = evaluate(make_predictor(str(folder), variant="int8"), split, args.data, progress=False)
                drop = round((fp32.map50 - r.map50) * 100, 2)
                rows.append([name, r.map50, r.map50_95, drop])
                variants.append((folder, "int8"))
                print(
                    f"{name}: mAP50 {r.map50:.4f} (drop {drop:.2f} points), calibrated in {seconds:.0f} s",
                    file=sys.stderr,
                )
        for row, ms in zip(rows, speed_ms(variants, speed_images), strict=True):
            row.append(round(ms, 1))
    if args.json:
        print(
            json.dumps([dict(zip(("variant", "map50", "map50_95", "drop_points", "ms"), r, strict=True)) for r in rows])
        )
    else:
        print(f"{'variant':<40} {'mAP50':>7} {'mAP50-95':>9} {'drop':>6} {'ms/img':>7}")
        for name, m50, m, drop, ms in rows:
            print(f"{name:<40} {m50:>7.4f} {m:>9.4f} {drop:>6.2f} {ms:>7.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
