"""Project-wide conventions that every module must keep."""

import importlib
import inspect
import pkgutil

import pytest
from pydantic import BaseModel

RUNTIME_PACKAGES = ("models", "pipeline", "serve", "datasets", "training")


def product_models() -> list[type[BaseModel]]:
    """Every pydantic model class defined in the product's packages."""
    found: dict[str, type[BaseModel]] = {}
    for pkg_name in RUNTIME_PACKAGES:
        pkg = importlib.import_module(pkg_name)
        for mod in pkgutil.walk_packages(pkg.__path__, pkg_name + "."):
            if ".migrations" in mod.name:
                continue
            module = importlib.import_module(mod.name)
            for _, obj in inspect.getmembers(module, inspect.isclass):
                if issubclass(obj, BaseModel) and obj.__module__ == mod.name:
                    found[f"{obj.__module__}.{obj.__qualname__}"] = obj
    return [found[k] for k in sorted(found)]


MODELS = product_models()


def test_there_are_config_models_to_check():
    assert len(MODELS) >= 5


@pytest.mark.parametrize("model", MODELS, ids=lambda m: f"{m.__module__}.{m.__qualname__}")
def test_pydantic_models_forbid_extra_fields_and_describe_every_field(model):
    assert model.model_config.get("extra") == "forbid", f"{model.__qualname__} must set extra='forbid'"
    assert model.__doc__ and model.__doc__.strip(), f"{model.__qualname__} needs a docstring"
    undocumented = [name for name, field in model.model_fields.items() if not field.description]
    assert not undocumented, f"{model.__qualname__}: fields without a description: {undocumented}"
