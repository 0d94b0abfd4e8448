"""Rank-biased overlap (Webber, Moffat & Zobel 2010), vectorised over many list pairs.

With X_d the size of the overlap of the two top-d prefixes and persistence p:

- truncated:    RBO@k = (1 - p) * sum_{d=1..k} p^(d-1) X_d / d       (identical lists: 1 - p^k)
- extrapolated: RBO_ext = (X_k / k) p^k + ((1 - p) / p) sum_{d=1..k} (X_d / d) p^d
  (identical lists: exactly 1), Eq. 32 of the paper for lists of equal length k.
"""

from __future__ import annotations

import numpy as np
import torch


def prefix_overlaps(lists: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """X_d for d = 1..k between each row of ``lists`` (M, k) and ``reference`` (k,).

    Item i of a row, found at rank q in the reference, is in both top-d prefixes exactly
    when d > max(i, q); so X_d is a cumulative count of those maxima. Items are assumed
    distinct within a list (top-k ids are). Returns (M, k) float64.
    """
    lists = torch.as_tensor(lists)
    reference = torch.as_tensor(reference, device=lists.device)
    m, k = lists.shape
    match = lists[:, :, None] == reference[None, None, :]  # (M, k, k)
    found = match.any(dim=-1)
    rank_in_ref = match.float().argmax(dim=-1)
    own_rank = torch.arange(k, device=lists.device).expand(m, k)
    first_shared = torch.maximum(own_rank, rank_in_ref)
    first_shared = torch.where(found, first_shared, torch.full_like(first_shared, k))
    counts = torch.zeros(m, k + 1, dtype=torch.float64, device=lists.device)
    counts.scatter_add_(1, first_shared, torch.ones_like(first_shared, dtype=torch.float64))
    return counts[:, :k].cumsum(dim=1)


def rbo(lists: torch.Tensor, reference: torch.Tensor, p: float = 0.9,
        form: str = "extrapolated") -> torch.Tensor:
    """RBO of each row of ``lists`` (M, k) against ``reference`` (k,): (M,) in [0, 1]."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"RBO persistence p must be in (0, 1), got {p}")
    x = prefix_overlaps(lists, reference)
    k = x.shape[1]
    depth = torch.arange(1, k + 1, dtype=torch.float64, device=x.device)
    agreement = x / depth
    if form == "truncated":
        return (1 - p) * (agreement * p ** (depth - 1)).sum(dim=1)
    if form == "extrapolated":
        tail = agreement[:, -1] * p**k
        return tail + (1 - p) / p * (agreement * p**depth).sum(dim=1)
    raise ValueError(f"unknown RBO form {form!r}; use 'extrapolated' or 'truncated'")


def rbo_lists(a: list, b: list, p: float = 0.9, form: str = "extrapolated") -> float:
    """RBO of two plain lists of hashable items of equal length (convenience, tests)."""
    ids = {item: i for i, item in enumerate(dict.fromkeys([*a, *b]))}
    ta = torch.tensor([[ids[x] for x in a]])
    tb = torch.tensor([ids[x] for x in b])
    return float(np.asarray(rbo(ta, tb, p=p, form=form))[0])
