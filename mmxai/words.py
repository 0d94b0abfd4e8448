"""Words and labels: generated tokens grouped into words, each with a kind and a mask label.

The localisation metrics score *words*, not tokens: a noun is scored against the mask of its
category, a function word against the whole background. This module turns the generated
token strings into :class:`Word` objects, by default in pure Python, without NLTK data:

1. :func:`group_tokens` groups the token strings into words (TAM's rules, read on the token
   strings directly instead of a decode/re-tokenize round trip, so word and map indices can
   never drift apart; special tokens such as EOS belong to no word);
2. :func:`label_words` gives each word a kind (``"noun"``, ``"function"``, ``"other"``) from a
   closed-class word list and a label from the sample's categories: whole-phrase matching
   with a small lemmatiser and a synonym table ("men" -> person, "dog" -> dog and never
   hot dog).

:class:`WordOptions` holds every choice; ``reference_compatible=True`` reproduces the TAM
reference's grouping and its last-match-wins, part-of-a-name category matching, and with
``tagger="nltk"`` its NLTK word types and WordNet lemmas too (:mod:`mmxai.nltk_words`).

The word lists, the COCO categories, the synonyms and :func:`lemma` live in
:mod:`mmxai.lexicon` and are importable from here too.
"""

from __future__ import annotations

import functools
import re
import string
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from mmxai.lexicon import (
    AUXILIARIES,
    COCO_CATEGORIES,
    COMMON_NOUNS,
    COMPOUNDS,
    CONJUNCTIONS,
    DETERMINERS,
    EXISTENTIAL,
    INTERJECTIONS,
    MODALS,
    NUMBERS,
    PERSON_WORDS,
    POSSESSIVES,
    PREPOSITIONS,
    PRONOUNS,
    REFERENCE_FUNCTION_WORDS,
    SYNONYMS,
    WH_WORDS,
    lemma,
)

Kind = Literal["noun", "function", "other"]

_SPACE_MARKERS = ("Ġ", "▁")  # byte-level BPE and SentencePiece word-start markers


@dataclass
class Word:
    """One word of the answer: ``tokens`` are indices into the generated tokens (and maps)."""

    text: str
    tokens: list[int]
    kind: Kind = "other"
    label: int | None = None


@dataclass(frozen=True)
class WordOptions:
    """Every choice :func:`label_words` makes; the defaults fix the reference's quirks.

    ``reference_compatible`` reproduces the reference where that needs no NLTK data: its
    grouping (EOS glued to the last word, the punctuation-substring rule), no auxiliaries,
    no synonyms, and its matching (each part of a category name compared with the
    lemmatised word, the last matching category wins: "dog" -> hot dog, Q4). With
    ``tagger="nltk"`` as well it is the reference exactly (the ``tam-reference`` protocol).
    """

    reference_compatible: bool = False
    # "lists": kinds from the closed-class lists (no NLTK data); "nltk": the TAM reference's
    # typing, NLTK's perceptron tagger on each isolated word and WordNet lemmas (mmxai.nltk_words)
    tagger: Literal["lists", "nltk"] = "lists"
    prepositions: bool = False  # count prepositions (IN, TO) as function words
    numbers: bool = False  # count numbers (CD) as function words
    auxiliaries: bool = True  # count be/have/do forms as function words
    synonyms: Mapping[str, str] | None = None  # phrase -> canonical name; None: SYNONYMS
    common_nouns: tuple[str, ...] | None = None  # None: COMMON_NOUNS
    head_nouns: bool = True  # a non-compound multi-word name also matches its last word

    def function_words(self) -> frozenset[str]:
        words = set(REFERENCE_FUNCTION_WORDS)
        if self.auxiliaries and not self.reference_compatible:
            words |= AUXILIARIES
        if self.prepositions:
            words |= PREPOSITIONS
        if self.numbers:
            words |= NUMBERS
        return frozenset(words)


# -- grouping ----------------------------------------------------------------------------------
def _is_punctuation(text: str) -> bool:
    # U+FFFD is half of a character split over byte-level tokens: part of a word
    return bool(text) and all(
        ch in string.punctuation or (unicodedata.category(ch)[0] in "PS" and ch != "\ufffd")
        for ch in text)


def _has_cjk(text: str) -> bool:
    return any("CJK" in unicodedata.name(ch, "") for ch in text)


def _normalise_piece(piece: str) -> str:
    """A raw piece's word-start marker (``Ġ``, ``▁``) becomes a leading space."""
    if piece[:1] in _SPACE_MARKERS:
        return " " + piece[1:]
    return piece


