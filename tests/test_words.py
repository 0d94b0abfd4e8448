"""Words and labels: grouping token strings, kinds, lemmas, synonyms, phrase matching."""

import pytest

from mmxai.words import (
    COCO_CATEGORIES,
    Word,
    WordOptions,
    group_tokens,
    label_words,
    lemma,
    token_pieces,
    words_from_tokens,
)

REFERENCE = WordOptions(reference_compatible=True)


def texts(groups):
    return [text for text, _ in groups]


def labelled(caption, options=None, categories=COCO_CATEGORIES, **kwargs):
    """Words of a whitespace-tokenised caption (one token per word, BPE-style spaces)."""
    pieces = [("Ġ" if i else "") + t for i, t in enumerate(caption.split())]
    return words_from_tokens(pieces, categories, options=options, **kwargs)


def by_text(words):
    return {w.text: (w.kind, w.label) for w in words}


# -- grouping -------------------------------------------------------------------------------------
def test_bpe_grouping_drops_eos_and_joins_subwords():
    pieces = ["The", "Ġhot", "Ġdog", "Ġis", "Ġdel", "icious", ".", "<|im_end|>"]
    special = [False] * 7 + [True]
    groups = group_tokens(pieces, special)
    assert groups == [("The", [0]), ("hot", [1]), ("dog", [2]), ("is", [3]),
                      ("delicious", [4, 5]), (".", [6])]


def test_reference_grouping_glues_eos_to_the_last_word():
    pieces = ["The", "Ġdog", ".", "<|im_end|>"]
    groups = group_tokens(pieces, [False, False, False, True], reference_compatible=True)
    assert groups == [("The", [0]), ("dog", [1]), (".<|im_end|>", [2, 3])]


def test_sentencepiece_grouping():
    pieces = ["▁A", "▁ted", "dy", "▁bear", "▁on", "▁the", "▁so", "fa", ".", "</s>"]
    groups = group_tokens(pieces, [False] * 9 + [True])
    assert groups == [("A", [0]), ("teddy", [1, 2]), ("bear", [3]), ("on", [4]),
                      ("the", [5]), ("sofa", [6, 7]), (".", [8])]


def test_decoded_pieces_with_leading_spaces_group_like_raw_ones():
    raw = ["A", "Ġcat", "Ġsle", "eps", "."]
    decoded = ["A", " cat", " sle", "eps", "."]
    assert group_tokens(raw) == group_tokens(decoded)


def test_punctuation_is_its_own_word_but_hyphens_and_apostrophes_join():
    pieces = ["A", "Ġwell", "-", "known", "Ġ(", "red", ")", "Ġdog", "'s", "Ġbone", ","]
    assert texts(group_tokens(pieces)) == ["A", "well-known", "(", "red", ")", "dog's", "bone",
                                           ","]


def test_reference_punctuation_is_a_substring_test():
    # "()" and "" are substrings of string.punctuation: each starts a word in the reference;
    # a word after punctuation keeps growing ("(red").
    pieces = ["A", "()", "x", "", "y", "Ġ(", "red"]
    assert texts(group_tokens(pieces, reference_compatible=True)) == ["A", "()x", "y", "(red"]
    assert texts(group_tokens(pieces)) == ["A", "()", "xy", "(", "red"]


def test_newlines_separate_words_except_in_reference_mode():
    pieces = [" cat", ".", "\n\n", "The", " dog"]
    assert texts(group_tokens(pieces)) == ["cat", ".", "The", "dog"]
    assert texts(group_tokens(pieces, reference_compatible=True)) == ["cat", ".\n\nThe", "dog"]


def test_split_multibyte_characters_stay_in_their_word():
    # byte-level BPE splits "é" over two tokens that each decode to U+FFFD
    assert texts(group_tokens([" caf", "\ufffd", "\ufffd", " is"])) == ["caf\ufffd\ufffd", "is"]


def test_cjk_characters_are_words():
    assert texts(group_tokens(["一", "只", "狗", "Ġdog"])) == ["一", "只", "狗", "dog"]


# -- lemmas ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("plural, singular", [
    ("dogs", "dog"), ("people", "person"), ("men", "man"), ("women", "woman"),
    ("children", "child"), ("mice", "mouse"), ("teeth", "tooth"), ("feet", "foot"),
    ("knives", "knife"), ("buses", "bus"), ("boxes", "box"), ("benches", "bench"),
    ("glasses", "glass"), ("ladies", "lady"), ("cookies", "cookie"), ("gloves", "glove"),
    ("shoes", "shoe"), ("firemen", "fireman"), ("bus", "bus"), ("grass", "grass"),
])
def test_lemma(plural, singular):
    assert lemma(plural) == singular


# -- kinds and labels -----------------------------------------------------------------------------
def test_dog_is_dog_and_hot_dog_is_hot_dog():
    words = labelled("A dog and a hot dog near a teddy bear and a bear")
    got = [(w.text, w.label) for w in words if w.kind == "noun"]
    assert got == [("dog", 18), ("hot", 58), ("dog", 58), ("teddy", 88), ("bear", 88),
                   ("bear", 23)]


def test_reference_matching_is_last_match_wins():
    words = labelled("dog bear baseball hair person", options=REFERENCE)
    assert [w.label for w in words] == [58, 88, 40, 89, 1]


