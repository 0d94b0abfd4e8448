"""Idefics3 and SmolVLM adapters (tiles plus a global image) on tiny random models (CPU).

The tiny models resize images to a 112-pixel longest edge and cut 56-pixel tiles of 4 x 4
patches, which the pixel shuffle folds into 2 x 2 tokens: by hand, 84x84 -> 2x2 tiles,
200x100 -> 1x2, 60x130 -> 2x1 (after its 52-pixel width rounds up to one tile), each plus
the global image. Grids are checked against the image processor's own row and column
counts, boxes against the pixels the model sees, and the vision-layer map against the
model: a nudge to one patch must reach exactly the LLM positions its one-hot score lands on.
"""

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
    crop_of,
    noise,
    ramps,
    unnormalise,
    vision_call_shapes,
)

from mmxai.errors import InputError
from mmxai.model import load_model
from mmxai.plugins.models.idefics3 import Idefics3, SmolVLM

FAMILIES = [Idefics3, SmolVLM]
#: (width, height) of each image -> (rows, cols) of its tiles, worked out by hand.
TILES = {((84, 84),): [(2, 2)], ((200, 100),): [(1, 2)], ((60, 130),): [(2, 1)],
         ((150, 100), (60, 130)): [(2, 2), (2, 1)]}


@pytest.fixture(scope="module", params=FAMILIES, ids=lambda cls: cls.name)
def model(request):
    return request.param.tiny(seed=0)


@pytest.mark.parametrize("family", FAMILIES, ids=lambda cls: cls.name)
def test_save_and_load_model_gives_identical_logits(family, tmp_path):
    assert_round_trip(family, tmp_path)


@pytest.mark.parametrize(("family", "image_processor_type", "processor_class", "video"), [
    (Idefics3, "Idefics3ImageProcessor", "Idefics3Processor", False),
    (SmolVLM, "SmolVLMImageProcessor", "SmolVLMProcessor", True),
], ids=["idefics3", "smolvlm"])
def test_hub_layout_checkpoint_loads(family, image_processor_type, processor_class, video,
                                     tmp_path):
    """HuggingFaceM4/Idefics3-8B-Llama3 and HuggingFaceTB/SmolVLM2 keep the image processor in
    preprocessor_config.json under its torchvision name, name the stock processor, and
    SmolVLM2 ships a video processor config: both must load here, without torchvision or
    num2words, with their image_seq_len."""
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
    if video:
        (tmp_path / "video_preprocessor_config.json").write_text(json.dumps({
            "video_processor_type": "SmolVLMVideoProcessor", "processor_class": processor_class,
        }))
    loaded = load_model(str(tmp_path))
    assert type(loaded) is family
    assert type(loaded.processor.image_processor).__name__.endswith("Pil")
    assert loaded.processor.image_seq_len == 4
    images = [noise(200, 100)]
    a, b = tiny.build_inputs(images, PROMPT), loaded.build_inputs(images, PROMPT)
    assert torch.equal(a.input_ids, b.input_ids)
    assert torch.equal(a.features["pixel_values"], b.features["pixel_values"])
    assert [(g.kind, g.box) for g in a.grids] == [(g.kind, g.box) for g in b.grids]


def test_a_processor_without_its_config_gets_tokens_per_tile_from_the_model(model):
    """A folder with no processor_config.json gives the processor transformers' default of
    169 tokens per tile; the model's tiles make (4 / 2)**2 = 4."""
    processor = type(model.processor)(image_processor=model.processor.image_processor,
                                      tokenizer=model.tokenizer,
                                      chat_template=model.processor.chat_template)
    assert processor.image_seq_len == 169
    assert type(model).complete_processor(processor, model.hf.config) == ["image_seq_len=4"]
    assert type(model).complete_processor(processor, model.hf.config) == []
    completed = type(model)(model.hf, processor)
    image = noise(200, 100)
    assert torch.equal(completed.build_inputs([image], PROMPT).input_ids,
                       model.build_inputs([image], PROMPT).input_ids)


