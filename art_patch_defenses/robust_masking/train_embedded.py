"""Train robust masking's MNIST Mask-DS once, and commit it (``mnist_mask_ds``, tag ``"embedded"``).

Column bands of 2 px (:class:`~art_patch_defenses.models.bagnet.ColumnBandCNN`), every band trained at once to
classify the digit from its own columns (cross-entropy per band), on unshifted digits: a band's position is
much of what it knows (random crops halved the certified accuracy on the training holdout). The certifier
reads the bands' softmax confidences (``feature_type="confidence"``); the trained logits are then divided by a
temperature of 0.5 (the classifier's weights scaled), which sharpens the confidences of the bands that know the
digit and certified 3 points more of the holdout. Run:
``python -m art_patch_defenses.robust_masking.train_embedded``; the checkpoint goes to
``checkpoints/mnist_embedded_robust_masking_mask_ds.pt`` with its log and its record in ``checkpoints.json``.
``--holdout 500`` trains on the other 3,500 training digits and logs clean and certified accuracy on the 500 left
out (class-balanced): how the recipe was chosen, without the test digits.

(``mnist_bagnet``'s committed file was made by this command's earlier recipe, see ``checkpoints/README.md``.)
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from art_patch_defenses.data import ImageDataset
from art_patch_defenses.models.checkpoints import non_negative_int, positive_float, positive_int
from art_patch_defenses.models.registry import make_classifier
from art_patch_defenses.models.train_embedded import (
    Log,
    add_run_arguments,
    check_embedded_out,
    holdout_split,
    run_embedded_training,
)
from art_patch_defenses.models.training import train_classifier
from art_patch_defenses.robust_masking.estimator import PyTorchRobustMasking
from art_patch_defenses.robust_masking.registration import (
    MNIST_MASK_DS_BAND_WIDTH,
    MNIST_MASK_DS_CHECKPOINT,
    MNIST_MASK_DS_WIDTH,
    mnist_mask_ds,
)

#: The committed recipe (chosen on the 500-digit training holdout): a few CPU-minutes on one thread.
MASK_DS_EPOCHS = 25
MASK_DS_LR = 0.05
#: The trained logits are divided by this (chosen on the holdout among 0.25 to 3).
MASK_DS_TEMPERATURE = 0.5
#: The patch side the holdout report certifies: 5x5, 2.4% of a 32x32 digit (see checkpoints/README.md).
MASK_DS_PATCH = 5
#: The local features the certifier reads from this backbone.
MASK_DS_FEATURES = "confidence"
#: The raw-pixel normalisation of the registered model (the bands encode (x, 1 - x) themselves).
IDENTITY = ((0.0,), (1.0,))


def band_loss(model: nn.Module, batch: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A ``train_classifier`` loss: cross-entropy of every band's logits against the digit's label; the mean band
    confidence stands for the logits (the training accuracy of the vote)."""
    local = model(batch).flatten(1, 2)  # (N, bands, C)
    loss = F.cross_entropy(local.flatten(0, 1), labels.repeat_interleave(local.shape[1]))
    return loss, local.softmax(-1).mean(1)


def certifier(model: nn.Module, patch_size: int) -> PyTorchRobustMasking:
    """The certifier the default scenario builds around this backbone (confidence features, T = 0)."""
    return make_classifier(model, "mnist_mask_ds", estimator_class=PyTorchRobustMasking, patch_size=patch_size,
                           feature_type=MASK_DS_FEATURES)


@torch.no_grad()
def scale_logits(model: nn.Module, temperature: float) -> None:
    """Divide the 1x1 classifier's weights and bias by ``temperature``: the local logits become logits / T (the
    confidences sharper for T < 1; the bands' arg-max labels unchanged)."""
    model.classifier.weight.div_(temperature)
    model.classifier.bias.div_(temperature)


@torch.no_grad()
def vote_accuracy(model: nn.Module, test: ImageDataset) -> float:
    """Top-1 accuracy of the summed band confidences (the unmasked vote), for the record."""
    votes = model.eval()(torch.from_numpy(test.x)).softmax(-1).sum(dim=(1, 2))
    return float((votes.argmax(1).numpy() == test.y).mean())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--band-width", type=positive_int, default=MNIST_MASK_DS_BAND_WIDTH)
    parser.add_argument("--width", type=positive_int, default=MNIST_MASK_DS_WIDTH, help="channels of the first layer")
    parser.add_argument("--patch-size", type=positive_int, default=MASK_DS_PATCH,
                        help="patch side the --holdout report certifies")
    parser.add_argument("--epochs", type=positive_int, default=MASK_DS_EPOCHS)
    parser.add_argument("--lr", type=positive_float, default=MASK_DS_LR)
    parser.add_argument("--batch-size", type=positive_int, default=64)
    parser.add_argument("--temperature", type=positive_float, default=MASK_DS_TEMPERATURE,
                        help="the trained logits are divided by this")
    parser.add_argument("--holdout", type=non_negative_int, default=0,
                        help="train on all but this many class-balanced training digits and report on those")
    add_run_arguments(parser)
    args = parser.parse_args(argv)
    if args.band_width > 32 or args.patch_size > 32:
        parser.error("--band-width and --patch-size must fit a 32-pixel digit")
    check_embedded_out(parser, MNIST_MASK_DS_CHECKPOINT, args.out)

    def train_fn(train: ImageDataset, log: Log) -> tuple[nn.Module, dict[str, Any]]:
        fit, held_out = holdout_split(train, args.holdout)
        model = mnist_mask_ds(args.band_width, args.width)
        train_classifier(model, train.x[fit], train.y[fit], *IDENTITY, epochs=args.epochs, lr=args.lr,
                         batch_size=args.batch_size, augment=False, loss_fn=band_loss, seed=args.seed, verbose=False,
                         log=log)
        scale_logits(model, args.temperature)
        if len(held_out):
            clean, certified = certifier(model, args.patch_size).eval_and_certify(train.x[held_out],
                                                                                  train.y[held_out])
            log(f"holdout {len(held_out)} digits, {args.patch_size}x{args.patch_size} patch: clean {clean:.4f} "
                f"certified {certified:.4f}")
        return model, {"backbone": "mnist_mask_ds", "band_width": args.band_width, "width": args.width,
                       "feature_type": MASK_DS_FEATURES, "patch_size": args.patch_size,
                       "temperature": args.temperature, "epochs": args.epochs, "lr": args.lr,
                       "batch_size": args.batch_size, "augment": False, "holdout": args.holdout,
                       "fit_images": len(fit)}

    run_embedded_training(MNIST_MASK_DS_CHECKPOINT, "art_patch_defenses.robust_masking.train_embedded",
                          sys.argv[1:] if argv is None else argv, train_fn, seed=args.seed, threads=args.threads,
                          out=args.out, evaluate=None if args.holdout else vote_accuracy)


if __name__ == "__main__":
    main()
