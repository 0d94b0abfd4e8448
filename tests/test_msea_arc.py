"""MSEA and ARC: the paper's equations on hand-made inputs, and end to end on tiny models."""

import numpy as np
import pytest
import torch
from PIL import Image

from mmxai.api import explain_many
from mmxai.maps import resample
from mmxai.methods import msea_arc
from mmxai.methods.msea_arc import (
    ARCOptions,
    MSEAOptions,
    arc,
    base_class,
    msea_maps,
    scale_image,
    to_original,
)
from mmxai.methods.tam_ops import lstsq_scale, rank_gaussian_filter
from mmxai.registry import manager
from mmxai.trace import generate_trace

PROMPT = "Describe the image."
FAMILIES = {"native": "Qwen2VLForConditionalGeneration", "fixed": "LlavaForConditionalGeneration"}


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def model(request):
    return manager().get("models", FAMILIES[request.param]).tiny()


@pytest.fixture(scope="module")
def image():
    rng = np.random.RandomState(0)
    return Image.fromarray((rng.rand(70, 110, 3) * 255).astype("uint8"))


@pytest.fixture(scope="module")
def trace(model, image):
    inputs = model.build_inputs([image], PROMPT)
    return generate_trace(model, inputs, max_new_tokens=5, min_new_tokens=5)


def test_scale_image_native_keeps_whole_frame(image):
    scaled, box = scale_image(image, 0.5, canvas=None)
    assert scaled.size == (55, 35)
    assert box == (0.0, 0.0, 1.0, 1.0)


def test_scale_image_pastes_onto_fixed_canvas():
    img = Image.new("RGB", (200, 100), (255, 0, 0))
    board, box = scale_image(img, 0.5, canvas=(336, 336))
    assert board.size == (336, 336)
    # fitted: 336 x 168, halved: 168 x 84, centred at (84, 126)
    assert box == pytest.approx((84 / 336, 126 / 336, 252 / 336, 210 / 336))
    pixels = np.asarray(board)
    assert (pixels[130, 100] == [255, 0, 0]).all() and (pixels[10, 10] == 0).all()
    # the canvas box maps back onto the whole original image
    assert to_original(box, box) == pytest.approx((0, 0, 1, 1))


def test_resample_identity_and_sub_box():
    maps = torch.arange(12.0).reshape(1, 3, 4)
    same, covered = resample(maps, (0, 0, 1, 1), (0, 0, 1, 1), (3, 4))
    assert torch.allclose(same, maps, atol=1e-5) and covered.all()
    left, _ = resample(maps, (0, 0, 1, 1), (0, 0, 0.5, 1), (3, 2))
    assert torch.allclose(left, maps[:, :, :2], atol=1e-5)
    _, inner = resample(maps, (0.25, 0.25, 0.75, 0.75), (0, 0, 1, 1), (4, 4))
    assert inner.sum() == 4 and inner[1:3, 1:3].all()


def test_msea_single_scale_equals_logit_lens(trace):
    classes = trace.generated_ids.tolist()
    fused = msea_maps(trace, classes, MSEAOptions(scales=(1.0,)))
    assert torch.allclose(fused, trace.image_logits(classes).cpu(), atol=1e-6)


def test_msea_scales_explain_the_same_answer(trace):
    options = MSEAOptions(scales=(0.5, 1.0))
    fused = msea_maps(trace, trace.generated_ids.tolist(), options)
    assert fused.shape == (trace.n_generated, len(trace.image_positions))
    (scaled, _), = [v for k, v in trace.cache.items() if k[0] == "msea"]
    assert torch.equal(scaled.generated_ids, trace.generated_ids)
    mean = msea_maps(trace, [int(trace.generated_ids[0])], options)
    top = msea_maps(trace, [int(trace.generated_ids[0])], MSEAOptions(scales=(0.5, 1.0),
                                                                      fusion="max"))
    assert (top >= mean - 1e-5).all()


def test_arc_with_all_tokens_relevant_keeps_only_the_base_term(trace, monkeypatch):
    monkeypatch.setattr(msea_arc, "rbo", lambda lists, ref, **kw: torch.ones(len(lists),
                                                                             dtype=torch.float64))
    tokens = list(range(trace.n_generated))
    out = arc(trace, tokens, lambda c: trace.image_logits(c).cpu(), ARCOptions())
    targets = trace.image_logits(trace.generated_ids.tolist()).cpu()
    base = trace.image_logits([base_class(trace)]).cpu()
    beta = lstsq_scale(targets, base.expand_as(targets))
    expected = (targets - beta[:, None] * base).clamp_min(0).numpy()
    from mmxai.maps import per_grid
    expected = per_grid(lambda g: rank_gaussian_filter(g, 3), expected, trace.grids)
    np.testing.assert_allclose(out, expected, atol=1e-5)


def test_arc_removes_an_irrelevant_context_map(trace, monkeypatch):
    """With r = 0 for every context token, the interference is their mean map."""
    monkeypatch.setattr(msea_arc, "rbo", lambda lists, ref, **kw: torch.zeros(len(lists),
                                                                              dtype=torch.float64))
    options = ARCOptions(filter=False, base_weight=0.0)
    last = trace.n_generated - 1
    out = arc(trace, [last], lambda c: trace.image_logits(c).cpu(), options)
    ids, _ = msea_arc.arc_context(trace, [last])
    context = trace.image_logits(ids.tolist()).cpu().mean(dim=0, keepdim=True)
    target = trace.image_logits([int(trace.generated_ids[last])]).cpu()
    beta = lstsq_scale(target, context)
    np.testing.assert_allclose(out, (target - beta[:, None] * context).clamp_min(0), atol=1e-5)


def test_registered_methods_end_to_end(model, image):
    results = explain_many(model, image, PROMPT, ["arc", "msea", "msea-tam", "msea-arc"],
                           max_new_tokens=4, generate_kwargs={"min_new_tokens": 4})
    n_image = sum(g.size for g in results["arc"].trace.grids)
    for name, explanation in results.items():
        assert explanation.maps.shape == (4, n_image), name
        assert np.isfinite(explanation.maps).all() and (explanation.maps >= 0).all(), name


def test_msea_tam_single_scale_equals_tam(model, image):
    results = explain_many(model, image, PROMPT, ["tam", "msea-tam"], max_new_tokens=4,
                           method_options={"msea-tam": {"scales": (1.0,)}},
                           generate_kwargs={"min_new_tokens": 4})
    np.testing.assert_allclose(results["msea-tam"].maps, results["tam"].maps, atol=1e-6)


def test_topk_reuses_the_trace_and_equals_full_logits(trace):
    from mmxai.methods.msea_arc import topk_at

    positions = np.arange(trace.hidden.shape[0])
    w = trace.model.unembedding()
    with torch.no_grad():
        expected = (trace.hidden @ w.T.float()).topk(5, dim=-1).indices
    recorded = generate_trace(trace.model, trace.inputs, msea_arc.Needs(topk=5),
                              max_new_tokens=5, min_new_tokens=5)
    assert recorded.topk_ids is not None
    assert torch.equal(topk_at(recorded, positions, 5), expected)
    assert torch.equal(topk_at(trace, positions, 5), expected)  # nothing recorded: computed
