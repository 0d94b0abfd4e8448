"""Grad-CAM: the closed form on hand-made tensors and a linear probe, captum as the oracle
for the gradients, and end to end on tiny models of two families."""

import numpy as np
import pytest
import torch
from captum._utils.gradient import compute_layer_gradients_and_eval
from helpers_attribution import FAMILIES, PROMPT, forced, image

from mmxai.api import explain
from mmxai.methods.backprop import leaf_outputs, per_token_gradients, token_logits
from mmxai.methods.gradcam import GradCAM, gradcam_scores, image_sections, layer_gradcam
from mmxai.model import Inputs
from mmxai.trace import forced_features


def by_hand(grads: np.ndarray, acts: np.ndarray) -> np.ndarray:
    """relu(sum_c mean_n(grad)[c] * act[n, c]) with explicit loops over one image."""
    n_tokens, n_channels = acts.shape
    out = np.zeros(n_tokens)
    for n in range(n_tokens):
        total = 0.0
        for c in range(n_channels):
            total += grads[:, c].mean() * acts[n, c]
        out[n] = max(total, 0.0)
    return out


def test_gradcam_scores_equal_the_closed_form_per_image():
    rng = np.random.default_rng(0)
    grads, acts = rng.normal(size=(2, 5, 3)), rng.normal(size=(2, 5, 3))
    scores = gradcam_scores(torch.tensor(grads), torch.tensor(acts)).numpy()
    assert scores.shape == (2, 5)
    for image_index in range(2):
        np.testing.assert_allclose(scores[image_index],
                                   by_hand(grads[image_index], acts[image_index]), rtol=1e-6)
    assert (scores == 0).any() and (scores > 0).any()  # the ReLU acts on these numbers


class LinearProbe(torch.nn.Module):
    """logit_j = sum_n w_j . act_n with act = layer(x): d logit_j / d act_n = w_j."""

    def __init__(self, n_channels: int, n_targets: int) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(4, n_channels)
        self.readout = torch.nn.Parameter(torch.randn(n_targets, n_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.layer(x) @ self.readout.T).sum(dim=(0, 1))  # (n_targets,)


def test_gradcam_on_a_linear_probe_is_relu_of_act_times_readout():
    torch.manual_seed(0)
    probe, x = LinearProbe(n_channels=6, n_targets=3), torch.randn(2, 7, 4)
    with leaf_outputs(probe.layer) as acts:
        logits = probe(x)
    per_target = list(per_token_gradients(logits, acts))
    assert len(acts) == 1 and len(per_target) == 3
    inputs = Inputs(features={}, images=[], prompt="", grids=[], prompt_positions=np.zeros(0))
    for j, grads in enumerate(per_target):
        torch.testing.assert_close(grads[0], probe.readout[j].expand(2, 7, 6).detach())
        expected = torch.relu(acts[0].detach() @ probe.readout[j].detach())
        torch.testing.assert_close(layer_gradcam(grads[0], acts[0].detach(), inputs), expected)


def test_batchless_rows_are_pooled_per_image():
    """Qwen-style (N, C) outputs: channel weights are means over each image's own rows."""
    rng = np.random.default_rng(1)
    grads, acts = rng.normal(size=(10, 3)), rng.normal(size=(10, 3))
    thw = torch.tensor([[1, 2, 2], [1, 2, 3]])  # 4 + 6 patches
    inputs = Inputs(features={"image_grid_thw": thw}, images=[], prompt="", grids=[],
                    prompt_positions=np.zeros(0))
    assert image_sections(10, inputs) == [4, 6]
    scores = layer_gradcam(torch.tensor(grads), torch.tensor(acts), inputs).numpy()
    expected = np.concatenate([by_hand(grads[:4], acts[:4]), by_hand(grads[4:], acts[4:])])
    np.testing.assert_allclose(scores, expected, rtol=1e-6)
    assert not np.allclose(scores, by_hand(grads, acts))  # pooling over both images differs


@pytest.fixture(params=FAMILIES)
def model(request, tiny_model):
    return tiny_model(request.param)


def test_one_forward_gradients_match_captum_per_token(model):
    """One forward pass, one backward per token == captum's forward+backward per token."""
    trace = forced(model)
    layer = model.vision_layers()[model.default_vision_layer()]
    tokens = list(range(trace.n_generated))
    with leaf_outputs(layer) as acts:
        logits = token_logits(trace, tokens)
    ours = [grads[0] for grads in per_token_gradients(logits, acts)]
    features = forced_features(trace.inputs, trace.sequence[:-1])
    for j in tokens:
        position = trace.generating_position(j)

        def forward(input_ids, position=position, j=j):
            out = model.hf(**{**features, "input_ids": input_ids}, use_cache=False)
            return out.logits[:, position, trace.generated_ids[j]]

        grads, evals = compute_layer_gradients_and_eval(forward, layer, features["input_ids"])
        torch.testing.assert_close(grads[0], ours[j], rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(evals[0], acts[0].detach())
    assert any(g.abs().sum() > 0 for g in ours)


def test_gradcam_end_to_end(model):
    explanation = explain(model, image(), PROMPT, method="gradcam", max_new_tokens=4)
    maps = explanation.maps
    n_image = len(explanation.trace.image_positions)
    assert maps.shape == (explanation.trace.n_generated, n_image) and maps.dtype == np.float32
    assert np.isfinite(maps).all() and (maps >= 0).all() and (maps > 0).any()


def test_gradcam_layer_option_changes_the_map(model):
    trace = forced(model)
    first = GradCAM(layer=0).explain(trace, [0, 1])
    last = GradCAM(layer=-1).explain(trace, [0, 1])
    assert first.shape == last.shape == (2, len(trace.image_positions))
    assert not np.allclose(first, last)


def test_a_layer_the_projector_never_reads_explains_nothing(tiny_model):
    """Tiny LLaVA reads vision layer -2 (= 0 of 2): the last layer's output is unused."""
    model = tiny_model("llava")
    assert model.default_vision_layer() == 0
    trace = forced(model)
    np.testing.assert_array_equal(GradCAM(layer=1).explain(trace, [0, 1]), 0)
    assert (GradCAM().explain(trace, [0, 1]) > 0).any()


def test_captum_engine_gives_the_same_maps(model):
    trace = forced(model)
    tokens = list(range(trace.n_generated))
    ours = GradCAM().explain(trace, tokens)
    through_captum = GradCAM(engine="captum").explain(trace, tokens)
    np.testing.assert_allclose(through_captum, ours, rtol=1e-4, atol=1e-6)
    assert (ours > 0).any()
