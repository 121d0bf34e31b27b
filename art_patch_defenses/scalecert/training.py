"""Winner-take-all fine-tuning with the SIN mask in place (ScaleCert, section 3.2, "Neural Network Sparsification").

Only the winners forward their activations, so only they receive gradients; the winners are recomputed at every
step. Half of the images (by default) also get one occluding window of the certifier's own set, that is, the
superficial features it reaches are excluded (the same as occluding its pixels, see :mod:`.sin`), so the model
learns to classify the occluded copies that detection and certification classify ("window occluding of random
locations", section 4.1).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from art_patch_defenses.models.training import train_classifier
from art_patch_defenses.scalecert.sin import ScaleCertNet
from art_patch_defenses.scalecert.windows import occlusion_windows


def occlusion_loss(net: ScaleCertNet, windows_features: torch.Tensor, top_k_choices: Sequence[float],
                   occlude_probability: float, generator: torch.Generator
                   ) -> Callable[[nn.Module, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """A ``train_classifier`` ``loss_fn``: cross-entropy of the SIN network on batches in which each image is
    occluded by a random window (its features ``windows_features`` ``(W, h, w)`` excluded) with
    ``occlude_probability``; the top-k rate is drawn from ``top_k_choices`` per batch, so one model serves each."""

    def loss_fn(model: nn.Module, batch: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n = len(batch)
        pick = torch.randint(len(windows_features), (n,), generator=generator)
        occluded = torch.rand(n, generator=generator) < occlude_probability
        excluded = windows_features[pick] & occluded[:, None, None]
        net.sin.top_k = float(top_k_choices[torch.randint(len(top_k_choices), (1,), generator=generator)])
        logits = net(batch, excluded)
        return F.cross_entropy(logits, labels), logits

    return loss_fn


def worst_window_loss(net: ScaleCertNet, windows_features: torch.Tensor, top_k_choices: Sequence[float],
                      candidates: int, occlude_probability: float, generator: torch.Generator
                      ) -> Callable[[nn.Module, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """A ``train_classifier`` ``loss_fn``: per image, ``candidates`` random windows (their superficial features
    ``windows_features`` ``(W, h, w)`` excluded) are scored without a gradient and the highest-loss one is
    trained on, with ``occlude_probability``; the top-k rate is drawn from ``top_k_choices`` per batch."""

    def loss_fn(model: nn.Module, batch: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n = len(batch)
        net.sin.top_k = float(top_k_choices[torch.randint(len(top_k_choices), (1,), generator=generator)])
        picks = torch.randint(len(windows_features), (candidates, n), generator=generator)
        if candidates > 1:
            net.eval()
            with torch.no_grad():
                losses = torch.stack([F.cross_entropy(net(batch, windows_features[pick]), labels, reduction="none")
                                      for pick in picks])
            net.train()
            worst = picks[losses.argmax(0), torch.arange(n)]
        else:
            worst = picks[0]
        excluded = windows_features[worst] & (torch.rand(n, generator=generator) < occlude_probability)[:, None, None]
        logits = net(batch, excluded)
        return F.cross_entropy(logits, labels), logits

    return loss_fn


def train_scalecert(model: nn.Module, superficial_layer: str, x: np.ndarray, y: np.ndarray,
                    mean: tuple[float, ...], std: tuple[float, ...], top_k_choices: Sequence[float] = (0.1, 0.15, 0.2),
                    patch_sizes: Sequence[int] = (2, 5), r: int = 3, tau: float = 0.3,
                    occlude_probability: float = 0.5, epochs: int = 5, lr: float = 0.02,
                    batch_size: int = 128, seed: int = 0, verbose: bool = True,
                    log: Callable[[str], None] | None = None, worst_of: int = 1) -> nn.Module:
    """Fine-tune ``model`` with SIN after ``superficial_layer`` and occluding windows of ``patch_sizes``: one
    random window per image, or with ``worst_of`` above 1 the highest-loss of that many (:func:`worst_window_loss`).

    :return: ``model`` itself (the SIN hook removed), in eval mode.
    """
    input_shape = tuple(x.shape[1:])
    net = ScaleCertNet(model, superficial_layer, top_k_choices[0], input_shape)
    sets = [occlusion_windows(input_shape[1:], (p, p), r, tau, net.chain, net.map_hw) for p in patch_sizes]
    features = torch.from_numpy(np.concatenate([s.features for s in sets]))
    generator = torch.Generator().manual_seed(seed + 1)
    loss_fn = (occlusion_loss(net, features, top_k_choices, occlude_probability, generator) if worst_of == 1
               else worst_window_loss(net, features, top_k_choices, worst_of, occlude_probability, generator))
    train_classifier(net, x, y, mean, std, epochs=epochs, lr=lr, batch_size=batch_size, loss_fn=loss_fn,
                     seed=seed, verbose=verbose, log=log)
    return net.remove().eval()
