"""Comparing methods and writing the viewer from Python: ``mmxai compare`` and the page of
``mmxai explain`` as functions.

:func:`compare` runs the command's code path in this process: the settings become one
:class:`~mmxai.evaluation.spec.RunSpec`, :func:`mmxai.commands.compare.build_plan` builds the
dataset, methods and metrics, the evaluator stores every result in ``out/results.sqlite``
(a rerun resumes it, as the command's does) and the leaderboard is built and written as
the command writes it. It returns a :class:`Comparison`: the
:class:`~mmxai.evaluation.leaderboard.Leaderboard` and :meth:`Comparison.rows`, one flat dict
per row (``pandas.DataFrame(comparison.rows())``).

:func:`write_viewer` writes the self-contained page of :func:`mmxai.explain` or
:func:`mmxai.explain_many` results, as ``mmxai explain`` writes it.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from mmxai import arguments as check
from mmxai import loading, protocols
from mmxai.api import Explanation, check_max_new_tokens
from mmxai.commands import explain as explain_command
from mmxai.commands import workers
from mmxai.commands.compare import build_plan
from mmxai.commands.leaderboard import check_out
from mmxai.commands.tiny import writable_folder
from mmxai.errors import InputError, MMXAIError, UnknownNameError
from mmxai.evaluation import (
    ConsoleReporter,
    Generation,
    Leaderboard,
    Reporter,
    ResultStore,
    RunSpec,
    Selection,
    Shard,
    Summary,
    leaderboard,
    write_all,
)
from mmxai.method import Method
from mmxai.registry import manager

PathLike = str | os.PathLike
#: What :meth:`Comparison.rows` gives of each metric's cell, as suffixes of its label.
CELL_FIELDS = ("", ".low", ".high", ".n", ".failed", ".best", ".p_vs_best")


@dataclass
class Comparison:
    """What :func:`compare` returns: the leaderboard of the run's store, the folder it is in,
    the leaderboard files written there, and what each model's run did."""

    leaderboard: Leaderboard
    out: Path
    files: list[Path]
    summaries: list[Summary]

    def rows(self) -> list[dict[str, Any]]:
        """One dict per (dataset, model, method) row of the leaderboard, in its order:
        ``dataset``, ``model``, ``method`` (the method's name), ``label`` (as the table
        shows it: the name, plus a short options hash when one method ran with several
        options), ``options_hash``, ``n`` (samples with a result) and ``failed`` (samples
        with a failure); then for each metric column (its label, e.g. ``obj-iou`` or
        ``deletion[max_tokens=2,steps=4]``) the value under the label itself and
        ``<label>.low``, ``<label>.high`` (the bootstrap interval), ``<label>.n``,
        ``<label>.failed``, ``<label>.best`` and ``<label>.p_vs_best`` (the paired test
        against the column's best row; None for the best row). A metric a row has no result
        of has None everywhere. NaN is a value that could not be computed (every sample of
        the cell failed)."""
        table = []
        for row in self.leaderboard.rows:
            record: dict[str, Any] = {
                "dataset": row.key.dataset, "model": row.key.model, "method": row.key.method,
                "label": row.label, "options_hash": row.key.options_hash, "n": row.n,
                "failed": row.failed}
            for info in self.leaderboard.metrics:
                cell = row.cells.get(info.label)
                values = ((None,) * len(CELL_FIELDS) if cell is None else
                          (cell.value, *cell.ci, cell.n, cell.failed, cell.best, cell.p_vs_best))
                record.update(zip([info.label + suffix for suffix in CELL_FIELDS], values,
                                  strict=True))
            table.append(record)
        return table


