"""The members of a saved maps file (:mod:`mmxai.saved_maps`), each checked on reading,
anything wrong one :class:`~mmxai.errors.InputError` line naming the file; and a video's
members (4-D ``maps``, ``frames``, ``fps``), written and read.
"""

from __future__ import annotations

import numpy as np

from mmxai.errors import InputError, MMXAIError
from mmxai.grid_json import check_box
from mmxai.model import ImageGrid

WHOLE_IMAGE = (0.0, 0.0, 1.0, 1.0)


def tokens_member(array: np.ndarray, where: str) -> list[str]:
    if array.ndim != 1:
        raise InputError(f"{where}: 'tokens' has shape {array.shape}, expected (n_tokens,)")
    if array.dtype.kind != "U" and array.size:
        raise InputError(f"{where}: 'tokens' holds {array.dtype} values, expected strings "
                         "(np.asarray(tokens, dtype=str))")
    return [str(t) for t in array.tolist()]


def float_member(array: np.ndarray, name: str, where: str) -> np.ndarray:
    """``array`` as float32, refused if a value is NaN or infinite (before or after)."""
    if array.dtype.kind == "u" and array.dtype.itemsize == 1:
        return array.astype(np.float32) / np.float32(255)
    if array.dtype.kind != "f":
        raise InputError(f"{where}: {name!r} holds {array.dtype} values, expected float32 "
                         "(or uint8, as the TAM reference writes)")
    values = array.astype(np.float32)
    bad = ~np.isfinite(values)
    if bad.any():
        token = int(np.argwhere(bad)[0][0])
        raise InputError(f"{where}: {name!r} holds {int(bad.sum())} NaN or infinite "
                         f"value(s) as float32, the first in the map of token {token}")
    return values


def image_maps_member(array: np.ndarray, n: int, where: str) -> np.ndarray:
    if array.ndim != 3:
        raise InputError(f"{where}: 'maps' has shape {array.shape}, expected (n_tokens, h, w)")
    if array.shape[0] != n:
        raise InputError(f"{where}: {array.shape[0]} maps for {n} tokens")
    if 0 in array.shape[1:]:
        raise InputError(f"{where}: 'maps' has shape {array.shape}: a map needs h, w >= 1")
    return float_member(array, "maps", where)


def flat_member(array: np.ndarray, n: int, where: str) -> np.ndarray:
    if array.ndim != 2:
        raise InputError(f"{where}: 'flat' has shape {array.shape}, expected (n_tokens, N)")
    if array.shape[0] != n:
        raise InputError(f"{where}: 'flat' holds {array.shape[0]} maps for {n} tokens")
    if array.dtype.kind != "f":
        raise InputError(f"{where}: 'flat' holds {array.dtype} values, expected float32")
    return float_member(array, "flat", where)


def special_member(array: np.ndarray | None, n: int, where: str) -> list[bool]:
    if array is None:
        return [False] * n
    if array.shape != (n,):
        raise InputError(f"{where}: 'special' has shape {array.shape}, expected ({n},), one "
                         "flag per token")
    if array.dtype.kind != "b":
        if array.dtype.kind not in "iu" or not np.isin(array, (0, 1)).all():
            raise InputError(f"{where}: 'special' holds {array.dtype} values, expected bool")
    return [bool(s) for s in array.tolist()]


def box_member(array: np.ndarray | None, where: str) -> tuple[float, float, float, float]:
    if array is None:
        return WHOLE_IMAGE
    if array.shape != (4,) or array.dtype.kind not in "fiu":
        raise InputError(f"{where}: 'box' is {array.dtype} of shape {array.shape}, expected "
                         "four numbers (x0, y0, x1, y1)")
    return check_box(array.tolist(), f"{where}: 'box'")


def video_arrays(sample_id: str, flat: np.ndarray, grids: list[ImageGrid],
                  frames: np.ndarray | None, fps: float | None) -> dict[str, np.ndarray]:
    """``maps`` (n, T, rows, cols), ``box``, ``frames`` and ``fps`` of one clip's grids, or
    one line why these grids are not one clip's temporal patches in order."""
    where = f"sample {sample_id}: cannot save maps"
    shape, n = grids[0].shape, flat.shape[0]
    if [(g.kind, g.image, g.frame, g.shape, g.box) for g in grids] != [
            ("video", 0, t, shape, grids[0].box) for t in range(len(grids))]:
        raise MMXAIError(f"{where}: a video's grids must be one clip's temporal patches in "
                         "order, of one shape (no images, no second clip)")
    frames = None if frames is None else np.asarray(frames)
    if frames is None or frames.ndim != 2 or frames.shape[0] != len(grids) \
            or frames.dtype.kind not in "iu":
        raise MMXAIError(f"{where}: a video's maps need the source frames of each of its "
                         f"{len(grids)} temporal patches, (T, k) whole numbers")
    arrays = {"maps": flat.reshape(n, len(grids), *shape),
              "box": np.asarray(grids[0].box, dtype=np.float64),
              "frames": frames.astype(np.int64)}
    if fps is not None:
        arrays["fps"] = np.asarray(float(fps))
    return arrays


def video_members(arrays: dict[str, np.ndarray], n: int, where: str
                  ) -> tuple[np.ndarray, list[ImageGrid], np.ndarray, float | None]:
    """A video's members read back: flat maps (n, T * rows * cols), one grid per temporal
    patch (``kind="video"``, ``frame=t``, over ``box``), ``frames`` (T, k) and ``fps``."""
    maps = arrays["maps"]
    if maps.ndim != 4:
        raise InputError(f"{where}: 'frames' or 'fps' belong to a video's maps, (n_tokens, T, "
                         f"rows, cols); 'maps' has shape {maps.shape}")
    if maps.shape[0] != n:
        raise InputError(f"{where}: {maps.shape[0]} maps for {n} tokens")
    if 0 in maps.shape[1:]:
        raise InputError(f"{where}: 'maps' has shape {maps.shape}: a video's map needs T, "
                         "rows, cols >= 1")
    t, rows, cols = maps.shape[1:]
    frames = arrays.get("frames")
    if frames is None:
        raise InputError(f"{where}: 4-D 'maps' (a video's) without 'frames', the source "
                         "frames each temporal patch covers")
    if frames.ndim != 2 or frames.shape[0] != t or frames.shape[1] < 1 or \
            frames.dtype.kind not in "iu" or (frames < 0).any():
        raise InputError(f"{where}: 'frames' is {frames.dtype} of shape {frames.shape}, "
                         f"expected ({t}, k) frame indices >= 0, a row per temporal patch")
    fps = arrays.get("fps")
    if fps is not None:
        if fps.shape != () or fps.dtype.kind not in "fiu" or not np.isfinite(fps) or fps <= 0:
            raise InputError(f"{where}: 'fps' is {fps.dtype} of shape {fps.shape}, expected "
                             "one number of frames per second above 0")
        fps = float(fps)
    box = box_member(arrays.get("box"), where)
    size = rows * cols
    grids = [ImageGrid(0, np.arange(k * size, (k + 1) * size), (rows, cols), frame=k, box=box,
                       kind="video", offset=k * size) for k in range(t)]
    flat = float_member(maps, "maps", where).reshape(n, t * size)
    return flat, grids, frames.astype(np.int64), fps
