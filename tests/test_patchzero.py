import numpy as np
import pytest
import torch
from art.attacks.evasion import AdversarialPatchPyTorch, ProjectedGradientDescent
from torch import nn

from art_patch_defenses.models import cifar_resnet, make_classifier, save_checkpoint
from art_patch_defenses.patchzero import PatchZero, build_detector, detector_loss

FILL = (0.49, 0.48, 0.45)


class RegionDetector(nn.Module):
    """A stand-in detector with known output: logit +8 inside a fixed box, -8 elsewhere."""

    def __init__(self, box: tuple[int, int, int, int] | None, logit: float = 8.0) -> None:
        super().__init__()
        self.box, self.logit = box, logit
        self.gain = nn.Parameter(torch.ones(()))  # so gradients through the detector are not structurally zero

    def forward(self, x):
        logits = torch.full_like(x[:, :1], -self.logit) + 0 * x[:, :1] * self.gain
        if self.box is not None:
            r0, r1, c0, c1 = self.box
            logits[:, :, r0:r1, c0:c1] = self.logit + x[:, :1, r0:r1, c0:c1] * self.gain
        return logits, logits.amax(dim=(2, 3))


@pytest.fixture(scope="module")
def network():
    torch.manual_seed(0)
    return cifar_resnet(20).eval()


def classifier_with(network, patchzero):
    classifier = make_classifier(network, "cifar_resnet20")
    classifier.set_params(preprocessing_defences=[patchzero])
    return classifier


def images(n=4, h=32, w=32, seed=0):
    return np.random.default_rng(seed).random((n, 3, h, w), dtype=np.float32)


def test_benign_images_pass_unchanged_where_nothing_is_detected():
    patchzero = PatchZero(RegionDetector(None), FILL, dilation=2)
    x = torch.from_numpy(images())
    out, _ = patchzero.forward(x)
    assert torch.equal(out, x)
    assert not patchzero.masks(x.numpy()).any()


def test_detected_region_is_dilated_and_repainted_with_the_mean():
    patchzero = PatchZero(RegionDetector((10, 14, 5, 9)), FILL, dilation=1)
    x = images()
    masks = patchzero.masks(x)
    expected = np.zeros((32, 32), bool)
    expected[9:15, 4:10] = True
    assert np.array_equal(masks[0], expected)
    segmentation = np.zeros((32, 32), bool)
    segmentation[10:14, 5:9] = True
    assert np.array_equal(patchzero.masks(x, dilated=False)[0], segmentation)
    out, _ = patchzero.forward(torch.from_numpy(x))
    out = out.detach().numpy()
    np.testing.assert_allclose(out[:, :, 9:15, 4:10], np.broadcast_to(np.array(FILL).reshape(1, 3, 1, 1), (4, 3, 6, 6)))
    np.testing.assert_array_equal(out[:, :, ~expected], x[:, :, ~expected])


def test_odd_input_sizes_round_trip_through_the_pspnet():
    torch.manual_seed(0)
    patchzero = PatchZero(build_detector(), FILL)
    x = images(2, 31, 29)
    out, _ = patchzero.forward(torch.from_numpy(x))
    assert out.shape == (2, 3, 31, 29) and patchzero.masks(x).shape == (2, 31, 29)


def test_nhwc_gives_the_nchw_result_transposed():
    x = images()
    nchw = PatchZero(RegionDetector((3, 9, 3, 9)), FILL).forward(torch.from_numpy(x))[0].detach().numpy()
    nhwc = PatchZero(RegionDetector((3, 9, 3, 9)), FILL, channels_first=False)
    out = nhwc.forward(torch.from_numpy(x.transpose(0, 2, 3, 1)))[0].detach().numpy()
    np.testing.assert_array_equal(out.transpose(0, 3, 1, 2), nchw)
    with pytest.raises(ValueError, match="check channels_first"):
        nhwc.forward(torch.from_numpy(x))


