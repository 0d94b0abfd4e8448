"""Perturbed passes for perturbation metrics: the same prompt over other pixels, fast.

A faithfulness metric teacher-forces one answer over hundreds of masked copies of a
sample's image. Only the pixels change, so the token sequence, grids and prompt positions
of the traced :class:`~mmxai.model.Inputs` are reused (:func:`swap_images`), the processor
runs once over all copies (:func:`swap_each`), and the forwards, which need logits but no
attention weights, run on fused attention (:func:`fast_attention`).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from PIL import Image

from mmxai.errors import InputError
from mmxai.model import Inputs, Model


def swap_images(model: Model, inputs: Inputs, images: Sequence[Image.Image]) -> Inputs:
    """``inputs`` with other images of the same sizes (perturbed copies, say).

    Only the processor runs again: the token sequence, grids and prompt positions depend
    on the image sizes alone, so they are reused (and the token ids checked).
    """
    images = [im.convert("RGB") for im in images]
    if [im.size for im in images] != [im.size for im in inputs.images]:
        raise InputError("swap_images needs images of the original sizes")
    features = model.features(images, model.chat_text(inputs.prompt, len(images)))
    if not torch.equal(features["input_ids"], inputs.features["input_ids"]):
        raise InputError("the processor tokenised the swapped images differently")
    return Inputs(features, images, inputs.prompt, inputs.grids, inputs.prompt_positions,
                  inputs.answer_fill)


def swap_each(model: Model, inputs: Inputs, images: Sequence[Image.Image]) -> list[Inputs]:
    """One ``inputs`` per image, each with that image in place of the single image.

    Equal to ``[swap_images(model, inputs, [im]) for im in images]``, but the processor
    runs once over all of them (its per-call overhead is several times a tiny model's
    forward pass). Families whose outputs do not split into one row per image
    (``Model.rows_per_image`` False: patches or tiles flattened) process each image alone.
    """
    if len(inputs.images) != 1:
        raise InputError(f"swap_each needs inputs with one image, got {len(inputs.images)}")
    images = [im.convert("RGB") for im in images]
    if any(im.size != inputs.images[0].size for im in images):
        raise InputError("swap_each needs images of the original size")
    if not model.rows_per_image:
        return [swap_images(model, inputs, [im]) for im in images]
    if not images:
        return []
    batch = model.features(images, [model.chat_text(inputs.prompt, 1)] * len(images))
    tensors = {k: v for k, v in batch.items() if torch.is_tensor(v)}
    if any(v.dim() == 0 or v.shape[0] != len(images) for v in tensors.values()):
        # an adapter that should say rows_per_image = False: correct, if not fast
        return [swap_images(model, inputs, [im]) for im in images]
    ids = inputs.features["input_ids"]
    out = []
    for row, image in enumerate(images):
        features = {k: v[row:row + 1] if k in tensors else v for k, v in batch.items()}
        if not torch.equal(features["input_ids"], ids):
            raise InputError("the processor tokenised the swapped images differently")
        out.append(Inputs(features, [image], inputs.prompt, inputs.grids,
                          inputs.prompt_positions, inputs.answer_fill))
    return out


@contextmanager
def fast_attention(model: Model) -> Iterator[None]:
    """PyTorch's fused attention (``sdpa``) for passes that need no attention weights.

    Models load with eager attention, which methods that read attention weights need;
    passes that only need logits (perturbation metrics: hundreds of forwards a sample)
    run about a third faster with ``sdpa``. Logits agree to float rounding (~1e-4 on
    float32). A model whose code lacks ``sdpa`` (or refuses it: PaliGemma 2's Gemma 2) keeps
    its kernel.
    """
    current = getattr(model.hf.config, "_attn_implementation", None)
    if current in (None, "sdpa"):
        yield
        return
    try:
        model.hf.set_attn_implementation("sdpa")
    except (ValueError, ImportError, NotImplementedError):
        # a sub-model may refuse after the top config switched (Gemma 2): switch back
        model.hf.set_attn_implementation(current)
        yield
        return
    try:
        yield
    finally:
        model.hf.set_attn_implementation(current)
