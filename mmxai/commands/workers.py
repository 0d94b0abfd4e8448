"""Worker processes for ``mmxai compare --workers N``: the samples split over N processes.

Small models are overhead-bound: torch's intra-op threads barely speed them up and, on a
loaded machine, oversubscribe the cores (two threads were 10-20x slower than one for a
1M-parameter model on a busy 2-core box). Samples are independent, so N processes of one
thread each use N cores: worker ``i`` runs shard ``i/N`` (the samples whose index is ``i``
mod ``N``) into its own store, ``results-shard<i>-of<N>.sqlite``, exactly as
``mmxai compare --shard i/N`` would, and the parent merges the N stores as
``mmxai leaderboard`` does. The evaluator reseeds per sample, so the rows are bit-identical
to a one-process run's.

Workers are started with ``multiprocessing``'s "spawn" context (no forked torch state or
threads) and are handed the run's :class:`~mmxai.evaluation.spec.RunSpec` and the function
that builds a plan from it (the command's; this module imports no command), with plugins
loaded from entry points. Each evaluates with a reporter that sends what the evaluator says
to the parent over one queue: each sample done (the parent draws the only progress bars),
each failure and note (the parent prints them); then their summaries, or the cause of a
crash.
A crashed worker is reported in one line; what the others stored is kept, and rerunning the
command resumes every shard, computing only what is missing. When every worker stops with
the same error of the user's (a resumption refused because the model's processor changed,
a model that cannot run), that error is the one line.

A worker never outlives its parent: it asks the kernel to kill it when the parent dies
(Linux ``PR_SET_PDEATHSIG``) and, everywhere, a watcher thread exits the process as soon as
its parent process is gone, so a killed ``mmxai compare`` leaves no worker writing on its
own. An interrupted write is rolled back by SQLite: the stores hold whole samples.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import multiprocessing
import os
import queue as queue_module
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch

from mmxai.commands.common import TINY
from mmxai.dataset import Dataset
from mmxai.errors import MMXAIError
from mmxai.evaluation import Evaluator, Reporter, ResultStore, RunSpec, Shard, Summary
from mmxai.model import Model


class Plan(Protocol):
    """What the workers use of the command's plan (:class:`mmxai.commands.compare.Plan`)."""

    spec: RunSpec
    dataset: Dataset
    models: list[str]
    labels: list[str]

    def evaluator(self, store: ResultStore | None, shard: Shard | None = None,
                  reporter: Reporter | None = None) -> Evaluator: ...

    def open(self, model: str) -> Model: ...


#: A model whose weight files are smaller than this is "small": one process per core.
SMALL_MODEL_BYTES = 500 * 2**20
#: Each worker pays a start-up (imports, model loading: ~5 s on a loaded 2-core box); auto
#: starts no more workers than there are runs of this many samples to amortise it over.
MIN_SAMPLES_PER_WORKER = 8
#: Memory one worker needs besides its model's weights (torch, transformers, activations).
WORKER_OVERHEAD_BYTES = 2**30
WEIGHT_FILES = ("*.safetensors", "*.bin", "*.pt", "*.pth")


# -- how many --------------------------------------------------------------------------------
def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity), not the machine's count."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def weights_bytes(spec: str) -> int | None:
    """Size of a model's weight files on disk: 0 for ``tiny:<family>``, the folder's for a
    local folder, the cached snapshot's for a hub name; None when unknown (not downloaded)."""
    if spec.startswith(TINY):
        return 0
    folder = Path(spec)
    if not folder.is_dir():
        folder = _hub_snapshot(spec)
        if folder is None:
            return None
    files = [path for pattern in WEIGHT_FILES for path in folder.glob(pattern)]
    return sum(path.stat().st_size for path in files) if files else None


def _hub_snapshot(repo_id: str) -> Path | None:
    """The cached snapshot folder of a hub model (no network), if there is one."""
    try:
        from huggingface_hub import try_to_load_from_cache

        config = try_to_load_from_cache(repo_id, "config.json")
    except Exception:  # not a valid repo id, no huggingface_hub: size unknown
        return None
    return Path(config).parent if isinstance(config, str) else None


