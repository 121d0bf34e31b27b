import json

import numpy as np
import pytest
from conftest import needs_shared

from art_patch_defenses.cli import main
from art_patch_defenses.evaluation import DEFAULT_SCENARIO, load_config, run_suite
from art_patch_defenses.evaluation.config import armory_schema_gaps
from art_patch_defenses.evaluation.runner import run_scenario, scenario_label

TINY = {
    "_description": "tiny",
    "model": {"module": "art_patch_defenses.models", "name": "get_art_model",
              "model_kwargs": {"name": "mnist_cnn", "weights": "embedded"}},
    "dataset": {"name": "mnist_embedded", "n": 30, "seed": 0, "batch_size": 16},
    "attack": {"module": "art.attacks.evasion", "name": "ProjectedGradientDescent", "type": "masked",
               "patch_size": 0.05, "location": "random",
               "kwargs": {"norm": "inf", "eps": 1.0, "eps_step": 0.1, "max_iter": 5, "num_random_init": 0}},
}


def test_tiny_config_writes_armory_shaped_results(tmp_path):
    summary = run_suite(TINY, tmp_path, verbose=False)
    payload = json.loads((tmp_path / "results.json").read_text())
    record = payload["scenarios"][0]
    assert {"config", "results", "timestamp"} <= set(record)
    results = record["results"]
    assert results["num_samples"] == 30
    assert results["max_change_outside_patch"] == 0.0
    assert results["patch_pixels"] == [7, 7] and results["location"] == "random"
    assert 0 <= results["adversarial_mean_categorical_accuracy"] <= results["benign_mean_categorical_accuracy"]
    assert (tmp_path / "report.png").stat().st_size > 1000
    assert "ProjectedGradientDescent" in (tmp_path / "report.md").read_text()
    assert summary["files"]["json"].endswith("results.json")


def test_universal_patch_scenario(tmp_path):
    config = json.loads(json.dumps(TINY))
    config["attack"] = {"module": "art_patch_defenses.attacks", "name": "lavan_patch", "type": "patch",
                        "patch_size": 8, "targeted": True, "targeted_labels": {"scheme": "fixed", "value": 1},
                        "kwargs": {"max_iter": 5}}
    config["dataset"]["patch_train_n"] = 40
    record = run_suite(config, tmp_path, verbose=False)["outcomes"][0].record
    assert "adversarial_targeted_success_rate" in record["results"]
    assert record["results"]["patch_trained_on"].startswith("40 mnist_embedded train")


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda c: c.update(atack={}), r"unknown config key\(s\) \['atack'\].*known keys"),
        (lambda c: c["attack"].update(patchsize=3), r"unknown config key\(s\) \['patchsize'\] in attack"),
        (lambda c: c["attack"].pop("patch_size"), "patch_size is required"),
        (lambda c: c["attack"].update(type="sweep"), "attack.type must be one of"),
        (lambda c: c.update(defense={"module": "x", "name": "y", "type": "Wrapper"}), "defense.type"),
        (lambda c: c.pop("dataset"), "lacks the 'dataset' block"),
    ],
)
def test_bad_configs_are_named(change, message):
    config = json.loads(json.dumps(TINY))
    change(config)
    with pytest.raises(ValueError, match=message):
        load_config(config)


def test_bad_names_are_named(tmp_path):
    config = json.loads(json.dumps(TINY))
    config["attack"]["module"] = "art_patch_defenses.nowhere"
    with pytest.raises(ValueError, match="cannot import module"):
        run_suite(config, tmp_path, verbose=False)
    config = json.loads(json.dumps(TINY))
    config["model"]["model_kwargs"]["name"] = "resnet9000"
    with pytest.raises(ValueError, match="unknown model"):
        run_suite(config, tmp_path, verbose=False)


def test_default_scenario_is_a_valid_suite():
    suite = load_config(DEFAULT_SCENARIO)
    assert len(suite["scenarios"]) >= 2


