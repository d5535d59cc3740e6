"""The offline ultralytics shims: the mixed-precision check on the model itself, and polars being optional."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from models.registry import resolve
from training import ultra


@pytest.fixture(scope="module")
def outputs() -> tuple[torch.Tensor, torch.Tensor]:
    """Raw head outputs of the shipped model on a random 256 px input, in fp32 and under fp16 autocast
    (on the CPU: the same half-precision rounding the GPU check sees)."""
    model = ultra.yolo(resolve("default").file("pt")).model.float().eval()
    x = torch.rand(2, 3, 256, 256, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        full = model(x)[0].float()
        with torch.autocast("cpu", dtype=torch.float16):
            mixed = model(x)[0].float()
    return full, mixed


def test_half_precision_of_a_real_model_agrees(outputs):
    full, mixed = outputs
    # fp16 rounding moves raw boxes by up to about a pixel: the old check (0.5 px on every raw box) refused
    # AMP for streetwatch-v2 on an H100, so that run trained in fp32
    assert (full[:, :4] - mixed[:, :4]).abs().max() > 0.05
    assert ultra.amp_outputs_agree(full, mixed, 256)


def test_broken_mixed_precision_is_caught(outputs):
    full, mixed = outputs
    nan = mixed.clone()
    nan[0, 5, 7] = float("nan")
    assert not ultra.amp_outputs_agree(full, nan, 256)
    scores = mixed.clone()
    scores[:, 4:] += 0.2
    assert not ultra.amp_outputs_agree(full, scores, 256)
    boxes = mixed.clone()
    boxes[:, :4] += 0.1 * 256
    assert not ultra.amp_outputs_agree(full, boxes, 256)


def test_plots_follow_whether_polars_is_installed():
    assert ultra.has_polars() == (importlib.util.find_spec("polars") is not None)
