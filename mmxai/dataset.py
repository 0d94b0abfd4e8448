"""The Dataset interface: samples with an image, a prompt and (optionally) ground truth."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from PIL import Image

from mmxai.errors import InputError


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
    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    citation: ClassVar[str] = ""
    #: Method and metric options a run on this dataset uses unless the user sets them
    #: (``{"deletion": {"steps": 4}}``): settings the dataset's documentation justifies.
    default_options: ClassVar[dict[str, dict[str, Any]]] = {}

    def __init__(self, root: str | Path | None = None, **options: Any) -> None:
        self.root = Path(root) if root is not None else None
        self.options = options

    def __iter__(self) -> Iterator[Sample]:
        raise NotImplementedError

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def fingerprint(self) -> str:
        """A hash of the dataset's files, for provenance."""
        raise NotImplementedError


def load_image(sample: Sample) -> Image.Image:
    """The sample's image as RGB; a missing or unreadable file raises a one-line InputError.

    A reader that met a broken record still yields it, with ``meta["error"]`` saying why.
    """
    if sample.meta.get("error"):
        raise InputError(f"sample {sample.id}: {sample.meta['error']}")
    if isinstance(sample.image, Image.Image):
        return sample.image.convert("RGB")
    path = Path(sample.image)
    if not path.is_file():
        raise InputError(f"sample {sample.id}: image file {path} does not exist")
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except Exception as exc:  # PIL raises several types for truncated or foreign files
        raise InputError(f"sample {sample.id}: cannot read image {path}: {exc}") from exc


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
    if not path.is_file():
        if sample.meta.get("missing_mask") == "zeros":
            return np.zeros(shape, dtype=np.int32)
        raise InputError(f"sample {sample.id}: mask file {path} does not exist")
    try:
        with Image.open(path) as image:
            mask = np.asarray(image)  # palette images give their indices: the labels
    except Exception as exc:
        raise InputError(f"sample {sample.id}: cannot read mask {path}: {exc}") from exc
    if mask.ndim == 3:
        if not (mask[..., :3] == mask[..., :1]).all():
            raise InputError(f"sample {sample.id}: mask {path} is a colour image, expected a "
                             "grayscale label map")
        mask = mask[..., 0]
    return mask.astype(np.int32)
