"""Dataset recipes and the build that runs one.

A recipe (``datasets/recipes/*.yaml``, validated by :class:`Recipe`) lists the sources with their
mappings and says how to deduplicate, pseudo-label and synthesise. :func:`build` runs it:

1. import each source (a missing optional source is skipped with a warning);
2. scan every image (corrupt files, size, hashes), drop degenerate boxes;
3. keep only the latest review export's copy of a frame exported twice (a case reviewed again after an
   earlier export); find duplicates, near-duplicates and same-scene pairs; assign near-duplicate-safe splits;
4. run the teacher (people, vehicles) over the real images;
5. synthesise small ads on train backgrounds (train) and val backgrounds (val);
6. add pseudo-labels to the training images (teacher run on the synthetic ones too);
7. write the dataset, per-source lists, the check report, contact sheets and ``manifest.json``.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Literal

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from datasets.checks import CheckReport, DuplicatePair, check_box_sizes, find_duplicates, scan_samples
from datasets.dedup import NEAR_DUPLICATE_BITS, SCENE_MIN_INLIERS, near_duplicate_pairs, phash_pair
from datasets.manifest import write_manifest
from datasets.merge import check_output, write_dataset
from datasets.samples import SPLITS, Issue, Sample, class_counts
from datasets.sources import REPO, SourceData, SourceMissing, SourceSpec, load_source, resolve_path
from datasets.split import assign_splits
from models.classes import CLASS_IDS, CLASS_NAMES
from models.registry import file_sha256
from pipeline.decode import read_image
from pipeline.files import read_text, replace_folder, staged_folder

RECIPES_DIR = Path(__file__).resolve().parent / "recipes"
#: where in a dataset folder the teacher's detections are cached (kept from one build to the next)
CACHE = "work/cache"


class DedupConfig(BaseModel):
    """How duplicates are found and what happens to train images that duplicate val images."""

    model_config = ConfigDict(extra="forbid")

    phash_bits: int = Field(NEAR_DUPLICATE_BITS, ge=0, le=32, description="pHash Hamming distance for near-duplicates")
    scene: bool = Field(True, description="Also match rotated/cropped copies and same-scene shots (ORB + RANSAC)")
    scene_inliers: int = Field(SCENE_MIN_INLIERS, ge=8, description="ORB inliers for a same-scene pair")
    leak_policy: Literal["drop", "move"] = Field(
        "drop", description="A train image that duplicates a given val image: drop it, or move it to val"
    )


class PseudoConfig(BaseModel):
    """Pseudo-labels for classes the sources do not label."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(True, description="Add pseudo-labels")
    teacher: str = Field("default", description="Registry model name, model folder, or an ultralytics .pt path")
    conf: float = Field(0.5, gt=0.0, lt=1.0, description="Teacher confidence above which a box becomes a label")
    classes: list[str] = Field(
        default_factory=lambda: ["person", "car", "motorbike", "bicycle"], description="Product classes to add"
    )
    splits: list[Literal["train", "val"]] = Field(
        default_factory=lambda: ["train"], description="Splits whose images get pseudo-labels"
    )
    duplicate_iou: float = Field(
        0.5, gt=0.0, le=1.0, description="Skip a box overlapping a same-class label above this"
    )
    conflict_iou: float = Field(
        0.6, gt=0.0, le=1.0, description="Skip a box overlapping a label of another class above this IoU"
    )
    min_pixels: float = Field(4.0, ge=0.0, description="Skip boxes with a side under this many pixels")

    @field_validator("classes")
    @classmethod
    def _known(cls, value: list[str]) -> list[str]:
        for c in value:
            if c not in CLASS_IDS:
                raise ValueError(f"unknown product class {c!r}; known: {', '.join(CLASS_NAMES)}")
        return value


