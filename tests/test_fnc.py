import copy
import math

import numpy as np
import pytest
import torch
from art.metrics.gradient_check import loss_gradient_check
from torch import nn

from art_patch_defenses.fnc import (
    FeatureNormClipping,
    PyTorchFNCClassifier,
    cascaded_modules,
    fnc_classifier,
    fnc_layers,
    get_art_model,
    insert_fnc,
    recalibrate_batchnorm,
    spread_evenly,
)
from art_patch_defenses.models import MnistCNN, cifar_resnet, make_classifier


def literal_fnc(features: np.ndarray, alpha: float) -> np.ndarray:
    """Eq. 12 written out position by position: the test oracle."""
    n, c, h, w = features.shape
    out = np.zeros_like(features)
    for s in range(n):
        norms = [[np.sqrt(sum(features[s, k, i, j] ** 2 for k in range(c))) for j in range(w)] for i in range(h)]
        mean = sum(sum(row) for row in norms) / (h * w)
        for i in range(h):
            for j in range(w):
                norm = norms[i][j]
                if norm > 0:
                    out[s, :, i, j] = features[s, :, i, j] / norm * min(norm, alpha * mean)
    return out


@pytest.mark.parametrize("alpha", [0.5, 1.0, 1.2, 3.0])
def test_layer_matches_the_literal_equation(alpha):
    rng = np.random.default_rng(1)
    features = rng.normal(size=(3, 5, 4, 6))
    features[0, :, 1, 2] *= 20  # a patch-like large-norm position
    features[1, :, 0, 0] = 0  # a zero vector
    got = FeatureNormClipping(alpha)(torch.from_numpy(features)).numpy()
    np.testing.assert_allclose(got, literal_fnc(features, alpha), rtol=1e-12, atol=1e-12)
    assert np.linalg.norm(got, axis=1).max() <= alpha * np.linalg.norm(features, axis=1).mean(axis=(1, 2)).max() + 1e-9


def test_zero_features_give_zero_output_and_finite_gradients():
    features = torch.zeros(2, 3, 4, 4, requires_grad=True)
    out = FeatureNormClipping(1.0)(features)
    out.sum().backward()
    assert torch.equal(out, torch.zeros_like(out)) and torch.isfinite(features.grad).all()


def test_layer_is_per_sample_not_per_batch():
    rng = np.random.default_rng(2)
    features = torch.from_numpy(rng.normal(size=(4, 3, 5, 5)))
    alone = FeatureNormClipping(1.0)(features[:1])
    together = FeatureNormClipping(1.0)(torch.cat([features[:1], 100 * features[1:]]))[:1]
    torch.testing.assert_close(alone, together)


def test_bad_alpha_and_shape_are_named():
    with pytest.raises(ValueError, match="alpha must be positive"):
        FeatureNormClipping(0.0)
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        FeatureNormClipping(1.0)(torch.zeros(2, 3))


@pytest.mark.parametrize(
    "build, expected",
    [
        (lambda: cifar_resnet(20), 9),
        (lambda: cifar_resnet(56), 27),
        (lambda: __import__("torchvision").models.resnet18(weights=None), 8),
        (lambda: __import__("torchvision").models.resnet50(weights=None), 16),
        (lambda: __import__("torchvision").models.mobilenet_v2(weights=None), 17),
        (lambda: __import__("torchvision").models.inception_v3(weights=None, init_weights=False), 11),
    ],
    ids=["cifar_resnet20", "cifar_resnet56", "resnet18", "resnet50", "mobilenet_v2", "inception_v3"],
)
def test_insertion_finds_every_cascaded_module_and_leaves_the_input_model_alone(build, expected):
    model = build().eval()
    keys = list(model.state_dict())
    defended = insert_fnc(model, alpha=1.1)
    assert len(cascaded_modules(model)) == expected
    assert len(fnc_layers(defended)) == expected
    assert fnc_layers(model) == [] and list(model.state_dict()) == keys == list(defended.state_dict())


def test_insertion_changes_the_forward_pass_and_alpha_inf_restores_it():
    torch.manual_seed(0)
    model = cifar_resnet(20).eval()
    x = torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        plain = model(x)
        assert not torch.allclose(insert_fnc(model, 0.8)(x), plain)
        assert torch.equal(insert_fnc(model, math.inf)(x), plain)


