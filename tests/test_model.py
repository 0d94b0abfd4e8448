"""Core Model behaviours shared by every adapter, and where the built-in adapters' tiny
models come from."""

import importlib

import numpy as np
import pytest
import torch
from PIL import Image

from mmxai.commands.tiny import find_family
from mmxai.model import Model
from mmxai.plugins.models import (
    gemma3,
    glm4v,
    idefics3,
    llava_onevision,
    mistral3,
    paligemma,
    qwen3_vl,
)
from mmxai.plugins.models import tiny as builders

#: Each built-in adapter's builder in mmxai.plugins.models.tiny, by adapter name.
BUILDERS = {"llava": builders.tiny_llava, "llava-next": builders.tiny_llava_next,
            "qwen2-vl": builders.tiny_qwen2_vl, "qwen2.5-vl": builders.tiny_qwen2_5_vl,
            "internvl": builders.tiny_internvl,
            # the families added later keep their builders in their own adapter modules
            "qwen3-vl": qwen3_vl.tiny_qwen3_vl, "glm4v": glm4v.tiny_glm4v,
            "gemma3": gemma3.tiny_gemma3, "paligemma": paligemma.tiny_paligemma,
            "llava-onevision": llava_onevision.tiny_llava_onevision,
            "idefics3": idefics3.tiny_tiled, "smolvlm": idefics3.tiny_tiled,
            "mistral3": mistral3.tiny_mistral3}


def test_top_level_explain_returns_per_token_maps(tiny_model):
    import mmxai

    model = tiny_model("qwen2-vl")
    image = Image.fromarray((np.random.default_rng(0).random((60, 80, 3)) * 255).astype("uint8"))
    result = mmxai.explain(model, image, "Describe the image.", method="logit-lens",
                           max_new_tokens=3)
    assert isinstance(result, mmxai.Explanation)
    assert result.maps.shape == (result.trace.n_generated, len(result.trace.image_positions))
    assert result.image_map(0).shape == (60, 80)


def test_every_builtin_family_has_a_builder_in_the_tiny_module(tiny_families):
    builtin = {name for name, adapter in tiny_families.items()
               if adapter.__module__.startswith("mmxai.plugins.models.")}
    assert builtin == set(BUILDERS)


@pytest.mark.parametrize("family", sorted(BUILDERS))
def test_adapter_tiny_is_its_builder(family, monkeypatch):
    adapter = find_family(family)
    via_adapter, via_builder = adapter.tiny(seed=1), BUILDERS[family](adapter, 1)
    assert type(via_adapter) is type(via_builder) is adapter
    assert via_adapter.model_id == via_builder.model_id
    assert via_adapter.hf.config.to_dict() == via_builder.hf.config.to_dict()
    state = via_builder.hf.state_dict()
    for key, value in via_adapter.hf.state_dict().items():
        assert torch.equal(value, state[key]), key
    assert via_adapter.tokenizer.get_vocab() == via_builder.tokenizer.get_vocab()
    # the classmethod is a one-line delegation: it passes the class and the seed on
    calls = []
    monkeypatch.setattr(importlib.import_module(adapter.__module__), BUILDERS[family].__name__,
                        lambda cls, seed: calls.append((cls, seed)))
    adapter.tiny(seed=7)
    assert calls == [(adapter, 7)]


def test_model_keeps_no_perturbation_helpers():
    for name in ("swap_images", "swap_each", "fast_attention"):
        assert not hasattr(Model, name), name
