"""Where the user's prompt lies in a templated chat, found without any family's marker ids."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np


def prompt_span(input_ids: Sequence[int], with_prompt: Sequence[int],
                without: Sequence[int]) -> np.ndarray:
    """Positions of the prompt's tokens in ``input_ids``, by diffing two templated chats.

    ``with_prompt`` and ``without`` are the chat's token ids with the prompt and with an
    empty one: they share a prefix and a suffix, and what lies between is the prompt. Empty
    when the prompt is not found at the end of ``input_ids`` before that suffix.
    """
    suffix = 0
    while (suffix < min(len(with_prompt), len(without))
           and with_prompt[-1 - suffix] == without[-1 - suffix]):
        suffix += 1
    prefix = 0
    while (prefix < min(len(with_prompt), len(without)) - suffix
           and with_prompt[prefix] == without[prefix]):
        prefix += 1
    n_prompt = len(with_prompt) - prefix - suffix
    ids = list(input_ids)
    end = len(ids) - suffix
    start = end - n_prompt
    if n_prompt <= 0 or start < 0 or ids[start:end] != list(with_prompt[prefix:prefix + n_prompt]):
        return np.zeros(0, dtype=np.int64)
    return np.arange(start, end, dtype=np.int64)


def chat_prompt_span(tokenizer: Any, input_ids: Sequence[int], chat: Callable[[str], str],
                     prompt: str) -> np.ndarray:
    """:func:`prompt_span` of ``prompt`` in ``input_ids``, the two chats templated by
    ``chat(prompt)`` and ``chat("")`` and tokenised by ``tokenizer``."""
    with_prompt = tokenizer(chat(prompt), add_special_tokens=False)["input_ids"]
    without = tokenizer(chat(""), add_special_tokens=False)["input_ids"]
    return prompt_span(input_ids, with_prompt, without)
