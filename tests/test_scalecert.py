"""ScaleCert: receptive-field back-projection, SIN, window merging, Algorithms 1 and 2, and soundness."""

import numpy as np
import pytest
import torch
from torch import nn

from art_patch_defenses.geometry import affected_features, all_locations, back_project, patch_masks
from art_patch_defenses.scalecert import (
    PyTorchScaleCert,
    SuperficialImportantNeurons,
    certify_from_labels,
    detect_from_labels,
    merge_group,
    occlusion_windows,
)
from art_patch_defenses.scalecert.sin import superficial_chain
from art_patch_defenses.scalecert.windows import sliding_windows

STEMS = {
    "conv": lambda: nn.Sequential(nn.Conv2d(1, 2, 3, padding=1)),
    "conv-pool-conv": lambda: nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.MaxPool2d(2),
                                            nn.Conv2d(2, 2, 3, stride=2, padding=1)),
    "resnet-stem": lambda: nn.Sequential(nn.Conv2d(1, 2, 7, stride=2, padding=3), nn.BatchNorm2d(2),
                                         nn.MaxPool2d(3, stride=2, padding=1)),
    "unpadded": lambda: nn.Sequential(nn.Conv2d(1, 2, 5), nn.AvgPool2d(2), nn.Conv2d(2, 2, 3)),
}


@pytest.mark.parametrize("stem", sorted(STEMS))
def test_receptive_field_back_projection_matches_brute_force(stem):
    """Perturb one input pixel at a time (up and down, so max pooling passes one of them): the features that
    change are exactly those ``affected_features`` names, and a feature's back-projected region is exactly the
    pixels that change it."""
    torch.manual_seed(0)
    net = STEMS[stem]().double().eval()
    size = 19
    chain, map_hw = superficial_chain(net, str(len(net) - 1), (1, size, size))
    x = torch.rand(1, 1, size, size, dtype=torch.float64)
    with torch.no_grad():
        base = net(x)[0].abs().sum(0)
        changed = np.zeros((size, size, *map_hw), dtype=bool)
        for step in (1e6, -1e6):
            perturbed = x.repeat(size * size, 1, 1, 1)
            perturbed.view(size * size, -1)[torch.arange(size * size), torch.arange(size * size)] += step
            changed |= (net(perturbed).abs().sum(1) != base).numpy().reshape(size, size, *map_hw)
    pixels = np.eye(size * size, dtype=bool).reshape(size * size, size, size)
    assert np.array_equal(affected_features(pixels, chain, map_hw), changed.reshape(size * size, *map_hw))
    for i, j in [(0, 0), (map_hw[0] // 2, map_hw[1] // 3), (map_hw[0] - 1, map_hw[1] - 1)]:
        kept = np.zeros(map_hw, dtype=bool)
        kept[i, j] = True
        assert np.array_equal(back_project(kept, chain, (size, size)), changed[:, :, i, j])


def test_superficial_chain_of_the_cifar_resnet_and_a_torchvision_resnet():
    import torchvision

    from art_patch_defenses.models import build_model

    assert superficial_chain(build_model("cifar_resnet20"), "bn1", (3, 32, 32)) == ([(3, 1, 1)], (32, 32))
    resnet18 = torchvision.models.resnet18(weights=None)
    assert superficial_chain(resnet18, "maxpool", (3, 64, 64)) == ([(7, 2, 3), (3, 2, 1)], (16, 16))
    with pytest.raises(ValueError, match="not a module"):
        superficial_chain(resnet18, "stem", (3, 64, 64))


def test_sin_keeps_the_top_k_breaks_ties_by_position_and_never_keeps_excluded_features():
    sin = SuperficialImportantNeurons(top_k=0.25)
    features = torch.zeros(1, 2, 4, 4)
    features[0, 0, 3, 3] = 5.0
    features[0, 1, 0, 1] = 2.0  # ties with the zeros below it; negative activations count as 0
    features[0, 1, 2, 2] = -9.0
    out, kept = sin(features)
    assert kept.sum() == 4 and kept[0, 3, 3] and kept[0, 0, 1]
    assert kept[0, 0, 0] and kept[0, 0, 2]  # the tied zeros with the lowest positions
    assert torch.equal(out, features * kept[:, None])
    excluded = torch.zeros(1, 4, 4, dtype=torch.bool)
    excluded[0, 3, 3] = excluded[0, 0, 0] = True
    _, kept = sin(features, excluded)
    assert not kept[0, 3, 3] and not kept[0, 0, 0] and kept.sum() == 4
    features.requires_grad_(True)
    sin(features)[0].sum().backward()
    assert torch.equal(features.grad[0, 0] != 0, sin.winners(features.detach())[0])
    with pytest.raises(ValueError, match="top_k"):
        SuperficialImportantNeurons(1.5)


def test_worst_window_loss_trains_each_image_on_its_highest_loss_window():
    from art_patch_defenses.scalecert.sin import ScaleCertNet
    from art_patch_defenses.scalecert.training import worst_window_loss

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 6 * 6, 4))
    net = ScaleCertNet(model, "0", 0.5, (1, 6, 6))
    windows = torch.zeros(3, 6, 6, dtype=torch.bool)  # three windows: left, middle and right columns
    for w in range(3):
        windows[w, :, 2 * w : 2 * w + 2] = True
    x, y = torch.rand(5, 1, 6, 6), torch.tensor([0, 1, 2, 3, 0])
    loss_fn = worst_window_loss(net, windows, [0.5], candidates=24, occlude_probability=1.0,
                                generator=torch.Generator().manual_seed(0))
    loss, logits = loss_fn(net, x, y)
    with torch.no_grad():  # 24 draws per image reach all three windows (fixed generator): the worst is global
        per_window = torch.stack([nn.functional.cross_entropy(net(x, windows[w].expand(5, 6, 6)), y,
                                                              reduction="none") for w in range(3)])
        worst = per_window.argmax(0)
        expected = net(x, windows[worst])
    assert len(set(worst.tolist())) > 1  # the images disagree on their worst window, so the pick is per image
    assert torch.allclose(logits, expected) and torch.isclose(loss, per_window.max(0).values.mean())


