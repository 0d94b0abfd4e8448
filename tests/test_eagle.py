"""EAGLE (methods/eagle.py, methods/eagle_search.py): the greedy search does what its
objective says, the map follows the order, the maps fit on every family, options are
refused in one line."""

from __future__ import annotations

import numpy as np
import pytest
from helpers_attribution import PROMPT, forced, image

from mmxai.errors import MMXAIError
from mmxai.methods.eagle import Eagle
from mmxai.methods.eagle_search import Search, greedy_searches, ordering_scores
from mmxai.methods.regions import masked_images, region_labels
from mmxai.options import OptionError
from mmxai.perturb import swap_each
from mmxai.plugins.metrics.faithfulness import baseline_image, token_probabilities
from mmxai.trace import Needs, generate_trace

# a tiny model's forwards are ~20 ms: few regions keep each search at a few dozen
SMALL = {"segments": 4}


def additive(weights: np.ndarray):
    """A fake model: a target's probability is the sum of the kept regions' weights."""
    calls = []

    def evaluate(kept: np.ndarray) -> np.ndarray:
        calls.append(len(kept))
        return kept.astype(float) @ weights

    return evaluate, calls


def test_greedy_picks_by_the_objective_on_a_known_function():
    weights = np.array([[0.1, 0.0], [0.4, 0.1], [0.2, 0.6], [0.35, 0.5]])  # (regions, targets)
    evaluate, calls = additive(weights)
    first, second, both = greedy_searches(evaluate, 4, [[0], [1], [0, 1]], 1.0, 1.0)
    # additive p: F(S + r) - F(S) = 2 w_r, so the order is by weight, largest first
    assert first.order == [1, 3, 2, 0]
    assert second.order == [2, 3, 1, 0]
    assert both.order == [3, 2, 1, 0]  # by the mean weight: 0.05, 0.25, 0.4, 0.425
    np.testing.assert_allclose(first.insight, np.cumsum(weights[first.order, 0]))
    full = weights[:, 0].sum()
    assert first.prior == 0.0 and first.full == pytest.approx(full)
    assert first.objective[-1] == pytest.approx(full + (1 - 0.0))  # all kept, none left
    # 2^4 kept sets at most, each evaluated once however many searches ask for it
    assert sum(calls) <= 16


def test_insight_and_necessity_weights_change_the_choice():
    # region 0 suffices best alone; region 2 is the one the token cannot do without
    table = {(): 0.0, (0,): 0.5, (1,): 0.3, (2,): 0.0,
             (1, 2): 0.2, (0, 2): 0.6, (0, 1): 0.1, (0, 1, 2): 1.0}

    def evaluate(kept):
        return np.array([[table[tuple(np.flatnonzero(k))]] for k in kept])

    assert greedy_searches(evaluate, 3, [[0]], 1.0, 0.0)[0].order[0] == 0  # max p({r})
    assert greedy_searches(evaluate, 3, [[0]], 0.0, 1.0)[0].order[0] == 2  # min p(V - {r})
    # both: F = p({r}) + 1 - p(V - {r}): 0.5 + 0.8, 0.3 + 0.4, 0.0 + 0.9 -> region 0
    both = greedy_searches(evaluate, 3, [[0]], 1.0, 1.0)[0]
    assert both.order[0] == 0 and both.objective[0] == pytest.approx(1.3)


def test_ordering_scores_follow_the_order_and_the_gains():
    search = Search(order=[2, 0, 1], objective=[1.5, 1.7, 1.8], insight=[], necessity_left=[],
                    start=1.0, prior=0.0, full=1.0)
    scores = ordering_scores(search, 3)
    # cumulative |gains| 0.5, 0.7, 0.8 -> -0.5, -0.7, -0.8 -> min-max scaled
    np.testing.assert_allclose(scores[[2, 0, 1]], [1.0, 0.1 / 0.3, 0.0])
    flat = Search([1, 0], [1.0, 1.0], [], [], 1.0, 0.5, 0.5)
    np.testing.assert_array_equal(ordering_scores(flat, 2), [0.0, 0.0])


@pytest.mark.slow
def test_first_region_maximises_the_objective_by_direct_evaluation(tiny_model):
    """On a tiny model: F of every first-step candidate, recomputed through the faithfulness
    metric's own teacher-forced probabilities, peaks at the region the search chose."""
    model = tiny_model("qwen2-vl")
    trace = forced(model)
    method = Eagle(**SMALL, insight_weight=1.0, necessity_weight=0.5)
    token = trace.n_generated - 1
    (reliance,) = method.analyse(trace, [token])
    labels = region_labels(image(), trace.grids, "slico", segments=SMALL["segments"])
    n = int(labels.max()) + 1
    assert n >= 3 and sorted(reliance.order) == list(range(n))
    kept = np.eye(n, dtype=bool)
    pictures = masked_images(image(), baseline_image(image(), "black"), labels,
                             np.concatenate([kept, ~kept]))
    q = trace.generating_position(token)
    p = token_probabilities(model, swap_each(model, trace.inputs, pictures), trace.sequence,
                            [q] * len(pictures), batch=8)
    objective = 1.0 * p[:n] + 0.5 * (1 - p[n:])
    assert reliance.order[0] == int(np.argmax(objective))
    assert reliance.insertion[1] == pytest.approx(p[reliance.order[0]], rel=1e-4)
    # the map ranks the first region highest: with token cells as regions, it is the
    # cell the search chose first, alone at the top
    cells = Eagle(regions="grid", cell=1, insight_weight=1.0, necessity_weight=0.5)
    (by_cell,) = cells.analyse(trace, [token])
    (row,) = cells(trace, [token])
    assert row.shape == (len(trace.image_positions),) == (n_cells := trace.grids[0].size,)
    assert sorted(by_cell.order) == list(range(n_cells))
    assert row[by_cell.order[0]] == pytest.approx(1.0)
    assert np.delete(row, by_cell.order[0]).max() < row[by_cell.order[0]]