def test_per_layer_alpha_goes_to_the_modules_in_forward_order():
    """alpha (inf, ..., inf, 0.8) clips only after the last block: the same forward pass as one FNC layer there."""
    torch.manual_seed(0)
    model = cifar_resnet(20).eval()
    blocks = cascaded_modules(model)
    x = torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        last_only = insert_fnc(model, 0.8, insertion_points=[blocks[-1]])(x)
        assert torch.equal(insert_fnc(model, [math.inf] * (len(blocks) - 1) + [0.8])(x), last_only)
        assert torch.equal(insert_fnc(model, (math.inf, math.inf, 0.8), n_fnc=3)(x), last_only)
        assert not torch.equal(insert_fnc(model, [0.8] + [math.inf] * (len(blocks) - 1))(x), last_only)
        named = insert_fnc(model, [0.8, math.inf], insertion_points=[blocks[-1], blocks[0]])  # module order
    assert [layer.alpha for layer in fnc_layers(named)] == [0.8, math.inf]
    assert named.get_submodule(blocks[0]).fnc.alpha == 0.8
    with pytest.raises(ValueError, match="alpha has 2 values for 9 FNC layers"):
        insert_fnc(model, [1.0, 1.2])
    with pytest.raises(ValueError, match="alpha must be positive"):
        insert_fnc(model, [1.0] * 8 + [0.0])


def test_in_place_inference_path_equals_the_differentiable_path():
    torch.manual_seed(0)
    defended = insert_fnc(cifar_resnet(20).eval(), alpha=0.9)
    x = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        fast = defended(x)
    slow = defended(x.clone().requires_grad_(True))
    torch.testing.assert_close(fast, slow.detach(), rtol=1e-6, atol=1e-6)


def test_n_fnc_keeps_the_last_block_and_spreads_the_rest():
    assert spread_evenly(9, 1) == [8]
    assert spread_evenly(9, 3) == [2, 5, 8]
    assert spread_evenly(27, 27) == list(range(27))
    defended = insert_fnc(cifar_resnet(20), n_fnc=3)
    names = [n for n, m in defended.named_modules() if hasattr(m, "fnc") and isinstance(m.fnc, FeatureNormClipping)]
    assert names == ["layer1.2", "layer2.2", "layer3.2"]
    with pytest.raises(ValueError, match="n_fnc must be in"):
        spread_evenly(9, 10)


def test_explicit_insertion_points_and_errors():
    defended = insert_fnc(MnistCNN(), insertion_points=["features.1", "features.4"])
    assert len(fnc_layers(defended)) == 2
    with pytest.raises(ValueError, match="not modules of"):
        insert_fnc(MnistCNN(), insertion_points=["features.99"])
    with pytest.raises(ValueError, match="no residual"):
        insert_fnc(MnistCNN())
    with pytest.raises(ValueError, match="already has an FNC layer"):
        insert_fnc(defended, insertion_points=["features.1"])


@pytest.fixture(scope="module")
def resnet_classifiers():
    torch.manual_seed(0)
    base = make_classifier(cifar_resnet(20).eval(), "cifar_resnet20")
    return base, fnc_classifier(base, alpha=1.0)


def test_classifier_alpha_inf_reproduces_the_undefended_outputs_exactly(resnet_classifiers):
    base, _ = resnet_classifiers
    x = np.random.default_rng(0).random((6, 3, 32, 32), dtype=np.float32)
    unclipped = fnc_classifier(base, alpha=math.inf)
    assert np.array_equal(unclipped.predict(x), base.predict(x))


def test_classifier_keeps_the_estimator_settings_and_the_input_untouched(resnet_classifiers):
    base, defended = resnet_classifiers
    assert isinstance(defended, PyTorchFNCClassifier) and defended.fnc_layer_count == 9
    np.testing.assert_array_equal(defended.clip_values, base.clip_values)
    assert defended.input_shape == base.input_shape
    np.testing.assert_array_equal(defended.preprocessing.mean, base.preprocessing.mean)
    assert fnc_layers(base.model) == []


def test_classifier_batch_independence_and_finite_gradients(resnet_classifiers):
    _, defended = resnet_classifiers
    x = np.random.default_rng(1).random((8, 3, 32, 32), dtype=np.float32)
    np.testing.assert_allclose(defended.predict(x[:1]), defended.predict(x)[:1], rtol=1e-5, atol=1e-5)
    y = defended.predict(x).argmax(1)
    bad = loss_gradient_check(defended, x, np.eye(10)[y], verbose=False)  # ART 1.20 wants one-hot here
    assert not bad.any()


