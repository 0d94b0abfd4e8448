"""The leaderboard: stored results (one or many stores) -> one table of methods x metrics.

For every (dataset, model, method) row and metric column the cell holds the metric's
``aggregate`` over the samples it was evaluated on, a seeded 95% bootstrap interval, how
many samples were evaluated and how many failed, and (for every row but the best one) the
p-value of a paired permutation test against the best row of that column, over the samples
both rows were evaluated on. Nothing here runs a model: stores written by shards, killed
and resumed runs, or other machines merge by their unique keys.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mmxai import citations
from mmxai.errors import MMXAIError, UnknownNameError
from mmxai.evaluation import provenance
from mmxai.evaluation.stats import Scorer, bootstrap_ci, paired_permutation_p
from mmxai.evaluation.store import ResultStore, Row, RunKey
from mmxai.metric import Metric, Parts
from mmxai.registry import manager

CATEGORY_ORDER = ("localisation", "faithfulness", "sanity", "cost")
ALPHA = 0.05
#: Below this many samples a table says its intervals are wide and that a missing mark of
#: significance is no evidence of equality.
SMALL_N = 30


@dataclass
class MetricInfo:
    """What the table needs to know about a metric column."""

    label: str  # the stored name, with options if any: "deletion[steps=16]"
    name: str
    higher_is_better: bool = True
    category: str = ""
    scorer: Scorer = field(default_factory=lambda: Scorer(Metric().aggregate, "value"))

    @property
    def arrow(self) -> str:
        return "↑" if self.higher_is_better else "↓"

    @property
    def settings(self) -> str:
        """The options the column was computed with, as its label holds them:
        ``max_tokens=2, steps=4`` ('' for none)."""
        inner = self.label[len(self.name):].strip()
        return inner[1:-1].replace(",", ", ") if inner.startswith("[") else inner


@dataclass
class Cell:
    value: float
    ci: tuple[float, float]
    n: int  # samples evaluated
    failed: int
    best: bool = False
    p_vs_best: float | None = None  # None for the best row and when there is no overlap

    @property
    def significantly_worse(self) -> bool:
        return self.p_vs_best is not None and self.p_vs_best < ALPHA


@dataclass
class LeaderRow:
    key: RunKey
    label: str  # the method, with a short options hash when one method has several
    cells: dict[str, Cell]
    n: int  # samples with at least one evaluated metric
    failed: int  # samples with at least one failure
    sample_ids: list[str] = field(default_factory=list)  # evaluated or failed, sorted


@dataclass
class Leaderboard:
    rows: list[LeaderRow]
    metrics: list[MetricInfo]
    failures: list[Row]
    provenance: list[dict[str, Any]]
    n_boot: int
    seed: int

    @property
    def smallest_n(self) -> int | None:
        """The fewest samples any cell was evaluated on (None: no cell)."""
        counts = [c.n for row in self.rows for c in row.cells.values()]
        return min(counts) if counts else None


def load_rows(paths: Sequence[str | Path]) -> tuple[list[Row], list[dict[str, Any]]]:
    """Rows and provenance records of several stores (files or folders of ``*.sqlite``).

    Stores are opened read-only and never written. A (key, sample, metric) present in
    several stores is kept once, its newest attempt (then the latest written): a sample is
    never counted twice, whatever overlaps between shards or copies, and a failure retried
    in one copy counts as retried. An ``ok`` row whose parts are not finite numbers (stores
    written before mmxai checked them) counts as failed, with that cause. Stores whose
    results of one run key were made from different things (another dataset's files, other
    weights, another processor: :data:`~mmxai.evaluation.provenance.IDENTITY`) are refused:
    merging them would pool samples of two setups into one row.
    """
    files: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            files.extend(p for p in sorted(path.glob("*.sqlite")) if p.is_file())
        elif path.exists():
            files.append(path)
        else:
            raise MMXAIError(f"results {str(path)!r}: no such file or folder")
    if not files:
        raise MMXAIError(f"no results store (*.sqlite) in {', '.join(map(str, paths))}")
    rows: dict[tuple[RunKey, str, str], Row] = {}
    records: dict[str, dict[str, Any]] = {}
    first: dict[RunKey, tuple[Path, dict[str, Any]]] = {}
    for file in {f.resolve(): f for f in files}.values():  # each file once
        with ResultStore(file, read_only=True) as store:
            for key, record in store.provenance().items():
                _check_same_setup(key, file, record, first.setdefault(key, (file, record)))
            for row in store.rows():
                index = (row.key, row.sample_id, row.metric)
                kept = rows.get(index)
                if kept is None or (row.attempt, row.created) > (kept.attempt, kept.created):
                    rows[index] = _finite(row)
            for key, record in store.provenance().items():
                record = {**record, "options_hash": key.options_hash}
                records.setdefault(repr(sorted(record.items(), key=str)), record)
    return list(rows.values()), list(records.values())


def _check_same_setup(key: RunKey, file: Path, record: dict[str, Any],
                      seen: tuple[Path, dict[str, Any]]) -> None:
    """Refuse to merge ``file``'s results of ``key`` with another store's made otherwise."""
    other, stored = seen
    changed = provenance.mismatch(stored, record)
    if changed:
        raise MMXAIError(
            f"{other} and {file} hold results of {key.model} / {key.dataset} / {key.method} "
            f"made with another {', '.join(changed)}: they are not one run and cannot be "
            "merged into one table; make a leaderboard of each")


def _finite(row: Row) -> Row:
    """``row``, or a failed row if its parts are not lists of finite numbers."""
    if row.status != "ok":
        return row
    try:
        good = isinstance(row.parts, dict) and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
            for values in row.parts.values() for v in values)
    except TypeError:
        good = False
    if good:
        return row
    return dataclasses.replace(
        row, status="failed", parts=None,
        error=f"sample {row.sample_id}: stored result of metric {row.metric!r} on method "
              f"{row.key.method!r} is not a list of finite numbers "
              f"({json.dumps(row.parts)[:200]})")


def metric_info(label: str, provenance: Sequence[dict[str, Any]]) -> MetricInfo:
    """Direction, category and aggregate of a metric column, from the registry if the
    metric's plugin is installed, else from the provenance the run stored."""
    name = label.split("[", 1)[0]
    try:
        cls = manager().get("metrics", name)
    except UnknownNameError:
        stored = next((p["metrics"][label] for p in provenance
                       if label in p.get("metrics", {})), {})
        return MetricInfo(label, name, bool(stored.get("higher_is_better", True)),
                          str(stored.get("category", "")))
    metric = cls()
    pooled = "value" if type(metric).aggregate is Metric.aggregate else None
    vectorised = (dict(pooled_means=cls.pooled_means, from_means=metric.from_means)
                  if cls.pooled_means else {})
    return MetricInfo(label, name, cls.higher_is_better, cls.category,
                      Scorer(metric.aggregate, pooled, **vectorised))