def test_set_params_revalidates():
    patchzero = PatchZero(RegionDetector(None), FILL)
    patchzero.set_params(threshold=0.7, dilation=3)
    assert patchzero.threshold == 0.7 and patchzero.dilation == 3
    for bad, message in (({"threshold": 1.5}, "threshold"), ({"dilation": -1}, "dilation"),
                         ({"bpda": "yes"}, "bpda")):
        with pytest.raises(ValueError, match=message):
            patchzero.set_params(**bad)
        assert (patchzero.threshold, patchzero.dilation, patchzero.bpda) == (0.7, 3, True)  # nothing lost
    with pytest.raises(ValueError, match="fill_value"):
        PatchZero(RegionDetector(None), (0.5, 2.0, 0.5))


def test_bpda_gradient_reaches_the_detector_and_downstream_only_cuts_it(network):
    x = images(3)
    y = np.eye(10)[[1, 2, 3]]
    torch.manual_seed(0)
    detector = build_detector()
    bpda = classifier_with(network, PatchZero(detector, FILL, bpda=True, threshold=0.5))
    do = classifier_with(network, PatchZero(detector, FILL, bpda=False, threshold=0.5))
    g_bpda, g_do = bpda.loss_gradient(x, y), do.loss_gradient(x, y)
    assert np.isfinite(g_bpda).all() and np.abs(g_bpda).max() > 0
    assert not np.allclose(g_bpda, g_do)  # the surrogate adds the detector's path
    # Downstream-only: the gradient is exactly (1 - M) times the classifier's gradient at the repainted image.
    masks = PatchZero(detector, FILL).masks(x)[:, None]
    repainted = (x * (1 - masks) + np.array(FILL, np.float32).reshape(1, 3, 1, 1) * masks).astype(np.float32)
    plain = make_classifier(network, "cifar_resnet20")
    np.testing.assert_allclose(g_do, (1 - masks) * plain.loss_gradient(repainted, y), rtol=1e-4, atol=1e-6)


def test_art_attacks_run_on_the_defended_classifier_with_nonzero_finite_gradients(network):
    torch.manual_seed(0)
    classifier = classifier_with(network, PatchZero(build_detector(), FILL, bpda=True))
    x = images(4)
    y = classifier.predict(x).argmax(1)
    mask = np.zeros_like(x)
    mask[:, :, 4:11, 4:11] = 1
    x_adv = ProjectedGradientDescent(classifier, eps=1.0, eps_step=0.1, max_iter=3, verbose=False).generate(
        x, y, mask=mask)
    assert np.abs(x_adv - x).max() > 0 and np.array_equal(x_adv[mask == 0], x[mask == 0])
    attack = AdversarialPatchPyTorch(classifier, rotation_max=0, scale_min=0.3, scale_max=0.3, max_iter=2,
                                     batch_size=4, patch_shape=(3, 10, 10), patch_type="square", verbose=False)
    patch, _ = attack.generate(x, y=np.eye(10)[y])
    assert np.isfinite(patch).all() and np.abs(patch - 0.5).max() > 0  # it moved from its mid-grey start


def test_estimate_forward_is_the_soft_surrogate():
    patchzero = PatchZero(RegionDetector((3, 9, 3, 9), logit=0.5), FILL, dilation=0)
    x = torch.from_numpy(images(1))
    soft = patchzero.estimate_forward(x)
    hard, _ = patchzero.forward(x)
    assert not torch.allclose(soft, hard)
    p = torch.sigmoid(torch.tensor(-0.5))  # outside the box
    torch.testing.assert_close(soft[0, 0, 20, 20], x[0, 0, 20, 20] * (1 - p) + FILL[0] * p)


