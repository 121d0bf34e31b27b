"""PatchZero on CIFAR-10: clean accuracy, white-box patch attacks (downstream-only and BPDA), detector quality.

Downstream model: the fine-tuned ResNet-20 (``checkpoints/cifar10_resnet20_finetuned.pt``); detector:
``checkpoints/cifar10_patchzero_cifar_resnet20.pt``. Data: 1,000 class-balanced shared test images (seed 0).
Patch: 5% of the image (7x7 px), square, uniformly random location per image (seed 1), the same locations for
every attack. Attacks (the paper's budgets, section 4.1), untargeted with the true labels:
- MPGD: ART ``ProjectedGradientDescent`` with a per-sample mask, L-inf eps 1.0, step 0.01, 100 iterations;
- MAPGD: :class:`art_patch_defenses.attacks.MaskedAutoPGD`, L-inf eps 0.3, step 0.1, 100 iterations.
Rows: undefended (MPGD against the plain classifier); GT mask (those MPGD images with the true patch region
repainted with the mean pixel: the upper bound of a perfect detector); PatchZero under the downstream-only
attack (``bpda=False``: the detector is a constant for autograd) and under BPDA attacks (``bpda=True``: the
sigmoid surrogate carries the detector's gradient). Detector precision / recall / F1 are pixel-level, pooled
over the BPDA-MPGD images, of the detector's segmentation (threshold 0.5); ``repainted_*`` score the area
PatchZero repaints (the segmentation dilated by ``dilation`` px, which trades precision for coverage).

Ensemble (the strongest evaluation): ``adversarial_accuracy_<row>_ensemble`` is PatchAutoAttack with a 7x7 patch on
500 class-balanced test images (seed 0), per image the worst case over a placement scan, masked PGD and AutoPGD
through BPDA, PatchZero's joint adaptive attack and a random search (budget in the config), run through the user's
path, ``art-patch-defenses evaluate examples/configs/cifar10_<row>_ensemble_7x7.json`` (sharded and resumable,
output in ``outputs/benchmarks/``), for two downstream classifiers: ``patchzero`` (the fine-tuned ResNet-20, as
above) and ``patchzero_masked`` (the ResNet-20 fine-tuned on masked images, PatchCleanser's weights). Beside each:
its white-box part and random search alone, its clean accuracy, and the undefended fine-tuned ResNet-20's clean
accuracy on the same 500 images (``clean_accuracy_undefended_ensemble_slice``: the clean drop is against it).

Run: ``.venv/bin/python benchmarks/patchzero_cifar10.py`` (about 2 hours at one thread with the ensemble rows).
Each attack's adversarial images are kept under ``outputs/benchmarks/patchzero_cifar10/`` as it finishes, so an
interrupted run resumes.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402
    ROOT,
    accuracy,
    chunk_seconds,
    evaluate_command,
    kept_array,
    median_predict_seconds,
    run_evaluate,
    write_result,
)

from art_patch_defenses.attacks import MaskedAutoPGD, masked_pgd  # noqa: E402
from art_patch_defenses.attacks.masked import seed_art_random_start  # noqa: E402
from art_patch_defenses.data import load_dataset  # noqa: E402
from art_patch_defenses.evaluation.metrics import mask_precision_recall_f1  # noqa: E402
from art_patch_defenses.geometry import expand_masks, patch_masks, patch_shape, random_locations  # noqa: E402
from art_patch_defenses.models import build_model, make_classifier, sha256_of  # noqa: E402
from art_patch_defenses.models.registry import weights_path  # noqa: E402
from art_patch_defenses.patchzero import PatchZero  # noqa: E402
from art_patch_defenses.paths import checkpoints_dir  # noqa: E402

ENSEMBLE_ROWS = ("patchzero", "patchzero_masked")


def ensemble_config(row: str) -> Path:
    return ROOT / "examples" / "configs" / f"cifar10_{row}_ensemble_7x7.json"


def ensemble_results(undefended) -> tuple[dict, dict, dict]:
    """Results, image counts and provenance of the ensemble rows (module docstring), each run through
    ``art-patch-defenses evaluate``."""
    results, images, provenance = {}, {}, {}
    for row in ENSEMBLE_ROWS:
        output_dir = ROOT / "outputs" / "benchmarks" / f"patchzero_cifar10_{row}_ensemble"
        record = run_evaluate(ensemble_config(row), output_dir)
        scores, report = record["results"], record["results"]["attack_report"]
        dataset = record["config"]["dataset"]
        if row == ENSEMBLE_ROWS[0]:
            test = load_dataset("cifar10", "test", n=dataset["n"], seed=dataset["seed"])
            results["clean_accuracy_undefended_ensemble_slice"] = accuracy(undefended, test.x, test.y)
            images["clean_accuracy_undefended_ensemble_slice"] = len(test)
        row_results = {
            f"clean_accuracy_{row}_ensemble_slice": scores["benign_mean_categorical_accuracy"],
            f"adversarial_accuracy_{row}_ensemble": scores["adversarial_mean_categorical_accuracy"],
            f"adversarial_accuracy_{row}_ensemble_white_box": report["white_box_accuracy"],
            f"adversarial_accuracy_{row}_ensemble_random_search": report["random_search_accuracy"],
        }
        results.update(row_results)
        images.update(dict.fromkeys(row_results, int(scores["num_samples"])))
        provenance[row] = {"command": " ".join(evaluate_command(ensemble_config(row), output_dir)),
                           "weights_sha256": scores["weights_sha256"], "budget": report["budget"],
                           "placements": report["placements"], "attacks": report["attacks"],
                           "images": int(scores["num_samples"]), "seconds": chunk_seconds(output_dir)}
    return results, images, provenance


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--model", default="cifar_resnet20")
    parser.add_argument("--weights", default="finetuned")
    parser.add_argument("--detector", default="cifar10_patchzero_cifar_resnet20.pt")
    parser.add_argument("--mpgd-iter", type=int, default=100)
    parser.add_argument("--mapgd-iter", type=int, default=100)
    args = parser.parse_args()

    weights = weights_path(args.model, args.weights)
    detector_path = checkpoints_dir() / args.detector
    network = build_model(args.model, args.weights)
    undefended = make_classifier(network, args.model)

    def defended(bpda: bool):
        classifier = make_classifier(network, args.model)
        classifier.set_params(preprocessing_defences=[PatchZero.from_checkpoint(args.detector, bpda=bpda)])
        return classifier

    bpda_classifier, do_classifier = defended(True), defended(False)
    patchzero = bpda_classifier.preprocessing_defences[0]
    test = load_dataset("cifar10", "test", n=args.n, seed=0)
    image_hw = test.x.shape[2:]
    shape = patch_shape(0.05, image_hw)
    true_masks = patch_masks(image_hw, shape, random_locations(len(test), image_hw, shape, seed=1))
    mask = expand_masks(true_masks, test.x)
    fill = np.asarray(patchzero.fill_value, dtype=np.float32).reshape(1, -1, 1, 1)
    results: dict = {}
    seconds: dict = {}

    results["clean_accuracy_undefended"] = accuracy(undefended, test.x, test.y)
    results["clean_accuracy_patchzero"] = accuracy(bpda_classifier, test.x, test.y)
    results["clean_false_positive_pixel_rate"] = float(patchzero.masks(test.x).mean())

    # Each attack's images are kept under outputs/ as it finishes, so an interrupted run resumes after it.
    store = ROOT / "outputs" / "benchmarks" / "patchzero_cifar10"
    kept = {"n": args.n, "weights_sha256": sha256_of(weights), "detector_sha256": sha256_of(detector_path),
            "mpgd_iter": args.mpgd_iter, "mapgd_iter": args.mapgd_iter}

    def attacked(step: str, attack) -> np.ndarray:
        images, seconds[step] = kept_array(store / step, {**kept, "step": step}, attack)
        return images

    def mpgd(classifier):
        return lambda: masked_pgd(classifier, test.x, mask, test.y, eps=1.0, eps_step=0.01, max_iter=args.mpgd_iter,
                                  num_random_init=0, batch_size=125)

    def mapgd():
        seed_art_random_start(0)  # AutoPGD's random start
        return MaskedAutoPGD(bpda_classifier, eps=0.3, eps_step=0.1, max_iter=args.mapgd_iter, batch_size=125
                             ).generate(test.x, test.y, mask)

    x_undefended = attacked("mpgd_undefended", mpgd(undefended))
    results["adversarial_accuracy_undefended_mpgd"] = accuracy(undefended, x_undefended, test.y)
    repainted = np.where(mask > 0, fill, x_undefended).astype(np.float32)
    results["adversarial_accuracy_gt_mask_mpgd"] = accuracy(undefended, repainted, test.y)

    x_do = attacked("mpgd_patchzero_do", mpgd(do_classifier))
    results["adversarial_accuracy_patchzero_do_mpgd"] = accuracy(bpda_classifier, x_do, test.y)

    x_bpda = attacked("mpgd_patchzero_bpda", mpgd(bpda_classifier))
    results["adversarial_accuracy_patchzero_bpda_mpgd"] = accuracy(bpda_classifier, x_bpda, test.y)

    x_mapgd = attacked("mapgd_patchzero_bpda", mapgd)
    results["adversarial_accuracy_patchzero_bpda_mapgd"] = accuracy(bpda_classifier, x_mapgd, test.y)

    quality = mask_precision_recall_f1(patchzero.masks(x_bpda, dilated=False), true_masks)
    results.update({f"detector_{name}_bpda": value for name, value in quality.items()})
    repainted_quality = mask_precision_recall_f1(patchzero.masks(x_bpda), true_masks)
    results.update({f"repainted_{name}_bpda": value for name, value in repainted_quality.items()})
    batch = test.x[:256]
    results["predict_time_ratio"] = median_predict_seconds(bpda_classifier, batch) / median_predict_seconds(
        undefended, batch)
    results["max_change_outside_patch"] = float(max(np.abs(a - test.x)[mask == 0].max()
                                                    for a in (x_undefended, x_do, x_bpda, x_mapgd)))
    results["seconds"] = seconds
    ensemble, ensemble_images, ensemble_provenance = ensemble_results(undefended)
    results.update(ensemble)

    config = {
        "model": args.model, "weights": weights.name, "weights_sha256": sha256_of(weights),
        "detector": args.detector, "detector_sha256": sha256_of(detector_path),
        "patchzero": {"threshold": patchzero.threshold, "dilation": patchzero.dilation,
                      "fill_value": list(patchzero.fill_value)},
        "data": f"shared CIFAR-10 JPEG test split, {args.n} class-balanced images, seed 0",
        "patch": {"pixels": list(shape), "area_fraction": shape[0] * shape[1] / (image_hw[0] * image_hw[1]),
                  "placement": "uniformly random top-left per image, seed 1, same for every attack"},
        "attacks": {
            "mpgd": {"implementation": "art.attacks.evasion.ProjectedGradientDescent, per-sample mask",
                     "eps": 1.0, "eps_step": 0.01, "max_iter": args.mpgd_iter, "num_random_init": 0,
                     "targeted": False},
            "mapgd": {"implementation": "art_patch_defenses.attacks.MaskedAutoPGD", "eps": 0.3, "eps_step": 0.1,
                      "max_iter": args.mapgd_iter, "targeted": False},
            "downstream_only": "PatchZero(bpda=False) attached: the mask is a constant for autograd",
            "bpda": "PatchZero(bpda=True) attached: hard forward, sigmoid-surrogate gradient through the detector",
        },
        "ensemble": ensemble_provenance,
        "timing": "predict on a batch of 256, median of 7 runs after a warm-up, same process",
    }
    accuracies = [key for key in results if key.startswith(("clean_accuracy_", "adversarial_accuracy_"))]
    images = {**dict.fromkeys(accuracies, len(test)), **ensemble_images}
    write_result("patchzero_cifar10", config, results, images=images)


if __name__ == "__main__":
    main()