def available_memory() -> int | None:
    """Bytes of memory available for new processes (``MemAvailable``), None if unknown."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def is_small(models: Sequence[str]) -> bool:
    """Every model's weights are known and under :data:`SMALL_MODEL_BYTES`."""
    sizes = [weights_bytes(spec) for spec in models]
    return all(size is not None and size < SMALL_MODEL_BYTES for size in sizes)


def stored_layout(out: Path) -> int | None:
    """The worker count of the stores already in ``out`` (1 for ``results.sqlite``, N for
    ``results-shard<i>-of<N>.sqlite``; the newest if several), None for a new folder."""
    layouts: dict[int, float] = {}
    for path in out.glob("results*.sqlite"):
        if path.name == Shard().store_name():
            count = 1
        else:
            count_text = path.stem.rpartition("-of")[2]
            if not count_text.isdigit():
                continue
            count = int(count_text)
        layouts[count] = max(layouts.get(count, 0.0), path.stat().st_mtime)
    return max(layouts, key=layouts.__getitem__) if layouts else None


def auto_workers(models: Sequence[str], device: torch.device, samples: int, out: Path) -> int:
    """``--workers auto``.

    On CPU with small models (:func:`is_small`): one worker per usable core, at most one per
    :data:`MIN_SAMPLES_PER_WORKER` samples and no more than the available memory holds
    (twice the largest model's weights plus :data:`WORKER_OVERHEAD_BYTES` each). A large or
    unknown model, or CUDA, gets 1 (several GPUs: torchrun/accelerate, one rank per GPU).
    An ``out`` folder that already holds stores keeps their worker count, so a resumed run
    reads the stores it wrote, whatever the machine's load or cores.
    """
    stored = stored_layout(out)
    if stored is not None:
        return stored
    if device.type != "cpu" or not is_small(models):
        return 1
    count = min(usable_cores(), samples // MIN_SAMPLES_PER_WORKER)
    memory = available_memory()
    if memory is not None:
        largest = max(weights_bytes(spec) or 0 for spec in models)
        count = min(count, memory // (2 * largest + WORKER_OVERHEAD_BYTES))
    return max(1, count)


def auto_threads(workers: int, small: bool) -> int | None:
    """``--threads auto``: 1 for several workers or small models, else None (torch's own)."""
    return 1 if workers > 1 or small else None


# -- the parent ------------------------------------------------------------------------------
@dataclass
class Outcome:
    """What the workers did: per model (in order), the summary merged over every worker, or
    None when a worker did not finish it; the stores; one line per worker that failed."""

    summaries: list[Summary | None]
    stores: list[Path]
    crashed: list[str] = field(default_factory=list)
    #: The user's error every worker stopped with, when they all stopped with the same one.
    same_cause: str | None = None


def run_workers(build: Callable[[RunSpec], Plan], plan: Plan, count: int, threads: int,
                samples: int, reporter: Reporter) -> Outcome:
    """Run ``count`` workers, each ``build``-ing ``plan.spec``'s plan again and evaluating
    its shard.

    ``build`` must be a module-level function (it is pickled by name). ``reporter`` shows
    one bar per model over all ``samples``, and the failures and notes the workers send.
    """
    context = multiprocessing.get_context("spawn")
    messages = context.Queue()
    processes = [context.Process(target=_work, name=f"mmxai-worker-{i}", daemon=True,
                                 args=(build, plan.spec, i, count, threads, messages,
                                       os.getpid()))
                 for i in range(count)]
    summaries: list[list[Summary]] = [[] for _ in plan.models]
    errors: dict[int, str] = {}
    user_errors: dict[int, str] = {}

    def handle(message: tuple) -> None:
        kind, worker, *rest = message
        if kind == "sample":
            reporter.sample_done(rest[0])
        elif kind == "failed":
            reporter.failed(*rest)
        elif kind == "note":
            reporter.note(rest[0])
        elif kind == "summary":
            summaries[rest[0]].append(rest[1])
        elif kind == "error":
            errors[worker] = rest[0]
            if len(rest) > 1 and rest[1]:
                user_errors[worker] = rest[0]

    bars = [f"{label} · {plan.dataset.name}" for label in plan.labels]
    with reporter.progress(*bars, total=samples):
        try:
            for process in processes:
                process.start()
            while any(process.is_alive() for process in processes):
                try:
                    handle(messages.get(timeout=0.2))
                except queue_module.Empty:
                    continue
            while True:  # what the last workers sent just before they exited
                try:
                    handle(messages.get(timeout=0.2))
                except queue_module.Empty:
                    break
        finally:
            for process in processes:
                if process.is_alive():  # the parent was interrupted
                    process.terminate()
                process.join()
    crashed = [f"worker {i}/{count}: {errors.get(i) or _exit_cause(p.exitcode)}"
               for i, p in enumerate(processes) if p.exitcode != 0 or i in errors]
    causes = set(user_errors.values())
    same = causes.pop() if len(user_errors) == count and len(causes) == 1 else None
    return Outcome([merge(s) if len(s) == count else None for s in summaries],
                   [plan.spec.out / Shard(i, count).store_name() for i in range(count)],
                   crashed, same)


def merge(summaries: Sequence[Summary]) -> Summary:
    """One summary from the workers' summaries of the same model."""
    merged = Summary(summaries[0].model)
    for summary in summaries:
        merged.samples += summary.samples
        merged.evaluated += summary.evaluated
        merged.resumed += summary.resumed
        merged.failures += summary.failures
        merged.failed_samples |= summary.failed_samples
        merged.retried += summary.retried
    return merged


def _exit_cause(code: int | None) -> str:
    if code is not None and code < 0:
        name = signal.Signals(-code).name
        hint = " (out of memory?)" if -code == signal.SIGKILL else ""
        return f"killed by {name}{hint}"
    return f"exited with code {code}"


# -- a worker --------------------------------------------------------------------------------
class _ToParent(Reporter):
    """A worker's reporter: what the evaluator says of model ``model`` goes to the parent."""

    def __init__(self, messages: Any, worker: int, model: int) -> None:
        self.messages, self.worker, self.model = messages, worker, model

    def sample_done(self, bar: int = 0) -> None:
        self.messages.put(("sample", self.worker, self.model))

    def failed(self, error: str, where: Sequence[str]) -> None:
        self.messages.put(("failed", self.worker, error, list(where)))

    def note(self, text: str) -> None:
        self.messages.put(("note", self.worker, text))


def _cause(exc: BaseException) -> str:
    """One line: our own errors as they read; others with their type and where they rose."""
    text = " ".join(str(exc).split())
    if isinstance(exc, MMXAIError):
        return text
    frames = traceback.extract_tb(exc.__traceback__)
    where = f" (at {Path(frames[-1].filename).name}:{frames[-1].lineno})" if frames else ""
    return f"{type(exc).__name__}: {text}{where}" if text else f"{type(exc).__name__}{where}"


#: How often a worker's watcher checks that its parent is alive (seconds).
PARENT_POLL_SECONDS = 0.25
_PR_SET_PDEATHSIG = 1


def _die_with_parent(parent: int) -> None:
    """End this process when ``parent`` (the pid that started it) is gone.

    On Linux the kernel sends SIGKILL when the parent dies; a daemon thread also polls the
    parent's pid (any POSIX system, and the moment before ``prctl`` took effect) and exits.
    """
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):
            pass  # the watcher below still ends the worker

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(PARENT_POLL_SECONDS)
        os._exit(1)  # an open SQLite transaction is rolled back: whole samples or nothing

    if os.getppid() != parent:  # the parent died while this worker was starting
        os._exit(1)
    threading.Thread(target=watch, name="mmxai-parent-watch", daemon=True).start()


def _work(build: Callable[[RunSpec], Plan], spec: RunSpec, index: int, count: int,
          threads: int, messages: Any, parent: int | None = None) -> None:
    """Worker ``index``: shard ``index/count`` of every model into its own store."""
    if parent is not None:
        _die_with_parent(parent)
    torch.set_num_threads(threads)
    try:
        plan = build(spec)
        shard = Shard(index, count)
        with ResultStore(spec.out / shard.store_name()) as store:
            for number, (model_spec, label) in enumerate(zip(plan.models, plan.labels,
                                                             strict=True)):
                evaluator = plan.evaluator(store, shard, _ToParent(messages, index, number))
                model = plan.open(model_spec)
                messages.put(("summary", index, number, evaluator.run(model, label)))
                del model
    except KeyboardInterrupt:
        raise SystemExit(130) from None
    except BaseException as exc:
        messages.put(("error", index, _cause(exc), isinstance(exc, MMXAIError)))
        raise SystemExit(1) from None
