"""An image, a prompt and teacher-forced traces shared by the attribution-method tests.

The detailed tests run on one native-resolution family (Qwen2-VL) and one fixed-size family
(LLaVA-1.5), through conftest's ``tiny_model`` factory (shared, read-only models).
"""

from __future__ import annotations

from functools import cache

import numpy as np
from PIL import Image

from mmxai.model import Model
from mmxai.trace import Needs, Trace, forced_trace

FAMILIES = ("llava", "qwen2-vl")
PROMPT = "Describe the image."
ANSWER = "a red circle"


@cache
def image() -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray((rng.random((70, 110, 3)) * 255).astype("uint8"))


def forced(model: Model, needs: Needs | None = None) -> Trace:
    """A teacher-forced trace of :data:`ANSWER` (a few tokens, whatever the weights say)."""
    inputs = model.build_inputs([image()], PROMPT)
    answer = model.tokenizer(ANSWER, add_special_tokens=False)["input_ids"]
    return forced_trace(model, inputs, answer, needs or Needs())


#: Small budgets for the costly methods in tests that run every method on every family
#: (their own tests run them at their defaults): the same code paths, a few passes each.
CHEAP = {
    "integrated-gradients": {"steps": 4},
    "ig-smoothgrad": {"steps": 2, "samples": 2},
    "eagle": {"segments": 4},
    "kernel-shap": {"samples": 8},
    "lime": {"samples": 8},
    "occlusion": {"window": 2, "stride": 2},
}
