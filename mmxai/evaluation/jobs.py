"""A sample's way through the evaluator, and batches of samples sharing one generation.

A :class:`SampleJob` is one sample with work left. It collects, stage by stage, its inputs
and mask (:func:`prepare`), its trace (:func:`generate`), or the cause the whole sample
failed with, and whether that cause was the model's (:attr:`SampleJob.in_model`), which
:class:`Streak` watches to stop a run whose model cannot run at all.

Random state is reseeded from (seed, sample index, step name) before each step that may
draw (:func:`reseed`), so a sample's results do not depend on which shard ran it, what ran
before it, or a resumption.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from mmxai.dataset import Sample, load_image, load_mask
from mmxai.errors import MMXAIError
from mmxai.evaluation.report import Reporter
from mmxai.evaluation.spec import RunSpec
from mmxai.evaluation.store import Row, RunKey
from mmxai.model import Inputs, Model
from mmxai.trace import Needs, Trace, generate_trace, generate_traces

#: Samples in a row failing to prepare or generate with one cause that stop a run.
STOP_AFTER = 5


class ModelCannotRun(MMXAIError):
    """The first samples all failed in preparation or generation with the same cause."""


def reseed(seed: int, index: int, name: str) -> None:
    """Reseed every generator from (seed, sample index, step name)."""
    digest = hashlib.sha256(f"{seed}:{index}:{name}".encode()).digest()
    value = int.from_bytes(digest[:4], "little")
    random.seed(value)
    np.random.seed(value)
    torch.manual_seed(value)


def cause(exc: BaseException) -> str:
    """One line: our own errors as they read, others with their type."""
    text = " ".join(str(exc).split())
    if isinstance(exc, MMXAIError):
        return text
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def prefixed(prefix: str, text: str) -> str:
    """``prefix: text``, unless ``text`` already starts by naming the same thing (``sample 4:
    ...``, ``method 'tam' returned ...``)."""
    return text if text.startswith((f"{prefix}:", f"{prefix} ")) else f"{prefix}: {text}"


@dataclass
class SampleJob:
    """One sample with work left: ``todo`` maps each method to the metric labels to compute.

    ``mask_error`` fails only the metrics that need the mask; ``failure`` fails every cell
    of ``todo``, and ``in_model`` says it came from the model (its inputs or generation).
    """

    index: int  # in the dataset: what its steps are reseeded from
    sample: Sample
    todo: dict[str, list[str]]
    inputs: Inputs | None = None
    mask: np.ndarray | None = None
    mask_error: str | None = None
    trace: Trace | None = None
    failure: str | None = None
    in_model: bool = False

    def fail(self, why: str, *, in_model: bool = False) -> None:
        self.failure, self.in_model = why, in_model

    def failed_rows(self, keys: dict[str, RunKey], why: str | None = None,
                    methods: Iterable[str] | None = None) -> list[Row]:
        """A failed row for each metric of ``methods`` (default: all), with ``why``
        (default: the job's failure) naming the sample."""
        error = prefixed(f"sample {self.sample.id}", why or self.failure or "")
        return [Row.failed(keys[name], self.sample.id, metric, error)
                for name in (self.todo if methods is None else methods)
                for metric in self.todo[name]]


def prepare(job: SampleJob, model: Model, needs_mask: bool) -> None:
    """The job's image, its mask if ``needs_mask``, and the model's inputs, or its failure."""
    try:
        image = load_image(job.sample)
    except Exception as exc:
        job.fail(cause(exc))
        return
    if needs_mask:
        try:
            job.mask = load_mask(job.sample, image.size)
        except Exception as exc:
            job.mask_error = prefixed(f"sample {job.sample.id}", cause(exc))
    try:
        job.inputs = model.build_inputs([image], job.sample.prompt)
    except Exception as exc:
        job.fail(f"generation: {cause(exc)}", in_model=True)


def generate(model: Model, jobs: Sequence[SampleJob], needs: Needs, spec: RunSpec,
             reporter: Reporter) -> None:
    """Each prepared job's trace, or the cause its generation failed with.

    Several jobs go through one ``generate`` call (greedy, so nothing random to seed). If
    that call fails (one bad sample, memory), each job is generated on its own, so each gets
    its own success or failure.
    """
    settings = spec.generation.kwargs()
    if len(jobs) > 1:
        try:
            traces = generate_traces(model, [job.inputs for job in jobs], needs, **settings)
        except Exception as exc:
            reporter.note(f"batch of {len(jobs)} samples failed to generate together "
                          f"({cause(exc)}); generating them one at a time")
        else:
            for job, trace in zip(jobs, traces, strict=True):
                job.trace = trace
            return
    for job in jobs:
        try:
            reseed(spec.seed, job.index, "generate")
            job.trace = generate_trace(model, job.inputs, needs, **settings)
        except Exception as exc:
            job.fail(f"generation: {cause(exc)}", in_model=True)


class Streak:
    """The causes of the first samples that failed in the model, until one reaches it.

    Samples that fail on their own, before the model (their image), do not count; a sample
    that reaches the model, or a second cause, ends the watch. :data:`STOP_AFTER` in a row
    with one cause raise :class:`ModelCannotRun`. ``watching=False`` (``keep_going``)
    never raises.
    """

    def __init__(self, watching: bool = True) -> None:
        self.causes: list[str] | None = [] if watching else None

    def see(self, job: SampleJob) -> None:
        if self.causes is None:
            return
        if not job.in_model:
            if job.failure is None or job.inputs is not None:
                self.causes = None  # it reached the model: the model runs
            return
        self.causes.append(job.failure or "")
        if len(set(self.causes)) > 1:
            self.causes = None
        elif len(self.causes) >= STOP_AFTER:
            raise ModelCannotRun(
                f"stopped: the first {len(self.causes)} samples all failed alike: "
                f"{self.causes[0].rstrip('.')}; the model cannot run as set up (their failed "
                "rows are kept and a rerun retries them; --keep-going runs every sample "
                "regardless)")
