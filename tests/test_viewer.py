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


def _payload(page: str, name: str) -> dict:
    return json.loads(re.search(rf"const {name} = (.*?);\n", page).group(1))


def test_value_range_and_grey_png_keep_the_map_s_scale():
    heat = np.array([[np.nan, 2.0], [6.0, 10.0]])
    assert viewer.value_range(heat) == (0.0, 10.0)  # NaN read as 0, as normalise reads it
    assert viewer.value_range(np.zeros((0, 3))) == (0.0, 0.0)
    decoded = Image.open(io.BytesIO(viewer.grey_png(heat)))
    assert decoded.mode == "L" and decoded.size == (2, 2)
    np.testing.assert_array_equal(np.asarray(decoded), [[0, 51], [153, 255]])


def test_labelled_keeps_the_size_and_draws_the_label_and_a_colour_bar():
    image = Image.new("RGB", (384, 384), (200, 200, 200))
    out = viewer.labelled(image, 'tam: token 1 "cat"', 0.0, 2.5)
    assert out.size == image.size
    pixels = np.asarray(out).astype(int)
    np.testing.assert_array_equal(pixels[:340], 200)  # above the caption band: untouched
    band = pixels[-27:]
    assert band.mean() < 120  # a dark band
    middle = band[band.shape[0] // 2]
    jet_columns = np.flatnonzero(middle.max(axis=1) - middle.min(axis=1) > 150)
    left, right = middle[jet_columns[0]], middle[jet_columns[-1]]
    assert left.argmax() == 2 and right.argmax() == 0  # blue (low) to red (high)
    assert 0.2 * 384 < jet_columns[-1] - jet_columns[0] < 0.3 * 384
    assert jet_columns[0] > 384 / 2  # the bar on the right, the label on the left
    text = band[:, : jet_columns[0] // 2]
    assert (text.min(axis=2) > 200).any()  # white label pixels on the dark band


@pytest.mark.parametrize("label", ["猫 \u2028 \udcff", "x" * 500, ""])
@pytest.mark.parametrize("size", [(100, 60), (1024, 10), (10, 1024)])
def test_labelled_takes_any_label_and_shape(label, size):
    out = viewer.labelled(Image.new("RGB", size), label, -1e-9, 3e7)
    assert out.size == size


@pytest.mark.parametrize(("pieces", "words", "gaps"), [
    (["a", " green", " .", "</s>"], ["a", "green", ".", "</s>"], ["", " ", " ", ""]),  # words
    ([" cat", "s"], [" cat", "s"], ["", ""]),  # byte-level BPE: the space is in the token
    ([" cat"], ["cat"], [" "]),  # SentencePiece drops a lone token's space
    (["x", " "], ["y", ""], ["", " "]),
])
def test_token_gaps(pieces, words, gaps):
    assert viewer.token_gaps(pieces, words) == gaps


def test_html_page_spaces_the_tokens_with_their_gaps():
    image = Image.new("RGB", (30, 20))
    methods = [viewer.PageMethod.from_maps("m", [np.eye(4)] * 3)]
    page = viewer.html_page("t", image, ["a", "green", "x"], methods, gaps=["", " ", "<"])
    assert ('title="token 0">a</span> <span class="tok" data-i="1" title="token 1">green'
            '</span>&lt;<span class="tok" data-i="2"') in page
    with pytest.raises(ValueError, match="2 gaps for 3 tokens"):
        viewer.html_page("t", image, ["a", "b", "c"], methods, gaps=["", " "])


def test_html_page_carries_each_map_s_range_and_the_text_half():
    image = Image.new("RGB", (30, 20))
    text = np.array([[0.0, 0.0], [0.25, 0.0]])
    methods = [viewer.PageMethod.from_maps("tam", [np.full((4, 4), 2.0), np.arange(16.0)
                                                   .reshape(4, 4)], text),
               viewer.PageMethod.from_maps("plain", [np.zeros((4, 4))] * 2)]
    page = viewer.html_page("t", image, ["a", "b"], methods)
    assert _payload(page, "RANGES") == {"tam": [[2.0, 2.0], [0.0, 15.0]],
                                        "plain": [[0.0, 0.0], [0.0, 0.0]]}
    assert _payload(page, "TEXT") == {"tam": [[0.0, 0.0], [0.25, 0.0]]}  # plain has none
    assert "@@" not in page  # every placeholder filled


def test_a_token_that_looks_like_a_placeholder_stays_text():
    page = _page(["@@title@@", "@@maps@@"], ["m"])
    assert '>@@title@@</span>' in page and '>@@maps@@</span>' in page
    assert page.count("<title>title &lt;x&gt;</title>") == 1


@pytest.mark.parametrize(("method", "message"), [
    (viewer.PageMethod("m", [b"p"], [(0.0, 1.0)] * 2), "2 value ranges for 1 tokens"),
    (viewer.PageMethod("m", [b"p"], [(0.0, float("nan"))]), "not finite"),
    (viewer.PageMethod("m", [b"p"], None, np.zeros((1, 2))), r"shape \(1, 2\), expected \(1, 1\)"),
    (viewer.PageMethod("m", [b"p"], None, np.full((1, 1), 1.5)), r"in \[0, 1\]"),
])
def test_html_page_refuses_what_does_not_fit_in_one_line(method, message):
    with pytest.raises(ValueError, match=message):
        viewer.html_page("t", Image.new("RGB", (4, 4)), ["a"], [method])


def test_html_page_refuses_an_opacity_outside_the_unit_interval():
    with pytest.raises(ValueError, match="opacity must be in"):
        viewer.html_page("t", Image.new("RGB", (4, 4)), [], [], alpha=1.5)


def test_tam_text_relevance_is_the_text_half_of_earlier_tokens(tiny_model):
    from mmxai import api
    from mmxai.methods.tam import TAM

    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (84, 112, 3), np.uint8))
    explanation = api.explain_many(tiny_model("qwen2-vl"), image, "Describe.", ["tam"],
                                   max_new_tokens=6,
                                   generate_kwargs={"min_new_tokens": 6})["tam"]
    n = explanation.trace.n_generated
    tam = TAM()
    text = tam.text_relevance(explanation.trace, range(n))
    assert text.shape == (n, n) and text.dtype == np.float32
    assert np.isfinite(text).all() and text.min() >= 0 and text.max() <= 1
    np.testing.assert_array_equal(np.triu(text), 0)  # itself and later tokens: not context
    assert text[1:].max() > 0
    np.testing.assert_array_equal(tam.text_relevance(explanation.trace, [3, 1]), text[[3, 1]])
    np.testing.assert_array_equal(tam.explain(explanation.trace, range(n)), explanation.maps)


