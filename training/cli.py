"""Training-side subcommands: train, evaluate, export (need the ``train`` extra for .pt checkpoints), and
compare, promote, rollback (run on exported ONNX models with the base install)."""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from pathlib import Path

#: exit status of ``export`` when the int8 model was refused (the fp32 model is written)
EXIT_INT8_REFUSED = 3
#: exit status of ``compare`` when the promotion gate refuses the candidate, and of a refused ``promote``
EXIT_GATE_REFUSED = 4


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
    from models.classes import CLASS_IDS
    from models.registry import ModelError
    from pipeline.cli import CLIError
    from training.evaluate import DatasetError, evaluate, load_split, make_predictor, plot_confusion, write_report

    if args.out and Path(args.out).exists() and not Path(args.out).is_dir():  # found out now, not after the run
        raise CLIError(f"--out {args.out}: exists and is not a folder (give a folder for the report)")
    try:
        split = load_split(args.data, args.split, _load_mapping(args.map))
        if not any(len(item.classes) for item in split.images):  # AP would read 0, which says nothing
            raise DatasetError(
                f"{args.data} [{split.name}]: none of its {len(split.images)} images has a labelled box (label "
                "files missing or empty, or every class mapped away by --map): without ground truth there is "
                "nothing to measure AP against"
            )
        model = make_predictor(
            args.model,
            variant=args.variant,
            imgsz=args.imgsz,
            tile=args.tile,
            model_map=_load_mapping(args.model_map) if args.model_map else None,
        )
        level = [c.strip() for c in args.image_level.split(",")] if args.image_level else None
        for name in level or []:
            if name not in CLASS_IDS:
                raise ValueError(f"--image-level: unknown class {name!r}; known: {', '.join(CLASS_IDS)}")
        result = evaluate(
            model,
            split,
            data_name=str(args.data),
            confusion_conf=args.conf,
            progress=not args.json,
            image_level=level,
            operating_conf=args.operating_conf,
        )
    except (DatasetError, ModelError, FileNotFoundError, ValueError) as exc:
        raise CLIError(str(exc)) from None
    if args.record:
        record_metrics(args.model, args.variant, args.data, args.split, result)
    out = Path(args.out) if args.out else Path.cwd()

    def picture() -> Path | None:  # the runtime alone evaluates ONNX models; the picture needs matplotlib
        if importlib.util.find_spec("matplotlib") is None:
            print("confusion-matrix picture skipped: matplotlib is not installed (the train extra)", file=sys.stderr)
            return None
        return plot_confusion(result, out / "confusion_matrix.png")

    if args.json:  # stdout is the JSON alone; what was skipped still has to be said
        if result.unreadable:
            skipped = ", ".join(result.unreadable)
            print(f"{len(result.unreadable)} unreadable images skipped: {skipped}", file=sys.stderr)
        if args.out:
            picture()
            write_report(result, out / "evaluation.json")
        print(json.dumps(result.to_json(), ensure_ascii=False))
        return 0
    print(result.table())
    plot = picture()
    if plot is not None:
        print(f"confusion matrix (confidence > {args.conf}, IoU ≥ 0.5): {plot}")
    if args.out:
        print(f"report: {write_report(result, out / 'evaluation.json')}")
    return 0


def record_metrics(model: str, variant: str, data: str, split: str, result) -> None:
    """Store an evaluation in the model card's metrics under ``"<data> [<split>]"`` (per variant), as
    ``streetwatch export --data`` does, so the card names every figure it was measured with."""
    from models.registry import ModelError, resolve, write_card
    from pipeline.cli import CLIError
    from training.export import record_results

    try:
        ref = resolve(model)
    except ModelError as exc:
        raise CLIError(f"--record needs a registry model or model folder: {exc}") from None
    record_results(ref.card, data, split, {ref.role or variant: result})  # a file path names what was measured
    write_card(ref.folder, ref.card)
    print(f"recorded in {ref.folder / 'card.json'}", file=sys.stderr)


