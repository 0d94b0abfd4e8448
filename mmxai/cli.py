"""The ``mmxai`` command line.

Subcommands live in ``mmxai.commands.<name>`` modules, each exposing
``add_arguments(parser)`` and ``run(args) -> int``. They are imported lazily, only the one
being run, so a broken optional module never breaks ``mmxai --help`` or another command.
Every :class:`~mmxai.errors.MMXAIError` ends the program with one red line and exit code 2;
so do argparse's usage errors (a bad int, a missing argument) and the OS errors a user's
paths and disk cause (no space, no permission, not a directory: :data:`USER_ERRNOS`). Any
other exception is a bug and keeps its traceback.

``--verbose`` (before or after the command's name) lets Hugging Face's own output through:
the ``Loading weights`` and download progress bars and the hub's log lines, which every
command otherwise hides (:func:`mmxai.hub.quiet`). It sets ``MMXAI_VERBOSE=1`` for the run,
so ``mmxai compare``'s worker processes inherit it.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import importlib
import os
import sys
from collections.abc import Iterator, Sequence

from rich.console import Console
from rich.markup import escape

from mmxai import __version__
from mmxai.errors import MMXAIError
from mmxai.hub import VERBOSE_ENV

#: name -> (module, one-line help). The help is here so ``--help`` imports nothing.
COMMANDS: dict[str, tuple[str, str]] = {
    "explain": ("mmxai.commands.explain",
                "explain each generated token of a model's answer about images"),
    "compare": ("mmxai.commands.compare",
                "run several methods on a dataset and score them with metrics"),
    "score": ("mmxai.commands.score", "score saved maps (other tools' or mmxai's) like compare"),
    "leaderboard": ("mmxai.commands.leaderboard",
                    "rank methods from saved comparison results"),
    "plugins": ("mmxai.commands.plugins",
                "list plugins: what each registered, its licence and load errors"),
    "tiny": ("mmxai.commands.tiny",
             "save a tiny random model of a family (offline demos and tests)"),
}

USAGE_ERROR = 2
#: Exit code when the reader of our output went away (``mmxai plugins | head -1``): 128 +
#: SIGPIPE, what a shell reports for a program killed by it.
BROKEN_PIPE = 141
#: OS errors about a path that the user or their machine causes, not mmxai: shown as one
#: line (the path and the cause) instead of a traceback when they reach :func:`main`.
USER_ERRNOS = frozenset(getattr(errno, name) for name in (
    "ENOENT", "EACCES", "EPERM", "EROFS", "ENOSPC", "EDQUOT", "EEXIST", "ENOTDIR", "EISDIR",
    "ENAMETOOLONG", "ELOOP", "ENOTEMPTY", "EFBIG", "EMFILE", "ENFILE", "EBUSY", "ETXTBSY",
) if hasattr(errno, name))


def error(message: str) -> None:
    """Print one red line on stderr (never wrapped, so scripts can grep it). Undecodable
    bytes (lone surrogates) are shown as ``\\udcff`` escapes, never a UnicodeEncodeError."""
    line = " ".join(str(message).split())
    line = line.encode("utf-8", "backslashreplace").decode("utf-8")
    Console(stderr=True, soft_wrap=True).print(f"[bold red]error:[/] {escape(line)}")


class UsageError(Exception):
    """argparse refused the command line; the message names the argument and the cause."""


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors become one line (via :class:`UsageError`)
    instead of the usage text plus a message; subcommand parsers are of this class too."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"{self.prog}: {message} (see {self.prog} --help)")


VERBOSE_HELP = ("show Hugging Face's progress bars (Loading weights, downloads) and log lines "
                "(default: hidden; MMXAI_VERBOSE=1 does the same, in Python too)")


def _parser() -> tuple[argparse.ArgumentParser, argparse._SubParsersAction]:
    parser = _Parser(
        prog="mmxai",
        description="Explain what a multimodal LLM looked at for each generated token.",
    )
    parser.add_argument("--version", action="version", version=f"mmxai {__version__}")
    parser.add_argument("--verbose", action="store_true", help=VERBOSE_HELP)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    return parser, commands


@contextlib.contextmanager
def verbosity(verbose: bool) -> Iterator[None]:
    """With ``verbose``, ``MMXAI_VERBOSE=1`` while the command runs (put back afterwards: a
    test or a script may call :func:`main` again); without it, the environment as it is."""
    if not verbose:
        yield
        return
    before = os.environ.get(VERBOSE_ENV)
    os.environ[VERBOSE_ENV] = "1"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(VERBOSE_ENV, None)
        else:
            os.environ[VERBOSE_ENV] = before


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
        # after the command's name too; SUPPRESS keeps a --verbose given before it
        sub.add_argument("--verbose", action="store_true", default=argparse.SUPPRESS,
                         help=VERBOSE_HELP)
        run = module.run
    try:
        args = parser.parse_args(argv)
    except UsageError as exc:
        error(str(exc))
        return USAGE_ERROR
    except SystemExit as exc:  # --help or --version
        if exc.code is None or isinstance(exc.code, int):
            return exc.code or 0
        return USAGE_ERROR
    if run is None:
        parser.print_help(sys.stderr)
        return USAGE_ERROR
    try:
        with verbosity(args.verbose):
            return int(run(args) or 0)
    except MMXAIError as exc:
        error(str(exc))
        return USAGE_ERROR
    except KeyboardInterrupt:
        error("interrupted")
        return 130
    except BrokenPipeError:
        _silence_stdout()
        return BROKEN_PIPE
    except OSError as exc:
        if exc.errno not in USER_ERRNOS or exc.filename is None:
            raise  # not about a path: a bug until shown otherwise
        where = repr(str(exc.filename))
        if exc.filename2 is not None:
            where += f" -> {str(exc.filename2)!r}"
        error(f"{where}: {exc.strerror or type(exc).__name__} "
              f"({errno.errorcode.get(exc.errno, exc.errno)})")
        return USAGE_ERROR


def _silence_stdout() -> None:
    """After a broken pipe, point stdout at /dev/null so the interpreter's final flush does
    not print a second error."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # stdout replaced (tests) or closed
        pass


if __name__ == "__main__":
    sys.exit(main())
