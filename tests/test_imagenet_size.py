"""Every defence on ImageNet-size inputs (224x224 RGB, 1000 classes), with untrained models (``weights=None``).

The models are the registry's ImageNet entries (``art_patch_defenses.models.imagenet``) at full size and with all
1000 classes. To keep each test within seconds on one CPU thread some *defence* settings are reduced, and each test
says which: PatchCleanser with k = 2 masks per axis (the paper: 6), MRS with few noise samples and a coarse
localisation grid, ScaleCert with a small top-k. The patch sizes are the papers' ImageNet ones
(:data:`~art_patch_defenses.models.imagenet.IMAGENET_PATCH_PIXELS`).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from art_patch_defenses.models import build_model, make_classifier, sha256_of
from art_patch_defenses.models.imagenet import (
    IMAGENET_MEAN,
    IMAGENET_PATCH_PIXELS,
    IMAGENET_STD,
    ChunkedColumnBandNet,
    paper_patch_side,
)
from art_patch_defenses.models.imagenet_bagnet import ImageNetBagNet

SIDE = 224
CLASSES = 1000


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def photos(n: int, seed: int = 0) -> np.ndarray:
    """``n`` smooth 224x224 RGB images in [0, 1] (upsampled 8x8 noise), float32 NCHW."""
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.rand((n, 3, 8, 8), generator=generator)
    return torch.nn.functional.interpolate(coarse, size=(SIDE, SIDE), mode="bilinear").clamp(0, 1).numpy()


def seeded(name: str, seed: int = 0):
    torch.manual_seed(seed)
    return build_model(name)


# --- models ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["imagenet_resnet50", "imagenet_mobilenet_v2", "imagenet_vit_b_16"])
def test_torchvision_models_are_registered_at_imagenet_size(name):
    model = build_model(name)
    classifier = make_classifier(model, name)
    assert classifier.input_shape == (3, SIDE, SIDE) and classifier.nb_classes == CLASSES
    assert np.allclose(classifier.preprocessing.mean.reshape(-1), IMAGENET_MEAN)
    assert np.allclose(classifier.preprocessing.std.reshape(-1), IMAGENET_STD)
    assert classifier.predict(photos(1)).shape == (1, CLASSES)


@pytest.mark.parametrize(("variant", "map_side"), [(9, 27), (17, 26), (33, 24)])
def test_bagnet_geometry(variant, map_side):
    """Receptive field = the variant, stride 8, and PatchGuard's 26x26 map for BagNet-17 on 224x224 images."""
    model = ImageNetBagNet(variant, num_classes=CLASSES)
    assert model.receptive_field == (variant, variant) and model.stride == (8, 8)
    assert model.feature_map_size((SIDE, SIDE)) == (map_side, map_side)
    with pytest.raises(ValueError, match="variant"):
        ImageNetBagNet(21)
    with pytest.raises(ValueError, match="smaller than the receptive field"):
        model.feature_map_size((variant - 1, variant - 1))


@pytest.mark.parametrize("variant", [9, 17, 33])
def test_bagnet_local_logit_sees_only_its_receptive_field(variant):
    """The gradient of one local logit reaches exactly a ``variant`` x ``variant`` square of pixels, at stride 8."""
    torch.manual_seed(0)
    model = ImageNetBagNet(variant, num_classes=3, width=4).eval()
    x = torch.rand(1, 3, 72, 72, requires_grad=True)
    logits = model(x)
    assert logits.shape[1:3] == model.feature_map_size((72, 72))
    row, col = 2, 3
    logits[0, row, col].sum().backward()
    reached = np.argwhere(x.grad[0].abs().sum(0).numpy() > 0)
    assert reached.min(0).tolist() == [8 * row, 8 * col]
    assert (reached.max(0) - reached.min(0) + 1).tolist() == [variant, variant]


def test_paper_patch_sides():
    """The papers' 1% / 2% / 3% ImageNet patches (23, 32, 39 px); every side covers at least its fraction."""
    assert [paper_patch_side(f) for f in (0.01, 0.02, 0.03)] == [23, 32, 39]
    assert IMAGENET_PATCH_PIXELS["patchcleanser"] == IMAGENET_PATCH_PIXELS["robust_masking"] == 32
    assert IMAGENET_PATCH_PIXELS["scalecert"] == 23
    for fraction in (0.01, 0.02, 0.03, 0.05):
        assert paper_patch_side(fraction) ** 2 >= fraction * SIDE * SIDE
    with pytest.raises(ValueError, match="fraction"):
        paper_patch_side(2)


