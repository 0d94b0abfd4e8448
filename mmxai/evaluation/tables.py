"""Render a :class:`~mmxai.evaluation.leaderboard.Leaderboard`: terminal, Markdown, LaTeX
(:mod:`~mmxai.evaluation.latex`: booktabs, a paper's table), CSV, JSON (with full
provenance and the sample ids) and the BibTeX of everything in the table
(:func:`~mmxai.evaluation.leaderboard.references`).

Every cell reads ``value [low, high]``: the metric's aggregate and its 95% bootstrap
interval. The best value of a column is bold; ``*`` marks a row significantly worse than
the best one (paired permutation test, p < 0.05, on the samples both share). Under
:data:`~mmxai.evaluation.leaderboard.SMALL_N` samples every table says its intervals are
wide.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from mmxai.citations import entries as bib_entries
from mmxai.evaluation.latex import latex, significant_decimals, tex_escape
from mmxai.evaluation.leaderboard import (
    ALPHA,
    SMALL_N,
    Cell,
    Leaderboard,
    LeaderRow,
    MetricInfo,
    References,
    references,
)
from mmxai.evaluation.provenance import ids_hash

__all__ = ["FILES", "bib_entries", "bibtex", "latex", "markdown", "md_escape", "print_table",
           "records", "tex_escape", "to_json", "write_all", "write_csv"]

FILES = ("leaderboard.md", "leaderboard.tex", "leaderboard.csv", "leaderboard.json",
         "references.bib")


def _decimals(values: list[float]) -> int:
    """Digits after the point giving the column's smallest magnitude the LaTeX tables'
    significant digits (three: 0.412 -> 3, 0.0012 -> 5, 153.2 -> 0), at most 6."""
    finite = [abs(v) for v in values if math.isfinite(v) and v != 0]
    if not finite:
        return 3
    return min(6, significant_decimals(min(finite)))


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
    text = (f"{datasets}: aggregate [95% bootstrap interval, {board.n_boot} resamples]; "
            f"best in bold; * significantly worse than the best "
            f"(paired permutation test, p < {ALPHA}).")
    return text + _small_n(board)


def _small_n(board: Leaderboard) -> str:
    """The warning a table of few samples carries ('' from :data:`SMALL_N` samples on)."""
    n = board.smallest_n
    if n is None or n >= SMALL_N:
        return ""
    return (f" N = {n} < {SMALL_N}: the intervals are wide, and a missing * is not evidence "
            "that two methods are equal.")


def _title(info: MetricInfo, metrics: list[MetricInfo]) -> str:
    """A terminal column's header: the metric's name (its options go under the table),
    with the option set's place when the name comes with several, and the direction."""
    same = [m.label for m in metrics if m.name == info.name]
    place = f" #{same.index(info.label) + 1}" if len(same) > 1 else ""
    return f"{info.name}{place} {info.arrow}"


def _span(widths: list[int]) -> int:
    """The characters a rich table with columns of ``widths`` takes (3 per column, + 1)."""
    return sum(w + 3 for w in widths) + 1


def _chunks(metrics: list[MetricInfo], widths: dict[str, int], lead: list[int],
            limit: int) -> list[list[MetricInfo]]:
    """``metrics`` in runs whose tables fit ``limit`` characters (at least one a table)."""
    chunks: list[list[MetricInfo]] = [[]]
    for info in metrics:
        if chunks[-1] and _span(lead + [widths[m.label] for m in [*chunks[-1], info]]) > limit:
            chunks.append([])
        chunks[-1].append(info)
    return chunks


def _widths(least: list[int], natural: list[int], limit: int) -> list[int | None]:
    """Column widths for rich: none set when the natural ones fit; else each column's least
    (its longest word) and the room left shared out, so rich never folds inside a word."""
    if _span(natural) <= limit:
        return [None] * len(natural)
    widths = list(least)
    room = limit - _span(widths)
    while room > 0 and any(w < n for w, n in zip(widths, natural, strict=True)):
        for i, n in enumerate(natural):
            if room > 0 and widths[i] < n:
                widths[i] += 1
                room -= 1
    return list(widths)


def _words(texts: list[str]) -> int:
    return max((len(word) for text in texts for word in text.split()), default=1)


