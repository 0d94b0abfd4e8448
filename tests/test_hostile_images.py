"""Hostile images: every image and label map goes through ``mmxai.images``, which returns the
right pixels (upright, every PIL mode converted by a stated rule) or one InputError line
naming the sample or file and the cause. Special files are refused without being read."""

from __future__ import annotations

import io
import os
import socket
import sqlite3
import struct
import tempfile
import threading
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from rich.console import Console

from mmxai import cli
from mmxai.api import load_image as api_load_image
from mmxai.api import make_method
from mmxai.dataset import Sample, load_image, load_mask
from mmxai.errors import InputError
from mmxai.evaluation import ConsoleReporter, Generation, RunSpec
from mmxai.evaluation.evaluator import Evaluator, NamedMetric
from mmxai.evaluation.store import ResultStore
from mmxai.images import MAX_ASPECT_RATIO, read_image, read_label_map, to_rgb
from mmxai.registry import manager

ORIENTATION = 0x0112


# -- helpers --------------------------------------------------------------------------------------
def one_line(exc: pytest.ExceptionInfo, *phrases: str) -> str:
    message = str(exc.value)
    assert "\n" not in message and message.strip() == message, message
    for phrase in phrases:
        assert phrase in message, message
    return message


def refused(source, *phrases: str, what: str = "image 'x'", **kwargs) -> str:
    with pytest.raises(InputError) as exc:
        read_image(source, what, **kwargs)
    return one_line(exc, what, *phrases)


def pixel(image: Image.Image, xy=(0, 0)) -> tuple[int, ...]:
    assert image.mode == "RGB"
    return tuple(int(v) for v in image.getpixel(xy))


def close(got, expected, tolerance: int = 1) -> bool:
    return all(abs(int(a) - int(b)) <= tolerance for a, b in zip(got, expected, strict=True))


def png(width: int, height: int, bit_depth: int, colour_type: int, data: bytes) -> bytes:
    """A minimal PNG (filter 0 on every row) written by hand: PIL cannot write 48-bit RGB."""
    row = len(data) // height
    raw = b"".join(b"\x00" + data[i * row:(i + 1) * row] for i in range(height))

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (struct.pack(">I", len(body)) + kind + body
                + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF))

    header = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw))
            + chunk(b"IEND", b""))


def exif(orientation: int) -> bytes:
    tags = Image.Exif()
    tags[ORIENTATION] = orientation
    return tags.tobytes()


def upright_blocks() -> np.ndarray:
    """A 48 x 32 (W x H) image of six flat 16-px blocks, each a different colour: any
    rotation or flip moves a colour to another block."""
    colours = np.array([[[220, 30, 30], [30, 220, 30], [30, 30, 220]],
                        [[220, 220, 30], [30, 220, 220], [220, 30, 220]]], np.uint8)
    return colours.repeat(16, axis=0).repeat(16, axis=1)


def block_colours(image: Image.Image) -> np.ndarray:
    """The colour at the centre of each 16-px block, (rows, cols, 3)."""
    pixels = np.asarray(image).astype(int)
    return pixels[8::16, 8::16]


#: EXIF orientation -> how the camera stored the upright picture (numpy, independent of
#: PIL's transpose names): 3 = turned 180°, 6 = the viewer turns it 90° clockwise (so it was
#: stored turned 90° counter-clockwise), 8 = the viewer turns it 90° counter-clockwise.
STORED = {3: lambda a: np.rot90(a, 2), 6: lambda a: np.rot90(a, 1),
          8: lambda a: np.rot90(a, -1)}


def rotated_jpeg(path: Path, orientation: int) -> Path:
    stored = np.ascontiguousarray(STORED[orientation](upright_blocks()))
    Image.fromarray(stored).save(path, "JPEG", quality=95, exif=exif(orientation))
    return path


def assert_upright(image: Image.Image) -> None:
    assert image.size == (48, 32)
    expected = block_colours(Image.fromarray(upright_blocks()))
    assert np.abs(block_colours(image) - expected).max() <= 12


