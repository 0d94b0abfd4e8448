"""The evaluator: methods x metrics over a dataset, for one model at a time, into a store.

Per sample, whatever the number of methods:

1. load the image (and, for metrics that need one, the mask) through :mod:`mmxai.dataset`;
2. build the inputs and generate ONE trace with the union of the methods' and metrics'
   needs: ``batch_size`` samples share one :func:`~mmxai.trace.generate_traces` call (one
   at a time, :func:`~mmxai.trace.generate_trace`, for a batch of one, a model whose
   adapter sets ``supports_batching = False``, or a batch whose joint call failed);
3. group the generated tokens into labelled words (:func:`mmxai.words.words_from_trace`);
4. run every method's ``explain`` on the shared trace for all generated tokens, measuring its
   seconds per token and peak memory (``EvalItem.cost``);
5. run every metric's ``measure`` on the method's :class:`~mmxai.metric.EvalItem`.

Extra passes (gradients, masked images, a randomised model) belong to the methods and
metrics; what several of them share is cached on ``trace.cache`` for the sample.
Methods explain all tokens of a sample in one call, and the deletion/insertion metrics
batch their masked images.

Anything that goes wrong with one sample (an unreadable image, a missing or wrong-size
mask, a method or metric that raises, maps of the wrong shape, a metric value that is not a
finite number) becomes a ``failed`` row naming the sample and the cause, the run goes on,
and the summary counts it. All rows of a sample are written in one transaction as soon as
the sample is done, so a killed run loses at most the samples of the batch in flight not yet
written, and a rerun skips every (sample, method, metric) stored ``ok`` or ``skipped`` and
retries the ``failed`` ones (``retry=False`` keeps them; the store keeps every attempt).

One exception: when the first :data:`STOP_AFTER` samples that reach the model all fail to
prepare or generate with the same cause, the model cannot run as set up (a processor that
rejects every input, a generate call that always raises): the run stops with that cause
(:class:`ModelCannotRun`) instead of writing the same failure for every sample, unless
``keep_going``. Samples that fail on their own (an unreadable image) do not count.

Random state is reseeded from (seed, sample index, method or metric name) before each
step, so a sample's results do not depend on which shard ran it, on what ran before it, or
on a resumption.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import random
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from mmxai.dataset import Dataset, Sample, load_image, load_mask
from mmxai.errors import MMXAIError
from mmxai.evaluation import provenance
from mmxai.evaluation.profiling import measure
from mmxai.evaluation.store import ResultStore, Row, RunKey
from mmxai.method import Method
from mmxai.metric import EvalItem, Metric, Parts
from mmxai.model import Inputs, Model
from mmxai.trace import Needs, Trace, generate_trace, generate_traces
from mmxai.words import WordOptions, words_from_trace

#: Samples in a row failing to prepare or generate with one cause that stop a run.
STOP_AFTER = 5


class ModelCannotRun(MMXAIError):
    """The first samples all failed in preparation or generation with the same cause."""


@dataclass(frozen=True)
class Shard:
    """Shard ``index`` of ``count``: the samples whose dataset index is ``index`` mod ``count``."""

    index: int = 0
    count: int = 1

    def __post_init__(self) -> None:
        if self.count < 1 or not 0 <= self.index < self.count:
            raise MMXAIError(f"shard {self.index}/{self.count}: need 0 <= i < n")

    @classmethod
    def parse(cls, text: str) -> Shard:
        """``"i/n"`` (0-based i)."""
        try:
            index, count = (int(part) for part in text.split("/"))
        except ValueError:
            raise MMXAIError(f"--shard {text!r}: expected i/n, e.g. 0/4") from None
        return cls(index, count)

    @classmethod
    def from_env(cls) -> Shard:
        """From ``RANK`` and ``WORLD_SIZE`` as torchrun and accelerate set them; else 0/1."""
        rank, world = os.environ.get("RANK"), os.environ.get("WORLD_SIZE")
        if rank is None or world is None:
            return cls()
        return cls(int(rank), int(world))

    def selects(self, index: int) -> bool:
        return index % self.count == self.index

    @property
    def label(self) -> str:
        return f"{self.index}/{self.count}"

    def store_name(self) -> str:
        if self.count == 1:
            return "results.sqlite"
        return f"results-shard{self.index}-of{self.count}.sqlite"


@dataclass
class NamedMetric:
    """A metric instance and the column it is stored under (its name, plus its options)."""

    label: str
    metric: Metric
    options: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def make(cls, metric_cls: type[Metric], options: dict[str, Any] | None = None) -> NamedMetric:
        metric = metric_cls(**(options or {}))
        # The label and provenance show the values as read (``False``, not ``"false"``),
        # so the same setting typed two ways is one column.
        options = {key: getattr(metric.options, key) for key in (options or {})}
        label = metric_cls.name
        if options:
            label += "[" + ",".join(f"{k}={options[k]}" for k in sorted(options)) + "]"
        return cls(label, metric, options)


#: A sample with work left: (dataset index, sample, {method: metric labels to compute}).
Pending = tuple[int, Sample, dict[str, list[str]]]


@dataclass
class _Prepared:
    """What a sample brings to its batch: its inputs, and its mask or why it has none."""

    inputs: Inputs
    mask: np.ndarray | None
    mask_error: str | None


@dataclass
class Summary:
    """What one model's run did."""

    model: str
    samples: int = 0  # samples of this shard
    evaluated: int = 0  # samples computed now
    resumed: int = 0  # samples entirely found in the store
    failures: list[str] = field(default_factory=list)  # one line per failed row
    failed_samples: set[str] = field(default_factory=set)
    retried: int = 0  # samples with failed rows stored, computed again now


