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
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import numpy as np
from skimage.filters import threshold_otsu

from mmxai.citations import cite
from mmxai.hookspecs import hookimpl
from mmxai.maps import minmax, resize, to_image
from mmxai.metric import EvalItem, Metric, Parts


@dataclass(frozen=True)
class LocalisationOptions:
    """``reference_compatible``: reproduce the reference where it differs (see module doc);
    ``protocol="tam-reference"``: the reference's evaluation exactly (OpenCV's mask reading,
    resize and Otsu; NaN precision; docs/evaluation.md)."""

    reference_compatible: bool = False
    protocol: Literal["default", "tam-reference"] = "default"


@dataclass
class Localisation:
    """One sample's pooled entries: per noun object, per function word, per noun threshold."""

    obj: list[float] = field(default_factory=list)
    precision: list[float] = field(default_factory=list)
    recall: list[float] = field(default_factory=list)
    func: list[float] = field(default_factory=list)
    thresholds: list[float] = field(default_factory=list)


def quantise(maps: np.ndarray) -> np.ndarray:
    """(G, N) maps -> uint8 floor(255 x), the reference's output format.

    Maps already in [0, 1] (TAM's) are used as they are; any other range is min-max scaled
    over the whole sample first, which keeps the tokens comparable with each other (Func-IoU
    compares function-word maps with noun thresholds).
    """
    maps = np.nan_to_num(np.asarray(maps, dtype=np.float32), nan=0.0)  # NaN: no evidence
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


def token_scores(image_map: np.ndarray, truth: np.ndarray, tau: float) -> tuple[float, float,
                                                                                float]:
    """(IoU, precision, recall) of ``image_map > tau`` against the boolean mask ``truth``.

    ``truth`` must be non-empty; an empty foreground gives IoU 0 and precision 0 (the
    reference divides by zero, Q9).
    """
    predicted = image_map > tau
    hit = float(np.count_nonzero(predicted & truth))
    union = float(np.count_nonzero(predicted | truth))
    n_pred = float(np.count_nonzero(predicted))
    return hit / union, (hit / n_pred if n_pred else 0.0), hit / float(np.count_nonzero(truth))


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
    mask = np.asarray(item.mask)
    grid_maps = quantise(item.maps)
    reference = options.reference_compatible
    image_maps: dict[int, tuple[np.ndarray, float]] = {}

    def image_map(token: int) -> tuple[np.ndarray, float]:
        """Token ``token``'s uint8 map in the mask's frame and its Otsu level."""
        if token not in image_maps:
            if not 0 <= token < len(grid_maps):
                raise ValueError(f"word token {token} has no map: the sample has "
                                 f"{len(grid_maps)} maps")
            painted = _paint(grid_maps[token], item.trace.grids, mask.shape, reference)
            quantised = np.clip(np.rint(painted), 0, 255).astype(np.uint8)
            image_maps[token] = quantised, otsu(quantised, reference)
        return image_maps[token]

    words = list(item.words)
    for word in words:
        if word.kind == "noun":
            result.thresholds.append(max(image_map(j)[1] for j in word.tokens))
    objects = _objects_reference if reference else _objects
    objects(words, mask, image_map, result)

    if result.thresholds:
        level = float(np.mean(result.thresholds))
        for word in words:
            if word.kind == "function" and word.tokens:
                below = [float(np.mean(grid_maps[j] < level)) for j in word.tokens]
                result.func.append(float(np.mean(below)))
    return result


def _paint(grid_map: np.ndarray, grids: Sequence[Any], size: tuple[int, int],
           stretch: bool) -> np.ndarray:
    """A token's flat map in the frame of image 0; ``stretch`` ignores a lone grid's box."""
    flat = grid_map.astype(np.float32)
    own = [g for g in grids if g.image == 0 and g.frame == 0]
    if stretch and len(own) == 1:
        grid = own[0]
        return resize(flat[grid.offset:grid.offset + grid.size].reshape(grid.shape), size)
    return to_image(flat, grids, image=0, size=size)


def _best(tokens: Sequence[int], truth: np.ndarray, image_map: Any) -> tuple[float, float,
                                                                             float]:
    """The token with the highest IoU (the first on ties) and its precision and recall."""
    scores = []
    for token in tokens:
        token_map, tau = image_map(token)
        scores.append(token_scores(token_map, truth, tau))
    return max(scores, key=lambda s: s[0])


def _objects(words: Sequence[Any], mask: np.ndarray, image_map: Any,
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
                iou, precision, recall = _best(tokens, truth, image_map)
                result.obj.append(iou)
                result.precision.append(precision)
                result.recall.append(recall)
        start = end


def _objects_reference(words: Sequence[Any], mask: np.ndarray, image_map: Any,
                       result: Localisation) -> None:
    """The reference's loop: an entry per word, then the last two entries merged whenever
    the previous word has the same label, even when this word added no entry (Q5)."""
    for i, word in enumerate(words):
        label = word.label if word.kind == "noun" else None
        if label is None or label <= 0:
            continue
        truth = mask == label
        if truth.any() and word.tokens:
            iou, precision, recall = _best(word.tokens, truth, image_map)
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
    name = "precision"
    summary = "Share of the best noun token's foreground that lies on the object."
    part = "precision"


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
