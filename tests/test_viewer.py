"""Rendering: the JET colormap, overlays, file names and the self-contained HTML page."""

from __future__ import annotations

import html
import io
import json
import re

import numpy as np
import pytest
from PIL import Image

from mmxai import viewer


def test_jet_runs_blue_green_red():
    colours = viewer.jet(np.array([0.0, 0.5, 1.0])).astype(int)
    assert colours.shape == (3, 3)
    low, mid, high = colours
    assert low.argmax() == 2 and low[0] == 0  # blue, no red
    assert mid.argmax() == 1 and mid[1] == 255  # green at its peak
    assert high.argmax() == 0 and high[2] == 0  # red, no blue


def test_jet_clips_and_keeps_shape():
    values = np.array([[-1.0, np.nan], [2.0, 0.25]])
    colours = viewer.jet(values)
    assert colours.shape == (2, 2, 3) and colours.dtype == np.uint8
    np.testing.assert_array_equal(colours[0, 0], viewer.jet(np.array(0.0)))
    np.testing.assert_array_equal(colours[0, 1], viewer.jet(np.array(0.0)))
    np.testing.assert_array_equal(colours[1, 0], viewer.jet(np.array(1.0)))


def test_normalise_spans_unit_interval():
    heat = np.array([[2.0, 4.0], [6.0, 10.0]])
    out = viewer.normalise(heat)
    assert out.min() == 0.0 and out.max() == 1.0
    np.testing.assert_allclose(out, [[0.0, 0.25], [0.5, 1.0]])


@pytest.mark.parametrize("heat", [np.full((3, 3), 7.0), np.array([[np.nan, np.inf]])])
def test_normalise_degenerate_maps_are_zero(heat):
    out = viewer.normalise(heat)
    assert np.isfinite(out).all() and (out == 0).all()


def test_overlay_blends_with_alpha():
    image = Image.new("RGB", (8, 6), (10, 20, 30))
    heat = np.zeros((6, 8))
    heat[0, 0] = 1.0
    untouched = np.asarray(viewer.overlay(image, heat, alpha=0.0))
    assert (untouched == [10, 20, 30]).all()
    pure = np.asarray(viewer.overlay(image, heat, alpha=1.0))
    np.testing.assert_array_equal(pure, viewer.jet(viewer.normalise(heat)))
    half = np.asarray(viewer.overlay(image, heat, alpha=0.5)).astype(int)
    expected = (viewer.jet(viewer.normalise(heat)).astype(int) + [10, 20, 30]) / 2
    assert np.abs(half - expected).max() <= 1


def test_overlay_resizes_a_coarse_map_to_the_image():
    image = Image.new("RGB", (40, 20), (0, 0, 0))
    heat = np.array([[0.0, 1.0]])  # hot on the right half
    out = np.asarray(viewer.overlay(image, heat, alpha=1.0)).astype(int)
    assert out.shape == (20, 40, 3)
    assert out[10, 35, 0] > out[10, 35, 2]  # right: red
    assert out[10, 4, 2] > out[10, 4, 0]  # left: blue


def test_heat_png_decodes_to_the_map_size():
    png = viewer.heat_png(np.random.default_rng(0).random((12, 20)))
    decoded = Image.open(io.BytesIO(png))
    assert decoded.format == "PNG" and decoded.size == (20, 12)


@pytest.mark.parametrize(("size", "expected"), [
    ((4000, 2000), (1024, 512)),  # big photos shrink
    ((56, 28), (384, 192)),  # tiny images grow
    ((500, 600), (500, 600)),  # in range: unchanged
])
def test_fit(size, expected):
    assert viewer.fit(size) == expected


@pytest.mark.parametrize(("token", "expected"), [
    (" cat", "cat"), ("../etc/passwd", "etc_passwd"), (" .", "_"), ("<|im_end|>", "im_end"),
    ("a b", "a_b"), ("é", "_"), ("", "_"),
])
def test_safe_filename(token, expected):
    assert viewer.safe_filename(token) == expected


def _page(words, names):
    image = Image.new("RGB", (30, 20), (200, 100, 50))
    rng = np.random.default_rng(0)
    methods = [viewer.PageMethod(n, [viewer.heat_png(rng.random((4, 6))) for _ in words])
               for n in names]
    return viewer.html_page("title <x>", image, words, methods, subtitle="prompt")


def _maps_payload(page: str) -> dict:
    match = re.search(r"const MAPS = (.*?);\n", page)
    return json.loads(match.group(1))


def test_html_page_is_self_contained_and_lists_the_tokens():
    words = [" a", " red", "</script>", " <b>"]
    page = _page(words, ["first", "second"])
    sources = re.findall(r'(?:src|href)\s*=\s*"([^"]*)"', page)
    assert sources and all(s.startswith("data:image/") for s in sources)
    assert "http://" not in page and "https://" not in page
    assert page.count("</script>") == 1  # a token cannot end the script early
    for word in words:
        assert f">{html.escape(word)}</span>" in page
    assert '<select id="method">' in page
    payload = _maps_payload(page)
    assert list(payload) == ["first", "second"]
    assert all(len(v) == len(words) and v[0].startswith("data:image/png;base64,")
               for v in payload.values())
    assert "title &lt;x&gt;" in page


def test_html_page_with_one_method_has_no_selector():
    page = _page([" one"], ["only"])
    assert "<select" not in page and "<b>only</b>" in page


def test_html_page_rejects_missing_maps():
    image = Image.new("RGB", (4, 4))
    with pytest.raises(ValueError, match="1 maps for 2 tokens"):
        viewer.html_page("t", image, ["a", "b"], [viewer.PageMethod("m", [b"png"])])
