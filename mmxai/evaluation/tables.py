"""Render a :class:`~mmxai.evaluation.leaderboard.Leaderboard`: terminal, Markdown, LaTeX
(booktabs), CSV, JSON (with full provenance) and the BibTeX of everything in the table.

Every cell reads ``value [low, high]``: the metric's aggregate and its 95% bootstrap
interval. The best value of a column is bold; ``*`` marks a row significantly worse than
the best one (paired permutation test, p < 0.05, on the samples both share).
"""

from __future__ import annotations

import csv
import json
import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from mmxai.errors import UnknownNameError
from mmxai.evaluation.leaderboard import ALPHA, Cell, Leaderboard, LeaderRow, MetricInfo
from mmxai.registry import manager

FILES = ("leaderboard.md", "leaderboard.tex", "leaderboard.csv", "leaderboard.json",
         "references.bib")


def _decimals(values: list[float]) -> int:
    """Digits after the point giving about three significant digits to the column's smallest
    magnitude (0.412 -> 3, 0.0012 -> 5, 153.2 -> 0), at most 6."""
    finite = [abs(v) for v in values if math.isfinite(v) and v != 0]
    if not finite:
        return 3
    return int(min(6, max(0, 2 - math.floor(math.log10(min(finite))))))


def _number(value: float, decimals: int) -> str:
    return f"{value:.{decimals}f}" if math.isfinite(value) else "nan"


def _column_decimals(board: Leaderboard) -> dict[str, int]:
    return {m.label: _decimals([r.cells[m.label].value for r in board.rows
                                if m.label in r.cells]) for m in board.metrics}


def _cell_text(cell: Cell | None, decimals: int, bold: Callable[[str], str],
               mark: str, interval: str = " [{}, {}]") -> str:
    if cell is None:
        return "–"
    text = bold(_number(cell.value, decimals)) if cell.best else _number(cell.value, decimals)
    if cell.significantly_worse:
        text += mark
    low, high = cell.ci
    if math.isfinite(low):
        text += interval.format(_number(low, decimals), _number(high, decimals))
    return text


def _multi_dataset(board: Leaderboard) -> bool:
    return len({r.key.dataset for r in board.rows}) > 1


def _head(board: Leaderboard, metrics: list[MetricInfo] | None = None) -> list[str]:
    lead = ["dataset"] if _multi_dataset(board) else []
    return lead + ["model", "method", "N", "failed"] + [
        f"{m.label} {m.arrow}" for m in (board.metrics if metrics is None else metrics)]


def _lead(board: Leaderboard, row: LeaderRow) -> list[str]:
    lead = [row.key.dataset] if _multi_dataset(board) else []
    return lead + [row.key.model, row.label, str(row.n), str(row.failed)]


def _body(board: Leaderboard, bold: Callable[[str], str], mark: str,
          escape: Callable[[str], str] = str) -> list[list[str]]:
    decimals = _column_decimals(board)
    return [[escape(t) for t in _lead(board, row)]
            + [_cell_text(row.cells.get(m.label), decimals[m.label], bold, mark)
               for m in board.metrics] for row in board.rows]


def _caption(board: Leaderboard, escape: Callable[[str], str] = str) -> str:
    datasets = ", ".join(escape(d) for d in sorted({r.key.dataset for r in board.rows}))
    return (f"{datasets}: aggregate [95% bootstrap interval, {board.n_boot} resamples]; "
            f"best in bold; * significantly worse than the best "
            f"(paired permutation test, p < {ALPHA}).")


def print_table(board: Leaderboard, console: Console | None = None) -> None:
    """One terminal table per metric category (so it fits), the interval under each value."""
    console = console or Console()
    decimals = _column_decimals(board)
    categories = dict.fromkeys(m.category for m in board.metrics)
    for category in categories:
        metrics = [m for m in board.metrics if m.category == category]
        table = Table(title=category or "other", title_justify="left")
        for name in _head(board, metrics):
            table.add_column(escape(name), overflow="fold")
        for row in board.rows:
            table.add_row(*map(escape, _lead(board, row)), *(
                _cell_text(row.cells.get(m.label), decimals[m.label],
                           lambda s: f"[bold]{s}[/bold]", "*", "\n[dim]{}–{}[/dim]")
                for m in metrics))
        console.print(table)
    console.print(escape(_caption(board)))
    if board.failures:
        console.print(f"{len(board.failures)} failed (sample, method, metric); "
                      "causes in leaderboard.json")


#: Characters that would end a Markdown table cell (``|``) or turn a name into markup:
#: emphasis, code, links, strikethrough, raw HTML, entities. CommonMark lets a backslash
#: escape any ASCII punctuation, so each renders as itself.
_MD_SPECIAL = frozenset("\\`*_[]<>|~&")


def md_escape(text: str) -> str:
    """Text for one Markdown table cell: specials backslash-escaped, line breaks as spaces
    (a newline would end the row)."""
    return "".join("\\" + ch if ch in _MD_SPECIAL else " " if ch in "\r\n" else ch
                   for ch in str(text))


def markdown(board: Leaderboard) -> str:
    head = [md_escape(h) for h in _head(board)]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    lines += ["| " + " | ".join(cells) + " |"
              for cells in _body(board, lambda s: f"**{s}**", "\\*", md_escape)]
    return "\n".join(lines) + f"\n\n{_caption(board, md_escape)}\n"