def test_person_synonyms():
    words = labelled("A man , two women , some people , a boy , children and a player")
    persons = [w.text for w in words if w.label == 1]
    assert persons == ["man", "women", "people", "boy", "children", "player"]
    # The reference has no synonyms: a man is a noun with no category (label -1 there).
    reference = by_text(labelled("A man rides", options=REFERENCE))
    assert reference["man"] == ("noun", None)


@pytest.mark.parametrize("caption, expected", [
    ("two bikes", 2), ("a plane", 5), ("a motorbike", 4), ("the television", 72),
    ("a sofa", 63), ("my phone", 77), ("the cell phones", 77), ("teddy bears", 88),
    ("wine glasses", 46), ("three knives", 49), ("the buses", 6), ("skis", 35),
])
def test_synonyms_and_plurals_map_to_categories(caption, expected):
    nouns = [w for w in labelled(caption) if w.kind == "noun"]
    assert nouns and all(w.label == expected for w in nouns)


def test_phrases_do_not_span_punctuation():
    assert [w.label for w in labelled("hot , dog")] == [None, None, 18]


def test_synonyms_follow_the_datasets_names():
    voc = {"person": 15, "sofa": 18, "tvmonitor": 20, "motorbike": 14}
    words = labelled("a man on a couch watching tv beside a motorcycle", categories=voc)
    assert {w.text: w.label for w in words if w.label} == {
        "man": 15, "couch": 18, "tv": 20, "motorcycle": 14}


def test_head_nouns_of_descriptive_phrases():
    categories = {"brown dog": 1, "a red blanket": 2, "tree-merged": 3, "hot dog": 4}
    words = labelled("The dog lies on the blanket under trees", categories=categories)
    assert {w.text: w.label for w in words if w.label} == {"dog": 1, "blanket": 2, "trees": 3}
    words = labelled("The dog", categories=categories,
                     options=WordOptions(head_nouns=False))
    assert all(w.label is None for w in words)


def test_function_words_and_options():
    words = by_text(labelled("There is a dog which can run on two legs and his cat"))
    assert {t for t, (kind, _) in words.items() if kind == "function"} == {
        "There", "is", "a", "which", "can", "and", "his"}
    assert words["on"] == ("other", None) and words["two"] == ("other", None)
    wide = by_text(labelled("a dog on two legs",
                            options=WordOptions(prepositions=True, numbers=True)))
    assert wide["on"][0] == "function" and wide["two"][0] == "function"
    # auxiliaries are verbs to the reference's tagger
    assert by_text(labelled("it is", options=REFERENCE))["is"] == ("other", None)


def test_common_nouns_are_nouns_without_label():
    words = by_text(labelled("a dog on the grass near a street"))
    assert words["grass"] == ("noun", None) and words["street"] == ("noun", None)
    assert words["near"] == ("other", None)
    custom = by_text(labelled("a dog on the grass near a kiosk",
                              options=WordOptions(common_nouns=("kiosk",))))
    assert custom["kiosk"] == ("noun", None) and custom["grass"] == ("other", None)


def test_word_labels_override_category_matching():
    words = labelled("a red square and a circle near a dog",
                     word_labels={"red square": 2, "circle": 1})
    assert {w.text: w.label for w in words if w.kind == "noun"} == {
        "red": 2, "square": 2, "circle": 1}


def test_label_words_keeps_token_indices():
    words = label_words([("dog", [3, 4]), (".", [5])], COCO_CATEGORIES)
    assert words == [Word("dog", [3, 4], "noun", 18), Word(".", [5], "other", None)]


# -- real tokenizers ------------------------------------------------------------------------------
def test_token_pieces_byte_level_bpe():
    from mmxai.plugins.models.tiny import train_tokenizer

    tok = train_tokenizer(["<|im_end|>"], eos_token="<|im_end|>")
    ids = tok("A dog and two people near the table.")["input_ids"]
    ids.append(tok.convert_tokens_to_ids("<|im_end|>"))
    pieces, special = token_pieces(tok, ids)
    assert len(pieces) == len(ids) and special == [False] * (len(ids) - 1) + [True]
    assert "".join(pieces[:-1]) == "A dog and two people near the table."
    words = words_from_tokens(pieces, COCO_CATEGORIES, special=special)
    assert [w.text for w in words] == ["A", "dog", "and", "two", "people", "near", "the",
                                       "table", "."]
    assert all(len(ids) - 1 not in w.tokens for w in words)  # EOS is in no word


def test_token_pieces_sentencepiece():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE(unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Metaspace()
    backend.decoder = decoders.Metaspace()
    trainer = trainers.BpeTrainer(vocab_size=200, special_tokens=["<unk>", "</s>"],
                                  show_progress=False)
    backend.train_from_iterator(["a dog near the sofa . the cat sat on a sofa"] * 4, trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="</s>",
                                  unk_token="<unk>")
    ids = tok("a dog near the sofa.")["input_ids"] + [tok.eos_token_id]
    assert tok.convert_ids_to_tokens(ids)[1] == "▁dog"
    pieces, special = token_pieces(tok, ids)
    assert pieces[1] == " dog" and special[-1]
    words = words_from_tokens(pieces, COCO_CATEGORIES, special=special)
    assert [(w.text, w.label) for w in words] == [
        ("a", None), ("dog", 18), ("near", None), ("the", None), ("sofa", 63), (".", None)]
