"""Video input (docs/video.md): reading clips, Qwen's and LLaVA-OneVision's video
preprocessing, grids per temporal patch (per frame for LLaVA-OneVision), methods on a traced
clip, and every refusal in one line. Tiny random Qwen2-VL, Qwen2.5-VL and LLaVA-OneVision on
generated 2-8 frame clips, offline, CPU."""

from __future__ import annotations

import json
import shutil
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from mmxai.api import explain_many, load_image
from mmxai.cli import main
from mmxai.errors import InputError, UnsupportedModelError
from mmxai.maps import split
from mmxai.model import load_model
from mmxai.plugins.models.onevision_video import FrameSettings, frame_pixels
from mmxai.plugins.models.onevision_video import sample_indices as ov_sample_indices
from mmxai.plugins.models.qwen2_vl import window_index
from mmxai.plugins.models.qwen_video import (
    VideoSettings,
    sample_indices,
    temporal_patches,
    video_pixels,
)
from mmxai.video import Video, open_video, video_argument

FAMILIES = ["qwen2-vl", "qwen2.5-vl"]
PROMPT = "describe the video"
W, H = 84, 56  # multiples of 28 inside the tiny processors' pixel budget: no resampling


def frames(n: int, seed: int = 0, size: tuple[int, int] = (W, H)) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
            for _ in range(n)]


def write_mp4(path, images: list[Image.Image], fps: int, rotation: int = 0) -> None:
    """``images`` as an MPEG-4 clip; ``rotation``: the display matrix's counter-clockwise
    angle (PyAV's ``set_display_rotation``), as a phone writes it."""
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.width, stream.height, stream.pix_fmt = W, H, "yuv420p"
        stream.set_display_rotation(rotation)
        for image in images:
            container.mux(stream.encode(av.VideoFrame.from_image(image)))
        container.mux(stream.encode())


def write_gif(path, images: list[Image.Image], duration: int = 250) -> None:
    images[0].save(path, save_all=True, append_images=images[1:], duration=duration, loop=0)


@pytest.fixture(params=FAMILIES, scope="module")
def model(request, tiny_model):
    return tiny_model(request.param)


# -- preprocessing ---------------------------------------------------------------------------
def test_two_copies_of_an_image_are_that_image(model):
    """Qwen takes an image as two identical frames: a two-frame clip of one image has
    exactly the image processor's pixel_values and grid, and the model takes them as video."""
    image_processor = model.processor.image_processor
    image = frames(1, seed=3, size=(100, 70))[0]  # resampled: the same resize both ways
    pixels, grid_thw = video_pixels(image_processor, [image, image],
                                    dict(image_processor.size), {})
    reference = image_processor(images=[image], return_tensors="pt")
    assert torch.equal(pixels, torch.as_tensor(reference["pixel_values"]).float())
    assert grid_thw.tolist() == reference["image_grid_thw"].tolist()
    with torch.no_grad():
        video = model.hf.model.get_video_features(pixel_values_videos=pixels,
                                                  video_grid_thw=grid_thw)
        still = model.hf.model.get_image_features(pixel_values=pixels, image_grid_thw=grid_thw)
    torch.testing.assert_close(video.pooler_output[0], still.pooler_output[0])
    assert video.pooler_output[0].shape[0] == int(grid_thw.prod()) // model.merge_size ** 2


