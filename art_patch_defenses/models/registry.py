"""A registry of the project's models, so that a config can name one, and the ART classifier factory.

Weights are named by a short tag or given as a path. Tags: ``"pretrained"`` (the shared He et al. weights),
``"finetuned"`` (this project's JPEG fine-tuned checkpoints), ``"mrs"`` (fine-tuned with noise in random squares,
for MRS), ``"scalecert"`` (fine-tuned with the SIN mask and occluding windows, for ScaleCert), ``"patchcleanser"``
(fine-tuned with PatchCleanser's masks), ``"trained"``
(this project's robust-masking backbones), ``"embedded"`` (trained on the embedded MNIST
digits on first use and cached), ``"none"`` (untrained).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from art_patch_defenses.models.checkpoints import load_weights, save_checkpoint
from art_patch_defenses.models.cifar_resnet import RESNET_DEPTHS, cifar_resnet
from art_patch_defenses.models.mnist_cnn import MnistCNN
from art_patch_defenses.paths import cache_dir, checkpoints_dir, shared_dir

CIFAR10_MEAN = (0.485, 0.456, 0.406)
CIFAR10_STD = (0.229, 0.224, 0.225)
MNIST_MEAN = (0.1307,)
MNIST_STD = (0.3081,)


@dataclass(frozen=True)
class ModelSpec:
    """What the project knows of a model: how to build it, its input, its normalisation and its weights."""

    factory: Callable[[], nn.Module]
    input_shape: tuple[int, int, int]
    nb_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    weights: dict[str, Callable[[], Path]]


def _pretrained_resnet(depth: int) -> Callable[[], Path]:
    names = {20: "resnet20-12fca82f.th", 56: "resnet56-4bfd9763.th"}
    return lambda: shared_dir() / "models" / "cifar10" / names[depth]


def _finetuned_resnet(depth: int) -> Callable[[], Path]:
    return lambda: checkpoints_dir() / f"cifar10_resnet{depth}_finetuned.pt"


def _mrs_resnet(depth: int) -> Callable[[], Path]:
    return lambda: checkpoints_dir() / f"cifar10_resnet{depth}_mrs.pt"


def _scalecert_resnet(depth: int) -> Callable[[], Path]:
    return lambda: checkpoints_dir() / f"cifar10_resnet{depth}_scalecert.pt"


def _patchcleanser_resnet(depth: int) -> Callable[[], Path]:
    return lambda: checkpoints_dir() / f"cifar10_resnet{depth}_patchcleanser.pt"


def _resnet_spec(depth: int) -> ModelSpec:
    weights = {}
    if depth in (20, 56):
        weights = {"pretrained": _pretrained_resnet(depth), "finetuned": _finetuned_resnet(depth),
                   "mrs": _mrs_resnet(depth), "scalecert": _scalecert_resnet(depth),
                   "patchcleanser": _patchcleanser_resnet(depth)}
    return ModelSpec(
        factory=lambda: cifar_resnet(depth), input_shape=(3, 32, 32), nb_classes=10,
        mean=CIFAR10_MEAN, std=CIFAR10_STD, weights=weights,
    )


MODEL_REGISTRY: dict[str, ModelSpec] = {f"cifar_resnet{d}": _resnet_spec(d) for d in RESNET_DEPTHS}
MNIST_CNN_EPOCHS = 5


def _embedded_mnist_cnn() -> Path:
    """Train the MNIST CNN on the embedded 4,000 training digits on first use and cache it (seconds on a CPU)."""
    path = cache_dir() / f"mnist_cnn_embedded_e{MNIST_CNN_EPOCHS}.pt"
    if not path.is_file():
        from art_patch_defenses.data import load_dataset
        from art_patch_defenses.models.training import train_classifier

        torch.manual_seed(0)
        train = load_dataset("mnist_embedded", "train")
        model = train_classifier(
            MnistCNN(), train.x, train.y, MNIST_MEAN, MNIST_STD, epochs=MNIST_CNN_EPOCHS, lr=0.05,
            batch_size=64, flip=False, verbose=False,
        )
        save_checkpoint(model, path, arch="mnist_cnn", epochs=MNIST_CNN_EPOCHS)
    return path


SCALECERT_MNIST_EPOCHS = 3


def _embedded_mnist_scalecert() -> Path:
    """The embedded MNIST CNN fine-tuned for ScaleCert (SIN after ``features.1``, top-k 0.1, occluding windows
    for 5 and 7 px patches) on first use and cached (seconds on a CPU)."""
    path = cache_dir() / f"mnist_cnn_embedded_scalecert_e{SCALECERT_MNIST_EPOCHS}.pt"
    if not path.is_file():
        from art_patch_defenses.data import load_dataset
        from art_patch_defenses.scalecert.training import train_scalecert

        model = load_weights(MnistCNN(), _embedded_mnist_cnn())
        torch.manual_seed(0)
        train = load_dataset("mnist_embedded", "train")
        train_scalecert(model, "features.1", train.x, train.y, MNIST_MEAN, MNIST_STD, top_k_choices=(0.1,),
                        patch_sizes=(5, 7), epochs=SCALECERT_MNIST_EPOCHS, lr=0.02, batch_size=64, verbose=False)
        save_checkpoint(model, path, arch="mnist_cnn", epochs=SCALECERT_MNIST_EPOCHS, superficial_layer="features.1",
                        top_k=0.1)
    return path


PATCHCLEANSER_MNIST_EPOCHS = 3


def _embedded_mnist_patchcleanser() -> Path:
    """The embedded MNIST CNN fine-tuned for PatchCleanser (one or two masks of the 5x5 / 7x7 mask sets, k = 6)
    on first use and cached (seconds on a CPU)."""
    path = cache_dir() / f"mnist_cnn_embedded_patchcleanser_e{PATCHCLEANSER_MNIST_EPOCHS}.pt"
    if not path.is_file():
        from art_patch_defenses.data import load_dataset
        from art_patch_defenses.patchcleanser.training import train_patchcleanser

        model = load_weights(MnistCNN(), _embedded_mnist_cnn())
        torch.manual_seed(0)
        train = load_dataset("mnist_embedded", "train")
        train_patchcleanser(model, train.x, train.y, MNIST_MEAN, MNIST_STD, patch_sizes=(5, 7),
                            epochs=PATCHCLEANSER_MNIST_EPOCHS, lr=0.02, batch_size=64, flip=False, verbose=False)
        save_checkpoint(model, path, arch="mnist_cnn", epochs=PATCHCLEANSER_MNIST_EPOCHS, patch_sizes=[5, 7])
    return path


MODEL_REGISTRY["mnist_cnn"] = ModelSpec(
    factory=MnistCNN, input_shape=(1, 32, 32), nb_classes=10, mean=MNIST_MEAN, std=MNIST_STD,
    weights={"embedded": _embedded_mnist_cnn, "scalecert": _embedded_mnist_scalecert,
             "patchcleanser": _embedded_mnist_patchcleanser},
)


def _robust_masking_backbone(kind: str) -> Callable[[], nn.Module]:
    def factory() -> nn.Module:
        from art_patch_defenses.robust_masking.backbones import build_backbone

        return build_backbone(kind)

    return factory


def _embedded_mnist_bagnet() -> Path:
    from art_patch_defenses.robust_masking.backbones import embedded_mnist_bagnet

    return embedded_mnist_bagnet()


#: Robust-masking backbones (local logits ``(N, X, Y, C)``); wrap them with ``robust_masking.get_art_model``.
MODEL_REGISTRY["cifar_bagnet"] = ModelSpec(
    factory=_robust_masking_backbone("bagnet"), input_shape=(3, 32, 32), nb_classes=10, mean=CIFAR10_MEAN,
    std=CIFAR10_STD, weights={"trained": lambda: checkpoints_dir() / "cifar10_robust_masking_bagnet.pt"},
)
#: Mask-DS takes raw [0, 1] pixels: its stem builds the (x, 1 - x) encoding itself.
MODEL_REGISTRY["cifar_mask_ds"] = ModelSpec(
    factory=_robust_masking_backbone("ds"), input_shape=(3, 32, 32), nb_classes=10, mean=(0.0, 0.0, 0.0),
    std=(1.0, 1.0, 1.0), weights={"trained": lambda: checkpoints_dir() / "cifar10_robust_masking_ds.pt"},
)
MODEL_REGISTRY["mnist_bagnet"] = ModelSpec(
    factory=_robust_masking_backbone("mnist_bagnet"), input_shape=(1, 32, 32), nb_classes=10, mean=MNIST_MEAN,
    std=MNIST_STD, weights={"embedded": _embedded_mnist_bagnet},
)


def get_spec(name: str) -> ModelSpec:
    """The :class:`ModelSpec` of a registered model name."""
    if name not in MODEL_REGISTRY:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(sorted(MODEL_REGISTRY))}")
    return MODEL_REGISTRY[name]


def weights_path(name: str, weights: str | Path) -> Path:
    """Resolve a weights tag of model ``name`` (or a path) to a file path."""
    spec = get_spec(name)
    if isinstance(weights, str) and weights in spec.weights:
        return spec.weights[weights]()
    path = Path(weights)
    if not path.suffix:
        raise ValueError(
            f"weights {weights!r} is neither a file path nor a known tag of {name!r}: "
            f"{', '.join(['none', *spec.weights])}"
        )
    return path


def build_model(name: str, weights: str | Path | None = None) -> nn.Module:
    """Build registered model ``name`` in eval mode, loading ``weights`` (a tag, a path, or None/"none")."""
    spec = get_spec(name)
    model = spec.factory()
    if weights is not None and weights != "none":
        load_weights(model, weights_path(name, weights))
    return model.eval()


def make_classifier(
    model: nn.Module, name: str | None = None, *, input_shape: tuple[int, ...] | None = None,
    nb_classes: int | None = None, mean: tuple[float, ...] | None = None, std: tuple[float, ...] | None = None,
    device_type: str = "cpu", lr: float = 0.01, estimator_class: type | None = None, **estimator_kwargs: Any,
):
    """Wrap ``model`` in an ART ``PyTorchClassifier`` with clip values (0, 1) and the model's normalisation.

    Values not given are taken from the registry entry ``name``. The returned classifier takes NCHW float
    inputs in [0, 1]; normalisation is ART's ``preprocessing=(mean, std)``, so attacks see raw pixels.
    ``estimator_class`` (a ``PyTorchClassifier`` subclass, e.g. a certifier) and its own keyword arguments
    replace the plain classifier.
    """
    from art.estimators.classification import PyTorchClassifier

    estimator_class = estimator_class or PyTorchClassifier

    if name is not None:
        spec = get_spec(name)
        input_shape = input_shape or spec.input_shape
        nb_classes = nb_classes or spec.nb_classes
        mean, std = mean or spec.mean, std or spec.std
    if input_shape is None or nb_classes is None:
        raise ValueError("input_shape and nb_classes are needed when no registered model name is given")
    channels = input_shape[0]
    preprocessing = None
    if mean is not None and std is not None:
        preprocessing = (
            torch.tensor(mean, dtype=torch.float32).reshape(channels, 1, 1).numpy(),
            torch.tensor(std, dtype=torch.float32).reshape(channels, 1, 1).numpy(),
        )
    return estimator_class(
        model,
        loss=nn.CrossEntropyLoss(),
        optimizer=torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9),
        input_shape=tuple(input_shape),
        nb_classes=nb_classes,
        clip_values=(0.0, 1.0),
        preprocessing=preprocessing,
        device_type=device_type,
        **estimator_kwargs,
    )


def get_art_model(model_kwargs: dict, wrapper_kwargs: dict | None = None, weights_path: str | None = None):
    """Armory-style model factory: ``model_kwargs["name"]`` names a registered model.

    ``weights_path`` (or ``model_kwargs["weights"]``) is a tag or a file; ``wrapper_kwargs`` go to
    :func:`make_classifier` (e.g. ``device_type``).
    """
    return wrap_registered_model(model_kwargs, wrapper_kwargs, weights_path)


def wrap_registered_model(model_kwargs: dict, wrapper_kwargs: dict | None = None, weights_path: str | None = None,
                          estimator_class: type | None = None, settings: tuple[str, ...] = ()):
    """What every Armory-style factory does: build ``model_kwargs["name"]`` with its weights and wrap it.

    ``settings`` are the keys of ``model_kwargs`` passed on to ``estimator_class``; any other key is refused,
    naming the known ones.
    """
    model_kwargs = dict(model_kwargs)
    name = model_kwargs.pop("name", None)
    if name is None:
        raise ValueError(f"model_kwargs needs 'name', one of {', '.join(sorted(MODEL_REGISTRY))}")
    weights = weights_path or model_kwargs.pop("weights", None)
    chosen = {key: model_kwargs.pop(key) for key in settings if key in model_kwargs}
    if model_kwargs:
        known = ", ".join(["name", "weights", *settings])
        raise ValueError(f"unknown model_kwargs {sorted(model_kwargs)}; known: {known}")
    return make_classifier(build_model(name, weights), name, estimator_class=estimator_class,
                           **(wrapper_kwargs or {}), **chosen)


def classifier_params(classifier) -> dict:
    """A ``PyTorchClassifier``'s constructor arguments (model included), to build another one around a new model
    or with other defences; the mixed-precision settings ART does not accept back are left out."""
    params = classifier.get_params()
    for key in ("use_amp", "opt_level", "loss_scale"):
        params.pop(key, None)
    return params
