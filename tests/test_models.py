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


#: The committed embedded-MNIST models: (model, tag, file, the package that registers the tag).
EMBEDDED = [
    ("mnist_cnn", "embedded", "mnist_embedded_mnist_cnn.pt", "art_patch_defenses.models"),
    ("mnist_cnn", "scalecert", "mnist_embedded_mnist_cnn_scalecert.pt", "art_patch_defenses.scalecert"),
    ("mnist_cnn", "patchcleanser", "mnist_embedded_mnist_cnn_patchcleanser.pt", "art_patch_defenses.patchcleanser"),
    ("mnist_bagnet", "embedded", "mnist_embedded_robust_masking_bagnet.pt", "art_patch_defenses.robust_masking"),
]


@pytest.mark.parametrize("name, tag, file, package", EMBEDDED)
def test_committed_embedded_checkpoints_load_and_match_their_record(name, tag, file, package):
    """Each embedded model is a committed file with its record (sha256, command, log), loaded through its tag
    with the sha256 check, and nothing is trained into the cache."""
    import importlib

    from art_patch_defenses.models.registry import weights_path
    from art_patch_defenses.paths import cache_dir

    importlib.import_module(package)
    path = weights_path(name, tag)
    assert path == checkpoints_dir() / file and path.stat().st_size < 2 * 2**20
    entry = json.loads((checkpoints_dir() / "checkpoints.json").read_text())[file]
    assert sha256_of(path) == entry["sha256"]
    assert entry["command"].startswith("python -m art_patch_defenses.") and "train_embedded" in entry["command"]
    assert entry["seconds"] >= 0 and (checkpoints_dir() / entry["log"]).is_file()
    model = build_model(name, tag)
    assert not model.training
    with torch.no_grad():
        logits = model(torch.rand(2, 1, 32, 32))
    assert logits.shape[0] == 2 and logits.shape[-1] == 10
    assert not list(cache_dir().glob("*.pt")), "a model was trained into the cache at run time"


def test_a_committed_embedded_checkpoint_with_another_hash_is_refused(tmp_path, monkeypatch):
    """The tags resolve through ``checkpoints_dir()``, so the recorded sha256 guards them as it guards the
    CIFAR-10 checkpoints."""
    entry = json.loads((checkpoints_dir() / "checkpoints.json").read_text())["mnist_embedded_mnist_cnn.pt"]
    monkeypatch.setenv("ART_PATCH_DEFENSES_CHECKPOINTS", str(tmp_path))
    (tmp_path / "checkpoints.json").write_text(json.dumps({"mnist_embedded_mnist_cnn.pt": entry}))
    save_checkpoint(build_model("mnist_cnn"), tmp_path / "mnist_embedded_mnist_cnn.pt")  # other weights
    with pytest.raises(ValueError, match="refusing to load"):
        build_model("mnist_cnn", "embedded")


def test_an_unknown_tag_names_the_known_ones_and_where_tags_come_from():
    with pytest.raises(ValueError, match=r"'nonsense' is neither a file path nor a registered tag of model "
                                         r"'mnist_cnn'; known tags: none, embedded") as error:
        build_model("mnist_cnn", "nonsense")
    assert "registered when its package is imported (e.g. `import art_patch_defenses.scalecert`" in str(error.value)
    with pytest.raises(ValueError, match="import art_patch_defenses.robust_masking"):
        build_model("imagenet_bagnet")


def test_register_model_and_weights(tmp_path):
    from art_patch_defenses.models import MODEL_REGISTRY, MnistCNN, ModelSpec, register_model, register_weights
    from art_patch_defenses.models.registry import MNIST_MEAN, MNIST_STD, get_spec

    spec = ModelSpec(factory=MnistCNN, input_shape=(1, 32, 32), nb_classes=10, mean=MNIST_MEAN, std=MNIST_STD)
    path = tmp_path / "w.pt"
    save_checkpoint(MnistCNN(), path)
    try:
        register_model("test_cnn", spec)
        with pytest.raises(ValueError, match="already registered"):
            register_model("test_cnn", ModelSpec(**{**spec.__dict__}))
        register_weights("test_cnn", "mine", lambda: path)
        assert get_spec("test_cnn").weights["mine"]() == path
        build_model("test_cnn", "mine")
        with pytest.raises(ValueError, match="already has weights tag 'mine'"):
            register_weights("test_cnn", "mine", lambda: tmp_path / "other.pt")
        register_weights("test_cnn", "mine", lambda: tmp_path / "other.pt", replace=True)
        assert get_spec("test_cnn").weights["mine"]() == tmp_path / "other.pt"
        with pytest.raises(ValueError, match="other than 'none'"):
            register_weights("test_cnn", "none", lambda: path)
        with pytest.raises(ValueError, match="unknown model 'no_such_model'"):
            register_weights("no_such_model", "mine", lambda: path)
    finally:
        MODEL_REGISTRY.pop("test_cnn", None)


def test_method_packages_register_their_own_tags():
    import art_patch_defenses.mrs  # noqa: F401
    import art_patch_defenses.patchcleanser  # noqa: F401
    import art_patch_defenses.robust_masking  # noqa: F401
    import art_patch_defenses.scalecert  # noqa: F401
    from art_patch_defenses.models.registry import get_spec

    for depth in (20, 56):
        assert {"pretrained", "finetuned", "mrs", "scalecert", "patchcleanser"} <= set(
            get_spec(f"cifar_resnet{depth}").weights)
    assert set(get_spec("mnist_cnn").weights) == {"embedded", "scalecert", "patchcleanser"}
    assert set(get_spec("cifar_bagnet").weights) == {"trained"}
    assert set(get_spec("mnist_bagnet").weights) == {"embedded"}
    assert set(get_spec("cifar_mask_ds").weights) == {"trained"}


def test_models_builds_mask_ds_as_robust_masking_does():
    """``models/`` builds the Mask-DS band model (shared with ART's de-randomized-smoothing baseline) without
    robust masking; its stem reproduces the ResNet's normalised first convolution."""
    from art_patch_defenses.models.bagnet import ColumnBandNet, ds_base_from
    from art_patch_defenses.models.registry import CIFAR10_MEAN, CIFAR10_STD
    from art_patch_defenses.models.training import normalise
    from art_patch_defenses.robust_masking.backbones import build_backbone

    net = build_model("cifar_mask_ds")
    assert isinstance(net, ColumnBandNet) and net.band_width == 4
    assert net.state_dict().keys() == build_backbone("ds").state_dict().keys()
    torch.manual_seed(0)
    resnet = cifar_resnet(20).eval()
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        first = resnet.conv1(normalise(x, CIFAR10_MEAN, CIFAR10_STD))
        second = ds_base_from(resnet, CIFAR10_MEAN, CIFAR10_STD).conv1(torch.cat([x, 1 - x], dim=1))
    torch.testing.assert_close(first[:, :, 1:-1, 1:-1], second[:, :, 1:-1, 1:-1], rtol=1e-4, atol=1e-4)