class SynthAdsConfig(BaseModel):
    """Synthetic small ads pasted onto real backgrounds, kept as their own source."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(True, description="Generate synthetic small ads")
    source: str = Field("synth-ads", pattern=r"^[a-z0-9][a-z0-9_-]*$", description="Source name of the images")
    backgrounds: dict[str, int] = Field(
        description="Source name -> number of training images to make on that source's train images"
    )
    val_backgrounds: dict[str, int] = Field(
        default_factory=dict, description="Source name -> number of validation images on that source's val images"
    )
    seed: int = Field(0, description="Random seed; each image depends only on (seed, split, index)")


class Recipe(BaseModel):
    """A dataset build: sources, deduplication, pseudo-labels, synthetic small ads."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$", description="Dataset name (recorded in the manifest)")
    description: str = Field("", description="What the dataset is for")
    extends: str | None = Field(
        None,
        description="A recipe (shipped name or file) this one builds on: its sources come first, then these; "
        "seed, dedup, pseudo and synth_ads come from it unless set here",
    )
    seed: int = Field(0, description="Seed of the held-out split and the duplicate matcher")
    sources: list[SourceSpec] = Field(min_length=1, description="Labelled sources and their class mappings")
    dedup: DedupConfig = Field(default_factory=DedupConfig, description="Duplicate finding and leak handling")
    pseudo: PseudoConfig = Field(default_factory=PseudoConfig, description="Pseudo-labelling")
    synth_ads: SynthAdsConfig | None = Field(None, description="Synthetic small ads (none: off)")
    repeat: dict[str, Annotated[int, Field(ge=1, le=20)]] = Field(
        default_factory=dict,
        description="Source name -> oversampling, overriding that source's own repeat: rebalances the sources "
        "of a recipe this one extends without restating them",
    )

    @model_validator(mode="after")
    def _names(self) -> Recipe:
        names = [s.name for s in self.sources]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ValueError(f"source names must be unique: {', '.join(sorted(dup))}")
        unknown = sorted(set(self.repeat) - set(names))
        if unknown:
            raise ValueError(f"repeat names no source of the recipe: {', '.join(unknown)}")
        for spec in self.sources:
            spec.repeat = self.repeat.get(spec.name, spec.repeat)
        if self.synth_ads:
            if self.synth_ads.source in names:
                raise ValueError(f"synth_ads.source {self.synth_ads.source!r} clashes with a source name")
            for n in [*self.synth_ads.backgrounds, *self.synth_ads.val_backgrounds]:
                if n not in names:
                    raise ValueError(f"synth_ads background {n!r} is not a source of the recipe")
        return self


def load_recipe(ref: str | Path, _seen: tuple[Path, ...] = ()) -> Recipe:
    """A recipe file, or a shipped recipe by name, with the recipe it ``extends`` merged in; errors name the file."""
    path = Path(ref)
    if not path.is_file():
        shipped = RECIPES_DIR / f"{ref}.yaml"
        if not shipped.is_file():
            names = ", ".join(sorted(p.stem for p in RECIPES_DIR.glob("*.yaml")))
            raise FileNotFoundError(f"{ref}: no such recipe file or shipped recipe (shipped: {names})")
        path = shipped
    if path.resolve() in _seen:
        raise ValueError(f"{path}: recipes extend each other in a circle ({' -> '.join(str(p) for p in _seen)})")
    inherited = 0  # sources of the recipe it extends, which come first
    try:
        raw = yaml.safe_load(read_text(path))
        if isinstance(raw, dict) and raw.get("extends"):
            base_ref = str(raw["extends"])
            relative = path.parent / base_ref
            base = load_recipe(relative if relative.is_file() else base_ref, (*_seen, path.resolve()))
            raw, inherited = extend(base, raw), len(base.sources)
        return Recipe.model_validate(raw)
    except ValidationError as exc:
        raise ValueError(f"{path}: invalid recipe: {_errors(exc, inherited)}") from None
    except yaml.YAMLError as exc:
        raise ValueError(f"{path}: invalid YAML: {exc}") from None


def _errors(exc: ValidationError, inherited: int) -> str:
    """Each refused field with its reason, a source numbered as in the file (``sources.0``: its first)."""
    parts = []
    for e in exc.errors(include_url=False):
        loc = list(e["loc"])
        if inherited and len(loc) > 1 and loc[0] == "sources" and isinstance(loc[1], int):
            loc[1] = loc[1] - inherited if loc[1] >= inherited else f"{loc[1]} (of the recipe it extends)"
        parts.append(f"{'.'.join(map(str, loc)) or 'recipe'}: {e['msg']}")
    return "; ".join(parts)