def test_analysis_reads_the_prior_and_the_image(tiny_model):
    model = tiny_model("llava")
    trace = forced(model)
    method = Eagle(**SMALL)
    found = method.analyse(trace)
    assert [r.tokens for r in found] == [[j] for j in range(trace.n_generated)]
    for r in found:
        assert r.perception == pytest.approx(r.with_image - r.language_prior)
        assert r.insertion[0] == r.language_prior and r.insertion[-1] == pytest.approx(
            r.with_image, rel=1e-4)
        assert r.area[0] == 0 and r.area[-1] == pytest.approx(1.0)
        assert 0.0 <= r.perceptual_share <= 1.0
    with pytest.raises(MMXAIError, match=r"out of range \(outside \[0, "):
        method.analyse(trace, [trace.n_generated])
    together = Eagle(**SMALL, together=True)
    (joint,) = together.analyse(trace)
    assert joint.tokens == list(range(trace.n_generated))
    assert joint.with_image == pytest.approx(np.mean([r.with_image for r in found]), rel=1e-4)
    maps = together(trace)
    assert np.allclose(maps, maps[:1])  # one search, one map for every token


def test_explain_then_analyse_runs_no_search_twice(tiny_model, monkeypatch):
    import mmxai.methods.eagle as eagle

    model = tiny_model("qwen2-vl")
    trace = forced(model)
    calls = []
    real = eagle.answer_log_probs
    monkeypatch.setattr(eagle, "answer_log_probs",
                        lambda m, v, *a: calls.append(len(v)) or real(m, v, *a))
    method = Eagle(**SMALL)
    first = method(trace)
    spent = sum(calls)
    assert spent > 0
    method.analyse(trace)
    np.testing.assert_array_equal(method(trace), first)
    assert sum(calls) == spent


def test_maps_on_every_family(tiny_model, tiny_family):
    model = tiny_model(tiny_family)
    trace = generate_trace(model, model.build_inputs([image()], PROMPT), Needs(),
                           max_new_tokens=2)
    for options in (SMALL, {"regions": "grid", "cell": 2}):
        maps = Eagle(**options)(trace)
        assert maps.shape == (trace.n_generated, len(trace.image_positions)), options
        assert maps.dtype == np.float32 and np.isfinite(maps).all(), options
        assert (maps >= 0).all() and (maps <= 1).all(), options


@pytest.mark.parametrize("options, words", [
    ({"segments": 1}, "segments must be in [2, 256]"),
    ({"segments": 10_000}, "segments must be in [2, 256]"),
    ({"cell": 0}, "cell must be at least 1"),
    ({"insight_weight": -1.0}, "insight_weight must be >= 0"),
    ({"necessity_weight": float("nan")}, "necessity_weight"),
    ({"insight_weight": 0.0, "necessity_weight": 0.0}, "both 0"),
    ({"batch": 0}, "batch must be at least 1"),
    ({"regions": "quadtree"}, "regions"),
    ({"baseline": "white"}, "baseline"),
])
def test_options_out_of_range_are_refused_in_one_line(options, words):
    with pytest.raises(OptionError) as err:
        Eagle(**options)
    assert words in str(err.value) and "\n" not in str(err.value)


def test_too_many_regions_are_refused_before_any_forward(tiny_model, monkeypatch):
    import mmxai.methods.eagle as eagle

    trace = forced(tiny_model("llava"))
    width, height = trace.inputs.images[0].size
    many = (np.arange(height * width) % 300).reshape(height, width)
    monkeypatch.setattr(eagle, "region_labels", lambda *a, **k: many)
    monkeypatch.setattr(eagle, "answer_log_probs", lambda *a: pytest.fail("a forward ran"))
    with pytest.raises(MMXAIError, match="300 regions of 1x1 tokens, more than 256") as err:
        Eagle(regions="grid", cell=1)(trace)
    assert "\n" not in str(err.value) and str(err.value).endswith("raise cell")
    with pytest.raises(MMXAIError, match="300 slico superpixels, more than 256") as err:
        Eagle(regions="slico")(trace)
    assert str(err.value).endswith("lower segments")


def test_several_images_are_refused_in_one_line(tiny_model):
    model = tiny_model("qwen2-vl")
    inputs = model.build_inputs([image(), image()], PROMPT)
    trace = generate_trace(model, inputs, Needs(), max_new_tokens=1)
    with pytest.raises(MMXAIError, match="one image; this sample has 2"):
        Eagle(**SMALL)(trace)


def test_registered_as_a_costly_forward_only_method():
    from mmxai.registry import manager

    cls = manager().get("methods", "eagle")
    assert cls is Eagle
    assert cls.needs.extra_passes and not cls.needs.gradients and not cls.default_run
    assert "chen2026eagle" in cls.citation and "2509.22496" in cls.citation
