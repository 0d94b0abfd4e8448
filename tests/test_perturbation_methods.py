"""Perturbation methods (occlusion, feature ablation, KernelSHAP, LIME), their regions
(methods/regions.py) and the teacher-forced passes they share (mmxai.perturb.answer_log_probs).
"""

import dataclasses

import numpy as np
import pytest
import torch
from helpers_attribution import PROMPT
from PIL import Image

import mmxai.methods.perturbation as perturbation
from mmxai.api import explain_many
from mmxai.errors import InputError
from mmxai.methods.regions import (
    _pixel_cells,
    masked_images,
    pixels_to_grids,
    region_labels,
    regions_to_grids,
    window_lattice,
)
from mmxai.model import ImageGrid, stack_grids
from mmxai.perturb import answer_log_probs, baseline_image, swap_each
from mmxai.registry import manager
from mmxai.trace import forced_trace

METHODS = ("occlusion", "feature-ablation", "kernel-shap", "lime")
#: small budgets that keep every family fast
SMALL = {"kernel-shap": {"samples": 8, "regions": "grid"},
         "lime": {"samples": 8, "regions": "grid"}}


def scene(height: int = 56, width: int = 112, black_left: bool = False) -> Image.Image:
    """Shapes on a textured background (56 x 112: Qwen2-VL's 28-px tokens fall on whole
    pixels); ``black_left``: the left half black, which a black baseline leaves unchanged."""
    rng = np.random.default_rng(1)
    pixels = (rng.random((height, width, 3)) * 80 + 90).astype(np.uint8)
    pixels[8:30, 60:90] = (220, 30, 30)
    pixels[30:50, 20:45] = (30, 30, 220)
    if black_left:
        pixels[:, : width // 2] = 0
    return Image.fromarray(pixels)


def pixel_tensor(image: Image.Image) -> torch.Tensor:
    """(1, 3, H, W) float32 pixel values 0..255: what captum would perturb over pixels."""
    return torch.from_numpy(np.asarray(image, dtype=np.float32)).permute(2, 0, 1)[None]


def grid(shape, box=(0.0, 0.0, 1.0, 1.0), image=0) -> ImageGrid:
    return ImageGrid(image=image, positions=np.arange(shape[0] * shape[1]), shape=shape,
                     box=box)


# ---- regions ---------------------------------------------------------------------------

def test_grid_regions_are_token_cells_and_pixels_outside_the_crop_one_more_region():
    image = Image.new("RGB", (40, 20))
    (g,) = stack_grids([grid((2, 2), box=(0.25, 0.0, 0.75, 1.0))])  # a centre crop
    labels = region_labels(image, [g], "grid")
    assert labels.shape == (20, 40) and labels.dtype == np.int64
    assert labels[0, 10] == 0 and labels[0, 19] == 0 and labels[0, 20] == 1
    assert labels[10, 10] == 2 and labels[19, 29] == 3
    assert set(np.unique(labels[:, :10])) == {4} and set(np.unique(labels[:, 30:])) == {4}
    blocks = region_labels(Image.new("RGB", (30, 30)), [grid((3, 3))], "grid", cell=2)
    np.testing.assert_array_equal(np.unique(blocks), np.arange(4))  # a narrower last block
    assert blocks[0, 0] == blocks[19, 19] == 0 and blocks[0, 29] == 1 and blocks[29, 0] == 2


def test_grid_regions_follow_tiles_before_their_thumbnail():
    tiles = stack_grids([grid((2, 2), (0.0, 0.0, 0.5, 1.0)), grid((2, 2), (0.5, 0.0, 1.0, 1.0)),
                         grid((2, 2))])
    labels = region_labels(Image.new("RGB", (40, 20)), tiles, "grid")
    np.testing.assert_array_equal(np.unique(labels), np.arange(8))  # no thumbnail region
    assert labels[0, 0] == 0 and labels[0, 39] == 5


def test_slic_regions_and_unknown_kind():
    labels = region_labels(scene(), [grid((2, 4))], "slic", segments=8)
    assert labels.shape == (56, 112)
    np.testing.assert_array_equal(np.unique(labels), np.arange(labels.max() + 1))
    assert labels.max() >= 2
    with pytest.raises(InputError, match="regions must be one of"):
        region_labels(scene(), [grid((2, 4))], "quickshift")


def test_regions_to_grids_is_exact_on_grid_regions_and_an_area_mean_elsewhere():
    grids = stack_grids([grid((2, 4)), grid((1, 2))])  # a second, coarser grid
    labels = region_labels(Image.new("RGB", (80, 40)), grids, "grid")
    scores = np.random.default_rng(0).random((3, 8))
    flat = regions_to_grids(scores, labels, grids)
    assert flat.shape == (3, 10)
    np.testing.assert_allclose(flat[:, :8], scores)
    coarse = scores.reshape(3, 2, 2, 2).mean(axis=(1, 3))  # each half's four cells
    np.testing.assert_allclose(flat[:, 8:], coarse)
    other = stack_grids([grid((2, 4)), grid((1, 1), image=1)])
    assert (regions_to_grids(scores, labels, other)[:, 8:] == 0).all()
    pixels = np.zeros((40, 80))
    pixels[:20, :10] = 4.0  # half of cell 0
    np.testing.assert_allclose(pixels_to_grids(pixels, grids)[:8], [2, 0, 0, 0, 0, 0, 0, 0])


def test_masked_images_keep_their_regions_and_take_the_baseline_elsewhere():
    image, base = scene(), Image.new("RGB", (112, 56), (1, 2, 3))
    labels = region_labels(image, [grid((2, 4))], "grid")
    keep = np.zeros((2, 8), dtype=bool)
    keep[0, 0] = True
    keep[1] = True
    first, second = masked_images(image, base, labels, keep)
    assert np.array_equal(np.asarray(second), np.asarray(image))
    pixels = np.asarray(first)
    assert np.array_equal(pixels[:28, :28], np.asarray(image)[:28, :28])
    assert (pixels[28:] == (1, 2, 3)).all() and (pixels[:, 28:] == (1, 2, 3)).all()


# ---- answer_log_probs ------------------------------------------------------------------

@pytest.mark.parametrize("family", ["qwen2-vl", "llava"])
def test_answer_log_probs_are_the_forced_answers_log_probs_in_any_batch(tiny_model, family):
    model = tiny_model(family)
    inputs = model.build_inputs([scene()], PROMPT)
    answer = model.tokenizer("a red square", add_special_tokens=False)["input_ids"]
    trace = forced_trace(model, inputs, answer)
    positions = [trace.generating_position(j) for j in range(trace.n_generated)][::-1]
    variants = swap_each(model, inputs, [scene(), baseline_image(scene(), "black"), scene()])
    batched = answer_log_probs(model, variants, trace.sequence, positions, batch=8)
    single = answer_log_probs(model, variants, trace.sequence, positions, batch=1)
    assert batched.shape == (3, len(positions))
    np.testing.assert_allclose(batched, single, atol=1e-4)
    ids = trace.generated_ids.tolist()[::-1]
    expected = (trace.logits(ids, positions).diagonal() - trace.logsumexp.flip(0)).numpy()
    np.testing.assert_allclose(batched[0], expected, atol=1e-3)
    np.testing.assert_allclose(batched[2], batched[0], atol=1e-5)
    assert np.abs(batched[1] - batched[0]).max() > 1e-4  # the black image changes them
    assert answer_log_probs(model, [], trace.sequence, positions, 4).shape == (0, len(positions))


# ---- the methods -------------------------------------------------------------------------

def test_the_methods_are_registered_with_their_costs():
    methods = manager().items("methods")
    for name in METHODS:
        cls = methods[name]
        assert cls.needs.extra_passes and not cls.default_run and "@" in cls.citation


def test_every_method_runs_on_every_family(tiny_model, tiny_family):
    model = tiny_model(tiny_family)
    results = explain_many(model, scene(), PROMPT, METHODS, max_new_tokens=2,
                           method_options=SMALL)
    for name, explanation in results.items():
        trace = explanation.trace
        assert explanation.maps.shape == (trace.n_generated, len(trace.image_positions)), name
        assert np.isfinite(explanation.maps).all(), name
        if name != "lime":  # LIME's lasso may zero every small effect of a random model
            assert np.abs(explanation.maps).max() > 0, name


def traced(model, image):
    inputs = model.build_inputs([image], PROMPT)
    answer = model.tokenizer("a red square", add_special_tokens=False)["input_ids"]
    return forced_trace(model, inputs, answer)


@pytest.mark.parametrize("family", ["qwen2-vl", "llava"])
def test_feature_ablation_is_the_log_prob_drop_and_an_unchanged_region_gets_zero(tiny_model,
                                                                                  family):
    model = tiny_model(family)
    image = scene(black_left=True)
    trace = traced(model, image)
    tokens = list(range(trace.n_generated))
    method = manager().items("methods")["feature-ablation"](baseline="black", batch=5)
    maps = method(trace, tokens)
    labels = region_labels(image, trace.grids, "grid")
    g = trace.grids[0]
    assert g.size == 8 if family == "qwen2-vl" else g.size == 16
    cols = np.arange(g.size) % g.shape[1]
    left = cols < g.shape[1] // 2 if family == "qwen2-vl" else cols < 2  # black for both
    np.testing.assert_allclose(maps[:, left], 0, atol=1e-5)
    region = int(np.flatnonzero(~left)[-1])
    keep = np.ones((2, labels.max() + 1), dtype=bool)
    keep[1, region] = False
    variants = swap_each(model, trace.inputs, masked_images(
        image, baseline_image(image, "black"), labels, keep))
    positions = [trace.generating_position(j) for j in tokens]
    full, ablated = answer_log_probs(model, variants, trace.sequence, positions, batch=1)
    np.testing.assert_allclose(maps[:, region], full - ablated, atol=1e-4)
    assert np.abs(full - ablated).max() > 1e-4


def test_occlusion_of_one_token_is_feature_ablation_and_a_window_that_changes_nothing_zero(
        tiny_model):
    model = tiny_model("qwen2-vl")
    image = scene(black_left=True)
    trace = traced(model, image)
    methods = manager().items("methods")
    one = methods["occlusion"](window=1, stride=1, baseline="black")(trace)
    ablation = methods["feature-ablation"](baseline="black")(trace)
    np.testing.assert_allclose(one, ablation, atol=1e-4)
    assert np.abs(one).max() > 1e-4
    two = methods["occlusion"](baseline="black")(trace)  # 2 x 2 tokens, stride 1
    cols = np.arange(8) % 4
    np.testing.assert_allclose(two[:, cols == 0], 0, atol=1e-5)  # windows in the black only
    assert np.abs(two[:, cols > 0]).max() > 1e-4


def test_sampled_methods_are_seeded_and_run_each_image_once_for_every_token(tiny_model,
                                                                           monkeypatch):
    model = tiny_model("qwen2-vl")
    trace = traced(model, scene())
    images = []

    def counting(model, variants, sequence, positions, batch):
        images.extend(variants)
        return answer_log_probs(model, variants, sequence, positions, batch)

    monkeypatch.setattr(perturbation, "answer_log_probs", counting)
    cls = manager().items("methods")["kernel-shap"]
    opts = {"samples": 12, "regions": "grid"}
    first = cls(**opts)(trace)
    assert trace.n_generated >= 2 and 2 <= len(images) <= 12
    assert cls(**opts)(trace).tolist() == first.tolist()
    assert not np.allclose(cls(**opts, seed=1)(trace), first)
    lime = manager().items("methods")["lime"](samples=6, regions="grid", seed=3)
    assert lime(trace).tolist() == lime(trace).tolist()
    generator = torch.random.get_rng_state()
    cls(**opts)(trace)
    assert torch.equal(torch.random.get_rng_state(), generator)  # the caller's untouched


@pytest.mark.parametrize("name", ["kernel-shap", "lime"])
def test_sampled_methods_are_captum_over_the_pixels_token_by_token(tiny_model, name):
    """Neither the memoised all-token forward nor captum perturbing which regions are kept
    (not the pixels) changes anything: captum's KernelShap or Lime over the pixels, on one
    token's plain forward, same seed, gives that token's map (grid regions of one token
    each; LIME's pixel-space similarity kernel included)."""
    import captum.attr

    model = tiny_model("qwen2-vl")
    image = scene()
    trace = traced(model, image)
    maps = manager().items("methods")[name](regions="grid", samples=10, seed=2)(trace)
    labels = torch.from_numpy(region_labels(image, trace.grids, "grid"))[None, None]
    pixels = pixel_tensor(image)
    baseline = pixel_tensor(baseline_image(image, "mean"))
    for j in range(trace.n_generated):
        def forward(x, j=j):
            images = [Image.fromarray(a) for a in x.round().to(torch.uint8)
                      .permute(0, 2, 3, 1).numpy()]
            variants = [swap_each(model, trace.inputs, [im])[0] for im in images]
            return torch.as_tensor(answer_log_probs(
                model, variants, trace.sequence, [trace.generating_position(j)], 1)[:, 0])

        torch.manual_seed(2)
        explainer = getattr(captum.attr, "KernelShap" if name == "kernel-shap" else "Lime")
        coefs = explainer(forward).attribute(pixels, baselines=baseline, feature_mask=labels,
                                             n_samples=10, return_input_shape=False)
        np.testing.assert_allclose(maps[j], coefs.reshape(-1).numpy(), atol=1e-4)
    assert np.abs(maps).max() > 1e-4


def test_refusals_are_one_line(tiny_model):
    model = tiny_model("qwen2-vl")
    methods = manager().items("methods")
    inputs = model.build_inputs([scene(), scene()], PROMPT)
    two = forced_trace(model, inputs, [int(inputs.input_ids[-1])])
    for name in METHODS:
        with pytest.raises(InputError, match=f"method '{name}'.*has 2") as info:
            methods[name]()(two)
        assert "\n" not in str(info.value)
    trace = traced(model, scene())
    video = dataclasses.replace(trace, inputs=dataclasses.replace(trace.inputs,
                                                                  clips={0: object()}))
    with pytest.raises(InputError, match="video"):
        methods["occlusion"]()(video)
    flat = Image.new("RGB", (112, 56), (90, 90, 90))
    with pytest.raises(InputError, match="needs at least 2"):
        methods["kernel-shap"](segments=1)(traced(model, flat))
    for name, bad in [("occlusion", {"window": 0}), ("occlusion", {"stride": 0}),
                      ("feature-ablation", {"cell": 0}), ("kernel-shap", {"samples": 0}),
                      ("lime", {"seed": -1}), ("lime", {"batch": 0})]:
        with pytest.raises(Exception, match="must be at least"):
            methods[name](**bad)


def test_kernel_shap_and_lime_without_scikit_learn_name_the_extra(tiny_model, monkeypatch):
    """scikit-learn is an optional extra: without it the two methods refuse in one line."""
    import sys

    from mmxai.errors import MMXAIError

    trace = traced(tiny_model("qwen2-vl"), scene())
    monkeypatch.setitem(sys.modules, "sklearn", None)
    monkeypatch.setitem(sys.modules, "sklearn.exceptions", None)
    for name in ("kernel-shap", "lime"):
        with pytest.raises(MMXAIError, match=r"needs scikit-learn.*mmxai\[lime-shap\]") as info:
            manager().items("methods")[name](samples=4)(trace)
        assert "\n" not in str(info.value)


# ---- occlusion covers every token cell; KernelSHAP's default budget -----------------------

@pytest.mark.parametrize("window, stride", [(1, 1), (2, 1), (2, 2), (3, 2), (4, 4), (20, 3)])
def test_occlusion_windows_cover_every_token_cell_of_a_fractional_grid(window, stride):
    """500 x 375 pixels on 13 x 18 tokens (28.8 x 27.8 pixels a token): the lattice is the
    token cells themselves, and windows from the top-left every ``stride`` cells reach the
    last row and column."""
    g = grid((13, 18))
    labels, shape = window_lattice(g, 375, 500, window, stride)
    rows, cols, _ = _pixel_cells(g, 375, 500)
    np.testing.assert_array_equal(labels, rows * shape[1] + cols)  # cells = token cells
    covered = np.zeros(shape, dtype=int)
    for top in range(0, shape[0] - min(window, shape[0]) + 1, stride):
        for left in range(0, shape[1] - min(window, shape[1]) + 1, stride):
            covered[top:top + window, left:left + window] += 1
    assert (covered.ravel()[np.unique(labels)] > 0).all()
    assert shape[0] < 13 + max(window, stride) and shape[1] < 18 + max(window, stride)


def test_occlusion_of_a_fractional_grid_hides_whole_token_cells(tiny_model):
    """Token cells of fractional pixel size (31.7 x 26.2): windows slide over the cells, not
    over pixels of rounded token sizes (which drift off the cells and leave a partial last
    window), so window = stride = c is feature ablation of c x c blocks, the narrower last
    ones included, and the last row and column are scored."""
    model = tiny_model("qwen2-vl")
    image = scene(95, 131)
    trace = traced(model, image)
    (g,) = trace.grids
    rows, cols = g.shape
    assert (95 / rows) % 1 and (131 / cols) % 1  # not whole pixels
    methods = manager().items("methods")
    for c in (1, 2):
        maps = methods["occlusion"](window=c, stride=c, batch=8)(trace)
        np.testing.assert_allclose(maps, methods["feature-ablation"](cell=c)(trace), atol=1e-5)
        grids = maps.reshape(len(maps), rows, cols)
        assert np.abs(grids[:, -1, :]).max(axis=1).min() > 0  # every token's last row
        assert np.abs(grids[:, :, -1]).max(axis=1).min() > 0


def test_kernel_shap_at_its_default_budget_recovers_an_additive_function():
    """f = sum of the kept regions' weights: its Shapley values are the weights. At the
    default samples ("auto": 2R + 2048, SHAP's) the fit recovers them; captum's old 25
    over 64 regions did not (correlation about 0.5)."""
    weights = torch.from_numpy(np.random.default_rng(0).normal(size=64)).float()
    labels = np.arange(64).reshape(8, 8).repeat(4, axis=0).repeat(4, axis=1)
    image = Image.new("RGB", (32, 32))

    def forward(kept):
        return (kept.reshape(len(kept), -1) @ weights)[:, None]

    method = manager().items("methods")["kernel-shap"]()
    assert method.options.samples == "auto"
    (phi,) = method.scores(torch.ones(1, 64), image, image, labels, forward, 1).numpy()
    assert np.corrcoef(phi, weights.numpy())[0, 1] > 0.95
    (few,) = manager().items("methods")["kernel-shap"](samples=25).scores(
        torch.ones(1, 64), image, image, labels, forward, 1).numpy()
    assert np.corrcoef(few, weights.numpy())[0, 1] < 0.9


def test_answer_log_probs_reads_only_the_needed_positions_and_lets_oom_through(tiny_model,
                                                                            monkeypatch):
    import mmxai.perturb as perturb

    model = tiny_model("qwen2-vl")
    trace = traced(model, scene())
    positions = [trace.generating_position(j) for j in range(trace.n_generated)]
    variants = swap_each(model, trace.inputs, [scene(), baseline_image(scene(), "black")])
    full = answer_log_probs(model, variants, trace.sequence, positions, batch=2)
    needed = np.zeros(full.shape, dtype=bool)
    needed[0, 0] = needed[1, -1] = True
    some = answer_log_probs(model, variants, trace.sequence, positions, 2, needed)
    np.testing.assert_array_equal(some[needed], full[needed])
    assert np.isnan(some[~needed]).all()
    real = perturb._log_probs

    def failing(error):
        def log_probs(model, features, *args):
            if features["input_ids"].shape[0] > 1:  # the stacked chunk
                raise error
            return real(model, features, *args)
        return log_probs

    monkeypatch.setattr(perturb, "_log_probs", failing(RuntimeError("sizes do not match")))
    np.testing.assert_allclose(  # one by one
        answer_log_probs(model, variants, trace.sequence, positions, batch=2), full, atol=1e-4)
    monkeypatch.setattr(perturb, "_log_probs", failing(torch.OutOfMemoryError("out of memory")))
    with pytest.raises(torch.OutOfMemoryError):
        answer_log_probs(model, variants, trace.sequence, positions, batch=2)
