"""Training-side subcommands (need the ``train`` extra): export."""

from __future__ import annotations

import argparse
from pathlib import Path


def cmd_export(args: argparse.Namespace) -> int:
    """Export a checkpoint into a registry model folder (ONNX fp32, int8 when calibrated) with its card."""
    from datasets.mapping import identity_mapping, load_mapping
    from models.registry import models_root, read_registry, write_registry
    from pipeline.cli import CLIError, resolve_inputs
    from training.export import build_model_folder

    weights = Path(args.weights)
    if not weights.is_file():
        raise CLIError(f"{weights}: no such weights file")
    folder = Path(args.out) if args.out else models_root() / args.name
    calib = resolve_inputs(args.calib)[: args.calib_max] if args.calib else None
    ref = build_model_folder(
        weights,
        folder,
        name=args.name,
        version=args.version,
        mapping=load_mapping(args.map) if args.map else identity_mapping(),
        imgsz=args.imgsz,
        description=args.description,
        interim=args.interim,
        notes=args.notes,
        int8_calibration=calib,
    )
    print(
        f"exported {ref.card.name}@{ref.card.version} to {folder}: {', '.join(ref.card.files)}; "
        f"classes: {', '.join(ref.card.product_classes())}"
    )
    if args.default:
        index = read_registry()
        index["default"] = ref.card.name
        if ref.card.name not in index.setdefault("history", []):
            index["history"].append(ref.card.name)
        write_registry(index)
        print(f"{ref.card.name} is now the default model")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Training-side subcommands."""
    p = sub.add_parser("export", help="export a .pt checkpoint to ONNX (fp32, int8) in a model folder")
    p.add_argument("weights", help="ultralytics .pt checkpoint")
    p.add_argument("--name", required=True, help="registry name (model folder name)")
    p.add_argument("--version", default="1", help="version recorded on cases (default: %(default)s)")
    p.add_argument("--map", help="class mapping (name or file) from the checkpoint's classes; default: identity")
    p.add_argument("--imgsz", type=int, default=640)
    p.add_argument("--calib", nargs="+", help="calibration images/folders for static int8 (omit: fp32 only)")
    p.add_argument("--calib-max", type=int, default=200, help="at most this many calibration images")
    p.add_argument("--out", help="model folder (default: the registry's folder for --name)")
    p.add_argument("--description", default="")
    p.add_argument("--notes", default="")
    p.add_argument("--interim", action="store_true", help="mark as a stand-in model in its card")
    p.add_argument("--default", action="store_true", help="make it the registry default")
    p.set_defaults(func=cmd_export)
