"""Grad-CAM on the tokens of a vision layer (Selvaraju et al. 2017).

For generated token j with logit y_j (teacher-forced, at its generating position) and the
output A of a vision layer, tokens n and channels c of one image:

    cam_n = ReLU( sum_c  alpha_c * A[n, c] ),   alpha_c = mean_n dy_j / dA[n, c]

the token version of Grad-CAM's global-average-pooled weights. The per-token scores go to
the LLM grid through the adapter (``Model.vision_tokens_to_grids``: CLS dropped, Qwen's 2x2
merge groups averaged, ...).

captum's ``LayerGradCam`` is not used: it pools over dim 1 as if it were channels, which on
(B, N, C) ViT tokens gives a (1, 1, C) "map". Two engines compute the gradients:

- ``engine="backward"`` (default): one teacher-forced forward pass serves every token, one
  backward each, and every call of the layer is kept, as ``vision_tokens_to_grids`` expects;
- ``engine="captum"``: captum's ``compute_layer_gradients_and_eval``, which runs a forward
  and a backward per token and keeps one call of the layer (enough for every adapter here,
  whose towers run once per forward). Slower; the same maps (tested), for users who want
  captum's machinery in the loop.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from mmxai.citations import cite
from mmxai.hookspecs import hookimpl
from mmxai.method import Method
from mmxai.methods.backprop import leaf_gradients, leaf_outputs, vision_layer
from mmxai.model import Inputs
from mmxai.trace import Needs, Trace, forced_features


def gradcam_scores(grads: torch.Tensor, acts: torch.Tensor) -> torch.Tensor:
    """Token Grad-CAM: (..., N, C) gradients and activations -> (..., N) scores.

    The leading dims are separate images; the channel weights are the gradient's mean over
    each image's N tokens.
    """
    weights = grads.float().mean(dim=-2, keepdim=True)  # (..., 1, C)
    return torch.relu((acts.float() * weights).sum(dim=-1))


def image_sections(n_tokens: int, inputs: Inputs) -> list[int]:
    """How a batchless (N, C) layer output splits into images.

    Qwen's vision blocks run every image in one (N_patches, C) sequence, image after image,
    ``t * h * w`` patches each (``image_grid_thw``). Without that key the rows are one image.
    """
    grid_thw = inputs.features.get("image_grid_thw")
    if grid_thw is None:
        return [n_tokens]
    sections = [int(n) for n in grid_thw.prod(dim=-1).tolist()]
    return sections if sum(sections) == n_tokens else [n_tokens]


def layer_gradcam(grads: torch.Tensor, acts: torch.Tensor, inputs: Inputs) -> torch.Tensor:
    """Grad-CAM scores of one call of the layer, shaped like its output without channels."""
    if acts.dim() > 2:
        return gradcam_scores(grads, acts)
    sections = image_sections(acts.shape[0], inputs)
    return torch.cat([gradcam_scores(g, a) for g, a in
                      zip(grads.split(sections), acts.split(sections), strict=True)])


@dataclass
class GradCAMOptions:
    #: Index into ``model.vision_layers()``; None: the layer that feeds the projector.
    layer: int | None = None
    #: "backward" (one forward, a backward per token) or "captum" (captum's utilities).
    engine: Literal["backward", "captum"] = "backward"


class GradCAM(Method):
    name = "gradcam"
    summary = "Grad-CAM on a vision layer's tokens, one backward pass per generated token"
    needs = Needs(gradients=True)
    Options = GradCAMOptions
    citation = cite("selvaraju2017gradcam")

    def explain(self, trace: Trace, tokens: Sequence[int]) -> np.ndarray:
        model = trace.model
        _, layer = vision_layer(model, self.options.layer, self.name)
        if self.options.engine == "captum":
            pairs = captum_gradients(trace, layer, tokens)
        else:
            pairs = leaf_gradients(trace, leaf_outputs(layer), tokens)
        maps = []
        for grads, acts in pairs:
            scores = [layer_gradcam(g, a.detach(), trace.inputs)
                      for g, a in zip(grads, acts, strict=True)]
            maps.append(model.vision_tokens_to_grids(scores, trace.inputs).detach().float().cpu())
        return torch.stack(maps).numpy().astype(np.float32)


def captum_gradients(trace: Trace, layer: torch.nn.Module, tokens: Sequence[int]):
    """Per token, captum's (gradients, activations) of ``layer``: a forward+backward each."""
    from captum._utils.gradient import compute_layer_gradients_and_eval

    features = forced_features(trace.inputs, trace.sequence[:-1])
    for j in tokens:
        position, target = trace.generating_position(int(j)), trace.generated_ids[int(j)]

        def forward(input_ids, position=position, target=target):
            out = trace.model.hf(**{**features, "input_ids": input_ids}, use_cache=False,
                                 logits_to_keep=torch.tensor([position]))
            return out.logits[:, 0, target].float()

        grads, acts = compute_layer_gradients_and_eval(forward, layer, features["input_ids"])
        yield list(grads), list(acts)


@hookimpl
def register_methods(register) -> None:
    register(GradCAM)
