"""Adapter for Mistral 3 (``Mistral3ForConditionalGeneration``): a Pixtral tower at the
image's own resolution, patches merged ``m x m``.

The processor resizes each image, aspect kept, to fit ``size['longest_edge']`` and rounds
both sides up to multiples of ``patch_size * m`` (``m = spatial_merge_size``): the whole
image, no crop. The tower cuts it into ``H/p x W/p`` patches (no CLS; all images of a call
packed into one sequence, image after image) and the patch merger folds each ``m x m``
block into one LLM token, blocks row-major. In the text each row of ``W/(p*m)`` ``[IMG]``
tokens ends with ``[IMG_BREAK]``, the last with ``[IMG_END]``; the breaks carry no patch, so
each image is one ``(H/(p*m), W/(p*m))`` grid of its ``[IMG]`` tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from PIL import Image

from mmxai.errors import InputError
from mmxai.hookspecs import hookimpl
from mmxai.model import ImageGrid, Inputs, Model
from mmxai.plugins.models.shared import size_value, split_runs, token_positions
from mmxai.plugins.models.tiles import block_mean
from mmxai.plugins.models.tiny import TINY_TEXT, random_model, train_tokenizer

#: Mistral-Small-3.1-24B-Instruct-2503's message layout, ``[INST][IMG]prompt[/INST]``,
#: without the default system prompt the hub template adds when a chat has none.
MISTRAL3_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if message['content'] is string %}{% set parts = [{'type': 'text', "
    "'text': message['content']}] %}{% else %}{% set parts = message['content'] %}{% endif %}"
    "{% if message['role'] == 'system' %}{{ '[SYSTEM_PROMPT]' }}"
    "{% for part in parts %}{{ part['text'] }}{% endfor %}{{ '[/SYSTEM_PROMPT]' }}"
    "{% elif message['role'] == 'user' %}{{ '[INST]' }}{% for part in parts %}"
    "{% if part['type'] == 'text' %}{{ part['text'] }}"
    "{% elif part['type'] in ['image', 'image_url'] %}{{ '[IMG]' }}{% endif %}{% endfor %}"
    "{{ '[/INST]' }}{% elif message['role'] == 'assistant' %}"
    "{% for part in parts %}{{ part['text'] }}{% endfor %}{{ eos_token }}{% endif %}"
    "{% endfor %}"
)


@cache
def pixtral_processor_class() -> type:
    """``PixtralProcessor``'s prompt expansion without torchvision (the stock class is a
    placeholder without it): the same ``__init__`` arguments, so a hub checkpoint's
    ``processor_config.json`` loads as it is and a saved one round-trips.
    """
    from transformers.processing_utils import ProcessorMixin

    class PixtralImageTextProcessor(ProcessorMixin):
        def __init__(self, image_processor=None, tokenizer=None, patch_size: int = 16,
                     spatial_merge_size: int = 1, chat_template=None, image_token="[IMG]",
                     image_break_token="[IMG_BREAK]", image_end_token="[IMG_END]", **kwargs):
            super().__init__(image_processor, tokenizer, chat_template=chat_template)
            self.patch_size = patch_size
            self.spatial_merge_size = spatial_merge_size
            self.image_token = image_token
            self.image_break_token = image_break_token
            self.image_end_token = image_end_token
            self.image_token_id = tokenizer.convert_tokens_to_ids(image_token)

        def _process_images(self, images, **kwargs):
            # the image processor rounds sizes to whole merged blocks, not patches
            kwargs["patch_size"] = self.patch_size * self.spatial_merge_size
            return super()._process_images(images, **kwargs)

        def replace_image_token(self, image_inputs: dict, image_idx: int, **kwargs) -> str:
            block = self.patch_size * self.spatial_merge_size
            height, width = (int(s) // block for s in image_inputs["image_sizes"][image_idx])
            rows = (self.image_token * width + self.image_break_token) * height
            return rows[:-len(self.image_break_token)] + self.image_end_token

    return PixtralImageTextProcessor


def processable(image: Image.Image, block: int, longest: int | None) -> Image.Image:
    """``image``, stretched where transformers would fail on it; the whole image still.

    An image within one merged block (``block`` pixels a side) makes one LLM token, which
    Mistral 3's ``get_image_features`` squeezes away: it is scaled to two blocks a side. A
    side that the processor's downscale to ``longest`` pixels would round to 0 pixels is
    widened to the least that keeps one.
    """
    width, height = image.size
    if max(width, height) <= block:
        return image.resize((2 * block, 2 * block), Image.Resampling.BICUBIC)
    least = -(-max(width, height) // longest) if longest else 1
    if min(width, height) < least:
        return image.resize((max(width, least), max(height, least)), Image.Resampling.BICUBIC)
    return image


class Mistral3(Model):
    """Mistral 3: one ``(H/(p*m), W/(p*m))`` grid per image, break tokens skipped."""

    name = "mistral3"
    architectures = ("Mistral3ForConditionalGeneration",)
    default_chat_template: ClassVar[str | None] = MISTRAL3_CHAT_TEMPLATE

    @classmethod
    def complete_processor(cls, processor: Any, config: Any) -> list[str]:
        """The processor sizes images and counts their tokens by ``patch_size`` and
        ``spatial_merge_size``; without ``processor_config.json`` they are transformers'
        defaults (16, 1), whatever the model has."""
        filled = super().complete_processor(processor, config)
        values = {"patch_size": int(config.vision_config.patch_size),
                  "spatial_merge_size": int(config.spatial_merge_size)}
        for key, value in values.items():
            if getattr(processor, key, value) != value:
                setattr(processor, key, value)
                filled.append(f"{key}={value}")
        return filled

    @classmethod
    def hf_classes(cls) -> tuple[Any, Any]:
        from transformers import AutoModelForImageTextToText

        return AutoModelForImageTextToText, pixtral_processor_class()

    def preprocess(self, images: Sequence[Image.Image], text: str | Sequence[str],
                   **kwargs: Any) -> dict[str, Any]:
        """As :meth:`Model.preprocess`, on images transformers can run (:func:`processable`)."""
        block = int(self.processor.patch_size) * int(self.processor.spatial_merge_size)
        longest = size_value(self.processor.image_processor.size, "longest_edge")
        return super().preprocess([processable(image, block, longest) for image in images],
                                  text, **kwargs)

    def vision_layers(self) -> Sequence[torch.nn.Module]:
        return self.hf.model.vision_tower.transformer.layers

    @property
    def merge_size(self) -> int:
        return int(self.hf.config.spatial_merge_size)

    def patch_grids(self, features: dict[str, Any]) -> list[tuple[int, int]]:
        """(rows, cols) of vision patches of each image, from ``image_sizes`` (n, 2)."""
        patch = int(self.hf.config.vision_config.patch_size)
        return [(int(h) // patch, int(w) // patch) for h, w in features["image_sizes"].tolist()]

    def image_grids(self, features: dict[str, Any],
                    images: Sequence[Image.Image]) -> list[ImageGrid]:
        """One ``(rows/m, cols/m)`` grid per image over its ``[IMG]`` tokens, in order."""
        if not images:
            return []
        m = self.merge_size
        shapes = [(rows // m, cols // m) for rows, cols in self.patch_grids(features)]
        runs = split_runs(token_positions(features, self.image_token_id()),
                          [rows * cols for rows, cols in shapes])
        return [ImageGrid(image=i, positions=run, shape=shape)
                for i, (run, shape) in enumerate(zip(runs, shapes, strict=True))]

    def collate(self, features: Sequence[dict[str, Any]]) -> dict[str, Any]:
        """As :meth:`Model.collate`, with ``pixel_values`` (n, 3, H, W) zero-padded to the
        batch's largest height and width first: the tower cuts each image back to its
        ``image_sizes``, as it does for the processor's own padding."""
        with_pixels = [f["pixel_values"] for f in features if "pixel_values" in f]
        height = max((p.shape[-2] for p in with_pixels), default=0)
        width = max((p.shape[-1] for p in with_pixels), default=0)
        padded = [{**f, "pixel_values": F.pad(f["pixel_values"],
                                              (0, width - f["pixel_values"].shape[-1],
                                               0, height - f["pixel_values"].shape[-2]))}
                  if "pixel_values" in f else f for f in features]
        return super().collate(padded)

    def vision_tokens_to_grids(self, scores: Sequence[torch.Tensor],
                               inputs: Inputs) -> torch.Tensor:
        """(1, N_patches) per call, every image's patches packed row-major -> the flat map.

        Each LLM token is the mean of the ``m x m`` patches the merger folds into it.
        """
        flat = torch.cat([s.reshape(-1).float() for s in scores])
        patch_grids = self.patch_grids(inputs.features)
        counts = [rows * cols for rows, cols in patch_grids]
        if flat.numel() != sum(counts):
            raise InputError(f"{flat.numel()} vision-layer scores for {sum(counts)} patches")
        return torch.cat([block_mean(patches[None], grid, self.merge_size).reshape(-1)
                          for patches, grid in zip(flat.split(counts), patch_grids,
                                                   strict=True)])

    @classmethod
    def tiny(cls, seed: int = 0) -> Mistral3:
        return tiny_mistral3(cls, seed)


