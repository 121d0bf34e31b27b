"""ART's ``PyTorchDeRandomizedSmoothing`` on the cropped band networks: clean and certified accuracy on CIFAR-10.

The same band classifier as robust masking's ``ds_crop`` / ``ds_crop56`` backbones, behind ART's column
de-randomized smoothing (Levine & Feizi, NeurIPS 2020, https://arxiv.org/abs/2002.10733: ``levine2020``, column
ablation of the band width 4, softmax vote threshold 0.3, as the leaderboard's ART row). Data: the 2,000
class-balanced shared test images (seed 0) of ``robust_masking_cifar10.py``. Both figures come from the
certifier's own ``certify`` (ART's ablator certificate): clean accuracy is its prediction (ART's vote count, never
an abstain), certified accuracy its certificate for a 5x5 (2.4%) and a 2x2 (0.4%) patch. No attack is involved: a
certificate is a lower bound on the accuracy under any patch of that size. Its soundness was attacked only on the
uncropped ResNet-20 bands (``cifar_mask_ds``, ``verify_cifar10.py``: 0 violations), not on these networks; the
certificate's arithmetic is ART's and does not depend on the network.

Run: ``.venv/bin/python benchmarks/art_ds_cifar10.py --backbone ds_crop56``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import ROBUST_MASKING_BACKBONES, write_result  # noqa: E402

from art_patch_defenses.baselines import get_art_derandomized_smoothing  # noqa: E402
from art_patch_defenses.data import load_dataset  # noqa: E402
from art_patch_defenses.models import sha256_of  # noqa: E402
from art_patch_defenses.models.registry import weights_path  # noqa: E402

#: the cropped column-band backbones of robust_masking_cifar10.py
BAND_BACKBONES = ("ds_crop", "ds_crop56")
THRESHOLD = 0.3
PATCH_SIDES = (5, 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", choices=BAND_BACKBONES, default="ds_crop56")
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=100)
    args = parser.parse_args()

    name = ROBUST_MASKING_BACKBONES[args.backbone]
    test = load_dataset("cifar10", "test", n=args.n, seed=0)
    results: dict = {}
    started = time.perf_counter()
    estimator = get_art_derandomized_smoothing({"name": name, "weights": "trained", "threshold": THRESHOLD,
                                                "patch_size": PATCH_SIDES[0]})
    for side in PATCH_SIDES:
        certifier = estimator if side == estimator.patch_size else estimator.for_patch_size(side)
        outcome = certifier.certify(test.x, test.y, batch_size=args.batch_size)
        clean = float((outcome.prediction == test.y).mean())
        if "clean_accuracy" in results and results["clean_accuracy"] != clean:  # the vote does not depend on it
            raise RuntimeError(f"ART's prediction changed with the certified patch size: {clean} vs "
                               f"{results['clean_accuracy']}")
        results["clean_accuracy"] = clean
        results[f"certified_accuracy_{side}x{side}"] = float(outcome.certified.mean())
    results["seconds"] = round(time.perf_counter() - started, 1)
    checkpoint = weights_path(name, "trained")
    config = {"estimator": "art.estimators.certification.derandomized_smoothing.PyTorchDeRandomizedSmoothing "
                           "(algorithm levine2020, column ablation, ablation_size 4) behind the certifier protocol",
              "band_model": name, "checkpoint": checkpoint.name, "checkpoint_sha256": sha256_of(checkpoint),
              "threshold": THRESHOLD, "patch_sides": list(PATCH_SIDES),
              "data": f"shared CIFAR-10 JPEG test split, {len(test)} class-balanced images, seed 0"}
    write_result(f"art_ds_cifar10_{args.backbone}", config, results,
                 images={key: len(test) for key in results if key != "seconds"})


if __name__ == "__main__":
    main()
