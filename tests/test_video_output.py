"""A video's outputs: a map per generated token per temporal patch, as PNGs, on the viewer
page (a strip of the patches with play/pause) and in ``--save-maps`` files (the time axis).

The traced clip is the tiny Qwen2-VL's on six synthetic frames, each a flat colour, so a
PNG shows which frame it was drawn over; the browser half is tests/test_viewer_browser.py.
"""

from __future__ import annotations

import io
import json
import re

import numpy as np
import pytest
from PIL import Image

from mmxai import viewer, viewer_video
from mmxai.api import Explanation, make_method
from mmxai.commands.explain_output import render_overlays, write_method, write_pages
from mmxai.errors import InputError, MMXAIError
from mmxai.maps import split, to_image
from mmxai.model import ImageGrid
from mmxai.saved_maps import MEMBERS, load_maps, save_maps, save_trace_maps
from mmxai.trace import generate_trace
from mmxai.video import Video

N_FRAMES = 6
GREYS = [20 + 40 * k for k in range(N_FRAMES)]  # frame k is flat grey GREYS[k]


@pytest.fixture(scope="module")
def explanations(tiny_model) -> dict[str, Explanation]:
    """tam and logit-lens on one traced clip of the tiny Qwen2-VL (three temporal patches)."""
    model = tiny_model("qwen2-vl")
    frames = [Image.new("RGB", (84, 56), (g, g, g)) for g in GREYS]
    inputs = model.build_video_inputs(Video(frames, frames=N_FRAMES), "Describe.")
    methods = [make_method("tam"), make_method("logit-lens")]
    needs = methods[0].needs | methods[1].needs
    trace = generate_trace(model, inputs, needs, max_new_tokens=3, min_new_tokens=3)
    tokens = list(range(trace.n_generated))
    words = trace.token_strings()
    return {m.name: Explanation(m.name, m.describe_options(), trace, tokens, m(trace, tokens),
                                words) for m in methods}


def _clip(explanations):
    trace = next(iter(explanations.values())).trace
    return trace, trace.inputs.clips[0]


def test_the_clip_has_a_grid_per_temporal_patch(explanations):
    trace, clip = _clip(explanations)
    assert len(clip.patches) == len(trace.grids) >= 2
    assert [g.frame for g in viewer_video.clip_grids(trace.grids, 0)] == list(
        range(len(clip.patches)))
    sources = viewer_video.patch_sources(clip)
    assert sources.shape == (len(clip.patches), 2)
    np.testing.assert_array_equal(sources[:, 0], [clip.indices[p[0]] for p in clip.patches])
    labels = viewer_video.patch_labels(clip)
    assert labels[1].startswith(f"t1: frames {sources[1, 0]}-{sources[1, 1]} (")


def test_clip_map_paints_each_patch_s_own_grid(explanations):
    trace, clip = _clip(explanations)
    tam = explanations["tam"]
    painted = viewer_video.clip_map(tam.maps[1], trace.grids, 0, (28, 42))
    assert painted.shape == (len(clip.patches), 28, 42)
    for t, grid in enumerate(trace.grids):
        np.testing.assert_array_equal(painted[t], to_image(tam.maps[1], [grid], 0, (28, 42),
                                                           frame=t))
    blocks = split(tam.maps[1], trace.grids)
    assert not all(np.array_equal(blocks[0], b) for b in blocks[1:])  # the patches differ


def test_image_map_of_a_clip_needs_its_patch(explanations):
    """Explanation.image_map paints a clip's map on the patch asked for, and refuses to
    pick patch 0 for a caller who named none."""
    trace, clip = _clip(explanations)
    tam = explanations["tam"]
    with pytest.raises(InputError, match=r"^image_map: image 0 is a video; give frame=t"):
        tam.image_map(1)
    painted = [tam.image_map(1, size=(28, 42), frame=t) for t in range(len(trace.grids))]
    for t, grid in enumerate(trace.grids):  # patch t's own grid, over the whole frame
        np.testing.assert_array_equal(painted[t], to_image(tam.maps[1], [grid], 0, (28, 42),
                                                           frame=t))
    assert not np.array_equal(painted[0], painted[1])
    assert tam.image_map(1, frame=2).shape == (56, 84)  # the frame's own size


