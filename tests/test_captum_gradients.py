"""Integrated Gradients, IG + SmoothGrad, gradient x input and vision gradient x input
through captum: against autograd by hand, IG's completeness, options, every family."""

import dataclasses

import numpy as np
import pytest
import torch
from helpers_attribution import FAMILIES, PROMPT, forced, image

from mmxai.api import explain
from mmxai.errors import MMXAIError
from mmxai.methods.backprop import token_logits
from mmxai.methods.captum_gradients import (
    GradientXInput,
    IGSmoothGrad,
    IntegratedGradients,
    VisionGradientXInput,
)
from mmxai.methods.image_embeddings import (
    baseline_embeddings,
    image_embeddings,
    replaced_image_rows,
)
from mmxai.options import OptionError
from mmxai.registry import manager
from mmxai.trace import forced_features

NAMES = ("integrated-gradients", "ig-smoothgrad", "gradient-x-input", "vision-gradient-x-input")
# what keeps each method fast on the tiny models (IG's cost is steps x samples passes)
SMALL = {"integrated-gradients": {"steps": 4}, "ig-smoothgrad": {"steps": 2, "samples": 2},
         "gradient-x-input": {}, "vision-gradient-x-input": {}}


@pytest.fixture(params=FAMILIES)
def model(request, tiny_model):
    return tiny_model(request.param)


