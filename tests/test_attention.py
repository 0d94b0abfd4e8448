"""Raw attention and rollout: the trace's softmax rows, slices of them, rollout's closed
forms on identity and uniform attention, and both methods end to end on two families."""

import copy
import warnings

import numpy as np
import pytest
import torch
from helpers_attribution import FAMILIES, PROMPT, forced, image

from mmxai.api import explain
from mmxai.errors import MMXAIError
from mmxai.methods.attention import AttentionRollout, RawAttention, attention_rows, rollout
from mmxai.trace import Needs


@pytest.fixture(scope="module", params=FAMILIES)
def model(request, tiny_model):
    return tiny_model(request.param)


@pytest.fixture(scope="module")
def trace(model):
    return forced(model, Needs(attentions=True))


def test_trace_attention_rows_are_softmax_rows(trace):
    for layer in trace.attentions:
        heads, size, _ = layer.shape
        assert size == len(trace.sequence) - 1
        torch.testing.assert_close(layer.sum(dim=-1), torch.ones(heads, size))
        assert torch.all(layer.triu(diagonal=1) == 0)  # causal: nothing from the future


def test_raw_attention_is_the_last_layers_head_mean_slice(trace):
    tokens = list(range(trace.n_generated))
    rows = [trace.generating_position(j) for j in tokens]
    columns = torch.as_tensor(trace.image_positions)
    expected = trace.attentions[-1][:, rows][:, :, columns].mean(dim=0)
    maps = RawAttention().explain(trace, tokens)
    assert maps.shape == (len(tokens), len(columns)) and maps.dtype == np.float32
    np.testing.assert_allclose(maps, expected.numpy(), rtol=1e-6)
    assert (maps >= 0).all() and (maps.sum(axis=1) <= 1 + 1e-6).all()


def test_raw_attention_layer_and_head_reductions(trace):
    row = trace.generating_position(1)
    columns = torch.as_tensor(trace.image_positions)
    per_layer = torch.stack([a[:, row, columns].amax(dim=0) for a in trace.attentions])
    maps = RawAttention(layers=(0, 1), head_reduce="max", layer_reduce="max").explain(trace, [1])
    np.testing.assert_allclose(maps[0], per_layer.amax(dim=0).numpy(), rtol=1e-6)
    mean_of_two = RawAttention(layers=(0, -1)).explain(trace, [1])
    expected = torch.stack([a[:, row, columns].mean(dim=0) for a in trace.attentions]).mean(0)
    np.testing.assert_allclose(mean_of_two[0], expected.numpy(), rtol=1e-6)


def test_identity_attention_rolls_out_to_the_identity():
    eye = torch.eye(6).expand(3, 6, 6)
    torch.testing.assert_close(rollout(eye), torch.eye(6))
    torch.testing.assert_close(rollout(eye, rows=[4, 1]), torch.eye(6)[[4, 1]])


@pytest.mark.parametrize("n_layers", [1, 2, 5])
def test_uniform_attention_rolls_out_uniform_off_the_diagonal(n_layers):
    """A = 11^T / T: (I/2 + U/2)^L = 2^-L I + (1 - 2^-L) U, so every other column gets
    the same (1 - 2^-L) / T: uniform over any image tokens."""
    size = 7
    uniform = torch.full((n_layers, size, size), 1.0 / size)
    expected = 2.0**-n_layers * torch.eye(size) + (1 - 2.0**-n_layers) / size
    torch.testing.assert_close(rollout(uniform), expected)
    row = rollout(uniform, rows=[5])[0]
    image_columns = row[[0, 1, 2, 3]]
    assert torch.allclose(image_columns, image_columns[0].expand(4))


def causal_uniform(size: int) -> torch.Tensor:
    """Row i attends uniformly to positions 0..i."""
    return torch.tril(torch.ones(size, size)) / torch.arange(1, size + 1)[:, None]


