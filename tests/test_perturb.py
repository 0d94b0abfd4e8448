"""Perturbed passes (mmxai.perturb): swapped images equal rebuilt inputs, fused attention
gives the same logits, for every adapter."""

import numpy as np
import pytest
import torch
from PIL import Image

from mmxai.errors import InputError
from mmxai.perturb import fast_attention, swap_each, swap_images


def test_swap_images_equals_building_the_inputs_again(tiny_family, tiny_model):
    model = tiny_model(tiny_family)
    rng = np.random.default_rng(3)
    first, second = (Image.fromarray((rng.random((70, 90, 3)) * 255).astype("uint8"))
                     for _ in range(2))
    inputs = model.build_inputs([first], "Describe the image.")
    swapped = swap_images(model, inputs, [second])
    rebuilt = model.build_inputs([second], "Describe the image.")
    assert swapped.features.keys() == rebuilt.features.keys()
    for key, value in rebuilt.features.items():
        if torch.is_tensor(value):
            assert torch.equal(swapped.features[key], value), key
    assert swapped.grids is inputs.grids
    np.testing.assert_array_equal(swapped.prompt_positions, rebuilt.prompt_positions)
    with pytest.raises(InputError):
        swap_images(model, inputs, [first.resize((40, 40))])


def test_swap_each_equals_swapping_one_at_a_time(tiny_family, tiny_model):
    model = tiny_model(tiny_family)
    rng = np.random.default_rng(4)
    first, *others = (Image.fromarray((rng.random((70, 90, 3)) * 255).astype("uint8"))
                      for _ in range(4))
    inputs = model.build_inputs([first], "Describe the image.")
    swapped = swap_each(model, inputs, others)
    assert len(swapped) == len(others)
    for image, got in zip(others, swapped, strict=True):
        expected = swap_images(model, inputs, [image])
        assert got.features.keys() == expected.features.keys()
        for key, value in expected.features.items():
            if torch.is_tensor(value):
                assert torch.equal(got.features[key], value), key
        assert got.images == [image] and got.grids is inputs.grids
    with pytest.raises(InputError):
        swap_each(model, inputs, [first, first.resize((40, 40))])


def test_fast_attention_gives_the_same_logits_and_restores_eager(tiny_family, tiny_model):
    model = tiny_model(tiny_family)
    inputs = model.build_inputs([Image.new("RGB", (64, 48), (200, 40, 40))], "Describe it.")
    with torch.no_grad():
        eager = model.hf(**inputs.features).logits
        with fast_attention(model):
            # sdpa, or eager kept whole where a sub-model refuses sdpa (PaliGemma 2's Gemma 2)
            used = model.hf.config._attn_implementation
            assert used == "sdpa" or tiny_family == "paligemma" and used == "eager"
            fast = model.hf(**inputs.features).logits
    assert model.hf.config._attn_implementation == "eager"
    for sub in ("text_config", "vision_config"):  # nothing left half switched
        config = getattr(model.hf.config, sub, None)
        assert getattr(config, "_attn_implementation", "eager") in ("eager", None)
    torch.testing.assert_close(fast, eager, atol=1e-4, rtol=1e-4)