def test_one_png_per_token_per_patch_over_the_patch_s_first_frame(explanations, tmp_path):
    trace, clip = _clip(explanations)
    tam = explanations["tam"]
    flat = Explanation("flat", {}, trace, tam.tokens, np.zeros_like(tam.maps), tam.words)
    (pngs,) = render_overlays(flat, list(trace.inputs.images))
    names = [f"{tok:03d}_{viewer.safe_filename(w)}_t{t:02d}.png"
             for tok, w in zip(tam.tokens, tam.words, strict=True)
             for t in range(len(clip.patches))]
    assert sorted(pngs) == sorted(names)
    blue = viewer.jet(np.array(0.0)).astype(float)  # a map of zeros: all its lowest colour
    for t, patch in enumerate(clip.patches):
        image = Image.open(io.BytesIO(pngs[names[t]]))
        assert image.size == viewer.fit(clip.frames[0].size)
        corner = np.asarray(image.convert("RGB"))[5, 5].astype(float)
        shown = GREYS[int(clip.indices[patch[0]])]  # the first frame of patch t
        np.testing.assert_allclose(corner, (blue + shown) / 2, atol=1.5)
    write_method(tam, render_overlays(tam, list(trace.inputs.images)), tmp_path, "tam")
    assert sorted(p.name for p in (tmp_path / "tam").glob("*.png")) == sorted(names)
    saved = np.load(tmp_path / "tam" / "maps.npz")
    assert saved["grid_kinds"].tolist() == ["video"] * len(clip.patches)
    assert saved["grid_frames"].tolist() == list(range(len(clip.patches)))


def test_a_patch_s_pngs_share_the_token_s_scale(explanations):
    trace, clip = _clip(explanations)
    tam = explanations["tam"]
    heats = viewer_video.clip_map(tam.maps[0], trace.grids, 0, (8, 12))
    method = viewer.PageMethod.from_maps("tam", [heats])
    assert method.ranges == [viewer.value_range(heats)]
    greys = [np.asarray(Image.open(io.BytesIO(png))) for png in method.heatmaps[0]]
    hottest = int(np.argmax([h.max() for h in heats]))
    assert greys[hottest].max() == 255  # one scale: only the hottest patch reaches white
    assert all(g.max() < 255 for t, g in enumerate(greys) if heats[t].max() < heats.max())


def test_the_page_carries_the_frames_and_a_map_per_patch(explanations, tmp_path):
    trace, clip = _clip(explanations)
    (path,) = write_pages(explanations, list(trace.inputs.images), tmp_path, "video <x>")
    page = path.read_text()
    assert path.name == "index.html"
    maps = json.loads(re.search(r"const MAPS = (.*?);\n", page).group(1))
    frames = json.loads(re.search(r"const FRAMES = (.*?);  //", page).group(1))
    labels = json.loads(re.search(r"const FRAME_LABELS = (.*?);\n", page).group(1))
    assert list(maps) == ["tam", "logit-lens"]
    assert all(len(per_token) == len(clip.patches) for m in maps.values() for per_token in m)
    assert len(frames) == len(clip.patches) and all(f.startswith("data:image/jpeg") for f
                                                    in frames)
    assert labels == viewer_video.patch_labels(clip)
    assert 'id="play"' in page and 'id="frames"' in page
    assert "video &lt;x&gt;" in page and "http://" not in page


def test_an_image_page_has_no_time_strip():
    methods = [viewer.PageMethod.from_maps("m", [np.eye(4)])]
    page = viewer.html_page("t", Image.new("RGB", (8, 8)), ["a"], methods)
    assert 'id="play"' not in page and "const FRAMES = [];" in page


def test_a_hostile_frame_label_stays_text():
    label = '</script><img src=x onerror=alert(1)>'
    methods = [viewer.PageMethod.from_maps("m", [np.ones((2, 4, 4))])]
    frames = [Image.new("RGB", (8, 8))] * 2
    page = viewer.html_page("t", frames, ["a"], methods, frame_labels=[label, "t1"])
    assert page.count("</script>") == 1 and "<img src=x" not in page
    found = json.loads(re.search(r"const FRAME_LABELS = (.*?);\n", page).group(1))
    assert found == [label, "t1"]


