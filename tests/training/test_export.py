import json

import numpy as np
import onnx
import onnxruntime as ort

from models.registry import resolve
from pipeline.decode import read_image
from pipeline.detect import Detector
from pipeline.detections import box_iou


def test_export_writes_card_onnx_and_int8(tiny_registry):
    ref = resolve("tiny", root=tiny_registry)
    card = ref.card
    assert card.names == ["litter", "car"] and card.class_map == ["litter", "car"]
    assert card.imgsz == 160 and card.architecture == "yolo11n"
    assert set(card.files) == {"fp32", "int8", "pt"}
    for role in card.files:
        assert ref.file(role).stat().st_size == card.files[role].bytes  # hash verified by file()
    int8 = onnx.load(str(ref.file("int8")))
    ops = {n.op_type for n in int8.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops  # static QDQ quantisation
    head = [n for n in int8.graph.node if n.name.endswith("dfl/Softmax")]
    assert head and not any(i.endswith("_DequantizeLinear_Output") for i in head[0].input)  # decode stays float
    sess = ort.InferenceSession(str(ref.file("int8")), providers=["CPUExecutionProvider"])
    assert not all(isinstance(d, int) for d in sess.get_inputs()[0].shape[2:])  # dynamic input size
    assert json.loads((ref.folder / "card.json").read_text())["name"] == "tiny"


def test_tiny_model_detects_through_the_pipeline(use_tiny_registry, tiny_pt):
    """The pipeline runs a freshly trained model: fp32 and int8 agree with each other."""
    images = sorted((tiny_pt.parents[3] / "shapes" / "val" / "images").glob("*.jpg"))
    fp32 = Detector(conf=0.01)
    int8 = Detector(conf=0.01, variant="int8")
    assert fp32.version == "tiny@t1/fp32"
    for path in images[:4]:
        a, b = fp32.detect(read_image(path)), int8.detect(read_image(path))
        assert len(a) > 0 and set(a.class_names) <= {"litter", "car"}
        top = a[np.argsort(-a.confidence)[:3]]
        if len(b):
            assert box_iou(top.xyxy, b.xyxy).max() > 0.5
