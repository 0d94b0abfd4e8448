"""Helpers for the evaluator, faithfulness and sanity tests (tiny models, CPU)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from mmxai.api import make_method
from mmxai.dataset import Sample
from mmxai.evaluation import Generation, RunSpec
from mmxai.metric import EvalItem
from mmxai.model import Model
from mmxai.trace import Needs, Trace, generate_trace

FAMILY = "llava"  # the tiny family that builds in well under a second
PROMPT = "describe the image in one short sentence"


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Tiny models run ~20x faster on one thread than on two threads of a loaded machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def picture(width: int = 64, height: int = 48, seed: int = 0) -> Image.Image:
    """Smooth colour ramps plus noise: every region of the image looks different."""
    x = np.linspace(0, 255, width)[None, :].repeat(height, 0)
    y = np.linspace(0, 255, height)[:, None].repeat(width, 1)
    noise = np.random.default_rng(seed).normal(0, 20, (height, width, 3))
    pixels = np.stack([x, y, 255 - x], axis=-1) + noise
    return Image.fromarray(pixels.clip(0, 255).astype(np.uint8))


def traced(model: Model, n_tokens: int = 3, needs: Needs | None = None,
           image: Image.Image | None = None) -> Trace:
    inputs = model.build_inputs([image or picture()], PROMPT)
    return generate_trace(model, inputs, needs or Needs(), max_new_tokens=n_tokens,
                          min_new_tokens=n_tokens)


def run_spec(max_new_tokens: int = 32, min_new_tokens: int = 0, **settings) -> RunSpec:
    """A run's settings with these generation lengths (what the evaluator tests vary)."""
    return RunSpec(generation=Generation(max_new_tokens, min_new_tokens), **settings)


def item(model: Model, trace: Trace, method: str, **options) -> EvalItem:
    """An EvalItem with the method's maps for every generated token (no words, no mask)."""
    instance = make_method(method, **options)
    maps = np.asarray(instance.explain(trace, list(range(trace.n_generated))), np.float32)
    sample = Sample("s0", trace.inputs.images[0], PROMPT)
    return EvalItem(sample, model, instance, trace, maps)
