"""Training: config files, the camera-condition augmentation inside ultralytics' data pipeline, and a
real smoke training run through the CLI from the checked-in smoke config."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml
from disks import tmpfs

from pipeline.cli import main
from pipeline.detections import box_iou
from training.augment import AugmentConfig, build_augmentations, transform_names
from training.train import CONFIG_NAME, PREVIEW_NAME, RUN_NAME, ConfigError, TrainConfig, load_config

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "training" / "configs"
SMOKE = CONFIGS / "smoke.yaml"
ALL_OFF = {name: 0.0 for name in AugmentConfig.model_fields if name not in ("enabled", "jpeg_quality")}


@pytest.mark.parametrize("name", sorted(p.name for p in CONFIGS.glob("*.yaml")))
def test_checked_in_configs_are_valid(name: str):
    cfg = load_config(CONFIGS / name)
    if name.startswith("reference-"):  # the reference's plain recipe, for comparison
        assert not cfg.augment.enabled and cfg.base.endswith("yolo11n-coco.pt")
    else:  # everything that trains a product model uses the camera-condition augmentation
        assert cfg.augment.enabled and build_augmentations(cfg.augment)


def test_product_configs_differ_only_in_size_and_hardware():
    cpu, gpu = load_config(CONFIGS / "product-cpu.yaml"), load_config(CONFIGS / "product-gpu.yaml")
    assert (cpu.data, cpu.base, cpu.augment) == (gpu.data, gpu.base, gpu.augment)
    assert (gpu.imgsz, gpu.epochs, gpu.batch, gpu.device) == (512, 50, 32, "0") and cpu.device == "cpu"


def test_every_config_field_is_described():
    def described(model) -> None:
        for name, info in model.model_fields.items():
            assert info.description, f"{model.__name__}.{name} has no description"

    described(TrainConfig)
    described(AugmentConfig)


def test_overrides_and_errors(tmp_path: Path):
    cfg = load_config(SMOKE, ["epochs=3", "augment.flash=0.25", "ultralytics.warmup_epochs=0", "cache=false"])
    assert cfg.epochs == 3 and cfg.augment.flash == 0.25 and cfg.ultralytics == {"warmup_epochs": 0}
    with pytest.raises(ConfigError, match=r"smoke\.yaml: invalid training config(.|\n)*epochz"):
        load_config(SMOKE, ["epochz=3"])  # extra fields are refused, not ignored
    with pytest.raises(ConfigError, match="expected key=value"):
        load_config(SMOKE, ["epochs"])
    with pytest.raises(ConfigError, match="imgsz"):
        load_config(SMOKE, ["imgsz=100"])  # not a multiple of 32
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: [unclosed\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: not valid YAML"):
        load_config(bad)
    with pytest.raises(ConfigError, match="no such config file"):
        load_config(tmp_path / "none.yaml")


def train_dataset(data: Path, augment: dict):
    """The training dataset ultralytics builds for a config, augmentations serialised as the trainer does."""
    import albumentations as A

    from training import ultra
    from training.train import absolute_data_yaml, ultralytics_args

    ultra.setup()
    from ultralytics.cfg import get_cfg
    from ultralytics.data.build import build_yolo_dataset
    from ultralytics.data.utils import check_det_dataset

    cfg = load_config(SMOKE, [f"data={data}", *(f"augment.{k}={v}" for k, v in augment.items())])
    args = ultralytics_args(cfg)
    args["augmentations"] = [A.to_dict(t) for t in args["augmentations"]]  # what BaseTrainer stores and rebuilds
    args["data"] = str(absolute_data_yaml(data, data.parent))
    spec = check_det_dataset(args["data"])
    return cfg, build_yolo_dataset(get_cfg(overrides=args), spec["train"], 4, spec, mode="train")


def test_augmentations_run_inside_ultralytics_pipeline_and_move_boxes(shapes_data: Path):
    from ultralytics.utils.instance import Instances

    from training.train import find_albumentations

    _, dataset = train_dataset(shapes_data, {**ALL_OFF, "perspective": 1.0})
    step = find_albumentations(dataset)
    assert step is not None and transform_names(step.transform.transforms) == ["Perspective"]

    # a red square on grey, its box; after the pipeline's own Albumentations step the box still frames it
    img = np.full((256, 256, 3), 128, np.uint8)
    cv2.rectangle(img, (60, 80), (160, 180), (0, 0, 255), -1)
    boxes = np.array([[60, 80, 161, 181]], np.float32)
    moved_any = False
    for _ in range(6):
        labels = {
            "img": img.copy(),
            "cls": np.zeros((1, 1), np.float32),
            "instances": Instances(boxes.copy(), bbox_format="xyxy", normalized=False),
        }
        out = step(labels)
        red = (out["img"][:, :, 2] > 200) & (out["img"][:, :, 0] < 60)
        ys, xs = np.nonzero(red)
        truth = np.array([[xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]], np.float32)
        inst = out["instances"]
        inst.denormalize(*out["img"].shape[:2][::-1])
        inst.convert_bbox("xyxy")
        assert box_iou(truth, inst.bboxes.astype(np.float32))[0, 0] > 0.9
        moved_any |= box_iou(truth, boxes)[0, 0] < 0.97
    assert moved_any  # the warp did move the square (and its box) at least once


def test_every_augmentation_changes_images(shapes_data: Path):
    """Each camera-condition transform, alone at probability 1 in the pipeline, alters a training image."""
    from ultralytics.utils.instance import Instances

    from training.train import find_albumentations

    rng = np.random.default_rng(0)
    img = rng.integers(40, 220, (128, 128, 3), dtype=np.uint8)
    for name in ALL_OFF:
        _, dataset = train_dataset(shapes_data, {**ALL_OFF, name: 1.0})
        step = find_albumentations(dataset)
        labels = {
            "img": img.copy(),
            "cls": np.zeros((1, 1), np.float32),
            "instances": Instances(np.array([[10, 10, 60, 60]], np.float32), bbox_format="xyxy", normalized=False),
        }
        out = step(labels)["img"]
        assert out.shape == img.shape and np.abs(out.astype(int) - img).mean() > 1.0, name


def test_disabled_augmentation_leaves_ultralytics_defaults(shapes_data: Path):
    from training.train import find_albumentations

    _, dataset = train_dataset(shapes_data, {"enabled": False})
    step = find_albumentations(dataset)
    assert step is None or "MotionBlur" not in transform_names(step.transform.transforms)


@pytest.mark.slow
def test_smoke_training_through_the_cli(shapes_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    """`streetwatch train --config training/configs/smoke.yaml` trains a real model on the CPU; the run
    folder keeps the config used, and the record proves the camera augmentations were in the trainer's
    own data pipeline."""
    sets = [f"data={shapes_data}", f"out={tmp_path}"]
    assert main(["train", "--config", str(SMOKE), *(x for s in sets for x in ("--set", s))]) == 0
    run = tmp_path / "smoke"
    best = run / "weights" / "best.pt"
    assert f"trained: {best}" in capsys.readouterr().out
    cfg = load_config(SMOKE, sets)
    assert yaml.safe_load((run / CONFIG_NAME).read_text()) == cfg.model_dump(mode="json")
    assert load_config(run / CONFIG_NAME) == cfg  # the kept config reproduces the run
    record = json.loads((run / RUN_NAME).read_text())
    assert record["augmentations"] == transform_names(build_augmentations(cfg.augment))
    assert len(record["augmentations"]) == 9 and record["train_images"] == 24
    assert record["epochs"] and record["throughput"]["seconds_per_image"] > 0
    assert record["base"]["sha256"] and record["data"]["names"] == ["litter", "car"]
    assert record["threads"] == os.cpu_count()  # every core, not ultralytics' cores - 1
    preview = cv2.imread(str(run / PREVIEW_NAME))
    assert preview is not None and preview.shape[0] >= 640

    from training import ultra
    from training.train import run_record

    assert run_record(best)["config"] == cfg.model_dump(mode="json")  # what export puts into the model card
    model = ultra.yolo(best)
    assert model.names == {0: "litter", 1: "car"}
    args = yaml.safe_load((run / "args.yaml").read_text())  # ultralytics' own record of the run
    assert [a["transform"]["__class_fullname__"] for a in args["augmentations"]][-1] == "Perspective"


def test_train_cli_errors_name_the_problem(tmp_path: Path, shapes_data: Path, capsys: pytest.CaptureFixture[str]):
    with pytest.raises(SystemExit) as exc:
        main(["train", "--config", str(SMOKE), "--set", f"data={tmp_path / 'none.yaml'}"])
    assert exc.value.code == 2 and "none.yaml: no such dataset file" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["train", "--config", str(SMOKE), "--set", f"data={shapes_data}", "--set", "base=/nowhere/w.pt"])
    assert "base weights /nowhere/w.pt: no such file" in capsys.readouterr().err
    binary = tmp_path / "garbage.yaml"  # not UTF-8: raised UnicodeDecodeError (a traceback)
    binary.write_bytes(b"\xa5\x00\xff" * 50)
    with pytest.raises(SystemExit) as exc:
        main(["train", "--config", str(binary)])
    assert exc.value.code == 2 and f"{binary}: not UTF-8 text (byte 0xa5 at offset 0)" in capsys.readouterr().err


def test_a_run_of_one_batch_per_epoch_still_records_its_speed():
    # the speed is batch to batch, leaving out each epoch's first batch (the data loader's warm-up); with
    # one batch per epoch there is no other, so that one is timed and the record says it includes warm-up
    from training.train import _Progress

    cfg = load_config(SMOKE)
    record: dict = {"train_images": 3}  # fewer than a batch: each batch holds those 3
    assert cfg.batch > 3
    progress = _Progress(cfg, "", record)
    for _epoch in range(2):
        progress.on_train_epoch_start(None)
        time.sleep(0.05)
        progress.on_train_batch_end(None)
    progress.on_train_end(None)
    speed = record["throughput"]
    assert speed["batches_timed"] == 2 and speed["includes_warmup"] and speed["seconds_per_batch"] >= 0.05
    assert speed["seconds_per_image"] == pytest.approx(speed["seconds_per_batch"] / 3, abs=1e-3)


@pytest.mark.parametrize("name", ["../../escaped", "a/b", "..", ".hidden", ""])
def test_a_run_name_is_one_folder_name_inside_out(tmp_path: Path, shapes_data: Path, capsys, name: str):
    out = tmp_path / "deep" / "runs"
    sets = [f"out={out}", f"data={shapes_data}", f"name={name}", "epochs=1"]
    with pytest.raises(SystemExit) as exc:  # was: the run written to OUT/../../escaped
        main(["train", "--config", str(SMOKE), *(x for s in sets for x in ("--set", s))])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "smoke.yaml: invalid training config" in err and "name" in err
    assert not (tmp_path / "escaped").exists() and not out.exists()


@pytest.mark.parametrize(
    ("device", "said"),
    [("cuda:99", "device 'cuda:99': this machine has "), ("gpu", "device 'gpu': expected 'auto', 'cpu'")],
)
def test_a_device_the_machine_does_not_have_is_a_config_error(
    tmp_path: Path, shapes_data: Path, capsys, device: str, said: str
):
    sets = [f"out={tmp_path / 'runs'}", f"data={shapes_data}", f"device={device}", "epochs=1"]
    with pytest.raises(SystemExit) as exc:  # was: ultralytics' ValueError traceback
        main(["train", "--config", str(SMOKE), *(x for s in sets for x in ("--set", s))])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and err.splitlines()[-1].startswith(f"streetwatch: error: {said}")
    assert "Traceback" not in err and not (tmp_path / "runs").exists()


@pytest.mark.slow
def test_a_full_disk_during_training_is_one_line_naming_the_run_folder(
    shapes_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    """A disk with room for the run's start but not for its first checkpoint: ultralytics' OSError (no file
    named) ended in a message that did not say which run, on the progress bar's line."""
    with tmpfs(tmp_path / "disk", "2m") as disk:
        sets = [f"data={shapes_data}", f"out={disk}"]
        with pytest.raises(SystemExit) as exc:
            main(["train", "--config", str(SMOKE), *(x for s in sets for x in ("--set", s))])
        err = capsys.readouterr().err
        assert exc.value.code == 1 and "Traceback" not in err
        assert err.splitlines()[-1] == (
            f"streetwatch: error: {disk / 'smoke'}: No space left on device "
            "(free some space, or write the output elsewhere)"
        )
