import numpy as np
import pytest

from models.classes import CLASS_IDS
from pipeline.detections import Detections, box_ios, box_iou


def make() -> Detections:
    return Detections(
        [[0, 0, 10, 10], [5, 5, 15, 25], [100, 100, 110, 140]],
        [0.9, 0.5, 0.7],
        [CLASS_IDS["car"], CLASS_IDS["person"], CLASS_IDS["litter"]],
        data={"tile": np.array([0, 1, 1])},
    )


def test_indexing_keeps_every_field_aligned():
    d = make()
    sub = d[d.confidence > 0.6]
    assert len(sub) == 2 and sub.class_names == ["car", "litter"]
    assert sub.data["tile"].tolist() == [0, 1]
    assert d[1].class_names == ["person"]
    assert d.of_classes(["litter", "person"]).confidence.tolist() == pytest.approx([0.5, 0.7])


def test_geometry_helpers():
    d = make()
    assert d.area.tolist() == [100, 200, 400]
    assert d.bottom_center.tolist() == [[5, 10], [10, 25], [105, 140]]


def test_merge_and_records_round_trip():
    d = make()
    both = Detections.merge([d, Detections.empty(), d[[0]]])
    assert len(both) == 4 and both.data["tile"].tolist() == [0, 1, 1, 0]
    records = d.to_records()
    assert records[0] == {"class": "car", "score": 0.9, "box": [0.0, 0.0, 10.0, 10.0]}
    back = Detections.from_records(records)
    assert np.allclose(back.xyxy, d.xyxy) and back.class_id.tolist() == d.class_id.tolist()


def test_mismatched_data_length_is_refused():
    with pytest.raises(ValueError, match="data\\['x'\\] has 1 rows for 3"):
        Detections(np.zeros((3, 4)), np.zeros(3), np.zeros(3), data={"x": np.zeros(1)})


def test_iou_and_ios():
    a = np.array([[0, 0, 10, 10]])
    b = np.array([[0, 0, 10, 10], [5, 0, 15, 10], [2, 2, 4, 4], [20, 20, 30, 30]])
    assert box_iou(a, b)[0].tolist() == pytest.approx([1.0, 50 / 150, 4 / 100, 0.0])
    assert box_ios(a, b)[0].tolist() == pytest.approx([1.0, 0.5, 1.0, 0.0])
