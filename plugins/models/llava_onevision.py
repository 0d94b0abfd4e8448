"""Adapter for LLaVA-OneVision (``LlavaOnevisionForConditionalGeneration``): LLaVA-NeXT's
layout, with SigLIP, a cap on the high-res grid, and a base-only mode for several images.

A single image is laid out as in LLaVA-NeXT (:mod:`mmxai.plugins.models.llava_next`): a base
``(S, S)`` grid of the whole image squashed, then the tiles' canvas cut by ``unpad_image``,
one newline token closing each row. "anyres_max_N" (``config.vision_aspect_ratio``) caps the
high-res grid: when it holds more than ``1.1**2 * N`` tiles' worth of cells, the model
shrinks it by ``ratio = sqrt(cells / (N * S * S))`` with bilinear interpolation to
``(rows // ratio, cols // ratio)`` (anyres_max_9: at most about 9 tiles' worth).

Several images in one prompt are not tiled (the processor's ``batch_num_images``): each is
padded to a square, squashed onto one tile and becomes one ``(S, S)`` grid followed by one
newline token; its ``box`` reaches into the padding.

The SigLIP tower has no CLS token, so every vision token is a patch (``"full"`` strategy).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import cache
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from PIL import Image

from mmxai.errors import InputError
from mmxai.hookspecs import hookimpl
from mmxai.model import ImageGrid, Inputs
from mmxai.plugins.models.fixed_grid import images_per_text
from mmxai.plugins.models.llava_next import LlavaNext
from mmxai.plugins.models.onevision_video import OnevisionVideo
from mmxai.plugins.models.shared import crop_box, split_runs, stack_calls, token_positions
from mmxai.plugins.models.tiny import TINY_TEXT, random_model, train_tokenizer

#: llava-hf/llava-onevision-qwen2-*-ov-hf's template: ``<|im_start|>user <image>\n{prompt}``,
#: without the ``{% generation %}`` marks around assistant text (they render nothing; they mark
#: the tokens to train on, and plain Jinja does not know the tag).
LLAVA_ONEVISION_CHAT_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + ' '}}"
    "{# Render all images first #}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}"
    "{{ '<image>' }}{% endfor %}"
    "{# Render all video then #}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'video') %}"
    "{{ '<video>' }}{% endfor %}"
    "{# Render all text next #}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{{ '\n' + content['text'] }}{% endfor %}"
    "{{'<|im_end|>'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


@cache
def image_text_processor_class() -> type:
    """``LlavaOnevisionProcessor`` without its video processor, whose base class needs
    torchvision. The stock settings stay in the signature, so ``save_pretrained`` writes them
    and ``from_pretrained`` reads them back."""
    from transformers import LlavaOnevisionProcessor

    class LlavaOnevisionImageTextProcessor(LlavaOnevisionProcessor):
        def __init__(self, image_processor=None, tokenizer=None, num_image_tokens=None,
                     vision_feature_select_strategy=None, chat_template=None,
                     image_token="<image>", video_token="<video>",
                     vision_aspect_ratio="anyres_max_9", **kwargs):
            super().__init__(image_processor, tokenizer, None, num_image_tokens=num_image_tokens,
                             vision_feature_select_strategy=vision_feature_select_strategy,
                             chat_template=chat_template, image_token=image_token,
                             video_token=video_token, vision_aspect_ratio=vision_aspect_ratio,
                             **kwargs)

    return LlavaOnevisionImageTextProcessor


class LlavaOnevision(OnevisionVideo, LlavaNext):
    """LLaVA-OneVision: base + capped high-res grid for one image, base grids for several;
    video through :class:`~mmxai.plugins.models.onevision_video.OnevisionVideo` (a grid per
    frame)."""

    name = "llava-onevision"
    architectures = ("LlavaOnevisionForConditionalGeneration",)
    default_chat_template: ClassVar[str | None] = LLAVA_ONEVISION_CHAT_TEMPLATE

    @classmethod
    def hf_classes(cls) -> tuple[Any, Any]:
        from transformers import AutoModelForImageTextToText

        return AutoModelForImageTextToText, image_text_processor_class()

    @classmethod
    def complete_processor(cls, processor: Any, config: Any) -> list[str]:
        """The processor counts each image's tokens from ``num_image_tokens`` (per tile),
        the feature strategy and the anyres cap, which ``processor_config.json`` holds: an
        older folder has none of them (``num_image_tokens`` None), so they come from the
        config."""
        filled = super().complete_processor(processor, config)
        if getattr(processor, "num_image_tokens", 0) is not None:
            return filled
        vision = config.vision_config
        values = {"num_image_tokens": (int(vision.image_size) // int(vision.patch_size)) ** 2,
                  "vision_feature_select_strategy": config.vision_feature_select_strategy,
                  "vision_aspect_ratio": config.vision_aspect_ratio}
        for key, value in values.items():
            setattr(processor, key, value)
        return filled + [f"{key}={value}" for key, value in values.items()]

    def preprocess(self, images: Sequence[Image.Image], text: str | Sequence[str],
                   **kwargs: Any) -> dict[str, Any]:
        """Hand the processor each text's images as one list, as its chat path does: that is
        how it knows a prompt with several images (``batch_num_images``), which it does not
        tile."""
        texts = [text] if isinstance(text, str) else list(text)
        return self.processor(images=images_per_text(self.processor, images, texts),
                              text=texts, return_tensors="pt", **kwargs)

    def tiles_each_image(self, features: dict[str, Any]) -> bool:
        """Whether the images were tiled: one image per prompt (or no count given, which the
        model reads as one), as the model's own ``need_patching``."""
        counts = features.get("batch_num_images")
        return counts is None or all(int(n) == 1 for n in torch.as_tensor(counts).tolist())

    def highres_shape(self, unpadded: Sequence[int]) -> tuple[int, int]:
        """(rows, cols) of the high-res grid once the anyres cap has shrunk the unpadded
        canvas of ``unpadded`` (rows, cols) cells, as the model's ``pack_image_features``."""
        config = self.hf.config
        side = int(config.vision_config.image_size) // int(config.vision_config.patch_size)
        max_tiles = int(config.vision_aspect_ratio.removeprefix("anyres_max_"))
        rows, cols = (int(n) for n in unpadded)
        ratio = math.sqrt(rows * cols / (max_tiles * side ** 2))
        return (int(rows // ratio), int(cols // ratio)) if ratio > 1.1 else (rows, cols)

    def image_grids(self, features: dict[str, Any],
                    images: Sequence[Image.Image]) -> list[ImageGrid]:
        """One image: ``"base"`` (S, S) then ``"highres"`` (rows, cols), newlines skipped.
        Several: one ``"image"`` (S, S) each, its box the padded square, then a newline."""
        rows, cols = self.patch_grid(features)
        positions = token_positions(features, self.image_token_id())
        ip = self.processor.image_processor
        if not self.tiles_each_image(features):
            runs = split_runs(positions, [rows * cols + 1] * len(images))
            return [ImageGrid(image=i, positions=run[:rows * cols], shape=(rows, cols),
                              box=crop_box(ip, *image.size, pad_to_square=True))
                    for i, (run, image) in enumerate(zip(runs, images, strict=True))]
        shapes = [self.highres_shape(self.highres_layout(size)[2].shape)
                  for size in features["image_sizes"].tolist()]
        for i, (shape, image) in enumerate(zip(shapes, images, strict=True)):
            if 0 in shape:  # unpadding or the cap left no row or column to map onto
                width, height = image.size
                raise InputError(
                    f"image {i + 1} ({width}×{height} pixels) is too thin for LLaVA-OneVision: "
                    f"aspect ratio {max(width, height) / min(width, height):g}:1 leaves its "
                    f"high-res view {shape[0]}×{shape[1]} patches")
        runs = split_runs(positions, [rows * cols + r * (c + 1) for r, c in shapes])
        base_box = self.base_box()
        grids = []
        for i, (run, shape) in enumerate(zip(runs, shapes, strict=True)):
            grids.append(ImageGrid(image=i, positions=run[:rows * cols], shape=(rows, cols),
                                   box=base_box, kind="base"))
            lines = run[rows * cols:].reshape(shape[0], shape[1] + 1)
            grids.append(ImageGrid(image=i, positions=lines[:, :-1].reshape(-1), shape=shape,
                                   kind="highres"))
        return grids

    def vision_tokens_to_grids(self, scores: Sequence[torch.Tensor],
                               inputs: Inputs) -> torch.Tensor:
        """(n_crops, S*S) per call -> the flat map over the grids.

        Tiled: LLaVA-NeXT's mapping (the base view's patches, then the canvas cells
        ``unpad_image`` keeps), with each high-res grid shrunk as the model shrinks its
        features, by the same bilinear interpolation, so a cell gets the interpolated scores
        of the patches its feature mixes. Untiled: one crop per image, patch ``k`` to cell
        ``k``. A clip: each frame's scores pooled as its features (``video_tokens_to_grids``).
        """
        if inputs.clips:
            return self.video_tokens_to_grids(scores, inputs)
        rows, cols = self.patch_grid(inputs.features)
        if not self.tiles_each_image(inputs.features):
            return stack_calls(scores)[:, -rows * cols:].reshape(-1)
        flat = super().vision_tokens_to_grids(scores, inputs)
        out, start = [], 0
        for size in inputs.features["image_sizes"].tolist():
            kept = self.highres_layout(size)[2].shape
            out.append(flat[start:start + rows * cols])
            start += rows * cols
            cells = flat[start:start + kept[0] * kept[1]].reshape(kept)
            start += kept[0] * kept[1]
            shape = self.highres_shape(kept)
            if shape != tuple(kept):
                cells = F.interpolate(cells[None, None], list(shape), mode="bilinear")[0, 0]
            out.append(cells.reshape(-1))
        return torch.cat(out)

    @classmethod
    def tiny(cls, seed: int = 0) -> LlavaOnevision:
        return tiny_llava_onevision(cls, seed)


#: 56-pixel tiles up to 3 x 3, the real checkpoints' 384-pixel pinpoints (up to 6 x 6) scaled.
TINY_ONEVISION_PINPOINTS = [[56 * r, 56 * c] for r in range(1, 4) for c in range(1, 4)]


def tiny_llava_onevision(cls: type[LlavaOnevision], seed: int = 0) -> LlavaOnevision:
    """Tiny LLaVA-OneVision: Qwen2 text (64 wide, 2 layers), a 2-layer SigLIP tower on
    56-pixel tiles (4 x 4 patches), up to 3 x 3 tiles, capped at anyres_max_4 (so a 2 x 3
    canvas already shrinks)."""
    from transformers import (
        LlavaOnevisionConfig,
        LlavaOnevisionForConditionalGeneration,
        LlavaOnevisionImageProcessorPil,
        Qwen2Config,
        SiglipVisionConfig,
    )

    template = cls.default_chat_template
    tokens = {"image_token": "<image>", "video_token": "<video>"}
    tokenizer = train_tokenizer(["<|endoftext|>", "<|im_start|>", "<|im_end|>", *tokens.values()],
                                extra_text="user assistant", eos_token="<|im_end|>",
                                pad_token="<|endoftext|>", extra_special_tokens=tokens,
                                chat_template=template)
    image_processor = LlavaOnevisionImageProcessorPil(
        size={"height": 56, "width": 56}, image_grid_pinpoints=TINY_ONEVISION_PINPOINTS)
    processor = cls.hf_classes()[1](
        image_processor=image_processor, tokenizer=tokenizer, num_image_tokens=16,
        vision_feature_select_strategy="full", vision_aspect_ratio="anyres_max_4",
        chat_template=template)
    config = LlavaOnevisionConfig(
        vision_config=SiglipVisionConfig(hidden_size=32, intermediate_size=64,
                                         num_hidden_layers=2, num_attention_heads=4,
                                         image_size=56, patch_size=14, vision_use_head=False),
        text_config=Qwen2Config(vocab_size=len(tokenizer), **TINY_TEXT),
        image_token_index=tokenizer.image_token_id, video_token_index=tokenizer.video_token_id,
        image_grid_pinpoints=TINY_ONEVISION_PINPOINTS, vision_aspect_ratio="anyres_max_4",
        vision_feature_layer=-1, vision_feature_select_strategy="full",
        pad_token_id=tokenizer.pad_token_id,
    )
    hf_model = random_model(LlavaOnevisionForConditionalGeneration, config, seed)
    # A trained model never writes <image>; a random one might, and an image token in the
    # answer breaks teacher forcing (image features != image tokens).
    hf_model.generation_config.suppress_tokens = tokenizer.convert_tokens_to_ids(
        list(tokens.values()))
    return cls(hf_model, processor, model_id="tiny-llava-onevision")


@hookimpl
def register_models(register):
    register(LlavaOnevision)
