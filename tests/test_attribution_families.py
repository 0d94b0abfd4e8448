"""Every method on every family with a tiny model (Grad-CAM, attention, rollout, LRP and the
baselines also non-negative).

One shared trace per family (``explain_many``): every method's maps have the flat layout,
are finite, and are non-negative where the method promises it (all of these do by default).
"""

import numpy as np
from helpers_attribution import CHEAP, PROMPT, image

from mmxai.api import explain_many
from mmxai.registry import manager

METHODS = ("gradcam", "attention", "rollout", "cp-lrp", "attnlrp", "random", "centre")


def test_every_method_runs_on_every_family(tiny_model, tiny_family):
    results = explain_many(tiny_model(tiny_family), image(), PROMPT, METHODS, max_new_tokens=2)
    for name, explanation in results.items():
        trace = explanation.trace
        maps = explanation.maps
        assert maps.shape == (trace.n_generated, len(trace.image_positions)), name
        assert maps.dtype == np.float32 and np.isfinite(maps).all(), name
        assert (maps >= 0).all() and (maps > 0).any(), name


def test_every_registered_method_gives_finite_maps_on_every_family(tiny_model, tiny_family):
    """All of them, TAM, the logit lens and MSEA/ARC included: the flat layout, finite."""
    methods = sorted(manager().items("methods"))
    options = {name: CHEAP[name] for name in methods if name in CHEAP}
    results = explain_many(tiny_model(tiny_family), image(), PROMPT, methods, max_new_tokens=2,
                           method_options=options)
    assert sorted(results) == methods
    for name, explanation in results.items():
        trace = explanation.trace
        assert explanation.maps.shape == (trace.n_generated, len(trace.image_positions)), name
        assert np.isfinite(explanation.maps).all(), name
