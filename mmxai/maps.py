"""Shared map plumbing: flat maps <-> grids <-> the original image frame.

Every method returns flat maps, shape (n_tokens, N_image), laid out like
``inputs.image_positions``: grid after grid, each row-major. These helpers reshape them,
apply per-grid operations, and paint them back onto the image each grid covers.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from mmxai.model import ImageGrid


def split(flat: np.ndarray, grids: Sequence[ImageGrid]) -> list[np.ndarray]:
    """(n, N) flat maps -> one (n, rows, cols) array per grid."""
    flat = np.asarray(flat)
    return [flat[..., g.offset:g.offset + g.size].reshape(*flat.shape[:-1], *g.shape)
            for g in grids]


def per_grid(fn: Callable[[np.ndarray], np.ndarray], flat: np.ndarray,
             grids: Sequence[ImageGrid]) -> np.ndarray:
    """Apply ``fn`` to each grid's (n, rows, cols) block and return flat maps again."""
    flat = np.asarray(flat)
    out = np.empty_like(flat, dtype=np.float32)
    for grid, block in zip(grids, split(flat, grids)):
        out[..., grid.offset:grid.offset + grid.size] = fn(block).reshape(*flat.shape[:-1], -1)
    return out


def resize(grid_map: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of (rows, cols) to ``size`` = (height, width), half-pixel centres."""
    t = torch.as_tensor(np.asarray(grid_map, dtype=np.float32))[None, None]
    out = F.interpolate(t, size=tuple(int(s) for s in size), mode="bilinear", align_corners=False)
    return out[0, 0].numpy()


def to_image(flat_map: np.ndarray, grids: Sequence[ImageGrid], image: int,
             size: tuple[int, int], frame: int | None = 0) -> np.ndarray:
    """Paint one token's flat map onto image ``image`` at ``size`` = (height, width).

    Each grid of that image is resized into the box it covers; where several grids cover a
    pixel (a thumbnail and a tile, LLaVA-NeXT's base and high-res views), they are averaged.
    Pixels no grid covers (outside LLaVA-1.5's centre crop) are 0: no evidence there.
    """
    height, width = size
    total = np.zeros((height, width), dtype=np.float32)
    count = np.zeros((height, width), dtype=np.float32)
    flat_map = np.asarray(flat_map, dtype=np.float32)
    for grid in grids:
        if grid.image != image or (frame is not None and grid.frame != frame):
            continue
        x0, y0, x1, y1 = grid.box
        top, bottom = int(round(y0 * height)), int(round(y1 * height))
        left, right = int(round(x0 * width)), int(round(x1 * width))
        if bottom <= top or right <= left:
            continue
        block = flat_map[grid.offset:grid.offset + grid.size].reshape(grid.shape)
        total[top:bottom, left:right] += resize(block, (bottom - top, right - left))
        count[top:bottom, left:right] += 1
    return np.divide(total, count, out=np.zeros_like(total), where=count > 0)


def minmax(x: np.ndarray, axis=None) -> np.ndarray:
    """Scale to [0, 1]; a constant input maps to 0 instead of dividing by zero."""
    x = np.asarray(x, dtype=np.float32)
    lo = x.min(axis=axis, keepdims=True)
    span = x.max(axis=axis, keepdims=True) - lo
    return np.divide(x - lo, span, out=np.zeros_like(x), where=span > 0)
