"""``kill -9`` a comparison at random moments, rerun it, and count what was lost or doubled.

A reference run of ``mmxai compare`` goes to completion first. Then, ``--kills`` times, the
same command is started in a fresh process group and SIGKILLed (the parent and every worker)
after a random delay; the same command is rerun into the same ``--out``, and killed again,
until one rerun completes. The final store is compared with the reference row by row:

- lost: a (run key, sample, metric) of the reference missing from the killed store;
- doubled: a (run key, sample, metric) present twice in one store (the schema forbids it;
  this counts it anyway, so a change to the schema cannot hide a double), or counted twice
  by the leaderboard (its ``n`` per cell against the reference's);
- different: a row whose status or values differ from the reference's, or a leaderboard
  cell whose value differs (cost metrics, which measure time, are excluded).

Runs alternate between one and two workers, whose stores differ (``results.sqlite`` and
``results-shard<i>-of-2.sqlite``), so a sample may be computed in both; the leaderboard
keeps one. Those recomputations are printed too.

Prints the figures ``docs/reliability.md`` records. Defaults: the tiny LLaVA, 12 synthetic
scenes, two methods and the localisation metrics, one or two workers alternately.
``python benchmarks/kill_resume.py --kills 26``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

RUN = ["--model", "tiny:llava", "--dataset", "synthetic", "--limit", "12",
       "--method", "tam", "random", "--metric", "obj-iou", "func-iou", "seconds-per-token",
       "--max-new-tokens", "4", "--min-new-tokens", "4", "--bootstrap", "50",
       "--no-progress", "--threads", "1"]
COST = ("seconds-per-token",)


def compare(out: Path, workers: int) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "mmxai.cli", "compare", *RUN,
                             "--workers", str(workers), "--out", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)


def rows(out: Path) -> dict[Path, list[tuple]]:
    """Each store's rows: (model, dataset, method, options_hash, sample, metric, status,
    parts)."""
    found = {}
    for store in sorted(out.glob("results*.sqlite")):
        with sqlite3.connect(f"file:{store}?mode=ro", uri=True) as db:
            found[store] = db.execute("SELECT model, dataset, method, options_hash, "
                                      "sample_id, metric, status, parts FROM results").fetchall()
    return found


def cells(out: Path) -> dict[tuple[str, str], tuple]:
    board = json.loads((out / "leaderboard.json").read_text())
    return {(c["method"], c["metric"]): (c["value"], c["n"], c["failed"])
            for c in board["cells"] if c["metric"] not in COST}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=26)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-delay", type=float, default=20.0,
                        help="longest time a run is left before the kill (s)")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        reference = Path(tmp) / "reference"
        start = time.perf_counter()
        done = compare(reference, 1)
        _, err = done.communicate()
        if done.returncode != 0:
            sys.exit(f"the reference run failed:\n{err.decode()[-2000:]}")
        reference_rows = [r for found in rows(reference).values() for r in found]
        print(f"reference run: {time.perf_counter() - start:.1f} s, {len(reference_rows)} rows")
        expected = {r[:6]: r[6:] for r in reference_rows if r[5] not in COST}
        killed_out = Path(tmp) / "killed"
        kills = reruns = 0
        while True:
            workers = 1 + reruns % 2
            process = compare(killed_out, workers)
            reruns += 1
            if kills < args.kills:
                try:
                    process.wait(timeout=rng.uniform(1.0, args.max_delay))
                except subprocess.TimeoutExpired:
                    os.killpg(process.pid, signal.SIGKILL)
                    process.wait()
                    kills += 1
                    continue
            _, err = process.communicate()
            if process.returncode == 0 and kills >= args.kills:
                break
            if process.returncode != 0:
                sys.exit(f"a rerun failed ({process.returncode}):\n{err.decode()[-2000:]}")
        stores = rows(killed_out)
        doubled = sum(n - 1 for found in stores.values()
                      for n in Counter(r[:6] for r in found).values() if n > 1)
        final = [r for found in stores.values() for r in found]
        recomputed = sum(n - 1 for n in Counter(r[:6] for r in final).values() if n > 1)
        got = {r[:6]: r[6:] for r in final if r[5] not in COST}
        lost = len(set(expected) - set(got))
        different = sum(1 for key, value in expected.items() if key in got and got[key] != value)
        want, table = cells(reference), cells(killed_out)
        doubled += sum(1 for cell, value in want.items() if table.get(cell, value)[1] > value[1])
        different += sum(1 for cell, value in want.items() if table.get(cell) != value)
    print(f"{kills} kill -9s over {reruns} runs (1 and 2 workers alternately): "
          f"{len(expected)} reference rows, {len(want)} leaderboard cells; lost {lost}, "
          f"doubled {doubled}, different {different} "
          f"({recomputed} rows computed again in the other worker layout's store, "
          "counted once)")
    if lost or doubled or different:
        sys.exit(1)


if __name__ == "__main__":
    main()
