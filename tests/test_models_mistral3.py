"""Mistral 3 adapter (Pixtral tower, merged patches, break tokens) on a tiny random model (CPU).

The tiny model fits images into a 112-pixel longest edge and rounds sides up to 28 pixels
(14-pixel patches merged 2 x 2), so by hand: 84x84 -> 3x3 tokens, 150x100 -> 112x74 ->
3x4, 60x130 -> 51x112 -> 4x2, 200x100 -> 112x56 -> 2x4. Grids are checked against those
sizes and the processor's ``image_sizes``, the break tokens against the text, and the
vision-layer map against the model: a nudge to one patch must reach exactly the LLM
positions its one-hot score lands on.
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
    assert_vision_map_matches_model,
    noise,
    vision_call_shapes,
)
from PIL import Image

from mmxai.errors import InputError
from mmxai.model import load_model
from mmxai.plugins.models.mistral3 import Mistral3, processable

#: (width, height) of each image -> its LLM grid, worked out by hand.
GRIDS = {((84, 84),): [(3, 3)], ((150, 100),): [(3, 4)], ((60, 130),): [(4, 2)],
         ((200, 100), (60, 130)): [(2, 4), (4, 2)]}


@pytest.fixture(scope="module")
def mistral3():
    return Mistral3.tiny(seed=0)


def test_save_and_load_model_gives_identical_logits(tmp_path):
    assert_round_trip(Mistral3, tmp_path)


def test_hub_layout_checkpoint_loads(mistral3, tmp_path):
    """mistralai/Mistral-Small-3.1-24B-Instruct-2503 names the stock PixtralProcessor (a
    placeholder without torchvision) and keeps the image processor in
    preprocessor_config.json under its fast name: it must load here, patch size and merge
    size from processor_config.json."""
    mistral3.hf.save_pretrained(tmp_path)
    mistral3.processor.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "processor_config.json").read_text())
    image_config = config.pop("image_processor")
    image_config.update(image_processor_type="PixtralImageProcessorFast",
                        processor_class="PixtralProcessor")
    config["processor_class"] = "PixtralProcessor"
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(image_config))
    (tmp_path / "processor_config.json").write_text(json.dumps(config))
    loaded = load_model(str(tmp_path))
    assert type(loaded) is Mistral3
    assert type(loaded.processor.image_processor).__name__ == "PixtralImageProcessorPil"
    assert (loaded.processor.patch_size, loaded.processor.spatial_merge_size) == (14, 2)
    images = [noise(200, 100)]
    a, b = mistral3.build_inputs(images, PROMPT), loaded.build_inputs(images, PROMPT)
    assert torch.equal(a.input_ids, b.input_ids)
    assert torch.equal(a.features["pixel_values"], b.features["pixel_values"])


def test_a_processor_without_its_config_gets_patch_and_merge_sizes_from_the_model(mistral3):
    """A folder with no processor_config.json gives the processor transformers' defaults
    (16-pixel patches, no merge); the model has 14 and 2."""
    processor = type(mistral3.processor)(image_processor=mistral3.processor.image_processor,
                                         tokenizer=mistral3.tokenizer,
                                         chat_template=mistral3.processor.chat_template)
    assert (processor.patch_size, processor.spatial_merge_size) == (16, 1)
    assert Mistral3.complete_processor(processor, mistral3.hf.config) == [
        "patch_size=14", "spatial_merge_size=2"]
    assert Mistral3.complete_processor(processor, mistral3.hf.config) == []
    completed = Mistral3(mistral3.hf, processor)
    image = noise(200, 100)
    assert torch.equal(completed.build_inputs([image], PROMPT).input_ids,
                       mistral3.build_inputs([image], PROMPT).input_ids)


@pytest.mark.parametrize("sizes", GRIDS, ids=["square", "wide", "tall", "two-images"])
def test_grids_match_processor(mistral3, sizes):
    images = [noise(w, h, seed=i) for i, (w, h) in enumerate(sizes)]
    inputs = mistral3.build_inputs(images, PROMPT)
    grids = inputs.grids
    assert [(g.image, g.shape, g.kind, g.box) for g in grids] == [
        (i, shape, "image", (0.0, 0.0, 1.0, 1.0)) for i, shape in enumerate(GRIDS[sizes])]
    sizes_seen = inputs.features["image_sizes"].tolist()
    assert [g.shape for g in grids] == [(h // 28, w // 28) for h, w in sizes_seen]
    # every grid row is a run of [IMG] closed by [IMG_BREAK], the last by [IMG_END]
    ids = inputs.input_ids.tolist()
    breaks = mistral3.tokenizer.convert_tokens_to_ids(["[IMG_BREAK]", "[IMG_END]"])
    for grid in grids:
        rows = grid.positions.reshape(grid.shape)
        assert all(np.array_equal(r, np.arange(r[0], r[0] + grid.shape[1])) for r in rows)
        closers = [ids[int(r[-1]) + 1] for r in rows]
        assert closers == [breaks[0]] * (grid.shape[0] - 1) + [breaks[1]]
    count = int((inputs.input_ids == mistral3.image_token_id()).sum())
    assert count == len(inputs.image_positions) == sum(g.size for g in grids)
    assert_grids_well_formed(mistral3, inputs)


def test_images_transformers_cannot_run_are_stretched(mistral3):
    """A 20x20 image would be one token (transformers' Mistral 3 squeezes it away) and
    2x300 a 0-pixel-wide image after the downscale: both are stretched, the whole image kept."""
    assert processable(Image.new("RGB", (20, 20)), 28, 112).size == (56, 56)
    assert processable(Image.new("RGB", (2, 300)), 28, 112).size == (3, 300)
    assert processable(Image.new("RGB", (40, 20)), 28, 112).size == (40, 20)
    for size, shape in [((1, 1), (2, 2)), ((20, 20), (2, 2)), ((2, 300), (4, 1))]:
        inputs = mistral3.build_inputs([Image.new("RGB", size, (120, 30, 200))], PROMPT)
        assert [(g.shape, g.box) for g in inputs.grids] == [(shape, (0.0, 0.0, 1.0, 1.0))]
        with torch.no_grad():
            assert torch.isfinite(mistral3.hf(**inputs.features).logits).all()


def test_token_count_mismatch_is_an_input_error(mistral3):
    inputs = mistral3.build_inputs([noise(200, 100)], PROMPT)
    features = dict(inputs.features)
    features["input_ids"] = inputs.features["input_ids"].clone()
    features["input_ids"][0, inputs.image_positions[-1]] = mistral3.tokenizer.pad_token_id
    with pytest.raises(InputError, match="image tokens"):
        mistral3.image_grids(features, inputs.images)


@pytest.mark.parametrize(("feature_layer", "layer"), [(-1, 1), (-2, 0)])
def test_default_vision_layer_is_the_one_the_projector_reads(feature_layer, layer):
    """Two images packed into one sequence of 8x4 and 4x8 patches: nudging a patch of the
    chosen layer reaches exactly the LLM token its 2 x 2 block merges into."""
    tiny = Mistral3.tiny(seed=0)
    assert tiny.vision_layers() is tiny.hf.model.vision_tower.transformer.layers
    tiny.hf.config.vision_feature_layer = feature_layer
    assert tiny.default_vision_layer() == layer
    inputs = tiny.build_inputs([noise(200, 100), noise(60, 130, seed=1)], PROMPT)
    assert vision_call_shapes(tiny, inputs) == [(1, 32 + 32)]
    assert assert_vision_map_matches_model(tiny, inputs) == 6


def test_vision_pattern_is_averaged_over_each_merged_block(mistral3):
    """Patch (r, c) of image k scored 100*k + 10*r + c: LLM token (i, j) of image k reads
    the mean of patches 2i..2i+1 x 2j..2j+1, i.e. 100*k + 10*(2i + 0.5) + (2j + 0.5)."""
    inputs = mistral3.build_inputs([noise(200, 100), noise(60, 130, seed=1)], PROMPT)
    patterns, expected = [], []
    for k, grid in enumerate(inputs.grids):
        rows, cols = grid.shape
        r, c = torch.meshgrid(torch.arange(2.0 * rows), torch.arange(2.0 * cols),
                              indexing="ij")
        patterns.append((100 * k + 10 * r + c).reshape(-1))
        i, j = torch.meshgrid(torch.arange(1.0 * rows), torch.arange(1.0 * cols),
                              indexing="ij")
        expected.append((100 * k + 10 * (2 * i + 0.5) + 2 * j + 0.5).reshape(-1))
    mapped = mistral3.vision_tokens_to_grids([torch.cat(patterns)[None]], inputs)
    torch.testing.assert_close(mapped, torch.cat(expected))
    with pytest.raises(InputError, match="63 vision-layer scores for 64 patches"):
        mistral3.vision_tokens_to_grids([torch.zeros(1, 63)], inputs)


def test_forced_trace_matches_generation(mistral3):
    inputs = mistral3.build_inputs([noise(150, 100), noise(60, 130, seed=1)], PROMPT)
    assert_trace_agrees(mistral3, inputs)
