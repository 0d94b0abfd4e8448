"""The image tokens' input embeddings as the input of a captum attribution.

The tensor explained is what the first decoder layer reads at the image positions: the
projector's output, already merged into the sequence (Gemma's embedding scale and the like
applied), ``(N_image, d)``. :func:`image_embeddings` records it once per trace;
:class:`ImageTokenLogits` is the forward function captum calls: it replays the traced answer
teacher-forced for a batch of ``B`` candidate embeddings ``(B, N_image, d)``, each replacing
the image rows of its own copy of the sequence, and returns the logit of each explained token
at its generating position, ``(B, n_tokens)``. captum then picks one column per example (its
``target``), so one call explains several tokens, one per example of the batch.

The vision tower runs in every replayed pass (its output is overwritten, but the families'
forwards offer no generic way to skip it that keeps their position ids and masks right).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from PIL import Image

from mmxai.errors import InputError, MMXAIError
from mmxai.methods.backprop import frozen_parameters, logits_at
from mmxai.perturb import swap_images
from mmxai.trace import Trace, forced_features
from mmxai.video import still_images_only


class _Recorded(Exception):
    """Internal: stops a forward pass once the first decoder layer's input is recorded."""


def _rows(trace: Trace) -> torch.Tensor:
    return torch.as_tensor(trace.image_positions, dtype=torch.long)


def first_layer_input(trace: Trace, features: dict[str, Any]) -> torch.Tensor:
    """The first decoder layer's input for ``features``, (1, T, d), without running the
    decoder (the pass stops at that layer)."""
    recorded: list[torch.Tensor] = []

    def hook(_module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        recorded.append((args[0] if args else kwargs["hidden_states"]).detach())
        raise _Recorded

    layer = trace.model.decoder_layers()[0]
    handle = layer.register_forward_pre_hook(hook, with_kwargs=True, prepend=True)
    try:
        with torch.no_grad():
            trace.model.hf(**features, use_cache=False)
    except _Recorded:
        pass
    finally:
        handle.remove()
    return recorded[0]


def image_embeddings(trace: Trace) -> torch.Tensor:
    """The image tokens' input embeddings of the traced sample, (N_image, d) float32, on the
    model's device; recorded once per trace (``trace.cache``)."""
    if "image_embeddings" not in trace.cache:
        features = forced_features(trace.inputs, trace.sequence[:-1])
        hidden = first_layer_input(trace, features)[0]
        trace.cache["image_embeddings"] = hidden[_rows(trace).to(hidden.device)].float()
    return trace.cache["image_embeddings"]


def black_image_embeddings(trace: Trace, method: str) -> torch.Tensor:
    """The image tokens' input embeddings of the same prompt with every image black (same
    sizes, so the same token layout), (N_image, d) float32; a one-line error if the layout
    differs."""
    if "black_image_embeddings" not in trace.cache:
        model, inputs = trace.model, trace.inputs
        still_images_only(inputs, f"{method}.baseline=black builds black still images (use "
                          "baseline=zeros or mean)")
        black = [Image.new("RGB", image.size) for image in inputs.images]
        try:  # the processor again over black pixels; grids and prompt reused
            baseline = swap_images(model, inputs, black)
        except InputError as exc:
            raise MMXAIError(f"{method}.baseline=black: a black image gives {model.model_id} "
                             f"another token layout than the sample's images") from exc
        hidden = first_layer_input(trace, forced_features(baseline, trace.sequence[:-1]))[0]
        trace.cache["black_image_embeddings"] = hidden[_rows(trace).to(hidden.device)].float()
    return trace.cache["black_image_embeddings"]


def baseline_embeddings(trace: Trace, baseline: str, method: str) -> torch.Tensor:
    """IG's reference point x' for ``baseline``, (N_image, d): the embeddings of black images,
    every image token at the mean of the image tokens' embeddings, or zeros."""
    values = image_embeddings(trace)
    if baseline == "zeros":
        return torch.zeros_like(values)
    if baseline == "black":
        return black_image_embeddings(trace, method)
    return values.mean(dim=0, keepdim=True).expand_as(values)


@contextmanager
def replaced_image_rows(trace: Trace, embeddings: torch.Tensor) -> Iterator[None]:
    """While inside, the first decoder layer reads ``embeddings`` (B, N_image, d) at the
    image positions of its (B, T, d) input; everything else it reads stays the model's."""
    rows = _rows(trace)

    def hook(_module: torch.nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        hidden = (args[0] if args else kwargs["hidden_states"]).detach().clone()
        hidden[:, rows.to(hidden.device)] = embeddings.to(hidden.device, hidden.dtype)
        if args:
            return (hidden, *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": hidden}

    layer = trace.model.decoder_layers()[0]
    handle = layer.register_forward_pre_hook(hook, with_kwargs=True, prepend=True)
    try:
        yield
    finally:
        handle.remove()


class TokenLogits:
    """Base of the forward functions captum calls: the traced sequence teacher-forced in a
    batch of B copies (``Model.collate``), the logit of each of ``tokens`` at its generating
    position read from every copy, (B, n_tokens) float32."""

    def __init__(self, trace: Trace, tokens: Sequence[int]) -> None:
        self.trace = trace
        self.features = forced_features(trace.inputs, trace.sequence[:-1])
        self.positions = torch.tensor([trace.generating_position(int(j)) for j in tokens],
                                      dtype=torch.long)
        self.ids = trace.sequence[self.positions + 1]
        self._batches: dict[int, dict[str, Any]] = {}  # batch size -> collated copies

    def logits(self, batch: int, **replace: Any) -> torch.Tensor:
        model = self.trace.model
        # captum calls with the same few batch sizes (steps / internal_batch_size times):
        # the B copies of the features, pixels included, are made once per size
        if batch not in self._batches:
            self._batches[batch] = model.collate([self.features] * batch)
        features = {**self._batches[batch], **replace}
        return logits_at(model, features, self.positions, self.ids)


class ImageTokenLogits(TokenLogits):
    """``forward(embeddings (B, N_image, d)) -> (B, n_tokens)``: the image rows replaced."""

    def __call__(self, embeddings: torch.Tensor) -> torch.Tensor:
        with replaced_image_rows(self.trace, embeddings):
            return self.logits(embeddings.shape[0])


class InputIdLogits(TokenLogits):
    """``forward(input_ids (B, T-1)) -> (B, n_tokens)``: for captum's layer methods, whose
    input is only what the batch size is read from (the ids are the traced ones)."""

    def __call__(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.logits(input_ids.shape[0], input_ids=input_ids)


@contextmanager
def attribution_pass(trace: Trace) -> Iterator[None]:
    """Autograd on for what flows from captum's inputs only: no parameter gradients."""
    with torch.enable_grad(), frozen_parameters(trace.model.hf):
        yield


def token_chunks(tokens: Sequence[int], size: int) -> Iterator[list[int]]:
    """``tokens`` in consecutive groups of at most ``size``."""
    tokens = list(tokens)
    for start in range(0, len(tokens), size):
        yield tokens[start:start + size]
