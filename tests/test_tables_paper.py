"""The leaderboard files as a paper takes them: LaTeX that compiles in a two-column article
with no overfull box, readable headers with units, significant digits, \\cite keys matching
references.bib, citations kept with the results, model labels, the small-N note and a
terminal table that never cuts a name."""

from __future__ import annotations

import dataclasses
import io
import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console

from mmxai import cli
from mmxai.citations import BIBTEX, entries
from mmxai.commands import compare
from mmxai.commands.compare import add_arguments, default_benchmark
from mmxai.commands.leaderboard import model_label, model_labels
from mmxai.errors import InputError
from mmxai.evaluation import NamedMetric
from mmxai.evaluation.latex import _number, latex
from mmxai.evaluation.latex import significant_decimals as _decimals
from mmxai.evaluation.leaderboard import build, references
from mmxai.evaluation.store import ResultStore, Row, RunKey
from mmxai.evaluation.tables import bibtex, markdown, print_table, write_all
from mmxai.registry import manager

PDFLATEX = shutil.which("pdflatex")
needs_tex = pytest.mark.skipif(PDFLATEX is None, reason="pdflatex is not installed")

#: Typical magnitudes of the cost metrics (seconds per token, MiB); the others: about 0.5.
COST = {"seconds-per-token": 2e-4, "peak-memory": 0.3}


def default_labels() -> list[str]:
    """The metric columns of the default run: every registered metric, with the options
    the bundled benchmark sets."""
    options = default_benchmark().default_options
    return [NamedMetric.make(cls, options.get(name)).label
            for name, cls in manager().items("metrics").items()]


def board_rows(n: int = 8, model: str = "testbed", dataset: str = "synthetic",
               methods: list[str] | None = None, labels: list[str] | None = None,
               seed: int = 0) -> list[Row]:
    """``n`` samples of every method x metric, values of each category's magnitude."""
    rng = np.random.default_rng(seed)
    rows = []
    for method in methods or manager().names("methods"):
        for label in labels or default_labels():
            name = label.split("[")[0]
            scale = COST.get(name, 0.5)
            for i in range(n):
                value = float(rng.uniform(0, 2 * scale))
                parts = ({"obj": [value], "func": [float(rng.uniform(0, 1))]}
                         if name == "f1-iou" else {"value": [value]})
                rows.append(Row.ok(RunKey(model, dataset, method, "o"), f"s{i:03d}", label,
                                   parts))
    return rows


