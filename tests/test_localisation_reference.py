"""The ``tam-reference`` protocol of the localisation metrics against eval.py's procedure,
restated here from its description with plain loops and OpenCV calls (not the module under
test), on crafted cases where OpenCV, the reference's quirks or NaN precision matter."""

import sys
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
from PIL import Image

from mmxai import opencv_ops
from mmxai.dataset import Sample
from mmxai.errors import InputError
from mmxai.evaluation.leaderboard import metric_info
from mmxai.evaluation.stats import Scorer, bootstrap_ci
from mmxai.images import read_label_map
from mmxai.maps import resize as float_resize
from mmxai.metric import EvalItem
from mmxai.model import ImageGrid
from mmxai.plugins.metrics.localisation import (
    LocalisationOptions,
    Precision,
    localise,
    otsu,
    quantise,
)
from mmxai.protocols import EXTRA, ProtocolUnavailable
from mmxai.words import Word

TAM = LocalisationOptions(protocol="tam-reference")
KEYS = ("obj", "precision", "recall", "func", "thresholds")


# -- eval.py, restated --------------------------------------------------------------------------
def reference_eval(grid_maps, words, mask, resize=None):
    """One sample's entries as eval.py computes them.

    ``grid_maps``: (G, h, w) uint8 token grids; ``mask``: (H, W) labels, or None for a
    missing mask file (then zeros at the grid's size). ``resize(grid, (H, W))`` defaults to
    ``cv2.resize``.
    """
    if mask is None:
        mask = np.zeros(grid_maps.shape[1:], dtype=np.uint8)
    height, width = mask.shape
    if resize is None:
        def resize(grid, size):
            return cv2.resize(grid, (size[1], size[0]))
    out = {key: [] for key in KEYS}
    for i, word in enumerate(words):
        if word.kind != "noun":
            continue
        label = -1 if word.label is None else word.label
        truth = mask == label
        taus, scores = [], []
        for j in word.tokens:
            tau, binary = cv2.threshold(resize(grid_maps[j], (height, width)), 0, 255,
                                        cv2.THRESH_BINARY + cv2.THRESH_OTSU)
            taus.append(tau)
            predicted = binary > 0
            if label > 0 and truth.sum() > 0:
                inter = np.float64(np.sum(truth & predicted))
                with np.errstate(invalid="ignore"):
                    scores.append((inter / np.sum(truth | predicted),
                                   inter / np.float64(predicted.sum()),
                                   inter / truth.sum()))
        out["thresholds"].append(max(taus))
        if scores:
            best = scores[int(np.argmax([s[0] for s in scores]))]
            for key, value in zip(("obj", "precision", "recall"), best, strict=True):
                out[key].append(value)
        previous = words[i - 1] if i > 0 else None
        if (label > 0 and previous is not None and previous.kind == "noun"
                and previous.label == label and len(out["obj"]) >= 2):
            keep = -1 if out["obj"][-1] > out["obj"][-2] else -2
            for key in ("obj", "precision", "recall"):
                out[key][-2:] = [out[key][keep]]
    if out["thresholds"]:
        level = np.mean(out["thresholds"])
        for word in words:
            if word.kind == "function":
                out["func"].append(np.mean([np.count_nonzero(grid_maps[j] < level)
                                            / grid_maps[j].size for j in word.tokens]))
    return out


def assert_matches(result, expected):
    for key in KEYS:
        got = np.asarray(getattr(result, key), dtype=np.float64)
        want = np.asarray(expected[key], dtype=np.float64)
        assert got.shape == want.shape, (key, got, want)
        assert (np.isnan(got) == np.isnan(want)).all(), (key, got, want)
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=0, equal_nan=True, err_msg=key)


# -- items ------------------------------------------------------------------------------------
def grid(rows, cols, box=(0.0, 0.0, 1.0, 1.0)):
    return ImageGrid(image=0, positions=np.arange(rows * cols), shape=(rows, cols), box=box)


def item(grid_maps, words, mask, sample=None, grids=None):
    """An EvalItem with what the localisation metrics read; maps (G, rows, cols)."""
    grid_maps = np.asarray(grid_maps)
    count, rows, cols = grid_maps.shape
    trace = SimpleNamespace(grids=grids or [grid(rows, cols)])
    return EvalItem(sample=sample, model=None, method=None, trace=trace,
                    maps=grid_maps.reshape(count, -1), words=words,
                    mask=None if mask is None else np.asarray(mask))


