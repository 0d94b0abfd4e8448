"""Perturbation methods through captum: occlusion, feature ablation, KernelSHAP and LIME.

Each method hides parts of the image (replaces their pixels by a baseline image), teacher-
forces the traced answer over every perturbed copy, and reads the log-probability of each
explained token at its generating position: ``f_j(x) = log p(y_j | x, prompt, y_<j)``.

- ``occlusion`` (Zeiler and Fergus 2014): captum's ``Occlusion`` slides a square window over
  the pixels; a pixel's score is the mean of ``f_j(x) - f_j(x with the window hidden)``
  over the windows covering it. Window and stride are counted in tokens of the model's grid.
- ``feature-ablation``: captum's ``FeatureAblation`` hides one region at a time (blocks of
  the model's token grid, or SLIC superpixels): a region's score is
  ``f_j(x) - f_j(x without it)``.
- ``kernel-shap`` (Lundberg and Lee 2017) and ``lime`` (Ribeiro et al. 2016): captum's
  ``KernelShap`` and ``Lime`` fit a linear model of ``f_j`` on which regions are present,
  over random subsets; the coefficients are the scores.

Pixel scores (occlusion) and region scores (the others) reach the token grids as the mean
over each token cell's pixels (:mod:`mmxai.methods.regions`). The forward function captum
calls returns every explained token's log-probability at once, so one pass over a perturbed
image serves all tokens: occlusion and feature ablation read the (k, tokens) output whole
(captum attributes each output element); LIME and KernelSHAP fit one token at a time, on
the same seeded samples, through a forward memoised on the perturbed pixels, so the model
runs once per distinct image, not once per token.
"""

from __future__ import annotations

import hashlib
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
from mmxai.methods.regions import pixels_to_grids, region_labels, regions_to_grids
from mmxai.perturb import answer_log_probs, baseline_image, swap_each
from mmxai.trace import Needs, Trace

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
    samples: int = 25  # random subsets of regions (captum's n_samples default)
    seed: int = 0  # seeds the subsets (torch's generator, forked: the caller's is untouched)

    def __post_init__(self) -> None:
        super().__post_init__()
        _positive("samples", self.samples)
        if self.seed < 0:
            raise ValueError(f"seed must be at least 0, got {self.seed}")


def single_image(method: str, trace: Trace) -> Image.Image:
    """The trace's one still image, or one line saying why the method cannot run."""
    inputs = trace.inputs
    if inputs.clips:
        raise InputError(f"method {method!r}: perturbs the pixels of one still image; this "
                         f"sample is a video")
    if len(inputs.images) != 1:
        raise InputError(f"method {method!r}: perturbs the pixels of one image; this sample "
                         f"has {len(inputs.images)}")
    return inputs.images[0].convert("RGB")


def pixel_tensor(image: Image.Image) -> torch.Tensor:
    """(1, 3, H, W) float32 pixel values 0..255: the input captum perturbs."""
    return torch.from_numpy(np.asarray(image, dtype=np.float32)).permute(2, 0, 1)[None]


def answer_forward(trace: Trace, positions: Sequence[int], batch: int) -> Forward:
    """captum's forward: (k, 3, H, W) perturbed pixels -> (k, len(positions)) float32
    log-probabilities of the traced answer's tokens after ``positions``.

    Memoised on the pixels (as 8-bit images, which is what the processor sees), so an image
    captum asks for again (another token's fit on the same samples) costs no pass; the new
    images of one call go through the processor once and the model ``batch`` at a time.
    """
    model, inputs, memo = trace.model, trace.inputs, {}

    def forward(pixels: torch.Tensor) -> torch.Tensor:
        arrays = (pixels.detach().round().clamp(0, 255).to(torch.uint8)
                  .permute(0, 2, 3, 1).cpu().numpy())
        keys = [hashlib.blake2b(a.tobytes(), digest_size=16).digest() for a in arrays]
        new = {k: a for k, a in zip(keys, arrays, strict=True) if k not in memo}
        if new:
            variants = swap_each(model, inputs, [Image.fromarray(a) for a in new.values()])
            rows = answer_log_probs(model, variants, trace.sequence, positions, batch)
            memo.update(zip(new, rows, strict=True))
        return torch.as_tensor(np.stack([memo[k] for k in keys]), dtype=torch.float32)

    return forward


class _Perturbation(Method):
    needs = Needs(extra_passes=True)
    default_run = False

    def explain(self, trace: Trace, tokens: Sequence[int]) -> np.ndarray:
        image = single_image(self.name, trace)
        unique = sorted(set(tokens))
        forward = answer_forward(trace, [trace.generating_position(j) for j in unique],
                                 self.options.batch)
        baseline = pixel_tensor(baseline_image(image, self.options.baseline))
        maps = self.token_maps(trace, image, forward, baseline, len(unique))
        return maps[[unique.index(j) for j in tokens]]

    def token_maps(self, trace: Trace, image: Image.Image, forward: Forward,
                   baseline: torch.Tensor, n_tokens: int) -> np.ndarray:
        """(n_tokens, N_image) maps of the explained tokens, in ``forward``'s order."""
        raise NotImplementedError