def _labels(keys: Sequence[RunKey]) -> dict[RunKey, str]:
    """The method name, plus the options hash when one method appears with several."""
    variants: dict[tuple[str, str, str], set[str]] = {}
    for key in keys:
        variants.setdefault((key.dataset, key.model, key.method), set()).add(key.options_hash)
    return {key: key.method if len(variants[(key.dataset, key.model, key.method)]) == 1
            else f"{key.method}#{key.options_hash[:6]}" for key in keys}


def build(rows: Sequence[Row], provenance: Sequence[dict[str, Any]], n_boot: int = 1000,
          seed: int = 0) -> Leaderboard:
    if n_boot < 0 or seed < 0:
        raise MMXAIError(f"bootstrap resamples {n_boot} and seed {seed}: expected whole "
                         "numbers >= 0")
    ok: dict[tuple[RunKey, str], dict[str, Parts]] = {}
    failed: dict[tuple[RunKey, str], set[str]] = {}
    for row in rows:
        if row.status == "ok":
            ok.setdefault((row.key, row.metric), {})[row.sample_id] = row.parts or {}
        elif row.status == "failed":
            failed.setdefault((row.key, row.metric), set()).add(row.sample_id)
    keys = sorted({row.key for row in rows},
                  key=lambda k: (k.dataset, k.model, k.method, k.options_hash))
    labels = {metric for (_, metric) in [*ok, *failed]}
    metrics = sorted((metric_info(m, provenance) for m in labels),
                     key=lambda m: (_category_rank(m.category), m.label))
    table = []
    for key in keys:
        cells = {}
        for info in metrics:
            by_sample = ok.get((key, info.label), {})
            n_failed = len(failed.get((key, info.label), ()))
            if not by_sample and not n_failed:
                continue
            parts = [by_sample[s] for s in sorted(by_sample)]
            value = info.scorer.score(parts) if parts else math.nan
            cells[info.label] = Cell(value, bootstrap_ci(parts, info.scorer, n_boot, seed),
                                     len(parts), n_failed)
        evaluated = {s for (k, _), by in ok.items() if k == key for s in by}
        broken = {s for (k, _), ss in failed.items() if k == key for s in ss}
        table.append(LeaderRow(key, "", cells, len(evaluated), len(broken),
                               sorted(evaluated | broken)))
    labels = _labels(keys)
    for row in table:
        row.label = labels[row.key]
    for info in metrics:
        _mark_best(table, info, ok, n_boot, seed)
    failures = sorted((r for r in rows if r.status == "failed"),
                      key=lambda r: (r.key.dataset, r.key.model, r.key.method, r.sample_id,
                                     r.metric))
    return Leaderboard(table, metrics, failures, list(provenance), n_boot, seed)


