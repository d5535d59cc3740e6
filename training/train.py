"""Training a product detector with ultralytics from pretrained weights, configured by a YAML file.

:class:`TrainConfig` is the whole recipe (data, base weights, size, epochs, device, camera-condition
augmentation); :func:`load_config` reads it with ``key=value`` overrides and :func:`train` runs it.
The run folder keeps the config used (``streetwatch-train.yaml``, reloadable), a run record
(``streetwatch-run.json``: base weights, data, hardware, augmentations applied, timings, final
metrics) and a picture of augmented training samples (``augment-preview.png``).
"""

from __future__ import annotations

import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Literal

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from tqdm import tqdm

from datasets.manifest import MANIFEST
from datasets.pack import PACK_INFO, SOURCE_MANIFEST
from models.classes import CLASS_NAMES
from models.registry import NAME_PATTERN, ModelError, file_sha256, now_iso, resolve
from pipeline.files import TextFileError, atomic_write, disk_full, read_text
from training.augment import AugmentConfig, build_augmentations, preview_grid, transform_names

CONFIG_NAME = "streetwatch-train.yaml"
RUN_NAME = "streetwatch-run.json"
PREVIEW_NAME = "augment-preview.png"


class TrainConfig(BaseModel):
    """One training run: what to train on, from which weights, how long, where, with which augmentation."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(
        "product",
        pattern=NAME_PATTERN,
        description="Run name: the run folder is OUT/NAME (NAME2, NAME3... if taken); one folder name, no /",
    )
    data: str = Field(description="Dataset data.yaml (ultralytics layout); relative paths are from the working dir")
    base: str = Field(
        "default",
        description="Starting weights: a .pt file path (e.g. the COCO YOLO11n) or a registry model name "
        "whose model.pt is used",
    )
    out: str = Field("runs/train", description="Folder that holds the run folders")
    device: str = Field("auto", description="'cpu', a CUDA device index such as '0', or 'auto' (GPU if present)")
    epochs: int = Field(50, ge=1, description="Training epochs")
    imgsz: int = Field(512, ge=32, multiple_of=32, description="Square training and validation size in pixels")
    batch: int = Field(16, ge=1, description="Images per batch")
    workers: int = Field(2, ge=0, description="Data-loading worker processes (ultralytics uses none on the CPU)")
    threads: int | None = Field(
        None,
        ge=1,
        description="torch threads when training on the CPU; default: every core (ultralytics alone would "
        "leave one core idle: it uses cores - 1)",
    )
    cache: Literal["ram", "disk", False] = Field(False, description="Cache decoded images: 'ram', 'disk' or false")
    patience: int = Field(100, ge=0, description="Stop after this many epochs without validation improvement")
    fraction: float = Field(1.0, gt=0, le=1, description="Fraction of the training images to use (smoke runs)")
    seed: int = Field(0, description="Random seed")
    amp: bool = Field(True, description="Mixed precision on GPU (ignored on the CPU)")
    optimizer: str = Field("auto", description="ultralytics optimizer name (auto, SGD, AdamW, ...)")
    lr0: float | None = Field(None, gt=0, description="Initial learning rate; default: ultralytics' choice")
    cos_lr: bool = Field(False, description="Cosine learning-rate schedule")
    close_mosaic: int = Field(10, ge=0, description="Turn mosaic off for the last N epochs")
    mosaic: float = Field(1.0, ge=0, le=1, description="Mosaic probability")
    mixup: float = Field(0.0, ge=0, le=1, description="MixUp probability")
    scale: float = Field(0.5, ge=0, lt=1, description="Random scale gain (+/-)")
    fliplr: float = Field(0.5, ge=0, le=1, description="Horizontal flip probability")
    plots: bool = Field(True, description="Write ultralytics' plots (labels, results, PR curves) into the run")
    val: bool = Field(True, description="Validate after every epoch (off: only at the end)")
    augment: AugmentConfig = Field(default_factory=AugmentConfig, description="Camera-condition augmentation")
    ultralytics: dict[str, Any] = Field(
        default_factory=dict, description="Further ultralytics train arguments passed through unchanged"
    )


class ConfigError(ValueError):
    """A training config file or override is invalid; the message names the file and the problem."""


def load_config(path: Path | str, overrides: list[str] | None = None) -> TrainConfig:
    """Read a config file and apply ``key=value`` overrides (dotted keys for nested fields, YAML values)."""
    path = Path(path)
    try:
        raw = yaml.safe_load(read_text(path)) or {}
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file") from None
    except TextFileError as exc:
        raise ConfigError(str(exc)) from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: a training config must be a mapping of fields")
    for item in overrides or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set {item!r}: expected key=value")
        node = raw
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {item!r}: {part} is not a group of fields")
        node[leaf] = yaml.safe_load(value) if value else ""
    try:
        return TrainConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(f"{path}: invalid training config: {exc}") from None


def resolve_base(base: str) -> Path:
    """The .pt file a run starts from: a file path, or a registry model's checkpoint."""
    path = Path(base)
    if path.suffix == ".pt":
        if not path.is_file():
            raise ConfigError(f"base weights {path}: no such file")
        return path.resolve()
    try:
        return resolve(base).file("pt")
    except ModelError as exc:
        raise ConfigError(f"base {base!r}: not a .pt file and not a registry model with a .pt ({exc})") from None


