"""A registry of models by name, so that a config can name one, and the ART classifier factory.

A :class:`ModelSpec` says how to build a network, its input shape, its normalisation and where its weights are,
by tag; weights are given as a tag or as a file path, and ``"none"`` means untrained. ``models/`` registers the
networks that several rooms use:

- ``cifar_resnet<depth>``: ``"pretrained"`` (the shared He et al. weights) and ``"finetuned"`` (this project's JPEG
  fine-tuned checkpoints), for depths 20 and 56;
- ``mnist_cnn``: ``"embedded"`` (trained on the embedded MNIST digits, committed in ``checkpoints/``);
- ``cifar_mask_ds``: ``"trained"`` (the Mask-DS column-band model: robust masking's backbone and the base of
  ART's de-randomized-smoothing baseline).

A defence registers its own models and tags from its package with :func:`register_model` and
:func:`register_weights` (e.g. ``"scalecert"`` when ``art_patch_defenses.scalecert`` is imported): this module
imports no defence.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from art_patch_defenses.models.bagnet import ColumnBandNet, CroppedColumnBandNet, cropped_mask_ds, mask_ds
from art_patch_defenses.models.checkpoints import load_weights
from art_patch_defenses.models.cifar_resnet import RESNET_DEPTHS, cifar_resnet
from art_patch_defenses.models.mnist_cnn import MnistCNN
from art_patch_defenses.paths import checkpoints_dir, shared_dir

if TYPE_CHECKING:  # ART is imported only when a classifier is built
    from art.estimators.classification import PyTorchClassifier

CIFAR10_MEAN = (0.485, 0.456, 0.406)
CIFAR10_STD = (0.229, 0.224, 0.225)
MNIST_MEAN = (0.1307,)
MNIST_STD = (0.3081,)
#: The weights value that means "untrained"; never a registered tag.
NO_WEIGHTS = "none"
#: How the errors for an unknown tag or model tell the user where the missing one would come from.
_TAG_HINT = ("a defence's weights tags are registered when its package is imported "
             "(e.g. `import art_patch_defenses.scalecert` registers the 'scalecert' tags)")
_MODEL_HINT = ("a defence's own models are registered when its package is imported "
               "(e.g. `import art_patch_defenses.robust_masking` registers 'mnist_bagnet')")


@dataclass(frozen=True)
class ModelSpec:
    """What the project knows of a model: how to build it, its input, its normalisation and its weights.

    ``weights`` maps a tag to a function returning the file (called only when the tag is used, so a path can
    follow ``ART_PATCH_DEFENSES_CHECKPOINTS``).
    """

    factory: Callable[[], nn.Module]
    input_shape: tuple[int, int, int]
    nb_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    weights: Mapping[str, Callable[[], Path]] = field(default_factory=dict)


MODEL_REGISTRY: dict[str, ModelSpec] = {}


def _check_tag(tag: str) -> None:
    if not isinstance(tag, str) or not tag or tag == NO_WEIGHTS:
        raise ValueError(f"a weights tag must be a non-empty string other than {NO_WEIGHTS!r}, got {tag!r}")


def register_model(name: str, spec: ModelSpec, *, replace: bool = False) -> ModelSpec:
    """Register ``spec`` under ``name``; a name already taken is refused unless ``replace`` is True, so two
    packages cannot silently claim the same name.

    :return: the registered spec (it holds its own copy of ``spec.weights``, which :func:`register_weights` extends).
    """
    if name in MODEL_REGISTRY and not replace:
        raise ValueError(f"model {name!r} is already registered; pass replace=True to replace it")
    for tag in spec.weights:
        _check_tag(tag)
    MODEL_REGISTRY[name] = dataclasses.replace(spec, weights=dict(spec.weights))  # a private copy of the tags
    return MODEL_REGISTRY[name]


def register_weights(model_name: str, tag: str, path_fn: Callable[[], Path], *, replace: bool = False) -> None:
    """Register weights ``tag`` of the registered model ``model_name``: ``path_fn()`` returns the file.

    A tag the model already has is refused unless ``replace`` is True, so two packages cannot silently claim
    the same tag.
    """
    _check_tag(tag)
    spec = get_spec(model_name)
    if tag in spec.weights and spec.weights[tag] is not path_fn and not replace:
        raise ValueError(f"model {model_name!r} already has weights tag {tag!r}; pass replace=True to replace it")
    MODEL_REGISTRY[model_name] = dataclasses.replace(spec, weights={**spec.weights, tag: path_fn})


def embedded_checkpoint(name: str) -> Path:
    """The committed checkpoint of a model trained on the embedded MNIST digits:
    ``checkpoints/mnist_embedded_<name>.pt`` (made by a ``train_embedded`` command, see ``checkpoints/README.md``)."""
    return checkpoints_dir() / f"mnist_embedded_{name}.pt"


def register_embedded_mnist_cnn(name: str, checkpoint: str) -> ModelSpec:
    """Register ``name``: the embedded MNIST CNN's architecture with its own weights, tag ``"embedded"`` =
    :func:`embedded_checkpoint` ``(checkpoint)`` (a defence's fine-tuned copy under a name of its own, so the
    ``mnist_cnn`` tags keep the weights earlier results were measured with)."""
    return register_model(name, ModelSpec(
        factory=MnistCNN, input_shape=(1, 32, 32), nb_classes=10, mean=MNIST_MEAN, std=MNIST_STD,
        weights={"embedded": lambda: embedded_checkpoint(checkpoint)},
    ))


def cifar_mask_ds(depth: int = 20, band_width: int = 4) -> ColumnBandNet:
    """An untrained CIFAR-10 Mask-DS: bands of ``band_width`` columns around a CIFAR ResNet-``depth`` base."""
    return mask_ds(cifar_resnet(depth), CIFAR10_MEAN, CIFAR10_STD, band_width)


def cifar_mask_ds_crop(depth: int = 20, band_width: int = 4) -> CroppedColumnBandNet:
    """An untrained CIFAR-10 Mask-DS on cropped bands: the ResNet-``depth`` base sees each band alone."""
    return cropped_mask_ds(cifar_resnet(depth), CIFAR10_MEAN, CIFAR10_STD, band_width)


def _pretrained_resnet(depth: int) -> Callable[[], Path]:
    names = {20: "resnet20-12fca82f.th", 56: "resnet56-4bfd9763.th"}
    return lambda: shared_dir() / "models" / "cifar10" / names[depth]


def _finetuned_resnet(depth: int) -> Callable[[], Path]:
    return lambda: checkpoints_dir() / f"cifar10_resnet{depth}_finetuned.pt"


def _resnet_spec(depth: int) -> ModelSpec:
    weights = {}
    if depth in (20, 56):
        weights = {"pretrained": _pretrained_resnet(depth), "finetuned": _finetuned_resnet(depth)}
    return ModelSpec(factory=lambda: cifar_resnet(depth), input_shape=(3, 32, 32), nb_classes=10,
                     mean=CIFAR10_MEAN, std=CIFAR10_STD, weights=weights)


for _depth in RESNET_DEPTHS:
    register_model(f"cifar_resnet{_depth}", _resnet_spec(_depth))
register_model("mnist_cnn", ModelSpec(
    factory=MnistCNN, input_shape=(1, 32, 32), nb_classes=10, mean=MNIST_MEAN, std=MNIST_STD,
    weights={"embedded": lambda: embedded_checkpoint("mnist_cnn")},
))
#: Mask-DS takes raw [0, 1] pixels: its stem builds the (x, 1 - x) encoding itself. Local logits ``(N, 1, W, C)``.
register_model("cifar_mask_ds", ModelSpec(
    factory=cifar_mask_ds, input_shape=(3, 32, 32), nb_classes=10, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0),
    weights={"trained": lambda: checkpoints_dir() / "cifar10_robust_masking_ds.pt"},
))
register_model("cifar_mask_ds_crop", ModelSpec(
    factory=cifar_mask_ds_crop, input_shape=(3, 32, 32), nb_classes=10, mean=(0.0, 0.0, 0.0),
    std=(1.0, 1.0, 1.0), weights={"trained": lambda: checkpoints_dir() / "cifar10_robust_masking_ds_crop.pt"},
))
#: The same cropped bands around a ResNet-56 base (warm-started from the fine-tuned ResNet-56).
register_model("cifar_mask_ds_crop56", ModelSpec(
    factory=lambda: cifar_mask_ds_crop(56), input_shape=(3, 32, 32), nb_classes=10, mean=(0.0, 0.0, 0.0),
    std=(1.0, 1.0, 1.0), weights={"trained": lambda: checkpoints_dir() / "cifar10_robust_masking_ds_crop56.pt"},
))


def get_spec(name: str) -> ModelSpec:
    """The :class:`ModelSpec` of a registered model name."""
    if name not in MODEL_REGISTRY:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(sorted(MODEL_REGISTRY))}; "
                         f"{_MODEL_HINT}")
    return MODEL_REGISTRY[name]


def weights_path(name: str, weights: str | Path) -> Path:
    """Resolve a weights tag of model ``name`` (or a path) to a file path. A relative path that is not a file here
    but names one in ``checkpoints/`` is that checkpoint (so a config can name another defence's weights, e.g.
    ``"cifar10_resnet20_patchcleanser.pt"``, without importing it).

    :raises ValueError: for a string that is neither a registered tag nor a file name (no suffix), naming the
        known tags and how a defence's tags get registered.
    """
    spec = get_spec(name)
    if isinstance(weights, str) and weights in spec.weights:
        return spec.weights[weights]()
    path = Path(weights)
    if not path.suffix:
        raise ValueError(
            f"weights {str(weights)!r} is neither a file path nor a registered tag of model {name!r}; known tags: "
            f"{', '.join([NO_WEIGHTS, *sorted(spec.weights)])}; {_TAG_HINT}"
        )
    if not path.is_absolute() and not path.exists() and (checkpoints_dir() / path).is_file():
        return checkpoints_dir() / path
    return path


def build_model(name: str, weights: str | Path | None = None, sha256: str | None = None) -> nn.Module:
    """Build registered model ``name`` in eval mode, loading ``weights`` (a tag, a path, or None/"none").

    :param sha256: the expected digest of the weights file; weights given by path outside ``checkpoints/`` are
        otherwise unchecked. A mismatch is a ``ValueError`` naming the file and both digests.
    """
    spec = get_spec(name)
    path = weights_path(name, weights) if weights is not None and weights != NO_WEIGHTS else None
    if path is None and sha256 is not None:
        raise ValueError(f"sha256 was given but model {name!r} is built without weights")
    model = spec.factory()
    if path is not None:
        load_weights(model, path, sha256)
    return model.eval()


def make_classifier(
    model: nn.Module, name: str | None = None, *, input_shape: tuple[int, ...] | None = None,
    nb_classes: int | None = None, mean: tuple[float, ...] | None = None, std: tuple[float, ...] | None = None,
    device_type: str = "cpu", lr: float = 0.01, estimator_class: type | None = None, **estimator_kwargs: Any,
) -> PyTorchClassifier:
    """Wrap ``model`` in an ART ``PyTorchClassifier`` with clip values (0, 1) and the model's normalisation.

    Values not given are taken from the registry entry ``name``. The returned classifier takes NCHW float
    inputs in [0, 1] and checks them (:class:`~art_patch_defenses.models.checked.CheckedPyTorchClassifier`);
    normalisation is ART's ``preprocessing=(mean, std)``, so attacks see raw pixels.
    ``estimator_class`` (a ``PyTorchClassifier`` subclass, e.g. a certifier) and its own keyword arguments
    replace the plain classifier.
    """
    from art_patch_defenses.models.checked import CheckedPyTorchClassifier

    estimator_class = estimator_class or CheckedPyTorchClassifier

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


def get_art_model(model_kwargs: dict, wrapper_kwargs: dict | None = None,
                  weights_path: str | None = None) -> PyTorchClassifier:
    """Armory-style model factory: ``model_kwargs["name"]`` names a registered model.

    ``weights_path`` (or ``model_kwargs["weights"]``) is a tag or a file, ``model_kwargs["weights_sha256"]`` its
    expected sha256 (checked on load); ``wrapper_kwargs`` go to :func:`make_classifier` (e.g. ``device_type``).
    """
    return wrap_registered_model(model_kwargs, wrapper_kwargs, weights_path)


def wrap_registered_model(model_kwargs: dict, wrapper_kwargs: dict | None = None, weights_path: str | None = None,
                          estimator_class: type | None = None, settings: tuple[str, ...] = (),
                          model_wrappers: dict[str, Callable[[nn.Module], nn.Module]] | None = None
                          ) -> PyTorchClassifier:
    """What every Armory-style factory does: build ``model_kwargs["name"]`` with its weights and wrap it.

    ``settings`` are the keys of ``model_kwargs`` passed on to ``estimator_class``; ``model_wrappers`` maps
    True/False keys of ``model_kwargs`` to module wrappers applied to the built model when True (e.g.
    ``{"flip_average": FlipAverage}``); ``weights_sha256`` is the expected sha256 of the weights file; any other key
    is refused, naming the known ones.
    """
    model_kwargs = dict(model_kwargs)
    model_wrappers = model_wrappers or {}
    name = model_kwargs.pop("name", None)
    if name is None:
        raise ValueError(f"model_kwargs needs 'name', one of {', '.join(sorted(MODEL_REGISTRY))}")
    weights = model_kwargs.pop("weights", None)  # popped even when weights_path overrides it
    weights = weights_path or weights
    sha256 = model_kwargs.pop("weights_sha256", None)
    chosen = {key: model_kwargs.pop(key) for key in settings if key in model_kwargs}
    wrap = {key: model_kwargs.pop(key) for key in model_wrappers if key in model_kwargs}
    if model_kwargs:
        known = ", ".join(["name", "weights", "weights_sha256", *settings, *model_wrappers])
        raise ValueError(f"unknown model_kwargs {sorted(model_kwargs)}; known: {known}")
    for key, value in wrap.items():
        if not isinstance(value, bool):
            raise ValueError(f"model_kwargs {key!r} must be True or False, got {value!r}")
    model = build_model(name, weights, sha256)
    for key, value in wrap.items():
        if value:
            model = model_wrappers[key](model)
    return make_classifier(model, name, estimator_class=estimator_class, **(wrapper_kwargs or {}), **chosen)


def classifier_params(classifier: PyTorchClassifier) -> dict[str, Any]:
    """A ``PyTorchClassifier``'s constructor arguments (model included), to build another one around a new model
    or with other defences; the mixed-precision settings ART does not accept back are left out."""
    params = classifier.get_params()
    for key in ("use_amp", "opt_level", "loss_scale"):
        params.pop(key, None)
    return params
