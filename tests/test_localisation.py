"""Localisation metrics against values counted by hand on small maps and masks."""

from importlib import metadata
from types import SimpleNamespace

import numpy as np
import pytest

from mmxai.metric import EvalItem
from mmxai.model import ImageGrid
from mmxai.plugins.metrics.localisation import (
    F1IoU,
    FuncIoU,
    ObjIoU,
    Precision,
    Recall,
    f1_iou,
    localise,
    otsu,
    quantise,
)
from mmxai.registry import PluginManager
from mmxai.words import Word

LO, HI = 0.2, 1.0  # quantised: floor(255 * 0.2) = 51 and 255


def grid(rows=4, cols=4, box=(0.0, 0.0, 1.0, 1.0)):
    return ImageGrid(image=0, positions=np.arange(rows * cols), shape=(rows, cols), box=box)


def item(maps, words, mask, grids=None):
    """An EvalItem with just what the localisation metrics read."""
    maps = np.asarray(maps, dtype=np.float32).reshape(len(maps), -1)
    trace = SimpleNamespace(grids=grids or [grid()])
    return EvalItem(sample=None, model=None, method=None, trace=trace, maps=maps,
                    words=words, mask=None if mask is None else np.asarray(mask))


def two_level(cells, shape=(4, 4)):
    """A map at LO everywhere and HI on ``cells`` (a boolean array or index expression)."""
    m = np.full(shape, LO, dtype=np.float32)
    m[cells] = HI
    return m


# -- thresholds -----------------------------------------------------------------------------------
def test_quantise_is_floor_255_and_rescales_other_ranges():
    assert quantise(np.array([[0.0, 0.2, 0.999, 1.0]])).tolist() == [[0, 51, 254, 255]]
    # out of [0, 1]: min-max over the whole sample, then floor(255 x)
    assert quantise(np.array([[-1.0, 0.0], [1.0, 3.0]])).tolist() == [[0, 63], [127, 255]]
    assert quantise(np.array([[np.nan, 0.5, 1.0]])).tolist() == [[0, 127, 255]]


def test_otsu_on_a_two_level_map_separates_the_levels():
    high = np.zeros((4, 4), dtype=bool)
    high[:2, :3] = True
    image = quantise(two_level(high))
    tau = otsu(image)
    assert tau == 51  # the lower level: B = M > τ keeps exactly the high cells
    assert ((image > tau) == high).all()


def opencv_otsu(image):
    """OpenCV's THRESH_OTSU on uint8 (getThreshVal_Otsu_8u), written out for comparison."""
    hist = np.bincount(image.ravel(), minlength=256).astype(float) / image.size
    mu = float(np.dot(np.arange(256), hist))
    q1 = mu1 = 0.0
    best, level = 0.0, 0
    for i in range(256):
        mu1 *= q1
        q1 += hist[i]
        q2 = 1.0 - q1
        if min(q1, q2) < 1.1920929e-07 or max(q1, q2) > 1.0 - 1.1920929e-07:
            continue
        mu1 = (mu1 + i * hist[i]) / q1
        mu2 = (mu - q1 * mu1) / q2
        sigma = q1 * q2 * (mu1 - mu2) ** 2
        if sigma > best:
            best, level = sigma, i
    return level


def test_otsu_matches_opencv_on_uint8_maps():
    rng = np.random.default_rng(0)
    for _ in range(20):
        image = quantise(rng.random((12, 17)) ** rng.uniform(0.3, 3.0))
        assert otsu(image) == opencv_otsu(image)


def test_constant_maps_have_an_empty_foreground_unless_reference():
    image = np.full((4, 4), 128, dtype=np.uint8)
    assert not (image > otsu(image)).any()
    assert otsu(image, reference_compatible=True) == opencv_otsu(image) == 0


# -- Obj-IoU, precision, recall -------------------------------------------------------------------
def dog_item():
    """Map high on rows 0-1 x cols 0-2 (6 cells); the dog (18) on rows 0-2 x cols 0-1 (6)."""
    mask = np.zeros((4, 4), dtype=np.int32)
    mask[:3, :2] = 18
    return item([two_level(np.s_[:2, :3])], [Word("dog", [0], "noun", 18)], mask)


