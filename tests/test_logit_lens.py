"""The logit lens (CAM) method on fake traces: the ReLU'd logits of each token's own class."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers_tam import Layout, random_trace

from mmxai.methods.logit_lens import LogitLens
from mmxai.registry import manager
from mmxai.trace import Needs


def test_maps_are_relu_of_the_tokens_logits_at_image_positions():
    lay = Layout((3, 4), n_prompt=2, n_generated=5)
    trace = random_trace(0, lay)
    w = trace.model.unembedding()
    maps = LogitLens().explain(trace, [3, 0])
    for row, token in zip(maps, [3, 0], strict=True):
        cls = int(trace.sequence[lay.generated(token)])
        expected = (trace.hidden[lay.image] @ w[cls]).clamp_min(0).numpy()
        np.testing.assert_allclose(row, expected, rtol=1e-5, atol=1e-6)
    assert maps.dtype == np.float32 and maps.shape == (2, 12)
    assert (maps == 0).any() and (maps > 0).any()  # the ReLU cut something, kept something
    assert LogitLens()(trace, []).shape == (0, 12)  # the core's contract (Method.__call__)


def test_layer_option_reads_that_layer_through_the_final_norm():
    lay = Layout((3, 4), n_prompt=2, n_generated=3)
    trace = random_trace(1, lay)
    states = torch.randn(trace.hidden.shape, generator=torch.Generator().manual_seed(2))
    trace.layers = {1: states, -1: states}
    method = LogitLens(layer=-1)
    assert method.needs == Needs(layers=(-1,)) and LogitLens().needs == Needs()
    maps = method.explain(trace, [1])
    cls = int(trace.sequence[lay.generated(1)])
    with torch.no_grad():
        normed = trace.model.final_norm()(states[lay.image])
    expected = (normed @ trace.model.unembedding()[cls]).clamp_min(0).numpy()
    np.testing.assert_allclose(maps[0], expected, rtol=1e-5, atol=1e-6)
    assert not np.allclose(maps, LogitLens().explain(trace, [1]))


def test_registered_with_citations():
    cls = manager().get("methods", "logit-lens")
    assert cls is LogitLens
    assert "logit lens" in cls.citation and "2506.23270" in cls.citation
    with pytest.raises(Exception, match="no option"):
        LogitLens(kernel_size=3)
