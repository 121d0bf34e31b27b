import numpy as np
import pytest

from art_patch_defenses.geometry import (
    all_locations,
    expand_masks,
    paste_patch,
    patch_area_fraction,
    patch_masks,
    patch_shape,
    random_locations,
)


@pytest.mark.parametrize(
    "size, expected",
    [(0.1, (10, 10)), (0.05, (7, 7)), (0.024, (5, 5)), (0.004, (2, 2)), (5, (5, 5)), ((3, 8), (3, 8))],
)
def test_patch_shape_from_fraction_pixels_or_pair(size, expected):
    assert patch_shape(size, (32, 32)) == expected


def test_area_fraction_of_the_5x5_patch_is_2_4_percent():
    assert patch_area_fraction((5, 5), (32, 32)) == pytest.approx(0.0244, abs=1e-4)


@pytest.mark.parametrize("size", [33, (10, 40), 0.0, 1.0, 1.5, 0, "big", (1, 2, 3)])
def test_patch_shape_rejects_impossible_sizes(size):
    with pytest.raises(ValueError, match="patch_size"):
        patch_shape(size, (32, 32))


def test_random_locations_stay_inside_and_are_seeded():
    a = random_locations(1000, (32, 32), (7, 5), seed=3)
    assert a[:, 0].min() >= 0 and a[:, 0].max() == 32 - 7
    assert a[:, 1].min() >= 0 and a[:, 1].max() == 32 - 5
    np.testing.assert_array_equal(a, random_locations(1000, (32, 32), (7, 5), seed=3))


def test_all_locations_cover_every_pixel_and_include_far_edges():
    grid = all_locations((10, 10), (3, 3), stride=3)  # 0, 3, 6 and the flush 7
    assert {tuple(g) for g in grid} >= {(0, 0), (7, 7), (0, 7), (7, 0)}
    assert patch_masks((10, 10), (3, 3), grid).any(0).all()
    assert not patch_masks((10, 10), (3, 3), all_locations((10, 10), (3, 3), stride=4)).any(0).all()
    assert len(all_locations((10, 10), (3, 3))) == 64


def test_patch_masks_reject_locations_outside_the_image():
    with pytest.raises(ValueError, match="outside the image"):
        patch_masks((8, 8), (3, 3), np.array([[6, 0]]))


def test_paste_patch_changes_only_the_patch(rng):
    x = rng.random((4, 3, 16, 16), dtype=np.float32)
    patch = np.zeros((3, 4, 4), dtype=np.float32)
    locations = np.array([[0, 0], [12, 12], [5, 3], [2, 9]])
    patched, masks = paste_patch(x, patch, locations)
    assert masks.sum(axis=(1, 2)).tolist() == [16] * 4
    full = expand_masks(masks, x).astype(bool)
    np.testing.assert_array_equal(patched[~full], x[~full])
    assert np.all(patched[full] == 0)
    assert np.all(x[full] > 0)  # the input is left untouched


def test_paste_patch_nhwc(rng):
    x = rng.random((2, 16, 16, 3), dtype=np.float32)
    patched, masks = paste_patch(x, np.ones((4, 4, 3), np.float32), np.array([[1, 2], [3, 4]]), False)
    assert np.all(patched[0, 1:5, 2:6, :] == 1) and masks[1, 3:7, 4:8].all()
    assert expand_masks(masks, x, channels_first=False).shape == x.shape
