"""Gemma 3 and PaliGemma 2 adapters (the fixed-grid layout) on tiny random-weight models."""

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
from mmxai.plugins.models.gemma3 import Gemma3
from mmxai.plugins.models.paligemma import PaliGemma
from mmxai.trace import generate_trace, generate_traces

FAMILIES = [Gemma3, PaliGemma]
SIZES = {"square": [(84, 84)], "wide": [(200, 100)], "two-images": [(150, 100), (60, 130)]}
#: LLM tokens per image of the tiny models: Gemma 3 pools 8 x 8 patches onto 4 x 4, PaliGemma
#: has one token per patch of its 4 x 4.
GRID = (4, 4)


@pytest.fixture(scope="module")
def gemma3():
    return Gemma3.tiny(seed=0)


@pytest.fixture(scope="module")
def paligemma():
    return PaliGemma.tiny(seed=0)


@pytest.fixture
def model(request):
    """The module's tiny model of the family the test is parametrised with."""
    return request.getfixturevalue(request.param.name)


def parametrise_families(test):
    return pytest.mark.parametrize("model", FAMILIES, ids=lambda cls: cls.name,
                                   indirect=True)(test)


def nudgeable(family: type) -> object:
    """A tiny model whose vision features show a nudge of every channel of one token.

    SigLIP ends with ``post_layernorm``, which removes a token's mean over channels: the
    nudge of :func:`helpers_models.assert_vision_map_matches_model` (+5 on every channel) is
    exactly such a mean and would vanish. The norm works token by token, so replacing it by
    the identity changes nothing about which LLM tokens a vision token reaches."""
    model = family.tiny(seed=0)
    model.hf.model.vision_tower.post_layernorm = torch.nn.Identity()
    return model


@pytest.mark.parametrize("family", FAMILIES, ids=lambda cls: cls.name)
def test_save_and_load_model_gives_identical_logits(family, tmp_path):
    assert_round_trip(family, tmp_path)


def test_gemma3_hub_layout_checkpoint_loads(gemma3, tmp_path):
    """google/gemma-3-*-it: the image processor in preprocessor_config.json under its
    torchvision class name, ``image_seq_length`` in processor_config.json, the template in
    chat_template.json."""
    gemma3.hf.save_pretrained(tmp_path)
    gemma3.processor.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "processor_config.json").read_text())
    image_config = config.pop("image_processor")
    image_config.update(image_processor_type="Gemma3ImageProcessor",
                        processor_class="Gemma3Processor")
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(image_config))
    (tmp_path / "processor_config.json").write_text(json.dumps(
        {"image_seq_length": 16, "processor_class": "Gemma3Processor"}))
    template = (tmp_path / "chat_template.jinja").read_text()
    (tmp_path / "chat_template.jinja").unlink()
    (tmp_path / "chat_template.json").write_text(json.dumps({"chat_template": template}))
    loaded = load_model(str(tmp_path))
    assert type(loaded) is Gemma3 and not loaded.load_notes
    assert type(loaded.processor.image_processor).__name__ == "Gemma3ImageProcessorPil"
    images = [noise(200, 100)]
    a, b = gemma3.build_inputs(images, PROMPT), loaded.build_inputs(images, PROMPT)
    assert torch.equal(a.input_ids, b.input_ids)
    assert torch.equal(a.features["pixel_values"], b.features["pixel_values"])


def test_paligemma_pt_checkpoint_without_template_or_processor_config_loads(paligemma,
                                                                            tmp_path):
    """google/paligemma2-*-pt-*: preprocessor_config.json (SiglipImageProcessor, with
    ``image_seq_length``) and the tokenizer, no processor_config.json, no chat template:
    the adapter's template gives PaliGemma's own prompt format."""
    paligemma.hf.save_pretrained(tmp_path)
    paligemma.tokenizer.save_pretrained(tmp_path)
    paligemma.processor.image_processor.save_pretrained(tmp_path)
    image_config = json.loads((tmp_path / "preprocessor_config.json").read_text())
    image_config.update(image_processor_type="SiglipImageProcessor",
                        processor_class="PaliGemmaProcessor")
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(image_config))
    for name in ("chat_template.jinja", "chat_template.json"):
        (tmp_path / name).unlink(missing_ok=True)
    tokenizer_config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    tokenizer_config.pop("chat_template", None)
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
    with pytest.warns(UserWarning, match="no chat template"):
        loaded = load_model(str(tmp_path))
    assert type(loaded) is PaliGemma
    images = [noise(200, 100)]
    a, b = paligemma.build_inputs(images, PROMPT), loaded.build_inputs(images, PROMPT)
    assert torch.equal(a.input_ids, b.input_ids)
    assert torch.equal(a.features["pixel_values"], b.features["pixel_values"])


