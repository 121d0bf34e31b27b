"""Every attack keeps the pixels outside its patch, and actually attacks the estimator it is given."""

import numpy as np
import pytest

from art_patch_defenses.attacks import (
    MaskedAutoPGD,
    RestrictToMask,
    adversarial_patch,
    lavan_patch,
    masked_pgd,
)
from art_patch_defenses.geometry import expand_masks, paste_patch, patch_masks, patch_shape, random_locations


@pytest.fixture(scope="module")
def batch(mnist_test):
    x, y = mnist_test.x[:48], mnist_test.y[:48]
    shape = patch_shape(0.05, (32, 32))
    masks = patch_masks((32, 32), shape, random_locations(len(x), (32, 32), shape, seed=0))
    return x, y, expand_masks(masks, x)


def _accuracy(classifier, x, y):
    return float(np.mean(classifier.predict(x).argmax(1) == y))


def test_masked_pgd_changes_only_the_patch_and_lowers_accuracy(mnist_classifier, batch):
    x, y, mask = batch
    x_adv = masked_pgd(mnist_classifier, x, mask, y, eps_step=0.05, max_iter=20, verbose=False)
    np.testing.assert_array_equal(x_adv[mask == 0], x[mask == 0])
    assert 0.0 <= x_adv.min() and x_adv.max() <= 1.0
    assert _accuracy(mnist_classifier, x_adv, y) < _accuracy(mnist_classifier, x, y) - 0.2


def test_masked_apgd_changes_only_the_patch_across_chunks_and_restores_defences(mnist_classifier, batch):
    x, y, mask = batch
    attack = MaskedAutoPGD(mnist_classifier, max_iter=20, batch_size=20, nb_random_init=2, verbose=False)
    x_adv = attack.generate(x, y, mask)
    np.testing.assert_array_equal(x_adv[mask == 0], x[mask == 0])
    assert mnist_classifier.preprocessing_defences in (None, [])
    assert _accuracy(mnist_classifier, x_adv, y) < _accuracy(mnist_classifier, x, y) - 0.2


def test_restrict_to_mask_refuses_a_batch_it_does_not_hold(batch):
    import torch

    x, _, mask = batch
    restrict = RestrictToMask(x[:4], mask[:4], device_type="cpu")
    out, _ = restrict.forward(torch.ones(4, *x.shape[1:]))
    np.testing.assert_array_equal(out.numpy(), np.where(mask[:4] > 0, 1.0, x[:4]))
    with pytest.raises(ValueError, match="holds a batch"):
        restrict.forward(torch.ones(3, *x.shape[1:]))


@pytest.mark.parametrize("train", [adversarial_patch, lavan_patch])
def test_universal_patches_are_patch_shaped_and_stronger_than_noise(mnist_classifier, mnist_test, train):
    from art_patch_defenses.data import load_dataset

    train_set = load_dataset("mnist_embedded", "train", n=256, seed=1)
    kwargs = {"max_iter": 6} if train is adversarial_patch else {"max_iter": 60, "step_size": 0.05}
    patch = train(mnist_classifier, train_set.x, train_set.y, patch_size=0.1, verbose=False, **kwargs)
    assert patch.shape == (1, 10, 10) and 0.0 <= patch.min() and patch.max() <= 1.0
    x, y = mnist_test.x[:200], mnist_test.y[:200]
    locations = random_locations(len(x), (32, 32), (10, 10), seed=5)
    patched, masks = paste_patch(x, patch, locations)
    noise, _ = paste_patch(x, np.random.default_rng(0).random(patch.shape, dtype=np.float32), locations)
    full = expand_masks(masks, x).astype(bool)
    np.testing.assert_array_equal(patched[~full], x[~full])
    assert _accuracy(mnist_classifier, patched, y) < _accuracy(mnist_classifier, noise, y) - 0.1


def test_targeted_lavan_patch_moves_predictions_to_the_target(mnist_classifier, mnist_test):
    from art_patch_defenses.data import load_dataset

    train_set = load_dataset("mnist_embedded", "train", n=256, seed=1)
    patch = lavan_patch(mnist_classifier, train_set.x, train_set.y, 0.1, target=3, max_iter=60, step_size=0.05,
                        verbose=False)
    x = mnist_test.x[:200][mnist_test.y[:200] != 3]
    patched, _ = paste_patch(x, patch, random_locations(len(x), (32, 32), (10, 10), seed=5))
    assert np.mean(mnist_classifier.predict(patched).argmax(1) == 3) > np.mean(
        mnist_classifier.predict(x).argmax(1) == 3) + 0.2


def test_attacks_reject_bad_input(mnist_classifier, batch):
    x, y, mask = batch
    with pytest.raises(ValueError, match="mask must have the shape"):
        masked_pgd(mnist_classifier, x, mask[:, :, :8], y)
    with pytest.raises(ValueError, match="NaN"):
        masked_pgd(mnist_classifier, np.full_like(x, np.nan), mask, y)
    with pytest.raises(ValueError, match="empty batch"):
        MaskedAutoPGD(mnist_classifier, verbose=False).generate(x[:0], y[:0], mask[:0])
    with pytest.raises(ValueError, match="outside clip_values"):
        lavan_patch(mnist_classifier, x * 255, y, 0.1)
    with pytest.raises(ValueError, match="larger than the image"):
        lavan_patch(mnist_classifier, x, y, 40)
    with pytest.raises(ValueError, match="batch_size must be"):
        MaskedAutoPGD(mnist_classifier, batch_size=500)


def test_returned_patch_is_what_art_pastes(mnist_classifier):
    from art.attacks.evasion import AdversarialPatchPyTorch

    from art_patch_defenses.attacks.universal import _as_rendered_by_art

    raw = np.random.default_rng(0).random((1, 10, 10), dtype=np.float32)
    rendered = _as_rendered_by_art(mnist_classifier, raw, 10 / 32)
    assert not np.allclose(rendered, raw)  # ART's resize changes the pixels: the raw array is not what it pastes
    art = AdversarialPatchPyTorch(mnist_classifier, rotation_max=0.0, scale_min=10 / 32, scale_max=10 / 32,
                                  patch_shape=(1, 10, 10), patch_location=(5, 7), patch_type="square", verbose=False)
    x = np.random.default_rng(1).random((2, 1, 32, 32), dtype=np.float32)
    expected = art.apply_patch(x, scale=10 / 32, patch_external=raw)
    locations = np.array([[7, 5], [7, 5]])  # (row, col) = ART's (y, x)
    pasted, _ = paste_patch(x, rendered, locations)
    pasted_raw, _ = paste_patch(x, raw, locations)
    # ART's nearest-neighbour sampling shifts with the placement, so one row of ten may differ; the raw array
    # differs almost everywhere.
    assert np.mean(np.isclose(pasted, expected, atol=1e-6)) > 0.99
    assert np.abs(pasted - expected).mean() < np.abs(pasted_raw - expected).mean() / 3
