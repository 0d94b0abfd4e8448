"""Rank-biased overlap against values computed by hand from the definition."""

import pytest
import torch

from mmxai.methods.rbo import prefix_overlaps, rbo, rbo_lists


def test_identical_lists():
    items = list(range(50))
    assert rbo_lists(items, items, p=0.9) == pytest.approx(1.0)
    assert rbo_lists(items, items, p=0.9, form="truncated") == pytest.approx(1 - 0.9**50)


def test_disjoint_lists():
    assert rbo_lists([1, 2, 3], [4, 5, 6]) == 0.0
    assert rbo_lists([1, 2, 3], [4, 5, 6], form="truncated") == 0.0


def test_partial_overlap_by_hand():
    a, b, p = [1, 2, 3], [1, 3, 4], 0.9
    # X_1 = |{1} & {1}| = 1, X_2 = |{1,2} & {1,3}| = 1, X_3 = |{1,2,3} & {1,3,4}| = 2
    agreement = [1 / 1, 1 / 2, 2 / 3]
    truncated = (1 - p) * sum(p**d * a_d for d, a_d in enumerate(agreement))
    extrapolated = agreement[-1] * p**3 + (1 - p) / p * sum(
        p ** (d + 1) * a_d for d, a_d in enumerate(agreement)
    )
    assert truncated == pytest.approx(0.199)
    assert rbo_lists(a, b, p, form="truncated") == pytest.approx(truncated)
    assert rbo_lists(a, b, p) == pytest.approx(extrapolated)


def test_order_matters_and_swap_symmetry():
    assert rbo_lists([1, 2, 3], [3, 2, 1]) < rbo_lists([1, 2, 3], [1, 2, 3])
    assert rbo_lists([1, 2, 3, 9], [2, 1, 7, 3]) == pytest.approx(rbo_lists([2, 1, 7, 3],
                                                                          [1, 2, 3, 9]))


def test_batched_rows_match_single_pairs():
    torch.manual_seed(0)
    ref = torch.randperm(30)[:10]
    rows = torch.stack([torch.randperm(30)[:10] for _ in range(6)])
    batched = rbo(rows, ref)
    for i in range(6):
        assert float(batched[i]) == pytest.approx(rbo_lists(rows[i].tolist(), ref.tolist()))
    overlaps = prefix_overlaps(rows, ref)
    for i in range(6):
        for d in range(1, 11):
            expected = len(set(rows[i, :d].tolist()) & set(ref[:d].tolist()))
            assert overlaps[i, d - 1] == expected


def test_rejects_bad_persistence():
    with pytest.raises(ValueError):
        rbo_lists([1], [1], p=1.0)
