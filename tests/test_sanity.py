"""Model parameter randomisation: Spearman of maps, the randomised copy, the metric."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from helpers_evaluator import FAMILY, item, one_torch_thread, traced  # noqa: F401

from mmxai.errors import MMXAIError
from mmxai.plugins.metrics.sanity import Randomisation, randomised_copy, spearman
from mmxai.registry import manager
from mmxai.trace import Needs


def test_spearman_golden_values():
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    # one adjacent swap: 1 - 6 * 2 / (4 * 15)
    assert spearman([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(0.8)
    # ranks, not values: a monotone transform changes nothing
    a = np.random.default_rng(0).random((3, 5))
    assert spearman(a, np.exp(5 * a)) == pytest.approx(1.0)
    # ties get average ranks: [1, 2.5, 2.5, 4] against [1, 2, 3, 4]
    assert spearman([0, 1, 1, 2], [0, 1, 2, 3]) == pytest.approx(np.corrcoef(
        [1, 2.5, 2.5, 4], [1, 2, 3, 4])[0, 1])
    assert spearman(np.zeros(4), np.zeros(4)) == 1.0  # nothing changed
    assert spearman(np.zeros(4), [1, 2, 3, 4]) == 0.0
    with pytest.raises(ValueError):
        spearman([1, 2], [1, 2, 3])


def test_randomised_copy_redraws_only_the_top_layers(tiny_model):
    model = tiny_model(FAMILY)
    layers = list(model.decoder_layers())
    before = {k: v.clone() for k, v in model.hf.state_dict().items()}
    copy = randomised_copy(model, top=0.5, seed=3)
    count = math.ceil(0.5 * len(layers))
    assert copy.hf is not model.hf and type(copy) is type(model)
    for k, v in model.hf.state_dict().items():  # the original is untouched
        assert torch.equal(v, before[k])
    new_layers = list(copy.decoder_layers())
    for old, new in zip(layers[:-count], new_layers[:-count], strict=True):
        for p, q in zip(old.parameters(), new.parameters(), strict=True):
            assert p is q  # shared, not copied
    for old, new in zip(layers[-count:], new_layers[-count:], strict=True):
        for p, q in zip(old.parameters(), new.parameters(), strict=True):
            assert p is not q
            assert torch.equal(p, q) == (p.dim() < 2)  # matrices redrawn, norms kept
    assert copy.unembedding() is model.unembedding()
    again = randomised_copy(model, top=0.5, seed=3)
    for p, q in zip(copy.hf.parameters(), again.hf.parameters(), strict=True):
        assert torch.equal(p, q)  # seeded


def test_a_method_that_ignores_the_model_fails_the_check(tiny_model):
    model = tiny_model(FAMILY)
    trace = traced(model, n_tokens=3, needs=Needs())
    metric = Randomisation()
    centre = metric.measure(item(model, trace, "centre"))["value"]
    assert centre == [1.0, 1.0, 1.0]
    seeded_noise = metric.measure(item(model, trace, "random"))["value"]
    assert seeded_noise == pytest.approx([1.0, 1.0, 1.0])
    lens = metric.measure(item(model, trace, "logit-lens"))["value"]
    assert len(lens) == 3 and np.mean(lens) < 0.95
    assert metric.randomised(model) is metric.randomised(model)  # built once per model


def test_max_tokens_scores_the_explained_tokens_only(tiny_model):
    model = tiny_model(FAMILY)
    trace = traced(model, n_tokens=4, needs=Needs())
    lens = item(model, trace, "logit-lens")
    every = Randomisation().measure(lens)["value"]
    chosen = lens.explained_tokens(2)
    assert len(chosen) == 2 and chosen == lens.explained_tokens()[:2]
    some = Randomisation(max_tokens=2).measure(lens)["value"]
    assert some == pytest.approx([every[j] for j in chosen])


def test_registered_and_validated():
    assert manager().get("metrics", "randomisation") is Randomisation
    assert not Randomisation.higher_is_better and Randomisation.category == "sanity"
    with pytest.raises(MMXAIError, match="top"):
        Randomisation(top=0)
