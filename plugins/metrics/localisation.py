"""TAM's localisation metrics: Obj-IoU, precision, recall, Func-IoU and F1-IoU.

For each explained answer (``docs/evaluation.md``, Localisation metrics):

- every token's map is quantised like the reference's output, uint8 = floor(255 x), painted
  onto the mask's frame with a bilinear resize, and binarised at its Otsu level τ:
  B = [M > τ] (the reference's OpenCV ``THRESH_BINARY``);
- a **noun object** (consecutive words with the same category label > 0, present in the
  mask) scores the IoU of the best of its tokens with G = [mask == label], and the precision
  and recall of that same token; an empty foreground scores 0 and is counted (Q9);
- each noun's threshold is the max τ of its tokens; a **function word** scores the share of
  token-grid cells below the mean noun threshold (the "IoU of negatives");
- values are pooled over all samples; F1-IoU = 2·Obj·Func / (Obj + Func) of the pooled means.

``reference_compatible=True`` reproduces the reference's merging of the last two entries
(Q5), OpenCV's Otsu level 0 on constant maps, and LLaVA-1.5's map stretched over the whole
image (Q13).

``protocol="tam-reference"`` is the reference's ``eval.py`` exactly: the Q5 merging and Q13
stretch, plus OpenCV itself (:mod:`mmxai.opencv_ops`) to read the mask file, resize the uint8
grid and pick Otsu's level; zeros at the token grid's size for a missing mask file; and NaN
precision for an empty foreground (Q9), which makes the pooled precision NaN. A model with
several grids for image 0 (none in the reference) is painted with ``to_image`` as by default.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import numpy as np
from skimage.filters import threshold_otsu

from mmxai import opencv_ops
from mmxai.citations import cite
from mmxai.hookspecs import hookimpl
from mmxai.maps import minmax, resize, to_image
from mmxai.metric import EvalItem, Metric, Parts
from mmxai.protocols import TAM_REFERENCE


@dataclass(frozen=True)
class LocalisationOptions:
    """``reference_compatible``: reproduce the reference where it differs (see module doc);
    ``protocol="tam-reference"``: the reference's evaluation exactly (OpenCV's mask reading,
    resize and Otsu; NaN precision; docs/evaluation.md)."""

    reference_compatible: bool = False
    protocol: Literal["default", "tam-reference"] = "default"

    @property
    def opencv(self) -> bool:
        """The reference's evaluation exactly (``protocol="tam-reference"``)."""
        return self.protocol == TAM_REFERENCE

    @property
    def reference(self) -> bool:
        """The reference's Q5 merging and Q13 stretch (either switch turns them on)."""
        return self.reference_compatible or self.opencv


@dataclass
class Localisation:
    """One sample's pooled entries: per noun object, per function word, per noun threshold.

    ``precision`` holds NaN for an empty foreground under ``protocol="tam-reference"``."""

    obj: list[float] = field(default_factory=list)
    precision: list[float] = field(default_factory=list)
    recall: list[float] = field(default_factory=list)
    func: list[float] = field(default_factory=list)
    thresholds: list[float] = field(default_factory=list)


def quantise(maps: np.ndarray) -> np.ndarray:
    """(G, N) maps -> uint8 floor(255 x), the reference's output format.

    uint8 maps (the reference's own output) are used as they are. Maps already in [0, 1]
    (TAM's) are quantised as they are; any other range is min-max scaled over the whole
    sample first, which keeps the tokens comparable with each other (Func-IoU compares
    function-word maps with noun thresholds).
    """
    maps = np.asarray(maps)
    if maps.dtype == np.uint8:
        return maps
    maps = np.nan_to_num(maps.astype(np.float32), nan=0.0)  # NaN: no evidence
    if maps.size and not (maps.min() >= 0.0 and maps.max() <= 1.0):
        maps = minmax(maps)
    return np.floor(255.0 * np.clip(maps, 0.0, 1.0)).astype(np.uint8)


def otsu(image: np.ndarray, reference_compatible: bool = False) -> float:
    """Otsu's level τ of a uint8 image; the foreground is ``image > τ``.

    For integer images scikit-image and OpenCV pick the same level (the last value of the
    lower class). A constant image has no two classes: OpenCV returns 0 (everything above 0
    is foreground), here the constant itself (an empty foreground) unless
    ``reference_compatible``.
    """
    lo, hi = int(image.min()), int(image.max())
    if lo == hi:
        return 0.0 if reference_compatible else float(lo)
    return float(threshold_otsu(image))


def token_scores(predicted: np.ndarray, truth: np.ndarray, empty: float = 0.0) -> tuple[
        float, float, float]:
    """(IoU, precision, recall) of the boolean foreground ``predicted`` against the boolean
    mask ``truth``.

    ``truth`` must be non-empty; an empty foreground gives IoU 0 and precision ``empty``
    (the reference divides by zero, Q9: NaN).
    """
    hit = float(np.count_nonzero(predicted & truth))
    union = float(np.count_nonzero(predicted | truth))
    n_pred = float(np.count_nonzero(predicted))
    return hit / union, (hit / n_pred if n_pred else empty), hit / float(np.count_nonzero(truth))


