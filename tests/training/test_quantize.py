"""int8 quantisation building blocks: which calibration images are used, which nodes stay in float."""

from pathlib import Path

import onnx

from models.registry import resolve
from training.quantize import calibration_sample, quantize_int8, stem_nodes


def test_calibration_sample_spreads_over_every_source():
    # a built dataset's image folder, sorted: the first 64 names would all be facades
    images = [Path(f"{src}__{i:04d}.jpg") for src in ("facades", "garbage", "patrol", "vendors") for i in range(100)]
    picked = calibration_sample(images, 64)
    assert len(picked) == 64 and len(set(picked)) == 64
    assert picked[0] == images[0] and picked[-1] == images[-1]
    by_source = {p.name.split("__")[0] for p in picked}
    assert by_source == {"facades", "garbage", "patrol", "vendors"}
    assert calibration_sample(images[:10], 64) == images[:10]


def _dequantized_inputs(model: onnx.ModelProto, prefix: str) -> list[bool]:
    """For each Conv under ``prefix``: whether its input comes through a DequantizeLinear (i.e. runs in int8)."""
    producers = {out: n.op_type for n in model.graph.node for out in n.output}
    return [
        producers.get(n.input[0]) == "DequantizeLinear"
        for n in model.graph.node
        if n.op_type == "Conv" and n.name.startswith(prefix)
    ]


def test_float_stem_keeps_the_first_modules_in_float(tiny_registry: Path, tiny_pt: Path, tmp_path: Path):
    ref = resolve("tiny", root=tiny_registry)
    fp32 = onnx.load(str(ref.file("fp32")))
    assert stem_nodes(fp32, 2) and all(n.startswith(("/model.0/", "/model.1/")) for n in stem_nodes(fp32, 2))
    assert not any(n.startswith("/model.10/") for n in stem_nodes(fp32, 2))  # model.1 is not model.10
    assert stem_nodes(fp32, 0) == []
    images = sorted((tiny_pt.parents[3] / "shapes" / "train" / "images").glob("*.jpg"))
    out = quantize_int8(ref.file("fp32"), tmp_path / "q.onnx", images, 160, method="minmax", float_stem=3)
    q = onnx.load(str(out))
    for i in range(3):
        assert not any(_dequantized_inputs(q, f"/model.{i}/")), f"model.{i} was quantised"
    assert all(_dequantized_inputs(q, "/model.3/"))