@pytest.mark.parametrize("tau,expected", [(0.0, 7), (0.3, 4), (0.5, 3), (0.6, 2), (0.9, 1)])
def test_merge_group_from_the_overlap_threshold(tau, expected):
    assert merge_group((7, 7), tau) == expected


@pytest.mark.parametrize("image,patch,r,tau", [(32, 5, 3, 0.3), (32, 2, 3, 0.5), (17, 4, 2, 0.0),
                                                (12, 3, 1, 0.6), (9, 9, 3, 0.3)])
def test_merged_windows_cover_every_window_and_every_patch_placement(image, patch, r, tau):
    windows = occlusion_windows((image, image), (patch, patch), r, tau, [(3, 1, 1)], (image, image))
    side, corners = sliding_windows((image, image), (patch, patch), r)
    originals = patch_masks((image, image), side, corners)
    covered = [np.any([np.all(box[original]) for box in windows.pixels]) for original in originals]
    assert all(covered) and windows.unmerged_count == len(corners)
    placements = patch_masks((image, image), (patch, patch), all_locations((image, image), (patch, patch)))
    inside = np.array([[np.all(box[p]) for box in windows.pixels] for p in placements])
    assert np.array_equal(inside, windows.contains) and inside.any(axis=1).all()
    union = windows.pixels.any(axis=0)
    assert union.all()


