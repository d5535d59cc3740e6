"""Class mappings: a source dataset's class names onto the product classes.

A mapping file is YAML with ``name``, ``description`` and ``map: {source_name: product_class}``;
source classes that are not listed (or map to null) are dropped. Shipped mappings live in
``datasets/mappings/`` and are found by name.
"""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from models.classes import CLASS_IDS, CLASS_NAMES
from pipeline.files import read_text

MAPPINGS_DIR = Path(__file__).resolve().parent / "mappings"


class ClassMapping(BaseModel):
    """Source class name -> product class name."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="Mapping name")
    description: str = Field("", description="What source the mapping is for")
    map: dict[str, str | None] = Field(description="Source class name to product class (null: drop)")

    @field_validator("map")
    @classmethod
    def _product_classes(cls, value: dict[str, str | None]) -> dict[str, str | None]:
        for src, dst in value.items():
            if dst is not None and dst not in CLASS_IDS:
                raise ValueError(f"{src!r} maps to unknown product class {dst!r}; known: {', '.join(CLASS_NAMES)}")
        return value

    def class_map(self, names: list[str]) -> list[str | None]:
        """Product class (or None) for each source class name, in the source's order."""
        return [self.map.get(n) for n in names]

    def id_map(self, names: list[str]) -> dict[int, int]:
        """Source class id -> product class id, for the source classes that are kept."""
        return {i: CLASS_IDS[p] for i, p in enumerate(self.class_map(names)) if p is not None}

    def targets(self) -> list[str]:
        """The product classes this mapping produces, in product order."""
        kept = set(v for v in self.map.values() if v is not None)
        return [c for c in CLASS_NAMES if c in kept]

    def unknown_names(self, names: list[str]) -> list[str]:
        """Mapping keys the source does not have (usually a typo in the mapping file)."""
        return [k for k in self.map if k not in names]


def identity_mapping() -> ClassMapping:
    """The mapping for data already labelled with product class names."""
    return ClassMapping(name="product", description="product classes", map={c: c for c in CLASS_NAMES})


def shipped_mappings() -> list[str]:
    """Names of the mappings shipped with the product."""
    return sorted(p.stem for p in MAPPINGS_DIR.glob("*.yaml"))


def load_mapping(ref: str | Path) -> ClassMapping:
    """A shipped mapping by name, or a mapping file by path; errors name the file and the problem."""
    text = str(ref)
    if text == "product":
        return identity_mapping()
    path = Path(text)
    if not path.is_file():
        path = MAPPINGS_DIR / f"{text}.yaml"
        if not path.is_file():
            raise FileNotFoundError(
                f"{text}: no such mapping file or shipped mapping (shipped: {', '.join(shipped_mappings())})"
            )
    try:
        return ClassMapping.model_validate(yaml.safe_load(read_text(path)))
    except (ValidationError, yaml.YAMLError) as exc:
        raise ValueError(f"{path}: invalid class mapping: {exc}") from None
