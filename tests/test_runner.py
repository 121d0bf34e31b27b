import errno
import json
import logging
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import needs_shared

from art_patch_defenses.cli import main
from art_patch_defenses.evaluation import DEFAULT_SCENARIO, load_config, run_suite, runner
from art_patch_defenses.evaluation import results as results_module
from art_patch_defenses.evaluation.config import armory_schema_gaps
from art_patch_defenses.evaluation.results import (
    OutputDirError,
    ScenarioResult,
    atomic_path,
    read_manifest,
    write_atomic,
)
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


def _estimator_and_data(config: dict):
    """The scenario's estimator and evaluation slice, built again, to check the runner's figures against."""
    from art_patch_defenses.data import load_dataset

    dataset = config["dataset"]
    data = load_dataset(dataset["name"], dataset.get("eval_split", "test"), n=dataset.get("n"),
                        seed=dataset.get("seed", 0), root=dataset.get("root"))
    return runner.build_estimator(config), data


def test_tiny_config_writes_armory_shaped_results(tmp_path):
    summary = run_suite(TINY, tmp_path, verbose=False)
    payload = json.loads((tmp_path / "results.json").read_text())
    assert payload["status"] == "complete" and payload["scenarios_complete"] == payload["scenarios_total"] == 1
    record = payload["scenarios"][0]
    manifest = read_manifest(tmp_path)
    assert manifest["status"] == "complete" and manifest["scenarios_complete"] == 1
    assert manifest["config_source"] == "<dict>" and manifest["finished"] and manifest["error"] is None
    assert json.loads((tmp_path / manifest["scenarios"][0]["file"]).read_text()) == record
    assert not list(tmp_path.rglob("*.tmp"))
    assert {"config", "results", "timestamp"} <= set(record)
    results = record["results"]
    assert results["num_samples"] == 30
    assert results["max_change_outside_patch"] == 0.0
    assert results["patch_pixels"] == [7, 7] and results["location"] == "random"
    assert results["adversarial_mean_categorical_accuracy"] < results["benign_mean_categorical_accuracy"]
    low, high = results["adversarial_accuracy_interval_95"]
    assert low <= results["adversarial_mean_categorical_accuracy"] <= high and high - low < 0.5
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


def test_weights_fingerprint_covers_the_model_and_its_defences():
    """``weights_sha256`` (in every result and a sharded run's key) changes with the model's weights and with the
    weights a preprocessing defence holds (e.g. PatchZero's detector), not with a rebuild of the same weights."""
    import torch
    from art.defences.preprocessor import Preprocessor

    class HoldsALayer(Preprocessor):
        def __init__(self) -> None:
            super().__init__()
            self.layer = torch.nn.Linear(2, 2)

        def __call__(self, x, y=None):
            return x, y

    estimator = runner.build_estimator(TINY)
    plain = runner.weights_sha256(estimator)
    assert plain == runner.weights_sha256(runner.build_estimator(TINY)) and len(plain) == 64
    defence = HoldsALayer()
    estimator.set_params(preprocessing_defences=[defence])
    with_defence = runner.weights_sha256(estimator)
    with torch.no_grad():
        defence.layer.bias.add_(1.0)
    changed_defence = runner.weights_sha256(estimator)
    assert len({plain, with_defence, changed_defence}) == 3
    with torch.no_grad():
        next(estimator.model.parameters()).add_(1.0)
    assert runner.weights_sha256(estimator) != changed_defence


# The bad-config matrix is in test_config_validation.py.


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
    assert results["certified_patch_pixels"] == 7 and results["certificate_kind"] == "recovery"
    estimator, data = _estimator_and_data(outcome.record["config"])
    assert results["certified_accuracy"] == estimator.certify(data.x, data.y).certified.mean()
    assert results["certified_accuracy"] <= results["benign_mean_categorical_accuracy"]
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
    record = run_suite(config, tmp_path, verbose=False)["outcomes"][0].record
    results = record["results"]
    assert results["certified_patch_pixels"] == 7 and results["certificate_kind"] == "region-L2"
    assert results["max_change_outside_patch"] == 0.0
    estimator, data = _estimator_and_data(record["config"])  # MRS is seeded: the same numbers again
    assert results["certified_accuracy"] == estimator.certify(data.x, data.y).certified.mean()
    assert results["abstain_rate_benign"] == np.mean(estimator.predict_labels(data.x) == -1)


