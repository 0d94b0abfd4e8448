"""Rendering: a JET colormap, labelled heat-map overlays and the self-contained HTML viewer.

Everything here is numpy and Pillow: no matplotlib, no OpenCV, no network assets. The HTML
page (its markup, style and script are :mod:`mmxai.viewer_page`) embeds its images as
base64 ``data:`` URIs and its CSS and JavaScript inline, so one file can be mailed,
archived or opened offline.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from mmxai.viewer_page import TEMPLATE, TIMELINE
from mmxai.words import token_pieces

if TYPE_CHECKING:
    from mmxai.api import Explanation

HEATMAP_SIDE = 192  # the page's maps: smooth, so no more pixels than this on the longer side


def jet(values: np.ndarray) -> np.ndarray:
    """The JET colormap: (...,) values in [0, 1] -> (..., 3) uint8 RGB, blue to red.

    Piecewise linear, like MATLAB's and OpenCV's ``COLORMAP_JET``: each channel is a tent
    of width 1.5 centred at 1/4 (blue), 1/2 (green) and 3/4 (red). The page's script
    computes the same table (``viewer_page``: ``LUT``).
    """
    x = np.clip(np.nan_to_num(np.asarray(values, dtype=np.float32)), 0.0, 1.0)[..., None]
    centres = np.array([0.75, 0.5, 0.25], dtype=np.float32)  # R, G, B
    rgb = np.clip(1.5 - np.abs(4.0 * x - 4.0 * centres), 0.0, 1.0)
    return (rgb * 255.0 + 0.5).astype(np.uint8)


def _finite(heat: np.ndarray) -> np.ndarray:
    return np.nan_to_num(np.asarray(heat, dtype=np.float32), nan=0.0, posinf=0.0, neginf=0.0)


def value_range(heat: np.ndarray) -> tuple[float, float]:
    """(min, max) of one map as :func:`normalise` reads it (NaN/inf as 0; empty: (0, 0)):
    the raw values its colours span."""
    heat = _finite(heat)
    if heat.size == 0:
        return 0.0, 0.0
    return float(heat.min()), float(heat.max())


def normalise(heat: np.ndarray, span: tuple[float, float] | None = None) -> np.ndarray:
    """Scale one map to [0, 1] for display: min-max (or ``span``'s (min, max), a video
    token's over all its temporal patches), NaN/inf to 0, a constant map to 0."""
    heat = _finite(heat)
    lo, hi = value_range(heat) if span is None else span
    if hi <= lo:
        return np.zeros_like(heat)
    return np.clip((heat - lo) / (hi - lo), 0.0, 1.0)


def overlay(image: Image.Image, heat: np.ndarray, alpha: float = 0.5,
            span: tuple[float, float] | None = None) -> Image.Image:
    """Blend the JET colouring of ``heat`` (H, W) over ``image``.

    ``heat`` is normalised to [0, 1] first (over ``span``, default its own min and max) and
    resized (bilinear) to the image when the sizes differ. ``alpha`` is the weight of the
    heat colours.
    """
    base = image.convert("RGB")
    heat = normalise(heat, span)
    if heat.shape != (base.height, base.width):
        resized = Image.fromarray(heat, mode="F").resize(base.size, Image.Resampling.BILINEAR)
        heat = np.asarray(resized, dtype=np.float32)
    colours = jet(heat).astype(np.float32)
    pixels = np.asarray(base, dtype=np.float32)
    blended = alpha * colours + (1.0 - alpha) * pixels
    return Image.fromarray(np.clip(blended + 0.5, 0, 255).astype(np.uint8))


def colour_bar(width: int, height: int) -> Image.Image:
    """A horizontal JET colour bar: the lowest value (blue) on the left, the highest (red)
    on the right."""
    ramp = np.linspace(0.0, 1.0, max(1, width), dtype=np.float32)
    return Image.fromarray(np.repeat(jet(ramp)[None], max(1, height), axis=0))


def number(value: float) -> str:
    """A colour bar's tick: three significant digits (``0.0123``, ``12.3``, ``1.23e+05``)."""
    return f"{value:.3g}"


def labelled(image: Image.Image, label: str, low: float, high: float) -> Image.Image:
    """``image`` (an :func:`overlay`) with a caption band over its bottom edge: ``label`` on
    the left and, on the right, a colour bar from ``low`` to ``high``, the raw values the
    colours span. The size is unchanged; a label too long for the band ends in ``...``."""
    out = image.convert("RGB")
    width, height = out.size
    band = max(14, round(height * 0.07))
    font = ImageFont.load_default(size=max(8, round(band * 0.62)))
    if not isinstance(font, ImageFont.FreeTypeFont):  # Pillow's bitmap font: Latin-1 only
        label = label.encode("latin-1", "replace").decode("latin-1")
    shade = Image.new("RGBA", (width, band), (0, 0, 0, 170))
    out.paste(shade, (0, height - band), shade)
    draw = ImageDraw.Draw(out)
    top, pad = height - band, max(2, band // 5)
    ticks = [number(low), number(high)]
    bar_width = round(width * 0.25)
    tick_width = [draw.textlength(t, font=font) for t in ticks]
    bar_left = width - pad - tick_width[1] - pad - bar_width
    bar = colour_bar(bar_width, band - 2 * pad)
    out.paste(bar, (round(bar_left), top + pad))
    middle = top + band / 2
    draw.text((bar_left - pad, middle), ticks[0], font=font, fill="white", anchor="rm")
    draw.text((bar_left + bar_width + pad, middle), ticks[1], font=font, fill="white",
              anchor="lm")
    room = bar_left - 3 * pad - tick_width[0]
    text = as_text(label)
    while text and draw.textlength(text, font=font) > room:
        text = text[:-4] + "..." if len(text) > 4 else ""
    draw.text((pad, middle), text, font=font, fill="white", anchor="lm")
    return out


def fit(size: tuple[int, int], smallest: int = 384, largest: int = 1024) -> tuple[int, int]:
    """(width, height) scaled, aspect kept, so the longer side lies in [smallest, largest]:
    big photos shrink, tiny test images grow enough to be seen."""
    width, height = size
    longest = max(width, height)
    scale = min(max(longest, smallest), largest) / longest
    return max(1, round(width * scale)), max(1, round(height * scale))


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def jpeg_bytes(image: Image.Image, quality: int = 90) -> bytes:
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def heat_png(heat: np.ndarray) -> bytes:
    """PNG bytes of the JET colouring of one (H, W) map, normalised for display."""
    return png_bytes(Image.fromarray(jet(normalise(heat))))


def grey_png(heat: np.ndarray, span: tuple[float, float] | None = None) -> bytes:
    """PNG bytes of one (H, W) map, normalised and quantised to 8-bit grey (0: its min,
    255: its max, or ``span``'s): what the page colours, with the map's
    :func:`value_range`."""
    grey = np.round(normalise(heat, span) * 255.0).astype(np.uint8)
    return png_bytes(Image.fromarray(grey, mode="L"))


def data_uri(encoded: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64," + base64.b64encode(encoded).decode("ascii")


def safe_filename(text: str, limit: int = 40) -> str:
    """A token as a portable file-name fragment: ASCII word characters kept, runs of
    anything else as one ``_``. ``" cat"`` -> ``"cat"``, ``"../x"`` -> ``"x"``, ``" ."`` ->
    ``"_"``.
    """
    cleaned = re.sub(r"[^\w-]+", "_", text.strip(), flags=re.ASCII)
    return cleaned.strip("_")[:limit] or "_"


def as_text(value: object) -> str:
    """``value`` as text that can be written as UTF-8: lone surrogates (what Python makes of
    undecodable bytes in file names and arguments) become U+FFFD."""
    value = str(value)
    if not any("\ud800" <= ch <= "\udfff" for ch in value):
        return value
    return "".join("\ufffd" if "\ud800" <= ch <= "\udfff" else ch for ch in value)


def html_text(value: object) -> str:
    """Text for HTML content or a quoted attribute value: ``& < > " '`` escaped."""
    return html.escape(as_text(value), quote=True)


def script_json(value: object) -> str:
    """JSON to embed in an inline ``<script>``: ASCII only (so U+2028/U+2029, which end a
    line in older JavaScript, are ``\\u`` escapes) and no ``<``, ``>`` or ``&`` at all, so no
    ``</script>``, ``<!--`` or ``<script`` in the data can end or change the script element.
    ``json.loads`` of the result gives back ``value``."""
    encoded = json.dumps(value, ensure_ascii=True, allow_nan=False)
    return encoded.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


@dataclass
class PageMethod:
    """One method's maps for a page, in token order.

    ``heatmaps``: one PNG per explained token, the map min-max scaled to 8-bit grey
    (:func:`grey_png`), coloured by the page; for a video, one list per token of a PNG per
    temporal patch, scaled by the token's (min, max) over all patches; ``ranges``: each
    token's raw (min, max) (None: (0, 1) for every map), for the page's raw-values view and
    its colour bars; ``text``: for a method with a text half (TAM), (tokens, tokens)
    relevances in [0, 1] of token k (column) to explained token j (row), None otherwise.
    :meth:`from_maps` builds all three.
    """

    name: str
    heatmaps: list[bytes] | list[list[bytes]]
    ranges: list[tuple[float, float]] | None = None
    text: np.ndarray | None = None

    @classmethod
    def from_maps(cls, name: str, maps: Sequence[np.ndarray],
                  text: np.ndarray | None = None) -> PageMethod:
        """From each explained token's (H, W) map in the image's frame, or (T, H, W), a
        video token's map on each of its T temporal patches (one scale for all T)."""
        ranges = [value_range(m) for m in maps]
        pngs = [grey_png(m) if np.ndim(m) == 2 else [grey_png(frame, span) for frame in m]
                for m, span in zip(maps, ranges, strict=True)]
        return cls(name, pngs, ranges, text)

    def checked(self, n_tokens: int, n_patches: int | None = None
                ) -> tuple[list[list[float]], list[list[float]] | None]:
        """(ranges, text) as lists for the page; a ValueError in one line naming the method
        when a count, a shape or a value does not fit ``n_tokens`` tokens (of a video of
        ``n_patches`` temporal patches; None: an image)."""
        where = f"method {as_text(self.name)!r}"
        if len(self.heatmaps) != n_tokens:
            raise ValueError(f"{where}: {len(self.heatmaps)} maps for {n_tokens} tokens")
        for i, pngs in enumerate(self.heatmaps):
            if n_patches is None and not isinstance(pngs, bytes):
                raise ValueError(f"{where}: token {i}'s map is not one PNG (an image's page)")
            if n_patches is not None and (isinstance(pngs, bytes) or len(pngs) != n_patches):
                count = 1 if isinstance(pngs, bytes) else len(pngs)
                raise ValueError(f"{where}: token {i} has {count} maps for {n_patches} "
                                 "temporal patches")
        ranges = [(0.0, 1.0)] * n_tokens if self.ranges is None else self.ranges
        if len(ranges) != n_tokens:
            raise ValueError(f"{where}: {len(ranges)} value ranges for {n_tokens} tokens")
        pairs = [[float(lo), float(hi)] for lo, hi in ranges]
        if not all(math.isfinite(v) for pair in pairs for v in pair):
            raise ValueError(f"{where}: a map's value range is not finite")
        if self.text is None:
            return pairs, None
        text = np.asarray(self.text, dtype=np.float64)
        if text.shape != (n_tokens, n_tokens):
            raise ValueError(f"{where}: text relevances of shape {text.shape}, expected "
                             f"{(n_tokens, n_tokens)} (tokens x tokens)")
        if not (np.isfinite(text).all() and ((text >= 0) & (text <= 1)).all()):
            raise ValueError(f"{where}: text relevances must be finite and in [0, 1]")
        return pairs, np.round(text, 4).tolist()


def html_page(title: str, image: Image.Image | Sequence[Image.Image], words: Sequence[str],
              methods: Sequence[PageMethod], subtitle: str = "", alpha: float = 0.5,
              gaps: Sequence[str] | None = None,
              frame_labels: Sequence[str] | None = None) -> str:
    """One self-contained page: the answer as clickable tokens over the maps.

    ``words`` are the explained tokens, each decoded on its own, one per map of every
    method; ``gaps[i]`` is the text shown before token ``i`` that its own decoding lacks
    (the space a word-level tokenizer puts between words; default none). The image is
    embedded once; the page colours each map (JET) and lays it over the image with
    opacity ``alpha``. It shows the chosen token's map of the chosen method large, with a
    colour bar; every method's map of that token side by side at one size; the chosen
    method's map of every token as a strip of thumbnails; and, for a method with a text
    half, the answer's tokens coloured by their relevance to the chosen one. Controls: a
    method selector (when several ran), the map's opacity, the image's size, the
    original image alone, raw values (each method over its range across all tokens)
    instead of each map min-max scaled; arrow keys step through the tokens. The URL
    fragment chooses too (``#token=3&method=tam&raw=1&original=0``), and follows the
    choices, so a link opens the same view.

    A video is ``image`` as a sequence of frames, one per temporal patch (its first
    source frame), each method's maps one list per token (:class:`PageMethod`);
    ``frame_labels`` names the patches (default ``t0``, ``t1``...). Every view then shows
    the chosen patch (``#t=2``), and a strip shows the chosen token's map on every patch,
    with a play button (and keys) that steps through them.

    Every string (title, subtitle, words, gaps, method names) is text, never markup: it is
    escaped for HTML, and embedded in the script only as :func:`script_json`.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha {alpha!r}: the map's opacity must be in [0, 1]")
    names = [as_text(m.name) for m in methods]
    if len(set(names)) != len(names):
        raise ValueError(f"methods with the same name would share one entry: {names!r}")
    gaps = [""] * len(words) if gaps is None else list(gaps)
    if len(gaps) != len(words):
        raise ValueError(f"{len(gaps)} gaps for {len(words)} tokens")
    frames = None if isinstance(image, Image.Image) else list(image)
    if frames is not None:
        if not frames or not all(isinstance(f, Image.Image) for f in frames):
            raise ValueError("a video's page needs one PIL image per temporal patch")
        labels = [f"t{k}" for k in range(len(frames))] if frame_labels is None \
            else [as_text(label) for label in frame_labels]
        if len(labels) != len(frames):
            raise ValueError(f"{len(labels)} frame labels for {len(frames)} temporal patches")
        image = frames[0]
    elif frame_labels is not None:
        raise ValueError("frame labels name a video's temporal patches; this page is an image's")
    checked = [m.checked(len(words), None if frames is None else len(frames)) for m in methods]
    maps = {name: [data_uri(png) if frames is None else [data_uri(p) for p in png]
                   for png in m.heatmaps]
            for name, m in zip(names, methods, strict=True)}
    ranges = {name: pairs for name, (pairs, _) in zip(names, checked, strict=True)}
    text = {name: rows for name, (_, rows) in zip(names, checked, strict=True)
            if rows is not None}
    # The photo goes in once, as JPEG (a PNG photo is ten times larger), at most 1024 wide
    # and never upscaled: the browser scales it to the display width.
    embedded = _embedded(image, 1024) if frames is None else None  # a clip shows its frames
    # A video's frames: each patch's, 640 pixels at most, as T photos add up.
    frame_uris = [] if frames is None else [data_uri(jpeg_bytes(_embedded(f, 640)),
                                                     "image/jpeg") for f in frames]
    tokens = "".join(
        f'{html_text(gap)}<span class="tok" data-i="{i}" title="token {i}">'
        f'{html_text(word) or "&#8203;"}</span>'
        for i, (gap, word) in enumerate(zip(gaps, words, strict=True)))
    options = "".join(f'<option value="{html_text(name)}">{html_text(name)}</option>'
                      for name in names)
    if len(methods) > 1:
        selector = f'<label>method <select id="method">{options}</select></label>'
    else:
        selector = "".join(f"<label>method: <b>{html_text(name)}</b></label>"
                           for name in names)
    ramp = ", ".join(f"rgb({r}, {g}, {b}) {100 * x:g}%"
                     for x, (r, g, b) in zip(np.linspace(0, 1, 9),
                                             jet(np.linspace(0, 1, 9)), strict=True))
    values = {
        "title": html_text(title), "subtitle": html_text(subtitle), "tokens": tokens,
        "selector": selector,
        "image": frame_uris[0] if frames else data_uri(jpeg_bytes(embedded), "image/jpeg"),
        "frames": script_json(frame_uris), "labels": script_json([] if frames is None
                                                                 else labels),
        "timeline": "" if frames is None else TIMELINE,
        "maps": script_json(maps), "ranges": script_json(ranges), "text": script_json(text),
        "first": script_json(names[0] if names else ""), "alpha": f"{float(alpha):g}",
        "width": str(fit(image.size, 512, 640)[0]), "ramp": ramp,
    }
    # One pass: a value holding "@@title@@" is never substituted again.
    return re.sub(r"@@(\w+)@@", lambda m: values[m.group(1)], TEMPLATE)


def _embedded(image: Image.Image, largest: int) -> Image.Image:
    """``image`` in RGB, shrunk (never grown) so its longer side is ``largest`` at most."""
    embedded = image.convert("RGB")
    if max(image.size) > largest:
        embedded = embedded.resize(fit(image.size, largest, largest), Image.Resampling.BICUBIC)
    return embedded


def token_gaps(pieces: Sequence[str], words: Sequence[str]) -> list[str]:
    """What each token's text with its spacing (``pieces``, :func:`mmxai.words.token_pieces`)
    has before its own decoding (``words``): ``" "`` for a word a word-level tokenizer
    spaces from the one before, ``""`` where the decoding already holds its space."""
    return [piece[:len(piece) - len(word)] if piece.endswith(word) else ""
            for piece, word in zip(pieces, words, strict=True)]


def explanation_page(explanations: Mapping[str, Explanation], image: Image.Image,
                     index: int = 0, title: str = "mmxai",
                     text: Mapping[str, np.ndarray] | None = None) -> str:
    """The page (:func:`html_page`) of ``explanations`` (method name -> the
    :class:`~mmxai.api.Explanation` of one traced sample, all of the same tokens) on its
    image ``index``, ``image``: the answer spaced as the tokenizer spaces its words, each
    map at :data:`HEATMAP_SIDE` pixels, and ``text`` (method name -> (tokens, tokens)
    relevances, as ``mmxai explain`` gathers them) for the methods that have a text half."""
    first = next(iter(explanations.values()))
    trace = first.trace
    pieces, _ = token_pieces(trace.model.tokenizer, trace.generated_ids.tolist())
    width, height = fit(image.size, HEATMAP_SIDE, HEATMAP_SIDE)
    methods = [PageMethod.from_maps(name, [e.image_map(i, image=index, size=(height, width))
                                           for i in range(len(e.tokens))],
                                    (text or {}).get(name))
               for name, e in explanations.items()]
    subtitle = f"prompt: {trace.inputs.prompt!r} | answer: {first.text!r}"
    return html_page(title, image, first.words, methods, subtitle,
                     gaps=token_gaps([pieces[t] for t in first.tokens], first.words))
