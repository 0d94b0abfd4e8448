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
from mmxai.plugins.models.tiny import LLAVA_CHAT_TEMPLATE, tiny_llava

#: Extra tokens a vision tower puts before its patches (CLIP's CLS), by its config's
#: ``model_type``; a tower not listed is taken to have none (SigLIP).
TOWER_EXTRA_TOKENS = {"clip_vision_model": 1}


class Llava(Model):
    """LLaVA-1.5: a CLIP tower on one centre crop per image, ``(S, S)`` tokens per image."""

    name = "llava"
    architectures = ("LlavaForConditionalGeneration",)
    #: llava-hf's LLaVA-1.5 template: ``USER: <image>\n{prompt} ASSISTANT:``.
    default_chat_template = LLAVA_CHAT_TEMPLATE

    @classmethod
    def complete_processor(cls, processor: Any, config: Any) -> list[str]:
        """The processor counts each image's tokens from ``patch_size``, the feature
        strategy and the tower's extra tokens, which ``processor_config.json`` holds: an
        older folder has none of them (``patch_size`` None), so they come from the config."""
        filled = super().complete_processor(processor, config)
        if getattr(processor, "patch_size", 0) is not None:
            return filled
        vision = config.vision_config
        values = {"patch_size": int(vision.patch_size),
                  "vision_feature_select_strategy": config.vision_feature_select_strategy,
                  "num_additional_image_tokens": TOWER_EXTRA_TOKENS.get(vision.model_type, 0)}
        for key, value in values.items():
            setattr(processor, key, value)
        return filled + [f"{key}={value}" for key, value in values.items()]

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
        return tiny_llava(cls, seed)


@hookimpl
def register_models(register):
    register(Llava)
