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

A long run (k = 10 on the ResNet-56 takes hours) can be cut into pieces: ``--chunks-dir DIR`` certifies the slice
in fixed chunks of 5 images per class, each written to ``DIR`` as soon as it is done, and a rerun with the same
``DIR`` and settings reads the finished chunks back (a store of other settings or weights is refused); the
soundness attack's batches are stored the same way. Launched by ``torchrun --nproc-per-node N`` (with
``--chunks-dir``) the chunks spread over N processes; the figures do not depend on N or on the pieces.
``seconds_per_image_certify_*`` is then the chunks' own time (each in its process, at that process's threads)
over the images. ``--no-2x2`` certifies the 5x5 patch only (the goal's size; it halves such a run) and leaves the 2x2
keys out of the result. ``--flip-average`` certifies with the model averaged over each image and its mirror as the
base classifier (:class:`~art_patch_defenses.models.flip_average.FlipAverage`, chosen on held-out training images by
``patchcleanser_flip_tuning.py``) and adds ``_flip`` to the name.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import write_result  # noqa: E402

from art_patch_defenses import __version__  # noqa: E402
from art_patch_defenses.certification import CertificationResult  # noqa: E402
from art_patch_defenses.data import load_dataset  # noqa: E402
from art_patch_defenses.evaluation.distributed import (  # noqa: E402
    ChunkStore,
    DistContext,
    ShardMismatchError,
    distributed_session,
    launched_by_torchrun,
    make_chunks,
    sharded_map,
)
from art_patch_defenses.evaluation.verify import ShardOptions, verify_certificates  # noqa: E402
from art_patch_defenses.models import build_model, make_classifier, sha256_of  # noqa: E402
from art_patch_defenses.models.checkpoints import positive_int  # noqa: E402
from art_patch_defenses.models.registry import weights_path  # noqa: E402
from art_patch_defenses.patchcleanser import get_art_model  # noqa: E402

#: Images of each class per stored chunk (50 images of the 1,000).
IMAGES_PER_CLASS = 5


def certify_in_chunks(estimator, x: np.ndarray, y: np.ndarray, store: ChunkStore | None,
                      context: DistContext) -> tuple[CertificationResult, float]:
    """``estimator.certify(x, y)``, and the seconds it took; with a ``store``, chunk by chunk over the ranks, the
    finished chunks read back (their stored seconds counted)."""
    if store is None:
        start = time.time()
        return estimator.certify(x, y, verbose=True), time.time() - start
    chunks = make_chunks(y, IMAGES_PER_CLASS)

    def certify(unit: int) -> dict:
        start = time.time()
        found = estimator.certify(x[chunks[unit]], y[chunks[unit]], verbose=True)
        return {"index": chunks[unit], "seconds": time.time() - start,
                "arrays": {"prediction": found.prediction, "certified": found.certified}}

    payloads, _ = sharded_map(context, store, f"certify-{estimator.patch_size}x{estimator.patch_size}", len(chunks),
                              certify)
    prediction, certified = np.zeros(len(x), dtype=np.int64), np.zeros(len(x), dtype=bool)
    for payload in payloads:
        index = np.asarray(payload["index"], dtype=int)
        prediction[index], certified[index] = payload["arrays"]["prediction"], payload["arrays"]["certified"]
    result = CertificationResult(prediction=prediction, certified=certified, kind=estimator.certificate_kind,
                                 patch_size=int(estimator.patch_size))
    return result, float(sum(payload["seconds"] for payload in payloads))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=positive_int, default=1000)
    parser.add_argument("--timing-n", type=positive_int, default=100)
    parser.add_argument("--attack-n", type=positive_int, default=50)
    parser.add_argument("--attack-stride", type=positive_int, default=3)
    parser.add_argument("--pgd-iter", type=positive_int, default=10)
    parser.add_argument("--masks-per-axis", type=positive_int, default=6, help="k (the paper's 6 is the headline)")
    parser.add_argument("--depth", type=int, choices=(20, 56), default=20, help="CIFAR ResNet depth")
    parser.add_argument("--chunks-dir", type=Path, default=None,
                        help="certify and attack in stored chunks there, finished ones read back (needed by torchrun)")
    parser.add_argument("--no-2x2", dest="with_2x2", action="store_false",
                        help="certify the 5x5 patch only; the result has no 2x2 keys")
    parser.add_argument("--flip-average", action="store_true",
                        help="base classifier: the model averaged over each image and its mirror (FlipAverage)")
    parser.add_argument("--out", default=None,
                        help="result name (default: from --depth, --masks-per-axis and --flip-average)")
    args = parser.parse_args()
    if launched_by_torchrun() and args.chunks_dir is None:
        parser.error("a torchrun launch needs --chunks-dir (the ranks share their chunks through it)")
    with distributed_session("cpu") if launched_by_torchrun() else contextlib.nullcontext(DistContext()) as context:
        run(args, context)