def test_causal_uniform_attention_rolls_out_as_its_closed_form():
    """One layer: row q is 1/2 + 1/(2(q+1)) on the diagonal and 1/(2(q+1)) on every earlier
    column (uniform over the image tokens before it); layers multiply, causally."""
    size = 6
    one = rollout(causal_uniform(size)[None])
    q = torch.arange(size, dtype=torch.float32)
    expected = torch.tril(torch.ones(size, size)) / (2 * (q[:, None] + 1)) + torch.eye(size) / 2
    torch.testing.assert_close(one, expected)
    three = rollout(causal_uniform(size).expand(3, size, size))
    torch.testing.assert_close(three, expected @ expected @ expected)
    assert torch.all(three.triu(diagonal=1) == 0)
    torch.testing.assert_close(three.sum(dim=-1), torch.ones(size))


def test_rollout_rows_renormalise_and_follow_layer_order():
    torch.manual_seed(0)
    first, second = torch.rand(5, 5), torch.rand(5, 5)  # rows not normalised
    mixed = [(0.5 * a + 0.5 * torch.eye(5)) for a in (first, second)]
    mixed = [m / m.sum(dim=-1, keepdim=True) for m in mixed]
    out = rollout(torch.stack([first, second]))
    torch.testing.assert_close(out, mixed[1] @ mixed[0])  # last layer on the left
    assert not torch.allclose(out, mixed[0] @ mixed[1])
    torch.testing.assert_close(rollout(torch.stack([first, second]), rows=[3]), out[[3]])


def test_rollout_method_reads_the_generating_rows(trace):
    tokens = list(range(trace.n_generated))
    stacked = torch.stack([a.mean(dim=0) for a in trace.attentions])
    full = rollout(stacked)
    rows = [trace.generating_position(j) for j in tokens]
    expected = full[rows][:, torch.as_tensor(trace.image_positions)]
    maps = AttentionRollout().explain(trace, tokens)
    np.testing.assert_allclose(maps, expected.numpy(), rtol=1e-5, atol=1e-7)
    assert (maps > 0).all()
    later = AttentionRollout(start_layer=1).explain(trace, tokens)
    expected_later = rollout(stacked[1:], rows=rows)[:, torch.as_tensor(trace.image_positions)]
    np.testing.assert_allclose(later, expected_later.numpy(), rtol=1e-5, atol=1e-7)


def test_attention_rows_helper_on_a_known_tensor():
    attn = torch.arange(2 * 2 * 3 * 3, dtype=torch.float32).reshape(2, 2, 3, 3)
    out = attention_rows(list(attn), rows=[2], layers=[-1], head_reduce="max")
    torch.testing.assert_close(out, attn[1, 1, 2][None])


@pytest.mark.parametrize("method", ["attention", "rollout"])
def test_attention_methods_end_to_end(model, method):
    explanation = explain(model, image(), PROMPT, method=method, max_new_tokens=4)
    maps = explanation.maps
    assert maps.shape == (explanation.trace.n_generated, len(explanation.trace.image_positions))
    assert np.isfinite(maps).all() and (maps > 0).all() and (maps < 1).all()


def test_switching_to_eager_attention_is_announced(tiny_model):
    model = copy.copy(tiny_model("qwen2-vl"))  # a copy: the shared model stays eager
    model.hf = copy.deepcopy(model.hf)
    model.hf.set_attn_implementation("sdpa")
    with pytest.warns(UserWarning, match="to 'eager'"):
        explain(model, image(), PROMPT, method="attention", max_new_tokens=2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # already eager: nothing to say
        explain(model, image(), PROMPT, method="attention", max_new_tokens=2)


@pytest.mark.parametrize("options", [{"head_reduce": "median"}, {"layer_reduce": "sum"},
                                     {"layers": ()}])
def test_bad_attention_options_are_refused(options):
    with pytest.raises(MMXAIError):
        RawAttention(**options)


def test_bad_rollout_options_are_refused(trace):
    with pytest.raises(MMXAIError):
        AttentionRollout(residual=1.5)
    with pytest.raises(MMXAIError, match="out of range"):
        RawAttention(layers=(7,)).explain(trace, [0])
    with pytest.raises(MMXAIError, match="no decoder layer"):
        AttentionRollout(start_layer=9).explain(trace, [0])


def test_tokens_outside_the_answer_are_refused(trace):
    with pytest.raises(MMXAIError, match="outside"):
        RawAttention()(trace, [trace.n_generated])  # the core's contract (Method.__call__)
    with pytest.raises(MMXAIError, match="outside"):
        AttentionRollout()(trace, [-1])