def test_obj_iou_precision_recall_counted_by_hand():
    # overlap rows 0-1 x cols 0-1 = 4; union 6 + 6 - 4 = 8
    it = dog_item()
    assert ObjIoU().measure(it) == {"value": [pytest.approx(4 / 8)]}
    assert Precision().measure(it) == {"value": [pytest.approx(4 / 6)]}
    assert Recall().measure(it) == {"value": [pytest.approx(4 / 6)]}


def test_maps_are_resized_to_the_mask():
    # A 2x2 map, high in its left column, upsampled to the 12x12 mask: bilinear (half-pixel)
    # gives columns 51 + 204 w with w = 1, 1, 1, 11/12, 9/12, ..., 1/12, 0, 0, 0, i.e. the
    # levels 255 x3, 238, 204, 170, 136, 102, 68, 51 x3. The histogram is symmetric about
    # 153, so Otsu splits it in the middle (τ = 136) and B is exactly the left half.
    mask = np.zeros((12, 12), dtype=np.int32)
    mask[:, :6] = 5
    it = item([two_level(np.s_[:, :1], shape=(2, 2))], [Word("cat", [0], "noun", 5)], mask,
              grids=[grid(2, 2)])
    result = localise(it)
    assert result.thresholds == [136.0]
    assert result.obj == [1.0] and result.precision == [1.0] and result.recall == [1.0]


def test_best_token_decides_precision_and_recall():
    mask = np.zeros((4, 4), dtype=np.int32)
    mask[:2, :2] = 7
    inside = two_level(np.s_[0, 0])  # 1 cell, on the object: IoU 1/4, precision 1
    covering = two_level(np.s_[:2, :3])  # 6 cells: IoU 4/6, precision 4/6, recall 1
    it = item([inside, covering], [Word("cup", [0, 1], "noun", 7)], mask)
    result = localise(it)
    assert result.obj == [pytest.approx(4 / 6)]
    assert result.precision == [pytest.approx(4 / 6)] and result.recall == [1.0]


def test_empty_foreground_counts_as_zero():
    mask = np.zeros((4, 4), dtype=np.int32)
    mask[:2, :2] = 3
    flat = np.full((4, 4), 0.5, dtype=np.float32)
    it = item([flat], [Word("car", [0], "noun", 3)], mask)
    for metric in (ObjIoU(), Precision(), Recall()):
        assert metric.measure(it) == {"value": [0.0]}
    # the reference's OpenCV level 0 makes the whole image foreground: IoU = 4 / 16
    assert ObjIoU(reference_compatible=True).measure(it) == {"value": [0.25]}


def test_objects_absent_from_the_mask_add_no_entry():
    mask = np.zeros((4, 4), dtype=np.int32)
    it = item([two_level(np.s_[:2, :2])], [Word("dog", [0], "noun", 18)], mask)
    assert ObjIoU().measure(it) == {"value": []}
    assert localise(it).thresholds == [51.0]  # but its threshold still counts


def test_consecutive_words_of_one_object_merge():
    mask = np.zeros((4, 4), dtype=np.int32)
    mask[:2, :] = 58
    hot = two_level(np.s_[:1, :])  # IoU 4/8
    dog = two_level(np.s_[:2, :])  # IoU 1
    words = [Word("hot", [0], "noun", 58), Word("dog", [1], "noun", 58)]
    assert ObjIoU().measure(item([hot, dog], words, mask)) == {"value": [1.0]}


def test_q5_merge_reproduced_only_in_reference_mode():
    # dog and cat are in the mask; "bear bear" (absent) follow. The reference merges the
    # last two entries at the second bear, so dog and cat become one entry.
    mask = np.zeros((4, 4), dtype=np.int32)
    mask[:2, :2] = 18
    mask[2:, 2:] = 17
    dog = two_level(np.s_[:2, :2])  # IoU 1 with the dog
    cat = two_level(np.s_[2:, 2:3])  # IoU 2/4 with the cat
    words = [Word("dog", [0], "noun", 18), Word("cat", [1], "noun", 17),
             Word("bear", [0], "noun", 23), Word("bear", [1], "noun", 23)]
    maps = [dog, cat]
    assert ObjIoU().measure(item(maps, words, mask)) == {"value": [1.0, 0.5]}
    assert ObjIoU(reference_compatible=True).measure(item(maps, words, mask)) == {
        "value": [1.0]}


