"""``mmxai leaderboard RESULTS...``: rank methods from stored results, without recomputing.

RESULTS are ``*.sqlite`` stores or folders holding them (every shard of a run, runs on other
machines, resumed runs): they merge by their unique keys, so a sample is never counted
twice (the newest attempt of a retried failure counts). Stores are opened read-only: a
path that is missing, empty, not SQLite, not an mmxai store, or a folder without stores is
refused in one line, and nothing is ever written into it. Prints the table and writes
``leaderboard.{md,tex,csv,json}`` and ``references.bib`` into ``--out``; the citations come
from what the runs stored, so a plugin need not be installed here to be cited.

How models are named (here and in ``mmxai compare``): a local folder by its name, never a
path (:func:`model_label`), or as ``--label MODEL=LABEL`` says (:func:`model_labels`; here
it renames a stored model in the tables, the stores are left as they are).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Console

from mmxai.errors import InputError, MMXAIError
from mmxai.evaluation import build, load_rows, print_table, write_all
from mmxai.evaluation.store import Row


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("results", nargs="+", type=Path, metavar="RESULTS",
                        help="results store(s) (*.sqlite) or folder(s) holding them")
    parser.add_argument("--out", type=Path, metavar="DIR",
                        help="where to write the files (default: the first RESULTS folder, "
                             "or the folder of the first store)")
    parser.add_argument("--bootstrap", type=int, default=1000, metavar="B",
                        help="bootstrap resamples for the intervals and tests (default 1000)")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the bootstrap (default: 0)")
    parser.add_argument("--label", dest="labels", action="append", default=[],
                        metavar="MODEL=LABEL",
                        help="show stored model MODEL as LABEL in the tables (repeatable; "
                             "default: the names the results are stored under)")


class LabelAction(argparse.Action):
    """``--label``: kept with the number of ``--model`` options read before it, so that a
    plain LABEL names the model just before it."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Any, option_string: str | None = None) -> None:
        given = [*getattr(namespace, self.dest), (len(namespace.models or ()), values)]
        setattr(namespace, self.dest, given)


def model_label(spec: str) -> str:
    """How a model is named in the store and tables by default: a local folder by its name
    (never this machine's path), anything else as given."""
    folder = Path(spec).expanduser()  # "~/m" is the folder hub.resolve loads
    if not folder.is_dir():
        return spec
    return folder.resolve().name or os.path.normpath(spec)


def model_labels(models: Sequence[str], given: Sequence[tuple[int, str]],
                 bundled: bool = False, stored: bool = False) -> list[str]:
    """Each model's label: :func:`model_label` (``stored``: the name the results hold), or
    the ``--label`` given for it as ``(models read before it, MODEL=LABEL or LABEL)``.
    MODEL is a ``--model`` as given, its folder or its default label (``stored``: a stored
    name, and LABEL alone is refused). Refused in one line: a label for no model or for
    one already labelled, an empty label, and two models under one label."""
    labels = list(models) if stored else [model_label(m) for m in models]
    names = [{m} if stored else {m, os.path.normpath(m), label}
             for m, label in zip(models, labels, strict=True)]
    defaults, labelled = list(labels), {}
    for before, text in given:
        index, label = _labelled(text, names)
        if index is None:
            if "=" in text or stored:
                raise InputError(f"--label {text!r}: expected MODEL=LABEL with MODEL one of "
                                 f"{', '.join(map(repr, defaults))}")
            if before == 0 and not bundled:
                raise InputError(f"--label {text!r}: no --model before it; give --label "
                                 "MODEL=LABEL")
            index, label = max(0, before - 1), text
        if not label.strip():
            raise InputError(f"--label {text!r}: the label is empty")
        if index in labelled:
            raise InputError(f"--label {text!r}: model {models[index]!r} already has "
                             f"--label {labelled[index]!r}")
        labelled[index], labels[index] = text, label.strip()
    for i, label in enumerate(labels):
        if label in labels[:i]:
            raise InputError(f"models {models[labels.index(label)]!r} and {models[i]!r} would "
                             f"both be labelled {label!r}: give one of them another --label")
    return labels


def _labelled(text: str, names: list[set[str]]) -> tuple[int | None, str]:
    """(index of the model MODEL names, LABEL) for ``MODEL=LABEL``, else (None, '')."""
    for at in (i for i, ch in enumerate(text) if ch == "="):
        found = [i for i, known in enumerate(names) if text[:at] in known]
        if found:
            return found[0], text[at + 1:]
    return None, ""


def check_out(path: Path, option: str = "--out") -> None:
    """Refuse, in one line, an output folder that is a file or cannot be created or written
    (checked before any work; nothing is created here)."""
    if path.exists() or path.is_symlink():
        if not path.is_dir():
            what = "a file" if path.is_file() else "not a folder"
            raise MMXAIError(f"{option} {str(path)!r}: is {what}, expected a folder")
        if not os.access(path, os.W_OK | os.X_OK):
            raise MMXAIError(f"{option} {str(path)!r}: the folder is not writable")
        return
    parent = path.absolute().parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise MMXAIError(f"{option} {str(path)!r}: cannot be created, {str(parent)!r} is a "
                         "file")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise MMXAIError(f"{option} {str(path)!r}: cannot be created, {str(parent)!r} is not "
                         "writable")


def relabel(rows: list[Row], records: list[dict[str, Any]], given: Sequence[str]
            ) -> tuple[list[Row], list[dict[str, Any]]]:
    """``rows`` with each stored model MODEL renamed LABEL (``given``: ``MODEL=LABEL``), and
    the provenance records of a renamed model marked with its ``label``."""
    stored = sorted({row.key.model for row in rows})
    labels = model_labels(stored, [(len(stored), text) for text in given], stored=True)
    renamed = {model: label for model, label in zip(stored, labels, strict=True)
               if model != label}
    if not renamed:
        return rows, records
    rows = [dataclasses.replace(row, key=dataclasses.replace(
        row.key, model=renamed.get(row.key.model, row.key.model))) for row in rows]
    records = [{**r, "label": renamed[r["model"]]} if r.get("model") in renamed else r
               for r in records]
    return rows, records


def run(args: argparse.Namespace) -> int:
    first = args.results[0]
    out = args.out or (first if first.is_dir() else first.parent)
    rows, provenance = load_rows(args.results)  # the inputs first: read-only
    rows, provenance = relabel(rows, provenance, args.labels)
    check_out(out)
    board = build(rows, provenance, n_boot=args.bootstrap, seed=args.seed)
    console = Console()
    print_table(board, console)
    paths = write_all(board, out)
    console.print(f"wrote {', '.join(p.name for p in paths)} to {out}")
    return 0