# -- modes ----------------------------------------------------------------------------------------
def grey(mode: str, values, dtype) -> Image.Image:
    array = np.array([values], dtype=dtype)
    return Image.frombytes(mode, (len(values), 1), array.tobytes())


@pytest.mark.parametrize(("image", "expected"), [
    (Image.frombytes("1", (2, 1), bytes([0b01000000])), [(0, 0, 0), (255, 255, 255)]),
    (Image.new("L", (2, 1), 77), [(77, 77, 77)] * 2),
    (Image.new("RGB", (2, 1), (10, 20, 30)), [(10, 20, 30)] * 2),
    (Image.new("RGBX", (2, 1), (10, 20, 30, 0)), [(10, 20, 30)] * 2),  # X is padding
    (Image.new("CMYK", (2, 1), (0, 255, 255, 0)), [(255, 0, 0)] * 2),
    (Image.new("HSV", (2, 1), (85, 255, 255)), [(0, 255, 0)] * 2),
    (Image.new("LAB", (2, 1), (128, 128, 128)), [(119, 119, 119)] * 2),  # L* 50 grey
    (Image.new("RGB", (2, 1), (10, 200, 90)).convert("YCbCr"), [(10, 200, 90)] * 2),
], ids=["1", "L", "RGB", "RGBX", "CMYK", "HSV", "LAB", "YCbCr"])
def test_modes_without_alpha_convert_to_their_colours(image, expected):
    got = api_load_image(image)
    assert all(close(pixel(got, (x, 0)), expected[x], 3) for x in range(2)), got.getdata()


@pytest.mark.parametrize(("mode", "colour", "expected"), [
    ("RGBA", (10, 20, 30, 0), (255, 255, 255)),  # fully transparent: white, not the hidden RGB
    ("RGBA", (10, 20, 30, 255), (10, 20, 30)),
    ("RGBA", (0, 0, 0, 128), (127, 127, 127)),   # half: blended with white
    ("LA", (100, 0), (255, 255, 255)),
    ("LA", (100, 255), (100, 100, 100)),
    ("RGBa", (50, 25, 12, 128), (177, 152, 139)),  # premultiplied: 100,50,24 at 50%
    ("La", (50, 128), (177, 177, 177)),
])
def test_alpha_is_composited_on_white(mode, colour, expected):
    assert close(pixel(api_load_image(Image.new(mode, (1, 1), colour))), expected, 2)


def test_palette_colours_and_transparent_palette_entries_are_white(tmp_path):
    image = Image.new("P", (2, 1))
    image.putpalette([200, 10, 10, 10, 200, 10] + [0] * 762)
    image.putpixel((1, 0), 1)
    assert [pixel(api_load_image(image), (x, 0)) for x in range(2)] == [(200, 10, 10),
                                                                       (10, 200, 10)]
    image.info["transparency"] = 1  # entry 1 transparent, through a PNG tRNS chunk
    image.save(tmp_path / "p.png")
    read = api_load_image(tmp_path / "p.png")
    assert [pixel(read, (x, 0)) for x in range(2)] == [(200, 10, 10), (255, 255, 255)]
    pa = Image.new("PA", (1, 1), (0, 0))  # index 0, alpha 0
    pa.putpalette([200, 10, 10] * 256)
    assert pixel(api_load_image(pa)) == (255, 255, 255)


def test_rgb_with_a_transparent_colour_key_is_white_there(tmp_path):
    image = Image.new("RGB", (2, 1), (1, 2, 3))
    image.putpixel((1, 0), (9, 9, 9))
    image.save(tmp_path / "key.png", transparency=(1, 2, 3))
    read = api_load_image(tmp_path / "key.png")
    assert [pixel(read, (x, 0)) for x in range(2)] == [(255, 255, 255), (9, 9, 9)]