def test_set_params_changes_alpha_in_place_and_validates(resnet_classifiers):
    base, _ = resnet_classifiers
    defended = fnc_classifier(base, alpha=1.0)
    x = np.random.default_rng(0).random((2, 3, 32, 32), dtype=np.float32)
    defended.set_params(alpha=math.inf)
    assert all(layer.alpha == math.inf for layer in fnc_layers(defended.model))
    assert np.array_equal(defended.predict(x), base.predict(x))
    with pytest.raises(ValueError, match="alpha must be positive"):
        defended.set_params(alpha=-1.0)
    with pytest.raises(ValueError, match="n_fnc is fixed"):
        defended.set_params(n_fnc=2)


def test_classifier_takes_one_alpha_per_layer(resnet_classifiers):
    base, _ = resnet_classifiers
    defended = fnc_classifier(base, alpha=1.0, n_fnc=3)
    x = np.random.default_rng(0).random((2, 3, 32, 32), dtype=np.float32)
    defended.set_params(alpha=[math.inf, math.inf, 1.0])
    assert defended.alpha == (math.inf, math.inf, 1.0)
    assert [layer.alpha for layer in fnc_layers(defended.model)] == [math.inf, math.inf, 1.0]
    last_only = fnc_classifier(base, alpha=1.0, insertion_points=[cascaded_modules(base.model)[-1]])
    np.testing.assert_array_equal(defended.predict(x), last_only.predict(x))
    params = defended.get_params()
    defended.set_params(alpha=1.5)
    assert defended.alpha == 1.5
    defended.set_params(**params)  # the per-layer values round-trip
    assert defended.alpha == (math.inf, math.inf, 1.0)
    with pytest.raises(ValueError, match="alpha has 2 values for 3 FNC layers"):
        defended.set_params(alpha=[1.0, 1.0])
    assert defended.alpha == (math.inf, math.inf, 1.0)  # a refused setting changes nothing
    kept = PyTorchFNCClassifier(insert_fnc(base.model, (0.9, 1.1, 1.3), n_fnc=3), loss=base.loss,
                                input_shape=base.input_shape, nb_classes=10)
    assert kept.alpha == (0.9, 1.1, 1.3)


def test_batchnorm_recalibration_is_one_exact_pass():
    torch.manual_seed(0)
    model = insert_fnc(cifar_resnet(20))
    weights = {k: v.clone() for k, v in model.state_dict().items() if "running" not in k and "num_batches" not in k}
    x = np.random.default_rng(0).random((64, 3, 32, 32), dtype=np.float32)
    recalibrate_batchnorm(model, x, batch_size=16, augment=False, verbose=False)
    with torch.no_grad():
        first = model.conv1(torch.from_numpy(x))
    torch.testing.assert_close(model.bn1.running_mean, first.mean(dim=(0, 2, 3)), rtol=1e-4, atol=1e-5)
    assert not model.training and model.bn1.momentum == nn.BatchNorm2d(1).momentum
    for key, value in weights.items():
        assert torch.equal(model.state_dict()[key], value)


def test_armory_factory_builds_an_fnc_classifier(mnist_classifier):
    classifier = get_art_model(
        {"name": "mnist_cnn", "weights": "embedded", "alpha": 1.5, "insertion_points": ["features.1", "features.4"]}
    )
    assert isinstance(classifier, PyTorchFNCClassifier) and classifier.alpha == 1.5
    assert classifier.fnc_layer_count == 2


def test_clone_for_refitting_keeps_the_fnc_layers_and_alpha(resnet_classifiers):
    base, _ = resnet_classifiers
    defended = fnc_classifier(base, alpha=0.9, n_fnc=3)
    clone = defended.clone_for_refitting()
    assert isinstance(clone, PyTorchFNCClassifier) and clone.model is not defended.model
    assert clone.fnc_layer_count == defended.fnc_layer_count == 3
    assert clone.alpha == 0.9 and all(layer.alpha == 0.9 for layer in fnc_layers(clone.model))
    assert (clone.n_fnc, clone.insertion_points) == (3, None)
    # The clone clips as the original does: with the original's weights it predicts the same.
    x = np.random.default_rng(0).random((8, 3, 32, 32), dtype=np.float32)
    clone.model.load_state_dict(defended.model.state_dict())
    np.testing.assert_allclose(clone.predict(x), defended.predict(x), rtol=1e-5, atol=1e-5)
    # A working classifier: fitting moves its own weights, not the original's.
    before = {k: v.clone() for k, v in defended.model.state_dict().items()}
    clone.fit(x, np.arange(8) % 10, batch_size=4, nb_epochs=1, verbose=False)
    assert clone.predict(x).shape == (8, 10)
    assert all(torch.equal(v, defended.model.state_dict()[k]) for k, v in before.items())


