"""The one image reader: every image mmxai reads goes through :func:`read_image`, every label
map through :func:`read_label_map`. Either returns exactly what the file (or PIL image)
holds, turned upright and converted by a stated rule, or raises one
:class:`~mmxai.errors.InputError` line naming the sample or file and the cause.

Files. The path is checked with ``os.stat`` before anything opens it: a missing file, a
dangling symbolic link, a directory, a named pipe (FIFO), a device, a socket and an empty
file are refused at once (a FIFO is never read, so nothing blocks); so is a virtual file of
the kernel (``/proc``, ``/sys``: regular files whose size says nothing of their content),
and a file whose size reads 0 but which yields data is named a virtual file, not an empty
one. The file is then opened non-blocking and checked again on the open descriptor, so a
path swapped for a FIFO in between is refused too. A file PIL cannot identify or decode
(not an image, truncated, corrupt) is refused with PIL's reason.

Decompression bombs. An image with more pixels than ``PIL.Image.MAX_IMAGE_PIXELS`` is refused
before it is decoded (PIL's ``DecompressionBombWarning`` is an error here, as is its
``DecompressionBombError``); raise the limit for trusted large files. Images handed over as
PIL objects are already decoded and are not checked.

Orientation. The EXIF orientation (``PIL.ImageOps.exif_transpose``) is applied to every image,
from a file or handed over as a PIL object, so the model sees the photo upright, as viewers
show it and as ``transformers.image_utils.load_image`` and ``cv2.imread`` (TAM's reference)
read it. A label map is transposed by its own orientation tag when it carries one (the tag
says how its pixels were stored, exactly as for the image); most masks carry none and are
taken as they are stored, i.e. drawn on the upright image. Annotations drawn on the raw,
un-rotated pixels of a rotated photo do not line up: for a 90° rotation of a non-square image
the size check of :func:`mmxai.dataset.load_mask` refuses the pair, a 180° one cannot be
detected.

Shape. A side of 0, or a long side more than 200 times the short side (the limit Qwen2-VL's
processor enforces), is refused with the ratio. Tiny images (1×1, 2×300) are accepted: every
bundled family's processor resizes them without error and with the right colours.

Frames: an animation (GIF, WebP, APNG, TIFF of several frames) is a clip (:mod:`mmxai.video`),
refused here, never cut to frame 0; an MPO (a camera JPEG with a preview) is its frame 0.

Modes, to RGB (8 bits per channel).

- ``RGB``: as is. ``1``, ``L``: grey to RGB (``1`` is 0 or 255). ``RGBX``: padding dropped.
- ``CMYK``, ``YCbCr``, ``LAB``, ``HSV``: PIL's conversion (LAB through its D65 Lab→sRGB
  transform; CMYK by PIL's plain formula). Embedded ICC profiles are not applied, for
  CMYK or any mode: neither the Hugging Face processors nor TAM's reference apply them, and
  the maps must explain what the model sees.
- Transparency (``RGBA``, ``LA``, ``PA``, ``RGBa``, ``La``, a ``P`` palette with transparent
  entries, a tRNS colour key on ``L``/``RGB``/16-bit grey): composited on WHITE. This is what
  the Hugging Face processors do (``transformers.image_transforms.convert_to_rgb``) to an
  image with transparency, i.e. what a user of the model card gets, and what a viewer shows
  on a white page. Dropping alpha (``Image.convert("RGB")``, cv2) would show the model
  whatever colours hide under transparent pixels, often black. TAM's reference drops alpha;
  its datasets (COCO, GranDf, OpenPSG JPEGs) have none, so its numbers are unaffected.
- ``P`` without transparency: its palette colours.
- ``I;16``, ``I;16L``, ``I;16B``, ``I;16N`` (16-bit grey, e.g. 16-bit PNG/TIFF): scaled from
  0..65535 to 0..255 with rounding (65535 → 255, 32768 → 128). PIL's own conversion clips
  them to white. 16-bit RGB(A) PNGs come from PIL already reduced to 8 bits.
- ``I`` (32-bit signed int): the file does not say which bit depth its values use. Values in
  0..65535 whose maximum is above 255 are read as 16-bit (scaled as above); all zeros is
  black. Values up to 255 (an 8-bit image put in a 32-bit container, or a very dark 16-bit
  one: the two readings differ by a factor of 257) and negative or larger values are refused,
  naming the range; convert such data to ``L`` or ``I;16`` yourself.
- ``F`` (32-bit float): values in [0, 1] are intensities, scaled to 0..255 with rounding.
  NaN or infinite values, or values outside [0, 1], are refused naming the range (no min-max
  stretching: it would invent a contrast the data may not have).
- Anything else (``I;16S``, ``BGR;24``, ...): refused, naming the mode.

Label maps (:func:`read_label_map`) return integer labels, never scaled: palette PNGs give
their indices (``P``, ``PA``), ``L`` and ``1`` their values, 16-bit and 32-bit grey their
integer values, ``F`` its values if all are whole numbers. Alpha carries no label and is
ignored. Grey stored as ``RGB``/``RGBA``/``RGBX`` (three equal bands) gives that band; a
colour image is refused, as are ``CMYK``, ``YCbCr``, ``LAB``, ``HSV``.

Error lines read ``{what}: {cause}``. ``what`` names the sample or the file (``"sample 12"``,
``"image 'x.jpg'"``); when it does not name the file, pass ``name`` (``"image file
/data/x.jpg"``) and the cause names it.
"""