def test_scalecert_from_config_detects_and_certifies(tmp_path):
    from art_patch_defenses.scalecert import PyTorchScaleCert, get_art_model

    config = json.loads(json.dumps(TINY))
    config["dataset"]["n"] = 10
    config["model"] = {"module": "art_patch_defenses.scalecert", "name": "get_art_model",
                       "model_kwargs": {"name": "mnist_cnn", "weights": "scalecert", "patch_size": 7}}
    record = run_suite(config, tmp_path, verbose=False)["outcomes"][0].record
    results = record["results"]
    assert results["certified_patch_pixels"] == 7 and results["certificate_kind"] == "detection"
    estimator, data = _estimator_and_data(record["config"])
    assert results["certified_accuracy"] == estimator.certify(data.x, data.y).certified.mean()
    assert results["abstain_rate_benign"] == np.mean(estimator.predict_labels(data.x) == -1)
    assert results["adversarial_right_or_alert"] >= results["adversarial_mean_categorical_accuracy"]
    assert results["max_change_outside_patch"] == 0.0
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
    scenario = load_config(config)["scenarios"][0]
    results = run_scenario(scenario, verbose=False).record["results"]
    estimator, data = _estimator_and_data(scenario)
    assert results["certified_accuracy"] == estimator.certify(data.x, data.y).certified.mean()
    assert results["abstain_rate_adversarial"] == 0.0  # a column vote never abstains
    assert results["max_change_outside_patch"] == 0.0 and results["patch_pixels"] == [5, 5]


# --- Nothing lost: output directory, per-scenario files, manifest, interruption -------------------------------------


def fake_scenario(config: dict, cache=None, verbose: bool = True) -> ScenarioResult:
    """A scenario's result without computing it: these tests check the runner's bookkeeping, not the numbers."""
    results = {"benign_mean_categorical_accuracy": 1.0, "adversarial_mean_categorical_accuracy": 0.5,
               "max_change_outside_patch": 0.0, "num_samples": 2, "patch_pixels": [7, 7],
               "patch_area_fraction": 0.0479, "abstain_rate_benign": 0.0, "abstain_rate_adversarial": 0.0}
    images = np.zeros((2, 1, 32, 32), np.float32)
    examples = {"x": images, "x_adv": images, "y": np.array([0, 1]), "benign": np.array([0, 1]),
                "adversarial": np.array([1, 1]), "class_names": np.asarray([str(d) for d in range(10)])}
    return ScenarioResult(record={"config": config, "results": results, "timestamp": 0}, examples=examples)


def stop_in_second(error: BaseException):
    """A ``run_scenario`` whose first scenario finishes and whose second raises ``error``."""
    calls = []

    def run(config, cache=None, verbose=True):
        calls.append(config)
        if len(calls) == 2:
            raise error
        return fake_scenario(config)

    return run


def two_scenarios() -> dict:
    second = json.loads(json.dumps(TINY))
    second["attack"]["patch_size"] = 5
    return {"_description": "two", "scenarios": [TINY, second]}


def no_computation(*args, **kwargs):
    raise AssertionError("the evaluation ran although the output directory was refused")


