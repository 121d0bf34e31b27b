"""Figure for docs/patchzero.md: clean, patched (BPDA masked PGD), detected mask and repainted images.

Run: .venv/bin/python examples/patchzero_figure.py --dataset cifar10 --model cifar_resnet20 \
        --detector cifar10_patchzero_cifar_resnet20.pt --out docs/patchzero_cifar10.png
"""

from __future__ import annotations

import argparse
import os
import tempfile

import torch

from art_patch_defenses.attacks import masked_pgd
from art_patch_defenses.data import load_dataset
from art_patch_defenses.geometry import expand_masks, patch_masks, patch_shape, random_locations
from art_patch_defenses.models import build_model, make_classifier
from art_patch_defenses.patchzero import PatchZero


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="mnist_embedded")
    parser.add_argument("--model", default="mnist_cnn")
    parser.add_argument("--weights", default="embedded")
    parser.add_argument("--detector", default="mnist_embedded_patchzero_mnist_cnn.pt")
    parser.add_argument("--n", type=int, default=6)
    parser.add_argument("--out", default="docs/patchzero_mnist.png")
    args = parser.parse_args()
    os.environ.setdefault("MPLCONFIGDIR", tempfile.mkdtemp())
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = load_dataset(args.dataset, "test", n=args.n * 10, seed=3)
    x, y = data.x[::10][: args.n], data.y[::10][: args.n]  # the subset is sorted by class: spread the picks
    classifier = make_classifier(build_model(args.model, args.weights), args.model)
    patchzero = PatchZero.from_checkpoint(args.detector, bpda=True)
    classifier.set_params(preprocessing_defences=[patchzero])
    shape = patch_shape(0.05, x.shape[2:])
    true = patch_masks(x.shape[2:], shape, random_locations(len(x), x.shape[2:], shape, seed=4))
    x_adv = masked_pgd(classifier, x, expand_masks(true, x), y, eps=1.0, eps_step=0.01, max_iter=100,
                       num_random_init=0, verbose=False)
    detected = patchzero.masks(x_adv)
    with torch.no_grad():
        repainted = patchzero.forward(torch.from_numpy(x_adv))[0].numpy()
    names = data.class_names
    predicted = classifier.predict(x_adv).argmax(1)
    figure, axes = plt.subplots(args.n, 4, figsize=(6.4, 1.6 * args.n))
    for i in range(args.n):
        picture = [x[i], x_adv[i], detected[i], repainted[i]]
        titles = [f"clean: {names[y[i]]}", "BPDA masked PGD", f"detected ({true[i].sum()} px patch)",
                  f"repainted: {names[predicted[i]]}"]
        for axis, image, title in zip(axes[i], picture, titles, strict=True):
            if image.ndim == 3:
                image = image.transpose(1, 2, 0)
                image = image[..., 0] if image.shape[-1] == 1 else image
            axis.imshow(image, cmap="gray", vmin=0, vmax=1)
            axis.set_title(title, fontsize=7)
            axis.axis("off")
    figure.suptitle(f"PatchZero ({args.detector}) on {args.dataset}, 7x7 patches", fontsize=8)
    figure.tight_layout()
    figure.savefig(args.out, dpi=120)
    print(f"written: {args.out}")


if __name__ == "__main__":
    main()
