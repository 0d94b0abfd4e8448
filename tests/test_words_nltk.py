"""The TAM reference's word typing (tagger="nltk"): NLTK tags of isolated words, WordNet lemmas.

Runs on the shared offline NLTK data (the ``nltk_data`` fixture); the expected tags and
lemmas are those of that data, which match the reference's NLTK 3.8.1 setup.
"""

import os
import subprocess
import sys
from pathlib import Path

import nltk
import pytest

from mmxai import nltk_words, protocols
from mmxai.nltk_words import kind_of, noun_lemma, pos_tag, reference_label
from mmxai.protocols import ProtocolUnavailable
from mmxai.words import COCO_CATEGORIES, WordOptions, label_words, words_from_tokens

TAGGED = WordOptions(reference_compatible=True, tagger="nltk")
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _offline_nltk_data(nltk_data):
    """Every test here needs the shared tagger and WordNet data."""


def answer(*words, eos="<|im_end|>"):
    """Byte-level-BPE-like pieces of an answer ending in EOS, and which pieces are special."""
    pieces = [(" " if i and w not in ".," else "") + w for i, w in enumerate(words)] + [eos]
    return pieces, [False] * len(words) + [True]


def tagged(*words, options=TAGGED, **kwargs):
    pieces, special = answer(*words)
    return words_from_tokens(pieces, COCO_CATEGORIES, special=special, options=options,
                             **kwargs)


def by_text(words):
    return {w.text: (w.kind, w.label) for w in words}


# -- through words_from_tokens -------------------------------------------------------------
def test_the_protocol_types_a_caption_like_the_reference():
    pieces = [" A", " dog", " sitting", " on", " a", " red", " couch", ".", "<|im_end|>"]
    special = [False] * 8 + [True]
    words = words_from_tokens(pieces, COCO_CATEGORIES, special=special,
                              options=protocols.get("tam-reference").words)
    assert [(w.text, w.tokens, w.kind, w.label) for w in words] == [
        ("A", [0], "function", None),
        ("dog", [1], "noun", 58),  # last match: hot dog
        ("sitting", [2], "other", None),
        ("on", [3], "other", None),  # IN is not a function tag
        ("a", [4], "function", None),
        ("red", [5], "other", None),  # JJ: colours are not nouns
        ("couch", [6], "noun", 63),
        (".<|im_end|>", [7, 8], "noun", None),  # NN, a noun without object
    ]


def test_adjective_parts_of_category_names_are_not_nouns():
    words = by_text(tagged("A", "hot", "dog", "on", "a", "dining", "table", "by", "a",
                           "potted", "plant", "and", "an", "oven", "."))
    assert words["hot"] == ("other", None)
    assert words["dog"] == ("noun", 58)
    assert words["dining"] == ("other", None)
    assert words["table"] == ("noun", 67)
    assert words["potted"] == ("other", None)
    assert words["plant"] == ("noun", 64)
    assert words["oven"] == ("other", None)  # tagged RB alone, though NN in a sentence
    assert words["and"] == ("function", None)


def test_wordnet_lemmas_decide_the_label():
    words = by_text(tagged("Two", "people", "near", "tvs", "and", "vases", "."))
    assert words["people"] == ("noun", None)  # WordNet keeps "people": no person
    assert words["tvs"] == ("noun", 72)
    assert words["vases"] == ("noun", None)  # WordNet's "vas", not vase
    assert words["Two"] == ("other", None)  # CD is not a function tag


def test_a_word_glued_to_eos_is_an_unlabelled_noun():
    words = tagged("A", "dog")
    assert [(w.text, w.tokens, w.kind, w.label) for w in words] == [
        ("A", [0], "function", None), ("dog<|im_end|>", [1, 2], "noun", None)]


def test_each_word_is_tagged_alone_in_its_own_case():
    words = by_text(tagged("There", "is", "a", "dog", "there", "."))
    assert words["There"] == ("function", None)  # EX
    assert words["there"] == ("other", None)  # RB
    assert words["is"] == ("other", None)  # a verb to the tagger: no auxiliaries list


