"""One protocol suite over every certifier: the same calls, the same result types, ART-style calls refused with a
clear error or working, certify == the object's own predict on certified samples, abstain never read as class 0,
and ``violates`` that tells a sound certificate from a broken one."""

import numpy as np
import pytest
import torch
from torch import nn

from art_patch_defenses.certification import (
    ABSTAIN,
    CERTIFICATE_KINDS,
    DETECTION,
    RECOVERY,
    REGION_L2,
    CertificationResult,
    CertifierMixin,
    predict_labels,
    with_abstain_column,
)

N_IMAGES = 8


def _robust_masking():
    from art_patch_defenses.robust_masking import get_art_model

    return get_art_model({"name": "mnist_bagnet", "weights": "embedded", "patch_size": 7})


def _patchcleanser():
    from art_patch_defenses.patchcleanser import get_art_model

    return get_art_model({"name": "mnist_cnn", "weights": "embedded", "patch_size": 5, "masks_per_axis": 3})


def _scalecert():
    from art_patch_defenses.scalecert import get_art_model

    return get_art_model({"name": "mnist_cnn", "weights": "scalecert", "top_k": 0.1, "patch_size": 5})


def _mrs(**settings):
    from art_patch_defenses.mrs import get_art_model

    return get_art_model({"name": "mnist_cnn", "weights": "embedded", "sigma_255": 64, "sample_size": 100, "n0": 10,
                          "patch_size": 7, "stride": 4, "tau": 4, **settings})


