"""The OpenCV calls of TAM's reference evaluation (``eval.py``), for the ``tam-reference``
protocol (:mod:`mmxai.protocols`).

The protocol calls OpenCV itself rather than re-deriving it, so what OpenCV does is what the
reference did, by construction: ``imread`` in grayscale turns a palette PNG into the grey
level of its colours and a 16-bit PNG into its high byte; ``resize`` is OpenCV's
fixed-point bilinear; Otsu keeps OpenCV's tie rules and its level 0 on a constant image.
``cv2`` is imported here only, and only when called: the default protocol never imports it.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from mmxai.errors import InputError


def _cv2() -> Any:
    """The ``cv2`` module, or a one-line ProtocolUnavailable naming the extra."""
    try:
        import cv2
    except ImportError as exc:
        from mmxai.protocols import EXTRA, ProtocolUnavailable

        cause = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise ProtocolUnavailable(f"protocol tam-reference needs OpenCV, which cannot be "
                                  f"imported ({cause}): {EXTRA}") from exc
    return cv2


def require() -> None:
    """Refuse, in one line naming the ``tam-protocol`` extra, if OpenCV cannot be imported."""
    _cv2()


def read_mask(path: str | os.PathLike[str]) -> np.ndarray:
    """The label map at ``path`` as the reference reads it: ``cv2.imread`` in grayscale,
    (H, W) uint8. A file OpenCV cannot read raises a one-line InputError naming it."""
    cv2 = _cv2()
    mask = cv2.imread(os.fspath(path), cv2.IMREAD_GRAYSCALE) if os.path.isfile(path) else None
    if mask is None:
        raise InputError(f"mask file {os.fspath(path)}: OpenCV cannot read it (missing, not a "
                         "regular file, or not an image it decodes)")
    return mask


def resize(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``cv2.resize`` of a uint8 (rows, cols) map to ``size`` = (height, width), bilinear
    (OpenCV's default ``INTER_LINEAR``); uint8 out."""
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 2:
        raise ValueError(f"resize expects a 2-D uint8 map, got {image.ndim}-D {image.dtype}")
    height, width = (int(s) for s in size)
    return _cv2().resize(np.ascontiguousarray(image), (width, height))


def otsu(image: np.ndarray) -> tuple[float, np.ndarray]:
    """OpenCV's Otsu level τ of a uint8 image and its foreground, (H, W) bool: the pixels
    ``cv2.threshold(image, 0, 255, THRESH_BINARY + THRESH_OTSU)`` sets."""
    cv2 = _cv2()
    tau, binary = cv2.threshold(np.ascontiguousarray(image), 0, 255,
                                cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    return float(tau), binary > 0


__all__ = ["otsu", "read_mask", "require", "resize"]
