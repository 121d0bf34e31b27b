"""The embedded MNIST models of the default scenario's certifier rows (issue 21): each is a committed file with its
record (sha256, command, log), loads through the name and tag the scenario uses, and its certifier, built exactly
as the scenario builds it, certifies test digits; Mask-DS's bands see only their own columns; the training
commands refuse bad arguments before they write anything."""

import importlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from art_patch_defenses.models import build_model, sha256_of
from art_patch_defenses.paths import checkpoints_dir

SCENARIO = Path(__file__).resolve().parents[1] / "art_patch_defenses" / "evaluation" / "default_scenario.json"

#: (certifier package, model name, tag, committed file, train_embedded module).
EMBEDDED = [
    ("art_patch_defenses.robust_masking", "mnist_mask_ds", "embedded", "mnist_embedded_robust_masking_mask_ds.pt",
     "art_patch_defenses.robust_masking.train_embedded"),
    ("art_patch_defenses.patchcleanser", "mnist_patchcleanser_cnn", "embedded", "mnist_embedded_patchcleanser_cnn.pt",
     "art_patch_defenses.patchcleanser.train_embedded"),
    ("art_patch_defenses.scalecert", "mnist_scalecert_cnn", "embedded", "mnist_embedded_scalecert_cnn.pt",
     "art_patch_defenses.scalecert.train_embedded"),
    ("art_patch_defenses.mrs", "mnist_mrs_cnn", "embedded", "mnist_embedded_mrs_cnn.pt",
     "art_patch_defenses.mrs.train_embedded"),
]


def certifier_rows() -> dict[str, dict]:
    """``{factory module: scenario}`` of the default scenario's certifier rows."""
    modules = {package for package, *_ in EMBEDDED}
    return {s["model"]["module"]: s for s in json.loads(SCENARIO.read_text())["scenarios"]
            if s["model"]["module"] in modules}


@pytest.mark.parametrize("package, name, tag, file, command", EMBEDDED)
def test_committed_checkpoint_loads_and_matches_its_record(package, name, tag, file, command):
    from art_patch_defenses.models.registry import weights_path

    importlib.import_module(package)
    path = weights_path(name, tag)
    assert path == checkpoints_dir() / file and path.stat().st_size < 2 * 2**20
    entry = json.loads((checkpoints_dir() / "checkpoints.json").read_text())[file]
    assert sha256_of(path) == entry["sha256"]
    assert entry["command"] == f"python -m {command}", "the committed recipe is the command's defaults"
    assert entry["torch_threads"] == 1 and entry["holdout"] == 0 and entry["fit_images"] == 4000
    log = (checkpoints_dir() / entry["log"]).read_text()
    assert log.startswith(f"command: python -m {command}") and entry["sha256"] in log
    model = build_model(name, tag)
    assert not model.training
    with torch.no_grad():
        logits = model(torch.rand(2, 1, 32, 32))
    assert logits.shape[0] == 2 and logits.shape[-1] == 10


@pytest.mark.parametrize("package, name, tag, file, command", EMBEDDED)
def test_the_scenario_row_uses_the_committed_model(package, name, tag, file, command):
    row = certifier_rows()[package]
    assert row["model"]["model_kwargs"]["name"] == name and row["model"]["model_kwargs"]["weights"] == tag
    assert file in row["_description"], f"the row's description names {file}"


@pytest.mark.parametrize("package", [package for package, *_ in EMBEDDED])
def test_each_certifier_certifies_test_digits_as_the_scenario_builds_it(package, mnist_test):
    """Ten class-balanced test digits (one per class): the certifier from the row's own factory and settings
    certifies most of them, and every certified digit is predicted right (never an abstention)."""
    row = certifier_rows()[package]["model"]
    estimator = getattr(importlib.import_module(row["module"]), row["name"])(row["model_kwargs"])
    index = np.array([np.flatnonzero(mnist_test.y == digit)[0] for digit in range(10)])
    x, y = mnist_test.x[index], mnist_test.y[index]
    result = estimator.certify(x, y)
    assert result.certified.shape == (10,) and result.certified.sum() >= 5
    assert np.all(result.prediction[result.certified] == y[result.certified])
    clean, certified = estimator.eval_and_certify(x, y)
    assert certified == pytest.approx(result.certified.mean()) and clean >= certified


def test_mask_ds_bands_see_only_their_own_columns():
    """Changing one column changes exactly the band_width bands that contain it (wrapping at the edge): the
    receptive field robust masking's windows assume."""
    import art_patch_defenses.robust_masking  # noqa: F401  (registers mnist_mask_ds)
    from art_patch_defenses.models.bagnet import ColumnBandCNN

    for model in (build_model("mnist_mask_ds", "embedded"), ColumnBandCNN(band_width=3).eval()):
        b = model.band_width
        assert model.receptive_field == (32, b) and model.stride == (32, 1) and model.wrap == (False, True)
        x = torch.rand(2, 1, 32, 32, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            before = model(x)
            for column in (0, 13, 31):
                changed = x.clone()
                changed[..., column] = 1 - changed[..., column]
                moved = (model(changed) - before).abs().amax(dim=(0, 1, 3)) > 0
                expected = {(column - k) % 32 for k in range(b)}
                assert set(np.flatnonzero(moved.numpy()).tolist()) == expected


def test_mask_ds_is_a_robust_masking_backbone():
    from art_patch_defenses.robust_masking import get_art_model
    from art_patch_defenses.robust_masking.classifier import BACKBONE_MODELS

    assert "mnist_mask_ds" in BACKBONE_MODELS
    estimator = get_art_model({"name": "mnist_mask_ds", "weights": "none", "patch_size": 5,
                               "feature_type": "confidence"})
    assert estimator.windows_for(5).shape == (32, 1, 32)  # 2 + 5 - 1 = 6 bands per window, 32 placements
    assert estimator.windows_for(5).sum(axis=(1, 2)).tolist() == [6] * 32


@pytest.mark.parametrize("module, argv, message", [
    ("art_patch_defenses.robust_masking.train_embedded", ["--band-width", "40"], "--band-width and --patch-size"),
    ("art_patch_defenses.patchcleanser.train_embedded", ["--worst-of", "4", "--probability", "0.5"],
     "--worst-of 4 masks every image: it needs --probability 1, got 0.5"),
    ("art_patch_defenses.scalecert.train_embedded", ["--tau", "1"], "--tau must be in [0, 1), got 1.0"),
    ("art_patch_defenses.mrs.train_embedded", ["--width-min", "16"], "--width-min 16 exceeds --width-max 15"),
    ("art_patch_defenses.mrs.train_embedded", ["--epochs", "0"], "argument --epochs: must be a positive integer"),
])
def test_training_commands_refuse_bad_arguments_before_writing(tmp_path, capsys, module, argv, message):
    main = importlib.import_module(module).main
    with pytest.raises(SystemExit) as stop:
        main([*argv, "--out", str(tmp_path / "model.pt")])
    assert stop.value.code == 2 and message in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []
