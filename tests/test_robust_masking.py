import numpy as np
import pytest
import torch

from art_patch_defenses.geometry import feature_window, window_masks
from art_patch_defenses.robust_masking import certify, certify_reference, masked_evidence, robust_predict


@pytest.mark.parametrize(
    "patch, field, stride, expected",
    [(5, 17, 8, 3), (2, 17, 8, 3), (1, 1, 1, 1), (5, 1, 1, 5), (32, 9, 4, 10), (8, 9, 8, 2), (9, 9, 8, 3)],
)
def test_feature_window_hand_worked(patch, field, stride, expected):
    # e.g. patch 5, field 17, stride 8: (5 + 17 - 1) / 8 = 2.6 -> 3 features
    assert feature_window(patch, field, stride) == expected


def test_window_masks_count_and_wrap():
    assert window_masks((4, 4), (2, 2)).shape == (9, 4, 4)
    assert window_masks((4, 4), (9, 9)).shape == (1, 4, 4)
    bands = window_masks((1, 6), (1, 3), (False, True))
    assert bands.shape == (6, 1, 6) and bands.sum(axis=(1, 2)).tolist() == [3] * 6
    assert bands[5, 0].tolist() == [True, True, False, False, False, True]


def test_inference_masks_the_largest_window_per_class():
    u = np.zeros((1, 3, 3, 2))
    u[0, :, :, 0] = 1.0  # class 0: 9 spread evenly
    u[0, 0, 0, 1] = 20.0  # class 1: 20 concentrated in one cell, a patch-like outlier
    windows = window_masks((3, 3), (1, 1))
    assert robust_predict(u, windows, threshold=0.0).tolist() == [0]
    evidence = masked_evidence(torch.from_numpy(u), torch.from_numpy(windows.astype(float)), 0.0)
    assert evidence[0].tolist() == [8.0, 0.0]
    # Class 0's largest window holds 1/9 of its evidence: masked below that share, kept above it.
    evidence = masked_evidence(torch.from_numpy(u), torch.from_numpy(windows.astype(float)), 0.2)
    assert evidence[0].tolist() == [9.0, 0.0]
    # A window holding all of a class's evidence is masked for any T < 1.
    assert robust_predict(u, windows, threshold=0.99).tolist() == [0]


def _random_logits(rng, n, shape, integer):
    if integer:  # small integers: every sum is exact, ties and zeros are common
        return rng.integers(-2, 4, size=(n, *shape)).astype(np.float64)
    return rng.normal(0.5, 1.0, size=(n, *shape))