def test_prepositions_and_numbers_options_add_their_tags():
    options = WordOptions(reference_compatible=True, tagger="nltk", prepositions=True,
                          numbers=True)
    words = by_text(tagged("Two", "dogs", "on", "a", "couch", options=options))
    assert words["Two"] == ("function", None)
    assert words["on"] == ("function", None)
    assert words["dogs"] == ("noun", 58)


def test_the_tagger_with_mmxai_matching_keeps_whole_phrases():
    options = WordOptions(tagger="nltk")  # NLTK kinds, default grouping and phrase matching
    words = by_text(tagged("Two", "men", "eat", "a", "hot", "dog", "by", "a", "dog", ".",
                           options=options))
    assert "." in words and not any("<|im_end|>" in w for w in words)
    assert words["men"] == ("noun", 1)  # synonyms: men -> person
    assert words["hot"] == ("other", None)  # in the phrase hot dog, but an adjective
    first, second = [w for w in tagged("a", "hot", "dog", "by", "a", "dog", options=options)
                     if w.text == "dog"]
    assert (first.label, second.label) == (58, 18)


def test_word_labels_set_the_label_but_the_tagger_the_kind():
    labels = {"dog": 7, "red": 3, "hot dog": 9}
    words = tagged("A", "red", "dog", "and", "a", "hot", "dog", word_labels=labels)
    got = [(w.text, w.kind, w.label) for w in words]
    assert got == [("A", "function", None), ("red", "other", None),
                   ("dog", "noun", 7), ("and", "function", None), ("a", "function", None),
                   ("hot", "other", None), ("dog<|im_end|>", "noun", None)]
    words = label_words([("A", [0]), ("hot", [1]), ("dog", [2])], COCO_CATEGORIES,
                        word_labels={"hot dog": 9}, options=TAGGED)
    assert [(w.kind, w.label) for w in words] == [("function", None), ("other", None),
                                                  ("noun", 9)]


# -- the helpers directly ------------------------------------------------------------------
@pytest.mark.parametrize(("word", "tag"), [
    ("hot", "JJ"), ("dining", "VBG"), ("potted", "VBN"), ("oven", "RB"), ("red", "JJ"),
    (".<|im_end|>", "NN"), ("dog<|im_end|>", "NN"), ("tvs", "NNS"), ("There", "EX"),
])
def test_pos_tag_of_the_issue_examples(word, tag):
    assert pos_tag(word) == tag


def test_noun_lemmas_are_wordnets():
    assert noun_lemma("people") == "people"
    assert noun_lemma("tvs") == "tv"
    assert noun_lemma("vases") == "vas"
    assert noun_lemma("Mice") == "mouse"  # lowercased first
    assert noun_lemma("hot-dog") == "hotdog"  # hyphens dropped
    assert noun_lemma("dog<|im_end|>") == "dog<|im_end|>"


def test_the_last_matching_category_wins():
    assert reference_label("dog", COCO_CATEGORIES) == 58
    assert reference_label("bear", COCO_CATEGORIES) == 88
    assert reference_label("dog", {"hot dog": 58, "dog": 18}) == 18  # order, not length
    assert reference_label("tvs", COCO_CATEGORIES) == 72
    assert reference_label("people", COCO_CATEGORIES) is None
    assert reference_label(".<|im_end|>", COCO_CATEGORIES) is None


def test_category_names_are_compared_as_written():
    assert reference_label("dog", {"Dog": 5}) is None  # names are not lowercased
    assert reference_label("dogs", {"dogs": 5}) is None  # nor lemmatised: dogs -> dog
    assert reference_label("Dogs", {"brown dog": 5}) == 5


def test_kind_of_maps_the_reference_tags():
    assert [kind_of(t) for t in ("PRP$", "WP$", "POS", "UH", "NNPS", "NNP", "IN", "TO", "CD",
                                 "VBZ", "JJ", "RB", ".")] == (
        ["function"] * 4 + ["noun"] * 2 + ["other"] * 7)


# an independent restatement of the reference's tag sets, to check nltk_words' mapping
FUNCTION = {"CC", "DT", "EX", "MD", "POS", "PRP", "PRP$", "UH", "WDT", "WP", "WP$", "WRB"}
NOUN = {"NN", "NNS", "NNP", "NNPS"}
CAPTION_WORDS = (
    "The A an that there There is are was of in on to with near two three 2 hot dog people "
    "tvs vases oven dining potted table red white brown sitting running his their it they "
    "which who where and or but can will some each man men cat bear teddy Hello yes"
).split()


