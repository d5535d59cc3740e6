import math
from pathlib import Path

import numpy as np
import pytest
import yaml

from datasets.yolo import (
    check_box,
    format_label_lines,
    label_path_for,
    parse_label_lines,
    read_data_yaml,
    read_label_file,
)


def kinds(issues):
    return [(i.severity, i.kind, i.line) for i in issues]


def test_valid_lines_parse_to_rows():
    rows, issues = parse_label_lines("0 0.5 0.5 0.2 0.4\n\n2 0.1 0.2 0.1 0.1\n", nc=3)
    assert issues == []
    np.testing.assert_allclose(rows, [[0, 0.5, 0.5, 0.2, 0.4], [2, 0.1, 0.2, 0.1, 0.1]], atol=1e-6)


def test_each_bad_line_is_reported_with_its_line_number_and_dropped():
    text = "\n".join(
        [
            "0 0.5 0.5 0.2",  # 1 wrong arity
            "0 0.5 0.5 0.2 0.2 0.3",  # 2 wrong arity (6 values)
            "a 0.5 0.5 0.2 0.2",  # 3 not a number
            "7 0.5 0.5 0.2 0.2",  # 4 unknown class id
            "1.5 0.5 0.5 0.2 0.2",  # 5 non-integer class
            "0 0.5 0.5 0 0.2",  # 6 zero width
            "0 320 240 50 60",  # 7 pixel coordinates: out of range
            "1 0.5 0.5 -0.1 0.2",  # 8 negative width
            "0 0.5 0.5 0.2 nan",  # 9 non-finite
        ]
    )
    rows, issues = parse_label_lines(text, nc=3, file="f.txt")
    assert len(rows) == 0
    assert kinds(issues) == [
        ("error", "wrong_arity", 1),
        ("error", "wrong_arity", 2),
        ("error", "not_a_number", 3),
        ("error", "unknown_class", 4),
        ("error", "unknown_class", 5),
        ("error", "degenerate_box", 6),
        ("error", "out_of_range", 7),
        ("error", "degenerate_box", 8),
        ("error", "not_a_number", 9),
    ]
    assert all(i.file == "f.txt" for i in issues)


def test_slightly_outside_is_clipped_polygons_become_boxes_repeats_dropped():
    text = "0 0.995 0.5 0.02 0.2\n1 0.1 0.1 0.3 0.1 0.3 0.4 0.1 0.4\n0 0.4 0.4 0.1 0.1\n0 0.4 0.4 0.1 0.1\n"
    rows, issues = parse_label_lines(text, nc=2)
    assert kinds(issues) == [("warning", "clipped", 1), ("warning", "polygon", 2), ("warning", "duplicate_line", 4)]
    assert len(rows) == 3
    x2 = rows[0, 1] + rows[0, 3] / 2
    assert x2 == pytest.approx(1.0)
    np.testing.assert_allclose(rows[1], [1, 0.2, 0.25, 0.2, 0.3], atol=1e-6)
    rounded, issues = parse_label_lines("3 0.481406 0.843594 0.962813 0.312187\n", nc=4)  # a box to the edge,
    assert issues == [] and rounded[0, 1] - rounded[0, 3] / 2 >= 0  # in 6 decimals: clipped without a word


def test_missing_label_file_means_no_objects(tmp_path: Path):
    rows, issues = read_label_file(tmp_path / "none.txt", 3)
    assert len(rows) == 0 and kinds(issues) == [("info", "no_label_file", None)]


def test_format_roundtrip():
    rows = np.array([[3, 0.5, 0.25, 0.125, 0.0625]], np.float32)
    again, issues = parse_label_lines(format_label_lines(rows), nc=10)
    assert issues == [] and np.allclose(again, rows)


def test_label_path_follows_the_yolo_convention():
    assert label_path_for(Path("/d/train/images/a.jpg")) == Path("/d/train/labels/a.txt")
    assert label_path_for(Path("/d/images/x/images/b.png")) == Path("/d/images/x/labels/b.txt")


def test_data_yaml_with_dict_names_txt_lists_and_test_split(tmp_path: Path):
    (tmp_path / "imgs").mkdir()
    for n in ("a.jpg", "b.jpg", "c.png"):
        (tmp_path / "imgs" / n).write_bytes(b"x")
    (tmp_path / "val.txt").write_text("./imgs/c.png\n")
    (tmp_path / "d.yaml").write_text(
        yaml.safe_dump({"train": "imgs", "val": "val.txt", "test": ["val.txt"], "names": {0: "a", 1: "b"}})
    )
    names, splits = read_data_yaml(tmp_path / "d.yaml")
    assert names == ["a", "b"]
    assert [p.name for p in splits["train"]] == ["a.jpg", "b.jpg", "c.png"]
    assert [p.name for p in splits["val"]] == ["c.png"]


def test_bad_data_yaml_errors_name_the_file(tmp_path: Path):
    f = tmp_path / "data.yaml"
    f.write_text("train: nowhere\nnames: [a]\n")
    with pytest.raises(FileNotFoundError, match=r"data\.yaml"):
        read_data_yaml(tmp_path)
    f.write_text("names: 3\ntrain: .\n")
    with pytest.raises(ValueError, match=r"data.yaml: 'names'"):
        read_data_yaml(f)


def test_check_box_clips_any_overlap_when_pixel_boxes_allow_it():
    found: list[tuple[str, str]] = []

    def report(severity: str, kind: str, msg: str) -> None:
        found.append((severity, kind))

    assert check_box(0.9, 0.9, 1.3, 1.2, report) is None  # YOLO tolerance: not normalised, dropped
    assert check_box(0.9, 0.9, 1.3, 1.2, report, tolerance=math.inf) == (0.9, 0.9, 1.0, 1.0)
    assert check_box(1.1, 0.2, 1.3, 0.4, report, tolerance=math.inf) is None  # wholly outside
    assert check_box(0.2, 0.2, 0.2, 0.4, report, tolerance=math.inf) is None
    assert found == [
        ("error", "out_of_range"),
        ("warning", "clipped"),
        ("error", "out_of_range"),
        ("error", "degenerate_box"),
    ]


def test_a_box_reaching_far_past_an_edge_is_told_apart_from_one_wholly_outside():
    _, issues = parse_label_lines("0 0.95 0.5 0.2 0.2\n0 1.5 0.5 0.2 0.2", nc=1, file="f.txt")  # x 0.85-1.05; 1.4-1.6
    partly, wholly = (i.message for i in issues)
    assert "reaches more than 0.02 past the image's edge" in partly and "lies outside" not in partly
    assert "lies outside the image" in wholly
