"""Adapters for Qwen2-VL and Qwen2.5-VL (native-resolution images, merged patch grids).

The processor smart-resizes each image to multiples of ``patch_size * merge_size`` (the
whole image, no crop), cuts it into patches and orders them so that every
``merge_size x merge_size`` group is contiguous, groups row-major. The merger turns each
group into one LLM image token, so image ``i`` with ``image_grid_thw[i] = (t, H, W)`` becomes
``t`` row-major grids of ``(H // m, W // m)`` tokens.

Qwen2.5-VL's vision blocks run on a window-ordered sequence: the merge groups are permuted
window by window (``window_index``) before the first block and put back after the merger,
so per-patch scores read off a block must be un-permuted before they line up with the grid.

:class:`QwenLike` is that layout with the family left as data (processor and config class
names, where the vision blocks are, whether smart-resize counts the temporal patch against
the pixel budget); the merge size and the image token id come from each model's config.
A family that lays out its image tokens this way (Qwen3-VL, GLM-4V) subclasses it with a
few class attributes and its tiny builder.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache
from operator import attrgetter
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from PIL import Image

from mmxai.errors import InputError
from mmxai.hookspecs import hookimpl
from mmxai.model import ImageGrid, Inputs, Model
from mmxai.plugins.models.qwen_video import QwenVideo
from mmxai.plugins.models.tiny import tiny_qwen2_5_vl, tiny_qwen2_vl


@cache
def image_only_processor(processor_name: str) -> type:
    """``processor_name`` (e.g. ``"Qwen2VLProcessor"``) without its video processor.

    The stock processors require a video processor, whose base class imports torchvision;
    images need only the image processor and the tokenizer. ``from_pretrained`` on this class
    reads a hub checkpoint's image-processor config, tokenizer and chat template as they are.
    """
    import transformers

    base = getattr(transformers, processor_name)

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        base.__init__(self, image_processor, tokenizer, None, chat_template=chat_template,
                      **kwargs)

    return type(f"ImageOnly{processor_name}", (base,), {
        "__init__": __init__, "__module__": __name__,
        "__doc__": f"{processor_name} for images: no video processor, so no torchvision.",
    })


class QwenLike(Model):
    """Merged-patch grids: ``image_grid_thw[i] = (t, H, W)`` patches, ``m x m`` groups per token.

    Subclasses set ``name``, ``architectures``, :attr:`processor_name` and
    :attr:`config_name`; the rest is read from the model (``vision_config.spatial_merge_size``,
    ``config.image_token_id``) and the processor's outputs.
    """

    #: transformers' processor class, loaded without its video processor.
    processor_name: ClassVar[str] = ""
    #: transformers' config class (the tiny builders construct it).
    config_name: ClassVar[str] = ""
    #: Attribute path from the HF model to the vision blocks, in patch order.
    vision_blocks: ClassVar[str] = "model.visual.blocks"
    #: Whether smart-resize counts the ``temporal_patch_size`` frames an image is repeated
    #: into against its pixel bounds (GLM-4V), so a per-image budget is scaled by it.
    budget_counts_frames: ClassVar[bool] = False
    rows_per_image = False  # pixel_values: every image's patches, concatenated

    def __init__(self, hf_model: torch.nn.Module, processor: Any, model_id: str | None = None,
                 revision: str | None = None, max_pixels: int | None = None) -> None:
        super().__init__(hf_model, processor, model_id=model_id, revision=revision)
        #: Pixel budget per image (smart-resize's ``longest_edge``); None keeps the processor's.
        self.max_pixels = max_pixels

    @classmethod
    def hf_classes(cls) -> tuple[Any, Any]:
        from transformers import AutoModelForImageTextToText

        return AutoModelForImageTextToText, image_only_processor(cls.processor_name)

    # -- inputs --------------------------------------------------------------------------
    def preprocess(self, images: Sequence[Image.Image], text: str | Sequence[str],
                   **kwargs: Any) -> dict[str, Any]:
        if self.max_pixels is not None and images:
            image_processor = self.processor.image_processor
            longest = self.max_pixels * (image_processor.temporal_patch_size
                                         if self.budget_counts_frames else 1)
            kwargs["size"] = {"shortest_edge": min(image_processor.size["shortest_edge"], longest),
                              "longest_edge": longest}
        return super().preprocess(images, text, **kwargs)

    @property
    def merge_size(self) -> int:
        return int(self.hf.config.vision_config.spatial_merge_size)

    def image_grids(self, features: dict[str, Any],
                    images: Sequence[Image.Image]) -> list[ImageGrid]:
        """One (H/m, W/m) grid per image and temporal group, in sequence order."""
        positions = torch.nonzero(features["input_ids"][0] == self.image_token_id())
        positions = positions.flatten().cpu().numpy()
        grid_thw = features.get("image_grid_thw")
        m = self.merge_size
        shapes = [] if grid_thw is None else [
            (image, frame, int(h) // m, int(w) // m)
            for image, (t, h, w) in enumerate(grid_thw.tolist()) for frame in range(int(t))
        ]
        expected = sum(rows * cols for _, _, rows, cols in shapes)
        if expected != len(positions):
            raise InputError(
                f"{self.model_id}: the prompt has {len(positions)} image tokens but "
                f"image_grid_thw describes {expected} for {len(images)} image(s)"
            )
        grids, start = [], 0
        for image, frame, rows, cols in shapes:
            grids.append(ImageGrid(image=image, positions=positions[start:start + rows * cols],
                                   shape=(rows, cols), frame=frame))
            start += rows * cols
        return grids

    # -- vision layers -------------------------------------------------------------------
    def vision_layers(self) -> Sequence[torch.nn.Module]:
        return attrgetter(self.vision_blocks)(self.hf)

    def default_vision_layer(self) -> int:
        return len(self.vision_layers()) - 1  # the block the merger reads

    def block_order(self, grid_thw: torch.Tensor) -> torch.Tensor | None:
        """The merge group at each group slot of the blocks' sequence; None: grid order."""
        return None

    def vision_tokens_to_grids(self, scores: Sequence[torch.Tensor],
                               inputs: Inputs) -> torch.Tensor:
        """Per-patch scores (N_patches,) per block call -> flat (N_image,) grid scores.

        Each merge group's ``m * m`` patch scores are averaged into the one LLM token the
        merger makes of them.
        """
        flat = torch.cat([s.reshape(-1).float() for s in scores])
        grid_thw = inputs.features.get("image_grid_thw")  # a clip's patches: video_grid_thw
        grid_thw = (inputs.features["video_grid_thw"] if grid_thw is None else grid_thw).cpu()
        n_patches = int(grid_thw.prod(dim=-1).sum())
        if flat.numel() != n_patches:
            raise InputError(
                f"{self.model_id}: {flat.numel()} vision-layer scores for {n_patches} patches"
            )
        groups = flat.reshape(-1, self.merge_size ** 2).mean(dim=-1)
        order = self.block_order(grid_thw)
        if order is None:
            return groups
        grid_scores = torch.empty_like(groups)
        grid_scores[order.to(groups.device)] = groups
        return grid_scores


