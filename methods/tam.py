"""TAM, the Token Activation Map (Li et al., ICCV 2025).

Each generated token's logit at the image positions (its raw map), minus the interference
of the tokens before it (estimated causal inference, ECI), scaled jointly with the text
scores and denoised by the rank Gaussian filter. The default fixes the reference's bugs;
``reference_compatible=True`` reproduces them. docs/tam.md lists every difference.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from mmxai import maps as mapsmod
from mmxai.citations import cite
from mmxai.hookspecs import hookimpl
from mmxai.method import Method
from mmxai.methods import tam_ops as ops
from mmxai.trace import Needs, Trace

# (default, reference's choice) for the options left at None
DEFAULTS = {"relevance": ("output", "reference"), "exclude": ("id", "string"),
            "constant": ("value", "reference")}


@dataclass
class TAMOptions:
    """None picks the default, or the reference's choice when ``reference_compatible``."""

    kernel_size: int = 3  # rank Gaussian filter window; 1 (with constant="value"): no filter
    eci: bool = True  # False: no interference removal (the paper's ablation)
    relevance: Literal["output", "input", "reference"] | None = None  # default output (Q3)
    exclude: Literal["id", "string", "word"] | None = None  # repeated tokens; default id
    constant: Literal["value", "reference"] | None = None  # constant windows; default value (Q7)
    reference_compatible: bool = False  # reproduce Q1, Q2, Q3, Q7 and the string exclusion

    def __post_init__(self) -> None:
        ops.check_kernel_size(self.kernel_size)
        parent = getattr(super(), "__post_init__", None)  # MSEATAMOptions: MSEA's checks too
        if parent is not None:
            parent()


class TAM(Method):
    name = "tam"
    summary = "Token Activation Map: logit maps minus context interference, rank-Gaussian filtered"
    citation = cite("li2025tam")
    Options = TAMOptions

    def __init__(self, **options) -> None:
        super().__init__(**options)
        for field, choices in DEFAULTS.items():
            if getattr(self.options, field) is None:
                setattr(self.options, field, choices[int(self.options.reference_compatible)])
        if self.options.reference_compatible:  # Q2's argmax, read off the prefill
            self.needs = type(self).needs | Needs(prompt_top=True)

    def explain(self, trace: Trace, tokens: Sequence[int]) -> np.ndarray:
        o = self.options
        scores = self._scores(trace, tokens)
        return postprocess(*scores, trace.grids, o.kernel_size, o.constant, o.eci)

    def text_relevance(self, trace: Trace, tokens: Sequence[int]) -> np.ndarray:
        """The text half of TAM's output: how relevant each generated token is to each of
        ``tokens``, scaled jointly with its image scores (after ECI, before the filter), as
        TAM's figures colour the answer. (len(tokens), trace.n_generated) float32 in [0, 1];
        0 for a token that is not context of the explained one (itself and later tokens).
        Not part of the maps: computed only when asked (the viewer does)."""
        history, explained, text, context, text_mask = self._scores(trace, tokens)
        _, scaled = scaled_scores(history, explained, text, context, text_mask,
                                  self.options.eci)
        n = len(trace.inputs.prompt_positions)
        text = np.asarray(scaled[:, n:], dtype=np.float32)  # as postprocess finishes the maps
        return np.clip(np.nan_to_num(text, nan=0.0, posinf=1.0, neginf=0.0), 0, 1)

    def _scores(self, trace: Trace, tokens: Sequence[int]) -> tuple:
        """What TAM post-processes for ``tokens``: the raw maps of every item and the rows
        explained, the text relevances, the ECI context and the text part of the joint
        scaling (:func:`postprocess`'s first five arguments)."""
        o = self.options
        tokens = np.asarray(tokens, dtype=np.int64)
        # Items: the user-prompt tokens, then the generated tokens. Any earlier item can be
        # context (interference) for a later one.
        prompt = np.asarray(trace.inputs.prompt_positions, dtype=np.int64)
        n, L = len(prompt), trace.prompt_len
        item_pos = np.concatenate([prompt, L + np.arange(trace.n_generated)])
        item_ids = trace.sequence[item_pos].numpy()
        classes = item_ids.copy()
        explained = n + tokens
        if o.reference_compatible:
            if n and (o.eci or (tokens == 0).any()):
                # Q2: generated token 0 gets prompt item 0, scored by its argmax prediction;
                # item 0 is otherwise needed only as ECI context of the later items
                classes[0] = trace.top_class(int(prompt[0]))
                explained = np.where(tokens == 0, 0, explained)
            if trace.n_generated:  # Q1: generated token 0 is scored by the template's last id
                classes[n] = int(trace.sequence[L - 1])
        # Where an item's relevance to class c is read: "output" is the position that
        # predicted the item; "input" the item's own position; "reference" mixes them (Q3).
        shift = {"output": np.ones(len(item_pos), np.int64), "input": 0 * item_pos,
                 "reference": (np.arange(len(item_pos)) >= n).astype(np.int64)}[o.relevance]
        rel_pos = np.minimum(item_pos - shift, trace.hidden.shape[0] - 1)
        unique, column = np.unique(classes, return_inverse=True)
        # the post-processing is cheap and runs on the CPU
        image = self.image_logits(trace, unique.tolist()).clamp_min(0)  # (C, N)
        relevance = trace.logits(unique, rel_pos).clamp_min(0).cpu()  # (K, C)
        history = image[column]  # (K, N) raw maps of all items
        text = relevance[:, column[explained]].T  # (J, K) relevance per context item
        keys = self._keys(trace, item_ids)
        before = np.arange(len(item_pos))[None, :] < explained[:, None]
        context = before & (keys[None, :] != keys[explained][:, None])
        # The text part of the joint scaling: earlier items (round-0 items: the whole prompt)
        text_mask = np.arange(len(item_pos))[None, :] < np.maximum(explained, n)[:, None]
        return history, explained, text, context, text_mask

    def image_logits(self, trace: Trace, classes: list[int]) -> torch.Tensor:
        """The raw logit maps of ``classes``, (C, N_image): where MSEA-TAM plugs in."""
        return trace.image_logits(classes).cpu()

    def _keys(self, trace: Trace, ids: np.ndarray) -> np.ndarray:
        """What "the same token" means for repeated-token exclusion, one key per item."""
        tok = trace.model.tokenizer
        if self.options.exclude == "id":
            return ids
        if self.options.exclude == "string":
            return np.asarray(tok.convert_ids_to_tokens(ids.tolist()), dtype=object)
        return np.asarray([tok.decode([int(i)]).strip().casefold() for i in ids], dtype=object)


