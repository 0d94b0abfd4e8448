"""The GPU check: every measurement that needs a GPU, in one run under 8 minutes.

Run it through ``benchmarks/gpu_check.sh`` (which makes mmxai importable first; its header
says how on the GPU machine). On one model, the same samples and one device:

- **model**: a random model of Qwen2-VL-2B's shape (text hidden 1536, 28 layers, vocabulary
  151,936; vision depth 32, width 1280; :func:`evaluator.qwen2vl_shaped`, no hub), bfloat16,
  eager attention (what ``mmxai`` loads every checkpoint with);
- **bare generate**: ``model.hf.generate``, greedy, exactly ``new_tokens`` tokens, ``batch``
  samples per call (left-padded by ``Model.collate``), no hooks;
- **shared trace**: :func:`mmxai.trace.generate_traces` with the union of the logit-lens
  methods' needs, the same batches;
- **logit-lens group**: that trace plus the group's methods explaining every token; the
  target is its throughput at >= 90% of bare generation's (PASS/FAIL row);
- **every registered method**: its explain time over traces recorded once with the union
  of every method's needs; methods that run their own passes (gradients, extra passes, or
  not in ``compare``'s default run) explain fewer tokens with small options, said in the
  row; a method that fails is a row with its one-line error and the run goes on;
- **device map**: the model split by ``mmxai.device_map.dispatch`` (across every GPU, or
  cuda:0 and the CPU through ``max_memory`` with one), the batched trace timed once;
- **compare**: one ``mmxai compare --dataset synthetic16`` subprocess, ``--limit`` scenes.

Throughput is wall-clock (synchronised), median of ``repeats`` after one warm-up; peak memory
is ``torch.cuda.max_memory_allocated`` per step (on CPU: the process's peak RSS so far).
Each step has its own time guard inside the run's budget, so a slow step cannot eat the
rest; the table is rewritten after every row (a crash keeps what was measured) to
``--out DIR/gpu_check.md`` and printed at the end.

``--dry-run`` takes the same code path on the CPU with the tiny Qwen2-VL in float32, batch 2,
two samples and a one-scene compare: what the tests run.
"""

from __future__ import annotations

import argparse
import dataclasses
import platform
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch
import transformers
from evaluator import PROMPT, images, qwen2vl_shaped

from mmxai.api import make_method
from mmxai.commands.tiny import find_family
from mmxai.method import Method
from mmxai.model import Inputs, Model
from mmxai.registry import manager
from mmxai.trace import Needs, Trace, generate_traces

#: The methods that read only the final hidden states and top-k logits of the shared pass.
LENS = ("logit-lens", "tam", "arc")
#: Option values that keep a costly method's run short, where its options have the field
#: (EAGLE's search costs about segments^2 forwards a token).
SMALL_OPTIONS = {"steps": 4, "n_steps": 4, "samples": 4, "n_samples": 4, "segments": 8}
TARGET = 0.90


@dataclass(frozen=True)
class Setup:
    device: str
    dtype: str
    samples: int
    batch: int
    image_size: int  # 448 px: a 16x16 grid of merged image tokens
    new_tokens: int
    repeats: int
    costly_tokens: int  # tokens per trace a costly method explains
    costly_samples: int  # traces a costly method explains
    small: dict[str, int]  # a costly method's options, where it has the field
    compare_limit: int
    budget: float  # seconds for every step together
    guards: dict[str, float]  # each step's own limit, seconds


REAL = Setup("cuda", "bfloat16", samples=16, batch=8, image_size=448, new_tokens=16, repeats=3,
             costly_tokens=2, costly_samples=4, small=SMALL_OPTIONS, compare_limit=16,
             budget=400,
             guards=dict(model=90, bare=45, trace=45, lens=45, all_needs=45, method=20,
                         device_map=60, compare=120))
DRY = Setup("cpu", "float32", samples=2, batch=2, image_size=112, new_tokens=4, repeats=1,
            costly_tokens=1, costly_samples=2, small={**SMALL_OPTIONS, "segments": 4},
            compare_limit=1, budget=240,
            guards=dict(model=30, bare=20, trace=20, lens=20, all_needs=20, method=20,
                        device_map=30, compare=90))


class StepTimeout(Exception):
    """A step ran past its time guard."""


