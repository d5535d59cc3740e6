"""``streetwatch models``: what the registry holds."""

from __future__ import annotations

import argparse
import json


def cmd_models(args: argparse.Namespace) -> int:
    """List registered models, or show one card."""
    from models.registry import list_models, read_registry, resolve

    if args.name:
        print(resolve(args.name).card.model_dump_json(indent=2))
        return 0
    default = read_registry().get("default")
    refs = list_models()
    if args.json:
        print(
            json.dumps(
                [
                    {
                        **r.card.model_dump(include={"name", "version", "created", "interim"}),
                        "default": r.card.name == default,
                        "folder": str(r.folder),
                    }
                    for r in refs
                ]
            )
        )
        return 0
    for r in refs:
        mark = "*" if r.card.name == default else " "
        kinds = "+".join(k for k in ("fp32", "int8", "pt") if k in r.card.files)
        interim = " (interim)" if r.card.interim else ""
        print(f"{mark} {r.card.name:32} {r.card.version:12} {kinds:14} {', '.join(r.card.product_classes())}{interim}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """The registry's subcommands."""
    p = sub.add_parser("models", help="list registered models or show a model card")
    p.add_argument("name", nargs="?", help="show this model's card ('default' for the default)")
    p.add_argument("--json", action="store_true", help="machine-readable list")
    p.set_defaults(func=cmd_models)
