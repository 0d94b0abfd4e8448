"""Evaluation protocols: how answers become labelled words and maps become scores.

A protocol fixes every choice the localisation metrics depend on, under one name that
``mmxai compare --protocol``, ``mmxai score --protocol``, the leaderboard's labels and the
Python API share:

- ``default``: mmxai's own, with the reference's bugs fixed (docs/evaluation.md): words
  typed from closed-class lists, whole-phrase category matching with synonyms, maps painted
  into the box their grid covers. Needs nothing beyond mmxai's dependencies.
- ``tam-reference``: the TAM authors' ``eval.py`` exactly: NLTK's perceptron tagger on each
  isolated word, WordNet lemmas, the last-match rule, OpenCV's mask reading, bilinear
  resize and Otsu, NaN precision for an empty foreground. Needs the ``tam-protocol`` extra
  (NLTK and OpenCV) and NLTK's tagger and WordNet data. Use it to put numbers next to the
  TAM and MSEA/ARC papers' tables.

A protocol is data: the :class:`~mmxai.words.WordOptions` of the words and the options it
sets on each localisation metric. :func:`get` refuses an unknown name in one line;
:func:`require` refuses, in one line naming the extra or the download, a protocol whose
libraries or data are missing, before anything runs.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from mmxai.errors import InputError, MMXAIError
from mmxai.words import WordOptions

#: The metrics a protocol configures (plugins/metrics/localisation.py).
LOCALISATION_METRICS = ("obj-iou", "func-iou", "f1-iou", "precision", "recall")
DEFAULT = "default"
TAM_REFERENCE = "tam-reference"
EXTRA = 'pip install "mmxai[tam-protocol]"'
NLTK_DOWNLOAD = "python -m nltk.downloader averaged_perceptron_tagger_eng wordnet"


class ProtocolUnavailable(MMXAIError):
    """A protocol's library or data is missing (one line naming what to install)."""


@dataclass(frozen=True)
class Protocol:
    """A named evaluation protocol: its words and its localisation metrics' options."""

    name: str
    summary: str
    words: WordOptions
    metric_options: Mapping[str, Any] = field(default_factory=dict)

    def options_for(self, metric: str) -> dict[str, Any]:
        """The options this protocol sets on ``metric`` (none for a metric it does not own)."""
        return dict(self.metric_options) if metric in LOCALISATION_METRICS else {}


PROTOCOLS: dict[str, Protocol] = {
    DEFAULT: Protocol(DEFAULT, "mmxai's protocol: the reference's bugs fixed, no extra needed",
                      WordOptions()),
    TAM_REFERENCE: Protocol(
        TAM_REFERENCE, "the TAM reference's eval.py exactly (NLTK word types, OpenCV maps)",
        WordOptions(reference_compatible=True, tagger="nltk"),
        {"protocol": TAM_REFERENCE}),
}


def get(name: str | Protocol) -> Protocol:
    """The protocol called ``name``; an unknown name is refused, naming the known ones."""
    if isinstance(name, Protocol):
        return name
    if name not in PROTOCOLS:
        raise InputError(f"--protocol {name!r}: unknown protocol; known: "
                         f"{', '.join(PROTOCOLS)}")
    return PROTOCOLS[name]


def require(protocol: str | Protocol) -> Protocol:
    """``protocol``, after checking that its libraries and data are installed."""
    protocol = get(protocol)
    if protocol.words.tagger == "nltk":
        from mmxai import nltk_words

        nltk_words.require()
    if protocol.metric_options.get("protocol") == TAM_REFERENCE:
        from mmxai import opencv_ops

        opencv_ops.require()
    return protocol


__all__ = ["DEFAULT", "LOCALISATION_METRICS", "PROTOCOLS", "Protocol", "ProtocolUnavailable",
           "TAM_REFERENCE", "get", "require"]