from __future__ import annotations

import os
import re
import stat
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from mmxai.errors import InputError

#: The most the long side of an image may exceed its short side (Qwen2-VL's ``smart_resize``).
MAX_ASPECT_RATIO = 200

#: Modes holding 16-bit grey values.
SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N")
#: Modes PIL converts to RGB faithfully (no alpha, 8 bits per channel).
DIRECT = ("RGB", "1", "L", "P", "RGBX", "CMYK", "YCbCr", "LAB", "HSV")
#: Modes with an alpha band (``a``: premultiplied).
ALPHA = ("RGBA", "LA", "PA", "RGBa", "La")

ImageSource = str | os.PathLike | Image.Image


class _Say:
    """The error lines of one read: ``what`` names the sample or file, ``name`` the file."""

    def __init__(self, what: str, name: str | None) -> None:
        self.what, self.name = what, name

    def missing(self) -> InputError:
        return InputError(f"{self.what}: {self.name} does not exist" if self.name
                          else f"{self.what}: file not found")

    def unreadable(self, detail: str) -> InputError:
        detail = " ".join(str(detail).split()) or "unknown error"
        return InputError(f"{self.what}: cannot read {self.name}: {detail}" if self.name
                          else f"{self.what}: cannot be read as an image ({detail})")

    def refused(self, detail: str) -> InputError:
        return InputError(f"{self.what}: {self.name}: {detail}" if self.name
                          else f"{self.what}: {detail}")


def read_image(source: ImageSource, what: str, *, name: str | None = None) -> Image.Image:
    """``source`` (a path or a PIL image) as an upright RGB image, or a one-line InputError.

    ``what`` starts the error line (``"sample 12"``, ``"image 'x.jpg'"``); ``name`` is how the
    line names the file when ``what`` does not (``"image file data/x.jpg"``). The rules (modes,
    alpha, EXIF, limits) are in the module's docstring. A PIL image given is never modified.
    """
    say = _Say(what, name)
    if isinstance(source, Image.Image):
        try:
            source.load()
        except Exception as exc:  # a lazily opened, truncated file, say
            raise say.unreadable(exc) from exc
        _check_shape(source, say)
        return to_rgb(_upright(source, say), say)
    image = _open(Path(source), say, shape=True)
    return to_rgb(image, say)


def read_label_map(source: str | os.PathLike, what: str, *,
                   name: str | None = None) -> np.ndarray:
    """The label map in file ``source`` as (height, width) int32 labels, or an InputError.

    Turned by the file's own EXIF orientation if it has one; values are kept, never scaled
    (see the module's docstring for each mode).
    """
    say = _Say(what, name)
    image = _open(Path(source), say, shape=False)
    return labels_of(image, say)


