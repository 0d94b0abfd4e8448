"""The English that :mod:`mmxai.words` matches against: word lists, categories, lemmas.

Pure data and one rule-based lemmatiser, because NLTK's taggers and WordNet cannot be
downloaded here: closed-class word lists grouped like the Penn tags the TAM reference
counts as function words, common caption nouns, the 80 COCO categories TAM evaluates on,
a synonym table, and :func:`lemma`. :mod:`mmxai.words` groups tokens into words and labels
them with these; every name here is also importable from ``mmxai.words``.
"""

from __future__ import annotations

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
#: The function words of the reference (its Penn tags); WordOptions adds the rest.
REFERENCE_FUNCTION_WORDS = (DETERMINERS | PRONOUNS | POSSESSIVES | CONJUNCTIONS | MODALS
                            | WH_WORDS | EXISTENTIAL | INTERJECTIONS)

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
