"""The bundled benchmark's wall time: ``mmxai compare`` with no arguments, against 3 minutes.

Runs the README's first command (after the install) in a subprocess, into a fresh results
folder, exactly as a user would: every registered method and metric, the bundled testbed
model, the 200-scene held-out split, ``--workers auto`` (one process per usable core).
Prints the wall time, the time per scene, and the ratio to the 180-second budget
(``docs/benchmarks.md``). Extra arguments go to ``mmxai compare`` (``--limit 20`` for a
quick look; ``--workers 1`` to see one core's rate).

Run it on an otherwise idle machine: ``python benchmarks/default_run.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BUDGET_S = 180.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    _, extra = parser.parse_known_args()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "results"
        command = [sys.executable, "-m", "mmxai.cli", "compare", "--out", str(out),
                   "--no-progress", *extra]
        start = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        seconds = time.perf_counter() - start
        if done.returncode != 0:
            sys.exit(f"mmxai compare failed ({done.returncode}):\n{done.stderr[-2000:]}")
        board = json.loads((out / "leaderboard.json").read_text())
    scenes = max(row["n"] + row["failed"] for row in board["rows"])
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"mmxai compare {' '.join(extra)}".strip())
    print(f"  {len(board['rows'])} methods x {len(board['metrics'])} metrics, {scenes} scenes, "
          f"{cores} usable cores")
    print(f"  wall time {seconds:.1f} s = {seconds / scenes:.2f} s per scene; "
          f"ratio to the {BUDGET_S:.0f} s budget: {seconds / BUDGET_S:.2f}")


if __name__ == "__main__":
    main()
