"""CP-LRP and AttnLRP: the rules' gradient forms, conservation where the rules guarantee it
(bias-free stacks and a tiny LLaVA), unchanged forward values, and both methods end to end
on two families."""

import numpy as np
import pytest
import torch
from helpers_attribution import FAMILIES, PROMPT, forced, image
from transformers import LlamaConfig, LlamaForCausalLM
from transformers.models.llama.modeling_llama import LlamaMLP, LlamaRMSNorm
from transformers.models.llama.modeling_llama import eager_attention_forward as hf_eager

from mmxai.api import explain
from mmxai.errors import MMXAIError, UnsupportedModelError
from mmxai.methods.backprop import leaf_inputs, token_logits
from mmxai.methods.lrp import (
    CPLRP,
    AttnLRP,
    attnlrp_attention,
    cp_lrp_attention,
    divide_gradient,
    identity_rule,
    lrp_rules,
    relevance,
)


def grad_x_input(fn, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(output, relevance = x * d sum(output) / dx)."""
    x = x.detach().requires_grad_(True)
    out = fn(x)
    (grad,) = torch.autograd.grad(out.sum(), x)
    return out.detach(), (x * grad).detach()


def test_identity_rule_passes_relevance_through_unchanged():
    x = torch.tensor([-2.0, -0.5, 0.0, 0.3, 4.0])
    out, rel = grad_x_input(lambda v: identity_rule(torch.nn.functional.silu, v), x)
    torch.testing.assert_close(out, torch.nn.functional.silu(x))
    torch.testing.assert_close(rel, out)  # R_in = x * act(x)/x * 1 = act(x) = R_out


def test_divide_gradient_halves_relevance_of_a_product():
    a, b = torch.randn(4), torch.randn(4)
    x = torch.cat([a, b]).requires_grad_(True)
    out = divide_gradient(x[:4] * x[4:], 2)
    (grad,) = torch.autograd.grad(out.sum(), x)
    rel = x.detach() * grad
    torch.testing.assert_close(rel[:4] + rel[4:], (a * b))  # the uniform rule conserves
    torch.testing.assert_close(rel[:4], rel[4:])


class NormMLPStack(torch.nn.Module):
    """Residual pre-norm gated-MLP blocks and a final norm, bias-free: Llama without attention."""

    def __init__(self, width: int = 8, depth: int = 3) -> None:
        super().__init__()
        config = LlamaConfig(hidden_size=width, intermediate_size=2 * width, mlp_bias=False,
                             num_attention_heads=2, num_key_value_heads=2)
        self.norms = torch.nn.ModuleList(LlamaRMSNorm(width) for _ in range(depth))
        self.mlps = torch.nn.ModuleList(LlamaMLP(config) for _ in range(depth))
        self.final = LlamaRMSNorm(width)
        self.readout = torch.nn.Linear(width, 1, bias=False)
        for norm in [*self.norms, self.final]:
            torch.nn.init.uniform_(norm.weight, 0.5, 1.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for norm, mlp in zip(self.norms, self.mlps, strict=True):
            x = x + mlp(norm(x))
        return self.readout(self.final(x)).sum()


@pytest.mark.parametrize("rule", ["cp-lrp", "attnlrp"])
def test_relevance_is_conserved_through_norms_and_gated_mlps(rule):
    torch.manual_seed(0)
    stack, x = NormMLPStack(), torch.randn(5, 8)
    with lrp_rules([stack], rule):
        out, rel = grad_x_input(stack, x)
    torch.testing.assert_close(out, stack(x).detach())  # forward values unchanged
    torch.testing.assert_close(rel.sum(), out, rtol=1e-5, atol=1e-6)
    _, plain = grad_x_input(stack, x)
    assert not torch.allclose(plain.sum(), out, rtol=1e-3)  # plain gradient x input does not


@pytest.fixture(scope="module")
def llama():
    """A tiny bias-free Llama LM: with CP-LRP, linear in its input embeddings."""
    config = LlamaConfig(vocab_size=50, hidden_size=32, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         attn_implementation="eager")
    torch.manual_seed(0)
    return LlamaForCausalLM(config).eval()


def llama_relevance(model, rule, ids, position, target):
    layers = model.model.layers
    with lrp_rules([*layers, model.model.norm], rule), leaf_inputs(layers[0]) as inputs:
        logit = model(ids).logits[0, position, target]
    (grad,) = torch.autograd.grad(logit, inputs)
    return logit.detach(), (grad * inputs[0]).sum(dim=-1)[0].detach()


def test_cp_lrp_conserves_on_a_bias_free_llama(llama):
    ids = torch.tensor([[3, 14, 15, 9, 26, 5]])
    logit, rel = llama_relevance(llama, "cp-lrp", ids, position=4, target=7)
    torch.testing.assert_close(logit, llama(ids).logits[0, 4, 7].detach())
    torch.testing.assert_close(rel.sum(), logit, rtol=1e-5, atol=1e-6)
    assert rel[5] == 0  # causal: the position after the explained one gets nothing
    _, attn = llama_relevance(llama, "attnlrp", ids, position=4, target=7)
    assert attn[5] == 0 and not torch.allclose(attn, rel)
    assert llama.config._attn_implementation == "eager"  # restored


def test_attention_rules_keep_values_and_split_gradients(llama):
    module = llama.model.layers[0].self_attn
    torch.manual_seed(1)
    q, k, v = (torch.randn(1, 4, 5, 8) for _ in range(3))
    k, v = k[:, :2], v[:, :2]  # grouped-query attention: 2 key/value heads
    mask = torch.triu(torch.full((5, 5), float("-inf")), diagonal=1)[None, None]
    grads = {}
    for name, fn in [("eager", hf_eager), ("cp", cp_lrp_attention), ("attn", attnlrp_attention)]:
        leaves = [t.clone().requires_grad_(True) for t in (q, k, v)]
        out, weights = fn(module, *leaves, mask, scaling=8**-0.5)
        grads[name] = torch.autograd.grad(out.pow(2).sum(), leaves, allow_unused=True)
        if name == "eager":
            reference = out.detach(), weights.detach()
        torch.testing.assert_close(out.detach(), reference[0])
        torch.testing.assert_close(weights.detach(), reference[1])
    assert grads["cp"][0] is None and grads["cp"][1] is None  # softmax held constant
    torch.testing.assert_close(grads["cp"][2], grads["eager"][2])
    torch.testing.assert_close(grads["attn"][0], grads["eager"][0] / 4)
    torch.testing.assert_close(grads["attn"][1], grads["eager"][1] / 4)
    torch.testing.assert_close(grads["attn"][2], grads["eager"][2] / 2)


def test_cp_lrp_conserves_on_tiny_llava(tiny_model):
    """Tiny LLaVA's Llama is bias-free: all relevance, over every position, is the logit."""
    trace = forced(tiny_model("llava"))
    tokens = list(range(trace.n_generated))
    scores = relevance(trace, tokens, "cp-lrp")
    assert scores.shape == (len(tokens), len(trace.sequence) - 1)
    logits = token_logits(trace, tokens).detach()
    torch.testing.assert_close(scores.sum(dim=-1), logits, rtol=1e-4, atol=1e-5)
    assert scores[:, trace.image_positions].abs().sum() > 0


@pytest.fixture(scope="module", params=FAMILIES)
def model(request, tiny_model):
    return tiny_model(request.param)


def test_rules_leave_forward_values_alone(tiny_model, tiny_family):
    """On every family: the rules change gradients only (Gemma's (1 + weight) norm, GLM-4V's
    fused gate_up_proj MLP included)."""
    model = tiny_model(tiny_family)
    trace = forced(model)
    tokens = list(range(trace.n_generated))
    plain = token_logits(trace, tokens).detach()
    for rule in ("cp-lrp", "attnlrp"):
        with lrp_rules([*model.decoder_layers(), model.final_norm()], rule):
            torch.testing.assert_close(token_logits(trace, tokens).detach(), plain)
    assert all("forward" not in m.__dict__ for m in model.hf.modules())  # all restored


@pytest.mark.parametrize("method", ["cp-lrp", "attnlrp"])
def test_lrp_end_to_end(model, method):
    explanation = explain(model, image(), PROMPT, method=method, max_new_tokens=4)
    maps = explanation.maps
    assert maps.shape == (explanation.trace.n_generated, len(explanation.trace.image_positions))
    assert maps.dtype == np.float32 and np.isfinite(maps).all()
    assert (maps >= 0).all() and (maps > 0).any()


@pytest.mark.parametrize("cls", [CPLRP, AttnLRP])
def test_positive_only_clips_the_signed_map(cls, tiny_model):
    trace = forced(tiny_model("qwen2-vl"))
    signed = cls(positive_only=False).explain(trace, [0, 2])
    assert (signed < 0).any()  # relevance can be negative evidence
    np.testing.assert_array_equal(cls().explain(trace, [0, 2]), np.maximum(signed, 0))


def test_unknown_blocks_are_refused():
    class OddNorm(torch.nn.Module):
        def forward(self, x):
            return x

    class Block(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.norm = OddNorm()

    with pytest.raises(UnsupportedModelError, match="OddNorm"):
        with lrp_rules([Block()], "cp-lrp"):
            pass


def test_tokens_outside_the_answer_are_refused(tiny_model):
    trace = forced(tiny_model("llava"))
    with pytest.raises(MMXAIError, match="outside"):
        CPLRP()(trace, [trace.n_generated])  # the core's contract (Method.__call__)