def test_reference_mode_stretches_a_cropped_grid_over_the_image():
    # LLaVA-1.5's grid covers the centre crop; the reference stretches it over the image.
    mask = np.zeros((4, 8), dtype=np.int32)
    mask[:, :2] = 1
    crop = grid(4, 4, box=(0.25, 0.0, 0.75, 1.0))
    m = two_level(np.s_[:, :1])
    words = [Word("man", [0], "noun", 1)]
    assert ObjIoU().measure(item([m], words, mask, [crop])) == {"value": [0.0]}
    assert ObjIoU(reference_compatible=True).measure(item([m], words, mask, [crop])) == {
        "value": [1.0]}


# -- Func-IoU and F1 ------------------------------------------------------------------------------
def test_func_iou_counts_cells_below_the_mean_noun_threshold():
    mask = np.zeros((4, 4), dtype=np.int32)
    noun_a = two_level(np.s_[:1, :])  # threshold 51
    noun_b = np.where(two_level(np.s_[:1, :]) == HI, 1.0, 0.4)  # levels 102, 255: threshold 102
    level = (51 + 102) / 2  # 76.5
    the = np.full((4, 4), 76 / 255 + 1e-4, dtype=np.float32)  # quantised 76: below
    the[0, :3] = 77 / 255 + 1e-4  # 3 cells at 77: not below -> 13 / 16
    a = np.full((4, 4), 0.9, dtype=np.float32)  # nothing below
    a[1:, :] = 0.0  # 12 cells below -> 12 / 16
    words = [Word("the", [2], "function"), Word("dog", [0], "noun", None),
             Word("a", [3, 4], "function"), Word("grass", [1], "noun", None)]
    it = item([noun_a, noun_b, the, a, np.zeros((4, 4))], words, mask)
    assert localise(it).thresholds == [51.0, 102.0]
    assert np.mean(localise(it).thresholds) == level
    assert FuncIoU().measure(it) == {"value": [pytest.approx(13 / 16),
                                               pytest.approx((12 / 16 + 1.0) / 2)]}


def test_no_nouns_no_func_entries():
    it = item([np.zeros((4, 4))], [Word("the", [0], "function")], np.zeros((4, 4)))
    assert FuncIoU().measure(it) == {"value": []}


def test_f1_iou_from_pooled_means():
    parts = [{"obj": [0.5], "func": [0.9]}, {"obj": [0.3, 0.1], "func": [0.6]}]
    obj, func = 0.3, 0.75  # pooled over entries, not per-sample means (0.35, 0.75)
    assert F1IoU().aggregate(parts) == pytest.approx(2 * obj * func / (obj + func))
    assert ObjIoU().aggregate([{"value": [0.5]}, {"value": [0.3, 0.1]}]) == pytest.approx(0.3)
    assert np.isnan(f1_iou([], [0.5])) and f1_iou([0.0], [0.0]) == 0.0


def test_f1_metric_measures_both_parts():
    it = dog_item()
    it.words.append(Word("the", [1], "function"))
    it.maps = np.concatenate([it.maps, np.zeros((1, 16), np.float32)])
    parts = F1IoU().measure(it)
    assert parts == {"obj": [pytest.approx(0.5)], "func": [1.0]}
    assert F1IoU().aggregate([parts]) == pytest.approx(2 * 0.5 / 1.5)


def test_registered_with_their_directions():
    eps = [ep for ep in metadata.entry_points(group="mmxai") if ep.name == "localisation"]
    metrics = PluginManager(entry_points=eps).items("metrics")
    assert sorted(metrics) == ["f1-iou", "func-iou", "obj-iou", "precision", "recall"]
    for name in ("obj-iou", "func-iou", "f1-iou", "precision", "recall"):
        cls = metrics[name]
        assert cls.needs_mask and cls.higher_is_better and cls.category == "localisation"
        assert "Token Activation Map" in cls.citation