def test_algorithm_1_on_crafted_prediction_maps():
    # Three windows in a row; placements 0 and 1 lie in windows {0, 1} and {1, 2}.
    contains = np.array([[True, True, False], [False, True, True]])
    evaluated = np.ones((5, 3), dtype=bool)
    prediction = np.array([3, 3, 3, 3, 3])
    labels = np.array([
        [3, 3, 3],  # no disagreement: y*
        [3, 7, 7],  # placement 1 unanimously 7: alert there
        [7, 3, 3],  # one noisy window, y* keeps the majority: y*
        [7, 8, 9],  # no unanimous placement, but y* has fewer votes than 7: alert (line 13)
        [7, 7, 3],  # placement 0 unanimously 7
    ])
    label, alert, placement = detect_from_labels(prediction, labels, evaluated, contains, nb_classes=10)
    assert label.tolist() == [3, -1, 3, -1, -1]
    assert alert.tolist() == [False, True, False, True, True]
    assert placement.tolist() == [-1, 1, -1, -1, 0]
    # Windows that were not run carry y* and do not vote.
    _, alert, _ = detect_from_labels(np.array([3]), np.array([[7, 3, 3]]), np.array([[True, False, False]]),
                                     contains, nb_classes=10)
    assert alert.tolist() == [True]


def test_algorithm_2_on_crafted_prediction_maps():
    prediction = np.array([1, 1, 2, 1])
    labels = np.array([[1, 1], [1, 0], [2, 2], [1, 1]])
    y = np.array([1, 1, 1, 2])
    assert certify_from_labels(prediction, labels, y).tolist() == [True, False, False, False]


@pytest.fixture(scope="module")
def mnist_scalecert():
    from art_patch_defenses.models import build_model, make_classifier

    return make_classifier(build_model("mnist_cnn", "scalecert"), "mnist_cnn", estimator_class=PyTorchScaleCert,
                           patch_size=5)


def test_occluded_copies_equal_pixel_occlusion_and_skipped_windows_change_nothing(mnist_scalecert, mnist_test):
    """Occluding a window's pixels (any fill) with the features it reaches excluded gives the logits of the
    feature-space copy detection computes; for a window outside R both equal the unoccluded image's logits (the
    SIN invariance the certificate rests on)."""
    est, x = mnist_scalecert, mnist_test.x[:8]
    windows = est.windows_for()
    found = est.detect(x)
    net = est.model.eval()

    def logits(images, excluded=None, superficial=None):
        batch = torch.from_numpy(est._apply_preprocessing(images.astype(np.float32), None, fit=False)[0])
        with torch.no_grad():
            return net(batch, None if excluded is None else torch.from_numpy(excluded), superficial)

    clean = logits(x)
    skipped = 0
    for i in range(len(x)):
        logits(x[i : i + 1])
        features = net.last_features.repeat(len(windows.boxes), 1, 1, 1)
        copies = logits(np.repeat(x[i : i + 1], len(windows.boxes), 0), windows.features, features)
        assert np.array_equal(copies.argmax(1).numpy()[found.evaluated[i]], found.window_labels[i][found.evaluated[i]])
        region = est.candidate_region(found.winners[i : i + 1])[0]
        for fill in (0.0, 1.0):
            occluded = np.where(windows.pixels[:, None], np.float32(fill), x[i][None])
            assert torch.allclose(logits(occluded, windows.features), copies, rtol=0, atol=1e-4)
        for w in np.flatnonzero(~found.evaluated[i]):
            assert not (windows.pixels[w] & region).any()
            assert torch.allclose(copies[w], clean[i], rtol=0, atol=1e-5)
            skipped += 1
    assert skipped > 0


def test_estimator_detects_certifies_and_predicts(mnist_scalecert, mnist_test):
    est, x, y = mnist_scalecert, mnist_test.x[:40], mnist_test.y[:40]
    found = est.detect(x)
    result = est.certify(x, y)
    assert np.array_equal(result.prediction, found.prediction)
    assert np.all(result.prediction[result.certified] == y[result.certified])
    own = est.certify(x)  # without labels: certified for the sparse model's own prediction
    assert np.array_equal(own.certified[found.base_prediction == y], result.certified[found.base_prediction == y])
    assert np.all(found.evaluated.sum(1) <= len(est.windows_for().boxes))
    assert np.array_equal(est.candidate_windows(x), found.evaluated.sum(1))
    scores = est.predict(x)  # the protocol's abstain column is the last one, set where the detector alerts
    assert scores.shape == (len(x), 11) and np.array_equal(scores[:, -1] == 1, found.alert)
    assert np.array_equal(est.predict_labels(x), found.prediction)
    clean, certified = est.eval_and_certify(x, y)
    assert clean == np.mean(found.prediction == y) and certified == np.mean(result.certified)
    # NHWC input to an NCHW estimator is refused with a hint.
    with pytest.raises(ValueError):
        est.detect(np.transpose(x, (0, 2, 3, 1)))


