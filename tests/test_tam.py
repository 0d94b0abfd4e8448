"""TAM on fake traces with hand-written logits, against the loop restatement, and on a tiny
Qwen2-VL (generated and teacher-forced traces give the same maps)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers_tam import Layout, fake_trace, loop_tam, random_trace
from PIL import Image

from mmxai.api import explain
from mmxai.errors import MMXAIError
from mmxai.methods.tam import TAM
from mmxai.registry import manager
from mmxai.trace import forced_trace, generate_trace

# Ids of the hand-made sample: prompt 1, 2; template 3, 4; answer 5, 6, then `third`.
PROMPT_IDS, TEMPLATE_IDS, X, Y, ARGMAX, IMAGE_ID, SEP = [1, 2], [3, 4], 5, 6, 8, 9, 10
CELLS_X, CELLS_T, CELLS_Y, CELLS_Q = slice(0, 5), slice(5, 10), slice(10, 15), slice(15, 20)


def scenario(third: int = 7, names=None):
    """Four disjoint image regions, one per class: X (token 0), the template's last id
    (Q1's class), Y (token 1, whose raw map also holds X's and the template's) and the argmax
    at the first prompt position (Q2's class). Token 1 relates only to the generated token 0,
    through the logit of Y where token 0 was generated."""
    lay = Layout(shape=(4, 5), n_prompt=2, n_generated=3)
    L = lay.prompt_len
    seq = np.zeros(lay.length, dtype=np.int64)
    seq[lay.image], seq[lay.image[-1] + 1] = IMAGE_ID, SEP
    seq[lay.prompt], seq[L - 2:L] = PROMPT_IDS, TEMPLATE_IDS
    seq[L:] = [X, Y, third]
    hidden = np.zeros((lay.length - 1, 12))
    a_x, a_t, a_y, a_q = (np.zeros(lay.n_image) for _ in range(4))
    a_x[CELLS_X] = [1, 2, 3, 2, 1]
    a_t[CELLS_T] = [2, 2, 1, 2, 2]
    a_y[CELLS_Y] = [2, 3, 2.5, 3, 2]
    a_q[CELLS_Q] = 1.5
    hidden[lay.image, X] = a_x
    hidden[lay.image, TEMPLATE_IDS[-1]] = a_t
    hidden[lay.image, Y] = a_y + 0.8 * a_x + 0.5 * a_t
    hidden[lay.image, ARGMAX] = a_q
    hidden[lay.prompt[0], ARGMAX] = 10.0
    hidden[L - 1, X] = 3.0  # token 0 generated
    hidden[L - 1, Y] = 1.0  # ... where Y also scores: token 1's relevance to token 0
    hidden[L, Y] = 4.0  # token 1 generated
    return fake_trace(lay, seq, hidden, names=names), dict(x=a_x, t=a_t, y=a_y, q=a_q)


def support(m: np.ndarray) -> set[int]:
    return set(np.flatnonzero(m > 1e-6).tolist())


def cells(region: slice) -> set[int]:
    return set(range(region.start, region.stop))


def test_eci_removes_a_context_tokens_map():
    trace, raw = scenario()
    with_eci = TAM(kernel_size=1).explain(trace, [1])[0]
    without = TAM(kernel_size=1, eci=False).explain(trace, [1])[0]
    assert support(without) == cells(CELLS_X) | cells(CELLS_T) | cells(CELLS_Y)
    # X's map is gone; the template's map has no relevant context and stays
    assert support(with_eci) == cells(CELLS_T) | cells(CELLS_Y)
    # what is left is Y's own map, scaled jointly with the text scores (max 3 here)
    np.testing.assert_allclose(with_eci[CELLS_Y], raw["y"][CELLS_Y] / 3, atol=1e-6)


def test_repeated_tokens_are_excluded_from_context():
    repeated, raw = scenario(third=X)  # token 2 repeats token 0
    maps = TAM(kernel_size=1).explain(repeated, [0, 2])
    assert support(maps[1]) == cells(CELLS_X)
    # token 2's map is token 0's raw map: not removed as its own interference
    np.testing.assert_allclose(maps[1] / maps[1].max(), raw["x"] / raw["x"].max(), atol=1e-6)
    # a different token with the same raw map and relevance IS removed
    trace, _ = scenario(third=7)
    trace.hidden[trace.image_positions, 7] = torch.as_tensor(raw["x"], dtype=torch.float32)
    trace.hidden[trace.prompt_len - 1, 7] = 3.0
    assert TAM(kernel_size=1).explain(trace, [2])[0].max() < 1e-6


def test_exclusion_by_word_matches_spelling_variants():
    names = {X: "Ġdog", 7: "Dog"}
    trace, raw = scenario(third=7, names=names)
    trace.hidden[trace.image_positions, 7] = torch.as_tensor(raw["x"], dtype=torch.float32)
    trace.hidden[trace.prompt_len - 1, 7] = 3.0
    for exclude in ("id", "string"):
        assert TAM(kernel_size=1, exclude=exclude).explain(trace, [2])[0].max() < 1e-6
    kept = TAM(kernel_size=1, exclude="word").explain(trace, [2])[0]
    assert support(kept) == cells(CELLS_X)


def test_first_generated_token_uses_its_own_class():
    trace, _ = scenario()
    default = TAM(kernel_size=1).explain(trace, [0])[0]
    reference = TAM(kernel_size=1, reference_compatible=True,
                    constant="value").explain(trace, [0])[0]
    assert support(default) == cells(CELLS_X)
    # Q2: the reference returns prompt item 0's map, scored by the argmax there
    assert support(reference) == cells(CELLS_Q)


def test_reference_history_holds_the_template_tokens_map():
    trace, _ = scenario()
    default = TAM(kernel_size=1).explain(trace, [1])[0]
    reference = TAM(kernel_size=1, reference_compatible=True,
                    constant="value").explain(trace, [1])[0]
    # Q1: token 0's history map is the template id's, so that is what token 1 loses
    assert support(default) == cells(CELLS_T) | cells(CELLS_Y)
    assert support(reference) == cells(CELLS_X) | cells(CELLS_Y)


def test_options_resolve_to_default_or_reference_choices():
    assert TAM().options.relevance == "output"
    assert (TAM().options.exclude, TAM().options.constant) == ("id", "value")
    ref = TAM(reference_compatible=True).options
    assert (ref.relevance, ref.exclude, ref.constant) == ("reference", "string", "reference")
    mixed = TAM(reference_compatible=True, relevance="input").options
    assert (mixed.relevance, mixed.constant) == ("input", "reference")
    with pytest.raises(MMXAIError, match="relevance"):
        TAM(relevance="sideways")
    with pytest.raises(MMXAIError):
        TAM(window=3)
    assert manager().get("methods", "tam") is TAM and "2506.23270" in TAM.citation


@pytest.mark.parametrize("seed,n_prompt,shape", [(0, 3, (4, 5)), (1, 5, (6, 3)),
                                                  (2, 1, (5, 5)), (3, 0, (3, 4))])
@pytest.mark.parametrize("reference", [False, True])
def test_equals_the_loop_restatement(seed, n_prompt, shape, reference):
    trace = random_trace(seed, Layout(shape, n_prompt=n_prompt, n_generated=6))
    fast = TAM(reference_compatible=reference).explain(trace, range(6))
    np.testing.assert_allclose(fast, loop_tam(trace, reference), atol=2e-5)


def test_reference_mode_changes_only_tokens_the_quirks_touch():
    """With every option field at its default, reference_compatible differs by the classes
    only (Q1, Q2). Make those classes the tokens' own ids (the template's last id equal to
    the first generated id, the argmax at the first prompt position equal to its own id):
    only token 0 (Q2: prompt item 0's map is returned) still differs."""
    lay = Layout((4, 5), n_prompt=3, n_generated=6)
    for seed in range(4):
        trace = random_trace(seed, lay)
        trace.sequence[lay.prompt_len - 1] = trace.sequence[lay.prompt_len]
        first = int(trace.sequence[lay.prompt[0]])
        trace.hidden[lay.prompt[0]] = 10 * trace.model.unembedding()[first]
        assert int((trace.model.unembedding() @ trace.hidden[lay.prompt[0]]).argmax()) == first
        default = TAM().explain(trace, range(6))
        reference = TAM(reference_compatible=True, relevance="output", exclude="id",
                        constant="value").explain(trace, range(6))
        np.testing.assert_allclose(reference[1:], default[1:], atol=1e-6)
        assert not np.allclose(reference[0], default[0], atol=1e-3)


def test_relevance_convention_changes_the_maps():
    trace = random_trace(5, Layout((4, 5), n_prompt=4, n_generated=6))
    output = TAM().explain(trace, range(6))
    assert not np.allclose(output, TAM(relevance="input").explain(trace, range(6)), atol=1e-3)
    assert not np.allclose(output, TAM(relevance="reference").explain(trace, range(6)),
                           atol=1e-3)


def test_selected_tokens_equal_rows_of_all_tokens():
    trace = random_trace(6, Layout((4, 5), n_prompt=3, n_generated=6))
    every = TAM().explain(trace, range(6))
    np.testing.assert_array_equal(TAM().explain(trace, [4, 0, 4]), every[[4, 0, 4]])
    assert TAM()(trace, []).shape == (0, 20)  # the core's contract (Method.__call__)
    with pytest.raises(MMXAIError):
        TAM()(trace, [6])


def test_output_is_finite_in_unit_range_even_with_nan_and_constant_logits():
    lay = Layout((4, 5), n_prompt=2, n_generated=4)
    trace = random_trace(7, lay)
    trace.hidden[lay.image[3]] = float("nan")
    constant = random_trace(8, lay)
    constant.hidden[:] = 1.0
    for t in (trace, constant):
        for reference in (False, True):
            maps = TAM(reference_compatible=reference).explain(t, range(4))
            assert maps.dtype == np.float32 and maps.shape == (4, 20)
            assert np.isfinite(maps).all() and maps.min() >= 0 and maps.max() <= 1


# -- a tiny Qwen2-VL -----------------------------------------------------------------------

@pytest.fixture(scope="module")
def qwen():
    from mmxai.plugins.models.qwen2_vl import Qwen2VL

    return Qwen2VL.tiny(seed=0)


def image(seed: int = 0) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (84, 112, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def test_tam_on_tiny_qwen2_vl(qwen):
    result = explain(qwen, image(), "describe the image", method="tam", max_new_tokens=6)
    n_image = len(result.trace.image_positions)
    assert n_image > 0 and len(result.trace.inputs.prompt_positions) > 0
    assert result.maps.shape == (result.trace.n_generated, n_image)
    assert np.isfinite(result.maps).all()
    assert result.maps.min() >= 0 and result.maps.max() <= 1
    assert result.grid_maps(0)[0].shape == result.trace.grids[0].shape


@pytest.mark.parametrize("reference", [False, True])
def test_generated_and_teacher_forced_traces_give_the_same_maps(qwen, reference):
    inputs = qwen.build_inputs([image(1)], "describe the image")
    generated = generate_trace(qwen, inputs, max_new_tokens=8, min_new_tokens=8)
    forced = forced_trace(qwen, inputs, generated.generated_ids)
    assert generated.n_generated == 8 and torch.equal(forced.sequence, generated.sequence)
    tam = TAM(reference_compatible=reference)
    maps = tam.explain(generated, range(8))
    assert maps.max() > 0.1 and (maps > 0).mean() > 0.1  # not trivially all zero
    np.testing.assert_allclose(tam.explain(forced, range(8)), maps, atol=1e-4)


@pytest.mark.parametrize("family", ["qwen2-vl", "llava"])
def test_the_q2_argmax_read_off_the_prefill_equals_its_own_product(tiny_model, family):
    """Reference mode asks generation for the prediction at the first prompt position
    (Needs.prompt_top): rows added to the prefill's lm_head call, in a left-padded batch of
    prompts of different lengths. It must equal the (V, d) product top_class computes on its
    own, and leave everything else generation records unchanged."""
    from mmxai.trace import Needs, generate_traces

    model = tiny_model(family)
    inputs = [model.build_inputs([image(2)], "describe the image"),
              model.build_inputs([image(3)], "what colour is the large object on the left?")]
    plain = generate_traces(model, inputs, Needs(), max_new_tokens=5, min_new_tokens=5)
    read = generate_traces(model, inputs, Needs(prompt_top=True), max_new_tokens=5,
                           min_new_tokens=5)
    assert TAM(reference_compatible=True).needs.prompt_top and not TAM().needs.prompt_top
    for a, b in zip(plain, read, strict=True):
        key = ("top_class", int(b.inputs.prompt_positions[0]))
        assert key in b.cache and key not in a.cache  # recorded by generation itself
        assert b.cache[key] == a.top_class(key[1])
        assert torch.equal(a.sequence, b.sequence) and torch.equal(a.hidden, b.hidden)
        torch.testing.assert_close(a.logsumexp, b.logsumexp)
        reference = TAM(reference_compatible=True)
        np.testing.assert_array_equal(reference(a), reference(b))