def group_tokens(pieces: Sequence[str], special: Sequence[bool] | None = None, *,
                 reference_compatible: bool = False) -> list[tuple[str, list[int]]]:
    """Group token strings into words: ``[(text, token indices), ...]``.

    ``pieces`` are the generated tokens as strings, either decoded one by one with their
    leading space (``" cat"``) or raw (``"Ġcat"``, ``"▁cat"``). A new word starts at the
    first token, a punctuation token, a CJK character and a token that starts with a space.
    Spaces are removed from the word text.

    Default: special tokens (``special[i]`` true, e.g. EOS) belong to no word; a punctuation
    token is a word of its own (``"cat."`` -> ``cat``, ``.``) except an intra-word hyphen or
    apostrophe (``"well-known"``); whitespace-only tokens separate words.
    ``reference_compatible``: TAM's exact rule, a token whose text is a *substring* of
    ``string.punctuation`` starts a word, everything else without a leading space joins the
    previous word, special tokens included (``".<|im_end|>"``, Q14).
    """
    texts = [_normalise_piece(p) for p in pieces]
    special = list(special) if special is not None else [False] * len(texts)
    if reference_compatible:
        return _group_reference(texts)
    words: list[tuple[str, list[int]]] = []
    boundary = True  # the next token starts a new word
    for i, text in enumerate(texts):
        if special[i]:
            boundary = True
            continue
        core = text.strip()
        if not core:
            boundary = boundary or bool(text)  # whitespace separates, an empty piece does not
            continue
        if _is_punctuation(core) and not _joins(texts, special, i, boundary):
            words.append((core, [i]))
            boundary = True
        else:
            if boundary or text[0].isspace() or _has_cjk(core) or not words:
                words.append((re.sub(r"\s", "", core), [i]))
            else:
                words[-1] = (words[-1][0] + re.sub(r"\s", "", core), words[-1][1] + [i])
            boundary = _has_cjk(core)
        if text[-1].isspace():
            boundary = True
    return words


def _joins(texts: Sequence[str], special: Sequence[bool], i: int, boundary: bool) -> bool:
    """A hyphen or apostrophe between two letters with no space ("well-known", "don ' t")."""
    if texts[i] not in ("-", "'", "’") or boundary or i + 1 >= len(texts) or special[i + 1]:
        return False
    following = texts[i + 1]
    return bool(following) and following[0].isalnum()


def _group_reference(texts: Sequence[str]) -> list[tuple[str, list[int]]]:
    words: list[tuple[str, list[int]]] = []
    for i, text in enumerate(texts):
        # `text in string.punctuation` is a substring test in the reference: "" and "()" count
        if i == 0 or text in string.punctuation or _has_cjk(text) or text.startswith(" "):
            words.append((text.replace(" ", ""), [i]))
        else:
            words[-1] = (words[-1][0] + text.replace(" ", ""), words[-1][1] + [i])
    return words


# -- labelling ---------------------------------------------------------------------------------
_EDGE_PUNCT = string.punctuation + "“”‘’«»…"


def _key(text: str) -> str:
    """Lowercase, without surrounding punctuation or a possessive ending."""
    key = text.lower().replace("’", "'")
    if key in ("'s", "'"):
        return key
    key = key.strip(_EDGE_PUNCT + " ")
    return re.sub(r"'s?$", "", key) if len(key) > 2 else key


def _terms(phrase: str) -> tuple[str, ...]:
    """A phrase as lemmatised terms: "Wine-Glasses" -> ("wine", "glass")."""
    return tuple(lemma(t) for t in re.split(r"[\s\-_/]+", phrase.lower()) if t)


def _category_terms(name: str) -> tuple[str, ...]:
    """A category name as terms, without leading determiners or panoptic suffixes."""
    terms = list(_terms(name))
    while len(terms) > 1 and terms[-1] in ("merged", "other", "stuff"):
        terms.pop()
    while len(terms) > 1 and terms[0] in DETERMINERS:
        terms.pop(0)
    return tuple(terms)


def _phrase_table(categories: Mapping[str, int], synonyms: Mapping[str, str] | None,
                  head_nouns: bool) -> dict[tuple[str, ...], int]:
    """Caption phrase (terms) -> label; names beat synonyms beat head nouns, first name wins."""
    return _cached_table(tuple(categories.items()), tuple((synonyms or {}).items()), head_nouns)


