"""MRS smoothing noise sigma chosen on training images (it was chosen on 20 test images before).

Model ``--weights``, by default ``checkpoints/cifar10_resnet20_mrs.pt`` (tag ``"mrs"``, noise-trained with sigma
25); localisation as ``mrs_cifar10.py``: 5x5 blocks, stride 1, tau 20, margin 3; n0 = 100, n = 1000, alpha = 0.001,
certified accuracy counted at R = 25/255. The localisation does not depend on sigma, so each image is localised once
and certified in its found region at every sigma of ``--sigmas`` (0-255 units).

Data: ``--n`` class-balanced training images (seed 3) and a 5x5 patch at a uniformly random place per image
(seed 4) from masked PGD against the base classifier (L-inf eps 1.0, step 0.05, 50 iterations, no random start),
as ``mrs_localization_tuning.py``. The base model was noise-trained on every training image, so these figures are
not test figures; they are never test images, which is what the choice needs (``mrs_cifar10.py`` measures it).

Per sigma: ``clean_accuracy`` (clean images, localise then certify, abstain = wrong) and
``certified_accuracy_r25_localized`` (patched images, right with a radius of at least 25/255 and the region
covering the patch). The chosen sigma has the largest sum of the two (the issue's two goals, weighted alike; ties:
the smaller sigma): a small sigma keeps clean accuracy but leaves the patch's effect through the noise, a large one
drowns the patch and the object alike.

``--weights`` measures another base classifier (a registry tag or a checkpoint file), and ``--holdout N`` takes the
``N`` class-balanced training images (seed 0) that ``python -m art_patch_defenses.mrs.train --holdout N`` leaves out,
instead of the seed-3 draw: held out from that model's noise training, so checkpoints and sigmas can be compared there.

Each sigma's figures are kept under ``outputs/benchmarks/<--out>/`` as they finish, so an interrupted run
resumes. Run: ``.venv/bin/python benchmarks/mrs_sigma_tuning.py``; writes
``benchmarks/results/mrs_sigma_tuning.json`` (``--out`` names another).
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import ROOT, keep_figures, kept_figures, write_result  # noqa: E402

from art_patch_defenses.attacks import masked_pgd  # noqa: E402
from art_patch_defenses.data import load_dataset  # noqa: E402
from art_patch_defenses.geometry import expand_masks, patch_masks, random_locations  # noqa: E402
from art_patch_defenses.models import make_classifier, sha256_of  # noqa: E402
from art_patch_defenses.models.registry import weights_path  # noqa: E402
from art_patch_defenses.models.train_embedded import holdout_split  # noqa: E402
from art_patch_defenses.mrs import from_255, get_art_model  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100)
    parser.add_argument("--sigmas", type=float, nargs="+", default=[25, 64, 128, 192, 255], help="0-255 units")
    parser.add_argument("--weights", default="mrs", help="base classifier: a registry tag or a checkpoint file")
    parser.add_argument("--holdout", type=int, default=0,
                        help="use the N training images mrs.train --holdout N leaves out (not --n from seed 3)")
    parser.add_argument("--out", default="mrs_sigma_tuning", help="result name under benchmarks/results/")
    args = parser.parse_args()
    if args.holdout and args.n != parser.get_default("n"):
        parser.error("--holdout N measures the N images training left out; --n applies only without it")

    estimator = get_art_model({"name": "cifar_resnet20", "weights": args.weights, "sample_size": 1000, "n0": 100,
                               "alpha": 0.001, "patch_size": 5, "tau": 20.0, "margin": 3})
    if args.holdout:
        train = load_dataset("cifar10", "train")
        try:
            _, held_out = holdout_split(train, args.holdout)
        except ValueError as error:
            parser.error(str(error))
        x, y = train.x[held_out], train.y[held_out]
        data = f"the {args.holdout} class-balanced training images (seed 0) left out by mrs.train --holdout"
    else:
        train = load_dataset("cifar10", "train", n=args.n, seed=3)
        x, y = train.x, train.y
        data = f"{args.n} class-balanced training images (seed 3)"
    true_masks = patch_masks(x.shape[2:], (5, 5), random_locations(len(x), x.shape[2:], (5, 5), seed=4))
    start = time.time()
    base = make_classifier(estimator.model, "cifar_resnet20")
    x_adv = masked_pgd(base, x, expand_masks(true_masks, x), y, eps=1.0, eps_step=0.05, max_iter=50,
                       num_random_init=0, batch_size=250, verbose=False)
    fooled = estimator.predict_base(x_adv).argmax(1) != y
    seconds: dict = {"masked_pgd": round(time.time() - start, 1)}
    settings = {"weights_sha256": sha256_of(weights_path("cifar_resnet20", args.weights)), "n": len(x),
                "adversarial_sha256": hashlib.sha256(x_adv.tobytes()).hexdigest()}

    start = time.time()
    clean_found = estimator.localize(x)
    adv_found = estimator.localize(x_adv)
    seconds["localize"] = round(time.time() - start, 1)
    clean_regions, adv_regions = (np.stack([f.mask for f in found]) for found in (clean_found, adv_found))
    clean_abstain, adv_abstain = (np.array([f.abstain for f in found]) for found in (clean_found, adv_found))
    covered = ~adv_abstain & np.all(adv_regions | ~true_masks, axis=(1, 2))

    store = ROOT / "outputs" / "benchmarks" / args.out
    store.mkdir(parents=True, exist_ok=True)
    per_sigma: dict = {}
    for sigma_255 in args.sigmas:
        name = f"sigma{sigma_255:g}"
        kept = kept_figures(store / f"{name}.json", settings)
        if kept is not None:
            per_sigma[name] = kept
            continue
        began = time.time()
        estimator.set_params(sigma=from_255(sigma_255))
        clean = estimator.certify(x, mask=clean_regions, seed=0)
        adversarial = estimator.certify(x_adv, mask=adv_regions, seed=2)
        adv_certified = (adversarial.prediction == y) & ~adv_abstain & covered & (adversarial.radius >= from_255(25))
        figures = {"clean_accuracy": float(np.mean((clean.prediction == y) & ~clean_abstain)),
                   "certified_accuracy_r25_localized": float(adv_certified.mean()),
                   "seconds": round(time.time() - began, 1)}
        per_sigma[name] = figures
        keep_figures(store / f"{name}.json", settings, figures)
        print(name, figures, flush=True)

    def score(sigma_255: float) -> tuple[float, float]:
        figures = per_sigma[f"sigma{sigma_255:g}"]
        return figures["clean_accuracy"] + figures["certified_accuracy_r25_localized"], -sigma_255

    chosen = max(args.sigmas, key=score)
    results: dict = {"adversarial_accuracy_base": float(1 - fooled.mean()),
                     "localization_coverage": float(covered.mean()), "chosen_sigma_255": chosen}
    for name, figures in per_sigma.items():
        results[f"clean_accuracy_{name}"] = figures["clean_accuracy"]
        results[f"certified_accuracy_r25_localized_{name}"] = figures["certified_accuracy_r25_localized"]
        seconds[name] = figures["seconds"]
    config = {
        "model": "cifar_resnet20", "weights": weights_path("cifar_resnet20", args.weights).name, **settings,
        "smoothing": {"sigmas_255": args.sigmas, "n0": 100, "n": 1000, "alpha": 0.001, "radius": "R = 25/255, L2"},
        "localization": {"block": 5, "stride": 1, "tau": 20.0, "margin": 3},
        "data": f"{data}, 5x5 patch at a random place (seed 4)",
        "attack": "masked PGD against the base classifier, L-inf eps 1.0, step 0.05, 50 iterations, no random start",
        "choice": "largest clean_accuracy + certified_accuracy_r25_localized (ties: the smaller sigma)",
        "seconds": seconds,
    }
    write_result(args.out, config, results,
                 images={key: len(x) for key in results if key.startswith(("clean_accuracy", "certified_accuracy",
                                                                           "localization", "adversarial"))})


if __name__ == "__main__":
    main()
