"""Qwen2-VL and Qwen2.5-VL adapters on tiny random-weight models (offline, CPU)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from mmxai.errors import InputError, UnsupportedModelError
from mmxai.model import load_model
from mmxai.plugins.models.qwen2_vl import Qwen2_5_VL, Qwen2VL, window_index
from mmxai.trace import Needs, forced_trace, generate_trace

FAMILIES = [Qwen2VL, Qwen2_5_VL]
PROMPT = "describe the image in one short sentence"


@pytest.fixture(params=FAMILIES, ids=lambda cls: cls.name, scope="module")
def model(request):
    return request.param.tiny(seed=0)


def noise(width: int, height: int, seed: int = 0) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def logits(model, inputs) -> torch.Tensor:
    with torch.no_grad():
        return model.hf(**inputs.features).logits[0]


@pytest.mark.parametrize("family", FAMILIES, ids=lambda cls: cls.name)
def test_save_and_load_model_gives_identical_logits(family, tmp_path):
    tiny = family.tiny(seed=1)
    tiny.hf.save_pretrained(tmp_path)
    tiny.processor.save_pretrained(tmp_path)
    loaded = load_model(str(tmp_path))
    assert type(loaded) is family
    assert loaded.hf.config._attn_implementation == "eager"
    images = [noise(150, 100)]
    a, b = tiny.build_inputs(images, PROMPT), loaded.build_inputs(images, PROMPT)
    assert torch.equal(a.features["input_ids"], b.features["input_ids"])
    assert torch.equal(a.features["pixel_values"], b.features["pixel_values"])
    torch.testing.assert_close(logits(tiny, a), logits(loaded, b), rtol=0, atol=1e-6)


@pytest.mark.parametrize("family", FAMILIES, ids=lambda cls: cls.name)
def test_hub_style_checkpoint_loads_without_video_processor(family, tmp_path):
    """The hub checkpoints keep the image processor in preprocessor_config.json with
    min/max_pixels at the top and name the stock processor class; they must load here."""
    tiny = family.tiny(seed=0)
    tiny.hf.save_pretrained(tmp_path)
    tiny.tokenizer.save_pretrained(tmp_path)
    (tmp_path / "preprocessor_config.json").write_text(json.dumps({
        "min_pixels": 28 * 28 * 4, "max_pixels": 28 * 28 * 10, "patch_size": 14,
        "temporal_patch_size": 2, "merge_size": 2,
        "image_mean": [0.48145466, 0.4578275, 0.40821073],
        "image_std": [0.26862954, 0.26130258, 0.27577711],
        "image_processor_type": "Qwen2VLImageProcessor", "processor_class": family.processor_name,
    }))
    (tmp_path / "chat_template.json").write_text(
        json.dumps({"chat_template": tiny.processor.chat_template})
    )
    loaded = load_model(str(tmp_path))
    inputs = loaded.build_inputs([noise(300, 300)], PROMPT)
    assert [g.shape for g in inputs.grids] == [(3, 3)]  # at most 10 LLM tokens
    assert loaded.tokenizer.decode(inputs.input_ids[inputs.prompt_positions]) == PROMPT


@pytest.mark.parametrize("sizes", [[(84, 84)], [(150, 100)], [(100, 180), (120, 60)]],
                         ids=["square", "wide", "two-images"])
def test_grids_match_processor(model, sizes):
    images = [noise(w, h, seed=i) for i, (w, h) in enumerate(sizes)]
    inputs = model.build_inputs(images, PROMPT)
    thw = inputs.features["image_grid_thw"].tolist()
    m = model.hf.config.vision_config.spatial_merge_size
    assert [g.shape for g in inputs.grids] == [(h // m, w // m) for _, h, w in thw]
    assert [g.image for g in inputs.grids] == list(range(len(images)))
    for (width, height), grid in zip(sizes, inputs.grids, strict=True):
        rows, cols = grid.shape
        assert (rows > cols) == (height > width) and (rows == cols) == (height == width)
        assert grid.box == (0.0, 0.0, 1.0, 1.0)
        assert np.array_equal(grid.positions, np.arange(grid.positions[0],
                                                        grid.positions[0] + grid.size))
    ids = inputs.input_ids
    image_positions = inputs.image_positions
    assert len(image_positions) == int((ids == model.hf.config.image_token_id).sum())
    assert bool((ids[image_positions] == model.hf.config.image_token_id).all())
    assert [g.offset for g in inputs.grids] == list(np.cumsum([0] + [g.size for g in
                                                                     inputs.grids])[:-1])
    assert model.tokenizer.decode(ids[inputs.prompt_positions]) == PROMPT


def test_token_count_mismatch_is_an_input_error(model):
    inputs = model.build_inputs([noise(150, 100)], PROMPT)
    features = dict(inputs.features)
    ids = features["input_ids"].clone()
    ids[0, inputs.image_positions[-1]] = model.tokenizer.convert_tokens_to_ids("<|im_start|>")
    features["input_ids"] = ids
    n = len(inputs.image_positions)
    with pytest.raises(InputError, match=f"{n - 1} image tokens .* describes {n}"):
        model.image_grids(features, inputs.images)


def test_max_pixels_budget_shrinks_the_grid(model):
    image = noise(280, 140)
    assert [g.shape for g in model.build_inputs([image], PROMPT).grids] == [(4, 8)]
    model.max_pixels = 28 * 28 * 8
    try:
        inputs = model.build_inputs([image], PROMPT)
    finally:
        model.max_pixels = None
    assert [g.shape for g in inputs.grids] == [(2, 4)]
    assert inputs.features["image_grid_thw"].tolist() == [[1, 4, 8]]


def test_forced_trace_matches_generation(model):
    inputs = model.build_inputs([noise(150, 100), noise(84, 84, seed=3)], PROMPT)
    needs = Needs(layers=(0,), attentions=True)
    generated = generate_trace(model, inputs, needs, max_new_tokens=6)
    assert generated.n_generated >= 1
    forced = forced_trace(model, inputs, generated.generated_ids, needs)
    image = inputs.image_positions
    torch.testing.assert_close(forced.hidden[image], generated.hidden[image], rtol=0, atol=1e-4)
    torch.testing.assert_close(forced.layers[0], generated.layers[0], rtol=0, atol=1e-4)
    classes = generated.generated_ids.tolist()
    positions = [generated.generating_position(j) for j in range(generated.n_generated)]
    torch.testing.assert_close(forced.logits(classes, positions),
                               generated.logits(classes, positions), rtol=0, atol=1e-4)
    n = int(generated.sequence.shape[0]) - 1
    assert len(generated.attentions) == len(model.decoder_layers())
    assert generated.attentions[0].shape == (model.hf.config.text_config.num_attention_heads, n, n)
    for a, b in zip(forced.attentions, generated.attentions, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-4)
    # greedy decoding: each answer token is the best one generation may pick at its position
    scores = generated.logits(range(len(model.tokenizer)), positions)
    scores[:, model.hf.generation_config.suppress_tokens] = -torch.inf
    assert torch.equal(scores.argmax(dim=-1), generated.generated_ids)


def patch_image(width: int, height: int, start: int) -> tuple[Image.Image, np.ndarray]:
    """A gray image, one value per 14x14 patch (start, start+1, ... row-major), and the mean
    patch value of each 2x2 merge group: what every LLM image token of it should read."""
    rows, cols = height // 14, width // 14
    values = start + np.arange(rows * cols, dtype=np.float64).reshape(rows, cols)
    pixels = np.kron(values, np.ones((14, 14))).astype(np.uint8)
    cells = values.reshape(rows // 2, 2, cols // 2, 2).mean(axis=(1, 3))
    return Image.fromarray(np.stack([pixels] * 3, axis=-1)), cells.reshape(-1)


def affine_residual(x: np.ndarray, y: np.ndarray) -> float:
    """Largest misfit of y ~ a*x + b, relative to y's range (0: y is an affine image of x)."""
    a, b = np.polyfit(x, y, 1)
    return float(np.abs(a * x + b - y).max() / np.ptp(y))


