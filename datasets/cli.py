"""``streetwatch data ...``: import, check, build, pack and look at training data."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _error(exc: Exception):
    from pipeline.cli import CLIError

    return CLIError(str(exc))


def _spec_from_args(args: argparse.Namespace, name: str):
    from datasets.sources import SourceSpec

    kind = "folder" if args.labels else "yolo"
    return SourceSpec(
        name=name,
        kind=kind,
        path=str(Path(args.source).resolve()),
        labels=str(Path(args.labels).resolve()) if args.labels else None,
        split_file=str(Path(args.split_file).resolve()) if args.split_file else None,
        mapping=args.map,
        val_fraction=args.val_fraction,
    )


def _source_name(path: str) -> str:
    import re

    p = Path(path).resolve()
    base = p.parent.name if p.is_file() else p.name
    return re.sub(r"[^a-z0-9_-]+", "-", base.lower()).strip("-") or "source"


def cmd_mappings(args: argparse.Namespace) -> int:
    """List the shipped class mappings."""
    from datasets.mapping import load_mapping, shipped_mappings

    for name in ["product", *shipped_mappings()]:
        m = load_mapping(name)
        kept = ", ".join(f"{k}->{v}" for k, v in m.map.items() if v is not None and (name != "product" or k != v))
        dropped = [k for k, v in m.map.items() if v is None]
        print(f"{name:10} {m.description}")
        if kept:
            print(f"{'':10} {kept}" + (f"; dropped: {', '.join(dropped)}" if dropped else ""))
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    """Check a source: unreadable images, bad label lines, degenerate boxes, duplicates, counts, box sizes."""
    from datasets.checks import CheckReport, check_box_sizes, find_duplicates, scan_samples
    from datasets.sources import SourceMissing, load_source

    name = args.name or _source_name(args.source)
    try:
        spec = _spec_from_args(args, name)
        data = load_source(spec, Path("."))
    except (FileNotFoundError, SourceMissing, ValueError) as exc:
        raise _error(exc) from None
    samples = data.samples
    features, issues = scan_samples(samples, features=not args.no_scene)
    issues = data.issues + issues + check_box_sizes(samples)
    pairs = find_duplicates(samples, None if args.no_scene else features)
    report = CheckReport(f"Check of {args.source} (mapping {args.map})", samples, issues, pairs)
    out = Path(args.report or f"check-{name}")
    files = report.write(out)
    if args.json:
        print(json.dumps(report.to_json(), ensure_ascii=False))
    else:
        print(report.to_text())
        others = ", ".join(p.name for k, p in files.items() if k != "html")
        print(f"\nreport: {files['html']} ({others})")
    errors = sum(i.severity == "error" for i in issues)
    return 1 if args.strict and (errors or report.leaks()) else 0


def cmd_import(args: argparse.Namespace) -> int:
    """Import one source with a mapping into a product-class dataset (no pseudo-labels, no synthesis); with
    --into, bring corrected annotations (YOLO or COCO) back into an export-reviews folder instead."""
    from datasets.recipe import PseudoConfig, Recipe, build
    from pipeline.cli import require

    if args.into:
        return _import_corrections(args)
    require("matplotlib")  # the report's box-size plot: refused before anything is written
    if not args.map or not args.out:
        raise _error(ValueError("importing a source needs --map (its class mapping) and --out (the dataset folder)"))
    name = args.name or _source_name(args.source)
    try:
        recipe = Recipe(
            name=name,
            description=f"import of {args.source}",
            sources=[_spec_from_args(args, name)],
            pseudo=PseudoConfig(enabled=False),
        )
        result = build(recipe, Path("."), Path(args.out), sheets=not args.no_sheets)
    except (FileNotFoundError, FileExistsError, ValueError) as exc:
        raise _error(exc) from None
    print(result.report.to_text())
    print(f"\ndataset: {result.out}/data.yaml; report: {result.out}/report/report.html")
    return 0


def _import_corrections(args: argparse.Namespace) -> int:
    """``data import ANNOTATIONS --into EXPORT``: corrected boxes from Label Studio or CVAT."""
    from datasets.reviews import ExportError, import_annotations

    try:
        result = import_annotations(Path(args.source), Path(args.into), args.format, args.map or "product")
    except (ExportError, FileNotFoundError, ValueError) as exc:
        raise _error(exc) from None
    print(
        f"{len(result.corrected)} images of {result.folder} take the corrected labels ({result.boxes_before} boxes "
        f"before, {result.boxes_after} now); {result.unchanged} keep the reviewed labels "
        f"(kept as they were in {result.folder / 'labels.reviewed'})"
    )
    for issue in result.warnings:
        print(f"  {issue}")
    if result.unknown:
        print(
            f"not in this export, ignored: {', '.join(result.unknown[:10])}"
            + (" ..." if len(result.unknown) > 10 else "")
        )
    print(f"next: streetwatch data build {result.folder / 'recipe.yaml'} --out DATASET_DIR")
    return 0


def _when(text: str | None, tz, end: bool = False):  # -> datetime | None
    """A --since/--until value: an ISO date (a whole day in the service's time zone) or date-time."""
    from datetime import datetime, timedelta

    if not text:
        return None
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise _error(ValueError(f"{text!r}: not a date (YYYY-MM-DD) or date-time (YYYY-MM-DDTHH:MM)")) from None
    if end and len(text) == 10:
        value += timedelta(days=1)  # --until 2026-11-30 includes that day
    return value if value.tzinfo else value.replace(tzinfo=tz)


def cmd_export_reviews(args: argparse.Namespace) -> int:
    """Reviewed cases -> labelled images, hard negatives, Label Studio tasks, a recipe that merges them."""
    from datasets.reviews import ExportError, export_reviews, export_window_end
    from serve.cli import open_store, service_config

    tz = service_config(args).tz
    since, until = _when(args.since, tz), _when(args.until, tz, end=True)
    if args.after:
        try:
            since = export_window_end(Path(args.after))
        except ExportError as exc:
            raise _error(exc) from None
    store = open_store(args, create=False)
    try:
        result = export_reviews(
            store, Path(args.out), since, until, args.base_recipe, args.name, args.image_prefix, not args.quiet
        )
    except ExportError as exc:
        raise _error(exc) from None
    finally:
        store.dispose()
    c = result.counts()
    print(
        f"{c['cases']} reviewed cases -> {c['images']} images in {result.out}: {c['confirmed']} confirmed boxes "
        f"({c['corrected']} with the class corrected), {c['dismissed']} dismissed boxes left out, "
        f"{c['background_images']} background images; {c['skipped']} cases skipped (a frame carries the verdicts "
        "of every case on it, earlier reviews included)"
    )
    for s in result.skipped[:10]:
        print(f"  skipped case {s['case_id']} ({s['verdict']}): {s['reason']}")
    if len(result.skipped) > 10:
        print(f"  ... {len(result.skipped) - 10} more in {result.out / 'export.json'}")
    for w in result.withdrawn:
        cases = ", ".join(str(c) for c in w["case_ids"])
        print(f"  withdrawn from {w['export']}: picture {w['sha256'][:12]} (cases {cases}): {w['reason']}")
    out = result.out
    if not c["images"] and not c["withdrawn"]:  # the window is recorded all the same: the next export continues
        print(f"nothing to retrain on in this window; the next export continues with --after {out}")
        return 0
    print(f"contact sheet: {out / 'sheet.jpg'}; Label Studio: {out / 'tasks.json'} (config {out / 'label-studio.xml'})")
    print(f"next: streetwatch data build {out / 'recipe.yaml'} --out DATASET_DIR")
    return 0


def cmd_build(args: argparse.Namespace) -> int:
    """Build a training dataset from a recipe."""
    from datasets.recipe import build, default_shared, load_recipe
    from datasets.sources import SourceMissing

    shared = Path(args.shared) if args.shared else default_shared()
    try:
        recipe = load_recipe(args.recipe)
        if not shared.is_dir():
            raise FileNotFoundError(f"{shared}: shared data folder not found (give --shared or set STREETWATCH_SHARED)")
        result = build(recipe, shared, Path(args.out), workers=args.workers, sheets=not args.no_sheets)
    except (FileNotFoundError, FileExistsError, ValueError, SourceMissing) as exc:
        raise _error(exc) from None
    print(result.report.to_text())
    print("\ntimings (s): " + ", ".join(f"{k} {v}" for k, v in result.timings.items()))
    print(f"dataset: {result.out}/data.yaml; report: {result.out}/report/report.html; manifest: {result.manifest}")
    return 0


def cmd_pack(args: argparse.Namespace) -> int:
    """Write a size-bounded copy of a dataset."""
    from datasets.pack import pack

    subset = [s.strip() for s in args.subset.split(",") if s.strip()]
    sources = [s.strip() for s in args.sources.split(",")] if args.sources else None
    try:
        result = pack(
            Path(args.dataset),
            Path(args.out),
            args.max_side,
            args.format,
            args.quality,
            subset,
            sources,
            args.budget_mb,
        )
    except (FileNotFoundError, FileExistsError, ValueError) as exc:
        raise _error(exc) from None
    for t in result.tried:
        est = f"estimated {t['estimated_mb']} MB" if "estimated_mb" in t else f"wrote {t['actual_mb']} MB"
        print(f"  {t['max_side']} px, quality {t['quality']}: {est}")
    print(result.summary())
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    """A contact sheet of random images with their labels drawn."""
    import numpy as np

    from datasets.preview import label_sheet

    out = Path(args.out)
    if out.is_dir() or out.suffix.lower() not in (".jpg", ".jpeg", ".png"):  # cv2 picks the format by suffix
        what = "is a folder" if out.is_dir() else "does not end in .jpg or .png"
        raise _error(ValueError(f"--out {out}: {what}; give the image file to write, e.g. sheet.jpg"))
    if args.n < 1:
        raise _error(ValueError(f"--n must be at least 1 image, not {args.n}"))
    path = label_sheet(
        Path(args.dataset), args.split, Path(args.out), args.n, np.random.default_rng(args.seed), args.source
    )
    if path is None:
        raise _error(
            FileNotFoundError(f"{args.dataset}: no {args.split} images" + (f" of {args.source}" if args.source else ""))
        )
    print(f"contact sheet: {path}")
    return 0


def cmd_synth(args: argparse.Namespace) -> int:
    """Paste synthetic small ads onto given photos (a preview of what the build generates); a rerun into the
    same --out replaces the earlier run's images (only once the new ones are complete)."""
    import numpy as np

    from datasets.checks import scan_samples
    from datasets.merge import check_output, write_dataset
    from datasets.preview import label_sheet
    from datasets.recipe import CACHE
    from datasets.samples import Sample
    from datasets.synth_ads import generate
    from pipeline.cli import resolve_inputs
    from pipeline.files import replace_folder, staged_folder

    if args.n < 1:
        raise _error(ValueError(f"--n must be at least 1 (the number of images to make), not {args.n}"))
    backgrounds = [Sample("photo", p) for p in resolve_inputs(args.paths)]
    _, issues = scan_samples(backgrounds, features=False)
    for issue in issues:
        print(f"warning: {issue.file}: {issue.message}; not used as a background", file=sys.stderr)
    if not any(b.readable for b in backgrounds):
        raise _error(ValueError(f"no readable background photos among the {len(backgrounds)} given"))
    out = Path(args.out)
    try:
        check_output(out)
    except FileExistsError as exc:
        raise _error(exc) from None
    with staged_folder(out) as staged:
        made = generate(backgrounds, args.n, staged / "work" / "synth-ads", "synth-ads", seed=args.seed, split="train")
        write_dataset(made, staged)
        label_sheet(staged, "train", staged / "synth-ads.jpg", n=min(args.n, 24), rng=np.random.default_rng(0))
        replace_folder(staged, out, keep=(CACHE,))
    boxes = sum(len(s.boxes) for s in made)
    print(f"{len(made)} synthetic images with {boxes} boxes in {out}; contact sheet: {out / 'synth-ads.jpg'}")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    """Check a built dataset against its manifest's file hashes."""
    from datasets.manifest import verify_manifest

    try:
        problems = verify_manifest(Path(args.dataset))
    except (FileNotFoundError, ValueError) as exc:
        raise _error(exc) from None
    for p in problems:
        print(p)
    print(f"{args.dataset}: " + ("intact" if not problems else f"{len(problems)} files differ from the manifest"))
    return 1 if problems else 0


def _source_args(p: argparse.ArgumentParser, map_required: bool = True) -> None:
    p.add_argument("source", help="YOLO dataset folder or data.yaml; with --labels: the images folder")
    p.add_argument(
        "--map",
        required=map_required,
        help="class mapping: shipped name (see `data mappings`), file, or product"
        + ("" if map_required else " (required, except with --into: default product)"),
    )
    p.add_argument("--labels", help="labels folder (images folder + labels folder source)")
    p.add_argument("--split-file", help="yaml with train/eval/clean image stems (default: LABELS/split.yaml)")
    p.add_argument("--name", help="source name (default: from the folder name)")
    p.add_argument("--val-fraction", type=float, default=0.15, help="held-out share for images without a split")


def register(sub: argparse._SubParsersAction) -> None:
    """``streetwatch data`` and its subcommands."""
    data = sub.add_parser(
        "data",
        help="training data: import, check, build, pack, preview",
        description="Assemble, check and pack training datasets.",
    )
    dsub = data.add_subparsers(dest="data_command", metavar="DATA_COMMAND", required=True)

    p = dsub.add_parser("mappings", help="list the shipped class mappings")
    p.set_defaults(func=cmd_mappings)

    p = dsub.add_parser("check", help="check a source and write a report (terminal table, HTML/markdown, plots)")
    _source_args(p)
    p.add_argument("--report", help="report folder (default: check-NAME)")
    p.add_argument("--no-scene", action="store_true", help="pHash duplicates only (skip same-scene matching)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--strict", action="store_true", help="exit 1 when there are errors or train/val leaks")
    p.set_defaults(func=cmd_check, needs=("matplotlib",))

    p = dsub.add_parser(
        "import",
        help="import one YOLO source with a class mapping into a product dataset, or (--into) corrected "
        "annotations back into an export-reviews folder",
        description="Without --into: import one source into a product-class dataset. With --into EXPORT: SOURCE is "
        "a Label Studio / CVAT export of the export's tasks (a YOLO folder, or a COCO JSON file or folder); its "
        "boxes replace the labels of the images it covers (matched by file name, which carries the case ids).",
    )
    _source_args(p, map_required=False)
    p.add_argument("--out", help="output dataset folder (without --into)")
    p.add_argument("--into", help="an export-reviews folder whose labels the corrected annotations replace")
    p.add_argument("--format", choices=("yolo", "coco"), help="with --into: annotation format (default: detected)")
    p.add_argument("--no-sheets", action="store_true", help="skip the contact sheets")
    p.set_defaults(func=cmd_import)  # needs matplotlib, except --into

    p = dsub.add_parser(
        "export-reviews",
        help="reviewed cases -> labelled images (class corrections applied) and hard negatives, YOLO + Label Studio",
        description="Export the cases reviewers confirmed (with their class corrections) or dismissed (hard "
        "negatives) as a labelled folder source: clean frames, YOLO labels, export.json (case ids, verdicts, "
        "skipped cases and why), Label Studio tasks with the model's boxes as pre-annotations, a contact sheet and "
        "recipe.yaml that merges the folder into the base training set.",
    )
    window = p.add_mutually_exclusive_group()
    window.add_argument("--since", help="cases reviewed on or after this date (YYYY-MM-DD, service time zone) or time")
    window.add_argument(
        "--after",
        metavar="EXPORT_DIR",
        help="cases reviewed since that earlier export's window ended (consecutive exports: none missed or repeated)",
    )
    p.add_argument("--until", help="cases reviewed up to this date (inclusive) or before this time")
    p.add_argument("--out", required=True, help="new folder for the export (exports are kept as versions)")
    p.add_argument("--base-recipe", default="product-v2", help="recipe recipe.yaml extends (default: %(default)s)")
    p.add_argument("--name", help="source name in the recipe (default: field-YYYYMMDD-HHMMSS)")
    p.add_argument(
        "--image-prefix",
        help="prefix of image URLs in tasks.json (default: /data/local-files/?d=OUT_NAME/, Label Studio local "
        "files with LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT = OUT's parent folder)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    from serve.cli import _store_args

    _store_args(p)
    p.set_defaults(func=cmd_export_reviews)

    p = dsub.add_parser(
        "build",
        help="build a training dataset from a recipe (import, dedup, pseudo-labels, "
        "synthetic ads, merge, check, manifest)",
    )
    p.add_argument("recipe", help="recipe file or shipped recipe name (datasets/recipes/)")
    p.add_argument("--shared", help="shared data folder (default: $STREETWATCH_SHARED or ../shared)")
    p.add_argument("--out", required=True, help="output dataset folder")
    p.add_argument("--workers", type=int, default=2, help="decode/encode threads")
    p.add_argument("--no-sheets", action="store_true", help="skip the contact sheets")
    p.set_defaults(func=cmd_build, needs=("matplotlib", "ultralytics", "torch"))

    p = dsub.add_parser("pack", help="size-bounded copy of a dataset for a remote GPU machine")
    p.add_argument("dataset", help="built dataset folder")
    p.add_argument("--out", required=True, help="folder for the packed copy")
    p.add_argument("--max-side", type=int, default=512, help="longest image side in pixels (default: %(default)s)")
    p.add_argument("--format", choices=("webp", "jpeg"), default="webp")
    p.add_argument("--quality", type=int, default=72, help="starting encoder quality (default: %(default)s)")
    p.add_argument("--subset", default="train,val", help="splits to pack (default: %(default)s)")
    p.add_argument("--sources", help="only these sources, comma-separated")
    p.add_argument("--budget-mb", type=float, default=40.0, help="byte budget in MB; 0: none (default: %(default)s)")
    p.set_defaults(func=cmd_pack)

    p = dsub.add_parser("show", help="contact sheet of random images with their labels drawn")
    p.add_argument("dataset", help="built dataset folder")
    p.add_argument("--out", required=True, help="image file to write (.jpg or .png)")
    p.add_argument("--split", choices=("train", "val"), default="train")
    p.add_argument("--source", help="only this source")
    p.add_argument("--n", type=int, default=24, help="images on the sheet")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_show)

    p = dsub.add_parser("synth-ads", help="paste synthetic small ads onto photos (preview)")
    p.add_argument("paths", nargs="+", help="background photos, folders or globs")
    p.add_argument("--out", required=True, help="output folder (images, labels, contact sheet)")
    p.add_argument("--n", type=int, default=16, help="images to make")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_synth)

    p = dsub.add_parser("verify", help="check a built dataset against its manifest")
    p.add_argument("dataset", help="built dataset folder")
    p.set_defaults(func=cmd_verify)


if __name__ == "__main__":
    from pipeline.cli import main

    sys.exit(main(["data", *sys.argv[1:]]))