def file_sample(path, **meta):
    return Sample(id="s", image=Path("unused.jpg"), prompt="", mask=Path(path), meta=meta)


def two_level(cells, shape=(4, 4), low=51, high=255):
    grid_map = np.full(shape, low, dtype=np.uint8)
    grid_map[cells] = high
    return grid_map


def random_maps(seed, count, shape):
    return np.random.default_rng(seed).integers(0, 256, (count, *shape)).astype(np.uint8)


# -- OpenCV's Otsu: constant maps and ties ------------------------------------------------------
def test_constant_maps_zero_gives_nan_precision_and_200_the_whole_frame():
    mask = np.zeros((6, 8), dtype=np.int32)
    mask[:2, :3] = 3  # 6 pixels
    mask[3:, 4:] = 8  # 12 pixels
    maps = np.stack([np.zeros((3, 4), np.uint8), np.full((3, 4), 200, np.uint8),
                     np.full((3, 4), 90, np.uint8)])
    words = [Word("car", [0], "noun", 3), Word("a", [2], "function"),
             Word("truck", [1], "noun", 8)]
    it = item(maps, words, mask)
    expected = reference_eval(maps, words, mask)
    assert_matches(localise(it, TAM), expected)
    # all 0: τ 0 and no foreground; all 200: τ 0 and everything foreground
    assert expected["thresholds"] == [0.0, 0.0]
    assert np.isnan(expected["precision"][0]) and expected["obj"][0] == 0.0
    assert expected["obj"][1] == expected["precision"][1] == 12 / 48
    assert expected["recall"] == [0.0, 1.0] and expected["func"] == [0.0]
    # mmxai's own protocol: the constant is its level, precision 0, counted
    assert localise(it).precision == [0.0, 0.0]


def test_otsu_ties_follow_opencv():
    # three equal thirds at 0, 100, 200: splitting below or above 100 scores the same
    tied = np.repeat(np.array([0, 100, 200], np.uint8), 3).reshape(3, 3)
    mask = np.zeros((3, 3), dtype=np.int32)
    mask[2] = 4
    words = [Word("cup", [0], "noun", 4)]
    it = item(tied[None], words, mask)
    expected = reference_eval(tied[None], words, mask)
    assert_matches(localise(it, TAM), expected)
    tau = cv2.threshold(tied, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)[0]
    assert expected["thresholds"] == [tau]
    # scikit-image (mmxai's default) breaks this tie the other way: the test can fail
    assert otsu(tied) != tau
    assert localise(it).obj != localise(it, TAM).obj


# -- OpenCV's resize ------------------------------------------------------------------------------
def test_odd_sizes_are_resized_by_opencv():
    maps = random_maps(3, 3, (13, 7))
    mask = np.zeros((97, 61), dtype=np.int32)
    mask[10:60, 5:30] = 4
    mask[50:90, 20:55] = 9
    words = [Word("cat", [0, 1], "noun", 4), Word("the", [2], "function"),
             Word("dog", [2], "noun", 9)]
    it = item(maps, words, mask)
    expected = reference_eval(maps, words, mask)
    assert_matches(localise(it, TAM), expected)
    assert len(expected["obj"]) == 2 and len(expected["func"]) == 1
    # mmxai's float bilinear, rounded, differs from OpenCV's fixed point on some pixels, and
    # here that changes the entries: a float resize would fail this test
    by_cv2 = cv2.resize(maps[0], (61, 97))
    by_float = np.clip(np.rint(float_resize(maps[0].astype(np.float32), (97, 61))), 0,
                       255).astype(np.uint8)
    assert (by_cv2 != by_float).any()

    def rounded_float(grid_map, size):
        return np.clip(np.rint(float_resize(grid_map.astype(np.float32), size)), 0,
                       255).astype(np.uint8)

    floated = reference_eval(maps, words, mask, resize=rounded_float)
    assert any(floated[k] != expected[k] for k in ("obj", "thresholds"))