def test_user_weights_file_is_hash_checked(tmp_path):
    """A user's weights file (a plain state dict) loads when its sha256 is right and is refused when it is not,
    through build_model and through the Armory-style factory."""
    from art_patch_defenses.models import get_art_model

    torch.manual_seed(1)
    trained = build_model("imagenet_mobilenet_v2")
    path = tmp_path / "mobilenet_v2_imagenet.pth"
    torch.save(trained.state_dict(), path)
    digest = sha256_of(path)
    loaded = build_model("imagenet_mobilenet_v2", str(path), sha256=digest)
    for key, value in trained.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    wrong = "0" * 64
    with pytest.raises(ValueError, match="sha256"):
        build_model("imagenet_mobilenet_v2", str(path), sha256=wrong)
    with pytest.raises(ValueError, match="sha256"):
        get_art_model({"name": "imagenet_mobilenet_v2", "weights_sha256": wrong}, weights_path=str(path))
    classifier = get_art_model({"name": "imagenet_mobilenet_v2", "weights_sha256": digest.upper()},
                               weights_path=str(path))
    x = photos(1)
    with torch.no_grad():
        expected = trained.eval()(torch.from_numpy((x - np.reshape(IMAGENET_MEAN, (1, 3, 1, 1)))
                                                   / np.reshape(IMAGENET_STD, (1, 3, 1, 1))).float())
    assert np.allclose(classifier.predict(x), expected.numpy(), atol=1e-4)
    with pytest.raises(ValueError, match="does not match"):  # another architecture's file
        build_model("imagenet_resnet18", str(path))


# --- every defence at 224x224 -----------------------------------------------------------------------------------


def test_fnc_on_resnet50():
    """FNC after every bottleneck of torchvision's ResNet-50 (16 blocks), 1000 classes."""
    from art_patch_defenses.fnc import fnc_classifier

    base = make_classifier(seeded("imagenet_resnet50"), "imagenet_resnet50")
    defended = fnc_classifier(base, alpha=1.0)
    assert defended.fnc_layer_count == 16
    scores = defended.predict(photos(2))
    assert scores.shape == (2, CLASSES) and np.all(np.isfinite(scores))


def test_patchzero_with_its_pspnet_at_full_size():
    """PatchZero's paper detector (PSPNet, ResNet-50 encoder, stride-2 stem) in front of MobileNetV2."""
    from art_patch_defenses.patchzero import imagenet_patchzero

    torch.manual_seed(0)
    patchzero = imagenet_patchzero()
    classifier = make_classifier(seeded("imagenet_mobilenet_v2"), "imagenet_mobilenet_v2",
                                 preprocessing_defences=[patchzero])
    x = photos(2)
    assert classifier.predict(x).shape == (2, CLASSES)
    masks = patchzero.masks(x)
    assert masks.shape == (2, SIDE, SIDE) and masks.dtype == bool
    repainted, _ = patchzero.forward(torch.from_numpy(x))
    kept = ~masks[:, None].repeat(3, axis=1)
    assert np.array_equal(repainted.detach().numpy()[kept], x[kept])  # outside the detected mask: untouched


def test_robust_masking_bagnet17():
    """PatchGuard's ImageNet setting: BagNet-17 local logits (26x26), a 32x32 patch -> 6x6 windows (441)."""
    from art_patch_defenses.robust_masking import get_art_model

    patch = IMAGENET_PATCH_PIXELS["robust_masking"]
    torch.manual_seed(0)
    certifier = get_art_model({"name": "imagenet_bagnet17", "patch_size": patch})
    windows = certifier.windows_for(patch)
    assert windows.shape == (21 * 21, 26, 26) and windows.sum((1, 2)).max() == 36
    x = photos(1)
    scores = certifier.predict(x)
    result = certifier.certify(x)
    assert scores.shape == (1, CLASSES)
    assert np.array_equal(result.prediction, scores.argmax(1)) and result.certified.dtype == bool
    assert result.kind == "recovery" and result.patch_size == patch


class _TinyBandBase(torch.nn.Module):
    """A small base for Mask-DS's band encoding (6 channels in), 1000 classes out: keeps the fast test fast."""

    def __init__(self) -> None:
        super().__init__()
        self.features = torch.nn.Sequential(torch.nn.Conv2d(6, 8, 7, stride=4), torch.nn.ReLU(),
                                            torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
        self.fc = torch.nn.Linear(8, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))