def localise(item: EvalItem, options: LocalisationOptions | None = None) -> Localisation:
    """All of one sample's entries, computed once per item and options."""
    options = options or LocalisationOptions()
    cache = item.__dict__.setdefault("_localisation", {})
    if options not in cache:
        cache[options] = _localise(item, options)
    return cache[options]


def _localise(item: EvalItem, options: LocalisationOptions) -> Localisation:
    result = Localisation()
    if item.mask is None or not item.words:
        return result
    grid_maps = quantise(item.maps)
    mask = _mask(item, options)
    foregrounds: dict[int, tuple[float, np.ndarray]] = {}

    def foreground(token: int) -> tuple[float, np.ndarray]:
        """Token ``token``'s Otsu level and foreground in the mask's frame."""
        if token not in foregrounds:
            if not 0 <= token < len(grid_maps):
                raise ValueError(f"word token {token} has no map: the sample has "
                                 f"{len(grid_maps)} maps")
            image = _token_image(grid_maps[token], item.trace.grids, mask.shape, options)
            foregrounds[token] = _threshold(image, options)
        return foregrounds[token]

    words = list(item.words)
    for word in words:
        if word.kind == "noun":
            result.thresholds.append(max(foreground(j)[0] for j in word.tokens))
    objects = _objects_reference if options.reference else _objects
    objects(words, mask, foreground, math.nan if options.opencv else 0.0, result)

    if result.thresholds:
        level = float(np.mean(result.thresholds))
        for word in words:
            if word.kind == "function" and word.tokens:
                below = [float(np.mean(grid_maps[j] < level)) for j in word.tokens]
                result.func.append(float(np.mean(below)))
    return result


def _mask(item: EvalItem, options: LocalisationOptions) -> np.ndarray:
    """The label map the objects are scored against: ``item.mask``, or under tam-reference
    the mask file as OpenCV reads it, and zeros at the token grid's size (rows, cols) for a
    missing file, as the reference's ``np.zeros((h, w))``. A mask given as an array
    (synthetic benchmark, COCO-json folders) is ``item.mask`` in both."""
    path = getattr(item.sample, "mask", None)
    if not options.opencv or not isinstance(path, (str, os.PathLike)):
        return np.asarray(item.mask)
    if item.sample.meta.get("mask_missing") or not os.path.lexists(path):
        grid = _lone_grid(item.trace.grids)  # several grids: no grid size, the image's
        return np.zeros(grid.shape if grid else np.shape(item.mask), dtype=np.uint8)
    return opencv_ops.read_mask(path)


def _lone_grid(grids: Sequence[Any]) -> Any | None:
    """Image 0's grid (frame 0) if it has exactly one, else None."""
    own = [g for g in grids if g.image == 0 and g.frame == 0]
    return own[0] if len(own) == 1 else None


def _token_image(grid_map: np.ndarray, grids: Sequence[Any], size: tuple[int, int],
                 options: LocalisationOptions) -> np.ndarray:
    """A token's uint8 flat map in the frame of image 0, (height, width) = ``size``.

    In reference mode a lone grid is stretched over the whole frame, ignoring its box (Q13):
    by ``cv2.resize`` of the uint8 grid under tam-reference, else by a float bilinear resize
    rounded to uint8. Otherwise each grid is painted into its box (``to_image``).
    """
    grid = _lone_grid(grids) if options.reference else None
    if grid is None:
        painted = to_image(grid_map.astype(np.float32), grids, image=0, size=size)
    else:
        cells = grid_map[grid.offset:grid.offset + grid.size].reshape(grid.shape)
        if options.opencv:
            return opencv_ops.resize(cells, size)
        painted = resize(cells.astype(np.float32), size)
    return np.clip(np.rint(painted), 0, 255).astype(np.uint8)


def _threshold(image: np.ndarray, options: LocalisationOptions) -> tuple[float, np.ndarray]:
    """Otsu's level τ of a uint8 image and its foreground [image > τ]."""
    if options.opencv:
        return opencv_ops.otsu(image)
    tau = otsu(image, options.reference_compatible)
    return tau, image > tau


def _best(tokens: Sequence[int], truth: np.ndarray, foreground: Any, empty: float) -> tuple[
        float, float, float]:
    """The token with the highest IoU (the first on ties) and its precision and recall."""
    scores = [token_scores(foreground(token)[1], truth, empty) for token in tokens]
    return max(scores, key=lambda s: s[0])