def test_llava_centre_crop_is_stretched_over_the_image():
    mask = np.zeros((12, 20), dtype=np.int32)
    mask[:, :4] = 1
    crop = grid(6, 6, box=(0.2, 0.0, 0.8, 1.0))  # the centre 12 of 20 columns
    grid_map = two_level(np.s_[:, :1], shape=(6, 6))[None]
    words = [Word("person", [0], "noun", 1)]
    it = item(grid_map, words, mask, grids=[crop])
    expected = reference_eval(grid_map, words, mask)
    assert_matches(localise(it, TAM), expected)
    assert expected["obj"][0] > 0.5
    assert localise(it).obj == [0.0]  # painted into its box, the column misses the person


# -- masks read by OpenCV -------------------------------------------------------------------------
def test_palette_png_gives_the_grey_of_its_colours(tmp_path):
    indices = np.zeros((20, 30), dtype=np.uint8)
    indices[:10, :15] = 18  # red
    indices[10:, 15:] = 5  # blue
    palette = [0] * 768
    palette[18 * 3:18 * 3 + 3] = [255, 0, 0]
    palette[5 * 3:5 * 3 + 3] = [0, 0, 255]
    image = Image.fromarray(indices, mode="P")
    image.putpalette(palette)
    path = tmp_path / "mask.png"
    image.save(path)
    grey = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    assert np.unique(grey).tolist() == [0, 29, 76]  # BT.601 grey of blue and red
    assert (opencv_ops.read_mask(path) == grey).all()

    maps = np.stack([two_level(np.s_[:2, :3], shape=(4, 6)), two_level(np.s_[2:, 3:],
                                                                       shape=(4, 6))])
    words = [Word("dog", [0], "noun", 18), Word("thing", [1], "noun", 29)]
    it = item(maps, words, read_label_map(path, "mask"), sample=file_sample(path))
    expected = reference_eval(maps, words, grey)
    assert_matches(localise(it, TAM), expected)
    assert len(expected["obj"]) == 1 and expected["obj"][0] > 0.5
    # the reference finds the blue region under its grey 29, not the dog's index 18;
    # mmxai's reader keeps the indices, so it finds the dog and not 29
    for word, found_by_reference in zip(words, (False, True), strict=True):
        alone = item(maps, [word], read_label_map(path, "mask"), sample=file_sample(path))
        assert bool(localise(alone, TAM).obj) is found_by_reference
        assert bool(localise(alone).obj) is not found_by_reference


def test_sixteen_bit_png_keeps_the_high_byte(tmp_path):
    labels = np.zeros((4, 4), dtype=np.uint16)
    labels[:2, :2] = 5 * 257  # 1285: 5 in the high byte
    labels[2:, 2:] = 700  # 2.73 x 256
    path = tmp_path / "mask16.png"
    Image.fromarray(labels).save(path)
    assert Image.open(path).mode == "I;16"
    grey = opencv_ops.read_mask(path)
    assert grey.dtype == np.uint8 and np.unique(grey).tolist() == [0, 2, 5]  # >> 8

    maps = np.stack([two_level(np.s_[:2, :2]), two_level(np.s_[2:, 2:])])
    words = [Word("a", [0], "noun", 1285), Word("b", [0], "noun", 5),
             Word("c", [1], "noun", 2)]
    it = item(maps, words, read_label_map(path, "mask"), sample=file_sample(path))
    expected = reference_eval(maps, words, grey)
    assert_matches(localise(it, TAM), expected)
    assert expected["obj"] == [1.0, 1.0]  # labels 5 and 2 found; 1285 is not a byte
    assert localise(it).obj == [1.0]  # mmxai's reader: 1285 found, 5 and 2 absent


