"""``mmxai leaderboard RESULTS...``: rank methods from stored results, without recomputing.

RESULTS are ``*.sqlite`` stores or folders holding them (every shard of a run, runs on other
machines, resumed runs): they merge by their unique keys, so a sample is never counted
twice. Prints the table and writes ``leaderboard.{md,tex,csv,json}`` and ``references.bib``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console

from mmxai.evaluation import leaderboard, print_table, write_all


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("results", nargs="+", type=Path, metavar="RESULTS",
                        help="results store(s) (*.sqlite) or folder(s) holding them")
    parser.add_argument("--out", type=Path, metavar="DIR",
                        help="where to write the files (default: the first RESULTS folder, "
                             "or the folder of the first store)")
    parser.add_argument("--bootstrap", type=int, default=1000, metavar="B",
                        help="bootstrap resamples for the intervals and tests (default 1000)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the bootstrap")


def run(args: argparse.Namespace) -> int:
    board = leaderboard(args.results, n_boot=args.bootstrap, seed=args.seed)
    first = args.results[0]
    out = args.out or (first if first.is_dir() else first.parent)
    console = Console()
    print_table(board, console)
    paths = write_all(board, out)
    console.print(f"wrote {', '.join(p.name for p in paths)} to {out}")
    return 0