def test_clone_for_refitting_with_explicit_insertion_points():
    classifier = make_classifier(MnistCNN(), "mnist_cnn")
    defended = fnc_classifier(classifier, alpha=1.5, insertion_points=["features.1", "features.4"])
    clone = defended.clone_for_refitting()
    assert clone.fnc_layer_count == 2 and clone.alpha == 1.5
    assert clone.insertion_points == ["features.1", "features.4"]


def test_get_params_round_trips_through_set_params(resnet_classifiers):
    base, _ = resnet_classifiers
    defended = fnc_classifier(base, alpha=1.1, n_fnc=3)
    x = np.random.default_rng(2).random((3, 3, 32, 32), dtype=np.float32)
    expected = defended.predict(x)
    params = defended.get_params()
    defended.set_params(**params)
    assert defended.model is params["model"] and (defended.alpha, defended.n_fnc) == (1.1, 3)
    np.testing.assert_array_equal(defended.predict(x), expected)
    with pytest.raises(ValueError, match="model cannot be replaced"):
        defended.set_params(model=cifar_resnet(20))
    with pytest.raises(ValueError, match="insertion_points are fixed"):
        defended.set_params(insertion_points=["layer1.0"])
    assert defended.insertion_points is None and defended.fnc_layer_count == 3


def test_constructor_takes_a_model_that_already_has_fnc_layers(resnet_classifiers):
    base, _ = resnet_classifiers
    clipped = insert_fnc(base.model, alpha=0.7, n_fnc=3)
    kwargs = {"loss": base.loss, "input_shape": base.input_shape, "nb_classes": 10}
    taken = PyTorchFNCClassifier(clipped, **kwargs)
    assert taken.model is clipped and taken.fnc_layer_count == 3
    assert (taken.alpha, taken.n_fnc, taken.insertion_points) == (0.7, 3, None)
    assert PyTorchFNCClassifier(clipped, alpha=1.3, **kwargs).alpha == 1.3
    assert all(layer.alpha == 1.3 for layer in fnc_layers(clipped))
    with pytest.raises(ValueError, match="n_fnc is fixed"):
        PyTorchFNCClassifier(clipped, n_fnc=5, **kwargs)