def test_a_missing_mask_file_is_zeros_at_the_grid_size(tmp_path):
    maps = random_maps(11, 3, (5, 4))
    words = [Word("dog", [0], "noun", 18), Word("grass", [1], "noun", None),
             Word("the", [2], "function"), Word("a", [0, 1], "function")]
    missing = tmp_path / "seg_label" / "000000000042.png"
    image_zeros = np.zeros((50, 40), dtype=np.int32)  # what mmxai's reader gave
    for sample in (file_sample(missing, missing_mask="zeros", mask_missing=True),
                   file_sample(missing)):
        it = item(maps, words, image_zeros, sample=sample)
        expected = reference_eval(maps, words, None)
        assert_matches(localise(it, TAM), expected)
    assert expected["obj"] == [] and len(expected["func"]) == 2
    # the thresholds are the grids' own Otsu levels, not those of the image-size resize
    levels = [cv2.threshold(m, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)[0] for m in maps]
    assert expected["thresholds"] == levels[:2]
    at_image_size = reference_eval(maps, words, image_zeros)
    assert at_image_size["thresholds"] != expected["thresholds"]


def test_a_mask_given_as_an_array_is_used_as_is():
    mask = np.zeros((8, 8), dtype=np.int32)
    mask[:4, :4] = 300  # not a byte: only an array mask can hold it
    maps = two_level(np.s_[:2, :2])[None]
    sample = Sample(id="s", image=Path("unused.jpg"), prompt="", mask=mask)
    words = [Word("table", [0], "noun", 300)]
    it = item(maps, words, mask, sample=sample)
    expected = reference_eval(maps, words, mask)
    assert_matches(localise(it, TAM), expected)
    assert len(expected["obj"]) == 1


def test_an_unreadable_mask_file_is_refused_in_one_line(tmp_path):
    path = tmp_path / "broken.png"
    path.write_bytes(b"not a png")
    with pytest.raises(InputError) as error:
        opencv_ops.read_mask(path)
    assert str(path) in str(error.value) and "\n" not in str(error.value)


# -- objects: the Q5 merge and several tokens -----------------------------------------------------
def q5_item(cat_cells):
    """dog (18) and cat (17) in the mask, then two bears (23) that are not."""
    mask = np.zeros((4, 4), dtype=np.int32)
    mask[:2, :2] = 18
    mask[2:, 2] = 17
    maps = np.stack([two_level(np.s_[0, :2]),  # dog: IoU 1/2, precision 1, recall 1/2
                     two_level(cat_cells), two_level(np.s_[0, 3]), two_level(np.s_[3, 0])])
    words = [Word("dog", [0], "noun", 18), Word("cat", [1], "noun", 17),
             Word("bear", [2], "noun", 23), Word("bear", [3], "noun", 23)]
    return maps, words, mask


@pytest.mark.parametrize("cat_cells, merged", [
    # cat IoU 1/2 too (precision 1/2, recall 1): the tie keeps the earlier entry, the dog
    (np.s_[2:, 2:], (0.5, 1.0, 0.5)),
    # cat IoU 1 (strictly larger): the later entry
    (np.s_[2:, 2], (1.0, 1.0, 1.0)),
])
def test_q5_merges_unrelated_entries(cat_cells, merged):
    maps, words, mask = q5_item(cat_cells)
    it = item(maps, words, mask)
    expected = reference_eval(maps, words, mask)
    assert_matches(localise(it, TAM), expected)
    result = localise(it, TAM)
    assert (result.obj, result.precision, result.recall) == tuple([v] for v in merged)
    assert len(localise(it).obj) == 2  # mmxai's protocol keeps both objects


def test_words_of_several_tokens_take_the_first_best_token():
    mask = np.zeros((4, 4), dtype=np.int32)
    mask[:2, :2] = 7
    mask[2:, :] = 9
    maps = np.stack([
        two_level(np.s_[0, :2]),  # cup: IoU 1/2, precision 1, recall 1/2
        two_level(np.s_[:2, :4]),  # cup: IoU 1/2, precision 1/2, recall 1 (tie: not taken)
        two_level(np.s_[0, 0]),  # cup: IoU 1/4
        two_level(np.s_[3, :]),  # bowl: IoU 1/2
        two_level(np.s_[2:, :]),  # bowl: IoU 1
        np.full((4, 4), 40, np.uint8),  # function-word tokens
        two_level(np.s_[:1, :], low=0, high=200),
    ])
    words = [Word("cup", [0, 1, 2], "noun", 7), Word("and", [5, 6], "function"),
             Word("bowl", [3, 4], "noun", 9)]
    it = item(maps, words, mask)
    expected = reference_eval(maps, words, mask)
    assert_matches(localise(it, TAM), expected)
    assert expected["obj"] == [0.5, 1.0] and expected["precision"] == [1.0, 1.0]
    assert expected["recall"] == [0.5, 1.0]
    assert expected["thresholds"] == [51.0, 51.0]  # the max τ over each noun's tokens
    assert expected["func"] == [(1.0 + 12 / 16) / 2]  # 40 < 51 everywhere; 0 on 12 cells


