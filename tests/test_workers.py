"""``mmxai compare --workers``: worker processes give the rows of one process, crash and resume;
the auto rules for workers and threads; --workers with --shard is refused."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
from pathlib import Path

import torch
from fixtures.tam_fixture import write_coco_fixture
from helpers_evaluator import FAMILY, one_torch_thread  # noqa: F401

from mmxai import cli
from mmxai.commands import workers
from mmxai.evaluation import Summary

TINY = f"tiny:{FAMILY}"
RUN = ["--model", TINY, "--dataset", "coco-caption", "--method", "tam,random",
       "--metric", "obj-iou,randomisation,deletion", "--option", "deletion.steps=2",
       "--option", "deletion.max_tokens=1", "--max-new-tokens", "3", "--min-new-tokens", "3",
       "--bootstrap", "100", "--device", "cpu"]


def rows(*stores: Path) -> list[tuple]:
    found = []
    for store in stores:
        found += sqlite3.connect(store).execute(
            "SELECT model, dataset, method, options_hash, sample_id, metric, status, parts, "
            "error FROM results").fetchall()
    return sorted(found)


def board(out: Path) -> dict:
    cells = json.loads((out / "leaderboard.json").read_text())["cells"]
    return {(c["method"], c["metric"]): (c["value"], c["ci_low"], c["ci_high"], c["n"])
            for c in cells}


def test_a_crashed_worker_is_one_line_the_others_keep_rows_identical_to_one_process(
        tmp_path, capsys):
    # sample 139 (index 2, worker 0) has no image: its failure line comes from a worker
    root = write_coco_fixture(tmp_path / "coco2014", missing_images=(139,))["root"]
    run = ["compare", *RUN, "--data-root", str(root)]
    assert cli.main([*run, "--workers", "1", "--no-progress", "--out", str(tmp_path / "one")
                     ]) == 0
    capsys.readouterr()
    out = tmp_path / "two"
    out.mkdir()
    # worker 1 cannot open its store: it fails alone, worker 0 stores its samples (42, 139)
    (out / "results-shard1-of2.sqlite").write_bytes(b"not a database" * 100)
    assert cli.main([*run, "--workers", "2", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 2, err
    assert lines[0].startswith("error: worker 1/2: results store"), lines[0]
    assert "not an mmxai store" in lines[0]
    assert "1 of 2 workers failed" in lines[1] and "rerun the same command" in lines[1]
    assert "tiny:llava · coco-caption" in err  # the parent's one progress bar
    assert len([line for line in err.splitlines()
                if line.startswith("failed sample 139:") and "does not exist" in line]) == 1
    assert not (out / "leaderboard.json").exists()
    assert {r[4] for r in rows(out / "results-shard0-of2.sqlite")} == {"42", "139"}
    # completing the missing shard (what a rerun's worker 1 does) gives one process's rows
    (out / "results-shard1-of2.sqlite").unlink()
    assert cli.main([*run, "--shard", "1/2", "--no-progress", "--out", str(out)]) == 0
    shards = sorted(out.glob("results-shard*-of2.sqlite"))
    assert len(shards) == 2
    assert rows(*shards) == rows(tmp_path / "one" / "results.sqlite")  # bit for bit
    assert cli.main(["leaderboard", str(out), "--bootstrap", "100"]) == 0
    assert board(out) == board(tmp_path / "one")


def test_workers_and_shard_exclude_each_other(tmp_path, capsys, monkeypatch):
    root = write_coco_fixture(tmp_path / "coco2014")["root"]
    run = ["compare", *RUN, "--data-root", str(root), "--out", str(tmp_path / "out")]
    assert cli.main([*run, "--workers", "2", "--shard", "0/2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--workers and --shard" in err[0]
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert cli.main([*run, "--workers", "auto"]) == 2
    assert "RANK/WORLD_SIZE" in capsys.readouterr().err
    monkeypatch.delenv("RANK")
    monkeypatch.delenv("WORLD_SIZE")
    for bad in ("0", "two"):
        assert cli.main([*run, "--workers", bad]) == 2
        assert "expected auto or a whole number >= 1" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()  # refused before anything ran


def test_auto_workers_one_per_core_for_small_models_on_cpu(tmp_path, monkeypatch):
    monkeypatch.setattr(workers, "usable_cores", lambda: 4)
    monkeypatch.setattr(workers, "available_memory", lambda: 64 * 2**30)
    cpu, cuda = torch.device("cpu"), torch.device("cuda", 0)
    out = tmp_path / "new"
    assert workers.auto_workers([TINY], cpu, 200, out) == 4
    assert workers.auto_workers([TINY], cpu, 17, out) == 2  # 8 samples per worker at least
    assert workers.auto_workers([TINY], cpu, 3, out) == 1
    assert workers.auto_workers([TINY], cuda, 200, out) == 1
    monkeypatch.setattr(workers, "available_memory", lambda: 3 * 2**30)
    assert workers.auto_workers([TINY], cpu, 200, out) == 3  # 1 GiB per worker
    monkeypatch.setattr(workers, "available_memory", lambda: 64 * 2**30)
    small, large = tmp_path / "small", tmp_path / "large"
    for folder, size in ((small, 10 * 2**20), (large, 600 * 2**20)):
        folder.mkdir()
        with open(folder / "model.safetensors", "wb") as weights:
            weights.truncate(size)  # sparse: the size is what counts
    assert workers.weights_bytes(str(small)) == 10 * 2**20
    assert workers.auto_workers([str(small)], cpu, 200, out) == 4
    assert workers.auto_workers([str(large)], cpu, 200, out) == 1
    assert workers.auto_workers([TINY, str(large)], cpu, 200, out) == 1
    assert workers.weights_bytes("no-such-org/not-downloaded") is None
    assert workers.auto_workers(["no-such-org/not-downloaded"], cpu, 200, out) == 1
    # a folder holding stores keeps their layout: a resumed run reads what it wrote
    out.mkdir()
    (out / "results-shard0-of3.sqlite").touch()
    assert workers.auto_workers([TINY], cpu, 200, out) == 3
    (out / "results.sqlite").touch()
    os.utime(out / "results-shard0-of3.sqlite", (0, 0))
    assert workers.auto_workers([TINY], cpu, 200, out) == 1  # the newest layout
    assert workers.auto_threads(4, small=False) == 1
    assert workers.auto_threads(1, small=True) == 1
    assert workers.auto_threads(1, small=False) is None  # torch's default


def test_merged_summaries_and_exit_causes():
    a = Summary("m", samples=2, evaluated=1, resumed=1, failures=["x"], failed_samples={"1"})
    b = Summary("m", samples=1, evaluated=1, failures=["y"], failed_samples={"2"})
    merged = workers.merge([a, b])
    assert (merged.samples, merged.evaluated, merged.resumed) == (3, 2, 1)
    assert merged.failures == ["x", "y"] and merged.failed_samples == {"1", "2"}
    assert workers._exit_cause(-signal.SIGKILL) == "killed by SIGKILL (out of memory?)"
    assert workers._exit_cause(3) == "exited with code 3"