def test_robust_masking_mask_ds_geometry_and_chunks():
    """Mask-DS at 224: 224 bands of 25 columns (DS on ImageNet); a 32-pixel patch meets 56 of them. The chunked
    band network gives exactly the unchunked local logits. (A tiny band base keeps this fast; the registered
    ResNet-18 / ResNet-50 bases run in the slow test below.)"""
    from art_patch_defenses.models.bagnet import ColumnBandNet
    from art_patch_defenses.robust_masking import PyTorchRobustMasking

    torch.manual_seed(0)
    bands = ChunkedColumnBandNet(_TinyBandBase(), 25, (SIDE, SIDE), chunk=50)
    x = photos(2)
    with torch.no_grad():
        chunked = bands(torch.from_numpy(x))
        whole = ColumnBandNet.forward(bands, torch.from_numpy(x))
    assert chunked.shape == (2, 1, SIDE, CLASSES) and torch.allclose(chunked, whole, atol=1e-5)
    bands.chunk = 500  # two whole images per chunk
    with torch.no_grad():
        assert torch.allclose(bands(torch.from_numpy(x)), whole, atol=1e-5)
    with pytest.raises(ValueError, match="chunk"):
        ChunkedColumnBandNet(_TinyBandBase(), 25, (SIDE, SIDE), chunk=0)
    certifier = make_classifier(bands, input_shape=(3, SIDE, SIDE), nb_classes=CLASSES, mean=(0.0,) * 3,
                                std=(1.0,) * 3, estimator_class=PyTorchRobustMasking, patch_size=32,
                                feature_type="prediction")
    windows = certifier.windows_for(32)
    assert windows.shape == (SIDE, 1, SIDE) and set(windows.sum((1, 2))) == {32 + 25 - 1}
    scores = certifier.predict(x)
    result = certifier.certify(x)
    assert np.array_equal(result.prediction, scores.argmax(1))


@pytest.mark.slow
@pytest.mark.parametrize("name", ["imagenet_mask_ds_resnet18", "imagenet_mask_ds"])
def test_robust_masking_registered_mask_ds(name):
    """The registered Mask-DS models (224 ResNet forwards per image) predict and certify one image."""
    from art_patch_defenses.robust_masking import get_art_model

    torch.manual_seed(0)
    certifier = get_art_model({"name": name, "patch_size": 32, "feature_type": "prediction"})
    x = photos(1)
    result = certifier.certify(x, batch_size=1)
    assert np.array_equal(result.prediction, certifier.predict(x, batch_size=1).argmax(1))


@pytest.mark.parametrize(("name", "n"), [("imagenet_resnet50", 2), ("imagenet_vit_b_16", 1)])
def test_patchcleanser_on_torchvision_classifiers(name, n):
    """Double masking and its certificate for 32x32 patches (2%) on ResNet-50 and ViT-B/16. Reduced: k = 2 masks
    per axis (4 masks, 10 one- and two-mask copies per image to certify; the paper's k = 6 needs 666)."""
    from art_patch_defenses.patchcleanser import get_art_model

    torch.manual_seed(0)
    certifier = get_art_model({"name": name, "patch_size": IMAGENET_PATCH_PIXELS["patchcleanser"],
                               "masks_per_axis": 2})
    masks = certifier.masks()
    assert masks.shape == (4, SIDE, SIDE)
    x = photos(n)
    result = certifier.certify(x)
    assert np.array_equal(certifier.predict(x).argmax(1), result.prediction)
    assert result.certified.shape == (n,) and result.kind == "recovery"
    # Every 32x32 placement lies inside one mask (the R-covering property at 224).
    sides = masks.sum(1).max(), masks.sum(2).max()
    assert min(sides) >= 32


def test_mrs_on_mobilenet_v2():
    """Localisation + masked-noise smoothing at 224 on MobileNetV2. Reduced: one image, n0 = 4, n = 16 samples
    (paper: 100 / 1000), a 7x7 grid of inpainted 32x32 blocks (stride 32; paper: stride 1)."""
    from art_patch_defenses.mrs import get_art_model

    torch.manual_seed(0)
    certifier = get_art_model({"name": "imagenet_mobilenet_v2", "patch_size": IMAGENET_PATCH_PIXELS["mrs"],
                               "sample_size": 16, "n0": 4, "stride": 32})
    x = photos(1)
    result = certifier.certify(x)  # localisation, then n0 + n samples inside the localised block
    assert result.kind == "region-L2" and result.radius.shape == (1,)
    row, col = result.location[0]
    assert row % 32 == 0 and col % 32 == 0 and 0 <= min(row, col) and max(row, col) <= SIDE - 32
    labels = certifier.predict_labels(x)
    assert labels.shape == (1,) and -1 <= labels[0] < CLASSES
    mask = np.zeros((SIDE, SIDE), dtype=bool)
    mask[96:128, 96:128] = True
    assert certifier.certify(x, mask=mask).location.tolist() == [[-1, -1]]  # a given region: no localisation


