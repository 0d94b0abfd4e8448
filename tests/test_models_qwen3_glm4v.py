"""Qwen3-VL and GLM-4V adapters (the Qwen-like layout as data) on tiny random models (CPU).

Grids are checked against the processor's ``image_grid_thw`` and against sizes worked out by
hand from each family's patch size (16 vs 14) and pixel bounds; the vision-layer map against
the model itself: a nudge to one patch of a vision block must reach exactly the LLM positions
its one-hot score lands on, through the main merger and, for Qwen3-VL, through DeepStack.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch
from helpers_models import (
    PROMPT,
    assert_grids_well_formed,
    assert_round_trip,
    assert_trace_agrees,
    noise,
)

from mmxai import cli
from mmxai.errors import InputError
from mmxai.model import load_model
from mmxai.plugins.models.glm4v import Glm4v
from mmxai.plugins.models.qwen3_vl import Qwen3VL

FAMILIES = [Qwen3VL, Glm4v]

#: (width, height) of each image -> the LLM grids, worked out from smart-resize by hand:
#: Qwen3-VL rounds sides to 32 pixels (16-pixel patches, 2x2 merge), GLM-4V to 28.
EXPECTED_GRIDS = {
    Qwen3VL: {((84, 84),): [(3, 3)], ((150, 100),): [(3, 5)],
              ((100, 180), (120, 60)): [(6, 3), (2, 4)]},
    Glm4v: {((84, 84),): [(3, 3)], ((150, 100),): [(4, 5)],
            ((100, 180), (120, 60)): [(6, 4), (2, 4)]},
}

#: Each family's preprocessor_config.json as its hub checkpoints write it (Qwen/Qwen3-VL-*,
#: zai-org/GLM-4.1V-9B-Thinking), pixel bounds scaled down to at most 10 LLM tokens.
HUB_PREPROCESSOR = {
    Qwen3VL: {"size": {"shortest_edge": 32 * 32 * 4, "longest_edge": 32 * 32 * 10},
              "patch_size": 16, "temporal_patch_size": 2, "merge_size": 2,
              "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5],
              "processor_class": "Qwen3VLProcessor",
              "image_processor_type": "Qwen2VLImageProcessorFast"},
    Glm4v: {"size": {"shortest_edge": 28 * 28 * 2 * 4, "longest_edge": 28 * 28 * 2 * 10},
            "do_rescale": True, "patch_size": 14, "temporal_patch_size": 2, "merge_size": 2,
            "image_mean": [0.48145466, 0.4578275, 0.40821073],
            "image_std": [0.26862954, 0.26130258, 0.27577711],
            "image_processor_type": "Glm4vImageProcessor", "processor_class": "Glm4vProcessor"},
}

#: What each documented template makes of one image and a prompt.
RENDERED = {
    Qwen3VL: "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>{}<|im_end|>\n"
             "<|im_start|>assistant\n",
    Glm4v: "[gMASK]<sop><|user|>\n<|begin_of_image|><|image|><|end_of_image|>{}"
           "<|assistant|>\n",
}


@pytest.fixture(params=FAMILIES, ids=lambda cls: cls.name, scope="module")
def model(request):
    return request.param.tiny(seed=0)


@pytest.mark.parametrize("family", FAMILIES, ids=lambda cls: cls.name)
def test_save_and_load_gives_the_same_adapter_inputs_and_logits(family, tmp_path):
    assert_round_trip(family, tmp_path)


@pytest.mark.parametrize("family", FAMILIES, ids=lambda cls: cls.name)
def test_hub_style_checkpoint_loads_without_video_processor(family, tmp_path):
    tiny = family.tiny(seed=0)
    tiny.hf.save_pretrained(tmp_path)
    tiny.tokenizer.save_pretrained(tmp_path)
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(HUB_PREPROCESSOR[family]))
    (tmp_path / "chat_template.json").write_text(
        json.dumps({"chat_template": family.default_chat_template}))
    loaded = load_model(str(tmp_path))
    assert type(loaded) is family
    inputs = loaded.build_inputs([noise(300, 300)], PROMPT)
    assert [g.shape for g in inputs.grids] == [(3, 3)]  # at most 10 LLM tokens
    assert_grids_well_formed(loaded, inputs)


@pytest.mark.parametrize("family", FAMILIES, ids=lambda cls: cls.name)
def test_explain_runs_on_a_plain_save_pretrained_folder(family, tmp_path, capsys):
    """The model's, the tokenizer's and the image processor's own ``save_pretrained``: no
    processor_config.json, no chat template. The family's default template fills in."""
    tiny = family.tiny(seed=0)
    folder = tmp_path / "plain"
    tiny.tokenizer.chat_template = None
    for part in (tiny.hf, tiny.tokenizer, tiny.processor.image_processor):
        part.save_pretrained(folder)
    assert not list(folder.glob("*chat_template*"))
    assert not (folder / "processor_config.json").exists()
    noise(120, 90).save(tmp_path / "picture.png")
    out = tmp_path / "out"
    code = cli.main(["explain", str(folder), str(tmp_path / "picture.png"), "--method", "tam",
                     "gradcam", "--max-new-tokens", "2", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 0, err
    assert f"no chat template: using the {family.name} adapter's default" in err
    maps = np.load(out / "gradcam" / "maps.npz")
    assert maps["maps"].shape[0] == 2 and np.isfinite(maps["maps"]).all()


@pytest.mark.parametrize("family", FAMILIES, ids=lambda cls: cls.name)
def test_the_documented_template_is_the_default_and_is_saved(family, tiny_dir):
    if family is Qwen3VL:  # the digest of Qwen3-VL-8B-Instruct's template, 5292 bytes
        digest = hashlib.sha256(family.default_chat_template.encode()).hexdigest()
        assert digest == "3636d0f0bd6bef02654cdffdc447b79cb2cef8ab02cc75267345946291a489e4"
    loaded = load_model(str(tiny_dir(family.name)))
    assert loaded.processor.chat_template == family.default_chat_template
    assert loaded.chat_text(PROMPT, 1) == RENDERED[family].format(PROMPT)


@pytest.mark.parametrize("sizes", [[(84, 84)], [(150, 100)], [(100, 180), (120, 60)]],
                         ids=["square", "wide", "two-images"])
def test_grids_match_the_processor(model, sizes):
    images = [noise(w, h, seed=i) for i, (w, h) in enumerate(sizes)]
    inputs = model.build_inputs(images, PROMPT)
    thw = inputs.features["image_grid_thw"].tolist()
    vision = model.hf.config.vision_config
    m = vision.spatial_merge_size
    assert [g.shape for g in inputs.grids] == [(h // m, w // m) for _, h, w in thw]
    assert [g.shape for g in inputs.grids] == EXPECTED_GRIDS[type(model)][tuple(sizes)]
    assert [g.image for g in inputs.grids] == list(range(len(images)))
    assert all(g.box == (0.0, 0.0, 1.0, 1.0) for g in inputs.grids)
    for grid in inputs.grids:  # one contiguous row-major block per image
        assert np.array_equal(grid.positions, np.arange(grid.positions[0],
                                                        grid.positions[0] + grid.size))
    pixels = inputs.features["pixel_values"]
    assert pixels.shape == (sum(t * h * w for t, h, w in thw),
                            3 * vision.temporal_patch_size * vision.patch_size ** 2)
    assert_grids_well_formed(model, inputs)


def test_token_count_mismatch_is_an_input_error(model):
    inputs = model.build_inputs([noise(150, 100)], PROMPT)
    features = dict(inputs.features)
    ids = features["input_ids"].clone()
    ids[0, inputs.image_positions[-1]] = model.pad_token_id()
    features["input_ids"] = ids
    n = len(inputs.image_positions)
    with pytest.raises(InputError, match=f"{n - 1} image tokens .* describes {n}"):
        model.image_grids(features, inputs.images)


def test_max_pixels_budget_shrinks_the_grid(model):
    """A budget of 8 LLM tokens' pixels halves each side of a 4 x 8 grid. GLM-4V's
    smart-resize counts an image as two frames: unscaled, the budget would give 1 x 2."""
    vision = model.hf.config.vision_config
    side = vision.patch_size * vision.spatial_merge_size  # one LLM token's pixels a side
    image = noise(8 * side, 4 * side)
    assert [g.shape for g in model.build_inputs([image], PROMPT).grids] == [(4, 8)]
    model.max_pixels = side * side * 8
    try:
        inputs = model.build_inputs([image], PROMPT)
    finally:
        model.max_pixels = None
    assert [g.shape for g in inputs.grids] == [(2, 4)]


def test_forced_trace_matches_generation(model):
    assert_trace_agrees(model, model.build_inputs([noise(150, 100), noise(84, 84, seed=3)],
                                                  PROMPT))


def test_final_norm_and_unembedding_give_the_models_logits(model):
    inputs = model.build_inputs([noise(150, 100)], PROMPT)
    normed = []
    handle = model.final_norm().register_forward_hook(lambda _m, _i, out: normed.append(out))
    try:
        with torch.no_grad():
            logits = model.hf(**inputs.features).logits[0]
    finally:
        handle.remove()
    assert len(model.decoder_layers()) == model.hf.config.text_config.num_hidden_layers
    torch.testing.assert_close(normed[0][0] @ model.unembedding().T, logits)


class _Stop(Exception):
    """Raised once the decoder's inputs are known: its work is not needed."""


def decoder_inputs(model, inputs, block: int, patch: int | None):
    """The decoder's input embeddings (L, d) and DeepStack features [(N_image, d)] with
    patch ``patch`` of vision block ``block`` nudged (None: no nudge).

    The nudge differs across channels: the mergers' LayerNorm would cancel a uniform one.
    """
    seen = {}

    def nudge(_module, _inputs, out):
        if patch is not None:
            out[patch] += torch.linspace(-5.0, 5.0, out.shape[-1], dtype=out.dtype)

    def record(_module, _args, kwargs):
        seen["embeds"] = kwargs["inputs_embeds"][0].clone()
        seen["deepstack"] = [e.clone() for e in kwargs.get("deepstack_visual_embeds") or []]
        raise _Stop

    handles = [model.vision_layers()[block].register_forward_hook(nudge),
               model.hf.model.language_model.register_forward_pre_hook(record, with_kwargs=True)]
    try:
        with torch.no_grad():
            model.hf(**inputs.features)
    except _Stop:
        pass
    finally:
        for handle in handles:
            handle.remove()
    return seen["embeds"], seen["deepstack"]


def moved(before: torch.Tensor, after: torch.Tensor) -> set[int]:
    return set(torch.nonzero((after - before).abs().amax(-1) > 1e-5).flatten().tolist())


def probes(model, inputs) -> list[int]:
    n_patches = int(inputs.features["pixel_values"].shape[0])
    return [*range(0, n_patches, 5), n_patches - 1]


def mapped_positions(model, inputs, patch: int) -> set[int]:
    n_patches = int(inputs.features["pixel_values"].shape[0])
    one_hot = torch.zeros(n_patches)
    one_hot[patch] = 1.0
    mapped = model.vision_tokens_to_grids([one_hot], inputs)
    assert mapped.shape == (len(inputs.image_positions),)
    return set(inputs.image_positions[(mapped != 0).numpy()].tolist())


def test_the_merger_reads_the_default_vision_layer_where_the_map_says(model):
    """A nudge to one patch of the default layer moves exactly one LLM image token: the one
    its one-hot score maps to (the model's own merger is the ground truth)."""
    inputs = model.build_inputs([noise(150, 100), noise(84, 84, seed=3)], PROMPT)
    block = model.default_vision_layer()
    assert block == len(model.vision_layers()) - 1
    base, _ = decoder_inputs(model, inputs, block, None)
    for patch in probes(model, inputs):
        nudged, _ = decoder_inputs(model, inputs, block, patch)
        expected = mapped_positions(model, inputs, patch)
        assert len(expected) == 1 and moved(base, nudged) == expected, patch


def test_deepstack_blocks_feed_the_decoder_at_the_cells_the_map_says():
    """Qwen3-VL's DeepStack blocks are vision layers of the map: a nudge to one patch of
    such a block moves the DeepStack features of exactly the LLM token its score maps to."""
    model = Qwen3VL.tiny(seed=0)
    blocks = list(model.hf.config.vision_config.deepstack_visual_indexes)
    assert blocks == [0] and len(model.vision_layers()) == 2
    inputs = model.build_inputs([noise(150, 100), noise(84, 84, seed=3)], PROMPT)
    image = inputs.image_positions
    for layer, block in enumerate(blocks):
        _, base = decoder_inputs(model, inputs, block, None)
        assert len(base) == len(blocks) and base[layer].shape[0] == len(image)
        for patch in probes(model, inputs):
            _, nudged = decoder_inputs(model, inputs, block, patch)
            reached = {int(image[row]) for row in moved(base[layer], nudged[layer])}
            assert reached == mapped_positions(model, inputs, patch), (block, patch)
