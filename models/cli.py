"""``streetwatch models``: what the registry holds."""

from __future__ import annotations

import argparse
import json

from pipeline.cli import one_line


def history_lines(events: list[dict]) -> list[str]:
    """The registry history, one line per event: when, what, who, the gate's verdict and the model it was
    measured against, a forced promotion's reason and what it overrode, notes."""
    lines = []
    for e in events:
        what = f"{e.get('name')}@{e['version']}" if e.get("version") else f"{e.get('name')} (an entry without details)"
        line = f"{e.get('at', '-'):25} {e.get('action', 'promote'):8} {what}"
        if e.get("by"):
            line += f" by {e['by']}"
        gate = e.get("gate")
        if gate:
            base = gate.get("baseline") or {}
            against = f" against {base.get('name')}@{base.get('version')}" if base.get("name") else ""
            if gate.get("passed"):
                line += f" gate passed{against}"
            else:
                line += f" gate REFUSED{against}: " + "; ".join(gate.get("failures", []))
        if e.get("forced"):
            line += f"; FORCED, reason: {e.get('reason')}"
            if e.get("override"):
                line += f"; overrode: {e['override']}"
        elif e.get("reason"):
            line += f"; reason: {e['reason']}"
        if e.get("note"):
            line += f"; {e['note']}"
        if e.get("previous"):
            line += f"; was {e['previous']}"
        lines.append(line)
    return lines


def cmd_models(args: argparse.Namespace) -> int:
    """List registered models, or show one card. Exit status 1 when a model folder's card is unreadable."""
    from models.registry import ModelError, history_events, models_root, read_registry, resolve, scan_models
    from pipeline.cli import CLIError

    if args.name and not args.history:
        try:
            print(resolve(args.name).card.model_dump_json(indent=2))
        except ModelError as exc:
            raise CLIError(one_line(str(exc))) from None
        return 0
    try:
        index = read_registry()
    except ModelError as exc:  # registry.json that is not JSON: one line naming it, not a traceback
        raise CLIError(one_line(str(exc))) from None
    if args.history:
        events = history_events(index)
        if args.name:  # the history of one model
            events = [e for e in events if args.name in (e.get("name"), e.get("previous"))]
        if args.json:
            print(json.dumps(events, ensure_ascii=False))
            return 0
        print("\n".join(history_lines(events)) or "no promotions recorded" + (f" for {args.name}" if args.name else ""))
        return 0
    default = index.get("default")
    refs, unreadable = scan_models()
    if default and default not in {r.card.name for r in refs} | {f.name for f in unreadable}:
        unreadable[models_root() / default] = (  # the state in which `serve` cannot start: say so
            f"registry.json names it the default, but there is no model folder {models_root() / default}"
        )
    status = 1 if unreadable else 0
    if args.json:
        listed = [
            {
                **r.card.model_dump(include={"name", "version", "created", "interim"}),
                "default": r.card.name == default,
                "folder": str(r.folder),
            }
            for r in refs
        ]
        listed += [
            {"name": f.name, "default": f.name == default, "folder": str(f), "error": one_line(error)}
            for f, error in unreadable.items()
        ]
        print(json.dumps(listed))
        return status
    name_w = max([len(r.card.name) for r in refs] + [len(f.name) for f in unreadable], default=0)
    version_w = max((len(r.card.version) for r in refs), default=0)
    for r in refs:
        mark = "*" if r.card.name == default else " "
        kinds = "+".join(k for k in ("fp32", "int8", "pt") if k in r.card.files)
        interim = " (interim)" if r.card.interim else ""
        classes = ", ".join(r.card.product_classes())
        print(f"{mark} {r.card.name:{name_w}}  {r.card.version:{version_w}}  {kinds:12}  {classes}{interim}")
    for folder, error in unreadable.items():
        mark = "*" if folder.name == default else "!"
        print(f"{mark} {folder.name:{name_w}}  unreadable: {one_line(error)}")
    return status


def register(sub: argparse._SubParsersAction) -> None:
    """The registry's subcommands."""
    p = sub.add_parser("models", help="list registered models or show a model card")
    p.add_argument("name", nargs="?", help="show this model's card ('default' for the default)")
    p.add_argument("--json", action="store_true", help="machine-readable list")
    p.add_argument("--history", action="store_true", help="promotions and rollbacks: who, when, gate, reasons")
    p.set_defaults(func=cmd_models)
