"""PatchAutoAttack: worst case per image over its attacks and placements, changes only inside the reported patch,
reproducible under one seed, judged by the defended predict (a certifier through its attack surrogate), and a
random search that fools an undefended model without gradients."""

import numpy as np
import pytest

from art_patch_defenses.attacks import PatchAutoAttack, PatchBudget, placement_scan, random_search_patch
from art_patch_defenses.attacks.ensemble import _margins

SMALL = {"pgd": ((0.1, 5),), "apgd_iter": 5, "targeted_top_k": 1, "random_placements": 1,
         "gradient_placements": 1, "random_search_queries": 20}


@pytest.fixture(scope="module")
def data(mnist_test):
    picks = np.linspace(0, len(mnist_test) - 1, 10).astype(int)  # spread over the class-sorted slice
    return mnist_test.x[picks], mnist_test.y[picks]


def test_the_ensemble_is_the_worst_case_and_stays_inside_its_patches(mnist_classifier, data):
    x, y = data
    attack = PatchAutoAttack(mnist_classifier, patch_size=7, seed=0, verbose=False, **SMALL)
    x_adv = attack.generate(x, y)
    report = attack.report
    changed = np.abs(x_adv - x).max(axis=1) > 0
    assert not np.any(changed & ~attack.last_masks), "a pixel outside the reported patch changed"
    assert np.all(attack.last_masks.sum(axis=(1, 2)) == 49)
    right = mnist_classifier.predict(x_adv).argmax(1) == y
    assert report.ensemble_accuracy == pytest.approx(right.mean())
    assert report.ensemble_accuracy <= min(report.accuracy_after.values())
    assert report.ensemble_accuracy <= report.random_search_accuracy
    assert report.ensemble_accuracy < report.clean_accuracy, "the attack must fool the undefended model"
    assert report.placements == ["random_1", "gradient_1"] and report.budget["pgd"] == [[0.1, 5]]


def test_every_attack_keeps_its_entry_when_nothing_is_left_to_fool(mnist_classifier, data):
    """Chunks of a sharded run pool ``accuracy_after`` key by key: an attack that found every image already
    fooled (here: wrong labels, so none is right) still reports its accuracy."""
    x, _ = data
    wrong = (mnist_classifier.predict(x).argmax(1) + 1) % 10
    attack = PatchAutoAttack(mnist_classifier, patch_size=5, seed=0, verbose=False, **SMALL)
    attack.generate(x, wrong)
    names = [f"{place}/{name}" for place in attack.report.placements for name in attack.report.attacks]
    assert attack.report.accuracy_after == dict.fromkeys(names, 0.0)
    assert attack.report.white_box_accuracy == 0.0 == attack.report.ensemble_accuracy


def test_one_seed_makes_a_rerun_identical(mnist_classifier, data):
    x, y = data
    runs = [PatchAutoAttack(mnist_classifier, patch_size=5, seed=3, verbose=False, **SMALL) for _ in range(2)]
    outputs = [run.generate(x, y) for run in runs]
    np.testing.assert_array_equal(outputs[0], outputs[1])
    np.testing.assert_array_equal(runs[0].last_masks, runs[1].last_masks)
    assert runs[0].report == runs[1].report


def test_a_given_mask_is_a_placement(mnist_classifier, data):
    x, y = data
    mask = np.zeros((len(x), 32, 32), bool)
    mask[:, 2:9, 3:10] = True
    attack = PatchAutoAttack(mnist_classifier, patch_size=7, seed=0, verbose=False,
                             **{**SMALL, "random_placements": 0, "gradient_placements": 0, "random_search_queries": 0})
    x_adv = attack.generate(x, y, mask=mask)
    assert attack.report.placements == ["given"]
    assert not np.any((np.abs(x_adv - x).max(axis=1) > 0) & ~mask)


def test_random_search_fools_without_gradients(mnist_classifier, data):
    x, y = data
    x_adv, masks = random_search_patch(mnist_classifier, x, y, (8, 8), queries=60, seed=0)
    assert np.mean(mnist_classifier.predict(x_adv).argmax(1) == y) < np.mean(mnist_classifier.predict(x).argmax(1) == y)
    assert not np.any((np.abs(x_adv - x).max(axis=1) > 0) & ~masks)


def test_the_placement_scan_keeps_each_images_worst_place(mnist_classifier, data):
    """Against a brute-force scan of the same grid with the same patch: the kept place has the lowest margin."""
    x, y = data
    x_scan, masks = placement_scan(mnist_classifier, x, y, (6, 6), stride=13, seed=2)
    assert not np.any((np.abs(x_scan - x).max(axis=1) > 0) & ~masks) and np.all(masks.sum(axis=(1, 2)) == 36)
    content = np.stack([x_scan[k][:, masks[k]].reshape(1, 6, 6) for k in range(len(x))])
    lowest = np.full(len(x), np.inf)
    for row in (0, 13, 26):
        for col in (0, 13, 26):
            pasted = x.copy()
            pasted[:, :, row : row + 6, col : col + 6] = content
            lowest = np.minimum(lowest, _margins(mnist_classifier.predict(pasted), y, 10))
    np.testing.assert_allclose(_margins(mnist_classifier.predict(x_scan), y, 10), lowest, rtol=1e-5)
    again, _ = placement_scan(mnist_classifier, x, y, (6, 6), stride=13, seed=2)
    np.testing.assert_array_equal(again, x_scan)