class Occlusion(_Perturbation):
    name = "occlusion"
    summary = ("Occlusion: the answer's log-probability drop as a square of tokens is "
               "hidden, slid over the image")
    Options = OcclusionOptions
    citation = cite("zeiler2014occlusion")

    def token_maps(self, trace, image, forward, baseline, n_tokens):
        from captum.attr import Occlusion as CaptumOcclusion

        opts = self.options
        window, stride = token_window(trace, image, opts.window, opts.stride)
        pixels = CaptumOcclusion(forward).attribute(
            pixel_tensor(image), sliding_window_shapes=(3, *window), strides=(3, *stride),
            baselines=baseline, perturbations_per_eval=opts.batch)
        # captum divides by how many windows covered a pixel: 0/0 where none did (a stride
        # that leaves the last rows or columns out); no window there, no evidence
        pixels = torch.nan_to_num(pixels.reshape(n_tokens, 3, *pixels.shape[-2:]), nan=0.0)
        return pixels_to_grids(pixels.mean(dim=1).numpy(), trace.grids)


def token_window(trace: Trace, image: Image.Image, window: int, stride: int
                 ) -> tuple[tuple[int, int], tuple[int, int]]:
    """``window`` and ``stride`` in tokens -> ((height, width), (height, width)) in pixels,
    through the first grid of the image (its box and shape: a token's size in pixels)."""
    grid = next((g for g in trace.grids if g.image == 0), None)
    if grid is None:
        raise InputError("method 'occlusion': the image has no grid of image tokens")
    width, height = image.size
    x0, y0, x1, y1 = grid.box
    token = ((y1 - y0) * height / grid.shape[0], (x1 - x0) * width / grid.shape[1])
    shape = tuple(min(size, max(1, round(window * t))) for t, size in zip(token, (height, width),
                                                                          strict=True))
    step = tuple(max(1, round(stride * t)) for t in token)
    return shape, step


class _RegionMethod(_Perturbation):
    Options = RegionOptions

    def token_maps(self, trace, image, forward, baseline, n_tokens):
        opts = self.options
        labels = region_labels(image, trace.grids, opts.regions, cell=opts.cell,
                               segments=opts.segments)
        scores = self.region_scores(pixel_tensor(image), torch.from_numpy(labels)[None, None],
                                    forward, baseline, n_tokens)
        return regions_to_grids(scores, labels, trace.grids)

    def region_scores(self, pixels: torch.Tensor, mask: torch.Tensor, forward: Forward,
                      baseline: torch.Tensor, n_tokens: int) -> np.ndarray:
        """(n_tokens, R) region scores; ``mask`` (1, 1, H, W) holds labels 0..R-1."""
        raise NotImplementedError


class FeatureAblation(_RegionMethod):
    name = "feature-ablation"
    summary = ("Feature ablation: the answer's log-probability drop as each region (token "
               "blocks or superpixels) is hidden")
    citation = cite("zeiler2014occlusion", "achanta2012slic")

    def region_scores(self, pixels, mask, forward, baseline, n_tokens):
        from captum.attr import FeatureAblation as CaptumFeatureAblation

        attr = CaptumFeatureAblation(forward).attribute(
            pixels, baselines=baseline, feature_mask=mask,
            perturbations_per_eval=self.options.batch)
        # every pixel of a region holds the region's score: read one pixel per region
        _, first = np.unique(mask.numpy().ravel(), return_index=True)
        return attr.reshape(n_tokens, 3, -1)[:, 0, first].numpy()


class _SampledRegions(_RegionMethod):
    Options = SamplingOptions
    attribution: ClassVar[str] = ""  # the captum class
    min_regions: ClassVar[int] = 1

    def region_scores(self, pixels, mask, forward, baseline, n_tokens):
        import captum.attr

        try:  # captum fits KernelSHAP's and LIME's linear models with scikit-learn
            from sklearn.exceptions import ConvergenceWarning
        except ImportError:
            raise MMXAIError(f"method {self.name!r} needs scikit-learn (captum fits its "
                             "linear model with it): pip install 'mmxai[lime-shap]'") from None
        explainer = getattr(captum.attr, self.attribution)
        opts = self.options
        n_regions = int(mask.max()) + 1
        if n_regions < self.min_regions:
            raise InputError(f"method {self.name!r}: {n_regions} region in this image "
                             f"(regions={opts.regions}), needs at least {self.min_regions}: "
                             f"raise segments or cell's resolution, or use regions=grid")
        scores = []
        for j in range(n_tokens):
            # every token's fit draws the same subsets: the memoised forward runs each
            # perturbed image once, whichever token asked for it first
            with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
                torch.manual_seed(opts.seed)
                # the lasso's coordinate descent may stop at its iteration cap on a few
                # samples: captum's fit as it is, without a warning per token
                warnings.simplefilter("ignore", category=ConvergenceWarning)
                coefs = explainer(lambda x, j=j: forward(x)[:, j]).attribute(
                    pixels, baselines=baseline, feature_mask=mask, n_samples=opts.samples,
                    perturbations_per_eval=opts.batch, return_input_shape=False)
            scores.append(coefs.reshape(-1).detach().float().numpy())
        return np.stack(scores)


class KernelSHAP(_SampledRegions):
    name = "kernel-shap"
    summary = ("KernelSHAP: Shapley values of image regions for the answer's "
               "log-probability, by weighted regression on random subsets")
    citation = cite("lundberg2017shap", "achanta2012slic")
    attribution = "KernelShap"
    min_regions = 2  # captum's subset-size distribution is empty for a single region


class LIME(_SampledRegions):
    name = "lime"
    summary = ("LIME: a sparse linear model of the answer's log-probability on which image "
               "regions are present, fitted on random subsets")
    citation = cite("ribeiro2016lime", "achanta2012slic")
    attribution = "Lime"


@hookimpl
def register_methods(register) -> None:
    register(Occlusion)
    register(FeatureAblation)
    register(KernelSHAP)
    register(LIME)
