"""Adapter for LLaVA-NeXT (``LlavaNextForConditionalGeneration``): a base view plus tiles.

The processor gives each image a *base* view (the whole image squashed to the crop size)
and cuts a copy resized, aspect kept, onto the best ``image_grid_pinpoints`` canvas into
crop-sized tiles. The model lays the tiles' patch features out as one canvas of
``(n_rows * S, n_cols * S)`` patches, cuts off the rows or columns that only hold the
canvas's padding (``unpad_image``) and appends an ``image_newline`` token to every row.

So each image is two grids in the LLM sequence: ``"base"`` ``(S, S)``, then ``"highres"``
``(rows, cols)`` whose positions skip the newline tokens. Both cover the whole image.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image

from mmxai.errors import InputError, UnsupportedModelError
from mmxai.hookspecs import hookimpl
from mmxai.model import ImageGrid, Inputs
from mmxai.plugins.models.llava import Llava
from mmxai.plugins.models.shared import (
    crop_box,
    size_value,
    split_runs,
    stack_calls,
    token_positions,
)
from mmxai.plugins.models.tiny import LLAVA_NEXT_CHAT_TEMPLATE, tiny_llava_next


class LlavaNext(Llava):
    """LLaVA-NeXT: per image a base ``(S, S)`` grid, then the unpadded high-res grid."""

    name = "llava-next"
    architectures = ("LlavaNextForConditionalGeneration",)
    fixed_size = None  # any-resolution tiling: images keep their own size
    #: llava-hf's LLaVA-NeXT (Mistral) template: ``[INST] <image>\n{prompt} [/INST]``.
    default_chat_template = LLAVA_NEXT_CHAT_TEMPLATE

    def highres_layout(self, image_size: Sequence[int]) -> tuple[int, int, torch.Tensor]:
        """The tile layout and the high-res grid of one image of ``image_size`` (H, W).

        Returns ``(n_rows, n_cols, kept)``: the tiles form ``n_rows x n_cols``, and ``kept``
        (rows, cols) holds, for each high-res grid cell, its index into the row-major
        ``(n_rows * S, n_cols * S)`` canvas of tile patches, cut by the model's own
        ``unpad_image``.
        """
        from transformers.models.llava_next.modeling_llava_next import (
            get_anyres_image_grid_shape,
            unpad_image,
        )

        config = self.hf.config
        side = int(config.vision_config.image_size)
        patches = side // int(config.vision_config.patch_size)
        size = [int(s) for s in image_size]
        n_rows, n_cols = get_anyres_image_grid_shape(size, config.image_grid_pinpoints, side)
        canvas = torch.arange(n_rows * patches * n_cols * patches)
        kept = unpad_image(canvas.view(1, n_rows * patches, n_cols * patches), size)[0]
        return int(n_rows), int(n_cols), kept

    def base_box(self) -> tuple[float, float, float, float]:
        """The base view's region: the image squashed to a square, then centre-cropped."""
        ip = self.processor.image_processor
        size = ip.size
        side = size_value(size, "shortest_edge")
        if side is None:
            return crop_box(ip, size_value(size, "width"), size_value(size, "height"))
        return crop_box(ip, side, side)

    def image_grids(self, features: dict[str, Any],
                    images: Sequence[Image.Image]) -> list[ImageGrid]:
        """Per image: ``"base"`` (S, S) then ``"highres"`` (rows, cols), newlines skipped.

        The high-res grid's box is the whole image: ``unpad_image`` cuts the canvas's padding
        at patch granularity, so its edge is off by less than one patch.
        """
        if self.hf.config.vision_feature_select_strategy != "default":
            raise UnsupportedModelError("LLaVA-NeXT packs features only with the 'default' "
                                        "strategy (CLS dropped)")
        rows, cols = self.patch_grid(features)
        kept = [self.highres_layout(size)[2] for size in features["image_sizes"].tolist()]
        for i, (grid, image) in enumerate(zip(kept, images, strict=True)):
            if 0 in grid.shape:  # unpad_image cut every row or column: nothing to map onto
                width, height = image.size
                raise InputError(
                    f"image {i + 1} ({width}×{height} pixels) is too thin for LLaVA-NeXT: "
                    f"aspect ratio {max(width, height) / min(width, height):g}:1 leaves its "
                    f"high-res view {grid.shape[0]}×{grid.shape[1]} patches after unpadding")
        counts = [rows * cols + k.shape[0] * (k.shape[1] + 1) for k in kept]
        runs = split_runs(token_positions(features, self.image_token_id()), counts)
        base_box = self.base_box()
        grids = []
        for i, (run, grid) in enumerate(zip(runs, kept, strict=True)):
            grids.append(ImageGrid(image=i, positions=run[:rows * cols], shape=(rows, cols),
                                   box=base_box, kind="base"))
            lines = run[rows * cols:].reshape(grid.shape[0], grid.shape[1] + 1)
            grids.append(ImageGrid(image=i, positions=lines[:, :-1].reshape(-1),
                                   shape=(int(grid.shape[0]), int(grid.shape[1])),
                                   kind="highres"))
        return grids

    def collate(self, features: Sequence[dict[str, Any]]) -> dict[str, Any]:
        """As :meth:`Model.collate`, with ``pixel_values`` (n_images, n_crops, 3, H, W)
        zero-padded along the crops first: images of other aspect ratios have other tile
        counts, and the model keeps each image's first ``1 + n_tiles`` crops (from
        ``image_sizes``, concatenated with them), as it does for the processor's own padding.
        """
        most = max((f["pixel_values"].shape[1] for f in features if "pixel_values" in f),
                   default=0)
        padded = [{**f, "pixel_values": F.pad(f["pixel_values"], (0,) * 7 + (most - n,))}
                  if "pixel_values" in f and (n := f["pixel_values"].shape[1]) < most else f
                  for f in features]
        return super().collate(padded)

    def vision_tokens_to_grids(self, scores: Sequence[torch.Tensor],
                               inputs: Inputs) -> torch.Tensor:
        """(n_crops, 1 + S*S) per call, CLS first -> the flat map over base and high-res grids.

        The tower sees, image after image, the base view then the tiles row-major (padding
        tiles dropped). The base view's patches map one to one onto the base grid; the tiles'
        patches are laid out as the model's canvas and cut as ``unpad_image`` cuts it, so
        every high-res cell gets exactly the score of the patch whose feature it holds. The
        newline tokens have no patch and no cell.
        """
        rows, cols = self.patch_grid(inputs.features)
        patches = stack_calls(scores)[:, -rows * cols:]
        out, start = [], 0
        for size in inputs.features["image_sizes"].tolist():
            n_rows, n_cols, kept = self.highres_layout(size)
            tiles = patches[start + 1:start + 1 + n_rows * n_cols]
            canvas = tiles.reshape(n_rows, n_cols, rows, cols).permute(0, 2, 1, 3)
            out += [patches[start], canvas.reshape(-1)[kept.reshape(-1)]]
            start += 1 + n_rows * n_cols
        return torch.cat(out)

    @classmethod
    def tiny(cls, seed: int = 0) -> LlavaNext:
        return tiny_llava_next(cls, seed)


@hookimpl
def register_models(register):
    register(LlavaNext)