def test_patch_layout_is_the_video_processors(model):
    """pixel_values_videos against the video processor's documented patchify (view, then
    permute to t, h/m, w/m, m, m, C, tps, ps, ps) on normalised frames, last frame padded."""
    image_processor = model.processor.image_processor
    clip = frames(5, seed=1)
    pixels, grid_thw = video_pixels(image_processor, clip, dict(image_processor.size), {})
    mean = torch.tensor(image_processor.image_mean).view(3, 1, 1)
    std = torch.tensor(image_processor.image_std).view(3, 1, 1)
    video = torch.stack([(torch.as_tensor(np.array(f)).permute(2, 0, 1).float() / 255 - mean)
                         / std for f in clip + clip[-1:]])  # 5 frames padded to 6
    tps, ps, m = 2, image_processor.patch_size, image_processor.merge_size
    gt, gh, gw = 3, H // ps, W // ps
    patches = video.view(gt, tps, 3, gh // m, m, ps, gw // m, m, ps)
    patches = patches.permute(0, 3, 6, 4, 7, 2, 1, 5, 8).reshape(gt * gh * gw, -1)
    assert grid_thw.tolist() == [[gt, gh, gw]]
    torch.testing.assert_close(pixels, patches, rtol=0, atol=1e-5)


def test_frames_in_one_call_are_the_processors_frame_by_frame(model):
    """video_pixels runs the image processor once on all the frames: bit for bit what one
    call per frame gives, each frame's tps copies replaced by the patch's successive frames."""
    image_processor = model.processor.image_processor
    clip = frames(3, seed=7, size=(123, 77))  # resampled; odd: the last frame repeated
    pixels, grid_thw = video_pixels(image_processor, clip, dict(image_processor.size), {})
    tps, ps = image_processor.temporal_patch_size, image_processor.patch_size
    alone = []
    for frame in clip:
        out = image_processor(images=[frame], return_tensors="pt")
        values = torch.as_tensor(out["pixel_values"]).float()
        alone.append(values.reshape(values.shape[0], -1, tps, ps, ps)[:, :, 0])
        assert out["image_grid_thw"][0, 1:].tolist() == grid_thw[0, 1:].tolist()
    assert grid_thw[0, 0] == 2  # 3 frames padded to 4, in 2 temporal patches
    expected = torch.cat([torch.stack([alone[i] for i in patch], dim=2).flatten(1)
                          for patch in temporal_patches(3, tps)])
    assert torch.equal(pixels, expected)


def test_sampling_follows_qwens_rule():
    settings = VideoSettings(3136, 25088)  # fps 2, 4 to 768 frames
    at_fps = sample_indices(30, 10.0, settings, 2)  # 3 s at 2 fps: 6 frames
    assert at_fps.tolist() == [0, 5, 10, 15, 20, 25]
    assert len(sample_indices(30, 10.0, settings, 2, fps=0.1)) == 4  # min_frames
    assert len(sample_indices(5, 10.0, settings, 2)) == 4  # clamped to the clip, even
    assert len(sample_indices(8, None, settings, 2)) == 8  # a folder: every frame
    assert len(sample_indices(8, 25.0, settings, 2, frames=3)) == 4  # rounded to pairs
    with pytest.raises(InputError, match="groups of 2"):
        sample_indices(8, 25.0, settings, 2, frames=1)
    with pytest.raises(InputError, match="12 frames asked for, but the clip has 8"):
        sample_indices(8, 25.0, settings, 2, frames=12)
    with pytest.raises(InputError, match=r"--frames 3 rounds up to 4 \(Qwen takes frames in "
                                         r"pairs\), but the clip has 3"):
        sample_indices(3, 25.0, settings, 2, frames=3)
    assert temporal_patches(5, 2) == [(0, 1), (2, 3), (4, 4)]


def test_qwen_sampling_takes_n_frames_inside_the_clip():
    """``arange(0, total, total / n)`` in float32 can step once more, onto frame ``total``:
    every length and rate gives exactly n ascending frames of the clip."""
    settings = VideoSettings(3136, 25088)  # fps 2, 4 to 768 frames
    # 367 frames at 24 fps: 15.3 s at 2 fps is 30 frames (float32 steps make 31, the last 367)
    assert len(sample_indices(367, 24.0, settings, 2)) == 30
    assert sample_indices(17, None, settings, 2, frames=14).tolist() == \
        [0, 1, 2, 3, 4, 6, 7, 8, 9, 10, 12, 13, 14, 15]  # 15 of them, the last 17
    for total in range(2, 241):
        for n in range(2, total + 1, 2):
            taken = sample_indices(total, None, settings, 2, frames=n)
            assert len(taken) == n and taken.max() < total, (total, n)
            assert bool((taken.diff() > 0).all()), (total, n)
        for rate in (23.976, 24.0, 25.0, 29.97, 30.0, 60.0):
            taken = sample_indices(total, rate, settings, 2)
            assert len(taken) % 2 == 0 and taken.max() < total, (total, rate)


# -- grids -----------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["mp4", "gif", "folder", "pil"])
def test_grid_per_temporal_patch_matches_video_grid_thw(model, kind, tmp_path):
    clip = frames(7, seed=2)
    if kind == "mp4":
        source = tmp_path / "clip.mp4"
        write_mp4(source, clip, fps=4)
    elif kind == "gif":
        source = tmp_path / "clip.gif"
        write_gif(source, clip)
    elif kind == "folder":
        source = tmp_path / "frames"
        source.mkdir()
        for i, image in enumerate(clip):
            image.save(source / f"frame{i + 8}.png")  # frame8 .. frame13: natural order
    else:
        source = clip
    # a file: 6 of its 7 frames; frames given as they are: all 7, the last one repeated
    timed = kind in ("mp4", "gif")
    inputs = model.build_video_inputs(Video(source, frames=6 if timed else None), PROMPT)
    t, h, w = inputs.features["video_grid_thw"][0].tolist()
    m = model.merge_size
    assert t == (3 if timed else 4) and (h * 14, w * 14) == (H, W)
    assert [(g.kind, g.frame, g.image, g.shape, g.box) for g in inputs.grids] == \
        [("video", k, 0, (h // m, w // m), (0.0, 0.0, 1.0, 1.0)) for k in range(t)]
    video_positions = torch.nonzero(inputs.input_ids == model.hf.config.video_token_id)
    assert inputs.image_positions.tolist() == video_positions.flatten().tolist()
    assert inputs.features["pixel_values_videos"].shape[0] == t * h * w
    clip_read = inputs.clips[0]
    assert clip_read.patches == temporal_patches(len(clip_read.frames), 2)
    assert clip_read.indices.tolist() == ([0, 1, 2, 3, 4, 5] if timed else list(range(7)))
    if kind in ("folder", "pil"):  # lossless sources: the sampled frames themselves
        assert all(np.array_equal(np.asarray(a), np.asarray(clip[i]))
                   for a, i in zip(clip_read.frames, clip_read.indices, strict=True))
    assert inputs.images[0] is clip_read.frames[0]
    words = model.tokenizer.decode(inputs.input_ids[inputs.prompt_positions])
    assert words == PROMPT
    if model.timed_video:  # Qwen2.5-VL: seconds per temporal patch of 2 sampled frames
        # a file: 6 of 7 frames at 4 fps, 2 / (6 / 7 * 4); frames as given: all at 2 fps
        assert inputs.features["second_per_grid_ts"].tolist() == \
            pytest.approx([0.5833333 if timed else 1.0])
    else:
        assert "second_per_grid_ts" not in inputs.features
    with torch.no_grad():
        model.hf(**inputs.features)  # the model takes the clip


def test_fps_sampling_of_a_file(model, tmp_path):
    write_mp4(tmp_path / "clip.mp4", frames(8), fps=8)  # 1 s
    one = model.build_video_inputs(Video(tmp_path / "clip.mp4"), PROMPT)  # 2 fps -> 4 (min)
    assert len(one.clips[0].frames) == 4 and one.clips[0].fps == pytest.approx(8)
    assert one.clips[0].times.tolist() == pytest.approx((one.clips[0].indices / 8).tolist())
    six = model.build_video_inputs(Video(tmp_path / "clip.mp4", fps=6.0), PROMPT)
    assert len(six.clips[0].frames) == 6
    assert six.features["video_grid_thw"][0, 0] == 3


def test_window_order_of_a_clip_is_the_towers(tiny_model):
    """Grad-CAM un-permutes Qwen2.5-VL's window order per temporal patch as the vision
    tower orders it: the first block reads the patch embeddings in ``window_index`` order."""
    model = tiny_model("qwen2.5-vl")
    inputs = model.build_video_inputs(Video(frames(6, size=(112, 84))), PROMPT)
    pixels, grid_thw = inputs.features["pixel_values_videos"], inputs.features["video_grid_thw"]
    visual, seen = model.hf.model.visual, []
    hook = visual.blocks[0].register_forward_pre_hook(
        lambda _m, args, kwargs: seen.append(args[0] if args else kwargs["hidden_states"]),
        with_kwargs=True)
    with torch.no_grad():
        model.hf.model.get_video_features(pixel_values_videos=pixels, video_grid_thw=grid_thw)
        embedded = visual.patch_embed(pixels)
    hook.remove()
    vision = model.hf.config.vision_config
    order = window_index(grid_thw, vision.spatial_merge_size, vision.window_size,
                         vision.patch_size)
    groups = embedded.reshape(len(order), -1, embedded.shape[-1])
    assert not torch.equal(order, torch.arange(len(order)))  # windows do permute here
    torch.testing.assert_close(seen[0].reshape(groups.shape), groups[order])


# -- methods ---------------------------------------------------------------------------------
WORKING = ["logit-lens", "tam", "arc", "attention", "rollout", "gradcam", "cp-lrp", "attnlrp"]
REFUSED = {"msea": "MSEA rescales still images",
           "occlusion": "one still image; this sample is a video (docs/video.md)",
           "eagle": "perturbs the pixels of one still image"}


def test_methods_on_a_clip(model):
    failures: dict = {}
    results = explain_many(model, None, PROMPT, WORKING + list(REFUSED), max_new_tokens=2,
                           failures=failures, video=Video(frames(4, seed=5)),
                           generate_kwargs=dict(min_new_tokens=2))
    assert sorted(results) == sorted(WORKING)
    for name, explanation in results.items():
        grids = explanation.trace.grids
        assert len(grids) == 2 and all(g.kind == "video" for g in grids)
        per_patch = split(explanation.maps, grids)
        assert [p.shape for p in per_patch] == [(2, *g.shape) for g in grids], name
        assert np.isfinite(explanation.maps).all(), name
    lens = results["logit-lens"]
    trace = lens.trace
    ids = trace.generated_ids[lens.tokens].tolist()
    expected = trace.image_logits(ids).clamp_min(0).numpy()  # ReLU'd logit at each video token
    np.testing.assert_allclose(lens.maps, expected, rtol=1e-5, atol=1e-5)
    assert not np.allclose(*split(lens.maps, trace.grids))  # the two patches differ
    for name, words in REFUSED.items():
        assert words in str(failures[name]) and "\n" not in str(failures[name]), name


def test_explain_opens_a_clip_once(model, monkeypatch):
    """explain checks the clip before the model runs and hands the opened source to the
    adapter: a list of frames is read (read_image) once, not again to sample it."""
    import mmxai.video

    reads = []
    monkeypatch.setattr(mmxai.video, "read_image",
                        lambda image, what: reads.append(what) or image)
    results = explain_many(model, None, PROMPT, ["logit-lens"], max_new_tokens=1,
                           video=Video(frames(4, seed=6)))
    assert len(results["logit-lens"].trace.grids) == 2
    assert reads == [f"video frame {i}" for i in range(4)]


# -- refusals --------------------------------------------------------------------------------
def test_animation_as_an_image_is_refused(tmp_path):
    write_gif(tmp_path / "anim.gif", frames(5))
    with pytest.raises(InputError, match=r"has 5 frames: explain it as a video.*qwen2-vl"):
        load_image(tmp_path / "anim.gif")
    with Image.open(tmp_path / "anim.gif") as opened, pytest.raises(InputError, match="5 fr"):
        load_image(opened)
    frames(1)[0].save(tmp_path / "still.gif")
    assert load_image(tmp_path / "still.gif").size == (W, H)


def test_unreadable_clips_are_one_line(tmp_path, monkeypatch):
    (tmp_path / "junk.mp4").write_bytes(b"not a video at all" * 10)
    (tmp_path / "empty").mkdir()
    write_gif(tmp_path / "one.gif", frames(1))
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    frames(1)[0].save(mixed / "a.png")
    frames(1, size=(56, 56))[0].save(mixed / "b.png")
    cases = {"junk.mp4": "cannot read it as a video", "empty": "no frame images",
             "one.gif": "a still image", "mixed": "frames of different sizes",
             "missing.webm": "no such file"}
    for name, words in cases.items():
        with pytest.raises(InputError, match=words) as info:
            open_video(Video(tmp_path / name))
        assert "\n" not in str(info.value) and name in str(info.value)
    monkeypatch.setitem(sys.modules, "av", None)  # PyAV not installed
    with pytest.raises(InputError, match=r"pip install 'mmxai\[video\]'"):
        open_video(Video(tmp_path / "junk.mp4"))


@pytest.mark.parametrize("rotation", [90, -90, 180])
def test_a_rotated_clip_is_read_upright(rotation, tmp_path):
    """A phone's clip is stored sideways with a display matrix; it is read turned as shown
    (ffmpeg's autorotate): the matrix's angle counter-clockwise, as images follow EXIF."""
    stored = np.zeros((H, W, 3), np.uint8)
    stored[:16, :28] = 255  # a white block in the top-left corner, on a wide frame
    write_mp4(tmp_path / "phone.mp4", [Image.fromarray(stored)] * 3, fps=4, rotation=rotation)
    read = np.asarray(open_video(Video(tmp_path / "phone.mp4")).read([0, 2])[1], np.float32)
    shown = np.rot90(stored, k=rotation // 90).astype(np.float32)  # counter-clockwise
    assert read.shape == shown.shape
    assert np.abs(read - shown).mean() < 8  # lossy MPEG-4, against 255 on a wrong turn
    assert np.abs(read - np.rot90(shown, k=2)).mean() > 40  # not turned the other way


def test_frames_of_different_sizes_are_refused_wherever_they_are():
    clip = frames(3) + frames(1, size=(56, 56)) + frames(3)  # one odd frame in the middle
    with pytest.raises(InputError, match=r"video <frames>: frames of different sizes "
                                         r"\(56x56, 84x56\)"):
        open_video(Video(clip))


def test_a_truncated_animation_is_refused(tmp_path):
    """A GIF cut where PIL cannot count its frames is refused, not handed to PyAV (which
    reads the frames before the cut as the whole clip)."""
    write_gif(tmp_path / "whole.gif", frames(5))
    data = (tmp_path / "whole.gif").read_bytes()
    cut = tmp_path / "cut.gif"
    for end in range(len(data) // 5, len(data)):
        cut.write_bytes(data[:end])
        try:
            with Image.open(cut) as image:
                assert image.n_frames >= 1
        except Exception:
            break
    else:
        pytest.fail("no cut of the GIF makes PIL fail to count its frames")
    with pytest.raises(InputError, match=r"video '.*cut.gif': a GIF whose frames cannot be "
                                         r"counted \(a truncated file\?\)") as info:
        open_video(Video(cut))
    assert "\n" not in str(info.value)


def test_options_and_mixing_are_refused(tmp_path):
    with pytest.raises(InputError, match="not both"):
        Video("x.mp4", fps=2.0, frames=4)
    with pytest.raises(InputError, match="above 0"):
        Video("x.mp4", fps=-1.0)
    for bad in (True, 2.5, "8", 0):
        with pytest.raises(InputError, match="expected a whole number of frames"):
            Video("x.mp4", frames=bad)
    numpy = Video("x.mp4", frames=np.int64(8))  # any whole number type, kept as an int
    assert numpy == Video("x.mp4", frames=8) and type(numpy.frames) is int
    assert type(Video("x.mp4", fps=np.float32(2)).fps) is float
    # the command line's options are checked by Video, and named as the flags
    with pytest.raises(InputError, match=r"^--fps and --frames: give one, not both"):
        video_argument(["a.mp4"], False, 2.0, 4)
    with pytest.raises(InputError, match=r"^--fps -1.0: expected a number of frames per "
                                         r"second above 0$"):
        video_argument(["a.mp4"], False, -1.0, None)
    with pytest.raises(InputError, match=r"^--frames 0: expected a whole number"):
        video_argument(["a.mp4"], False, None, 0)
    with pytest.raises(InputError, match="--fps: samples a video"):
        video_argument(["a.png"], False, 2.0, None)
    with pytest.raises(InputError, match="on its own: got 2 inputs"):
        video_argument(["a.mp4", "b.png"], False, None, None)
    assert video_argument(["a.png"], False, None, None) is None
    assert video_argument([str(tmp_path)], True, 3.0, None) == Video(str(tmp_path), 3.0)


def test_a_clip_past_the_context_is_refused_before_generating(model, monkeypatch):
    """4 frames of 84x56 are 12 video tokens (2 patches of 2x3); a context the chat does
    not fit is one line naming the count and the options that sample fewer frames."""
    clip = Video(frames(4, seed=11))
    length = model.build_video_inputs(clip, PROMPT).input_ids.shape[0]
    monkeypatch.setattr(model.hf.config.get_text_config(), "max_position_embeddings", length)
    with pytest.raises(InputError, match=r"video <frames>: 4 frames take 12 video tokens "
                                         rf"\({length} with the chat\), past .*context of "
                                         rf"{length} .*\(--frames N or --fps F\)$"):
        model.build_video_inputs(clip, PROMPT)
    monkeypatch.setattr(model.hf.config.get_text_config(), "max_position_embeddings",
                        length + 1)  # room for one new token
    assert model.build_video_inputs(clip, PROMPT).input_ids.shape[0] == length


def test_qwen_video_size_without_pixel_bounds_is_one_line():
    with pytest.raises(UnsupportedModelError, match=r"^ckpt: its video processor size "
                                                    r"\{'height': 224, 'width': 224\} has no "
                                                    "shortest_edge and longest_edge"):
        VideoSettings.read({"size": {"height": 224, "width": 224}}, None, "ckpt")


def test_video_to_a_family_without_video_is_one_line(tiny_model):
    with pytest.raises(UnsupportedModelError, match="takes no video; families with video: "
                                                    "llava-onevision, qwen2-vl, qwen2.5-vl"):
        explain_many(tiny_model("llava"), None, PROMPT, "logit-lens", max_new_tokens=1,
                     video=frames(4))
    with pytest.raises(InputError, match="images and video given"):
        explain_many(tiny_model("llava"), frames(1), PROMPT, video=frames(4))


# -- checkpoints and the command line --------------------------------------------------------
def test_checkpoint_video_config_sets_sizes_and_rate(tiny_dir, tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(tiny_dir("qwen2-vl"), folder)
    (folder / "video_preprocessor_config.json").write_text(
        '{"size": {"shortest_edge": 3136, "longest_edge": 3136}, "fps": 4.0, '
        '"min_frames": 2, "max_frames": 6}')
    model = load_model(str(folder))
    assert model.video_settings == VideoSettings(3136, 3136, 4.0, 2, 6)
    write_mp4(tmp_path / "clip.mp4", frames(8), fps=4)  # 2 s at 4 fps: 8, at most 6
    inputs = model.build_video_inputs(Video(tmp_path / "clip.mp4"), PROMPT)
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize

    height, width = smart_resize(H, W, 28, min_pixels=3136, max_pixels=3136)
    assert inputs.features["video_grid_thw"].tolist() == [[3, height // 14, width // 14]]
    assert height * width < H * W  # the video's budget, not the image processor's


def test_explain_command_on_a_gif(tiny_dir, tmp_path, capsys):
    write_gif(tmp_path / "clip.gif", frames(6))
    out = tmp_path / "out"
    qwen, llava = tiny_dir("qwen2.5-vl"), tiny_dir("llava")
    capsys.readouterr()  # building the folders prints progress
    code = main(["explain", str(qwen), str(tmp_path / "clip.gif"),
                 "--frames", "4", "--method", "logit-lens", "--max-new-tokens", "2",
                 "--out", str(out)])
    printed = capsys.readouterr()
    assert code == 0, printed.err
    assert "1 clip (4 frames, 2 temporal patches)" in printed.out
    saved = np.load(out / "logit-lens" / "maps.npz")
    assert saved["grid_frames"].tolist() == [0, 1] and saved["maps"].shape[0] == 2
    # run.json says which source frames the model saw and what each temporal patch covers
    video = json.loads((out / "run.json").read_text())["video"]["0"]
    assert video["source_frames"] == 6 and video["sampled_frames"] == [0, 1, 3, 4]
    assert video["temporal_patches"] == [[0, 1], [3, 4]]
    code = main(["explain", str(llava), str(tmp_path / "clip.gif"),
                 "--out", str(tmp_path / "out2")])
    err = capsys.readouterr().err
    assert code == 2 and "takes no video" in err and len(err.strip().splitlines()) == 1


# -- LLaVA-OneVision: a grid per frame, the clip's newline in none ---------------------------
@pytest.fixture(scope="module")
def onevision(tiny_model):
    return tiny_model("llava-onevision")


def first_layer_input(model, features: dict) -> torch.Tensor:
    """(L, d): what the first decoder layer reads, image and video features merged in."""
    seen = []
    hook = model.decoder_layers()[0].register_forward_pre_hook(
        lambda _m, args, kwargs: seen.append(args[0] if args else kwargs["hidden_states"]),
        with_kwargs=True)
    with torch.no_grad():
        model.hf(**features)
    hook.remove()
    return seen[0][0]


def test_onevision_grids_are_the_tokens_each_frame_fills(onevision):
    """Nudging frame k's pixels changes exactly grid k's positions of the LLM input; nudging
    the newline parameter changes only the last video token, which no grid holds."""
    inputs = onevision.build_video_inputs(Video(frames(3, seed=4)), PROMPT)
    features = inputs.features
    side, pooled = onevision.pooled_side()
    assert features["pixel_values_videos"].shape == (1, 3, 3, side * 14, side * 14)
    assert [(g.kind, g.frame, g.image, g.shape, g.box) for g in inputs.grids] == \
        [("video", k, 0, (pooled, pooled), (0.0, 0.0, 1.0, 1.0)) for k in range(3)]
    video = torch.nonzero(inputs.input_ids == onevision.hf.config.video_token_id).flatten()
    assert len(video) == 3 * pooled * pooled + 1
    assert inputs.image_positions.tolist() == video[:-1].tolist()
    base = first_layer_input(onevision, features)
    for k, grid in enumerate(inputs.grids):
        nudged = features["pixel_values_videos"].clone()
        nudged[0, k] += 0.5
        moved = first_layer_input(onevision, {**features, "pixel_values_videos": nudged})
        changed = torch.nonzero((moved - base).abs().amax(-1) > 0).flatten()
        assert changed.tolist() == grid.positions.tolist(), k
    newline = onevision.hf.model.image_newline
    with torch.no_grad():
        newline += 1.0
        try:
            moved = first_layer_input(onevision, features)
        finally:
            newline -= 1.0
    changed = torch.nonzero((moved - base).abs().amax(-1) > 0).flatten()
    assert changed.tolist() == [int(video[-1])]
    assert onevision.tokenizer.decode(inputs.input_ids[inputs.prompt_positions]) == PROMPT
    clip = inputs.clips[0]
    assert clip.patches == [(0,), (1,), (2,)] and clip.indices.tolist() == [0, 1, 2]


def test_onevision_frame_is_the_images_base_view(onevision):
    """Without video settings the video processor is loaded from the image processor's
    file: a frame is resized to the tower's square and normalised exactly as an image's base
    view (pixel_values[:, 0]); a clip of identical frames gives identical frame features."""
    image_processor = onevision.processor.image_processor
    image = frames(1, seed=6, size=(100, 70))[0]  # resampled: the same resize both ways
    settings = FrameSettings.read(None, image_processor)
    reference = image_processor(images=[image], return_tensors="pt")["pixel_values"][0, 0]
    assert np.array_equal(frame_pixels(image_processor, image, settings.pixels),
                          reference.numpy())
    inputs = onevision.build_video_inputs(Video([image, image]), PROMPT)
    torch.testing.assert_close(inputs.features["pixel_values_videos"][0],
                               torch.stack([reference, reference]))
    with torch.no_grad():
        out = onevision.hf.model.get_video_features(
            pixel_values_videos=inputs.features["pixel_values_videos"])
    per_frame = onevision.pooled_side()[1] ** 2
    features = out.pooler_output[0]
    assert features.shape[0] == 2 * per_frame + 1
    torch.testing.assert_close(features[:per_frame], features[per_frame:2 * per_frame])
    torch.testing.assert_close(features[-1], onevision.hf.model.image_newline.to(features))


def test_onevision_sampling_is_transformers_default():
    assert ov_sample_indices(7, 4.0, None, 4).tolist() == [0, 1, 3, 5]  # arange(n) * total // n
    assert ov_sample_indices(16, 8.0, 2.0, None).tolist() == [0, 4, 8, 12]  # 2 s at 2 fps
    assert ov_sample_indices(16, 8.0, 0.01, None).tolist() == [0]  # at least one frame
    assert ov_sample_indices(5, 8.0, None, None).tolist() == list(range(5))  # no sampling
    assert ov_sample_indices(5, None, 2.0, None).tolist() == list(range(5))  # a folder
    with pytest.raises(InputError, match="6 frames asked for, but the clip has 5"):
        ov_sample_indices(5, 8.0, None, 6)


def test_onevision_clip_past_the_context_is_refused(onevision, monkeypatch):
    clip = Video(frames(3, seed=12))
    length = onevision.build_video_inputs(clip, PROMPT).input_ids.shape[0]
    monkeypatch.setattr(onevision.hf.config.get_text_config(), "max_position_embeddings",
                        length - 1)
    with pytest.raises(InputError, match=r"3 frames take \d+ video tokens .*--frames N"):
        onevision.build_video_inputs(clip, PROMPT)


def test_onevision_video_settings(tiny_dir, tmp_path):
    """A checkpoint's video settings: their mean/std, their default sampling; a size the
    tower cannot pool is one line."""
    folder = tmp_path / "model"
    shutil.copytree(tiny_dir("llava-onevision"), folder)
    config = folder / "video_preprocessor_config.json"
    config.write_text('{"size": {"height": 56, "width": 56}, "image_mean": [0.5, 0.5, 0.5], '
                      '"image_std": [0.5, 0.5, 0.5], "do_sample_frames": true, "num_frames": 2}')
    model = load_model(str(folder))
    clip = frames(5, seed=7, size=(56, 56))  # the tower's size: no resampling
    inputs = model.build_video_inputs(Video(clip), PROMPT)
    assert inputs.clips[0].indices.tolist() == [0, 2]
    expected = np.stack([np.asarray(clip[i]).transpose(2, 0, 1) / 255 * 2 - 1 for i in (0, 2)])
    np.testing.assert_allclose(inputs.features["pixel_values_videos"][0].numpy(), expected,
                               atol=1e-6)
    assert len(model.build_video_inputs(Video(clip, frames=3), PROMPT).grids) == 3
    config.write_text('{"size": {"height": 28, "width": 28}}')
    with pytest.raises(UnsupportedModelError, match="28x28 frames, but the vision tower pools "
                                                    "56x56") as info:
        load_model(str(folder)).build_video_inputs(Video(clip), PROMPT)
    assert "\n" not in str(info.value)


def test_onevision_methods_map_every_frame(onevision):
    failures: dict = {}
    results = explain_many(onevision, None, PROMPT, WORKING + list(REFUSED), max_new_tokens=2,
                           failures=failures, video=Video(frames(3, seed=8)),
                           generate_kwargs=dict(min_new_tokens=2))
    assert sorted(results) == sorted(WORKING)
    for name, explanation in results.items():
        grids = explanation.trace.grids
        assert [(g.kind, g.frame) for g in grids] == [("video", k) for k in range(3)], name
        assert [p.shape for p in split(explanation.maps, grids)] == \
            [(2, *g.shape) for g in grids], name
        assert np.isfinite(explanation.maps).all(), name
    lens = results["logit-lens"]
    ids = lens.trace.generated_ids[lens.tokens].tolist()
    expected = lens.trace.image_logits(ids).clamp_min(0).numpy()
    np.testing.assert_allclose(lens.maps, expected, rtol=1e-5, atol=1e-5)
    tam = split(results["tam"].maps, results["tam"].trace.grids)
    assert not np.allclose(tam[0], tam[1])  # the frames differ, so do their maps
    for name, words in REFUSED.items():
        assert words in str(failures[name]) and "\n" not in str(failures[name]), name


def test_onevision_gradcam_pools_each_frame_as_the_model(onevision):
    """A frame's (S, S) scores reach its (P, P) grid through the model's own pooling:
    bilinear, frame by frame (a constant frame stays constant, frames stay apart)."""
    inputs = onevision.build_video_inputs(Video(frames(3, seed=9)), PROMPT)
    side, pooled = onevision.pooled_side()
    scores = torch.rand(3, side * side)
    flat = onevision.vision_tokens_to_grids([scores], inputs)
    expected = torch.nn.functional.interpolate(scores.reshape(3, 1, side, side),
                                               size=[pooled, pooled], mode="bilinear")
    torch.testing.assert_close(flat, expected.reshape(-1))
    constant = onevision.vision_tokens_to_grids([torch.arange(3.0)[:, None].expand(3, side ** 2)],
                                                inputs)
    assert constant.reshape(3, -1).tolist() == [[k] * pooled ** 2 for k in (0.0, 1.0, 2.0)]


def test_onevision_explain_command_on_a_gif(tiny_dir, tmp_path, capsys):
    write_gif(tmp_path / "clip.gif", frames(6, seed=10))
    folder, out = tiny_dir("llava-onevision"), tmp_path / "out"
    capsys.readouterr()
    code = main(["explain", str(folder), str(tmp_path / "clip.gif"), "--frames", "4",
                 "--method", "tam", "--max-new-tokens", "2", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    saved = np.load(out / "tam" / "maps.npz")
    assert saved["grid_frames"].tolist() == [0, 1, 2, 3] and saved["maps"].shape[0] == 2
    assert len(list((out / "tam").glob("000_*_t*.png"))) == 4
    code = main(["explain", str(folder), str(tmp_path / "clip.gif"), "--frames", "9",
                 "--out", str(tmp_path / "out2")])
    err = capsys.readouterr().err
    assert code == 2 and "9 frames asked for, but the clip has 6" in err
    assert len(err.strip().splitlines()) == 1
