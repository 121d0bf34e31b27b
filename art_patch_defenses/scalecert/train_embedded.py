"""Fine-tune the embedded MNIST CNN for ScaleCert once, and commit it (``mnist_scalecert_cnn``, ``"embedded"``).

Starting from the committed ``mnist_cnn`` ``"embedded"`` weights: the SIN mask after ``features.1`` (top-k 0.2,
winner-take-all) and, on every digit, one occluding window of the certifier's own set (5x5 patch, r = 3,
tau = 0.6: 8x8 windows every 2 px), the worst of 8 random windows per digit (the highest loss), on unshifted
digits. Certification asks every window that meets the candidate region to keep the label, so the model is
trained on the windows that break it rather than on average ones. Run:
``python -m art_patch_defenses.scalecert.train_embedded``; the checkpoint goes to
``checkpoints/mnist_embedded_scalecert_cnn.pt`` with its log and its record in ``checkpoints.json``.
``--holdout 500`` trains on the other 3,500 training digits and logs ScaleCert's clean accuracy, certified
accuracy and alert rate on the 500 left out (class-balanced): how the recipe was chosen, without the test digits.

(``mnist_cnn``'s ``"scalecert"`` file was made by this command's earlier recipe, see ``checkpoints/README.md``.)
"""

from __future__ import annotations

import argparse
import copy
import sys
from typing import Any

import numpy as np
import torch
from torch import nn

from art_patch_defenses.data import ImageDataset
from art_patch_defenses.models.checkpoints import (
    fraction,
    non_negative_int,
    positive_float,
    positive_int,
    probability,
)
from art_patch_defenses.models.registry import MNIST_MEAN, MNIST_STD, build_model, make_classifier
from art_patch_defenses.models.train_embedded import (
    Log,
    add_run_arguments,
    check_embedded_out,
    holdout_split,
    plain_accuracy,
    run_embedded_training,
)
from art_patch_defenses.models.training import train_classifier
from art_patch_defenses.scalecert.estimator import PyTorchScaleCert
from art_patch_defenses.scalecert.registration import MNIST_MODEL, MNIST_MODEL_CHECKPOINT
from art_patch_defenses.scalecert.sin import ScaleCertNet
from art_patch_defenses.scalecert.training import worst_window_loss
from art_patch_defenses.scalecert.windows import occlusion_windows

