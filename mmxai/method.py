"""The Method interface: one idea on top of the shared trace.

A method declares what it needs from the shared pass (:class:`~mmxai.trace.Needs`), its
BibTeX, and its options as a dataclass; it implements one verb, :meth:`Method.explain`,
which maps generated tokens to flat image maps laid out like ``trace.image_positions``
(grid after grid, row-major). Reshaping, normalising, resizing and rendering are the core's.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np

from mmxai.options import NoOptions, make_options
from mmxai.trace import Needs, Trace


class Method:
    name: ClassVar[str] = ""
    #: One line for listings.
    summary: ClassVar[str] = ""
    needs: ClassVar[Needs] = Needs()
    #: BibTeX of the paper(s) the method comes from.
    citation: ClassVar[str] = ""
    Options: ClassVar[type] = NoOptions
    version: ClassVar[str] = "1"

    def __init__(self, **options: Any) -> None:
        self.options = make_options("method", self.name, self.Options, options)

    def explain(self, trace: Trace, tokens: Sequence[int]) -> np.ndarray:
        """Maps for generated tokens ``tokens`` (0-based indices): (len(tokens), N_image)."""
        raise NotImplementedError

    def describe_options(self) -> dict[str, Any]:
        return dataclasses.asdict(self.options)

    def __repr__(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in self.describe_options().items())
        return f"{type(self).__name__}({opts})"
