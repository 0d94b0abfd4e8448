"""``--protocol tam-reference`` against the reference's evaluation, entry by entry.

The reference procedure is restated independently in ``tests/reference_eval.py`` (plain
loops over NLTK and OpenCV, written from the spec). Here crafted answers on a TAM-layout
COCO fixture hit every case the issue lists (the tagger's misreadings out of context,
WordNet lemmas, the glued end-of-answer marker, the last-match rule, Q5 merging, OpenCV's
resize and Otsu ties, flat maps, NaN precision, palette and 16-bit masks, a missing mask
file), and random answer sets cover the rest; each is scored by ``mmxai score --protocol
tam-reference`` from saved maps, and every per-sample entry list and every pooled metric
must equal the restatement's.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import reference_eval as ref
from fixtures.tam_fixture import write_coco_fixture
from PIL import Image

from mmxai import cli, protocols
from mmxai.evaluation import leaderboard
from mmxai.evaluation.leaderboard import load_rows
from mmxai.model import ImageGrid
from mmxai.saved_maps import save_maps
from mmxai.words import COCO_CATEGORIES

END = "<|im_end|>"

#: sample id -> the answer's tokens, each decoded on its own with its leading space.
CRAFTED = {
    # "dog" -> hot dog (58, last match; not in this mask), "man" and "dogs" -> no category
    # ("dogs" -> dog -> hot dog), the end marker glued to "." is a noun
    "42": [" A", " dog", " sits", " next", " to", " a", " man", " and", " his", " dogs", ".",
           END],
    # "hot" is an adjective alone, "dog" is hot dog (58, in this mask); "ov"+"en" is one
    # word the tagger calls an adverb; "plate" a noun without category; "dog<|im_end|>"
    # a noun (the marker glued on)
    "73": [" A", " hot", " dog", " on", " a", " plate", " near", " an", " ov", "en", " dog",
           END],
    # "There" EX, "cat cats" one label twice (Q5), "tvs" -> tv (72, absent), "vases" -> vas,
    # "people" stays people, "dining" not a noun but "table" -> dining table (67, absent),
    # "couch" 63 present; "purple"/"red" adjectives; "that" is IN (not a function word)
    "139": [" There", " is", " a", " black", " cat", " cats", " on", " the", " purple",
            " couch", " that", " has", " tvs", ",", " vases", " and", " people", " near",
            " a", " dining", " table", ".", END],
}
GRID = (6, 8)  # the maps' token grid (rows, cols); the fixture's images are 64 x 48


def crafted_maps(sample: str, tokens: list[str], rng: np.random.Generator) -> np.ndarray:
    """uint8 maps, random except the crafted ones: flat 0 (empty foreground, NaN precision),
    flat 200 (level 0: all foreground), equal thirds (an Otsu tie), a bright object."""
    maps = rng.integers(0, 256, size=(len(tokens), *GRID)).astype(np.uint8)
    words = [t.strip() for t in tokens]
    if sample == "139":
        maps[words.index("cat")] = 0  # with "cats" also 0, Q5 keeps the earlier (NaN) entry
        maps[words.index("cats")] = 0
        maps[words.index("table")] = np.repeat([[0, 100, 200]], 6, axis=0).repeat(3, axis=1)[
            :, :8].astype(np.uint8)  # equal thirds: an Otsu tie, in a noun's threshold
        maps[words.index("couch")][3:] = 230
    if sample == "73":
        maps[words.index("dog")] = 200
        maps[words.index("hot")][2:5, 1:7] = 255
    return maps


def write_masks(root: Path, kind: str) -> None:
    """Rewrite the fixture's masks as palette or 16-bit PNGs (same labels)."""
    for path in sorted((root / "seg_label").glob("*.png")):
        labels = np.asarray(Image.open(path))
        if kind == "palette":
            image = Image.fromarray(labels).convert("P")
            palette = [(i * 37) % 256 for i in range(768)]
            image.putpalette(palette)
            image.save(path)
        elif kind == "16-bit":
            Image.fromarray(labels.astype(np.uint16) * 257).save(path)


def score(capsys, data: Path, maps: Path, out: Path) -> None:
    code = cli.main(["score", "--dataset", "coco-caption", "--data-root", str(data), "--maps",
                     str(maps), "--protocol", "tam-reference", "--out", str(out),
                     "--bootstrap", "0", "--no-progress"])
    captured = capsys.readouterr()
    assert code == 0, captured.err


def stored_entries(out: Path) -> dict[str, dict[str, dict]]:
    """sample -> metric name -> parts, of the one run in ``out``."""
    rows, _ = load_rows([out])
    entries: dict[str, dict[str, dict]] = {}
    for row in rows:
        assert row.status == "ok", row.error
        entries.setdefault(row.sample_id, {})[row.metric.split("[")[0]] = row.parts
    return entries


def assert_same(mine: dict[str, dict], theirs: ref.SampleEntries, sample: str) -> None:
    assert mine["obj-iou"]["value"] == theirs.obj, sample
    assert mine["recall"]["value"] == theirs.recall, sample
    assert mine["func-iou"]["value"] == theirs.func, sample
    assert mine["f1-iou"]["obj"] == theirs.obj and mine["f1-iou"]["func"] == theirs.func
    finite = [v for v in theirs.precision if not math.isnan(v)]
    assert mine["precision"]["value"] == finite, sample
    assert sum(mine["precision"].get("undefined", [0])) == len(theirs.precision) - len(finite)