#: The committed recipe and the certifier settings it is trained for (chosen on the 500-digit training holdout).
SCALECERT_MNIST_EPOCHS = 40
SCALECERT_MNIST_LAYER = "features.1"
SCALECERT_MNIST_TOP_K = 0.2
SCALECERT_MNIST_PATCH = 5
SCALECERT_MNIST_R = 3
SCALECERT_MNIST_TAU = 0.6
SCALECERT_MNIST_WORST_OF = 8
INIT = ("mnist_cnn", "embedded")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--superficial-layer", default=SCALECERT_MNIST_LAYER)
    parser.add_argument("--top-k", type=fraction, nargs="+", default=[SCALECERT_MNIST_TOP_K],
                        help="top-k rates, one drawn per batch (the first one in the --holdout report)")
    parser.add_argument("--patch-sizes", type=positive_int, nargs="+", default=[SCALECERT_MNIST_PATCH],
                        help="patch sides whose occluding windows are trained on (the first one certified in the "
                        "--holdout report)")
    parser.add_argument("--r", type=positive_int, default=SCALECERT_MNIST_R, help="windows of side p + r - 1")
    parser.add_argument("--tau", type=probability, default=SCALECERT_MNIST_TAU,
                        help="window merging overlap, in [0, 1)")
    parser.add_argument("--worst-of", type=positive_int, default=SCALECERT_MNIST_WORST_OF,
                        help="windows drawn per image, the highest-loss one trained on")
    parser.add_argument("--occlude-probability", type=probability, default=1.0)
    parser.add_argument("--epochs", type=positive_int, default=SCALECERT_MNIST_EPOCHS)
    parser.add_argument("--lr", type=positive_float, default=0.02)
    parser.add_argument("--batch-size", type=positive_int, default=64)
    parser.add_argument("--augment", action="store_true", help="random crops (padding 4), off in the recipe")
    parser.add_argument("--holdout", type=non_negative_int, default=0,
                        help="train on all but this many class-balanced training digits and report on those")
    add_run_arguments(parser)
    args = parser.parse_args(argv)
    if args.tau >= 1.0:
        parser.error(f"--tau must be in [0, 1), got {args.tau}")
    if max(args.patch_sizes) > 32:
        parser.error("--patch-sizes must fit a 32-pixel digit")
    check_embedded_out(parser, MNIST_MODEL_CHECKPOINT, args.out, init=lambda: build_model(*INIT),
                       superficial_layer=lambda: ScaleCertNet(build_model(INIT[0]), args.superficial_layer,
                                                              args.top_k[0], (1, 32, 32)).remove())

    def train_fn(train: ImageDataset, log: Log) -> tuple[nn.Module, dict[str, Any]]:
        fit, held_out = holdout_split(train, args.holdout)
        net = ScaleCertNet(build_model(*INIT), args.superficial_layer, args.top_k[0], (1, 32, 32))
        windows = [occlusion_windows((32, 32), (p, p), args.r, args.tau, net.chain, net.map_hw)
                   for p in args.patch_sizes]
        features = torch.from_numpy(np.concatenate([w.features for w in windows]))
        generator = torch.Generator().manual_seed(args.seed + 1)  # the windows' own stream, apart from the order
        loss_fn = worst_window_loss(net, features, args.top_k, args.worst_of, args.occlude_probability, generator)
        train_classifier(net, train.x[fit], train.y[fit], MNIST_MEAN, MNIST_STD, epochs=args.epochs, lr=args.lr,
                         batch_size=args.batch_size, augment=args.augment, flip=False, loss_fn=loss_fn,
                         seed=args.seed, verbose=False, log=log)
        model = net.remove().eval()
        if len(held_out):
            # A copy: the certifier hooks its own SIN into the model it wraps.
            certifier = make_classifier(copy.deepcopy(model), MNIST_MODEL, estimator_class=PyTorchScaleCert,
                                        superficial_layer=args.superficial_layer, top_k=args.top_k[0],
                                        patch_size=args.patch_sizes[0], r=args.r, tau=args.tau)
            found = certifier.certify(train.x[held_out], train.y[held_out])
            clean = np.mean(found.prediction == train.y[held_out])
            log(f"holdout {len(held_out)} digits, {args.patch_sizes[0]}x{args.patch_sizes[0]} patch, top-k "
                f"{args.top_k[0]}, r {args.r}, tau {args.tau}: clean {clean:.4f} certified "
                f"{np.mean(found.certified):.4f} alerts {np.mean(found.alert):.4f}")
        top_k = args.top_k[0] if len(args.top_k) == 1 else args.top_k
        return model, {"arch": "mnist_cnn", "superficial_layer": args.superficial_layer, "top_k": top_k,
                       "patch_sizes": args.patch_sizes, "r": args.r, "tau": args.tau, "worst_of": args.worst_of,
                       "occlude_probability": args.occlude_probability, "epochs": args.epochs, "lr": args.lr,
                       "batch_size": args.batch_size, "augment": args.augment, "holdout": args.holdout,
                       "fit_images": len(fit)}

    run_embedded_training(MNIST_MODEL_CHECKPOINT, "art_patch_defenses.scalecert.train_embedded",
                          sys.argv[1:] if argv is None else argv, train_fn, seed=args.seed, threads=args.threads,
                          out=args.out, init=INIT,
                          evaluate=None if args.holdout else plain_accuracy(MNIST_MEAN, MNIST_STD))


if __name__ == "__main__":
    main()
