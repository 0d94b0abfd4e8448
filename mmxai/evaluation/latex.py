"""The leaderboard as LaTeX a two-column paper takes as it is (``leaderboard.tex``).

One booktabs table per metric category (localisation, faithfulness, sanity, cost, then any
other), each a ``table`` when it fits a column and a ``table*`` otherwise, and scaled down
(never up) to the line width by ``\\mmxaifit`` when it is still too wide, so no box is ever
overfull. The file needs ``\\usepackage{booktabs,graphicx}``.

Columns read as a paper's do: a readable title with its unit and direction (``Deletion
$\\downarrow$``, ``Time (ms/token) $\\downarrow$``), the metric's options in the caption
(``Deletion: max_tokens=2, steps=4``), every value to :data:`SIGNIFICANT` significant
digits with its interval to the same decimals, and each method with the ``\\cite{}`` keys of
its paper, as written in ``references.bib``. Columns the table would repeat on every row
(one dataset, one model, one N, no failure) are said once in the caption, which also says
the interval, the test and, under :data:`~mmxai.evaluation.leaderboard.SMALL_N` samples, that
the intervals are wide.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from mmxai.evaluation.leaderboard import (
    ALPHA,
    CATEGORY_ORDER,
    SMALL_N,
    Cell,
    Leaderboard,
    LeaderRow,
    MetricInfo,
    References,
    references,
)

#: Significant digits of every value in the tables.
SIGNIFICANT = 3
#: A two-column article's column width (10pt): narrower tables are single-column floats.
COLUMN_PT = 240.0
#: Rough widths of one character at ``\small`` and ``\scriptsize``, and the space between
#: two columns, to choose ``table`` or ``table*`` (``\mmxaifit`` makes sure either way).
_SMALL_PT, _SCRIPT_PT, _COLSEP_PT = 4.6, 3.6, 12.0

_TEX = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#",
        "_": r"\_", "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}",
        "^": r"\textasciicircum{}", "↑": r"$\uparrow$", "↓": r"$\downarrow$",
        "–": "--", "|": r"\textbar{}", "<": r"\textless{}", ">": r"\textgreater{}",
        "µ": r"$\mu$", "\n": " ", "\r": " "}


def tex_escape(text: str) -> str:
    """Text for LaTeX: ``\\ & % $ # _ { } ~ ^`` (and ``| < >``, which OT1 fonts print as
    other glyphs) as their text commands; line breaks as spaces."""
    return "".join(_TEX.get(ch, ch) for ch in str(text))


def _breakable(text: str) -> str:
    """:func:`tex_escape`, with line breaks allowed after ``/`` (a hub name in a
    caption)."""
    return "".join(tex_escape(ch) + (r"\allowbreak{}" if ch == "/" else "")
                   for ch in str(text))


@dataclass(frozen=True)
class Display:
    """How a metric's column reads in a paper: its title, and the units it may be shown in
    as (unit, factor from the stored value), largest first (one is chosen per column)."""

    title: str
    units: tuple[tuple[str, float], ...] = ()


#: The built-in metrics; another metric's title is its name, capitalised.
DISPLAY = {
    "obj-iou": Display("Obj-IoU"), "func-iou": Display("Func-IoU"),
    "f1-iou": Display("F1-IoU"), "precision": Display("Precision"),
    "recall": Display("Recall"), "deletion": Display("Deletion"),
    "insertion": Display("Insertion"), "randomisation": Display("Randomisation"),
    "seconds-per-token": Display("Time", (("s/token", 1.0), ("ms/token", 1e3),
                                          ("µs/token", 1e6))),
    "peak-memory": Display("Memory", (("GiB", 1 / 1024), ("MiB", 1.0), ("KiB", 1024.0))),
}

_CITE_KEY = re.compile(r"[A-Za-z0-9_:.+/-]+")


def _unit(info: MetricInfo, board: Leaderboard) -> tuple[str, float]:
    """The largest of the metric's units in which the column's largest value is >= 1."""
    units = DISPLAY[info.name].units if info.name in DISPLAY else ()
    if not units:
        return "", 1.0
    values = [abs(r.cells[info.label].value) for r in board.rows if info.label in r.cells]
    largest = max((v for v in values if math.isfinite(v)), default=0.0)
    return next(((u, f) for u, f in units if largest * f >= 1), units[-1])


def significant_decimals(*values: float) -> int:
    """Decimals giving the largest of ``values`` :data:`SIGNIFICANT` significant digits."""
    finite = [abs(v) for v in values if math.isfinite(v) and v != 0]
    if not finite:
        return 0
    return max(0, SIGNIFICANT - 1 - math.floor(math.log10(max(finite))))


def _number(value: float, decimals: int) -> str:
    text = f"{value:.{decimals}f}"
    if text.startswith("-"):
        text = text[1:] if float(text) == 0 else "$-$" + text[1:]
    return text


@dataclass
class _Text:
    """One cell as TeX, with a guess of its width in points."""

    tex: str
    width: float


def _cell(cell: Cell | None, factor: float) -> _Text:
    if cell is None:
        return _Text("--", 2 * _SMALL_PT)
    if cell.n == 0:
        return _Text("failed", 6 * _SMALL_PT)
    if not math.isfinite(cell.value):
        return _Text("n/a", 3 * _SMALL_PT)
    value, (low, high) = cell.value * factor, (cell.ci[0] * factor, cell.ci[1] * factor)
    decimals = (significant_decimals(value) if value != 0
                else significant_decimals(low, high))
    shown = _number(value, decimals)
    tex = rf"\textbf{{{shown}}}" if cell.best else shown
    if cell.significantly_worse:
        tex += "$^{*}$"
    width = (len(shown) + 1) * _SMALL_PT
    if math.isfinite(low):
        interval = f"[{_number(low, decimals)}, {_number(high, decimals)}]"
        tex += rf" {{\scriptsize {interval}}}"
        width += len(interval) * _SCRIPT_PT
    return _Text(tex, width)


def _method(row: LeaderRow, refs: References) -> _Text:
    keys = [k for k in refs.keys.get(("methods", row.key.method), []) if _CITE_KEY.fullmatch(k)]
    cite = rf"~\cite{{{','.join(keys)}}}" if keys else ""
    return _Text(tex_escape(row.label) + cite, (len(row.label) + 4 * len(keys)) * _SMALL_PT)


def _titles(metrics: list[MetricInfo]) -> dict[str, str]:
    """Each column's title; columns of one title (a metric with several option sets) get
    ``(a)``, ``(b)``... in order."""
    def title(info: MetricInfo) -> str:
        return DISPLAY[info.name].title if info.name in DISPLAY else info.name.capitalize()

    named = [title(m) for m in metrics]
    used: dict[str, int] = {}
    titles = {}
    for info, name in zip(metrics, named, strict=True):
        if named.count(name) > 1:
            index = used[name] = used.get(name, -1) + 1
            name += f" ({'abcdefghijklmnopqrstuvwxyz'[index % 26]})"
        titles[info.label] = name
    return titles


def _failed(board: Leaderboard, row: LeaderRow, labels: set[str]) -> int:
    return len({f.sample_id for f in board.failures if f.key == row.key and f.metric in labels})


def _span(counts: set[int]) -> str:
    return str(min(counts)) if len(counts) == 1 else f"{min(counts)}--{max(counts)}"


def _caption(board: Leaderboard, category: str, metrics: list[MetricInfo],
             titles: dict[str, str], n: set[int], failed: bool, notes: set[str]) -> str:
    datasets = sorted({r.key.dataset for r in board.rows})
    models = sorted({r.key.model for r in board.rows})
    what = f"{tex_escape(category.capitalize()) if category else 'Other metrics'} on " + ", ".join(
        _breakable(d) for d in datasets) + " with " + ", ".join(_breakable(m) for m in models)
    count = f"N = {_span(n)} samples" + ("" if len(n) == 1 else " per cell (column N)")
    best = "best of each column" + (" per dataset" if len(datasets) > 1 else "")
    parts = [f"{what}, {count}. Each cell: the metric's aggregate and its 95\\% percentile "
             f"bootstrap interval over samples ({board.n_boot} resamples, seed {board.seed}); "
             f"{best} in bold; $^{{*}}$: worse than the best, paired permutation test on "
             f"the samples both share, $p < {ALPHA}$, not corrected for multiple comparisons."]
    parts += [f"{tex_escape(titles[m.label])}: {_breakable(m.settings)}." for m in metrics
              if m.settings]
    if n and min(n) < SMALL_N:
        parts.append(f"With N = {min(n)} $<$ {SMALL_N} samples the intervals are wide, and a "
                     "missing $^{*}$ is not evidence that two methods are equal.")
    parts.append("Failed: samples with a failed result in these columns (causes in "
                 "leaderboard.json)." if failed else "No result failed.")
    parts += sorted(notes)
    parts.append(r"Computed with mmxai~\cite{mmxai}.")
    return " ".join(parts)


def _table(board: Leaderboard, category: str, metrics: list[MetricInfo],
           refs: References) -> list[str]:
    labels = {m.label for m in metrics}
    titles = _titles(metrics)
    units = {m.label: _unit(m, board) for m in metrics}
    lead = [(name, get) for name, get in (("Dataset", lambda r: r.key.dataset),
                                          ("Model", lambda r: r.key.model))
            if len({get(r) for r in board.rows}) > 1]
    head = [_Text(name, len(name) * _SMALL_PT) for name, _ in lead]
    head.append(_Text("Method", 6 * _SMALL_PT))
    counts = {id(r): {r.cells[m].n for m in labels if m in r.cells} for r in board.rows}
    n = set().union(*counts.values())
    failed = {id(r): _failed(board, r, labels) for r in board.rows}
    extra = [("N", lambda r: _span(counts[id(r)]) if counts[id(r)] else "0")] if len(n) > 1 \
        else []
    extra += [("Failed", lambda r: str(failed[id(r)]))] if any(failed.values()) else []
    head += [_Text(name, len(name) * _SMALL_PT) for name, _ in extra]
    for m in metrics:
        unit = f" ({units[m.label][0]})" if units[m.label][0] else ""
        title = f"{titles[m.label]}{unit} {m.arrow}"
        head.append(_Text(tex_escape(title), len(title) * _SMALL_PT))
    body = []
    for row in board.rows:
        cells = [_Text(tex_escape(get(row)), len(get(row)) * _SMALL_PT) for _, get in lead]
        cells.append(_method(row, refs))
        cells += [_Text(get(row), len(get(row)) * _SMALL_PT) for _, get in extra]
        cells += [_cell(row.cells.get(m.label), units[m.label][1]) for m in metrics]
        body.append(cells)
    notes = set()
    if any(c.tex == "--" for cells in body for c in cells):
        notes.add("--: not evaluated.")
    if any(c.tex == "n/a" for cells in body for c in cells):
        notes.add("n/a: evaluated, but no sample had anything to measure.")
    if any(c.tex == "failed" for cells in body for c in cells):
        notes.add("failed: every sample of the cell failed.")
    width = sum(max(c.width for c in column) + _COLSEP_PT for column in zip(head, *body,
                                                                             strict=True))
    float_env = "table" if width <= 1.25 * COLUMN_PT else "table*"
    spec = "l" * (len(head) - len(metrics)) + "c" * len(metrics)
    lines = [rf"\begin{{{float_env}}}[t]", r"\centering", r"\small", r"\mmxaifit{%",
             rf"\begin{{tabular}}{{{spec}}}", r"\toprule",
             " & ".join(c.tex for c in head) + r" \\", r"\midrule"]
    lines += [" & ".join(c.tex for c in cells) + r" \\" for cells in body]
    caption = _caption(board, category, metrics, titles, n, any(failed.values()), notes)
    lines += [r"\bottomrule", r"\end{tabular}}", rf"\caption{{{caption}}}",
              rf"\label{{tab:mmxai-{re.sub('[^a-z0-9-]', '-', category.lower()) or 'other'}}}",
              rf"\end{{{float_env}}}"]
    return lines


def latex(board: Leaderboard, refs: References | None = None) -> str:
    """``leaderboard.tex``: one table per metric category (see the module's docstring)."""
    refs = refs or references(board)
    lines = [r"% mmxai leaderboard: \input{} it in a document that loads "
             r"\usepackage{booktabs,graphicx};",
             r"% the \cite keys are those of references.bib.",
             r"\providecommand{\mmxaifit}[1]{\sbox0{#1}\ifdim\wd0>\linewidth"
             r"\resizebox{\linewidth}{!}{\usebox0}\else\usebox0\fi}"]
    unusable = sorted({k for keys in refs.keys.values() for k in keys
                       if not _CITE_KEY.fullmatch(k)})
    if unusable:
        lines.append(f"% not cited (keys \\cite cannot take; in references.bib): "
                     f"{' '.join(unusable)}")
    order = [c for c in CATEGORY_ORDER if any(m.category == c for m in board.metrics)]
    order += list(dict.fromkeys(m.category for m in board.metrics if m.category not in order))
    for category in order:
        metrics = [m for m in board.metrics if m.category == category]
        lines += [""] + _table(board, category, metrics, refs)
    return "\n".join(lines) + "\n"