def assert_pooled(out: Path, expected: dict[str, float]) -> None:
    board = leaderboard([out], n_boot=0)
    (row,) = board.rows
    for label, cell in row.cells.items():
        want = expected[label.split("[")[0]]
        assert label.endswith("[protocol=tam-reference]")
        assert (math.isnan(cell.value) and math.isnan(want)) or cell.value == pytest.approx(
            want, abs=1e-12), label


def run_case(tmp_path: Path, capsys, answers: dict[str, list[str]], maps_of,
             missing: tuple[int, ...] = (), masks: str = "8-bit") -> dict[str, ref.SampleEntries]:
    info = write_coco_fixture(tmp_path / "coco2014", missing_masks=missing)
    write_masks(info["root"], masks)
    folder = tmp_path / "maps"
    grid = ImageGrid(image=0, positions=np.arange(GRID[0] * GRID[1]), shape=GRID)
    expected = {}
    for sample, tokens in answers.items():
        maps = maps_of(sample, tokens)
        save_maps(folder, sample, tokens, [t == END for t in tokens],
                  maps.reshape(len(tokens), -1).astype(np.float32) / 255.0, [grid])
        mask = info["root"] / "seg_label" / f"{int(sample):012d}.png"
        expected[sample] = ref.evaluate_sample(tokens, maps, str(mask), dict(COCO_CATEGORIES))
    out = tmp_path / "out"
    score(capsys, info["root"], folder, out)
    entries = stored_entries(out)
    for sample, theirs in expected.items():
        assert_same(entries[sample], theirs, sample)
    assert_pooled(out, ref.pooled(list(expected.values())))
    return expected


@pytest.mark.parametrize("masks", ["8-bit", "palette", "16-bit"])
def test_crafted_answers_score_as_the_reference(tmp_path, capsys, nltk_data, masks):
    rng = np.random.default_rng(7)
    expected = run_case(tmp_path, capsys, CRAFTED,
                        lambda sample, tokens: crafted_maps(sample, tokens, rng), masks=masks)
    if masks == "8-bit":  # the cases are really hit
        assert any(math.isnan(v) for v in expected["139"].precision)  # flat-0 "cat"
        # "dog" is hot dog (58) and in the mask; "dog<|im_end|>" and "plate" are nouns with
        # no category, whose thresholds count; "oven" (an adverb alone) is not a noun
        assert len(expected["73"].obj) == 1 and len(expected["73"].thresholds) == 3
        assert expected["42"].obj == []  # dog -> hot dog, absent; man -> nothing
        assert len(expected["139"].obj) == 2  # "cat cats" merged (Q5) and "couch"
    if masks == "palette":  # grey levels of the palette: no label is found
        assert all(not e.obj for e in expected.values())


def test_a_missing_mask_scores_at_the_grid_size(tmp_path, capsys, nltk_data):
    rng = np.random.default_rng(3)
    expected = run_case(tmp_path, capsys, CRAFTED,
                        lambda sample, tokens: crafted_maps(sample, tokens, rng), missing=(139,))
    assert expected["139"].obj == [] and expected["139"].func  # thresholds at 6 x 8 still count


#: Caption words to draw answers from: category words, their parts and plurals, words the
#: tagger misreads alone, function words, prepositions, numbers and punctuation.
POOL = ("a an the this there There it its his her they and or but can will which who "
        "of on in at near with to two three is are sitting standing red brown black white "
        "dog dogs hot cat cats bear teddy baseball glove person people man men woman child "
        "tv tvs vase vases oven microwave dining table potted plant couch sofa cell phone "
        "car cars bus train truck boat bird horse sheep cow zebra giraffe pizza donut cake "
        "chair bed toilet laptop mouse mice keyboard book clock scissors hair drier "
        "tooth-brush skate-board , . ! ( ) ; : ' -").split()


def random_answer(rng: np.random.Generator) -> list[str]:
    tokens = []
    for _ in range(int(rng.integers(3, 24))):
        word = str(rng.choice(POOL))
        if len(word) > 4 and rng.random() < 0.3:  # a word split over two tokens
            cut = int(rng.integers(1, len(word)))
            tokens += [" " + word[:cut], word[cut:]]
        else:
            tokens.append(word if word in ",.!();:'-" else " " + word)
    return tokens + ([END] if rng.random() < 0.8 else [])


def random_maps(tokens: list[str], rng: np.random.Generator) -> np.ndarray:
    maps = rng.integers(0, 256, size=(len(tokens), *GRID)).astype(np.uint8)
    for j in range(len(tokens)):
        roll = rng.random()
        if roll < 0.1:
            maps[j] = 0
        elif roll < 0.2:
            maps[j] = rng.integers(1, 256)
        elif roll < 0.35:  # few grey levels: Otsu ties
            maps[j] = rng.choice([0, 64, 128, 255], size=GRID)
    return maps


@pytest.mark.parametrize("seed", range(12))
def test_random_answer_sets_score_as_the_reference(tmp_path, capsys, nltk_data, seed):
    rng = np.random.default_rng(1000 + seed)
    answers = {sample: random_answer(rng) for sample in CRAFTED}
    run_case(tmp_path, capsys, answers, lambda sample, tokens: random_maps(tokens, rng),
             missing=(73,) if seed % 3 == 0 else ())


def test_protocol_is_refused_in_one_line_without_its_extra(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "cv2", None)
    with pytest.raises(protocols.ProtocolUnavailable) as caught:
        protocols.require("tam-reference")
    assert "mmxai[tam-protocol]" in str(caught.value) and "\n" not in str(caught.value)
