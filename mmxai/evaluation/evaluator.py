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
mask, a method or metric that raises, maps of the wrong shape) becomes a ``failed`` row
naming the sample and the cause, the run goes on, and the summary counts it. All rows of a
sample are written in one transaction as soon as the sample is done, so a killed run loses
at most the samples of the batch in flight not yet written, and a rerun skips every
(sample, method, metric) already stored.

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
    if not isinstance(parts, dict):
        raise MMXAIError(f"measure returned {type(parts).__name__}, expected {{name: [values]}}")
    return {str(k): [float(v) for v in values] for k, values in parts.items()}


class Evaluator:
    """Runs ``methods`` x ``metrics`` on ``dataset`` and appends the results to ``store``.

    ``limit`` keeps the first samples of the dataset (before sharding); ``shard`` keeps every
    ``count``-th of those. ``min_new_tokens`` stops EOS until that many tokens were generated
    (tiny random models answer EOS at once). ``batch_size`` samples share one ``generate``
    call (greedy, left-padded: the same answers and traces as one at a time up to float
    noise). ``word_options`` go to :func:`mmxai.words.words_from_trace`. ``on_sample`` is
    called with each sample of the shard once it is done (computed now or found stored),
    as the progress bar advances: how worker processes report progress to their parent.
    """

    def __init__(self, dataset: Dataset, methods: Sequence[Method],
                 metrics: Sequence[NamedMetric], store: ResultStore, *,
                 max_new_tokens: int = 32, min_new_tokens: int = 0,
                 limit: int | None = None, shard: Shard = Shard(),
                 seed: int = 0, batch_size: int = 1, word_options: WordOptions | None = None,
                 console: Console | None = None, progress: bool = True,
                 on_sample: Callable[[Sample], None] | None = None) -> None:
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

    def _settings(self, method: Method) -> dict[str, Any]:
        settings = {"method": method.name, "options": method.describe_options(),
                    "max_new_tokens": self.max_new_tokens}
        if self.min_new_tokens:
            settings["min_new_tokens"] = self.min_new_tokens
        if self.word_options is not None:
            settings["words"] = dataclasses.asdict(self.word_options)
        return settings

    # -- a model -------------------------------------------------------------------------
    def run(self, model: Model, label: str | None = None) -> Summary:
        """Evaluate one model; ``label`` names it in the store (default: its model id)."""
        label = label or model.model_id
        samples = self.samples()
        keys = {m.name: RunKey(label, self.dataset.name, m.name,
                               provenance.options_hash(self._settings(m)))
                for m in self.methods}
        self._record_provenance(model, label, keys)
        done = {name: self.store.done(key) for name, key in keys.items()}
        summary = Summary(label, samples=len(samples))
        size = self.batch_size if model.supports_batching else 1
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
                else:
                    summary.resumed += 1
                    self._advance(bar, task, sample)
                if batch and (len(batch) == size or position == len(samples) - 1):
                    for sample_done, rows in self.evaluate_batch(model, batch, keys):
                        self.store.write(rows)
                        self._report(sample_done, rows, summary, bar)
                        self._advance(bar, task, sample_done)
                    batch = []
        return summary

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

    def _record_provenance(self, model: Model, label: str, keys: dict[str, RunKey]) -> None:
        weights = provenance.weights_id(model)
        fingerprint = provenance.dataset_fingerprint(self.dataset)
        device = str(model.device)
        if model.device.type == "cuda":
            device += f" ({torch.cuda.get_device_name(model.device)})"
        metrics = {m.label: {"name": m.metric.name, "options": m.options,
                             "higher_is_better": m.metric.higher_is_better,
                             "category": m.metric.category} for m in self.metrics.values()}
        for method in self.methods:
            record = provenance.record(
                model=model, model_label=label, weights=weights, dataset=self.dataset,
                fingerprint=fingerprint, method=method.name,
                method_options=method.describe_options(), metrics=metrics,
                max_new_tokens=self.max_new_tokens, min_new_tokens=self.min_new_tokens,
                seed=self.seed, device=device,
                shard=self.shard.label)
            stored = self.store.add_provenance(keys[method.name], record)
            changed = provenance.mismatch(stored, record)
            if changed:
                raise MMXAIError(
                    f"{self.store.path}: the stored results of {label} / {method.name} were "
                    f"made with another {', '.join(changed)}; write to a new --out folder")

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
            return self._fail(sample, todo, keys, todo, f"generation: {_cause(exc)}")
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
            return self._fail(sample, todo, keys, todo, f"generation: {_cause(trace)}")
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
