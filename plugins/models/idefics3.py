"""Adapters for Idefics3 (``Idefics3ForConditionalGeneration``) and SmolVLM
(``SmolVLMForConditionalGeneration``): tiles plus a global image, pixel-shuffled.

The processor resizes each image (longest edge to ``size``), squashes it onto whole tiles of
``max_image_size`` and cuts ``n_rows x n_cols`` tiles, row-major, then adds the whole image
squashed to one tile (the global image); an image no larger than one tile is not cut. The
SigLIP tower turns each tile into ``S x S`` patches (no CLS) and the connector's pixel
shuffle folds each ``f x f`` block (``f = scale_factor``) into one LLM token, so every tile
is a row-major ``(S/f, S/f)`` grid. In the text each tile's tokens follow a
``<row_r_col_c>`` tag and the global image's a ``<global-img>`` tag; the adapter reads the
layout off those tags. Boxes and the block mean are :mod:`mmxai.plugins.models.tiles`.

SmolVLM (SmolVLM2's ``SmolVLMForConditionalGeneration``) has the same layout; only data
differs (config, image processor and processor classes, the chat template). The first
SmolVLM checkpoints name ``Idefics3ForConditionalGeneration`` and load as Idefics3.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Sequence
from functools import cache
from typing import Any, ClassVar, TypeVar

import numpy as np
import torch
from PIL import Image

from mmxai.errors import InputError
from mmxai.hookspecs import hookimpl
from mmxai.model import ImageGrid, Inputs, Model
from mmxai.plugins.models.shared import stack_calls, token_positions
from mmxai.plugins.models.tiles import block_mean, layout_grids, tile_layout
from mmxai.plugins.models.tiny import TINY_TEXT, random_model, train_tokenizer

M = TypeVar("M", bound=Model)

#: HuggingFaceM4/Idefics3-8B-Llama3's template: ``User:<image>prompt<end_of_utterance>``.
IDEFICS3_CHAT_TEMPLATE = (
    "<|begin_of_text|>{% for message in messages %}{{ message['role'].capitalize() }}"
    "{% if message['content'] is string %}{{ ': ' + message['content'] }}{% else %}"
    "{% if message['content'][0]['type'] == 'image' %}{{ ':' }}{% else %}{{ ': ' }}{% endif %}"
    "{% for line in message['content'] %}{% if line['type'] == 'text' %}{{ line['text'] }}"
    "{% elif line['type'] == 'image' %}{{ '<image>' }}{% endif %}{% endfor %}{% endif %}"
    "<end_of_utterance>\n{% endfor %}{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)
#: HuggingFaceTB/SmolVLM2's template for images: Idefics3's, opened by ``<|im_start|>``.
SMOLVLM_CHAT_TEMPLATE = IDEFICS3_CHAT_TEMPLATE.replace("<|begin_of_text|>", "<|im_start|>", 1)

#: Where a tile's tokens come from, written before them in the text.
TILE_TAG = re.compile(r"<row_(\d+)_col_(\d+)>|<global-img>")


@cache
def smolvlm_processor_class() -> type:
    """``SmolVLMProcessor`` for images: no video processor, whose base class needs
    torchvision, and no num2words, which only video prompts use.

    ``image_seq_len`` stays in the signature so ``save_pretrained`` writes it and
    ``from_pretrained`` reads it back; the token names come from the tokenizer as in the
    stock ``__init__``.
    """
    from transformers import SmolVLMProcessor
    from transformers.processing_utils import ProcessorMixin

    class SmolVLMImageTextProcessor(SmolVLMProcessor):
        def __init__(self, image_processor=None, tokenizer=None, image_seq_len: int = 169,
                     chat_template=None, **kwargs):
            for name, default in [("fake_image_token", "<fake_token_around_image>"),
                                  ("image_token", "<image>"),
                                  ("end_of_utterance_token", "<end_of_utterance>"),
                                  ("global_image_token", "<global-img>"),
                                  ("video_token", "<video>")]:
                setattr(self, name, getattr(tokenizer, name, default))
            self.image_token_id = tokenizer.convert_tokens_to_ids(self.image_token)
            self.image_seq_len = image_seq_len
            ProcessorMixin.__init__(self, image_processor, tokenizer,
                                    chat_template=chat_template, **kwargs)

        def apply_chat_template(self, conversation, chat_template=None, **kwargs):
            # the stock one reads the video processor's frame settings first
            return ProcessorMixin.apply_chat_template(self, conversation, chat_template,
                                                      **kwargs)

    return SmolVLMImageTextProcessor


def patch_grid(config: Any) -> tuple[int, int]:
    """(rows, cols) of vision patches in one tile."""
    side = int(config.vision_config.image_size) // int(config.vision_config.patch_size)
    return (side, side)


def tile_grid(config: Any) -> tuple[int, int]:
    """(rows, cols) of LLM tokens per tile: the patch grid folded by ``scale_factor``."""
    rows, cols = patch_grid(config)
    return (rows // int(config.scale_factor), cols // int(config.scale_factor))


def tile_counts(tiles: list[tuple[int, int]], image: int) -> tuple[int, int]:
    """(n_rows, n_cols) of image ``image``'s tiles, tagged (row, col) from 1 in text order;
    (0, 0) for none."""
    if not tiles:
        return (0, 0)
    n_rows, n_cols = max(r for r, _ in tiles), max(c for _, c in tiles)
    if tiles != [(r + 1, c + 1) for r in range(n_rows) for c in range(n_cols)]:
        raise InputError(f"image {image}: tiles tagged {tiles} are not a row-major "
                         f"{n_rows}x{n_cols} grid")
    return (n_rows, n_cols)


class Idefics3(Model):
    """Idefics3: SigLIP tiles plus a global image, ``(S/f, S/f)`` tokens per tile."""

    name = "idefics3"
    architectures = ("Idefics3ForConditionalGeneration",)
    default_chat_template: ClassVar[str | None] = IDEFICS3_CHAT_TEMPLATE
    #: The transformers class prefix of the config, vision config and PIL image processor.
    prefix: ClassVar[str] = "Idefics3"
    #: Tokens the tiny tokenizer opens and pads with (the template's first token first).
    tiny_chat_tokens: ClassVar[tuple[str, str]] = ("<|begin_of_text|>", "<|end_of_text|>")

    @classmethod
    def complete_processor(cls, processor: Any, config: Any) -> list[str]:
        """The processor writes ``image_seq_len`` tokens per tile; without
        ``processor_config.json`` it is transformers' default (169), whatever the tower
        makes: ``(S / f)**2`` for ``S`` patches a side and ``scale_factor`` f."""
        filled = super().complete_processor(processor, config)
        rows, cols = tile_grid(config)
        if getattr(processor, "image_seq_len", rows * cols) == rows * cols:
            return filled
        processor.image_seq_len = rows * cols
        return filled + [f"image_seq_len={rows * cols}"]

    @classmethod
    def hf_classes(cls) -> tuple[Any, Any]:
        from transformers import AutoModelForImageTextToText, Idefics3Processor

        return AutoModelForImageTextToText, Idefics3Processor

    def preprocess(self, images: Sequence[Image.Image], text: str | Sequence[str],
                   **kwargs: Any) -> dict[str, Any]:
        """As :meth:`Model.preprocess`, with the images grouped by the text that shows them:
        SmolVLM's processor reads a flat list as all the first text's."""
        texts = [text] if isinstance(text, str) else list(text)
        if not images:
            return super().preprocess(images, texts, **kwargs)
        token = self.processor.image_token
        ends = np.cumsum([t.count(token) for t in texts]).tolist()
        if ends[-1] != len(images):
            raise InputError(f"the chat text has {ends[-1]} {token} placeholder(s) for "
                             f"{len(images)} image(s): does the chat template write {token}?")
        nested = [list(images[start:end]) for start, end in zip([0, *ends[:-1]], ends, strict=True)]
        return self.processor(images=nested, text=texts, return_tensors="pt", **kwargs)

    def final_norm(self) -> torch.nn.Module:
        return self.hf.model.text_model.norm

    def decoder_layers(self) -> Sequence[torch.nn.Module]:
        return self.hf.model.text_model.layers

    def vision_layers(self) -> Sequence[torch.nn.Module]:
        return self.hf.model.vision_model.encoder.layers

    def image_grids(self, features: dict[str, Any],
                    images: Sequence[Image.Image]) -> list[ImageGrid]:
        """Per image: its tiles row-major (``"tile"``) then ``"global"``, or one ``"image"``.

        Each tile's tokens are a run of their own, and the text before a run ends with its
        tag: ``<row_r_col_c>`` (tile r, c, from 1) or ``<global-img>``, which closes an image.
        """
        positions = token_positions(features, self.image_token_id())
        runs = [run for run in np.split(positions, np.flatnonzero(np.diff(positions) > 1) + 1)
                if len(run)]
        ids = features["input_ids"][0].tolist()
        shape = tile_grid(self.hf.config)
        grids: list[ImageGrid] = []
        tiles: list[tuple[int, int]] = []
        image, first, end = 0, 0, 0  # the image, its first run, where the last run ended
        for k, run in enumerate(runs):
            tags = TILE_TAG.findall(self.tokenizer.decode(ids[end:int(run[0])]))
            end = int(run[-1]) + 1
            if not tags:
                raise InputError(f"image tokens at position {int(run[0])} follow neither a "
                                 "<row_r_col_c> nor a <global-img> tag")
            row, col = tags[-1]
            if row:
                tiles.append((int(row), int(col)))
                continue
            layout = tile_layout(*tile_counts(tiles, image), overview="global")
            grids += layout_grids(image, np.concatenate(runs[first:k + 1]), shape, layout)
            image, first, tiles = image + 1, k + 1, []
        if tiles or image != len(images):
            raise InputError(f"{len(runs)} runs of image tokens do not make {len(images)} "
                             "images of tiles closed by a global image")
        return grids

    def collate(self, features: Sequence[dict[str, Any]]) -> dict[str, Any]:
        """As :meth:`Model.collate`, with ``pixel_values`` (1, n_tiles, 3, H, W) and
        ``pixel_attention_mask`` (1, n_tiles, H, W) zero-padded along the tiles first:
        the model drops all-zero tiles, as it does for the processor's own padding."""
        most = max((f["pixel_values"].shape[1] for f in features if "pixel_values" in f),
                   default=0)

        def pad(value: torch.Tensor) -> torch.Tensor:
            extra = value.new_zeros((value.shape[0], most - value.shape[1], *value.shape[2:]))
            return torch.cat([value, extra], dim=1)

        padded = [{k: pad(v) if k in ("pixel_values", "pixel_attention_mask") else v
                   for k, v in f.items()} for f in features]
        return super().collate(padded)

    def vision_tokens_to_grids(self, scores: Sequence[torch.Tensor],
                               inputs: Inputs) -> torch.Tensor:
        """(n_tiles, S*S) per call, no CLS -> the flat (n_tiles * (S/f)**2,) map.

        The tower sees the tiles in the order of the grids; each LLM token is the mean of
        the ``f x f`` patches the pixel shuffle folds into it.
        """
        patches = stack_calls(scores)
        if patches.shape[0] != len(inputs.grids):
            raise InputError(f"{patches.shape[0]} tiles scored for {len(inputs.grids)} grids")
        return block_mean(patches, patch_grid(self.hf.config),
                          int(self.hf.config.scale_factor)).reshape(-1)

    @classmethod
    def tiny(cls, seed: int = 0) -> Idefics3:
        return tiny_tiled(cls, seed)