def by_hand(trace, tokens, module, output):
    """dy_j/dh and h for a tensor h of ``module`` (its output, or its first input), by hand:
    a plain forward with every position's logits, h hooked to require grad, and
    ``torch.autograd.grad`` of ``logits[0, q_j, y_j]``; none of the methods' helpers."""
    hooked = []

    def grad_on(value):
        hooked.append(value.detach().requires_grad_(True))
        return hooked[-1]

    def after(_module, _args, out):
        return (grad_on(out[0]), *out[1:]) if isinstance(out, tuple) else grad_on(out)

    def before(_module, args, kwargs):
        if args:
            return (grad_on(args[0]), *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": grad_on(kwargs["hidden_states"])}

    handle = (module.register_forward_hook(after, prepend=True) if output else
              module.register_forward_pre_hook(before, with_kwargs=True, prepend=True))
    features = forced_features(trace.inputs, trace.sequence[:-1])
    try:
        with torch.enable_grad():
            logits = trace.model.hf(**features, use_cache=False).logits
    finally:
        handle.remove()
    for j in tokens:
        q = trace.generating_position(j)
        grads = torch.autograd.grad(logits[0, q, int(trace.sequence[q + 1])], hooked,
                                    retain_graph=True, allow_unused=True)
        yield ([torch.zeros_like(h) if g is None else g
                for g, h in zip(grads, hooked, strict=True)], [h.detach() for h in hooked])


def embedding_gradient_x_input(trace, tokens):
    """sum_d x[v, d] dy_j/dx[v, d] at the image rows of the first decoder layer's input:
    (n_tokens, N_image)."""
    rows = torch.as_tensor(trace.image_positions)
    first = trace.model.decoder_layers()[0]
    return np.stack([(grads[0] * inputs[0])[0, rows].sum(-1).numpy()
                     for grads, inputs in by_hand(trace, tokens, first, output=False)])


def test_gradient_x_input_equals_autograd_by_hand(model):
    trace = forced(model)
    tokens = list(range(trace.n_generated))
    expected = embedding_gradient_x_input(trace, tokens)
    maps = GradientXInput()(trace, tokens)
    np.testing.assert_allclose(maps, expected, rtol=1e-4, atol=1e-7)
    assert (maps > 0).any() and (maps < 0).any()  # signed, as the sum over d is
    norms = GradientXInput(reduce="l2")(trace, tokens)
    width = trace.hidden.shape[1]  # Cauchy-Schwarz: |sum_d a_d| <= sqrt(d) ||a||
    assert (norms >= 0).all() and (norms * np.sqrt(width) * (1 + 1e-5) >= np.abs(maps)).all()
    assert not np.allclose(norms, np.abs(maps))


def test_token_groups_give_the_same_maps(tiny_model, tiny_family):
    """engine=captum, batch=1 (one copy per pass) and one pass for all tokens: the same maps
    (the copies of a batch are split again correctly, whichever way the family's tower
    stacks them)."""
    trace = forced(tiny_model(tiny_family))
    tokens = [2, 0, 1, 1]
    for cls in (GradientXInput, VisionGradientXInput):
        one = cls(engine="captum", batch=1)(trace, tokens)
        np.testing.assert_allclose(cls(engine="captum", batch=4)(trace, tokens), one,
                                   rtol=1e-4, atol=1e-9)
        np.testing.assert_array_equal(one[2], one[3])  # a repeated token, the same map


def test_engines_give_the_same_maps(tiny_model, tiny_family):
    """One forward pass and a backward per token (the default) = captum's forward and
    backward per token, for both gradient x input methods and both reductions."""
    trace = forced(tiny_model(tiny_family))
    tokens = [2, 0, 1]
    for cls in (GradientXInput, VisionGradientXInput):
        for reduce in ("sum", "l2"):
            captum = cls(engine="captum", reduce=reduce)(trace, tokens)
            scale = np.abs(captum).max()
            assert scale > 0, (cls.name, reduce)
            np.testing.assert_allclose(cls(reduce=reduce)(trace, tokens), captum, rtol=1e-5,
                                       atol=1e-6 * scale, err_msg=f"{cls.name} {reduce}")


@pytest.mark.parametrize("cls", [GradientXInput, VisionGradientXInput])
def test_backward_engine_runs_the_decoder_once(tiny_model, cls):
    """The default engine: one pass of one copy of the sequence for all tokens; captum's
    engine: one copy per token."""
    trace = forced(tiny_model("llava"))
    first = trace.model.decoder_layers()[0]
    batches = []
    handle = first.register_forward_pre_hook(
        lambda _m, args, kwargs: batches.append((args[0] if args else
                                                 kwargs["hidden_states"]).shape[0]),
        with_kwargs=True)
    try:
        cls()(trace, [0, 1, 2])
        assert batches == [1]
        batches.clear()
        cls(engine="captum", batch=2)(trace, [0, 1, 2])
        assert batches == [2, 1]
    finally:
        handle.remove()


@pytest.mark.parametrize("baseline", ["zeros", "black", "mean"])
def test_integrated_gradients_is_complete(model, baseline):
    """sum over image tokens and d of IG = y_j(x) - y_j(x'), up to the quadrature error."""
    trace = forced(model)
    tokens = list(range(trace.n_generated))
    maps = IntegratedGradients(steps=64, baseline=baseline)(trace, tokens)
    reference = baseline_embeddings(trace, baseline, "integrated-gradients")
    with torch.no_grad():
        at_input = token_logits(trace, tokens)
        with replaced_image_rows(trace, reference[None]):
            at_baseline = token_logits(trace, tokens)
    difference = (at_input - at_baseline).numpy()
    assert np.abs(difference).max() > 1e-3  # the check below is not 0 = 0
    np.testing.assert_allclose(maps.sum(axis=1), difference, rtol=2e-3, atol=1e-5)


def test_baselines_are_what_they_say(tiny_model):
    trace = forced(tiny_model("qwen2-vl"))
    x = image_embeddings(trace)
    assert x.shape == (len(trace.image_positions), trace.hidden.shape[1])
    assert (baseline_embeddings(trace, "zeros", "ig") == 0).all()
    mean = baseline_embeddings(trace, "mean", "ig")
    torch.testing.assert_close(mean, x.mean(0).expand_as(x))
    black = baseline_embeddings(trace, "black", "ig")
    assert black.shape == x.shape and not torch.allclose(black, x)


def test_black_baseline_refuses_another_token_layout(tiny_model):
    """Qwen's token count follows the image size: a trace whose stored image has another
    size than the one its tokens came from has no black image of the same layout."""
    trace = forced(tiny_model("qwen2-vl"))
    bigger = image().resize((220, 140))
    trace = dataclasses.replace(trace, inputs=dataclasses.replace(trace.inputs, images=[bigger]),
                                cache={})
    with pytest.raises(MMXAIError, match=r"baseline=black: a black image gives .* another "
                                         r"token layout") as info:
        IntegratedGradients(steps=2, baseline="black")(trace, [0])
    assert "\n" not in str(info.value)


def test_ig_smoothgrad_is_seeded_noise_around_ig(tiny_model):
    trace = forced(tiny_model("llava"))
    tokens = [0, 1]
    options = {"steps": 8, "samples": 3}
    first = IGSmoothGrad(**options)(trace, tokens)
    np.testing.assert_array_equal(IGSmoothGrad(**options)(trace, tokens), first)
    # a token's noise is its own: the same map whichever other tokens are explained
    np.testing.assert_allclose(IGSmoothGrad(**options)(trace, [1]), first[[1]], rtol=1e-5,
                               atol=1e-8)
    assert not np.allclose(IGSmoothGrad(**options, seed=1)(trace, tokens), first)
    ig = IntegratedGradients(steps=8)(trace, tokens)
    assert not np.allclose(first, ig, rtol=1e-3)
    quiet = IGSmoothGrad(**options, stdev=1e-7)(trace, tokens)  # no noise to speak of: IG
    np.testing.assert_allclose(quiet, ig, rtol=1e-3, atol=1e-6)


def vision_gradient_x_activation(trace, tokens, layer):
    """sum_c A[n, c] dy_j/dA[n, c] of the layer's output, through the adapter's grid map, and
    the largest sum_c |A[n, c] dy_j/dA[n, c]| (the size of the terms: float rounding of the
    sum is relative to it)."""
    maps, size = [], 0.0
    for grads, acts in by_hand(trace, tokens, layer, output=True):
        terms = [g * a for g, a in zip(grads, acts, strict=True)]
        maps.append(trace.model.vision_tokens_to_grids([t.sum(-1) for t in terms],
                                                       trace.inputs).numpy())
        size = max(size, *(float(t.abs().sum(-1).max()) for t in terms))
    return np.stack(maps), size


def test_vision_gradient_x_input_equals_autograd_by_hand(tiny_model, tiny_family):
    model = tiny_model(tiny_family)
    trace = forced(model)
    tokens = list(range(trace.n_generated))
    layer = model.vision_layers()[model.default_vision_layer()]
    expected, size = vision_gradient_x_activation(trace, tokens, layer)
    maps = VisionGradientXInput()(trace, tokens)
    scale = np.abs(expected).max()
    assert scale > 0
    # Gemma 3's tower: the terms (about 0.03) cancel to about 1e-8, below float32 rounding
    # of a forward that projects every position, not only the explained ones
    np.testing.assert_allclose(maps, expected, rtol=1e-3, atol=max(1e-4 * scale, 1e-6 * size))


@pytest.mark.parametrize("engine", ["backward", "captum"])
def test_vision_layer_option(tiny_model, engine):
    """Tiny LLaVA's projector reads vision layer 0 of 2: layer 1 explains nothing."""
    trace = forced(tiny_model("llava"))
    np.testing.assert_array_equal(VisionGradientXInput(layer=1, engine=engine)(trace, [0, 1]), 0)
    assert (VisionGradientXInput(layer=-2, engine=engine)(trace, [0, 1]) != 0).any()
    with pytest.raises(MMXAIError, match=r"vision-gradient-x-input.layer=5 is out of range: "
                                         r"the model has 2 vision layers"):
        VisionGradientXInput(layer=5)(trace, [0])


def test_every_family_gives_finite_maps_of_the_flat_layout(tiny_model, tiny_family):
    trace = forced(tiny_model(tiny_family))
    tokens = list(range(trace.n_generated))
    for name in NAMES:
        maps = manager().get("methods", name)(**SMALL[name])(trace, tokens)
        assert maps.shape == (len(tokens), len(trace.image_positions)), name
        assert np.isfinite(maps).all() and (maps != 0).any(), name


@pytest.mark.parametrize(("name", "options", "message"), [
    ("integrated-gradients", {"steps": 0}, "steps=0 must be at least 1"),
    ("integrated-gradients", {"steps": "many"}, "expected a whole number"),
    ("integrated-gradients", {"steps": 1, "method": "riemann_trapezoid"}, "at least 2"),
    ("integrated-gradients", {"baseline": "grey"}, "expected one of black, mean, zeros"),
    ("integrated-gradients", {"method": "simpson"}, "expected one of gausslegendre"),
    ("integrated-gradients", {"batch": 0}, "batch=0 must be at least 1"),
    ("ig-smoothgrad", {"samples": 0}, "samples=0 must be at least 1"),
    ("ig-smoothgrad", {"seed": -1}, "seed=-1 must be at least 0"),
    ("ig-smoothgrad", {"stdev": 0}, "stdev=0.0 must be above 0"),
    ("ig-smoothgrad", {"stdev": "nan"}, "expected a finite number"),
    ("gradient-x-input", {"reduce": "max"}, "expected one of sum, l2"),
    ("vision-gradient-x-input", {"engine": "jax"}, "expected one of backward, captum"),
    ("vision-gradient-x-input", {"layer": 1.5}, "expected a whole number or none"),
    ("gradient-x-input", {"steps": 4}, "has no option"),
])
def test_options_are_typed_and_checked(name, options, message):
    with pytest.raises(OptionError, match=message) as info:
        manager().get("methods", name)(**options)
    assert "\n" not in str(info.value)


def test_options_read_from_text():
    method = manager().get("methods", "ig-smoothgrad")(steps="8", stdev="0.2", baseline="mean",
                                                      method="riemann_middle")
    assert (method.options.steps, method.options.stdev) == (8, 0.2)
    assert method.options.baseline == "mean" and method.options.method == "riemann_middle"


def test_registered_with_cost_and_citation():
    methods = manager().items("methods")
    for name in NAMES:
        cls = methods[name]
        assert cls.needs.gradients and cls.summary and "@" in cls.citation
        assert " pass" in cls.summary  # the cost in passes per token, for listings
    # none in the default run: the costly ones, and the x-input ones for its time budget
    assert not any(methods[name].default_run for name in NAMES)
    assert "sundararajan2017axiomatic" in methods["integrated-gradients"].citation
    assert "smilkov2017smoothgrad" in methods["ig-smoothgrad"].citation
    assert "shrikumar2016blackbox" in methods["gradient-x-input"].citation


def test_integrated_gradients_through_the_api(tiny_model):
    result = explain(tiny_model("llava"), image(), PROMPT, method="integrated-gradients",
                     max_new_tokens=2, steps=4)
    assert result.maps.shape == (result.trace.n_generated, len(result.trace.image_positions))
    assert np.isfinite(result.maps).all()


@pytest.fixture(scope="module")
def testbed_trace():
    """The trained testbed16 model on its first scene (a real embedding scale, unlike the
    tiny random models')."""
    from mmxai.datasets.synthetic import TESTBED16, SyntheticScenes16
    from mmxai.images import read_image
    from mmxai.model import load_model
    from mmxai.trace import Needs, generate_trace

    model = load_model(TESTBED16)
    scene = next(iter(SyntheticScenes16()))
    inputs = model.build_inputs([read_image(scene.image, "scene")], scene.prompt)
    return generate_trace(model, inputs, Needs(), max_new_tokens=4)


def completeness_error(trace, baseline, steps, token):
    """|sum of IG - (y(x) - y(x'))| / |y(x) - y(x')| for one token."""
    ig = IntegratedGradients(steps=steps, baseline=baseline)(trace, [token]).sum()
    reference = baseline_embeddings(trace, baseline, "integrated-gradients")
    with torch.no_grad():
        at_input = token_logits(trace, [token])
        with replaced_image_rows(trace, reference[None]):
            difference = float(at_input - token_logits(trace, [token]))
    assert abs(difference) > 1.0
    return abs(ig - difference) / abs(difference)


def test_mean_baseline_is_complete_on_the_testbed_and_zeros_is_not(testbed_trace):
    """Why zeros is not the default: the decoder's pre-norm jumps next to x = 0 (docs)."""
    assert completeness_error(testbed_trace, "mean", steps=32, token=1) < 0.03
    assert completeness_error(testbed_trace, "zeros", steps=32, token=1) > 0.2


def test_deepstack_models_warn_once_that_later_image_features_stay_as_traced(tiny_model,
                                                                           monkeypatch):
    """Qwen3-VL adds image features after its first decoder layers: the embedding methods
    vary only the first layer's, so they say so, once per method and model; Grad-CAM-like
    vision-layer methods and models without DeepStack say nothing."""
    import warnings

    import mmxai.methods.captum_gradients as captum_gradients

    monkeypatch.setattr(captum_gradients, "_warned", set())  # earlier tests ran these methods
    trace = forced(tiny_model("qwen3-vl"))
    for cls, options in ((GradientXInput, {}), (IntegratedGradients, {"steps": 2})):
        with pytest.warns(UserWarning, match=rf"{cls.name}: .*DeepStack.*stay as traced"):
            cls(**options)(trace, [0])
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            cls(**options)(trace, [0])  # once
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        VisionGradientXInput()(trace, [0])
        GradientXInput()(forced(tiny_model("llava")), [0])
