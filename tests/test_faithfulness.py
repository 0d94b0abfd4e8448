"""Deletion and insertion: AUC, pixel order, masked images, teacher-forced probabilities."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers_evaluator import FAMILY, item, one_torch_thread, picture, traced  # noqa: F401
from PIL import Image

from mmxai.errors import MMXAIError
from mmxai.maps import to_image
from mmxai.plugins.metrics.faithfulness import (
    Deletion,
    Insertion,
    answer_probabilities,
    auc,
    baseline_image,
    perturbed_images,
    pixel_ranks,
    token_probabilities,
)
from mmxai.registry import manager


def test_auc_by_the_trapezoid_rule():
    assert auc([1.0, 0.0]) == pytest.approx(0.5)
    assert auc(np.linspace(1, 0, 9)) == pytest.approx(0.5)
    assert auc([0.3] * 5) == pytest.approx(0.3)
    # (1 + .5)/2/3 + (.5 + .25)/2/3 + (.25 + 0)/2/3
    assert auc([1.0, 0.5, 0.25, 0.0]) == pytest.approx(1.25 / 3)
    with pytest.raises(ValueError):
        auc([1.0])


def test_pixel_ranks_follow_the_map_and_break_ties_the_same_way_every_time():
    image_map = np.array([[0.1, 0.9, 0.5], [0.7, 0.0, 0.3]])
    assert pixel_ranks(image_map).tolist() == [[4, 0, 2], [1, 5, 3]]
    flat = pixel_ranks(np.zeros((4, 5)))
    assert sorted(flat.ravel().tolist()) == list(range(20))
    assert np.array_equal(flat, pixel_ranks(np.ones((4, 5))))  # same order for any constant
    assert not np.array_equal(flat.ravel(), np.arange(20))  # not raster order


def test_perturbed_images_replace_or_reveal_the_top_pixels():
    original = Image.fromarray(np.full((2, 4, 3), 200, np.uint8))
    base = Image.fromarray(np.zeros((2, 4, 3), np.uint8))
    ranks = np.array([[0, 4, 1, 5], [2, 6, 3, 7]])
    quarter, half = perturbed_images(original, base, ranks, np.array([0.25, 0.5]), True)
    assert (np.asarray(quarter)[..., 0] == 0).tolist() == [[True, False, True, False],
                                                           [False, False, False, False]]
    assert (np.asarray(half)[..., 0] == 0).tolist() == [[True, False, True, False],
                                                        [True, False, True, False]]
    (revealed,) = perturbed_images(original, base, ranks, np.array([0.25]), False)
    assert (np.asarray(revealed)[..., 0] == 200).sum() == 2


def test_baselines():
    image = picture(32, 24)
    mean = np.asarray(image, np.float64).reshape(-1, 3).mean(axis=0)
    assert np.abs(np.asarray(baseline_image(image, "mean"))[0, 0] - mean).max() <= 0.5
    blurred = np.asarray(baseline_image(image, "blur"), np.float64)
    assert blurred.std(axis=(0, 1)).max() < np.asarray(image, np.float64).std(axis=(0, 1)).max()
    assert not np.asarray(baseline_image(image, "black")).any()
    with pytest.raises(MMXAIError, match="baseline"):
        Deletion(baseline="noise")
    with pytest.raises(MMXAIError, match="no option"):
        Insertion(stpes=3)


def test_registered_with_their_directions():
    assert manager().get("metrics", "deletion") is Deletion
    assert not Deletion.higher_is_better and Insertion.higher_is_better
    assert Deletion.category == Insertion.category == "faithfulness"


def test_teacher_forcing_reproduces_the_generation_and_batching_changes_nothing(tiny_model):
    model = tiny_model(FAMILY)
    trace = traced(model, n_tokens=3)
    ids = trace.generated_ids.tolist()
    positions = [trace.generating_position(j) for j in range(3)]
    generated = torch.exp(trace.logits(ids, positions).diagonal() - trace.logsumexp.detach())
    forced = answer_probabilities(trace, None)
    assert forced == pytest.approx(generated.numpy(), rel=1e-3, abs=1e-6)
    assert ("perturbation", "answer", None) in trace.cache  # shared by methods and metrics
    # three images as variants, batched and one by one, each read at another token
    images = [trace.inputs.images[0], baseline_image(trace.inputs.images[0], "mean"),
              picture(seed=5)]
    variants = [model.build_inputs([im], trace.inputs.prompt) for im in images]
    mixed = [positions[1], positions[1], positions[2]]
    batched = token_probabilities(model, variants, trace.sequence, mixed, batch=8)
    single = token_probabilities(model, variants, trace.sequence, mixed, batch=1)
    assert batched == pytest.approx(single, rel=1e-4)
    assert batched[0] == pytest.approx(forced[1], rel=1e-3)
    assert batched[1] == pytest.approx(answer_probabilities(trace, "mean")[1], rel=1e-3)
    # what follows a token does not change its probability (the model is causal)
    prefix = trace.sequence[:positions[2] + 2]
    (truncated,) = token_probabilities(model, variants[2:], prefix, [positions[2]], batch=1)
    assert truncated == pytest.approx(batched[2], rel=1e-4)


def test_deletion_and_insertion_curves_by_hand(tiny_model):
    model = tiny_model(FAMILY)
    trace = traced(model, n_tokens=2)
    evaluated = item(model, trace, "logit-lens")
    deletion = Deletion(steps=2, max_tokens=1, baseline="mean")
    insertion = Insertion(steps=2, max_tokens=1, baseline="mean")
    (d,) = deletion.measure(evaluated)["value"]
    (i,) = insertion.measure(evaluated)["value"]
    image = trace.inputs.images[0]
    width, height = image.size
    ranks = pixel_ranks(to_image(evaluated.maps[0], trace.grids, 0, (height, width)))
    base = baseline_image(image, "mean")
    original, blank = answer_probabilities(trace, None)[0], answer_probabilities(trace, "mean")[0]
    for value, removing, start, end in ((d, True, original, blank), (i, False, blank, original)):
        (half,) = perturbed_images(image, base, ranks, np.array([0.5]), removing)
        (middle,) = token_probabilities(model, [model.build_inputs([half], trace.inputs.prompt)],
                                        trace.sequence, [trace.generating_position(0)], batch=1)
        assert value == pytest.approx((start + 2 * middle + end) / 4, rel=1e-4)
    # the same tokens for every method: the first non-special generated tokens, capped
    assert len(Deletion(steps=2, max_tokens=2).measure(evaluated)["value"]) == 2


def test_an_answer_of_special_tokens_only_has_no_curve(tiny_model):
    """A random model may answer with an EOS at once: no token to explain, an empty entry
    list (the sample then counts for nothing), never a crash."""
    from mmxai.trace import forced_trace

    model = tiny_model(FAMILY)
    eos = model.tokenizer.eos_token_id
    trace = forced_trace(model, model.build_inputs([picture()], "describe"), [eos])
    evaluated = item(model, trace, "random")
    assert evaluated.explained_tokens() == []
    for metric in (Deletion(steps=2), Insertion(steps=2)):
        assert metric.measure(evaluated) == {"value": []}
