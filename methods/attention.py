"""Raw attention and attention rollout (Abnar & Zuidema 2020) over the LLM's decoder layers.

Both read the shared trace's attention weights, (heads, T-1, T-1) per decoder layer, at the
row of each token's generating position and the columns of the image tokens. Attention
weights exist only under eager attention: a trace that needs them switches the model to it
(``Model.set_eager_attention``, which warns when it changes the implementation).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from mmxai.citations import cite
from mmxai.errors import MMXAIError
from mmxai.hookspecs import hookimpl
from mmxai.method import Method
from mmxai.trace import Needs, Trace

Reduction = Literal["mean", "max"]


def reduce(x: torch.Tensor, how: str, dim: int) -> torch.Tensor:
    """Mean or max over ``dim``."""
    return x.mean(dim=dim) if how == "mean" else x.amax(dim=dim)


def trace_attentions(trace: Trace, method: str) -> list[torch.Tensor]:
    """The trace's per-layer attentions, or an error naming what is missing."""
    if not trace.attentions:
        raise MMXAIError(f"{method}: the trace has no attention weights; record it with "
                         "Needs(attentions=True)")
    return trace.attentions


def attention_rows(attentions: Sequence[torch.Tensor], rows: Sequence[int],
                   layers: Sequence[int], head_reduce: str = "mean",
                   layer_reduce: str = "mean") -> torch.Tensor:
    """Rows ``rows`` of the attention, heads and the chosen layers reduced: (n_rows, T).

    ``attentions`` holds one (heads, T, T) tensor per layer; ``layers`` index into it
    (negative from the end).
    """
    rows = torch.as_tensor(list(rows), dtype=torch.long)
    per_layer = [reduce(attentions[layer][:, rows].float(), head_reduce, dim=0)
                 for layer in layers]
    return reduce(torch.stack(per_layer), layer_reduce, dim=0)


def rollout(attentions: torch.Tensor, residual: float = 0.5,
            rows: Sequence[int] | None = None) -> torch.Tensor:
    """Attention rollout: rows of  Â_L ... Â_2 Â_1,  Â_l = rownorm((1 - r) A_l + r I).

    ``attentions`` is (layers, T, T), first layer first, heads already reduced; ``residual``
    is r, the weight of the identity that stands for the skip connection. With ``rows`` the
    product is taken for those rows only, as a (n_rows, T) block of vector-matrix products
    (T^2 per layer instead of T^3); without, the full (T, T) rollout.
    """
    n_layers, size = attentions.shape[0], attentions.shape[-1]
    eye = torch.eye(size, dtype=torch.float32, device=attentions.device)
    out = eye if rows is None else eye[torch.as_tensor(list(rows), dtype=torch.long)]
    for layer in reversed(range(n_layers)):
        mixed = (1.0 - residual) * attentions[layer].float() + residual * eye
        mixed = mixed / mixed.sum(dim=-1, keepdim=True).clamp_min(1e-12)
        out = out @ mixed
    return out


def _image_columns(trace: Trace, rows: torch.Tensor) -> np.ndarray:
    columns = torch.as_tensor(trace.image_positions, dtype=torch.long)
    return rows[:, columns].numpy().astype(np.float32)


def _generating_rows(trace: Trace, tokens: Sequence[int]) -> list[int]:
    return [trace.generating_position(int(j)) for j in tokens]


@dataclass
class AttentionOptions:
    #: Decoder layers to read (negative from the end); the default is the last layer.
    layers: tuple[int, ...] = (-1,)
    head_reduce: Reduction = "mean"  # over heads
    layer_reduce: Reduction = "mean"  # over the chosen layers

    def __post_init__(self) -> None:
        if not self.layers:
            raise ValueError("layers must name at least one decoder layer")


class RawAttention(Method):
    name = "attention"
    summary = "Raw attention from the generating position to the image tokens"
    needs = Needs(attentions=True)
    Options = AttentionOptions
    citation = cite("vaswani2017attention")

    def explain(self, trace: Trace, tokens: Sequence[int]) -> np.ndarray:
        attentions = trace_attentions(trace, self.name)
        n_layers = len(attentions)
        bad = [i for i in self.options.layers if not -n_layers <= i < n_layers]
        if bad:
            raise MMXAIError(f"{self.name}: layers {bad} out of range for {n_layers} layers")
        rows = attention_rows(attentions, _generating_rows(trace, tokens),
                              self.options.layers, self.options.head_reduce,
                              self.options.layer_reduce)
        return _image_columns(trace, rows)


@dataclass
class RolloutOptions:
    residual: float = 0.5  # weight of the identity (skip connection) in each layer
    head_reduce: Reduction = "mean"  # over heads
    start_layer: int = 0  # first decoder layer in the product

    def __post_init__(self) -> None:
        if not 0.0 <= self.residual <= 1.0:
            raise ValueError(f"residual must lie in [0, 1], got {self.residual}")


class AttentionRollout(Method):
    name = "rollout"
    summary = "Attention rollout: attention with skip connections, multiplied through layers"
    needs = Needs(attentions=True)
    Options = RolloutOptions
    citation = cite("abnar2020quantifying")

    def explain(self, trace: Trace, tokens: Sequence[int]) -> np.ndarray:
        attentions = trace_attentions(trace, self.name)[self.options.start_layer:]
        if not attentions:
            raise MMXAIError(f"{self.name}: start_layer {self.options.start_layer} leaves "
                             "no decoder layer")
        stacked = torch.stack([reduce(a.float(), self.options.head_reduce, dim=0)
                               for a in attentions])
        rows = rollout(stacked, self.options.residual, _generating_rows(trace, tokens))
        return _image_columns(trace, rows)


@hookimpl
def register_methods(register) -> None:
    register(RawAttention)
    register(AttentionRollout)