class _TinyBandBase(nn.Module):
    """A small untrained base classifier for ART's column de-randomized smoothing on 1-channel 32x32 images
    (2 input channels: ART's (x, 1 - x) encoding)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(nn.Conv2d(2, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                  nn.Linear(8, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def _derandomized_smoothing():
    from art_patch_defenses.baselines import PyTorchDeRandomizedSmoothingCertifier

    return PyTorchDeRandomizedSmoothingCertifier(
        model=_TinyBandBase(), loss=nn.CrossEntropyLoss(), input_shape=(1, 32, 32), nb_classes=10, ablation_size=4,
        algorithm="levine2020", ablation_type="column", threshold=0.3, logits=True, clip_values=(0.0, 1.0),
        verbose=False, device_type="cpu", patch_size=3)


BUILDERS = {"robust_masking": _robust_masking, "patchcleanser": _patchcleanser, "scalecert": _scalecert,
            "mrs": _mrs, "derandomized_smoothing": _derandomized_smoothing}
KINDS = {"robust_masking": RECOVERY, "patchcleanser": RECOVERY, "scalecert": DETECTION, "mrs": REGION_L2,
         "derandomized_smoothing": RECOVERY}


@pytest.fixture(scope="module", params=list(BUILDERS))
def certifier(request):
    return request.param, BUILDERS[request.param]()


@pytest.fixture(scope="module")
def data(mnist_test):
    picks = np.linspace(0, len(mnist_test) - 1, N_IMAGES).astype(int)  # spread over the class-sorted slice
    return mnist_test.x[picks], mnist_test.y[picks]


@pytest.fixture(scope="module")
def certified_with_labels(certifier, data):
    return certifier[1].certify(*data)


def test_same_calls_and_result_types(certifier, data, certified_with_labels):
    name, est = certifier
    x, y = data
    assert isinstance(est, CertifierMixin)
    assert est.certificate_kind == KINDS[name] and est.certificate_kind in CERTIFICATE_KINDS
    result = certified_with_labels
    assert isinstance(result, CertificationResult) and len(result) == len(x)
    assert result.prediction.dtype.kind == "i" and result.certified.dtype == bool
    assert np.all((result.prediction >= ABSTAIN) & (result.prediction < est.nb_classes))
    assert result.kind == est.certificate_kind and result.patch_size == est.patch_size
    assert not np.any(result.certified & (result.prediction != y)), "certified with labels means right"
    own = est.certify(x)  # without labels: certified for its own prediction
    right = own.prediction == y
    np.testing.assert_array_equal(own.certified[right], result.certified[right])
    clean, certified = est.eval_and_certify(x, y)
    assert type(clean) is float and type(certified) is float
    assert clean == np.mean(result.prediction == y) and certified == np.mean(result.certified)
    assert est.eval_and_certify(x, y, est.patch_size) == (clean, certified)  # ART's argument order
    scores = est.predict_base(x)
    assert scores.shape == (len(x), est.nb_classes)


def test_art_style_calls_give_clear_errors(certifier, data):
    _, est = certifier
    x, y = data
    with pytest.raises(ValueError, match="labels"):
        est.certify(x, 100)  # ART's randomized smoothing: certify(x, n)
    with pytest.raises(ValueError, match="for_patch_size"):
        est.certify(x, y, patch_size=est.patch_size + 1)
    with pytest.raises(ValueError, match="for_patch_size"):
        est.eval_and_certify(x, y, size_to_certify=est.patch_size + 1)
    with pytest.raises(ValueError, match="must hold"):
        est.certify(x, y[:-1])
    with pytest.raises(ValueError, match="clip_values"):
        est.certify(x * 255, y)
    with pytest.raises(ValueError, match="batch_size"):
        est.certify(x, y, batch_size=0)


def test_certify_agrees_with_the_objects_own_predict(certifier, data, certified_with_labels):
    _, est = certifier
    x, _ = data
    labels = est.predict_labels(x)
    certified = certified_with_labels.certified
    np.testing.assert_array_equal(labels[certified], certified_with_labels.prediction[certified])
    if est.certify_gives_prediction:  # the runner reads clean predictions from certify: every sample must agree
        np.testing.assert_array_equal(labels, certified_with_labels.prediction)


def test_another_patch_size_is_a_separate_object_and_settings_roll_back(certifier, data):
    _, est = certifier
    x, y = data
    own = est.patch_size
    before = est.certify(x, y)
    other = est.for_patch_size(own - 1)
    assert other is not est and other.patch_size == own - 1 and est.patch_size == own
    assert other.certify(x[:2], y[:2]).patch_size == own - 1
    after = est.certify(x, y)  # the original is left exactly as it was
    np.testing.assert_array_equal(before.prediction, after.prediction)
    np.testing.assert_array_equal(before.certified, after.certified)
    with pytest.raises(ValueError, match="patch_size"):
        est.set_params(patch_size=0)
    assert est.patch_size == own


def test_violates_follows_the_certificate_kind(certifier):
    _, est = certifier
    y = np.array([3, 3, 3])
    labels = np.array([3, ABSTAIN, 5])
    expected = [False, est.certificate_kind == RECOVERY, True]
    np.testing.assert_array_equal(est.violates(labels, y), expected)


def _alert_on_bright(mnist_classifier):
    """A detector that alerts on every image brighter than 0.5 on average, around the embedded MNIST CNN."""
    from art.estimators.classification import PyTorchClassifier

    from art_patch_defenses.models.registry import classifier_params

    class AlertOnBright(CertifierMixin, PyTorchClassifier):
        certificate_kind, abstains = DETECTION, True
        alerting = True  # off while ART's AutoPGD probes predict with an all-ones image in its constructor

        def _check_certifier_params(self) -> None:
            pass

        def predict(self, x, batch_size=128, **kwargs):
            scores = PyTorchClassifier.predict(self, x, batch_size=batch_size, **kwargs)
            return with_abstain_column(scores, self.alerting & (x.reshape(len(x), -1).mean(1) > 0.5))

    return AlertOnBright(**classifier_params(mnist_classifier))


def test_the_abstain_column_never_wins_a_row_that_does_not_abstain():
    """Scores that are all negative (log-probabilities, logits) keep their arg-max; an abstaining row reads as
    abstention; an all-zero row still follows ART's abstain convention."""
    scores = np.array([[-2.3, -0.1, -5.0], [3.0, -1.0, 0.5], [-1.0, -2.0, -0.5], [0.0, 0.0, 0.0]], dtype=np.float32)
    out = with_abstain_column(scores, np.array([False, False, True, False]))
    assert predict_labels(out, 3).tolist() == [1, 0, ABSTAIN, ABSTAIN]
    assert out[0, -1] < out[0, 1] and out[1, -1] == 0 and out[2].tolist() == [0, 0, 0, 1]