class _Texts:
    """A method with a text half: what it returns is given."""

    def __init__(self, name, result):
        self.name, self.result = name, result

    def text_relevance(self, trace, tokens):
        if isinstance(self.result, Exception):
            raise self.result
        return self.result


def test_text_relevances_keep_the_good_and_say_why_others_are_left_off():
    from types import SimpleNamespace

    from mmxai.commands.explain import text_relevances

    trace = SimpleNamespace(n_generated=3)
    explanations = {name: SimpleNamespace(trace=trace, tokens=[0, 2])
                    for name in ("good", "raises", "shape", "range", "no-text")}
    good = np.array([[0.0, 0.5, 0.0], [0.2, 0.4, 0.0]])
    methods = [_Texts("good", good), _Texts("raises", KeyError("k")),
               _Texts("shape", np.zeros((2, 2))), _Texts("range", good * 3),
               SimpleNamespace(name="no-text"), _Texts("not-run", good)]
    said = []
    found = text_relevances(methods, explanations, said.append)
    assert list(found) == ["good"]
    np.testing.assert_array_equal(found["good"], good[:, [0, 2]].astype(np.float32))
    assert said == [
        "method 'raises': the page shows no text relevances (KeyError: 'k')",
        "method 'shape': the page shows no text relevances (ValueError: shape (2, 2), "
        "expected (2, 3))",
        "method 'range': the page shows no text relevances (ValueError: values outside "
        "[0, 1])"]
