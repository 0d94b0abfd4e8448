"""The random and centre baselines: seeding, the Gaussian's geometry through grid boxes,
and both end to end on two families."""

import numpy as np
import pytest
from helpers_attribution import FAMILIES, PROMPT, forced, image

from mmxai.api import explain
from mmxai.errors import MMXAIError
from mmxai.methods.baselines import CentreBaseline, RandomBaseline, centre_gaussian
from mmxai.model import ImageGrid


@pytest.fixture(scope="module")
def trace(tiny_model):
    return forced(tiny_model("llava"))


def test_random_maps_are_seeded_per_token(trace):
    maps = RandomBaseline(seed=3).explain(trace, [0, 1, 2])
    assert maps.shape == (3, len(trace.image_positions)) and maps.dtype == np.float32
    assert ((maps >= 0) & (maps < 1)).all()
    np.testing.assert_array_equal(RandomBaseline(seed=3).explain(trace, [0, 1, 2]), maps)
    np.testing.assert_array_equal(RandomBaseline(seed=3).explain(trace, [2]), maps[[2]])
    assert not np.allclose(maps[0], maps[1])
    assert not np.allclose(RandomBaseline(seed=4).explain(trace, [0]), maps[[0]])


def test_centre_gaussian_peaks_at_the_image_centre():
    grid = ImageGrid(image=0, positions=np.arange(25), shape=(5, 5))
    values = centre_gaussian(grid, sigma=0.25).reshape(5, 5)
    assert values.argmax() == 12 and values[2, 2] == pytest.approx(1.0)
    np.testing.assert_allclose(values, values.T)
    np.testing.assert_allclose(values, values[::-1, ::-1])
    # cell (0, 2) has its centre 0.4 above the middle
    assert values[0, 2] == pytest.approx(np.exp(-0.4**2 / (2 * 0.25**2)))
    wider = centre_gaussian(grid, sigma=1.0).reshape(5, 5)
    assert wider[0, 0] > values[0, 0]


def test_centre_gaussian_reads_tiles_through_their_box():
    """A tile covering the left half sees the left half of the image-centred Gaussian."""
    whole = ImageGrid(image=0, positions=np.arange(16), shape=(4, 4))
    left = ImageGrid(image=0, positions=np.arange(8), shape=(4, 2), box=(0.0, 0.0, 0.5, 1.0))
    full = centre_gaussian(whole, 0.3).reshape(4, 4)
    np.testing.assert_allclose(centre_gaussian(left, 0.3).reshape(4, 2), full[:, :2])


def test_centre_maps_repeat_per_token_and_follow_the_grids(trace):
    maps = CentreBaseline().explain(trace, [0, 2])
    grid = trace.grids[0]
    assert maps.shape == (2, len(trace.image_positions))
    np.testing.assert_array_equal(maps[0], maps[1])
    np.testing.assert_allclose(maps[0, grid.offset:grid.offset + grid.size],
                               centre_gaussian(grid, 0.25), rtol=1e-6)
    with pytest.raises(MMXAIError):
        CentreBaseline(sigma=0)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("method", ["random", "centre"])
def test_baselines_end_to_end(tiny_model, family, method):
    explanation = explain(tiny_model(family), image(), PROMPT, method=method, max_new_tokens=4)
    maps = explanation.maps
    assert maps.shape == (explanation.trace.n_generated, len(explanation.trace.image_positions))
    assert np.isfinite(maps).all() and (maps >= 0).all() and (maps <= 1).all()