class Qwen2VL(QwenVideo, QwenLike):
    """Qwen2-VL: ``model.model.visual.blocks`` in patch order, then a 2x2 patch merger;
    video through :class:`~mmxai.plugins.models.qwen_video.QwenVideo`."""

    name = "qwen2-vl"
    architectures = ("Qwen2VLForConditionalGeneration",)
    processor_name = "Qwen2VLProcessor"
    config_name = "Qwen2VLConfig"
    #: Qwen2-VL-Instruct's template (Qwen2.5-VL's is the same): ChatML, the default system
    #: message, ``<|vision_start|><|image_pad|><|vision_end|>`` per image.
    default_chat_template = (
        "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
        "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}"
        "{{ message['content'] }}<|im_end|>\n{% else %}{% for content in message['content'] %}"
        "{% if content['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
        "{% elif content['type'] == 'video' %}<|vision_start|><|video_pad|><|vision_end|>"
        "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}"
        "<|im_end|>\n{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )

    @classmethod
    def tiny(cls, seed: int = 0) -> Qwen2VL:
        return tiny_qwen2_vl(cls, seed)


class Qwen2_5_VL(Qwen2VL):
    """Qwen2.5-VL: as Qwen2-VL, but the vision blocks see merge groups window by window."""

    name = "qwen2.5-vl"
    architectures = ("Qwen2_5_VLForConditionalGeneration",)
    processor_name = "Qwen2_5_VLProcessor"
    config_name = "Qwen2_5_VLConfig"
    timed_video = True  # second_per_grid_ts: the clip's seconds per temporal patch

    def block_order(self, grid_thw: torch.Tensor) -> torch.Tensor:
        vision = self.hf.config.vision_config
        return window_index(grid_thw, vision.spatial_merge_size, vision.window_size,
                            vision.patch_size)

    @classmethod
    def tiny(cls, seed: int = 0) -> Qwen2_5_VL:
        return tiny_qwen2_5_vl(cls, seed)


def window_index(grid_thw: torch.Tensor, merge_size: int, window_size: int,
                 patch_size: int) -> torch.Tensor:
    """Qwen2.5-VL's window order: (N_groups,) merge-group index at each slot of the blocks.

    Per image and temporal group, the (rows, cols) grid of merge groups is cut into windows
    of ``window_size // merge_size // patch_size`` groups a side (the last row and column of
    windows may be short), taken row-major, groups row-major inside each window: the order
    of ``get_window_index`` in transformers.
    """
    side = window_size // merge_size // patch_size
    order, offset = [], 0
    for t, h, w in grid_thw.tolist():
        rows, cols = int(h) // merge_size, int(w) // merge_size
        index = torch.arange(int(t) * rows * cols).reshape(int(t), rows, cols)
        n_rows, n_cols = -(-rows // side), -(-cols // side)
        padded = F.pad(index, (0, n_cols * side - cols, 0, n_rows * side - rows), value=-1)
        padded = padded.reshape(int(t), n_rows, side, n_cols, side).permute(0, 1, 3, 2, 4)
        padded = padded.reshape(-1)
        order.append(padded[padded >= 0] + offset)
        offset += int(t) * rows * cols
    return torch.cat(order)


@hookimpl
def register_models(register) -> None:
    register(Qwen2VL)
    register(Qwen2_5_VL)
