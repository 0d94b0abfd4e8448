"""Leaderboard statistics and files, on hand-made stored results (no model runs here)."""

from __future__ import annotations

import csv
import itertools
import json

import numpy as np
import pytest

from mmxai import cli
from mmxai.evaluation.leaderboard import build, leaderboard
from mmxai.evaluation.stats import Scorer, bootstrap_ci, paired_permutation_p
from mmxai.evaluation.store import ResultStore, Row, RunKey
from mmxai.evaluation.tables import bib_entries, bibtex, latex, markdown, tex_escape, write_all
from mmxai.metric import Metric

MEAN = Scorer(Metric().aggregate, "value")  # vectorised pooled mean
GENERIC = Scorer(Metric().aggregate)  # the same aggregate, called on every resample


def parts(values):
    return [{"value": [float(v)]} for v in values]


# -- statistics ------------------------------------------------------------------------------
def test_pooled_mean_pools_parts_not_per_sample_means():
    pooled = [{"value": [1.0, 1.0, 1.0]}, {"value": [0.0]}]
    assert MEAN.score(pooled) == GENERIC.score(pooled) == pytest.approx(0.75)


def test_vectorised_and_generic_bootstrap_agree():
    rng = np.random.default_rng(3)
    data = [{"value": list(rng.random(rng.integers(0, 4)))} for _ in range(30)]
    assert bootstrap_ci(data, MEAN, 300, seed=5) == pytest.approx(
        bootstrap_ci(data, GENERIC, 300, seed=5))


def test_vectorised_f1_iou_equals_its_aggregate_on_every_resample():
    from mmxai.plugins.metrics.localisation import F1IoU

    f1 = F1IoU()
    fast = Scorer(f1.aggregate, pooled_means=F1IoU.pooled_means, from_means=f1.from_means)
    slow = Scorer(f1.aggregate)
    rng = np.random.default_rng(4)
    data = [{"obj": list(rng.random(rng.integers(0, 3))),
             "func": list(rng.random(rng.integers(0, 3)) * (i % 5 > 0))} for i in range(25)]
    data += [{"obj": [0.0], "func": [0.0]}, {"obj": [], "func": []}]
    assert fast.score(data) == pytest.approx(slow.score(data))
    assert bootstrap_ci(data, fast, 300, seed=2) == pytest.approx(
        bootstrap_ci(data, slow, 300, seed=2))
    other = [{"obj": list(rng.random(2)), "func": list(rng.random(1))} for _ in data]
    assert paired_permutation_p(data, other, fast, 300, seed=1) == pytest.approx(
        paired_permutation_p(data, other, slow, 300, seed=1))
    zero = [{"obj": [0.0], "func": [0.0]}]
    assert fast.score(zero) == slow.score(zero) == 0.0
    assert np.isnan(fast.score([{"obj": [0.5], "func": []}]))


def test_bootstrap_interval_of_a_constant_is_the_constant_and_covers_the_mean():
    assert bootstrap_ci(parts([0.4] * 10), MEAN) == pytest.approx((0.4, 0.4))
    data = parts(np.random.default_rng(0).normal(1.0, 0.5, 200))
    low, high = bootstrap_ci(data, MEAN, 1000, seed=0)
    assert low < MEAN.score(data) < high and high - low < 0.2
    assert bootstrap_ci([], MEAN) != bootstrap_ci([], MEAN)  # (nan, nan)


def test_permutation_test_matches_the_exact_sign_flip_test():
    a = np.array([0.9, 0.4, 0.7, 0.8, 0.3, 0.75])
    b = np.array([0.5, 0.5, 0.2, 0.6, 0.35, 0.1])
    d = a - b
    exact = np.mean([abs(np.mean(np.array(s) * d)) >= abs(d.mean()) - 1e-12
                     for s in itertools.product([1, -1], repeat=len(d))])
    p = paired_permutation_p(parts(a), parts(b), MEAN, n_perm=20000, seed=1)
    assert p == pytest.approx(exact, abs=0.015)


def test_permutation_test_is_honest_with_few_samples_and_sure_with_many():
    # three samples, always better: 2 of the 8 swap patterns are as extreme -> p ~ 0.25
    assert paired_permutation_p(parts([1, 1, 1]), parts([0, 0, 0]), MEAN) > 0.15
    assert paired_permutation_p(parts([1] * 20), parts([0] * 20), MEAN) < 0.01
    assert paired_permutation_p(parts([0.3, 0.6]), parts([0.3, 0.6]), MEAN) == 1.0


# -- the table -------------------------------------------------------------------------------
DATASET = "coco-caption"


def key(method: str, options: str = "opt000") -> RunKey:
    return RunKey("my_model & co", DATASET, method, options)


def store_rows() -> list[Row]:
    """tam fast, random slow (12 shared samples), random fails on two more, one skip."""
    rows = []
    for i in range(12):
        rows.append(Row.ok(key("tam"), f"s{i:02d}", "seconds-per-token",
                           {"value": [0.1 + 0.01 * (i % 3)]}))
        rows.append(Row.ok(key("random"), f"s{i:02d}", "seconds-per-token",
                           {"value": [0.5 + 0.01 * (i % 4)]}))
        rows.append(Row.ok(key("tam"), f"s{i:02d}", "toy-score", {"value": [float(i % 2)]}))
    for i in (12, 13):
        rows.append(Row.failed(key("random"), f"s{i}", "seconds-per-token",
                               f"sample s{i}: method 'random': ValueError: nope"))
    rows.append(Row.skipped(key("random"), "s00", "toy-score", "the sample has no mask"))
    rows.append(Row.ok(key("tam", "opt111"), "s00", "seconds-per-token", {"value": [9.0]}))
    return rows