@functools.lru_cache(maxsize=64)  # a dataset has one table (COCO) or a few per image
def _cached_table(categories: tuple[tuple[str, int], ...], synonyms: tuple[tuple[str, str], ...],
                  head_nouns: bool) -> dict[tuple[str, ...], int]:
    ranked: dict[tuple[str, ...], tuple[int, int]] = {}

    def add(terms: tuple[str, ...], label: int, rank: int) -> None:
        if terms and (terms not in ranked or ranked[terms][0] > rank):
            ranked[terms] = (rank, label)

    canon = {_terms(k): _terms(v) for k, v in synonyms}
    by_canon: dict[tuple[str, ...], int] = {}
    for name, label in categories:
        terms = _category_terms(name)
        add(terms, int(label), 0)
        by_canon.setdefault(canon.get(terms, terms), int(label))
        if head_nouns and len(terms) > 1 and " ".join(terms) not in _COMPOUND_TERMS:
            add(terms[-1:], int(label), 2)
    for target, label in by_canon.items():
        add(target, label, 1)  # "couch" when the dataset calls it "sofa"
    for phrase, target in canon.items():
        if target in by_canon:
            add(phrase, by_canon[target], 1)
    return {terms: label for terms, (_, label) in ranked.items()}


_COMPOUND_TERMS = frozenset(" ".join(_terms(c)) for c in COMPOUNDS)


def _match_phrases(keys: Sequence[str | None], table: Mapping[tuple[str, ...], int]
                   ) -> list[int | None]:
    """Longest-first phrase matching over consecutive words; None keys break phrases."""
    labels: list[int | None] = [None] * len(keys)
    flat: list[tuple[int, str]] = []  # (word index, term); a None term breaks a phrase
    for w, key in enumerate(keys):
        flat.extend((w, t) for t in (_terms(key) if key else ("",)))
    longest = max((len(k) for k in table), default=0)
    i = 0
    while i < len(flat):
        for n in range(min(longest, len(flat) - i), 0, -1):
            terms = tuple(t for _, t in flat[i:i + n])
            if "" not in terms and terms in table:
                for w, _ in flat[i:i + n]:
                    if labels[w] is None:
                        labels[w] = table[terms]
                i += n
                break
        else:
            i += 1
    return labels


def _reference_label(text: str, categories: Mapping[str, int]) -> int | None:
    """TAM's matching: any part of a name equals the word (lemmatised, '-' dropped); last wins."""
    target = lemma(text.lower().replace("-", ""))
    label = None
    for name, value in categories.items():
        if any(lemma(part.lower().replace("-", "")) == target for part in name.split()):
            label = int(value)
    return label


def label_words(groups: Sequence[tuple[str, list[int]]], categories: Mapping[str, int], *,
                word_labels: Mapping[str, int] | None = None,
                options: WordOptions | None = None) -> list[Word]:
    """Give each grouped word its kind and label.

    A word is a ``"function"`` word if it is in the closed-class list, a ``"noun"`` if it (or
    the phrase it belongs to) names a category (``label`` set) or is a common noun
    (``label`` None), else ``"other"``. ``word_labels`` (a dataset that knows each word's
    label exactly) replaces the category matching: its phrases match whole, no synonyms.

    ``tagger="nltk"`` (:mod:`mmxai.nltk_words`, needs NLTK and its data): the kind is the
    Penn tag of the word alone, as in the reference, and only a word tagged a noun keeps a
    label, from ``word_labels`` too. The reference picks the words it scores by their tags,
    so a label must not make it score a word it ignores ("hot" of "hot dog" is an adjective).
    With ``reference_compatible`` the noun's label is the reference's WordNet-lemma match.
    """
    options = options or WordOptions()
    keys = [_key(text) for text, _ in groups]
    tagged = None
    if options.tagger == "nltk":  # imported here: the default lists need no NLTK
        from mmxai import nltk_words

        tagged = nltk_words.word_kinds([text for text, _ in groups],
                                       prepositions=options.prepositions,
                                       numbers=options.numbers)
    if tagged is None:
        function_words = options.function_words()
        is_function = [k in function_words for k in keys]
    else:
        is_function = [kind == "function" for kind in tagged]

    if word_labels is not None:
        table = _phrase_table(word_labels, None, head_nouns=False)
        labels = _match_phrases(_phrase_keys(keys, is_function), table)
    elif options.reference_compatible and tagged is not None:
        labels = [nltk_words.reference_label(text, categories) if kind == "noun" else None
                  for (text, _), kind in zip(groups, tagged, strict=True)]
    elif options.reference_compatible:
        labels = [None if f else _reference_label(text, categories)
                  for (text, _), f in zip(groups, is_function, strict=True)]
    else:
        synonyms = options.synonyms if options.synonyms is not None else SYNONYMS
        table = _phrase_table(categories, synonyms, options.head_nouns)
        labels = _match_phrases(_phrase_keys(keys, is_function), table)

    if tagged is not None:
        return [Word(text, list(tokens), kind, label if kind == "noun" else None)
                for (text, tokens), kind, label in zip(groups, tagged, labels, strict=True)]
    common = (frozenset(options.common_nouns) if options.common_nouns is not None
              else COMMON_NOUNS)
    words = []
    for (text, tokens), key, function, label in zip(groups, keys, is_function, labels,
                                                     strict=True):
        if function:
            kind: Kind = "function"
        elif label is not None or (key and lemma(key) in common):
            kind = "noun"
        else:
            kind = "other"
        words.append(Word(text, list(tokens), kind, label if kind == "noun" else None))
    return words


