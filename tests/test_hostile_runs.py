"""Hostile runs of ``mmxai compare`` and ``mmxai leaderboard``: a result is right or refused.

- a changed setup (model folder's chat template, processor or generation config; the
  dataset's options or prompt; the seed; a method's version) never gets the stored rows;
- a metric value that is not a finite number is a failed row, never ``ok``;
- failed rows are retried by a rerun (history kept; ``--no-retry`` keeps them), stores of
  schema 1 are read but not resumed, merged stores count the newest attempt;
- the leaderboard refuses what is not a store in one line and never writes into its inputs;
  an ``--out`` that cannot be a folder is one line;
- a model that cannot run stops the run after its first samples (``--keep-going`` runs on),
  a bad image does not;
- killing the parent of ``--workers`` kills its workers.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from fixtures.tam_fixture import write_coco_fixture
from helpers_evaluator import FAMILY, one_torch_thread, run_spec  # noqa: F401

from mmxai import cli
from mmxai.api import make_method
from mmxai.evaluation import ConsoleReporter
from mmxai.evaluation import jobs as jobs_module
from mmxai.evaluation.evaluator import Evaluator, NamedMetric
from mmxai.evaluation.leaderboard import leaderboard, load_rows
from mmxai.evaluation.store import ResultStore, Row, RunKey
from mmxai.metric import Metric
from mmxai.registry import manager

TINY = f"tiny:{FAMILY}"
CHEAP = ["--method", "random", "--metric", "seconds-per-token", "--max-new-tokens", "3",
         "--min-new-tokens", "3", "--bootstrap", "50", "--device", "cpu", "--no-progress"]


def compare(capsys, *argv: str | Path) -> tuple[int, str, str]:
    code = cli.main(["compare", *map(str, argv)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def board(capsys, *argv: str | Path) -> tuple[int, str, str]:
    code = cli.main(["leaderboard", *map(str, argv)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def refused(code: int, out: str, err: str) -> str:
    """The one error line of a refused command (exit 2, no traceback)."""
    assert code == 2, out + err
    assert "Traceback" not in out + err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, err
    return lines[0]


def stored(path: Path) -> list[tuple]:
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return db.execute("SELECT model, dataset, method, options_hash, sample_id, metric, "
                          "status, parts, error, created FROM results ORDER BY 1, 2, 3, 4, 5, "
                          "6").fetchall()
    finally:
        db.close()


def summary_line(printed: str) -> str:
    return next(line for line in printed.splitlines() if " samples, " in line)


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# -- 1. what the model sees or writes is part of a result's identity -------------------------
def test_a_changed_model_folder_is_refused_naming_what_changed(tmp_path, tiny_dir, capsys):
    folder = tmp_path / "model"
    shutil.copytree(tiny_dir(FAMILY), folder)
    out = tmp_path / "out"
    run = ["--model", folder, "--dataset", "synthetic", "--limit", "2", *CHEAP, "--out", out]
    code, printed, err = compare(capsys, *run)
    assert code == 0, err
    assert "2 evaluated now, 0 already stored" in summary_line(printed)
    before = stored(out / "results.sqlite")
    code, printed, err = compare(capsys, *run)
    assert code == 0 and "0 evaluated now, 2 already stored" in summary_line(printed)

    edits = [  # (file, edit, what the line must name)
        ("chat_template.jinja", lambda text: text.replace("ASSISTANT:", "ASSISTANT: "),
         "chat_template"),
        ("processor_config.json",
         lambda text: text.replace("0.48145466", "0.5"), "processor (image_processor.image_mean)"),
        ("generation_config.json",
         lambda text: text.replace('"min_new_tokens": 4', '"min_new_tokens": 5'),
         "generation_config (min_new_tokens)"),
        ("config.json",
         lambda text: text.replace('"vision_feature_layer": -2', '"vision_feature_layer": -1'),
         "model_config (vision_feature_layer)"),
    ]
    for name, edit, named in edits:
        original = (folder / name).read_text()
        changed = edit(original)
        assert changed != original, name
        (folder / name).write_text(changed)
        line = refused(*compare(capsys, *run))
        assert named in line and "write to a new --out folder" in line, line
        assert "already stored" not in line
        assert stored(out / "results.sqlite") == before  # nothing written, nothing reused
        (folder / name).write_text(original)
    # restored: the same setup resumes; a new --out computes the edited setup
    code, printed, err = compare(capsys, *run)
    assert code == 0 and "2 already stored" in summary_line(printed), err
    template = folder / "chat_template.jinja"
    original = template.read_text()
    template.write_text(edits[0][1](original))
    code, printed, err = compare(capsys, *run[:-1], tmp_path / "new")
    assert code == 0 and "2 evaluated now" in summary_line(printed), err
    # with workers, each refuses alike: one line, as from one process
    workers = [*run[:-1], tmp_path / "parallel", "--workers", "2"]
    code, printed, err = compare(capsys, *workers)
    assert code == 0 and "2 evaluated now" in summary_line(printed), err
    template.write_text(original)
    line = refused(*compare(capsys, *workers))
    assert "chat_template" in line and "worker " not in line, line


def test_dataset_options_prompt_seed_and_method_version_are_new_runs(tmp_path, capsys,
                                                                      monkeypatch):
    root = write_coco_fixture(tmp_path / "coco2014")["root"]
    out = tmp_path / "out"
    run = ["--model", TINY, "--dataset", "coco-caption", "--data-root", root, *CHEAP,
           "--out", out]
    assert compare(capsys, *run)[0] == 0
    code, printed, _ = compare(capsys, *run)
    assert "0 evaluated now, 3 already stored" in summary_line(printed)
    variants = [
        ["--option", "coco-caption.prompt=What is in the picture?"],  # the prompt
        ["--option", "coco-caption.limit=2"],  # another dataset option
        ["--seed", "1"],
    ]
    for extra in variants:
        code, printed, err = compare(capsys, *run, *extra)
        assert code == 0, err
        line = summary_line(printed)
        assert " evaluated now, 0 already stored" in line and not line.count(" 0 evaluated")
    monkeypatch.setattr(type(make_method("random")), "version", "2")  # the method changed
    code, printed, err = compare(capsys, *run)
    assert code == 0 and "3 evaluated now, 0 already stored" in summary_line(printed), err
    # every variant is its own row of the table, told apart by its options hash
    rows = json.loads((out / "leaderboard.json").read_text())["rows"]
    assert len(rows) == 5 and len({r["label"] for r in rows}) == 5
    assert all(r["label"].startswith("random#") for r in rows)


def test_a_prompt_changed_under_the_same_options_is_refused(tmp_path, capsys, monkeypatch):
    root = write_coco_fixture(tmp_path / "coco2014")["root"]
    run = ["--model", TINY, "--dataset", "coco-caption", "--data-root", root, *CHEAP,
           "--out", tmp_path / "out"]
    assert compare(capsys, *run)[0] == 0
    before = stored(tmp_path / "out" / "results.sqlite")
    coco = manager().get("datasets", "coco-caption")
    monkeypatch.setattr(coco, "default_prompt", "Name every object.")  # a new mmxai's prompt
    line = refused(*compare(capsys, *run))
    assert "another prompt for sample(s) 42, 73, 139" in line and "Name every object." in line
    assert stored(tmp_path / "out" / "results.sqlite") == before


# -- 2. metric values must be finite numbers -------------------------------------------------
class Returns(Metric):
    """A metric returning whatever it is given (per sample id: a default)."""

    category = "test"

    def __init__(self, value, name="returns"):
        super().__init__()
        self.value, self.label = value, name

    def measure(self, item):
        return self.value


def test_non_finite_or_non_numeric_metric_values_are_failed_rows(tmp_path, tiny_model):
    root = write_coco_fixture(tmp_path / "coco2014")["root"]
    dataset = manager().get("datasets", "coco-caption")(root, limit=1)
    cases = {
        "nan": ({"value": [0.5, float("nan")]}, "part 'value' holds nan at position 1"),
        "inf": ({"value": [np.float32(np.inf)]}, "part 'value' holds inf at position 0"),
        "text": ({"value": ["0.5"]}, "part 'value' holds str '0.5' at position 0"),
        "none": ({"value": [None]}, "holds NoneType None at position 0"),
        "scalar": ({"value": 0.5}, "part 'value' is a float, expected a list of numbers"),
        "key": ({1: [0.5]}, "a part named 1 (int), expected a string"),
        "empty": ({"value": []}, None),  # nothing to measure on this sample: legitimate
        "numpy": ({"value": np.array([0.25, 1.0])}, None),
    }
    metrics = [NamedMetric(name, Returns(value)) for name, (value, _) in cases.items()]
    with ResultStore(tmp_path / "r.sqlite") as store:
        summary = Evaluator(dataset, [make_method("random")], metrics, store, run_spec(2),
                            reporter=ConsoleReporter(bars=False)).run(tiny_model(FAMILY), TINY)
    rows = {r[5]: r for r in stored(tmp_path / "r.sqlite")}
    for name, (_, cause) in cases.items():
        status, parts, error = rows[name][6:9]
        if cause is None:
            assert status == "ok", (name, error)
            continue
        assert status == "failed" and parts is None, name
        assert error.startswith(f"sample 42: metric '{name}' on method 'random': "), error
        assert cause in error, (name, error)
    assert json.loads(rows["numpy"][7]) == {"value": [0.25, 1.0]}
    assert json.loads(rows["empty"][7]) == {"value": []}
    assert len(summary.failures) == 6


def test_stored_non_finite_values_count_as_failed_in_the_leaderboard(tmp_path):
    key = RunKey("m", "d", "tam", "h")
    with ResultStore(tmp_path / "r.sqlite") as store:
        store.write([Row.ok(key, "1", "obj-iou", {"value": [0.5]}),
                     Row.ok(key, "2", "obj-iou", {"value": [float("nan")]})])  # an old mmxai
    result = leaderboard([tmp_path / "r.sqlite"], n_boot=20)
    cell = result.rows[0].cells["obj-iou"]
    assert (cell.n, cell.failed, cell.value) == (1, 1, 0.5)
    assert "sample 2: stored result of metric 'obj-iou' on method 'tam' is not a list of " \
           "finite numbers" in result.failures[0].error


# -- 3. failures are retried, history kept ---------------------------------------------------
def test_failed_rows_are_retried_by_a_rerun_and_kept_with_no_retry(tmp_path, capsys,
                                                                    monkeypatch):
    root = write_coco_fixture(tmp_path / "coco2014")["root"]
    out = tmp_path / "out"
    run = ["--model", TINY, "--dataset", "coco-caption", "--data-root", root, *CHEAP,
           "--out", out]

    def no_memory(*args, **kwargs):
        raise RuntimeError("out of memory (transient)")

    monkeypatch.setattr(jobs_module, "generate_trace", no_memory)
    code, printed, err = compare(capsys, *run)
    assert code == 0, err
    assert "3 evaluated now, 0 already stored, 3 failed" in summary_line(printed)
    monkeypatch.undo()
    code, printed, _ = compare(capsys, *run, "--no-retry")
    assert code == 0 and "0 evaluated now, 3 already stored, 0 failed" in summary_line(printed)
    assert {r[6] for r in stored(out / "results.sqlite")} == {"failed"}
    code, printed, err = compare(capsys, *run)
    assert code == 0, err
    assert summary_line(printed).endswith("3 evaluated now, 0 already stored, 0 failed "
                                          "(0 results), 3 retried")
    with ResultStore(out / "results.sqlite", read_only=True) as store:
        now = list(store.rows())
        history = list(store.history())
    assert {(r.status, r.attempt) for r in now} == {("ok", 2)}
    assert [(r.sample_id, r.status, r.attempt) for r in history] == [
        ("139", "failed", 1), ("42", "failed", 1), ("73", "failed", 1)]
    assert "out of memory (transient)" in history[0].error
    cells = json.loads((out / "leaderboard.json").read_text())["cells"]
    assert [(c["n"], c["failed"]) for c in cells] == [(3, 0)]
    code, printed, _ = compare(capsys, *run)  # ok rows are never recomputed
    assert "0 evaluated now, 3 already stored" in summary_line(printed)


def test_merged_stores_count_the_newest_attempt(tmp_path):
    key = RunKey("m", "d", "tam", "h")
    with ResultStore(tmp_path / "a.sqlite") as a:  # a copy still holding the failure
        a.write([Row.failed(key, "1", "obj-iou", "sample 1: boom"),
                 Row.ok(key, "2", "obj-iou", {"value": [0.2]})])
    shutil.copy(tmp_path / "a.sqlite", tmp_path / "b.sqlite")
    with ResultStore(tmp_path / "b.sqlite") as b:  # retried there
        assert b.write([Row.ok(key, "1", "obj-iou", {"value": [0.7]})]) == 0  # no retry
        assert b.write([Row(key, "1", "obj-iou", "ok", {"value": [0.8]}, attempt=2)]) == 1
        assert b.write([Row.ok(key, "2", "obj-iou", {"value": [0.9]})]) == 0  # ok stays
    for order in (["a.sqlite", "b.sqlite"], ["b.sqlite", "a.sqlite"]):
        rows, _ = load_rows([tmp_path / name for name in order])
        by = {r.sample_id: r for r in rows}
        assert len(rows) == 2
        assert (by["1"].status, by["1"].parts, by["1"].attempt) == ("ok", {"value": [0.8]}, 2)
        assert by["2"].parts == {"value": [0.2]}


def schema1_store(path: Path) -> Path:
    """A store as mmxai wrote it before schema 2."""
    db = sqlite3.connect(path)
    db.executescript("""
        CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
        CREATE TABLE results (model TEXT NOT NULL, dataset TEXT NOT NULL, method TEXT NOT NULL,
            options_hash TEXT NOT NULL, sample_id TEXT NOT NULL, metric TEXT NOT NULL,
            status TEXT NOT NULL CHECK (status IN ('ok', 'failed', 'skipped')), parts TEXT,
            error TEXT, created REAL NOT NULL,
            UNIQUE (model, dataset, method, options_hash, sample_id, metric));
        CREATE TABLE provenance (model TEXT NOT NULL, dataset TEXT NOT NULL,
            method TEXT NOT NULL, options_hash TEXT NOT NULL, record TEXT NOT NULL,
            created REAL NOT NULL, UNIQUE (model, dataset, method, options_hash));
        INSERT INTO meta VALUES ('schema', '1');
        INSERT INTO results VALUES ('tiny:llava', 'coco-caption', 'random', 'abc', '42',
            'seconds-per-token', 'ok', '{"value": [0.01]}', NULL, 1.0);
        INSERT INTO provenance VALUES ('tiny:llava', 'coco-caption', 'random', 'abc',
            '{"seed": 0}', 1.0);
    """)
    db.commit()
    db.close()
    return path


def test_schema_1_stores_are_read_but_never_resumed(tmp_path, capsys):
    out = tmp_path / "old"
    out.mkdir()
    store = schema1_store(out / "results.sqlite")
    before = digest(store)
    root = write_coco_fixture(tmp_path / "coco2014")["root"]
    line = refused(*compare(capsys, "--model", TINY, "--dataset", "coco-caption",
                            "--data-root", root, *CHEAP, "--out", out))
    assert "schema 1" in line and "write to a new --out folder" in line
    assert "mmxai leaderboard still reads this one" in line
    code, printed, err = board(capsys, store, "--out", tmp_path / "table", "--bootstrap", "20")
    assert code == 0, err
    assert digest(store) == before
    assert sorted(p.name for p in out.iterdir()) == ["results.sqlite"]
    cells = json.loads((tmp_path / "table" / "leaderboard.json").read_text())["cells"]
    assert [(c["method"], c["n"]) for c in cells] == [("random", 1)]


# -- 4. the leaderboard's inputs and outputs -------------------------------------------------
def test_the_leaderboard_refuses_what_is_not_a_store_and_never_writes_into_it(tmp_path,
                                                                             capsys):
    empty = tmp_path / "empty.sqlite"
    empty.touch()
    text = tmp_path / "notes.sqlite"
    text.write_text("these are not the results you are looking for\n" * 20)
    other = tmp_path / "other.sqlite"
    db = sqlite3.connect(other)
    db.execute("CREATE TABLE songs (title TEXT)")
    db.commit()
    db.close()
    no_stores = tmp_path / "no-stores"
    no_stores.mkdir()
    (no_stores / "notes.txt").write_text("nothing here")
    cases = {
        empty: "not an mmxai store (an empty file)",
        text: "not an mmxai store (not an SQLite file)",
        other: "not an mmxai store (no meta, provenance, results table)",
        no_stores: "no results store (*.sqlite) in",
        tmp_path / "missing.sqlite": "no such file or folder",
        tmp_path / "missing-folder": "no such file or folder",
    }
    for path, cause in cases.items():
        before = digest(path) if path.is_file() else None
        siblings = sorted(p.name for p in tmp_path.iterdir())
        line = refused(*board(capsys, path, "--out", tmp_path / "table"))
        assert cause in line, line
        assert str(path) in line or path.name in line
        if before is not None:
            assert digest(path) == before
        assert sorted(p.name for p in tmp_path.iterdir()) == siblings  # no -wal, no -shm
    assert empty.stat().st_size == 0
    assert sorted(p.name for p in no_stores.iterdir()) == ["notes.txt"]
    # a good store among them: still refused as a whole, nothing half written
    good = tmp_path / "good"
    with ResultStore(good / "results.sqlite") as store:
        store.write([Row.ok(RunKey("m", "d", "tam", "h"), "1", "obj-iou", {"value": [0.5]})])
    before = digest(good / "results.sqlite")
    line = refused(*board(capsys, good, empty, "--out", tmp_path / "table"))
    assert "empty.sqlite" in line and not (tmp_path / "table").exists()
    # read alone: the store is read without a byte or a side file written
    code, _, err = board(capsys, good / "results.sqlite", "--out", tmp_path / "table",
                         "--bootstrap", "20")
    assert code == 0, err
    assert digest(good / "results.sqlite") == before
    assert sorted(p.name for p in good.iterdir()) == ["results.sqlite"]


def test_an_out_that_cannot_be_a_folder_is_one_line(tmp_path, capsys):
    good = tmp_path / "good"
    with ResultStore(good / "results.sqlite") as store:
        store.write([Row.ok(RunKey("m", "d", "tam", "h"), "1", "obj-iou", {"value": [0.5]})])
    a_file = tmp_path / "a-file"
    a_file.write_text("keep me")
    root = write_coco_fixture(tmp_path / "coco2014")["root"]
    for out, cause in ((a_file, "is a file, expected a folder"),
                       (a_file / "below", "cannot be created")):
        line = refused(*board(capsys, good, "--out", out))
        assert line.startswith("error: --out") and cause in line, line
        line = refused(*compare(capsys, "--model", TINY, "--dataset", "coco-caption",
                                "--data-root", root, *CHEAP, "--out", out))
        assert line.startswith("error: --out") and cause in line, line
        assert a_file.read_text() == "keep me"
    # an --out folder whose results.sqlite belongs to another program: refused, untouched
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    db = sqlite3.connect(foreign / "results.sqlite")
    db.execute("CREATE TABLE songs (title TEXT)")
    db.commit()
    db.close()
    before = digest(foreign / "results.sqlite")
    line = refused(*compare(capsys, "--model", TINY, "--dataset", "coco-caption",
                            "--data-root", root, *CHEAP, "--out", foreign))
    assert "not an mmxai store (no meta, provenance, results table)" in line
    assert digest(foreign / "results.sqlite") == before


# -- 5. a model that cannot run stops the run ------------------------------------------------
def test_a_model_that_cannot_run_stops_after_its_first_samples(tmp_path, capsys, monkeypatch):
    out = tmp_path / "out"
    run = ["--model", TINY, "--dataset", "synthetic", "--limit", "8", *CHEAP, "--out", out]

    def broken(*args, **kwargs):
        raise RuntimeError("expected all tensors to be on the same device")

    monkeypatch.setattr(jobs_module, "generate_trace", broken)
    line = refused(*compare(capsys, *run))
    assert line.startswith("error: stopped: the first 5 samples all failed alike: generation: "
                           "RuntimeError: expected all tensors to be on the same device; the "
                           "model cannot run as set up"), line
    assert "--keep-going" in line
    rows = stored(out / "results.sqlite")
    assert len(rows) == 5 and {r[6] for r in rows} == {"failed"}  # what was written stays
    code, printed, err = compare(capsys, *run, "--keep-going")  # the 5 retried, 3 new
    assert code == 0, err
    assert summary_line(printed).endswith("8 samples, 8 evaluated now, 0 already stored, "
                                          "8 failed (8 results), 5 retried")
    assert len(stored(out / "results.sqlite")) == 8
    # a cause that differs per sample is not the model's: the run goes on
    calls = []

    def flaky(*args, **kwargs):
        calls.append(1)
        raise RuntimeError(f"sample-specific problem {len(calls)}")

    monkeypatch.setattr(jobs_module, "generate_trace", flaky)
    code, printed, err = compare(capsys, *run[:-1], tmp_path / "flaky")
    assert code == 0 and "8 evaluated now, 0 already stored, 8 failed" in summary_line(printed)


def test_bad_images_do_not_stop_the_run(tmp_path, capsys):
    from mmxai.datasets.synthetic import write_split

    root = write_split(tmp_path / "scenes", n=8)
    for image in sorted((root / "images").glob("*.png"))[:6]:  # the first six are unreadable
        image.write_bytes(b"\x89PNG broken")
    code, printed, err = compare(capsys, "--model", TINY, "--dataset", "synthetic",
                                 "--data-root", root, *CHEAP, "--out", tmp_path / "out")
    assert code == 0, err
    assert "8 evaluated now, 0 already stored, 6 failed" in summary_line(printed)


# -- 6. workers die with their parent --------------------------------------------------------
def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rpartition(")")[2].split()
        if int(fields[1]) == pid:
            found.append(int(entry.name))
    return found


def _alive(pid: int) -> bool:
    """Running (a zombie waiting for a reaper counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")
def test_killing_the_parent_of_workers_kills_the_workers(tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    parent = subprocess.Popen(
        [sys.executable, "-m", "mmxai.cli", "compare", "--model", TINY, "--dataset",
         "synthetic", "--workers", "2", "--method", "random", "--metric",
         "seconds-per-token", "--max-new-tokens", "16", "--min-new-tokens", "16",
         "--no-progress", "--device", "cpu", "--out", str(out)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    workers: list[int] = []
    try:
        deadline = time.monotonic() + 180
        stores = [out / f"results-shard{i}-of2.sqlite" for i in range(2)]
        while not all(s.exists() for s in stores):  # both workers are evaluating
            assert parent.poll() is None, "the run ended before the workers started"
            assert time.monotonic() < deadline, "the workers did not start"
            time.sleep(0.1)
        workers = _children(parent.pid)
        assert len(workers) >= 2, workers
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait(timeout=10)
        deadline = time.monotonic() + 10
        while any(_alive(pid) for pid in workers) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not [pid for pid in workers if _alive(pid)], "orphaned workers"
        counts = [len(stored(s)) for s in stores]
        time.sleep(1.0)
        assert [len(stored(s)) for s in stores] == counts  # nobody writes any more
    finally:
        for pid in {parent.pid, *workers, *_children(parent.pid)}:  # a failed test's orphans
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def test_a_metric_whose_version_changed_is_refused_on_resume(tmp_path, capsys, monkeypatch):
    root = write_coco_fixture(tmp_path / "coco2014")["root"]
    out = tmp_path / "out"
    run = ["--model", TINY, "--dataset", "coco-caption", "--data-root", root, *CHEAP,
           "--out", out]
    assert compare(capsys, *run)[0] == 0
    before = stored(out / "results.sqlite")
    monkeypatch.setattr(manager().get("metrics", "seconds-per-token"), "version", "2")
    line = refused(*compare(capsys, *run))
    assert "metric seconds-per-token version (1 -> 2)" in line and "new --out" in line
    assert stored(out / "results.sqlite") == before


# -- audit findings: merging setups, negative seeds, worker layouts ---------------------------
def test_the_leaderboard_refuses_to_merge_stores_of_different_datasets(tmp_path, capsys):
    roots = [write_coco_fixture(tmp_path / f"coco{i}")["root"] for i in (1, 2)]
    image = Path(roots[1]) / "image" / f"{42:012d}.jpg"
    image.write_bytes(image.read_bytes() + b"\0")  # another file under the same name
    outs = [tmp_path / f"out{i}" for i in (1, 2)]
    for root, out in zip(roots, outs, strict=True):
        assert compare(capsys, "--model", TINY, "--dataset", "coco-caption", "--data-root",
                       root, *CHEAP, "--out", out)[0] == 0
    before = [digest(out / "results.sqlite") for out in outs]
    line = refused(*board(capsys, *outs, "--out", tmp_path / "merged"))
    assert "dataset_fingerprint" in line and "cannot be merged" in line
    assert [digest(out / "results.sqlite") for out in outs] == before
    assert not (tmp_path / "merged" / "leaderboard.md").exists()
    # the same run's stores still merge (a copy of one is the same setup)
    shutil.copy(outs[0] / "results.sqlite", tmp_path / "copy.sqlite")
    assert board(capsys, outs[0], tmp_path / "copy.sqlite", "--out", tmp_path / "m2")[0] == 0


def test_negative_seed_and_bootstrap_are_refused_before_the_run(tmp_path, capsys, monkeypatch):
    from mmxai.commands import compare as compare_command

    monkeypatch.setattr(compare_command.Plan, "open",
                        lambda *_: pytest.fail("the model was opened"))
    for flag in (["--seed", "-1"], ["--bootstrap", "-5"]):
        line = refused(*compare(capsys, "--model", TINY, "--dataset", "synthetic", "--limit",
                                "1", *CHEAP, *flag, "--out", tmp_path / "out"))
        assert flag[0] in line and ">= 0" in line


def test_leaderboard_refuses_a_negative_bootstrap(tmp_path, capsys):
    out = tmp_path / "out"
    assert compare(capsys, "--model", TINY, "--dataset", "synthetic", "--limit", "1", *CHEAP,
                   "--out", out)[0] == 0
    line = refused(*board(capsys, out, "--bootstrap", "-5"))
    assert "bootstrap resamples -5" in line


def test_another_worker_count_says_it_computes_again(tmp_path, capsys):
    out = tmp_path / "out"
    run = ["--model", TINY, "--dataset", "synthetic", "--limit", "2", *CHEAP, "--out", out]
    assert compare(capsys, *run, "--workers", "1")[0] == 0
    code, printed, err = compare(capsys, *run, "--workers", "2")
    assert code == 0, err
    assert "holds the stores of a run with 1 worker(s); this run uses 2" in printed
    assert "--workers 1 resumes them" in printed
