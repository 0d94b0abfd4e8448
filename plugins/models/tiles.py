"""Tiled images and merged patch blocks: the geometry several families share, as code, with
each family supplying only data (how many tiles, which overview kind, the merge factor).

Tiles. A processor that cuts an image into ``n_rows x n_cols`` tiles of the vision tower's
size and adds an overview of the whole image gives the LLM one grid per tile, tiles
row-major, then the overview's grid. Tile ``(r, c)`` covers the box
``(c / n_cols, r / n_rows, (c + 1) / n_cols, (r + 1) / n_rows)`` of the original image,
because these processors resize the *whole* image onto the canvas of tiles (squashing it to
whole tiles) before cutting; the overview covers ``(0, 0, 1, 1)``. What differs between
families is data: where the tile counts come from and what the overview is called.

- Idefics3 / SmolVLM: tiles from ``<row_r_col_c>`` tags, overview ``<global-img>``
  (kind ``"global"``); an image that is not split is one ``"image"`` grid.
- InternVL (``internvl.py``) is the same pattern: ``n_cols x n_rows`` from
  ``get_optimal_tiled_canvas``, tiles row-major, overview the thumbnail. Its layout is
  ``tile_layout(n_rows, n_cols, "thumbnail")``, its grids ``layout_grids`` of each image's
  run, and its vision map ``block_mean`` with ``f = 1 / downsample_ratio`` (its tests'
  pixel-shuffle pattern is exactly that mean).

Merged blocks. Each of these families folds ``f x f`` blocks of vision patches into one
LLM token, blocks row-major: Idefics3's and InternVL's pixel shuffle (``f = scale_factor``
or ``1 / downsample_ratio``) and Mistral 3's patch merger (``f = spatial_merge_size``).
A score per patch maps onto the LLM grid as the mean of its block (:func:`block_mean`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from mmxai.errors import InputError
from mmxai.model import ImageGrid

Box = tuple[float, float, float, float]


def tile_layout(n_rows: int, n_cols: int, overview: str) -> list[tuple[Box, str]]:
    """(box, kind) of each grid of one tiled image: tiles row-major, then the ``overview``
    (its kind). ``n_rows * n_cols == 0`` is an image that was not cut: one ``"image"`` grid
    over the whole image.
    """
    whole = (0.0, 0.0, 1.0, 1.0)
    if n_rows * n_cols == 0:
        return [(whole, "image")]
    tiles = [((c / n_cols, r / n_rows, (c + 1) / n_cols, (r + 1) / n_rows), "tile")
             for r in range(n_rows) for c in range(n_cols)]
    return [*tiles, (whole, overview)]


def layout_grids(image: int, positions: np.ndarray, shape: tuple[int, int],
                 layout: Sequence[tuple[Box, str]]) -> list[ImageGrid]:
    """Cut one image's ``positions`` into ``len(layout)`` consecutive grids of ``shape``."""
    per_grid = shape[0] * shape[1]
    if len(positions) != per_grid * len(layout):
        raise InputError(f"image {image}: {len(positions)} image tokens, but {len(layout)} "
                         f"grids of {shape[0]}x{shape[1]} need {per_grid * len(layout)}")
    return [ImageGrid(image=image, positions=positions[k * per_grid:(k + 1) * per_grid],
                      shape=shape, box=box, kind=kind)
            for k, (box, kind) in enumerate(layout)]


def block_mean(scores: torch.Tensor, patches: tuple[int, int], factor: int) -> torch.Tensor:
    """Per-patch scores (n, rows * cols), row-major -> per-token (n, rows/f * cols/f).

    Token ``(i, j)`` is the mean of patches ``f*i .. f*i + f - 1`` x ``f*j .. f*j + f - 1``:
    the block the pixel shuffle or patch merger folds into it.
    """
    rows, cols = patches
    if rows % factor or cols % factor:
        raise InputError(f"a {rows}x{cols} patch grid does not fold into {factor}x{factor} "
                         "blocks")
    blocks = scores.reshape(-1, rows // factor, factor, cols // factor, factor)
    return blocks.mean(dim=(2, 4)).reshape(scores.shape[0], -1)
