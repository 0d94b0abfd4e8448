"""``mmxai score``: score maps made elsewhere with the localisation metrics, as ``compare`` does.

``--maps DIR`` holds one ``<sample_id>.npz`` per sample in the format of
:mod:`mmxai.saved_maps` (what ``mmxai compare --save-maps`` and ``mmxai explain
--save-maps`` write; the TAM reference's, EAGLE's or one's own maps converted to it). Each
sample of ``--dataset`` gets its words from the file's tokens (:func:`mmxai.words.
words_from_tokens` with the protocol's word options) and its mask from the dataset, and the
five localisation metrics of ``--protocol`` (:mod:`mmxai.protocols`) score its maps, under
the same column labels as ``compare``'s. The results go to ``--out/results.sqlite`` under
the run key (``--model-label``, dataset, ``--label``, a hash of the protocol, the metrics'
versions, the dataset's options and the maps files' contents), then the leaderboard files
are written there, exactly as ``compare`` writes them.

A sample without a maps file, with two, with a refused file (:func:`mmxai.saved_maps.
load_maps`), or whose image or mask cannot be read, fails: one line each, counted, the run
goes on. Files naming no sample are listed in one line, not scored; a folder none of whose
files names a selected sample is refused.

Reruns: ``--out`` keeps every run scored into it (several ``--label``\\ s make one table). A
rerun of the same label with the same inputs scores only the samples not stored yet (a
larger ``--limit``); nothing is counted twice. A rerun of a label stored from other inputs
(other maps files, another protocol, other metric versions or dataset options) is refused,
naming what differs, as is one whose dataset files changed: write to a new ``--out``.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import os
import platform
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console

import mmxai
from mmxai import protocols
from mmxai.commands.common import parse_options
from mmxai.commands.leaderboard import check_out
from mmxai.dataset import Dataset, Sample, load_image, load_mask
from mmxai.errors import InputError, MMXAIError
from mmxai.evaluation import (
    ConsoleReporter,
    NamedMetric,
    Reporter,
    ResultStore,
    Row,
    RunKey,
    Summary,
    leaderboard,
    print_table,
    provenance,
    write_all,
)
from mmxai.evaluation.evaluator import failure_causes, metric_row
from mmxai.evaluation.jobs import cause, prefixed
from mmxai.evaluation.report import few
from mmxai.metric import EvalItem
from mmxai.model import ImageGrid
from mmxai.protocols import Protocol
from mmxai.registry import manager
from mmxai.saved_maps import SUFFIX, load_maps, maps_path, sample_id_of
from mmxai.words import words_from_tokens

STORE = "results.sqlite"
SOURCE = "saved maps"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", required=True,
                        help="registered dataset name (see `mmxai plugins`)")
    parser.add_argument("--data-root", type=Path, metavar="DIR", help="its folder (default: own)")
    parser.add_argument("--maps", type=Path, required=True, metavar="DIR",
                        help="folder of <sample_id>.npz maps files (format: mmxai.saved_maps)")
    parser.add_argument("--protocol", required=True, metavar="NAME",
                        help=f"evaluation protocol, required: {', '.join(protocols.PROTOCOLS)}")
    parser.add_argument("--label", metavar="NAME",
                        help="the maps' source, the table's method column (default: the "
                             "--maps folder's name)")
    parser.add_argument("--model-label", default="maps", metavar="NAME",
                        help="the table's model column (default: maps)")
    parser.add_argument("--out", type=Path, default=Path("mmxai-score"), metavar="DIR",
                        help="results folder (default: mmxai-score)")
    parser.add_argument("--option", dest="options", action="append", default=[],
                        metavar="DATASET.KEY=VALUE",
                        help="an option of the dataset, e.g. synthetic.limit=10 (repeatable)")
    parser.add_argument("--limit", type=int, metavar="N", help="the first N samples (default all)")
    parser.add_argument("--bootstrap", type=int, default=1000, metavar="B",
                        help="bootstrap resamples for the intervals and tests (default 1000)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the bootstrap (default 0)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


@dataclass(frozen=True)
class ScoreSpec:
    """A score run's settings, checked once (``label`` defaults to the maps folder's name)."""

    dataset: str
    maps: Path
    protocol: str
    data_root: Path | None = None
    label: str | None = None
    model_label: str = "maps"
    out: Path = Path("mmxai-score")
    options: tuple[str, ...] = ()
    limit: int | None = None
    bootstrap: int = 1000
    seed: int = 0
    progress: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "protocol", protocols.get(self.protocol).name)
        if self.label is None:
            name = self.maps.absolute().resolve().name
            if not name:
                raise InputError(f"--maps {str(self.maps)!r}: the folder has no name to label "
                                 "its results with; pass --label")
            object.__setattr__(self, "label", name)
        for option, value in (("--label", self.label), ("--model-label", self.model_label)):
            if not str(value).strip():
                raise InputError(f"{option} {value!r}: expected a non-empty name")
        for option, value, least in (("--limit", self.limit, 1), ("--bootstrap",
                                      self.bootstrap, 0), ("--seed", self.seed, 0)):
            if value is not None and value < least:
                raise InputError(f"{option} {value}: expected a whole number >= {least}")

    def to_dict(self) -> dict[str, Any]:
        return provenance.jsonable(dataclasses.asdict(self))


@dataclass(frozen=True)
class SavedTrace:
    """What the localisation metrics read of a trace, from a maps file: the grids (and the
    tokens, for whoever asks how many were generated)."""

    grids: list[ImageGrid]
    tokens: list[str] = field(default_factory=list)

    @property
    def n_generated(self) -> int:
        return len(self.tokens)


def run(args: argparse.Namespace) -> int:
    protocol = protocols.require(args.protocol)  # a missing NLTK or OpenCV: one line, first
    spec = ScoreSpec(args.dataset, args.maps, protocol.name, args.data_root, args.label,
                     args.model_label, args.out, tuple(args.options), args.limit,
                     args.bootstrap, args.seed, not args.no_progress)
    dataset = make_dataset(spec)
    metrics = [NamedMetric.make(manager().get("metrics", name), protocol.options_for(name),
                                protocol) for name in protocols.LOCALISATION_METRICS]
    files = index_maps(spec.maps)
    check_out(spec.out)
    samples = dataset_samples(dataset)
    chosen = samples[:spec.limit] if spec.limit is not None else samples
    check_files_match(spec.maps, files, dataset.name, chosen)
    reporter = ConsoleReporter(Console(stderr=True), bars=spec.progress)
    known = {s.id for s in samples}
    strays = [p.name for sid in sorted(files) if sid not in known for p in files[sid]]
    if strays:
        reporter.note(f"{len(strays)} maps file(s) in {spec.maps} name no sample of dataset "
                      f"{dataset.name!r} and are not scored: {few(strays)}")
    console = Console(soft_wrap=True)
    store_path = spec.out / STORE
    with ResultStore(store_path) as store:
        summary = score(spec, protocol, dataset, metrics, chosen, files, store, reporter)
    console.print(f"{summary.model}: {summary.samples} samples, {summary.evaluated} scored "
                  f"now, {summary.resumed} already stored, {len(summary.failed_samples)} "
                  f"failed ({len(summary.failures)} results)")
    board = leaderboard([store_path], n_boot=spec.bootstrap, seed=spec.seed)
    print_table(board, console)
    paths = write_all(board, spec.out)
    console.print(f"wrote {', '.join(p.name for p in paths)} to {spec.out}")
    return 0


def make_dataset(spec: ScoreSpec) -> Dataset:
    """The dataset ``spec`` names, with its default options and ``--option``\\ s."""
    dataset_cls = manager().get("datasets", spec.dataset)
    given = parse_options(list(spec.options), [dataset_cls.name])
    options = {**dataset_cls.default_options.get(dataset_cls.name, {}),
               **given.get(dataset_cls.name, {})}
    return dataset_cls(root=spec.data_root, **options)


def dataset_samples(dataset: Dataset) -> list[Sample]:
    """Every sample of ``dataset``; results are keyed by sample id, so ids must be unique."""
    samples, seen = [], set()
    for sample in dataset:
        if sample.id in seen:
            raise MMXAIError(f"dataset {dataset.name!r}: sample id {sample.id!r} appears twice; "
                             "results are keyed by sample id")
        seen.add(sample.id)
        samples.append(sample)
    if not samples:
        raise InputError(f"dataset {dataset.name!r}: no sample to score")
    return samples


def index_maps(folder: Path) -> dict[str, list[Path]]:
    """sample id -> the ``*.npz`` files of ``folder`` naming it (:func:`sample_id_of`); a
    folder that is missing, unreadable or holds no ``.npz`` file is refused in one line."""
    where = f"--maps {str(folder)!r}"
    if not folder.exists():
        raise InputError(f"{where}: no such folder")
    if not folder.is_dir():
        raise InputError(f"{where}: not a folder")
    try:
        entries = sorted(folder.iterdir())
    except OSError as exc:
        raise InputError(f"{where}: cannot be listed ({exc.strerror or exc})") from exc
    files: dict[str, list[Path]] = {}
    for path in entries:
        if path.name.lower().endswith(SUFFIX) and not path.is_dir():
            files.setdefault(sample_id_of(path), []).append(path)
    if not files:
        folders = [p.name for p in entries if p.is_dir()]
        hint = f"; it holds folder(s) {few(folders)}: point --maps at one" if folders else ""
        raise InputError(f"{where}: no .npz file (one <sample_id>.npz per sample){hint}")
    return files


def check_files_match(folder: Path, files: dict[str, list[Path]], dataset: str,
                      samples: Sequence[Sample]) -> None:
    """Refuse a maps folder none of whose files names one of ``samples`` (the wrong folder or
    dataset), showing a file's sample id beside the dataset's first."""
    if any(s.id in files for s in samples):
        return
    sample_id, paths = next(iter(files.items()))
    raise InputError(f"--maps {str(folder)!r}: none of its {len(files)} maps file(s) names a "
                     f"sample of dataset {dataset!r} (e.g. {paths[0].name} is sample "
                     f"{sample_id!r}; the dataset's first is {samples[0].id!r}, file "
                     f"{maps_path('.', samples[0].id).name})")


def identity(spec: ScoreSpec, protocol: Protocol, dataset: Dataset,
             metrics: Sequence[NamedMetric], files: dict[str, list[Path]]
             ) -> tuple[RunKey, dict[str, Any]]:
    """The run key and the provenance record of scoring ``files`` as ``spec`` says.

    The key's hash covers what makes other numbers of the same files: the protocol (its
    words and metric options), the metrics' versions, the dataset's options, and the maps
    files' names and contents. The record says the results were scored from saved maps,
    with the folder and its file count; its identity fields (the dataset's fingerprint
    among them) are what :func:`mmxai.evaluation.provenance.mismatch` compares.
    """
    paths = [p for group in files.values() for p in group]
    fingerprint = maps_fingerprint(paths)
    words = provenance.jsonable(dataclasses.asdict(protocol.words))
    described = {m.label: m.describe() for m in metrics}
    dataset_options = provenance.dataset_options(dataset)
    method_options = {"source": SOURCE, "protocol": protocol.name,
                      "maps_fingerprint": fingerprint}
    settings = {"method_options": method_options, "words": words, "metrics": described,
                "dataset_options": dataset_options}
    key = RunKey(spec.model_label, dataset.name, str(spec.label),
                 provenance.options_hash(settings))
    record = {
        "mmxai": mmxai.__version__,
        "python": platform.python_version(),
        "source": SOURCE,
        "protocol": protocol.name,
        "model": spec.model_label,
        "model_id": None,
        "dataset": dataset.name,
        "dataset_root": str(dataset.root) if dataset.root is not None else None,
        "dataset_fingerprint": provenance.dataset_fingerprint(dataset),
        "dataset_options": dataset_options,
        "method": spec.label,
        "method_version": None,
        "method_options": method_options,
        "words": words,
        "metrics": described,
        "maps": {"folder": str(spec.maps.absolute()), "files": len(paths),
                 "fingerprint": fingerprint},
        "score": spec.to_dict(),
    }
    return key, record


def maps_fingerprint(paths: Sequence[Path]) -> str:
    """A hash of the maps files' names and contents. A file that cannot be read (not a
    regular file, no permission, a name that is not UTF-8) counts by its name: it is a failed
    sample, not a reason to stop the run."""
    readable = [p for p in paths if p.is_file() and os.access(p, os.R_OK) and _utf8(p.name)]
    others = sorted(ascii(p.name) for p in paths if p not in readable)
    digest = hashlib.sha256(provenance.hash_files(readable).encode())
    digest.update("\0".join(others).encode())
    return "sha256:" + digest.hexdigest()


def _utf8(name: str) -> bool:
    try:
        name.encode()
    except UnicodeEncodeError:  # undecodable bytes in the file name (surrogate escapes)
        return False
    return True


def check_resumable(store: ResultStore, key: RunKey, record: dict[str, Any]) -> None:
    """Refuse a run whose label is stored from other inputs (another key of the same model,
    dataset and label) or whose key's identity changed (the dataset's files)."""
    stored = store.provenance()
    for other, previous in stored.items():
        if other != key and other.values()[:3] == key.values()[:3]:
            changed = provenance.mismatch(previous, record) or ["inputs"]
            raise MMXAIError(
                f"--out {str(store.path.parent)!r}: holds {key.model} / {key.dataset} / "
                f"{key.method} scored from other inputs ({'; '.join(changed)}); write to a "
                "new --out folder, or give another --label")
    changed = provenance.mismatch(store.add_provenance(key, record), record)
    if changed:
        raise MMXAIError(f"--out {str(store.path.parent)!r}: holds {key.model} / "
                         f"{key.dataset} / {key.method} scored with another "
                         f"{'; '.join(changed)}; write to a new --out folder")


def score(spec: ScoreSpec, protocol: Protocol, dataset: Dataset,
          metrics: Sequence[NamedMetric], samples: Sequence[Sample],
          files: dict[str, list[Path]], store: ResultStore, reporter: Reporter) -> Summary:
    """Score every sample not stored yet into ``store``; what was done."""
    key, record = identity(spec, protocol, dataset, metrics, files)
    check_resumable(store, key, record)
    done = store.done(key)
    labels = [m.label for m in metrics]
    summary = Summary(f"{key.model} / {key.method}", samples=len(samples))
    with reporter.progress(f"{key.method} · {dataset.name}", total=len(samples)):
        for sample in samples:
            if set(labels) <= done.get(sample.id, set()):
                summary.resumed += 1
            else:
                rows = score_sample(key, sample, files.get(sample.id, []), spec, protocol,
                                    metrics)
                store.write(rows)
                summary.evaluated += 1
                for error, where in failure_causes(rows).items():
                    summary.failures += [f"{w}: {error}" for w in where]
                    summary.failed_samples.add(sample.id)
                    reporter.failed(error, where)
            reporter.sample_done()
    return summary


def score_sample(key: RunKey, sample: Sample, paths: Sequence[Path],
                 spec: ScoreSpec, protocol: Protocol,
                 metrics: Sequence[NamedMetric]) -> list[Row]:
    """One sample's rows: every metric's parts, or failed rows naming the sample and cause."""
    sid = sample.id

    def failed(why: str, only: Sequence[NamedMetric] = metrics) -> list[Row]:
        return [Row.failed(key, sid, m.label, prefixed(f"sample {sid}", why)) for m in only]

    if not paths:
        try:
            return failed(f"no maps file {maps_path(spec.maps, sid).name} in {spec.maps}")
        except InputError as exc:  # an id too long for a file name
            return failed(f"no maps file in {spec.maps}: {exc}")
    if len(paths) > 1:
        return failed(f"{len(paths)} maps files name it ({', '.join(p.name for p in paths)}); "
                      "keep one")
    try:
        saved = load_maps(paths[0])
        if saved.frames is not None:  # image masks do not score a clip's temporal patches
            return failed(f"{paths[0].name} holds a video's maps (a time axis): the metrics "
                          "score maps of still images against their masks")
        image = load_image(sample)
    except Exception as exc:
        return failed(cause(exc))
    try:
        mask = load_mask(sample, image.size)
    except Exception as exc:
        mask, mask_error = None, cause(exc)
    else:
        mask_error = None
    try:
        words = words_from_tokens(saved.tokens, sample.categories, special=saved.special,
                                  word_labels=sample.word_labels, options=protocol.words)
    except Exception as exc:
        return failed(f"words of {paths[0].name}: {cause(exc)}")
    item = EvalItem(sample, None, None, SavedTrace(saved.grids, saved.tokens), saved.maps,
                    words, mask)
    if mask_error is not None:
        mask_error = prefixed(f"sample {sid}", mask_error)
    return [metric_row(key, named, item, mask_error, f"maps {saved.path.name}")
            for named in metrics]
