"""LLaVA-1.5 and LLaVA-NeXT adapters on tiny random-weight models (offline, CPU)."""

from __future__ import annotations

import json

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

from mmxai.errors import InputError
from mmxai.model import load_model
from mmxai.plugins.models.llava import Llava
from mmxai.plugins.models.llava_next import LlavaNext
from mmxai.plugins.models.shared import crop_box

FAMILIES = [Llava, LlavaNext]
SIZES = {"square": [(84, 84)], "wide": [(200, 100)], "two-images": [(150, 100), (60, 130)]}


@pytest.fixture(scope="module")
def llava():
    return Llava.tiny(seed=0)


@pytest.fixture(scope="module")
def llava_next():
    return LlavaNext.tiny(seed=0)


def image_token_count(model, inputs) -> int:
    return int((inputs.input_ids == model.image_token_id()).sum())


@pytest.mark.parametrize("family", FAMILIES, ids=lambda cls: cls.name)
def test_save_and_load_model_gives_identical_logits(family, tmp_path):
    assert_round_trip(family, tmp_path)


@pytest.mark.parametrize(("family", "image_processor_type", "processor_class"), [
    (Llava, "CLIPImageProcessor", "LlavaProcessor"),
    (LlavaNext, "LlavaNextImageProcessor", "LlavaNextProcessor"),
], ids=["llava", "llava-next"])
def test_hub_layout_checkpoint_loads(family, image_processor_type, processor_class, tmp_path):
    """llava-hf checkpoints keep the image processor in preprocessor_config.json under the
    torchvision class name; without torchvision it must load as the PIL one."""
    tiny = family.tiny(seed=0)
    tiny.hf.save_pretrained(tmp_path)
    tiny.processor.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "processor_config.json").read_text())
    image_config = config.pop("image_processor")
    image_config.update(image_processor_type=image_processor_type,
                        processor_class=processor_class)
    config["processor_class"] = processor_class
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(image_config))
    (tmp_path / "processor_config.json").write_text(json.dumps(config))
    loaded = load_model(str(tmp_path))
    assert type(loaded) is family
    assert type(loaded.processor.image_processor).__name__.endswith("Pil")
    images = [noise(200, 100)]
    a, b = tiny.build_inputs(images, PROMPT), loaded.build_inputs(images, PROMPT)
    assert torch.equal(a.input_ids, b.input_ids)
    assert [(g.shape, g.box) for g in a.grids] == [(g.shape, g.box) for g in b.grids]


@pytest.mark.parametrize("sizes", SIZES.values(), ids=SIZES.keys())
def test_llava_grids_match_processor(llava, sizes):
    images = [noise(w, h, seed=i) for i, (w, h) in enumerate(sizes)]
    inputs = llava.build_inputs(images, PROMPT)
    side = llava.hf.config.vision_config.image_size // llava.hf.config.vision_config.patch_size
    assert [(g.image, g.shape, g.kind) for g in inputs.grids] == [
        (i, (side, side), "image") for i in range(len(images))]
    assert image_token_count(llava, inputs) == len(images) * side * side
    assert_grids_well_formed(llava, inputs)


def test_llava_box_is_the_centre_crop(llava):
    """A 200x100 image: short side to 56, so 112x56, centre crop keeps x in [28, 84)."""
    inputs = llava.build_inputs([ramps(200, 100), ramps(100, 200)], PROMPT)
    assert inputs.grids[0].box == (0.25, 0.0, 0.75, 1.0)
    assert inputs.grids[1].box == (0.0, 0.25, 1.0, 0.75)
    assert llava.fixed_size == tuple(inputs.features["pixel_values"].shape[-2:]) == (56, 56)
    # the box, cut from the original and resized, is what the model sees
    pixels = unnormalise(inputs.features["pixel_values"], llava.processor.image_processor)
    for image, grid, seen in zip(inputs.images, inputs.grids, pixels, strict=True):
        error = np.abs(crop_of(image, grid.box, llava.fixed_size) - seen).mean()
        whole = np.abs(crop_of(image, (0, 0, 1, 1), llava.fixed_size) - seen).mean()
        assert error < 1.0 and whole > 10.0