@pytest.mark.parametrize("where, message", [
    ("file", "exists and is not a directory"),
    ("file/sub", "cannot create output directory"),
], ids=["a file", "under a file"])
def test_output_dir_that_is_no_directory_is_refused_first(tmp_path, monkeypatch, capsys, where, message):
    monkeypatch.setattr(runner, "run_scenario", no_computation)
    (tmp_path / "file").write_text("a file")
    output_dir = tmp_path / where
    with pytest.raises(OutputDirError, match=message):
        run_suite(TINY, output_dir, verbose=False)
    config = tmp_path / "tiny.json"
    config.write_text(json.dumps(TINY))
    for command in ("evaluate", "verify"):
        assert main([command, str(config), "--output-dir", str(output_dir), "--quiet"]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err and str(output_dir) in err and "Traceback" not in err


def test_read_only_output_dir_is_refused_first(tmp_path, monkeypatch, capsys):
    """Tests run as root, where chmod stops no write: the read-only directory is simulated twice, through
    ``os.access`` and through a probe file that fails as on a read-only file system."""
    monkeypatch.setattr(runner, "run_scenario", no_computation)
    read_only = tmp_path / "read-only"
    read_only.mkdir()
    access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode, *a, **k: Path(path) != read_only and access(path, mode))
    with pytest.raises(OutputDirError, match=f"output directory {read_only} is not writable"):
        run_suite(TINY, read_only, verbose=False)
    assert main(["evaluate", "--output-dir", str(read_only), "--quiet"]) == 2  # the embedded default: never run
    assert capsys.readouterr().err == f"error: output directory {read_only} is not writable\n"
    monkeypatch.setattr(os, "access", access)

    def read_only_file_system(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(results_module.tempfile, "TemporaryFile", read_only_file_system)
    with pytest.raises(OutputDirError, match="is not writable: Read-only file system"):
        run_suite(TINY, read_only, verbose=False)
    assert list(read_only.iterdir()) == []


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0,
                    reason="root writes into a read-only directory: the simulated test above covers it")
def test_really_read_only_output_dir_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(runner, "run_scenario", no_computation)
    read_only = tmp_path / "read-only"
    read_only.mkdir()
    read_only.chmod(0o500)
    try:
        with pytest.raises(OutputDirError, match="is not writable"):
            run_suite(TINY, read_only, verbose=False)
    finally:
        read_only.chmod(0o700)


