"""Figure for docs/mrs.md: patched image, MRS prediction map, template scores and the localised region.

Patches: 5x5 masked PGD (L-inf eps 1.0, step 0.05, 50 iterations) against the base classifier at random places;
smoothing as the benchmark (sigma 128/255, n0 100, n 1000, alpha 0.001) in the localised region.
Run: .venv/bin/python examples/mrs_figure.py --out docs/mrs_localization.png
"""

from __future__ import annotations

import argparse
import os
import tempfile

import numpy as np

from art_patch_defenses.attacks import masked_pgd
from art_patch_defenses.data import load_dataset
from art_patch_defenses.geometry import expand_masks, patch_masks, random_locations
from art_patch_defenses.models import make_classifier
from art_patch_defenses.mrs import get_art_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", default="mrs")
    parser.add_argument("--sigma-255", type=float, default=128.0, help="noise std in 0-255 units (as the benchmark)")
    parser.add_argument("--n", type=int, default=4)
    parser.add_argument("--out", default="docs/mrs_localization.png")
    args = parser.parse_args()
    os.environ.setdefault("MPLCONFIGDIR", tempfile.mkdtemp())
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = load_dataset("cifar10", "test", n=args.n * 10, seed=3)
    x, y = data.x[::10][: args.n], data.y[::10][: args.n]  # the subset is sorted by class: spread the picks
    estimator = get_art_model({"name": "cifar_resnet20", "weights": args.weights, "patch_size": 5,
                               "sigma_255": args.sigma_255})
    base = make_classifier(estimator.model, "cifar_resnet20")
    true_masks = patch_masks((32, 32), (5, 5), random_locations(len(x), (32, 32), (5, 5), seed=4))
    x_adv = masked_pgd(base, x, expand_masks(true_masks, x), y, eps=1.0, eps_step=0.05, max_iter=50,
                       num_random_init=0, verbose=False)
    found = estimator.localize(x_adv)
    result = estimator.certify(x_adv, mask=np.stack([f.mask for f in found]), seed=0)
    names = data.class_names
    fig, axes = plt.subplots(args.n, 4, figsize=(8.4, 2.2 * args.n))
    for i, f in enumerate(found):
        base_label = int(base.predict(x_adv[i : i + 1]).argmax())
        outcome = "abstain" if f.abstain or result.prediction[i] < 0 else names[result.prediction[i]]
        panels = [
            (x_adv[i].transpose(1, 2, 0), f"patched: {names[base_label]}\n(true {names[y[i]]})", None),
            (f.prediction_map != f.attacked_class, f"blocks voting\n(label != {names[f.attacked_class]})", "gray"),
            (f.scores, f"template scores\n(max {f.scores.max()})", "viridis"),
            (np.where(f.mask[..., None], x_adv[i].transpose(1, 2, 0) * 0.4 + 0.6 * np.array([1, 0, 0]),
                      x_adv[i].transpose(1, 2, 0)),
             f"localised region -> {outcome}\nR = {255 * result.radius[i]:.0f}/255", None),
        ]
        for ax, (image, title, cmap) in zip(axes[i], panels, strict=True):
            ax.imshow(image, cmap=cmap, interpolation="nearest")
            ax.set_title(title, fontsize=7)
            ax.axis("off")
        rows, cols = np.nonzero(true_masks[i])
        axes[i][0].add_patch(plt.Rectangle((cols.min() - 0.5, rows.min() - 0.5), 5, 5, fill=False, color="yellow"))
    fig.tight_layout()
    fig.savefig(args.out, dpi=120)
    print(f"written: {args.out}")


if __name__ == "__main__":
    main()