@pytest.mark.parametrize("bpda", [False, True], ids=["downstream_only", "bpda"])
def test_estimate_forward_follows_bpda(bpda):
    detector = RegionDetector((3, 9, 3, 9), logit=0.5)  # small logits: the sigmoid has a real gradient
    patchzero = PatchZero(detector, FILL, dilation=0, bpda=bpda)
    x = torch.from_numpy(images(2)).requires_grad_(True)
    upstream = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    (patchzero.estimate_forward(x) * upstream).sum().backward()
    fill = torch.tensor(FILL).view(1, 3, 1, 1)
    if bpda:
        # The sigmoid surrogate, differentiated by hand: d/dx [x (1 - p) + fill p] with p = sigmoid(logits(x)).
        x_ref = x.detach().clone().requires_grad_(True)
        p = torch.sigmoid(detector(x_ref)[0])
        gain_grad = detector.gain.grad.clone()
        detector.gain.grad = None
        ((x_ref * (1 - p) + fill * p) * upstream).sum().backward()
        torch.testing.assert_close(x.grad, x_ref.grad)
        torch.testing.assert_close(gain_grad, detector.gain.grad)
        assert gain_grad.abs() > 0
    else:
        # The mask is a constant: the gradient is (1 - M) times the upstream one and never reaches the detector.
        hard = torch.from_numpy(patchzero.masks(x.detach().numpy())[:, None]).float()
        torch.testing.assert_close(x.grad, upstream * (1 - hard))
        assert detector.gain.grad is None
        torch.testing.assert_close(patchzero.estimate_forward(x), patchzero.forward(x)[0])


def test_checkpoint_round_trip_and_training_loss(tmp_path):
    torch.manual_seed(0)
    detector = build_detector()
    path = tmp_path / "det.pt"
    save_checkpoint(detector, path, detector={"encoder_name": "resnet18"}, fill_value=list(FILL))
    loaded = PatchZero.from_checkpoint(path)
    assert loaded.fill_value == pytest.approx(FILL)
    x = torch.from_numpy(images(2))
    torch.testing.assert_close(loaded.forward(x)[0], PatchZero(detector, FILL).forward(x)[0])
    masks = torch.zeros(2, 32, 32)
    masks[0, 3:8, 3:8] = 1
    loss = detector_loss(detector.train(), x, masks)
    loss.backward()
    assert torch.isfinite(loss) and loss > 0
    with pytest.raises(ValueError, match="stores no fill_value"):
        save_checkpoint(detector, tmp_path / "bare.pt")
        PatchZero.from_checkpoint(tmp_path / "bare.pt")


@pytest.mark.parametrize("joint", [0.0, 1.0])
def test_stage2_attacks_with_the_joint_loss_when_asked(network, tmp_path, monkeypatch, joint):
    import art_patch_defenses.patchzero.training as training

    calls = []
    real = training.patchzero_joint_pgd

    def spy(estimator, patchzero, *args, **kwargs):
        calls.append(patchzero)
        return real(estimator, patchzero, *args, **kwargs)

    monkeypatch.setattr(training, "patchzero_joint_pgd", spy)
    torch.manual_seed(0)
    start = tmp_path / "start.pt"
    save_checkpoint(build_detector(), start, detector={}, fill_value=list(FILL))
    config = training.PatchZeroTrainingConfig(stage2_steps=2, stage2_pgd_iter=1, batch_size=4, init_from=str(start),
                                              stage2_joint=joint, checkpoint_every=10)
    x, y = images(8), np.arange(8) % 10
    training.train_patchzero(make_classifier(network, "cifar_resnet20"), x, y, list(FILL), tmp_path / "work",
                             config, verbose=False)
    assert len(calls) == (2 if joint else 0)
    assert all(callable(getattr(found, "detector_probability", None)) for found in calls)
    with pytest.raises(ValueError, match="stage2_joint is a share"):
        training.train_patchzero(None, x, y, list(FILL), tmp_path / "bad",
                                 training.PatchZeroTrainingConfig(stage2_joint=1.5), verbose=False)


def test_training_logs_through_logging_not_print(caplog):
    import ast
    import inspect
    import logging
    from pathlib import Path

    import art_patch_defenses.patchzero as package
    from art_patch_defenses.patchzero import train_patchzero

    default_log = inspect.signature(train_patchzero).parameters["log"].default
    with caplog.at_level(logging.INFO, logger="art_patch_defenses.patchzero"):
        default_log("stage 1 epoch 1/1 loss 0.1")
    assert [r.name for r in caplog.records] == ["art_patch_defenses.patchzero.training"]
    for path in Path(package.__file__).parent.glob("*.py"):
        names = {node.id for node in ast.walk(ast.parse(path.read_text())) if isinstance(node, ast.Name)}
        assert "print" not in names, f"{path.name} uses print; library code logs through logging"