def test_crop_box_replays_pad_to_square(llava):
    """With do_pad LLaVA's processor pads to a square first: the crop then covers padding,
    a quarter of the crop above the image and a quarter below for a 200x100 image."""
    image_processor = llava.processor.image_processor
    assert crop_box(image_processor, 80, 80) == (0.0, 0.0, 1.0, 1.0)
    image_processor.do_pad = True
    try:
        inputs = llava.build_inputs([ramps(200, 100)], PROMPT)
    finally:
        image_processor.do_pad = False
    assert inputs.grids[0].box == (0.0, -0.5, 1.0, 1.5)
    pixels = unnormalise(inputs.features["pixel_values"][0], image_processor)
    padding = np.array(image_processor.image_mean) * 255
    assert np.abs(pixels[:13] - padding).max() < 4.0 and np.abs(pixels[-13:] - padding).max() < 4.0
    assert np.abs(pixels[15:-15] - padding).max() > 50.0


@pytest.mark.parametrize(("feature_layer", "layer"), [(-2, 0), (-1, 1), (1, 0), (2, 1)])
def test_default_vision_layer_is_the_one_the_projector_reads(feature_layer, layer):
    """HF hidden_states[k] is the output of layer k - 1 (k > 0) or of layer n + k (k < 0).
    Nudging the chosen layer's output must reach the LLM; layer 1 is the last of two."""
    tiny = Llava.tiny(seed=0)
    assert tiny.hf.config.vision_feature_layer == -2
    tiny.hf.config.vision_feature_layer = feature_layer
    assert tiny.default_vision_layer() == layer
    inputs = tiny.build_inputs([noise(84, 84)], PROMPT)
    assert assert_vision_map_matches_model(tiny, inputs) == 6


def test_llava_token_count_mismatch_is_an_input_error(llava):
    inputs = llava.build_inputs([noise(84, 84)], PROMPT)
    features = dict(inputs.features)
    features["input_ids"] = inputs.features["input_ids"].clone()
    features["input_ids"][0, inputs.image_positions[:3]] = llava.tokenizer.pad_token_id
    with pytest.raises(InputError, match="image tokens"):
        llava.image_grids(features, inputs.images)


@pytest.mark.parametrize("sizes", [*SIZES.values(), [(100, 200)]],
                         ids=[*SIZES.keys(), "tall"])
def test_llava_next_grids_match_processor(llava_next, sizes):
    images = [noise(w, h, seed=i) for i, (w, h) in enumerate(sizes)]
    inputs = llava_next.build_inputs(images, PROMPT)
    grids = inputs.grids
    assert [(g.image, g.kind) for g in grids] == [
        (i, kind) for i in range(len(images)) for kind in ("base", "highres")]
    assert all(g.shape == (4, 4) for g in grids[::2])
    for (width, height), high in zip(sizes, grids[1::2], strict=True):
        rows, cols = high.shape
        assert rows >= 4 and cols >= 4 and (rows > cols) == (height > width)
    # every image token is a grid cell or one newline closing each high-res row
    newlines = sum(g.shape[0] for g in grids[1::2])
    assert image_token_count(llava_next, inputs) == len(inputs.image_positions) + newlines
    image = set(torch.nonzero(inputs.input_ids == llava_next.image_token_id()).flatten().tolist())
    for high in grids[1::2]:
        rows = high.positions.reshape(high.shape)
        assert all(np.array_equal(r, np.arange(r[0], r[0] + high.shape[1])) for r in rows)
        assert set((rows[:, -1] + 1).tolist()) <= image - set(inputs.image_positions.tolist())
    assert all(g.box == (0.0, 0.0, 1.0, 1.0) for g in grids)
    assert_grids_well_formed(llava_next, inputs)


