"""The GPU check (benchmarks/gpu_check.sh): its dry run installs mmxai into a folder of its
own, as on the GPU machine, takes every step on the CPU and writes the whole table, as the
GPU machine would, without captum or pycocotools; a slow step is cut by its own guard and
the run goes on."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mmxai.registry import manager

REPO = Path(__file__).resolve().parents[1]
MISSING_ON_THE_GPU_MACHINE = ("captum", "pycocotools")


def rows(table: str) -> dict[str, list[str]]:
    """``{step: [images/s, tokens/s, memory, of bare, note]}`` from the markdown table."""
    lines = [line for line in table.splitlines() if line.startswith("| ")]
    assert lines[0].startswith("| step | images/s | tokens/s | peak memory (GiB) |")
    cells = [[c.strip() for c in line.strip("|").split(" | ")] for line in lines[1:]]
    return {c[0]: c[1:] for c in cells}


def positive(cell: str) -> bool:
    return cell != "-" and float(cell) > 0


def blocker(folder: Path) -> Path:
    """Packages that fail to import as a missing one does: the GPU machine lacks them."""
    for name in MISSING_ON_THE_GPU_MACHINE:
        (folder / name).mkdir(parents=True)
        (folder / name / "__init__.py").write_text(
            f"raise ModuleNotFoundError(\"No module named '{name}'\", name='{name}')\n")
    return folder


@pytest.mark.slow
def test_the_dry_run_measures_every_step_without_captum_or_pycocotools(tmp_path):
    # installed as on the GPU machine (this checkout built into a folder of its own, no
    # wheels given), though the tests' python has mmxai already: every step must run the
    # installed copy, never the checkout's bare mmxai/ folder
    site = tmp_path / "site"
    env = {**os.environ, "PYTHON": sys.executable, "HF_HUB_OFFLINE": "1",
           "GPU_CHECK_INSTALL": "1", "MMXAI_SITE": str(site), "WHEELS": str(tmp_path / "none"),
           "PYTHONPATH": os.pathsep.join(filter(None, [
               str(blocker(tmp_path / "blocked")), os.environ.get("PYTHONPATH")]))}
    out = tmp_path / "out"
    done = subprocess.run(["bash", "benchmarks/gpu_check.sh", "--dry-run", "--out", str(out)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"installing this checkout into {site}" in done.stderr
    assert f"mmxai from {site / 'mmxai' / '__init__.py'}" in (out / "compare.log").read_text()
    table = (out / "gpu_check.md").read_text()
    assert table in done.stdout  # printed at the end, as written
    assert table.startswith("# GPU check (dry run)")
    found = rows(table)

    measured = {
        "bare generate, batch 2": 1.0,
        "shared trace (logit-lens, tam, arc needs), batch 2": None,
        "logit-lens group (logit-lens, tam, arc): trace + explain, batch 2": None,
        "traces with every method's needs, batch 2": None,
        "device map: batched trace on the split model": None,
    }
    for step, share in measured.items():
        images, tokens, memory, of_bare, note = found.pop(step)
        assert all(map(positive, (images, tokens, memory, of_bare))), (step, note)
        assert share is None or float(of_bare) == share
    *_, model_memory, _, note = found.pop("model (tiny Qwen2-VL, float32)")
    assert positive(model_memory) and "image grids [(4, 4)]" in note

    *_, ratio, verdict = found.pop("target: logit-lens group >= 90% of bare generate throughput")
    word, percent = verdict.split()
    assert word == ("PASS" if float(ratio) >= 0.9 else "FAIL")
    assert abs(float(percent.strip("(%)")) - 100 * float(ratio)) < 1  # ratio has 2 decimals

    images, tokens, memory, _, note = found.pop("compare: synthetic16, --device cpu, --limit 1")
    assert positive(images) and positive(memory) and tokens == "-", note
    assert (out / "compare_leaderboard.md").exists() and (out / "compare.log").exists()

    for name in manager().names("methods"):
        images, tokens, memory, _, note = found.pop(f"method: {name}")
        if note.startswith("unavailable:"):  # only for want of a package the GPU lacks
            assert any(f"'{p}'" in note for p in MISSING_ON_THE_GPU_MACHINE), (name, note)
        else:  # a costly method explains a few tokens: no images/s
            assert all(map(positive, (tokens, memory))), (name, note)
            assert note.startswith("explain only")
            assert (images == "-") == ("costly:" in note), (name, note)
    for step, (*_, note) in list(found.items()):
        if step.startswith("plugin: "):
            assert note.startswith("unavailable:"), (step, note)
            found.pop(step)
    assert not found, f"unexpected rows: {sorted(found)}"


def load_gpu_check(monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    import gpu_check
    return gpu_check


def test_a_step_past_its_guard_is_a_row_and_the_run_goes_on(tmp_path, monkeypatch):
    gpu_check = load_gpu_check(monkeypatch)
    setup = dataclasses.replace(gpu_check.DRY, budget=30,
                                guards={**gpu_check.DRY.guards, "bare": 1, "trace": 5})
    import torch
    table = gpu_check.Table(tmp_path / "gpu_check.md", ["# GPU check"])
    check = gpu_check.Check(setup, torch.device("cpu"), table)

    def slow() -> gpu_check.Row:
        end = time.monotonic() + 10
        while time.monotonic() < end:  # a Python loop, as generate's steps are
            time.sleep(0.01)
        return gpu_check.Row("", images_s=1.0)

    start = time.monotonic()
    assert check.step("slow", "bare", slow) is None
    assert time.monotonic() - start < 5
    # the row is on disk at once: a crash later keeps it
    assert "| slow | - | - |" in (tmp_path / "gpu_check.md").read_text()
    assert "failed: StepTimeout: stopped by its 1 s time guard" in table.rows[0].note
    assert check.step("fast", "trace", lambda: gpu_check.Row("", images_s=2.0)) is not None
    assert table.rows[1].images_s == 2.0 and table.rows[1].memory_gib > 0


def test_a_missing_package_makes_a_step_unavailable_and_the_budget_skips(tmp_path, monkeypatch):
    gpu_check = load_gpu_check(monkeypatch)
    import torch

    def needs_captum() -> gpu_check.Row:
        import captum_that_is_not_installed  # noqa: F401
        raise AssertionError("imported a package that does not exist")

    table = gpu_check.Table(tmp_path / "gpu_check.md", ["# GPU check"])
    check = gpu_check.Check(gpu_check.DRY, torch.device("cpu"), table)
    check.step("method: x", "method", needs_captum)
    assert table.rows[-1].note.startswith("unavailable: ModuleNotFoundError")
    check.deadline = time.monotonic() + 5  # less than the reserve: nothing more starts
    check.step("late", "method", lambda: gpu_check.Row(""), reserve=10)
    assert table.rows[-1].note == "skipped: the run's time budget is spent"