@pytest.mark.parametrize(("heatmaps", "frames", "labels", "message"), [
    ([[b"p"]], 2, None, "token 0 has 1 maps for 2 temporal patches"),
    ([b"p"], 2, None, "token 0 has 1 maps for 2 temporal patches"),
    ([[b"p", b"q"]], None, None, "not one PNG"),
    ([[b"p", b"q"]], 2, ["only one"], "1 frame labels for 2 temporal patches"),
    ([b"p"], None, ["t0"], "frame labels name a video's temporal patches"),
    ([[]], 0, None, "one PIL image per temporal patch"),
])
def test_a_video_page_that_does_not_fit_is_refused_in_one_line(heatmaps, frames, labels,
                                                                 message):
    image = Image.new("RGB", (4, 4))
    shown = image if frames is None else [image] * frames
    with pytest.raises(ValueError, match=message):
        viewer.html_page("t", shown, ["a"], [viewer.PageMethod("m", heatmaps)],
                         frame_labels=labels)


# -- --save-maps: the time axis ----------------------------------------------------------------
def test_saved_maps_gain_the_time_axis_and_load_back_exactly(explanations, tmp_path):
    trace, clip = _clip(explanations)
    tam = explanations["tam"]
    path = save_trace_maps(tmp_path, "clip/1", trace, tam.maps, tam.tokens)
    with np.load(path) as raw:
        assert sorted(raw.files) == ["box", "fps", "frames", "maps", "special", "tokens"]
        rows, cols = trace.grids[0].shape
        assert raw["maps"].shape == (len(tam.tokens), len(clip.patches), rows, cols)
        np.testing.assert_array_equal(raw["frames"], viewer_video.patch_sources(clip))
        assert float(raw["fps"]) == clip.fps
    saved = load_maps(path)
    np.testing.assert_array_equal(saved.maps, tam.maps)
    assert [(g.kind, g.frame, g.shape, g.offset) for g in saved.grids] == [
        (g.kind, g.frame, g.shape, g.offset) for g in trace.grids]
    np.testing.assert_array_equal(saved.frames, viewer_video.patch_sources(clip))
    assert saved.fps == clip.fps and saved.n_tokens == len(tam.tokens)


def test_an_image_s_saved_maps_have_no_time_axis(tmp_path):
    grid = ImageGrid(0, np.arange(6), (2, 3))
    path = save_maps(tmp_path, "img", [" a"], [False], np.ones((1, 6)), [grid])
    with np.load(path) as raw:
        assert "frames" not in raw.files and raw["maps"].shape == (1, 2, 3)
    saved = load_maps(path)
    assert saved.frames is None and saved.fps is None and saved.grids[0].kind == "image"


def _video_grids(t: int, image: int = 0) -> list[ImageGrid]:
    return [ImageGrid(image, np.arange(4 * k, 4 * k + 4), (2, 2), frame=k, kind="video",
                      offset=4 * k) for k in range(t)]


@pytest.mark.parametrize(("grids", "frames", "message"), [
    (_video_grids(2), None, "need the source frames of each of its 2 temporal patches"),
    (_video_grids(2), np.zeros((3, 2), np.int64), "need the source frames"),
    (_video_grids(1) + [ImageGrid(0, np.arange(4, 8), (2, 2), frame=1, offset=4)],
     np.zeros((2, 2), np.int64), "one clip's temporal patches in order"),
    (list(reversed(_video_grids(2))), np.zeros((2, 2), np.int64), "in order"),
])
def test_saving_a_video_layout_that_is_not_one_clip_is_refused(grids, frames, message,
                                                               tmp_path):
    with pytest.raises(MMXAIError, match=message):
        save_maps(tmp_path, "s", [" a"], [False], np.ones((1, 8), np.float32), grids, frames)
    assert not list(tmp_path.iterdir())  # nothing half-written


def _write(path, **arrays):
    np.savez(path, **arrays)
    return path


