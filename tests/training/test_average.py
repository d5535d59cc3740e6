"""Weight averaging (WiSE-FT) of shipped checkpoints: the maths, the run record, and refusals."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from disks import fill, tmpfs

from models.registry import file_sha256, resolve
from pipeline.cli import main
from training import ultra
from training.average import AverageError, average_checkpoints
from training.train import RUN_NAME

REPO = Path(__file__).resolve().parents[2]
PHOTO = REPO / "pipeline" / "samples" / "photos" / "garbage-bins-roadside.jpg"


def weights_of(pt: Path) -> dict[str, torch.Tensor]:
    ultra.setup()
    ckpt = torch.load(pt, map_location="cpu", weights_only=False)
    return (ckpt.get("ema") or ckpt["model"]).state_dict()


def test_average_of_a_model_and_its_fine_tune(tmp_path: Path):
    # streetwatch-v2 was fine-tuned from streetwatch-v1: same architecture and classes
    best = average_checkpoints(["streetwatch-v1", "streetwatch-v2"], tmp_path / "avg", [3, 1])
    v1, v2 = (weights_of(resolve(m).file("pt")) for m in ("streetwatch-v1", "streetwatch-v2"))
    got = weights_of(best)
    key = "model.0.conv.weight"
    assert not torch.equal(v1[key], v2[key])
    expected = 0.75 * v1[key].float() + 0.25 * v2[key].float()
    assert torch.allclose(got[key].float(), expected, rtol=1e-3, atol=1e-4)  # stored in half, like the inputs
    assert torch.equal(got["model.0.bn.num_batches_tracked"], v2["model.0.bn.num_batches_tracked"])

    record = json.loads((tmp_path / "avg" / RUN_NAME).read_text())
    assert [(a["model"], a["weight"]) for a in record["averaged"]] == [
        ("streetwatch-v1", 0.75),
        ("streetwatch-v2", 0.25),
    ]
    assert record["averaged"][1]["sha256"] == file_sha256(resolve("streetwatch-v2").file("pt"))
    assert record["averaged"][1]["record"]["model"].startswith("streetwatch-v2@")
    assert record["data"] == resolve("streetwatch-v2").card.training["data"]  # the fine-tune's data

    result = ultra.yolo(best).predict(str(PHOTO), imgsz=320, conf=0.25, verbose=False)[0]
    names = {result.names[int(c)] for c in result.boxes.cls}
    assert "garbage_bin" in names  # the averaged model still detects


def test_refusals(tmp_path: Path, capsys):
    with pytest.raises(AverageError, match="at least two"):
        average_checkpoints(["streetwatch-v2"], tmp_path / "a")
    with pytest.raises(AverageError, match="positive"):
        average_checkpoints(["streetwatch-v1", "streetwatch-v2"], tmp_path / "a", [1, 0])
    with pytest.raises(AverageError, match="2 positive numbers"):
        average_checkpoints(["streetwatch-v1", "streetwatch-v2"], tmp_path / "a", [1, 1, 1])
    with pytest.raises(AverageError, match=r"classes .* differ"):  # the COCO model: other classes
        average_checkpoints(["streetwatch-v2", "yolo11n-coco-interim"], tmp_path / "a")
    assert not (tmp_path / "a").exists()
    with pytest.raises(SystemExit):
        main(["average", "streetwatch-v2", str(tmp_path / "missing.pt"), "--out", str(tmp_path / "b")])
    assert "missing.pt: no such file" in capsys.readouterr().err


def test_a_full_disk_keeps_the_previous_checkpoint_and_names_the_file(tmp_path: Path, capsys):
    """torch.save straight to best.pt: a full disk left a truncated checkpoint and a torch traceback."""
    with tmpfs(tmp_path / "disk", "1m") as disk:
        best = disk / "avg" / "weights" / "best.pt"
        best.parent.mkdir(parents=True)
        best.write_bytes(b"an earlier average")
        fill(disk)
        with pytest.raises(SystemExit) as exc:
            main(["average", "streetwatch-v1", "streetwatch-v2", "--out", str(disk / "avg")])
        err = capsys.readouterr().err
        assert exc.value.code == 1 and "Traceback" not in err
        assert err.splitlines()[-1] == (
            f"streetwatch: error: {best}: No space left on device (free some space, or write the output elsewhere)"
        )
        assert best.read_bytes() == b"an earlier average" and [p.name for p in best.parent.iterdir()] == ["best.pt"]
        assert not (disk / "avg" / RUN_NAME).exists()