class SmolVLM(Idefics3):
    """SmolVLM: Idefics3's layout with its own classes and template."""

    name = "smolvlm"
    architectures = ("SmolVLMForConditionalGeneration",)
    default_chat_template = SMOLVLM_CHAT_TEMPLATE
    prefix = "SmolVLM"
    tiny_chat_tokens = ("<|im_start|>", "<|im_end|>")

    @classmethod
    def hf_classes(cls) -> tuple[Any, Any]:
        from transformers import AutoModelForImageTextToText

        return AutoModelForImageTextToText, smolvlm_processor_class()


#: The markup tokens of the tiled layout: 6 x 6 tile tags, as the real tokenizers have.
TILE_TOKENS = ("<fake_token_around_image>", "<image>", "<end_of_utterance>", "<global-img>",
               *(f"<row_{r}_col_{c}>" for r in range(1, 7) for c in range(1, 7)))


def tiny_tiled(cls: type[M], seed: int = 0) -> M:
    """A tiny Idefics3-layout model of ``cls``: Llama text (64 wide, 2 layers), a 2-layer
    SigLIP tower on 56-pixel tiles of 4 x 4 patches shuffled into 2 x 2 tokens; images
    resized to a 112-pixel longest edge, so 1 x 2, 2 x 1 or 2 x 2 tiles plus the global one.
    """
    import transformers

    bos, pad = cls.tiny_chat_tokens
    template = cls.default_chat_template
    tokenizer = train_tokenizer([bos, pad, *TILE_TOKENS], extra_text="User Assistant",
                                bos_token=bos, eos_token="<end_of_utterance>", pad_token=pad,
                                chat_template=template)
    # from its own module: transformers 5.17's top level asks torchvision for these classes
    module = f"transformers.models.{cls.prefix.lower()}.image_processing_pil_{cls.prefix.lower()}"
    image_processor = getattr(importlib.import_module(module), f"{cls.prefix}ImageProcessorPil")(
        size={"longest_edge": 112}, max_image_size={"longest_edge": 56})
    processor = cls.hf_classes()[1](image_processor=image_processor, tokenizer=tokenizer,
                                    image_seq_len=4, chat_template=template)
    vision = getattr(transformers, f"{cls.prefix}VisionConfig")(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        image_size=56, patch_size=14)
    config = getattr(transformers, f"{cls.prefix}Config")(
        vision_config=vision,
        text_config=transformers.LlamaConfig(vocab_size=len(tokenizer), **TINY_TEXT),
        scale_factor=2, image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        pad_token_id=tokenizer.pad_token_id,
    )
    hf_model = random_model(getattr(transformers, cls.architectures[0]), config, seed)
    # A trained model never writes image markup; a random one might, and an <image> in the
    # answer breaks teacher forcing (image features != image tokens).
    hf_model.generation_config.suppress_tokens = tokenizer.convert_tokens_to_ids(
        [t for t in TILE_TOKENS if t != "<end_of_utterance>"])
    return cls(hf_model, processor, model_id=f"tiny-{cls.name}")


@hookimpl
def register_models(register):
    register(Idefics3)
    register(SmolVLM)