def resolve_device(device: str) -> str:
    """'auto' becomes '0' when CUDA is available, else 'cpu'; CUDA indices ('0', '0,1', 'cuda:1') must name
    devices this machine has (a :class:`ConfigError` naming ``device`` otherwise, not ultralytics' traceback)."""
    import torch

    if device == "auto":
        return "0" if torch.cuda.is_available() else "cpu"
    if device in ("cpu", "mps"):
        return device
    indices = device.removeprefix("cuda:").split(",")
    if not all(i.strip().isdigit() for i in indices):
        raise ConfigError(
            f"device {device!r}: expected 'auto', 'cpu', 'mps' or CUDA device indices such as '0', '0,1' or 'cuda:0'"
        )
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    missing = [int(i) for i in indices if int(i) >= count]
    if missing:
        have = f"{count} CUDA device(s), 0 to {count - 1}" if count else "no CUDA device"
        raise ConfigError(f"device {device!r}: this machine has {have}; use device=auto or device=cpu")
    return ",".join(str(int(i)) for i in indices)


def dataset_names(data: Path) -> list[str]:
    """Class names of a data.yaml, in id order; a clear error when it is missing or malformed."""
    from training.evaluate import DatasetError, dataset_yaml

    try:
        return dataset_yaml(data).names
    except DatasetError as exc:
        raise ConfigError(str(exc)) from None


def ultralytics_args(cfg: TrainConfig) -> dict[str, Any]:
    """The ultralytics ``train`` arguments for a config (the augmentations included)."""
    args: dict[str, Any] = {
        "data": str(Path(cfg.data).resolve()),
        "epochs": cfg.epochs,
        "imgsz": cfg.imgsz,
        "batch": cfg.batch,
        "workers": cfg.workers,
        "cache": cfg.cache,
        "patience": cfg.patience,
        "fraction": cfg.fraction,
        "seed": cfg.seed,
        "optimizer": cfg.optimizer,
        "cos_lr": cfg.cos_lr,
        "close_mosaic": cfg.close_mosaic,
        "mosaic": cfg.mosaic,
        "mixup": cfg.mixup,
        "scale": cfg.scale,
        "fliplr": cfg.fliplr,
        "plots": cfg.plots,
        "val": cfg.val,
        "device": resolve_device(cfg.device),
        "project": str(Path(cfg.out).resolve()),
        "name": cfg.name,
        "exist_ok": False,
        "verbose": False,
        "augmentations": build_augmentations(cfg.augment),
    }
    args["amp"] = cfg.amp and args["device"] != "cpu"
    if cfg.lr0 is not None:
        args["lr0"] = cfg.lr0
    args.update(cfg.ultralytics)
    return args


