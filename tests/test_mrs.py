import numpy as np
import pytest
import torch
from scipy.stats import norm

from art_patch_defenses.mrs import PyTorchMRS, from_255, localize
from art_patch_defenses.mrs.localization import ambiguous, region_mask, template_scores
from art_patch_defenses.mrs.smoothing import (
    certified_radius,
    lower_confidence_bound,
    masked_noise,
    top_two_test,
)


def test_radius_and_abstain_rules_hand_computed():
    # All n successes: the one-sided Clopper-Pearson lower bound is alpha ** (1 / n).
    assert lower_confidence_bound(1000, 1000, 0.001) == pytest.approx(0.001 ** (1 / 1000))
    assert lower_confidence_bound(0, 1000, 0.001) == 0.0
    assert certified_radius(norm.cdf(1.0), 0.2) == pytest.approx(0.2)
    assert certified_radius(norm.cdf(2.0), from_255(25)) == pytest.approx(2 * 25 / 255)
    assert certified_radius(0.5, 0.2) == 0.0 and certified_radius(0.3, 0.2) == 0.0
    # PREDICT: two-sided binomial test between the top two counts.
    assert top_two_test(np.array([0, 60, 40]), 0.05) == -1  # p = 0.057
    assert top_two_test(np.array([0, 70, 30]), 0.05) == 1
    assert top_two_test(np.zeros(3, int), 0.05) == -1


def test_mask_confines_the_noise_exactly():
    mask = torch.zeros(8, 8)
    mask[2:5, 3:7] = 1
    noise = masked_noise((64, 3, 8, 8), mask, 0.5, torch.Generator().manual_seed(0))
    assert torch.all(noise[:, :, mask == 0] == 0)
    assert torch.all(noise[:, :, mask == 1] != 0)
    assert noise[:, :, mask == 1].std().item() == pytest.approx(0.5, rel=0.05)


class WhitePixels(torch.nn.Module):
    """Class 1 iff at least ``count`` pixels are white, else class 0: inpainting any part of a white patch flips it."""

    def __init__(self, count: int):
        super().__init__()
        self.count = count

    def forward(self, x):
        white = (x.min(dim=1).values > 0.95).flatten(1).sum(1) >= self.count
        return torch.stack([(~white).float(), white.float()], dim=1) * 10.0


def white_pixels_mrs(count: int):
    return PyTorchMRS(WhitePixels(count), torch.nn.CrossEntropyLoss(), (3, 32, 32), 2, clip_values=(0.0, 1.0),
                      patch_size=5)


def test_localisation_finds_a_pasted_high_contrast_patch():
    rng = np.random.default_rng(0)
    image = rng.uniform(0.0, 0.5, size=(3, 32, 32)).astype(np.float32)
    image[:, 10:15, 17:22] = 1.0
    estimator = white_pixels_mrs(25)
    found = localize(image, lambda b: estimator.predict_base(b).argmax(1), block=5, tau=8)
    # Every block overlapping the patch votes: the cross centred on the patch collects 9 + 9 - 1 votes.
    assert found.attacked_class == 1 and found.location == (10, 17) and not found.abstain
    assert found.scores.max() == 17
    assert found.mask[10:15, 17:22].all() and found.mask.sum() == 11 * 11  # the block plus the 3 px margin
    # Two distant patches that both carry the attack: two disconnected candidate regions, so abstain.
    image[:, 24:29, 2:7] = 1.0
    twice = localize(image, lambda b: white_pixels_mrs(50).predict_base(b).argmax(1), block=5, tau=8)
    assert twice.abstain


def test_region_and_abstain_rules_hand_computed():
    # The block widened by the margin, cut at the border: rows 0-7 (block 0-4 plus 3), columns 25-31.
    mask = region_mask((32, 32), (0, 28), block=5, margin=3)
    assert mask.sum() == 8 * 7 and mask[:8, 25:].all()
    scores = np.zeros((6, 6))
    scores[0, 0] = scores[1, 1] = 9  # diagonal neighbours: one group
    assert not ambiguous(scores, 8)
    scores[4, 4] = 9  # a second group
    assert ambiguous(scores, 8) and not ambiguous(scores, 9)


def test_template_counts_votes_and_sums_real_valued_scores():
    votes = np.zeros((5, 5), dtype=bool)
    votes[2, :] = True  # a whole row votes
    counted = template_scores(votes, reach=1)
    assert counted.dtype == np.int64
    assert counted[2, 2] == 3 and counted[1, 2] == 1 and counted[2, 0] == 2 and counted[0, 0] == 0
    weights = np.zeros((5, 5))
    weights[2, 2], weights[2, 3], weights[0, 2] = 0.5, 0.25, 2.0
    summed = template_scores(weights, reach=1)
    # Centre (2, 2): itself, its row neighbour (2, 3); (0, 2) is two rows away, beyond the reach.
    assert summed[2, 2] == pytest.approx(0.75) and summed[1, 2] == pytest.approx(2.5)


def test_certify_is_reproducible_under_a_seed_and_validates(mnist_classifier, mnist_test):
    from art_patch_defenses.models.registry import classifier_params

    params = classifier_params(mnist_classifier)
    estimator = PyTorchMRS(**params, sigma=0.5, sample_size=200, n0=20)
    x = mnist_test.x[:4]
    mask = np.zeros((32, 32), bool)
    mask[10:17, 10:17] = True
    first = estimator.certify(x, mask=mask, seed=3)
    second = estimator.certify(x, mask=mask, seed=3)
    np.testing.assert_array_equal(first.prediction, second.prediction)
    np.testing.assert_array_equal(first.radius, second.radius)
    assert ((first.radius > 0) == (first.prediction >= 0)).all()
    with pytest.raises(ValueError, match="mask must be"):
        estimator.certify(x, mask=np.zeros((4, 31, 32), bool))
    with pytest.raises(ValueError, match="sigma"):
        estimator.set_params(sigma=-1.0)
    assert estimator.sigma == 0.5


