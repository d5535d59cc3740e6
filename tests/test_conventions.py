"""Project-wide conventions that every module must keep."""

import argparse
import importlib
import inspect
import pkgutil
import re
from pathlib import Path

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


# ------------------------------------------------------------------------------------------ the README

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"


def readme_command_lines() -> list[str]:
    """Every ``streetwatch ...`` command line the README shows: in its code blocks (continuation lines
    joined, comments cut off) and in inline code spans."""
    text = README.read_text(encoding="utf-8")
    lines: list[str] = []
    block: list[str] | None = None
    for line in text.splitlines():
        if line.startswith("```"):
            if block is not None:
                lines += "\n".join(block).replace("\\\n", " ").splitlines()
            block = None if block is not None else []
        elif block is not None:
            block.append(line)
    lines += [" ".join(span.split()) for span in re.findall(r"`(streetwatch [^`]+)`", text)]
    return [line.split(" #")[0] for line in lines if re.search(r"(?<![\w-])streetwatch [a-z]", line)]


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """A parser's subcommands by name (none for a leaf command)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def test_readme_commands_and_options_exist():
    """Every ``streetwatch COMMAND [SUBCOMMAND] ... --option`` the README shows names a command the CLI has
    and options that command's parser accepts, so a renamed or removed option cannot stay documented."""
    from pipeline.cli import build_parser

    root = build_parser()
    shown = readme_command_lines()
    assert len(shown) >= 30, "the README's command lines were not found"
    problems = []
    for line in shown:
        for match in re.finditer(r"(?<![\w-])streetwatch((?: [a-z][a-z0-9-]*)+)(.*)", line):
            words, rest = match.group(1).split(), match.group(2)
            parser, path = root, []
            for i, word in enumerate(words):
                subs = subcommands(parser)
                if not subs:
                    rest = " ".join(words[i:]) + rest
                    break
                if word not in subs:
                    problems.append(f"{line.strip()!r}: no command 'streetwatch {' '.join([*path, word])}'")
                    parser = None
                    break
                parser, path = subs[word], [*path, word]
            if parser is None:
                continue
            known = {opt for action in parser._actions for opt in action.option_strings}
            for opt in sorted(set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", rest)) - known):
                problems.append(f"{line.strip()!r}: 'streetwatch {' '.join(path)}' has no option {opt}")
    assert not problems, "\n".join(problems)


def test_readme_names_the_environment_variables_the_product_reads():
    """The README names every ``STREETWATCH_*`` variable the product's packages read, and no other."""
    used: set[str] = set()
    for pkg in RUNTIME_PACKAGES:
        for path in (ROOT / pkg).rglob("*.py"):
            used |= set(re.findall(r"\bSTREETWATCH_[A-Z0-9_]+\b", path.read_text(encoding="utf-8")))
    documented = set(re.findall(r"\bSTREETWATCH_[A-Z0-9_]+\b", README.read_text(encoding="utf-8")))
    assert used, "no environment variables found in the product's packages"
    assert not used - documented, f"read by the product, not in the README: {sorted(used - documented)}"
    assert not documented - used, f"in the README, read by nothing: {sorted(documented - used)}"


def test_readme_links_and_images_exist():
    """Every relative link and image of the README points at a file or folder of the repository, and every
    in-page link at one of its headings."""
    text = README.read_text(encoding="utf-8")
    anchors = {
        re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        for heading in re.findall(r"^#+ (.+)$", text, re.M)
    }
    missing = []
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+:", target):
            continue
        path, _, anchor = target.partition("#")
        if (ROOT / path).exists() if path else anchor in anchors:
            continue
        missing.append(target)
    assert not missing, f"README links to what is not there: {missing}"