def _category_rank(category: str) -> int:
    return CATEGORY_ORDER.index(category) if category in CATEGORY_ORDER else len(CATEGORY_ORDER)


def _mark_best(table: list[LeaderRow], info: MetricInfo,
               ok: dict[tuple[RunKey, str], dict[str, Parts]], n_boot: int, seed: int) -> None:
    """Bold the best row per dataset; test every other row against it on shared samples."""
    for dataset in sorted({row.key.dataset for row in table}):
        rows = [r for r in table if r.key.dataset == dataset and info.label in r.cells
                and math.isfinite(r.cells[info.label].value)]
        if not rows:
            continue
        sign = 1 if info.higher_is_better else -1
        best = max(rows, key=lambda r: sign * r.cells[info.label].value)
        best.cells[info.label].best = True
        best_parts = ok.get((best.key, info.label), {})
        for row in rows:
            if row is best:
                continue
            parts = ok.get((row.key, info.label), {})
            shared = sorted(set(parts) & set(best_parts))
            if shared:
                row.cells[info.label].p_vs_best = paired_permutation_p(
                    [parts[s] for s in shared], [best_parts[s] for s in shared],
                    info.scorer, n_boot, seed)


def leaderboard(paths: Sequence[str | Path], n_boot: int = 1000, seed: int = 0) -> Leaderboard:
    """Load and merge stores, then build the table."""
    rows, provenance = load_rows(paths)
    return build(rows, provenance, n_boot, seed)


# -- what a table cites ----------------------------------------------------------------------
KINDS = ("methods", "metrics", "datasets")


@dataclass
class References:
    """The papers a table cites: one BibTeX entry per key (mmxai's own first), the keys of
    each (kind, name) in the table, and a line for each thing that could not be cited as
    the results say or came with two versions of one entry."""

    entries: dict[str, str]
    keys: dict[tuple[str, str], list[str]]
    notes: list[str]


def _stored_plugins(records: Sequence[dict[str, Any]]) -> dict[tuple[str, str], dict]:
    """(kind, name) -> the plugin record a run stored (:func:`provenance.plugin`)."""
    stored: dict[tuple[str, str], dict[str, Any]] = {}
    for record in records:
        plugins = record.get("plugins") or {}
        found = [("methods", plugins.get("method")), ("datasets", plugins.get("dataset")),
                 *(("metrics", p) for p in (plugins.get("metrics") or {}).values())]
        for kind, info in found:
            if isinstance(info, dict) and isinstance(info.get("name"), str):
                stored.setdefault((kind, info["name"]), info)
    return stored


def _citation(kind: str, name: str, stored: dict[tuple[str, str], dict]) -> str | None:
    """The BibTeX the run stored for ``name`` (what produced the rows), else the installed
    plugin's; None when neither is known."""
    if (kind, name) in stored:
        return str(stored[(kind, name)].get("citation") or "")
    try:
        return manager().get(kind, name).citation or ""
    except UnknownNameError:
        return None


def references(board: Leaderboard) -> References:
    """Every method's, metric's and dataset's BibTeX, from the results' provenance (so a
    store re-rendered where a plugin is not installed keeps its citation) or the installed
    plugins, plus mmxai's own entry."""
    names = {"methods": sorted({r.key.method for r in board.rows}),
             "metrics": sorted({m.name for m in board.metrics}),
             "datasets": sorted({r.key.dataset for r in board.rows})}
    stored = _stored_plugins(board.provenance)
    sources = [("mmxai", citations.mmxai_entry(
        str(p["mmxai"]) for p in board.provenance if p.get("mmxai")))]
    keys: dict[tuple[str, str], list[str]] = {}
    notes = []
    for kind in KINDS:
        for name in names[kind]:
            text = _citation(kind, name, stored)
            if text is None:
                notes.append(f"{kind[:-1]} {name!r}: not cited: its plugin is not installed "
                             "here and the results do not record its citation")
                continue
            keys[(kind, name)] = list(citations.entries(text))
            sources.append((f"{kind[:-1]} {name}", text))
    entries, conflicts = citations.collect(sources)
    return References(entries, keys, notes + conflicts)