def run(args: argparse.Namespace, context: DistContext) -> None:
    model = f"cifar_resnet{args.depth}"
    path = weights_path(model, "patchcleanser")
    weights_sha256 = sha256_of(path)  # of the weights loaded now, not of whatever the file holds at the end
    estimator = get_art_model({"name": model, "weights": "patchcleanser", "patch_size": 5,
                               "masks_per_axis": args.masks_per_axis, "flip_average": args.flip_average})
    test = load_dataset("cifar10", "test", n=args.n, seed=0)
    name = args.out or "patchcleanser_cifar10" + ("" if args.depth == 20 else f"_resnet{args.depth}") + (
        "" if args.masks_per_axis == 6 else f"_k{args.masks_per_axis}") + ("_flip" if args.flip_average else "")
    key = {"benchmark": name, "model": model, "weights_sha256": weights_sha256, "masks_per_axis": args.masks_per_axis,
           "n": args.n, "seed": 0, "images_per_class": IMAGES_PER_CLASS, "art_patch_defenses_version": __version__}
    if args.flip_average:  # only then, so that the stores of earlier runs still match their own settings
        key["flip_average"] = True
    try:
        store = None if args.chunks_dir is None else ChunkStore(args.chunks_dir / "certify", key, resume=True,
                                                                context=context)
    except ShardMismatchError:
        raise SystemExit(f"error: --chunks-dir {args.chunks_dir} holds the chunks of another run (other settings, "
                         f"weights or version); delete it or choose another directory") from None
    results: dict = {}
    finetuned = make_classifier(build_model(model, "finetuned"), model)
    results["clean_accuracy_finetuned_undefended"] = float(np.mean(finetuned.predict(test.x).argmax(1) == test.y))
    results["clean_accuracy_undefended"] = float(np.mean(estimator.predict_base(test.x).argmax(1) == test.y))
    seconds = {}
    certified_5, seconds["certify_5x5"] = certify_in_chunks(estimator, test.x, test.y, store, context)
    results["clean_accuracy"] = float(np.mean(certified_5.prediction == test.y))
    results["certified_accuracy_5x5"] = float(certified_5.certified.mean())
    patch_sizes = [5, 2] if args.with_2x2 else [5]
    masks = {"masks_per_axis": args.masks_per_axis, "fill": "normalisation mean (zero in the normalised input)",
             "mask_side_5x5": int(estimator.masks()[0].sum(0).max())}
    if args.with_2x2:
        estimator_2 = estimator.for_patch_size(2)  # another patch size: a separately configured certifier
        certified_2, seconds["certify_2x2"] = certify_in_chunks(estimator_2, test.x, test.y, store, context)
        results["clean_accuracy_2x2"] = float(np.mean(certified_2.prediction == test.y))
        results["certified_accuracy_2x2"] = float(certified_2.certified.mean())
        masks["mask_side_2x2"] = int(estimator_2.masks()[0].sum(0).max())
    timed = test.x[:: max(1, len(test) // args.timing_n)][: args.timing_n]
    if context.rank == 0:  # one process times predict (the others go on to the soundness attack's batches)
        estimator.predict(timed[:2])
        start = time.time()
        estimator.predict(timed)
        results["seconds_per_image"] = (time.time() - start) / len(timed)
    results["seconds_per_image_certify_5x5"] = seconds["certify_5x5"] / len(test)
    shards = None if args.chunks_dir is None else ShardOptions(args.chunks_dir / "verify", key, IMAGES_PER_CLASS,
                                                               resume=True, context=context)
    start = time.time()
    check = verify_certificates(estimator, test.x, test.y, n_certified=args.attack_n, grid_stride=args.attack_stride,
                                max_iter=args.pgd_iter, eps_step=0.1, batch_size=100, certified=certified_5,
                                verbose=True, shards=shards)
    seconds["soundness"] = round(time.time() - start, 1)
    results["certificate_violations"] = check["violations"]
    results["soundness_attack"] = check
    results["seconds"] = {part: round(value, 1) for part, value in seconds.items()}

    config = {
        "model": model, "weights": path.name, "weights_sha256": weights_sha256,
        "base_classifier": "the model averaged over each image and its mirror (FlipAverage: mean of the two "
                           "log-softmax outputs)" if args.flip_average else "the model",
        "masks": masks,
        "data": f"shared CIFAR-10 JPEG test split, {args.n} class-balanced images, seed 0",
        "patches": {"certified": [[side, side] for side in patch_sizes],
                    "area_fractions": [side * side / 1024 for side in patch_sizes]},
        "soundness_attack": {
            "implementation": "art_patch_defenses.evaluation.verify.verify_certificates: masked PGD (ART "
                              "ProjectedGradientDescent, per-sample mask) against the attack surrogate (the base "
                              "classifier), judged by double masking", "norm": "inf", "eps": 1.0, "eps_step": 0.1,
            "max_iter": args.pgd_iter, "placements": f"every placement of a stride-{args.attack_stride} grid, edges "
                                                     "included",
            "images": f"{args.attack_n} certified (5x5) images spread over the slice"},
        "timing": f"seconds_per_image: predict (double masking) on {len(timed)} images of the slice, one call"
                  + ("" if context.world_size == 1 else ", by rank 0 while the other ranks ran the soundness attack"),
        "certify_processes": context.world_size,
        "certify_chunks": None if store is None else f"{IMAGES_PER_CLASS} images per class, stored and resumable",
    }
    accuracies = [key for key in ("clean_accuracy_finetuned_undefended", "clean_accuracy_undefended",
                                  "clean_accuracy", "certified_accuracy_5x5", "clean_accuracy_2x2",
                                  "certified_accuracy_2x2") if key in results]
    if context.rank == 0:
        write_result(name, config, results, images=dict.fromkeys(accuracies, len(test)))


if __name__ == "__main__":
    main()
