"""Perturbation methods through captum: occlusion, feature ablation, KernelSHAP and LIME.

Each method hides parts of the image (replaces their pixels by a baseline image), teacher-
forces the traced answer over every perturbed copy, and reads the log-probability of each
explained token at its generating position: ``f_j(x) = log p(y_j | x, prompt, y_<j)``.

- ``occlusion`` (Zeiler and Fergus 2014): captum's ``Occlusion`` slides a square window over
  the token cells of the model's grid (window and stride in tokens; the lattice padded so
  the last row and column are covered, :func:`~mmxai.methods.regions.window_lattice`); a
  cell's score is the mean of ``f_j(x) - f_j(x with the window hidden)`` over the windows
  covering it.
- ``feature-ablation``: captum's ``FeatureAblation`` hides one region at a time (blocks of
  the model's token grid, or SLIC superpixels): a region's score is
  ``f_j(x) - f_j(x without it)``.
- ``kernel-shap`` (Lundberg and Lee 2017) and ``lime`` (Ribeiro et al. 2016): captum's
  ``KernelShap`` and ``Lime`` fit a linear model of ``f_j`` on which regions are present,
  over random subsets; the coefficients are the scores.

What captum perturbs is which cells or regions are kept (a vector of ones, the baseline
zeros), not the pixels: the forward composes each perturbed image at the original
resolution from the kept regions (:func:`~mmxai.methods.regions.masked_images`), ``batch``
images at a time, so captum's own tensors stay the size of the region count however large
the photo (over the pixels, occlusion of a 2000 x 1500 image for 10 tokens took 8.7 GB).
The perturbed images are exactly those captum's pixel-space masks make; LIME's similarity
kernel, which captum computes on the pixels, is computed from per-region sums
(:func:`pixel_cosine_kernel`), so the maps are the same.

Cell and region scores reach the token grids as the mean over each token cell's pixels
(:mod:`mmxai.methods.regions`). The forward function captum calls returns every explained
token's log-probability at once, so one pass over a perturbed image serves all tokens:
occlusion and feature ablation read the (k, tokens) output whole (captum attributes each
output element); LIME and KernelSHAP fit one token at a time, on the same seeded samples,
through a forward memoised on the kept regions, so the model runs once per distinct image,
not once per token.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import ClassVar, Literal

import numpy as np
import torch
from PIL import Image

from mmxai.citations import cite
from mmxai.errors import InputError, MMXAIError
from mmxai.hookspecs import hookimpl
from mmxai.method import Method
from mmxai.methods.regions import (
    masked_images,
    region_labels,
    regions_to_grids,
    window_lattice,
)
from mmxai.perturb import answer_log_probs, baseline_image, swap_each
from mmxai.trace import Needs, Trace
from mmxai.video import still_images_only

Forward = Callable[[torch.Tensor], torch.Tensor]


def _positive(name: str, value: int) -> None:
    if value < 1:
        raise ValueError(f"{name} must be at least 1, got {value}")


@dataclass
class OcclusionOptions:
    window: int = 2  # side of the hidden square, in tokens of the model's grid
    stride: int = 1  # step between window positions, in tokens
    #: What replaces hidden pixels: the image's mean colour (Zeiler and Fergus's grey
    #: square), a strong blur, or black (the deletion metric's baseline images).
    baseline: Literal["mean", "blur", "black"] = "mean"
    batch: int = 16  # perturbed images per forward pass (captum's perturbations_per_eval)

    def __post_init__(self) -> None:
        for name in ("window", "stride", "batch"):
            _positive(name, getattr(self, name))


@dataclass
class RegionOptions:
    #: "grid": blocks of ``cell`` x ``cell`` tokens of the model's grid; "slic": SLIC
    #: superpixels, about ``segments`` of them.
    regions: Literal["grid", "slic", "slico"] = "grid"
    cell: int = 1
    segments: int = 64
    baseline: Literal["mean", "blur", "black"] = "mean"
    batch: int = 16

    def __post_init__(self) -> None:
        for name in ("cell", "segments", "batch"):
            _positive(name, getattr(self, name))


@dataclass
class SamplingOptions(RegionOptions):
    regions: Literal["grid", "slic", "slico"] = "slic"  # superpixels, as both papers explain images
    #: Random subsets of regions (captum's n_samples). "auto": each package's own default,
    #: KernelSHAP 2R + 2048 (SHAP's KernelExplainer, R regions), LIME 1000 (lime's image
    #: explainer). Under about R + 2, KernelSHAP's regression is underdetermined.
    samples: Literal["auto"] | int = "auto"
    seed: int = 0  # seeds the subsets (torch's generator, forked: the caller's is untouched)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.samples != "auto":
            _positive("samples", self.samples)
        if self.seed < 0:
            raise ValueError(f"seed must be at least 0, got {self.seed}")


def single_image(method: str, trace: Trace) -> Image.Image:
    """The trace's one still image, or one line saying why the method cannot run."""
    inputs = trace.inputs
    still_images_only(inputs, f"method {method!r}: perturbs the pixels of one still image")
    if len(inputs.images) != 1:
        raise InputError(f"method {method!r}: perturbs the pixels of one image; this sample "
                         f"has {len(inputs.images)}")
    return inputs.images[0].convert("RGB")


