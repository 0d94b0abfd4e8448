"""``mmxai leaderboard RESULTS...``: rank methods from stored results, without recomputing.

RESULTS are ``*.sqlite`` stores or folders holding them (every shard of a run, runs on other
machines, resumed runs): they merge by their unique keys, so a sample is never counted
twice (the newest attempt of a retried failure counts). Stores are opened read-only: a
path that is missing, empty, not SQLite, not an mmxai store, or a folder without stores is
refused in one line, and nothing is ever written into it. Prints the table and writes
``leaderboard.{md,tex,csv,json}`` and ``references.bib`` into ``--out``.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from rich.console import Console

from mmxai.errors import MMXAIError
from mmxai.evaluation import build, load_rows, print_table, write_all


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("results", nargs="+", type=Path, metavar="RESULTS",
                        help="results store(s) (*.sqlite) or folder(s) holding them")
    parser.add_argument("--out", type=Path, metavar="DIR",
                        help="where to write the files (default: the first RESULTS folder, "
                             "or the folder of the first store)")
    parser.add_argument("--bootstrap", type=int, default=1000, metavar="B",
                        help="bootstrap resamples for the intervals and tests (default 1000)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the bootstrap")


def check_out(path: Path, option: str = "--out") -> None:
    """Refuse, in one line, an output folder that is a file or cannot be created or written
    (checked before any work; nothing is created here)."""
    if path.exists() or path.is_symlink():
        if not path.is_dir():
            what = "a file" if path.is_file() else "not a folder"
            raise MMXAIError(f"{option} {str(path)!r}: is {what}, expected a folder")
        if not os.access(path, os.W_OK | os.X_OK):
            raise MMXAIError(f"{option} {str(path)!r}: the folder is not writable")
        return
    parent = path.absolute().parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise MMXAIError(f"{option} {str(path)!r}: cannot be created, {str(parent)!r} is a "
                         "file")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise MMXAIError(f"{option} {str(path)!r}: cannot be created, {str(parent)!r} is not "
                         "writable")


def run(args: argparse.Namespace) -> int:
    first = args.results[0]
    out = args.out or (first if first.is_dir() else first.parent)
    rows, provenance = load_rows(args.results)  # the inputs first: read-only
    check_out(out)
    board = build(rows, provenance, n_boot=args.bootstrap, seed=args.seed)
    console = Console()
    print_table(board, console)
    paths = write_all(board, out)
    console.print(f"wrote {', '.join(p.name for p in paths)} to {out}")
    return 0
