"""``mmxai plugins``: every plugin, what it registered, its licence, and why it broke."""

from __future__ import annotations

import argparse
import json

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from mmxai.hookspecs import KINDS
from mmxai.registry import ENV_VAR, manager


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print machine-readable JSON")


def run(args: argparse.Namespace) -> int:
    plugins = manager().plugins()
    if args.json:
        print(json.dumps([p.as_dict() for p in plugins], indent=2))
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
    broken = [p for p in plugins if p.broken]
    for p in broken:
        for message in p.errors:
            console.print(f"[bold red]broken[/] {escape(p.name)} ({escape(p.distribution)}): "
                          f"{escape(message)}", markup=True, highlight=False)
    console.print(f"{len(plugins)} plugins, {len(broken)} broken"
                  f"{' (the rest work normally)' if broken else ''}. "
                  f"Set {ENV_VAR}=a,b to load only some.")
    return 0
