"""ScaleCert on CIFAR-10: clean and certified detection accuracy, candidate windows, speed, soundness.

Model: ``checkpoints/cifar10_resnet<depth>_scalecert.pt`` (``--depth`` 20 or 56: the CIFAR ResNet fine-tuned
winner-take-all with the SIN mask after ``bn1`` and random occluding windows; see ``checkpoints.json``), or
``--checkpoint``. Data: the first ``--n`` class-balanced shared
test images (seed 0). Patch 5x5 (2.4%) and 2x2 (0.4%), r = 3.
- ``clean_accuracy_undefended``: the same weights without the SIN mask; ``clean_accuracy_vanilla``: the sparse
  (SIN) model alone, the paper's "Model" column; ``clean_accuracy``: the detector (Algorithm 1; an alert on a
  clean image counts as wrong), 5x5;
- ``certified_detection_accuracy_*``: :meth:`PyTorchScaleCert.certify` (Algorithm 2 and a right prediction);
- ``candidate_windows_mean``: occluded copies run per image (merged windows meeting R), 5x5;
  ``candidate_windows_full``: the unfiltered, unmerged count of p + r - 1 windows (what MR would run);
- ``seconds_per_image``: wall time of ``certify`` (5x5) over the slice, with the torch threads in ``environment``;
- ``certificate_violations``: ``verify_certificates`` (the one soundness attack of the package) on ``--attack-n``
  certified images (spread evenly), a 5x5 patch at every placement on a grid of stride ``--attack-stride`` (edges
  included), each patch from masked PGD against the attack surrogate, the sparse model (white-box, L-inf eps 1.0,
  step 0.1, ``--pgd-iter`` iterations, seeded random start): attacked images the detector labels wrongly without
  an alert (must be 0); ``soundness_attack`` also counts the patches that fool the sparse model and the alerts;
- ``by_top_k_and_tau``: the paper's tables 3-4 (5x5 patch) on ``--table-n`` images, every k-th of the slice (one
  model serves every top-k: the ResNet-20 was fine-tuned with k drawn from 0.1, 0.15, 0.2 per batch; the ResNet-56's
  last four phases trained at 0.4 only, the last two on 5x5 windows alone); ``--table-n 0`` leaves it out.

``--flip-average``: every image and occluded copy scored together with its mirror (``flip_average=True``, twice
the forward passes; the soundness attack then runs against the averaged sparse model); writes ``..._flip.json``.
``--no-2x2`` leaves out the 2x2 rows (225 merged windows, the slowest part).

Run: ``.venv/bin/python benchmarks/scalecert_cifar10.py`` (ResNet-20, the paper's top-k 0.2) and
``.venv/bin/python benchmarks/scalecert_cifar10.py --depth 56 --top-k 0.4`` (the ResNet-56 at the top-k chosen on
held-out training images by ``scalecert_holdout_tuning.py``); they write ``benchmarks/results/
scalecert_cifar10.json`` and ``scalecert_cifar10_resnet56.json``. The mirror-averaged ResNet-56:
``.venv/bin/python benchmarks/scalecert_cifar10.py --depth 56 --top-k 0.4 --flip-average --no-2x2 --table-n 0
--attack-n 20`` -> ``scalecert_cifar10_resnet56_flip.json`` (about 27 minutes on 2 threads alone).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import accuracy_intervals, write_result  # noqa: E402

from art_patch_defenses.data import load_dataset  # noqa: E402
from art_patch_defenses.evaluation.verify import verify_certificates  # noqa: E402
from art_patch_defenses.geometry import all_locations  # noqa: E402
from art_patch_defenses.models import build_model, make_classifier, sha256_of  # noqa: E402
from art_patch_defenses.models.registry import weights_path  # noqa: E402
from art_patch_defenses.scalecert import get_art_model  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--depth", type=int, choices=(20, 56), default=20, help="CIFAR ResNet depth")
    parser.add_argument("--checkpoint", default=None, help="weights file (default: the depth's 'scalecert' tag)")
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--top-k", type=float, default=0.2,
                        help="the paper's best rate in its table 3; the ResNet-56 runs at 0.4")
    parser.add_argument("--tau", type=float, default=0.3)
    parser.add_argument("--table-n", type=int, default=500)
    parser.add_argument("--attack-n", type=int, default=50)
    parser.add_argument("--attack-stride", type=int, default=3)
    parser.add_argument("--pgd-iter", type=int, default=10)
    parser.add_argument("--flip-average", action="store_true", help="score each image with its mirror (2x cost)")
    parser.add_argument("--no-2x2", dest="two_by_two", action="store_false", help="leave out the 2x2 rows")
    args = parser.parse_args()

    model = f"cifar_resnet{args.depth}"
    path = Path(args.checkpoint) if args.checkpoint else weights_path(model, "scalecert")
    weights_sha256 = sha256_of(path)  # of the weights loaded now, not of whatever the file holds at the end
    estimator = get_art_model({"name": model, "weights": str(path), "top_k": args.top_k,
                               "patch_size": 5, "tau": args.tau, "flip_average": args.flip_average})
    test = load_dataset("cifar10", "test", n=args.n, seed=0)
    results: dict = {}
    undefended = make_classifier(build_model(model, str(path)), model)
    results["clean_accuracy_undefended"] = float(np.mean(undefended.predict(test.x).argmax(1) == test.y))
    results["clean_accuracy_vanilla"] = float(np.mean(estimator.predict_base(test.x).argmax(1) == test.y))
    accuracies = ["clean_accuracy_undefended", "clean_accuracy_vanilla", "clean_accuracy",
                  "certified_detection_accuracy_5x5", "alert_rate_clean_5x5"]

    start = time.time()
    certified_5 = estimator.certify(test.x, test.y, verbose=True)
    results["seconds_per_image"] = (time.time() - start) / len(test)
    results["clean_accuracy"] = float(np.mean(certified_5.prediction == test.y))
    results["certified_detection_accuracy_5x5"] = float(certified_5.certified.mean())
    results["alert_rate_clean_5x5"] = float(certified_5.alert.mean())
    windows = estimator.windows_for()
    results["candidate_windows_mean"] = float(estimator.candidate_windows(test.x).mean())
    results["candidate_windows_full"] = int(windows.unmerged_count)
    results["merged_windows_full"] = int(len(windows.boxes))
    if args.two_by_two:
        estimator_2 = estimator.for_patch_size(2)  # another patch size: a separately configured certifier
        certified_2 = estimator_2.certify(test.x, test.y, verbose=True)
        results["clean_accuracy_2x2"] = float(np.mean(certified_2.prediction == test.y))
        results["certified_detection_accuracy_2x2"] = float(certified_2.certified.mean())
        results["candidate_windows_mean_2x2"] = float(estimator_2.candidate_windows(test.x).mean())
        results["merged_windows_full_2x2"] = int(len(estimator_2.windows_for().boxes))
        accuracies += ["clean_accuracy_2x2", "certified_detection_accuracy_2x2"]

    start = time.time()
    check = verify_certificates(estimator, test.x, test.y, n_certified=args.attack_n, grid_stride=args.attack_stride,
                                max_iter=args.pgd_iter, eps_step=0.1, batch_size=100, certified=certified_5,
                                verbose=True)
    results["certificate_violations"] = check["violations"]
    results["soundness_attack"] = {**check, "seconds": round(time.time() - start, 1)}

    table = []
    every = max(1, len(test) // max(1, args.table_n))  # the slice is sorted by class: every k-th image stays balanced
    x, y = test.x[::every][: args.table_n], test.y[::every][: args.table_n]
    for top_k in (0.1, 0.15, 0.2) if args.table_n else ():
        for tau in (0.3, 0.5, 0.6):
            estimator.set_params(top_k=top_k, tau=tau)
            start = time.time()
            result = estimator.certify(x, y)
            seconds = (time.time() - start) / len(x)
            windows = estimator.windows_for()
            row = {"top_k": top_k, "tau": tau,
                   "clean_accuracy_vanilla": float(np.mean(estimator.predict_base(x).argmax(1) == y)),
                   "clean_accuracy": float(np.mean(result.prediction == y)),
                   "certified_detection_accuracy_5x5": float(result.certified.mean()),
                   "candidate_windows_mean": float(estimator.candidate_windows(x).mean()),
                   "merged_windows_full": int(len(windows.boxes)),
                   "occluding_window_side": int(windows.boxes[0, 1] - windows.boxes[0, 0]),
                   "seconds_per_image": seconds}
            row["intervals"] = accuracy_intervals(row, dict.fromkeys(
                ("clean_accuracy_vanilla", "clean_accuracy", "certified_detection_accuracy_5x5"), len(y)))
            table.append(row)
            print(row)
    if table:
        results["by_top_k_and_tau"] = table

    config = {
        "checkpoint": path.name, "checkpoint_sha256": weights_sha256, "model": model,
        "superficial_layer": estimator.superficial_layer, "top_k": args.top_k, "tau": args.tau, "r": estimator.r,
        "flip_average": args.flip_average,
        "data": f"shared CIFAR-10 JPEG test split, {args.n} class-balanced images, seed 0",
        **({"table_data": f"every {every}-th image of that slice ({args.table_n}, balanced)"} if table else {}),
        "soundness_attack": {
            "implementation": "art_patch_defenses.evaluation.verify.verify_certificates: masked PGD (ART "
            "ProjectedGradientDescent, per-sample mask) against the attack surrogate, the sparse (SIN) model the "
            "detector runs; judged by the detector's predict (an alert is not a violation)",
            "patch": "5x5 px (2.4%)", "eps": 1.0, "eps_step": 0.1, "max_iter": args.pgd_iter,
            "placements": f"every placement on a stride-{args.attack_stride} grid, edges included "
                          f"({len(all_locations((32, 32), (5, 5), args.attack_stride))} per image)",
            "images": f"{args.attack_n} certified (5x5) images spread evenly over the slice",
        },
    }
    name = ("scalecert_cifar10" + ("" if args.depth == 20 else f"_resnet{args.depth}")
            + ("_flip" if args.flip_average else ""))
    write_result(name, config, results, images=dict.fromkeys(accuracies, len(test)))


if __name__ == "__main__":
    main()
