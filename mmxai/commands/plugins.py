"""``mmxai plugins``: every plugin, what it registered, its licence, and why it broke.

A second table lists every registered item with its one-line ``summary`` and, for methods
and metrics, what the shared pass records for it and whether it runs passes of its own
(:class:`~mmxai.trace.Needs`): the cost a user pays for choosing it. ``--json`` gives both
per plugin (``summaries`` and ``needs``, by kind and name).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from mmxai.hookspecs import KINDS
from mmxai.registry import ENV_VAR, PluginInfo, PluginManager, manager
from mmxai.trace import Needs


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print machine-readable JSON")


def registered_items(pm: PluginManager, info: PluginInfo) -> dict[str, dict[str, Any]]:
    """The classes ``info``'s plugin registered, by kind, then by the name
    ``info.registered`` lists them under (the adapter's name for models)."""
    items: dict[str, dict[str, Any]] = {}
    for kind in KINDS:
        for key, obj in pm.items(kind).items():
            if pm.provider(kind, key) is info:
                label = getattr(obj, "name", key) if kind == "models" else key
                items.setdefault(kind, {}).setdefault(label, obj)
    return items


def summary(kind: str, obj: Any) -> str:
    """The item's one-line ``summary``; a model adapter's architectures (it has none)."""
    if kind == "models":
        return "adapter for " + ", ".join(map(str, obj.architectures))
    return " ".join(str(getattr(obj, "summary", "") or "").split())


def needs_of(obj: Any) -> Needs | None:
    needs = getattr(obj, "needs", None)
    return needs if isinstance(needs, Needs) else None


def describe_needs(needs: Needs) -> str:
    """``Needs`` in a few words; empty when the shared final states are enough."""
    parts = []
    if needs.layers:
        parts.append("layers " + ",".join(map(str, needs.layers)))
    if needs.attentions:
        parts.append("attentions")
    if needs.topk:
        parts.append(f"top-{needs.topk} logits")
    if needs.gradients:
        parts.append("own backward passes")
    if needs.extra_passes:
        parts.append("own forward passes")
    return ", ".join(parts)


def as_json(pm: PluginManager, info: PluginInfo) -> dict[str, Any]:
    items = registered_items(pm, info)
    return {
        **info.as_dict(),
        "summaries": {kind: {name: summary(kind, obj) for name, obj in named.items()}
                      for kind, named in items.items() if kind != "models"},
        "default_run": {name: bool(getattr(obj, "default_run", True))
                        for name, obj in items.get("methods", {}).items()},
        "needs": {kind: {name: dataclasses.asdict(needs) for name, obj in named.items()
                         if (needs := needs_of(obj)) is not None}
                  for kind, named in items.items() if kind in ("methods", "metrics")},
    }


def items_table(pm: PluginManager, plugins: list[PluginInfo]) -> Table:
    """One row per registered item: kind, name, plugin, summary (and a line of needs)."""
    table = Table(title="registered", title_justify="left")
    for column in ("kind", "name", "plugin", "summary"):
        table.add_column(column, overflow="fold")
    rows = [(KINDS.index(kind), name, kind, p.name, obj)
            for p in plugins for kind, named in registered_items(pm, p).items()
            for name, obj in named.items()]
    for _, name, kind, plugin, obj in sorted(rows, key=lambda row: row[:2]):
        text = escape(summary(kind, obj)) or "[dim]no summary[/]"
        needs = needs_of(obj)
        if needs is not None and describe_needs(needs):
            text += f"\n[dim]needs: {escape(describe_needs(needs))}[/]"
        if kind == "methods" and not getattr(obj, "default_run", True):
            text += "\n[dim]costly: runs when named (--method NAME, or --method all)[/]"
        table.add_row(kind[:-1], escape(str(name)), escape(plugin), text)
    return table


def run(args: argparse.Namespace) -> int:
    pm = manager()
    plugins = pm.plugins()
    if args.json:
        print(json.dumps([as_json(pm, p) for p in plugins], indent=2))
        if pm.unmatched():  # stdout stays JSON; the unmatched names go to stderr
            Console(stderr=True, soft_wrap=True).print(escape(pm.limited_by()), highlight=False)
        return 0
    table = Table(title="mmxai plugins", title_justify="left")
    for column in ("plugin", "distribution", "version", "licence", "registered", "status"):
        table.add_column(column, overflow="fold")
    for p in plugins:  # plugin metadata is text, never rich markup: escape every cell
        registered = "\n".join(f"{kind}: {escape(', '.join(p.registered[kind]))}"
                               for kind in KINDS if p.registered.get(kind))
        table.add_row(escape(str(p.name)), escape(str(p.distribution)), escape(str(p.version)),
                      escape(str(p.license)) if p.license else "[yellow]unknown[/]",
                      registered or "[dim]nothing[/]",
                      "[bold red]broken[/]" if p.broken else "[green]ok[/]")
    # Errors are long: one unwrapped line each below the table, easy to copy or grep; a
    # plugin whose import and hooks failed several times gets a line per failure.
    console = Console(soft_wrap=True)
    console.print(table)
    console.print(items_table(pm, plugins))
    broken = [p for p in plugins if p.broken]
    for p in broken:
        for message in p.errors:
            console.print(f"[bold red]broken[/] {escape(p.name)} ({escape(p.distribution)}): "
                          f"{escape(message)}", markup=True, highlight=False)
    limited = pm.limited_by()  # says which MMXAI_PLUGINS names matched no plugin
    console.print(f"{len(plugins)} plugins, {len(broken)} broken"
                  f"{' (the rest work normally)' if broken else ''}. "
                  + (f"{escape(limited)}." if limited else f"Set {ENV_VAR}=a,b to load only some."),
                  highlight=False)
    return 0