@pytest.mark.parametrize("mode, dtype", [("I;16", "<u2"), ("I;16L", "<u2"), ("I;16B", ">u2"),
                                         ("I;16N", "=u2")])
def test_16_bit_grey_is_scaled_not_white(mode, dtype):
    image = grey(mode, [0, 257, 32768, 65535], dtype)
    got = api_load_image(image)
    assert [pixel(got, (x, 0))[0] for x in range(4)] == [0, 1, 128, 255]
    assert pixel(got, (2, 0)) == (128, 128, 128)


def test_16_bit_png_file_is_scaled(tmp_path):
    path = tmp_path / "sixteen.png"
    Image.fromarray(np.array([[0, 32768, 65535]], np.uint16)).save(path)
    with Image.open(path) as check:
        assert check.mode == "I;16"
    assert [pixel(api_load_image(path), (x, 0)) for x in range(3)] == [
        (0, 0, 0), (128, 128, 128), (255, 255, 255)]


def test_48_bit_rgb_png_keeps_its_colours(tmp_path):
    path = tmp_path / "deep.png"
    data = np.array([[[65535, 32768, 0], [0, 65535, 32768]]], ">u2").tobytes()
    path.write_bytes(png(2, 1, 16, 2, data))
    read = api_load_image(path)
    assert [pixel(read, (x, 0)) for x in range(2)] == [(255, 128, 0), (0, 255, 128)]


def test_32_bit_int_in_16_bit_range_is_scaled(tmp_path):
    image = grey("I", [0, 32768, 65535, 40000], "<i4")
    assert [pixel(api_load_image(image), (x, 0))[0] for x in range(4)] == [0, 128, 255, 156]
    image.save(tmp_path / "int.tif")
    assert pixel(api_load_image(tmp_path / "int.tif"), (3, 0)) == (156, 156, 156)
    assert pixel(api_load_image(grey("I", [0, 0], "<i4"))) == (0, 0, 0)  # black either way


@pytest.mark.parametrize(("values", "phrases"), [
    ([0, 255], ["values 0..255", "8-bit or a very dark 16-bit", "'L'", "'I;16'"]),
    ([-1, 300], ["values -1..300", "bit depth is unknown"]),
    ([0, 70000], ["values 0..70000", "bit depth is unknown"]),
])
def test_32_bit_int_of_unknown_depth_is_refused(values, phrases):
    refused(grey("I", values, "<i4"), "32-bit integer image", *phrases, what="PIL image")


def test_float_in_0_1_is_scaled(tmp_path):
    image = grey("F", [0.0, 0.5, 1.0, 0.25], "<f4")
    assert [pixel(api_load_image(image), (x, 0))[0] for x in range(4)] == [0, 128, 255, 64]
    image.save(tmp_path / "float.tif")
    assert pixel(api_load_image(tmp_path / "float.tif"), (3, 0)) == (64, 64, 64)


@pytest.mark.parametrize(("values", "phrases"), [
    ([0.0, 1.5], ["values 0..1.5", "expected intensities in 0..1"]),
    ([-0.5, 0.5], ["values -0.5..0.5"]),
    ([0.0, 255.0], ["values 0..255"]),
    ([0.0, float("nan")], ["NaN or infinite"]),
    ([float("inf"), 0.5], ["NaN or infinite"]),
])
def test_float_outside_0_1_or_not_finite_is_refused(values, phrases):
    refused(grey("F", values, "<f4"), "floating-point image", *phrases, what="PIL image")


def test_any_other_mode_is_refused_naming_it():
    image = Image.new("RGB", (1, 1))
    image._mode = "BGR;24"  # a mode older Pillows decode; this one cannot make it
    with pytest.raises(InputError) as exc:
        to_rgb(image, "sample 7")
    one_line(exc, "sample 7", "image mode 'BGR;24' is not supported")