MISTRAL3_IMAGE_TOKENS = ("[IMG]", "[IMG_BREAK]", "[IMG_END]")


def tiny_mistral3(cls: type[Mistral3], seed: int = 0) -> Mistral3:
    """Tiny Mistral 3: Mistral text (64 wide, 2 layers), a 2-layer Pixtral tower with
    14-pixel patches merged 2 x 2; images fit a 112-pixel longest edge: up to 4 x 4 tokens.
    """
    from transformers import (
        Mistral3Config,
        Mistral3ForConditionalGeneration,
        MistralConfig,
        PixtralImageProcessorPil,
        PixtralVisionConfig,
    )

    template = cls.default_chat_template
    tokenizer = train_tokenizer(["<s>", "</s>", "<pad>", "[INST]", "[/INST]", "[SYSTEM_PROMPT]",
                                 "[/SYSTEM_PROMPT]", *MISTRAL3_IMAGE_TOKENS],
                                bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                chat_template=template)
    image_processor = PixtralImageProcessorPil(size={"longest_edge": 112},
                                               patch_size={"height": 14, "width": 14})
    processor = cls.hf_classes()[1](image_processor=image_processor, tokenizer=tokenizer,
                                    patch_size=14, spatial_merge_size=2, chat_template=template)
    config = Mistral3Config(
        vision_config=PixtralVisionConfig(hidden_size=32, intermediate_size=64,
                                          num_hidden_layers=2, num_attention_heads=4,
                                          image_size=112, patch_size=14),
        text_config=MistralConfig(vocab_size=len(tokenizer), **TINY_TEXT),
        image_token_index=tokenizer.convert_tokens_to_ids("[IMG]"), spatial_merge_size=2,
        vision_feature_layer=-1, pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,  # as the real checkpoints; tied, a random model echoes
    )
    hf_model = random_model(Mistral3ForConditionalGeneration, config, seed)
    # A trained model never writes image or instruction tokens; a random one might, and an
    # [IMG] in the answer breaks teacher forcing (image features != image tokens).
    hf_model.generation_config.suppress_tokens = tokenizer.convert_tokens_to_ids(
        ["<s>", "<pad>", "[INST]", "[/INST]", *MISTRAL3_IMAGE_TOKENS])
    return cls(hf_model, processor, model_id="tiny-mistral3")


@hookimpl
def register_models(register):
    register(Mistral3)