def test_flip_average_copies_equal_pixel_occlusion_in_both_views_and_the_score_ignores_mirroring():
    """With ``flip_average`` an occluded copy excludes, in the mirrored view, the features the mirrored window
    reaches: its logits equal those of the image with the window's pixels occluded (any fill), scored with its
    mirror. A window outside both views' R leaves the logits unchanged, and mirroring the input changes nothing.
    The stride-2 7x7 stem on a 64 px image is not mirror-symmetric, so the mirrored reach is not the mirror of
    the reach."""
    import torchvision

    from art_patch_defenses.models import make_classifier

    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None, num_classes=4).eval()
    est = make_classifier(model, input_shape=(3, 64, 64), nb_classes=4, estimator_class=PyTorchScaleCert,
                          top_k=0.05, patch_size=8, flip_average=True)
    x = np.zeros((2, 3, 64, 64), dtype=np.float32)  # content (and so the SIN winners) in the top-left corner only
    x[:, :, :24, :24] = np.random.default_rng(0).random((2, 3, 24, 24), dtype=np.float32)
    windows = est.windows_for()
    reach = est.window_reach(windows)
    assert reach.shape == (len(windows.boxes), 2, 32, 32) and np.array_equal(reach[:, 0], windows.features)
    assert not np.array_equal(reach[:, 1], windows.features[..., ::-1])
    found = est.detect(x)
    assert found.winners.shape == (2, 2, 32, 32)
    net = est.model

    def logits(images, excluded=None):
        with torch.no_grad():
            return net(torch.from_numpy(images), None if excluded is None else torch.from_numpy(excluded))

    clean = logits(x)
    assert torch.allclose(logits(np.ascontiguousarray(x[..., ::-1])), clean, rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="view axis"):  # one view's exclusions where two are needed
        logits(x, np.ascontiguousarray(reach[:2, 0]))
    assert np.array_equal(est.predict_base(x).argmax(1), found.base_prediction)
    region = est.candidate_region(found.winners)
    skipped = 0
    for i in range(len(x)):
        for fill in (0.0, 1.0):
            occluded = np.where(windows.pixels[:, None], np.float32(fill), x[i][None])
            copies = logits(occluded, reach)
            run = found.evaluated[i]
            assert np.array_equal(copies.argmax(1).numpy()[run], found.window_labels[i][run])
            assert torch.allclose(copies[~run], clean[i].expand(int((~run).sum()), -1), rtol=0, atol=1e-5)
        assert not (windows.pixels[~found.evaluated[i]] & region[i]).any()
        skipped += int((~found.evaluated[i]).sum())
    assert skipped > 0 and found.evaluated.any()


def test_set_params_revalidates_and_restores(mnist_scalecert):
    est = mnist_scalecert
    with pytest.raises(ValueError, match="tau"):
        est.set_params(top_k=0.2, tau=1.5)
    assert est.top_k == 0.1 and est.tau == 0.3
    with pytest.raises(ValueError, match="patch_size"):
        est.set_params(patch_size=40)
    with pytest.raises(ValueError, match="r must"):
        est.set_params(r=0)
    with pytest.raises(ValueError, match="flip_average"):
        est.set_params(flip_average="yes")
    assert est.flip_average is False and est.model.flip_average is False
    est.set_params(top_k=0.2)
    assert est.model.sin.top_k == 0.2
    est.set_params(top_k=0.1)