class ChannelsLast(nn.Module):
    """An NHWC front for an NCHW network: what an ART classifier with ``channels_first=False`` wraps."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x.permute(0, 3, 1, 2))


def test_batchnorm_recalibration_takes_the_estimators_own_layout():
    torch.manual_seed(0)
    network = cifar_resnet(20).eval()
    mean, std = np.array([0.49, 0.48, 0.45], np.float32), np.array([0.25, 0.24, 0.26], np.float32)
    settings = {"loss": nn.CrossEntropyLoss(), "nb_classes": 10, "clip_values": (0.0, 1.0), "device_type": "cpu",
                "alpha": 1.1}
    nchw = PyTorchFNCClassifier(network, input_shape=(3, 32, 32), preprocessing=(mean.reshape(3, 1, 1),
                                std.reshape(3, 1, 1)), **settings)
    nhwc = PyTorchFNCClassifier(ChannelsLast(network), input_shape=(32, 32, 3), channels_first=False,
                                preprocessing=(mean, std), **settings)
    x = np.random.default_rng(3).random((24, 3, 32, 32), dtype=np.float32)
    x_nhwc = x.transpose(0, 2, 3, 1)
    nchw.recalibrate_batchnorm(x, batch_size=8, verbose=False)
    nhwc.recalibrate_batchnorm(x_nhwc, batch_size=8, verbose=False)  # same augmentation draws, other layout
    torch.testing.assert_close(nhwc.model.inner.bn1.running_var, nchw.model.bn1.running_var)
    torch.testing.assert_close(nhwc.model.inner.layer3[2].bn2.running_mean, nchw.model.layer3[2].bn2.running_mean)
    np.testing.assert_allclose(nhwc.predict(x_nhwc), nchw.predict(x), rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="NCHW"):
        nhwc.recalibrate_batchnorm(x, verbose=False)
    with pytest.raises(ValueError, match="NHWC"):
        nchw.recalibrate_batchnorm(x_nhwc, verbose=False)
    with pytest.raises(ValueError, match="NHWC"):
        recalibrate_batchnorm(insert_fnc(network), x_nhwc, verbose=False)
    with pytest.raises(ValueError, match="outside clip_values"):
        nchw.recalibrate_batchnorm(255 * x, verbose=False)


def test_docstrings_keep_measured_figures_in_the_docs():
    import ast
    import re
    from pathlib import Path

    import art_patch_defenses.fnc as package

    figure = re.compile(r"\d+(\.\d+)?\s*(%|points?\b)|benchmarks/results|several times")
    for path in Path(package.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef)) and ast.get_docstring(node):
                doc = ast.get_docstring(node)
                assert not figure.search(doc), f"{path.name}:{getattr(node, 'name', '')}: {figure.search(doc)[0]!r}"
    assert "docs/fnc.md" in recalibrate_batchnorm.__doc__


# --- Fine-tuning through the clipped forward pass ------------------------------------------------------------------


def test_stage_alphas_and_per_block():
    from art_patch_defenses.fnc.training import per_block, stage_alphas

    assert stage_alphas("1.2") == [1.2]
    assert stage_alphas("inf,2,1.0") == [math.inf, 2.0, 1.0]
    for bad in ("", "1,2", "0,1,1", "-1", "a,b,c", "1,1,1,1"):
        with pytest.raises(ValueError, match="one positive alpha"):
            stage_alphas(bad)
    assert per_block([1.5], 9) == 1.5
    assert per_block([1.0, 2.0, 3.0], 9) == [1.0] * 3 + [2.0] * 3 + [3.0] * 3
    with pytest.raises(ValueError, match="do not split"):
        per_block([1.0, 2.0, 3.0], 8)


def test_tuning_split_is_disjoint_and_class_balanced():
    from art_patch_defenses.fnc.training import tuning_split

    y = np.repeat(np.arange(10), 50)[np.random.default_rng(0).permutation(500)]
    patch, evaluation = tuning_split(y, patch_n=100, eval_n=200)
    assert len(patch) == 100 and len(evaluation) == 200 and not set(patch) & set(evaluation)
    assert np.all(np.bincount(y[patch], minlength=10) == 10) and np.all(np.bincount(y[evaluation], minlength=10) == 20)
    again = tuning_split(y, 100, 200)
    assert np.array_equal(patch, again[0]) and np.array_equal(evaluation, again[1])


def test_train_with_fnc_trains_through_the_clipping_and_leaves_the_model_untouched():
    """The copy is trained with its FNC layers in the forward pass: a model whose clipped forward pass cannot fit
    the data before training fits it after; the input model keeps its weights and gets no layer; the state dict is
    the architecture's (a plain ``build_model`` loads it)."""
    from art_patch_defenses.fnc.training import train_with_fnc
    from art_patch_defenses.models.training import accuracy, train_classifier

    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(2), 32)
    x = np.full((64, 3, 16, 16), 0.5, dtype=np.float32)
    x[y == 1, :, 4:12, 4:12] = rng.uniform(0.8, 1.0, size=(32, 3, 8, 8))  # class 1: a bright square
    model = cifar_resnet(20, num_classes=2).eval()
    before = {key: value.clone() for key, value in model.state_dict().items()}
    stats = ((0.5,) * 3, (0.25,) * 3)
    trained = train_with_fnc(model, x, y, *stats, alpha=0.8, epochs=15, lr=0.05, batch_size=16, augment=False,
                             verbose=False)
    assert len(fnc_layers(trained)) == len(cascaded_modules(model)) and not fnc_layers(model)
    assert all(torch.equal(before[key], value) for key, value in model.state_dict().items())
    assert trained.state_dict().keys() == model.state_dict().keys()
    assert accuracy(trained, x, y, *stats) == 1.0
    plain = train_classifier(copy.deepcopy(model), x, y, *stats, epochs=15, lr=0.05, batch_size=16, augment=False,
                             verbose=False)  # the same run without the clipping ends elsewhere
    assert not all(torch.equal(plain.state_dict()[key], value) for key, value in trained.state_dict().items())
    for bad, message in ((x * 255, "0-255"), (np.where(x > 0.9, np.nan, x), "NaN"),
                         (x.transpose(0, 2, 3, 1), "looks NHWC"), (x[:0], "empty batch")):
        with pytest.raises(ValueError, match=message):
            train_with_fnc(model, bad, y[: len(bad)], *stats, alpha=1.0, epochs=1, verbose=False)
    with pytest.raises(ValueError, match="no block FNC can clip after"):
        train_with_fnc(nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, 2)), x, y, *stats, alpha=1.0, epochs=1)