def _phrase_keys(keys: Sequence[str], is_function: Sequence[bool]) -> list[str | None]:
    """The keys phrases may run over: function and punctuation words break a phrase."""
    return [None if f or not k or _is_punctuation(k) else k
            for k, f in zip(keys, is_function, strict=True)]


def words_from_tokens(pieces: Sequence[str], categories: Mapping[str, int], *,
                      special: Sequence[bool] | None = None,
                      word_labels: Mapping[str, int] | None = None,
                      options: WordOptions | None = None) -> list[Word]:
    """Group token strings into words and label them (:func:`group_tokens`, :func:`label_words`)."""
    options = options or WordOptions()
    groups = group_tokens(pieces, special, reference_compatible=options.reference_compatible)
    return label_words(groups, categories, word_labels=word_labels, options=options)


# -- from a tokenizer or a trace ---------------------------------------------------------------
def token_pieces(tokenizer: Any, ids: Sequence[int]) -> tuple[list[str], list[bool]]:
    """Each token's text with its leading space, and whether it is a special token.

    Decodes each token on its own (byte-level pieces become text, a SentencePiece ``▁``
    a space), so the pieces line up one-to-one with the generated tokens.
    """
    ids = [int(i) for i in ids]
    special_ids = set(getattr(tokenizer, "all_special_ids", ()) or ())
    raw = tokenizer.convert_ids_to_tokens(ids)
    pieces, special = [], []
    for token_id, piece in zip(ids, raw, strict=True):
        piece = piece if isinstance(piece, str) else str(piece)
        is_special = token_id in special_ids
        text = piece if is_special else tokenizer.convert_tokens_to_string([piece])
        if piece[:1] in _SPACE_MARKERS and not text[:1].isspace():
            text = " " + text  # SentencePiece drops the space of a lone token
        pieces.append(text)
        special.append(is_special)
    if len(pieces) > 1 and not any(p[:1].isspace() for p in pieces):
        # word-level tokenizers only insert the spaces when decoding a sequence
        if " " in tokenizer.decode(ids[:2], skip_special_tokens=False):
            pieces = pieces[:1] + [p if s else " " + p for p, s in
                                   zip(pieces[1:], special[1:], strict=True)]
    return pieces, special


def words_from_trace(trace: Any, sample: Any, options: WordOptions | None = None) -> list[Word]:
    """The words of a trace's generated answer, labelled with ``sample``'s categories."""
    pieces, special = token_pieces(trace.model.tokenizer, trace.generated_ids.tolist())
    return words_from_tokens(pieces, sample.categories, special=special,
                             word_labels=sample.word_labels, options=options)


__all__ = [
    "COCO_CATEGORIES", "COMMON_NOUNS", "COMPOUNDS", "SYNONYMS", "Word", "WordOptions",
    "group_tokens", "label_words", "lemma", "token_pieces", "words_from_tokens",
    "words_from_trace",
    # the word lists of mmxai.lexicon, importable from here as before
    "AUXILIARIES", "CONJUNCTIONS", "DETERMINERS", "EXISTENTIAL", "INTERJECTIONS", "MODALS",
    "NUMBERS", "PERSON_WORDS", "POSSESSIVES", "PREPOSITIONS", "PRONOUNS",
    "REFERENCE_FUNCTION_WORDS", "WH_WORDS",
]
