"""Image regions for perturbation methods: which pixels move together, and back to tokens.

A perturbation method (occlusion, feature ablation, KernelSHAP, LIME) removes groups of
pixels and watches the answer. The groups are either the model's own token grid, ``cell`` x
``cell`` tokens at a time, so a region is exactly what some image tokens see, or SLIC
superpixels (Achanta et al. 2012), which follow the image's edges. :func:`region_labels`
draws them as an (H, W) label image; :func:`masked_images` builds the perturbed images;
:func:`window_lattice` gives occlusion its cells (the token grid continued over the image,
padded so windows reach the last row and column); :func:`regions_to_grids` (per-region
scores) and :func:`pixels_to_grids` (per-pixel scores) make the flat token maps every
method returns (laid out like ``trace.image_positions``,
grid after grid).

Pixels belong to a token cell by their centre: pixel (y, x) lies at ((y + 0.5) / H,
(x + 0.5) / W) in fractions of the image, and the grid's ``box`` says which fractions its
cells cover. The same rule serves both directions, so scores of "grid" regions come back
onto that grid exactly.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image

from mmxai.errors import InputError
from mmxai.model import ImageGrid

KINDS = ("grid", "slic", "slico")


def region_labels(image: Image.Image, grids: Sequence[ImageGrid], kind: str = "grid", *,
                  cell: int = 1, segments: int = 64, compactness: float = 10.0) -> np.ndarray:
    """(H, W) int64 region labels 0..R-1 over ``image``'s pixels, every label used.

    ``kind`` "grid": blocks of ``cell`` x ``cell`` tokens of image 0's grids, row-major (a
    last block row or column may be narrower); a pixel belongs to the first grid (in the
    trace's order) whose box covers it, so a single grid is used whole, tiles (InternVL,
    Idefics3) share the image out before their thumbnail, and LLaVA-NeXT's base grid comes
    before its high-res view. Pixels outside every box (LLaVA-1.5's centre crop cuts the
    sides) form ONE extra region, the last label: it is perturbed like the others (its
    score, about 0 for a model that never sees it, tells so), and no token cell covers it,
    so it reaches no map. ``kind`` "slic": scikit-image's SLIC superpixels (about
    ``segments`` of them, ``compactness`` trading colour against distance, a Gaussian
    smoothing over a sixth of a superpixel's side first, ``start_label=0``), the same for
    every grid and family. ``kind`` "slico": SLIC with a per-superpixel compactness
    (``compactness`` unused).
    """
    width, height = image.size
    if kind == "grid":
        labels = _grid_blocks(grids, height, width, cell)
    elif kind == "slic":
        from skimage.segmentation import slic

        # unsmoothed, SLIC speckles on texture or noise and its connectivity pass merges
        # the speckles into one region (1 of 64 asked on noise; smoothed: 60 to 64, and
        # scikit-image's natural images 59 to 67 instead of 40 to 55)
        side = (height * width / segments) ** 0.5
        labels = slic(np.asarray(image.convert("RGB")), n_segments=segments,
                      compactness=compactness, sigma=side / 6, start_label=0)
    elif kind == "slico":
        from skimage.segmentation import slic

        # SLICO (scikit-image's slic_zero): a compactness adapted per superpixel, no
        # parameter to set; about `segments` regions on flat and noisy images too (EAGLE's
        # sparsification, as its authors' OpenCV SLICO)
        labels = slic(np.asarray(image.convert("RGB")), n_segments=segments, slic_zero=True,
                      start_label=0)
    else:
        raise InputError(f"regions must be one of {', '.join(KINDS)}, got {kind!r}")
    # number the regions 0..R-1 with none missing (a box reaching past the image, or a
    # superpixel merged away, leaves gaps) and keep their order
    _, labels = np.unique(labels, return_inverse=True)
    return labels.reshape(height, width).astype(np.int64)


def regions_to_grids(scores: np.ndarray, labels: np.ndarray, grids: Sequence[ImageGrid],
                     image: int = 0) -> np.ndarray:
    """(..., R) region scores -> (..., N_image) flat maps over every grid in ``grids``.

    Each token cell of each grid of image ``image`` gets the area-weighted mean of the
    scores of the regions its pixels belong to (:func:`pixels_to_grids` of the painted
    scores), so "grid" regions come back onto their grid exactly.
    """
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels)
    n_regions = int(labels.max()) + 1
    if scores.shape[-1] != n_regions:
        raise InputError(f"regions_to_grids: {scores.shape[-1]} scores for {n_regions} "
                         f"regions")
    return pixels_to_grids(scores[..., labels], grids, image)


def pixels_to_grids(pixel_maps: np.ndarray, grids: Sequence[ImageGrid],
                    image: int = 0) -> np.ndarray:
    """(..., H, W) maps over image ``image``'s pixels -> (..., N_image) flat maps.

    Each token cell of each of that image's grids gets the mean over the pixels whose
    centres it covers (through the grid's box); a cell smaller than a pixel reads the pixel
    under its centre. Cells of other images' grids, and cells wholly outside the image (a
    box padded past it), get 0.
    """
    pixel_maps = np.asarray(pixel_maps, dtype=np.float64)
    *lead, height, width = pixel_maps.shape
    flat = pixel_maps.reshape(-1, height * width)
    n_image = max((g.offset + g.size for g in grids), default=0)
    out = np.zeros((flat.shape[0], n_image))
    for grid in grids:
        if grid.image != image:
            continue
        rows, cols, inside = _pixel_cells(grid, height, width)
        cell = np.where(inside, rows * grid.shape[1] + cols, grid.size).ravel()
        count = np.bincount(cell, minlength=grid.size + 1)[:grid.size]
        sums = np.stack([np.bincount(cell, weights=m, minlength=grid.size + 1)[:grid.size]
                         for m in flat]) if flat.size else np.zeros((flat.shape[0], grid.size))
        block = np.divide(sums, count, out=np.zeros_like(sums), where=count > 0)
        empty = np.flatnonzero(count == 0)
        if empty.size:  # cells finer than the pixels: the pixel under the cell's centre
            x0, y0, x1, y1 = grid.box
            r, c = np.divmod(empty, grid.shape[1])
            y = np.floor((y0 + (r + 0.5) / grid.shape[0] * (y1 - y0)) * height).astype(int)
            x = np.floor((x0 + (c + 0.5) / grid.shape[1] * (x1 - x0)) * width).astype(int)
            seen = (y >= 0) & (y < height) & (x >= 0) & (x < width)
            block[:, empty[seen]] = flat[:, y[seen] * width + x[seen]]
        out[:, grid.offset:grid.offset + grid.size] = block
    return out.reshape(*lead, n_image)


def masked_images(image: Image.Image, baseline: Image.Image, labels: np.ndarray,
                  keep: np.ndarray) -> list[Image.Image]:
    """One image per row of ``keep`` ((n, R) bool): the regions it keeps from ``image``,
    the others from ``baseline`` (same size)."""
    original = np.asarray(image.convert("RGB"))
    base = np.asarray(baseline.convert("RGB"))
    keep = np.asarray(keep, dtype=bool)
    return [Image.fromarray(np.where(row[labels][..., None], original, base).astype(np.uint8))
            for row in keep]


def _grid_blocks(grids: Sequence[ImageGrid], height: int, width: int, cell: int
                 ) -> np.ndarray:
    """(H, W) labels: the ``cell`` x ``cell`` block of the first grid of image 0 over each
    pixel's centre (numbered grid after grid); one more label for pixels no grid covers."""
    labels = np.full((height, width), -1, dtype=np.int64)
    first = 0
    for grid in grids:
        if grid.image != 0 or grid.frame != 0:
            continue
        rows, cols, inside = _pixel_cells(grid, height, width)
        per_row = -(-grid.shape[1] // cell)
        free = inside & (labels < 0)
        labels[free] = first + ((rows // cell) * per_row + cols // cell)[free]
        first += per_row * -(-grid.shape[0] // cell)
    if first == 0:
        raise InputError("no grid of image tokens for image 0")
    return np.where(labels < 0, first, labels)


def _pixel_cells(grid: ImageGrid, height: int, width: int
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(H, W) row and column of the token cell under each pixel's centre, and whether the
    centre lies inside the grid's box at all."""
    x0, y0, x1, y1 = grid.box
    n_rows, n_cols = grid.shape
    v = ((np.arange(height) + 0.5) / height - y0) / (y1 - y0)  # 0..1 inside the box
    u = ((np.arange(width) + 0.5) / width - x0) / (x1 - x0)
    rows = np.floor(v * n_rows).astype(np.int64)
    cols = np.floor(u * n_cols).astype(np.int64)
    inside = ((rows >= 0) & (rows < n_rows))[:, None] & ((cols >= 0) & (cols < n_cols))[None]
    rows, cols = np.broadcast_arrays(np.clip(rows, 0, n_rows - 1)[:, None],
                                     np.clip(cols, 0, n_cols - 1)[None])
    return rows, cols, inside


def window_lattice(grid: ImageGrid, height: int, width: int, window: int, stride: int
                   ) -> tuple[np.ndarray, tuple[int, int]]:
    """Occlusion's cells: ``grid``'s token cells, extended over the whole image.

    Returns (H, W) labels, each pixel's cell as a row-major index into a (rows, cols)
    lattice, and that shape. The lattice is the grid's own rows and columns (a pixel belongs
    to a cell by its centre, as everywhere here), continued past the grid's box where the
    image goes on (LLaVA-1.5's crop, tiles beside the first), then padded at the bottom and
    right with cells no pixel is in, so that windows of ``window`` cells placed every
    ``stride`` cells from the top-left corner reach the last row and column: every cell is
    covered by at least one window (a window across the edge hides the cells it covers).
    """
    x0, y0, x1, y1 = grid.box
    n_rows, n_cols = grid.shape
    rows = np.floor(((np.arange(height) + 0.5) / height - y0) / (y1 - y0) * n_rows)
    cols = np.floor(((np.arange(width) + 0.5) / width - x0) / (x1 - x0) * n_cols)
    rows, cols = (rows - rows.min()).astype(np.int64), (cols - cols.min()).astype(np.int64)
    shape = tuple(_padded(int(n.max()) + 1, window, stride) for n in (rows, cols))
    return rows[:, None] * shape[1] + cols[None], shape


def _padded(cells: int, window: int, stride: int) -> int:
    """The fewest cells >= ``cells`` that windows of ``window`` every ``stride`` tile up to
    their last cell (at least one window)."""
    if cells <= window:
        return window
    return -(-(cells - window) // stride) * stride + window