def extend(base: Recipe, raw: dict) -> dict:
    """``raw`` (a recipe's fields) on top of ``base``: the base's sources first, then the recipe's own; the
    other fields of the base unless the recipe sets them."""
    merged = base.model_dump(mode="json", exclude={"extends", "name", "description"})
    merged.update({k: v for k, v in raw.items() if k != "sources"})
    merged["sources"] = [*merged["sources"], *(raw.get("sources") or [])]
    return merged


def default_shared() -> Path:
    """``$STREETWATCH_SHARED``, else ``../shared`` beside the repository."""
    env = os.environ.get("STREETWATCH_SHARED")
    return Path(env) if env else REPO.parent / "shared"


@dataclass
class BuildResult:
    """What a build produced."""

    out: Path
    report: CheckReport
    manifest: Path
    timings: dict[str, float] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)
    pseudo: dict | None = None
    synthetic: dict | None = None


class _Timer:
    def __init__(self) -> None:
        self.timings: dict[str, float] = {}

    def step(self, name: str):
        timer = self

        class _Step:
            def __enter__(self):
                self.t = time.perf_counter()
                print(f"== {name}", file=sys.stderr, flush=True)

            def __exit__(self, *exc):
                timer.timings[name] = round(time.perf_counter() - self.t, 1)

        return _Step()


def build(
    recipe: Recipe, shared: Path, out: Path, repo: Path = REPO, workers: int = 2, sheets: bool = True
) -> BuildResult:
    """Run a recipe into ``out`` (see the module docstring for the steps). The dataset is built in a hidden
    folder beside ``out`` (:func:`pipeline.files.staged_folder`) that replaces the one in ``out`` only once it
    is complete (:func:`pipeline.files.replace_folder`): a build that fails or is interrupted (a full disk, a
    missing source, Ctrl-C) leaves an earlier dataset in ``out`` as it was, and no partial one for training to
    pick up or for a rerun to refuse as a foreign folder. The teacher's detections are cached in
    ``out/work/cache``, which stays for the next build whatever happens to this one."""
    check_output(out)
    with staged_folder(out) as staged:
        result = _build(recipe, shared, staged, out / CACHE, repo, workers, sheets)
        replace_folder(staged, out, keep=(CACHE,))
    result.out, result.manifest = out, out / result.manifest.name
    return result