def _objects(words: Sequence[Any], mask: np.ndarray, foreground: Any, empty: float,
             result: Localisation) -> None:
    """One entry per run of consecutive words with the same label present in the mask."""
    start = 0
    while start < len(words):
        label = words[start].label if words[start].kind == "noun" else None
        end = start + 1
        while (label is not None and end < len(words) and words[end].kind == "noun"
               and words[end].label == label):
            end += 1
        if label is not None and label > 0:
            truth = mask == label
            tokens = [j for w in words[start:end] for j in w.tokens]
            if truth.any() and tokens:
                iou, precision, recall = _best(tokens, truth, foreground, empty)
                result.obj.append(iou)
                result.precision.append(precision)
                result.recall.append(recall)
        start = end


def _objects_reference(words: Sequence[Any], mask: np.ndarray, foreground: Any, empty: float,
                       result: Localisation) -> None:
    """The reference's loop: an entry per word, then the last two entries merged whenever
    the previous word has the same label, even when this word added no entry (Q5). The
    merged entry is the later one only if its IoU is strictly larger (a tie keeps the
    earlier one's precision and recall)."""
    for i, word in enumerate(words):
        label = word.label if word.kind == "noun" else None
        if label is None or label <= 0:
            continue
        truth = mask == label
        if truth.any() and word.tokens:
            iou, precision, recall = _best(word.tokens, truth, foreground, empty)
            result.obj.append(iou)
            result.precision.append(precision)
            result.recall.append(recall)
        previous = words[i - 1]
        previous_label = previous.label if previous.kind == "noun" else None
        if len(result.obj) > 1 and previous_label == label:
            keep = -1 if result.obj[-1] > result.obj[-2] else -2
            for values in (result.obj, result.precision, result.recall):
                values[-2:] = [values[keep]]


class LocalisationMetric(Metric):
    """Shared by the five metrics: one :func:`localise` per item, one list per metric."""

    category = "localisation"
    needs_mask = True
    higher_is_better = True
    citation = cite("li2025tam")
    part: ClassVar[str] = ""
    Options = LocalisationOptions

    def measure(self, item: EvalItem) -> Parts:
        return {"value": list(getattr(localise(item, self.options), self.part))}


class ObjIoU(LocalisationMetric):
    name = "obj-iou"
    summary = "IoU of each noun's best token (Otsu-thresholded map) with its object's mask."
    part = "obj"


class FuncIoU(LocalisationMetric):
    name = "func-iou"
    summary = ("Share of the image a function word's map keeps below the mean noun "
               "threshold: high when words with no visual content light up nothing.")
    part = "func"


class Precision(LocalisationMetric):
    """Under tam-reference an empty foreground's precision is NaN, which the store refuses:
    ``measure`` keeps the finite entries in ``value`` and their count in ``undefined``, and
    the aggregate is NaN as soon as one sample has one, as the reference's pooled mean."""

    name = "precision"
    summary = "Share of the best noun token's foreground that lies on the object."
    part = "precision"
    pooled_means = ("value", "undefined")

    def measure(self, item: EvalItem) -> Parts:
        values = localise(item, self.options).precision
        if not self.options.opencv:
            return {"value": list(values)}
        finite = [v for v in values if not math.isnan(v)]
        return {"value": finite, "undefined": [len(values) - len(finite)]}

    def aggregate(self, parts: Sequence[Parts]) -> float:
        if any(n > 0 for p in parts for n in p.get("undefined", [])):
            return float("nan")
        return super().aggregate(parts)

    def from_means(self, value: np.ndarray, undefined: np.ndarray) -> np.ndarray:
        # ``undefined`` is NaN where no sample has the part (the default protocol)
        return np.where(undefined > 0, np.nan, value)


class Recall(LocalisationMetric):
    name = "recall"
    summary = "Share of the object the best noun token's foreground covers."
    part = "recall"


class F1IoU(LocalisationMetric):
    name = "f1-iou"
    summary = "Harmonic mean of the pooled Obj-IoU and Func-IoU: TAM's headline number."
    pooled_means = ("obj", "func")

    def measure(self, item: EvalItem) -> Parts:
        result = localise(item, self.options)
        return {"obj": list(result.obj), "func": list(result.func)}

    def aggregate(self, parts: Sequence[Parts]) -> float:
        obj = [v for p in parts for v in p.get("obj", [])]
        func = [v for p in parts for v in p.get("func", [])]
        return f1_iou(obj, func)

    def from_means(self, obj: np.ndarray, func: np.ndarray) -> np.ndarray:
        total = obj + func  # NaN where either has no entry, and then so is the F1
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(total == 0, 0.0, 2.0 * obj * func / total)


def f1_iou(obj: Sequence[float], func: Sequence[float]) -> float:
    """2·Obj·Func / (Obj + Func) of the pooled means; NaN if either has no entry."""
    if not obj or not func:
        return float("nan")
    o, f = float(np.mean(obj)), float(np.mean(func))
    return 2.0 * o * f / (o + f) if o + f > 0 else 0.0


@hookimpl
def register_metrics(register):
    for metric in (ObjIoU, FuncIoU, F1IoU, Precision, Recall):
        register(metric)
