"""LLaVA-OneVision adapter on a tiny random-weight model (offline, CPU).

The tiny model: 56-pixel SigLIP tiles of 4 x 4 patches, up to 3 x 3 tiles, anyres_max_4 (a
high-res grid of more than 1.1**2 * 4 tiles' worth of cells is shrunk).
"""

from __future__ import annotations

import json

import helpers_models
import numpy as np
import pytest
import torch
from helpers_models import (
    PROMPT,
    assert_grids_well_formed,
    assert_round_trip,
    assert_trace_agrees,
    assert_vision_map_matches_model,
    crop_of,
    noise,
    ramps,
    unnormalise,
    vision_call_shapes,
)
from test_batching import NEEDS, assert_same_trace

from mmxai.errors import InputError
from mmxai.model import load_model
from mmxai.plugins.models.llava_onevision import LlavaOnevision
from mmxai.trace import generate_trace, generate_traces

#: Corners and inner patches of a 4 x 4 tile (SigLIP has no CLS): corners are what
#: unpadding cuts.
PROBES = (0, 3, 5, 10, 12, 15)


@pytest.fixture(scope="module")
def onevision():
    return LlavaOnevision.tiny(seed=0)


def image_token_count(model, inputs) -> int:
    return int((inputs.input_ids == model.image_token_id()).sum())


def test_save_and_load_model_gives_identical_logits(tmp_path):
    assert_round_trip(LlavaOnevision, tmp_path)


def test_hub_layout_checkpoint_loads(onevision, tmp_path):
    """llava-hf/llava-onevision-*-hf: the stock processor's name, the image processor in
    preprocessor_config.json under its torchvision class name, a video processor config: it
    loads without torchvision, with the processor's settings."""
    onevision.hf.save_pretrained(tmp_path)
    onevision.processor.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "processor_config.json").read_text())
    image_config = config.pop("image_processor")
    image_config.update(image_processor_type="LlavaOnevisionImageProcessor",
                        processor_class="LlavaOnevisionProcessor")
    config["processor_class"] = "LlavaOnevisionProcessor"
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(image_config))
    (tmp_path / "processor_config.json").write_text(json.dumps(config))
    (tmp_path / "video_preprocessor_config.json").write_text(json.dumps({
        "video_processor_type": "LlavaOnevisionVideoProcessor",
        "processor_class": "LlavaOnevisionProcessor",
    }))
    loaded = load_model(str(tmp_path))
    assert type(loaded) is LlavaOnevision and not loaded.load_notes
    processor = loaded.processor
    assert (processor.num_image_tokens, processor.vision_aspect_ratio) == (16, "anyres_max_4")
    images = [noise(150, 100)]
    a, b = onevision.build_inputs(images, PROMPT), loaded.build_inputs(images, PROMPT)
    assert torch.equal(a.input_ids, b.input_ids)
    assert torch.equal(a.features["pixel_values"], b.features["pixel_values"])


def test_complete_processor_fills_the_settings_from_the_config():
    """A folder without processor_config.json: the tokens per tile, the feature strategy and
    the anyres cap come from the model config."""
    model = LlavaOnevision.tiny(seed=0)
    processor = model.processor
    processor.num_image_tokens = processor.vision_feature_select_strategy = None
    processor.vision_aspect_ratio = "anyres_max_9"
    assert LlavaOnevision.complete_processor(processor, model.hf.config) == [
        "num_image_tokens=16", "vision_feature_select_strategy=full",
        "vision_aspect_ratio=anyres_max_4"]
    assert LlavaOnevision.complete_processor(processor, model.hf.config) == []
    inputs = model.build_inputs([noise(150, 100)], PROMPT)
    assert_grids_well_formed(model, inputs)


@pytest.mark.parametrize("size", [(200, 100), (100, 200), (150, 100), (60, 60), (160, 160)])
def test_one_image_is_a_base_grid_then_the_highres_grid(onevision, size):
    inputs = onevision.build_inputs([noise(*size)], PROMPT)
    base, high = inputs.grids
    assert (base.kind, base.shape, high.kind) == ("base", (4, 4), "highres")
    assert base.box == high.box == (0.0, 0.0, 1.0, 1.0)
    # every image token is a grid cell or one newline closing each high-res row
    assert image_token_count(onevision, inputs) == len(inputs.image_positions) + high.shape[0]
    image = set(torch.nonzero(inputs.input_ids == onevision.image_token_id()).flatten().tolist())
    rows = high.positions.reshape(high.shape)
    assert all(np.array_equal(r, np.arange(r[0], r[0] + high.shape[1])) for r in rows)
    assert set((rows[:, -1] + 1).tolist()) <= image - set(inputs.image_positions.tolist())
    assert_grids_well_formed(onevision, inputs)


def test_highres_shapes_follow_the_pinpoints_and_the_cap(onevision):
    """200x100 goes on a 2x3-tile canvas (8x12 cells), unpadding cuts a row top and bottom:
    6x12 = 72 cells, under the cap (1.1**2 * 4 * 16 = 77). 150x100 fills the same canvas:
    96 cells, ratio sqrt(96 / 64) = 1.22, shrunk to 6x9. 160x160 on 3x3 tiles: 144 cells,
    ratio 1.5, 8x8. 60x60 on 2x2 tiles: 64 cells, exactly the cap's 4 tiles, kept."""
    sizes = [(200, 100), (100, 200), (150, 100), (160, 160), (60, 60), (75, 50)]
    shapes = {size: [g.shape for g in onevision.build_inputs([noise(*size)], PROMPT).grids]
              for size in sizes}
    assert shapes == {(200, 100): [(4, 4), (6, 12)], (100, 200): [(4, 4), (12, 6)],
                      (150, 100): [(4, 4), (6, 9)], (160, 160): [(4, 4), (8, 8)],
                      (60, 60): [(4, 4), (8, 8)], (75, 50): [(4, 4), (4, 6)]}


