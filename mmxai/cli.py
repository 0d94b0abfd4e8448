"""The ``mmxai`` command line.

Subcommands live in ``mmxai.commands.<name>`` modules, each exposing
``add_arguments(parser)`` and ``run(args) -> int``. They are imported lazily, only the one
being run, so a broken optional module never breaks ``mmxai --help`` or another command.
Every :class:`~mmxai.errors.MMXAIError` ends the program with one red line and exit code 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from rich.console import Console
from rich.markup import escape

from mmxai import __version__
from mmxai.errors import MMXAIError

#: name -> (module, one-line help). The help is here so ``--help`` imports nothing.
COMMANDS: dict[str, tuple[str, str]] = {
    "explain": ("mmxai.commands.explain",
                "explain each generated token of a model's answer about images"),
    "compare": ("mmxai.commands.compare",
                "run several methods on a dataset and score them with metrics"),
    "leaderboard": ("mmxai.commands.leaderboard",
                    "rank methods from saved comparison results"),
    "plugins": ("mmxai.commands.plugins",
                "list plugins: what each registered, its licence and load errors"),
    "tiny": ("mmxai.commands.tiny",
             "save a tiny random model of a family (offline demos and tests)"),
}

USAGE_ERROR = 2


def error(message: str) -> None:
    """Print one red line on stderr (never wrapped, so scripts can grep it)."""
    line = " ".join(str(message).split())
    Console(stderr=True, soft_wrap=True).print(f"[bold red]error:[/] {escape(line)}")


def _parser() -> tuple[argparse.ArgumentParser, argparse._SubParsersAction]:
    parser = argparse.ArgumentParser(
        prog="mmxai",
        description="Explain what a multimodal LLM looked at for each generated token.",
    )
    parser.add_argument("--version", action="version", version=f"mmxai {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    return parser, commands


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser, commands = _parser()
    chosen = next((arg for arg in argv if not arg.startswith("-")), None)
    run = None
    for name, (module_name, summary) in COMMANDS.items():
        sub = commands.add_parser(name, help=summary, description=summary)
        if name != chosen:
            continue
        try:
            module = importlib.import_module(module_name)
        except Exception as exc:  # an optional command's bug must not crash the others
            error(f"command {name!r} is not available: cannot import {module_name} "
                  f"({type(exc).__name__}: {exc})")
            return USAGE_ERROR
        module.add_arguments(sub)
        run = module.run
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, or a usage error argparse printed
        if exc.code is None or isinstance(exc.code, int):
            return exc.code or 0
        return USAGE_ERROR
    if run is None:
        parser.print_help(sys.stderr)
        return USAGE_ERROR
    try:
        return int(run(args) or 0)
    except MMXAIError as exc:
        error(str(exc))
        return USAGE_ERROR
    except KeyboardInterrupt:
        error("interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())