class _Progress:
    """Trainer callbacks: one progress bar over all batches of all epochs (with ETA), a line per epoch,
    and a check that the camera-condition augmentations are in the training data pipeline."""

    def __init__(self, cfg: TrainConfig, config_text: str, record: dict[str, Any]):
        self.cfg = cfg
        self.config_text = config_text
        self.record = record
        self.bar: tqdm | None = None
        self.epoch_start = time.time()
        self.in_epoch = False
        self.last_batch: float | None = None
        self.batch_seconds: list[float] = []
        self.first_batch_seconds: list[float] = []

    def on_pretrain_routine_start(self, trainer: Any) -> None:
        if trainer.device.type == "cpu":  # after ultralytics' select_device set its own count
            import torch

            torch.set_num_threads(self.cfg.threads or os.cpu_count() or 1)
            self.record["threads"] = torch.get_num_threads()
        atomic_write(Path(trainer.save_dir) / CONFIG_NAME, self.config_text)

    def on_pretrain_routine_end(self, trainer: Any) -> None:
        dataset = trainer.train_loader.dataset
        applied = find_albumentations(dataset)
        wanted = transform_names(build_augmentations(self.cfg.augment))
        if wanted and (applied is None or transform_names(applied.transform.transforms) != wanted):
            raise RuntimeError(f"camera-condition augmentations are not in the training pipeline: {applied}")
        self.record["augmentations"] = wanted
        self.record["train_images"] = len(dataset)
        try:
            preview_grid(dataset, Path(trainer.save_dir) / PREVIEW_NAME)
        except Exception as exc:  # a preview is a convenience; never fail a run over it
            tqdm.write(f"augmentation preview not written: {exc}", file=sys.stderr)
        total = trainer.epochs * len(trainer.train_loader)
        self.bar = tqdm(total=total, unit="batch", desc="train", file=sys.stderr, dynamic_ncols=True)
        tqdm.write(
            f"training {len(dataset)} images × {trainer.epochs} epochs at {self.cfg.imgsz} px, batch "
            f"{self.cfg.batch}, on {trainer.device}; run folder {trainer.save_dir}",
            file=sys.stderr,
        )

    def on_train_epoch_start(self, trainer: Any) -> None:
        self.epoch_start = time.time()
        self.last_batch = None

    def on_train_epoch_end(self, trainer: Any) -> None:
        self.in_epoch = True

    def on_train_batch_end(self, trainer: Any) -> None:
        now = time.time()
        if self.last_batch is not None:  # batch-to-batch time: loading, augmentation, forward, backward
            self.batch_seconds.append(now - self.last_batch)
        else:  # an epoch's first batch, with the data loader's warm-up
            self.first_batch_seconds.append(now - self.epoch_start)
        self.last_batch = now
        if self.bar is not None:
            losses = getattr(trainer, "tloss", None) or {}
            loss = sum(float(v) for v in losses.values()) if isinstance(losses, dict) else float(losses.sum())
            self.bar.set_postfix_str(f"epoch {trainer.epoch + 1}/{trainer.epochs} loss {loss:.3f}", refresh=False)
            self.bar.update(1)

    def on_fit_epoch_end(self, trainer: Any) -> None:
        m = trainer.metrics or {}
        if not self.in_epoch:  # ultralytics' final validation of best.pt reports through this event too
            self.record["best_val"] = {
                "map50": round(float(m.get("metrics/mAP50(B)", 0.0)), 4),
                "map50_95": round(float(m.get("metrics/mAP50-95(B)", 0.0)), 4),
            }
            tqdm.write(
                f"best.pt: val mAP50 {self.record['best_val']['map50']:.3f}, mAP50-95 "
                f"{self.record['best_val']['map50_95']:.3f}",
                file=sys.stderr,
            )
            return
        self.in_epoch = False
        seconds = time.time() - self.epoch_start
        self.record.setdefault("epochs", []).append(
            {
                "epoch": trainer.epoch + 1,
                "seconds": round(seconds, 1),
                "map50": round(float(m.get("metrics/mAP50(B)", 0.0)), 4),
                "map50_95": round(float(m.get("metrics/mAP50-95(B)", 0.0)), 4),
            }
        )
        if self.bar is not None:
            self.bar.total = trainer.epochs * len(trainer.train_loader)  # early stop / time limits change epochs
            tqdm.write(
                f"epoch {trainer.epoch + 1}/{trainer.epochs}: {seconds:.0f} s, val mAP50 "
                f"{m.get('metrics/mAP50(B)', 0.0):.3f}, mAP50-95 {m.get('metrics/mAP50-95(B)', 0.0):.3f}",
                file=sys.stderr,
            )

    def close(self) -> None:
        """End the progress bar (also of a run that failed): what is printed next starts a line of its own."""
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def on_train_end(self, trainer: Any) -> None:
        self.close()
        # steady-state training speed: the first batch of each epoch is left out, unless there is no other
        timed = self.batch_seconds or self.first_batch_seconds
        if timed:
            per_batch = float(np.median(timed))
            per = min(self.cfg.batch, self.record.get("train_images", self.cfg.batch))  # a set smaller than a batch
            self.record["throughput"] = {
                "seconds_per_batch": round(per_batch, 3),
                "seconds_per_image": round(per_batch / per, 4),
                "batches_timed": len(timed),
                "includes_warmup": not self.batch_seconds,
            }

    def register(self, model: Any) -> None:
        for event in (
            "on_pretrain_routine_start",
            "on_pretrain_routine_end",
            "on_train_epoch_start",
            "on_train_epoch_end",
            "on_train_batch_end",
            "on_fit_epoch_end",
            "on_train_end",
        ):
            model.add_callback(event, getattr(self, event))


