"""The evaluator end to end on tiny models: files, resume, failures, shards, defaults."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from fixtures.tam_fixture import write_coco_fixture, write_grandf_fixture
from helpers_evaluator import FAMILY, one_torch_thread, run_spec  # noqa: F401
from PIL import Image
from rich.console import Console

from mmxai import cli, registry
from mmxai.api import make_method
from mmxai.dataset import Sample
from mmxai.errors import MMXAIError
from mmxai.evaluation import ConsoleReporter, Reporter
from mmxai.evaluation import jobs as jobs_module
from mmxai.evaluation.evaluator import Evaluator, NamedMetric, Shard
from mmxai.evaluation.leaderboard import leaderboard
from mmxai.evaluation.store import ResultStore
from mmxai.hookspecs import hookimpl
from mmxai.method import Method
from mmxai.metric import Metric
from mmxai.registry import manager
from mmxai.trace import Needs

TINY = f"tiny:{FAMILY}"
TOKENS = ["--max-new-tokens", "3", "--min-new-tokens", "3"]
CHEAP_FAITHFULNESS = ["--option", "deletion.steps=2", "--option", "deletion.max_tokens=1"]
DELETION = "deletion[max_tokens=1,steps=2]"


def compare(capsys, *argv: str | Path) -> tuple[int, str, str]:
    code = cli.main(["compare", *map(str, argv)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def metric(name: str, **options) -> NamedMetric:
    return NamedMetric.make(manager().get("metrics", name), options or None)


def store_rows(path: Path) -> list[tuple]:
    db = sqlite3.connect(path)
    return db.execute("SELECT model, dataset, method, options_hash, sample_id, metric, status, "
                      "parts, error FROM results ORDER BY 1, 2, 3, 4, 5, 6").fetchall()


def cells(board_json: dict, skip: Sequence[str] = ()) -> dict:
    return {(c["method"], c["metric"]): (c["value"], c["ci_low"], c["ci_high"], c["n"],
                                         c["failed"], c["p_vs_best"])
            for c in board_json["cells"] if c["category"] != "cost" and c["metric"] not in skip}


# -- end to end ------------------------------------------------------------------------------
def test_compare_on_a_tam_format_fixture_writes_every_file(tmp_path, capsys, monkeypatch):
    data = write_coco_fixture(tmp_path / "coco2014")
    traces = []
    real = jobs_module.generate_trace
    monkeypatch.setattr(jobs_module, "generate_trace",
                        lambda *a, **k: traces.append(k) or real(*a, **k))
    out = tmp_path / "out"
    metrics = "obj-iou,func-iou,f1-iou,precision,recall,deletion,randomisation," \
              "seconds-per-token,peak-memory"
    code, printed, err = compare(
        capsys, "--model", TINY, "--dataset", "coco-caption", "--data-root", data["root"],
        "--method", "tam,random", "--metric", metrics, *CHEAP_FAITHFULNESS, *TOKENS,
        "--out", out, "--bootstrap", "100", "--device", "cpu", "--no-progress")
    assert code == 0, err
    assert len(traces) == 3  # one shared generation per sample, whatever the methods
    for name in ("leaderboard.md", "leaderboard.tex", "leaderboard.csv", "leaderboard.json",
                 "references.bib", "results.sqlite"):
        assert (out / name).stat().st_size > 0, name
    assert "3 samples, 3 evaluated now, 0 already stored, 0 failed" in printed
    board = json.loads((out / "leaderboard.json").read_text())
    assert [(r["method"], r["n"], r["failed"]) for r in board["rows"]] == [("random", 3, 0),
                                                                           ("tam", 3, 0)]
    expected = {"obj-iou", "func-iou", "f1-iou", "precision", "recall", DELETION,
                "randomisation", "seconds-per-token", "peak-memory"}
    assert {m["label"] for m in board["metrics"]} == expected
    by = {(c["method"], c["metric"]): c for c in board["cells"]}
    assert by[("random", "randomisation")]["value"] == pytest.approx(1.0)  # seeded noise
    assert by[("tam", "randomisation")]["value"] < 0.99
    assert by[("tam", "seconds-per-token")]["value"] > 0
    assert by[("tam", "peak-memory")]["value"] >= 0
    assert 0 < by[("tam", DELETION)]["value"] < 1
    assert len(store_rows(out / "results.sqlite")) == 3 * 2 * 9
    record = board["provenance"][0]
    assert record["model"] == TINY and record["weights"].startswith("state-sha256:")
    assert record["dataset"] == "coco-caption" and len(record["dataset_fingerprint"]) == 64
    assert record["torch"] and record["transformers"] and record["device"] == "cpu"
    assert record["max_new_tokens"] == 3 and record["seed"] == 0
    bib = (out / "references.bib").read_text()
    assert "@inproceedings{li2025tam" in bib or "@article{li2025tam" in bib
    assert "lin2014coco" in bib and "petsiuk2018rise" in bib
    tex = (out / "leaderboard.tex").read_text()
    # readable headers, the settings in the caption (not deletion[max_tokens=1,steps=2])
    assert r"Deletion $\downarrow$" in tex and r"Deletion: max\_tokens=1, steps=2." in tex


# -- resume ----------------------------------------------------------------------------------
class Killed(BaseException):
    """What a kill looks like to the evaluator: nothing it may catch."""


def evaluate(dataset, store: ResultStore, model, methods=("tam", "random"), metrics=None):
    metrics = metrics or [metric("obj-iou"), metric("f1-iou"), metric("randomisation"),
                          metric("deletion", steps=2, max_tokens=1)]
    evaluator = Evaluator(dataset, [make_method(m) for m in methods], metrics, store,
                          run_spec(3, 3), reporter=ConsoleReporter(bars=False))
    return evaluator.run(model, TINY)


def test_a_killed_run_resumes_without_losing_or_doubling_a_sample(tmp_path, tiny_model,
                                                                   monkeypatch):
    data = write_coco_fixture(tmp_path / "coco2014")
    dataset = manager().get("datasets", "coco-caption")(data["root"])
    model = tiny_model(FAMILY)
    killed = tmp_path / "killed.sqlite"
    write = ResultStore.write
    calls = []

    def dying_write(self, rows):
        calls.append(1)
        if len(calls) == 2:  # killed while the second sample is being written
            raise Killed
        return write(self, rows)

    monkeypatch.setattr(ResultStore, "write", dying_write)
    with ResultStore(killed) as store, pytest.raises(Killed):
        evaluate(dataset, store, model)
    monkeypatch.setattr(ResultStore, "write", write)
    assert {r[4] for r in store_rows(killed)} == {data["ids"][0]}  # one whole sample
    with ResultStore(killed) as store:
        summary = evaluate(dataset, store, model)
    assert (summary.resumed, summary.evaluated) == (1, 2)
    with ResultStore(tmp_path / "whole.sqlite") as store:
        evaluate(dataset, store, model)
    assert store_rows(killed) == store_rows(tmp_path / "whole.sqlite")
    assert len(store_rows(killed)) == 3 * 2 * 4  # samples x methods x metrics, no duplicate
    first = leaderboard([killed], n_boot=200)
    second = leaderboard([tmp_path / "whole.sqlite"], n_boot=200)
    assert repr([r.cells for r in first.rows]) == repr([r.cells for r in second.rows])  # nan
    # a rerun of a finished run computes nothing
    with ResultStore(killed) as store:
        assert evaluate(dataset, store, model).evaluated == 0
    # the data changed under the store: refused, not mixed
    captions = data["root"] / "annotations" / "captions_val2014.json"
    captions.write_text(captions.read_text().replace("A dog", "One dog"))
    changed = manager().get("datasets", "coco-caption")(data["root"])
    with ResultStore(killed) as store, pytest.raises(MMXAIError, match="dataset_fingerprint"):
        evaluate(changed, store, model)


# -- failures --------------------------------------------------------------------------------
class Flaky(Method):
    """Uniform maps, except on the beach scene (samples 0, 3, 4): it raises."""

    name = "flaky"

    def explain(self, trace, tokens):
        red, green, _ = np.asarray(trace.inputs.images[0])[-1, 0].astype(int)
        if red - green > 100:  # the beach's red blanket fills the bottom rows
            raise ValueError("the beach confuses me")
        return np.ones((len(tokens), len(trace.image_positions)), np.float32)


class Picky(Metric):
    name = "picky"
    category = "test"

    def measure(self, item):
        if item.sample.id == "5":
            raise RuntimeError("no thanks")
        return {"value": [1.0]}


def write_defects(root: Path) -> Path:
    """GranDf's two records plus: a corrupt image (2), a missing mask (3), a mask of the
    wrong size (4), a healthy copy (5)."""
    write_grandf_fixture(root)
    records = json.loads((root / "anno.json").read_text())
    (root / "images" / "corrupt.jpg").write_bytes(b"\xff\xd8 not a jpeg at all")
    Image.new("L", (32, 24)).save(root / "masks" / "small.png")
    image, caption, mask, categories = records[0]
    records += [["images/corrupt.jpg", caption, mask, categories],
                [image, caption, "masks/nowhere.png", categories],
                [image, caption, "masks/small.png", categories],
                records[1]]
    (root / "anno.json").write_text(json.dumps(records))
    return root


def test_bad_samples_are_reported_counted_and_the_rest_complete(tmp_path, tiny_model):
    base = manager().get("datasets", "grandf")(write_defects(tmp_path / "GranDf"))

    class WithUnmasked(type(base)):
        def __iter__(self):
            yield from super().__iter__()
            yield Sample("6", self.root / "images" / "street.jpg", "describe", mask=None)

    dataset = WithUnmasked(base.root)
    console = Console(record=True, width=400)
    metrics = [metric("obj-iou"), metric("seconds-per-token"), NamedMetric("picky", Picky())]
    with ResultStore(tmp_path / "r.sqlite") as store:
        summary = Evaluator(dataset, [make_method("tam"), Flaky()], metrics, store,
                            run_spec(2, 2), reporter=ConsoleReporter(console)
                            ).run(tiny_model(FAMILY), TINY)
    rows = store_rows(tmp_path / "r.sqlite")
    # never dropped silently: every (sample, method, metric) has a row
    assert {(r[4], r[2], r[5]) for r in rows} == {
        (s, m, k) for s in "0123456" for m in ("tam", "flaky")
        for k in ("obj-iou", "seconds-per-token", "picky")}
    status = {(r[4], r[2], r[5]): (r[6], r[8]) for r in rows}
    for m in ("obj-iou", "seconds-per-token", "picky"):
        state, error = status[("2", "tam", m)]
        assert state == "failed" and error.startswith("sample 2: ") and "corrupt.jpg" in error
    state, error = status[("3", "tam", "obj-iou")]
    assert state == "failed" and "nowhere.png does not exist" in error
    state, error = status[("4", "tam", "obj-iou")]
    assert state == "failed" and "32×24" in error and "64×48" in error
    assert status[("3", "tam", "seconds-per-token")][0] == "ok"
    assert status[("6", "tam", "obj-iou")] == ("skipped", "the sample has no mask")
    state, error = status[("5", "tam", "picky")]
    assert state == "failed" and "metric 'picky' on method 'tam': RuntimeError: no thanks" in error
    state, error = status[("0", "flaky", "picky")]
    assert state == "failed" and "method 'flaky': ValueError: the beach confuses me" in error
    for beach in ("3", "4"):
        assert "the beach confuses me" in status[(beach, "flaky", "seconds-per-token")][1]
    for healthy in ("1", "5", "6"):
        assert status[(healthy, "flaky", "seconds-per-token")][0] == "ok"
    for healthy in ("0", "1", "5"):
        assert status[(healthy, "tam", "obj-iou")][0] == "ok"
    printed = console.export_text()
    assert "failed sample 4: mask is 32×24 but the image is 64×48 (tam · obj-iou)" in printed
    corrupt = [line for line in printed.splitlines() if line.startswith("failed sample 2:")]
    assert len(corrupt) == 1 and "corrupt.jpg" in corrupt[0]  # one line per cause
    assert "(tam · obj-iou, tam · seconds-per-token, tam · picky and 3 more)" in printed
    assert summary.failed_samples == {"0", "2", "3", "4", "5"}
    board = leaderboard([tmp_path / "r.sqlite"], n_boot=50)
    tam = next(r for r in board.rows if r.key.method == "tam")
    assert (tam.cells["obj-iou"].n, tam.cells["obj-iou"].failed) == (3, 3)
    assert (tam.cells["seconds-per-token"].n, tam.cells["seconds-per-token"].failed) == (6, 1)
    assert (tam.n, tam.failed) == (6, 4)


def test_wrong_size_maps_are_a_failure_of_the_method(tiny_model, tmp_path):
    class Short(Method):
        name = "short"

        def explain(self, trace, tokens):
            return np.ones((len(tokens), 3), np.float32)

    data = write_coco_fixture(tmp_path / "coco2014")
    dataset = manager().get("datasets", "coco-caption")(data["root"], limit=1)
    with ResultStore(tmp_path / "r.sqlite") as store:
        Evaluator(dataset, [Short()], [metric("seconds-per-token")], store, run_spec(2),
                  reporter=ConsoleReporter(bars=False)).run(tiny_model(FAMILY), TINY)
    (row,) = store_rows(tmp_path / "r.sqlite")
    assert row[6] == "failed" and "maps of shape (" in row[8] and row[8].startswith("sample 42")


# -- shards ----------------------------------------------------------------------------------
def test_shards_in_two_processes_merge_to_the_unsharded_table(tmp_path, capsys):
    data = write_coco_fixture(tmp_path / "coco2014")
    args = ["--model", TINY, "--dataset", "coco-caption", "--data-root", str(data["root"]),
            "--method", "tam,random", "--metric", "obj-iou,f1-iou,randomisation,deletion",
            *CHEAP_FAITHFULNESS, *TOKENS, "--no-progress", "--bootstrap", "200",
            "--device", "cpu"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    shards = [subprocess.Popen([sys.executable, "-m", "mmxai.cli", "compare", *args,
                                "--shard", f"{i}/2", "--out", str(tmp_path / "sharded")],
                               env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True) for i in range(2)]
    code, printed, err = compare(capsys, *args, "--out", tmp_path / "whole")
    assert code == 0, err
    for shard in shards:
        output = shard.communicate(timeout=240)[0]
        assert shard.returncode == 0, output
        assert "mmxai leaderboard" in output  # shards only store; the hint says what next
    files = sorted((tmp_path / "sharded").glob("*.sqlite"))
    assert [f.name for f in files] == ["results-shard0-of2.sqlite", "results-shard1-of2.sqlite"]
    ids = [{r[4] for r in store_rows(f)} for f in files]
    assert ids == [{data["ids"][0], data["ids"][2]}, {data["ids"][1]}]
    assert cli.main(["leaderboard", str(tmp_path / "sharded"), "--bootstrap", "200"]) == 0
    merged = json.loads((tmp_path / "sharded" / "leaderboard.json").read_text())
    whole = json.loads((tmp_path / "whole" / "leaderboard.json").read_text())
    assert cells(merged) == cells(whole)
    assert sorted(store_rows(files[0]) + store_rows(files[1])) == sorted(
        store_rows(tmp_path / "whole" / "results.sqlite"))
    assert sorted(p["shard"] for p in merged["provenance"]) == ["0/2", "0/2", "1/2", "1/2"]


def test_shard_from_arguments_and_from_torchrun(monkeypatch):
    assert Shard.parse("1/3") == Shard(1, 3) and Shard(1, 3).selects(4)
    assert Shard(2, 4).store_name() == "results-shard2-of4.sqlite"
    for bad in ("3/3", "x", "1/0"):
        with pytest.raises(MMXAIError):
            Shard.parse(bad)
    monkeypatch.delenv("RANK", raising=False)
    assert Shard.from_env() == Shard(0, 1)
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert Shard.from_env() == Shard(1, 2)


# -- defaults --------------------------------------------------------------------------------
class BenchmarkPlugin:
    """Registers a dataset declaring itself the bundled benchmark, on the tiny model."""

    def __init__(self, root: Path) -> None:
        self.root = root

    @hookimpl
    def register_datasets(self, register):
        coco = manager().get("datasets", "coco-caption")
        folder = self.root

        class Bundled(coco):
            name = "bundled"
            default_benchmark = True
            default_model = TINY

            def __init__(self, root=None, **options):
                super().__init__(root or folder, **options)

        register(Bundled)


def test_no_arguments_run_the_bundled_benchmark_or_say_there_is_none(tmp_path, capsys,
                                                                      monkeypatch):
    monkeypatch.setenv(registry.ENV_VAR, "tam_formats,llava,baselines,cost")
    registry.reset()
    try:
        code, _, err = compare(capsys)
        lines = [line for line in err.splitlines() if line.strip()]
        assert code == 2 and len(lines) == 1 and "no bundled benchmark" in lines[0]
        data = write_coco_fixture(tmp_path / "coco2014")
        manager().add_plugin(BenchmarkPlugin(data["root"]))
        code, printed, err = compare(capsys, "--limit", "1", "--method", "centre",
                                     "--max-new-tokens", "2", "--no-progress",
                                     "--out", tmp_path / "out")
        assert code == 0, err
        assert f"{TINY}: 1 samples, 1 evaluated now" in printed
        board = json.loads((tmp_path / "out" / "leaderboard.json").read_text())
        assert {c["metric"] for c in board["cells"]} == {"seconds-per-token", "peak-memory"}
        assert board["rows"][0]["model"] == TINY and board["rows"][0]["dataset"] == "bundled"
    finally:
        registry.reset()


def test_needs_are_the_union_of_methods_and_metrics():
    class Attn(Method):
        name = "attn"
        needs = Needs(attentions=True, layers=(0,))

    class TopK(Metric):
        name = "topk"
        needs = Needs(topk=3, layers=(1,))

    evaluator = Evaluator(manager().get("datasets", "coco-caption")(Path(".")),
                          [Attn(), make_method("tam")], [NamedMetric("topk", TopK())],
                          store=None, reporter=Reporter())
    assert evaluator.needs.attentions and evaluator.needs.topk >= 3
    assert {0, 1} <= set(evaluator.needs.layers)
    with pytest.raises(MMXAIError, match="twice"):
        Evaluator(evaluator.dataset, [make_method("tam"), make_method("tam")],
                  [NamedMetric("topk", TopK())], store=None)


def test_dataset_default_options_apply_unless_the_user_sets_them(monkeypatch):
    import argparse

    from mmxai.commands import compare as compare_command
    from mmxai.datasets.synthetic import SyntheticScenes

    monkeypatch.setattr(SyntheticScenes, "default_options",
                        {"deletion": {"steps": 4, "max_tokens": 2}, "tam": {"kernel_size": 5}})
    parser = argparse.ArgumentParser()
    compare_command.add_arguments(parser)

    def plan(*argv):
        args = parser.parse_args(["--model", TINY, "--dataset", "synthetic", *argv])
        return compare_command.make_plan(args)

    first = plan("--method", "tam", "--metric", "deletion,obj-iou")
    assert [m.label for m in first.metrics] == ["deletion[max_tokens=2,steps=4]", "obj-iou"]
    assert first.methods[0].options.kernel_size == 5
    second = plan("--method", "random", "--metric", "deletion", "--option", "deletion.steps=6")
    assert [m.label for m in second.metrics] == ["deletion[max_tokens=2,steps=6]"]
