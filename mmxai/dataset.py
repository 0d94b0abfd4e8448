"""The Dataset interface: samples with an image, a prompt and (optionally) ground truth."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from PIL import Image


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