def _attack_every_placement(est, image, label, patch, stride, max_iter):
    """Masked PGD against the sparse model (the detector's classifier) with the patch at every placement."""
    from art_patch_defenses.attacks import masked_pgd
    from art_patch_defenses.geometry import expand_masks
    from art_patch_defenses.models import make_classifier

    placements = all_locations(image.shape[1:], (patch, patch), stride)
    x = np.repeat(image[None], len(placements), axis=0)
    masks = expand_masks(patch_masks(image.shape[1:], (patch, patch), placements), x)
    sparse_model = make_classifier(est.model, "mnist_cnn")
    return masked_pgd(sparse_model, x, masks, np.full(len(x), label), eps=1.0, eps_step=0.1, max_iter=max_iter,
                      batch_size=256, verbose=False)


def _silent_failures(est, x, y, patch, stride, max_iter, limit=None):
    est = est if est.patch_size == patch else est.for_patch_size(patch)
    certified = np.flatnonzero(est.certify(x, y).certified)[:limit]
    failures = fooled = 0
    for i in certified:
        x_adv = _attack_every_placement(est, x[i], y[i], patch, stride, max_iter)
        found = est.detect(x_adv)
        fooled += int(np.sum(found.base_prediction != y[i]))
        failures += int(np.sum((found.prediction != y[i]) & ~found.alert))
    return len(certified), fooled, failures


def test_soundness_certified_images_alert_or_stay_right_under_patches_everywhere(mnist_scalecert, mnist_test):
    """Theorem 1: adversarial patches at every placement never make a certified image silently wrong; the attack
    does fool the sparse model itself at some placements, so the check can fail."""
    certified, fooled, failures = _silent_failures(mnist_scalecert, mnist_test.x[:30], mnist_test.y[:30],
                                                   patch=5, stride=1, max_iter=10, limit=2)
    assert certified == 2 and fooled > 0
    assert failures == 0


def test_soundness_with_flip_average(mnist_scalecert, mnist_test):
    """The same check with every image and copy scored together with its mirror; the attack (masked PGD) runs
    against the averaged sparse model the detector classifies."""
    est = mnist_scalecert
    est.set_params(flip_average=True)
    try:
        assert est.window_reach(est.windows_for()).shape[1] == 2
        found = est.detect(mnist_test.x[:30])
        assert (~found.alert).sum() >= 5  # predict reads log-probabilities (all below 0) right, not as alerts
        assert np.array_equal(est.predict_labels(mnist_test.x[:30]), found.prediction)
        certified, fooled, failures = _silent_failures(est, mnist_test.x[:30], mnist_test.y[:30], patch=5,
                                                       stride=1, max_iter=10, limit=2)
    finally:
        est.set_params(flip_average=False)
    assert certified == 2 and fooled > 0
    assert failures == 0


@pytest.mark.slow
def test_soundness_on_more_images_and_a_second_patch_size(mnist_scalecert, mnist_test):
    for patch in (5, 3):
        certified, fooled, failures = _silent_failures(mnist_scalecert, mnist_test.x[:150], mnist_test.y[:150],
                                                       patch=patch, stride=1, max_iter=20, limit=10)
        assert certified == 10 and fooled > 0
        assert failures == 0


def test_torchvision_resnet_is_wrapped_after_its_stem_and_detects():
    import torchvision

    from art_patch_defenses.models import make_classifier

    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None, num_classes=4).eval()
    est = make_classifier(model, input_shape=(3, 64, 64), nb_classes=4, estimator_class=PyTorchScaleCert,
                          top_k=0.2, patch_size=8)
    assert est.superficial_layer == "bn1" and est.model.chain == [(7, 2, 3)] and est.model.map_hw == (32, 32)
    x = np.random.default_rng(0).random((3, 3, 64, 64), dtype=np.float32)
    found = est.detect(x)
    assert found.winners.shape == (3, 32, 32) and found.winners.sum((1, 2)).tolist() == [205] * 3
    assert found.evaluated.any() and np.array_equal(est.predict_base(x).argmax(1), found.base_prediction)
    assert est.model.remove() is model and not model.bn1._forward_hooks