def kept_forward(trace: Trace, image: Image.Image, baseline: Image.Image,
                 labels: np.ndarray, positions: Sequence[int], batch: int) -> Forward:
    """captum's forward: (k, ...) which regions are kept (1) or take ``baseline``'s pixels (0),
    flattened to (k, n_labels) over ``labels``' values -> (k, len(positions)) float32
    log-probabilities of the traced answer's tokens after ``positions``.

    Memoised on the kept regions, so a subset captum asks for again (another token's fit on
    the same samples) costs no pass; the new images of one call (captum's
    ``perturbations_per_eval``, ``batch`` at most) are composed at the image's resolution,
    go through the processor once, and through the model ``batch`` at a time.
    """
    model, inputs, memo = trace.model, trace.inputs, {}

    def forward(kept: torch.Tensor) -> torch.Tensor:
        keep = kept.detach().reshape(kept.shape[0], -1).cpu().numpy() > 0.5
        keys = [row.tobytes() for row in keep]
        new = {k: row for k, row in zip(keys, keep, strict=True) if k not in memo}
        if new:
            pictures = masked_images(image, baseline, labels, np.stack(list(new.values())))
            rows = answer_log_probs(model, swap_each(model, inputs, pictures), trace.sequence,
                                    positions, batch)
            memo.update(zip(new, rows, strict=True))
        return torch.as_tensor(np.stack([memo[k] for k in keys]), dtype=torch.float32)

    return forward


def pixel_cosine_kernel(image: Image.Image, baseline: Image.Image, labels: np.ndarray):
    """captum's default LIME similarity, ``exp(-d^2 / 2)`` of the cosine distance ``d``
    between the original and the perturbed pixels (all channels, values 0..255), computed
    from which regions are kept: per region, the sums of x*x, x*b and b*b decide it."""
    x = np.asarray(image.convert("RGB"), dtype=np.float64).reshape(-1, 3)
    b = np.asarray(baseline.convert("RGB"), dtype=np.float64).reshape(-1, 3)
    flat, n = labels.ravel(), int(labels.max()) + 1
    xx, xb, bb = (np.bincount(flat, weights=(u * v).sum(axis=1), minlength=n)
                  for u, v in ((x, x), (x, b), (b, b)))

    def similarity(_original: torch.Tensor, perturbed: torch.Tensor, _sample: torch.Tensor,
                   **_: object) -> float:
        p = perturbed.detach().reshape(-1).cpu().double().numpy()[:n]
        dot, zz = p @ xx + (1 - p) @ xb, p @ xx + (1 - p) @ bb
        cosine = dot / max(math.sqrt(xx.sum()) * math.sqrt(zz), 1e-8)
        return math.exp(-((1 - cosine) ** 2) / 2)

    return similarity


class _Perturbation(Method):
    needs = Needs(extra_passes=True)
    default_run = False

    def explain(self, trace: Trace, tokens: Sequence[int]) -> np.ndarray:
        image = single_image(self.name, trace)
        unique = sorted(set(tokens))
        baseline = baseline_image(image, self.options.baseline)
        labels, shape = self.cells(trace, image)
        forward = kept_forward(trace, image, baseline, labels,
                               [trace.generating_position(j) for j in unique],
                               self.options.batch)
        scores = self.scores(torch.ones(1, *shape), image, baseline, labels, forward,
                             len(unique))
        maps = regions_to_grids(scores.reshape(len(unique), -1)[:, :int(labels.max()) + 1],
                                labels, trace.grids)
        return maps[[unique.index(j) for j in tokens]]

    def cells(self, trace: Trace, image: Image.Image) -> tuple[np.ndarray, tuple[int, ...]]:
        """(H, W) labels of what is hidden together (regions, or occlusion's cells), and the
        shape of what captum perturbs (its flattened indices are the labels)."""
        raise NotImplementedError

    def scores(self, kept: torch.Tensor, image: Image.Image, baseline: Image.Image,
               labels: np.ndarray, forward: Forward, n_tokens: int) -> torch.Tensor:
        """(n_tokens, ...) scores of ``kept`` (ones, captum's input; the baseline zeros)'s
        elements, in ``forward``'s order of tokens."""
        raise NotImplementedError


