import numpy as np
import pytest

from art_patch_defenses.validation import check_images, check_labels


def test_good_batch_passes_unchanged(rng):
    x = rng.random((2, 3, 8, 8), dtype=np.float32)
    assert check_images(x, input_shape=(3, 8, 8)) is x


@pytest.mark.parametrize(
    "x, message",
    [
        (np.zeros((3, 8, 8), np.float32), "4-D"),
        (np.zeros((0, 3, 8, 8), np.float32), "empty batch"),
        (np.full((1, 3, 8, 8), np.nan, np.float32), "NaN"),
        (np.full((1, 3, 8, 8), 255.0, np.float32), "outside clip_values"),
        (np.zeros((1, 8, 8, 3), np.float32), "looks NHWC"),
        ([[0.0]], "numpy array"),
    ],
)
def test_bad_images_are_named(x, message):
    with pytest.raises(ValueError, match=message):
        check_images(x, "x", input_shape=(3, 8, 8))


def test_nchw_given_for_an_nhwc_model_is_named():
    with pytest.raises(ValueError, match="looks NCHW"):
        check_images(np.zeros((1, 3, 8, 8), np.float32), input_shape=(8, 8, 3), channels_first=False)


def test_labels_from_indices_or_one_hot():
    np.testing.assert_array_equal(check_labels(np.eye(3)[[2, 0]], 2, 3), [2, 0])
    with pytest.raises(ValueError, match="labels outside"):
        check_labels(np.array([0, 3]), 2, 3)
    with pytest.raises(ValueError, match="must hold 3 labels"):
        check_labels(np.array([0, 1]), 3, 3)
