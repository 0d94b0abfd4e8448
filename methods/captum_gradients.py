"""Integrated Gradients, its SmoothGrad noise tunnel and gradient x input, through captum.

captum computes each attribution; this module supplies the MLLM plumbing
(:mod:`mmxai.methods.image_embeddings`): which tensor (the image tokens' input embeddings, or
a vision layer's tokens), which target (the logit of each explained token at its generating
position, the traced answer teacher-forced) and which grid (the flat layout of
``trace.image_positions``). Several tokens are explained in one captum call: the explained
tensor is repeated once per token along captum's example dimension (dim 0), and each example
gets its own token as ``target``.

- ``integrated-gradients`` (Sundararajan et al. 2017): ``IntegratedGradients`` on the image
  embeddings x against a baseline x', ``steps`` forward and backward passes per token;
- ``ig-smoothgrad`` (Smilkov et al. 2017): ``NoiseTunnel(IntegratedGradients)``, IG averaged
  over ``samples`` noisy copies of x, ``samples * steps`` passes per token;
- ``gradient-x-input`` (Shrikumar et al. 2016): ``InputXGradient`` on the image embeddings;
- ``vision-gradient-x-input``: ``LayerGradientXActivation`` on the vision layer that feeds the
  projector, mapped to the LLM grids as Grad-CAM's scores are (``vision_tokens_to_grids``).

The two gradient x input methods have two engines, as Grad-CAM (same maps, tested):
``engine="backward"`` (default) makes the tensor a leaf in ONE teacher-forced forward pass
for all tokens and takes one backward per token (:mod:`mmxai.methods.backprop`), about one
Grad-CAM; ``engine="captum"`` goes through captum's classes above, which take one target per
example, so every token costs a forward and a backward (2.3x Grad-CAM's time on the
testbed16 model, one CPU thread: 0.31 s per sample against 0.14 s).

Every map is reduced over the embedding (or channel) dimension: the sum by default (signed,
and for IG the per-token share of the completeness sum), or the L2 norm.

The embedding methods vary the image rows of the first decoder layer's input only. A model
that adds image features again after later decoder layers (Qwen3-VL's DeepStack:
``vision_config.deepstack_visual_indexes``) keeps those as traced, so IG's path and the
gradient miss what enters there: they run, with a UserWarning naming the method
(:func:`warn_injected_features`), once per method and model.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from mmxai.citations import cite
from mmxai.errors import MMXAIError
from mmxai.hookspecs import hookimpl
from mmxai.method import Method
from mmxai.methods.backprop import leaf_gradients, leaf_inputs, leaf_outputs, vision_layer
from mmxai.methods.image_embeddings import (
    ImageTokenLogits,
    InputIdLogits,
    attribution_pass,
    baseline_embeddings,
    image_embeddings,
    token_chunks,
)
from mmxai.trace import Needs, Trace

Reduce = Literal["sum", "l2"]
IntegrationRule = Literal["gausslegendre", "riemann_trapezoid", "riemann_left",
                          "riemann_right", "riemann_middle"]


def reduced(attributions: torch.Tensor, reduce: str) -> torch.Tensor:
    """(..., C) attributions -> (...) per-token scores: the sum over C, or its L2 norm."""
    values = attributions.detach().float()
    return values.sum(dim=-1) if reduce == "sum" else values.norm(dim=-1)


_warned: set[tuple[str, str]] = set()


def warn_injected_features(trace: Trace, method: str) -> None:
    """A UserWarning, once per method and model, when the model adds image features after
    later decoder layers (DeepStack), which an embedding method leaves as traced."""
    vision = getattr(trace.model.hf.config, "vision_config", None)
    layers = getattr(vision, "deepstack_visual_indexes", None)
    if not layers or (method, trace.model.model_id) in _warned:
        return
    _warned.add((method, trace.model.model_id))
    warnings.warn(f"{method}: {trace.model.model_id} adds image features again after its "
                  f"first {len(layers)} decoder layer(s) (DeepStack); the method varies the "
                  "image embeddings the first layer reads, and those later features stay as "
                  "traced, so the maps miss what enters there", UserWarning, stacklevel=3)


def _check_batch(batch: int) -> None:
    if batch < 1:
        raise ValueError(f"batch={batch} must be at least 1 (sequences per forward pass)")


@dataclass
class GradientXInputOptions:
    #: How a token's (d,) attribution becomes one score: "sum" (signed) or "l2" (its norm).
    reduce: Reduce = "sum"
    #: "backward" (one forward for all tokens, a backward per token) or "captum" (captum's
    #: class: a forward and a backward per token).
    engine: Literal["backward", "captum"] = "backward"
    #: engine="captum": copies of the sequence per forward pass (memory), tokens are explained
    #: in groups this big.
    batch: int = 8

    def __post_init__(self) -> None:
        _check_batch(self.batch)


@dataclass
class IntegratedGradientsOptions:
    #: Points on the path from the baseline to the input (captum's n_steps).
    steps: int = 50
    #: The path's start x': "black" (the embeddings the model makes of black images of the
    #: same sizes, the paper's baseline for images), "mean" (every image token at the image
    #: tokens' mean embedding) or "zeros" (ill-conditioned under pre-norm decoders: the norm's
    #: 1/rms jumps next to 0, which no quadrature resolves; docs/methods.md).
    baseline: Literal["black", "mean", "zeros"] = "black"
    #: captum's integration rule.
    method: IntegrationRule = "gausslegendre"
    reduce: Reduce = "sum"
    #: Sequences per forward pass (captum's internal_batch_size, and tokens per captum call).
    batch: int = 8

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise ValueError(f"steps={self.steps} must be at least 1")
        if self.method == "riemann_trapezoid" and self.steps < 2:
            raise ValueError("steps must be at least 2 with method=riemann_trapezoid")
        _check_batch(self.batch)


@dataclass
class IGSmoothGradOptions(IntegratedGradientsOptions):
    #: Noisy copies of the embeddings IG is averaged over (captum's nt_samples).
    samples: int = 50
    #: Noise standard deviation as a fraction of the image embeddings' range (max - min over
    #: all image tokens and dimensions), the paper's noise level.
    stdev: float = 0.15
    #: Seed of the noise (the maps are reproducible).
    seed: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.samples < 1:
            raise ValueError(f"samples={self.samples} must be at least 1")
        if not self.stdev > 0:
            raise ValueError(f"stdev={self.stdev} must be above 0 (a fraction of the "
                             "embeddings' range)")
        if self.seed < 0:
            raise ValueError(f"seed={self.seed} must be at least 0")


@dataclass
class VisionGradientXInputOptions(GradientXInputOptions):
    #: Index into ``model.vision_layers()``; None: the layer that feeds the projector.
    layer: int | None = None


class _ImageEmbeddingMethod(Method):
    """Attributions of the image tokens' input embeddings, ``(k, N_image, d)`` per group of
    k tokens, reduced over d."""

    def explain(self, trace: Trace, tokens: Sequence[int]) -> np.ndarray:
        warn_injected_features(trace, self.name)
        x = image_embeddings(trace)
        maps = []
        with attribution_pass(trace):
            for chunk in token_chunks(tokens, self.options.batch):
                inputs = x.expand(len(chunk), *x.shape).clone().requires_grad_(True)
                attributions = self.attribute(trace, chunk, inputs)
                maps.append(reduced(attributions, self.options.reduce).cpu())
        return torch.cat(maps).numpy().astype(np.float32)

    def attribute(self, trace: Trace, tokens: list[int], inputs: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class GradientXInput(_ImageEmbeddingMethod):
    name = "gradient-x-input"
    summary = ("gradient x input on the image tokens' input embeddings: one forward pass, "
               "one backward pass per token (engine=captum: captum InputXGradient, a forward "
               "and a backward per token)")
    needs = Needs(gradients=True)
    Options = GradientXInputOptions
    citation = cite("shrikumar2016blackbox")
    # a Grad-CAM's cost, but the default run is at its 3-minute budget without it
    default_run = False

    def explain(self, trace: Trace, tokens: Sequence[int]) -> np.ndarray:
        if self.options.engine == "captum":
            return super().explain(trace, tokens)
        warn_injected_features(trace, self.name)
        rows = torch.as_tensor(trace.image_positions, dtype=torch.long)
        maps = []
        first = trace.model.decoder_layers()[0]
        for grads, inputs in leaf_gradients(trace, leaf_inputs(first), tokens):
            if len(inputs) != 1:  # the one input captum's engine replaces on every call
                raise MMXAIError(f"{self.name}: the first decoder layer of "
                                 f"{trace.model.model_id} runs {len(inputs)} times per "
                                 "forward pass; use engine=captum")
            at = rows.to(inputs[0].device)
            products = grads[0][0, at].float() * inputs[0][0, at].float()
            maps.append(reduced(products, self.options.reduce).cpu())
        return torch.stack(maps).numpy().astype(np.float32)

    def attribute(self, trace: Trace, tokens: list[int], inputs: torch.Tensor) -> torch.Tensor:
        from captum.attr import InputXGradient

        forward = ImageTokenLogits(trace, tokens)
        return InputXGradient(forward).attribute(inputs, target=list(range(len(tokens))))


class IntegratedGradients(_ImageEmbeddingMethod):
    name = "integrated-gradients"
    summary = ("Integrated Gradients on the image tokens' input embeddings (captum): `steps` "
               "forward and backward passes per token (50)")
    needs = Needs(gradients=True, extra_passes=True)
    Options = IntegratedGradientsOptions
    citation = cite("sundararajan2017axiomatic")
    default_run = False

    def attribute(self, trace: Trace, tokens: list[int], inputs: torch.Tensor) -> torch.Tensor:
        from captum.attr import IntegratedGradients as CaptumIG

        forward = ImageTokenLogits(trace, tokens)
        baselines = baseline_embeddings(trace, self.options.baseline, self.name)
        return CaptumIG(forward).attribute(
            inputs, baselines=baselines.expand_as(inputs).contiguous(),
            target=list(range(len(tokens))), n_steps=self.options.steps,
            method=self.options.method, internal_batch_size=self.options.batch)


class IGSmoothGrad(IntegratedGradients):
    name = "ig-smoothgrad"
    summary = ("Integrated Gradients averaged over noisy image embeddings (captum NoiseTunnel, "
               "smoothgrad): `samples * steps` forward and backward passes per token (2500)")
    Options = IGSmoothGradOptions
    citation = cite("smilkov2017smoothgrad", "sundararajan2017axiomatic")

    def explain(self, trace: Trace, tokens: Sequence[int]) -> np.ndarray:
        # one token per captum call, its noise seeded by (seed, token): a token's map does not
        # depend on which other tokens are explained; `batch` noisy copies per forward pass
        return np.concatenate([super(IGSmoothGrad, self).explain(trace, [j]) for j in tokens])

    def attribute(self, trace: Trace, tokens: list[int], inputs: torch.Tensor) -> torch.Tensor:
        from captum.attr import IntegratedGradients as CaptumIG
        from captum.attr import NoiseTunnel

        opts = self.options
        x = image_embeddings(trace)
        baselines = baseline_embeddings(trace, opts.baseline, self.name)
        seed = int(np.random.SeedSequence((opts.seed, *tokens)).generate_state(1)[0])
        with torch.random.fork_rng(devices=[x.device] if x.device.type == "cuda" else []):
            torch.manual_seed(seed)
            return NoiseTunnel(CaptumIG(ImageTokenLogits(trace, tokens))).attribute(
                inputs, nt_type="smoothgrad", nt_samples=opts.samples,
                nt_samples_batch_size=opts.batch, stdevs=opts.stdev * float(x.max() - x.min()),
                baselines=baselines.expand_as(inputs).contiguous(),
                target=list(range(len(tokens))), n_steps=opts.steps, method=opts.method,
                internal_batch_size=opts.batch)


class VisionGradientXInput(Method):
    name = "vision-gradient-x-input"
    summary = ("gradient x activation of the vision layer that feeds the projector: one "
               "forward pass, one backward pass per token (engine=captum: captum "
               "LayerGradientXActivation, a forward and a backward per token)")
    needs = Needs(gradients=True)
    Options = VisionGradientXInputOptions
    citation = cite("shrikumar2016blackbox")
    # a Grad-CAM's cost, but the default run is at its 3-minute budget without it
    default_run = False

    def explain(self, trace: Trace, tokens: Sequence[int]) -> np.ndarray:
        index, layer = vision_layer(trace.model, self.options.layer, self.name)
        if self.options.engine == "backward":
            maps = [self.grid_map(trace, [reduced(g.float() * a.float(), self.options.reduce)
                                          for g, a in zip(grads, acts, strict=True)])
                    for grads, acts in leaf_gradients(trace, leaf_outputs(layer), tokens)]
            return torch.stack(maps).numpy().astype(np.float32)
        maps = []
        with attribution_pass(trace), calls_counted(layer) as calls:
            for chunk in token_chunks(tokens, self.options.batch):
                calls[0] = 0
                maps.extend(self.chunk_maps(trace, layer, chunk))
                if calls[0] > 1:  # captum would keep only the last call's tokens
                    raise MMXAIError(f"{self.name}: vision layer {index} of "
                                     f"{trace.model.model_id} runs {calls[0]} times per "
                                     "forward pass; captum's layer methods read one call")
        return torch.stack(maps).numpy().astype(np.float32)

    def chunk_maps(self, trace: Trace, layer: torch.nn.Module,
                   chunk: list[int]) -> list[torch.Tensor]:
        """(N_image,) maps of the tokens of ``chunk``, from one captum call on as many copies
        of the sequence."""
        from captum.attr import LayerGradientXActivation

        ids = trace.sequence[:-1].to(trace.model.device)[None].expand(len(chunk), -1)
        try:
            attributions = LayerGradientXActivation(
                read_through(InputIdLogits(trace, chunk)), layer).attribute(
                ids, target=list(range(len(chunk))))
        except _Unread:  # the projector does not read the layer: nothing to explain
            return list(torch.zeros(len(chunk), len(trace.image_positions)))
        copies = split_copies(reduced(attributions, self.options.reduce), len(chunk), self.name)
        return [self.grid_map(trace, [scores]) for scores in copies]

    @staticmethod
    def grid_map(trace: Trace, scores: list[torch.Tensor]) -> torch.Tensor:
        """(N_image,) map of one token from its scores on each call of the layer."""
        return trace.model.vision_tokens_to_grids(scores, trace.inputs).detach().float().cpu()


class _Unread(Exception):
    """Internal: no explained logit depends on the chosen layer."""


def read_through(forward: InputIdLogits):
    """``forward``, raising :class:`_Unread` when its logits do not depend on the layer
    (captum's layer hook makes the layer's output require grad; nothing else does)."""
    def checked(input_ids: torch.Tensor) -> torch.Tensor:
        logits = forward(input_ids)
        if not logits.requires_grad:
            raise _Unread
        return logits

    return checked


def split_copies(scores: torch.Tensor, copies: int, method: str) -> tuple[torch.Tensor, ...]:
    """A vision layer's scores for ``copies`` copies of the sample -> one tensor per copy.

    The towers stack a batch's images sample after sample on their outermost axis of more
    than one element: dim 0 for (n_images, tokens) or Qwen's (N_patches,) outputs, dim 1 for
    Pixtral's (1, N_patches), which packs every image into one sequence.
    """
    axis = next((i for i, n in enumerate(scores.shape) if n != 1), 0)
    if scores.dim() == 0 or scores.shape[axis] % copies:
        raise MMXAIError(f"{method}: vision-layer scores of shape {tuple(scores.shape)} do not "
                         f"split into {copies} copies of the sample; use batch=1")
    return scores.chunk(copies, dim=axis)


@contextmanager
def calls_counted(module: torch.nn.Module) -> Iterator[list[int]]:
    """Count the calls of ``module`` while inside, in ``[n]`` (the caller resets it)."""
    calls = [0]

    def hook(*_: object) -> None:
        calls[0] += 1

    handle = module.register_forward_hook(hook)
    try:
        yield calls
    finally:
        handle.remove()


@hookimpl
def register_methods(register) -> None:
    for method in (IntegratedGradients, IGSmoothGrad, GradientXInput, VisionGradientXInput):
        register(method)
