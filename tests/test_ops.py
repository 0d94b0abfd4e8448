"""The shared numeric helpers on hand-made arrays and against plain loops."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from helpers_tam import load_benchmark

from mmxai.methods import tam_ops as ops

bench = load_benchmark()


def hand_rgf(window: np.ndarray) -> float:
    """The rank Gaussian filter of one 3x3 window, step by step as docs/tam.md states it."""
    x = np.sort(window.ravel())
    mu = x.mean()
    sd = np.sqrt(((x - mu) ** 2).mean())
    cv = sd / mu
    g = np.array([np.exp(-d * d / (2 * cv * cv)) for d in range(-4, 5)])
    return float((g / g.sum() * x).sum())


def centre(window: np.ndarray, **kw) -> float:
    """Filter a 3x3 grid: its centre cell's window is the whole grid."""
    return float(ops.rank_gaussian_filter(window[None], **kw)[0, 1, 1])


def test_sparse_window_matches_hand_computation():
    window = np.array([0, 0, 0, 0, 0, 0, 0.1, 0.5, 1.0]).reshape(3, 3)
    expected = hand_rgf(window)
    assert expected == pytest.approx(0.0628, abs=5e-4)  # the spec's 0.063
    assert centre(window) == pytest.approx(expected, abs=1e-12)
    # median 0, mean 0.178: the filter sits between them, near the median
    assert 0 < centre(window) < window.mean()


def test_homogeneous_window_gives_its_median():
    window = np.array([0.50, 0.55, 0.60, 0.62, 0.65, 0.70, 0.72, 0.80, 0.90]).reshape(3, 3)
    assert centre(window) == pytest.approx(hand_rgf(window), abs=1e-12)
    assert centre(window) == pytest.approx(np.median(window), abs=1e-3)


def test_constant_window():
    window = np.full((3, 3), 0.4)
    assert centre(window) == pytest.approx(0.4)
    assert centre(window, constant="reference") == 0.0
    assert centre(np.zeros((3, 3))) == 0.0
    assert centre(np.full((3, 3), -0.3)) == 0.0  # mu <= 0 gives 0


def test_no_nan_for_nearly_constant_window():
    window = np.full((3, 3), 0.4)
    window[0, 0] += 1e-300
    window[2, 2] = np.nextafter(0.4, 1.0)
    out = ops.rank_gaussian_filter(window[None])
    assert np.isfinite(out).all()
    assert out[0, 1, 1] == pytest.approx(0.4)


