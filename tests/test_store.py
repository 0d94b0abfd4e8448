"""The results store: append-only rows, one per key, whole samples per transaction, merging."""

from __future__ import annotations

import sqlite3

import pytest

from mmxai.errors import MMXAIError
from mmxai.evaluation.leaderboard import load_rows
from mmxai.evaluation.store import ResultStore, Row, RunKey

KEY = RunKey("tiny-llava", "coco-caption", "tam", "abc123")
OTHER = RunKey("tiny-llava", "coco-caption", "random", "def456")


def sample_rows(key: RunKey, sample: str, value: float) -> list[Row]:
    return [Row.ok(key, sample, "obj-iou", {"value": [value, value / 2]}),
            Row.failed(key, sample, "deletion", f"sample {sample}: boom"),
            Row.skipped(key, sample, "recall", "the sample has no mask")]


def test_rows_round_trip_and_are_never_written_twice(tmp_path):
    path = tmp_path / "results.sqlite"
    with ResultStore(path) as store:
        assert store.write(sample_rows(KEY, "1", 0.5)) == 3
        assert store.write(sample_rows(KEY, "1", 0.9)) == 0  # the stored values stay
        assert store.write(sample_rows(OTHER, "1", 0.25)) == 3
    with ResultStore(path) as store:  # reopened: the same rows, nothing doubled
        rows = list(store.rows())
        assert store.count() == 6
        assert store.done(KEY) == {"1": {"obj-iou", "deletion", "recall"}}
        assert store.done(RunKey("x", "y", "z", "w")) == {}
    by = {(r.key.method, r.metric): r for r in rows}
    assert by[("tam", "obj-iou")].parts == {"value": [0.5, 0.25]}
    assert by[("tam", "deletion")].status == "failed"
    assert by[("tam", "deletion")].error == "sample 1: boom"
    assert by[("random", "recall")].status == "skipped"
    # the UNIQUE constraint, not only the writer, forbids a second row for a key
    db = sqlite3.connect(path)
    with pytest.raises(sqlite3.IntegrityError):
        db.execute("INSERT INTO results VALUES (?, ?, ?, ?, ?, ?, 'ok', '{}', NULL, 0)",
                   ("tiny-llava", "coco-caption", "tam", "abc123", "1", "obj-iou"))
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_a_failing_write_leaves_nothing_of_the_sample(tmp_path):
    with ResultStore(tmp_path / "r.sqlite") as store:
        rows = sample_rows(KEY, "7", 0.5)
        bad = Row(KEY, "7", "precision", "exploded")  # violates the status CHECK
        with pytest.raises(sqlite3.IntegrityError):
            store.write([rows[0], bad, rows[1]])
        assert store.count() == 0
        assert store.done(KEY) == {}


def test_provenance_keeps_the_first_record(tmp_path):
    with ResultStore(tmp_path / "r.sqlite") as store:
        first = store.add_provenance(KEY, {"seed": 0, "device": "cpu"})
        again = store.add_provenance(KEY, {"seed": 1, "device": "cuda"})
        assert first == again == {"seed": 0, "device": "cpu"}
        assert store.provenance() == {KEY: {"seed": 0, "device": "cpu"}}


def test_a_file_that_is_not_a_store_is_one_clear_error(tmp_path):
    path = tmp_path / "notes.sqlite"
    path.write_text("these are not the results you are looking for" * 20)
    with pytest.raises(MMXAIError, match="not an mmxai store"):
        ResultStore(path)


def test_merging_stores_counts_each_key_once(tmp_path):
    with ResultStore(tmp_path / "a.sqlite") as a:
        a.write(sample_rows(KEY, "1", 0.5) + sample_rows(KEY, "2", 0.7))
        a.add_provenance(KEY, {"shard": "0/2"})
    with ResultStore(tmp_path / "b.sqlite") as b:  # overlaps a on sample 2
        b.write(sample_rows(KEY, "2", 0.7) + sample_rows(KEY, "3", 0.1))
        b.add_provenance(KEY, {"shard": "1/2"})
    rows, records = load_rows([tmp_path])  # a folder: every *.sqlite in it
    keys = [(r.key, r.sample_id, r.metric) for r in rows]
    assert len(keys) == len(set(keys)) == 9
    assert {r.sample_id for r in rows} == {"1", "2", "3"}
    assert sorted(p["shard"] for p in records) == ["0/2", "1/2"]
    with pytest.raises(MMXAIError, match="no such file"):
        load_rows([tmp_path / "missing.sqlite"])