def compile_tex(folder: Path, tex: str, bib: str | None = None) -> str:
    """Compile ``tex`` inside a two-column article (with ``bib`` through BibTeX when
    given); the log."""
    (folder / "leaderboard.tex").write_text(tex, encoding="utf-8")
    document = [r"\documentclass[twocolumn]{article}", r"\usepackage{booktabs,graphicx}",
                r"\begin{document}", "Text.", r"\input{leaderboard.tex}"]
    if bib is not None:
        (folder / "references.bib").write_text(bib, encoding="utf-8")
        document += [r"\bibliographystyle{plain}", r"\bibliography{references}"]
    (folder / "doc.tex").write_text("\n".join([*document, r"\end{document}"]) + "\n")
    runs = [[PDFLATEX, "-interaction=nonstopmode", "-halt-on-error", "doc.tex"]]
    if bib is not None:
        runs += [["bibtex", "doc"], runs[0], runs[0]]
    for command in runs:
        done = subprocess.run(command, cwd=folder, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stdout[-3000:]
    return (folder / "doc.log").read_text(errors="replace")


# -- LaTeX that compiles -----------------------------------------------------------------------
@needs_tex
def test_the_default_runs_tex_compiles_in_two_columns_with_no_overfull_box(tmp_path):
    board = build(board_rows(), [], n_boot=200)
    assert {m.category for m in board.metrics} >= {"localisation", "faithfulness", "sanity",
                                                     "cost"}
    paths = write_all(board, tmp_path / "out")
    tex, bib = (p.read_text() for p in paths if p.suffix in (".tex", ".bib"))
    log = compile_tex(tmp_path, tex, bib)
    assert "Overfull \\hbox" not in log
    assert "undefined" not in log.lower(), "a \\cite key is not in references.bib"
    assert len(re.findall(r"\\begin\{table\*?\}", tex)) == 4  # one per category


@needs_tex
def test_hostile_names_many_rows_and_two_option_sets_still_fit(tmp_path):
    methods = [f"method_{i}#&%$" for i in range(3)] + ["tam", "logit-lens"]
    labels = [*default_labels(), "deletion[max_tokens=3,steps=16]"]
    rows = [*board_rows(40, "Qwen/Qwen2-VL-2B-Instruct & co_model", "my_data%set", methods,
                        labels),
            *board_rows(40, "llava-hf/llava-1.5-7b-hf", "my_data%set", methods, labels, 1)]
    rows.append(Row.failed(rows[0].key, "s999", rows[0].metric, "boom"))
    key = rows[0].key
    rows += [Row.ok(key, "s000", "toy_%", {"value": [0.5]}),  # another plugin's category
             Row.failed(dataclasses.replace(key, method="tam"), "s000", "toy_%", "boom"),
             Row.ok(dataclasses.replace(key, method="logit-lens"), "s000", "toy_%",
                    {"other": [1.0]})]  # nothing to measure: NaN
    records = [{"metrics": {"toy_%": {"category": "my & cat_1", "higher_is_better": False}}}]
    board = build(rows, records, n_boot=100)
    tex = latex(board)
    assert "Deletion (a) $\\downarrow$" in tex and "Deletion (b) $\\downarrow$" in tex
    assert "Model &" in tex and "Failed" in tex  # two models: a column; a failure: a column
    assert r"My \& cat\_1 on my\_data\%set" in tex and "tab:mmxai-my---cat-1" in tex
    assert "n/a: evaluated" in tex and "failed: every sample" in tex
    log = compile_tex(tmp_path, tex)
    assert "Overfull \\hbox" not in log


# -- what the tables say -----------------------------------------------------------------------
def test_headers_are_readable_with_units_and_settings_in_the_caption():
    board = build(board_rows(), [], n_boot=100)
    tex = latex(board)
    head = [line for line in tex.splitlines() if line.startswith("Method &")]
    assert len(head) == 4
    assert not any("[" in line or "max\\_tokens" in line for line in head)  # no raw options
    assert "Deletion $\\downarrow$" in head[1] and "Insertion $\\uparrow$" in head[1]
    assert re.search(r"Time \((ms|\$\\mu\$s)/token\) \$\\downarrow\$", head[3]), head[3]
    assert re.search(r"Memory \((KiB|MiB)\) \$\\downarrow\$", head[3]), head[3]
    assert "Deletion: max\\_tokens=2, steps=4." in tex
    assert "N = 8 samples" in tex and "95\\% percentile bootstrap interval" in tex
    assert "paired permutation test" in tex and "(200 resamples" not in tex


def test_every_value_has_three_significant_digits_and_its_interval_the_same_decimals():
    assert (_decimals(0.000438), _decimals(0.412), _decimals(153.2), _decimals(0.0)) == (
        6, 3, 0, 0)
    assert _number(-0.04781, 4) == "$-$0.0478" and _number(-0.00001, 3) == "0.000"
    board = build(board_rows(), [], n_boot=100)
    cells = re.findall(r"(?:\\textbf\{)?([0-9.]+)\}?(?:\$\^\{\*\}\$)? \{\\scriptsize "
                       r"\[([^,]+), ([^\]]+)\]\}", latex(board))
    assert len(cells) == len(board.rows) * len(board.metrics)
    for value, low, high in cells:
        digits = value.replace(".", "").lstrip("0")
        assert float(value) == 0 or len(digits) == 3, value
        decimals = len(value.split(".")[1]) if "." in value else 0
        for end in (low, high):
            end = end.replace("$-$", "-")
            assert (len(end.split(".")[1]) if "." in end else 0) == decimals, (value, end)


def test_every_method_is_cited_with_the_keys_of_references_bib():
    board = build(board_rows(), [], n_boot=50)
    tex, bib = latex(board), bibtex(board)
    keys = list(entries(bib))
    assert len(keys) == len(set(keys)) and "mmxai" in keys
    cited = {k for group in re.findall(r"\\cite\{([^}]*)\}", tex) for k in group.split(",")}
    assert cited <= set(keys)
    for method in manager().names("methods"):
        own = list(entries(manager().get("methods", method).citation or ""))
        row = next(line for line in tex.splitlines() if line.startswith(method + "~")
                   or line.startswith(method + " &"))
        assert all(key in row for key in own), (method, row)


def test_small_n_is_said_under_every_table_and_not_from_30_on():
    small, large = (build(board_rows(n, labels=["obj-iou"]), [], n_boot=50) for n in (8, 30))
    out = io.StringIO()
    print_table(small, Console(file=out, width=100))
    for text in (markdown(small), latex(small), out.getvalue()):
        assert "not evidence" in text and "30" in text
    out = io.StringIO()
    print_table(large, Console(file=out, width=100))
    for text in (markdown(large), latex(large), out.getvalue()):
        assert "not evidence" not in text


@pytest.mark.parametrize("width", [80, 50])
def test_the_terminal_table_never_cuts_a_name(width):
    board = build(board_rows(labels=default_labels()), [], n_boot=50)
    out = io.StringIO()
    print_table(board, Console(file=out, width=width))
    text = out.getvalue()
    assert max(len(line) for line in text.splitlines()) <= width
    table_words = {w for line in text.splitlines() if line[:1] in "┃│"
                   for w in re.split(r"[┃│\s]+", line) if w}
    for info in board.metrics:
        assert info.name in table_words, info.name  # whole, never folded
    for method in manager().names("methods"):
        assert method in table_words
    assert "deletion: max_tokens=2, steps=4" in text


# -- citations kept with the results -------------------------------------------------------------
GHOST = "@misc{ghost2031,\n  title = {A Method No Longer Installed},\n  year = {2031}\n}"
OTHER_TAM = "@misc{li2025tam,\n  title = {TAM, as a plugin wrote it}\n}"


def ghost_records() -> list[dict]:
    plugin = {"distribution": "ghost-plugin", "version": "0.3"}
    return [{"model": "testbed", "method": "ghost", "mmxai": "0.1.0", "plugins": {
        "method": {"name": "ghost", **plugin, "citation": GHOST + "\n\n" + OTHER_TAM},
        "dataset": {"name": "synthetic", **plugin, "citation": ""},
        "metrics": {"obj-iou": {"name": "obj-iou", **plugin, "citation": ""}}}}]


def test_a_store_keeps_the_citation_of_an_uninstalled_plugin_and_one_entry_per_key():
    rows = board_rows(methods=["ghost", "nobody", "tam"], labels=["obj-iou"])
    board = build(rows, ghost_records(), n_boot=50)
    bib, tex = bibtex(board), latex(board)
    found = entries(bib)
    assert "ghost2031" in found and r"ghost~\cite{ghost2031,li2025tam}" in tex
    assert found["li2025tam"] == BIBTEX["li2025tam"]  # mmxai's own, whatever the order
    assert bib.count("{li2025tam,") == 1
    assert "% method 'nobody': not cited" in bib  # said, not silently dropped
    assert any("li2025tam" in note and "2 versions" in note
               for note in references(board).notes)
    out = io.StringIO()
    print_table(board, Console(file=out, width=120))
    assert "nobody" in out.getvalue() and "not cited" in out.getvalue()


# -- labels --------------------------------------------------------------------------------------
def parse(*argv: str):
    import argparse

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(argv)


def test_labels_name_models_and_never_a_local_path(tmp_path):
    folder = tmp_path / "checkpoints" / "my-ckpt"
    folder.mkdir(parents=True)
    assert model_label(str(folder)) == "my-ckpt" and model_label("tiny:llava") == "tiny:llava"
    assert model_label(str(folder) + "/") == "my-ckpt"
    args = parse("--model", str(folder), "--label", "Mine", "--model", "tiny:llava",
                 "--label", "tiny:llava=Tiny")
    assert model_labels(args.models, args.labels) == ["Mine", "Tiny"]
    args = parse("--model", "tiny:llava", "--model", str(folder), "--label", "my-ckpt=C")
    assert model_labels(args.models, args.labels) == ["tiny:llava", "C"]
    assert model_labels(["/x/testbed"], parse("--label", "TB").labels, bundled=True) == ["TB"]
    for argv, phrase in [(("--label", "L", "--model", "tiny:llava"), "no --model before it"),
                         (("--model", "tiny:llava", "--label", "nope=L"), "MODEL one of"),
                         (("--model", "tiny:llava", "--label", " "), "empty"),
                         (("--model", "tiny:llava", "--label", "A", "--label", "B"),
                          "already has --label"),
                         (("--model", "tiny:llava", "--model", "tiny:qwen2-vl", "--label",
                           "tiny:llava"), "both be labelled")]:
        args = parse(*argv)
        with pytest.raises(InputError, match=phrase):
            model_labels(args.models, args.labels)


def test_the_leaderboard_command_renames_a_stored_model(tmp_path, capsys):
    with ResultStore(tmp_path / "r.sqlite") as store:
        store.write(board_rows(model="/home/me/models/ckpt", labels=["obj-iou"],
                               methods=["tam"]))
    out = tmp_path / "board"
    code = cli.main(["leaderboard", str(tmp_path / "r.sqlite"), "--out", str(out),
                     "--bootstrap", "20", "--label", "/home/me/models/ckpt=Ours"])
    assert code == 0, capsys.readouterr().err
    for name in ("leaderboard.tex", "leaderboard.md", "leaderboard.csv"):
        text = (out / name).read_text()
        assert "Ours" in text and "/home/me" not in text, name
    code = cli.main(["leaderboard", str(tmp_path / "r.sqlite"), "--out", str(out),
                     "--label", "ckpt=Ours"])
    err = capsys.readouterr().err
    assert code == 2 and "--label 'ckpt=Ours'" in err and len(err.strip().splitlines()) == 1


def test_compare_labels_a_local_folder_and_stores_the_provenance(tiny_dir, tmp_path, capsys):
    folder = tiny_dir("llava")
    out = tmp_path / "out"
    argv = ["compare", "--model", str(folder), "--dataset", "synthetic", "--limit", "2",
            "--method", "random", "--metric", "seconds-per-token", "--max-new-tokens", "2",
            "--min-new-tokens", "2", "--bootstrap", "20", "--workers", "1", "--no-progress",
            "--out", str(out)]
    code = cli.main(argv)
    assert code == 0, capsys.readouterr().err
    for name in ("leaderboard.tex", "leaderboard.md", "leaderboard.csv"):
        text = (out / name).read_text()
        assert folder.name in text and str(folder) not in text, name
    board = json.loads((out / "leaderboard.json").read_text())
    record = board["provenance"][0]
    assert record["command"] == shlex.join(sys.argv)  # this process's: pytest's here
    if (Path(compare.__file__).parents[2] / ".git").exists():
        assert re.fullmatch("[0-9a-f]{40}", record["git"]["commit"])
    assert record["samples"]["count"] == 2 and len(record["samples"]["sha256"]) == 64
    assert record["protocol"] == "default" and len(record["processor_sha256"]) == 64
    assert record["chat_template"] is None or record["chat_template"].startswith("sha256:")
    assert record["dataset_options"] is not None
    plugins = record["plugins"]
    assert plugins["method"]["distribution"] == "mmxai"
    assert plugins["method"]["citation"] == manager().get("methods", "random").citation
    assert plugins["metrics"]["seconds-per-token"]["version"]
    assert board["samples"]["synthetic"]["count"] == 2
    assert board["rows"][0]["samples_sha256"] == board["samples"]["synthetic"]["sha256"]
    code = cli.main([*argv, "--label", "Tiny"])
    assert code == 0, capsys.readouterr().err
    assert {r["model"] for r in json.loads((out / "leaderboard.json").read_text())["rows"]} \
        == {folder.name, "Tiny"}