def _build(
    recipe: Recipe, shared: Path, out: Path, cache_dir: Path, repo: Path, workers: int, sheets: bool
) -> BuildResult:
    """The steps of :func:`build`, into the empty folder ``out``; teacher detections cached in ``cache_dir``."""
    timer = _Timer()
    t0 = time.perf_counter()
    work = out / "work"
    issues: list[Issue] = []
    skipped: list[str] = []
    loaded: list[SourceData] = []

    with timer.step("import sources"):
        for spec in recipe.sources:
            try:
                data = load_source(spec, shared, repo)
            except SourceMissing as exc:
                if spec.required:
                    raise
                skipped.append(f"source {spec.name} skipped: {exc}")
                print(f"warning: {skipped[-1]}", file=sys.stderr)
                continue
            loaded.append(data)
            issues.extend(data.issues)
            print(f"  {spec.name}: {len(data.samples)} images ({spec.kind}, mapping {spec.mapping})", file=sys.stderr)
    samples = [s for d in loaded for s in d.samples]

    with timer.step("scan images"):
        features, found = scan_samples(samples, features=recipe.dedup.scene, workers=workers)
        issues += found
        issues += check_box_sizes(samples)
        readable = [i for i, s in enumerate(samples) if s.readable]
        samples = [samples[i] for i in readable]
        features = [features[i] for i in readable]

    with timer.step("find duplicates"):
        superseded = superseded_exports(samples, loaded)
        samples = [s for i, s in enumerate(samples) if i not in superseded]
        features = [f for i, f in enumerate(features) if i not in superseded]
        pairs = find_duplicates(
            samples,
            features if recipe.dedup.scene else None,
            recipe.dedup.phash_bits,
            recipe.dedup.scene_inliers,
            recipe.seed,
        )
        del features

    with timer.step("split"):
        fractions = {d.spec.name: d.spec.val_fraction for d in loaded}
        pair_keys = [(samples[p.a].key, samples[p.b].key, p.kind, p.score) for p in pairs]
        samples, dropped = assign_splits(samples, pairs, fractions, recipe.seed, recipe.dedup.leak_policy)
        dropped = [*superseded.values(), *dropped]

    teacher_dets: dict[str, object] = {}
    pseudo_stats = None
    teacher = None
    if recipe.pseudo.enabled:
        from datasets.pseudo import DetectionCache, Teacher, teacher_detections

        with timer.step("teacher on real images"):
            teacher = Teacher(recipe.pseudo.teacher, recipe.pseudo.classes)
            cache = DetectionCache(cache_dir, teacher)
            # images that get pseudo-labels, and synthetic-ad backgrounds (ads must not cover people, vehicles)
            wanted = {d.spec.name for d in loaded if d.spec.pseudo}
            if recipe.synth_ads and recipe.synth_ads.enabled:
                wanted |= set(recipe.synth_ads.backgrounds) | set(recipe.synth_ads.val_backgrounds)
            need = [s for s in samples if s.source in wanted]
            for s, d in zip(need, teacher_detections(need, teacher, cache, desc="teacher (real)"), strict=True):
                teacher_dets[s.key] = d

    synthetic: list[Sample] = []
    synth_info = None
    if recipe.synth_ads and recipe.synth_ads.enabled:
        from datasets.synth_ads import generate

        cfg = recipe.synth_ads
        with timer.step("synthesize small ads"):
            synth_dir = work / cfg.source
            avoid = {}
            for k, d in teacher_dets.items():
                if d is not None and len(d):
                    avoid[k] = d[d.confidence >= recipe.pseudo.conf].xyxy
            for split, plan in (("train", cfg.backgrounds), ("val", cfg.val_backgrounds)):
                for k, (src, n) in enumerate(plan.items()):
                    bgs = [s for s in samples if s.source == src and s.split == split]
                    if not bgs:
                        issues.append(Issue("warning", "synth", src, f"no {split} images of {src} to paste ads on"))
                        continue
                    made = generate(
                        bgs,
                        n,
                        synth_dir,
                        cfg.source,
                        seed=cfg.seed * 1000 + k,
                        split=split,
                        workers=workers,
                        desc=f"small ads on {src} ({split})",
                        avoid=avoid,
                    )
                    for s in made:
                        s.tags.add(f"on-{src}")
                    synthetic += made
            for s in synthetic:
                s.sha256 = file_sha256(s.image)
                s.phash = phash_pair(read_image(s.image))
            synth_info = {
                "source": cfg.source,
                "images": {sp: sum(s.split == sp for s in synthetic) for sp in SPLITS},
                "ads": int(sum((s.boxes[:, 0] == CLASS_IDS["small_ad"]).sum() for s in synthetic)),
                "backgrounds": cfg.backgrounds,
                "val_backgrounds": cfg.val_backgrounds,
                "seed": cfg.seed,
                "fonts": "Noto Sans/Serif CJK SC subsets (SIL OFL 1.1), datasets/assets/fonts",
            }
    samples = samples + synthetic

    if recipe.pseudo.enabled and teacher is not None:
        from datasets.pseudo import DetectionCache, add_pseudo_labels, teacher_detections

        with timer.step("pseudo-labels"):
            if synthetic:
                cache = DetectionCache(cache_dir, teacher)
                for s, d in zip(
                    synthetic, teacher_detections(synthetic, teacher, cache, desc="teacher (synthetic)"), strict=True
                ):
                    teacher_dets[s.key] = d
            no_pseudo = {d.spec.name for d in loaded if not d.spec.pseudo}
            targets = [
                s
                for s in samples
                if s.split in recipe.pseudo.splits
                and s.source not in no_pseudo
                and background_source(s) not in no_pseudo
            ]
            pseudo_stats = add_pseudo_labels(
                targets,
                [teacher_dets.get(s.key) for s in targets],
                recipe.pseudo.conf,
                recipe.pseudo.classes,
                recipe.pseudo.duplicate_iou,
                recipe.pseudo.min_pixels,
                conflict_iou=recipe.pseudo.conflict_iou,
            )

    with timer.step("write dataset"):
        write_dataset(samples, out, repeat={spec.name: spec.repeat for spec in recipe.sources})

    with timer.step("check report"):
        index = {s.key: i for i, s in enumerate(samples)}
        final_pairs = [
            DuplicatePair(index[a], index[b], kind, score)
            for a, b, kind, score in pair_keys
            if a in index and b in index
        ]
        seen = {(p.a, p.b) for p in final_pairs}
        own_background = 0
        if synthetic:  # synthetic images against everything, by pHash (they inherit their background's split)
            synth_name = recipe.synth_ads.source
            hashes = np.stack([s.phash for s in samples])
            for a, b, d in near_duplicate_pairs(hashes, recipe.dedup.phash_bits):
                sa, sb = samples[a], samples[b]
                if (a, b) in seen or synth_name not in (sa.source, sb.source):
                    continue
                if sa.split == sb.split and (
                    sa.source == sb.source or f"background {sa.key}" == sb.note or f"background {sb.key}" == sa.note
                ):
                    own_background += 1  # by construction: a synthetic image and its background, or two on one
                    continue
                final_pairs.append(DuplicatePair(a, b, "near", d))
        report = CheckReport(
            f"Dataset {recipe.name}", samples, issues, sorted(final_pairs, key=lambda p: (p.a, p.b)), dropped
        )
        report.notes += skipped
        if pseudo_stats:
            added = ", ".join(f"{k} {v}" for k, v in pseudo_stats.added.items()) or "none"
            report.notes.append(f"pseudo-labels from {teacher.name} at conf >= {recipe.pseudo.conf}: {added}")
            for t, c in sorted(pseudo_stats.by_threshold.items()):
                report.notes.append(
                    f"  teacher boxes at conf >= {t:.2f}: " + (", ".join(f"{k} {v}" for k, v in c.items()) or "none")
                )
        if synth_info:
            report.notes.append(
                f"synthetic small ads: {synth_info['images']} images, {synth_info['ads']} ads; {own_background} "
                "pHash pairs of a synthetic image with its own background (same split by construction) not listed"
            )
        report.write(out / "report")
        if sheets:
            from datasets.preview import label_sheet

            rng = np.random.default_rng(recipe.seed)
            for split in SPLITS:
                label_sheet(out, split, out / "report" / f"samples-{split}.jpg", n=24, rng=rng)
            if synthetic:
                label_sheet(
                    out, "train", out / "report" / "synth-ads.jpg", n=16, rng=rng, source=recipe.synth_ads.source
                )

    with timer.step("manifest"):
        manifest = _manifest(
            recipe, shared, loaded, samples, dropped, pairs, pseudo_stats, teacher, synth_info, skipped
        )
        manifest["timings_s"] = timer.timings | {"total": round(time.perf_counter() - t0, 1)}
        path = write_manifest(out, manifest)
    timer.timings["total"] = round(time.perf_counter() - t0, 1)
    return BuildResult(
        out, report, path, timer.timings, skipped, pseudo_stats.to_json() if pseudo_stats else None, synth_info
    )


