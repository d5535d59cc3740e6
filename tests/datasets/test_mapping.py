from pathlib import Path

import pytest

from datasets.mapping import load_mapping, shipped_mappings
from models.classes import CLASS_IDS


def test_shipped_mappings_map_the_shared_sets_onto_product_classes():
    assert {"coco", "garbage", "facades", "vendors"} <= set(shipped_mappings())
    garbage = load_mapping("garbage")
    assert garbage.class_map(["garbage", "garbage_bin", "overflow"]) == ["litter", "garbage_bin", "overflowing_bin"]
    facades = load_mapping("facades")
    names = ["window", "cantilever", "arch", "signboard", "win_ad", "door"]
    assert facades.class_map(names) == [None, "shop_sign", None, "shop_sign", "small_ad", None]
    assert facades.id_map(names) == {1: CLASS_IDS["shop_sign"], 3: CLASS_IDS["shop_sign"], 4: CLASS_IDS["small_ad"]}
    assert facades.targets() == ["small_ad", "shop_sign"]
    assert load_mapping("vendors").class_map(["vendedor_ambulante"]) == ["street_vending"]


def test_unlisted_source_classes_are_dropped_and_unknown_keys_reported():
    m = load_mapping("garbage")
    assert m.class_map(["garbage", "tree"]) == ["litter", None]
    assert m.unknown_names(["garbage"]) == ["garbage_bin", "overflow"]


def test_identity_mapping_for_product_labelled_data():
    m = load_mapping("product")
    assert m.id_map(["litter", "car"]) == {0: CLASS_IDS["litter"], 1: CLASS_IDS["car"]}


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("name: x\nmap: {garbage: rubbish}\n", "unknown product class 'rubbish'"),
        ("name: x\n", "map"),
        ("name: x\nmap: [unclosed\n", "invalid class mapping"),
        ("name: x\nmap: {a: litter}\ncolour: red\n", "colour"),
    ],
)
def test_bad_mapping_file_error_names_the_file(tmp_path: Path, text: str, needle: str):
    f = tmp_path / "bad-mapping.yaml"
    f.write_text(text)
    with pytest.raises(ValueError) as err:
        load_mapping(f)
    assert str(f) in str(err.value) and needle in str(err.value)


def test_missing_mapping_lists_the_shipped_ones():
    with pytest.raises(FileNotFoundError, match=r"shipped: .*garbage"):
        load_mapping("no-such-mapping")