def find_albumentations(dataset: Any) -> Any | None:
    """The ultralytics ``Albumentations`` step in a dataset's transform list (None when absent)."""
    from ultralytics.data.augment import Albumentations

    for t in getattr(dataset.transforms, "transforms", []):
        if isinstance(t, Albumentations) and t.transform is not None:
            return t
    return None


def train(cfg: TrainConfig) -> Path:
    """Run the training a config describes; returns the run folder (weights in ``weights/best.pt``)."""
    from training import ultra

    data = Path(cfg.data)
    names = dataset_names(data)
    base = resolve_base(cfg.base)
    if names != list(CLASS_NAMES):
        tqdm.write(
            f"note: {data} does not have the product classes in product order; export the result with "
            "--map to name what its classes mean",
            file=sys.stderr,
        )
    ultra.setup()
    ultra.offline_amp_check()
    args = ultralytics_args(cfg)
    if args["plots"] and not ultra.has_polars():  # e.g. a bare GPU machine: plots would crash the run
        tqdm.write("note: polars is not installed, so ultralytics' plots are off for this run", file=sys.stderr)
        args["plots"] = False
    with tempfile.TemporaryDirectory() as tmp:
        args["data"] = str(absolute_data_yaml(data, Path(tmp)))
        return _train(cfg, args, data, names, base)


def absolute_data_yaml(data: Path, tmp: Path) -> Path:
    """``data`` itself when its ``path`` is absolute, else a copy in ``tmp`` with ``path`` resolved against
    the data.yaml's folder (ultralytics resolves a relative ``path`` against the working directory)."""
    spec = yaml.safe_load(data.read_text()) or {}
    if Path(spec.get("path") or ".").is_absolute():
        return data
    from training.evaluate import dataset_yaml

    spec["path"] = str(dataset_yaml(data).root)
    copy = tmp / data.name
    copy.write_text(yaml.safe_dump(spec, allow_unicode=True, sort_keys=False))
    return copy


