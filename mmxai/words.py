"""Words and labels: generated tokens grouped into words, each with a kind and a mask label.

The localisation metrics score *words*, not tokens: a noun is scored against the mask of its
category, a function word against the whole background. This module turns the generated
token strings into :class:`Word` objects, in pure Python, without NLTK data:

1. :func:`group_tokens` groups the token strings into words (TAM's rules, read on the token
   strings directly instead of a decode/re-tokenize round trip, so word and map indices can
   never drift apart; special tokens such as EOS belong to no word);
2. :func:`label_words` gives each word a kind (``"noun"``, ``"function"``, ``"other"``) from a
   closed-class word list and a label from the sample's categories: whole-phrase matching
   with a small lemmatiser and a synonym table ("men" -> person, "dog" -> dog and never
   hot dog).

:class:`WordOptions` holds every choice; ``reference_compatible=True`` reproduces the TAM
reference's grouping and its last-match-wins, part-of-a-name category matching.
"""

from __future__ import annotations

import functools
import re
import string
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

Kind = Literal["noun", "function", "other"]

_SPACE_MARKERS = ("Ġ", "▁")  # byte-level BPE and SentencePiece word-start markers


@dataclass
class Word:
    """One word of the answer: ``tokens`` are indices into the generated tokens (and maps)."""

    text: str
    tokens: list[int]
    kind: Kind = "other"
    label: int | None = None


# -- closed-class words ------------------------------------------------------------------------
# Grouped like the Penn tags the reference counts as function words (CC, DT, EX, MD, POS, PRP,
# PRP$, UH, WDT, WP, WP$, WRB). Prepositions (IN, TO) and numbers (CD) are kept apart: the
# reference leaves them out of the function words, WordOptions can add them.
DETERMINERS = frozenset(
    "a an the this that these those each every some any no all both either neither another"
    .split())
PRONOUNS = frozenset(
    "i me you he him she her it we us they them myself yourself himself herself itself "
    "ourselves yourselves themselves".split())
POSSESSIVES = frozenset("my your his her its our their mine yours hers ours theirs 's ’s '".split())
CONJUNCTIONS = frozenset("and or but nor plus yet &".split())
MODALS = frozenset(
    "can could may might must shall should will would ought cannot can't won't couldn't "
    "shouldn't wouldn't mustn't shan't 'll 'd".split())
WH_WORDS = frozenset(
    "which whichever whatever what who whom whoever whose where when why how wherever "
    "whenever whereby".split())
EXISTENTIAL = frozenset({"there"})
INTERJECTIONS = frozenset("oh ah wow hey hello hi yes yeah okay ok please um uh".split())
#: be/have/do forms: verbs to a POS tagger (so not function words in the reference), but
#: they carry no visual content, which is what Func-IoU asks about.
AUXILIARIES = frozenset(
    "be am is are was were been being have has had having do does did isn't aren't wasn't "
    "weren't hasn't haven't hadn't don't doesn't didn't 're 've 'm".split())
PREPOSITIONS = frozenset(
    "aboard about above across after against along amid among around as at atop before "
    "behind below beneath beside besides between beyond by despite down during except for "
    "from in inside into like near of off on onto opposite out outside over past per since "
    "than through throughout till to toward towards under underneath unlike until up upon "
    "via with within without because if although though whether while unless whereas"
    .split())
NUMBERS = frozenset(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
    "fifteen sixteen seventeen eighteen nineteen twenty thirty forty fifty sixty seventy "
    "eighty ninety hundred thousand million billion dozen".split())
_CORE_FUNCTION = (DETERMINERS | PRONOUNS | POSSESSIVES | CONJUNCTIONS | MODALS | WH_WORDS
                  | EXISTENTIAL | INTERJECTIONS)

#: Words that name people: nouns everywhere, and the person category's synonyms.
PERSON_WORDS = frozenset(
    "person man woman boy girl child kid baby toddler adult teen teenager lady gentleman guy "
    "player people human individual skier snowboarder surfer skateboarder rider biker "
    "cyclist pedestrian worker chef cook officer policeman soldier athlete batter catcher "
    "pitcher umpire tourist spectator fan mother father daughter son friend bride groom "
    "student teacher doctor farmer cowboy vendor customer passenger driver".split())

#: Frequent caption nouns that name no COCO category. They count as nouns (their Otsu
#: thresholds set Func-IoU's foreground level, as the reference's tagged nouns do).
COMMON_NOUNS = PERSON_WORDS | frozenset(
    "air airport animal area background bag basket bathroom bay beach bed bedroom blanket "
    "board boat bottom box branch bread bridge building bunch bush cabinet center ceiling "
    "cheese city cloud coat computer container corner counter couple court crowd curtain "
    "day desk dirt dish distance dock door dress edge field fence flag floor flower food "
    "forest front fruit game garden glove grass ground group hair hand hat head helmet hill "
    "home house image item jacket kitchen lake lamp lane lawn leaf light lot market meal "
    "meat middle mirror monitor mountain night object ocean office pair paper park path "
    "pasture photo photograph picture piece pier pillow plant plate platform pole pond rack "
    "rail restaurant river road rock roof room rug runway sand scene screen sea shelf shirt "
    "shore side sidewalk sign sky slice slope snow station stand statue stove street sun "
    "surface table tent toy tower towel track traffic trail tray tree uniform variety "
    "vegetable vehicle view wall water wave window wood yard zoo".split())