def cmd_export(args: argparse.Namespace) -> int:
    """Export a checkpoint into a registry model folder (ONNX fp32, int8 when calibrated) with its card;
    with --data, evaluate both and refuse an int8 model that loses more than the allowed mAP50."""
    from models.registry import ModelError, ModelRef, imgsz_problem, models_root, name_problem, set_default
    from pipeline.cli import CLIError, resolve_inputs
    from pipeline.files import staged_folder
    from training.export import already_exported, build_model_folder, gate_int8, publish_model
    from training.train import run_record

    weights = Path(args.weights)
    if not weights.is_file():
        raise CLIError(f"{weights}: no such weights file")
    problem = imgsz_problem(args.imgsz)
    if problem:
        raise CLIError(f"--imgsz {problem}")
    problem = name_problem(args.name)
    if problem:  # it becomes the registry folder, and the name every case records
        raise CLIError(f"--name {problem}")
    folder = Path(args.out) if args.out else models_root() / args.name
    if (folder / "card.json").is_file():  # promote and rollback rely on a registered version staying as it is
        raise CLIError(already_exported(folder))
    calib = resolve_inputs(args.calib) if args.calib else None
    split = None
    if args.data:
        from training.evaluate import DatasetError, load_split

        try:
            split = load_split(args.data, args.split, _load_mapping(args.data_map))
        except DatasetError as exc:
            raise CLIError(str(exc)) from None
    # built and checked in a hidden folder beside FOLDER, which becomes FOLDER only once complete: a failed or
    # interrupted export (a wrong file, bad calibration images, a full disk, Ctrl-C) leaves FOLDER as it was
    with staged_folder(folder) as work:
        try:  # a file that is no checkpoint, or whose classes map to nothing, is refused before the export
            ref = build_model_folder(
                weights,
                work,
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
                calibration_max=args.calib_max,
                float_output_convs=args.float_head_convs,
                float_stem=args.float_stem,
            )
        except ValueError as exc:
            raise CLIError(str(exc)) from None
        dropped = [n for n, c in zip(ref.card.names, ref.card.class_map, strict=True) if c is None]
        if dropped:  # say so: a name mapped to nothing (motorcycle, not motorbike) is a class the model loses
            shown = ", ".join(dropped[:12]) + (f" and {len(dropped) - 12} more" if len(dropped) > 12 else "")
            print(
                f"left out, mapped to no product class: {shown} ({len(dropped)} of {len(ref.card.names)}; "
                "--map maps names)"
            )
        refused = False
        if split is not None:
            gate = gate_int8(ref, split, data_name=str(args.data), max_drop_points=args.int8_max_drop)
            for variant, result in gate.results.items():
                print(
                    f"{variant}: mAP50 {result.map50:.4f}, mAP50-95 {result.map50_95:.4f} on {args.data} [{args.split}]"
                )
            print(gate.message)
            refused = gate.refused  # the fp32 model is exported all the same
        try:
            publish_model(work, folder)
        except ModelError as exc:
            raise CLIError(str(exc)) from None
    ref = ModelRef(folder=folder, card=ref.card)  # as the check left it (a refused int8 is no longer listed)
    print(
        f"exported {ref.card.name}@{ref.card.version} to {folder}: {', '.join(ref.card.files)}; "
        f"classes: {', '.join(ref.card.product_classes())}"
    )
    if refused:
        print(
            f"streetwatch: int8 refused; {folder} holds the fp32 model only"
            + (" and was NOT made the default" if args.default else ""),
            file=sys.stderr,
        )
        return EXIT_INT8_REFUSED
    if args.default:
        from training.promote import check_runs, user

        if folder.resolve() != (models_root() / ref.card.name).resolve():
            raise CLIError(f"--default: {folder} is not in the registry; run `streetwatch promote {folder}`")
        try:
            check_runs(ref)  # no gate, but never a default the service cannot load
            set_default(ref.card.name, {"action": "export", "by": user(), "note": "export --default, no gate"})
        except ModelError as exc:
            raise CLIError(str(exc)) from None
        print(f"{ref.card.name} is now the default model")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    """Per-class AP of a candidate against a baseline on a fixed evaluation set, the promotion gate, and the
    detections that changed on field images; the verdict is recorded in the candidate's card."""
    from models.registry import ModelError
    from pipeline.cli import CLIError, resolve_inputs
    from pipeline.files import atomic_write
    from training.compare import changes_sheet, compare, gate_record, load_gate, model_ref, record_gate
    from training.evaluate import DatasetError, load_split, make_predictor

    if args.out and Path(args.out).exists() and not Path(args.out).is_dir():  # found out now, not after the run
        raise CLIError(f"--out {args.out}: exists and is not a folder (give a folder for the report)")
    try:
        gate = load_gate(args.gate, max_class_drop=args.max_class_drop, max_mean_drop=args.max_mean_drop)
        split = load_split(args.data, args.split, _load_mapping(args.map))
        baseline = make_predictor(args.baseline, variant=args.variant)
        candidate = make_predictor(args.candidate, variant=args.variant)
    except (DatasetError, ModelError, FileNotFoundError, ValueError) as exc:
        raise CLIError(str(exc)) from None
    field = []
    for item in args.field or []:
        path = Path(item)
        field.append(str(path / "images") if (path / "images").is_dir() and (path / "export.json").is_file() else item)
    field_images = resolve_inputs(field) if field else []
    try:
        result = compare(baseline, candidate, split, str(args.data), gate, field_images, args.conf, not args.json)
    except (DatasetError, ValueError) as exc:
        raise CLIError(str(exc)) from None
    out = Path(args.out) if args.out else None
    report = result.to_json()
    cand_ref, base_ref = model_ref(args.candidate), model_ref(args.baseline)
    recorded = None
    if cand_ref is not None and base_ref is not None and not args.no_record:
        record_gate(cand_ref, gate_record(result, base_ref))
        recorded = cand_ref.folder / "card.json"
    sheet = None
    if out:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write(out / "compare.json", json.dumps(report, indent=1, ensure_ascii=False) + "\n")
        sheet = changes_sheet(result.field_items, out / "field-changes.jpg", baseline.name, candidate.name)
    if args.json:
        print(json.dumps(report, ensure_ascii=False))
    else:
        for role, model, r in (("baseline ", baseline, result.baseline), ("candidate", candidate, result.candidate)):
            print(f"{role} {model.name}: mAP50 {r.map50:.4f}, mAP50-95 {r.map50_95:.4f}")
        print(f"on {args.data} [{args.split}], {result.baseline.images} images, fingerprint {result.fingerprint[:16]}")
        print(result.gate.table())
        if field_images:
            s = result.field_summary()
            print(
                f"field images: {s['changed_images']} of {s['images']} changed at confidence >= {args.conf}: "
                f"{s['new']} new, {s['gone']} gone, {s['relabelled']} relabelled boxes"
            )
            shown = 0
            for item in result.field_items:
                for change in item.changes:
                    if shown < args.show:
                        print(f"  {item.path.name}: {change.describe()} at {list(change.box)}")
                    shown += 1
            if shown > args.show:
                print(f"  ... {shown - args.show} more (see compare.json)")
            for bad in result.field_unreadable:
                print(f"  unreadable: {bad}")
        if out:
            print(f"report: {out / 'compare.json'}" + (f"; picture of the changes: {sheet}" if sheet else ""))
        if recorded:
            print(f"gate verdict recorded in {recorded} (streetwatch promote reads it)")
    return 0 if result.gate.passed else EXIT_GATE_REFUSED


