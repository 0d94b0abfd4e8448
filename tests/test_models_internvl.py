"""InternVL adapter (native transformers class) on a tiny random-weight model (offline, CPU)."""

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
from mmxai.plugins.models.internvl import InternVL

#: Tiles of 56 pixels, at most 4 plus a thumbnail: 84x84 -> 2x2 (+1), 200x100 -> 2x1 (+1),
#: 60x130 -> 1x2 (+1), 50x50 -> one tile.
SIZES = {"square": [(84, 84)], "wide": [(200, 100)], "two-images": [(150, 100), (60, 130)],
         "one-tile": [(50, 50)]}


@pytest.fixture(scope="module")
def internvl():
    return InternVL.tiny(seed=0)


def test_save_and_load_model_gives_identical_logits(tmp_path):
    assert_round_trip(InternVL, tmp_path)


def test_hub_layout_checkpoint_loads(internvl, tmp_path):
    """OpenGVLab/InternVL3-1B-hf names the stock processor, keeps the image processor in
    preprocessor_config.json under its fast name and ships a video processor config: it
    must load here, without torchvision, with its image_seq_length."""
    internvl.hf.save_pretrained(tmp_path)
    internvl.processor.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "processor_config.json").read_text())
    image_config = config.pop("image_processor")
    image_config.update(image_processor_type="GotOcr2ImageProcessorFast",
                        processor_class="InternVLProcessor")
    config["processor_class"] = "InternVLProcessor"
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(image_config))
    (tmp_path / "processor_config.json").write_text(json.dumps(config))
    (tmp_path / "video_preprocessor_config.json").write_text(json.dumps({
        "video_processor_type": "InternVLVideoProcessor", "processor_class": "InternVLProcessor",
    }))
    loaded = load_model(str(tmp_path))
    assert type(loaded) is InternVL
    assert loaded.processor.image_seq_length == 4
    images = [noise(200, 100)]
    a, b = internvl.build_inputs(images, PROMPT), loaded.build_inputs(images, PROMPT)
    assert torch.equal(a.input_ids, b.input_ids)
    assert torch.equal(a.features["pixel_values"], b.features["pixel_values"])


@pytest.mark.parametrize("sizes", SIZES.values(), ids=SIZES.keys())
def test_grids_match_processor(internvl, sizes):
    images = [noise(w, h, seed=i) for i, (w, h) in enumerate(sizes)]
    inputs = internvl.build_inputs(images, PROMPT)
    # the image processor alone says how many tiles each image gets
    tiles = internvl.processor.image_processor(images, crop_to_patches=True)["num_patches"]
    grids = inputs.grids
    assert [g.image for g in grids] == [i for i, n in enumerate(tiles) for _ in range(n)]
    assert all(g.shape == (2, 2) for g in grids)
    assert inputs.features["pixel_values"].shape[0] == sum(tiles) == len(grids)
    count = int((inputs.input_ids == internvl.image_token_id()).sum())
    assert count == len(inputs.image_positions) == 4 * sum(tiles)
    for image, n in enumerate(tiles):
        kinds = [g.kind for g in grids if g.image == image]
        assert kinds == (["image"] if n == 1 else ["tile"] * (n - 1) + ["thumbnail"])
    assert_grids_well_formed(internvl, inputs)


def test_tile_boxes_are_where_the_tiles_come_from(internvl):
    """Each tile's pixels are its box of the original image; thumbnails the whole image."""
    image = ramps(200, 100)
    inputs = internvl.build_inputs([image, ramps(60, 130)], PROMPT)
    assert [(g.kind, g.box) for g in inputs.grids] == [
        ("tile", (0.0, 0.0, 0.5, 1.0)), ("tile", (0.5, 0.0, 1.0, 1.0)),
        ("thumbnail", (0.0, 0.0, 1.0, 1.0)),
        ("tile", (0.0, 0.0, 1.0, 0.5)), ("tile", (0.0, 0.5, 1.0, 1.0)),
        ("thumbnail", (0.0, 0.0, 1.0, 1.0))]
    pixels = unnormalise(inputs.features["pixel_values"], internvl.processor.image_processor)
    for grid, seen in zip(inputs.grids, pixels, strict=True):
        source = inputs.images[grid.image]
        error = np.abs(crop_of(source, grid.box, (56, 56)) - seen).mean()
        swapped = np.abs(crop_of(source, (0.25, 0.25, 0.75, 0.75), (56, 56)) - seen).mean()
        assert error < 3.0 and swapped > 10.0


def test_default_vision_layer_is_the_last(internvl):
    assert internvl.hf.config.vision_feature_layer == -1
    assert internvl.default_vision_layer() == len(internvl.vision_layers()) - 1
    assert internvl.vision_layers() is internvl.hf.model.vision_tower.encoder.layer


def test_token_count_mismatch_is_an_input_error(internvl):
    inputs = internvl.build_inputs([noise(200, 100)], PROMPT)
    features = dict(inputs.features)
    features["input_ids"] = inputs.features["input_ids"].clone()
    features["input_ids"][0, inputs.image_positions[-1]] = internvl.tokenizer.pad_token_id
    with pytest.raises(InputError, match="tokens"):
        internvl.image_grids(features, inputs.images)


def test_vision_map_matches_model(internvl):
    inputs = internvl.build_inputs([noise(200, 100), noise(50, 50, seed=1)], PROMPT)
    assert vision_call_shapes(internvl, inputs) == [(4, 17)]
    assert assert_vision_map_matches_model(internvl, inputs) == 4 * 6


def test_vision_pattern_is_averaged_over_each_pixel_shuffle_block(internvl):
    """Patch (r, c) of tile t scored 100*t + 10*r + c: LLM token (i, j) of tile t reads the
    mean of patches 2i..2i+1 x 2j..2j+1, i.e. 100*t + 10*(2i + 0.5) + (2j + 0.5)."""
    inputs = internvl.build_inputs([noise(200, 100)], PROMPT)  # 2 tiles + thumbnail
    t, r, c = torch.meshgrid(torch.arange(3.0), torch.arange(4.0), torch.arange(4.0),
                             indexing="ij")
    pattern = torch.cat([torch.full((3, 1), -50.0), (100 * t + 10 * r + c).reshape(3, 16)], 1)
    mapped = internvl.vision_tokens_to_grids([pattern], inputs).reshape(3, 2, 2)
    t, i, j = torch.meshgrid(torch.arange(3.0), torch.arange(2.0), torch.arange(2.0),
                             indexing="ij")
    torch.testing.assert_close(mapped, 100 * t + 10 * (2 * i + 0.5) + (2 * j + 0.5))


def test_forced_trace_matches_generation(internvl):
    inputs = internvl.build_inputs([noise(150, 100), noise(60, 130, seed=1)], PROMPT)
    assert_trace_agrees(internvl, inputs)