def superseded_exports(samples: list[Sample], loaded: list[SourceData]) -> dict[int, tuple[Sample, str]]:
    """Frames that a later review export of the recipe exported again (a case relabelled or reviewed again
    after the earlier export) or withdrew (a dismissal reopened and not reviewed again): index -> (sample,
    why), for every copy but the latest export's. The latest copy carries every verdict on the frame as of
    its window, so an older copy would only contradict it; a withdrawn frame waits for its next review."""
    from datasets.reviews import EXPORT_FILE, load_export

    exports = {d.spec.name: d for d in loaded if d.root and (d.root.parent / EXPORT_FILE).is_file()}
    rank = {name: k for k, name in enumerate(exports)}
    withdrawn: dict[str, tuple[int, str, list[int]]] = {}  # frame sha256 -> (rank, export, cases): latest withdrawal
    for name, d in exports.items():
        for w in load_export(d.root.parent).get("withdrawn", []):
            if w["sha256"] not in withdrawn or rank[name] >= withdrawn[w["sha256"]][0]:
                withdrawn[w["sha256"]] = (rank[name], name, w.get("case_ids", []))
    latest: dict[str, Sample] = {}
    for s in samples:
        if s.source in rank and (s.sha256 not in latest or rank[s.source] >= rank[latest[s.sha256].source]):
            latest[s.sha256] = s
    out = {}
    for i, s in enumerate(samples):
        if s.source not in rank:
            continue
        if latest[s.sha256] is not s:
            out[i] = (s, f"superseded by {latest[s.sha256].key}: the same frame in a later review export")
        elif s.sha256 in withdrawn and withdrawn[s.sha256][0] > rank[s.source]:
            _, name, case_ids = withdrawn[s.sha256]
            cases = ", ".join(f"case {c}" for c in case_ids)
            out[i] = (s, f"withdrawn by {name}: a verdict on it changed since ({cases}); not exported again yet")
    return out


