"""Attack your own ART PyTorchClassifier with a masked AutoPGD patch and a universal patch, in a few lines.

Run: .venv/bin/python examples/attack_your_classifier.py  (uses the embedded MNIST CNN; about a minute)
"""

import numpy as np

from art_patch_defenses.attacks import MaskedAutoPGD, lavan_patch
from art_patch_defenses.data import load_dataset
from art_patch_defenses.geometry import expand_masks, paste_patch, patch_masks, patch_shape, random_locations
from art_patch_defenses.models import build_model, make_classifier

# Any ART classifier with loss gradients works here; this one is the embedded default.
classifier = make_classifier(build_model("mnist_cnn", "embedded"), "mnist_cnn")
test = load_dataset("mnist_embedded", "test", n=200, seed=0)
train = load_dataset("mnist_embedded", "train", n=500, seed=0)

shape = patch_shape(0.05, (32, 32))  # 5% of the image area: 7x7 pixels
masks = patch_masks((32, 32), shape, random_locations(len(test), (32, 32), shape, seed=0))
x_adv = MaskedAutoPGD(classifier, eps=1.0, max_iter=50, verbose=False).generate(
    test.x, test.y, expand_masks(masks, test.x)
)

patch = lavan_patch(classifier, train.x, train.y, patch_size=0.1, max_iter=100, verbose=False)
x_patched, _ = paste_patch(test.x, patch, random_locations(len(test), (32, 32), patch.shape[1:], seed=1))


def accuracy(x: np.ndarray) -> float:
    return float(np.mean(classifier.predict(x).argmax(1) == test.y))


print(f"clean {accuracy(test.x):.3f}  masked AutoPGD 7x7 {accuracy(x_adv):.3f}  LaVAN 10x10 {accuracy(x_patched):.3f}")
