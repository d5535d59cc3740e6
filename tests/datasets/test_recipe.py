"""Recipes that extend other recipes: sources appended in order, settings inherited unless set, chains
of exports, and clear errors for circles and missing bases."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from datasets.recipe import load_recipe


def write(path: Path, body: dict) -> Path:
    path.write_text(yaml.safe_dump(body))
    return path


def source(name: str) -> dict:
    return {
        "name": name,
        "kind": "folder",
        "path": f"/data/{name}/images",
        "labels": f"/data/{name}/labels",
        "mapping": "product",
    }


def test_extends_appends_sources_and_inherits_settings(tmp_path: Path):
    base = load_recipe("product-v1")
    first = write(tmp_path / "a.yaml", {"name": "a", "extends": "product-v1", "sources": [source("field-a")]})
    second = write(tmp_path / "b.yaml", {"name": "b", "extends": "a.yaml", "seed": 7, "sources": [source("field-b")]})
    a, b = load_recipe(first), load_recipe(second)
    assert [s.name for s in a.sources] == [*(s.name for s in base.sources), "field-a"]
    assert [s.name for s in b.sources][-2:] == ["field-a", "field-b"]  # a chain of exports
    assert (a.pseudo, a.dedup, a.synth_ads, a.seed) == (base.pseudo, base.dedup, base.synth_ads, base.seed)
    assert b.seed == 7 and b.extends == "a.yaml" and b.name == "b"


def test_extends_errors_name_the_file(tmp_path: Path):
    write(tmp_path / "x.yaml", {"name": "x", "extends": "y.yaml", "sources": [source("fx")]})
    write(tmp_path / "y.yaml", {"name": "y", "extends": "x.yaml", "sources": [source("fy")]})
    with pytest.raises(ValueError, match="extend each other in a circle"):
        load_recipe(tmp_path / "x.yaml")
    write(tmp_path / "z.yaml", {"name": "z", "extends": "nope", "sources": [source("fz")]})
    with pytest.raises(FileNotFoundError, match="nope: no such recipe"):
        load_recipe(tmp_path / "z.yaml")
    write(tmp_path / "dup.yaml", {"name": "d", "extends": "product-v1", "sources": [source("garbage")]})
    with pytest.raises(ValueError, match="source names must be unique: garbage"):
        load_recipe(tmp_path / "dup.yaml")


def test_repeat_rebalances_inherited_sources(tmp_path: Path):
    shipped = load_recipe("product-v2")
    assert {s.name: s.repeat for s in shipped.sources} == {"garbage": 1, "facades": 3, "vendors": 1, "patrol": 5}
    # a field export on top keeps the rebalancing and may change it again
    child = write(
        tmp_path / "c.yaml",
        {"name": "c", "extends": "product-v2", "repeat": {"patrol": 2}, "sources": [source("field-c")]},
    )
    c = load_recipe(child)
    assert {s.name: s.repeat for s in c.sources} == {
        "garbage": 1,
        "facades": 3,
        "vendors": 1,
        "patrol": 2,
        "field-c": 1,
    }  # inherited sources arrive rebalanced; this recipe's map changes only the sources it names


def test_repeat_must_name_a_source_and_stay_in_range(tmp_path: Path):
    write(tmp_path / "u.yaml", {"name": "u", "extends": "product-v1", "repeat": {"facade": 3}})
    with pytest.raises(ValueError, match="repeat names no source of the recipe: facade"):
        load_recipe(tmp_path / "u.yaml")
    write(tmp_path / "r.yaml", {"name": "r", "extends": "product-v1", "repeat": {"facades": 50}})
    with pytest.raises(ValueError, match=r"r\.yaml: invalid recipe"):
        load_recipe(tmp_path / "r.yaml")


def test_errors_in_an_extending_recipe_number_its_own_sources(tmp_path: Path):
    # the file's only source is its sources.0, though the recipe it extends brings four before it
    own = {"name": "field", "kind": "folder", "path": "x", "labels": "y", "mapping": "product", "colour": "red"}
    write(tmp_path / "e.yaml", {"name": "e", "extends": "product-v1", "sources": [own]})
    with pytest.raises(ValueError) as refused:
        load_recipe(tmp_path / "e.yaml")
    message = str(refused.value)
    assert "e.yaml: invalid recipe: sources.0.colour: Extra inputs are not permitted" in message
    assert "\n" not in message  # one line, as every command's errors
