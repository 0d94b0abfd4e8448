"""EAGLE's greedy search over image regions, free of any model (Chen et al. 2026).

A search explains one target (a generated token, or several tokens together) with a
probability ``p(keep)`` for any set of kept regions (the others replaced by the baseline).
Its objective for a set ``S`` of regions, out of all regions ``V``, is

    F(S) = insight_weight * p(S) + necessity_weight * (1 - p(V minus S))

the insight score (the regions alone suffice) plus the necessity score (without them the
token goes). The greedy search grows ``S`` one region a step, each time the candidate with
the highest ``F(S + {r})``, until every region is in; the regions' order and the objective
at each step make the map (:func:`ordering_scores`).

Every step's candidates of every search go through ``evaluate`` in one call; kept sets
already evaluated (the full image, the baseline, a prefix two searches share) are read
from a cache, so searches that start alike share their forwards.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

#: ``evaluate(kept)``: (B, n_regions) bool kept sets -> (B, n_targets) probabilities.
Evaluate = Callable[[np.ndarray], np.ndarray]


@dataclass
class Search:
    """One target's greedy search, in the order the regions were chosen.

    ``order[k]`` is the region chosen at step k+1; ``objective[k]`` is ``F`` of the first k+1
    regions; ``insight[k]`` and ``necessity_left[k]`` the target's probability with only
    those regions kept, and with only those removed. ``start`` is ``F`` of the empty set;
    ``prior`` the probability with every region removed (the baseline image: what the
    language prior alone gives), ``full`` with the image as it is.
    """

    order: list[int]
    objective: list[float]
    insight: list[float]
    necessity_left: list[float]
    start: float
    prior: float
    full: float


class _Cache:
    """Probabilities of every target per kept set, evaluated once each."""

    def __init__(self, evaluate: Evaluate) -> None:
        self.evaluate = evaluate
        self.rows: dict[bytes, np.ndarray] = {}

    def __call__(self, kept: np.ndarray) -> np.ndarray:
        """(B, n_regions) bool -> (B, n_targets), evaluating the sets not seen yet in one
        call (each once, however often it appears)."""
        keys = [row.tobytes() for row in kept]
        missing = list(dict.fromkeys(k for k in keys if k not in self.rows))
        if missing:
            first = {k: i for i, k in reversed(list(enumerate(keys)))}
            probs = np.asarray(self.evaluate(kept[[first[k] for k in missing]]),
                               dtype=np.float64)
            self.rows.update(zip(missing, probs, strict=True))
        return np.stack([self.rows[k] for k in keys])


def greedy_searches(evaluate: Evaluate, n_regions: int, targets: Sequence[Sequence[int]],
                    insight_weight: float, necessity_weight: float) -> list[Search]:
    """One greedy search per target, run in lock step.

    ``targets[s]`` lists the columns of ``evaluate``'s output whose mean probability search
    ``s`` explains (one column: a token alone; several: the paper's tokens together).
    Ties go to the lowest region index.
    """
    cache = _Cache(evaluate)
    ends = cache(np.stack([np.zeros(n_regions, bool), np.ones(n_regions, bool)]))

    def prob(rows: np.ndarray, columns: Sequence[int]) -> np.ndarray:
        return rows[:, list(columns)].mean(axis=1)

    def objective(keep_p: np.ndarray, left_p: np.ndarray) -> np.ndarray:
        return insight_weight * keep_p + necessity_weight * (1.0 - left_p)

    searches = []
    for columns in targets:
        prior, full = (float(v) for v in prob(ends, columns))
        searches.append(Search([], [], [], [], float(objective(np.array(prior),
                                                               np.array(full))),
                               prior, full))
    chosen = np.zeros((len(targets), n_regions), bool)
    for _ in range(n_regions):
        kept, owner, region = [], [], []
        for s in range(len(targets)):
            for r in np.flatnonzero(~chosen[s]):
                grown = chosen[s].copy()
                grown[r] = True
                kept.append(grown)
                owner.append(s)
                region.append(r)
        kept = np.asarray(kept)
        keep_rows, left_rows = cache(kept), cache(~kept)
        owner, region = np.asarray(owner), np.asarray(region)
        for s, (columns, search) in enumerate(zip(targets, searches, strict=True)):
            mine = np.flatnonzero(owner == s)
            keep_p, left_p = prob(keep_rows[mine], columns), prob(left_rows[mine], columns)
            scores = objective(keep_p, left_p)
            best = int(np.argmax(scores))  # first of equals: the lowest region index
            chosen[s, region[mine[best]]] = True
            search.order.append(int(region[mine[best]]))
            search.objective.append(float(scores[best]))
            search.insight.append(float(keep_p[best]))
            search.necessity_left.append(float(left_p[best]))
    return searches


def ordering_scores(search: Search, n_regions: int) -> np.ndarray:
    """(n_regions,) scores in [0, 1] from a search: the first region chosen 1, the last 0.

    Region k in the order scores ``-(|g_1| + ... + |g_k|)``, ``g_k = F(S_k) - F(S_{k-1})``
    the objective's gain at step k, then the scores are min-max scaled: the order fixes the
    ranking, the gains fix the spacing (a region that barely moved the objective scores
    nearly what the region before it did). A search whose objective never moved gives 0
    everywhere: no region made a difference.
    """
    values = np.concatenate([[search.start], search.objective])
    scores = np.empty(n_regions, dtype=np.float64)
    scores[search.order] = -np.cumsum(np.abs(np.diff(values)))
    spread = scores.max() - scores.min()
    return (scores - scores.min()) / spread if spread > 0 else np.zeros(n_regions)