def failed(exc: BaseException) -> str:
    """One line for a step's exception: a package missing here (captum, pycocotools on the
    GPU machine) makes the step unavailable rather than failed."""
    text = " ".join(str(exc).split())
    line = type(exc).__name__ + (f": {text}" if text else "")
    missing = isinstance(exc, ImportError) or isinstance(exc.__cause__, ImportError)
    return ("unavailable: " if missing else "failed: ") + line


@contextmanager
def time_guard(seconds: float) -> Iterator[None]:
    """Raise :class:`StepTimeout` in the step after ``seconds`` (SIGALRM: the main thread
    gets it between Python operations, and a step is many short ones)."""
    def expire(_signum, _frame):
        raise StepTimeout(f"stopped by its {seconds:.0f} s time guard")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@dataclass
class Row:
    step: str
    images_s: float | None = None
    tokens_s: float | None = None
    memory_gib: float | None = None
    of_bare: float | None = None
    note: str = ""


class Table:
    """The markdown report, rewritten whole after every row."""

    COLUMNS = ("step", "images/s", "tokens/s", "peak memory (GiB)", "of bare throughput", "note")

    def __init__(self, path: Path, header: list[str]) -> None:
        self.path, self.header, self.rows = path, header, []
        self.write()

    def add(self, row: Row) -> None:
        self.rows.append(row)
        self.write()
        print(f"[gpu_check] {self.line(row)}", file=sys.stderr, flush=True)

    @staticmethod
    def line(row: Row) -> str:
        def number(value: float | None) -> str:  # three significant digits, no exponent
            return "-" if value is None else f"{value:.1f}" if value >= 100 else f"{value:.3g}"
        cells = (row.step, number(row.images_s), number(row.tokens_s), number(row.memory_gib),
                 "-" if row.of_bare is None else f"{row.of_bare:.2f}",
                 row.note.replace("|", "/") or "-")
        return "| " + " | ".join(cells) + " |"

    def text(self) -> str:
        return "\n".join([*self.header, "", "| " + " | ".join(self.COLUMNS) + " |",
                          "|" + "---|" * len(self.COLUMNS), *map(self.line, self.rows)]) + "\n"

    def write(self) -> None:
        self.path.write_text(self.text(), encoding="utf-8")


class Check:
    """Runs the steps, each under its guard, inside the run's budget."""

    def __init__(self, setup: Setup, device: torch.device, table: Table) -> None:
        self.setup, self.device, self.table = setup, device, table
        self.deadline = time.monotonic() + setup.budget

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def peak_gib(self) -> float:
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device) / 2**30
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux

    def step(self, name: str, guard: str, measure: Callable[[], Row],
             reserve: float = 0.0) -> Row | None:
        """``measure()`` under ``min(its guard, what the budget leaves after reserve)``; its
        row, or a row saying why there is none (the run goes on)."""
        seconds = min(self.setup.guards[guard], self.deadline - time.monotonic() - reserve)
        if seconds < 1:
            self.table.add(Row(name, note="skipped: the run's time budget is spent"))
            return None
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        try:
            with time_guard(seconds):
                row = measure()
                self.sync()
        except Exception as exc:  # one step's failure must not hide the others
            self.sync()
            self.table.add(Row(name, memory_gib=self.peak_gib(), note=failed(exc)))
            return None
        row.step, row.memory_gib = name, self.peak_gib()
        self.table.add(row)
        return row

    def timed(self, run: Callable[[], Any]) -> float:
        """Median wall seconds of ``repeats`` runs after a warm-up."""
        times = []
        for round_ in range(self.setup.repeats + 1):
            self.sync()
            start = time.perf_counter()
            run()
            self.sync()
            if round_:
                times.append(time.perf_counter() - start)
        return statistics.median(times)


def union(methods: list[Method]) -> Needs:
    needs = Needs()
    for method in methods:
        needs = needs | method.needs
    return needs


def costly(method: type[Method] | Method) -> bool:
    """Methods that run passes of their own, or that compare leaves out by default."""
    return bool(method.needs.gradients or method.needs.extra_passes or not method.default_run)


def small_options(cls: type[Method], small: dict[str, int]) -> dict[str, Any]:
    """``small`` for the fields a costly method's options have (ints larger than these)."""
    if not costly(cls) or not dataclasses.is_dataclass(cls.Options):
        return {}
    fields = {f.name: f.default for f in dataclasses.fields(cls.Options)}
    return {key: value for key, value in small.items()
            if isinstance(fields.get(key), int) and fields[key] > value}