_TEX = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#",
        "_": r"\_", "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}",
        "^": r"\textasciicircum{}", "↑": r"$\uparrow$", "↓": r"$\downarrow$",
        "–": "--", "|": r"\textbar{}", "<": r"\textless{}", ">": r"\textgreater{}",
        "\n": " ", "\r": " "}


def tex_escape(text: str) -> str:
    """Text for LaTeX: ``\\ & % $ # _ { } ~ ^`` (and ``| < >``, which OT1 fonts print as
    other glyphs) as their text commands; line breaks as spaces."""
    return "".join(_TEX.get(ch, ch) for ch in str(text))


def latex(board: Leaderboard) -> str:
    head = _head(board)
    spec = "l" * (len(head) - len(board.metrics)) + "c" * len(board.metrics)
    body = _body(board, lambda s: rf"\textbf{{{s}}}", r"$^{*}$", tex_escape)
    lines = [r"\begin{table}[t]", r"\centering", r"\small",
             rf"\begin{{tabular}}{{{spec}}}", r"\toprule",
             " & ".join(tex_escape(h) for h in head) + r" \\", r"\midrule"]
    lines += [" & ".join(cells) + r" \\" for cells in body]
    lines += [r"\bottomrule", r"\end{tabular}", rf"\caption{{{tex_escape(_caption(board))}}}",
              r"\end{table}"]
    return "\n".join(lines) + "\n"


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def _cell_record(cell: Cell, info: MetricInfo) -> dict[str, Any]:
    return {"metric": info.label, "value": _finite(cell.value), "ci_low": _finite(cell.ci[0]),
            "ci_high": _finite(cell.ci[1]), "n": cell.n, "failed": cell.failed,
            "best": cell.best, "p_vs_best": _finite(cell.p_vs_best),
            "significantly_worse": cell.significantly_worse,
            "higher_is_better": info.higher_is_better, "category": info.category}


def records(board: Leaderboard) -> list[dict[str, Any]]:
    """One flat record per (row, metric): the CSV rows and the JSON ``cells``."""
    out = []
    for row in board.rows:
        for info in board.metrics:
            if info.label in row.cells:
                out.append({"dataset": row.key.dataset, "model": row.key.model,
                            "method": row.key.method, "label": row.label,
                            "options_hash": row.key.options_hash,
                            **_cell_record(row.cells[info.label], info)})
    return out


def write_csv(board: Leaderboard, path: Path) -> None:
    rows = records(board)
    fields = list(rows[0]) if rows else ["dataset", "model", "method", "metric", "value"]
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)


def to_json(board: Leaderboard) -> dict[str, Any]:
    return {
        "statistics": {"interval": "percentile bootstrap over samples", "level": 0.95,
                       "resamples": board.n_boot, "seed": board.seed,
                       "test": "paired permutation (swap) test against the best row, two-sided",
                       "alpha": ALPHA},
        "metrics": [{"label": m.label, "name": m.name, "higher_is_better": m.higher_is_better,
                     "category": m.category} for m in board.metrics],
        "rows": [{"dataset": r.key.dataset, "model": r.key.model, "method": r.key.method,
                  "label": r.label, "options_hash": r.key.options_hash, "n": r.n,
                  "failed": r.failed} for r in board.rows],
        "cells": records(board),
        "failures": [{"dataset": f.key.dataset, "model": f.key.model, "method": f.key.method,
                      "options_hash": f.key.options_hash, "sample": f.sample_id,
                      "metric": f.metric, "error": f.error} for f in board.failures],
        "provenance": board.provenance,
    }


_ENTRY = re.compile(r"@\s*\w+\s*\{\s*([^,\s]+)\s*,", re.MULTILINE)


def bib_entries(text: str) -> dict[str, str]:
    """Split BibTeX text into {key: entry}."""
    starts = [m.start() for m in _ENTRY.finditer(text)] + [len(text)]
    return {_ENTRY.match(text, s).group(1): text[s:e].strip()
            for s, e in zip(starts, starts[1:], strict=False)}


def bibtex(board: Leaderboard) -> str:
    """Each method's, metric's and dataset's BibTeX, one entry per key."""
    wanted = [("methods", sorted({r.key.method for r in board.rows})),
              ("metrics", sorted({m.name for m in board.metrics})),
              ("datasets", sorted({r.key.dataset for r in board.rows}))]
    entries: dict[str, str] = {}
    for kind, names in wanted:
        for name in names:
            try:
                citation = manager().get(kind, name).citation or ""
            except UnknownNameError:
                continue
            for key, entry in bib_entries(citation).items():
                entries.setdefault(key, entry)
    return "\n\n".join(entries.values()) + ("\n" if entries else "")


def write_all(board: Leaderboard, out: str | Path) -> list[Path]:
    """Write every file of :data:`FILES` into ``out``; returns their paths."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / name for name in FILES]
    paths[0].write_text(markdown(board), encoding="utf-8")
    paths[1].write_text(latex(board), encoding="utf-8")
    write_csv(board, paths[2])
    paths[3].write_text(json.dumps(to_json(board), indent=2, allow_nan=False) + "\n",
                        encoding="utf-8")
    paths[4].write_text(bibtex(board), encoding="utf-8")
    return paths
