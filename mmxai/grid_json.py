"""Image grids as JSON records, the ``grids`` member of a saved maps file.

:func:`grid_record` writes one :class:`~mmxai.model.ImageGrid`; :func:`grids_from_json`
reads a list of them back, checked to tile a flat map's columns in order, refusing anything
else in one line (:class:`~mmxai.errors.InputError`).
"""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np

from mmxai.errors import InputError
from mmxai.model import ImageGrid


def grid_record(grid: ImageGrid) -> dict[str, Any]:
    return {"image": int(grid.image), "frame": int(grid.frame),
            "shape": [int(s) for s in grid.shape], "box": [float(b) for b in grid.box],
            "offset": int(grid.offset), "kind": str(grid.kind)}


# -- reading -----------------------------------------------------------------------------------

def check_box(box: Any, where: str) -> tuple[float, float, float, float]:
    """Four finite numbers with x1 > x0 and y1 > y0."""
    try:
        values = tuple(float(b) for b in box)
    except (TypeError, ValueError):
        values = ()
    if len(values) != 4 or not all(math.isfinite(b) for b in values):
        raise InputError(f"{where} is {box!r}, expected four finite numbers (x0, y0, x1, y1)")
    x0, y0, x1, y1 = values
    if x1 <= x0 or y1 <= y0:
        raise InputError(f"{where} is {list(values)}: a box needs x1 > x0 and y1 > y0")
    return values


def _whole(value: Any, least: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= least


def grids_from_json(array: np.ndarray, n_image: int, where: str) -> list[ImageGrid]:
    """The grids of a ``grids`` JSON string, checked to tile ``flat``'s N columns in order."""
    if array.ndim != 0 or array.dtype.kind != "U":
        raise InputError(f"{where}: 'grids' is {array.dtype} of shape {array.shape}, "
                         "expected one JSON string")
    try:
        records = json.loads(str(array[()]))
    except (ValueError, RecursionError) as exc:
        raise InputError(f"{where}: 'grids' is not JSON ({describe_error(exc)})") from exc
    if not isinstance(records, list) or not records:
        raise InputError(f"{where}: 'grids' is not a non-empty list of grids")
    grids, offset = [], 0
    for k, record in enumerate(records):
        at = f"{where}: grid {k}"
        if not isinstance(record, dict):
            raise InputError(f"{at} is not an object")
        missing = [key for key in ("image", "frame", "shape", "box", "offset") if key not in
                   record]
        if missing:
            raise InputError(f"{at} has no {', '.join(missing)}")
        image, frame, shape = record["image"], record["frame"], record["shape"]
        kind = record.get("kind", "image")
        if not (_whole(image, 0) and _whole(frame, 0)):
            raise InputError(f"{at}: image {image!r} and frame {frame!r} must be whole "
                             "numbers >= 0")
        if not (isinstance(shape, list) and len(shape) == 2 and all(_whole(s, 1) for s in
                                                                    shape)):
            raise InputError(f"{at}: shape {shape!r}, expected [rows, cols], each >= 1")
        if not isinstance(kind, str):
            raise InputError(f"{at}: kind {kind!r}, expected a string")
        if record["offset"] != offset or not _whole(record["offset"], 0):
            raise InputError(f"{at}: offset {record['offset']!r}, expected {offset}: grids "
                             "follow each other in 'flat'")
        box = check_box(record["box"], f"{at}: box")
        size = shape[0] * shape[1]
        grids.append(ImageGrid(image, np.arange(offset, offset + size), (shape[0], shape[1]),
                               frame=frame, box=box, kind=kind, offset=offset))
        offset += size
    if offset != n_image:
        raise InputError(f"{where}: the grids cover {offset} cells, 'flat' has {n_image} "
                         "columns")
    return grids


def describe_error(exc: BaseException) -> str:
    """An exception as one line: its type and message."""
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