@pytest.mark.parametrize(("arrays", "message"), [
    ({"maps": np.ones((1, 2, 2, 2), np.float32)}, "without 'frames'"),
    ({"maps": np.ones((1, 2, 2, 2), np.float32), "frames": np.zeros((3, 2), np.int64)},
     r"expected \(2, k\) frame indices"),
    ({"maps": np.ones((1, 2, 2, 2), np.float32), "frames": np.full((2, 2), -1)},
     "frame indices >= 0"),
    ({"maps": np.ones((1, 2, 2, 2), np.float32), "frames": np.zeros((2, 2), np.float32)},
     "frame indices"),
    ({"maps": np.ones((1, 2, 2), np.float32), "frames": np.zeros((2, 2), np.int64)},
     "belong to a video's maps"),
    ({"maps": np.ones((1, 2, 2, 2), np.float32), "frames": np.zeros((2, 2), np.int64),
      "fps": np.asarray(0.0)}, "'fps'"),
    ({"maps": np.ones((2, 2, 2, 2), np.float32), "frames": np.zeros((2, 2), np.int64)},
     "2 maps for 1 tokens"),
    ({"maps": np.full((1, 2, 2, 2), np.nan, np.float32), "frames": np.zeros((2, 2), np.int64)},
     "NaN"),
    ({"maps": np.ones((1, 2, 2, 2), np.float32), "frames": np.zeros((2, 2), np.int64),
      "flat": np.ones((1, 8), np.float32), "grids": np.asarray("[]")}, "hold their layout"),
])
def test_load_maps_refuses_a_broken_time_axis_in_one_line(arrays, message, tmp_path):
    path = _write(tmp_path / "s.npz", tokens=np.asarray([" a"]), **arrays)
    with pytest.raises(InputError, match=message) as caught:
        load_maps(path)
    assert "\n" not in str(caught.value) and str(path) in str(caught.value)


def test_a_maps_file_from_another_tool_reads_with_its_time_axis(tmp_path):
    maps = np.random.default_rng(0).random((2, 3, 2, 4)).astype(np.float32)
    frames = np.asarray([[0, 15], [30, 45], [60, 60]])
    path = _write(tmp_path / "other.npz", tokens=np.asarray([" a", " b"]), maps=maps,
                  frames=frames)
    saved = load_maps(path)
    assert "frames" in MEMBERS and saved.fps is None
    assert [g.frame for g in saved.grids] == [0, 1, 2] and saved.grids[2].offset == 16
    np.testing.assert_array_equal(split(saved.maps, saved.grids)[2], maps[:, 2])
    np.testing.assert_array_equal(saved.frames, frames)


@pytest.mark.slow
def test_mmxai_explain_of_a_clip_writes_its_time_axis_everywhere(tmp_path):
    from mmxai import cli

    clip = tmp_path / "clip.gif"
    frames = [Image.new("RGB", (84, 56), (g, g, g)) for g in GREYS]
    frames[0].save(clip, save_all=True, append_images=frames[1:], duration=100, loop=0)
    out, saved = tmp_path / "out", tmp_path / "saved"
    assert cli.main(["explain", "tiny:qwen2-vl", str(clip), "--frames", str(N_FRAMES),
                     "--method", "tam", "--max-new-tokens", "2", "--out", str(out),
                     "--save-maps", str(saved)]) == 0
    maps = load_maps(saved / "tam" / "clip.npz")
    patches = len(maps.grids)
    assert patches >= 2 and maps.frames.shape == (patches, 2) and maps.fps == 10.0
    tokens = np.load(out / "tam" / "maps.npz")["tokens"].tolist()
    assert len(tokens) == maps.n_tokens
    pngs = sorted(p.name for p in (out / "tam").glob("*.png"))
    assert len(pngs) == maps.n_tokens * patches
    assert [p[-7:] for p in pngs[:patches]] == [f"t{t:02d}.png" for t in range(patches)]
    page = (out / "index.html").read_text()
    labels = json.loads(re.search(r"const FRAME_LABELS = (.*?);\n", page).group(1))
    assert labels[1].startswith(f"t1: frames {maps.frames[1, 0]}-{maps.frames[1, 1]} (")
