"""``mmxai compare``: methods x metrics on a dataset, for one or more models.

Results go to ``--out``: ``results.sqlite`` (``results-shard<i>-of<n>.sqlite`` for a shard),
then the leaderboard files (``mmxai leaderboard`` re-renders and merges them later).
A rerun with the same ``--out`` resumes: what is stored is skipped, except failed results,
which are computed again (``--no-retry`` keeps them). A rerun whose model files, processor,
chat template or dataset files changed is refused; other options are another run, stored
beside the first (docs/evaluator.md). When the first samples all fail to prepare or
generate with one cause, the run stops with it (``--keep-going`` runs on).

With neither ``--model`` nor ``--dataset`` it runs the bundled benchmark: the registered
dataset whose class sets ``default_benchmark = True``, on that class's ``default_model``.
``--model tiny:<family>`` builds the family's tiny random model in memory (tests, demos).
A model is named in the store and tables by its ``--label`` (``--model M --label L`` or
``--label M=L``), by default a local folder by its folder's name, never this machine's path
(:func:`~mmxai.commands.leaderboard.model_labels`).

``--protocol`` names the evaluation protocol (:mod:`mmxai.protocols`): its words and the
options it sets on each localisation metric (their columns say so,
``obj-iou[protocol=tam-reference]``); a metric option that contradicts it is refused.
``--save-maps DIR`` writes the maps of every (model, method, sample) computed, as
``DIR/<model>/<method>/<sample id>.npz`` (:mod:`mmxai.saved_maps`); samples resumed from the
store are not computed again, so their maps are not written.

``--workers N`` splits the samples over N processes (:mod:`mmxai.commands.workers`), each
writing shard i/N's store; the parent draws the progress and merges the stores. ``auto``
uses one per core for small models on CPU, and 1 otherwise.

The arguments are read once into a :class:`~mmxai.evaluation.spec.RunSpec` (:func:`run_spec`);
:func:`build_plan` builds what it names into a :class:`Plan`, here and, from the same spec,
in each worker (which is handed :func:`build_plan`, not this module; with
``--chat-template``, :func:`build_plan` holding the template's text).

``--chat-template FILE`` replaces each model's chat template (or the family's default, for a
checkpoint without one); it is read and checked before any model loads. The template a model
ran with is part of what its stored results are checked against (the ``chat_template`` of
:mod:`mmxai.evaluation.provenance`): resuming into ``--out`` with another is refused.
What loading a checkpoint filled in is said as ``note:`` lines, once per model (by shard 0).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import torch
from rich.console import Console
from rich.markup import escape

from mmxai import protocols
from mmxai.api import make_method
from mmxai.cli import error
from mmxai.commands import workers
from mmxai.commands.common import (
    add_device_map_arguments,
    chat_template_option,
    check_max_new_tokens,
    open_model,
    parse_dtype,
    parse_options,
    resolve_device,
)
from mmxai.commands.leaderboard import LabelAction, check_out, model_labels
from mmxai.dataset import Dataset
from mmxai.device_map import check_workers
from mmxai.errors import InputError, MMXAIError
from mmxai.evaluation import (
    ConsoleReporter,
    Evaluator,
    Generation,
    NamedMetric,
    Reporter,
    ResultStore,
    RunSpec,
    Selection,
    Shard,
    Summary,
    leaderboard,
    print_table,
    write_all,
)
from mmxai.method import Method, default_methods
from mmxai.model import Model
from mmxai.registry import manager


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", dest="models", action="append", metavar="MODEL",
                        help="hub name, local folder or tiny:<family> (repeatable; default: "
                             "the bundled benchmark's model)")
    parser.add_argument("--label", dest="labels", action=LabelAction, default=[],
                        metavar="[MODEL=]LABEL",
                        help="how a model is named in the results and tables: MODEL=LABEL, "
                             "or LABEL for the --model just before it (repeatable; default: "
                             "a local folder's name, else the --model as given)")
    parser.add_argument("--dataset", help="registered dataset name, see `mmxai plugins` "
                                          "(default: the bundled benchmark)")
    parser.add_argument("--data-root", type=Path, metavar="PATH",
                        help="the dataset's folder (default: the dataset's own)")
    parser.add_argument("--method", dest="methods", action="extend", nargs="+", metavar="NAME",
                        help="method(s), repeatable or comma-separated; all: every registered one "
                             "(default: every registered one but the costly ones, `mmxai "
                             "plugins` marks them)")
    parser.add_argument("--metric", dest="metrics", action="extend", nargs="+", metavar="NAME",
                        help="metric(s), repeatable or comma-separated (default: all registered)")
    parser.add_argument("--option", dest="options", action="append", default=[],
                        metavar="NAME.KEY=VALUE",
                        help="an option of a method, metric or the dataset, e.g. "
                             "deletion.steps=16 (repeatable; default: each one's defaults)")
    parser.add_argument("--out", type=Path, default=Path("mmxai-results"), metavar="DIR",
                        help="results folder (default: mmxai-results)")
    parser.add_argument("--protocol", default=protocols.DEFAULT, metavar="NAME",
                        help=f"evaluation protocol (default: {protocols.DEFAULT}); "
                             + "; ".join(f"{p.name}: {p.summary}"
                                         for p in protocols.PROTOCOLS.values()))
    parser.add_argument("--save-maps", type=Path, metavar="DIR",
                        help="write each computed sample's maps to DIR/<model>/<method>/"
                             "<sample id>.npz (samples resumed from --out are not computed "
                             "again: their maps are not written; default: none written)")
    parser.add_argument("--limit", type=int, metavar="N",
                        help="the first N samples only (default: all)")
    parser.add_argument("--max-new-tokens", type=_max_new_tokens, default=32, metavar="N",
                        help="the most tokens each answer may have (default: 32)")
    parser.add_argument("--min-new-tokens", type=int, default=0, metavar="N",
                        help="no EOS before N tokens; tiny random models stop at once "
                             "(default: 0)")
    parser.add_argument("--device", default="auto",
                        help="torch device; auto: cuda (cuda:LOCAL_RANK under torchrun) if "
                             "available, else cpu (default: auto)")
    parser.add_argument("--dtype", default="auto",
                        help="model dtype: auto (the checkpoint's), float32, bfloat16 or "
                             "float16 (default: auto)")
    parser.add_argument("--batch", type=int, metavar="N",
                        help="samples per generate call (default: 8 on CUDA, 1 on CPU, where "
                             "sharded and resumed runs then stay bit-identical)")
    parser.add_argument("--shard", metavar="I/N",
                        help="run shard I of N (0-based; default: RANK/WORLD_SIZE if set, "
                             "else the whole run)")
    parser.add_argument("--workers", metavar="N|auto",
                        help="worker processes, each evaluating 1/N of the samples (default "
                             "auto: one per usable core for a small model on CPU, else 1)")
    parser.add_argument("--threads", default="auto", metavar="N|auto",
                        help="torch threads per process (default auto: 1 with several "
                             "workers or a small model, else torch's default)")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of every random step and of the bootstrap (default: 0)")
    parser.add_argument("--bootstrap", type=int, default=1000, metavar="B",
                        help="bootstrap resamples for the intervals and tests (default 1000)")
    parser.add_argument("--no-progress", action="store_true",
                        help="no progress bars (default: bars on stderr)")
    parser.add_argument("--no-retry", action="store_true",
                        help="keep stored failures as they are (default: a rerun computes "
                             "failed results again; the store keeps every attempt)")
    parser.add_argument("--keep-going", action="store_true",
                        help="run every sample even when the first ones all fail to prepare "
                             "or generate with the same cause (default: stop with it)")
    parser.add_argument("--trust-remote-code", action="store_true",
                        help="allow the checkpoint's own Python code to run (default: not)")
    parser.add_argument("--chat-template", type=Path, metavar="FILE",
                        help="a Jinja chat template (UTF-8 file) for every model, instead of "
                             "the checkpoint's, or of the family's default when it has none "
                             "(default: those)")
    add_device_map_arguments(parser)


def _max_new_tokens(text: str) -> int:
    """``--max-new-tokens``: a whole number from 1 to the cap (no hour-long generation)."""
    try:
        return check_max_new_tokens(int(text))
    except InputError as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix("--max-new-tokens ")) from exc


def _names(specs: list[str] | None) -> tuple[str, ...]:
    """Repeated or comma-separated names, each once; none: every registered one (the plan's)."""
    names = [n.strip() for spec in specs or [] for n in spec.split(",") if n.strip()]
    return tuple(dict.fromkeys(names))


def run_spec(args: argparse.Namespace) -> RunSpec:
    """The run's settings, read once from the parsed arguments (and checked as they are)."""
    return RunSpec(
        selection=Selection(models=tuple(args.models or ()), dataset=args.dataset,
                            data_root=args.data_root, methods=_names(args.methods),
                            metrics=_names(args.metrics), options=tuple(args.options)),
        generation=Generation(args.max_new_tokens, args.min_new_tokens, args.dtype),
        batch_size=args.batch, seed=args.seed, bootstrap=args.bootstrap, limit=args.limit,
        retry=not args.no_retry, keep_going=args.keep_going, device=args.device,
        trust_remote_code=args.trust_remote_code, out=args.out, protocol=args.protocol,
        save_maps=args.save_maps, device_map=args.device_map, max_memory=args.max_memory)


def default_benchmark() -> type[Dataset]:
    """The registered dataset class that declares itself the bundled benchmark."""
    found = [cls for cls in manager().items("datasets").values()
             if getattr(cls, "default_benchmark", False)]
    if not found:
        raise MMXAIError("no bundled benchmark: no registered dataset sets "
                         "default_benchmark = True; pass --model and --dataset")
    return found[0]


@dataclass
class Plan:
    """What a run evaluates: its spec and the objects built from it, checked before any
    model loads (worker processes build it again from the same spec)."""

    spec: RunSpec
    dataset: Dataset
    methods: list[Method]
    metrics: list[NamedMetric]
    models: list[str]  # the --model specs
    labels: list[str]  # how each is keyed in the store
    device: torch.device
    chat_template: str | None = None  # --chat-template's text
    given_labels: tuple[tuple[int, str], ...] = ()  # --label, as build_plan takes them
    #: Where the models opened say their load notes: the reporter of shard 0's evaluator.
    _notes: Reporter = field(default_factory=Reporter, repr=False, compare=False)

    def evaluator(self, store: ResultStore | None, shard: Shard | None = None,
                  reporter: Reporter | None = None) -> Evaluator:
        """The evaluator of ``shard``; when it is the first (or the only) shard, the models
        this plan opens next say what loading filled in through ``reporter``: every shard
        loads the same files, one says so (a worker's reporter sends it to the parent)."""
        if store is not None and reporter is not None and (shard is None or shard.index == 0):
            self._notes = reporter
        return Evaluator(self.dataset, self.methods, self.metrics, store, self.spec,
                         shard=shard, reporter=reporter)

    def open(self, model: str) -> Model:
        """The model ``model`` names, checked to run (:func:`open_model`)."""
        return open_model(model, self.device, parse_dtype(self.spec.generation.dtype),
                          self.spec.trust_remote_code, chat_template=self.chat_template,
                          say=lambda text: self._notes.note(f"note: {text}"),
                          **self.spec.placement())


def make_plan(args: argparse.Namespace) -> Plan:
    """Check everything the user typed and build the datasets, methods and metrics."""
    return build_plan(run_spec(args), chat_template_option(args.chat_template),
                      tuple(args.labels))


def build_plan(spec: RunSpec, chat_template: str | None = None,
               labels: Sequence[tuple[int, str]] = ()) -> Plan:
    """The plan of ``spec``: what it names, built (in the parent and in each worker), its
    models opened with ``chat_template`` (the text of ``--chat-template``) if given and
    named as ``labels`` (``--label``, :func:`model_labels`) say."""
    protocols.require(spec.protocol)  # its libraries and data, before anything loads
    chosen = spec.selection
    dataset_cls = (manager().get("datasets", chosen.dataset) if chosen.dataset
                   else default_benchmark())
    models = list(chosen.models)
    bundled = not models
    if bundled:
        default = getattr(dataset_cls, "default_model", None)
        if not default:
            raise MMXAIError(f"dataset {dataset_cls.name!r} has no default_model; pass --model")
        if Path(str(default)).is_absolute() and not Path(str(default)).exists():
            raise MMXAIError(f"dataset {dataset_cls.name!r} names default_model {default}, "
                             "which does not exist; pass --model")
        models = [str(default)]
    methods = default_methods(chosen.methods)
    metrics = list(chosen.metrics) or manager().names("metrics")
    given = parse_options(list(chosen.options), [*methods, *metrics, dataset_cls.name])
    options = {name: {**dataset_cls.default_options.get(name, {}), **given.get(name, {})}
               for name in {*given, *dataset_cls.default_options}}
    dataset = dataset_cls(root=chosen.data_root, **options.get(dataset_cls.name, {}))
    method_objs = [make_method(name, **options.get(name, {})) for name in methods]
    metric_objs = [NamedMetric.make(manager().get("metrics", name), options.get(name),
                                    spec.protocol) for name in metrics]
    return Plan(spec, dataset, method_objs, metric_objs, models,
                model_labels(models, labels, bundled), resolve_device(spec.device),
                chat_template, tuple(labels))


def _count(value: str | None, option: str) -> int | None:
    """``--workers``/``--threads``: a whole number >= 1, or None for auto."""
    if value is None or value == "auto":
        return None
    if not value.isdigit() or int(value) < 1:
        raise InputError(f"{option} {value!r}: expected auto or a whole number >= 1")
    return int(value)


def run(args: argparse.Namespace) -> int:
    console = Console(soft_wrap=True)
    # Everything the user typed is checked before the (slow) model loads.
    plan = make_plan(args)
    spec = plan.spec
    workers_given, threads = _count(args.workers, "--workers"), _count(args.threads, "--threads")
    sharded = args.shard is not None or Shard.from_env().count > 1
    if args.workers is not None and sharded:
        raise InputError("--workers and --shard (or RANK/WORLD_SIZE) exclude each other: "
                         "a shard is one worker; run --shard i/n per process instead")
    shard = Shard.parse(args.shard) if args.shard else Shard.from_env()
    check_workers(spec.device_map, workers_given)  # the map itself: RunSpec checked it
    check_out(spec.out)
    if spec.save_maps is not None:
        check_out(spec.save_maps, "--save-maps")
    samples = len(plan.evaluator(None, reporter=Reporter()).samples())
    if workers_given is not None:
        count = workers_given
    elif sharded or spec.device_map is not None:  # one process holds a split model
        count = 1
    else:
        count = workers.auto_workers(plan.models, plan.device, samples, spec.out)
    count = max(1, min(count, samples))  # a worker without samples would only load the model
    stored = workers.stored_layout(spec.out)
    if not sharded and stored is not None and stored != count:
        # Each worker layout keeps its own stores: say so rather than recompute in silence.
        console.print(f"[yellow]note:[/] {escape(str(spec.out))} holds the stores of a run with "
                      f"{stored} worker(s); this run uses {count} and computes their samples "
                      f"again (the leaderboard counts each once): --workers {stored} resumes "
                      "them instead", soft_wrap=True)
    if threads is None:
        threads = workers.auto_threads(count, workers.is_small(plan.models))
    if threads is not None:
        torch.set_num_threads(threads)
    reporter = ConsoleReporter(Console(stderr=True), bars=not args.no_progress)
    if count > 1:
        stores = _run_workers(plan, count, threads or 1, samples, reporter, console)
    else:
        stores = [_run_here(plan, shard, reporter, console)]
        if shard.count > 1:
            console.print(f"shard {shard.label} stored in {stores[0]}; when every shard is "
                          f"done: mmxai leaderboard {spec.out}")
            return 0
    board = leaderboard(stores, n_boot=spec.bootstrap, seed=spec.seed)
    print_table(board, console)
    paths = write_all(board, spec.out)
    console.print(f"wrote {', '.join(p.name for p in paths)} to {spec.out}")
    return 0


def _run_here(plan: Plan, shard: Shard, reporter: Reporter, console: Console) -> Path:
    """Every model in this process; the store's path."""
    store_path = plan.spec.out / shard.store_name()
    with ResultStore(store_path) as store:
        evaluator = plan.evaluator(store, shard, reporter)
        for spec, label in zip(plan.models, plan.labels, strict=True):
            with console.status(f"loading {spec}"):
                model = plan.open(spec)
            summary = evaluator.run(model, label)
            console.print(_summary_line(summary, shard))
            del model
    return store_path


def _run_workers(plan: Plan, count: int, threads: int, samples: int, reporter: Reporter,
                 console: Console) -> list[Path]:
    """``count`` worker processes; the stores to merge. Raises if a worker failed."""
    given = {"chat_template": plan.chat_template, "labels": plan.given_labels}
    given = {name: value for name, value in given.items() if value}
    build = partial(build_plan, **given) if given else build_plan  # pickles by value
    outcome = workers.run_workers(build, plan, count, threads, samples, reporter)
    for summary in outcome.summaries:
        if summary is not None:
            console.print(_summary_line(summary, Shard()) + f" ({count} workers)")
    if outcome.same_cause is not None:  # e.g. a refused resumption: one line, not one a worker
        raise MMXAIError(outcome.same_cause)
    if outcome.crashed:
        for line in outcome.crashed:
            error(line)
        raise MMXAIError(f"{len(outcome.crashed)} of {count} workers failed; what the others "
                         f"stored is kept in {plan.spec.out}: rerun the same command to "
                         "complete the run")
    return outcome.stores


def _summary_line(summary: Summary, shard: Shard) -> str:
    where = f" (shard {shard.label})" if shard.count > 1 else ""
    retried = f", {summary.retried} retried" if summary.retried else ""
    return (f"{summary.model}{where}: {summary.samples} samples, {summary.evaluated} "
            f"evaluated now, {summary.resumed} already stored, "
            f"{len(summary.failed_samples)} failed ({len(summary.failures)} results){retried}")