def test_float_maps_are_quantised_by_floor_and_uint8_maps_kept():
    codes = random_maps(5, 2, (6, 6))
    floats = (codes.astype(np.float32) + 0.5) / 255  # floor(255 x) gives the codes back
    assert (quantise(floats.reshape(2, -1)) == codes.reshape(2, -1)).all()
    assert quantise(codes) is codes
    small = np.array([[0, 3, 200]], dtype=np.uint8)
    assert quantise(small).tolist() == [[0, 3, 200]]
    assert quantise(small.astype(np.float32)).tolist() == [[0, 3, 255]]  # min-max scaled
    mask = np.zeros((9, 15), dtype=np.int32)
    mask[2:7, 3:9] = 6
    words = [Word("bird", [0], "noun", 6), Word("this", [1], "function")]
    expected = reference_eval(codes, words, mask)
    assert_matches(localise(item(floats, words, mask), TAM), expected)
    assert_matches(localise(item(codes, words, mask), TAM), expected)


# -- the precision metric -------------------------------------------------------------------------
def test_precision_stores_finite_values_and_counts_the_undefined():
    mask = np.zeros((4, 4), dtype=np.int32)
    mask[:2, :2] = 3
    mask[2:, 2:] = 8
    maps = np.stack([np.zeros((4, 4), np.uint8), two_level(np.s_[2:, 2:])])
    words = [Word("car", [0], "noun", 3), Word("truck", [1], "noun", 8)]
    it = item(maps, words, mask)
    assert np.isnan(localise(it, TAM).precision[0])
    assert Precision(protocol="tam-reference").measure(it) == {"value": [1.0],
                                                                "undefined": [1]}
    assert Precision().measure(it) == {"value": [0.0, 1.0]}


def test_precision_aggregate_is_nan_once_one_entry_is():
    metric = Precision(protocol="tam-reference")
    defined = [{"value": [0.5], "undefined": [0]}, {"value": [0.2, 0.3], "undefined": [0]}]
    poisoned = [defined[0], {"value": [0.2, 0.3], "undefined": [1]}]
    default = [{"value": [0.5]}, {"value": [0.2, 0.3]}]
    assert metric.aggregate(defined) == pytest.approx(1 / 3)  # pooled, not (0.5 + 0.25) / 2
    assert np.isnan(metric.aggregate(poisoned))
    assert Precision().aggregate(default) == pytest.approx(1 / 3)
    # the leaderboard's scorer (vectorised from the pooled means) agrees, bootstrap included
    scorer = metric_info("precision[protocol=tam-reference]", []).scorer
    generic = Scorer(metric.aggregate)
    for parts in (defined, default):
        assert scorer.score(parts) == pytest.approx(1 / 3)
    assert np.isnan(scorer.score(poisoned))
    data = [{"value": [v, v / 2], "undefined": [int(i == 3)]}
            for i, v in enumerate(np.linspace(0.1, 0.9, 12))]
    assert bootstrap_ci(data, scorer, 200, seed=1) == pytest.approx(
        bootstrap_ci(data, generic, 200, seed=1))
    assert bootstrap_ci(default, scorer, 200) == pytest.approx(
        bootstrap_ci(default, Scorer(Precision().aggregate), 200))


# -- OpenCV is needed by this protocol only -------------------------------------------------------
def test_without_opencv_the_protocol_is_refused_in_one_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "cv2", None)
    with pytest.raises(ProtocolUnavailable) as error:
        opencv_ops.require()
    message = str(error.value)
    assert EXTRA in message and "\n" not in message
    maps, words, mask = q5_item(np.s_[2:, 2])
    assert localise(item(maps, words, mask)).obj  # the default protocol never imports cv2
    with pytest.raises(ProtocolUnavailable):
        localise(item(maps, words, mask), TAM)