PROVENANCE = [{"metrics": {"toy-score": {"higher_is_better": False, "category": "other"}},
               "model": "my_model & co", "seed": 0}]


def test_cells_count_samples_failures_and_mark_the_best():
    board = build(store_rows(), PROVENANCE, n_boot=300, seed=0)
    labels = [(r.key.method, r.label) for r in board.rows]
    assert labels == [("random", "random"), ("tam", "tam#opt000"), ("tam", "tam#opt111")]
    assert [m.label for m in board.metrics] == ["seconds-per-token", "toy-score"]  # cost first
    cost, toy = board.metrics
    assert not cost.higher_is_better and cost.category == "cost"
    assert not toy.higher_is_better and toy.category == "other"  # from the provenance
    random_row, tam_row, variant = board.rows
    fast, slow = tam_row.cells["seconds-per-token"], random_row.cells["seconds-per-token"]
    assert fast.value == pytest.approx(np.mean([0.1, 0.11, 0.12] * 4))
    assert fast.best and not slow.best and fast.n == 12 and fast.failed == 0
    assert slow.n == 12 and slow.failed == 2 and random_row.failed == 2
    assert slow.p_vs_best < 0.01 and slow.significantly_worse
    # the variant shares one sample with the best: tested, but never significant
    assert variant.cells["seconds-per-token"].p_vs_best > 0.05
    assert "toy-score" not in random_row.cells  # skipped only: not evaluated, not failed
    assert tam_row.cells["toy-score"].value == pytest.approx(0.5) and tam_row.n == 12
    assert len(board.failures) == 2 and "s12" in board.failures[0].error


def test_markdown_latex_csv_json_and_bibtex(tmp_path):
    board = build(store_rows(), PROVENANCE, n_boot=300, seed=0)
    md = markdown(board)
    assert "| model | method | N | failed | seconds-per-token ↓ | toy-score ↓ |" in md
    assert "**0.110** [" in md and "0.515\\* [" in md and "| 9.000 [9.000, 9.000] |" in md
    tex = latex(board)
    assert r"\toprule" in tex and r"\bottomrule" in tex and r"\textbf{0.110}" in tex
    assert r"my\_model \& co" in tex and "$^{*}$" in tex and r"$\downarrow$" in tex
    assert tex_escape("50% of #1 {x}_^~\\") == (
        r"50\% of \#1 \{x\}\_\textasciicircum{}\textasciitilde{}\textbackslash{}")
    paths = write_all(board, tmp_path)
    assert sorted(p.name for p in paths) == sorted(
        ["leaderboard.md", "leaderboard.tex", "leaderboard.csv", "leaderboard.json",
         "references.bib"])
    records = list(csv.DictReader(open(tmp_path / "leaderboard.csv")))
    assert len(records) == 4 and {r["metric"] for r in records} == {"seconds-per-token",
                                                                     "toy-score"}

    def no_nan(token):
        raise AssertionError(f"{token} in leaderboard.json")

    data = json.loads((tmp_path / "leaderboard.json").read_text(), parse_constant=no_nan)
    assert data["provenance"] == PROVENANCE and len(data["failures"]) == 2
    assert data["statistics"]["resamples"] == 300
    assert {c["method"] for c in data["cells"] if c["best"]} == {"tam"}
    bib = (tmp_path / "references.bib").read_text()
    assert bib.count("@inproceedings{li2025tam") + bib.count("@article{li2025tam") == 1
    assert "adebayo2018sanity" in bib  # the random baseline's paper


def test_bibtex_is_deduplicated_by_key():
    rows = [Row.ok(RunKey("m", "grandf", method, "o"), "1", "obj-iou", {"obj": [0.5]})
            for method in ("msea", "msea-arc", "tam")]
    bib = bibtex(build(rows, [], n_boot=10))
    keys = list(bib_entries(bib))
    assert len(keys) == len(set(keys))
    assert {"liang2025intramodal", "li2025tam", "rasheed2024glamm"} <= set(keys)


def test_leaderboard_command_merges_stores_without_recomputing(tmp_path, capsys):
    rows = store_rows()
    with ResultStore(tmp_path / "a.sqlite") as a:
        a.write(rows[:20])
    with ResultStore(tmp_path / "b.sqlite") as b:
        b.write(rows[10:])  # overlaps a
    out = tmp_path / "board"
    code = cli.main(["leaderboard", str(tmp_path / "a.sqlite"), str(tmp_path / "b.sqlite"),
                     "--out", str(out), "--bootstrap", "200"])
    printed = capsys.readouterr().out
    assert code == 0 and "seconds-per-token" in printed and "2 failed" in printed
    merged = json.loads((out / "leaderboard.json").read_text())
    whole = build(rows, [], n_boot=200)
    assert [c["value"] for c in merged["cells"]] == pytest.approx(
        [row.cells[m.label].value for row in whole.rows for m in whole.metrics
         if m.label in row.cells])
    assert leaderboard([tmp_path], n_boot=200).rows[0].cells["seconds-per-token"].n == 12
