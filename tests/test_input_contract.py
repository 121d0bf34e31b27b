"""The input contract at every public entry point: each bad input gives a clear ValueError naming the problem
(never a deep traceback or a silently wrong answer), and the accepted variants (float64, integer images in range,
one-hot labels) give the same answer as float32 indices."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from art_patch_defenses.validation import check_labels

BAD_IMAGES = {
    "nan": ("NaN or infinite", lambda x: np.where(np.arange(x.size).reshape(x.shape) == 5, np.nan, x)),
    "inf": ("NaN or infinite", lambda x: np.where(np.arange(x.size).reshape(x.shape) == 5, np.inf, x)),
    "0-255 floats": ("outside clip_values|outside \\[0, 1\\]", lambda x: x * 255),
    "0-255 uint8": ("outside clip_values|outside \\[0, 1\\]", lambda x: (x * 255).astype(np.uint8)),
    "three channels": ("sample shape", lambda x: np.repeat(x, 3, axis=1)),
    "28x28": ("sample shape", lambda x: x[:, :, :28, :28]),
    "NHWC": ("looks NHWC", lambda x: x.transpose(0, 2, 3, 1)),
    "empty batch": ("empty batch", lambda x: x[:0]),
    "3-D": ("4-D batch", lambda x: x[0]),
    "a list": ("numpy array", lambda x: x.tolist()),
    "strings": ("numeric", lambda x: x.astype(str)),
}


def _patchzero_classifier():
    from art_patch_defenses.models import build_model, make_classifier
    from art_patch_defenses.patchzero import PatchZero

    classifier = make_classifier(build_model("mnist_cnn", "embedded"), "mnist_cnn")
    classifier.set_params(preprocessing_defences=[PatchZero.from_checkpoint("mnist_embedded_patchzero_mnist_cnn.pt")])
    return classifier


def _fnc():
    from art_patch_defenses.fnc import get_art_model

    return get_art_model({"name": "mnist_cnn", "weights": "embedded", "alpha": 1.2,
                          "insertion_points": ["features.7"]})


def _robust_masking():
    from art_patch_defenses.robust_masking import get_art_model

    return get_art_model({"name": "mnist_bagnet", "weights": "embedded", "patch_size": 7})


def _scalecert():
    from art_patch_defenses.scalecert import get_art_model

    return get_art_model({"name": "mnist_cnn", "weights": "scalecert", "top_k": 0.1, "patch_size": 5})


def _mrs():
    from art_patch_defenses.mrs import get_art_model

    return get_art_model({"name": "mnist_cnn", "weights": "embedded", "sigma_255": 64, "sample_size": 20, "n0": 5,
                          "patch_size": 7, "stride": 8})


def _patchcleanser():
    from art_patch_defenses.patchcleanser import get_art_model

    return get_art_model({"name": "mnist_cnn", "weights": "embedded", "patch_size": 5, "masks_per_axis": 2})


@pytest.fixture(scope="module")
def estimators():
    return {"fnc": _fnc(), "patchzero": _patchzero_classifier(), "robust_masking": _robust_masking(),
            "scalecert": _scalecert(), "mrs": _mrs(), "patchcleanser": _patchcleanser()}


def _entry_points(estimators, y):
    from art_patch_defenses.attacks import MaskedAutoPGD, adversarial_patch, lavan_patch, masked_pgd
    from art_patch_defenses.attacks.eot import masked_pgd_eot

    mask = lambda x: np.ones(np.shape(x), np.float32)  # noqa: E731 - a mask of the image's own shape
    undefended = estimators["patchzero"]
    points = {f"{name}.predict": (lambda x, e=est: e.predict(x)) for name, est in estimators.items()}
    points |= {f"{name}.loss_gradient": (lambda x, e=est: e.loss_gradient(x, y[: len(x)] if len(x) else y[:0]))
               for name, est in estimators.items() if name in ("fnc", "robust_masking", "patchzero")}
    points |= {f"{name}.certify": (lambda x, e=est: e.certify(x))
               for name, est in estimators.items() if hasattr(est, "certify")}
    points |= {
        "masked_pgd": lambda x: masked_pgd(undefended, x, mask(x), max_iter=1, verbose=False),
        "MaskedAutoPGD": lambda x: MaskedAutoPGD(undefended, max_iter=1, verbose=False).generate(x, mask=mask(x)),
        "masked_pgd_eot": lambda x: masked_pgd_eot(estimators["mrs"], x, mask(x), y[: len(x)], max_iter=1),
        "lavan_patch": lambda x: lavan_patch(undefended, x, y[: len(x)], patch_size=5, max_iter=1, verbose=False),
        "adversarial_patch": lambda x: adversarial_patch(undefended, x, y[: len(x)], patch_size=6, max_iter=1,
                                                         verbose=False),
    }
    return points


ENTRY_POINTS = ["fnc.predict", "patchzero.predict", "robust_masking.predict", "scalecert.predict", "mrs.predict",
                "patchcleanser.predict", "fnc.loss_gradient", "robust_masking.loss_gradient",
                "patchzero.loss_gradient", "robust_masking.certify", "scalecert.certify", "mrs.certify",
                "patchcleanser.certify", "masked_pgd", "MaskedAutoPGD", "masked_pgd_eot", "lavan_patch",
                "adversarial_patch"]
#: loss_gradient does not check the clip range (attacks with expectation over noise go beyond it)
UNCLIPPED = ("loss_gradient",)


@pytest.mark.parametrize("bad", list(BAD_IMAGES))
@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_bad_images_give_a_clear_error(estimators, mnist_test, entry, bad):
    message, make = BAD_IMAGES[bad]
    if entry.endswith(UNCLIPPED) and "0-255" in bad:
        pytest.skip("gradients are taken beyond the clip range on purpose (noise); predict checks it")
    x, y = mnist_test.x[:2], mnist_test.y[:2]
    if entry in ("masked_pgd", "MaskedAutoPGD") and bad == "a list":
        pytest.skip("the mask is built from the list's shape here; the list itself is refused by predict")
    if entry.endswith(".predict") and bad == "a list":
        pytest.skip("ART's InputFilter turns a list into an array before predict, as it does for every ART classifier")
    call = _entry_points(estimators, y)[entry]
    with pytest.raises(ValueError, match=message):
        call(make(x))


@pytest.mark.parametrize("entry", ["fnc.predict", "patchzero.predict", "robust_masking.predict",
                                   "scalecert.predict", "patchcleanser.predict", "robust_masking.certify",
                                   "scalecert.certify", "patchcleanser.certify"])
def test_float64_and_in_range_integers_give_the_float32_answer(estimators, mnist_test, entry):
    x = mnist_test.x[:3]
    call = _entry_points(estimators, mnist_test.y[:3])[entry]

    def answer(images):
        out = call(images)
        return (out.prediction, out.certified) if hasattr(out, "certified") else out

    reference = answer(x)
    for variant in (x.astype(np.float64), (x > 0.5).astype(np.uint8)):
        got = answer(variant)
        if variant.dtype == np.uint8:
            reference_binary = answer((x > 0.5).astype(np.float32))
            np.testing.assert_equal(got, reference_binary)
        else:
            np.testing.assert_equal(got, reference)


@pytest.mark.parametrize("labels, message", [
    (np.array([2.7, 1.0]), "integer class indices"),
    (np.array([1, 10]), "outside \\[0, 9\\]"),
    (np.array([-1, 2]), "outside \\[0, 9\\]"),
    (np.array([1, 2, 3]), "must hold 2 labels"),
    (np.array([[0.5, 0.5] + [0] * 8, [1] + [0] * 9]), "one-hot"),
    (np.array(["a", "b"]), "class indices or one-hot"),
    (np.array([np.nan, 1.0]), "integer class indices"),
])
def test_bad_labels_give_a_clear_error(estimators, mnist_test, labels, message):
    from art_patch_defenses.attacks import masked_pgd

    x = mnist_test.x[:2]
    with pytest.raises(ValueError, match=message):
        estimators["robust_masking"].certify(x, labels)
    with pytest.raises(ValueError, match=message):
        masked_pgd(estimators["patchzero"], x, np.ones_like(x), labels, max_iter=1, verbose=False)
    with pytest.raises(ValueError, match=message):
        estimators["fnc"].loss_gradient(x, labels)


def test_art_attacks_still_pass_their_own_tensors(estimators, mnist_test):
    """ART's PyTorch attacks call loss_gradient with tensors they built: the contract leaves those alone."""
    fnc = estimators["fnc"]
    x = torch.from_numpy(mnist_test.x[:2])
    y = torch.nn.functional.one_hot(torch.from_numpy(mnist_test.y[:2]), 10).float()
    assert fnc.loss_gradient(x, y).shape == x.shape


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(allow_nan=True, allow_infinity=True, width=32), min_size=1, max_size=6))
def test_check_labels_accepts_exactly_the_integral_classes(values):
    y = np.asarray(values, dtype=np.float64)
    valid = np.all(np.isfinite(y)) and np.all(y == np.round(y)) and y.min() >= 0 and y.max() <= 9
    if valid:
        np.testing.assert_array_equal(check_labels(y, len(y), 10), y.astype(np.int64))
    else:
        with pytest.raises(ValueError):
            check_labels(y, len(y), 10)


@pytest.mark.parametrize("kwargs, message", [
    ({"n": 0}, "n must be a positive integer"), ({"n": 4.5}, "n must be a positive integer"),
    ({"n": "4"}, "n must be a positive integer"), ({"n": True}, "n must be a positive integer"),
    ({"seed": "0"}, "seed must be a non-negative integer"), ({"seed": -1}, "seed must be a non-negative integer"),
    ({"split": "validation"}, "split must be"),
])
def test_data_loader_arguments_are_checked(kwargs, message):
    from art_patch_defenses.data import load_dataset

    with pytest.raises(ValueError, match=message):
        load_dataset("mnist_embedded", **{"split": "test", **kwargs})
