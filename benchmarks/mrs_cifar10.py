"""MRS on CIFAR-10: clean accuracy, certified R-accuracy (oracle mask and localised), localisation, speed, soundness.

Base model (``--weights``): ``checkpoints/cifar10_resnet20_mrs_sigma128.pt``, the ResNet-20 fine-tuned with noise
(sigma 25) inside random 5-10 px squares (``cifar10_resnet20_mrs.pt``, tag ``"mrs"``), then 4 epochs at sigma 128 in
5-11 px squares on all but 100 held-out training images; that model and sigma were chosen together on those images.
Data: ``--n`` class-balanced shared test images (seed 0). Patch 5x5 (2.4%): with ``--places 1`` (default) at a
uniformly random top-left per image (seed 1); with ``--places P`` the paper's protocol (section 4.1: PGD at 80
random places per image, the one of greatest classification loss kept): masked PGD at P random places (seeds 1 to
P) and per image the place whose patch gives the base classifier the largest cross-entropy.
Smoothing: sigma ``--sigma`` (0-255 units; 128 by default: ``benchmarks/mrs_sigma_tuning.py --holdout 100`` run on
the three models "mrs" and its sigma-64 and sigma-128 continuations at sigma 64 and 128, largest clean plus localised
certified accuracy; for "mrs" it had chosen 64 from 25 / 64 / 128 / 192 / 255 on training images), n0 = 100,
n = 1000, alpha = 0.001; localisation with 5x5 blocks, ``--tau`` 20 and ``--margin`` 3 (chosen on
training images by ``benchmarks/mrs_localization_tuning.py``; tau 20 lies above the largest template score of a
5x5 block at stride 1, 17, so the two-groups abstain rule never fires); radii in [0, 1] pixel
units, R = 25 in the paper's 0-255 units is 25 / 255 here (an L2 change of the region's pixels, not an arbitrary
patch).
- ``clean_accuracy``: the deployed pipeline on clean images (localisation, then certify in the found region;
  abstain = wrong); ``clean_accuracy_base``: the base classifier alone.
- ``certified_accuracy_r25_oracle_mask``: certify the clean image with the mask at the patch place.
- ``certified_accuracy_r25_localized``: adversarial images from masked PGD (L-inf eps 1.0, step 0.05, 50
  iterations, no random start) against the base classifier at the patch places; mask from localisation;
  counted only when it covers the patch, as the paper does.
- ``certificate_violations``: ``verify_certificates`` (the package's one soundness attack) on up to ``--verify-n``
  images spread over the slice, each certified in a 5x5 region at a random place (seed + image index), attacked
  by L2 masked PGD with EOT inside the region (eps 0.99 R_certified, 10 iterations, 8 noise samples) and judged
  by the smoothed prediction in that region with fresh noise (another class = a violation); must be 0.

Run: ``.venv/bin/python benchmarks/mrs_cifar10.py [--places 80]`` (writes ``benchmarks/results/mrs_cifar10.json``,
with ``--places P > 1`` ``mrs_cifar10_places<P>.json``). Each place's attacked images are kept under ``outputs/``, so a
run resumes; ``--places 80 --places-shard 0/2`` beside the full command attacks places in a second process.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import ROOT, kept_array, pyplot, save_figure, write_result  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

from art_patch_defenses.attacks import masked_pgd  # noqa: E402
from art_patch_defenses.data import load_dataset  # noqa: E402
from art_patch_defenses.evaluation.verify import verify_certificates  # noqa: E402
from art_patch_defenses.geometry import expand_masks, patch_masks, random_locations  # noqa: E402
from art_patch_defenses.models import make_classifier, sha256_of  # noqa: E402
from art_patch_defenses.models.registry import weights_path  # noqa: E402
from art_patch_defenses.mrs import from_255, get_art_model  # noqa: E402

RADII_255 = (0, 5, 10, 15, 20, 25, 30, 40, 50, 60)


PLACE_PGD = {"eps": 1.0, "eps_step": 0.05, "max_iter": 50, "num_random_init": 0}


def place_masks(x: np.ndarray, place: int) -> np.ndarray:
    """Patch masks ``(N, H, W)`` of random place ``place`` (1-based; its seed)."""
    return patch_masks(x.shape[2:], (5, 5), random_locations(len(x), x.shape[2:], (5, 5), seed=place))


def place_patches(base, x: np.ndarray, y: np.ndarray, place: int, store: Path, kept: dict
                  ) -> tuple[np.ndarray, float]:
    """Masked PGD against ``base`` at random place ``place``, kept under ``store`` so that a run resumes and
    several processes can share the places; with the seconds its attack took (in whichever process ran it)."""
    def attack() -> np.ndarray:
        return masked_pgd(base, x, expand_masks(place_masks(x, place), x), y, **PLACE_PGD, batch_size=250,
                          verbose=False)
    return kept_array(store / f"place-{place:03d}", {**kept, "place": place}, attack)


def highest_loss_patches(base, x: np.ndarray, y: np.ndarray, places: int, store: Path, kept: dict,
                         verbose: bool = True) -> tuple[np.ndarray, np.ndarray, float]:
    """Masked PGD (L-inf eps 1.0, step 0.05, 50 iterations, no random start) against ``base`` at ``places``
    uniformly random places per image (seeds 1 to ``places``); per image the patched copy of largest cross-entropy
    and its patch masks ``(N, H, W)``, with the attack's seconds summed over places. Missing places are computed
    from the last down (``--places-shard`` processes go up, so that the two meet); the choice goes up from place 1,
    whoever computed them (a tie keeps the first)."""
    seconds = sum(place_patches(base, x, y, place, store, kept)[1]
                  for place in tqdm(range(places, 0, -1), desc="places", disable=not verbose))
    best_loss = np.full(len(x), -np.inf)
    x_adv, masks = x.copy(), np.zeros((len(x), *x.shape[2:]), dtype=bool)
    for place in range(1, places + 1):
        candidate = place_patches(base, x, y, place, store, kept)[0]
        logits = base.predict(candidate).astype(np.float64)
        shifted = logits - logits.max(axis=1, keepdims=True)
        loss = np.log(np.exp(shifted).sum(axis=1)) - shifted[np.arange(len(y)), y]
        better = loss > best_loss
        x_adv[better], best_loss[better] = candidate[better], loss[better]
        masks[better] = place_masks(x, place)[better]
    return x_adv, masks, round(seconds, 1)


def plot_r_accuracy(curves: dict[str, list[float]], path: Path) -> None:
    """Certified accuracy against the L2 radius (0-255 units)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for label, values in curves.items():
        ax.plot(RADII_255, values, "o-", label=label)
    ax.set_xlabel("L2 radius R (0-255 pixel units)")
    ax.set_ylabel("certified accuracy")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8)
    save_figure(fig, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=500)
    parser.add_argument("--sigma", type=float, default=128.0,
                        help="noise std, 0-255 units (chosen on training images: mrs_sigma_tuning --holdout 100)")
    parser.add_argument("--weights", default="cifar10_resnet20_mrs_sigma128.pt",
                        help="base classifier: a registry tag of cifar_resnet20 (e.g. mrs) or a checkpoint file")
    parser.add_argument("--tau", type=float, default=20.0,
                        help="localisation abstain threshold (chosen on training images: mrs_localization_tuning)")
    parser.add_argument("--margin", type=int, default=3, help="pixels the localised block is widened by")
    parser.add_argument("--places", type=int, default=1,
                        help="random patch places per image; the one of largest loss is kept (paper: 80)")
    parser.add_argument("--places-shard", metavar="I/K",
                        help="only attack the places p with (p - 1) %% K == I (ascending), keep them under outputs/ "
                             "and exit: run beside the full command to share the attack between processes")
    parser.add_argument("--verify-n", type=int, default=100)
    parser.add_argument("--figure", type=Path,
                        help="R-accuracy plot (default docs/mrs_r_accuracy.png, with --places P > 1 "
                             "docs/mrs_r_accuracy_places<P>.png)")
    args = parser.parse_args()
    if args.places < 1:
        parser.error(f"--places must be at least 1, got {args.places}")
    shard = None
    if args.places_shard is not None:
        index, _, count = args.places_shard.partition("/")
        if not (index.isdigit() and count.isdigit() and int(index) < int(count)):
            parser.error(f"--places-shard takes I/K with 0 <= I < K, got {args.places_shard!r}")
        shard = int(index), int(count)
    suffix = "" if args.places == 1 else f"_places{args.places}"
    figure = args.figure or ROOT / "docs" / f"mrs_r_accuracy{suffix}.png"

    estimator = get_art_model({"name": "cifar_resnet20", "weights": args.weights, "sigma_255": args.sigma,
                               "sample_size": 1000, "n0": 100, "alpha": 0.001, "patch_size": 5,
                               "tau": args.tau, "margin": args.margin})
    test = load_dataset("cifar10", "test", n=args.n, seed=0)
    x, y = test.x, test.y
    base = make_classifier(estimator.model, "cifar_resnet20")  # the same network, without smoothing
    path = weights_path("cifar_resnet20", args.weights)
    # Each place's patched images are kept under outputs/, keyed on everything that changes them.
    store = ROOT / "outputs" / "benchmarks" / "mrs_cifar10_places"
    kept = {"n": args.n, "data_seed": 0, "weights_sha256": sha256_of(path), **PLACE_PGD}
    if shard is not None:
        index, count = shard
        for place in tqdm(range(1 + index, args.places + 1, count), desc=f"places shard {index}/{count}"):
            place_patches(base, x, y, place, store, kept)
        return
    r25 = from_255(25.0)
    results: dict = {}
    seconds: dict = {}

    results["clean_accuracy_base"] = float(np.mean(estimator.predict_base(x).argmax(1) == y))
    start = time.time()
    clean = estimator.certify(x, seed=0, verbose=True)
    seconds["clean_localize_and_certify"] = round(time.time() - start, 1)
    results["clean_accuracy"] = float(np.mean(clean.prediction == y))

    x_adv, true_masks, seconds["masked_pgd"] = highest_loss_patches(base, x, y, args.places, store, kept)

    oracle = estimator.certify(x, mask=true_masks, seed=1, verbose=True)
    right = oracle.prediction == y
    results["certified_accuracy_r25_oracle_mask"] = float(np.mean(right & (oracle.radius >= r25)))
    results["adversarial_accuracy_base"] = float(np.mean(estimator.predict_base(x_adv).argmax(1) == y))
    start = time.time()
    found = estimator.localize(x_adv, verbose=True)
    located = np.stack([f.mask for f in found])
    abstained = np.array([f.abstain for f in found])
    adversarial = estimator.certify(x_adv, mask=located, seed=2, verbose=True)
    adversarial.prediction[abstained] = -1
    adversarial.radius[abstained] = 0.0
    elapsed = time.time() - start
    covered = ~abstained & np.all(located | ~true_masks, axis=(1, 2))
    results["localization_coverage"] = float(covered.mean())
    results["localization_abstain_rate"] = float(abstained.mean())
    adversarial_right = (adversarial.prediction == y) & covered
    results["certified_accuracy_r25_localized"] = float(np.mean(adversarial_right & (adversarial.radius >= r25)))
    results["seconds_per_image"] = elapsed / len(x)

    curves = {
        "oracle mask, clean images": [float(np.mean(right & (oracle.radius >= from_255(r)))) for r in RADII_255],
        "localised, masked-PGD images": [float(np.mean(adversarial_right & (adversarial.radius >= from_255(r))))
                                         for r in RADII_255],
    }
    results["r_accuracy_curves"] = {"radii_255": list(RADII_255), **curves}
    plot_r_accuracy(curves, figure)

    start = time.time()
    spread = np.unique(np.linspace(0, len(x) - 1, min(len(x), 2 * args.verify_n)).astype(int))  # class-balanced
    check = verify_certificates(estimator, x[spread], y[spread], n_certified=args.verify_n, placements=1,
                                max_iter=10, seed=1, verbose=True)
    seconds["verify"] = round(time.time() - start, 1)
    results["certificate_violations"] = check["violations"]
    results["certificates_verified"] = check["attacked"]
    results["soundness_attack"] = check
    results["seconds"] = seconds

    config = {
        "model": "cifar_resnet20", "weights": path.name, "weights_sha256": sha256_of(path),
        "data": f"shared CIFAR-10 JPEG test split, {args.n} class-balanced images, seed 0",
        "patch": {"pixels": [5, 5], "area_fraction": 25 / 1024,
                  "placement": "uniformly random top-left, seed 1" if args.places == 1 else
                  f"of {args.places} uniformly random top-lefts (seeds 1 to {args.places}) the one whose masked-PGD "
                  "patch gives the base classifier the largest cross-entropy (the paper's section 4.1)"},
        "smoothing": {"sigma_255": args.sigma, "sigma": estimator.sigma, "n0": 100, "n": 1000, "alpha": 0.001,
                      "radius_units": "L2, [0, 1] pixels; R = 25 (0-255) is 25/255"},
        "localization": {"block": 5, "stride": estimator.stride, "tau": estimator.tau, "margin": estimator.margin,
                         "inpainting": "OpenCV Telea, radius 3"},
        "attacks": {
            "localized_set": {"implementation": "art.attacks.evasion.ProjectedGradientDescent, per-sample mask, "
                              "against the base classifier", "eps": 1.0, "eps_step": 0.05, "max_iter": 50,
                              "norm": "inf"},
            "soundness": {"implementation": "art_patch_defenses.evaluation.verify.verify_certificates (region-L2: "
                                            "attacks.eot.masked_pgd_eot)", "norm": 2,
                          "eps": "0.99 x certified radius", "max_iter": 10, "eot_samples": 8, "restarts": 1,
                          "flip_check": "the smoothed prediction in the region, fresh noise (abstain allowed)",
                          "images": f"up to {args.verify_n} certified of {2 * args.verify_n} spread over the "
                                    "slice"},
        },
        "timing": "seconds_per_image: localisation + certification on the adversarial set; threads under environment",
    }
    # Fractions of the whole slice (an abstention counts as wrong); the R-accuracy curves are left without intervals.
    accuracies = ("clean_accuracy_base", "clean_accuracy", "certified_accuracy_r25_oracle_mask",
                  "adversarial_accuracy_base", "localization_coverage", "localization_abstain_rate",
                  "certified_accuracy_r25_localized")
    write_result(f"mrs_cifar10{suffix}", config, results, images=dict.fromkeys(accuracies, len(x)))


if __name__ == "__main__":
    main()
