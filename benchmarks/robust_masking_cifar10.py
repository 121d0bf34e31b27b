"""Robust masking (PatchGuard) on CIFAR-10: clean, certified and empirical adaptive accuracy; analysis speed.

Backbone: ``checkpoints/cifar10_robust_masking_<backbone>.pt`` (see ``checkpoints.json``; ``ds_crop56``: the cropped
bands around a ResNet-56). Data: the first ``--n`` class-balanced shared test images (seed 0). Patch 5x5 (2.4%)
and 2x2 (0.4%); threshold T = 0. Local features: ``--feature-type`` (the main figures; ``by_feature_type`` gives all
three from the same logits); ``clean_accuracy_vanilla`` is the arg-max of the unmasked sum of the clipped features.
- certified accuracy: :meth:`PyTorchRobustMasking.certify` (vectorised Lemma 1 analysis);
- reference agreement: the same analysis loop by loop (:func:`certify_reference`) on ``--reference-n`` images;
- empirical adaptive accuracy, 5x5: white-box masked PGD against the defended estimator (the masking is in its
  forward pass), L-inf eps 1.0, step 0.05, ``--pgd-iter`` iterations, at ``--locations`` random locations per
  image, on ``--attack-n`` images spread over the class-sorted slice (class-balanced); an image counts as robust
  only if every location fails;
- certificate violations: ``verify_certificates`` (the package's one soundness attack) on ``--attack-n`` certified
  images, ``--locations`` random places each, the same PGD budget through the masking (must be 0); its
  ``fooled_base`` says whether the attack fooled the unmasked vote, i.e. whether the check could have failed.

Run: ``.venv/bin/python benchmarks/robust_masking_cifar10.py --backbone ds``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import ROBUST_MASKING_BACKBONES, accuracy_intervals, pyplot, save_figure, write_result  # noqa: E402

from art_patch_defenses.attacks import masked_pgd  # noqa: E402
from art_patch_defenses.data import load_dataset  # noqa: E402
from art_patch_defenses.evaluation.verify import verify_certificates  # noqa: E402
from art_patch_defenses.geometry import expand_masks, patch_masks, random_locations  # noqa: E402
from art_patch_defenses.models import sha256_of  # noqa: E402
from art_patch_defenses.models.registry import weights_path  # noqa: E402
from art_patch_defenses.robust_masking import certify, certify_reference, get_art_model  # noqa: E402
from art_patch_defenses.robust_masking.masking import (  # noqa: E402
    FEATURE_TYPES,
    clip_features,
    local_features,
    robust_predict,
)

PATCH_SIDES = (1, 2, 3, 4, 5, 6, 7, 8, 10, 12)


def plot_certified_by_patch_size(by_side: dict, vanilla: float, backbone: str, path: Path) -> None:
    """Certified accuracy against patch side (and area), with the undefended backbone's clean accuracy."""
    plt = pyplot()
    sides = list(by_side)
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    ax.plot(sides, [by_side[s] for s in sides], "o-", label=f"certified (robust masking, {backbone})")
    ax.axhline(vanilla, color="grey", linestyle="--", label="clean, no masking")
    ax.set_xlabel("patch side (px) on 32x32 CIFAR-10")
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1)
    top = ax.secondary_xaxis("top", functions=(lambda s: 100 * s**2 / 1024, lambda a: np.sqrt(a * 1024 / 100)))
    top.set_xlabel("patch area (%)")
    ax.legend(loc="upper right", fontsize=8)
    save_figure(fig, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", choices=list(ROBUST_MASKING_BACKBONES), default="ds")
    parser.add_argument("--checkpoint", default=None)
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--reference-n", type=int, default=100)
    parser.add_argument("--attack-n", type=int, default=100, help="images attacked for the empirical figures")
    parser.add_argument("--locations", type=int, default=3)
    parser.add_argument("--pgd-iter", type=int, default=20)
    parser.add_argument("--feature-type", choices=FEATURE_TYPES, default=None,
                        help="local features (default: one-hot prediction for Mask-DS, logits for the BagNet)")
    parser.add_argument("--figure", type=Path, default=None, help="default: docs/robust_masking_<backbone>.png")
    args = parser.parse_args()
    args.figure = args.figure or Path(__file__).resolve().parents[1] / "docs" / f"robust_masking_{args.backbone}.png"

    name = ROBUST_MASKING_BACKBONES[args.backbone]
    path = Path(args.checkpoint) if args.checkpoint else weights_path(name, "trained")
    feature_type = args.feature_type or ("prediction" if args.backbone.startswith("ds") else "logits")
    estimator = get_art_model({"name": name, "weights": str(path), "patch_size": 5, "feature_type": "logits"})
    backbone = estimator.model.backbone
    test = load_dataset("cifar10", "test", n=args.n, seed=0)
    results: dict = {}
    seconds: dict = {}

    start = time.time()
    logits = estimator.local_features(test.x)
    seconds["local_logits"] = round(time.time() - start, 1)

    def unmasked_and_masked(features: np.ndarray) -> dict:
        clipped = clip_features(features, *estimator.feature_clip)
        accuracies = {
            "clean_accuracy_vanilla": float(np.mean(clipped.sum(axis=(1, 2)).argmax(1) == test.y)),
            "clean_accuracy": float(np.mean(robust_predict(features, estimator.windows_for(5), estimator.threshold,
                                                           *estimator.feature_clip) == test.y)),
            **{f"certified_accuracy_{side}x{side}": float(np.mean(certify(
                features, test.y, estimator.windows_for(side), estimator.threshold, *estimator.feature_clip)))
               for side in (2, 5)}}
        return {**accuracies, "intervals": accuracy_intervals(accuracies, dict.fromkeys(accuracies, len(test)))}

    features_of = {kind: local_features(torch.from_numpy(logits), kind).numpy() for kind in FEATURE_TYPES}
    results["by_feature_type"] = {kind: unmasked_and_masked(features_of[kind]) for kind in FEATURE_TYPES}
    estimator.set_params(feature_type=feature_type)
    u = features_of[feature_type]
    results["clean_accuracy_vanilla"] = results["by_feature_type"][feature_type]["clean_accuracy_vanilla"]
    certified_by_side = {}
    for side in PATCH_SIDES:
        start = time.time()
        certified_by_side[side] = certify(u, test.y, estimator.windows_for(side), estimator.threshold,
                                          *estimator.feature_clip)
        seconds[f"certify_{side}x{side}"] = round(time.time() - start, 2)
    results["certified_accuracy_5x5"] = float(certified_by_side[5].mean())
    results["certified_accuracy_2x2"] = float(certified_by_side[2].mean())
    by_side = {side: float(certified.mean()) for side, certified in certified_by_side.items()}
    results["certified_accuracy_by_patch_side"] = {
        **by_side, "intervals": accuracy_intervals(by_side, dict.fromkeys(by_side, len(test)))}
    plot_certified_by_patch_size(by_side, results["clean_accuracy_vanilla"], args.backbone, args.figure)
    own = estimator.certify(test.x, test.y)  # the estimator's own routine
    results["clean_accuracy"] = float(np.mean(own.prediction == test.y))
    results["certify_routine_matches"] = bool(np.array_equal(own.certified, certified_by_side[5]))

    windows = estimator.windows_for(5)
    subset = np.unique(np.linspace(0, len(test) - 1, args.reference_n).astype(int))  # spread: class-balanced
    start = time.time()
    fast = certify(u[subset], test.y[subset], windows, estimator.threshold, *estimator.feature_clip)
    fast_seconds = time.time() - start
    start = time.time()
    slow = certify_reference(u[subset], test.y[subset], windows, estimator.threshold, *estimator.feature_clip)
    slow_seconds = time.time() - start
    results["reference_agreement"] = float(np.mean(fast == slow))
    results["analysis_speedup_vs_reference"] = slow_seconds / max(fast_seconds, 1e-9)

    attacked = np.unique(np.linspace(0, len(test) - 1, args.attack_n).astype(int))  # spread: class-balanced
    x, y = test.x[attacked], test.y[attacked]
    robust = estimator.predict(x).argmax(1) == y
    start = time.time()
    for k in range(args.locations):
        masks = expand_masks(patch_masks((32, 32), (5, 5), random_locations(len(x), (32, 32), (5, 5), seed=10 + k)), x)
        x_adv = masked_pgd(estimator, x, masks, y, eps=1.0, eps_step=0.05, max_iter=args.pgd_iter, batch_size=100,
                           seed=10 + k)
        robust &= estimator.predict(x_adv).argmax(1) == y
    seconds["empirical_attack"] = round(time.time() - start, 1)
    results["empirical_adaptive_accuracy_5x5"] = float(robust.mean())
    start = time.time()
    check = verify_certificates(estimator, test.x, test.y, n_certified=args.attack_n, placements=args.locations,
                                max_iter=args.pgd_iter, eps_step=0.05, batch_size=100, certified=own, verbose=True)
    seconds["soundness"] = round(time.time() - start, 1)
    results["certificate_violations"] = check["violations"]
    results["soundness_attack"] = check
    results["seconds"] = seconds

    config = {
        "backbone": args.backbone, "checkpoint": path.name, "checkpoint_sha256": sha256_of(path),
        "threshold": estimator.threshold, "feature_clip": list(estimator.feature_clip),
        "feature_type": feature_type,
        "receptive_field": list(backbone.receptive_field), "stride": list(backbone.stride),
        "data": f"shared CIFAR-10 JPEG test split, {args.n} class-balanced images, seed 0",
        "reference_check": f"{args.reference_n} images spread over the class-sorted slice, 5x5 windows",
        "empirical_attack": {
            "implementation": "art.attacks.evasion.ProjectedGradientDescent with a per-sample mask, white-box "
            "against PyTorchRobustMasking (masking in the forward pass)",
            "patch": "5x5 px (2.4%)", "eps": 1.0, "eps_step": 0.05, "max_iter": args.pgd_iter,
            "locations": f"{args.locations} uniformly random locations per image (seeds 10..)",
            "images": f"{args.attack_n} images spread evenly over the class-sorted slice (class-balanced)",
            "random_start": "seeded (10 + location index)",
        },
    }
    # The committed (better) backbone writes the main result; the other one beside it.
    images = {**dict.fromkeys(("clean_accuracy_vanilla", "certified_accuracy_5x5", "certified_accuracy_2x2",
                               "clean_accuracy"), len(test)),
              "reference_agreement": len(subset), "empirical_adaptive_accuracy_5x5": len(y)}
    write_result("robust_masking_cifar10" if args.backbone == "ds" else f"robust_masking_cifar10_{args.backbone}",
                 config, results, images=images)


if __name__ == "__main__":
    main()