@pytest.mark.parametrize("suffix", ["gif", "webp", "png", "tiff"])
def test_a_multi_frame_file_is_a_clip_not_its_first_frame(tmp_path, suffix):
    """Never silently frame 0: an animation given as an image is refused (docs/video.md)."""
    frames = [Image.new("RGB", (4, 4), colour) for colour in ((255, 0, 0), (0, 0, 255))]
    frames[0].save(tmp_path / f"anim.{suffix}", save_all=True, append_images=frames[1:])
    with pytest.raises(InputError, match="has 2 frames: explain it as a video"):
        api_load_image(tmp_path / f"anim.{suffix}")
    lossless = {"lossless": True} if suffix == "webp" else {}
    frames[0].save(tmp_path / f"still.{suffix}", save_all=True, **lossless)  # an image
    assert pixel(api_load_image(tmp_path / f"still.{suffix}")) == (255, 0, 0)


# -- EXIF orientation -----------------------------------------------------------------------------
@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_rotated_jpeg_files_come_out_upright(tmp_path, orientation):
    path = rotated_jpeg(tmp_path / f"o{orientation}.jpg", orientation)
    with Image.open(path) as raw:
        assert raw.getexif()[ORIENTATION] == orientation
        assert raw.size == ((32, 48) if orientation in (6, 8) else (48, 32))
    assert_upright(api_load_image(path))
    assert_upright(load_image(Sample("1", path, "")))


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_rotated_pil_images_given_to_the_api_come_out_upright(tmp_path, orientation):
    path = rotated_jpeg(tmp_path / f"o{orientation}.jpg", orientation)
    with Image.open(path) as opened:  # what a user of the Python API passes
        assert_upright(api_load_image(opened))
        assert_upright(load_image(Sample("1", opened, "")))
    stored = Image.fromarray(np.ascontiguousarray(STORED[orientation](upright_blocks())))
    stored.getexif()[ORIENTATION] = orientation  # an in-memory image with the tag
    assert_upright(api_load_image(stored))
    assert stored.getexif()[ORIENTATION] == orientation  # the caller's image is untouched


def test_rotated_16_bit_png_is_upright_and_scaled(tmp_path):
    stored = np.array([[65535, 0], [0, 0]], np.uint16)  # white at the top left as stored
    path = tmp_path / "r.png"
    Image.fromarray(stored).save(path, exif=exif(3))
    read = api_load_image(path)
    assert pixel(read, (1, 1)) == (255, 255, 255) and pixel(read, (0, 0)) == (0, 0, 0)


# -- files that are not images --------------------------------------------------------------------
def read_in_thread(path: Path, what: str = "sample 5", **kwargs) -> BaseException | None:
    """Read in a thread: a reader that blocked on a FIFO would fail the join, not hang."""
    outcome: list[BaseException | None] = []

    def target() -> None:
        try:
            read_image(path, what, **kwargs)
            outcome.append(None)
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            outcome.append(exc)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(timeout=20)
    assert not thread.is_alive(), "reading a FIFO blocked"
    return outcome[0]


def test_fifo_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    exc = read_in_thread(fifo, name=f"image file {fifo}")
    assert isinstance(exc, InputError)
    assert str(exc) == f"sample 5: image file {fifo}: a named pipe (FIFO), not an image file"
    with pytest.raises(InputError) as caught:
        load_image(Sample("5", fifo, ""))
    one_line(caught, "sample 5: image file", "pipe.png", "named pipe")


def test_dev_null_is_refused():
    refused(Path("/dev/null"), "a character device, not an image file")


def test_a_directory_is_refused(tmp_path):
    refused(tmp_path, "a directory, not an image file")


def test_a_socket_is_refused():
    folder = tempfile.mkdtemp(prefix="mmxai-")  # short: socket paths are limited to ~100 bytes
    path = Path(folder) / "s.png"
    server = socket.socket(socket.AF_UNIX)
    try:
        server.bind(str(path))
        refused(path, "a socket, not an image file")
    finally:
        server.close()
        path.unlink()
        os.rmdir(folder)


def test_missing_file(tmp_path):
    assert refused(tmp_path / "gone.png") == "image 'x': file not found"
    with pytest.raises(InputError) as exc:
        load_image(Sample("9", tmp_path / "gone.png", ""))
    assert str(exc.value) == f"sample 9: image file {tmp_path / 'gone.png'} does not exist"


def test_dangling_symlink(tmp_path):
    link = tmp_path / "link.png"
    link.symlink_to(tmp_path / "target.png")
    refused(link, "a dangling symbolic link", "target.png", "does not exist")


def test_a_symlink_to_an_image_is_followed(tmp_path):
    Image.new("RGB", (3, 3), (1, 2, 3)).save(tmp_path / "real.png")
    (tmp_path / "link.png").symlink_to(tmp_path / "real.png")
    assert pixel(api_load_image(tmp_path / "link.png")) == (1, 2, 3)


def test_empty_file(tmp_path):
    (tmp_path / "empty.png").write_bytes(b"")
    refused(tmp_path / "empty.png", "an empty file (0 bytes)")


def test_truncated_png(tmp_path):
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)).save(
        buffer, "PNG")
    (tmp_path / "cut.png").write_bytes(buffer.getvalue()[:-2000])
    refused(tmp_path / "cut.png", "cannot be read as an image (", "truncated")
    with pytest.raises(InputError) as exc:
        load_image(Sample("4", tmp_path / "cut.png", ""))
    one_line(exc, "sample 4: cannot read image file", "cut.png", "truncated")


def test_text_named_png(tmp_path):
    (tmp_path / "notes.png").write_text("not an image at all\nsecond line\n")
    refused(tmp_path / "notes.png", "cannot be read as an image (not in an image format PIL "
            "recognises)")


def test_decompression_bombs_are_refused_naming_the_limit(tmp_path, monkeypatch, recwarn):
    Image.new("RGB", (40, 40)).save(tmp_path / "warn.png")     # 1,600 px: PIL would warn
    Image.new("RGB", (100, 100)).save(tmp_path / "error.png")  # 10,000 px: PIL raises
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    refused(tmp_path / "warn.png", "1,600 pixels exceeds the limit of 1,000 pixels",
            "decompression bomb", what="image 'warn.png'")
    refused(tmp_path / "error.png", "10,000 pixels exceeds the limit of 1,000 pixels",
            what="image 'error.png'")
    assert not [w for w in recwarn if issubclass(w.category, Image.DecompressionBombWarning)]


# -- shapes ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("size", [(1, 300), (300, 1)])
def test_extreme_aspect_ratios_are_refused(tmp_path, size):
    Image.new("RGB", size).save(tmp_path / "thin.png")
    refused(tmp_path / "thin.png", f"{size[0]}×{size[1]} pixels",
            f"aspect ratio 300:1 exceeds {MAX_ASPECT_RATIO}:1")
    refused(Image.new("RGB", size), "aspect ratio 300:1", what="PIL image")


def test_aspect_ratio_200_and_a_zero_side():
    assert api_load_image(Image.new("RGB", (1, 200))).size == (1, 200)
    refused(Image.new("RGB", (0, 5)), "0×5 pixels", "both sides of at least 1",
            what="PIL image")


def test_tiny_images_run_through_every_family(tiny_family, tiny_model, tmp_path):
    """The reader accepts 1x1, 2x300 and 300x2: each family's processor takes them too, with
    the image's own colour in its pixel values (no channel mix-up on 1- or 3-pixel sides).
    LLaVA-NeXT's ``unpad_image`` cuts the high-res view of 2x300 to no column at all (every
    map would then fail): its adapter refuses such images in one line."""
    model = tiny_model(tiny_family)
    colour = (120, 30, 200)
    thin = [(2, 300), (300, 2)]
    anyres = {"llava-next": "LLaVA-NeXT", "llava-onevision": "LLaVA-OneVision"}
    if tiny_family in anyres:  # their high-res view of a 150:1 image has no patch row
        for size, cut in zip(thin, ["12×0", "0×12"], strict=True):
            with pytest.raises(InputError) as exc:
                model.build_inputs([api_load_image(Image.new("RGB", size, colour))], "what?")
            one_line(exc, f"image 1 ({size[0]}×{size[1]} pixels) is too thin for "
                     f"{anyres[tiny_family]}", "aspect ratio 150:1", f"high-res view {cut} patches")
        thin = []

    def values(image: Image.Image) -> set[float]:
        inputs = model.build_inputs([image], "what is this?")
        assert inputs.grids and all(g.image == 0 and g.positions.size for g in inputs.grids)
        return set(np.round(inputs.features["pixel_values"].float().numpy(), 3).ravel())

    reference = values(Image.new("RGB", (56, 56), colour))
    for size in [(1, 1), (3, 3), *thin]:
        path = tmp_path / f"{size[0]}x{size[1]}.png"
        Image.new("RGB", size, colour).save(path)
        got = values(api_load_image(path)) - reference
        assert not got, (size, sorted(got)[:4])


# -- label maps -----------------------------------------------------------------------------------
def sample_with_mask(mask, **meta) -> Sample:
    return Sample(id="42", image=Path("unused.png"), prompt="", mask=mask, meta=meta)


def test_palette_mask_gives_indices_and_16_bit_mask_keeps_values(tmp_path):
    labels = np.zeros((4, 6), np.uint8)
    labels[1:3, 2:5] = 7
    palette = Image.fromarray(labels, "L").convert("P")
    palette.putpalette([255, 255, 255] * 256)  # the colours say nothing, the indices do
    palette.save(tmp_path / "p.png")
    assert (load_mask(sample_with_mask(tmp_path / "p.png"), (6, 4)) == labels).all()
    wide = labels.astype(np.uint16) * 100  # label 700 needs 16 bits: never scaled
    Image.fromarray(wide).save(tmp_path / "w.png")
    mask = load_mask(sample_with_mask(tmp_path / "w.png"), (6, 4))
    assert mask.dtype == np.int32 and mask.max() == 700 and (mask == wide).all()


def test_mask_with_an_orientation_tag_is_turned_like_its_image(tmp_path):
    upright = np.zeros((4, 6), np.uint8)
    upright[0, 5] = 3  # top right
    Image.fromarray(np.ascontiguousarray(np.rot90(upright, 1))).save(tmp_path / "m.png",
                                                                     exif=exif(6))
    mask = load_mask(sample_with_mask(tmp_path / "m.png"), (6, 4))
    assert (mask == upright).all()


@pytest.mark.parametrize(("mode", "value", "expected"), [
    ("LA", (9, 0), 9),       # alpha carries no label
    ("RGB", (5, 5, 5), 5),   # grey stored as RGB
    ("F", 12.0, 12),
])
def test_other_label_map_modes(tmp_path, mode, value, expected):
    path = tmp_path / "m.tif"
    Image.new(mode, (3, 2), value).save(path)
    assert (read_label_map(path, "sample 1") == expected).all()


@pytest.mark.parametrize(("image", "phrases"), [
    (Image.new("RGB", (3, 2), (1, 2, 3)), ["colour image (mode RGB)"]),
    (Image.new("CMYK", (3, 2), (1, 2, 3, 4)), ["colour image (mode CMYK)"]),
    (Image.new("F", (3, 2), 0.5), ["not whole numbers"]),
], ids=["rgb", "cmyk", "float"])
def test_label_maps_that_are_not_labels_are_refused(tmp_path, image, phrases):
    path = tmp_path / "m.tif"
    image.save(path)
    with pytest.raises(InputError) as exc:
        read_label_map(path, "sample 1", name=f"mask file {path}")
    one_line(exc, f"sample 1: mask file {path}: ", *phrases)


