"""Cost metrics: what a method costs on top of the shared trace, read from ``item.cost``.

The evaluator measures around each ``method.explain`` call (one call explains every
generated token of a sample): wall-clock seconds divided by the number of tokens, and the
peak memory the call added (CUDA: ``max_memory_allocated`` over the call; CPU: the peak
resident set size over the call). The shared generation is not counted: every method pays
it once, together.
"""

from __future__ import annotations

from typing import ClassVar

from mmxai.errors import InputError
from mmxai.hookspecs import hookimpl
from mmxai.metric import EvalItem, Metric, Parts


class _Cost(Metric):
    category: ClassVar[str] = "cost"
    higher_is_better: ClassVar[bool] = False
    key: ClassVar[str] = ""
    scale: ClassVar[float] = 1.0

    def measure(self, item: EvalItem) -> Parts:
        if self.key not in item.cost:
            raise InputError(f"{self.name}: the evaluator measured no {self.key!r}")
        return {"value": [float(item.cost[self.key]) * self.scale]}


class SecondsPerToken(_Cost):
    name = "seconds-per-token"
    summary = "wall-clock seconds of the method per explained token (shared trace excluded)"
    key = "seconds_per_token"


class PeakMemory(_Cost):
    name = "peak-memory"
    summary = "peak memory the method added while explaining a sample, in MiB"
    key = "peak_bytes"
    scale = 1 / 2**20


@hookimpl
def register_metrics(register):
    register(SecondsPerToken)
    register(PeakMemory)
