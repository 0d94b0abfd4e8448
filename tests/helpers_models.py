"""Checks shared by the LLaVA, LLaVA-NeXT and InternVL adapter tests (tiny models, CPU)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from mmxai.model import Inputs, Model, load_model
from mmxai.trace import Needs, forced_trace, generate_trace

PROMPT = "describe the image in one short sentence"


def noise(width: int, height: int, seed: int = 0) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def ramps(width: int, height: int) -> Image.Image:
    """Red grows left to right, green top to bottom: every region looks different."""
    x = np.linspace(0, 255, width)[None, :].repeat(height, 0)
    y = np.linspace(0, 255, height)[:, None].repeat(width, 1)
    return Image.fromarray(np.stack([x, y, 255 - x], axis=-1).astype(np.uint8))


def logits(model: Model, inputs: Inputs) -> torch.Tensor:
    with torch.no_grad():
        return model.hf(**inputs.features).logits[0]


def unnormalise(pixel_values: torch.Tensor, image_processor) -> np.ndarray:
    """(..., 3, H, W) model pixels -> (..., H, W, 3) in [0, 255]."""
    mean = torch.tensor(image_processor.image_mean)[:, None, None]
    std = torch.tensor(image_processor.image_std)[:, None, None]
    pixels = (pixel_values.float() * std + mean) * 255
    return pixels.movedim(-3, -1).numpy()


def crop_of(image: Image.Image, box, size: tuple[int, int]) -> np.ndarray:
    """The region ``box`` (fractions) of ``image`` resized to ``size`` = (H, W): (H, W, 3)."""
    width, height = image.size
    x0, y0, x1, y1 = box
    region = image.crop((x0 * width, y0 * height, x1 * width, y1 * height))
    return np.asarray(region.resize(size[::-1], Image.Resampling.BICUBIC), dtype=np.float64)


def assert_round_trip(family: type[Model], folder: Path) -> None:
    """save_pretrained + load_model gives the same adapter, inputs and logits."""
    tiny = family.tiny(seed=1)
    tiny.hf.save_pretrained(folder)
    tiny.processor.save_pretrained(folder)
    loaded = load_model(str(folder))
    assert type(loaded) is family
    assert loaded.hf.config._attn_implementation == "eager"
    images = [noise(150, 100)]
    a, b = tiny.build_inputs(images, PROMPT), loaded.build_inputs(images, PROMPT)
    assert torch.equal(a.input_ids, b.input_ids)
    assert torch.equal(a.features["pixel_values"], b.features["pixel_values"])
    assert [g.positions.tolist() for g in a.grids] == [g.positions.tolist() for g in b.grids]
    torch.testing.assert_close(logits(tiny, a), logits(loaded, b), rtol=0, atol=1e-6)


def assert_grids_well_formed(model: Model, inputs: Inputs) -> None:
    """Grid positions are image tokens, sorted, disjoint, stacked by offset; prompt decodes."""
    ids = inputs.input_ids
    image_id = model.image_token_id()
    positions = inputs.image_positions
    assert bool((ids[positions] == image_id).all())
    assert np.array_equal(positions, np.sort(positions))
    assert len(set(positions.tolist())) == len(positions)
    sizes = [g.size for g in inputs.grids]
    assert [g.offset for g in inputs.grids] == list(np.cumsum([0, *sizes])[:-1])
    assert all(len(g.positions) == g.size for g in inputs.grids)
    assert model.tokenizer.decode(ids[inputs.prompt_positions]).strip() == PROMPT


def assert_trace_agrees(model: Model, inputs: Inputs) -> None:
    """One generation and its teacher-forced replay agree at the image positions."""
    needs = Needs(layers=(0,), attentions=True)
    generated = generate_trace(model, inputs, needs, max_new_tokens=5)
    assert generated.n_generated >= 1
    forced = forced_trace(model, inputs, generated.generated_ids, needs)
    image = inputs.image_positions
    torch.testing.assert_close(forced.hidden[image], generated.hidden[image], rtol=0, atol=1e-4)
    torch.testing.assert_close(forced.layers[0][image], generated.layers[0][image],
                               rtol=0, atol=1e-4)
    classes = generated.generated_ids.tolist()
    torch.testing.assert_close(forced.image_logits(classes), generated.image_logits(classes),
                               rtol=0, atol=1e-4)
    for a, b in zip(forced.attentions, generated.attentions, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-4)


def vision_call_shapes(model: Model, inputs: Inputs) -> list[tuple[int, ...]]:
    """The output shape, channels dropped, of each call of the projector-feeding layer."""
    shapes = []
    layer = model.vision_layers()[model.default_vision_layer()]

    def record(_module, _inputs, out):
        out = out[0] if isinstance(out, (tuple, list)) else out
        shapes.append(tuple(out.shape[:-1]))

    handle = layer.register_forward_hook(record)
    try:
        logits(model, inputs)
    finally:
        handle.remove()
    return shapes


class _Stop(Exception):
    """Raised once the LLM's inputs are known: the decoder's work is not needed."""


#: Vision tokens each crop's nudge test visits: CLS, the four corner patches of a 4x4 crop
#: and an inner one (corners are what LLaVA-NeXT's unpadding cuts).
PROBES = (0, 1, 4, 6, 13, 16)


def _language_model(model: Model) -> torch.nn.Module:
    """The decoder stack the image features enter (Idefics3 and SmolVLM call it text_model)."""
    inner = model.hf.model
    return getattr(inner, "language_model", None) or inner.text_model


def llm_inputs_after_nudge(model: Model, inputs: Inputs, call: int,
                           index: tuple[int, ...] | None) -> torch.Tensor:
    """The LLM's input embeddings (L, d) with one vision token of the layer nudged.

    ``index`` (crop, token) of call ``call`` of the projector-feeding layer is moved along
    every channel; None nudges nothing. The nudge is in place, so the hidden states
    transformers records from that layer carry it too.
    """
    layer = model.vision_layers()[model.default_vision_layer()]
    seen, embeds = [], []

    def nudge(_module, _inputs, out):
        hidden = out[0] if isinstance(out, (tuple, list)) else out
        if index is not None and len(seen) == call:
            # not the same shift on every channel: a layer norm after the layer (SigLIP's
            # post_layernorm) would take that away
            hidden[index] += torch.linspace(-5.0, 5.0, hidden.shape[-1], dtype=hidden.dtype,
                                            device=hidden.device)
        seen.append(True)

    def record(_module, _args, kwargs):
        embeds.append(kwargs["inputs_embeds"][0].detach().clone())
        raise _Stop

    handles = [layer.register_forward_hook(nudge),
               _language_model(model).register_forward_pre_hook(record, with_kwargs=True)]
    try:
        logits(model, inputs)
    except _Stop:
        pass
    finally:
        for handle in handles:
            handle.remove()
    return embeds[0]


def assert_vision_map_matches_model(model: Model, inputs: Inputs) -> int:
    """For probed vision tokens of every crop: the LLM positions its nudge reaches are where
    its one-hot score lands through ``vision_tokens_to_grids``. Returns how many were checked.

    The nudge is ground truth (the model's own projector, pixel shuffle, unpadding and
    placement); the one-hot map is the adapter's claim.
    """
    shapes = vision_call_shapes(model, inputs)
    base = llm_inputs_after_nudge(model, inputs, 0, None)
    image = inputs.image_positions
    checked = 0
    for call, shape in enumerate(shapes):
        for crop in range(shape[0]):
            for token in PROBES:
                scores = [torch.zeros(s) for s in shapes]
                scores[call][crop, token] = 1.0
                mapped = model.vision_tokens_to_grids(scores, inputs)
                assert mapped.shape == (len(image),)
                nudged = llm_inputs_after_nudge(model, inputs, call, (crop, token))
                moved = (nudged - base).abs().amax(-1)
                changed = set(torch.nonzero(moved > 1e-5).flatten().tolist())
                assert changed == set(image[(mapped != 0).numpy()].tolist()), (call, crop, token)
                checked += 1
    return checked
