"""Adapter for LLaVA-1.5 (``LlavaForConditionalGeneration``): one fixed-size crop per image.

The processor resizes each image's short side and centre-crops it to ``crop_size``; a CLIP
tower cuts the crop into ``S x S`` patches (plus a CLS token, dropped under the
``"default"`` feature strategy) and the projector turns each patch into one LLM image
token. So every image is one row-major ``(S, S)`` grid whose ``box`` is the crop's region of
the original image: maps map back through the crop, and the cropped-off margins get none.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from PIL import Image

from mmxai.errors import InputError
from mmxai.hookspecs import hookimpl
from mmxai.model import ImageGrid, Inputs, Model
from mmxai.plugins.models.shared import (
    crop_box,
    size_value,
    split_runs,
    stack_calls,
    token_positions,
)
from mmxai.plugins.models.tiny import random_model, train_tokenizer

#: llava-hf's template: images first (``<image>\n`` each), then the text, then the answer cue.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] != 'system' %}{{ message['role'].upper() + ': ' }}{% endif %}"
    "{% if message['content'] is string %}{{ message['content'] + ' ' }}{% else %}"
    "{% for part in message['content'] | selectattr('type', 'equalto', 'image') %}"
    "{{ '<image>\n' }}{% endfor %}"
    "{% for part in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{{ part['text'] + ' ' }}{% endfor %}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)

#: Tiny sizes shared by the LLaVA family: 56-pixel crops of 14-pixel patches, a 4 x 4 grid.
TINY_IMAGE_SIZE = 56
TINY_PATCH_SIZE = 14
TINY_TEXT = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048)


def tiny_clip_config():
    """A 2-layer, 32-wide CLIP vision tower on :data:`TINY_IMAGE_SIZE` crops."""
    from transformers import CLIPVisionConfig

    return CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                            num_attention_heads=4, image_size=TINY_IMAGE_SIZE,
                            patch_size=TINY_PATCH_SIZE, projection_dim=32)


class Llava(Model):
    """LLaVA-1.5: a CLIP tower on one centre crop per image, ``(S, S)`` tokens per image."""

    name = "llava"
    architectures = ("LlavaForConditionalGeneration",)

    @property
    def fixed_size(self) -> tuple[int, int]:  # type: ignore[override]
        """(height, width) of the processor's crop: the canvas every image ends up on."""
        crop = self.processor.image_processor.crop_size
        return (size_value(crop, "height"), size_value(crop, "width"))

    def vision_layers(self) -> Sequence[torch.nn.Module]:
        return self.hf.model.vision_tower.encoder.layers

    def patch_grid(self, features: dict[str, Any]) -> tuple[int, int]:
        """(rows, cols) of vision patches in one processed crop (CLS excluded)."""
        patch = int(self.hf.config.vision_config.patch_size)
        height, width = features["pixel_values"].shape[-2:]
        return (int(height) // patch, int(width) // patch)

    def image_grids(self, features: dict[str, Any],
                    images: Sequence[Image.Image]) -> list[ImageGrid]:
        """One ``(S, S)`` grid per image, ``box`` = its centre crop in the original image.

        Each image's run of image tokens ends with the grid: with the ``"full"`` feature
        strategy the run starts with the CLS token, which belongs to no patch.
        """
        positions = token_positions(features, self.image_token_id())
        if not images:
            return []
        per_image, rest = divmod(len(positions), len(images))
        rows, cols = self.patch_grid(features)
        if rest or per_image - rows * cols not in (0, 1):
            raise InputError(
                f"{len(positions)} image tokens do not split into {len(images)} grids of "
                f"{rows}x{cols}"
            )
        runs = split_runs(positions, [per_image] * len(images))
        ip = self.processor.image_processor
        # LLaVA's own image processor pads to a square first when do_pad; CLIP's pads batches
        pad = hasattr(ip, "pad_to_square") and bool(getattr(ip, "do_pad", False))
        return [ImageGrid(image=i, positions=run[-rows * cols:], shape=(rows, cols),
                          box=crop_box(ip, *image.size, pad_to_square=pad))
                for i, (run, image) in enumerate(zip(runs, images, strict=True))]

    def vision_tokens_to_grids(self, scores: Sequence[torch.Tensor],
                               inputs: Inputs) -> torch.Tensor:
        """(n_images, 1 + S*S) per call, CLS first -> the flat (n_images * S*S,) map.

        Patch ``k`` of image ``i`` becomes LLM token ``k`` of grid ``i``: the projector works
        token by token, so the order is kept.
        """
        tokens = stack_calls(scores)
        rows, cols = self.patch_grid(inputs.features)
        return tokens[:, -rows * cols:].reshape(-1)

    @classmethod
    def tiny(cls, seed: int = 0) -> Llava:
        """Tiny LLaVA-1.5: Llama text (64 wide, 2 layers), CLIP tower on 56-pixel crops."""
        from transformers import (
            LlamaConfig,
            LlavaConfig,
            LlavaForConditionalGeneration,
            LlavaImageProcessorPil,
            LlavaProcessor,
        )

        tokenizer = train_tokenizer(["<image>", "<s>", "</s>", "<pad>"],
                                    extra_text="USER ASSISTANT", bos_token="<s>",
                                    eos_token="</s>", pad_token="<pad>",
                                    chat_template=CHAT_TEMPLATE)
        image_processor = LlavaImageProcessorPil(
            size={"shortest_edge": TINY_IMAGE_SIZE},
            crop_size={"height": TINY_IMAGE_SIZE, "width": TINY_IMAGE_SIZE},
        )
        processor = LlavaProcessor(image_processor=image_processor, tokenizer=tokenizer,
                                   patch_size=TINY_PATCH_SIZE,
                                   vision_feature_select_strategy="default",
                                   num_additional_image_tokens=1, chat_template=CHAT_TEMPLATE)
        config = LlavaConfig(
            vision_config=tiny_clip_config(),
            text_config=LlamaConfig(vocab_size=len(tokenizer), **TINY_TEXT),
            image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
            vision_feature_layer=-2, vision_feature_select_strategy="default",
            pad_token_id=tokenizer.pad_token_id,
        )
        model = random_model(LlavaForConditionalGeneration, config, seed)
        return cls(model, processor, model_id="tiny-llava")


@hookimpl
def register_models(register):
    register(Llava)
