"""What several adapters share: reading processor sizes, replaying a CLIP-style crop, and
finding and stacking image tokens. Adapters import these from here, never from a sibling
adapter."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from mmxai.errors import InputError, UnsupportedModelError


def size_value(size: Any, key: str) -> int | None:
    """A key of a size dict (plain dict or transformers' SizeDict across versions)."""
    value = size.get(key) if hasattr(size, "get") else getattr(size, key, None)
    return int(value) if value is not None else None


def crop_box(image_processor: Any, width: int, height: int,
             pad_to_square: bool = False) -> tuple[float, float, float, float]:
    """The region of a ``width x height`` image that a CLIP-style image processor keeps.

    Replays the processor's geometry (optional pad-to-square, resize, centre crop) on the
    region a canvas covers, in original pixels, and returns it as fractions
    ``(x0, y0, x1, y1)``. With padding or an upscaling crop the box may reach outside
    ``[0, 1]``: the grid then also covers padding.
    """
    from transformers.image_transforms import get_resize_output_image_size

    x0, y0, x1, y1 = 0.0, 0.0, float(width), float(height)  # what the canvas covers
    w, h = width, height  # the canvas in pixels
    if pad_to_square:
        side = max(w, h)
        x0 -= (side - w) // 2
        y0 -= (side - h) // 2
        x1, y1, w, h = x0 + side, y0 + side, side, side
    if getattr(image_processor, "do_resize", True):
        size = image_processor.size
        short, long = size_value(size, "shortest_edge"), size_value(size, "longest_edge")
        if short is not None and long is None:
            canvas = np.broadcast_to(np.uint8(0), (3, h, w))  # a shape, no memory
            h, w = get_resize_output_image_size(canvas, short, default_to_square=False,
                                                input_data_format="channels_first")
        elif size_value(size, "height") is not None and size_value(size, "width") is not None:
            h, w = size_value(size, "height"), size_value(size, "width")
        else:
            raise UnsupportedModelError(f"image processor size {size!r} is not supported")
    if getattr(image_processor, "do_center_crop", True):
        crop = image_processor.crop_size
        crop_h, crop_w = size_value(crop, "height"), size_value(crop, "width")
        top, left = (h - crop_h) // 2, (w - crop_w) // 2  # as transformers' center_crop
        sx, sy = (x1 - x0) / w, (y1 - y0) / h
        x0, x1 = x0 + left * sx, x0 + (left + crop_w) * sx
        y0, y1 = y0 + top * sy, y0 + (top + crop_h) * sy
    return (x0 / width, y0 / height, x1 / width, y1 / height)


def split_runs(positions: np.ndarray, counts: Sequence[int]) -> list[np.ndarray]:
    """Cut the image-token positions into consecutive per-image runs of ``counts`` tokens."""
    if sum(counts) != len(positions):
        raise InputError(
            f"{len(positions)} image tokens in the prompt, but the images need {sum(counts)}"
        )
    return np.split(positions, np.cumsum(counts)[:-1])


def token_positions(features: dict[str, Any], token_id: int) -> np.ndarray:
    """Positions of ``token_id`` in ``features['input_ids']`` (1, L): (n,) int64."""
    ids = features["input_ids"][0]
    return torch.nonzero(ids == token_id).flatten().cpu().numpy().astype(np.int64)


def stack_calls(scores: Sequence[torch.Tensor]) -> torch.Tensor:
    """One vision layer's per-call scores, (n_i, tokens) each, as one (sum n_i, tokens)."""
    return torch.cat([torch.as_tensor(s).reshape(-1, s.shape[-1]) for s in scores]).float()


def checkpoint_video_config(spec: str, revision: str | None = None) -> dict[str, Any] | None:
    """The checkpoint's video-processor config, where transformers looks for it; None when
    it has only an image processor's (or cannot be read)."""
    from transformers.utils import cached_file

    for name, key in (("processor_config.json", "video_processor"),
                      ("video_preprocessor_config.json", None)):
        try:
            path = cached_file(spec, name, revision=revision,
                               _raise_exceptions_for_missing_entries=False,
                               _raise_exceptions_for_connection_errors=False)
        except Exception:  # no such repo or folder: the image processor's settings
            path = None
        if path is None:
            continue
        with open(path, encoding="utf-8") as handle:
            config = json.load(handle)
        config = config.get(key) if key else config
        if isinstance(config, dict):
            return config
    return None