def test_scalecert_sin_on_resnet50():
    """ScaleCert with SIN after ResNet-50's ``bn1`` (112x112 map), windows for 23x23 patches (1%, the paper's
    headline ImageNet setting). Reduced: top-k 0.002 (25 winners) on an image with one bright object, so that
    few occluded copies meet the candidate region."""
    from art_patch_defenses.scalecert import get_art_model

    torch.manual_seed(0)
    certifier = get_art_model({"name": "imagenet_resnet50", "patch_size": IMAGENET_PATCH_PIXELS["scalecert"],
                               "top_k": 0.002})
    assert certifier.superficial_layer == "bn1" and certifier.model.map_hw == (112, 112)
    x = np.full((1, 3, SIDE, SIDE), 0.5, dtype=np.float32)
    x[0, :, 60:100, 120:170] = 0.9
    windows = certifier.candidate_windows(x)
    assert 0 < windows[0] < len(certifier.windows_for().boxes)
    result = certifier.certify(x)
    labels = certifier.predict_labels(x)
    assert result.kind == "detection" and result.alert.shape == (1,)
    assert labels[0] == result.prediction[0]


# --- the ImageNet-style scenario --------------------------------------------------------------------------------


def _image_folder(root: Path, size: tuple[int, int] = (SIDE, SIDE), per_class: int = 2) -> Path:
    from PIL import Image

    rng = np.random.default_rng(0)
    for label, synset in enumerate(("n01440764", "n01443537")):
        folder = root / "val" / synset
        folder.mkdir(parents=True)
        for index in range(per_class):
            pixels = np.clip(rng.normal(80 + 90 * label, 40, (size[1], size[0], 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(folder / f"ILSVRC2012_val_{label}{index}.JPEG", quality=90)
    return root


def test_imagenet_folder_is_resized_and_centre_cropped(tmp_path):
    from PIL import Image

    from art_patch_defenses.data import load_dataset

    root = _image_folder(tmp_path / "photos", size=(320, 240), per_class=1)
    marked = np.zeros((240, 320, 3), dtype=np.uint8)
    marked[:, 160:] = 255  # right half white: after resizing 240 -> 256 and cropping, the centre column splits it
    Image.fromarray(marked).save(root / "val" / "n01440764" / "ILSVRC2012_val_00.JPEG", quality=95)
    data = load_dataset("imagenet", "val", root=root)
    assert data.x.shape == (2, 3, SIDE, SIDE) and data.y.tolist() == [0, 1]
    assert data.class_names == ("n01440764", "n01443537")
    assert data.x[0, :, :, :100].max() < 0.1 and data.x[0, :, :, 124:].min() > 0.9
    subset = load_dataset("imagenet", "val", root=root, n=1, seed=3)
    assert len(subset) == 1
    with pytest.raises(ValueError, match="root"):
        load_dataset("imagenet", "val")
    with pytest.raises(FileNotFoundError, match="ImageFolder"):
        load_dataset("imagenet", "train", root=root)


def test_imagenet_scenario_config_runs(tmp_path):
    """examples/configs/imagenet_patchcleanser_resnet50.json through ``run_suite`` on a synthetic ImageFolder of
    224x224 JPEGs (2 classes x 2 images) with a user weights file (a randomly initialised ResNet-50 state dict,
    sha256 checked). Reduced: k = 2 masks per axis, 2 images, 1 PGD iteration."""
    from art_patch_defenses.evaluation.runner import run_suite

    config_path = Path(__file__).resolve().parents[1] / "examples" / "configs" / "imagenet_patchcleanser_resnet50.json"
    config = json.loads(config_path.read_text())
    assert config["model"]["model_kwargs"]["name"] == "imagenet_resnet50"
    assert config["dataset"]["name"] == "imagenet" and config["attack"]["patch_size"] == 32
    root = _image_folder(tmp_path / "imagenet")
    torch.manual_seed(2)
    weights = tmp_path / "resnet50_imagenet.pth"
    torch.save(build_model("imagenet_resnet50").state_dict(), weights)
    config["dataset"]["root"] = str(root)
    config["model"]["weights_file"] = str(weights)
    config["model"]["model_kwargs"]["weights_sha256"] = sha256_of(weights)
    config["model"]["model_kwargs"]["masks_per_axis"] = 2
    record = run_suite(config, tmp_path / "run", verbose=False, n=2, max_iter=1)["outcomes"][0].record
    results = record["results"]
    assert results["num_samples"] == 2 and results["certified_patch_pixels"] == 32
    assert results["certificate_kind"] == "recovery"
    assert 0.0 <= results["certified_accuracy"] <= results["benign_mean_categorical_accuracy"] + 1e-9
    assert results["max_change_outside_patch"] == 0.0

    config["model"]["model_kwargs"]["weights_sha256"] = "f" * 64  # another file's digest: refused before running
    with pytest.raises(ValueError, match="sha256"):
        run_suite(config, tmp_path / "refused", verbose=False, n=2, max_iter=1)
