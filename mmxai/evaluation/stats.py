"""Confidence intervals and paired significance tests over samples.

Both work on *samples* (not pooled parts) and recompute the metric's own ``aggregate`` on
each draw, so pooled metrics (TAM's Obj-IoU pools every object of every image) and functions
of pooled means (F1-IoU) get correct intervals and tests without special cases.

- :func:`bootstrap_ci`: percentile interval of the aggregate over ``n_boot`` resamples of
  the samples, drawn with replacement.
- :func:`paired_permutation_p`: two methods scored on the same samples. Under the null
  hypothesis that they are exchangeable, swapping the two methods' parts on any subset of
  samples leaves the distribution of the difference of aggregates unchanged; the p-value is
  the share of ``n_perm`` random swaps whose difference is at least as large in magnitude as
  the observed one (two-sided, +1 correction). With per-sample values and a mean aggregate
  this is the sign-flip test; it also holds for pooled and composite aggregates, and unlike a
  paired bootstrap it stays valid with a handful of samples (3 samples never give p < 0.05).

Every draw comes from ``numpy.random.default_rng(seed)``; ids are sorted first, so the
result does not depend on the order the samples were stored in (shards, resumed runs).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from mmxai.metric import Parts

Aggregate = Callable[[Sequence[Parts]], float]


@dataclass(frozen=True)
class Scorer:
    """A metric's aggregate, with a vectorised path for pooled means of one part.

    ``pooled_part`` names the part whose values are pooled and averaged (the default
    :meth:`mmxai.metric.Metric.aggregate`); then resamples are sums of per-sample sums and
    counts instead of Python calls. Otherwise ``aggregate`` is called on every resample.
    """

    aggregate: Aggregate
    pooled_part: str | None = None
    #: Or: ``aggregate`` is ``from_means`` of the pooled means of these parts.
    pooled_means: tuple[str, ...] = ()
    from_means: Callable[..., np.ndarray] | None = None

    def prepare(self, parts: Sequence[Parts]) -> Callable[[np.ndarray], np.ndarray]:
        """A function from resample indices (B, n) to the B aggregates."""
        if self.pooled_part is not None:
            return _pooled_mean(parts, self.pooled_part)
        if self.pooled_means and self.from_means is not None:
            means = [_pooled_mean(parts, name) for name in self.pooled_means]
            combine = self.from_means
            return lambda index: combine(*(mean(index) for mean in means))

        def generic(index: np.ndarray) -> np.ndarray:
            return np.array([self.aggregate([parts[i] for i in row]) for row in index])

        return generic

    def score(self, parts: Sequence[Parts]) -> float:
        return float(self.prepare(parts)(np.arange(len(parts))[None])[0])


def _pooled_mean(parts: Sequence[Parts], name: str) -> Callable[[np.ndarray], np.ndarray]:
    """Resample indices (B, n) -> the mean of part ``name`` pooled over each resample."""
    values = [np.asarray(p.get(name, []), dtype=np.float64) for p in parts]
    sums = np.array([v.sum() for v in values])
    counts = np.array([v.size for v in values], dtype=np.float64)

    def pooled(index: np.ndarray) -> np.ndarray:
        total, count = sums[index].sum(axis=-1), counts[index].sum(axis=-1)
        return np.divide(total, count, out=np.full(total.shape, np.nan), where=count > 0)

    return pooled


def resample(n: int, n_boot: int, seed: int) -> np.ndarray:
    """(n_boot, n) indices drawn with replacement."""
    return np.random.default_rng(seed).integers(0, n, size=(n_boot, n))


def bootstrap_ci(parts: Sequence[Parts], scorer: Scorer, n_boot: int = 1000, seed: int = 0,
                 level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of ``scorer`` over samples; NaN if there are none."""
    if not parts:
        return float("nan"), float("nan")
    stats = scorer.prepare(parts)(resample(len(parts), n_boot, seed))
    stats = stats[np.isfinite(stats)]
    if not stats.size:
        return float("nan"), float("nan")
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(stats, [tail, 100 - tail])
    return float(low), float(high)


def paired_permutation_p(parts_a: Sequence[Parts], parts_b: Sequence[Parts], scorer: Scorer,
                         n_perm: int = 1000, seed: int = 0) -> float:
    """Two-sided p-value that A and B score alike; parts are paired by index."""
    n = len(parts_a)
    if n != len(parts_b):
        raise ValueError("paired test needs the same samples on both sides")
    if not n:
        return float("nan")
    score = scorer.prepare([*parts_a, *parts_b])  # index i is A's sample i, n + i is B's
    own = np.arange(n)
    observed = float(score(own[None])[0] - score(own[None] + n)[0])
    if not np.isfinite(observed):
        return float("nan")
    swap = np.random.default_rng(seed).integers(0, 2, size=(n_perm, n)).astype(bool)
    a_index = np.where(swap, own + n, own)
    b_index = np.where(swap, own, own + n)
    diffs = score(a_index) - score(b_index)
    diffs = diffs[np.isfinite(diffs)]
    tolerance = 1e-12 * max(1.0, abs(observed))
    extreme = np.count_nonzero(np.abs(diffs) >= abs(observed) - tolerance)
    return float((extreme + 1) / (diffs.size + 1))
