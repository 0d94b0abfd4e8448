"""Core Model behaviours shared by every adapter."""

import numpy as np
import pytest
import torch
from PIL import Image

from mmxai.errors import InputError


def test_swap_images_equals_building_the_inputs_again(tiny_family, tiny_model):
    model = tiny_model(tiny_family)
    rng = np.random.default_rng(3)
    first, second = (Image.fromarray((rng.random((70, 90, 3)) * 255).astype("uint8"))
                     for _ in range(2))
    inputs = model.build_inputs([first], "Describe the image.")
    swapped = model.swap_images(inputs, [second])
    rebuilt = model.build_inputs([second], "Describe the image.")
    assert swapped.features.keys() == rebuilt.features.keys()
    for key, value in rebuilt.features.items():
        if torch.is_tensor(value):
            assert torch.equal(swapped.features[key], value), key
    assert swapped.grids is inputs.grids
    np.testing.assert_array_equal(swapped.prompt_positions, rebuilt.prompt_positions)
    with pytest.raises(InputError):
        model.swap_images(inputs, [first.resize((40, 40))])


def test_swap_each_equals_swapping_one_at_a_time(tiny_family, tiny_model):
    model = tiny_model(tiny_family)
    rng = np.random.default_rng(4)
    first, *others = (Image.fromarray((rng.random((70, 90, 3)) * 255).astype("uint8"))
                      for _ in range(4))
    inputs = model.build_inputs([first], "Describe the image.")
    swapped = model.swap_each(inputs, others)
    assert len(swapped) == len(others)
    for image, got in zip(others, swapped, strict=True):
        expected = model.swap_images(inputs, [image])
        assert got.features.keys() == expected.features.keys()
        for key, value in expected.features.items():
            if torch.is_tensor(value):
                assert torch.equal(got.features[key], value), key
        assert got.images == [image] and got.grids is inputs.grids
    with pytest.raises(InputError):
        model.swap_each(inputs, [first, first.resize((40, 40))])


def test_top_level_explain_returns_per_token_maps(tiny_model):
    import mmxai

    model = tiny_model("qwen2-vl")
    image = Image.fromarray((np.random.default_rng(0).random((60, 80, 3)) * 255).astype("uint8"))
    result = mmxai.explain(model, image, "Describe the image.", method="logit-lens",
                           max_new_tokens=3)
    assert isinstance(result, mmxai.Explanation)
    assert result.maps.shape == (result.trace.n_generated, len(result.trace.image_positions))
    assert result.image_map(0).shape == (60, 80)


def test_fast_attention_gives_the_same_logits_and_restores_eager(tiny_family, tiny_model):
    model = tiny_model(tiny_family)
    inputs = model.build_inputs([Image.new("RGB", (64, 48), (200, 40, 40))], "Describe it.")
    with torch.no_grad():
        eager = model.hf(**inputs.features).logits
        with model.fast_attention():
            assert model.hf.config._attn_implementation == "sdpa"
            fast = model.hf(**inputs.features).logits
    assert model.hf.config._attn_implementation == "eager"
    torch.testing.assert_close(fast, eager, atol=1e-4, rtol=1e-4)