def test_llava_next_shapes_follow_the_pinpoints(llava_next):
    """56-pixel tiles: 200x100 fills a 2x1 canvas exactly (4x8 cells); 75x50 on that canvas
    leaves a column of padding on each side, which unpadding cuts (4x6); 150x100 goes on the
    2x2 canvas (8x8), which loses a row top and bottom (6x8)."""
    sizes = [(200, 100), (75, 50), (150, 100), (100, 200), (60, 60)]
    shapes = {size: [g.shape for g in llava_next.build_inputs([noise(*size)], PROMPT).grids]
              for size in sizes}
    assert shapes == {(200, 100): [(4, 4), (4, 8)], (75, 50): [(4, 4), (4, 6)],
                      (150, 100): [(4, 4), (6, 8)], (100, 200): [(4, 4), (8, 4)],
                      (60, 60): [(4, 4), (8, 8)]}


def test_llava_next_base_view_is_the_whole_image_squashed(llava_next):
    image = ramps(200, 100)
    inputs = llava_next.build_inputs([image], PROMPT)
    base = unnormalise(inputs.features["pixel_values"][0, 0],
                       llava_next.processor.image_processor)
    assert inputs.grids[0].box == (0.0, 0.0, 1.0, 1.0)
    assert np.abs(crop_of(image, inputs.grids[0].box, (56, 56)) - base).mean() < 2.0


def test_llava_vision_map_matches_model(llava):
    inputs = llava.build_inputs([noise(200, 100), noise(84, 84, seed=1)], PROMPT)
    assert vision_call_shapes(llava, inputs) == [(2, 17)]
    assert assert_vision_map_matches_model(llava, inputs) == 2 * 6


def test_llava_next_vision_map_matches_model(llava_next):
    """75x50: base + 2 tiles whose outer patch columns are cut; 60x130: base + 3 tiles."""
    inputs = llava_next.build_inputs([noise(75, 50), noise(60, 130, seed=1)], PROMPT)
    assert vision_call_shapes(llava_next, inputs) == [(3 + 4, 17)]
    assert assert_vision_map_matches_model(llava_next, inputs) == 7 * 6


def test_llava_vision_pattern(llava):
    """Patch (r, c) of image i scored 100*i + 10*r + c lands on cell (r, c) of grid i."""
    inputs = llava.build_inputs([noise(200, 100), noise(84, 84, seed=1)], PROMPT)
    pattern = torch.tensor([[-1.0] + [100 * i + 10 * r + c for r in range(4) for c in range(4)]
                            for i in range(2)])
    mapped = llava.vision_tokens_to_grids([pattern], inputs).reshape(2, 4, 4)
    assert torch.equal(mapped, pattern[:, 1:].reshape(2, 4, 4))


def test_llava_next_vision_pattern(llava_next):
    """Tile patches scored by their canvas cell (1000 * row + col): the high-res grid reads a
    window of the canvas with the cut-off padding split evenly between both sides."""
    inputs = llava_next.build_inputs([noise(75, 50)], PROMPT)  # 2 tiles side by side
    canvas = 1000 * torch.arange(4.0)[:, None] + torch.arange(8.0)[None, :]
    tiles = canvas.reshape(4, 2, 4).permute(1, 0, 2).reshape(2, 16)  # tile-major patches
    base = -1 - torch.arange(16.0)
    scores = torch.cat([torch.full((3, 1), -7.0), torch.cat([base[None], tiles])], dim=1)
    base_grid, high = inputs.grids
    mapped = llava_next.vision_tokens_to_grids([scores], inputs)
    assert torch.equal(mapped[:16], base)
    assert high.shape == (4, 6)
    assert torch.equal(mapped[16:].reshape(4, 6), canvas[:, 1:7])


@pytest.mark.parametrize("family", FAMILIES, ids=lambda cls: cls.name)
def test_forced_trace_matches_generation(family, llava, llava_next):
    model = llava if family is Llava else llava_next
    inputs = model.build_inputs([noise(150, 100), noise(60, 130, seed=1)], PROMPT)
    assert_trace_agrees(model, inputs)
