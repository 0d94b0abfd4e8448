"""The evaluator: methods x metrics over a dataset, for one model at a time, into a store.

Per sample, whatever the number of methods (each sample a
:class:`~mmxai.evaluation.jobs.SampleJob`):

1. load the image (and, for metrics that need one, the mask) through :mod:`mmxai.dataset`;
2. build the inputs and generate ONE trace with the union of the methods' and metrics'
   needs: ``batch_size`` samples share one :func:`~mmxai.trace.generate_traces` call (one
   at a time, :func:`~mmxai.trace.generate_trace`, for a batch of one, a model whose
   adapter sets ``supports_batching = False``, or a batch whose joint call failed);
3. group the generated tokens into labelled words (:func:`mmxai.words.words_from_trace`);
4. call every method (``method(trace)``, which checks its maps) on the shared trace for all
   generated tokens, measuring its seconds per token and peak memory (``EvalItem.cost``);
5. with ``spec.save_maps``, write each method's maps (:func:`mmxai.saved_maps.save_trace_maps`
   into :meth:`RunSpec.maps_folder <mmxai.evaluation.spec.RunSpec.maps_folder>`);
6. run every metric's ``measure`` on the method's :class:`~mmxai.metric.EvalItem`.

Extra passes (gradients, masked images, a randomised model) belong to the methods and
metrics; what several of them share is cached on ``trace.cache`` for the sample.
Methods explain all tokens of a sample in one call, and the deletion/insertion metrics
batch their masked images.

Every setting comes from one :class:`~mmxai.evaluation.spec.RunSpec`, the evaluation
protocol (:mod:`mmxai.protocols`) included: its words, and the options it sets on each
localisation metric (:meth:`NamedMetric.make`, checked here); what the evaluator
has to say (progress, failures, notes) goes to a
:class:`~mmxai.evaluation.report.Reporter` the caller passes in.

Anything that goes wrong with one sample (an unreadable image, a missing or wrong-size
mask, a method or metric that raises, maps of the wrong shape or that cannot be saved, a
metric value that is not a finite number) becomes a ``failed`` row naming the sample and
the cause, the run goes on, and the summary counts it. All rows of a sample are written
in one transaction as soon as the sample is done, so a killed run loses at most the samples
of the batch in flight not yet written, and a rerun skips every (sample, method, metric)
stored ``ok`` or ``skipped`` and retries the ``failed`` ones (``retry=False`` keeps them;
the store keeps every attempt). Maps are saved only for what is computed: a resumed
sample's are not written again (the run notes how many were not).

One exception: when the first :data:`~mmxai.evaluation.jobs.STOP_AFTER` samples that reach
the model all fail to prepare or generate with the same cause, the model cannot run as set
up (a processor that rejects every input, a generate call that always raises): the run
stops with that cause (:class:`~mmxai.evaluation.jobs.ModelCannotRun`) instead of writing
the same failure for every sample, unless ``keep_going``. Samples that fail on their own
(an unreadable image) do not count.

Random state is reseeded from (seed, sample index, method or metric name) before each
step, so a sample's results do not depend on which shard ran it, on what ran before it, or
on a resumption.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mmxai import protocols
from mmxai.dataset import Dataset, Sample
from mmxai.errors import InputError, MMXAIError
from mmxai.evaluation import provenance
from mmxai.evaluation.jobs import SampleJob, Streak, cause, generate, prefixed, prepare, reseed
from mmxai.evaluation.profiling import measure
from mmxai.evaluation.report import ConsoleReporter, Reporter, few
from mmxai.evaluation.spec import RunSpec, Shard, check_protocol, protocol_clashes
from mmxai.evaluation.store import ResultStore, Row, RunKey
from mmxai.method import Method
from mmxai.metric import EvalItem, Metric, Parts
from mmxai.model import Model
from mmxai.protocols import Protocol
from mmxai.saved_maps import save_trace_maps
from mmxai.trace import Needs
from mmxai.words import words_from_trace


@dataclass
class NamedMetric:
    """A metric instance and the column it is stored under (its name, plus its options)."""

    label: str
    metric: Metric
    options: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def make(cls, metric_cls: type[Metric], options: dict[str, Any] | None = None,
             protocol: str | Protocol = protocols.DEFAULT) -> NamedMetric:
        """``metric_cls`` with ``options`` and those ``protocol`` sets on it (the default
        sets none); an option that contradicts the protocol is refused."""
        protocol = protocols.get(protocol)
        given = dict(options or {})
        metric = metric_cls(**given)
        for key, value in protocol_clashes(metric, protocol).items():
            if key in given:
                raise InputError(f"--option {metric_cls.name}.{key}={given[key]}: contradicts "
                                 f"--protocol {protocol.name}, which sets {key}={value}")
        if protocol.options_for(metric_cls.name):
            given |= protocol.options_for(metric_cls.name)
            metric = metric_cls(**given)
        # The label and provenance show the values as read (``False``, not ``"false"``),
        # so the same setting typed two ways is one column.
        options = {key: getattr(metric.options, key) for key in given}
        label = metric_cls.name
        if options:
            label += "[" + ",".join(f"{k}={options[k]}" for k in sorted(options)) + "]"
        return cls(label, metric, options)

    def describe(self) -> dict[str, Any]:
        """What provenance records of the metric."""
        return {"name": self.metric.name, "options": self.options,
                "version": self.metric.version,
                "higher_is_better": self.metric.higher_is_better,
                "category": self.metric.category}


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


def failure_causes(rows: Sequence[Row]) -> dict[str, list[str]]:
    """error -> the "method · metric" cells it failed, so one cause prints once."""
    by_error: dict[str, list[str]] = {}
    for row in rows:
        if row.status == "failed":
            by_error.setdefault(row.error or "", []).append(f"{row.key.method} · {row.metric}")
    return by_error


def check_parts(parts: Any) -> Parts:
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
    """Runs ``methods`` x ``metrics`` on ``dataset`` as ``spec`` says (default: ``RunSpec()``)
    and appends the results to ``store``.

    ``shard`` keeps every ``count``-th sample of the first ``spec.limit`` (default: all).
    ``reporter`` is told each sample done (computed now or found stored, so it can draw
    progress), each failure and each note (default: bars and lines on stderr).
    ``spec.protocol``'s libraries must be installed, and ``metrics`` made with its options
    (``NamedMetric.make(cls, options, spec.protocol)``); anything else is refused.
    """

    def __init__(self, dataset: Dataset, methods: Sequence[Method],
                 metrics: Sequence[NamedMetric], store: ResultStore | None,
                 spec: RunSpec | None = None, *, shard: Shard | None = None,
                 reporter: Reporter | None = None) -> None:
        if not methods:
            raise MMXAIError("no method to evaluate")
        if not metrics:
            raise MMXAIError("no metric to evaluate")
        names = [m.name for m in methods]
        if len(set(names)) != len(names):
            raise MMXAIError(f"a method is listed twice: {', '.join(names)}")
        self.spec = spec or RunSpec()
        protocols.require(self.spec.protocol)
        check_protocol(self.spec.protocol, {m.label: m.metric for m in metrics})
        self.dataset = dataset
        self.methods = list(methods)
        self.metrics = {m.label: m for m in metrics}
        self.store = store
        self.shard = shard or Shard()
        self.reporter = reporter or ConsoleReporter()
        needs = Needs()
        for part in [*self.methods, *(m.metric for m in metrics)]:
            needs = needs | part.needs
        self.needs = needs

    def samples(self) -> list[tuple[int, Sample]]:
        """(dataset index, sample) of this shard, after ``limit``; ids must be unique."""
        chosen, seen = [], set()
        for index, sample in enumerate(self.dataset):
            if self.spec.limit is not None and index >= self.spec.limit:
                break
            if sample.id in seen:
                raise MMXAIError(f"dataset {self.dataset.name!r}: sample id {sample.id!r} "
                                 "appears twice; results are keyed by sample id")
            seen.add(sample.id)
            if self.shard.selects(index):
                chosen.append((index, sample))
        return chosen

    # -- a model -------------------------------------------------------------------------
    def run(self, model: Model, label: str | None = None) -> Summary:
        """Evaluate one model; ``label`` names it in the store (default: its model id)."""
        label = label or model.model_id
        samples = self.samples()
        dtype = str(model.hf.dtype).removeprefix("torch.")
        settings = {m.name: provenance.run_settings(m, self.dataset, self.spec, dtype)
                    for m in self.methods}
        keys = {name: RunKey(label, self.dataset.name, name, provenance.options_hash(s))
                for name, s in settings.items()}
        self._record_provenance(model, label, keys, settings, [s.id for _, s in samples])
        self._check_prompts(label, keys, samples)
        retry = self.spec.retry
        done = {name: self.store.done(key, retry_failed=retry) for name, key in keys.items()}
        failed = {name: self.store.failed(key) for name, key in keys.items()} if retry else {}
        summary = Summary(label, samples=len(samples))
        size = self.spec.batch_for(model.device) if model.supports_batching else 1
        streak = Streak(watching=not self.spec.keep_going)
        stored = 0  # (sample, method) pairs found in the store: their maps are not computed
        with self.reporter.progress(f"{label} · {self.dataset.name}", total=len(samples)):
            batch: list[SampleJob] = []
            for position, (index, sample) in enumerate(samples):
                todo = {m.name: [metric for metric in self.metrics
                                 if metric not in done[m.name].get(sample.id, set())]
                        for m in self.methods}
                todo = {name: metrics for name, metrics in todo.items() if metrics}
                stored += len(self.methods) - len(todo)
                if todo:
                    batch.append(SampleJob(index, sample, todo))
                    self.store.add_prompts(keys.values(), sample.id,
                                           provenance.prompt_hash(sample.prompt))
                    if any(sample.id in by_sample for by_sample in failed.values()):
                        summary.retried += 1
                else:
                    summary.resumed += 1
                    self.reporter.sample_done()
                if batch and (len(batch) == size or position == len(samples) - 1):
                    for job, rows in self.evaluate_batch(model, batch, keys):
                        self.store.write(_attempts(rows, failed))
                        self._count(job, rows, summary)
                        self.reporter.sample_done()
                        streak.see(job)
                    batch = []
        if self.spec.save_maps is not None and stored:
            where = f" (shard {self.shard.label})" if self.shard.count > 1 else ""
            self.reporter.note(f"--save-maps: {label}{where}: {stored} (sample, method) "
                               "pair(s) were already stored and are not computed again, so "
                               "their maps are not written (a new --out computes them)")
        return summary

    def _count(self, job: SampleJob, rows: list[Row], summary: Summary) -> None:
        summary.evaluated += 1
        for error, where in failure_causes(rows).items():
            summary.failures += [f"{w}: {error}" for w in where]
            summary.failed_samples.add(job.sample.id)
            self.reporter.failed(error, where)

    def _record_provenance(self, model: Model, label: str, keys: dict[str, RunKey],
                           settings: dict[str, dict[str, Any]], sample_ids: list[str]) -> None:
        """Store each key's provenance; refuse a resumption whose identity changed."""
        run = provenance.run_record(model, label, self.dataset, self.spec,
                                    list(self.metrics.values()), self.shard.label, sample_ids)
        for method in self.methods:
            record = provenance.record(run, settings[method.name], method)
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
                    f"{name} were made with another prompt for sample(s) {few(changed)} "
                    f"(now {prompt!r}); write to a new --out folder")

    # -- a batch of samples --------------------------------------------------------------
    def evaluate_batch(self, model: Model, jobs: Sequence[SampleJob],
                       keys: dict[str, RunKey]) -> Iterator[tuple[SampleJob, list[Row]]]:
        """(job, rows) for the (method, metric) pairs of each job's ``todo``, in order, each
        yielded as soon as it is done; never raises for a problem of a sample, a method or a
        metric.

        The jobs whose image loads and whose inputs build share one generation; the others
        fail on their own.
        """
        for job in jobs:
            prepare(job, model, any(self.metrics[label].metric.needs_mask
                                    for labels in job.todo.values() for label in labels))
        generate(model, [job for job in jobs if job.failure is None], self.needs, self.spec,
                 self.reporter)
        for job in jobs:
            rows = job.failed_rows(keys) if job.failure else self._evaluate(model, job, keys)
            job.trace = None  # a sample's trace is freed once its rows are out
            yield job, rows

    def _evaluate(self, model: Model, job: SampleJob, keys: dict[str, RunKey]) -> list[Row]:
        """Every method and metric of the job's ``todo`` on its generated trace."""
        try:
            words = words_from_trace(job.trace, job.sample, self.spec.words)
        except Exception as exc:
            job.fail(f"generation: {cause(exc)}")
            return job.failed_rows(keys)
        rows: list[Row] = []
        for method in self.methods:
            if method.name not in job.todo:
                continue
            try:
                maps, cost = self._explain(method, job)
            except Exception as exc:
                why = prefixed(f"method {method.name!r}", cause(exc))
                rows += job.failed_rows(keys, why, [method.name])
                continue
            try:
                self._save_maps(keys[method.name], job, maps)
            except Exception as exc:  # a full disk, a folder not writable
                why = f"--save-maps: method {method.name!r}: {cause(exc)}"
                rows += job.failed_rows(keys, why, [method.name])
                continue
            item = EvalItem(job.sample, model, method, job.trace, maps, words, job.mask, cost)
            rows += [self._measure(keys[method.name], job, item, label)
                     for label in job.todo[method.name]]
        return rows

    def _explain(self, method: Method, job: SampleJob) -> tuple[np.ndarray, dict[str, float]]:
        """The method's checked maps for every generated token, and what they cost."""
        reseed(self.spec.seed, job.index, f"method:{method.name}")
        with measure(job.trace.model.device) as cost:
            maps = method(job.trace)
        cost["seconds_per_token"] = cost["seconds"] / max(1, job.trace.n_generated)
        return maps, cost

    def _save_maps(self, key: RunKey, job: SampleJob, maps: np.ndarray) -> None:
        """With ``spec.save_maps``, write ``maps`` (G, N) of the job's sample for ``key``'s
        model and method."""
        if self.spec.save_maps is not None:
            save_trace_maps(self.spec.maps_folder(key.model, key.method), job.sample.id,
                            job.trace, maps)

    def _measure(self, key: RunKey, job: SampleJob, item: EvalItem, label: str) -> Row:
        reseed(self.spec.seed, job.index, f"metric:{label}:{item.method.name}")
        return metric_row(key, self.metrics[label], item, job.mask_error,
                          f"method {item.method.name!r}")


def metric_row(key: RunKey, named: NamedMetric, item: EvalItem, mask_error: str | None,
               source: str) -> Row:
    """One metric's row for one sample, as the evaluator and ``mmxai score`` make it; a
    failure names ``source`` (the method, the maps file) and the cause."""
    sid, label = item.sample.id, named.label
    if named.metric.needs_mask:
        if mask_error is not None:
            return Row.failed(key, sid, label, mask_error)
        if item.mask is None:
            return Row.skipped(key, sid, label, "the sample has no mask")
    try:
        parts = check_parts(named.metric.measure(item))
    except Exception as exc:
        return Row.failed(key, sid, label, f"sample {sid}: metric {label!r} on {source}: "
                                           f"{cause(exc)}")
    return Row.ok(key, sid, label, parts)