@pytest.mark.parametrize("shape", [(17, 23), (24, 24), (5, 3), (2, 7), (1, 6)])
@pytest.mark.parametrize("kernel_size", [1, 3, 5])
def test_filter_equals_per_cell_loop(shape, kernel_size):
    rng = np.random.default_rng(shape[0] * 100 + shape[1] + kernel_size)
    maps = rng.random((3, *shape))
    maps[0] = np.where(maps[0] < 0.5, 0.0, maps[0])  # sparse
    maps[1, : shape[0] // 2] = 0.25  # a constant patch
    for constant in ("value", "reference"):
        out = ops.rank_gaussian_filter(maps, kernel_size, constant)
        loop = np.stack([bench.loop_rgf(m, kernel_size, constant) for m in maps])
        np.testing.assert_allclose(out, loop, atol=1e-12)


def test_filter_keeps_array_kind_and_chunks():
    rng = np.random.default_rng(0)
    maps = rng.random((40, 36, 36)).astype(np.float32)  # more cells than one chunk
    out_np = ops.rank_gaussian_filter(maps)
    out_t = ops.rank_gaussian_filter(torch.from_numpy(maps))
    assert isinstance(out_np, np.ndarray) and isinstance(out_t, torch.Tensor)
    assert out_np.dtype == np.float32 and out_np.shape == maps.shape
    np.testing.assert_array_equal(out_np, out_t.numpy())
    np.testing.assert_allclose(out_np[7], ops.rank_gaussian_filter(maps[7:8])[0])


def test_reflect_padding_on_edges():
    assert ops.reflect_index(3, 1).tolist() == [1, 0, 1, 2, 1]
    assert ops.reflect_index(3, 2).tolist() == [2, 1, 0, 1, 2, 1, 0]
    assert ops.reflect_index(1, 2).tolist() == [0] * 5
    for size, pad in itertools.product(range(1, 6), range(0, 5)):
        expected = np.pad(np.arange(size), pad, mode="reflect")
        assert ops.reflect_index(size, pad).tolist() == expected.tolist()
    # the corner cell's window reads the mirrored cells, not repeated edges
    grid = np.arange(1.0, 10.0).reshape(3, 3)
    corner = np.pad(grid, 1, mode="reflect")[:3, :3]
    assert corner.tolist() == [[5, 4, 5], [2, 1, 2], [5, 4, 5]]
    assert ops.rank_gaussian_filter(grid[None])[0, 0, 0] == pytest.approx(hand_rgf(corner))


def test_sorting_network_sorts_every_binary_input():
    for n in (1, 2, 9, 11):
        values = np.array(list(itertools.product([0, 1], repeat=n))).T  # (n, 2^n)
        rows = list(values)
        for a, b in ops.sorting_network(n):
            rows[a], rows[b] = np.minimum(rows[a], rows[b]), np.maximum(rows[a], rows[b])
        assert (np.diff(np.stack(rows), axis=0) >= 0).all()
    assert len(ops.sorting_network(9)) < 36  # fewer than odd-even transposition


def test_rgf_rejects_even_kernels():
    with pytest.raises(ValueError):
        ops.rank_gaussian_filter(np.zeros((1, 3, 3)), kernel_size=2)


def test_lstsq_scale_closed_form():
    rng = np.random.default_rng(1)
    target, basis = rng.random((4, 30)), rng.random((4, 30))
    scale = ops.lstsq_scale(target, basis)
    expected = (target * basis).sum(-1) / (basis * basis).sum(-1)
    np.testing.assert_allclose(scale, expected)
    for row in range(4):  # it is the minimiser: nudging it only increases the residual
        def residual(s, row=row):
            return ((target[row] - s * basis[row]) ** 2).sum()
        assert residual(scale[row]) < min(residual(scale[row] + 1e-3),
                                          residual(scale[row] - 1e-3))
    assert ops.lstsq_scale(target[:1], np.zeros((1, 30)))[0] == 0.0


def test_eci_removes_the_context_map():
    own = np.array([0, 0, 2.0, 3.0, 0, 0])
    ctx = np.array([1.0, 4.0, 0, 0, 2.0, 0])
    other = np.array([0, 0, 0, 0, 0, 5.0])
    history = np.stack([ctx, other, own + 0.7 * ctx])
    relevance = np.array([[2.0, 0.0, 9.0]])  # the unrelated map has zero relevance
    out = ops.estimated_causal_inference(history[2:], history, relevance,
                                         np.array([[True, True, False]]))
    np.testing.assert_allclose(out[0], own, atol=1e-7)


def test_eci_weights_and_scale_match_the_formula():
    rng = np.random.default_rng(2)
    history = rng.random((6, 20))
    relevance = rng.random((2, 6))
    context = np.array([[1, 1, 0, 1, 0, 0], [1, 0, 1, 1, 1, 0]], dtype=bool)
    out = ops.estimated_causal_inference(history[[4, 5]], history, relevance, context)
    for j, k in enumerate([4, 5]):
        ctx = np.flatnonzero(context[j])
        w = relevance[j, ctx] / (relevance[j, ctx].sum() + 1e-8)
        e = (w[:, None] * history[ctx]).sum(0)
        s = history[k] @ e / (e @ e)
        np.testing.assert_allclose(out[j], np.maximum(history[k] - s * e, 0), atol=1e-12)


def test_eci_empty_or_irrelevant_context_leaves_map_unchanged():
    rng = np.random.default_rng(3)
    history = rng.random((3, 10))
    empty = ops.estimated_causal_inference(history[2:], history, np.ones((1, 3)),
                                           np.zeros((1, 3), bool))
    np.testing.assert_array_equal(empty, history[2:])
    zero_relevance = ops.estimated_causal_inference(history[2:], history, np.zeros((1, 3)),
                                                    np.ones((1, 3), bool))
    np.testing.assert_array_equal(zero_relevance, history[2:])
    zero_maps = np.zeros_like(history)
    zero_maps[2] = history[2]
    zero_e = ops.estimated_causal_inference(zero_maps[2:], zero_maps, np.ones((1, 3)),
                                            np.array([[True, True, False]]))
    np.testing.assert_array_equal(zero_e, history[2:])


def test_joint_minmax_uses_masked_text_and_guards_constants():
    image = np.array([[1.0, 3.0], [2.0, 2.0], [0.5, 0.5]])
    text = np.array([[5.0, -1.0], [9.0, 2.0], [0.5, 0.5]])
    mask = np.array([[True, False], [False, True], [True, True]])
    img, txt = ops.joint_minmax(image, text, mask)
    np.testing.assert_allclose(img[0], [0.0, 0.5])  # range 1..5; the -1 is masked out
    np.testing.assert_allclose(txt[0], [1.0, 0.0])
    np.testing.assert_array_equal(img[1], [0.0, 0.0])  # constant row: 0, not NaN (Q8)
    np.testing.assert_array_equal(img[2], [0.0, 0.0])
    assert np.isfinite(img).all() and np.isfinite(txt).all()
    plain, _ = ops.joint_minmax(image[:1], np.zeros((1, 0)))
    np.testing.assert_allclose(plain[0], [0.0, 1.0])
