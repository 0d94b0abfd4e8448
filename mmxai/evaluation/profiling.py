"""Cost of one call: wall-clock seconds and the peak memory it added.

- CUDA: ``torch.cuda.max_memory_allocated`` over the call minus what was allocated before
  (the peak statistics are reset first). Exact for tensors; the caching allocator's
  reserve is not counted.
- CPU on Linux: the peak resident set size (``VmHWM``, reset through
  ``/proc/self/clear_refs``) over the call minus the resident size before. Freed memory the
  allocator keeps and reuses is not seen twice, so this is a lower bound on what the call
  touched; other threads of the process count too.
- Elsewhere: the growth of ``ru_maxrss``, i.e. only what exceeds the process's earlier peak.
"""

from __future__ import annotations

import resource
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

_PROC = Path("/proc/self")


def _status_kib(field: str) -> int:
    for line in (_PROC / "status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def _reset_peak_rss() -> bool:
    try:
        (_PROC / "clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _maxrss_bytes() -> int:
    usage = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return usage if sys.platform == "darwin" else usage * 1024


def _current(mode: str, device: torch.device) -> int:
    if mode == "cuda":
        return torch.cuda.memory_allocated(device)
    return _status_kib("VmRSS") * 1024 if mode == "proc" else _maxrss_bytes()


def _peak(mode: str, device: torch.device) -> int:
    if mode == "cuda":
        return torch.cuda.max_memory_allocated(device)
    return _status_kib("VmHWM") * 1024 if mode == "proc" else _maxrss_bytes()


@contextmanager
def measure(device: torch.device) -> Iterator[dict[str, float]]:
    """``with measure(device) as cost: ...`` fills ``cost['seconds']`` and
    ``cost['peak_bytes']`` when the block ends."""
    cost: dict[str, float] = {}
    if device.type == "cuda":
        mode = "cuda"
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    else:
        mode = "proc" if _reset_peak_rss() else "rusage"
    before = _current(mode, device)
    start = time.perf_counter()
    try:
        yield cost
    finally:
        if mode == "cuda":
            torch.cuda.synchronize(device)
        cost["seconds"] = time.perf_counter() - start
        cost["peak_bytes"] = float(max(0, _peak(mode, device) - before))
