import shutil

import pytest

from models.registry import ModelError, read_registry, resolve, scan_models, write_registry


def test_default_resolves_to_the_shipped_model_with_verified_files():
    ref = resolve("default")
    assert ref.card.name == read_registry()["default"]
    assert ref.file("fp32").is_file()  # sha256 checked against the card
    assert set(ref.card.product_classes()) >= {"person", "car", "motorbike", "bicycle"}
    assert len(ref.card.class_map) == len(ref.card.names)


def test_every_registered_model_has_a_valid_card():
    refs, unreadable = scan_models()
    assert refs and not unreadable
    for ref in refs:
        for role in ref.card.files:
            assert ref.file(role).is_file()


def test_unknown_model_names_registered_ones():
    with pytest.raises(ModelError, match="no such model") as err:
        resolve("no-such-model")
    assert read_registry()["default"] in str(err.value)


def test_tampered_model_file_is_refused(tmp_path):
    src = resolve("default").folder
    dst = tmp_path / "copy"
    shutil.copytree(src, dst)
    onnx = dst / "model.onnx"
    data = bytearray(onnx.read_bytes())
    data[-100] ^= 0xFF
    onnx.write_bytes(bytes(data))
    with pytest.raises(ModelError, match="sha256 does not match"):
        resolve(dst).file("fp32")


def test_folder_without_card_is_not_a_model(tmp_path):
    with pytest.raises(ModelError, match="not a model folder"):
        resolve(tmp_path)


def test_a_model_file_path_names_its_file_and_needs_its_card(tmp_path):
    folder = resolve("default").folder
    assert resolve(folder / "model.int8.onnx").role == "int8" and resolve(folder / "model.pt").role == "pt"
    assert resolve(folder).role is None and resolve("default").role is None
    loose = tmp_path / "model.int8.onnx"  # copied out of its folder: no card names its classes
    shutil.copy(folder / "model.int8.onnx", loose)
    with pytest.raises(ModelError, match=r"model\.int8\.onnx: a model file runs from its model folder"):
        resolve(loose)


def test_the_registry_index_stays_readable_by_other_users_when_replaced(tmp_path):
    index = tmp_path / "registry.json"
    write_registry({"default": "a", "history": ["a"]}, tmp_path)
    assert index.stat().st_mode & 0o777 == 0o644  # a service run as another user reads it
    index.chmod(0o664)  # a registry shared by a group
    write_registry({"default": "b", "history": ["a", "b"]}, tmp_path)
    assert index.stat().st_mode & 0o777 == 0o664 and read_registry(tmp_path)["default"] == "b"
