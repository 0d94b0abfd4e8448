"""Layer-wise relevance propagation through the LLM, as gradient x input with modified rules.

Relevance is propagated from the explained token's logit (teacher-forced, at its generating
position) down to the input of the first decoder layer (the embeddings, image features
already scattered in) and summed over channels at each image token. Every LRP rule used here
has a gradient x input form, so the rules are forward-pass modifications that change only
the backward pass, applied while the one forward pass runs:

``cp-lrp`` (Ali et al. 2022, conservative propagation)
    the softmax attention weights are constants (query and key detached), the norms' scaling
    1/rms is a constant; the gate of a gated MLP, act(gate(x)), is a constant too (the paper
    has ungated MLPs; this is lxt's CP-LRP for gated ones). Everything left is linear in the
    input, so relevance is conserved: summed over all positions it equals the logit minus
    what the bias terms take.
``attnlrp`` (Achtibat et al. 2024)
    identity rule on the norms (1/rms a constant) and on the MLP activation (its gradient
    replaced by act(x) / x); uniform rule on the bilinear products: the gated MLP's
    act(gate(x)) * up(x) and the attention's A V and Q K^T (gradients halved at each, so
    query and key get 1/4 and value 1/2); the softmax keeps its true gradient, which in
    gradient x input form is exactly the paper's softmax rule
    R_in = x (R_out - s sum R_out); linear layers keep theirs (the epsilon rule). These are
    the rules of the paper's Table 1 for the layers these models have; the softmax rule's
    bias term means relevance is not exactly conserved through attention.

Supported blocks: RMSNorm-style norms (``weight * x / rms(x)``, Gemma's ``(1 + weight) *
x / rms(x)``) and ``nn.LayerNorm``; gated MLPs with ``gate_proj``, ``up_proj``, ``down_proj``
and ``act_fn`` (Llama, Qwen2, Qwen2-VL's text model, InternVL's Qwen2, Gemma 3) or a fused
``gate_up_proj`` with ``activation_fn`` (GLM-4V); attention modules that dispatch through
transformers' ``AttentionInterface``. Anything else raises ``UnsupportedModelError`` instead
of silently propagating plain gradients.
"""

from __future__ import annotations

import functools
import types
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from mmxai.citations import cite
from mmxai.errors import UnsupportedModelError
from mmxai.hookspecs import hookimpl
from mmxai.method import Method
from mmxai.methods.backprop import leaf_inputs, per_token_gradients, token_logits
from mmxai.model import Model
from mmxai.trace import Needs, Trace

RULES = ("cp-lrp", "attnlrp")


# -- gradient x input forms of the rules -------------------------------------------------
class _DivideGradient(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, factor: float) -> torch.Tensor:
        ctx.factor = factor
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad / ctx.factor, None


def divide_gradient(x: torch.Tensor, factor: float) -> torch.Tensor:
    """Identity forward, gradient divided by ``factor``: the uniform rule over ``factor``
    inputs of a product, in gradient x input form."""
    return _DivideGradient.apply(x, factor)


class _IdentityRule(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, fn: Callable[[torch.Tensor], torch.Tensor]
                ) -> torch.Tensor:
        out = fn(x)
        # act(x) / x, where x = 0 (and act(0) = 0) anything works: the relevance there is 0
        safe = torch.where(x == 0, torch.ones_like(x), x)
        ctx.save_for_backward((out.float() / safe.float()).to(x.dtype))
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        (ratio,) = ctx.saved_tensors
        return grad * ratio, None


