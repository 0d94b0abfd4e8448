"""EAGLE: greedy search for the image regions a generated token needs and suffices with
(Chen et al., *Where MLLMs Attend and What They Rely On*, CVPR 2026).

The image is cut into regions (SLIC superpixels by default, or blocks of the model's token
grid); the greedy search (:mod:`mmxai.methods.eagle_search`) orders them by the objective

    F(S) = insight_weight * p(y | only S kept) + necessity_weight * (1 - p(y | S removed))

with ``y`` a generated token, teacher-forced over the traced answer, and removed pixels
taken from a baseline image (black: the paper zeroes them). The order and the objective's
gains make the token's map over the regions, which goes to the token grids through each
cell's share of every region (:func:`mmxai.methods.regions.regions_to_grids`).

Each explained token gets its own search (the paper's word-level explanation); with
``together`` the tokens asked for share one search of their mean probability (its
sentence-level explanation) and one map. Every step's candidates of every search go through
the model in one call (``batch`` images a forward), and a kept set seen before is not
evaluated again. The modality analysis (what the language prior gives without the image,
what the image adds) is read from the same searches: :meth:`Eagle.analyse`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from PIL import Image

from mmxai.citations import cite
from mmxai.errors import InputError
from mmxai.hookspecs import hookimpl
from mmxai.method import Method, token_indices
from mmxai.methods.eagle_search import Search, greedy_searches, ordering_scores
from mmxai.methods.perturbation import single_image
from mmxai.methods.regions import masked_images, region_labels, regions_to_grids
from mmxai.perturb import answer_log_probs, baseline_image, swap_each
from mmxai.trace import Needs, Trace

#: More regions than this make a search of over 65,000 forwards a token: refused, not run.
MAX_SEGMENTS = 256


@dataclass
class EagleOptions:
    #: "slico": zero-parameter SLIC superpixels (the paper's sparsification); "slic":
    #: SLIC at the regions helper's fixed compactness; "grid": blocks of ``cell`` x ``cell``
    #: image tokens of the model's own grid.
    regions: Literal["slico", "slic", "grid"] = "slico"
    segments: int = 64  # superpixels asked for (the paper's 64)
    cell: int = 2  # tokens per block side, regions="grid"
    insight_weight: float = 1.0  # lambda_1, the paper's 1
    necessity_weight: float = 1.0  # lambda_2, the paper's 1
    #: What replaces removed regions: "black" (the paper's zeroed pixels), "mean", "blur".
    baseline: Literal["black", "mean", "blur"] = "black"
    #: One search for all the tokens asked for (their mean probability), one shared map.
    together: bool = False
    batch: int = 32  # perturbed images per forward pass

    def __post_init__(self) -> None:
        # the choices and finite numbers are make_options' checks (mmxai.options)
        if not 2 <= self.segments <= MAX_SEGMENTS:
            raise ValueError(f"segments must be in [2, {MAX_SEGMENTS}] (a search costs about "
                             f"segments^2 forwards a token), got {self.segments}")
        if self.cell < 1:
            raise ValueError(f"cell must be at least 1, got {self.cell}")
        for name in ("insight_weight", "necessity_weight"):
            value = getattr(self, name)
            if value < 0:
                raise ValueError(f"{name} must be >= 0, got {value}")
        if self.insight_weight == 0 and self.necessity_weight == 0:
            raise ValueError("insight_weight and necessity_weight are both 0: the objective "
                             "would be constant")
        if self.batch < 1:
            raise ValueError(f"batch must be at least 1, got {self.batch}")


@dataclass
class Reliance:
    """What one explained target relies on (the paper's modality analysis), in probabilities
    of the target token(s), teacher-forced.

    ``language_prior``: with every region removed (the baseline image: the prompt and the
    answer so far alone); ``with_image``: with the image as it is; ``perception``: what the
    image adds, ``with_image - language_prior`` (negative: the image argues against the
    token). ``insertion``: the probability as the regions come back in the search's order,
    from none to all (``area``: the fraction of the image's pixels back at each point).
    """

    tokens: list[int]
    language_prior: float
    with_image: float
    perception: float
    insertion: list[float]
    area: list[float]
    order: list[int]

    @property
    def perceptual_share(self) -> float:
        """The share of the token's probability the image adds, ``perception /
        with_image`` clipped to [0, 1]: 0, the prior alone gives it; 1, the image does."""
        if self.with_image <= 0:
            return 0.0
        return float(np.clip(self.perception / self.with_image, 0.0, 1.0))


class Eagle(Method):
    name = "eagle"
    summary = ("Greedy region search for what a token needs and suffices with (insight + "
               "necessity), teacher-forced; about segments^2 forwards a token")
    needs = Needs(extra_passes=True)
    Options = EagleOptions
    citation = cite("chen2026eagle")
    default_run = False

    def explain(self, trace: Trace, tokens: Sequence[int]) -> np.ndarray:
        labels, searches, groups = self._search(trace, tokens)
        n_regions = int(labels.max()) + 1
        region_maps = np.stack([ordering_scores(s, n_regions) for s in searches])
        maps = regions_to_grids(region_maps, labels, trace.grids)
        row = {j: g for g, group in enumerate(groups) for j in group}
        return maps[[row[int(j)] for j in tokens]].astype(np.float32)

    def analyse(self, trace: Trace, tokens: Sequence[int] | None = None) -> list[Reliance]:
        """The modality analysis of ``tokens`` (None: every generated token): one
        :class:`Reliance` per search (per token, or one for all with ``together``). Runs
        the same searches as :meth:`explain`."""
        selected = token_indices(tokens, trace.n_generated, f"method {self.name!r}, tokens")
        if not selected:
            return []
        labels, searches, groups = self._search(trace, selected)
        area = np.bincount(labels.ravel(), minlength=int(labels.max()) + 1) / labels.size
        out = []
        for group, s in zip(groups, searches, strict=True):
            revealed = np.concatenate([[0.0], np.cumsum(area[s.order])])
            out.append(Reliance(list(group), s.prior, s.full, s.full - s.prior,
                                [s.prior, *s.insight], revealed.tolist(), list(s.order)))
        return out

    def _search(self, trace: Trace, tokens: Sequence[int]
                ) -> tuple[np.ndarray, list[Search], list[list[int]]]:
        """The region labels, the searches and the tokens each one explains.

        Both live in ``trace.cache`` under these options, so :meth:`analyse` after
        :meth:`explain` (or a second call) runs no search twice.
        """
        image = single_image(self.name, trace)
        opts = self.options
        key = (self.name, repr(opts))
        # the segmentation depends on the regions' options only (not weights, batch, ...)
        regions = (self.name, "labels", opts.regions, opts.cell, opts.segments)
        if regions not in trace.cache:
            trace.cache[regions] = region_labels(image, trace.grids, opts.regions,
                                                 cell=opts.cell, segments=opts.segments)
        labels = trace.cache[regions]
        n_regions = int(labels.max()) + 1
        if n_regions > MAX_SEGMENTS:
            what, fix = ((f"regions of {opts.cell}x{opts.cell} tokens", "raise cell")
                         if opts.regions == "grid" else
                         (f"{opts.regions} superpixels", "lower segments"))
            raise InputError(f"method {self.name!r}: {n_regions} {what}, more than "
                             f"{MAX_SEGMENTS} (about {n_regions ** 2} forwards a token): "
                             f"{fix}")
        unique = sorted(set(int(j) for j in tokens))
        groups = [unique] if opts.together else [[j] for j in unique]
        todo = [g for g in groups if (key, tuple(g)) not in trace.cache]
        if todo:
            wanted = sorted({j for g in todo for j in g})
            column = {j: c for c, j in enumerate(wanted)}
            evaluate = _evaluator(trace, image, baseline_image(image, opts.baseline), labels,
                                  wanted, opts.batch)
            found = greedy_searches(evaluate, n_regions, [[column[j] for j in g] for g in todo],
                                    opts.insight_weight, opts.necessity_weight)
            trace.cache.update({(key, tuple(g)): s for g, s in zip(todo, found, strict=True)})
        return labels, [trace.cache[key, tuple(g)] for g in groups], groups


def _evaluator(trace: Trace, image: Image.Image, baseline: Image.Image, labels: np.ndarray,
               tokens: list[int], batch: int):
    """``evaluate(kept)`` for the search: (B, R) kept regions -> (B, len(tokens))
    probabilities of the traced tokens, teacher-forced, ``batch`` images at a time (composed,
    through the processor in one call, and through the model in one forward): a step's
    candidates are tokens x regions images, never all in memory at once."""
    positions = [trace.generating_position(j) for j in tokens]

    def evaluate(kept: np.ndarray) -> np.ndarray:
        out = []
        for start in range(0, len(kept), batch):
            variants = swap_each(trace.model, trace.inputs,
                                 masked_images(image, baseline, labels,
                                               kept[start:start + batch]))
            out.append(answer_log_probs(trace.model, variants, trace.sequence, positions,
                                        batch))
        return np.exp(np.concatenate(out).astype(np.float64))

    return evaluate


@hookimpl
def register_methods(register) -> None:
    register(Eagle)
