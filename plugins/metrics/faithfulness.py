"""Faithfulness metrics: deletion and insertion (Petsiuk et al. 2018), teacher-forced.

For one explained token j of a generated answer, rank the image's pixels by the token's map
(painted into the image frame with :func:`mmxai.maps.to_image`), then in ``steps`` equal
steps replace the top-ranked pixels by a baseline image (deletion) or reveal them on top of
the baseline (insertion). At every step the same prompt and the same generated prefix are
teacher-forced, and the probability of token j at its generating position is read. The
score is the area under that curve (trapezoid rule, x from 0 to 1): deletion wants it low
(the map found what the token needed), insertion wants it high.

The plan per sample, shared by every method and both metrics:

- the end points (original image, full baseline) are one teacher-forced pass each over the
  whole answer, cached on the trace: every token's probability comes out of it;
- every masked image of every explained token is teacher-forced over the whole answer (a
  causal model's logits at token j's generating position do not depend on what follows),
  so the masked images of all tokens go through the model together, ``batch`` images per
  pass (a family whose inputs do not stack is run image by image);
- explained tokens: the tokens of the answer's nouns (``mmxai.words``), else every
  generated token but special ones, at most ``max_tokens`` (the same tokens for every method,
  so methods stay paired).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import numpy as np
import torch
from PIL import Image

from mmxai.citations import cite
from mmxai.errors import InputError
from mmxai.hookspecs import hookimpl
from mmxai.maps import to_image
from mmxai.metric import EvalItem, Metric, Parts
from mmxai.model import Inputs, Model
from mmxai.perturb import answer_log_probs, baseline_image, swap_each
from mmxai.trace import Trace, forced_trace


@dataclass
class PerturbationOptions:
    steps: int = 8  # the curve has steps + 1 points, from 0% to 100% of the pixels
    baseline: Literal["", "blur", "mean", "black"] = ""  # empty: the metric's default
    max_tokens: int = 4  # explained tokens per sample
    batch: int = 32  # masked images per forward pass

    def __post_init__(self) -> None:
        if self.steps < 2:
            raise ValueError(f"steps must be at least 2, got {self.steps}")
        if self.max_tokens < 0:
            raise ValueError(f"max_tokens must be at least 0 (0: every token), got "
                             f"{self.max_tokens}")
        if self.batch < 1:
            raise ValueError(f"batch must be at least 1, got {self.batch}")


def auc(curve: np.ndarray) -> float:
    """Area under a curve sampled at equal steps on [0, 1] (trapezoid rule)."""
    curve = np.asarray(curve, dtype=np.float64)
    if curve.size < 2:
        raise ValueError("a curve needs at least two points")
    return float((curve[:-1] + curve[1:]).sum() / (2 * (curve.size - 1)))


def pixel_ranks(image_map: np.ndarray) -> np.ndarray:
    """(H, W) map -> (H, W) rank of each pixel, 0 for the most relevant.

    Ties (a constant map, a region outside every grid) are broken by a fixed random order,
    the same for every method, so a map without information deletes no particular region.
    """
    flat = np.asarray(image_map, dtype=np.float64).ravel()
    tiebreak = np.random.default_rng(0).permutation(flat.size)
    order = np.lexsort((tiebreak, -flat))
    ranks = np.empty(flat.size, dtype=np.int64)
    ranks[order] = np.arange(flat.size)
    return ranks.reshape(np.shape(image_map))


def perturbed_images(image: Image.Image, baseline: Image.Image, ranks: np.ndarray,
                     fractions: np.ndarray, deletion: bool) -> list[Image.Image]:
    """The image with the top ``fraction`` of pixels replaced (deletion) or revealed
    (insertion) against the baseline, one image per fraction."""
    original = np.asarray(image.convert("RGB"))
    base = np.asarray(baseline.convert("RGB"))
    out = []
    for fraction in fractions:
        chosen = (ranks < round(float(fraction) * ranks.size))[..., None]
        pixels = np.where(chosen, base, original) if deletion else np.where(chosen, original, base)
        out.append(Image.fromarray(pixels.astype(np.uint8)))
    return out


def answer_probabilities(trace: Trace, baseline: str | None) -> np.ndarray:
    """(G,) probability of every generated token, teacher-forced on the traced image
    (``baseline`` None) or on its baseline image. Cached on the trace, so methods and
    metrics share it."""
    key = ("perturbation", "answer", baseline)
    if key not in trace.cache:
        model, inputs = trace.model, trace.inputs
        if baseline is not None:
            inputs = model.build_inputs([baseline_image(inputs.images[0], baseline)],
                                        inputs.prompt)
        forced = forced_trace(model, inputs, trace.generated_ids)
        ids = forced.generated_ids.tolist()
        positions = [forced.generating_position(j) for j in range(len(ids))]
        logits = forced.logits(ids, positions).diagonal().cpu()
        log_z = forced.logsumexp.cpu()
        trace.cache[key] = torch.exp(logits - log_z).numpy()
    return trace.cache[key]


def token_probabilities(model: Model, variants: list[Inputs], sequence: torch.Tensor,
                        positions: list[int], batch: int) -> np.ndarray:
    """(len(variants),) probability, under variant i, of ``sequence[positions[i] + 1]``
    read at ``positions[i]``, teacher-forcing ``sequence`` (without its last token).

    The variants go through :func:`~mmxai.perturb.answer_log_probs` ``batch`` at a time,
    each read at its own position only.
    """
    wanted = sorted(set(positions))
    column = [wanted.index(q) for q in positions]
    needed = np.zeros((len(variants), len(wanted)), dtype=bool)
    needed[np.arange(len(variants)), column] = True
    log_probs = answer_log_probs(model, variants, sequence, wanted, batch, needed)
    return np.exp(log_probs[np.arange(len(variants)), column])


class _Perturbation(Metric):
    category: ClassVar[str] = "faithfulness"
    citation: ClassVar[str] = cite("petsiuk2018rise")
    Options: ClassVar[type] = PerturbationOptions
    deletion: ClassVar[bool] = True
    default_baseline: ClassVar[str] = "mean"

    @property
    def baseline(self) -> str:
        return self.options.baseline or self.default_baseline

    def measure(self, item: EvalItem) -> Parts:
        trace = item.trace
        if len(trace.inputs.images) != 1:
            raise InputError(f"{self.name}: needs exactly one image, got "
                             f"{len(trace.inputs.images)}")
        tokens = item.explained_tokens(self.options.max_tokens)
        if not tokens:  # an answer of special tokens only (an EOS at once): nothing to curve
            return {"value": []}
        image = trace.inputs.images[0]
        baseline = baseline_image(image, self.baseline)
        original = answer_probabilities(trace, None)
        blank = answer_probabilities(trace, self.baseline)
        start, end = (original, blank) if self.deletion else (blank, original)
        steps = self.options.steps
        fractions = np.arange(1, steps) / steps
        width, height = image.size
        images, positions = [], []
        for j in tokens:
            ranks = pixel_ranks(to_image(item.maps[j], trace.grids, 0, (height, width)))
            images += perturbed_images(image, baseline, ranks, fractions, self.deletion)
            positions += [trace.generating_position(j)] * len(fractions)
        variants = swap_each(item.model, trace.inputs, images)  # one processor call
        middle = token_probabilities(item.model, variants, trace.sequence, positions,
                                     self.options.batch).reshape(len(tokens), -1)
        return {"value": [auc(np.concatenate([[start[j]], row, [end[j]]]))
                          for j, row in zip(tokens, middle, strict=True)]}


class Deletion(_Perturbation):
    name = "deletion"
    summary = "area under the token's probability as its most relevant pixels are removed"
    higher_is_better = False
    deletion = True
    default_baseline = "mean"


class Insertion(_Perturbation):
    name = "insertion"
    summary = "area under the token's probability as its most relevant pixels are revealed"
    higher_is_better = True
    deletion = False
    default_baseline = "blur"


@hookimpl
def register_metrics(register):
    register(Deletion)
    register(Insertion)