# -- files ----------------------------------------------------------------------------------------
def _special(mode: int) -> str | None:
    """What a non-regular file is, in words; None for a regular file."""
    if stat.S_ISREG(mode):
        return None
    for test, words in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a named pipe (FIFO)"),
                        (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                        (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return words
    return "a special file"


def _check_file(path: Path, say: _Say) -> None:
    """Refuse, without opening it, a path that is not a non-empty regular file."""
    try:
        info = os.stat(path)
    except (FileNotFoundError, NotADirectoryError) as exc:
        if os.path.islink(path):
            try:
                target = os.readlink(path)
            except OSError:
                target = "?"
            raise say.refused(f"a dangling symbolic link (to {target!s}, which does not "
                              "exist)") from exc
        raise say.missing() from exc
    except OSError as exc:  # permission denied on a folder, a symlink loop, a name too long
        raise say.refused(exc.strerror or str(exc)) from exc
    kind = _special(info.st_mode)
    if kind:
        raise say.refused(f"{kind}, not an image file")
    virtual = _kernel_file(info.st_dev)
    if virtual:
        raise say.refused(f"a virtual file ({virtual}), not an image file")
    if info.st_size == 0:
        # Pseudo-files (procfs, sysfs, debugfs, cgroup, some FUSE) report 0 bytes whatever
        # they hold: one byte read (non-blocking, from a regular file) tells them apart.
        try:
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
            try:
                content = os.read(fd, 1)
            finally:
                os.close(fd)
        except OSError as exc:
            raise say.unreadable(exc.strerror or exc) from exc
        if content:
            raise say.refused("a virtual file (its size reads 0 bytes, yet reading it gives "
                              "data), not an image file")
        raise say.refused("an empty file (0 bytes)")


def _kernel_file(device: int) -> str | None:
    """Which of the kernel's virtual file systems holds a file on ``device``, or None.

    Probed through paths only a mounted procfs or sysfs has, on a device other than the root
    file system's: a bare ``/proc`` folder (a chroot, a build container) is not procfs."""
    try:
        root = os.stat("/").st_dev
    except OSError:
        return None
    for probe, words in (("/proc/self", "procfs, under /proc"),
                         ("/sys/kernel", "sysfs, under /sys")):
        try:
            found = os.stat(probe).st_dev
        except OSError:  # not mounted, or no such file system here (macOS, Windows)
            continue
        if found == device and found != root:
            return words
    return None


def _open(path: Path, say: _Say, *, shape: bool) -> Image.Image:
    """The decoded, upright image in ``path`` (frame 0), checked before decoding."""
    _check_file(path, say)
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        raise say.refused(exc.strerror or str(exc)) from exc
    try:
        kind = _special(os.fstat(fd).st_mode)  # the path may have changed since the check
        if kind:
            raise say.refused(f"{kind}, not an image file")
        with os.fdopen(fd, "rb") as handle:
            fd = -1  # the file object closes it now
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                try:
                    image = Image.open(handle)
                except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
                    raise _bomb(say, _pixels_in(str(exc))) from exc
                except UnidentifiedImageError as exc:  # its message names the file handle
                    raise say.unreadable("not in an image format PIL recognises") from exc
                except Exception as exc:  # PIL raises many types for foreign or broken files
                    raise say.unreadable(exc) from exc
                limit = Image.MAX_IMAGE_PIXELS
                width, height = image.size
                if limit and width * height > limit:  # in case a warning filter let it by
                    raise _bomb(say, width * height)
                if shape:
                    _check_shape(image, say)
                try:
                    image.load()
                    return _upright(image, say)
                except InputError:
                    raise
                except Exception as exc:
                    raise say.unreadable(exc) from exc
    finally:
        if fd >= 0:
            os.close(fd)


def _pixels_in(message: str) -> int | None:
    found = re.search(r"\((\d+) pixels\)", message)
    return int(found.group(1)) if found else None


def _bomb(say: _Say, pixels: int | None) -> InputError:
    count = f"{pixels:,} pixels" if pixels is not None else "its pixel count"
    return say.refused(f"{count} exceeds the limit of {Image.MAX_IMAGE_PIXELS:,} pixels against "
                       "decompression bombs (PIL.Image.MAX_IMAGE_PIXELS; raise it for a trusted "
                       "file)")


def _upright(image: Image.Image, say: _Say) -> Image.Image:
    """A copy of ``image`` turned by its EXIF orientation (a plain copy without one)."""
    try:
        return ImageOps.exif_transpose(image)
    except Exception as exc:  # a corrupt EXIF block
        raise say.refused(f"unreadable EXIF orientation ({' '.join(str(exc).split())})") from exc


def _check_shape(image: Image.Image, say: _Say) -> None:
    from mmxai.video import check_still  # mmxai.video reads its frames through this module
    check_still(image, say.refused)
    width, height = image.size
    if width <= 0 or height <= 0:
        raise say.refused(f"{width}×{height} pixels: an image needs both sides of at least 1")
    ratio = max(width, height) / min(width, height)
    if ratio > MAX_ASPECT_RATIO:
        raise say.refused(f"{width}×{height} pixels: aspect ratio {ratio:g}:1 exceeds "
                          f"{MAX_ASPECT_RATIO}:1, the most Qwen2-VL's processor accepts")


# -- pixels ---------------------------------------------------------------------------------------
def _has_transparency(image: Image.Image) -> bool:
    """PIL's ``has_transparency_data`` (Pillow >= 10.1), written out for Pillow 10.0."""
    return (any(band in ("A", "a") for band in image.getbands())
            or "transparency" in image.info
            or (image.mode == "P" and image.palette is not None
                and image.palette.mode == "RGBA"))


def _on_white(image: Image.Image) -> Image.Image:
    """``image`` composited on white, as ``transformers``' ``convert_to_rgb`` does."""
    if image.mode == "La":
        image = image.convert("LA")  # PIL converts La to LA only
    rgba = image.convert("RGBA")
    background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(background, rgba).convert("RGB")


def _grey_to_rgb(values: np.ndarray) -> Image.Image:
    return Image.fromarray(np.repeat(values[..., None], 3, axis=2), "RGB")


def _from_16_bit(values: np.ndarray) -> np.ndarray:
    """0..65535 to 0..255, rounding half up: v / 257."""
    wide = values.astype(np.uint32)
    return ((2 * wide + 257) // 514).astype(np.uint8)


def to_rgb(image: Image.Image, say: _Say | str) -> Image.Image:
    """``image`` (decoded) as RGB by the module's rules, or an InputError naming the mode."""
    if isinstance(say, str):
        say = _Say(say, None)
    mode = image.mode
    if mode == "RGB" and "transparency" not in image.info:
        return image
    if mode in SIXTEEN_BIT or mode in ("I", "F"):
        values = np.asarray(image)
        if mode in SIXTEEN_BIT:
            grey = _from_16_bit(values)
        elif mode == "I":
            grey = _from_int32(values, say)
        else:
            grey = _from_float(values, say)
        key = image.info.get("transparency")
        if isinstance(key, int) and not isinstance(key, bool):  # tRNS grey key: white
            grey = np.where(values == key, np.uint8(255), grey)
        return _grey_to_rgb(grey)
    if mode in ALPHA or (mode in DIRECT and _has_transparency(image)):
        return _on_white(image)
    if mode in DIRECT:
        return image.convert("RGB")
    raise say.refused(f"image mode {mode!r} is not supported (supported: "
                      f"{', '.join(DIRECT + ALPHA + SIXTEEN_BIT + ('I', 'F'))})")


def _from_int32(values: np.ndarray, say: _Say) -> np.ndarray:
    low, high = int(values.min()), int(values.max())
    if low < 0 or high > 65535:
        raise say.refused(f"32-bit integer image with values {low}..{high}: its bit depth is "
                          "unknown (only 0..65535, read as 16-bit, is accepted)")
    if 0 < high <= 255:
        raise say.refused(f"32-bit integer image with values {low}..{high}: 8-bit or a very "
                          "dark 16-bit image? Convert it to mode 'L' (8-bit) or 'I;16' (16-bit)")
    return _from_16_bit(values)


def _from_float(values: np.ndarray, say: _Say) -> np.ndarray:
    if not np.isfinite(values).all():
        raise say.refused("floating-point image with NaN or infinite values")
    low, high = float(values.min()), float(values.max())
    if low < 0.0 or high > 1.0:
        raise say.refused(f"floating-point image with values {low:g}..{high:g}: expected "
                          "intensities in 0..1")
    return np.floor(values.astype(np.float64) * 255.0 + 0.5).astype(np.uint8)


def labels_of(image: Image.Image, say: _Say | str) -> np.ndarray:
    """The integer labels of a decoded label-map image, (height, width) int32."""
    if isinstance(say, str):
        say = _Say(say, None)
    mode = image.mode
    if mode in ("1", "L", "P", "I") or mode in SIXTEEN_BIT:
        return np.asarray(image).astype(np.int32)
    if mode in ("LA", "PA"):  # alpha is no label
        return np.asarray(image)[..., 0].astype(np.int32)
    if mode == "F":
        values = np.asarray(image)
        if not np.isfinite(values).all() or (values != np.round(values)).any():
            raise say.refused("floating-point label map with values that are not whole "
                              "numbers")
        if values.size and (values.min() < np.iinfo(np.int32).min
                            or values.max() > np.iinfo(np.int32).max):
            raise say.refused("floating-point label map with values beyond 32-bit integers")
        return values.astype(np.int32)
    if mode in ("RGB", "RGBA", "RGBX"):
        bands = np.asarray(image)[..., :3]
        if not (bands == bands[..., :1]).all():
            raise say.refused(f"a colour image (mode {mode}), expected a grayscale or palette "
                              "label map")
        return bands[..., 0].astype(np.int32)
    raise say.refused(f"a colour image (mode {mode}), expected a grayscale or palette label "
                      "map" if mode in ("CMYK", "YCbCr", "LAB", "HSV")
                      else f"label map mode {mode!r} is not supported")
