"""Figure for docs/scalecert.md: SIN map, candidate region R, merged windows and the alert location.

For each of a few certified CIFAR-10 test images: the clean image and the same image with a 5x5 patch from masked
PGD (L-inf eps 1.0, step 0.1, 50 iterations) against the sparse model, at the first of 8 random places where it
fools the sparse model (the case the certificate is about). Columns: the image (true
patch in green), the superficial map (channel-summed activation) with the SIN winners, the candidate region R
with the merged occluding windows that meet it (red: the occluded copy's label differs from the prediction),
and the detector's outcome (the alert location in red).
Run: .venv/bin/python examples/scalecert_figure.py --out docs/scalecert.png
"""

from __future__ import annotations

import argparse
import os
import tempfile

import numpy as np
import torch

from art_patch_defenses.attacks import masked_pgd
from art_patch_defenses.data import load_dataset
from art_patch_defenses.geometry import expand_masks, patch_masks, random_locations
from art_patch_defenses.models import make_classifier
from art_patch_defenses.scalecert import get_art_model


def superficial_map(estimator, x: np.ndarray) -> np.ndarray:
    """Channel-summed activation (positive part) of the superficial layer, before the SIN mask."""
    maps = []
    module = dict(estimator.model.model.named_modules())[estimator.superficial_layer]
    handle = module.register_forward_hook(lambda m, i, o: maps.append(o.clamp(min=0).sum(1)))
    try:
        estimator.predict_base(x)
    finally:
        handle.remove()
    return torch.cat(maps).numpy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", default="scalecert")
    parser.add_argument("--top-k", type=float, default=0.1)
    parser.add_argument("--n", type=int, default=2)
    parser.add_argument("--out", default="docs/scalecert.png")
    args = parser.parse_args()
    os.environ.setdefault("MPLCONFIGDIR", tempfile.mkdtemp())
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    estimator = get_art_model({"name": "cifar_resnet20", "weights": args.weights, "top_k": args.top_k,
                               "patch_size": 5})
    data = load_dataset("cifar10", "test", n=200, seed=0)
    certified = estimator.certify(data.x, data.y).certified
    picks = np.flatnonzero(certified)[:: max(1, certified.sum() // args.n)][: args.n]
    x, y = data.x[picks], data.y[picks]
    sparse_model = make_classifier(estimator.model, "cifar_resnet20")
    tries = 8
    candidates = patch_masks((32, 32), (5, 5), random_locations(len(x) * tries, (32, 32), (5, 5), seed=4))
    repeated = np.repeat(x, tries, axis=0)
    attacked = masked_pgd(sparse_model, repeated, expand_masks(candidates, repeated), np.repeat(y, tries),
                          eps=1.0, eps_step=0.1, max_iter=50, verbose=False)
    fooled = (sparse_model.predict(attacked).argmax(1) != np.repeat(y, tries)).reshape(len(x), tries)
    chosen = np.arange(len(x)) * tries + np.argmax(fooled, axis=1)  # the first fooling place, else the first
    x_adv, true_masks = attacked[chosen], candidates[chosen]
    images = np.concatenate([x, x_adv])
    found = estimator.detect(images)
    maps = superficial_map(estimator, images)
    regions = estimator.candidate_region(found.winners)
    windows = estimator.windows_for()
    names = data.class_names
    fig, axes = plt.subplots(len(images), 4, figsize=(8.8, 2.3 * len(images)))
    for row, image in enumerate(images):
        attacked = row >= len(x)
        ax = axes[row]
        ax[0].imshow(image.transpose(1, 2, 0))
        if attacked:
            r, c = np.argwhere(true_masks[row - len(x)])[0]
            ax[0].add_patch(Rectangle((c - 0.5, r - 0.5), 5, 5, fill=False, edgecolor="lime", linewidth=1.5))
        ax[0].set_title(f"{'patched' if attacked else 'clean'}; true {names[y[row % len(x)]]}\n"
                        f"sparse model: {names[found.base_prediction[row]]}", fontsize=8)
        ax[1].imshow(maps[row], cmap="viridis")
        ax[1].contour(found.winners[row], levels=[0.5], colors="white", linewidths=0.6)
        ax[1].set_title(f"superficial map, SIN winners\n(top {args.top_k:.0%}, white)", fontsize=8)
        ax[2].imshow(regions[row], cmap="Greys", vmin=0, vmax=1.6)
        for w in np.flatnonzero(found.evaluated[row]):
            r0, r1, c0, c1 = windows.boxes[w]
            differs = found.window_labels[row, w] != found.base_prediction[row]
            ax[2].add_patch(Rectangle((c0 - 0.5, r0 - 0.5), c1 - c0, r1 - r0, fill=False, linewidth=0.6,
                                      edgecolor="red" if differs else "tab:blue", alpha=0.9 if differs else 0.35))
        ax[2].set_title(f"R and {found.evaluated[row].sum()} of {len(windows.boxes)} merged windows\n"
                        "(red: occluded label differs)", fontsize=8)
        ax[3].imshow(image.transpose(1, 2, 0))
        if found.alert[row]:
            r, c = found.location[row]
            ax[3].add_patch(Rectangle((c - 0.5, r - 0.5), 5, 5, fill=False, edgecolor="red", linewidth=1.5))
            outcome = "ALERT at the red box"
        else:
            outcome = f"prediction: {names[found.prediction[row]]}"
        ax[3].set_title(f"detector: {outcome}", fontsize=8)
        for a in ax:
            a.set_xticks([])
            a.set_yticks([])
    fig.tight_layout()
    fig.savefig(args.out, dpi=110)
    print(f"written: {args.out}")


if __name__ == "__main__":
    main()
