"""Adapter for InternVL (``InternVLForConditionalGeneration``, the native transformers class).

The processor cuts each image into tiles of the vision tower's size: resized (squashed) onto
the canvas of ``n_cols x n_rows`` tiles whose aspect ratio is closest to the image's, tiles
taken row-major, then a thumbnail of the whole image; an image that needs one tile is just
resized. The tower turns each tile into ``S x S`` patches (plus CLS, dropped) and
``pixel_shuffle`` folds each ``1/r x 1/r`` block of patches into one LLM token, so each tile
is a row-major ``(S*r, S*r)`` grid between ``<img>`` and ``</img>``, tiles in the order the
processor cut them.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache
from typing import Any

import numpy as np
import torch
from PIL import Image

from mmxai.errors import InputError
from mmxai.hookspecs import hookimpl
from mmxai.model import ImageGrid, Inputs, Model
from mmxai.plugins.models import tiles
from mmxai.plugins.models.shared import size_value, stack_calls, token_positions
from mmxai.plugins.models.tiny import INTERNVL_CHAT_TEMPLATE, tiny_internvl


@cache
def image_text_processor_class() -> type:
    """``InternVLProcessor`` without its video processor, whose base class needs torchvision.

    ``image_seq_length`` stays in the signature so that ``save_pretrained`` writes it and
    ``from_pretrained`` reads it back, for a hub checkpoint and a local folder alike.
    """
    from transformers import InternVLProcessor

    class InternVLImageTextProcessor(InternVLProcessor):
        def __init__(self, image_processor=None, tokenizer=None, image_seq_length: int = 256,
                     chat_template=None, **kwargs):
            super().__init__(image_processor, tokenizer, None, image_seq_length=image_seq_length,
                             chat_template=chat_template, **kwargs)

    return InternVLImageTextProcessor


def tile_layout(image_processor: Any, width: int, height: int,
                n_tiles: int) -> list[tuple[tuple[float, float, float, float], str]]:
    """(box, kind) of each of the ``n_tiles`` tiles the processor cut from one image.

    Replays ``crop_image_to_patches``: ``n_cols x n_rows`` tiles of the squashed image,
    row-major, then the thumbnail (the whole image). One tile is the whole image.
    """
    if n_tiles == 1:
        return [((0.0, 0.0, 1.0, 1.0), "image")]
    from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import (
        get_optimal_tiled_canvas,
    )

    size = image_processor.size
    n_cols, n_rows = get_optimal_tiled_canvas(
        (height, width), (size_value(size, "height"), size_value(size, "width")),
        int(image_processor.min_patches), int(image_processor.max_patches),
    )
    if n_cols * n_rows + 1 != n_tiles:
        raise InputError(
            f"{n_tiles} tiles for a {width}x{height} image, expected {n_cols}x{n_rows} + thumbnail"
        )
    return tiles.tile_layout(n_rows, n_cols, "thumbnail")


def patch_grid(config: Any) -> tuple[int, int]:
    """(rows, cols) of vision patches in one tile (CLS excluded)."""
    vision = config.vision_config
    (height, width), (patch_h, patch_w) = vision.image_size, vision.patch_size
    return (int(height) // int(patch_h), int(width) // int(patch_w))


def tile_grid(config: Any) -> tuple[int, int]:
    """(rows, cols) of LLM tokens per tile: the patch grid shrunk by ``downsample_ratio``."""
    ratio = float(config.downsample_ratio)
    rows, cols = patch_grid(config)
    return (int(rows * ratio), int(cols * ratio))


class InternVL(Model):
    """InternVL: tiles plus thumbnail, ``(S*r, S*r)`` tokens per tile after pixel shuffle."""

    name = "internvl"
    architectures = ("InternVLForConditionalGeneration",)
    rows_per_image = False  # pixel_values: every image's tiles, concatenated
    #: The InternVL3 -hf template: ChatML, ``<IMG_CONTEXT>\n`` per image.
    default_chat_template = INTERNVL_CHAT_TEMPLATE

    @classmethod
    def complete_processor(cls, processor: Any, config: Any) -> list[str]:
        """The processor writes ``image_seq_length`` tokens per tile; without
        ``processor_config.json`` it is transformers' default (256), whatever the tower
        makes: ``(S * r)**2`` for ``S`` patches a side and ``downsample_ratio`` r."""
        filled = super().complete_processor(processor, config)
        rows, cols = tile_grid(config)
        tokens = rows * cols
        if getattr(processor, "image_seq_length", tokens) == tokens:
            return filled
        processor.image_seq_length = tokens
        return filled + [f"image_seq_length={tokens}"]

    @classmethod
    def hf_classes(cls) -> tuple[Any, Any]:
        from transformers import AutoModelForImageTextToText

        return AutoModelForImageTextToText, image_text_processor_class()

    def vision_layers(self) -> Sequence[torch.nn.Module]:
        return self.hf.model.vision_tower.encoder.layer

    def patch_grid(self) -> tuple[int, int]:
        """(rows, cols) of vision patches in one tile (CLS excluded)."""
        return patch_grid(self.hf.config)

    def tile_grid(self) -> tuple[int, int]:
        """(rows, cols) of LLM tokens per tile: the patch grid shrunk by ``downsample_ratio``."""
        return tile_grid(self.hf.config)

    def image_grids(self, features: dict[str, Any],
                    images: Sequence[Image.Image]) -> list[ImageGrid]:
        """One grid per tile: kinds ``"tile"`` then ``"thumbnail"``, or one ``"image"``.

        Each image's context tokens sit between its ``<img>`` and ``</img>``, so they form one
        run of their own; its length says how many tiles the processor cut.
        """
        positions = token_positions(features, self.image_token_id())
        runs = np.split(positions, np.flatnonzero(np.diff(positions) > 1) + 1)
        runs = [run for run in runs if len(run)]
        if len(runs) != len(images):
            raise InputError(f"{len(runs)} runs of image tokens for {len(images)} "
                                        "images")
        rows, cols = self.tile_grid()
        per_tile = rows * cols
        grids = []
        for i, (run, image) in enumerate(zip(runs, images, strict=True)):
            n_tiles, rest = divmod(len(run), per_tile)
            if rest:
                raise InputError(f"image {i}: {len(run)} tokens is not a whole number "
                                            f"of {rows}x{cols} tiles")
            layout = tile_layout(self.processor.image_processor, *image.size, n_tiles)
            grids += tiles.layout_grids(i, run, (rows, cols), layout)
        return grids

    def vision_tokens_to_grids(self, scores: Sequence[torch.Tensor],
                               inputs: Inputs) -> torch.Tensor:
        """(n_tiles, 1 + S*S) per call, CLS first -> the flat (n_tiles * (S*r)**2,) map.

        Each LLM token of a tile is the mean of the ``1/r x 1/r`` patches it was folded from:
        the scores go through the model's own ``pixel_shuffle`` as a one-channel feature map,
        which moves each block's patches into the channels of its token.
        """
        rows, cols = self.patch_grid()
        patches = stack_calls(scores)[:, -rows * cols:]
        folded = self.hf.model.pixel_shuffle(patches.reshape(-1, rows, cols, 1),
                                             scale_factor=float(self.hf.config.downsample_ratio))
        return folded.mean(dim=-1).reshape(-1)

    @classmethod
    def tiny(cls, seed: int = 0) -> InternVL:
        return tiny_internvl(cls, seed)


@hookimpl
def register_models(register):
    register(InternVL)