def scaled_scores(history: torch.Tensor | np.ndarray, explained: np.ndarray,
                  text: torch.Tensor | np.ndarray, context: np.ndarray, text_mask: np.ndarray,
                  eci: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """TAM's image and text scores of J explained items among K, before the filter.

    ``history`` (K, N) raw maps; ``explained`` (J,) rows of it; ``text`` (J, K) relevances;
    ``context`` / ``text_mask`` (J, K) bool: the ECI context and the text part of the joint
    scaling. Returns (image (J, N), text (J, K)), each row scaled to [0, 1] jointly; text
    entries outside ``text_mask`` are 0.
    """
    history = torch.as_tensor(history)
    maps = history[torch.as_tensor(explained, dtype=torch.long)]
    if eci:
        maps = ops.estimated_causal_inference(maps, history, text, context)
    return ops.joint_minmax(maps, text, text_mask)


def postprocess(history: torch.Tensor | np.ndarray, explained: np.ndarray,
                text: torch.Tensor | np.ndarray, context: np.ndarray, text_mask: np.ndarray,
                grids, kernel_size: int = 3, constant: str = "value",
                eci: bool = True) -> np.ndarray:
    """TAM from raw scores to maps: :func:`scaled_scores`' image half, denoised by the rank
    Gaussian filter on each grid. Returns (J, N) float32 in [0, 1], finite."""
    image, _ = scaled_scores(history, explained, text, context, text_mask, eci)
    if not len(image):
        return image.numpy().astype(np.float32)
    out = mapsmod.per_grid(lambda b: ops.rank_gaussian_filter(b, kernel_size, constant),
                           image.double().numpy(), grids)
    return np.clip(np.nan_to_num(out, nan=0.0, posinf=1.0, neginf=0.0), 0, 1).astype(np.float32)


@hookimpl
def register_methods(register) -> None:
    register(TAM)
