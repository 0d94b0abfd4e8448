"""The TAM reference's evaluation (``eval.py`` of xmed-lab/TAM), restated for parity tests.

Written from the restatement in ``../shared/specs/tam.md`` (sections 6.2-6.5) and the
issue's list of the reference's behaviours, as plain loops over one word and one token at a
time, the way the reference runs; no code of mmxai's is used, so a test comparing the two
compares independent implementations. The libraries are the reference's own: NLTK's
perceptron tagger and WordNet lemmatiser, OpenCV's ``imread``, ``resize`` and Otsu
``threshold``.

Input per sample: the generated tokens as strings (each decoded on its own, with its
leading space; special tokens as their text), the uint8 token-grid maps (n, h, w) the
reference's TAM returns, the mask PNG's path (None or a missing file: no mask) and the
category table (name -> label, in the table's order).
"""

from __future__ import annotations

import os
import string
import unicodedata
from dataclasses import dataclass, field

import cv2
import nltk
import numpy as np
from nltk.stem import WordNetLemmatizer

FUNCTION_TAGS = {"CC", "DT", "EX", "MD", "POS", "PRP", "PRP$", "UH", "WDT", "WP", "WP$", "WRB"}
NOUN_TAGS = {"NN", "NNS", "NNP", "NNPS"}
_LEMMATIZER = WordNetLemmatizer()


def group_words(tokens: list[str]) -> list[tuple[str, list[int]]]:
    """Words and their token indices: a word starts at the first token, at a token whose
    text is a substring of ``string.punctuation``, at a CJK character and at a token that
    starts with a space (or SentencePiece's ``▁``); spaces are removed from the word."""
    words: list[tuple[str, list[int]]] = []
    for i, token in enumerate(tokens):
        cjk = any("CJK" in unicodedata.name(ch, "") for ch in token)
        starts = (i == 0 or token in string.punctuation or cjk or token.startswith(" ")
                  or token.startswith("▁"))
        text = token.replace("▁", " ").replace(" ", "")
        if starts:
            words.append((text, [i]))
        else:
            words[-1] = (words[-1][0] + text, words[-1][1] + [i])
    return words


def word_type(word: str) -> str:
    tag = nltk.pos_tag([word])[0][1]
    if tag in FUNCTION_TAGS:
        return "function"
    if tag in NOUN_TAGS:
        return "noun"
    return "other"


def word_label(word: str, categories: dict[str, int]) -> int:
    """The last category (in table order) one of whose name's parts is the word's lemma."""
    lemma = _LEMMATIZER.lemmatize(word.lower().replace("-", ""))
    label = -1
    for name, value in categories.items():
        for part in name.split():
            if part == lemma:
                label = int(value)
    return label


@dataclass
class SampleEntries:
    obj: list[float] = field(default_factory=list)
    precision: list[float] = field(default_factory=list)
    recall: list[float] = field(default_factory=list)
    func: list[float] = field(default_factory=list)
    thresholds: list[float] = field(default_factory=list)


def evaluate_sample(tokens: list[str], maps: np.ndarray, mask_path: str | None,
                    categories: dict[str, int]) -> SampleEntries:
    out = SampleEntries()
    maps = np.asarray(maps, dtype=np.uint8)
    if mask_path is not None and os.path.exists(mask_path):
        mask = cv2.imread(str(mask_path), cv2.IMREAD_GRAYSCALE)
    else:  # no mask: zeros at the map's own (token-grid) size
        mask = np.zeros(maps.shape[1:], dtype=np.uint8)
    words = group_words(tokens)
    labels: list[int | None] = []
    function_words: list[list[int]] = []
    for index, (word, token_ids) in enumerate(words):
        kind = word_type(word)
        labels.append(None)
        if kind == "function":
            function_words.append(token_ids)
            continue
        if kind != "noun":
            continue
        label = word_label(word, categories)
        labels[index] = label
        levels, ious, precisions, recalls = [], [], [], []
        for j in token_ids:
            resized = cv2.resize(maps[j], (mask.shape[1], mask.shape[0]))
            level, binary = cv2.threshold(resized, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
            levels.append(level)
            if label > 0:
                truth = mask == label
                if truth.sum() > 0:
                    predicted = binary > 0
                    hit = np.logical_and(truth, predicted).sum()
                    with np.errstate(invalid="ignore", divide="ignore"):
                        ious.append(hit / np.logical_or(truth, predicted).sum())
                        precisions.append(np.float64(hit) / np.float64(predicted.sum()))
                        recalls.append(hit / truth.sum())
        out.thresholds.append(max(levels))
        if ious:
            best = int(np.argmax(ious))
            out.obj.append(float(ious[best]))
            out.precision.append(float(precisions[best]))
            out.recall.append(float(recalls[best]))
        if label > 0 and index > 0 and labels[index - 1] == label and len(out.obj) > 1:
            keep = -1 if out.obj[-1] > out.obj[-2] else -2
            for values in (out.obj, out.precision, out.recall):
                values[-2:] = [values[keep]]
    if out.thresholds:
        level = float(np.mean(out.thresholds))
        for token_ids in function_words:
            out.func.append(float(np.mean([np.mean(maps[j] < level) for j in token_ids])))
    return out


def pooled(samples: list[SampleEntries]) -> dict[str, float]:
    """Obj-IoU, Func-IoU, F1-IoU, precision and recall over every entry of every sample."""
    obj = [v for s in samples for v in s.obj]
    func = [v for s in samples for v in s.func]

    def mean(values: list[float]) -> float:
        return float(np.mean(values)) if values else float("nan")

    o, f = mean(obj), mean(func)
    return {"obj-iou": o, "func-iou": f, "f1-iou": 2 * o * f / (o + f),
            "precision": mean([v for s in samples for v in s.precision]),
            "recall": mean([v for s in samples for v in s.recall])}