def print_table(board: Leaderboard, console: Console | None = None) -> None:
    """One terminal table per metric category (split further when it would not fit), the
    interval under each value. Nothing is ever cut inside a word: a column is at least as
    wide as the longest word of its header and its values, and wraps between words;
    columns the table would repeat on every row (one dataset, one model, one N, no
    failure) are said in its title."""
    console = console or Console()
    decimals = _column_decimals(board)
    lead = [(name, get) for name, get in (("dataset", lambda r: r.key.dataset),
                                          ("model", lambda r: r.key.model))
            if len({get(r) for r in board.rows}) > 1]
    lead.append(("method", lambda r: r.label))
    counts = {r.n for r in board.rows}
    if len(counts) > 1:
        lead.append(("N", lambda r: str(r.n)))
    if any(r.failed for r in board.rows):
        lead.append(("failed", lambda r: str(r.failed)))
    lead_widths = [max(len(name), *(len(get(r)) for r in board.rows)) for name, get in lead]
    plain = {m.label: [_cell_text(r.cells.get(m.label), decimals[m.label], str, "*",
                                  "\n[{}, {}]").split("\n") for r in board.rows]
             for m in board.metrics}
    titles = {m.label: _title(m, board.metrics) for m in board.metrics}
    least = {label: _words([titles[label], *(t for lines in cells for t in lines)])
             for label, cells in plain.items()}
    natural = {label: max(len(titles[label]), *(len(t) for lines in cells for t in lines))
               for label, cells in plain.items()}
    where = _where(board, counts)
    for category in dict.fromkeys(m.category for m in board.metrics):
        metrics = [m for m in board.metrics if m.category == category]
        for chunk in _chunks(metrics, least, lead_widths, console.width):
            widths = _widths(lead_widths + [least[m.label] for m in chunk],
                             lead_widths + [natural[m.label] for m in chunk], console.width)
            table = Table(title=f"{category or 'other'} · {where}", title_justify="left")
            for name, width in zip([n for n, _ in lead] + [titles[m.label] for m in chunk],
                                   widths, strict=True):
                table.add_column(escape(name), width=width, overflow="fold")
            for row in board.rows:
                table.add_row(*(escape(get(row)) for _, get in lead), *(
                    _cell_text(row.cells.get(m.label), decimals[m.label],
                               lambda s: f"[bold]{s}[/bold]", "*", "\n[dim][{}, {}][/dim]")
                    for m in chunk))
            console.print(table)
    for info in board.metrics:
        if info.settings:
            console.print(escape(f"{titles[info.label].rsplit(' ', 1)[0]}: {info.settings}"))
    console.print(escape(_caption(board)))
    for note in references(board).notes:
        console.print(escape(f"note: {note}"))
    if board.failures:
        console.print(f"{len(board.failures)} failed (sample, method, metric); "
                      "causes in leaderboard.json")


def _where(board: Leaderboard, counts: set[int]) -> str:
    """What every row of a table shares: the dataset, the model, the N."""
    datasets = sorted({r.key.dataset for r in board.rows})
    models = sorted({r.key.model for r in board.rows})
    parts = [", ".join(models) if len(models) == 1 else "",
             f"on {datasets[0]}" if len(datasets) == 1 else "",
             f"N = {min(counts)}" if len(counts) == 1 else ""]
    return ", ".join(p for p in [" ".join(p for p in parts[:2] if p), parts[2]] if p)


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


def _samples(board: Leaderboard) -> dict[str, dict[str, Any]]:
    """Per dataset, the ids of every sample a row of the table evaluated or failed on, and
    their hash (each row's own hash is in its ``samples_sha256``)."""
    ids: dict[str, set[str]] = {}
    for row in board.rows:
        ids.setdefault(row.key.dataset, set()).update(row.sample_ids)
    return {dataset: {"count": len(found), "sha256": ids_hash(sorted(found)),
                      "ids": sorted(found)} for dataset, found in sorted(ids.items())}


def to_json(board: Leaderboard, refs: References | None = None) -> dict[str, Any]:
    refs = refs or references(board)
    return {
        "statistics": {"interval": "percentile bootstrap over samples", "level": 0.95,
                       "resamples": board.n_boot, "seed": board.seed,
                       "test": "paired permutation (swap) test against the best row, two-sided",
                       "alpha": ALPHA},
        "metrics": [{"label": m.label, "name": m.name, "higher_is_better": m.higher_is_better,
                     "category": m.category} for m in board.metrics],
        "rows": [{"dataset": r.key.dataset, "model": r.key.model, "method": r.key.method,
                  "label": r.label, "options_hash": r.key.options_hash, "n": r.n,
                  "failed": r.failed, "samples_sha256": ids_hash(r.sample_ids)}
                 for r in board.rows],
        "samples": _samples(board),
        "references": {"keys": [{"kind": kind, "name": name, "keys": keys}
                                for (kind, name), keys in refs.keys.items()],
                       "notes": refs.notes},
        "cells": records(board),
        "failures": [{"dataset": f.key.dataset, "model": f.key.model, "method": f.key.method,
                      "options_hash": f.key.options_hash, "sample": f.sample_id,
                      "metric": f.metric, "error": f.error} for f in board.failures],
        "provenance": board.provenance,
    }


def bibtex(board: Leaderboard, refs: References | None = None) -> str:
    """``references.bib``: mmxai's entry and each method's, metric's and dataset's, one
    entry per key (:func:`~mmxai.evaluation.leaderboard.references`); what could not be
    cited as the results say heads the file as comments."""
    refs = refs or references(board)
    head = "".join(f"% {note}\n" for note in refs.notes)
    return head + "\n\n".join(refs.entries.values()) + "\n"


def write_all(board: Leaderboard, out: str | Path) -> list[Path]:
    """Write every file of :data:`FILES` into ``out``; returns their paths."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / name for name in FILES]
    paths[0].write_text(markdown(board), encoding="utf-8")
    refs = references(board)
    paths[1].write_text(latex(board, refs), encoding="utf-8")
    write_csv(board, paths[2])
    paths[3].write_text(json.dumps(to_json(board, refs), indent=2, allow_nan=False) + "\n",
                        encoding="utf-8")
    paths[4].write_text(bibtex(board, refs), encoding="utf-8")
    return paths
