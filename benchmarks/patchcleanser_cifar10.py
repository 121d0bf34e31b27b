"""PatchCleanser on CIFAR-10: clean and certified accuracy (5x5 = 2.4%, 2x2 = 0.4%), speed, soundness.

Model: ``checkpoints/cifar10_resnet<depth>_patchcleanser.pt`` (``--depth``, 20 by default: the fine-tuned ResNet, then
fine-tuned with two masks of the 2x2 or 5x5 mask set per image; see ``checkpoints.json``); k = 6 masks per axis
(``--masks-per-axis``), masked pixels set to the normalisation mean.
Data: ``--n`` class-balanced shared test images (seed 0).
- ``clean_accuracy``: double masking for a 5x5 patch (from ``certify``'s prediction map);
  ``clean_accuracy_undefended``: the same weights without masks; ``clean_accuracy_finetuned_undefended``: the
  fine-tuned ResNet it started from (the model the goal compares with);
- ``certified_accuracy_*``: :meth:`PyTorchPatchCleanser.certify` (every one- and two-mask prediction right);
- ``seconds_per_image``: ``predict`` (double masking, one-mask predictions first) over ``--timing-n`` images,
  with the torch threads in ``environment``;
- ``certificate_violations``: ``verify_certificates`` (the one soundness attack of the package) on ``--attack-n``
  certified images (spread over the slice), a 5x5 patch at every placement of a stride-``--attack-stride`` grid
  (edges included), each from masked PGD against the certifier's attack surrogate, the base classifier (white-box,
  L-inf eps 1.0, step 0.1, ``--pgd-iter`` iterations, seeded random start): patched images whose double-masking
  label is not the label (must be 0); ``soundness_attack`` also counts the patches that fool the base classifier.

Run: ``.venv/bin/python benchmarks/patchcleanser_cifar10.py``; ``--masks-per-axis K`` (chosen on training images by
``patchcleanser_mask_tuning.py``) writes ``patchcleanser_cifar10_k<K>.json`` beside the k = 6 headline; ``--depth 56``
adds ``_resnet56`` to the name.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import write_result  # noqa: E402

from art_patch_defenses.data import load_dataset  # noqa: E402
from art_patch_defenses.evaluation.verify import verify_certificates  # noqa: E402
from art_patch_defenses.models import build_model, make_classifier, sha256_of  # noqa: E402
from art_patch_defenses.models.checkpoints import positive_int  # noqa: E402
from art_patch_defenses.models.registry import weights_path  # noqa: E402
from art_patch_defenses.patchcleanser import get_art_model  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=positive_int, default=1000)
    parser.add_argument("--timing-n", type=positive_int, default=100)
    parser.add_argument("--attack-n", type=positive_int, default=50)
    parser.add_argument("--attack-stride", type=positive_int, default=3)
    parser.add_argument("--pgd-iter", type=positive_int, default=10)
    parser.add_argument("--masks-per-axis", type=positive_int, default=6, help="k (the paper's 6 is the headline)")
    parser.add_argument("--depth", type=int, choices=(20, 56), default=20, help="CIFAR ResNet depth")
    args = parser.parse_args()

    model = f"cifar_resnet{args.depth}"
    path = weights_path(model, "patchcleanser")
    weights_sha256 = sha256_of(path)  # of the weights loaded now, not of whatever the file holds at the end
    estimator = get_art_model({"name": model, "weights": "patchcleanser", "patch_size": 5,
                               "masks_per_axis": args.masks_per_axis})
    test = load_dataset("cifar10", "test", n=args.n, seed=0)
    results: dict = {}
    finetuned = make_classifier(build_model(model, "finetuned"), model)
    results["clean_accuracy_finetuned_undefended"] = float(np.mean(finetuned.predict(test.x).argmax(1) == test.y))
    results["clean_accuracy_undefended"] = float(np.mean(estimator.predict_base(test.x).argmax(1) == test.y))
    seconds = {}
    start = time.time()
    certified_5 = estimator.certify(test.x, test.y, verbose=True)
    seconds["certify_5x5"] = round(time.time() - start, 1)
    results["clean_accuracy"] = float(np.mean(certified_5.prediction == test.y))
    results["certified_accuracy_5x5"] = float(certified_5.certified.mean())
    start = time.time()
    estimator_2 = estimator.for_patch_size(2)  # another patch size: a separately configured certifier
    certified_2 = estimator_2.certify(test.x, test.y, verbose=True)
    seconds["certify_2x2"] = round(time.time() - start, 1)
    results["clean_accuracy_2x2"] = float(np.mean(certified_2.prediction == test.y))
    results["certified_accuracy_2x2"] = float(certified_2.certified.mean())
    timed = test.x[:: max(1, len(test) // args.timing_n)][: args.timing_n]
    estimator.predict(timed[:2])
    start = time.time()
    estimator.predict(timed)
    results["seconds_per_image"] = (time.time() - start) / len(timed)
    results["seconds_per_image_certify_5x5"] = seconds["certify_5x5"] / len(test)
    start = time.time()
    check = verify_certificates(estimator, test.x, test.y, n_certified=args.attack_n, grid_stride=args.attack_stride,
                                max_iter=args.pgd_iter, eps_step=0.1, batch_size=100, certified=certified_5,
                                verbose=True)
    seconds["soundness"] = round(time.time() - start, 1)
    results["certificate_violations"] = check["violations"]
    results["soundness_attack"] = check
    results["seconds"] = seconds

    config = {
        "model": model, "weights": path.name, "weights_sha256": weights_sha256,
        "masks": {"masks_per_axis": args.masks_per_axis, "fill": "normalisation mean (zero in the normalised input)",
                  "mask_side_5x5": int(estimator.masks()[0].sum(0).max()),
                  "mask_side_2x2": int(estimator_2.masks()[0].sum(0).max())},
        "data": f"shared CIFAR-10 JPEG test split, {args.n} class-balanced images, seed 0",
        "patches": {"certified": [[5, 5], [2, 2]], "area_fractions": [25 / 1024, 4 / 1024]},
        "soundness_attack": {
            "implementation": "art_patch_defenses.evaluation.verify.verify_certificates: masked PGD (ART "
                              "ProjectedGradientDescent, per-sample mask) against the attack surrogate (the base "
                              "classifier), judged by double masking", "norm": "inf", "eps": 1.0, "eps_step": 0.1,
            "max_iter": args.pgd_iter, "placements": f"every placement of a stride-{args.attack_stride} grid, edges "
                                                     "included",
            "images": f"{args.attack_n} certified (5x5) images spread over the slice"},
        "timing": f"seconds_per_image: predict (double masking) on {len(timed)} images of the slice, one call",
    }
    accuracies = ("clean_accuracy_finetuned_undefended", "clean_accuracy_undefended", "clean_accuracy",
                  "certified_accuracy_5x5", "clean_accuracy_2x2", "certified_accuracy_2x2")
    name = "patchcleanser_cifar10" + ("" if args.depth == 20 else f"_resnet{args.depth}") + (
        "" if args.masks_per_axis == 6 else f"_k{args.masks_per_axis}")
    write_result(name, config, results, images=dict.fromkeys(accuracies, len(test)))


if __name__ == "__main__":
    main()
