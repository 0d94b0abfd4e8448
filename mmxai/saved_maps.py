"""Saved maps: one ``<sample_id>.npz`` per sample, the format maps travel in between tools.

``mmxai compare --save-maps`` and ``mmxai explain --save-maps`` write it
(:func:`save_maps`); ``mmxai score`` reads it (:func:`load_maps`) and scores the maps with
the localisation metrics, so maps made elsewhere (the TAM reference, EAGLE, one's own code)
get the same numbers as mmxai's own. An archive holds:

- ``tokens``: str (n_tokens,), the generated tokens, each decoded on its own WITH its
  leading space (``" cat"``, what :func:`mmxai.words.token_pieces` returns). Raw pieces
  (``"Ġcat"``, ``"▁cat"``) are read too: the word grouping turns the marker into a space.
- ``maps``: (n_tokens, h, w), any h and w: each token's map over the image (or over the
  ``box`` of it), resized to the image by the protocol (:mod:`mmxai.protocols`). float32
  (wider floats are read as float32; any range: the metrics scale a map outside [0, 1]), or
  uint8, the TAM reference's output format, used as is: value v scores as v (it is read as
  v / 255, which the metrics' uint8 quantisation turns back into v exactly).
- ``special`` (optional): bool (n_tokens,), True for special tokens (EOS), which belong to
  no word; default all False.
- ``box`` (optional): float (4,), ``(x0, y0, x1, y1)``, the fractions of the image that
  ``maps`` cover (LLaVA-1.5's centre crop); default the whole image, (0, 0, 1, 1).
- ``flat`` and ``grids`` (optional, together): the exact layout of a model whose maps are
  not one grid of image 0 (LLaVA-NeXT's base and high-res views, InternVL's tiles, several
  images): ``flat`` float32 (n_tokens, N), grid after grid, row-major, and ``grids`` a JSON
  string, a list of ``{"image", "frame", "shape": [rows, cols], "box": [x0, y0, x1, y1],
  "offset", "kind"}`` in that order (``offset``: where the grid starts in ``flat``).
  When present, scores come from them, so maps round-trip exactly; ``maps`` then holds
  image 0 painted with :func:`mmxai.maps.to_image`, for other tools.

A video (one clip, ``ImageGrid(kind="video")`` per temporal patch) has a time axis:

- ``maps``: (n_tokens, T, rows, cols): each token's map on each of the T temporal patches
  (Qwen merges two sampled frames into one), over ``box``;
- ``frames``: int (T, k): the source frame indices temporal patch t covers (k frames a
  patch; a patch padded with its last frame repeats it); required with 4-D ``maps``;
- ``fps`` (optional): float, the source's frames per second (a frame's time is its index
  / fps).

An image's file has no ``frames`` or ``fps``.

No other member is accepted (a misspelt ``special`` would otherwise be ignored without a
word), and nothing is ever unpickled. The file name is the sample id, percent-encoded where
a character is not safe in a file name (:func:`maps_path`): ``a/b`` -> ``a%2Fb.npz``.
"""

from __future__ import annotations

import json
import os
import tempfile
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mmxai.errors import InputError, MMXAIError
from mmxai.grid_json import describe_error, grid_record, grids_from_json
from mmxai.maps import to_image
from mmxai.model import ImageGrid
from mmxai.saved_members import (
    WHOLE_IMAGE,
    box_member,
    flat_member,
    image_maps_member,
    special_member,
    tokens_member,
    video_arrays,
    video_members,
)

SUFFIX = ".npz"
#: Besides letters and digits, the characters a file name keeps as they are (safe on
#: Linux, macOS and Windows); anything else is percent-encoded.
SAFE = "-_.~+=,@"
#: Longest side of ``maps`` when it is painted from several grids (LLaVA-NeXT, InternVL).
PAINTED_SIDE = 256
MEMBERS = ("tokens", "maps", "special", "box", "flat", "grids", "frames", "fps")
#: The most one maps file may unpack to (a compressed archive could claim terabytes).
MAX_BYTES = 4 * 2**30
_ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")
_NPY_MAGIC = b"\x93NUMPY"


