"""Families whose processor resizes each image onto one fixed square canvas: one grid each.

The tower cuts the canvas into ``P x P`` patches and the projector turns them into a
``T x T`` grid of LLM image tokens, ``T = P / k`` where the projector average-pools each
``k x k`` block of patches (Gemma 3: 64 x 64 patches pooled by 4 into 16 x 16 tokens) or
keeps one token per patch (PaliGemma, ``k = 1``). The grid's ``box`` is what the processor
kept of the image: the whole image, squashed, for SigLIP-style processors.

What differs between such families is data, so a subclass states only:

- :attr:`FixedGrid.vision_layers_path`, where the tower's blocks are;
- :attr:`FixedGrid.tokens_per_image_key`, the config attribute holding ``T * T`` (None: one
  token per patch);
- the image token, read from the config (:meth:`Model.image_token_id`).

LLaVA-1.5 is the same layout with two differences the helpers here already cover: its
processor centre-crops (``box`` is the crop, :func:`~mmxai.plugins.models.shared.crop_box`)
and its CLIP tower puts a CLS token first (dropped: the patches are the last ``P * P``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from itertools import accumulate
from operator import attrgetter
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from PIL import Image

from mmxai.errors import UnsupportedModelError
from mmxai.model import ImageGrid, Inputs, Model
from mmxai.plugins.models.shared import (
    crop_box,
    size_value,
    split_runs,
    stack_calls,
    token_positions,
)

Box = tuple[float, float, float, float]


def images_per_text(processor: Any, images: Sequence[Image.Image],
                    texts: Sequence[str]) -> list[list[Image.Image]] | None:
    """``images`` grouped by the text they belong to, in order, as a processor's chat path
    hands them over: each text takes as many as it holds ``processor.image_token``. A flat
    list would read as one prompt's images to Gemma 3, or as one image per prompt to
    LLaVA-OneVision. None without images; the flat list when the counts do not add up (the
    processor then says what is wrong)."""
    if not images:
        return None
    counts = [t.count(processor.image_token) for t in texts]
    if sum(counts) != len(images):
        return list(images)
    ends = list(accumulate(counts))
    return [list(images[end - n:end]) for n, end in zip(counts, ends, strict=True)]


class FixedGrid(Model):
    """One ``(T, T)`` grid per processed view (the image, or a crop of it), in sequence order."""

    #: Attribute path, from the HF model, of the vision encoder's blocks.
    vision_layers_path: ClassVar[str] = "model.vision_tower.encoder.layers"
    #: Config attribute holding the number of LLM tokens per view (a square); None: one token
    #: per vision patch.
    tokens_per_image_key: ClassVar[str | None] = None

    @property
    def fixed_size(self) -> tuple[int, int]:  # type: ignore[override]
        """(height, width) of the canvas the processor resizes every image onto."""
        size = self.processor.image_processor.size
        return (size_value(size, "height"), size_value(size, "width"))

    def vision_layers(self) -> Sequence[torch.nn.Module]:
        return attrgetter(self.vision_layers_path)(self.hf)

    def patch_grid(self) -> tuple[int, int]:
        """(P, P): vision patches per view, from the tower's config."""
        vision = self.hf.config.vision_config
        side = int(vision.image_size) // int(vision.patch_size)
        return (side, side)

    def token_grid(self) -> tuple[int, int]:
        """(T, T): LLM image tokens per view, from the config; the patch grid must pool onto it."""
        patches = self.patch_grid()[0]
        if self.tokens_per_image_key is None:
            return (patches, patches)
        n = int(getattr(self.hf.config, self.tokens_per_image_key))
        side = math.isqrt(n)
        if side * side != n or side == 0 or patches % side:
            raise UnsupportedModelError(
                f"{self.model_id}: {self.tokens_per_image_key}={n} is not a square grid that "
                f"{patches}x{patches} patches pool onto")
        return (side, side)

    def preprocess(self, images: Sequence[Image.Image], text: str | Sequence[str],
                   **kwargs: Any) -> dict[str, Any]:
        """Run the processor on each text with its own images (:func:`images_per_text`); a
        chat template that writes the BOS itself (Gemma's) gets no second one from the
        tokenizer."""
        texts = [text] if isinstance(text, str) else list(text)
        bos = self.tokenizer.bos_token
        if bos and all(t.startswith(bos) for t in texts):
            kwargs.setdefault("add_special_tokens", False)
        return self.processor(images=images_per_text(self.processor, images, texts),
                              text=texts, return_tensors="pt", **kwargs)

    def views(self, image: Image.Image) -> list[tuple[Box, str]]:
        """(box, kind) of each view the processor makes of ``image``, in sequence order."""
        return [(crop_box(self.processor.image_processor, *image.size), "image")]

    def image_grids(self, features: dict[str, Any],
                    images: Sequence[Image.Image]) -> list[ImageGrid]:
        """One ``(T, T)`` grid per view of each image: the image tokens, cut in order."""
        if not images:
            return []
        rows, cols = self.token_grid()
        size = rows * cols
        views = [self.views(image) for image in images]
        runs = split_runs(token_positions(features, self.image_token_id()),
                          [len(v) * size for v in views])
        return [ImageGrid(image=i, positions=run[k * size:(k + 1) * size], shape=(rows, cols),
                          box=box, kind=kind)
                for i, (run, image_views) in enumerate(zip(runs, views, strict=True))
                for k, (box, kind) in enumerate(image_views)]

    def vision_tokens_to_grids(self, scores: Sequence[torch.Tensor],
                               inputs: Inputs) -> torch.Tensor:
        """(n_views, [CLS +] P*P) per call -> the flat (n_views * T*T,) map.

        Each LLM token gets the mean of the ``k x k`` patches the projector pooled into it
        (``k = P / T``; 1 when nothing is pooled), so one patch maps onto one token.
        """
        (patch_rows, patch_cols), (rows, cols) = self.patch_grid(), self.token_grid()
        patches = stack_calls(scores)[:, -patch_rows * patch_cols:]
        canvas = patches.reshape(-1, 1, patch_rows, patch_cols)
        return F.avg_pool2d(canvas, (patch_rows // rows, patch_cols // cols)).reshape(-1)