def test_special_mask_files_are_refused_not_zeros(tmp_path):
    fifo = tmp_path / "m.png"
    os.mkfifo(fifo)
    link = tmp_path / "l.png"
    link.symlink_to(tmp_path / "nowhere.png")
    for path, phrase in [(fifo, "named pipe"), (link, "dangling symbolic link"),
                         (tmp_path, "a directory")]:
        with pytest.raises(InputError) as exc:
            load_mask(sample_with_mask(path, missing_mask="zeros"), (3, 2))
        one_line(exc, "sample 42: mask file", phrase)
    zeros = load_mask(sample_with_mask(tmp_path / "absent.png", missing_mask="zeros"), (3, 2))
    assert zeros.shape == (2, 3) and not zeros.any()


# -- through the evaluator and the command line ---------------------------------------------------
def test_the_evaluator_model_sees_upright_16_bit_images_and_bad_ones_fail_alone(
        tmp_path, tiny_model, monkeypatch):
    root = tmp_path / "photos"
    root.mkdir()
    rotated_jpeg(root / "a-rotated.jpg", 6)
    Image.fromarray(np.full((32, 48), 32768, np.uint16)).save(root / "b-sixteen.png")
    Image.new("RGB", (1, 300)).save(root / "c-thin.png")
    fifo = tmp_path / "d-pipe.png"
    os.mkfifo(fifo)
    base = manager().get("datasets", "folder")

    class WithPipe(base):
        def __iter__(self):
            yield from super().__iter__()
            yield Sample("d-pipe", fifo, self.prompt)

    model = tiny_model("llava")
    seen: list[Image.Image] = []
    real = model.build_inputs
    monkeypatch.setattr(model, "build_inputs",
                        lambda images, prompt: seen.extend(images) or real(images, prompt))
    metrics = [NamedMetric.make(manager().get("metrics", "seconds-per-token"), None)]
    with ResultStore(tmp_path / "r.sqlite") as store:
        Evaluator(WithPipe(root), [make_method("logit-lens")], metrics, store,
                  RunSpec(generation=Generation(1, 1)),
                  reporter=ConsoleReporter(Console(quiet=True), bars=False)
                  ).run(model, "tiny:llava")
    assert len(seen) == 2
    assert_upright(seen[0])
    assert pixel(seen[1], (5, 5)) == (128, 128, 128)  # 32768 of 65535: mid grey, not white
    rows = sqlite3.connect(tmp_path / "r.sqlite").execute(
        "SELECT sample_id, status, error FROM results").fetchall()
    status = {sample: (state, error) for sample, state, error in rows}
    assert status["a-rotated"][0] == "ok" and status["b-sixteen"][0] == "ok"
    state, error = status["c-thin"]
    assert state == "failed" and error.startswith("sample c-thin: image file ")
    assert "aspect ratio 300:1" in error and "\n" not in error
    state, error = status["d-pipe"]
    assert state == "failed" and "named pipe" in error and "\n" not in error


def test_cli_explain_on_a_fifo_is_one_line_exit_2(tmp_path, capsys):
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    code = cli.main(["explain", "tiny:llava", str(fifo), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1, err
    assert lines[0].startswith("error:") and "Traceback" not in err
    assert "pipe.png" in lines[0] and "named pipe" in lines[0]


def test_images_handed_straight_to_the_model_are_read_faithfully(tiny_model, tmp_path):
    """``Model.build_inputs`` reads what a caller hands it like the reader does: a 16-bit
    image is not white and an EXIF-rotated photo is upright."""
    model = tiny_model("llava")
    deep = Image.fromarray(np.full((32, 32), 32768, dtype=np.uint16))
    with Image.open(rotated_jpeg(tmp_path / "r.jpg", 6)) as rotated:
        inputs = model.build_inputs([deep, rotated], "Describe the image.")
    assert close(pixel(inputs.images[0]), (128, 128, 128))
    assert_upright(inputs.images[1])