def compare(models: PathLike | Sequence[PathLike] | None = None, dataset: str | None = None,
            methods: str | Sequence[str] | None = None,
            metrics: str | Sequence[str] | None = None, *,
            labels: Mapping[PathLike, str] | None = None,
            protocol: str = protocols.DEFAULT, out: PathLike = "mmxai-results",
            data_root: PathLike | None = None, limit: int | None = None,
            max_new_tokens: int = 32, min_new_tokens: int = 0, dtype: str = "auto",
            device: str = "auto", batch_size: int | None = None, seed: int = 0,
            bootstrap: int = 1000, retry: bool = True, keep_going: bool = False,
            trust_remote_code: bool = False, chat_template: Any = None,
            save_maps: PathLike | None = None, progress: bool = True,
            device_map: str | None = None, max_memory: Mapping | str | None = None,
            **options: Mapping[str, Any]) -> Comparison:
    """``mmxai compare`` as a function; see :class:`Comparison` for what it returns.

    ``models``: hub names, folders, bundled names (``testbed``) or ``tiny:<family>``, one or a
    list; None: the bundled benchmark's model. ``dataset``: a registered name; None: the bundled
    benchmark. ``methods``, ``metrics``: names, one, a list, or comma-separated; None: every
    registered one (methods: but the costly ones; ``"all"``: every one, as
    :func:`mmxai.method.default_methods` reads it). ``labels``: how models are named in the
    store and tables, ``{model: label}`` (as ``--label MODEL=LABEL``; default: a local folder by
    its name, never this machine's path). ``options``: each plugin's options by its name, e.g.
    ``deletion={"steps": 16}`` or ``**{"logit-lens": {"layer": -2}}``, read as ``--option
    deletion.steps=16`` is. The other keywords are the command's options of the same names
    (``batch_size`` is ``--batch``; ``chat_template``: a template's text or a path to a file
    holding one). ``progress``: rich progress bars on stderr (failures and notes are printed
    there either way, and kept in the store and the leaderboard). ``device_map`` (``auto``,
    ``balanced``, ``sequential``) and ``max_memory`` (``{0: "20GiB", "cpu": "60GiB"}``) split
    each model over devices (docs/scaling.md).

    Everything is checked before any model loads; a mistake is one
    :class:`~mmxai.errors.MMXAIError` line (settings checked by the shared code are named as
    the command names them: ``--option deletion.steps=...``, ``--protocol``). The run is
    in this process (no ``--workers``); resuming ``out`` works across the command and this
    function, as long as the settings are the same.
    """
    # each keyword checked in one line naming it, before anything is built
    bars = check.flag(progress, "progress")
    selection = Selection(
        models=check.models(models),
        dataset=None if dataset is None else check.text(dataset, "dataset"),
        data_root=check.path(data_root, "data_root", optional=True),
        methods=check.names(methods, "methods"), metrics=check.names(metrics, "metrics"),
        options=check.option_specs(options))
    generation = Generation(check_max_new_tokens(max_new_tokens),
                            check.whole(min_new_tokens, "min_new_tokens", 0), check.dtype(dtype))
    spec = RunSpec(
        selection=selection, generation=generation,
        batch_size=check.whole(batch_size, "batch_size", 1, optional=True),
        seed=check.whole(seed, "seed", 0), bootstrap=check.whole(bootstrap, "bootstrap", 0),
        limit=check.whole(limit, "limit", 1, optional=True), retry=check.flag(retry, "retry"),
        keep_going=check.flag(keep_going, "keep_going"), device=check.device(device),
        trust_remote_code=check.flag(trust_remote_code, "trust_remote_code"),
        out=check.path(out, "out"), save_maps=check.path(save_maps, "save_maps", optional=True),
        device_map=None if device_map is None else check.text(device_map, "device_map"),
        max_memory=max_memory,
        protocol=protocols.DEFAULT if protocol is None else check.text(protocol, "protocol"))
    plan = build_plan(spec, loading.chat_template_text(chat_template), check.labels(labels))
    check_out(spec.out, "out")
    if spec.save_maps is not None:
        check_out(spec.save_maps, "save_maps")
    reporter = ConsoleReporter(Console(stderr=True), bars=bars)
    _note_other_layout(spec.out, reporter)
    store_path = spec.out / Shard().store_name()
    summaries = []
    with ResultStore(store_path) as store:
        evaluator = plan.evaluator(store, Shard(), reporter)
        for model_spec, label in zip(plan.models, plan.labels, strict=True):
            model = plan.open(model_spec)
            summaries.append(evaluator.run(model, label))
            del model  # one model in memory at a time
    board = leaderboard([store_path], n_boot=spec.bootstrap, seed=spec.seed)
    return Comparison(board, spec.out, write_all(board, spec.out), summaries)