@parametrise_families
@pytest.mark.parametrize("sizes", SIZES.values(), ids=SIZES.keys())
def test_grids_match_processor(model, sizes):
    """One grid per image, of the processor's ``image_seq_length`` tokens, covering the whole
    (squashed) image; the model's own count of image tokens agrees."""
    images = [noise(w, h, seed=i) for i, (w, h) in enumerate(sizes)]
    inputs = model.build_inputs(images, PROMPT)
    assert [(g.image, g.shape, g.kind, g.box) for g in inputs.grids] == [
        (i, GRID, "image", (0.0, 0.0, 1.0, 1.0)) for i in range(len(images))]
    count = int((inputs.input_ids == model.image_token_id()).sum())
    assert count == len(inputs.image_positions) == len(images) * model.processor.image_seq_length
    assert model.fixed_size == tuple(inputs.features["pixel_values"].shape[-2:])
    assert_grids_well_formed(model, inputs)


def test_paligemma_sequence_is_images_bos_prompt_newline(paligemma):
    """PaliGemma's format: every image's tokens first, then the BOS, the prompt and a newline,
    all one bidirectional prefix (token type 0); no fine-tuning labels in the features."""
    inputs = paligemma.build_inputs([noise(200, 100), noise(60, 130, seed=1)], PROMPT)
    tok = paligemma.tokenizer
    expected = ("<image>" * 32 + tok.bos_token + PROMPT + "\n")
    assert tok.decode(inputs.input_ids) == expected
    np.testing.assert_array_equal(inputs.image_positions, np.arange(32))
    assert not inputs.features["token_type_ids"].any()
    assert "labels" not in inputs.features


def test_gemma3_sequence_has_one_bos(gemma3):
    """Gemma's template writes the BOS and its tokenizer adds one: the sequence has one."""
    inputs = gemma3.build_inputs([noise(84, 84)], PROMPT)
    ids = inputs.input_ids.tolist()
    assert ids[0] == gemma3.tokenizer.bos_token_id
    assert ids.count(gemma3.tokenizer.bos_token_id) == 1
    # each image's tokens sit between its <start_of_image> and <end_of_image>
    first, last = inputs.image_positions[[0, -1]]
    assert gemma3.tokenizer.convert_ids_to_tokens([ids[first - 1], ids[last + 1]]) == [
        "<start_of_image>", "<end_of_image>"]


def test_gemma3_pan_and_scan_gives_a_grid_per_crop():
    """With pan-and-scan, a 200x100 image is the whole image then two 100x100 crops, and a
    50x160 one the whole then three crops of 54, 54 and 52 rows; each grid's box is where
    its pixels come from, and each crop's patches reach its own grid."""
    model = nudgeable(Gemma3)
    model.pan_and_scan = True
    model.processor.image_processor.pan_and_scan_min_crop_size = 20  # tiny images
    images = [ramps(200, 100), ramps(50, 160), ramps(84, 84)]
    inputs = model.build_inputs(images, PROMPT)
    assert [(g.image, g.kind, g.box) for g in inputs.grids] == [
        (0, "image", (0.0, 0.0, 1.0, 1.0)), (0, "crop", (0.0, 0.0, 0.5, 1.0)),
        (0, "crop", (0.5, 0.0, 1.0, 1.0)),
        (1, "image", (0.0, 0.0, 1.0, 1.0)), (1, "crop", (0.0, 0.0, 1.0, 54 / 160)),
        (1, "crop", (0.0, 54 / 160, 1.0, 108 / 160)), (1, "crop", (0.0, 108 / 160, 1.0, 1.0)),
        (2, "image", (0.0, 0.0, 1.0, 1.0))]
    pixels = unnormalise(inputs.features["pixel_values"], model.processor.image_processor)
    assert len(pixels) == len(inputs.grids)
    for grid, seen in zip(inputs.grids, pixels, strict=True):
        source = inputs.images[grid.image]
        error = np.abs(crop_of(source, grid.box, model.fixed_size) - seen).mean()
        assert error < 3.0, (grid.image, grid.box, error)
    assert_grids_well_formed(model, inputs)
    inputs = model.build_inputs([noise(200, 100)], PROMPT)
    assert assert_vision_map_matches_model(model, inputs) == 3 * len(helpers_models.PROBES)


@parametrise_families
def test_default_vision_layer_is_the_last(model):
    """Both read the tower's last hidden state (after its token-wise post_layernorm); their
    configs name no feature layer."""
    assert getattr(model.hf.config, "vision_feature_layer", None) is None
    assert model.default_vision_layer() == len(model.vision_layers()) - 1
    assert model.vision_layers() is model.hf.model.vision_tower.encoder.layers


@pytest.mark.parametrize(("family", "probes", "shapes"), [
    (Gemma3, (0, 7, 27, 36, 56, 63), [(3, 64)]),
    (PaliGemma, (0, 3, 5, 10, 12, 15), [(3, 16)]),
], ids=["gemma3", "paligemma"])
def test_vision_map_matches_model(family, probes, shapes, monkeypatch):
    """No CLS: every vision token is a patch; probe corners and inner patches of each view.
    Gemma 3 pools 2 x 2 patches into a token, so each patch reaches exactly one token."""
    monkeypatch.setattr(helpers_models, "PROBES", probes)
    model = nudgeable(family)
    inputs = model.build_inputs([noise(200, 100), noise(84, 84, seed=1),
                                 noise(60, 130, seed=2)], PROMPT)
    assert vision_call_shapes(model, inputs) == shapes
    assert assert_vision_map_matches_model(model, inputs) == 3 * len(probes)


