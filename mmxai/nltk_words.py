"""The TAM reference's word typing: NLTK's perceptron tagger on each word alone, WordNet lemmas.

The ``tam-reference`` protocol (:mod:`mmxai.protocols`) types words as the TAM authors'
``eval.py`` does, which :mod:`mmxai.lexicon`'s word lists only approximate:

- each word is tagged *alone*, ``nltk.pos_tag([word])``, in its original case and with no
  sentence around it, so "There" is EX but "there" RB, "oven" RB and "brown" NN;
- the Penn tags decide the kind (:data:`FUNCTION_TAGS`, :data:`NOUN_TAGS`, else "other");
- a noun's label is the *last* category with a name part equal to the word's WordNet lemma
  ("dog" -> hot dog, "bear" -> teddy bear).

NLTK is an optional dependency (the ``tam-protocol`` extra) and its data is never
downloaded here: :func:`require` checks both and refuses in one line.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mmxai.words import Kind

#: The tags the reference counts as function words; IN, TO and CD are not among them.
FUNCTION_TAGS = frozenset("CC DT EX MD POS PRP PRP$ UH WDT WP WP$ WRB".split())
NOUN_TAGS = frozenset("NN NNS NNP NNPS".split())
PREPOSITION_TAGS = frozenset({"IN", "TO"})
NUMBER_TAGS = frozenset({"CD"})
#: The NLTK data the reference loads (the tagger's NLTK >= 3.9 name, and WordNet).
RESOURCES = ("taggers/averaged_perceptron_tagger_eng", "corpora/wordnet")


@functools.cache  # success only: a raised error is not cached, so a later install is seen
def require() -> None:
    """Check that NLTK and its tagger and WordNet data are installed, or raise one line.

    Raises :class:`~mmxai.protocols.ProtocolUnavailable` naming the extra to install or the
    data to download; never downloads anything.
    """
    # mmxai.protocols imports mmxai.words, which imports this module lazily
    from mmxai.protocols import EXTRA, NLTK_DOWNLOAD, TAM_REFERENCE, ProtocolUnavailable

    try:
        import nltk
    except ImportError:
        raise ProtocolUnavailable(
            f"protocol {TAM_REFERENCE!r} needs NLTK, which is not installed: {EXTRA}") from None
    missing = []
    for resource in RESOURCES:
        try:
            nltk.data.find(resource)
        except LookupError:
            missing.append(resource)
    if missing:
        raise ProtocolUnavailable(
            f"protocol {TAM_REFERENCE!r} needs NLTK data not found in NLTK_DATA or NLTK's "
            f"search path: {', '.join(missing)}; get it with: {NLTK_DOWNLOAD}")


@functools.lru_cache(maxsize=65536)  # an answer repeats its words, a dataset its vocabulary
def pos_tag(word: str) -> str:
    """The Penn tag NLTK's perceptron tagger gives ``word`` alone (no sentence context)."""
    require()
    import nltk

    return nltk.pos_tag([word])[0][1]


def function_tags(*, prepositions: bool = False, numbers: bool = False) -> frozenset[str]:
    """The function-word tags, with prepositions (IN, TO) and numbers (CD) if asked for."""
    tags = set(FUNCTION_TAGS)
    if prepositions:
        tags |= PREPOSITION_TAGS
    if numbers:
        tags |= NUMBER_TAGS
    return frozenset(tags)


def kind_of(tag: str, functions: frozenset[str] = FUNCTION_TAGS) -> Kind:
    """A Penn tag's kind: ``"function"``, ``"noun"`` or ``"other"`` (ignored by the metrics)."""
    if tag in functions:
        return "function"
    return "noun" if tag in NOUN_TAGS else "other"


def word_kinds(words: Sequence[str], *, prepositions: bool = False,
               numbers: bool = False) -> list[Kind]:
    """Each word's kind from its tag alone; ``prepositions``/``numbers`` as in WordOptions."""
    require()
    functions = function_tags(prepositions=prepositions, numbers=numbers)
    return [kind_of(pos_tag(word), functions) for word in words]


@functools.lru_cache(maxsize=65536)
def noun_lemma(word: str) -> str:
    """WordNet's noun lemma of ``word``, lowercased, hyphens dropped: "tvs" -> "tv".

    WordNet knows no "vases" but "vas" (tvs -> tv, vases -> vas, people -> people), and a
    word glued to a special token (``dog<|im_end|>``) is its own lemma: the reference's.
    """
    require()
    from nltk.stem import WordNetLemmatizer

    return WordNetLemmatizer().lemmatize(word.lower().replace("-", ""))


def reference_label(word: str, categories: Mapping[str, int]) -> int | None:
    """The reference's label of noun ``word``: the last category with a name part equal to
    its lemma, compared as is (no lemma, no lowercasing of the names); None if no match."""
    target = noun_lemma(word)
    label = None
    for name, value in categories.items():
        if target in name.split():
            label = int(value)
    return label


__all__ = ["FUNCTION_TAGS", "NOUN_TAGS", "RESOURCES", "function_tags", "kind_of",
           "noun_lemma", "pos_tag", "reference_label", "require", "word_kinds"]