def write_viewer(explanations: Explanation | Mapping[str, Explanation] | Sequence[Explanation],
                 out: PathLike = "mmxai-out", *, title: str | None = None) -> Path:
    """Write the viewer ``mmxai explain`` writes (one self-contained HTML page per image,
    ``index.html`` for one image, plus an index page for several) into the folder ``out``;
    returns the page to open.

    ``explanations``: one :class:`~mmxai.api.Explanation` (:func:`mmxai.explain`), a dict
    of them by method name (:func:`mmxai.explain_many`) or a list; all of one answer (the
    same generated tokens) and explaining the same tokens. A method that has a text half
    (TAM) gets it on the page when it is registered under its name; when its text half
    cannot be computed, a warning says so and the page shows its maps without it.
    ``title`` defaults to ``mmxai: <model id>``. Pages already in ``out`` are replaced.
    """
    by_name = _by_method(explanations)
    first = next(iter(by_name.values()))
    for name, other in by_name.items():
        if not _same_answer(first, other):
            raise InputError(f"explanations: {name!r} explains another answer or other tokens "
                             f"than {first.method!r}; a page shows one answer: pass the "
                             "results of one explain_many call")
    if title is not None and not isinstance(title, str):
        raise InputError(f"title: expected text, got {type(title).__name__}")
    folder = writable_folder(check.path(out, "out"), "out")
    text = explain_command.text_relevances(_text_halves(by_name), by_name, _warn)
    trace = first.trace
    try:
        pages = explain_command.write_pages(by_name, list(trace.inputs.images), folder,
                                            title=f"mmxai: {trace.model.model_id}"
                                            if title is None else title, text=text)
    except OSError as exc:  # disk full, a folder in the way of a page
        where = exc.filename if exc.filename is not None else folder
        raise InputError(f"out {str(folder)!r}: cannot write {str(where)!r} "
                         f"({exc.strerror or exc})") from exc
    return pages[0]


def _note_other_layout(out: Path, reporter: Reporter) -> None:
    """Say so when ``out`` holds a run made with several workers: its stores are not this
    run's (``results.sqlite``), so their samples are computed again."""
    stored = workers.stored_layout(out) if out.is_dir() else None
    if stored is not None and stored != 1:
        reporter.note(f"note: {out} holds the stores of a run with {stored} workers; this run "
                      "(one process) computes their samples again (the leaderboard counts "
                      f"each once): mmxai compare --workers {stored} resumes them instead")


# -- the viewer's explanations -----------------------------------------------------------------
def _by_method(explanations: Any) -> dict[str, Explanation]:
    if isinstance(explanations, Explanation):
        return {explanations.method: explanations}
    if isinstance(explanations, Mapping):
        items = list(explanations.values())
    elif isinstance(explanations, (list, tuple)):
        items = list(explanations)
    else:
        raise InputError(f"explanations: expected an Explanation (mmxai.explain), a dict of "
                         f"them (mmxai.explain_many) or a list, got "
                         f"{type(explanations).__name__}")
    if not items:
        raise InputError("explanations: none given (explain_many returns {} when every "
                         "method failed)")
    bad = [type(e).__name__ for e in items if not isinstance(e, Explanation)]
    if bad:
        raise InputError(f"explanations: expected Explanation objects, got {bad[0]}")
    names = [e.method for e in items]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise InputError(f"explanations: method {twice[0]!r} given twice (one entry per "
                         "method on the page)")
    return {e.method: e for e in items}


def _warn(line: str) -> None:
    warnings.warn(line, stacklevel=4)  # at the caller of write_viewer


def _text_halves(explanations: dict[str, Explanation]) -> list[Method]:
    """The registered methods among ``explanations`` that have a text half, made again with
    the options they ran with (an Explanation keeps the options, not the method)."""
    methods = []
    for name, explanation in explanations.items():
        try:
            cls = manager().get("methods", name)
        except UnknownNameError:  # a Method subclass of the caller's own: its maps only
            continue
        if not hasattr(cls, "text_relevance"):
            continue
        try:
            methods.append(cls(**explanation.options))
        except MMXAIError as exc:
            _warn(f"method {name!r}: the page shows no text relevances (its options do not "
                  f"make it again: {' '.join(str(exc).split())})")
    return methods


def _same_answer(a: Explanation, b: Explanation) -> bool:
    """Whether ``a`` and ``b`` explain the same tokens of the same answer about the same
    images (one traced sample, or two traces of it)."""
    sizes = [[im.size for im in e.trace.inputs.images] for e in (a, b)]
    return list(a.tokens) == list(b.tokens) and (a.trace is b.trace or (
        torch.equal(a.trace.sequence, b.trace.sequence) and sizes[0] == sizes[1]))