def test_ctrl_c_in_the_second_scenario_keeps_the_first(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(runner, "run_scenario", stop_in_second(KeyboardInterrupt()))
    with caplog.at_level(logging.WARNING, logger="art_patch_defenses"), pytest.raises(KeyboardInterrupt):
        run_suite(two_scenarios(), tmp_path, verbose=False)
    manifest = read_manifest(tmp_path)
    assert manifest["status"] == "interrupted" and manifest["scenarios_complete"] == 1
    assert [entry["status"] for entry in manifest["scenarios"]] == ["complete", "interrupted"]
    first = json.loads((tmp_path / manifest["scenarios"][0]["file"]).read_text())
    assert first["results"]["num_samples"] == 2 and first["config"]["attack"]["patch_size"] == 0.05
    payload = json.loads((tmp_path / "results.json").read_text())
    assert payload["status"] == "interrupted" and payload["scenarios"] == [first]
    assert (payload["scenarios_complete"], payload["scenarios_total"]) == (1, 2)
    assert "Run interrupted: 1 of 2 scenarios finished" in (tmp_path / "report.md").read_text()
    assert not (tmp_path / "report.png").exists() and not list(tmp_path.rglob("*.tmp"))
    assert not (tmp_path / manifest["scenarios"][1]["file"]).exists()
    assert f"evaluation interrupted: 1 of 2 scenarios finished; their results are in {tmp_path}" in caplog.text


def test_cli_exits_130_on_ctrl_c_and_says_so(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(runner, "run_scenario", stop_in_second(KeyboardInterrupt()))
    config = tmp_path / "two.json"
    config.write_text(json.dumps(two_scenarios()))
    assert main(["evaluate", str(config), "--output-dir", str(tmp_path / "out"), "--quiet"]) == 130
    err = capsys.readouterr().err
    assert "warning: evaluation interrupted: 1 of 2 scenarios finished" in err  # shown even with --quiet
    assert err.endswith("interrupted (Ctrl-C)\n")
    assert read_manifest(tmp_path / "out")["config_source"] == str(config)


def test_an_error_in_a_scenario_marks_the_run_failed(tmp_path, monkeypatch):
    monkeypatch.setattr(runner, "run_scenario", stop_in_second(RuntimeError("out of memory")))
    with pytest.raises(RuntimeError, match="out of memory"):
        run_suite(two_scenarios(), tmp_path, verbose=False)
    manifest = read_manifest(tmp_path)
    assert manifest["status"] == "failed" and manifest["error"] == "RuntimeError: out of memory"
    assert [entry["status"] for entry in manifest["scenarios"]] == ["complete", "failed"]
    payload = json.loads((tmp_path / "results.json").read_text())
    assert payload["status"] == "failed" and len(payload["scenarios"]) == 1


def test_reused_output_dir_is_refused_unless_overwrite(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(runner, "run_scenario", fake_scenario)
    out = tmp_path / "out"
    run_suite(two_scenarios(), out, verbose=False)
    (out / "notes.txt").write_text("mine")  # not the run's: survives an overwrite
    (out / "scenarios" / "07-stale.json").write_text("{}")
    before = {path: path.read_bytes() for path in out.rglob("*") if path.is_file()}
    with pytest.raises(OutputDirError, match=r"holds another run's results \(manifest\.json, config\.json, "
                       r"results\.json, report\.md, report\.png, scenarios\); choose another --output-dir, or pass "
                       r"--overwrite"):
        run_suite(TINY, out, verbose=False)
    config = tmp_path / "tiny.json"
    config.write_text(json.dumps(TINY))
    assert main(["evaluate", str(config), "--output-dir", str(out), "--quiet"]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert {path: path.read_bytes() for path in out.rglob("*") if path.is_file()} == before  # untouched
    assert main(["evaluate", str(config), "--output-dir", str(out), "--quiet", "--overwrite"]) == 0
    manifest = read_manifest(out)
    assert manifest["status"] == "complete" and manifest["scenarios_total"] == 1
    assert sorted(path.name for path in (out / "scenarios").iterdir()) == [
        "00-mnist_cnn-none-ProjectedGradientDescent.json"]
    assert (out / "notes.txt").read_text() == "mine"
    assert len(json.loads((out / "results.json").read_text())["scenarios"]) == 1


def test_results_of_an_older_version_count_as_another_run(tmp_path, monkeypatch):
    monkeypatch.setattr(runner, "run_scenario", no_computation)
    (tmp_path / "results.json").write_text("{}")
    with pytest.raises(OutputDirError, match=r"holds another run's results \(results\.json\)"):
        run_suite(TINY, tmp_path, verbose=False)


def test_atomic_write_leaves_the_old_file_or_the_new_one(tmp_path):
    path = write_atomic(tmp_path / "results.json", "old")
    with pytest.raises(KeyboardInterrupt), atomic_path(path) as temporary:
        temporary.write_text("half of the new")
        raise KeyboardInterrupt
    assert path.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["results.json"]
    write_atomic(path, "new")
    assert path.read_text() == "new" and sorted(p.name for p in tmp_path.iterdir()) == ["results.json"]
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask  # as a plain open would make it, not 0600


def test_cli_logs_the_scenarios_unless_quiet(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(runner, "run_scenario", fake_scenario)
    config = tmp_path / "tiny.json"
    config.write_text(json.dumps(TINY))
    assert main(["evaluate", str(config), "--output-dir", str(tmp_path / "loud")]) == 0
    captured = capsys.readouterr()
    assert "scenario: mnist_cnn / none / ProjectedGradientDescent (1 of 1)\n" in captured.err
    assert "| mnist_cnn | none | ProjectedGradientDescent |" in captured.out and "scenario:" not in captured.out
    assert main(["evaluate", str(config), "--output-dir", str(tmp_path / "quiet"), "--quiet"]) == 0
    assert "scenario:" not in capsys.readouterr().err
    assert not logging.getLogger("art_patch_defenses").handlers  # the command leaves logging as it found it


def cheap_suite_with_an_endless_second_scenario() -> dict:
    """Two scenarios of the embedded default, cut down: the universal patch on 20 digits (one pass over 20
    training digits), then masked PGD with a budget it never finishes in a test, so that it is surely running
    when the test stops the process."""
    default = json.loads(DEFAULT_SCENARIO.read_text())["scenarios"]
    patch, pgd = default[0], default[2]
    for config in (patch, pgd):
        config["dataset"].update(n=20, batch_size=20)
    patch["dataset"]["patch_train_n"] = 20
    patch["attack"]["kwargs"].update(max_iter=1, batch_size=20)
    pgd["attack"]["kwargs"].update(max_iter=10**6, batch_size=20)
    return {"_description": "two cheap scenarios", "scenarios": [patch, pgd]}


def default_sigint() -> None:
    """Give the child the default SIGINT disposition: a suite started in the background by a shell without job
    control (``pytest ... &``) inherits SIGINT ignored, and Python then installs no Ctrl-C handler in the child."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.parametrize("signal_name", ["SIGINT", "SIGTERM", "SIGKILL"])
def test_a_stopped_evaluation_keeps_the_finished_scenario(tmp_path, signal_name):
    """A real evaluation in a subprocess, stopped in its second scenario: Ctrl-C (SIGINT), ``kill`` (SIGTERM) and
    a kill no handler sees (SIGKILL) all leave the first scenario's record intact and the manifest saying what
    finished."""
    config = tmp_path / "suite.json"
    config.write_text(json.dumps(cheap_suite_with_an_endless_second_scenario()))
    out = tmp_path / "out"
    process = subprocess.Popen(
        [sys.executable, "-m", "art_patch_defenses.cli", "evaluate", str(config), "--output-dir", str(out),
         "--quiet"], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"}, preexec_fn=default_sigint)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and process.poll() is None:
            # the manifest is replaced atomically: reading it while it is rewritten is safe
            if (out / "manifest.json").exists() and read_manifest(out)["scenarios"][1]["status"] == "running":
                break
            time.sleep(0.05)
        assert process.poll() is None, process.communicate()[1]
        process.send_signal(getattr(signal, signal_name))
        _, err = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    manifest = read_manifest(out)
    assert manifest["scenarios_complete"] == 1 and manifest["scenarios"][0]["status"] == "complete"
    first = json.loads((out / manifest["scenarios"][0]["file"]).read_text())
    assert first["results"]["num_samples"] == 20 and first["config"]["attack"]["name"] == "adversarial_patch"
    if signal_name in ("SIGINT", "SIGTERM"):
        assert process.returncode == (130 if signal_name == "SIGINT" else 143), err
        assert manifest["status"] == "interrupted" and manifest["scenarios"][1]["status"] == "interrupted"
        assert json.loads((out / "results.json").read_text())["scenarios"] == [first]
        assert "evaluation interrupted: 1 of 2 scenarios finished" in err and "Traceback" not in err
        assert err.endswith("interrupted (Ctrl-C)\n" if signal_name == "SIGINT" else "terminated (SIGTERM)\n")
        assert manifest["error"] == ("KeyboardInterrupt" if signal_name == "SIGINT" else "Terminated: SIGTERM")
    else:  # nothing ran after the kill: the manifest still says running, and what finished
        assert process.returncode == -signal.SIGKILL
        assert manifest["status"] == "running" and manifest["scenarios"][1]["status"] == "running"
        assert not (out / "results.json").exists()


def _without_timings(record: dict) -> dict:
    record = json.loads(json.dumps(record))
    record.pop("timestamp", None)
    record["results"].pop("seconds", None)
    return record


def test_a_config_run_twice_gives_identical_results(tmp_path):
    """One seed fixes every random choice: placements, ART's random starts, the ensemble's restarts and random
    search. Two runs of the same config give the same records, timings aside."""
    config = json.loads(json.dumps(TINY))
    config["dataset"]["n"] = 12
    config["attack"]["kwargs"]["num_random_init"] = 2  # ART's random starts: seeded by the attack seed
    ensemble = json.loads(json.dumps(TINY))
    ensemble["dataset"]["n"] = 12
    ensemble["attack"] = {"module": "art_patch_defenses.attacks", "name": "PatchAutoAttack", "type": "masked",
                          "patch_size": 0.05, "location": "random", "seed": 4,
                          "kwargs": {"patch_size": 7, "seed": 4, "pgd": [[0.1, 3]], "apgd_iter": 3,
                                     "targeted_top_k": 1, "random_placements": 1, "gradient_placements": 1,
                                     "random_search_queries": 10}}
    suite = {"_description": "twice", "scenarios": [config, ensemble]}
    first = run_suite(suite, tmp_path / "a", verbose=False)
    second = run_suite(suite, tmp_path / "b", verbose=False)
    for a, b in zip(first["outcomes"], second["outcomes"], strict=True):
        assert _without_timings(a.record) == _without_timings(b.record)
    report = first["outcomes"][1].record["results"]
    assert report["attack_report"]["placements"] == ["given", "random_1", "gradient_1"]
    assert report["max_change_outside_patch"] == 0.0  # measured outside the patches the ensemble chose


def _timings_removed(value):
    if isinstance(value, dict):
        return {key: _timings_removed(item) for key, item in value.items()
                if key not in ("seconds", "timestamp", "started", "finished", "updated")}
    return [_timings_removed(item) for item in value] if isinstance(value, list) else value


@needs_shared
def test_a_committed_leaderboard_config_run_twice_writes_identical_result_files(tmp_path):
    """The user's path for a leaderboard row (sharded, as the leaderboard runs it) on a small slice: two runs of
    the same committed config write the same results.json, timings aside."""
    config = Path(__file__).resolve().parents[1] / "examples" / "configs" / "leaderboard" / "cifar10_undefended.json"
    for run in ("a", "b"):
        assert main(["evaluate", str(config), "--n", "10", "--max-iter", "2", "--sharded", "--chunk-per-class", "1",
                     "--quiet", "--output-dir", str(tmp_path / run)]) == 0
    first, second = (json.loads((tmp_path / run / "results.json").read_text()) for run in ("a", "b"))
    assert _timings_removed(first) == _timings_removed(second)
    (record,) = first["scenarios"]
    assert record["results"]["num_samples"] == 10 and "white_box_accuracy" in record["results"]["attack_report"]


def test_quick_run_overrides(tmp_path):
    summary = run_suite(TINY, tmp_path, verbose=False, n=10, max_iter=1, seed=3)
    config = summary["outcomes"][0].record["config"]
    assert config["dataset"]["n"] == 10 and config["attack"]["kwargs"]["max_iter"] == 1
    assert config["attack"]["seed"] == 3 and summary["outcomes"][0].record["results"]["num_samples"] == 10


def test_the_default_suite_runs_end_to_end_on_a_handful_of_digits(tmp_path):
    """The main job, every scenario of it, on 6 digits with one attack iteration (the full run is a benchmark)."""
    suite = json.loads(DEFAULT_SCENARIO.read_text())
    for scenario in suite["scenarios"]:
        if "patch_train_n" in scenario["dataset"]:
            scenario["dataset"]["patch_train_n"] = 16
    summary = run_suite(suite, tmp_path, verbose=False, n=6, max_iter=1)
    assert len(summary["outcomes"]) == len(suite["scenarios"])
    for outcome in summary["outcomes"]:
        results = outcome.record["results"]
        assert results["num_samples"] == 6 and results["max_change_outside_patch"] == 0.0
    assert (tmp_path / "report.png").stat().st_size > 10000
