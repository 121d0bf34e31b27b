"""Data sets: CIFAR-10 (ImageFolder or torchvision), ImageNet-style ImageFolders at 224x224 and the embedded MNIST
default, as ART-ready arrays, with a crash- and race-safe cache of the decoded images."""

from art_patch_defenses.data.cache import CacheWarning
from art_patch_defenses.data.datasets import (
    CIFAR10_CLASSES,
    DATASETS,
    ImageDataset,
    balanced_subset,
    load_cifar10_torchvision,
    load_dataset,
    load_image_folder,
    load_imagenet_folder,
    load_mnist_embedded,
)

__all__ = [
    "CIFAR10_CLASSES",
    "CacheWarning",
    "DATASETS",
    "ImageDataset",
    "balanced_subset",
    "load_cifar10_torchvision",
    "load_dataset",
    "load_image_folder",
    "load_imagenet_folder",
    "load_mnist_embedded",
]
