"""Rendering: a JET colormap, heat-map overlays and the self-contained HTML viewer.

Everything here is numpy and Pillow: no matplotlib, no OpenCV, no network assets. The HTML
page embeds its images as base64 ``data:`` URIs and its CSS and JavaScript inline, so one
file can be mailed, archived or opened offline.
"""

from __future__ import annotations

import base64
import html
import io
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image


def jet(values: np.ndarray) -> np.ndarray:
    """The JET colormap: (...,) values in [0, 1] -> (..., 3) uint8 RGB, blue to red.

    Piecewise linear, like MATLAB's and OpenCV's ``COLORMAP_JET``: each channel is a tent
    of width 1.5 centred at 1/4 (blue), 1/2 (green) and 3/4 (red).
    """
    x = np.clip(np.nan_to_num(np.asarray(values, dtype=np.float32)), 0.0, 1.0)[..., None]
    centres = np.array([0.75, 0.5, 0.25], dtype=np.float32)  # R, G, B
    rgb = np.clip(1.5 - np.abs(4.0 * x - 4.0 * centres), 0.0, 1.0)
    return (rgb * 255.0 + 0.5).astype(np.uint8)


def normalise(heat: np.ndarray) -> np.ndarray:
    """Scale one map to [0, 1] for display: min-max, NaN/inf to 0, a constant map to 0."""
    heat = np.nan_to_num(np.asarray(heat, dtype=np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    if heat.size == 0:
        return heat
    lo, hi = float(heat.min()), float(heat.max())
    if hi <= lo:
        return np.zeros_like(heat)
    return (heat - lo) / (hi - lo)


def overlay(image: Image.Image, heat: np.ndarray, alpha: float = 0.5) -> Image.Image:
    """Blend the JET colouring of ``heat`` (H, W) over ``image``.

    ``heat`` is normalised to [0, 1] first and resized (bilinear) to the image when the sizes
    differ. ``alpha`` is the weight of the heat colours.
    """
    base = image.convert("RGB")
    heat = normalise(heat)
    if heat.shape != (base.height, base.width):
        resized = Image.fromarray(heat, mode="F").resize(base.size, Image.Resampling.BILINEAR)
        heat = np.asarray(resized, dtype=np.float32)
    colours = jet(heat).astype(np.float32)
    pixels = np.asarray(base, dtype=np.float32)
    blended = alpha * colours + (1.0 - alpha) * pixels
    return Image.fromarray(np.clip(blended + 0.5, 0, 255).astype(np.uint8))


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
    """One method's maps for a page: a JET-coloured PNG per explained token
    (:func:`heat_png`), laid over the image by the browser."""

    name: str
    heatmaps: list[bytes]  # PNG bytes, in token order


def html_page(title: str, image: Image.Image, words: Sequence[str],
              methods: Sequence[PageMethod], subtitle: str = "", alpha: float = 0.5) -> str:
    """One self-contained page: the generated text as clickable tokens over the maps.

    ``words`` are the explained tokens as decoded text, one per heat map of every method.
    The image is embedded once and each token's heat map is stacked on it with opacity
    ``alpha`` (the blend :func:`overlay` computes), so the page stays small even for long
    answers. Choosing a token shows its map; a selector switches methods when several ran;
    arrow keys step through the tokens; a slider sets the map's opacity.

    Every string (title, subtitle, words, method names) is text, never markup: it is
    escaped for HTML, and embedded in the script only as :func:`script_json`.
    """
    names = [as_text(m.name) for m in methods]
    for method in methods:
        if len(method.heatmaps) != len(words):
            raise ValueError(f"method {method.name!r}: {len(method.heatmaps)} maps for "
                             f"{len(words)} tokens")
    if len(set(names)) != len(names):
        raise ValueError(f"methods with the same name would share one entry: {names!r}")
    payload = {name: [data_uri(png) for png in m.heatmaps] 
               for name, m in zip(names, methods, strict=True)}
    width, _ = fit(image.size)
    # The photo goes in once, as JPEG (a PNG photo is ten times larger), at most 1024 wide
    # and never upscaled: the browser scales it to the display width.
    embedded = image.convert("RGB")
    if max(image.size) > 1024:
        embedded = embedded.resize(fit(image.size), Image.Resampling.BICUBIC)
    tokens = "".join(
        f'<span class="tok" data-i="{i}" title="token {i}">{html_text(word) or "&#8203;"}</span>'
        for i, word in enumerate(words)
    )
    options = "".join(f'<option value="{html_text(name)}">{html_text(name)}</option>'
                      for name in names)
    if len(methods) > 1:
        selector = f'<label>method <select id="method">{options}</select></label>'
    else:
        selector = "".join(f"method: <b>{html_text(name)}</b>" for name in names)
    return _TEMPLATE.format(
        title=html_text(title), subtitle=html_text(subtitle), tokens=tokens,
        selector=selector, image=data_uri(jpeg_bytes(embedded), "image/jpeg"),
        data=script_json(payload), alpha=float(alpha),
        first=script_json(names[0] if names else ""), width=width,
    )


_TEMPLATE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 1.5em; color: #222; max-width: 1700px; }}
h1 {{ font-size: 1.2em; margin: 0 0 .2em; }}
.sub {{ color: #666; margin: 0 0 1em; font-size: .9em; }}
.bar {{ margin: .6em 0; }}
.text {{ white-space: pre-wrap; line-height: 1.9; font-size: 1.05em; padding: .6em;
         border: 1px solid #ddd; border-radius: 6px; background: #fafafa; }}
.tok {{ cursor: pointer; border-radius: 3px; padding: 1px 0; }}
.tok:hover {{ background: #ffe9a8; }}
.tok.on {{ background: #ffb300; color: #000; }}
.views {{ display: flex; gap: 1em; flex-wrap: wrap; margin-top: 1em; }}
.views figure {{ margin: 0; }}
.stack {{ position: relative; width: min({width}px, 92vw); }}
.stack img {{ display: block; width: 100%; height: auto; }}
.stack img.heat {{ position: absolute; inset: 0; height: 100%; opacity: {alpha}; }}
.bar label {{ margin-right: 1.5em; }}
figcaption {{ font-size: .85em; color: #555; }}
</style></head>
<body>
<h1>{title}</h1>
<p class="sub">{subtitle}</p>
<div class="bar">{selector}
<label>map opacity <input type="range" id="alpha" min="0" max="1" step="0.05" value="{alpha}">
</label></div>
<div class="text" id="text">{tokens}</div>
<div class="views">
<figure><div class="stack"><img src="{image}" alt="input image">
<img class="heat" id="map" alt="map of the chosen token"></div>
<figcaption id="cap"></figcaption></figure>
</div>
<script>
const MAPS = {data};
let method = {first};
let token = 0;
const toks = Array.from(document.querySelectorAll(".tok"));
function show() {{
  toks.forEach((t, i) => t.classList.toggle("on", i === token));
  const maps = MAPS[method] || [];
  if (maps.length) {{ heat.src = maps[token]; }}
  const word = toks.length ? toks[token].textContent : "";
  document.getElementById("cap").textContent =
    method + ", token " + token + ": " + JSON.stringify(word);
}}
toks.forEach((t, i) => t.addEventListener("click", () => {{ token = i; show(); }}));
const heat = document.getElementById("map");
document.getElementById("alpha").addEventListener("input", (e) => {{
  heat.style.opacity = e.target.value;
}});
const select = document.getElementById("method");
if (select) select.addEventListener("change", () => {{ method = select.value; show(); }});
document.addEventListener("keydown", (e) => {{
  if (!toks.length) return;
  if (e.key === "ArrowRight") {{ token = Math.min(token + 1, toks.length - 1); show(); }}
  if (e.key === "ArrowLeft") {{ token = Math.max(token - 1, 0); show(); }}
}});
show();
</script>
</body></html>
"""