@pytest.mark.parametrize("sizes", TILES, ids=["square", "wide", "tall", "two-images"])
def test_grids_match_processor(model, sizes):
    images = [noise(w, h, seed=i) for i, (w, h) in enumerate(sizes)]
    inputs = model.build_inputs(images, PROMPT)
    # the image processor alone says how it cut each image
    cut = model.processor.image_processor(images, return_row_col_info=True)
    tiles = list(zip(cut["rows"][0], cut["cols"][0], strict=True))
    assert tiles == TILES[sizes]
    assert [(g.image, g.kind) for g in inputs.grids] == [
        (i, kind) for i, (rows, cols) in enumerate(tiles)
        for kind in ["tile"] * (rows * cols) + ["global"]]
    assert all(g.shape == (2, 2) for g in inputs.grids)
    assert inputs.features["pixel_values"].shape[:2] == (1, len(inputs.grids))
    count = int((inputs.input_ids == model.image_token_id()).sum())
    assert count == len(inputs.image_positions) == 4 * len(inputs.grids)
    assert_grids_well_formed(model, inputs)


def test_tile_boxes_are_where_the_tiles_come_from(model):
    """Each tile's pixels are its box of the original image; the global image the whole."""
    inputs = model.build_inputs([ramps(200, 100), ramps(60, 130)], PROMPT)
    assert [(g.image, g.kind, g.box) for g in inputs.grids] == [
        (0, "tile", (0.0, 0.0, 0.5, 1.0)), (0, "tile", (0.5, 0.0, 1.0, 1.0)),
        (0, "global", (0.0, 0.0, 1.0, 1.0)),
        (1, "tile", (0.0, 0.0, 1.0, 0.5)), (1, "tile", (0.0, 0.5, 1.0, 1.0)),
        (1, "global", (0.0, 0.0, 1.0, 1.0))]
    pixels = unnormalise(inputs.features["pixel_values"][0], model.processor.image_processor)
    for grid, seen in zip(inputs.grids, pixels, strict=True):
        source = inputs.images[grid.image]
        error = np.abs(crop_of(source, grid.box, (56, 56)) - seen).mean()
        elsewhere = np.abs(crop_of(source, (0.25, 0.25, 0.75, 0.75), (56, 56)) - seen).mean()
        assert error < 3.0 and elsewhere > 10.0, (grid.kind, grid.box, error, elsewhere)


def test_an_image_that_is_not_split_is_one_grid():
    tiny = Idefics3.tiny(seed=0)
    tiny.processor.image_processor.do_image_splitting = False
    inputs = tiny.build_inputs([noise(200, 100), noise(60, 130, seed=1)], PROMPT)
    assert [(g.image, g.kind, g.shape, g.box) for g in inputs.grids] == [
        (i, "image", (2, 2), (0.0, 0.0, 1.0, 1.0)) for i in range(2)]
    assert_grids_well_formed(tiny, inputs)


def test_default_vision_layer_is_the_last(model):
    assert model.default_vision_layer() == len(model.vision_layers()) - 1
    assert model.vision_layers() is model.hf.model.vision_model.encoder.layers
    assert model.final_norm() is model.hf.model.text_model.norm


def test_a_missing_tag_or_token_or_a_tile_out_of_order_is_an_input_error(model):
    inputs = model.build_inputs([noise(200, 100)], PROMPT)
    first, second = model.tokenizer.convert_tokens_to_ids(["<row_1_col_1>", "<row_1_col_2>"])
    at_first, at_second = (int(np.flatnonzero(inputs.input_ids == tag)[0])
                           for tag in (first, second))
    pad = model.tokenizer.pad_token_id
    for changes, what in [({at_second: pad}, "follow neither"),
                          ({int(inputs.image_positions[-1]): pad}, "image tokens"),
                          ({at_first: second, at_second: first}, "not a row-major 1x2 grid")]:
        features = dict(inputs.features)
        features["input_ids"] = inputs.features["input_ids"].clone()
        for position, token in changes.items():
            features["input_ids"][0, position] = token
        with pytest.raises(InputError, match=what):
            model.image_grids(features, inputs.images)