@dataclass(frozen=True)
class SavedMaps:
    """One sample's saved maps, as the localisation metrics read them.

    ``maps`` are flat, (n_tokens, N) float32, laid out like ``grids`` (rebuilt as
    :class:`~mmxai.model.ImageGrid`; their ``positions`` are the flat indices, a saved map
    knows no sequence positions). ``special[i]``: token ``i`` is a special token. A video's:
    ``grids`` one per temporal patch (``kind="video"``, ``frame=t``), ``frames`` (T, k) the
    source frame indices each covers, ``fps`` the source's rate (None: not saved).
    """

    path: Path
    tokens: list[str]
    special: list[bool]
    maps: np.ndarray
    grids: list[ImageGrid]
    frames: np.ndarray | None = None
    fps: float | None = None

    @property
    def n_tokens(self) -> int:
        return len(self.tokens)


# -- file names --------------------------------------------------------------------------------
def maps_path(folder: str | Path, sample_id: str) -> Path:
    """``folder/<sample_id>.npz``, the id percent-encoded where a character is not safe in a
    file name (``/``, ``:``, ``[``, spaces, non-ASCII...; a leading ``.`` too, so no file
    is hidden). :func:`sample_id_of` reads the id back."""
    if not isinstance(sample_id, str) or not sample_id:
        raise InputError(f"sample id {sample_id!r}: expected a non-empty string")
    name = urllib.parse.quote(sample_id, safe=SAFE, errors="surrogatepass")
    if name.startswith("."):
        name = "%2E" + name[1:]
    name += SUFFIX
    if len(name.encode()) > 255:
        raise InputError(f"sample {sample_id}: its maps file name would be "
                         f"{len(name.encode())} bytes, more than file systems allow (255)")
    return Path(folder) / name


def sample_id_of(path: str | Path) -> str:
    """The sample id a maps file's name stands for (:func:`maps_path` read back)."""
    name = Path(path).name
    if name.lower().endswith(SUFFIX):
        name = name[:-len(SUFFIX)]
    return urllib.parse.unquote(name, errors="surrogatepass")


# -- writing -----------------------------------------------------------------------------------
def save_maps(folder: str | Path, sample_id: str, tokens: Sequence[str],
              special: Sequence[bool], flat_maps: np.ndarray,
              grids: Sequence[ImageGrid], frames: np.ndarray | None = None,
              fps: float | None = None) -> Path:
    """Write one sample's maps to ``folder/<sample_id>.npz`` (:func:`maps_path`); its path.

    ``flat_maps``: (n_tokens, N) over ``grids``, as methods return them; ``tokens`` and
    ``special`` as :func:`mmxai.words.token_pieces` gives them for the generated ids. With
    one grid, of image 0, ``maps`` is that grid, (n_tokens, rows, cols), and ``box`` its
    box. Any other layout also writes ``flat`` and ``grids`` (the exact layout, which
    :func:`load_maps` then uses), and ``maps`` is image 0 painted at most
    :data:`PAINTED_SIDE` pixels a side, or image 0's lone grid when it has one: the other
    images' grids are in ``flat`` only. A clip's grids (one per temporal patch) give
    ``maps`` (n_tokens, T, rows, cols) with ``frames`` (T, k), the source frame indices
    each patch covers, and the source's ``fps``. The file is written whole or not at all (a
    temporary file renamed), replacing one of the same name.
    """
    flat = np.asarray(flat_maps, dtype=np.float32)
    grids = list(grids)
    path = maps_path(folder, sample_id)
    _check_layout(sample_id, tokens, special, flat, grids)
    n = flat.shape[0]
    own = [g for g in grids if g.image == 0 and g.frame == 0]
    arrays: dict[str, np.ndarray] = {"tokens": np.asarray(list(tokens), dtype=str).reshape(n),
                                     "special": np.asarray(list(special), dtype=bool)}
    if any(g.kind == "video" for g in grids):
        arrays.update(video_arrays(sample_id, flat, grids, frames, fps))
    elif len(own) == 1:
        grid = own[0]
        arrays["maps"] = flat[:, grid.offset:grid.offset + grid.size].reshape(n, *grid.shape)
        arrays["box"] = np.asarray(grid.box, dtype=np.float64)
    else:
        size = painted_size(own)
        arrays["maps"] = np.stack([to_image(row, grids, 0, size) for row in flat]) if n \
            else np.zeros((0, *size), dtype=np.float32)
        arrays["box"] = np.asarray(WHOLE_IMAGE, dtype=np.float64)
    lone = len(grids) == 1 and len(own) == 1 and own[0].offset == 0 and own[0].kind == "image"
    if not lone and "frames" not in arrays:
        arrays["flat"] = flat
        arrays["grids"] = np.asarray(json.dumps([grid_record(g) for g in grids]))
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=".saving-", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as fh:
            np.savez_compressed(fh, **arrays)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


