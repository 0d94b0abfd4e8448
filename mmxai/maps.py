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
    for grid, block in zip(grids, split(flat, grids), strict=True):
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
        painted = resize(block, (bottom - top, right - left))
        # a box may reach outside the image (a processor that pads to a square first)
        t, b = max(top, 0), min(bottom, height)
        lft, rgt = max(left, 0), min(right, width)
        if b <= t or rgt <= lft:
            continue
        total[t:b, lft:rgt] += painted[t - top:b - top, lft - left:rgt - left]
        count[t:b, lft:rgt] += 1
    return np.divide(total, count, out=np.zeros_like(total), where=count > 0)


def minmax(x: np.ndarray, axis=None) -> np.ndarray:
    """Scale to [0, 1]; a constant input maps to 0 instead of dividing by zero."""
    x = np.asarray(x, dtype=np.float32)
    lo = x.min(axis=axis, keepdims=True)
    span = x.max(axis=axis, keepdims=True) - lo
    return np.divide(x - lo, span, out=np.zeros_like(x), where=span > 0)


def resample(grid_maps: torch.Tensor, src_box: tuple[float, float, float, float],
             dst_box: tuple[float, float, float, float],
             dst_shape: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Resample (C, h, w) maps from a grid covering ``src_box`` onto a grid covering ``dst_box``.

    Boxes are in the same frame (fractions of the original image; a padded canvas gives
    boxes reaching outside [0, 1]). Bilinear at the destination cell centres. Returns the
    (C, H, W) maps and an (H, W) bool mask of the destination cells the source covers.
    """
    rows, cols = dst_shape
    dx0, dy0, dx1, dy1 = dst_box
    sx0, sy0, sx1, sy1 = src_box
    xs = dx0 + (torch.arange(cols, dtype=torch.float32) + 0.5) / cols * (dx1 - dx0)
    ys = dy0 + (torch.arange(rows, dtype=torch.float32) + 0.5) / rows * (dy1 - dy0)
    u = (xs - sx0) / (sx1 - sx0)  # position inside the source grid, 0..1
    v = (ys - sy0) / (sy1 - sy0)
    covered = ((v >= 0) & (v <= 1))[:, None] & ((u >= 0) & (u <= 1))[None, :]
    grid = torch.stack(torch.meshgrid(v * 2 - 1, u * 2 - 1, indexing="ij")[::-1], dim=-1)
    src = grid_maps.float()[:, None]  # (C, 1, h, w)
    out = F.grid_sample(src, grid[None].expand(src.shape[0], -1, -1, -1), mode="bilinear",
                        padding_mode="border", align_corners=False)
    return out[:, 0], covered