def progress_bar(console: Console, enabled: bool = True) -> Progress:
    """The evaluator's progress display: a bar per task, samples done, elapsed time, ETA."""
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                    console=console, disable=not enabled, transient=False)


def _seed(seed: int, index: int, name: str) -> None:
    """Reseed every generator from (seed, sample index, step name)."""
    digest = hashlib.sha256(f"{seed}:{index}:{name}".encode()).digest()
    value = int.from_bytes(digest[:4], "little")
    random.seed(value)
    np.random.seed(value)
    torch.manual_seed(value)


def _cause(exc: BaseException) -> str:
    """One line: our own errors as they read, others with their type."""
    text = " ".join(str(exc).split())
    if isinstance(exc, MMXAIError):
        return text
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _failure(sid: str, cause: str) -> str:
    """``sample <id>: <cause>``, without naming the sample twice."""
    return cause if cause.startswith(f"sample {sid}:") else f"sample {sid}: {cause}"


def _failures(rows: Sequence[Row]) -> dict[str, list[str]]:
    """error -> the "method · metric" cells it failed, so one cause prints once."""
    by_error: dict[str, list[str]] = {}
    for row in rows:
        if row.status == "failed":
            by_error.setdefault(row.error or "", []).append(f"{row.key.method} · {row.metric}")
    return by_error


def _few(names: Sequence[str], shown: int = 3) -> str:
    more = len(names) - shown
    return ", ".join(names[:shown]) + (f" and {more} more" if more > 0 else "")


def _check_maps(maps: np.ndarray, trace: Trace) -> None:
    expected = (trace.n_generated, len(trace.image_positions))
    if maps.shape != expected:
        raise MMXAIError(f"maps of shape {maps.shape}, expected (tokens, image tokens) = "
                         f"{expected}")
    bad = np.flatnonzero(~np.isfinite(maps).all(axis=1))
    if bad.size:
        raise MMXAIError(f"non-finite map for generated token(s) {bad[:5].tolist()}")


