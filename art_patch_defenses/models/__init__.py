"""Models: CIFAR ResNets (He et al.), a small MNIST CNN, local-logit networks, ImageNet-size models (torchvision
classifiers, BagNets, Mask-DS; :mod:`.imagenet`), safe checkpoint loading and a name registry that the defences add
their own models and weights tags to."""

from art_patch_defenses.models.checkpoints import load_weights, read_state_dict, save_checkpoint, sha256_of
from art_patch_defenses.models.cifar_resnet import CifarResNet, cifar_resnet
from art_patch_defenses.models.flip_average import FlipAverage
from art_patch_defenses.models.imagenet import IMAGENET_MEAN, IMAGENET_STD  # registers the ImageNet models
from art_patch_defenses.models.imagenet_bagnet import ImageNetBagNet, imagenet_bagnet
from art_patch_defenses.models.mnist_cnn import MnistCNN
from art_patch_defenses.models.registry import (
    MODEL_REGISTRY,
    ModelSpec,
    build_model,
    get_art_model,
    get_spec,
    make_classifier,
    register_model,
    register_weights,
)

__all__ = [
    "MODEL_REGISTRY",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "CifarResNet",
    "FlipAverage",
    "ImageNetBagNet",
    "MnistCNN",
    "ModelSpec",
    "build_model",
    "cifar_resnet",
    "get_art_model",
    "get_spec",
    "imagenet_bagnet",
    "load_weights",
    "make_classifier",
    "read_state_dict",
    "register_model",
    "register_weights",
    "save_checkpoint",
    "sha256_of",
]