# -- the COCO categories TAM evaluates on -------------------------------------------------------
#: The reference's 80-class table, COCO ids, with its two renames (ball = sports ball,
#: glass = wine glass). Dictionary order matters in reference mode (the last match wins).
COCO_CATEGORIES: dict[str, int] = {
    "person": 1, "bicycle": 2, "car": 3, "motorcycle": 4, "airplane": 5, "bus": 6, "train": 7,
    "truck": 8, "boat": 9, "traffic light": 10, "fire hydrant": 11, "stop sign": 13,
    "parking meter": 14, "bench": 15, "bird": 16, "cat": 17, "dog": 18, "horse": 19,
    "sheep": 20, "cow": 21, "elephant": 22, "bear": 23, "zebra": 24, "giraffe": 25,
    "backpack": 27, "umbrella": 28, "handbag": 31, "tie": 32, "suitcase": 33, "frisbee": 34,
    "skis": 35, "snowboard": 36, "ball": 37, "kite": 38, "baseball bat": 39,
    "baseball glove": 40, "skateboard": 41, "surfboard": 42, "tennis racket": 43,
    "bottle": 44, "glass": 46, "cup": 47, "fork": 48, "knife": 49, "spoon": 50, "bowl": 51,
    "banana": 52, "apple": 53, "sandwich": 54, "orange": 55, "broccoli": 56, "carrot": 57,
    "hot dog": 58, "pizza": 59, "donut": 60, "cake": 61, "chair": 62, "couch": 63,
    "potted plant": 64, "bed": 65, "dining table": 67, "toilet": 70, "tv": 72, "laptop": 73,
    "mouse": 74, "remote": 75, "keyboard": 76, "cell phone": 77, "microwave": 78, "oven": 79,
    "toaster": 80, "sink": 81, "refrigerator": 82, "book": 84, "clock": 85, "vase": 86,
    "scissors": 87, "teddy bear": 88, "hair drier": 89, "toothbrush": 90,
}

#: Multi-word names whose last word names something else ("hot dog" is no dog): they match
#: only as a whole phrase. Other multi-word names (a dataset's "white dog") also match their
#: head noun.
COMPOUNDS = frozenset({
    "traffic light", "fire hydrant", "stop sign", "parking meter", "baseball bat",
    "baseball glove", "tennis racket", "wine glass", "hot dog", "potted plant",
    "dining table", "cell phone", "teddy bear", "hair drier", "sports ball",
})

_PERSON_SYNONYMS = {w: "person" for w in PERSON_WORDS}
#: phrase -> canonical name. A category matches a caption phrase when both have the same
#: canonical name, so the table serves COCO's names, TAM's renames and VOC-style names alike.
SYNONYMS: dict[str, str] = {
    **_PERSON_SYNONYMS,
    "bike": "bicycle", "cycle": "bicycle",
    "motorbike": "motorcycle", "motor bike": "motorcycle", "scooter": "motorcycle",
    "moped": "motorcycle",
    "plane": "airplane", "aeroplane": "airplane", "airliner": "airplane", "jet": "airplane",
    "aircraft": "airplane",
    "automobile": "car", "taxi": "car", "cab": "car",
    "lorry": "truck", "pickup": "truck",
    "ship": "boat", "sailboat": "boat", "yacht": "boat", "canoe": "boat", "kayak": "boat",
    "locomotive": "train",
    "traffic signal": "traffic light", "stoplight": "traffic light",
    "hydrant": "fire hydrant", "meter": "parking meter",
    "kitten": "cat", "kitty": "cat", "puppy": "dog", "pup": "dog",
    "pony": "horse", "foal": "horse", "lamb": "sheep", "calf": "cow", "cattle": "cow",
    "bull": "cow", "ox": "cow",
    "pigeon": "bird", "seagull": "bird", "gull": "bird", "duck": "bird", "goose": "bird",
    "parrot": "bird", "swan": "bird",
    "back pack": "backpack", "rucksack": "backpack", "parasol": "umbrella",
    "purse": "handbag", "hand bag": "handbag", "necktie": "tie",
    "luggage": "suitcase", "suit case": "suitcase", "ski": "skis",
    "snow board": "snowboard", "sports ball": "ball", "football": "ball",
    "soccer ball": "ball", "tennis ball": "ball", "basketball": "ball", "volleyball": "ball",
    "bat": "baseball bat", "mitt": "baseball glove", "glove": "baseball glove",
    "skate board": "skateboard", "surf board": "surfboard",
    "racket": "tennis racket", "racquet": "tennis racket", "tennis racquet": "tennis racket",
    "wine glass": "glass", "wineglass": "glass", "mug": "cup",
    "hotdog": "hot dog", "doughnut": "donut", "cupcake": "cake",
    "burger": "sandwich", "hamburger": "sandwich",
    "sofa": "couch", "plant": "potted plant", "houseplant": "potted plant",
    "pottedplant": "potted plant", "table": "dining table", "diningtable": "dining table",
    "television": "tv", "tvmonitor": "tv", "tv monitor": "tv",
    "laptop computer": "laptop", "computer mouse": "mouse",
    "remote control": "remote", "controller": "remote",
    "phone": "cell phone", "cellphone": "cell phone", "smartphone": "cell phone",
    "mobile phone": "cell phone", "telephone": "cell phone",
    "fridge": "refrigerator", "teddy": "teddy bear", "stuffed animal": "teddy bear",
    "hair dryer": "hair drier", "hairdryer": "hair drier", "blow dryer": "hair drier",
}