class _Stop(Exception):
    """Raised once the LLM's input embeddings are recorded."""


def llm_inputs(model, inputs, nudge: tuple[int, int] | None = None) -> torch.Tensor:
    """The LLM's input embeddings (L, d), with vision token ``nudge`` = (tile, patch) of the
    projector-feeding layer's output moved along a fixed random direction: a shift along
    every channel would vanish in the LayerNorm between that layer and the connector."""
    layer = model.vision_layers()[model.default_vision_layer()]
    direction = 5 * torch.randn(model.hf.config.vision_config.hidden_size,
                                generator=torch.Generator().manual_seed(0))
    embeds = []

    def move(_module, _args, out):
        if nudge is not None:
            out[nudge] += direction

    def record(_module, _args, kwargs):
        embeds.append(kwargs["inputs_embeds"][0].detach().clone())
        raise _Stop

    handles = [layer.register_forward_hook(move),
               model.hf.model.text_model.register_forward_pre_hook(record, with_kwargs=True)]
    try:
        with torch.no_grad():
            model.hf(**inputs.features)
    except _Stop:
        pass
    finally:
        for handle in handles:
            handle.remove()
    return embeds[0]


def test_vision_map_matches_model(model):
    """For the corners and an inner patch of every 4 x 4 tile (no CLS here): the LLM
    positions a nudge to the patch reaches are where its one-hot score lands."""
    inputs = model.build_inputs([noise(200, 100), noise(60, 130, seed=1)], PROMPT)
    assert vision_call_shapes(model, inputs) == [(6, 16)]
    base = llm_inputs(model, inputs)
    image = inputs.image_positions
    for tile in range(6):
        for patch in (0, 3, 5, 10, 12, 15):
            scores = torch.zeros(6, 16)
            scores[tile, patch] = 1.0
            mapped = model.vision_tokens_to_grids([scores], inputs)
            moved = (llm_inputs(model, inputs, (tile, patch)) - base).abs().amax(-1)
            reached = set(torch.nonzero(moved > 1e-5).flatten().tolist())
            assert reached == set(image[(mapped != 0).numpy()].tolist()), (tile, patch)
            assert len(reached) == 1


def test_vision_pattern_is_averaged_over_each_pixel_shuffle_block(model):
    """Patch (r, c) of tile t scored 100*t + 10*r + c: LLM token (i, j) of tile t reads the
    mean of patches 2i..2i+1 x 2j..2j+1, i.e. 100*t + 10*(2i + 0.5) + (2j + 0.5)."""
    inputs = model.build_inputs([noise(200, 100)], PROMPT)  # 2 tiles + global
    t, r, c = torch.meshgrid(torch.arange(3.0), torch.arange(4.0), torch.arange(4.0),
                             indexing="ij")
    mapped = model.vision_tokens_to_grids([(100 * t + 10 * r + c).reshape(3, 16)], inputs)
    t, i, j = torch.meshgrid(torch.arange(3.0), torch.arange(2.0), torch.arange(2.0),
                             indexing="ij")
    torch.testing.assert_close(mapped.reshape(3, 2, 2), 100 * t + 10 * (2 * i + 0.5) + 2 * j + 0.5)
    with pytest.raises(InputError, match="2 tiles scored for 3 grids"):
        model.vision_tokens_to_grids([torch.zeros(2, 16)], inputs)


def test_forced_trace_matches_generation(model):
    inputs = model.build_inputs([noise(150, 100), noise(60, 130, seed=1)], PROMPT)
    assert_trace_agrees(model, inputs)