def test_kinds_agree_with_nltk_pos_tag_on_each_word_alone():
    expected = []
    for word in CAPTION_WORDS:
        [(_, tag)] = nltk.pos_tag([word])
        expected.append("function" if tag in FUNCTION else "noun" if tag in NOUN else "other")
    pieces = [" " + w for w in CAPTION_WORDS]
    words = words_from_tokens(pieces, COCO_CATEGORIES, options=TAGGED)
    assert [w.text for w in words] == CAPTION_WORDS
    assert [w.kind for w in words] == expected
    kinds = dict(zip(CAPTION_WORDS, expected, strict=True))
    assert {kinds[w] for w in ("that", "there", "is", "of", "two", "hot", "oven")} == {"other"}
    assert [kinds[w] for w in ("dog", "people", "tvs", "vases", "There", "his")] == (
        ["noun"] * 4 + ["function"] * 2)


def test_pos_tag_is_cached():
    pos_tag.cache_clear()
    tagged("A", "dog", "and", "a", "dog", ".")
    info = pos_tag.cache_info()
    assert (info.misses, info.hits) == (5, 1)  # the second "dog" is a hit


# -- missing NLTK or data ------------------------------------------------------------------
@pytest.fixture
def fresh_require(monkeypatch):
    """require() rechecks (its success is cached), and is reset for the other tests."""
    nltk_words.require.cache_clear()
    yield nltk_words.require
    monkeypatch.undo()
    nltk_words.require.cache_clear()


def test_require_refuses_missing_data_in_one_line(fresh_require, monkeypatch, tmp_path):
    monkeypatch.setattr(nltk.data, "path", [str(tmp_path)])
    with pytest.raises(ProtocolUnavailable) as caught:
        fresh_require()
    message = str(caught.value)
    assert "\n" not in message
    assert protocols.NLTK_DOWNLOAD in message and "NLTK_DATA" in message
    assert "taggers/averaged_perceptron_tagger_eng" in message and "corpora/wordnet" in message


def test_require_names_only_the_missing_resource(fresh_require, monkeypatch, tmp_path,
                                                 nltk_data):
    (tmp_path / "taggers").symlink_to(nltk_data / "taggers")
    monkeypatch.setattr(nltk.data, "path", [str(tmp_path)])
    with pytest.raises(ProtocolUnavailable, match="corpora/wordnet") as caught:
        fresh_require()
    assert "taggers/" not in str(caught.value)


def test_labelling_without_data_raises_the_one_line_error(fresh_require, monkeypatch,
                                                          tmp_path):
    monkeypatch.setattr(nltk.data, "path", [str(tmp_path)])
    with pytest.raises(ProtocolUnavailable, match="nltk.downloader"):
        tagged("A", "dog")


def test_require_names_the_extra_without_nltk(fresh_require, monkeypatch):
    monkeypatch.setitem(sys.modules, "nltk", None)  # `import nltk` raises ImportError
    with pytest.raises(ProtocolUnavailable) as caught:
        fresh_require()
    assert protocols.EXTRA in str(caught.value) and "\n" not in str(caught.value)


def test_require_passes_with_the_shared_data(fresh_require):
    fresh_require()
    assert protocols.require("default").name == "default"


def test_the_default_tagger_never_imports_nltk():
    code = (
        "import sys\n"
        "from mmxai.words import COCO_CATEGORIES, WordOptions, words_from_tokens\n"
        "pieces = [' A', ' dog', ' on', ' a', ' red', ' couch', '.', '<|im_end|>']\n"
        "for options in (None, WordOptions(reference_compatible=True)):\n"
        "    words = words_from_tokens(pieces, COCO_CATEGORIES, special=[False] * 7 + [True],\n"
        "                              options=options)\n"
        "    assert [w.kind for w in words][:2] == ['function', 'noun'], words\n"
        "assert 'nltk' not in sys.modules\n"
        "print('ok')\n")
    run = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                         text=True, env=os.environ.copy(), timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "ok"