@pytest.mark.parametrize("threshold", [0.0, 0.2, 0.5])
@pytest.mark.parametrize("integer", [True, False])
@pytest.mark.parametrize(
    "map_hw, window_hw, wrap", [((4, 4), (2, 2), (False, False)), ((3, 5), (2, 3), (False, False)),
                                ((1, 6), (1, 2), (False, True))],
)
def test_vectorised_analysis_agrees_exactly_with_the_reference(threshold, integer, map_hw, window_hw, wrap):
    rng = np.random.default_rng(hash((threshold, integer, map_hw)) % 2**32)
    u = _random_logits(rng, 120, (*map_hw, 3), integer)
    # Make some samples easy so both outcomes occur.
    y = rng.integers(0, 3, size=len(u))
    u[: len(u) // 2, ..., :] *= 0.2
    u[np.arange(len(u) // 2), ..., y[: len(u) // 2]] += 2.0
    windows = window_masks(map_hw, window_hw, wrap)
    fast, slow = certify(u, y, windows, threshold), certify_reference(u, y, windows, threshold)
    np.testing.assert_array_equal(fast, slow)
    assert fast.any() and not fast.all()


def test_certificate_soundness_against_worst_case_window_attacks():
    """An attacker who owns one window sets its features to anything in [0, c_high]: for certified samples,
    no such change (extremes per cell and random values) alters the robust prediction."""
    rng = np.random.default_rng(7)
    map_hw, window_hw, c_high, threshold = (4, 4), (2, 2), 4.0, 0.3
    windows = window_masks(map_hw, window_hw)
    u = np.clip(rng.normal(0.3, 0.6, size=(200, *map_hw, 3)), 0, c_high)
    y = rng.integers(0, 3, size=len(u))
    u[np.arange(len(u)), ..., y] += 0.9
    certified = certify(u, y, windows, threshold, c_high=c_high)
    assert certified.sum() > 20
    violations = 0
    for s in np.flatnonzero(certified):
        for w in windows:
            for _ in range(20):
                attacked = u[s].copy()
                target = rng.integers(0, 3)
                values = rng.choice([0.0, c_high, rng.uniform(0, c_high)], size=(w.sum(), 3))
                values[:, y[s]] = 0.0  # remove the true class's evidence...
                values[:, target] = rng.choice([c_high, rng.uniform(0, c_high)])  # ...and pump one class
                attacked[w] = values
                violations += robust_predict(attacked[None], windows, threshold, c_high=c_high)[0] != y[s]
    assert violations == 0


def test_bagnet_receptive_field_matches_brute_force():
    from art_patch_defenses.geometry import receptive_field
    from art_patch_defenses.models.bagnet import LocalLogitsCNN

    torch.manual_seed(0)
    model = LocalLogitsCNN(num_classes=3).eval()
    assert model.receptive_field == (9, 9) and model.stride == (2, 2)
    assert model.feature_map_size((32, 32)) == (12, 12)
    assert receptive_field([(3, 1, 1), (3, 2, 1)]) == (5, 2, -2)  # output i sees input pixels [2i - 2, 2i + 2]
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        base = model(x)
        for row, col in [(0, 0), (13, 20), (31, 31)]:
            bumped = x.clone()
            bumped[0, :, row, col] += 1.0
            changed = (model(bumped) - base).abs().amax(-1)[0] > 0
            rows, cols = np.nonzero(changed.numpy())
            # feature i sees pixels [2i, 2i + 9): exactly those containing the pixel may change
            assert set(rows) == {i for i in range(12) if 2 * i <= row < 2 * i + 9}
            assert set(cols) == {j for j in range(12) if 2 * j <= col < 2 * j + 9}


@pytest.fixture(scope="module")
def small_estimator():
    from art_patch_defenses.models.bagnet import LocalLogitsCNN
    from art_patch_defenses.robust_masking.estimator import PyTorchRobustMasking

    torch.manual_seed(0)
    backbone = LocalLogitsCNN(num_classes=10).eval()
    return PyTorchRobustMasking(backbone, torch.nn.CrossEntropyLoss(), (3, 32, 32), 10, patch_size=5,
                                clip_values=(0.0, 1.0), device_type="cpu")


def test_estimator_predicts_and_certifies_from_its_local_logits(small_estimator):
    x = np.random.default_rng(0).random((6, 3, 32, 32), dtype=np.float32)
    u = small_estimator.local_features(x)
    windows = small_estimator.windows_for(5)
    assert u.shape == (6, 12, 12, 10) and windows.shape == (36, 12, 12)  # 7x7 windows (5 + 9 - 1) / 2
    predictions = small_estimator.predict(x).argmax(1)
    np.testing.assert_array_equal(predictions, robust_predict(u, windows, 0.0))
    result = small_estimator.certify(x, predictions)
    np.testing.assert_array_equal(result.certified, certify(u, predictions, windows, 0.0))
    clean, certified = small_estimator.eval_and_certify(x, predictions)
    assert clean == 1.0 and certified == result.certified.mean()


def test_estimator_is_attackable_and_revalidates(small_estimator):
    from art.attacks.evasion import ProjectedGradientDescent

    x = np.random.default_rng(1).random((2, 3, 32, 32), dtype=np.float32)
    mask = np.zeros_like(x)
    mask[:, :, 5:10, 5:10] = 1
    y = small_estimator.predict(x).argmax(1)
    x_adv = ProjectedGradientDescent(small_estimator, eps=1.0, eps_step=0.1, max_iter=2, verbose=False).generate(
        x, y, mask=mask)
    assert np.abs(x_adv - x).max() > 0 and np.array_equal(x_adv[mask == 0], x[mask == 0])
    small_estimator.set_params(patch_size=2)
    assert small_estimator.model.windows.shape[0] == small_estimator.windows_for(2).shape[0]
    with pytest.raises(ValueError, match="threshold"):
        small_estimator.set_params(threshold=1.0)
    assert small_estimator.threshold == 0.0
    with pytest.raises(ValueError, match="feature_type"):
        small_estimator.set_params(feature_type="votes")
    assert small_estimator.feature_type == "logits" and small_estimator.model.feature_type == "logits"
    small_estimator.set_params(patch_size=5)


def test_one_hot_prediction_features_vote_and_stay_attackable(small_estimator):
    x = np.random.default_rng(2).random((3, 3, 32, 32), dtype=np.float32)
    logits = small_estimator.local_features(x)
    small_estimator.set_params(feature_type="prediction")
    try:
        votes = small_estimator.local_features(x)
        np.testing.assert_array_equal(votes, np.eye(10)[logits.argmax(-1)])
        windows = small_estimator.windows_for(5)
        y = robust_predict(votes, windows, 0.0)
        np.testing.assert_array_equal(small_estimator.predict(x).argmax(1), y)
        np.testing.assert_array_equal(small_estimator.certify(x, y).certified, certify(votes, y, windows, 0.0))
        gradient = small_estimator.loss_gradient(x, np.eye(10)[y])
        assert np.isfinite(gradient).all() and np.abs(gradient).max() > 0  # straight-through softmax gradient
    finally:
        small_estimator.set_params(feature_type="logits")


def test_masked_feature_loss_removes_the_true_class_top_window():
    from art_patch_defenses.robust_masking.training import masked_feature_loss

    class Fixed(torch.nn.Module):
        def forward(self, x):
            u = torch.zeros(1, 2, 2, 2)
            u[0, 0, 0, 0] = 8.0  # true class 0: all evidence in one cell
            u[0, :, :, 1] = 1.0  # class 1: spread
            u[0, 1, 1, 1] = -3.0  # negative local logits are clamped away
            return u

    windows = torch.from_numpy(window_masks((2, 2), (1, 1)).astype(np.float32))
    loss, logits = masked_feature_loss(windows)(Fixed(), torch.zeros(1, 3, 4, 4), torch.tensor([0]))
    torch.testing.assert_close(logits, torch.tensor([[0.0, 3.0 / 4]]))
    cross_entropy = torch.nn.functional.cross_entropy
    plain = cross_entropy(torch.tensor([[2.0, 0.0]]), torch.tensor([0]))  # unclamped means: (8/4, (1+1+1-3)/4)
    torch.testing.assert_close(loss, cross_entropy(logits, torch.tensor([0])) + plain)


def test_column_bands_see_only_their_columns_and_wrap():
    from art_patch_defenses.geometry import feature_window
    from art_patch_defenses.models import MnistCNN
    from art_patch_defenses.models.bagnet import ColumnBandNet

    torch.manual_seed(0)
    net = ColumnBandNet(MnistCNN(num_classes=4, in_channels=2), band_width=4).eval()
    x = torch.rand(1, 1, 32, 32)
    with torch.no_grad():
        base = net(x)
        assert base.shape == (1, 1, 32, 4)
        bumped = x.clone()
        bumped[0, 0, 7, 1] += 0.5  # column 1 lies in bands 30, 31, 0, 1 (width 4, wrapping)
        changed = np.flatnonzero((net(bumped) - base).abs().amax(-1)[0, 0].numpy() > 0)
    assert changed.tolist() == [0, 1, 30, 31]
    window = feature_window(5, net.receptive_field[1], net.stride[1])
    assert window == 8  # b + p - 1 columns
    assert window_masks(net.feature_map_size((32, 32)), (1, window), net.wrap).shape == (32, 1, 32)


def _cropped_mask_ds():
    from art_patch_defenses.models import cifar_resnet
    from art_patch_defenses.models.bagnet import cropped_mask_ds
    from art_patch_defenses.models.registry import CIFAR10_MEAN, CIFAR10_STD

    torch.manual_seed(0)
    net = cropped_mask_ds(cifar_resnet(20), CIFAR10_MEAN, CIFAR10_STD, band_width=4).eval()
    for module in net.modules():  # random BN statistics, so every channel matters
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    with torch.no_grad():
        net.base.net.conv1.weight[:, -1].normal_()  # the position channel, zero after the warm start
    return net


def test_a_cropped_band_is_unchanged_by_any_edit_outside_its_columns():
    net = _cropped_mask_ds()
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        before = net(x)
        for band in (0, 13, 30):  # band 30 wraps: columns 30, 31, 0, 1
            inside = (torch.arange(32)[:, None] == (band + torch.arange(4)) % 32).any(1)
            edited = torch.where(inside, x, torch.rand_like(x))
            after = net(edited)
            torch.testing.assert_close(after[:, 0, band], before[:, 0, band], rtol=0, atol=0)
            assert (after[:, 0, ~inside] - before[:, 0, ~inside]).abs().amax() > 0  # the other bands did move


def test_cropped_bands_equal_the_ablated_path_that_art_takes():
    """``forward`` crops straight from the image; ART's ablator (and ``ColumnBandNet.ablate``) hands the band
    classifier ablated copies, which :class:`BandCrop` crops itself: the same logits, the same ART vote."""
    from art_patch_defenses.baselines.derandomized_smoothing import PyTorchDeRandomizedSmoothingCertifier

    net = _cropped_mask_ds()
    x = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        direct = net(x)
        through_ablation = net.base(net.ablate(x)).view(3, 1, 32, -1)
    torch.testing.assert_close(direct, through_ablation, rtol=1e-5, atol=1e-5)
    art = PyTorchDeRandomizedSmoothingCertifier(
        model=net.base, loss=torch.nn.CrossEntropyLoss(), input_shape=(3, 32, 32), nb_classes=10, ablation_size=4,
        algorithm="levine2020", ablation_type="column", threshold=0.3, logits=True, clip_values=(0.0, 1.0),
        verbose=False, device_type="cpu", patch_size=5)
    votes = (torch.softmax(direct, dim=-1)[:, 0] >= 0.3).sum(1).numpy()
    np.testing.assert_array_equal(art.predict(x.numpy()).astype(int), votes)
    with pytest.raises(ValueError, match="exactly one band"):
        net.base(torch.rand(1, 6, 32, 32))  # nothing ablated: not a column ablation


@pytest.mark.parametrize("name, depth", [("cifar_mask_ds_crop", 20), ("cifar_mask_ds_crop56", 56)])
def test_committed_cropped_band_checkpoints_load_through_their_names(name, depth):
    """Each committed cropped-band checkpoint loads through its registered name (its recorded sha256 checked) into
    a ResNet-``depth`` base; the ResNet-56 one under the ResNet-20 name is refused as a mismatch."""
    import art_patch_defenses.robust_masking  # noqa: F401 - registers the backbones
    from art_patch_defenses.models import build_model
    from art_patch_defenses.models.checkpoints import CheckpointError
    from art_patch_defenses.models.registry import weights_path

    net = build_model(name, "trained")
    blocks = sum(len(stage) for stage in (net.base.net.layer1, net.base.net.layer2, net.base.net.layer3))
    assert 6 * (blocks // 3) + 2 == depth
    with torch.no_grad():
        assert net(torch.rand(2, 3, 32, 32)).shape == (2, 1, 32, 10)
    if depth != 20:
        with pytest.raises(CheckpointError, match="does not match"):
            build_model("cifar_mask_ds_crop", weights_path(name, "trained"))


def test_ds_warm_start_reproduces_the_resnet_away_from_the_border():
    from art_patch_defenses.models import cifar_resnet
    from art_patch_defenses.models.registry import CIFAR10_MEAN, CIFAR10_STD
    from art_patch_defenses.models.training import normalise
    from art_patch_defenses.robust_masking.backbones import ds_base_from
    from art_patch_defenses.robust_masking.train import random_band_loss

    torch.manual_seed(0)
    resnet = cifar_resnet(20).eval()
    base = ds_base_from(resnet).eval()
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        first = resnet.conv1(normalise(x, CIFAR10_MEAN, CIFAR10_STD))
        second = base.conv1(torch.cat([x, 1 - x], dim=1))
    torch.testing.assert_close(first[:, :, 1:-1, 1:-1], second[:, :, 1:-1, 1:-1], rtol=1e-4, atol=1e-4)
    from art_patch_defenses.models.bagnet import ColumnBandNet

    loss, logits = random_band_loss(ColumnBandNet(base, 4))(None, x, torch.tensor([1, 2]))
    assert logits.shape == (2, 10) and torch.isfinite(loss)


def test_backbone_checkpoint_round_trip(tmp_path):
    from art_patch_defenses.models import cifar_resnet, save_checkpoint
    from art_patch_defenses.models.bagnet import ColumnBandNet
    from art_patch_defenses.robust_masking.backbones import ds_base_from, load_backbone

    torch.manual_seed(0)
    net = ColumnBandNet(ds_base_from(cifar_resnet(20)), 4).eval()
    save_checkpoint(net, tmp_path / "ds.pt", backbone="ds", band_width=4, base="cifar_resnet20")
    loaded = load_backbone(tmp_path / "ds.pt")
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), net(x))
    save_checkpoint(net, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="names no robust-masking backbone"):
        load_backbone(tmp_path / "other.pt")


def _band_estimator(feature_type: str):
    """An untrained wrap-around column-band estimator (MNIST Mask-DS geometry, 2-column bands)."""
    from art_patch_defenses.robust_masking.estimator import PyTorchRobustMasking
    from art_patch_defenses.robust_masking.registration import mnist_mask_ds

    torch.manual_seed(0)
    return PyTorchRobustMasking(mnist_mask_ds().eval(), torch.nn.CrossEntropyLoss(), (1, 32, 32), 10,
                                patch_size=5, feature_type=feature_type, clip_values=(0.0, 1.0), device_type="cpu")


@pytest.mark.parametrize("kind", ["bagnet", "bands"])
def test_patch_reach_holds_every_feature_a_patch_can_change(small_estimator, kind):
    """Rewriting a patch changes local logits only inside its reach, and the reach fits in a certified window."""
    estimator = small_estimator if kind == "bagnet" else _band_estimator("prediction")
    channels = estimator.input_shape[0]
    rng = np.random.default_rng(1)
    x = rng.random((1, channels, 32, 32), dtype=np.float32)
    places = np.array([[0, 0], [9, 14], [27, 27], [3, 30 - 5]])
    reach = estimator.patch_reach(places)
    windows = estimator.windows_for(5)
    backbone = estimator.model.backbone
    with torch.no_grad():
        clean = backbone(torch.from_numpy(x))
        for (row, col), cells in zip(places, reach, strict=True):
            patched = x.copy()
            patched[..., row : row + 5, col : col + 5] = rng.random((channels, 5, 5))
            changed = (backbone(torch.from_numpy(patched)) - clean).abs().amax(-1)[0].numpy() > 0
            assert changed.any() and not np.any(changed & ~cells)
            assert np.any(np.all(windows >= cells, axis=(1, 2))), "the reach must lie in one masking window"


def test_weakest_placements_slack_is_the_bound_worked_out_by_hand():
    """Slack per (place, class) = vote margin outside the patch's reach - the reached votes, minimised by hand."""
    estimator = _band_estimator("prediction")
    x = np.random.default_rng(2).random((3, 1, 32, 32), dtype=np.float32)
    y = np.array([1, 4, 7])
    locations, targets, slack = estimator.weakest_placements(x, y, count=3, seed=0)
    votes = estimator.local_features(x)[:, 0]  # (N, bands, C), one-hot
    places = [(r, c) for r in range(28) for c in range(28)]
    for i in range(3):
        best = np.inf
        for place in places:
            reached = estimator.patch_reach(np.array([place]))[0, 0]
            outside = votes[i, ~reached].sum(0)
            for k in range(10):
                if k != y[i]:
                    best = min(best, outside[y[i]] - outside[k] - reached.sum())
        assert slack[i, 0] == best and np.all(np.diff(slack[i]) >= 0) and not np.any(targets[i] == y[i])
        for (row, col), k, value in zip(locations[i], targets[i], slack[i], strict=True):
            reached = estimator.patch_reach(np.array([[row, col]]))[0, 0]
            outside = votes[i, ~reached].sum(0)
            assert outside[y[i]] - outside[k] - reached.sum() == value
    again = estimator.weakest_placements(x, y, count=3, seed=0)
    assert all(np.array_equal(a, b) for a, b in zip(again, (locations, targets, slack), strict=True))
    raw = _band_estimator("logits").weakest_placements(x, y)[2]
    assert np.all(raw == -np.inf)  # raw logits are unbounded: any place may do


def test_base_surrogate_follows_the_unmasked_vote(small_estimator):
    x = np.random.default_rng(3).random((5, 3, 32, 32), dtype=np.float32)
    surrogate = small_estimator.base_surrogate()
    np.testing.assert_allclose(surrogate.predict(x), small_estimator.predict_base(x), rtol=1e-5, atol=1e-4)
    assert surrogate.loss_gradient(x, np.eye(10)[np.zeros(5, dtype=int)]).shape == x.shape
