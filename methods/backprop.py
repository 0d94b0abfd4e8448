"""Teacher-forced passes with gradients: the part Grad-CAM, LRP and gradient x input share.

They replay the traced answer in one forward pass with autograd on, turn one tensor of the
model into a leaf (a vision layer's output for Grad-CAM and vision gradient x input, the
first decoder layer's input for LRP and gradient x input), and take one backward per
explained token from that token's logit at its generating position. Making the tensor a
leaf stops every backward there: nothing below it is differentiated, and no parameter
gradient is ever accumulated.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from typing import Any

import torch

from mmxai.errors import MMXAIError
from mmxai.trace import Trace, forced_features


def _as_leaf(value: torch.Tensor) -> torch.Tensor:
    return value.detach().requires_grad_(True)


@contextmanager
def leaf_outputs(module: torch.nn.Module) -> Iterator[list[torch.Tensor]]:
    """Replace ``module``'s output (the first element of a tuple) by a leaf on every call.

    Yields the list the leaves are appended to, one per call, in call order.
    """
    leaves: list[torch.Tensor] = []

    def hook(_module: torch.nn.Module, _args: Any, output: Any) -> Any:
        if isinstance(output, tuple):
            leaves.append(_as_leaf(output[0]))
            return (leaves[-1], *output[1:])
        leaves.append(_as_leaf(output))
        return leaves[-1]

    # first in line: transformers' own output-capturing hooks (hidden_states) must see the leaf
    handle = module.register_forward_hook(hook, prepend=True)
    try:
        yield leaves
    finally:
        handle.remove()


@contextmanager
def leaf_inputs(module: torch.nn.Module) -> Iterator[list[torch.Tensor]]:
    """Replace ``module``'s first input (``hidden_states``) by a leaf on every call."""
    leaves: list[torch.Tensor] = []

    def hook(_module: torch.nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        if args:
            leaves.append(_as_leaf(args[0]))
            return (leaves[-1], *args[1:]), kwargs
        leaves.append(_as_leaf(kwargs["hidden_states"]))
        return args, {**kwargs, "hidden_states": leaves[-1]}

    handle = module.register_forward_pre_hook(hook, with_kwargs=True, prepend=True)
    try:
        yield leaves
    finally:
        handle.remove()


@contextmanager
def frozen_parameters(module: torch.nn.Module) -> Iterator[None]:
    """No parameter requires grad inside: autograd then records only what flows from the
    leaves (nothing upstream of them, no inputs saved for weight gradients)."""
    flags = [(p, p.requires_grad) for p in module.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


def token_logits(trace: Trace, tokens: Sequence[int]) -> torch.Tensor:
    """Logits of generated tokens ``tokens`` at their generating positions: (n_tokens,).

    One teacher-forced forward pass over the traced sequence, with autograd on for what
    depends on a leaf (:func:`leaf_outputs`, :func:`leaf_inputs`) and nothing else; only the
    generating positions are projected onto the vocabulary. ``tokens`` are valid indices
    (``Method.__call__`` checked them).
    """
    features = forced_features(trace.inputs, trace.sequence[:-1])
    positions = torch.tensor([trace.generating_position(int(j)) for j in tokens],
                             dtype=torch.long)
    ids = trace.sequence[positions + 1]
    with torch.enable_grad(), frozen_parameters(trace.model.hf):
        return logits_at(trace.model, features, positions, ids)[0]


def logits_at(model: Any, features: dict[str, Any], positions: torch.Tensor,
              ids: torch.Tensor) -> torch.Tensor:
    """(B, n) logit of ``ids[i]`` at ``positions[i]`` in each of the B sequences of
    ``features``; only those positions reach the unembedding."""
    # a CPU index: the final norm's output is on the last device of a split model
    out = model.hf(**features, use_cache=False, logits_to_keep=positions)
    logits = out.logits.float()  # (B, n, V)
    columns = torch.arange(len(positions), device=logits.device)
    return logits[:, columns, ids.to(logits.device)]


def per_token_gradients(logits: torch.Tensor,
                        leaves: Sequence[torch.Tensor]) -> Iterator[list[torch.Tensor]]:
    """For each logit, its gradients with respect to ``leaves`` (zeros where unused)."""
    if not logits.requires_grad:  # no logit depends on any leaf (e.g. a layer no one reads)
        for _ in range(logits.shape[0]):
            yield [torch.zeros_like(leaf) for leaf in leaves]
        return
    for i in range(logits.shape[0]):
        grads = torch.autograd.grad(logits[i], list(leaves), retain_graph=i + 1 < len(logits),
                                    allow_unused=True)
        yield [torch.zeros_like(leaf) if g is None else g
               for leaf, g in zip(leaves, grads, strict=True)]


def leaf_gradients(trace: Trace, leaves: AbstractContextManager[list[torch.Tensor]],
                   tokens: Sequence[int]) -> Iterator[tuple[list[torch.Tensor],
                                                            list[torch.Tensor]]]:
    """One teacher-forced pass for all ``tokens`` inside ``leaves`` (a :func:`leaf_outputs`
    or :func:`leaf_inputs` context), then per token its gradients with respect to the leaves
    and the leaves' values (detached), one of each per call of the module."""
    with leaves as values:
        logits = token_logits(trace, tokens)
    detached = [value.detach() for value in values]
    for grads in per_token_gradients(logits, values):
        yield grads, detached


def vision_layer(model: Any, index: int | None, method: str) -> tuple[int, torch.nn.Module]:
    """``model.vision_layers()[index]`` with its index (None: the layer that feeds the
    projector); a one-line error naming ``method``'s option when out of range."""
    layers = model.vision_layers()
    index = model.default_vision_layer() if index is None else index
    if not -len(layers) <= index < len(layers):
        n = len(layers)
        raise MMXAIError(f"{method}.layer={index} is out of range: the model has {n} "
                         f"vision layers (0 to {n - 1}, or -{n} to -1 from the end)")
    return index, layers[index]