def test_several_images_are_one_padded_base_grid_each(onevision):
    """Two images in one prompt are not tiled: each is padded to a square (the image mean)
    and squashed onto one tile, then one newline token; the box reaches into the padding."""
    images = [ramps(150, 100), ramps(60, 130)]
    inputs = onevision.build_inputs(images, PROMPT)
    assert inputs.features["batch_num_images"].tolist() == [2]
    assert [(g.image, g.kind, g.shape) for g in inputs.grids] == [
        (0, "image", (4, 4)), (1, "image", (4, 4))]
    assert inputs.grids[0].box == (0.0, -0.25, 1.0, 1.25)
    assert inputs.grids[1].box == pytest.approx((-35 / 60, 0.0, 95 / 60, 1.0))
    assert image_token_count(onevision, inputs) == 2 * (16 + 1)
    ip = onevision.processor.image_processor
    pixels = unnormalise(inputs.features["pixel_values"][:, 0], ip)  # (2, 56, 56, 3)
    padding = np.array(ip.image_mean) * 255
    assert np.abs(pixels[0, :8] - padding).max() < 4.0  # 150x100: 9.3 rows above the image
    assert np.abs(pixels[1, :, :14] - padding).max() < 4.0  # 60x130: 15 columns left of it
    # inside the image, the box cut from the original (black beyond it) is what the model sees
    expected = [crop_of(image, grid.box, (56, 56)) for image, grid in zip(images, inputs.grids,
                                                                           strict=True)]
    assert np.abs(expected[0][12:44] - pixels[0, 12:44]).mean() < 2.0
    assert np.abs(expected[1][:, 17:39] - pixels[1, :, 17:39]).mean() < 2.0
    assert_grids_well_formed(onevision, inputs)


def test_too_thin_an_image_is_refused_in_one_line(onevision):
    with pytest.raises(InputError) as exc:
        onevision.build_inputs([noise(2, 300)], PROMPT)
    message = str(exc.value)
    assert "\n" not in message
    assert message.startswith("image 1 (2×300 pixels) is too thin for LLaVA-OneVision")
    assert "high-res view 12×0 patches" in message


@pytest.mark.parametrize(("sizes", "shapes"), [
    ([(200, 100)], [(7, 16)]),  # base + 2x3 tiles, unpadded
    ([(150, 100)], [(7, 16)]),  # base + 2x3 tiles, shrunk by the cap
    ([(300, 60)], [(4, 16)]),  # base + 1x3 tiles
    ([(150, 100), (60, 130)], [(2, 16)]),  # one padded view each
], ids=["unpadded", "shrunk", "one-row", "two-images"])
def test_vision_map_matches_model(onevision, sizes, shapes, monkeypatch):
    monkeypatch.setattr(helpers_models, "PROBES", PROBES)
    inputs = onevision.build_inputs([noise(w, h, seed=i) for i, (w, h) in enumerate(sizes)],
                                    PROMPT)
    assert vision_call_shapes(onevision, inputs) == shapes
    assert assert_vision_map_matches_model(onevision, inputs) == shapes[0][0] * len(PROBES)


def test_shrunk_grid_reads_the_canvas_bilinearly(onevision):
    """150x100: 2x3 tiles, an 8x12 canvas kept whole, shrunk to 6x9. Tile patches scored by
    their canvas cell, 1000 * row + col: bilinear interpolation (half-pixel centres) of that
    linear ramp is the ramp at each output cell's source point, clamped to the canvas."""
    inputs = onevision.build_inputs([noise(150, 100)], PROMPT)
    canvas = 1000 * torch.arange(8.0)[:, None] + torch.arange(12.0)[None, :]
    tiles = canvas.reshape(2, 4, 3, 4).permute(0, 2, 1, 3).reshape(6, 16)  # row-major tiles
    base = -1 - torch.arange(16.0)
    mapped = onevision.vision_tokens_to_grids([torch.cat([base[None], tiles])], inputs)
    assert torch.equal(mapped[:16], base)
    rows = ((torch.arange(6.0) + 0.5) * 8 / 6 - 0.5).clamp(0, 7)
    cols = ((torch.arange(9.0) + 0.5) * 12 / 9 - 0.5).clamp(0, 11)
    torch.testing.assert_close(mapped[16:].reshape(6, 9), 1000 * rows[:, None] + cols[None, :])


@pytest.mark.parametrize("sizes", [[(150, 100)], [(150, 100), (60, 130)]],
                         ids=["one-image", "two-images"])
def test_forced_trace_matches_generation(onevision, sizes):
    inputs = onevision.build_inputs([noise(w, h, seed=i) for i, (w, h) in enumerate(sizes)],
                                    PROMPT)
    assert_trace_agrees(onevision, inputs)


def test_batched_traces_equal_one_at_a_time(onevision):
    """Samples with other tile counts and one with two untiled images share one generate call:
    pixel values are padded along the crops, ``batch_num_images`` concatenated."""
    samples = [([noise(64, 48)], "describe"), ([noise(224, 150, seed=1)], PROMPT),
               ([noise(150, 100, seed=2), noise(60, 130, seed=3)], "what is it")]
    inputs = [onevision.build_inputs(images, prompt) for images, prompt in samples]
    settings = dict(max_new_tokens=3, min_new_tokens=3)
    singles = [generate_trace(onevision, x, NEEDS, **settings) for x in inputs]
    batched = generate_traces(onevision, inputs, NEEDS, **settings)
    for single, trace in zip(singles, batched, strict=True):
        assert_same_trace(single, trace)
