"""Adapter for PaliGemma and PaliGemma 2 (``PaliGemmaForConditionalGeneration``).

The processor squashes each image onto the SigLIP tower's canvas (224, 448 or 896 pixels,
patches of 14) and the projector maps each patch to one LLM token, so every image is one
row-major ``(S, S)`` grid, ``S = image_size / patch_size``, covering the whole image. The
image tokens come first in the sequence: PaliGemma's prompt is ``<image>`` per image, then
the task prefix (``caption en``, ``answer en ...``), and the processor puts the BOS after the
last ``<image>`` and a ``\\n`` after the prefix. Image and prefix attend to each other both
ways (prefix-LM, ``token_type_ids`` 0); the answer is causal.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
import torch
from PIL import Image

from mmxai.hookspecs import hookimpl
from mmxai.plugins.models.fixed_grid import FixedGrid
from mmxai.plugins.models.tiny import TINY_TEXT, random_model, train_tokenizer

#: PaliGemma's prompt format as a template: every image first, then the text, no turns (the
#: processor adds the BOS and the closing ``\n``).
PALIGEMMA_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for part in message['content'] | selectattr('type', 'equalto', 'image') %}"
    "{{ '<image>' }}{% endfor %}"
    "{% for part in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{{ part['text'] }}{% endfor %}{% endif %}{% endfor %}"
)


class PaliGemma(FixedGrid):
    """PaliGemma (1 and 2): one ``(S, S)`` grid per image at the start of the sequence."""

    name = "paligemma"
    architectures = ("PaliGemmaForConditionalGeneration",)
    default_chat_template: ClassVar[str | None] = PALIGEMMA_CHAT_TEMPLATE
    # generation marks answer tokens 1: outside the bidirectional prefix
    answer_fill: ClassVar[dict[str, int]] = {"token_type_ids": 1}

    @classmethod
    def complete_processor(cls, processor: Any, config: Any) -> list[str]:
        """Set ``image_seq_length`` to the tower's patch count, ``(image_size / patch)**2``:
        the processor writes that many ``<image>`` tokens per image."""
        filled = super().complete_processor(processor, config)
        vision = config.vision_config
        tokens = (int(vision.image_size) // int(vision.patch_size)) ** 2
        if getattr(processor, "image_seq_length", None) != tokens:
            processor.image_seq_length = tokens
            processor.image_processor.image_seq_length = tokens
            filled.append(f"image_seq_length={tokens}")
        return filled

    def preprocess(self, images: Sequence[Image.Image], text: str | Sequence[str],
                   **kwargs: Any) -> dict[str, Any]:
        """As :meth:`FixedGrid.preprocess`, without the ``labels`` the processor adds for
        fine-tuning (a forward pass given labels computes a loss)."""
        features = super().preprocess(images, text, **kwargs)
        features.pop("labels", None)
        return features

    def locate_prompt(self, input_ids: torch.Tensor, prompt: str, n_images: int) -> np.ndarray:
        """As :meth:`Model.locate_prompt`, on the sequence without the ``\\n`` the processor
        closes the prefix with (the templated chat does not have it)."""
        newline = self.tokenizer("\n", add_special_tokens=False)["input_ids"]
        ids = input_ids.tolist()
        if newline and ids[-len(newline):] == newline:
            input_ids = input_ids[:-len(newline)]
        return super().locate_prompt(input_ids, prompt, n_images)

    @classmethod
    def tiny(cls, seed: int = 0) -> PaliGemma:
        return tiny_paligemma(cls, seed)


def tiny_paligemma(cls: type[PaliGemma], seed: int = 0) -> PaliGemma:
    """Tiny PaliGemma 2: Gemma 2 text (64 wide, a sliding-window layer then a global one,
    logits soft-capped), a 2-layer SigLIP tower on 56-pixel images: 4 x 4 image tokens.

    The window (512) is longer than any tiny prompt, as real windows (4096) are longer than
    real prompts: a decode step's attention then holds every key.
    """
    from transformers import (
        Gemma2Config,
        PaliGemmaConfig,
        PaliGemmaForConditionalGeneration,
        PaliGemmaProcessor,
        SiglipImageProcessorPil,
        SiglipVisionConfig,
    )

    template = cls.default_chat_template
    tokenizer = train_tokenizer(["<pad>", "<eos>", "<bos>", "<image>"],
                                extra_text="caption answer en", bos_token="<bos>",
                                eos_token="<eos>", pad_token="<pad>",
                                extra_special_tokens={"image_token": "<image>"},
                                chat_template=template)
    image_processor = SiglipImageProcessorPil(size={"height": 56, "width": 56})
    image_processor.image_seq_length = 16  # PaliGemmaProcessor reads it from here
    # adds PaliGemma's <loc....> and <seg...> tokens to the tokenizer
    processor = PaliGemmaProcessor(image_processor=image_processor, tokenizer=tokenizer,
                                   chat_template=template)
    config = PaliGemmaConfig(
        vision_config=SiglipVisionConfig(hidden_size=32, intermediate_size=64,
                                         num_hidden_layers=2, num_attention_heads=4,
                                         image_size=56, patch_size=14),
        text_config=Gemma2Config(vocab_size=len(tokenizer), **TINY_TEXT, head_dim=16,
                                 sliding_window=512),
        image_token_index=processor.image_token_id, projection_dim=64, hidden_size=64,
        vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
    )
    hf_model = random_model(PaliGemmaForConditionalGeneration, config, seed)
    # A trained model never writes <image>; a random one might, and an image token in the
    # answer breaks teacher forcing (image features != image tokens).
    hf_model.generation_config.suppress_tokens = [processor.image_token_id]
    return cls(hf_model, processor, model_id="tiny-paligemma")


@hookimpl
def register_models(register):
    register(PaliGemma)