def test_a_scanned_place_joins_the_placements_and_its_fooled_images_count(mnist_classifier, data):
    x, y = data
    attack = PatchAutoAttack(mnist_classifier, patch_size=7, seed=0, verbose=False,
                             **{**SMALL, "scan_stride": 5, "random_placements": 0, "gradient_placements": 0})
    x_adv = attack.generate(x, y)
    report = attack.report
    assert report.placements == ["scan"] and report.budget["scan_stride"] == 5
    assert list(report.accuracy_after)[0] == "placement_scan"
    assert report.ensemble_accuracy <= report.accuracy_after["placement_scan"] <= report.clean_accuracy
    assert not np.any((np.abs(x_adv - x).max(axis=1) > 0) & ~attack.last_masks)
    assert report.ensemble_accuracy == pytest.approx(np.mean(mnist_classifier.predict(x_adv).argmax(1) == y))


def test_a_certifier_is_attacked_through_its_surrogate_and_judged_by_its_predict(data):
    from art_patch_defenses.scalecert import get_art_model

    scalecert = get_art_model({"name": "mnist_cnn", "weights": "scalecert", "top_k": 0.1, "patch_size": 5})
    x, y = data
    attack = PatchAutoAttack(scalecert, patch_size=5, seed=0, verbose=False,
                             **{**SMALL, "random_search_queries": 0, "targeted_top_k": 0})
    x_adv = attack.generate(x, y)
    right = scalecert.predict_labels(x_adv) == y  # an alert (-1) is not right
    assert attack.report.ensemble_accuracy == pytest.approx(right.mean())


def test_under_the_detection_threat_model_an_alert_is_safe(data):
    """alert_is_safe: an image is fooled only with a wrong label and no alert; the attacks go on where a patch
    was caught, and the report counts an alert as right."""
    from art_patch_defenses.scalecert import get_art_model

    scalecert = get_art_model({"name": "mnist_cnn", "weights": "scalecert", "top_k": 0.1, "patch_size": 5})
    x, y = data
    budget = {**SMALL, "random_search_queries": 10, "targeted_top_k": 0}
    strict = PatchAutoAttack(scalecert, patch_size=5, seed=0, verbose=False, **budget)
    lenient = PatchAutoAttack(scalecert, patch_size=5, seed=0, verbose=False, alert_is_safe=True, **budget)
    strict.generate(x, y)
    labels = scalecert.predict_labels(lenient.generate(x, y))
    assert lenient.report.alert_is_safe and lenient.report.ensemble_accuracy == pytest.approx(
        np.mean((labels == y) | (labels == -1)))
    assert lenient.report.ensemble_accuracy >= strict.report.ensemble_accuracy
    assert lenient.report.clean_accuracy >= strict.report.clean_accuracy


def test_patchzero_gets_its_joint_adaptive_attack(mnist_test):
    from art_patch_defenses.models import build_model, make_classifier
    from art_patch_defenses.patchzero import PatchZero

    classifier = make_classifier(build_model("mnist_cnn", "embedded"), "mnist_cnn")
    classifier.set_params(preprocessing_defences=[PatchZero.from_checkpoint("mnist_embedded_patchzero_mnist_cnn.pt")])
    attack = PatchAutoAttack(classifier, patch_size=7, seed=0, verbose=False,
                             **{**SMALL, "random_search_queries": 0, "targeted_top_k": 0})
    attack.generate(mnist_test.x[:4], mnist_test.y[:4])
    assert "patchzero_joint_bpda_pgd" in attack.report.attacks


@pytest.mark.parametrize("overrides, message", [
    ({"eps": 0.0}, "eps"), ({"pgd": ()}, "pgd"), ({"restarts": 0}, "restarts"),
    ({"random_search_queries": -1}, "random_search_queries"), ({"scan_stride": -2}, "scan_stride"),
])
def test_budgets_are_checked(overrides, message):
    with pytest.raises(ValueError, match=message):
        PatchBudget(**overrides)


def test_a_patch_larger_than_the_image_is_refused(mnist_classifier, data):
    with pytest.raises(ValueError, match="larger than the image"):
        PatchAutoAttack(mnist_classifier, patch_size=40, verbose=False).generate(*data)


@pytest.mark.parametrize("search", ["random_search", "placement_scan"])
def test_the_query_attacks_refuse_bad_input(mnist_classifier, data, search):
    x, y = data
    attack = {"random_search": lambda *args: random_search_patch(*args, 2),
              "placement_scan": lambda *args: placement_scan(*args, 9)}[search]

    def run(images, labels=y, shape=(5, 5)):
        return attack(mnist_classifier, images, labels, shape)

    nan = x.copy()
    nan[0, 0, 0, 0] = np.nan
    for images, message in ((nan, "NaN"), (x * 255, "range|clip"), (x.transpose(0, 2, 3, 1), "shape|layout|NHWC"),
                            (x[:0], "empty")):
        with pytest.raises(ValueError, match=message):
            run(images)
    with pytest.raises(ValueError, match="larger than the image"):
        run(x, shape=(40, 40))
    with pytest.raises(ValueError):
        run(x, labels=y[:3])
    if search == "placement_scan":
        with pytest.raises(ValueError, match="stride"):
            placement_scan(mnist_classifier, x, y, (5, 5), 0)
