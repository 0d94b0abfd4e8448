"""Sanity floors: maps that ignore the model.

- ``random``: uniform noise in [0, 1), seeded per (seed, token index), so a token's map does
  not depend on which other tokens are explained;
- ``centre``: an isotropic-in-fractions Gaussian centred on the middle of the image, read at
  each grid cell's centre in the image frame (through ``ImageGrid.box``, so tiles and crops
  get the part of the image-centred Gaussian they cover).

A method that does not beat them on a localisation or faithfulness metric shows nothing the
metric can see.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from mmxai.citations import cite
from mmxai.hookspecs import hookimpl
from mmxai.method import Method
from mmxai.model import ImageGrid
from mmxai.trace import Trace


@dataclass
class RandomOptions:
    seed: int = 0

    def __post_init__(self) -> None:
        if self.seed < 0:  # numpy's SeedSequence takes non-negative seeds only
            raise ValueError(f"seed must be at least 0, got {self.seed}")


class RandomBaseline(Method):
    name = "random"
    summary = "Uniform random noise per token (a sanity floor)"
    Options = RandomOptions
    citation = cite("adebayo2018sanity")

    def explain(self, trace: Trace, tokens: Sequence[int]) -> np.ndarray:
        n_image = len(trace.image_positions)
        maps = [np.random.default_rng((self.options.seed, int(j))).random(n_image)
                for j in tokens]
        return np.asarray(maps, dtype=np.float32).reshape(len(maps), n_image)


def centre_gaussian(grid: ImageGrid, sigma: float) -> np.ndarray:
    """exp(-d^2 / 2 sigma^2) at each cell centre of ``grid``: (rows * cols,) row-major.

    d is the distance from the image centre in fractions of the image's width and height.
    """
    rows, cols = grid.shape
    x0, y0, x1, y1 = grid.box
    ys = y0 + (np.arange(rows) + 0.5) / rows * (y1 - y0)
    xs = x0 + (np.arange(cols) + 0.5) / cols * (x1 - x0)
    d2 = (ys[:, None] - 0.5) ** 2 + (xs[None, :] - 0.5) ** 2
    return np.exp(-d2 / (2.0 * sigma**2)).reshape(-1)


@dataclass
class CentreOptions:
    sigma: float = 0.25  # in fractions of the image's width and height

    def __post_init__(self) -> None:
        if not self.sigma > 0:
            raise ValueError(f"sigma must be positive, got {self.sigma}")


class CentreBaseline(Method):
    name = "centre"
    summary = "A Gaussian at the image centre, the same for every token (a sanity floor)"
    Options = CentreOptions
    citation = cite("judd2009learning")

    def explain(self, trace: Trace, tokens: Sequence[int]) -> np.ndarray:
        grids = trace.grids
        flat = (np.concatenate([centre_gaussian(g, self.options.sigma) for g in grids])
                if grids else np.zeros(0))
        return np.tile(flat.astype(np.float32), (len(tokens), 1))


@hookimpl
def register_methods(register) -> None:
    register(RandomBaseline)
    register(CentreBaseline)
