"""The method contract, checked once by the core (``Method.__call__``), for every method.

Every registered method, on one generated trace of the tiny LLaVA model recorded with what
all of them need: an empty request is ``(0, N_image)`` float32 without calling ``explain``;
negative and past-the-answer indices are refused in one line naming the method and the
range (no wrapping from the end); no tokens means every token; maps of the wrong shape or
with NaN are refused in one line naming the method. Option ranges are refused by the
Options dataclasses, in one line naming the plugin and the option.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers_attribution import CHEAP, PROMPT, image

from mmxai.api import explain_many
from mmxai.errors import InputError, MMXAIError
from mmxai.method import InvalidMapsError, Method, token_indices
from mmxai.options import OptionError
from mmxai.registry import manager
from mmxai.trace import Needs, Trace, generate_trace

METHODS = sorted(manager().items("methods"))
N_TOKENS = 3


def method_class(name: str) -> type[Method]:
    return manager().get("methods", name)


@pytest.fixture(scope="module")
def trace(tiny_model) -> Trace:
    model = tiny_model("llava")
    needs = Needs()
    for name in METHODS:
        needs = needs | method_class(name)().needs
    inputs = model.build_inputs([image()], PROMPT)
    traced = generate_trace(model, inputs, needs, max_new_tokens=N_TOKENS,
                            min_new_tokens=N_TOKENS)
    assert traced.n_generated == N_TOKENS
    # what explain_many and the evaluator each used to call N_image: the same number
    assert sum(grid.size for grid in traced.grids) == len(traced.image_positions)
    return traced


def one_line(exc: pytest.ExceptionInfo) -> str:
    text = str(exc.value)
    assert text and "\n" not in text, text
    return text


@pytest.mark.parametrize("name", METHODS)
def test_no_tokens_is_an_empty_float32_array_without_calling_explain(name, trace):
    method = method_class(name)()

    def explain(trace, tokens):
        raise AssertionError("explain called for no tokens")

    method.explain = explain
    for nothing in ([], (), range(0), np.zeros(0, dtype=np.int64)):
        maps = method(trace, nothing)
        assert maps.shape == (0, len(trace.image_positions)) and maps.dtype == np.float32


@pytest.mark.parametrize("name", METHODS)
def test_indices_outside_the_answer_are_refused_in_one_line(name, trace):
    method = method_class(name)()
    n = trace.n_generated
    for bad in ([-1], [n], [0, n + 3]):
        with pytest.raises(InputError) as caught:
            method(trace, bad)
        text = one_line(caught)
        assert repr(name) in text and f"[0, {n})" in text and "out of range" in text, text


@pytest.mark.parametrize("name", METHODS)
def test_no_token_list_means_every_token(name, trace):
    method = method_class(name)(**CHEAP.get(name, {}))
    n = trace.n_generated
    every = method(trace)
    assert every.shape == (n, len(trace.image_positions)) and every.dtype == np.float32
    assert np.isfinite(every).all()
    np.testing.assert_allclose(method(trace, range(n)), every, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(method(trace, np.array([n - 1, 0])), every[[n - 1, 0]],
                               rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", METHODS)
def test_maps_of_the_wrong_shape_or_with_nan_are_refused_in_one_line(name, trace):
    cls = method_class(name)

    class WrongShape(cls):
        def explain(self, trace, tokens):
            return np.asarray(super().explain(trace, tokens))[:, :-1]

    class WithNaN(cls):
        def explain(self, trace, tokens):
            maps = np.array(super().explain(trace, tokens), dtype=np.float64)
            maps[-1, 0] = np.nan
            return maps

    n, n_image = trace.n_generated, len(trace.image_positions)
    small = CHEAP.get(name, {})
    with pytest.raises(InvalidMapsError) as caught:
        WrongShape(**small)(trace)
    text = one_line(caught)
    assert text.startswith(f"method {name!r} returned maps of shape ({n}, {n_image - 1})")
    assert f"expected ({n}, {n_image})" in text
    with pytest.raises(InvalidMapsError) as caught:
        WithNaN(**small)(trace, [2, 0])
    text = one_line(caught)
    assert text.startswith(f"method {name!r} returned 1 NaN or infinite value(s)")
    assert text.endswith("for generated token(s) 0")  # the row of token 0, not row 1


def test_token_indices_take_integers_and_refuse_the_rest():
    assert token_indices(None, 3) == [0, 1, 2]
    assert token_indices(range(1, 3), 3) == [1, 2]
    assert token_indices([np.int64(2), np.int32(0), 2], 3) == [2, 0, 2]  # order, repeats
    assert token_indices(np.array([1, 0]), 3) == [1, 0]
    assert token_indices(torch.tensor([2, 1]), 3) == [2, 1]
    assert token_indices([], 0) == []
    for bad, phrase in [([True], "True is not a token index"),
                        ([np.bool_(False)], "False is not a token index"),
                        ([1.0], "1.0 is not a token index"),
                        ([np.float64(1.5)], "1.5 is not a token index"),
                        (["0"], "'0' is not a token index"),
                        ([[0, 1]], "[0, 1] is not a token index"),
                        (2, "expected a sequence of token indices in [0, 3), got int"),
                        ("01", "expected a sequence of token indices in [0, 3), got str"),
                        ([-1], "[-1] out of range (outside [0, 3): the answer has 3"),
                        (list(range(-7, 0)), "[-7, -6, -5, -4, -3, ...] out of range")]:
        with pytest.raises(InputError) as caught:
            token_indices(bad, 3, "method 'x', tokens")
        text = one_line(caught)
        assert text.startswith("method 'x', tokens: ") and phrase in text, text
        assert "[0, 3)" in text


def test_logit_lens_no_longer_wraps_a_negative_index(trace):
    lens = method_class("logit-lens")()
    with pytest.raises(InputError, match=r"'logit-lens', tokens: \[-1\] out of range"):
        lens(trace, [-1])


def test_explain_many_checks_the_tokens_before_any_method(tiny_model):
    """Out-of-range tokens are the request's error, raised even when failures are
    collected (not one failure per method)."""
    failures: dict[str, BaseException] = {}
    with pytest.raises(InputError, match=r"^tokens: \[9\] out of range \(outside \[0, 2\)"):
        explain_many(tiny_model("llava"), image(), PROMPT, ["centre", "random"],
                     max_new_tokens=2, tokens=[9], failures=failures,
                     generate_kwargs={"min_new_tokens": 2})
    assert failures == {}


@pytest.mark.parametrize(("kind", "name", "options", "message"), [
    ("methods", "centre", {"sigma": 0}, "method 'centre': sigma must be positive, got 0.0"),
    ("methods", "centre", {"sigma": "-1"}, "method 'centre': sigma must be positive, got -1.0"),
    ("methods", "rollout", {"residual": 1.5},
     "method 'rollout': residual must lie in [0, 1], got 1.5"),
    ("methods", "attention", {"layers": ()},
     "method 'attention': layers must name at least one decoder layer"),
    ("metrics", "deletion", {"steps": 1}, "metric 'deletion': steps must be at least 2, got 1"),
    ("metrics", "insertion", {"steps": "0"},
     "metric 'insertion': steps must be at least 2, got 0"),
    ("metrics", "randomisation", {"top": 0},
     "metric 'randomisation': top must be in (0, 1], got 0.0"),
])
def test_option_ranges_are_refused_by_the_options_dataclass(kind, name, options, message):
    cls = manager().get(kind, name)
    with pytest.raises(OptionError) as caught:
        cls(**options)
    assert one_line(caught) == message
    assert isinstance(caught.value, MMXAIError)
    with pytest.raises(ValueError):  # the dataclass itself, wherever it is built
        cls.Options(**{key: float(value) if key != "layers" else value
                       for key, value in options.items()})


def test_token_indices_before_the_answer_is_known_check_all_but_the_upper_bound():
    """``n_generated=None``: what the API checks before it generates (types, signs)."""
    assert token_indices(None, None) is None
    assert token_indices((t for t in [7, 0]), None) == [7, 0]
    for bad, message in [
        ([1.7], "tokens: 1.7 is not a token index (whole numbers in [0, answer length))"),
        ([True], "tokens: True is not a token index (whole numbers in [0, answer length))"),
        (["a"], "tokens: 'a' is not a token index (whole numbers in [0, answer length))"),
        (5, "tokens: expected a sequence of token indices in [0, answer length), got int"),
        ([0, -2], "tokens: [-2] out of range (token indices count from 0, no wrapping from "
                  "the end)"),
    ]:
        with pytest.raises(InputError) as caught:
            token_indices(bad, None)
        assert one_line(caught) == message