def _check_parts(parts: Any) -> Parts:
    """``{name: [finite numbers]}``, or an MMXAIError saying what is wrong with ``parts``.

    A metric with nothing to measure on a sample returns an empty list (or the sample is
    ``skipped``); NaN and infinities are never a result: they fail the row.
    """
    if not isinstance(parts, dict):
        raise MMXAIError(f"measure returned {type(parts).__name__}, expected {{name: [values]}}")
    checked: Parts = {}
    for name, values in parts.items():
        if not isinstance(name, str):
            raise MMXAIError(f"measure returned a part named {name!r} "
                             f"({type(name).__name__}), expected a string")
        if isinstance(values, np.ndarray) and values.ndim == 1:
            values = values.tolist()
        if not isinstance(values, (list, tuple)):
            raise MMXAIError(f"part {name!r} is a {type(values).__name__}, expected a list of "
                             "numbers")
        numbers = []
        for position, value in enumerate(values):
            if isinstance(value, np.generic):
                value = value.item()
            if not isinstance(value, (int, float)):  # bool is an int: a hit counts 1
                raise MMXAIError(f"part {name!r} holds {type(value).__name__} {value!r} at "
                                 f"position {position}, expected a number")
            if not np.isfinite(value):
                raise MMXAIError(f"part {name!r} holds {value} at position {position}: a "
                                 "metric value must be a finite number")
            numbers.append(float(value))
        checked[name] = numbers
    return checked


def _attempts(rows: list[Row], failed: dict[str, dict[str, dict[str, int]]]) -> list[Row]:
    """``rows``, those retrying a stored failure numbered as its next attempt."""
    return [dataclasses.replace(row, attempt=tries + 1)
            if (tries := failed.get(row.key.method, {}).get(row.sample_id, {}).get(row.metric))
            else row for row in rows]


