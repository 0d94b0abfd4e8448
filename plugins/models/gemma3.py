"""Adapter for Gemma 3 (``Gemma3ForConditionalGeneration``): one pooled square grid per view.

The processor squashes each image onto the SigLIP tower's canvas (896 pixels: 64 x 64
patches of 14) and the projector average-pools the patches onto ``mm_tokens_per_image``
tokens (256: a 16 x 16 grid, 4 x 4 patches each). In the text each view's tokens sit between
``<start_of_image>`` and ``<end_of_image>``; the chat template writes one
``<start_of_image>`` per image and the processor expands it.

Pan-and-scan (off by default, as in the processor; ``model.pan_and_scan = True``) adds crops
of images wider or taller than ``pan_and_scan_min_ratio_to_activate``: the whole image
first, then each crop, each its own grid with the crop's ``box``.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import accumulate, pairwise
from typing import Any, ClassVar

import numpy as np
import torch
from PIL import Image

from mmxai.errors import UnsupportedModelError
from mmxai.hookspecs import hookimpl
from mmxai.plugins.models.fixed_grid import Box, FixedGrid
from mmxai.plugins.models.tiny import TINY_TEXT, random_model, train_tokenizer

#: google/gemma-3-4b-it's template: ``<start_of_turn>user\n...<end_of_turn>``, the BOS first,
#: a system message folded into the first user turn, the assistant called ``model``.
GEMMA3_CHAT_TEMPLATE = (
    "{{ bos_token }}\n"
    "{%- if messages[0]['role'] == 'system' -%}\n"
    "    {%- if messages[0]['content'] is string -%}\n"
    "        {%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}\n"
    "    {%- else -%}\n"
    "        {%- set first_user_prefix = messages[0]['content'][0]['text'] + '\n\n' -%}\n"
    "    {%- endif -%}\n"
    "    {%- set loop_messages = messages[1:] -%}\n"
    "{%- else -%}\n"
    "    {%- set first_user_prefix = \"\" -%}\n"
    "    {%- set loop_messages = messages -%}\n"
    "{%- endif -%}\n"
    "{%- for message in loop_messages -%}\n"
    "    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}\n"
    "        {{ raise_exception(\"Conversation roles must alternate "
    "user/assistant/user/assistant/...\") }}\n"
    "    {%- endif -%}\n"
    "    {%- if (message['role'] == 'assistant') -%}\n"
    "        {%- set role = \"model\" -%}\n"
    "    {%- else -%}\n"
    "        {%- set role = message['role'] -%}\n"
    "    {%- endif -%}\n"
    "    {{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else \"\") }}\n"
    "    {%- if message['content'] is string -%}\n"
    "        {{ message['content'] | trim }}\n"
    "    {%- elif message['content'] is iterable -%}\n"
    "        {%- for item in message['content'] -%}\n"
    "            {%- if item['type'] == 'image' -%}\n"
    "                {{ '<start_of_image>' }}\n"
    "            {%- elif item['type'] == 'text' -%}\n"
    "                {{ item['text'] | trim }}\n"
    "            {%- endif -%}\n"
    "        {%- endfor -%}\n"
    "    {%- else -%}\n"
    "        {{ raise_exception(\"Invalid content type\") }}\n"
    "    {%- endif -%}\n"
    "    {{ '<end_of_turn>\n' }}\n"
    "{%- endfor -%}\n"
    "{%- if add_generation_prompt -%}\n"
    "    {{'<start_of_turn>model\n'}}\n"
    "{%- endif -%}\n"
)

#: Gemma3Processor's pan-and-scan defaults, used where the image processor sets none.
PAN_AND_SCAN_DEFAULTS = {"pan_and_scan_min_crop_size": 256, "pan_and_scan_max_num_crops": 4,
                         "pan_and_scan_min_ratio_to_activate": 1.2}


class Gemma3(FixedGrid):
    """Gemma 3: SigLIP patches average-pooled onto ``mm_tokens_per_image`` tokens per view."""

    name = "gemma3"
    architectures = ("Gemma3ForConditionalGeneration",)
    default_chat_template: ClassVar[str | None] = GEMMA3_CHAT_TEMPLATE
    tokens_per_image_key = "mm_tokens_per_image"
    #: Whether the processor adds pan-and-scan crops (Gemma3Processor's default: no).
    pan_and_scan: bool = False

    @classmethod
    def complete_processor(cls, processor: Any, config: Any) -> list[str]:
        """Set ``image_seq_length`` (default 256) to the model's ``mm_tokens_per_image``: the
        processor writes that many image tokens per view and the model fills each one.

        The base's image-token rule is not applied: Gemma3Processor's ``image_token`` is the
        ``<start_of_image>`` the template writes, which it expands into the config's image
        (soft) tokens, so the two differ by design."""
        tokens = int(config.mm_tokens_per_image)
        if getattr(processor, "image_seq_length", None) == tokens:
            return []
        tok = processor.tokenizer
        processor.image_seq_length = tokens
        # __init__ spelled the expanded view out once, at the old length
        processor.full_image_sequence = (f"\n\n{tok.boi_token}{tok.image_token * tokens}"
                                         f"{tok.eoi_token}\n\n")
        return [f"image_seq_length={tokens}"]

    def pan_and_scan_options(self) -> dict[str, Any]:
        """The processor options the adapter passes: pan-and-scan on, with its settings (the
        image processor's, else the processor's defaults), or nothing."""
        if not self.pan_and_scan:
            return {}
        ip = self.processor.image_processor
        options = {key: default if getattr(ip, key, None) is None else getattr(ip, key)
                   for key, default in PAN_AND_SCAN_DEFAULTS.items()}
        return {"do_pan_and_scan": True, **options}

    def preprocess(self, images: Sequence[Image.Image], text: str | Sequence[str],
                   **kwargs: Any) -> dict[str, Any]:
        """As :meth:`FixedGrid.preprocess`, with pan-and-scan when :attr:`pan_and_scan`."""
        return super().preprocess(images, text, **{**self.pan_and_scan_options(), **kwargs})

    def views(self, image: Image.Image) -> list[tuple[Box, str]]:
        """The whole image, then its pan-and-scan crops, cut by the processor's own
        ``pan_and_scan`` (replayed on a canvas of the image's shape): one row or one column
        of crops along the long side."""
        whole = super().views(image)
        options = self.pan_and_scan_options()
        if not options:
            return whole
        options.pop("do_pan_and_scan")
        width, height = image.size
        canvas = np.broadcast_to(np.uint8(0), (1, height, width))  # a shape, no memory
        crops = [c.shape[1:] for c in self.processor.image_processor.pan_and_scan(canvas,
                                                                                  **options)]
        if not crops:
            return whole
        heights, widths = zip(*crops, strict=True)
        if set(heights) == {height} and sum(widths) == width:
            edges = [0, *accumulate(widths)]
            boxes = [(x0 / width, 0.0, x1 / width, 1.0) for x0, x1 in pairwise(edges)]
        elif set(widths) == {width} and sum(heights) == height:
            edges = [0, *accumulate(heights)]
            boxes = [(0.0, y0 / height, 1.0, y1 / height) for y0, y1 in pairwise(edges)]
        else:
            raise UnsupportedModelError(f"{self.model_id}: pan-and-scan cut a {width}x{height} "
                                        f"image into crops {crops}, not one row or column")
        return whole + [(box, "crop") for box in boxes]

    @classmethod
    def tiny(cls, seed: int = 0) -> Gemma3:
        return tiny_gemma3(cls, seed)


#: The tiny tokenizer's special tokens, named as in the real one.
GEMMA3_TOKENS = {"boi_token": "<start_of_image>", "eoi_token": "<end_of_image>",
                 "image_token": "<image_soft_token>"}


def tiny_gemma3(cls: type[Gemma3], seed: int = 0) -> Gemma3:
    """Tiny Gemma 3: Gemma 3 text (64 wide, a sliding-window layer then a global one), a
    2-layer SigLIP tower on 112-pixel images (8 x 8 patches) pooled onto 4 x 4 tokens.

    The window (512) is longer than any tiny prompt, as real windows (512 to 1024) are longer
    than most real prompts: a decode step's attention then holds every key.

    Like the real tokenizer, the tiny one adds a BOS to what it encodes (and the template
    writes one too), so the one-BOS rule of :meth:`FixedGrid.preprocess` is exercised.
    """
    from tokenizers import processors
    from transformers import (
        Gemma3Config,
        Gemma3ForConditionalGeneration,
        Gemma3ImageProcessorPil,
        Gemma3Processor,
        Gemma3TextConfig,
        SiglipVisionConfig,
    )

    template = cls.default_chat_template
    tokenizer = train_tokenizer(
        ["<pad>", "<eos>", "<bos>", "<start_of_turn>", "<end_of_turn>", *GEMMA3_TOKENS.values()],
        extra_text="user model", bos_token="<bos>", eos_token="<eos>", pad_token="<pad>",
        extra_special_tokens=GEMMA3_TOKENS, chat_template=template)
    tokenizer.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single="<bos> $A", pair="<bos> $A <bos> $B",
        special_tokens=[("<bos>", tokenizer.bos_token_id)])
    image_processor = Gemma3ImageProcessorPil(size={"height": 112, "width": 112})
    processor = Gemma3Processor(image_processor=image_processor, tokenizer=tokenizer,
                                image_seq_length=16, chat_template=template)
    config = Gemma3Config(
        vision_config=SiglipVisionConfig(hidden_size=32, intermediate_size=64,
                                         num_hidden_layers=2, num_attention_heads=4,
                                         image_size=112, patch_size=14),
        text_config=Gemma3TextConfig(vocab_size=len(tokenizer), **TINY_TEXT, head_dim=16,
                                     layer_types=["sliding_attention", "full_attention"],
                                     sliding_window=512),
        mm_tokens_per_image=16, image_token_index=tokenizer.image_token_id,
        boi_token_index=tokenizer.boi_token_id, eoi_token_index=tokenizer.eoi_token_id,
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.convert_tokens_to_ids(["<eos>", "<end_of_turn>"]),
    )
    hf_model = random_model(Gemma3ForConditionalGeneration, config, seed)
    # transformers initialises the projection to zeros, which would make every image token
    # the same (and every map of the tiny model flat): draw it like the other weights
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        torch.nn.init.normal_(hf_model.model.multi_modal_projector.mm_input_projection_weight,
                              std=config.text_config.initializer_range)
    # A trained model never writes image markup; a random one might, and an image token in
    # the answer breaks teacher forcing (image features != image tokens).
    hf_model.generation_config.suppress_tokens = tokenizer.convert_tokens_to_ids(
        list(GEMMA3_TOKENS.values()))
    return cls(hf_model, processor, model_id="tiny-gemma3")


@hookimpl
def register_models(register):
    register(Gemma3)
