"""Training-side subcommands (need the ``train`` extra): train, evaluate, export."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

#: exit status of ``export`` when the int8 model was refused (the fp32 model is written)
EXIT_INT8_REFUSED = 3


def cmd_train(args: argparse.Namespace) -> int:
    """Train a detector from a config file (with key=value overrides)."""
    from models.classes import CLASS_NAMES
    from pipeline.cli import CLIError
    from training.train import PREVIEW_NAME, ConfigError, dataset_names, load_config, train

    try:
        cfg = load_config(args.config, args.set)
        run = train(cfg)
    except ConfigError as exc:
        raise CLIError(str(exc)) from None
    best = run / "weights" / "best.pt"
    print(f"trained: {best}")
    print(f"run folder {run}: config used, run record, augmentation preview ({PREVIEW_NAME}), plots")
    other = dataset_names(Path(cfg.data)) != list(CLASS_NAMES)  # then a class mapping must name the classes
    eval_maps = " --map MAPPING --model-map MAPPING" if other else ""
    export_maps = " --map MAPPING --data-map MAPPING" if other else ""
    print(f"next: streetwatch evaluate --data {cfg.data} --model {best}{eval_maps}")
    print(f"      streetwatch export {best} --name NAME --imgsz {cfg.imgsz} --calib IMAGES...", end="")
    print(f" --data {cfg.data}{export_maps}")
    return 0


def _load_mapping(ref: str | None):
    from datasets.mapping import identity_mapping, load_mapping
    from pipeline.cli import CLIError

    if not ref:
        return identity_mapping()
    try:
        return load_mapping(ref)
    except (FileNotFoundError, ValueError) as exc:
        raise CLIError(str(exc)) from None


def cmd_evaluate(args: argparse.Namespace) -> int:
    """COCO-style AP of a model on a labelled dataset split."""
    from models.registry import ModelError
    from pipeline.cli import CLIError
    from training.evaluate import DatasetError, evaluate, load_split, make_predictor, plot_confusion, write_report

    try:
        split = load_split(args.data, args.split, _load_mapping(args.map))
        model = make_predictor(
            args.model,
            variant=args.variant,
            imgsz=args.imgsz,
            tile=args.tile,
            model_map=_load_mapping(args.model_map) if args.model_map else None,
        )
        result = evaluate(model, split, data_name=str(args.data), confusion_conf=args.conf, progress=not args.json)
    except (DatasetError, ModelError, FileNotFoundError, ValueError) as exc:
        raise CLIError(str(exc)) from None
    if args.json:
        print(json.dumps(result.to_json(), ensure_ascii=False))
        return 0
    out = Path(args.out) if args.out else Path.cwd()
    print(result.table())
    plot = plot_confusion(result, out / "confusion_matrix.png")
    print(f"confusion matrix (confidence > {args.conf}): {plot}")
    if args.out:
        print(f"report: {write_report(result, out / 'evaluation.json')}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    """Export a checkpoint into a registry model folder (ONNX fp32, int8 when calibrated) with its card;
    with --data, evaluate both and refuse an int8 model that loses more than the allowed mAP50."""
    from models.registry import models_root, read_registry, write_registry
    from pipeline.cli import CLIError, resolve_inputs
    from training.export import build_model_folder, gate_int8
    from training.train import run_record

    weights = Path(args.weights)
    if not weights.is_file():
        raise CLIError(f"{weights}: no such weights file")
    folder = Path(args.out) if args.out else models_root() / args.name
    calib = resolve_inputs(args.calib)[: args.calib_max] if args.calib else None
    split = None
    if args.data:
        from training.evaluate import DatasetError, load_split

        try:
            split = load_split(args.data, args.split, _load_mapping(args.data_map))
        except DatasetError as exc:
            raise CLIError(str(exc)) from None
    ref = build_model_folder(
        weights,
        folder,
        name=args.name,
        version=args.version,
        mapping=_load_mapping(args.map),
        imgsz=args.imgsz,
        description=args.description,
        interim=args.interim,
        training=run_record(weights),
        notes=args.notes,
        int8_calibration=calib,
        calibration_method=args.calib_method,
        float_output_convs=args.float_head_convs,
    )
    print(
        f"exported {ref.card.name}@{ref.card.version} to {folder}: {', '.join(ref.card.files)}; "
        f"classes: {', '.join(ref.card.product_classes())}"
    )
    refused = False
    if split is not None:
        gate = gate_int8(ref, split, data_name=str(args.data), max_drop_points=args.int8_max_drop)
        for variant, result in gate.results.items():
            print(f"{variant}: mAP50 {result.map50:.4f}, mAP50-95 {result.map50_95:.4f} on {args.data} [{args.split}]")
        print(gate.message)
        refused = gate.refused
    if refused:
        print(
            f"streetwatch: int8 refused; {folder} holds the fp32 model only"
            + (" and was NOT made the default" if args.default else ""),
            file=sys.stderr,
        )
        return EXIT_INT8_REFUSED
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
    p = sub.add_parser(
        "train",
        help="train a detector from a config file (ultralytics, CPU or GPU)",
        description="Train from pretrained weights as a config file says; the run folder keeps the config used.",
    )
    p.add_argument("--config", required=True, help="training config YAML (see training/configs/)")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config field, e.g. --set epochs=5 --set augment.flash=0.2 (repeatable)",
    )
    p.set_defaults(func=cmd_train)

    p = sub.add_parser(
        "evaluate",
        help="COCO-style AP (AP50, AP50-95) of a model on a labelled YOLO dataset",
        description="Evaluate a registry model, model folder, ONNX file or .pt on a YOLO dataset split whose "
        "classes a mapping file maps onto product classes. AP as ultralytics val computes it.",
    )
    p.add_argument("--data", required=True, help="dataset data.yaml")
    p.add_argument("--split", default="val", help="data.yaml split name or a list file of images (default: val)")
    p.add_argument("--map", help="dataset class mapping (name or file); default: names are product classes")
    p.add_argument("--model", default="default", help="registry name, model folder, .onnx or .pt (default: default)")
    p.add_argument("--model-map", help="for a bare .pt whose class names are not product classes: its mapping")
    p.add_argument("--variant", choices=("fp32", "int8"), default="fp32", help="ONNX file of a registry model")
    p.add_argument("--imgsz", type=int, default=None, help="inference size (default: the model's)")
    p.add_argument("--tile", action="store_true", help="sliced inference (tiles plus a full pass)")
    p.add_argument("--conf", type=float, default=0.25, help="confidence for the confusion matrix (default: 0.25)")
    p.add_argument("--json", action="store_true", help="print only the JSON report")
    p.add_argument("--out", help="folder for the confusion-matrix PNG and evaluation.json (default: cwd, PNG only)")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser(
        "export",
        help="export a .pt checkpoint to ONNX (fp32, int8) in a model folder",
        description="Copy a checkpoint into a model folder, export ONNX fp32 and (with --calib) static int8, "
        "write the card. With --data, evaluate both; an int8 model whose mAP50 is more than --int8-max-drop "
        f"points below fp32 is not written (exit status {EXIT_INT8_REFUSED}; the fp32 model is).",
    )
    p.add_argument("weights", help="ultralytics .pt checkpoint")
    p.add_argument("--name", required=True, help="registry name (model folder name)")
    p.add_argument("--version", default="1", help="version recorded on cases (default: %(default)s)")
    p.add_argument("--map", help="class mapping (name or file) from the checkpoint's classes; default: identity")
    p.add_argument("--imgsz", type=int, default=640)
    p.add_argument("--calib", nargs="+", help="calibration images/folders for static int8 (omit: fp32 only)")
    p.add_argument("--calib-max", type=int, default=200, help="at most this many calibration images")
    p.add_argument(
        "--calib-method",
        choices=("minmax", "percentile", "entropy"),
        default="minmax",
        help="activation range calibration (default: %(default)s)",
    )
    p.add_argument(
        "--float-head-convs", action="store_true", help="int8: keep the head's output convolutions in float too"
    )
    p.add_argument("--data", help="validation data.yaml: evaluate fp32 and int8, gate int8, record metrics")
    p.add_argument("--split", default="val", help="split of --data (default: val)")
    p.add_argument("--data-map", help="class mapping of --data (default: names are product classes)")
    p.add_argument(
        "--int8-max-drop", type=float, default=1.0, help="largest int8 mAP50 loss in points (default: %(default)s)"
    )
    p.add_argument("--out", help="model folder (default: the registry's folder for --name)")
    p.add_argument("--description", default="")
    p.add_argument("--notes", default="")
    p.add_argument("--interim", action="store_true", help="mark as a stand-in model in its card")
    p.add_argument("--default", action="store_true", help="make it the registry default")
    p.set_defaults(func=cmd_export)
