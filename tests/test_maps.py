"""Map plumbing: grids split and painted back onto the image through their boxes."""

import numpy as np
import pytest

from mmxai.maps import minmax, per_grid, split, to_image
from mmxai.model import ImageGrid, stack_grids


def grids(*specs):
    return stack_grids([ImageGrid(image=i, positions=np.arange(r * c), shape=(r, c), box=box)
                        for i, (r, c), box in specs])


def test_split_and_per_grid_round_trip():
    layout = grids((0, (2, 3), (0, 0, 1, 1)), (1, (1, 2), (0, 0, 1, 1)))
    flat = np.arange(16, dtype=np.float32).reshape(2, 8)
    first, second = split(flat, layout)
    assert first.shape == (2, 2, 3) and second.shape == (2, 1, 2)
    assert (second[1] == [[14, 15]]).all()
    np.testing.assert_array_equal(per_grid(lambda b: b * 2, flat, layout), flat * 2)


def test_to_image_paints_only_inside_the_box():
    layout = grids((0, (2, 2), (0.25, 0.0, 0.75, 1.0)))  # a centre crop of a wide image
    painted = to_image(np.ones(4), layout, image=0, size=(10, 20))
    assert painted[:, 5:15].min() == pytest.approx(1.0)
    assert painted[:, :5].max() == 0 and painted[:, 15:].max() == 0


def test_to_image_crops_a_box_reaching_outside_the_image():
    # a processor that pads to a square first: the grid covers more than the image
    layout = grids((0, (4, 2), (0.0, -0.5, 1.0, 1.5)))
    flat = np.array([0, 0, 1, 1, 2, 2, 3, 3], dtype=np.float32)
    painted = to_image(flat, layout, image=0, size=(8, 4))
    # the image is the middle half of what the grid covers: the same as painting the grid on
    # a canvas twice as tall and keeping its middle rows
    whole = to_image(flat, grids((0, (4, 2), (0.0, 0.0, 1.0, 1.0))), image=0, size=(16, 4))
    np.testing.assert_allclose(painted, whole[4:12])


def test_overlapping_grids_average_and_other_images_are_ignored():
    layout = grids((0, (1, 1), (0, 0, 1, 1)), (0, (1, 1), (0, 0, 0.5, 1)),
                   (1, (1, 1), (0, 0, 1, 1)))
    painted = to_image(np.array([1.0, 3.0, 100.0]), layout, image=0, size=(2, 4))
    np.testing.assert_allclose(painted[:, :2], 2.0)
    np.testing.assert_allclose(painted[:, 2:], 1.0)


def test_minmax_of_a_constant_is_zero():
    assert (minmax(np.full(5, 3.0)) == 0).all()
    np.testing.assert_allclose(minmax(np.array([1.0, 2.0, 3.0])), [0, 0.5, 1])
