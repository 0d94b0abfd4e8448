"""The Dataset interface: samples with an image, a prompt and (optionally) ground truth."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from PIL import Image

from mmxai.errors import InputError
from mmxai.images import read_image, read_label_map
from mmxai.options import NoOptions, make_options


@dataclass
class Sample:
    """One evaluation item.

    ``mask`` is a label map (H, W) of ints, or a path to a PNG label map; ``categories``
    maps a category name (or phrase) to its label in the mask. ``word_labels``, when a
    dataset knows it exactly (the synthetic benchmark), maps caption words to labels and
    overrides the noun-to-category matching.
    """

    id: str
    image: Path | Image.Image
    prompt: str
    references: list[str] = field(default_factory=list)
    mask: Path | np.ndarray | None = None
    categories: dict[str, int] = field(default_factory=dict)
    word_labels: dict[str, int] | None = None
    meta: dict[str, Any] = field(default_factory=dict)


class Dataset:
    """A source of samples (:class:`Sample`).

    ``Options`` is the dataclass of the dataset's options (``--option NAME.KEY=VALUE``);
    :meth:`__init__` reads ``**options`` through it (:func:`mmxai.options.make_options`),
    so an unknown key or a value that does not fit its field's type is refused in one line
    naming the valid keys. A subclass declares ``Options``, passes every option on to
    ``super().__init__`` and reads them back, typed, from ``self.options``.
    """

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    citation: ClassVar[str] = ""
    Options: ClassVar[type] = NoOptions
    #: Method and metric options a run on this dataset uses unless the user sets them
    #: (``{"deletion": {"steps": 4}}``): settings the dataset's documentation justifies.
    default_options: ClassVar[dict[str, dict[str, Any]]] = {}

    def __init__(self, root: str | Path | None = None, **options: Any) -> None:
        self.root = Path(root) if root is not None else None
        self.options = make_options("dataset", self.name, self.Options, options)

    def __iter__(self) -> Iterator[Sample]:
        raise NotImplementedError

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def fingerprint(self) -> str:
        """A hash of the dataset's files, for provenance."""
        raise NotImplementedError


def load_image(sample: Sample) -> Image.Image:
    """The sample's image, upright RGB (:func:`mmxai.images.read_image`); a missing, unreadable
    or refused file raises a one-line InputError.

    A reader that met a broken record still yields it, with ``meta["error"]`` saying why.
    """
    if sample.meta.get("error"):
        raise InputError(f"sample {sample.id}: {sample.meta['error']}")
    if isinstance(sample.image, Image.Image):
        return read_image(sample.image, f"sample {sample.id}")
    path = Path(sample.image)
    return read_image(path, f"sample {sample.id}", name=f"image file {path}")


def load_mask(sample: Sample, image_size: tuple[int, int]) -> np.ndarray | None:
    """The sample's label map, (height, width) ints, checked against ``image_size``.

    ``image_size`` is (width, height), as PIL's ``Image.size``. None when the sample has no
    mask. A mask file that does not exist is an all-zero map when the dataset says so
    (``sample.meta["missing_mask"] == "zeros"``, TAM's COCO convention), else an InputError,
    as are an unreadable file, a colour image and a mask of another size.
    """
    width, height = image_size
    for key in ("error", "mask_error"):
        if sample.meta.get(key):
            raise InputError(f"sample {sample.id}: {sample.meta[key]}")
    if sample.mask is None:
        return None
    if isinstance(sample.mask, np.ndarray):
        mask = sample.mask
    else:
        mask = _read_label_map(sample, Path(sample.mask), (height, width))
    if mask.ndim != 2:
        raise InputError(f"sample {sample.id}: mask has shape {mask.shape}, expected a 2-D "
                         "label map")
    if mask.shape != (height, width):
        raise InputError(f"sample {sample.id}: mask is {mask.shape[1]}×{mask.shape[0]} but the "
                         f"image is {width}×{height}")
    return mask


def _read_label_map(sample: Sample, path: Path, shape: tuple[int, int]) -> np.ndarray:
    # Only a path with nothing at all there is a missing mask; a dangling link, a folder or
    # a FIFO is refused by the reader (mmxai.images: labels kept, palette indices, EXIF).
    if not os.path.lexists(path):
        if sample.meta.get("missing_mask") == "zeros":
            return np.zeros(shape, dtype=np.int32)
        raise InputError(f"sample {sample.id}: mask file {path} does not exist")
    return read_label_map(path, f"sample {sample.id}", name=f"mask file {path}")