class Occlusion(_Perturbation):
    name = "occlusion"
    summary = ("Occlusion: the answer's log-probability drop as a square of tokens is "
               "hidden, slid over the image")
    Options = OcclusionOptions
    citation = cite("zeiler2014occlusion")

    def cells(self, trace, image):
        grid = next((g for g in trace.grids if g.image == 0), None)
        if grid is None:
            raise InputError(f"method {self.name!r}: the image has no grid of image tokens")
        width, height = image.size
        return window_lattice(grid, height, width, self.options.window, self.options.stride)

    def scores(self, kept, image, baseline, labels, forward, n_tokens):
        from captum.attr import Occlusion as CaptumOcclusion

        opts = self.options
        # windows over the lattice's cells (padded: every cell has one, each cell's score
        # the mean over the windows covering it); the padding cells' scores are dropped
        return CaptumOcclusion(forward).attribute(
            kept, baselines=0.0, sliding_window_shapes=(opts.window, opts.window),
            strides=(opts.stride, opts.stride), perturbations_per_eval=opts.batch)


class _RegionMethod(_Perturbation):
    Options = RegionOptions

    def cells(self, trace, image):
        opts = self.options
        labels = region_labels(image, trace.grids, opts.regions, cell=opts.cell,
                               segments=opts.segments)
        return labels, (int(labels.max()) + 1,)


class FeatureAblation(_RegionMethod):
    name = "feature-ablation"
    summary = ("Feature ablation: the answer's log-probability drop as each region (token "
               "blocks or superpixels) is hidden")
    citation = cite("zeiler2014occlusion", "achanta2012slic")

    def scores(self, kept, image, baseline, labels, forward, n_tokens):
        from captum.attr import FeatureAblation as CaptumFeatureAblation

        return CaptumFeatureAblation(forward).attribute(
            kept, baselines=0.0, perturbations_per_eval=self.options.batch)


class _SampledRegions(_RegionMethod):
    Options = SamplingOptions
    attribution: ClassVar[str] = ""  # the captum class
    min_regions: ClassVar[int] = 1

    def auto_samples(self, n_regions: int) -> int:
        """``samples="auto"``: the package's own default for ``n_regions`` regions."""
        raise NotImplementedError

    def explainer(self, forward: Forward, image: Image.Image, baseline: Image.Image,
                  labels: np.ndarray):
        import captum.attr

        return getattr(captum.attr, self.attribution)(forward)

    def scores(self, kept, image, baseline, labels, forward, n_tokens):

        try:  # captum fits KernelSHAP's and LIME's linear models with scikit-learn
            from sklearn.exceptions import ConvergenceWarning
        except ImportError:
            raise MMXAIError(f"method {self.name!r} needs scikit-learn (captum fits its "
                             "linear model with it): pip install 'mmxai[lime-shap]'") from None
        opts = self.options
        n_regions = int(labels.max()) + 1
        if n_regions < self.min_regions:
            raise InputError(f"method {self.name!r}: {n_regions} region in this image "
                             f"(regions={opts.regions}), needs at least {self.min_regions}: "
                             f"raise segments or cell's resolution, or use regions=grid")
        samples = self.auto_samples(n_regions) if opts.samples == "auto" else opts.samples
        scores = []
        for j in range(n_tokens):
            # every token's fit draws the same subsets: the memoised forward runs each
            # perturbed image once, whichever token asked for it first
            with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
                torch.manual_seed(opts.seed)
                # the lasso's coordinate descent may stop at its iteration cap on a few
                # samples: captum's fit as it is, without a warning per token
                warnings.simplefilter("ignore", category=ConvergenceWarning)
                coefs = self.explainer(lambda x, j=j: forward(x)[:, j], image, baseline,
                                       labels).attribute(
                    kept, baselines=0.0, n_samples=samples,
                    perturbations_per_eval=opts.batch, return_input_shape=False)
            scores.append(coefs.reshape(-1).detach().float())
        return torch.stack(scores)


class KernelSHAP(_SampledRegions):
    name = "kernel-shap"
    summary = ("KernelSHAP: Shapley values of image regions for the answer's "
               "log-probability, by weighted regression on random subsets")
    citation = cite("lundberg2017shap", "achanta2012slic")
    attribution = "KernelShap"
    min_regions = 2  # captum's subset-size distribution is empty for a single region

    def auto_samples(self, n_regions):
        return 2 * n_regions + 2048  # SHAP's KernelExplainer, nsamples="auto"


class LIME(_SampledRegions):
    name = "lime"
    summary = ("LIME: a sparse linear model of the answer's log-probability on which image "
               "regions are present, fitted on random subsets")
    citation = cite("ribeiro2016lime", "achanta2012slic")
    attribution = "Lime"

    def auto_samples(self, n_regions):
        return 1000  # lime's LimeImageExplainer.explain_instance, num_samples

    def explainer(self, forward, image, baseline, labels):
        from captum.attr import Lime as CaptumLime

        # captum's default kernel on the pixels, which the forward's input no longer is
        return CaptumLime(forward, similarity_func=pixel_cosine_kernel(image, baseline, labels))


@hookimpl
def register_methods(register) -> None:
    register(Occlusion)
    register(FeatureAblation)
    register(KernelSHAP)
    register(LIME)