def test_cli_evaluate_prints_the_table(tmp_path, capsys):
    path = tmp_path / "tiny.json"
    path.write_text(json.dumps(TINY))
    assert main(["evaluate", str(path), "--output-dir", str(tmp_path / "out"), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "| mnist_cnn | none | ProjectedGradientDescent | 7x7, 4.8% | 30 |" in out
    assert main(["evaluate", str(tmp_path / "missing.json"), "--quiet"]) == 2


@pytest.mark.slow
def test_embedded_default_scenario_runs(tmp_path):
    summary = run_suite(None, tmp_path, verbose=False)
    defences = []
    for outcome in summary["outcomes"]:
        results = outcome.record["results"]
        _, defence, _ = scenario_label(outcome.record["config"])
        defences.append(defence)
        assert results["max_change_outside_patch"] == 0.0
        if defence == "none":
            assert results["benign_mean_categorical_accuracy"] > 0.85
            assert results["adversarial_mean_categorical_accuracy"] < results["benign_mean_categorical_accuracy"]
        if defence in ("robust_masking", "scalecert", "patchcleanser"):  # certified implies right when clean
            assert results["certified_accuracy"] <= results["benign_mean_categorical_accuracy"]
    assert {"none", "fnc", "PatchZero.from_checkpoint", "robust_masking", "mrs", "scalecert",
            "patchcleanser"} <= set(defences)


def test_mask_metrics_on_hand_counted_masks():
    from art_patch_defenses.evaluation.metrics import mask_precision_recall_f1

    true = np.zeros((1, 4, 4), bool)
    true[0, :2, :2] = True  # 4 pixels
    predicted = np.zeros_like(true)
    predicted[0, :2, :3] = True  # 6 pixels, 4 of them right
    quality = mask_precision_recall_f1(predicted, true)
    assert quality == pytest.approx({"precision": 4 / 6, "recall": 1.0, "f1": 0.8})
    assert mask_precision_recall_f1(np.zeros_like(true), true)["f1"] == 0.0


def test_preprocessor_defence_from_config_reports_detection_quality(tmp_path):
    import torch

    from art_patch_defenses.models import save_checkpoint
    from art_patch_defenses.patchzero import build_detector

    torch.manual_seed(0)
    path = tmp_path / "detector.pt"
    save_checkpoint(build_detector(in_channels=1), path, detector={"in_channels": 1}, fill_value=[0.1])
    config = json.loads(json.dumps(TINY))
    config["defense"] = {"module": "art_patch_defenses.patchzero", "name": "PatchZero.from_checkpoint",
                         "kwargs": {"path": str(path), "bpda": True}, "type": "Preprocessor"}
    outcome = run_suite(config, tmp_path / "out", verbose=False)["outcomes"][0]
    results = outcome.record["results"]
    assert {"detector_precision", "detector_recall", "detector_f1"} <= set(results)
    assert results["max_change_outside_patch"] == 0.0
    assert "PatchZero.from_checkpoint" in (tmp_path / "out" / "report.md").read_text()


def test_package_exposes_its_components_lazily():
    import art_patch_defenses

    assert art_patch_defenses.PatchZero.__name__ == "PatchZero"
    assert callable(art_patch_defenses.fnc_classifier)
    for certifier in ("PyTorchRobustMasking", "PyTorchMRS", "PyTorchScaleCert", "PyTorchPatchCleanser"):
        assert hasattr(getattr(art_patch_defenses, certifier), "certify")
    assert callable(art_patch_defenses.verify_certificates)
    with pytest.raises(AttributeError):
        art_patch_defenses.NoSuchThing  # noqa: B018


def test_targeted_masked_attack_is_built_targeted(tmp_path):
    config = json.loads(json.dumps(TINY))
    config["attack"].update(targeted=True, targeted_labels={"scheme": "fixed", "value": 3})
    config["attack"]["kwargs"]["max_iter"] = 10
    results = run_suite(config, tmp_path, verbose=False)["outcomes"][0].record["results"]
    assert results["adversarial_targeted_success_rate"] > 0.1  # an untargeted attack would rarely land on 3


def test_certifier_from_config_reports_its_certificate(tmp_path):
    from art_patch_defenses.robust_masking import PyTorchRobustMasking

    config = json.loads(json.dumps(TINY))
    config["model"] = {"module": "art_patch_defenses.robust_masking", "name": "get_art_model",
                       "model_kwargs": {"name": "mnist_bagnet", "weights": "none", "patch_size": 7}}
    outcome = run_suite(config, tmp_path, verbose=False)["outcomes"][0]
    results = outcome.record["results"]
    assert results["certified_patch_pixels"] == 7
    assert 0.0 <= results["certified_accuracy"] <= results["benign_mean_categorical_accuracy"]
    assert results["max_change_outside_patch"] == 0.0
    assert "robust_masking" in (tmp_path / "report.md").read_text()
    from art_patch_defenses.robust_masking import get_art_model

    assert isinstance(get_art_model({"name": "mnist_bagnet", "weights": "none"}), PyTorchRobustMasking)
    with pytest.raises(ValueError, match="robust-masking backbone"):
        get_art_model({"name": "mnist_cnn"})
    with pytest.raises(ValueError, match="unknown model_kwargs"):
        get_art_model({"name": "mnist_bagnet", "alpha": 1.0})


def test_mrs_from_config_is_attacked_with_eot_and_certifies(tmp_path):
    config = json.loads(json.dumps(TINY))
    config["dataset"]["n"] = 10
    config["model"] = {"module": "art_patch_defenses.mrs", "name": "get_art_model",
                       "model_kwargs": {"name": "mnist_cnn", "weights": "embedded", "sigma_255": 64,
                                        "sample_size": 20, "n0": 5, "patch_size": 7, "stride": 4}}
    config["attack"] = {"module": "art_patch_defenses.attacks.eot", "name": "masked_pgd_eot", "type": "masked",
                        "patch_size": 0.05, "location": "random",
                        "kwargs": {"norm": "inf", "eps": 1.0, "eps_step": 0.1, "max_iter": 2, "eot_samples": 2}}
    results = run_suite(config, tmp_path, verbose=False)["outcomes"][0].record["results"]
    assert results["certified_patch_pixels"] == 7 and 0.0 <= results["certified_accuracy"] <= 1.0
    assert results["max_change_outside_patch"] == 0.0
    assert 0.0 <= results["abstain_rate_benign"] <= 1.0


def test_scalecert_from_config_detects_and_certifies(tmp_path):
    from art_patch_defenses.scalecert import PyTorchScaleCert, get_art_model

    config = json.loads(json.dumps(TINY))
    config["dataset"]["n"] = 10
    config["model"] = {"module": "art_patch_defenses.scalecert", "name": "get_art_model",
                       "model_kwargs": {"name": "mnist_cnn", "weights": "scalecert", "patch_size": 7}}
    results = run_suite(config, tmp_path, verbose=False)["outcomes"][0].record["results"]
    assert results["certified_patch_pixels"] == 7
    assert 0.0 <= results["certified_accuracy"] <= results["benign_mean_categorical_accuracy"]
    assert 0.0 <= results["abstain_rate_adversarial"] <= 1.0 and results["max_change_outside_patch"] == 0.0
    assert isinstance(get_art_model({"name": "mnist_cnn", "weights": "none"}), PyTorchScaleCert)
    with pytest.raises(ValueError, match="unknown model_kwargs"):
        get_art_model({"name": "mnist_cnn", "alpha": 1.0})


@pytest.mark.parametrize("path", sorted((DEFAULT_SCENARIO.parents[2] / "examples" / "configs").glob("*.json")),
                         ids=lambda path: path.name)
def test_example_configs_are_valid(path):
    suite = load_config(path)
    assert suite["scenarios"] and all(s["model"]["module"].startswith("art_patch_defenses") for s in suite["scenarios"])
    for scenario in suite["scenarios"]:  # every field Armory's own schema requires is there
        assert armory_schema_gaps(scenario) == []


def test_armory_schema_gaps_are_named():
    config = json.loads(DEFAULT_SCENARIO.read_text())["scenarios"][0]
    assert armory_schema_gaps(config) == []
    del config["adhoc"], config["model"]["fit"], config["sysconfig"]["use_gpu"]
    config["attack"]["knowledge"] = "grey"
    expected = ["adhoc", "model.fit", "sysconfig.use_gpu", "attack.knowledge (white or black)"]
    assert armory_schema_gaps(config) == expected
    with pytest.raises(ValueError, match="user_init"):
        load_config({**config, "adhoc": None, "user_init": {"module": "x", "name": "y"}})
    with pytest.raises(ValueError, match="adhoc"):
        load_config({**config, "adhoc": 3})
    with pytest.raises(ValueError, match="scenario must be"):
        load_config({**config, "adhoc": None, "scenario": {"module": "armory.scenarios.poison", "name": "Poison",
                                                           "kwargs": {}}})


def test_example_default_is_the_embedded_default():
    example = DEFAULT_SCENARIO.parents[2] / "examples" / "configs" / "mnist_embedded_default.json"
    assert json.loads(example.read_text()) == json.loads(DEFAULT_SCENARIO.read_text())


@needs_shared
def test_art_derandomized_smoothing_scenario_runs(tmp_path):
    """ART's own certifier from a config: attacked through its soft vote, judged by its thresholded vote."""
    config = json.loads((DEFAULT_SCENARIO.parents[2] / "examples" / "configs"
                         / "cifar10_art_derandomized_smoothing.json").read_text())
    config["dataset"].update(n=10, batch_size=10)
    config["attack"]["kwargs"].update(max_iter=2, batch_size=10)
    results = run_scenario(load_config(config)["scenarios"][0], verbose=False).record["results"]
    assert 0.0 <= results["adversarial_mean_categorical_accuracy"] <= 1.0
    assert results["max_change_outside_patch"] == 0.0 and results["patch_pixels"] == [5, 5]