def test_gemma3_vision_pattern_is_averaged_over_each_pooled_block(gemma3):
    """Patch (r, c) of view v scored 100*v + 10*r + c: token (i, j) reads the mean of patches
    2i..2i+1 x 2j..2j+1, i.e. 100*v + 10*(2i + 0.5) + (2j + 0.5)."""
    inputs = gemma3.build_inputs([noise(200, 100), noise(84, 84, seed=1)], PROMPT)
    v, r, c = torch.meshgrid(torch.arange(2.0), torch.arange(8.0), torch.arange(8.0),
                             indexing="ij")
    mapped = gemma3.vision_tokens_to_grids([(100 * v + 10 * r + c).reshape(2, 64)], inputs)
    v, i, j = torch.meshgrid(torch.arange(2.0), torch.arange(4.0), torch.arange(4.0),
                             indexing="ij")
    torch.testing.assert_close(mapped.reshape(2, 4, 4), 100 * v + 10 * (2 * i + 0.5) + 2 * j + 0.5)


def test_paligemma_vision_pattern_is_one_to_one(paligemma):
    inputs = paligemma.build_inputs([noise(200, 100), noise(84, 84, seed=1)], PROMPT)
    pattern = torch.arange(32.0).reshape(2, 16)
    assert torch.equal(paligemma.vision_tokens_to_grids([pattern], inputs), pattern.reshape(-1))


@parametrise_families
def test_token_count_mismatch_is_an_input_error(model):
    inputs = model.build_inputs([noise(84, 84)], PROMPT)
    features = dict(inputs.features)
    features["input_ids"] = inputs.features["input_ids"].clone()
    features["input_ids"][0, inputs.image_positions[:3]] = model.tokenizer.pad_token_id
    with pytest.raises(InputError, match="image tokens"):
        model.image_grids(features, inputs.images)


def test_complete_processor_sets_the_tokens_per_image_from_the_config():
    """An older folder's processor has the processors' defaults (Gemma 3: 256 image tokens
    per view; PaliGemma: whatever the image processor says): the config's count replaces it,
    and the processor then writes as many tokens as the model fills."""
    gemma3 = Gemma3.tiny(seed=0)
    processor = gemma3.processor
    processor.image_seq_length = 256
    assert Gemma3.complete_processor(processor, gemma3.hf.config) == ["image_seq_length=16"]
    assert Gemma3.complete_processor(processor, gemma3.hf.config) == []
    inputs = gemma3.build_inputs([noise(84, 84)], PROMPT)
    assert len(inputs.image_positions) == 16
    assert processor.image_token == "<start_of_image>"  # not the config's soft token
    paligemma = PaliGemma.tiny(seed=0)
    paligemma.processor.image_seq_length = 256
    assert PaliGemma.complete_processor(paligemma.processor, paligemma.hf.config) == [
        "image_seq_length=16"]
    assert len(paligemma.build_inputs([noise(84, 84)], PROMPT).image_positions) == 16


@parametrise_families
def test_batched_traces_equal_one_at_a_time(model):
    """Prompts of other lengths, one with two images, share one left-padded generate call
    (token types padded with 0: text, masked out)."""
    samples = [([noise(64, 48)], "describe"), ([noise(224, 150, seed=1)], PROMPT),
               ([noise(150, 100, seed=2), noise(60, 130, seed=3)], "what is it")]
    inputs = [model.build_inputs(images, prompt) for images, prompt in samples]
    settings = dict(max_new_tokens=3, min_new_tokens=3)
    singles = [generate_trace(model, x, NEEDS, **settings) for x in inputs]
    batched = generate_traces(model, inputs, NEEDS, **settings)
    for single, trace in zip(singles, batched, strict=True):
        assert_same_trace(single, trace)


def test_gemma3_forced_trace_matches_generation(gemma3):
    inputs = gemma3.build_inputs([noise(150, 100), noise(60, 130, seed=1)], PROMPT)
    assert_trace_agrees(gemma3, inputs)


def test_paligemma_forced_trace_matches_generation(paligemma):
    """The answer replayed with token_type_ids 1 (Model.answer_fill), as generation has it."""
    inputs = paligemma.build_inputs([noise(150, 100), noise(60, 130, seed=1)], PROMPT)
    assert_trace_agrees(paligemma, inputs)


def test_gemma3_trace_with_a_window_shorter_than_the_sequence_matches_generation():
    """Real Gemma 3 windows (512, 1024) are shorter than a prompt with pan-and-scan crops."""
    model = Gemma3.tiny(seed=0)
    model.hf.config.text_config.sliding_window = 16
    inputs = model.build_inputs([noise(150, 100), noise(60, 130, seed=1)], PROMPT)
    assert len(inputs.input_ids) > 16
    assert_trace_agrees(model, inputs)