def test_certificate_soundness_against_masked_l2_pgd_with_eot(mnist_classifier, mnist_test):
    from art_patch_defenses.attacks.eot import masked_pgd_eot
    from art_patch_defenses.models.registry import classifier_params

    estimator = PyTorchMRS(**classifier_params(mnist_classifier), sigma=0.5, sample_size=500, n0=50,
                           alpha=0.001)
    x = mnist_test.x[:24]
    masks = np.zeros((len(x), 32, 32), bool)
    masks[:, 12:19, 12:19] = True  # a 7x7 region on the digit
    result = estimator.certify(x, mask=masks, seed=0)
    certified = np.flatnonzero(result.certified)
    assert len(certified) >= 5
    x_c, labels = x[certified], result.prediction[certified]
    x_adv = masked_pgd_eot(estimator, x_c, masks[certified], labels, sigma=0.5, norm=2,
                           eps=0.0, eps_step=0.0, max_iter=0)  # shapes and the no-op path
    np.testing.assert_array_equal(x_adv, x_c)
    flips = 0
    for k, i in enumerate(certified):
        radius = result.radius[i]
        x_adv = masked_pgd_eot(estimator, x[i : i + 1], masks[i : i + 1], labels[k : k + 1], sigma=0.5, norm=2,
                               eps=0.99 * radius, eps_step=radius / 4, max_iter=10, eot_samples=8, restarts=3,
                               seed=k)
        change = x_adv - x[i : i + 1]
        assert np.sqrt((change**2).sum()) <= radius + 1e-5 and not change[:, :, ~masks[i]].any()
        counts = estimator.noise_counts(x_adv[0], masks[i], 2000, 500, torch.Generator().manual_seed(k))
        flips += int(counts.argmax() != labels[k])
    assert flips == 0
    # The same attack with four times the certified budget does flip some: it is strong enough to find violations.
    beyond = 0
    for k, i in enumerate(certified[:8]):
        x_adv = masked_pgd_eot(estimator, x[i : i + 1], masks[i : i + 1], labels[k : k + 1], sigma=0.5, norm=2,
                               eps=4 * result.radius[i], eps_step=result.radius[i], max_iter=10, eot_samples=8,
                               restarts=1, seed=k)
        counts = estimator.noise_counts(x_adv[0], masks[i], 2000, 500, torch.Generator().manual_seed(k))
        beyond += int(counts.argmax() != labels[k])
    assert beyond >= 1


def test_highest_loss_places_resume_and_agree_whoever_computed_them(tmp_path, monkeypatch):
    """``benchmarks/mrs_cifar10.py`` keeps each place's attacked images: a second run attacks nothing, a shard's
    ascending places give the same choice as one process, and each image keeps its place of largest loss."""
    import sys
    from pathlib import Path

    from art.estimators.classification import PyTorchClassifier

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import mrs_cifar10

    torch.manual_seed(0)
    network = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.Flatten(),
                                  torch.nn.Linear(4 * 10 * 10, 3))
    base = PyTorchClassifier(network, torch.nn.CrossEntropyLoss(), (3, 12, 12), 3, clip_values=(0.0, 1.0))
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (6, 3, 12, 12)).astype(np.float32)
    y = np.arange(6) % 3
    kept = {"n": 6}
    monkeypatch.setitem(mrs_cifar10.PLACE_PGD, "max_iter", 3)

    one_process = mrs_cifar10.highest_loss_patches(base, x, y, 3, tmp_path / "one", kept, verbose=False)
    for place in (1, 3):  # a --places-shard 0/2 process
        mrs_cifar10.place_patches(base, x, y, place, tmp_path / "shared", kept)
    shared = mrs_cifar10.highest_loss_patches(base, x, y, 3, tmp_path / "shared", kept, verbose=False)
    np.testing.assert_array_equal(one_process[0], shared[0])
    np.testing.assert_array_equal(one_process[1], shared[1])

    def no_attack(*args, **kwargs):
        raise AssertionError("a kept place was attacked again")

    monkeypatch.setattr(mrs_cifar10, "masked_pgd", no_attack)
    again = mrs_cifar10.highest_loss_patches(base, x, y, 3, tmp_path / "one", kept, verbose=False)
    np.testing.assert_array_equal(one_process[0], again[0])

    losses = []
    for place in (1, 2, 3):
        candidate = mrs_cifar10.place_patches(base, x, y, place, tmp_path / "one", kept)[0]
        logits = torch.from_numpy(base.predict(candidate))
        losses.append(torch.nn.functional.cross_entropy(logits, torch.from_numpy(y), reduction="none").numpy())
    best = np.argmax(np.stack(losses), axis=0) + 1
    for i, place in enumerate(best):
        np.testing.assert_array_equal(one_process[1][i], mrs_cifar10.place_masks(x, place)[i])
    assert len(set(best)) > 1 and np.any(one_process[0] != x)  # the choice above was a real one


def test_sigma_tuning_refuses_n_with_holdout(monkeypatch, capsys):
    """``benchmarks/mrs_sigma_tuning.py --holdout N`` measures the images training left out: an ``--n`` beside it
    would be ignored, so it is refused before anything loads."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import mrs_sigma_tuning

    monkeypatch.setattr(sys, "argv", ["mrs_sigma_tuning.py", "--holdout", "100", "--n", "50"])
    with pytest.raises(SystemExit) as stop:
        mrs_sigma_tuning.main()
    assert stop.value.code == 2
    assert "--n applies only without it" in capsys.readouterr().err
