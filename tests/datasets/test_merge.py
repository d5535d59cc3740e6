import cv2
import numpy as np
import yaml

from datasets.merge import write_dataset
from datasets.samples import Sample


def test_repeat_lists_a_small_source_several_times_in_the_train_entry(tmp_path):
    image = tmp_path / "a.jpg"
    cv2.imwrite(str(image), np.zeros((32, 32, 3), np.uint8))
    box = np.array([[3, 0.5, 0.5, 0.2, 0.2]], np.float32)
    samples = [
        Sample("big", image, "train", box),
        Sample("small", image.with_name("b.jpg"), "train", box),
        Sample("small", image.with_name("c.jpg"), "val", box),
    ]
    cv2.imwrite(str(image.with_name("b.jpg")), np.zeros((32, 32, 3), np.uint8))
    cv2.imwrite(str(image.with_name("c.jpg")), np.zeros((32, 32, 3), np.uint8))
    out = tmp_path / "ds"
    write_dataset(samples, out, repeat={"small": 3, "big": 1})
    data = yaml.safe_load((out / "data.yaml").read_text())
    assert data["train"] == ["images/train", "train-small.txt", "train-small.txt"]
    assert data["val"] == "images/val"
    assert (out / "train-small.txt").read_text().split() == ["./images/train/small__b.jpg"]
    # each source alone, for single-source baselines and ablations, validated on its own held-out images
    alone = yaml.safe_load((out / "train-small.yaml").read_text())
    assert (alone["train"], alone["val"]) == ("train-small.txt", "val-small.txt")
    assert yaml.safe_load((out / "train-big.yaml").read_text())["val"] == "images/val"  # no val images of its own
    write_dataset(samples, tmp_path / "plain")
    assert yaml.safe_load((tmp_path / "plain" / "data.yaml").read_text())["train"] == "images/train"
