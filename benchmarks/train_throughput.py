"""Training throughput on this machine: seconds per training image per epoch at several input sizes.

Runs the product training recipe (``training/configs/product-cpu.yaml`` unless --config says otherwise,
camera augmentations included) for a fraction of an epoch at each size, from the same base weights, and
reports the steady-state batch time (the first batch of the epoch, worker start-up, is left out; so is
validation). Multiply by images × epochs to plan a run. Run it niced on a shared machine::

    nice -n 15 python benchmarks/train_throughput.py --data ../shared/data/garbage/data.yaml \
        --base ../shared/weights/yolo11n-coco.pt --sizes 320 416 512 --images 160
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from training.train import dataset_names, load_config, train  # noqa: E402


def list_images(data_yaml: Path, split: str) -> list[str]:
    """Image paths of a split of an ultralytics data.yaml."""
    from training.evaluate import dataset_yaml, split_images

    return [str(p) for p in split_images(dataset_yaml(data_yaml), split)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="data.yaml with train and val image folders")
    parser.add_argument("--config", default=str(REPO / "training" / "configs" / "product-cpu.yaml"))
    parser.add_argument("--base", default=None, help="base weights (default: the config's)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[320, 416, 512])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--workers", type=int, default=None, help="data-loading workers (default: the config's)")
    parser.add_argument("--images", type=int, default=160, help="training images timed per size")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    data = Path(args.data).resolve()
    train_images = list_images(data, "train")[: args.images]
    val_images = list_images(data, "val")[:4]
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        subset = Path(tmp) / "data.yaml"
        (Path(tmp) / "train.txt").write_text("\n".join(train_images) + "\n")
        (Path(tmp) / "val.txt").write_text("\n".join(val_images) + "\n")
        names = dataset_names(data)
        subset.write_text(json.dumps({"path": tmp, "train": "train.txt", "val": "val.txt", "names": names}))
        for size in args.sizes:
            sets = [f"data={subset}", f"imgsz={size}", f"batch={args.batch}", "epochs=1", "val=false"]
            sets += [f"out={tmp}/runs", f"name=s{size}", "plots=false", "close_mosaic=0", "device=cpu"]
            if args.base:
                sets.append(f"base={args.base}")
            if args.workers is not None:
                sets.append(f"workers={args.workers}")
            cfg = load_config(args.config, sets)
            run = train(cfg)
            record = json.loads((run / "streetwatch-run.json").read_text())
            t = record["throughput"]
            results.append({"imgsz": size, "batch": args.batch, "workers": cfg.workers, **t})
            print(
                f"{size} px, batch {args.batch}, {cfg.workers} workers: {t['seconds_per_batch']:.2f} s/batch, "
                f"{t['seconds_per_image']:.3f} s per image-epoch ({t['batches_timed']} batches timed)",
                file=sys.stderr,
            )
    summary = {
        "machine": record["hardware"],
        "torch_threads": __import__("torch").get_num_threads(),
        "niceness": os.nice(0),
        "load_average": os.getloadavg(),
        "results": results,
    }
    print(
        json.dumps(summary, indent=1)
        if args.json
        else "\n".join(f"{r['imgsz']:>4} px: {r['seconds_per_image']:.3f} s per image-epoch" for r in results)
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