def background_source(sample: Sample) -> str | None:
    """The source of a synthetic image's background (``None`` for real images)."""
    return sample.note.split()[1].split("/")[0] if sample.note.startswith("background ") else None


def split_counts(samples: list[Sample]) -> dict[str, dict]:
    """Images, own boxes, pseudo boxes and per-class counts per split."""
    out = {}
    for split in SPLITS:
        part = [s for s in samples if s.split == split]
        own = np.concatenate([s.boxes for s in part]) if part else np.zeros((0, 5))
        ps = np.concatenate([s.pseudo for s in part]) if part else np.zeros((0, 5))
        out[split] = {
            "images": len(part),
            "boxes": len(own),
            "pseudo": len(ps),
            "classes": class_counts(own),
            "pseudo_classes": class_counts(ps),
            "background_images": sum(len(s.all_boxes()) == 0 for s in part),
        }
    return out


def _manifest(recipe, shared, loaded, samples, dropped, pairs, pseudo_stats, teacher, synth_info, skipped) -> dict:
    sources = []
    for d in loaded:
        spec = d.spec
        mine = [s for s in samples if s.source == spec.name]
        sources.append(
            {
                "name": spec.name,
                "kind": spec.kind,
                "path": spec.path,
                "resolved": str(resolve_path(spec.path, shared)),
                "labels": spec.labels,
                "mapping": spec.mapping,
                "map": d.mapping.map if d.mapping else None,
                "source_names": d.names,
                "labelled": [CLASS_NAMES[i] for i in sorted(mine[0].labelled)] if mine else [],
                "images_read": len(d.samples),
                "splits": split_counts(mine),
                "tags": {k: len(v) for k, v in d.extra.items()},
            }
        )
    if synth_info:
        mine = [s for s in samples if s.source == synth_info["source"]]
        sources.append(
            {"name": synth_info["source"], "kind": "synthetic", "synthetic": True, "splits": split_counts(mine)}
        )
    return {
        "name": recipe.name,
        "description": recipe.description,
        "recipe": recipe.model_dump(mode="json"),
        "classes": list(CLASS_NAMES),
        "shared": str(shared),
        "sources": sources,
        "skipped_sources": skipped,
        "splits": split_counts(samples),
        "dedup": {
            **recipe.dedup.model_dump(),
            "pairs": {k: sum(p.kind == k for p in pairs) for k in ("exact", "near", "scene")},
            "dropped": [{"image": s.key, "why": why} for s, why in dropped],
        },
        "pseudo": (
            {
                **teacher.describe(),
                "conf": recipe.pseudo.conf,
                "classes": recipe.pseudo.classes,
                "splits": recipe.pseudo.splits,
                **pseudo_stats.to_json(),
            }
            if pseudo_stats and teacher
            else None
        ),
        "synthetic": synth_info,
    }
