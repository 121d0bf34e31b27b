"""Supervised (fine-)training of a classifier on in-memory arrays, with CIFAR-style augmentation.

One routine for every base model of the project; method rooms add their own losses on top of it through
``batch_transform`` (e.g. noise inside masks) rather than writing a second loop.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

logger = logging.getLogger(__name__)


def random_crop_flip(x: torch.Tensor, padding: int = 4, flip: bool = True, generator=None) -> torch.Tensor:
    """Random crop after zero padding by ``padding`` pixels, and random horizontal flip, per sample."""
    n, _, h, w = x.shape
    if padding > 0:
        padded = F.pad(x, (padding,) * 4)
        dy = torch.randint(0, 2 * padding + 1, (n,), generator=generator)
        dx = torch.randint(0, 2 * padding + 1, (n,), generator=generator)
        rows = (dy[:, None] + torch.arange(h)[None, :])[:, None, :, None].expand(n, x.shape[1], h, w + 2 * padding)
        x = torch.gather(padded, 2, rows)
        cols = (dx[:, None] + torch.arange(w)[None, :])[:, None, None, :].expand(n, x.shape[1], h, w)
        x = torch.gather(x, 3, cols)
    if flip:
        flipped = torch.rand(n, generator=generator) < 0.5
        x = torch.where(flipped[:, None, None, None], x.flip(3), x)
    return x


def normalise(x: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """Channel-wise ``(x - mean) / std`` for NCHW tensors."""
    mean_t = torch.tensor(mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    std_t = torch.tensor(std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    return (x - mean_t) / std_t


@torch.no_grad()
def accuracy(
    model: nn.Module, x: np.ndarray, y: np.ndarray, mean: tuple[float, ...], std: tuple[float, ...],
    batch_size: int = 500,
) -> float:
    """Top-1 accuracy of ``model`` (which takes normalised NCHW input) on ``x`` in [0, 1]."""
    model.eval()
    correct = 0
    for start in range(0, len(x), batch_size):
        batch = normalise(torch.from_numpy(x[start : start + batch_size]), mean, std)
        correct += (model(batch).argmax(1).numpy() == y[start : start + batch_size]).sum()
    return float(correct) / max(len(x), 1)


def train_classifier(
    model: nn.Module,
    x: np.ndarray,
    y: np.ndarray,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    epochs: int = 5,
    lr: float = 0.01,
    batch_size: int = 128,
    weight_decay: float = 5e-4,
    augment: bool = True,
    flip: bool = True,
    batch_transform: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None = None,
    loss_fn: Callable[[nn.Module, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]] | None = None,
    seed: int = 0,
    verbose: bool = True,
    log: Callable[[str], None] | None = None,
    teacher_logits: np.ndarray | None = None,
    distill_weight: float = 0.5,
    temperature: float = 4.0,
) -> nn.Module:
    """Train ``model`` with SGD (momentum 0.9, Nesterov) and a cosine learning-rate schedule.

    :param x: training images, float32 NCHW in [0, 1].
    :param y: integer labels.
    :param mean: normalisation mean applied before the model.
    :param std: normalisation std.
    :param augment: random crop (padding 4) and, if ``flip``, horizontal flip.
    :param batch_transform: optional extra augmentation on the [0, 1] batch (before normalisation).
    :param loss_fn: ``loss_fn(model, normalised_batch, labels) -> (loss, logits)`` for a method's own
        objective; default: cross-entropy of ``model(batch)``.
    :param log: called with one line per epoch (loss, accuracy, seconds).
    :param teacher_logits: ``(N, classes)`` logits of a teacher on ``x`` (un-augmented): knowledge distillation
        (Hinton et al., 2015), the loss becomes ``(1 - distill_weight) * loss + distill_weight * T^2 *
        KL(softmax(teacher / T) || softmax(logits / T))`` with ``T = temperature``; the logits are those the
        loss returns (for band training, the band's).
    :param seed: seeds the order, crops and ``batch_transform`` draws; a run that continues a checkpoint should
        take a new one, or it replays the earlier run's first epochs image for image.
    :return: the trained model, in eval mode.
    """
    if len(x) == 0:
        raise ValueError("x is empty: nothing to train on")
    if len(x) != len(y):
        raise ValueError(f"x and y differ in length: {len(x)} vs {len(y)}")
    if teacher_logits is not None:
        if teacher_logits.ndim != 2 or len(teacher_logits) != len(x) or not np.all(np.isfinite(teacher_logits)):
            raise ValueError(f"teacher_logits must be finite (N, classes) with N = {len(x)}, got shape "
                             f"{teacher_logits.shape}")
        if not (0.0 < distill_weight <= 1.0 and temperature > 0):
            raise ValueError(f"distill_weight must be in (0, 1] and temperature > 0, got {distill_weight}, "
                             f"{temperature}")
        teacher_all = torch.from_numpy(np.asarray(teacher_logits, dtype=np.float32))
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.SGD(
        model.parameters(), lr=lr, momentum=0.9, nesterov=True, weight_decay=weight_decay
    )
    steps_per_epoch = math.ceil(len(x) / batch_size)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs * steps_per_epoch)
    x_all, y_all = torch.from_numpy(x), torch.from_numpy(y).long()
    for epoch in range(epochs):
        model.train()
        start, seen, correct, total_loss = time.time(), 0, 0, 0.0
        order = torch.randperm(len(x), generator=generator)
        bar = tqdm(range(steps_per_epoch), desc=f"epoch {epoch + 1}/{epochs}", disable=not verbose)
        for step in bar:
            index = order[step * batch_size : (step + 1) * batch_size]
            batch, labels = x_all[index], y_all[index]
            if augment:
                batch = random_crop_flip(batch, flip=flip, generator=generator)
            if batch_transform is not None:
                batch = batch_transform(batch, generator)
            if loss_fn is None:
                logits = model(normalise(batch, mean, std))
                loss = F.cross_entropy(logits, labels)
            else:
                loss, logits = loss_fn(model, normalise(batch, mean, std), labels)
            if teacher_logits is not None:
                distilled = F.kl_div(F.log_softmax(logits / temperature, dim=1),
                                     F.softmax(teacher_all[index] / temperature, dim=1), reduction="batchmean")
                loss = (1 - distill_weight) * loss + distill_weight * temperature**2 * distilled
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            seen += len(labels)
            correct += (logits.argmax(1) == labels).sum().item()
            total_loss += loss.item() * len(labels)
            bar.set_postfix(loss=f"{total_loss / seen:.3f}", acc=f"{correct / seen:.3f}")
        line = (
            f"epoch {epoch + 1}/{epochs} train_loss {total_loss / seen:.4f} train_acc {correct / seen:.4f} "
            f"lr_end {scheduler.get_last_lr()[0]:.5f} seconds {time.time() - start:.0f}"
        )
        logger.info(line)
        if log is not None:
            log(line)
    return model.eval()
