"""Fine-tune the embedded MNIST CNN for PatchCleanser once, and commit it (``mnist_patchcleanser_cnn``, ``"embedded"``).

Starting from the committed ``mnist_cnn`` ``"embedded"`` weights: every digit gets two masks of the 4x4 patch's
mask set (k = 6, 8x8 masks, filled with the normalisation mean), the worst of 16 draws per digit (the highest
loss), on unshifted digits (random crops cost certified accuracy on the training holdout). Run:
``python -m art_patch_defenses.patchcleanser.train_embedded``; the checkpoint goes to
``checkpoints/mnist_embedded_patchcleanser_cnn.pt`` with its log and its record in ``checkpoints.json``.
``--holdout 500`` trains on the other 3,500 training digits and logs PatchCleanser's clean and certified
accuracy on the 500 left out (class-balanced): how the recipe was chosen, without the test digits.

(``mnist_cnn``'s ``"patchcleanser"`` file was made by this command's earlier recipe, see ``checkpoints/README.md``.)
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from torch import nn

from art_patch_defenses.data import ImageDataset
from art_patch_defenses.models.checkpoints import non_negative_int, positive_float, positive_int, probability
from art_patch_defenses.models.registry import MNIST_MEAN, MNIST_STD, build_model, make_classifier
from art_patch_defenses.models.train_embedded import (
    Log,
    add_run_arguments,
    check_embedded_out,
    holdout_split,
    plain_accuracy,
    run_embedded_training,
)
from art_patch_defenses.patchcleanser.estimator import PyTorchPatchCleanser
from art_patch_defenses.patchcleanser.registration import MNIST_MODEL, MNIST_MODEL_CHECKPOINT
from art_patch_defenses.patchcleanser.training import train_patchcleanser

#: The committed recipe (chosen on the 500-digit training holdout): a few CPU-minutes on one thread.
PATCHCLEANSER_MNIST_EPOCHS = 30
PATCHCLEANSER_MNIST_WORST_OF = 16
#: The patch side and mask set the model is trained and certified for: 4x4, 1.6% of a 32x32 digit (at 5x5 the best
#: recipe certified 0.552 of the training holdout, at 4x4 0.628).
PATCHCLEANSER_MNIST_PATCH = 4
PATCHCLEANSER_MNIST_MASKS = 6
INIT = ("mnist_cnn", "embedded")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patch-sizes", type=positive_int, nargs="+", default=[PATCHCLEANSER_MNIST_PATCH],
                        help="mask sets trained on (the first one is certified in the --holdout report)")
    parser.add_argument("--masks-per-axis", type=positive_int, default=PATCHCLEANSER_MNIST_MASKS)
    parser.add_argument("--probability", type=probability, default=1.0, help="share of training images masked")
    parser.add_argument("--worst-of", type=positive_int, default=PATCHCLEANSER_MNIST_WORST_OF,
                        help="mask draws per image, the highest-loss one trained on (> 1 needs --probability 1)")
    parser.add_argument("--epochs", type=positive_int, default=PATCHCLEANSER_MNIST_EPOCHS)
    parser.add_argument("--lr", type=positive_float, default=0.02)
    parser.add_argument("--batch-size", type=positive_int, default=64)
    parser.add_argument("--augment", action="store_true", help="random crops (padding 4), off in the recipe")
    parser.add_argument("--holdout", type=non_negative_int, default=0,
                        help="train on all but this many class-balanced training digits and report on those")
    add_run_arguments(parser)
    args = parser.parse_args(argv)
    if args.worst_of > 1 and args.probability != 1.0:
        parser.error(f"--worst-of {args.worst_of} masks every image: it needs --probability 1, got {args.probability}")
    if max(args.patch_sizes) > 32:
        parser.error("--patch-sizes must fit a 32-pixel digit")
    check_embedded_out(parser, MNIST_MODEL_CHECKPOINT, args.out, init=lambda: build_model(*INIT))

    def train_fn(train: ImageDataset, log: Log) -> tuple[nn.Module, dict[str, Any]]:
        fit, held_out = holdout_split(train, args.holdout)
        model = build_model(*INIT)
        train_patchcleanser(model, train.x[fit], train.y[fit], MNIST_MEAN, MNIST_STD,
                            patch_sizes=tuple(args.patch_sizes), masks_per_axis=args.masks_per_axis,
                            probability=args.probability, worst_of=args.worst_of, epochs=args.epochs, lr=args.lr,
                            batch_size=args.batch_size, augment=args.augment, flip=False, seed=args.seed,
                            verbose=False, log=log)
        if len(held_out):
            certifier = make_classifier(model, MNIST_MODEL, estimator_class=PyTorchPatchCleanser,
                                        patch_size=args.patch_sizes[0], masks_per_axis=args.masks_per_axis)
            clean, certified = certifier.eval_and_certify(train.x[held_out], train.y[held_out])
            log(f"holdout {len(held_out)} digits, {args.patch_sizes[0]}x{args.patch_sizes[0]} patch, k = "
                f"{args.masks_per_axis}: clean {clean:.4f} certified {certified:.4f}")
        return model, {"arch": "mnist_cnn", "patch_sizes": args.patch_sizes, "masks_per_axis": args.masks_per_axis,
                       "probability": args.probability, "worst_of": args.worst_of, "fill": "normalisation mean",
                       "epochs": args.epochs, "lr": args.lr, "batch_size": args.batch_size, "augment": args.augment,
                       "holdout": args.holdout, "fit_images": len(fit)}

    run_embedded_training(MNIST_MODEL_CHECKPOINT, "art_patch_defenses.patchcleanser.train_embedded",
                          sys.argv[1:] if argv is None else argv, train_fn, seed=args.seed, threads=args.threads,
                          out=args.out, init=INIT,
                          evaluate=None if args.holdout else plain_accuracy(MNIST_MEAN, MNIST_STD))


if __name__ == "__main__":
    main()
