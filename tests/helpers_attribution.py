"""Tiny models, an image and traces shared by the attribution-method tests.

Built once per test session (the models are read-only for these tests): one
native-resolution family (Qwen2-VL) and one fixed-size family (LLaVA-1.5).
"""

from __future__ import annotations

from functools import cache

import numpy as np
from PIL import Image

from mmxai.model import Model
from mmxai.registry import manager
from mmxai.trace import Needs, Trace, forced_trace

FAMILIES = {"qwen2-vl": "Qwen2VLForConditionalGeneration",
            "llava": "LlavaForConditionalGeneration"}
PROMPT = "Describe the image."
ANSWER = "a red circle"


@cache
def tiny(family: str) -> Model:
    return manager().get("models", FAMILIES[family]).tiny(seed=0)


@cache
def image() -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray((rng.random((70, 110, 3)) * 255).astype("uint8"))


def forced(family: str, needs: Needs | None = None) -> Trace:
    """A teacher-forced trace of :data:`ANSWER` (a few tokens, whatever the weights say)."""
    model = tiny(family)
    inputs = model.build_inputs([image()], PROMPT)
    answer = model.tokenizer(ANSWER, add_special_tokens=False)["input_ids"]
    return forced_trace(model, inputs, answer, needs or Needs())