@pytest.mark.parametrize("family", FAMILIES, ids=lambda cls: cls.name)
def test_vision_layer_scores_land_on_their_grid_cells(family):
    """Identity vision blocks pass each patch's embedding through unchanged; the patch
    embedding is linear, so a block's channel-0 output is an affine function of the patch's
    gray value. Mapped to the grids, it must reproduce each cell's mean patch value."""
    tiny = family.tiny(seed=0)
    for block in tiny.vision_layers():
        for param in [*block.attn.parameters(), *block.mlp.parameters()]:
            param.data.zero_()
    first, cells_a = patch_image(168, 112, start=40)  # 4 x 6 LLM tokens
    second, cells_b = patch_image(112, 112, start=140)  # 4 x 4
    inputs = tiny.build_inputs([first, second], PROMPT)
    assert [g.shape for g in inputs.grids] == [(4, 6), (4, 4)]
    expected = np.concatenate([cells_a, cells_b])

    calls = []
    layer = tiny.vision_layers()[tiny.default_vision_layer()]
    handle = layer.register_forward_hook(lambda _m, _i, out: calls.append(out[:, 0].detach()))
    try:
        logits(tiny, inputs)
    finally:
        handle.remove()
    assert tiny.default_vision_layer() == len(tiny.vision_layers()) - 1
    assert len(calls) == 1 and calls[0].shape == (inputs.features["pixel_values"].shape[0],)

    mapped = tiny.vision_tokens_to_grids(calls, inputs)
    assert mapped.shape == (len(inputs.image_positions),)
    assert affine_residual(expected, mapped.double().numpy()) < 1e-4
    # Qwen2.5-VL's blocks see window order: reading them in grid order must fail
    in_block_order = calls[0].reshape(-1, 4).mean(-1).double().numpy()
    misfit = affine_residual(expected, in_block_order)
    assert (misfit > 0.05) if family is Qwen2_5_VL else (misfit < 1e-4)


def test_window_index_is_a_permutation_of_windows():
    # 4 x 6 groups in 2 x 2 windows, then a 3 x 3 grid whose last window row/column is short
    order = window_index(torch.tensor([[1, 8, 12], [1, 6, 6]]), 2, 56, 14).tolist()
    first = [0, 1, 6, 7, 2, 3, 8, 9, 4, 5, 10, 11,
             12, 13, 18, 19, 14, 15, 20, 21, 16, 17, 22, 23]
    second = [24 + i for i in (0, 1, 3, 4, 2, 5, 6, 7, 8)]
    assert order == first + second


def test_unknown_architecture_lists_supported_ones(tmp_path):
    from transformers import Qwen2VLConfig

    Qwen2VLConfig(architectures=["MadeUpVLForConditionalGeneration"]).save_pretrained(tmp_path)
    with pytest.raises(UnsupportedModelError) as error:
        load_model(str(tmp_path))
    message = str(error.value)
    assert "MadeUpVLForConditionalGeneration" in message
    assert "Qwen2VLForConditionalGeneration" in message
    assert "Qwen2_5_VLForConditionalGeneration" in message