@dataclass(frozen=True)
class WordOptions:
    """Every choice :func:`label_words` makes; the defaults fix the reference's quirks.

    ``reference_compatible`` reproduces the reference where that needs no NLTK data: its
    grouping (EOS glued to the last word, the punctuation-substring rule), no auxiliaries,
    no synonyms, and its matching (each part of a category name compared with the
    lemmatised word, the last matching category wins: "dog" -> hot dog, Q4).
    """

    reference_compatible: bool = False
    prepositions: bool = False  # count prepositions (IN, TO) as function words
    numbers: bool = False  # count numbers (CD) as function words
    auxiliaries: bool = True  # count be/have/do forms as function words
    synonyms: Mapping[str, str] | None = None  # phrase -> canonical name; None: SYNONYMS
    common_nouns: tuple[str, ...] | None = None  # None: COMMON_NOUNS
    head_nouns: bool = True  # a non-compound multi-word name also matches its last word

    def function_words(self) -> frozenset[str]:
        words = set(_CORE_FUNCTION)
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


# -- lemmatising -------------------------------------------------------------------------------
_IRREGULAR = {
    "people": "person", "men": "man", "women": "woman", "children": "child", "mice": "mouse",
    "lice": "louse", "teeth": "tooth", "feet": "foot", "geese": "goose", "oxen": "ox",
    "knives": "knife", "leaves": "leaf", "wolves": "wolf", "shelves": "shelf",
    "loaves": "loaf", "halves": "half", "calves": "calf", "lives": "life", "wives": "wife",
    "scarves": "scarf", "hooves": "hoof", "thieves": "thief", "elves": "elf",
    "buses": "bus", "lenses": "lens", "gases": "gas", "quizzes": "quiz", "cacti": "cactus",
    "fungi": "fungus", "tomatoes": "tomato", "potatoes": "potato", "heroes": "hero",
    "echoes": "echo", "mangoes": "mango", "volcanoes": "volcano", "dominoes": "domino",
}
#: Singular nouns ending in -ie whose plural -ies must not become -y.
_IE_NOUNS = frozenset(
    "cookie movie brownie zombie selfie goalie hippie rookie pixie calorie genie beanie "
    "hoodie veggie birdie smoothie pie tie lie".split())
_KEEP = frozenset("clothes pants jeans shorts news series species scissors".split())


def lemma(word: str) -> str:
    """The singular of a lowercase English noun, by rule: men -> man, boxes -> box.

    Only used as a matching key (captions and category names go through the same function),
    so an odd but consistent lemma ("tennis" -> "tennis") is harmless.
    """
    word = word.lower()
    if word in _IRREGULAR:
        return _IRREGULAR[word]
    if len(word) <= 3 or word in _KEEP or not word.isalpha():
        return word
    if word.endswith("men") and len(word) > 4:  # firemen, policemen
        return word[:-3] + "man"
    if word.endswith("ies") and len(word) > 4:
        return word[:-1] if word[:-1] in _IE_NOUNS else word[:-3] + "y"
    if word.endswith(("sses", "xes", "ches", "shes", "zzes")):
        return word[:-2]
    if word.endswith(("ss", "us")):  # glass, bus: already singular
        return word
    if word.endswith("s"):
        return word[:-1]
    return word


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
    """
    options = options or WordOptions()
    function_words = options.function_words()
    common = (frozenset(options.common_nouns) if options.common_nouns is not None
              else COMMON_NOUNS)
    keys = [_key(text) for text, _ in groups]
    is_function = [k in function_words for k in keys]

    if word_labels is not None:
        table = _phrase_table(word_labels, None, head_nouns=False)
        labels = _match_phrases(_phrase_keys(keys, is_function), table)
    elif options.reference_compatible:
        labels = [None if f else _reference_label(text, categories)
                  for (text, _), f in zip(groups, is_function, strict=True)]
    else:
        synonyms = options.synonyms if options.synonyms is not None else SYNONYMS
        table = _phrase_table(categories, synonyms, options.head_nouns)
        labels = _match_phrases(_phrase_keys(keys, is_function), table)

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
]
