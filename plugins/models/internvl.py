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
from mmxai.plugins.models.shared import size_value, stack_calls, token_positions
from mmxai.plugins.models.tiny import random_model, train_tokenizer

#: The InternVL3 -hf template: ChatML, ``<IMG_CONTEXT>\n`` per image (the processor expands it).
CHAT_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}{{ '<IMG_CONTEXT>\n' }}"
    "{% elif part['type'] == 'video' %}{{ '<video>\n' }}"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}{{ '<|im_end|>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

#: The tokens the processor looks up on the tokenizer by these names.
IMAGE_TOKENS = {"start_image_token": "<img>", "end_image_token": "</img>",
                "context_image_token": "<IMG_CONTEXT>", "video_token": "<video>"}
SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", *IMAGE_TOKENS.values())


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
    tiles = [((c / n_cols, r / n_rows, (c + 1) / n_cols, (r + 1) / n_rows), "tile")
             for r in range(n_rows) for c in range(n_cols)]
    return tiles + [((0.0, 0.0, 1.0, 1.0), "thumbnail")]


class InternVL(Model):
    """InternVL: tiles plus thumbnail, ``(S*r, S*r)`` tokens per tile after pixel shuffle."""

    name = "internvl"
    architectures = ("InternVLForConditionalGeneration",)
    rows_per_image = False  # pixel_values: every image's tiles, concatenated

    @classmethod
    def hf_classes(cls) -> tuple[Any, Any]:
        from transformers import AutoModelForImageTextToText

        return AutoModelForImageTextToText, image_text_processor_class()

    def vision_layers(self) -> Sequence[torch.nn.Module]:
        return self.hf.model.vision_tower.encoder.layer

    def patch_grid(self) -> tuple[int, int]:
        """(rows, cols) of vision patches in one tile (CLS excluded)."""
        vision = self.hf.config.vision_config
        (height, width), (patch_h, patch_w) = vision.image_size, vision.patch_size
        return (int(height) // int(patch_h), int(width) // int(patch_w))

    def tile_grid(self) -> tuple[int, int]:
        """(rows, cols) of LLM tokens per tile: the patch grid shrunk by ``downsample_ratio``."""
        ratio = float(self.hf.config.downsample_ratio)
        rows, cols = self.patch_grid()
        return (int(rows * ratio), int(cols * ratio))

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
            grids += [ImageGrid(image=i, positions=run[k * per_tile:(k + 1) * per_tile],
                                shape=(rows, cols), box=box, kind=kind)
                      for k, (box, kind) in enumerate(layout)]
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
        """Tiny InternVL3: Qwen2 text (64 wide, 2 layers), 2-layer tower on 56-pixel tiles.

        Tiles of 4 x 4 patches fold into 2 x 2 tokens; up to 4 tiles plus a thumbnail.
        """
        from transformers import (
            GotOcr2ImageProcessorPil,
            InternVLConfig,
            InternVLForConditionalGeneration,
            InternVLVisionConfig,
            Qwen2Config,
        )

        tokenizer = train_tokenizer(SPECIAL_TOKENS, extra_text="user assistant",
                                    extra_special_tokens=IMAGE_TOKENS, eos_token="<|im_end|>",
                                    pad_token="<|endoftext|>", chat_template=CHAT_TEMPLATE)
        image_processor = GotOcr2ImageProcessorPil(size={"height": 56, "width": 56},
                                                   crop_to_patches=True, min_patches=1,
                                                   max_patches=4)
        processor = image_text_processor_class()(image_processor=image_processor,
                                                 tokenizer=tokenizer, image_seq_length=4,
                                                 chat_template=CHAT_TEMPLATE)
        config = InternVLConfig(
            vision_config=InternVLVisionConfig(hidden_size=32, intermediate_size=64,
                                               num_hidden_layers=2, num_attention_heads=4,
                                               image_size=56, patch_size=14),
            text_config=Qwen2Config(vocab_size=len(tokenizer), hidden_size=64,
                                    intermediate_size=128, num_hidden_layers=2,
                                    num_attention_heads=4, num_key_value_heads=2,
                                    max_position_embeddings=2048),
            image_token_id=tokenizer.context_image_token_id, image_seq_length=4,
            downsample_ratio=0.5, vision_feature_layer=-1,
            vision_feature_select_strategy="default", pad_token_id=tokenizer.pad_token_id,
        )
        model = random_model(InternVLForConditionalGeneration, config, seed)
        return cls(model, processor, model_id="tiny-internvl")


@hookimpl
def register_models(register):
    register(InternVL)