def _train(cfg: TrainConfig, args: dict[str, Any], data: Path, names: list[str], base: Path) -> Path:
    """The training itself, with progress and the run record (see :func:`train`)."""
    import torch
    import ultralytics

    from training import ultra

    record: dict[str, Any] = {
        "started": now_iso(),
        "base": {"path": str(base), "sha256": file_sha256(base)},
        "data": {"yaml": str(data.resolve()), "names": names, "manifest": _manifest(data)},
        "device": args["device"],
        "hardware": _hardware(args["device"]),
        "software": {
            "ultralytics": ultralytics.__version__,
            "torch": torch.__version__,
            "python": platform.python_version(),
        },
    }
    progress = _Progress(cfg, yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False, allow_unicode=True), record)
    model = ultra.yolo(base)
    progress.register(model)
    started = time.time()
    try:
        model.train(**args)
    except (OSError, RuntimeError) as exc:  # a full disk: ultralytics' OSError, or torch's RuntimeError
        progress.close()
        full = disk_full(exc, getattr(model.trainer, "save_dir", None) or args["project"])
        if full is None:
            raise
        raise full from exc  # one line naming the run folder, not a traceback through the trainer
    trainer = model.trainer
    save_dir = Path(trainer.save_dir)
    record["seconds"] = round(time.time() - started, 1)
    record["finished"] = now_iso()
    record["best"] = str(save_dir / "weights" / "best.pt")
    atomic_write(save_dir / RUN_NAME, json.dumps(record, indent=1, ensure_ascii=False) + "\n")
    return save_dir


def run_record(pt: Path) -> dict[str, Any]:
    """The run record of a checkpoint that lies in a training run's ``weights/`` folder (else empty)."""
    for folder in (pt.parent.parent, pt.parent):
        path = folder / RUN_NAME
        if path.is_file():
            record = json.loads(path.read_text())
            config = folder / CONFIG_NAME
            if config.is_file():
                record["config"] = yaml.safe_load(config.read_text())
            return record
    return {}


def _manifest(data: Path) -> dict[str, Any] | None:
    """The manifest of the dataset beside its data.yaml (sources, mapping, counts, hashes), if any: its own
    ``manifest.json`` or, in a packed copy (``streetwatch data pack``), the source dataset's, with how it was
    packed (the images are the source's, re-encoded smaller)."""
    path = data.parent / MANIFEST
    packed = data.parent / SOURCE_MANIFEST
    if not path.is_file() and packed.is_file():
        path = packed
    if not path.is_file():
        return None
    manifest = json.loads(path.read_text())
    out = {"path": str(path.resolve()), "sha256": file_sha256(path), "summary": _manifest_summary(manifest)}
    info = data.parent / PACK_INFO
    if path == packed and info.is_file():
        pack = json.loads(info.read_text())
        out["pack"] = {k: pack.get(k) for k in ("format", "quality", "max_side", "subset", "images", "budget_mb")}
    return out


def fill_manifest(run: Path) -> bool:
    """Name the dataset manifest in a run record that has none (a run on a machine that could not see it),
    from the data.yaml the record names, when that is here. True when filled in."""
    path = run / RUN_NAME
    record = json.loads(path.read_text())
    if record.get("data", {}).get("manifest"):
        return False
    data = Path(record.get("data", {}).get("yaml", ""))
    manifest = _manifest(data) if data.is_file() else None
    if manifest is None:
        return False
    record["data"]["manifest"] = manifest
    atomic_write(path, json.dumps(record, indent=1, ensure_ascii=False) + "\n")
    return True


def _manifest_summary(manifest: dict[str, Any]) -> dict[str, Any]:
    """The parts of a manifest worth copying into a run record and a model card (no per-file hashes)."""
    return {k: v for k, v in manifest.items() if k not in ("files", "images", "hashes")}


def _hardware(device: str) -> str:
    """A human description of the training device."""
    if device != "cpu":
        import torch

        try:
            return torch.cuda.get_device_name(int(device.split(",")[0]))
        except Exception:
            return f"cuda:{device}"
    import os

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores"