def _check_layout(sample_id: str, tokens: Sequence[str], special: Sequence[bool],
                  flat: np.ndarray, grids: Sequence[ImageGrid]) -> None:
    """What :func:`save_maps` is given fits together, else one line naming the sample."""
    where = f"sample {sample_id}: cannot save maps"
    if not grids:
        raise MMXAIError(f"{where}: no image grid")
    if flat.ndim != 2:
        raise MMXAIError(f"{where}: maps of shape {flat.shape}, expected (n_tokens, N)")
    n_image = sum(g.size for g in grids)
    if flat.shape[1] != n_image:
        raise MMXAIError(f"{where}: maps have {flat.shape[1]} columns, the grids "
                         f"{n_image} cells")
    if not len(tokens) == len(special) == flat.shape[0]:
        raise MMXAIError(f"{where}: {len(tokens)} tokens, {len(special)} special flags and "
                         f"{flat.shape[0]} maps")
    if not all(isinstance(t, str) for t in tokens):
        raise MMXAIError(f"{where}: tokens must be strings")
    if not np.isfinite(flat).all():
        raise MMXAIError(f"{where}: maps hold NaN or infinite values")


def save_trace_maps(folder: str | Path, sample_id: str, trace: Any, flat_maps: np.ndarray,
                    tokens: Sequence[int] | None = None) -> Path:
    """:func:`save_maps` of a trace's maps: the generated tokens decoded once per trace (kept
    in ``trace.cache``, so every method's file reuses them), ``tokens`` the rows of
    ``flat_maps`` (None: every generated token)."""
    from mmxai.words import token_pieces

    if "token_pieces" not in trace.cache:
        trace.cache["token_pieces"] = token_pieces(trace.model.tokenizer,
                                                   trace.generated_ids.tolist())
    pieces, special = trace.cache["token_pieces"]
    rows = range(len(pieces)) if tokens is None else tokens
    clips = getattr(trace.inputs, "clips", None) or {}
    frames = fps = None
    if clips:  # a clip's time axis: the source frames of each temporal patch
        from mmxai.viewer_video import patch_sources

        clip = next(iter(clips.values()))
        frames, fps = patch_sources(clip), clip.fps
    return save_maps(folder, sample_id, [pieces[t] for t in rows], [special[t] for t in rows],
                     flat_maps, trace.grids, frames, fps)


def painted_size(grids: Sequence[ImageGrid]) -> tuple[int, int]:
    """(height, width) to paint image 0 at: its finest grid's resolution over the whole
    image, at most :data:`PAINTED_SIDE` on the longer side (1x1 without a grid)."""
    rows = cols = 1.0
    for grid in grids:
        x0, y0, x1, y1 = grid.box
        rows = max(rows, grid.shape[0] / max(y1 - y0, 1e-6))
        cols = max(cols, grid.shape[1] / max(x1 - x0, 1e-6))
    scale = min(1.0, PAINTED_SIDE / max(rows, cols))
    return max(1, round(rows * scale)), max(1, round(cols * scale))