def identity_rule(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """``fn(x)`` forward, gradient ``fn(x) / x``: relevance passes the element-wise
    nonlinearity unchanged (AttnLRP's identity rule)."""
    return _IdentityRule.apply(x, fn)


# -- patched forwards --------------------------------------------------------------------
def _rms_norm(module: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    eps = getattr(module, "variance_epsilon", getattr(module, "eps", 1e-6))
    states = x.float()
    scale = torch.rsqrt(states.pow(2).mean(-1, keepdim=True) + eps).detach()
    return module.weight * (states * scale).to(x.dtype)


def _gemma_rms_norm(module: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Gemma's RMSNorm scales by (1 + weight), in float32, then casts back."""
    states = x.float()
    scale = torch.rsqrt(states.pow(2).mean(-1, keepdim=True) + module.eps).detach()
    return (states * scale * (1.0 + module.weight.float())).type_as(x)


def _layer_norm(module: torch.nn.LayerNorm, x: torch.Tensor) -> torch.Tensor:
    centred = x - x.mean(-1, keepdim=True)
    std = torch.sqrt(centred.pow(2).mean(-1, keepdim=True) + module.eps).detach()
    out = centred / std
    if module.weight is not None:
        out = out * module.weight
    return out + module.bias if module.bias is not None else out


def _gate_up(module: torch.nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor,
                                                                  Callable]:
    """A gated MLP's gate and up projections and its activation: separate ``gate_proj`` and
    ``up_proj`` (Llama, Qwen2), or one fused ``gate_up_proj`` (GLM-4V), gate first."""
    if hasattr(module, "gate_up_proj"):
        gate, up = module.gate_up_proj(x).chunk(2, dim=-1)
        return gate, up, module.activation_fn
    return module.gate_proj(x), module.up_proj(x), module.act_fn


def _cp_lrp_mlp(module: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    gate, up, act = _gate_up(module, x)
    return module.down_proj(act(gate).detach() * up)


def _attnlrp_mlp(module: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    gate, up, act = _gate_up(module, x)
    return module.down_proj(divide_gradient(identity_rule(act, gate) * up, 2))


def _eager_attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor,
                     value: torch.Tensor, attention_mask: torch.Tensor | None,
                     scaling: float | None = None, dropout: float = 0.0,
                     softcap: float | None = None, **_: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Eager attention, (B, heads, T, d) in, (B, T, heads, d) out, as transformers' own
    (Gemma 2's logit soft-capping included, so the forward pass stays the model's)."""
    groups = getattr(module, "num_key_value_groups", 1)
    key = key.repeat_interleave(groups, dim=1)
    value = value.repeat_interleave(groups, dim=1)
    if scaling is None:
        scaling = query.shape[-1] ** -0.5
    scores = torch.matmul(query, key.transpose(2, 3)) * scaling
    if softcap is not None:
        scores = torch.tanh(scores / softcap) * softcap
    if attention_mask is not None:
        scores = scores + attention_mask[..., : key.shape[-2]]
    weights = F.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    out = torch.matmul(weights, value)
    return out.transpose(1, 2).contiguous(), weights


def cp_lrp_attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor,
                     value: torch.Tensor, *args: Any, **kwargs: Any):
    """Attention with the softmax weights held constant (no gradient into query or key)."""
    return _eager_attention(module, query.detach(), key.detach(), value, *args, **kwargs)


def attnlrp_attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor,
                      value: torch.Tensor, *args: Any, **kwargs: Any):
    """Attention with the uniform rule on A V (value 1/2) and on Q K^T (query, key 1/4)."""
    return _eager_attention(module, divide_gradient(query, 4), divide_gradient(key, 4),
                            divide_gradient(value, 2), *args, **kwargs)


ATTENTION = {"cp-lrp": ("mmxai_cp_lrp", cp_lrp_attention),
             "attnlrp": ("mmxai_attnlrp", attnlrp_attention)}
MLP = {"cp-lrp": _cp_lrp_mlp, "attnlrp": _attnlrp_mlp}


@functools.cache
def _register_attention() -> None:
    """Make the rules' attention functions selectable by name, with eager's masks.

    Done once, on first use (:func:`lrp_rules`), not at import: the import pulls in
    transformers' modelling machinery (seconds), which every command would pay, since
    plugins are imported when the registry loads.
    """
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, eager_mask

    for name, fn in ATTENTION.values():
        AttentionInterface.register(name, fn)
        AttentionMaskInterface.register(name, eager_mask)


# -- applying the rules ------------------------------------------------------------------
def _is_gated_mlp(module: torch.nn.Module) -> bool:
    return (all(hasattr(module, a) for a in ("gate_proj", "up_proj", "down_proj", "act_fn"))
            or all(hasattr(module, a) for a in ("gate_up_proj", "down_proj", "activation_fn")))


def _patched_forward(module: torch.nn.Module, rule: str) -> Callable | None:
    """The rule's forward for ``module``, None if it needs none, or raise if unsupported."""
    kind = type(module).__name__
    if isinstance(module, torch.nn.LayerNorm):
        return _layer_norm
    if kind.endswith("RMSNorm"):
        return _gemma_rms_norm if "Gemma" in kind else _rms_norm
    if _is_gated_mlp(module):
        return MLP[rule]
    if kind.endswith("Norm") or kind.endswith("MLP"):
        raise UnsupportedModelError(f"{rule}: no rule for {kind}")
    return None


@contextmanager
def _forward_replaced(module: torch.nn.Module, forward: Callable) -> Iterator[None]:
    # accelerate's device hooks keep the module's own forward as `_old_forward` and wrap it
    attr = "_old_forward" if hasattr(module, "_old_forward") else "forward"
    missing = object()
    previous = module.__dict__.get(attr, missing)
    setattr(module, attr, types.MethodType(forward, module))
    try:
        yield
    finally:
        if previous is missing:
            delattr(module, attr)  # back to the class's forward
        else:
            setattr(module, attr, previous)


@contextmanager
def _attention_implementation(config: Any, name: str) -> Iterator[None]:
    previous = config._attn_implementation
    config._attn_implementation = name
    try:
        yield
    finally:
        config._attn_implementation = previous


@contextmanager
def lrp_rules(modules: Sequence[torch.nn.Module], rule: str) -> Iterator[None]:
    """Apply ``rule`` to ``modules`` (decoder layers, the final norm) and their submodules.

    Forward values are unchanged; only what the backward pass computes differs.
    """
    if rule not in RULES:
        raise ValueError(f"unknown LRP rule {rule!r}; rules: {', '.join(RULES)}")
    _register_attention()
    submodules = {id(m): m for root in modules for m in root.modules()}
    with ExitStack() as stack:
        for module in submodules.values():
            forward = _patched_forward(module, rule)
            if forward is not None:
                stack.enter_context(_forward_replaced(module, forward))
        for config in attention_configs(modules):
            stack.enter_context(_attention_implementation(config, ATTENTION[rule][0]))
        yield


def attention_configs(modules: Sequence[torch.nn.Module]) -> list[Any]:
    """The configs whose ``_attn_implementation`` the attention modules dispatch on."""
    configs = {id(m.config): m.config for root in modules for m in root.modules()
               if type(m).__name__.endswith("Attention") and hasattr(m, "config")}
    return list(configs.values())


def relevance(trace: Trace, tokens: Sequence[int], rule: str) -> torch.Tensor:
    """Relevance of every input position for each token's logit: (n_tokens, T-1) float32.

    Gradient x input at the first decoder layer's input, summed over channels, with
    ``rule``'s gradient modifications in force.
    """
    model: Model = trace.model
    layers = list(model.decoder_layers())
    if not attention_configs(layers):  # the attention rule would silently not apply
        raise UnsupportedModelError(f"{rule}: no attention module found in {model.model_id}")
    with lrp_rules([*layers, model.final_norm()], rule), leaf_inputs(layers[0]) as inputs:
        logits = token_logits(trace, tokens)
    rows = [(grads[0] * inputs[0]).float().sum(dim=-1)[0].detach()
            for grads in per_token_gradients(logits, inputs)]
    return torch.stack(rows).cpu()


@dataclass
class LRPOptions:
    #: Keep positive relevance only (negative evidence set to 0); False returns signed maps.
    positive_only: bool = True


class _LRP(Method):
    rule: str = ""
    needs = Needs(gradients=True)
    Options = LRPOptions

    def explain(self, trace: Trace, tokens: Sequence[int]) -> np.ndarray:
        scores = relevance(trace, tokens, self.rule)
        maps = scores[:, torch.as_tensor(trace.image_positions, dtype=torch.long)]
        if self.options.positive_only:
            maps = maps.clamp_min(0.0)
        return maps.numpy().astype(np.float32)


class CPLRP(_LRP):
    name = "cp-lrp"
    rule = "cp-lrp"
    summary = "LRP with conservative propagation: softmax weights and norm scales held constant"
    citation = cite("ali2022xai")


class AttnLRP(_LRP):
    name = "attnlrp"
    rule = "attnlrp"
    summary = "AttnLRP: identity, uniform and softmax rules for attention-based LLMs"
    citation = cite("achtibat2024attnlrp")


@hookimpl
def register_methods(register) -> None:
    register(CPLRP)
    register(AttnLRP)