class Steps:
    """The measurements, one method per step, each returning its row (the step names it)."""

    def __init__(self, setup: Setup, check: Check, dry_run: bool, out: Path) -> None:
        self.setup, self.check, self.dry_run, self.out = setup, check, dry_run, out
        self.tokens = dict(max_new_tokens=setup.new_tokens, min_new_tokens=setup.new_tokens)
        self.pictures = images(setup.samples, setup.image_size)
        names = manager().names("methods")
        self.group = [make_method(name) for name in LENS if name in names]
        self.lens_needs = union(self.group)
        self.model: Model | None = None
        self.inputs: list[Inputs] = []  # one per picture, and in batches:
        self.chunks: list[list[Inputs]] = []
        self.bare_seconds: float | None = None  # per run over every sample
        self.lens_share: float | None = None
        self.traces: list[Trace] = []

    # -- the model and the batches ------------------------------------------------------
    def build(self) -> Row:
        start = time.perf_counter()
        dtype = getattr(torch, self.setup.dtype)
        if self.dry_run:
            model = find_family("qwen2-vl").tiny()
            model.hf.to(device=self.check.device, dtype=dtype)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                model.set_eager_attention()  # as the real run's model and every checkpoint
        else:
            model = qwen2vl_shaped("qwen2-vl-2b", self.check.device, dtype)
        self.model = model
        self.inputs = [model.build_inputs([p], PROMPT) for p in self.pictures]
        batch = self.setup.batch
        self.chunks = [self.inputs[i:i + batch] for i in range(0, len(self.inputs), batch)]
        grids = sorted({g.shape for x in self.inputs for g in x.grids})
        params = sum(p.numel() for p in model.hf.parameters()) / 1e6
        return Row("", note=f"{model.model_id}: {params:.1f}M parameters, image grids "
                            f"{grids}, built in {time.perf_counter() - start:.1f} s")

    def throughput(self, seconds: float, note: str = "") -> Row:
        """A row for ``seconds`` over every sample, against bare generation's."""
        n = len(self.inputs)
        return Row("", images_s=n / seconds, tokens_s=n * self.setup.new_tokens / seconds,
                   of_bare=None if self.bare_seconds is None else self.bare_seconds / seconds,
                   note=note)

    def run_traces(self, needs: Needs, explain: Sequence[Method] = ()) -> list[Trace]:
        recorded = []
        for chunk in self.chunks:
            recorded += generate_traces(self.model, chunk, needs, **self.tokens)
        for trace in recorded if explain else ():
            for method in explain:
                method(trace)
        return recorded

    # -- the steps -----------------------------------------------------------------------
    def bare(self) -> Row:
        model = self.model
        plain = dict(do_sample=False, num_beams=1, return_dict_in_generate=True,
                     pad_token_id=model.pad_token_id(), **self.tokens)

        def run() -> None:
            with torch.no_grad():
                for chunk in self.chunks:
                    model.hf.generate(**model.collate([x.features for x in chunk]), **plain)
        self.bare_seconds = self.check.timed(run)
        return self.throughput(self.bare_seconds)

    def trace(self) -> Row:
        return self.throughput(self.check.timed(lambda: self.run_traces(self.lens_needs)))

    def lens(self) -> Row:
        seconds = self.check.timed(lambda: self.run_traces(self.lens_needs, self.group))
        row = self.throughput(seconds, "every token explained")
        self.lens_share = row.of_bare
        return row

    def all_needs(self, needs: Needs) -> Row:
        def run() -> None:
            self.traces = self.run_traces(needs)
        return self.throughput(self.check.timed(run),
                               "recorded once for the method rows (attentions included)")

    def method(self, method: Method) -> Row:
        """``method``'s explain time over the recorded traces (a costly one: fewer tokens
        and samples; cut by its guard: what it explained in time)."""
        setup, few = self.setup, costly(method)
        chosen = self.traces[:setup.costly_samples] if few else self.traces
        note = "explain only, one run"
        if few:
            note += (f"; costly: first {setup.costly_tokens} token(s) of the first "
                     f"{len(chosen)} samples")
        options = small_options(type(method), setup.small)
        if options:
            note += "; options " + ", ".join(f"{k}={v}" for k, v in options.items())
        explained = done = 0
        start = time.perf_counter()
        try:
            for trace in chosen:
                tokens = list(range(min(setup.costly_tokens if few else trace.n_generated,
                                        trace.n_generated)))
                method(trace, tokens)
                explained, done = explained + len(tokens), done + 1
        except StepTimeout as exc:
            if not done:
                raise
            note += f"; {exc}: {done} of {len(chosen)} samples"
        self.check.sync()
        seconds = time.perf_counter() - start
        # images/s only where every token was explained: a costly row's would not compare
        return Row("", images_s=None if few else done / seconds, tokens_s=explained / seconds,
                   note=note)

    def split(self) -> Row:
        """The model dispatched across devices, one batched trace timed once."""
        from mmxai.device_map import dispatch  # imports accelerate

        device = self.check.device
        gpus = torch.cuda.device_count() if device.type == "cuda" else 0
        size = sum(p.numel() * p.element_size() for p in self.model.hf.parameters())
        if gpus > 1:
            where, max_memory = f"balanced across {gpus} GPUs", None
        elif gpus == 1:
            where = "across cuda:0 and cpu (max_memory: half the weights on the GPU)"
            max_memory = {0: size // 2, "cpu": 4 * size}
        else:
            where = "across cpu and disk (max_memory: half the weights in memory)"
            max_memory = {"cpu": size // 2}
        # offloaded weights go to a temporary folder, not --out: the GPU machine returns
        # only a few files from there
        model = dispatch(self.model, "auto", max_memory=max_memory)
        # built again: the split model's inputs go to its input embeddings' device
        inputs = [model.build_inputs([p], PROMPT) for p in self.pictures[:self.setup.batch]]
        self.check.sync()
        start = time.perf_counter()
        generate_traces(model, inputs, self.lens_needs, **self.tokens)
        self.check.sync()
        per_image = (time.perf_counter() - start) / len(inputs)
        devices = sorted({str(p.device) for p in model.hf.parameters()})
        return Row("", images_s=1 / per_image, tokens_s=self.setup.new_tokens / per_image,
                   of_bare=self.bare_seconds / len(self.inputs) / per_image,
                   note=f"{where}; one batch, one run (no warm-up); parameters on {devices}")

    def compare(self) -> Row:
        """One ``mmxai compare`` subprocess on the synthetic benchmark; its wall time. Its
        results folder is temporary (the GPU machine returns only a few files from
        ``out``): its log (which names the mmxai it ran: ``mmxai from ...``) and leaderboard
        are copied to ``out``."""
        setup, out = self.setup, self.out
        with tempfile.TemporaryDirectory(prefix="gpu-check-compare-") as folder:
            command = [sys.executable, "-c",
                       "import sys, mmxai; from mmxai.cli import main; "
                       "print('mmxai from', mmxai.__file__, file=sys.stderr); sys.exit(main())",
                       "compare", "--dataset", "synthetic16", "--device", setup.device,
                       "--limit", str(setup.compare_limit), "--out", folder, "--no-progress"]
            start = time.perf_counter()
            # the step's time guard interrupts the wait; subprocess.run then kills the child.
            # Not from the repository root: `python -c` puts the working folder first on
            # sys.path, where the checkout's bare mmxai/ (no mmxai.testbed) would shadow the
            # installed copy.
            done = subprocess.run(command, capture_output=True, text=True, cwd=folder)
            wall = time.perf_counter() - start
            (out / "compare.log").write_text(done.stdout + done.stderr, encoding="utf-8")
            leaderboard = Path(folder) / "leaderboard.md"
            if leaderboard.exists():
                shutil.copyfile(leaderboard, out / "compare_leaderboard.md")
        if done.returncode:
            last = (done.stderr.strip().splitlines() or ["no output"])[-1]
            raise RuntimeError(f"exit status {done.returncode}: {last}")
        return Row("", images_s=setup.compare_limit / wall,
                   note=f"{setup.compare_limit} scene(s), every default method and metric, "
                        f"wall {wall:.1f} s (startup included); compare.log, "
                        "compare_leaderboard.md")


def header(setup: Setup, device: torch.device, dry_run: bool) -> list[str]:
    name = (torch.cuda.get_device_name(device) if device.type == "cuda"
            else platform.processor() or platform.machine())
    memory = ("torch.cuda.max_memory_allocated per step" if device.type == "cuda"
              else "the process's peak RSS so far (CPU)")
    return [
        "# GPU check" + (" (dry run)" if dry_run else ""),
        "",
        f"Device: {name} ({device}); torch {torch.__version__}, transformers "
        f"{transformers.__version__}, python {platform.python_version()}; "
        f"{time.strftime('%Y-%m-%d %H:%M')}.",
        f"Batch {setup.batch}, {setup.samples} samples of {setup.image_size} px, "
        f"{setup.new_tokens} new tokens, {setup.dtype}, eager attention; throughput is wall "
        f"time, median of {setup.repeats} after a warm-up; peak memory: {memory}.",
    ]


def run(setup: Setup, check: Check, steps: Steps) -> None:
    """Every step in order; a step the others need (the model, bare generation) ends the
    run when it fails."""
    table = check.table
    reserve = setup.guards["compare"]  # the compare keeps its time whatever comes before
    label = "tiny Qwen2-VL" if steps.dry_run else "random Qwen2-VL-2B shape"
    batch = f"batch {setup.batch}"
    if not check.step(f"model ({label}, {setup.dtype})", "model", steps.build, reserve):
        return
    if not check.step(f"bare generate, {batch}", "bare", steps.bare, reserve):
        return
    group = ", ".join(m.name for m in steps.group)
    check.step(f"shared trace ({group} needs), {batch}", "trace", steps.trace, reserve)
    check.step(f"logit-lens group ({group}): trace + explain, {batch}", "lens", steps.lens,
               reserve)
    share = steps.lens_share
    table.add(Row(f"target: logit-lens group >= {TARGET:.0%} of bare generate throughput",
                  of_bare=share, note="not measured" if share is None else
                  ("PASS" if share >= TARGET else "FAIL") + f" ({share:.1%})"))

    methods: dict[str, Method | str] = {}
    # the cheap methods first: when the costly ones spend the budget, they are the rows lost
    for name in sorted(manager().names("methods"),
                       key=lambda name: costly(manager().get("methods", name))):
        cls = manager().get("methods", name)
        try:
            methods[name] = make_method(name, **small_options(cls, setup.small))
        except Exception as exc:  # a method that cannot be made is a row
            methods[name] = failed(exc)
    made = [m for m in methods.values() if isinstance(m, Method)]
    check.step(f"traces with every method's needs, {batch}", "all_needs",
               lambda: steps.all_needs(union(made)), reserve)
    for name, method in methods.items():
        if isinstance(method, str):
            table.add(Row(f"method: {name}", note=method))
        elif not steps.traces:
            table.add(Row(f"method: {name}", note="not measured: no traces"))
        else:  # the device map keeps its time too
            check.step(f"method: {name}", "method", partial(steps.method, method),
                       reserve + setup.guards["device_map"])
    for plugin in manager().plugins():  # e.g. a method module that imports captum at once
        if plugin.broken:
            table.add(Row(f"plugin: {plugin.name}", note=f"unavailable: {plugin.error}"))
    steps.traces = []
    check.step("device map: batched trace on the split model", "device_map", steps.split,
               reserve)
    steps.model = None
    if check.device.type == "cuda":
        torch.cuda.empty_cache()
    check.step(f"compare: synthetic16, --device {setup.device}, --limit "
               f"{setup.compare_limit}", "compare", steps.compare)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry-run", action="store_true",
                        help="the same steps on the CPU with the tiny Qwen2-VL (for the tests)")
    parser.add_argument("--out", type=Path, default=Path("gpu-check"),
                        help="folder for gpu_check.md and the compare's log (default gpu-check)")
    parser.add_argument("--budget", type=float,
                        help=f"seconds for all steps (default {REAL.budget:.0f})")
    args = parser.parse_args(argv)
    setup = DRY if args.dry_run else REAL
    if args.budget:
        setup = dataclasses.replace(setup, budget=args.budget)
    device = torch.device(setup.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("gpu_check: no CUDA device here; --dry-run runs the same steps on the CPU",
              file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    table = Table(args.out / "gpu_check.md", header(setup, device, args.dry_run))
    check = Check(setup, device, table)
    run(setup, check, Steps(setup, check, args.dry_run, args.out))
    print(table.text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