def load_maps(path: str | Path) -> SavedMaps:
    """Read and check one maps file; anything wrong is an :class:`InputError`, one line
    naming the file and the cause. Never unpickles."""
    path = Path(path)
    where = f"maps file {path}"
    _check_magic(path, where)
    try:
        archive = np.load(path, allow_pickle=False)
    except Exception as exc:  # zipfile, zlib and numpy each raise their own types
        raise InputError(f"{where}: not a readable npz archive ({describe_error(exc)})") from exc
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise InputError(f"{where}: a single .npy array, expected an npz archive with "
                         "tokens and maps")
    with archive:
        members = list(archive.files)
        size = sum(info.file_size for info in archive.zip.infolist())
        if size > MAX_BYTES:
            raise InputError(f"{where}: its arrays unpack to {size / 2**30:.1f} GiB, more than "
                             f"the {MAX_BYTES / 2**30:.0f} GiB mmxai reads from one maps file")
        unknown = [m for m in members if m not in MEMBERS]
        if unknown:
            raise InputError(f"{where}: unknown member(s) {', '.join(map(repr, unknown))}; a "
                             f"maps file holds {', '.join(MEMBERS)}")
        for needed in ("tokens", "maps"):
            if needed not in members:
                held = ", ".join(members) or "nothing"
                raise InputError(f"{where}: no {needed!r} array (it holds {held})")
        arrays = {name: _member(archive, name, where) for name in members}
    tokens = tokens_member(arrays["tokens"], where)
    n = len(tokens)
    if arrays["maps"].ndim == 4 or "frames" in arrays or "fps" in arrays:
        if "flat" in arrays or "grids" in arrays:
            raise InputError(f"{where}: a video's maps hold their layout; 'flat' and 'grids' "
                             "are for images")
        flat, grids, frames, fps = video_members(arrays, n, where)
        return SavedMaps(path, tokens, special_member(arrays.get("special"), n, where),
                         np.ascontiguousarray(flat), grids, frames, fps)
    image_maps = image_maps_member(arrays["maps"], n, where)
    special = special_member(arrays.get("special"), n, where)
    box = box_member(arrays.get("box"), where)
    if ("flat" in arrays) != ("grids" in arrays):
        given, missing = ("flat", "grids") if "flat" in arrays else ("grids", "flat")
        raise InputError(f"{where}: has {given!r} but no {missing!r}; the exact layout needs "
                         "both")
    if "flat" in arrays:
        flat = flat_member(arrays["flat"], n, where)
        grids = grids_from_json(arrays["grids"], flat.shape[1], where)
    else:
        rows, cols = image_maps.shape[1:]
        flat = image_maps.reshape(n, rows * cols)
        grids = [ImageGrid(0, np.arange(rows * cols), (rows, cols), box=box)]
    return SavedMaps(path, tokens, special, np.ascontiguousarray(flat), grids)


def _check_magic(path: Path, where: str) -> None:
    """A zip file (an npz archive) or refused; read before numpy sees the file, so nothing
    that is not one (a pickle above all) is handed to ``np.load``."""
    if not path.exists():
        raise InputError(f"{where}: does not exist")
    if not path.is_file():  # a folder, or a FIFO that would block the read
        raise InputError(f"{where}: not a regular file")
    try:
        with open(path, "rb") as fh:
            head = fh.read(len(_NPY_MAGIC))
    except OSError as exc:
        raise InputError(f"{where}: cannot be read ({exc.strerror or exc})") from exc
    if head.startswith(_NPY_MAGIC):
        raise InputError(f"{where}: a single .npy array, expected an npz archive with tokens "
                         "and maps")
    if not head.startswith(_ZIP_MAGIC):
        what = "an empty file" if not head else "it does not start like a zip file"
        raise InputError(f"{where}: not an npz archive ({what})")


def _member(archive: Any, name: str, where: str) -> np.ndarray:
    try:
        return archive[name]
    except ValueError as exc:
        if "allow_pickle" in str(exc):
            raise InputError(f"{where}: {name!r} is an object array, which only pickle can "
                             "read, and mmxai never unpickles; save strings as a str array "
                             "(np.asarray(tokens, dtype=str)) and numbers as numbers") from exc
        raise InputError(f"{where}: {name!r} cannot be read ({describe_error(exc)})") from exc
    except Exception as exc:  # a corrupt member: zipfile, zlib, EOF
        raise InputError(f"{where}: {name!r} cannot be read ({describe_error(exc)})") from exc


__all__ = ["MEMBERS", "PAINTED_SIDE", "SavedMaps", "load_maps", "maps_path", "painted_size",
           "sample_id_of", "save_maps", "save_trace_maps"]