class Evaluator:
    """Runs ``methods`` x ``metrics`` on ``dataset`` and appends the results to ``store``.

    ``limit`` keeps the first samples of the dataset (before sharding); ``shard`` keeps every
    ``count``-th of those. ``min_new_tokens`` stops EOS until that many tokens were generated
    (tiny random models answer EOS at once). ``batch_size`` samples share one ``generate``
    call (greedy, left-padded: the same answers and traces as one at a time up to float
    noise). ``word_options`` go to :func:`mmxai.words.words_from_trace`. ``on_sample`` is
    called with each sample of the shard once it is done (computed now or found stored),
    as the progress bar advances: how worker processes report progress to their parent.
    ``retry`` computes again what is stored as ``failed`` (the newest attempt replaces it in
    the store, which keeps the old one in its history). ``keep_going`` runs on when the
    first samples all fail alike in preparation or generation (see the module docstring).
    """

    def __init__(self, dataset: Dataset, methods: Sequence[Method],
                 metrics: Sequence[NamedMetric], store: ResultStore, *,
                 max_new_tokens: int = 32, min_new_tokens: int = 0,
                 limit: int | None = None, shard: Shard = Shard(),
                 seed: int = 0, batch_size: int = 1, word_options: WordOptions | None = None,
                 console: Console | None = None, progress: bool = True,
                 on_sample: Callable[[Sample], None] | None = None, retry: bool = True,
                 keep_going: bool = False) -> None:
        if batch_size < 1:
            raise MMXAIError(f"batch size {batch_size}: need at least 1")
        if not methods:
            raise MMXAIError("no method to evaluate")
        if not metrics:
            raise MMXAIError("no metric to evaluate")
        names = [m.name for m in methods]
        if len(set(names)) != len(names):
            raise MMXAIError(f"a method is listed twice: {', '.join(names)}")
        self.dataset = dataset
        self.methods = list(methods)
        self.metrics = {m.label: m for m in metrics}
        self.store = store
        self.max_new_tokens = max_new_tokens
        self.min_new_tokens = min_new_tokens
        self.limit = limit
        self.shard = shard
        self.seed = seed
        self.batch_size = batch_size
        self.word_options = word_options
        self.console = console or Console(stderr=True)
        self.progress = progress
        self.on_sample = on_sample
        self.retry = retry
        self.keep_going = keep_going
        #: sample id -> the cause its preparation or generation failed with (this batch).
        self._model_causes: dict[str, str] = {}
        #: samples of this batch that failed before the model (their image).
        self._unprepared: set[str] = set()
        needs = Needs()
        for part in [*self.methods, *(m.metric for m in metrics)]:
            needs = needs | part.needs
        self.needs = needs

    # -- samples -------------------------------------------------------------------------
    def samples(self) -> list[tuple[int, Sample]]:
        """(dataset index, sample) of this shard, after ``limit``; ids must be unique."""
        chosen, seen = [], set()
        for index, sample in enumerate(self.dataset):
            if self.limit is not None and index >= self.limit:
                break
            if sample.id in seen:
                raise MMXAIError(f"dataset {self.dataset.name!r}: sample id {sample.id!r} "
                                 "appears twice; results are keyed by sample id")
            seen.add(sample.id)
            if self.shard.selects(index):
                chosen.append((index, sample))
        return chosen

    def _settings(self, method: Method, model: Model) -> dict[str, Any]:
        """What the method's run key hashes (:func:`provenance.run_settings`)."""
        return provenance.run_settings(
            method=method, dataset=self.dataset, max_new_tokens=self.max_new_tokens,
            min_new_tokens=self.min_new_tokens, words=self.word_options, seed=self.seed,
            dtype=str(model.hf.dtype).removeprefix("torch."))

    # -- a model -------------------------------------------------------------------------
    def run(self, model: Model, label: str | None = None) -> Summary:
        """Evaluate one model; ``label`` names it in the store (default: its model id)."""
        label = label or model.model_id
        samples = self.samples()
        settings = {m.name: self._settings(m, model) for m in self.methods}
        keys = {name: RunKey(label, self.dataset.name, name, provenance.options_hash(s))
                for name, s in settings.items()}
        self._record_provenance(model, label, keys, settings)
        self._check_prompts(label, keys, samples)
        done = {name: self.store.done(key, retry_failed=self.retry)
                for name, key in keys.items()}
        failed = ({name: self.store.failed(key) for name, key in keys.items()}
                  if self.retry else {})
        summary = Summary(label, samples=len(samples))
        size = self.batch_size if model.supports_batching else 1
        streak: list[str] | None = None if self.keep_going else []
        self._model_causes, self._unprepared = {}, set()
        with self._progress() as bar:
            task = bar.add_task(f"{label} · {self.dataset.name}", total=len(samples))
            batch: list[Pending] = []
            for position, (index, sample) in enumerate(samples):
                todo = {m.name: [metric for metric in self.metrics
                                 if metric not in done[m.name].get(sample.id, set())]
                        for m in self.methods}
                todo = {name: metrics for name, metrics in todo.items() if metrics}
                if todo:
                    batch.append((index, sample, todo))
                    self.store.add_prompts(keys.values(), sample.id,
                                           provenance.prompt_hash(sample.prompt))
                    if any(sample.id in by_sample for by_sample in failed.values()):
                        summary.retried += 1
                else:
                    summary.resumed += 1
                    self._advance(bar, task, sample)
                if batch and (len(batch) == size or position == len(samples) - 1):
                    for sample_done, rows in self.evaluate_batch(model, batch, keys):
                        self.store.write(_attempts(rows, failed))
                        self._report(sample_done, rows, summary, bar)
                        self._advance(bar, task, sample_done)
                        streak = self._watch(streak, sample_done)
                    batch = []
        return summary

    def _watch(self, streak: list[str] | None, sample: Sample) -> list[str] | None:
        """The causes of the first samples that failed to prepare or generate, until one
        reaches the model (``None``: stop watching); raises once :data:`STOP_AFTER` in a
        row failed alike. Samples that failed on their own (their image) do not count."""
        cause = self._model_causes.pop(sample.id, None)
        unprepared = sample.id in self._unprepared
        self._unprepared.discard(sample.id)
        if streak is None:
            return None
        if cause is None:
            # failed before the model (its own problem), or reached it: the model runs
            return streak if unprepared else None
        streak = [*streak, cause]
        if len(set(streak)) > 1:
            return None
        if len(streak) >= STOP_AFTER:
            raise ModelCannotRun(
                f"stopped: the first {len(streak)} samples all failed alike: "
                f"{cause.rstrip('.')}; the model cannot run as set up (their failed rows are "
                "kept and a rerun retries them; --keep-going runs every sample regardless)")
        return streak

    def _advance(self, bar: Progress, task: TaskID, sample: Sample) -> None:
        bar.advance(task)
        if self.on_sample is not None:
            self.on_sample(sample)

    def _report(self, sample: Sample, rows: list[Row], summary: Summary,
                bar: Progress) -> None:
        summary.evaluated += 1
        for error, where in _failures(rows).items():
            summary.failures += [f"{w}: {error}" for w in where]
            summary.failed_samples.add(sample.id)
            bar.console.print(f"[red]failed[/] {escape(error)} [dim]({escape(_few(where))})"
                              "[/dim]", soft_wrap=True)

    def _progress(self) -> Progress:
        return progress_bar(self.console, self.progress)

    def _record_provenance(self, model: Model, label: str, keys: dict[str, RunKey],
                           settings: dict[str, dict[str, Any]]) -> None:
        """Store each key's provenance; refuse a resumption whose identity changed."""
        weights = provenance.weights_id(model)
        identity = provenance.model_identity(model)
        fingerprint = provenance.dataset_fingerprint(self.dataset)
        device = str(model.device)
        if model.device.type == "cuda":
            device += f" ({torch.cuda.get_device_name(model.device)})"
        metrics = {m.label: {"name": m.metric.name, "options": m.options,
                             "version": m.metric.version,
                             "higher_is_better": m.metric.higher_is_better,
                             "category": m.metric.category} for m in self.metrics.values()}
        for method in self.methods:
            record = provenance.record(
                model=model, model_label=label, weights=weights, identity=identity,
                dataset=self.dataset, fingerprint=fingerprint,
                settings=settings[method.name], metrics=metrics, device=device,
                shard=self.shard.label)
            stored = self.store.add_provenance(keys[method.name], record)
            changed = provenance.mismatch(stored, record)
            if changed:
                raise MMXAIError(
                    f"results in {self.store.path.parent}: the stored results of {label} / "
                    f"{method.name} were made with another {'; '.join(changed)}; write to a "
                    "new --out folder")

    def _check_prompts(self, label: str, keys: dict[str, RunKey],
                       samples: Sequence[tuple[int, Sample]]) -> None:
        """Refuse to resume samples whose prompt changed under the same key (a dataset
        whose prompts changed without a change of its options or files)."""
        for name, key in keys.items():
            stored = self.store.prompts(key)
            changed = [s.id for _, s in samples
                       if s.id in stored and stored[s.id] != provenance.prompt_hash(s.prompt)]
            if changed:
                prompt = next(s.prompt for _, s in samples if s.id == changed[0])
                raise MMXAIError(
                    f"results in {self.store.path.parent}: the stored results of {label} / "
                    f"{name} were made with another prompt for sample(s) {_few(changed)} "
                    f"(now {prompt!r}); write to a new --out folder")

    # -- a batch of samples --------------------------------------------------------------
    def evaluate_batch(self, model: Model, batch: Sequence[Pending],
                       keys: dict[str, RunKey]) -> Iterator[tuple[Sample, list[Row]]]:
        """(sample, rows) for the (method, metric) pairs of each ``(index, sample, todo)``, in
        order, each yielded as soon as it is done; never raises for a problem of a sample, a
        method or a metric.

        The samples whose image loads and whose inputs build share one generation; the others
        fail on their own.
        """
        prepared = [self._prepare(model, sample, todo, keys) for _, sample, todo in batch]
        ready = [p for p, item in enumerate(prepared) if isinstance(item, _Prepared)]
        traces = dict(zip(ready, self._generate(model, [batch[p][0] for p in ready],
                                                [prepared[p].inputs for p in ready]),
                          strict=True))
        for position, (index, sample, todo) in enumerate(batch):
            item = prepared[position]
            if isinstance(item, _Prepared):
                # popped: a sample's trace is freed once its rows are out
                yield sample, self._evaluate_trace(model, index, sample, todo, keys,
                                                   traces.pop(position), item)
            else:
                yield sample, item

    def _fail(self, sample: Sample, todo: dict[str, list[str]], keys: dict[str, RunKey],
              methods: Iterable[str], cause: str) -> list[Row]:
        return [Row.failed(keys[name], sample.id, metric, _failure(sample.id, cause))
                for name in methods for metric in todo[name]]

    def _prepare(self, model: Model, sample: Sample, todo: dict[str, list[str]],
                 keys: dict[str, RunKey]) -> _Prepared | list[Row]:
        """The sample's inputs and mask, or its failed rows."""
        try:
            image = load_image(sample)
        except Exception as exc:
            self._unprepared.add(sample.id)
            return self._fail(sample, todo, keys, todo, _cause(exc))
        mask, mask_error = None, None
        if any(self.metrics[m].metric.needs_mask for ms in todo.values() for m in ms):
            try:
                mask = load_mask(sample, image.size)
            except Exception as exc:
                mask_error = _failure(sample.id, _cause(exc))
        try:
            inputs = model.build_inputs([image], sample.prompt)
        except Exception as exc:
            cause = f"generation: {_cause(exc)}"
            self._model_causes[sample.id] = cause
            return self._fail(sample, todo, keys, todo, cause)
        return _Prepared(inputs, mask, mask_error)

    def _generate(self, model: Model, indices: Sequence[int],
                  inputs: Sequence[Inputs]) -> list[Trace | Exception]:
        """One trace per sample, or the exception that stopped it.

        Several samples go through one ``generate`` call (greedy, so nothing random to seed).
        If that call fails (one bad sample, memory), each sample is generated on its own, so
        each gets its own success or failure.
        """
        settings = dict(max_new_tokens=self.max_new_tokens, min_new_tokens=self.min_new_tokens)
        if len(inputs) > 1:
            try:
                return list(generate_traces(model, inputs, self.needs, **settings))
            except Exception as exc:
                self.console.print(f"[yellow]batch of {len(inputs)} samples failed to generate "
                                   f"together ({escape(_cause(exc))}); generating them one at "
                                   "a time[/]", soft_wrap=True)
        traces: list[Trace | Exception] = []
        for index, x in zip(indices, inputs, strict=True):
            try:
                _seed(self.seed, index, "generate")
                traces.append(generate_trace(model, x, self.needs, **settings))
            except Exception as exc:
                traces.append(exc)
        return traces

    def _evaluate_trace(self, model: Model, index: int, sample: Sample,
                        todo: dict[str, list[str]], keys: dict[str, RunKey],
                        trace: Trace | Exception, prepared: _Prepared) -> list[Row]:
        """Every method and metric of ``todo`` on the sample's generated trace."""
        if isinstance(trace, Exception):
            cause = f"generation: {_cause(trace)}"
            self._model_causes[sample.id] = cause
            return self._fail(sample, todo, keys, todo, cause)
        try:
            words = words_from_trace(trace, sample, self.word_options)
        except Exception as exc:
            return self._fail(sample, todo, keys, todo, f"generation: {_cause(exc)}")
        rows: list[Row] = []
        for method in self.methods:
            if method.name not in todo:
                continue
            try:
                maps, cost = self._explain(method, trace, index)
            except Exception as exc:
                rows += self._fail(sample, todo, keys, [method.name],
                                   f"method {method.name!r}: {_cause(exc)}")
                continue
            item = EvalItem(sample, model, method, trace, maps, words, prepared.mask, cost)
            for label in todo[method.name]:
                rows.append(self._measure(keys[method.name], index, item, label,
                                          prepared.mask_error))
        return rows

    def _explain(self, method: Method, trace: Trace,
                 index: int) -> tuple[np.ndarray, dict[str, float]]:
        _seed(self.seed, index, f"method:{method.name}")
        tokens = list(range(trace.n_generated))
        with measure(trace.model.device) as cost:
            maps = method.explain(trace, tokens)
        maps = np.asarray(maps, dtype=np.float32)
        _check_maps(maps, trace)
        cost["seconds_per_token"] = cost["seconds"] / max(1, len(tokens))
        return maps, cost

    def _measure(self, key: RunKey, index: int, item: EvalItem, label: str,
                 mask_error: str | None) -> Row:
        named = self.metrics[label]
        sid = item.sample.id
        if named.metric.needs_mask:
            if mask_error is not None:
                return Row.failed(key, sid, label, mask_error)
            if item.mask is None:
                return Row.skipped(key, sid, label, "the sample has no mask")
        try:
            _seed(self.seed, index, f"metric:{label}:{item.method.name}")
            parts = _check_parts(named.metric.measure(item))
        except Exception as exc:
            return Row.failed(key, sid, label, f"sample {sid}: metric {label!r} on method "
                                               f"{item.method.name!r}: {_cause(exc)}")
        return Row.ok(key, sid, label, parts)