def test_abstain_is_never_class_zero_and_art_attacks_judge_it(mnist_classifier, mnist_test):
    """An alert keeps an arg-max from reading it as class 0: ART's own success checks count an image whose clean
    prediction was 0 and whose attacked one is an alert as changed (untargeted) and as not reaching class 0
    (targeted); ART's AutoPGD sees abstaining images as already not right; every accuracy counts it as wrong."""
    from art.attacks.evasion import AdversarialPatchPyTorch, AutoProjectedGradientDescent, ProjectedGradientDescent
    from art.utils import compute_success_array

    from art_patch_defenses.evaluation.runner import labels_in_batches

    est = _alert_on_bright(mnist_classifier)
    zeros = np.flatnonzero((mnist_test.y == 0) & (est.predict_labels(mnist_test.x) == 0))[:3]
    x, y = mnist_test.x[zeros], mnist_test.y[zeros]
    bright = np.clip(x + 0.8, 0.0, 1.0)  # the "attacked" images: the detector alerts
    scores = est.predict(bright)
    assert scores.shape == (len(x), 11) and np.all(scores[:, -1] == 1) and not scores[:, :10].any()
    assert np.all(predict_labels(scores, 10) == ABSTAIN)
    assert np.all(labels_in_batches(est, bright, 8, "test", verbose=False) == ABSTAIN)
    assert est.eval_and_certify is not None and np.mean(est.predict_labels(bright) == y) == 0.0
    one_hot = np.eye(10, dtype=np.float32)[y]
    assert compute_success_array(est, x, one_hot, bright, targeted=False).all()
    assert not compute_success_array(est, x, one_hot, bright, targeted=True).any()
    pgd = ProjectedGradientDescent(est, eps=0.1, eps_step=0.05, max_iter=1, num_random_init=2, verbose=False)
    assert pgd.generate(x, y=one_hot).shape == x.shape
    est.alerting = False
    apgd = AutoProjectedGradientDescent(est, eps=0.1, eps_step=0.05, max_iter=2, nb_random_init=1, batch_size=8,
                                        verbose=False)
    est.alerting = True
    np.testing.assert_array_equal(apgd.generate(bright, y=one_hot), bright)  # nothing left to attack
    patch_attack = AdversarialPatchPyTorch(est, rotation_max=0.0, scale_min=0.3, scale_max=0.3, max_iter=1,
                                           batch_size=3, patch_shape=(1, 8, 8), verbose=False)
    patch, _ = patch_attack.generate(x, y=one_hot)
    assert patch.shape == (1, 8, 8)


def test_an_abstaining_mrs_abstains_everywhere(mnist_test):
    """An MRS with one noise sample can never pass PREDICT's test: every row is the abstain column, never class 0."""
    est = _mrs(sample_size=1, n0=1)
    x, y = mnist_test.x[:4], mnist_test.y[:4]
    scores = est.predict(x)
    assert scores.shape == (len(x), 11) and np.all(scores[:, -1] == 1) and not scores[:, :10].any()
    assert np.all(est.predict_labels(x) == ABSTAIN)
    assert est.eval_and_certify(x, y) == (0.0, 0.0)


def test_a_plain_art_classifier_is_not_a_certifier(mnist_classifier):
    from art_patch_defenses.evaluation.verify import require_certifier

    with pytest.raises(ValueError, match="not a certifier"):
        require_certifier(mnist_classifier)
