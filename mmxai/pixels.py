"""The pixel budget of the families that resize each image to one (Qwen2-VL, Qwen2.5-VL,
Qwen3-VL, GLM-4V): ``min_pixels``/``max_pixels`` of :func:`mmxai.load_model`, and
:func:`set_pixel_budget` on a loaded model.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from mmxai.errors import InputError
from mmxai.model import Model


def pixel_bounds(min_pixels: Any, max_pixels: Any) -> tuple[int | None, int | None]:
    """``(min_pixels, max_pixels)`` as whole numbers of pixels >= 1 (None: the processor's
    own), the minimum not above the maximum when both are given; else one line."""
    bounds = []
    for value, what in ((min_pixels, "min_pixels"), (max_pixels, "max_pixels")):
        if value is not None and (isinstance(value, (bool, np.bool_))
                                  or not isinstance(value, (int, np.integer)) or value < 1):
            raise InputError(f"{what} {' '.join(repr(value).split())[:40]}: expected a "
                             f"whole number of pixels >= 1 (e.g. 28 * 28 * 256), or None "
                             f"for the processor's own")
        bounds.append(None if value is None else int(value))
    low, high = bounds
    if low is not None and high is not None and low > high:
        raise InputError(f"min_pixels {low} is above max_pixels {high}")
    return low, high


def set_pixel_budget(model: Model, min_pixels: int | None = None,
                     max_pixels: int | None = None) -> None:
    """Bound the pixels of each image the Qwen-like families (Qwen2-VL, Qwen2.5-VL,
    Qwen3-VL, GLM-4V) resize it to, as their processors' ``min_pixels``/``max_pixels`` do:
    more pixels, more image tokens (a finer grid), more memory. None keeps the current
    bound; a maximum below the processor's minimum lowers the minimum to it (the adapter's
    rule). A model without a pixel budget (a fixed input size), a value that is no number of
    pixels, or a minimum above the maximum is one line; nothing is changed then."""
    low, high = pixel_bounds(min_pixels, max_pixels)
    if low is None and high is None:
        return
    if not hasattr(model, "max_pixels"):  # the attribute QwenLike adapters read
        given = "min_pixels" if high is None else "max_pixels"
        raise InputError(f"{given}: model {model.model_id!r} ({type(model).__name__}) has no "
                         f"pixel budget; only the Qwen-like families (Qwen2-VL, Qwen2.5-VL, "
                         f"Qwen3-VL, GLM-4V) resize images to one")
    image_processor = model.processor.image_processor
    # GLM-4V's smart-resize counts the frames an image is repeated into against its bounds
    frames = image_processor.temporal_patch_size if model.budget_counts_frames else 1
    size = image_processor.size
    if low is not None:
        highest = high or model.max_pixels or int(size["longest_edge"]) // frames
        if low > highest:
            raise InputError(f"min_pixels {low} is above max_pixels {highest}, the model's "
                             f"maximum now; give max_pixels too")
        image_processor.size = (dataclasses.replace(size, shortest_edge=low * frames)
                                if dataclasses.is_dataclass(size)
                                else {**size, "shortest_edge": low * frames})
    if high is not None:
        model.max_pixels = high
