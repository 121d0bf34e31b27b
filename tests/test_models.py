import json

import numpy as np
import pytest
import torch
from conftest import SHARED, needs_shared

from art_patch_defenses.data import load_dataset
from art_patch_defenses.models import (
    build_model,
    cifar_resnet,
    load_weights,
    make_classifier,
    save_checkpoint,
)
from art_patch_defenses.models.checkpoints import sha256_of
from art_patch_defenses.paths import checkpoints_dir


@pytest.mark.parametrize("depth, params", [(20, 0.27e6), (32, 0.46e6), (44, 0.66e6), (56, 0.85e6), (110, 1.7e6)])
def test_resnet_sizes_match_he_et_al(depth, params):
    count = sum(p.numel() for p in cifar_resnet(depth).parameters())
    assert abs(count - params) / params < 0.03


def test_unknown_depth_and_model_are_named():
    with pytest.raises(ValueError, match="depth must be one of"):
        cifar_resnet(18)
    with pytest.raises(ValueError, match="unknown model 'vgg'"):
        build_model("vgg")


def test_checkpoint_round_trip_and_mismatches(tmp_path):
    model = cifar_resnet(20)
    path = tmp_path / "m.pt"
    digest = save_checkpoint(model, path, arch="cifar_resnet20")
    assert digest == sha256_of(path)
    other = load_weights(cifar_resnet(20), path, sha256=digest)
    for a, b in zip(model.state_dict().values(), other.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b)
    with pytest.raises(ValueError, match="sha256"):
        load_weights(cifar_resnet(20), path, sha256="0" * 64)
    with pytest.raises(ValueError, match="does not match CifarResNet"):
        load_weights(cifar_resnet(56), path)
    with pytest.raises(FileNotFoundError):
        load_weights(model, tmp_path / "missing.pt")


def test_a_tampered_known_weight_file_is_refused(tmp_path):
    fake = tmp_path / "resnet20-12fca82f.th"  # a known name with other content
    save_checkpoint(cifar_resnet(20), fake)
    with pytest.raises(ValueError, match="refusing to load"):
        load_weights(cifar_resnet(20), fake)


def test_a_project_checkpoint_is_checked_against_its_record(tmp_path, monkeypatch):
    import json

    from art_patch_defenses.models.checkpoints import record_checkpoint

    monkeypatch.setenv("ART_PATCH_DEFENSES_CHECKPOINTS", str(tmp_path))
    path = tmp_path / "model.pt"
    digest = save_checkpoint(cifar_resnet(20), path)
    record_checkpoint(tmp_path / "checkpoints.json", path.name, {"sha256": digest}, "made by a test")
    load_weights(cifar_resnet(20), path)  # matches its record
    save_checkpoint(cifar_resnet(20), path)  # replaced without updating the record
    assert json.loads((tmp_path / "checkpoints.json").read_text())["model.pt"]["sha256"] == digest
    with pytest.raises(ValueError, match="refusing to load"):
        load_weights(cifar_resnet(20), path)


@needs_shared
@pytest.mark.parametrize("depth", [20, 56])
def test_pretrained_weights_load_key_for_key(depth):
    model = build_model(f"cifar_resnet{depth}", "pretrained")
    assert not model.training


@needs_shared
def test_pretrained_resnet20_accuracy_on_1000_shared_test_images():
    data = load_dataset("cifar10", "test", n=1000, seed=0, root=SHARED / "data" / "cifar10")
    classifier = make_classifier(build_model("cifar_resnet20", "pretrained"), "cifar_resnet20")
    accuracy = np.mean(classifier.predict(data.x).argmax(1) == data.y)
    assert abs(accuracy - 0.810) <= 0.015, accuracy


@pytest.mark.parametrize("depth", [20, 56])
def test_committed_finetuned_checkpoints_match_their_recorded_hash(depth):
    record = json.loads((checkpoints_dir() / "checkpoints.json").read_text())
    entry = record[f"cifar10_resnet{depth}_finetuned.pt"]
    path = checkpoints_dir() / f"cifar10_resnet{depth}_finetuned.pt"
    assert path.stat().st_size < 10 * 2**20
    load_weights(cifar_resnet(depth), path, sha256=entry["sha256"])


def test_file_logger_keeps_every_line(tmp_path, capsys):
    from art_patch_defenses.models.checkpoints import file_logger

    log = file_logger(tmp_path / "run.log")
    log("first")
    log("second")
    assert (tmp_path / "run.log").read_text() == "first\nsecond\n"
    assert capsys.readouterr().out == "first\nsecond\n"


def test_open_run_log_keeps_the_earlier_log_when_a_run_continues(tmp_path):
    from art_patch_defenses.models.checkpoints import open_run_log, sha256_of

    out = tmp_path / "model.pt"
    out.write_bytes(b"weights")
    log, previous = open_run_log(out, "train --fresh")
    log("epoch 1")
    assert previous is None and out.with_suffix(".log").read_text().splitlines()[0] == "command: train --fresh"
    log, previous = open_run_log(out, "train --init model.pt", init=out)
    assert previous == "model.part1.log"
    assert "epoch 1" in (tmp_path / previous).read_text()
    lines = out.with_suffix(".log").read_text().splitlines()
    assert lines == ["command: train --init model.pt", f"continues from model.pt (sha256 {sha256_of(out)})"]