def cmd_promote(args: argparse.Namespace) -> int:
    """Register a model version and make it the default, if the promotion gate passed (or forced with a reason)."""
    from models.registry import ModelError
    from pipeline.cli import CLIError
    from training.compare import load_gate
    from training.evaluate import DatasetError
    from training.promote import AlreadyDefault, PromotionRefused, promote

    try:
        gate = load_gate(args.gate) if args.data else None
        done = promote(
            args.model,
            force=args.force,
            reason=args.reason,
            data=args.data,
            split=args.split,
            data_map=args.map,
            gate_config=gate,
            progress=True,
        )
    except AlreadyDefault as exc:  # what was asked for is so: a deploy script may run promote again
        print(exc)
        return 0
    except PromotionRefused as exc:
        print(f"streetwatch: {exc}", file=sys.stderr)
        print("streetwatch: to promote it anyway: --force --reason 'why'", file=sys.stderr)
        return EXIT_GATE_REFUSED
    except (ModelError, DatasetError, ValueError, FileNotFoundError) as exc:
        raise CLIError(str(exc)) from None
    e = done.event
    where = f" (copied into {done.ref.folder})" if done.copied else ""
    print(f"{e['name']}@{e['version']} is now the default model{where}; was {e['previous']}")
    if e.get("forced"):
        print(f"FORCED past the gate ({e['override']}); reason recorded: {e['reason']}")
    elif e.get("gate"):
        print(f"promotion gate passed against {e['gate']['baseline']['name']}@{e['gate']['baseline']['version']}")
    if e.get("manifest_note"):
        print(f"note: {e['manifest_note']}")
    print("running services and stream workers that follow the default switch to it within seconds")
    return 0


def cmd_rollback(args: argparse.Namespace) -> int:
    """Go back one version of the default model."""
    from models.registry import ModelError
    from pipeline.cli import CLIError
    from training.promote import rollback

    try:
        e = rollback(args.reason)
    except ModelError as exc:
        raise CLIError(str(exc)) from None
    print(f"rolled back: {e['name']}@{e['version']} is the default model again (was {e['previous']})")
    return 0


def cmd_average(args: argparse.Namespace) -> int:
    """Average the weights of checkpoints fine-tuned one from another into a new checkpoint."""
    from pipeline.cli import CLIError
    from training.average import average_checkpoints

    try:
        weights = [float(w) for w in args.weights.split(",")] if args.weights else None
        best = average_checkpoints(args.models, Path(args.out), weights)
    except ValueError as exc:  # AverageError, ConfigError (a missing .pt) and a bad --weights number
        raise CLIError(str(exc)) from None
    print(f"averaged {', '.join(args.models)}: {best}")
    print(f"next: streetwatch export {best} --name NAME --imgsz SIZE --calib IMAGES... --data DATA_YAML")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Training-side subcommands."""
    from pipeline.cli import count, fraction

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
    p.set_defaults(func=cmd_train, needs=("ultralytics", "torch", "albumentations"))

    p = sub.add_parser(
        "average",
        help="average the weights of checkpoints fine-tuned one from another (WiSE-FT)",
        description="Average two or more checkpoints of one architecture and class list, one fine-tuned from "
        "the other (e.g. the model in force and its fine-tune): often as good as the fine-tune on its data "
        "and more robust on unlike images. Writes OUT/weights/best.pt and a run record naming the inputs.",
    )
    p.add_argument("models", nargs="+", help="checkpoints: .pt files or registry model names (their model.pt)")
    p.add_argument("--out", required=True, help="run folder to write, e.g. runs/average/NAME")
    p.add_argument("--weights", help="comma-separated shares, one per model (default: equal)")
    p.set_defaults(func=cmd_average, needs=("torch", "ultralytics"))

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
    p.add_argument(
        "--variant", choices=("fp32", "int8"), default="fp32", help="ONNX file of a model (a --model file path decides)"
    )
    p.add_argument("--imgsz", type=int, default=None, help="inference size (default: the model's)")
    p.add_argument("--tile", action="store_true", help="sliced inference (tiles plus a full pass)")
    p.add_argument("--conf", type=fraction, default=0.25, help="confidence for the confusion matrix (default: 0.25)")
    p.add_argument(
        "--image-level",
        metavar="CLASSES",
        help="also report image-level recall and false alarms for these classes, e.g. litter,overflowing_bin: "
        "an image showing one must get at least one detection of them at --operating-conf",
    )
    p.add_argument(
        "--operating-conf", type=fraction, default=0.25, help="confidence of the image-level view (default: 0.25)"
    )
    p.add_argument(
        "--record", action="store_true", help="store the result in the model card's metrics (registry models)"
    )
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
    p.add_argument(
        "--calib-max", type=count, default=200, help="at most this many calibration images, spread evenly over the list"
    )
    p.add_argument(
        "--calib-method",
        choices=("minmax", "percentile", "entropy"),
        default="minmax",
        help="activation range calibration (default: %(default)s)",
    )
    p.add_argument(
        "--float-head-convs", action="store_true", help="int8: keep the head's output convolutions in float too"
    )
    p.add_argument(
        "--float-stem",
        type=int,
        default=0,
        metavar="N",
        help="int8: keep the first N modules (the stem, which sees raw pixels) in float (default: none)",
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
    p.add_argument("--default", action="store_true", help="make it the registry default (no promotion gate)")
    p.set_defaults(func=cmd_export, needs=("ultralytics", "torch", "onnx"))

    p = sub.add_parser(
        "compare",
        help="compare a candidate model with a baseline: per-class AP deltas, promotion gate, field changes",
        description="Evaluate both models on one fixed evaluation set, show per-class AP deltas and judge the "
        "candidate with the promotion gate (default: no class loses more than 2 AP50 points, the mean does not "
        "drop); with --field, list and draw the detections that changed on field images. The verdict is "
        f"recorded in the candidate's card for `streetwatch promote`. Exit status {EXIT_GATE_REFUSED} when the "
        "gate refuses.",
    )
    p.add_argument("--candidate", required=True, help="the new model: registry name or model folder (or .onnx/.pt)")
    p.add_argument("--baseline", default="default", help="the model in force (default: %(default)s)")
    p.add_argument("--data", required=True, help="the fixed evaluation set: a data.yaml")
    p.add_argument("--split", default="val", help="split of --data (default: val)")
    p.add_argument("--map", help="class mapping of --data (default: names are product classes)")
    p.add_argument("--variant", choices=("fp32", "int8"), default="fp32", help="ONNX file of both models")
    p.add_argument("--gate", help="gate config YAML (training.compare.GateConfig fields)")
    p.add_argument("--max-class-drop", type=float, default=None, help="AP points one class may lose (default: 2)")
    p.add_argument("--max-mean-drop", type=float, default=None, help="AP points the mean may lose (default: 0)")
    p.add_argument("--field", nargs="+", help="field images, folders or an export-reviews folder: detections diffed")
    p.add_argument(
        "--conf", type=fraction, default=0.25, help="operating confidence for the field diff (default: 0.25)"
    )
    p.add_argument("--show", type=int, default=20, help="changed detections listed (default: %(default)s)")
    p.add_argument("--out", help="folder for compare.json and field-changes.jpg")
    p.add_argument("--json", action="store_true", help="print only the JSON report")
    p.add_argument("--no-record", action="store_true", help="do not write the verdict into the candidate's card")
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser(
        "promote",
        help="register a model version and make it the default (promotion gate, or --force with a reason)",
        description="Register a model (registry name or model folder; copied into the registry when it lies "
        "elsewhere) and make it the default, when `streetwatch compare` recorded a passing gate against the default "
        "in force (or with --data, a comparison run now). The history in registry.json records who, when, the gate "
        "verdict and any forced override with its reason. Running services follow the new default without restart.",
    )
    p.add_argument("model", help="registry name or model folder")
    p.add_argument("--force", action="store_true", help="promote although the gate refused or was not run")
    p.add_argument("--reason", help="why (required with --force; recorded in the registry history)")
    p.add_argument("--data", help="run the comparison now on this evaluation data.yaml")
    p.add_argument("--split", default="val", help="split of --data (default: val)")
    p.add_argument("--map", help="class mapping of --data")
    p.add_argument("--gate", help="gate config YAML for --data")
    p.set_defaults(func=cmd_promote)

    p = sub.add_parser(
        "rollback",
        help="go back one version of the default model",
        description="The default before the one in force becomes the default again (recorded in the history); "
        "running services follow it without restart.",
    )
    p.add_argument("--reason", help="why (recorded in the registry history)")
    p.set_defaults(func=cmd_rollback)
