"""A patch attack ensemble in the spirit of AutoAttack (Croce & Hein 2020, https://arxiv.org/abs/2003.01690): per
image, the worst case over several white-box patch attacks at several placements, plus a gradient-free random
search as the gradient-masking alarm.

:class:`PatchAutoAttack` runs on any ART classifier. Each image gets a patch of ``patch_size`` pixels at several
placements: the one given (``mask``), uniformly random ones, and the ones where the loss gradient is largest. At
each placement, on the images still right, it runs

1. masked PGD (ART ``ProjectedGradientDescent``) with each (step, iterations) pair of the budget and seeded
   random restarts;
2. masked AutoPGD (:class:`~art_patch_defenses.attacks.masked.MaskedAutoPGD`), untargeted and targeted at the
   ``targeted_top_k`` most likely other classes;
3. the defence's adaptive attack where it has one: PatchZero's detector-evasion loss through BPDA
   (:func:`patchzero_joint_pgd`); for a randomised-smoothing certifier, expectation over its noise
   (:func:`~art_patch_defenses.attacks.eot.masked_pgd_eot`) replaces 1-2.

With ``scan_stride`` a placement scan (:func:`placement_scan`) first pastes a random patch at every place of a grid
and judges each by ``predict``: an image it fools counts as fooled, and each image's worst place becomes one more
placement for the attacks above.

The white-box attacks follow the estimator itself or, for a certifier, its protocol's ``attack_surrogate()``; every
result is judged by the estimator's own ``predict`` (an abstention or alert is not right). Separately, on every image,
a random search over patch location and content (:func:`random_search_patch`, after Sparse-RS / Patch-RS, Croce et
al. 2022, https://arxiv.org/abs/2006.12834) queries only ``predict``. The ensemble's output is, per image, the first
adversarial found; :attr:`PatchAutoAttack.report` gives the accuracy after each attack, the random search's own
accuracy, the budget and the placements. One ``seed`` fixes every random choice, ART's random starts included.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from art.attacks.attack import EvasionAttack
from art.estimators.classification.classifier import ClassifierMixin
from art.estimators.estimator import BaseEstimator
from tqdm.auto import tqdm

from art_patch_defenses.attacks.masked import MaskedAutoPGD, masked_pgd, seed_art_random_start
from art_patch_defenses.validation import check_estimator_inputs, check_labels

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PatchBudget:
    """Every budget of :class:`PatchAutoAttack` in one place (recorded with every result).

    :param eps: L-inf budget inside the patch (1.0: any content).
    :param pgd: (step, iterations) of each masked PGD run.
    :param restarts: random starts of each PGD run.
    :param apgd_iter: iterations of masked AutoPGD; ``apgd_step`` its initial step.
    :param targeted_top_k: targeted AutoPGD runs, at the most likely other classes.
    :param random_placements: uniformly random placements per image (besides a given mask).
    :param gradient_placements: placements where the loss gradient's magnitude summed over the patch is largest.
    :param random_search_queries: queries of the gradient-free random search per image (0: off).
    :param scan_stride: stride of the placement scan (0: off; :func:`placement_scan`): the place where a random
        patch lowers the defended margin most becomes a placement, and an image the scan fools counts as fooled.
        It queries ``predict`` at ``((H - h) // stride + 1) * ((W - w) // stride + 1)`` places per image.
    :param eot_samples: noise samples per step for a randomised-smoothing certifier.
    :param detector_weight: weight of PatchZero's detector-evasion term.
    """

    eps: float = 1.0
    pgd: tuple[tuple[float, int], ...] = ((0.05, 50), (0.01, 100))
    restarts: int = 1
    apgd_iter: int = 50
    apgd_step: float = 0.2
    targeted_top_k: int = 2
    random_placements: int = 2
    gradient_placements: int = 1
    random_search_queries: int = 300
    scan_stride: int = 0
    eot_samples: int = 8
    detector_weight: float = 1.0

    def __post_init__(self) -> None:
        if not 0 < self.eps <= 1:
            raise ValueError(f"eps must be in (0, 1], got {self.eps}")
        if not self.pgd or any(step <= 0 or int(it) < 1 for step, it in self.pgd):
            raise ValueError(f"pgd must be non-empty (step > 0, iterations >= 1) pairs, got {self.pgd}")
        for name in ("restarts", "apgd_iter"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("targeted_top_k", "random_placements", "gradient_placements", "random_search_queries",
                     "scan_stride", "eot_samples"):
            if int(getattr(self, name)) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")

    def as_dict(self) -> dict[str, Any]:
        return {key: [list(pair) for pair in value] if key == "pgd" else value for key, value in asdict(self).items()}


@dataclass
class AttackReport:
    """What :class:`PatchAutoAttack` did: accuracy of the defended ``predict`` after each attack (cumulative, over
    every placement), after all white-box attacks, the random search's own accuracy, the ensemble's, the budget and
    the placements. With ``alert_is_safe`` every accuracy counts an abstention or alert as right."""

    clean_accuracy: float
    accuracy_after: dict[str, float] = field(default_factory=dict)
    white_box_accuracy: float = 0.0
    random_search_accuracy: float | None = None
    ensemble_accuracy: float = 0.0
    budget: dict[str, Any] = field(default_factory=dict)
    placements: list[str] = field(default_factory=list)
    attacks: list[str] = field(default_factory=list)
    alert_is_safe: bool = False


def gradient_placements(surrogate, x: np.ndarray, y: np.ndarray, shape: tuple[int, int], count: int) -> np.ndarray:
    """``(count, N, 2)`` top-left places whose window holds the largest summed magnitude of the loss gradient
    (the first the largest, the next ones the largest not overlapping an earlier one)."""
    gradient = np.abs(surrogate.loss_gradient(x, np.eye(surrogate.nb_classes, dtype=np.float32)[y])).sum(axis=1)
    windows = torch.nn.functional.avg_pool2d(torch.from_numpy(gradient)[:, None], shape, stride=1)[:, 0].numpy()
    places = np.zeros((count, len(x), 2), dtype=int)
    width = windows.shape[2]
    for k in range(count):
        flat = windows.reshape(len(x), -1).argmax(1)
        places[k] = np.stack([flat // width, flat % width], axis=1)
        for n, (row, col) in enumerate(places[k]):  # no later window may overlap this one
            windows[n, max(0, row - shape[0] + 1) : row + shape[0], max(0, col - shape[1] + 1) : col + shape[1]] = -1
    return places


def _window_masks(image_hw: tuple[int, int], shape: tuple[int, int], places: np.ndarray) -> np.ndarray:
    masks = np.zeros((len(places), *image_hw), dtype=bool)
    for n, (row, col) in enumerate(places):
        masks[n, row : row + shape[0], col : col + shape[1]] = True
    return masks


def _margins(scores: np.ndarray, y: np.ndarray, nb_classes: int, alert_is_safe: bool = False) -> np.ndarray:
    """Score of the label minus the best other class; an abstention (the protocol's extra column) is -1, or
    +inf where an alert is safe (the attack must avoid it)."""
    classes = scores[:, :nb_classes].astype(np.float64)
    own = classes[np.arange(len(y)), y]
    classes[np.arange(len(y)), y] = -np.inf
    margin = own - classes.max(axis=1)
    if scores.shape[1] == nb_classes + 1:
        margin[scores[:, -1] > 0] = np.inf if alert_is_safe else -1.0
    return margin


def _checked_query_inputs(estimator, x: np.ndarray, y: np.ndarray,
                          shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """``x`` and ``y`` checked for a query attack (shape, layout, clip range, NaN, labels), and a patch that fits."""
    x = check_estimator_inputs(estimator, x)
    y = check_labels(y, len(x), estimator.nb_classes)
    if len(shape) != 2 or any(int(side) < 1 for side in shape):
        raise ValueError(f"patch shape must be (height, width) of positive sides, got {shape}")
    if any(side > image for side, image in zip(shape, x.shape[2:], strict=True)):
        raise ValueError(f"patch shape {tuple(shape)} is larger than the image {tuple(x.shape[2:])}")
    return x, y


def random_search_patch(estimator, x: np.ndarray, y: np.ndarray, shape: tuple[int, int], queries: int,
                        seed: int = 0, batch_size: int = 128, verbose: bool = False,
                        alert_is_safe: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """A gradient-free patch attack on ``estimator.predict``'s scores: random search over the patch's place and
    content (after Patch-RS). Each query either moves the patch to a random place or paints a random square of it
    (side shrinking with the queries) a random corner colour of the RGB cube; a proposal is kept if it lowers the
    margin of the label. It stops per image once the image is not right (with ``alert_is_safe``: once it is
    wrong without an abstention or alert).

    :return: adversarial images and their patch masks ``(N, H, W)``.
    """
    x, y = _checked_query_inputs(estimator, x, y, shape)
    if int(queries) < 0:
        raise ValueError(f"queries must be >= 0, got {queries}")
    rng = np.random.default_rng(seed)
    n, channels = len(x), x.shape[1]
    image_hw = tuple(x.shape[2:])
    places = np.stack([rng.integers(0, image_hw[0] - shape[0] + 1, n),
                       rng.integers(0, image_hw[1] - shape[1] + 1, n)], axis=1)
    patches = rng.integers(0, 2, size=(n, channels, *shape)).astype(np.float32)

    def paste(index: np.ndarray, where: np.ndarray, content: np.ndarray) -> np.ndarray:
        images = x[index].copy()
        for k, (row, col) in enumerate(where):
            images[k, :, row : row + shape[0], col : col + shape[1]] = content[k]
        return images

    def margins(index: np.ndarray, where: np.ndarray, content: np.ndarray) -> np.ndarray:
        images = paste(index, where, content)
        return np.concatenate([_margins(estimator.predict(images[s : s + batch_size], batch_size=batch_size),
                                        y[index][s : s + batch_size], estimator.nb_classes, alert_is_safe)
                               for s in range(0, len(index), batch_size)])

    best = margins(np.arange(n), places, patches)
    for query in tqdm(range(queries), desc="random search", disable=not verbose):
        todo = np.flatnonzero(best >= 0)
        if not len(todo):
            break
        new_places, new_patches = places[todo].copy(), patches[todo].copy()
        move = rng.random(len(todo)) < 0.5
        new_places[move, 0] = rng.integers(0, image_hw[0] - shape[0] + 1, move.sum())
        new_places[move, 1] = rng.integers(0, image_hw[1] - shape[1] + 1, move.sum())
        side = max(1, int(round(max(shape) * 0.5 * (1 - query / max(queries, 1)))))
        for k in np.flatnonzero(~move):
            row = rng.integers(0, shape[0] - min(side, shape[0]) + 1)
            col = rng.integers(0, shape[1] - min(side, shape[1]) + 1)
            new_patches[k, :, row : row + side, col : col + side] = rng.integers(0, 2, size=(channels, 1, 1))
        proposal = margins(todo, new_places, new_patches)
        better = proposal < best[todo]
        places[todo[better]], patches[todo[better]], best[todo[better]] = (new_places[better], new_patches[better],
                                                                          proposal[better])
    return paste(np.arange(n), places, patches), _window_masks(image_hw, shape, places)


def placement_scan(estimator, x: np.ndarray, y: np.ndarray, shape: tuple[int, int], stride: int, seed: int = 0,
                   batch_size: int = 128, verbose: bool = False,
                   alert_is_safe: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Scan every place on a ``stride`` grid with one seeded random binary patch per image (corner colours of the
    RGB cube, as the random search starts from) and keep, per image, the place where ``estimator.predict``'s margin
    of the label is lowest. A defence that repaints or masks what it finds can be fooled by where a patch is more
    than by what it holds (PatchZero's repaint occludes the object); gradient attacks at a few places miss that.

    :return: the images with the patch at their worst place, and its masks ``(N, H, W)``.
    """
    x, y = _checked_query_inputs(estimator, x, y, shape)
    if isinstance(stride, bool) or int(stride) < 1:
        raise ValueError(f"stride must be a positive integer, got {stride!r}")
    rng = np.random.default_rng(seed)
    n, image_hw = len(x), tuple(x.shape[2:])
    content = rng.integers(0, 2, size=(n, x.shape[1], *shape)).astype(x.dtype)
    grid = [(row, col) for row in range(0, image_hw[0] - shape[0] + 1, stride)
            for col in range(0, image_hw[1] - shape[1] + 1, stride)]
    lowest, worst = np.full(n, np.inf), np.zeros((n, 2), dtype=int)
    for row, col in tqdm(grid, desc="placement scan", disable=not verbose):
        images = x.copy()
        images[:, :, row : row + shape[0], col : col + shape[1]] = content
        margin = np.concatenate([_margins(estimator.predict(images[s : s + batch_size], batch_size=batch_size),
                                          y[s : s + batch_size], estimator.nb_classes, alert_is_safe)
                                 for s in range(0, n, batch_size)])
        lower = margin < lowest
        lowest[lower], worst[lower] = margin[lower], (row, col)
    images = x.copy()
    for k, (row, col) in enumerate(worst):
        images[k, :, row : row + shape[0], col : col + shape[1]] = content[k]
    return images, _window_masks(image_hw, shape, worst)


def find_patch_detector(estimator):
    """A patch-detecting preprocessor among ``estimator``'s defences (one with a differentiable
    ``detector_probability``, e.g. PatchZero), if any."""
    for defence in estimator.preprocessing_defences or []:
        if callable(getattr(defence, "detector_probability", None)):
            return defence
    return None


def patchzero_joint_pgd(estimator, patchzero, x: np.ndarray, mask: np.ndarray, y: np.ndarray, eps_step: float,
                        max_iter: int, weight: float = 1.0, seed: int = 0) -> np.ndarray:
    """Masked PGD on a PatchZero-defended classifier with the joint adaptive loss: the classifier's cross-entropy
    through PatchZero (BPDA, as its ``forward`` carries it) minus ``weight`` times the detector's mean probability
    inside the patch (``patchzero.detector_probability``), so the patch both fools the classifier and hides from
    the detector. Starts from uniform noise in the patch (seeded).

    :param mask: ``x``-shaped 0/1 patch masks.
    """
    generator = torch.Generator().manual_seed(seed)
    clean = torch.from_numpy(x)
    region = torch.from_numpy(mask.astype(np.float32))
    labels = torch.from_numpy(y.astype(np.int64))
    adv = clean + region * (torch.rand(clean.shape, generator=generator) - clean)
    for _ in range(max_iter):
        adv = adv.detach().requires_grad_(True)
        preprocessed, _ = estimator._apply_preprocessing(adv, y=None, fit=False, no_grad=False)
        logits = estimator.model(preprocessed)
        probability = patchzero.detector_probability(adv)[:, 0]
        inside = (probability * region[:, 0]).sum((1, 2)) / region[:, 0].sum((1, 2)).clamp_min(1)
        loss = torch.nn.functional.cross_entropy(logits, labels, reduction="sum") - weight * inside.sum()
        (gradient,) = torch.autograd.grad(loss, adv)
        adv = (adv + eps_step * gradient.sign() * region).clamp(0.0, 1.0)
        adv = clean * (1 - region) + adv * region
    return adv.detach().numpy().astype(np.float32)


class PatchAutoAttack(EvasionAttack):
    """The patch attack ensemble (module docstring): worst case per image over masked PGD (two step sizes, seeded
    restarts), masked AutoPGD (untargeted and targeted), the defence's adaptive attack, at given, random and
    gradient-chosen placements, plus a gradient-free random search.

    :param estimator: any ART classifier (a certifier is attacked through its ``attack_surrogate()`` and judged by
        its ``predict``).
    :param patch_size: patch side in pixels, or ``(height, width)``.
    :param budget: a :class:`PatchBudget`; keyword arguments override its fields.
    :param seed: fixes placements, random starts, restarts and the random search.
    :param alert_is_safe: the detection threat model (a certified detector such as ScaleCert): an image counts as
        fooled only with a wrong label and no abstention or alert, so the attacks go on where a patch was caught.
        Default: an abstention or alert is not right, like a wrong label.
    """

    attack_params = EvasionAttack.attack_params + ["patch_size", "budget", "seed", "batch_size", "verbose",
                                                   "alert_is_safe"]
    _estimator_requirements = (BaseEstimator, ClassifierMixin)

    def __init__(self, estimator, patch_size: int | tuple[int, int] = 5, budget: PatchBudget | None = None,
                 seed: int = 0, batch_size: int = 64, verbose: bool = True, alert_is_safe: bool = False,
                 **budget_overrides: Any) -> None:
        super().__init__(estimator=estimator)
        self.patch_size = (patch_size, patch_size) if isinstance(patch_size, (int, np.integer)) else tuple(patch_size)
        if "pgd" in budget_overrides:
            budget_overrides["pgd"] = tuple(tuple(pair) for pair in budget_overrides["pgd"])
        self.budget = PatchBudget(**{**asdict(budget or PatchBudget()), **budget_overrides})
        self.seed, self.batch_size, self.verbose, self.alert_is_safe = seed, batch_size, verbose, alert_is_safe
        self.report: AttackReport | None = None
        self.last_masks: np.ndarray | None = None
        self._check_params()

    def _check_params(self) -> None:
        if len(self.patch_size) != 2 or any(isinstance(s, bool) or int(s) < 1 for s in self.patch_size):
            raise ValueError(f"patch_size must be a positive side or (height, width), got {self.patch_size}")
        if isinstance(self.seed, bool) or int(self.seed) < 0:
            raise ValueError(f"seed must be a non-negative integer, got {self.seed!r}")
        if int(self.batch_size) < 1:
            raise ValueError(f"batch_size must be a positive integer, got {self.batch_size!r}")
        if not isinstance(self.alert_is_safe, bool):
            raise ValueError(f"alert_is_safe must be a bool, got {self.alert_is_safe!r}")

    def _labels(self, x: np.ndarray) -> np.ndarray:
        from art_patch_defenses.certification import predict_labels

        return np.concatenate([predict_labels(self.estimator.predict(x[s : s + self.batch_size],
                                                                     batch_size=self.batch_size),
                                              self.estimator.nb_classes)
                               for s in range(0, len(x), self.batch_size)])

    def _holds(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Images the defence still gets right (or, with ``alert_is_safe``, right or alerted)."""
        from art_patch_defenses.certification import ABSTAIN

        predicted = self._labels(x)
        return (predicted == y) | (self.alert_is_safe & (predicted == ABSTAIN))

    def _attacks(self, surrogate) -> dict[str, Any]:
        """name -> attack(x, x-shaped mask, labels, seed) for the white-box part."""
        from art_patch_defenses.attacks.eot import masked_pgd_eot
        from art_patch_defenses.certification import REGION_L2

        b = self.budget
        if getattr(self.estimator, "certificate_kind", None) == REGION_L2:  # randomised smoothing: EOT
            return {f"eot_masked_pgd_step{step}": (
                lambda x, m, y, s, step=step, it=it: masked_pgd_eot(
                    self.estimator, x, m, y, norm="inf", eps=b.eps, eps_step=step, max_iter=it,
                    eot_samples=b.eot_samples, restarts=b.restarts, seed=s)) for step, it in b.pgd}
        attacks = {f"masked_pgd_step{step}": (
            lambda x, m, y, s, step=step, it=it: masked_pgd(
                surrogate, x, m, y, eps=b.eps, eps_step=step, max_iter=it, num_random_init=b.restarts,
                batch_size=self.batch_size, verbose=False, seed=s)) for step, it in b.pgd}

        def apgd(x, m, y, s, targeted=False):
            seed_art_random_start(s)
            attack = MaskedAutoPGD(surrogate, eps=b.eps, eps_step=b.apgd_step, max_iter=b.apgd_iter,
                                   targeted=targeted, batch_size=min(self.batch_size, 128), verbose=False)
            return attack.generate(x, y=y, mask=m)

        attacks["masked_apgd"] = apgd
        for k in range(b.targeted_top_k):
            def targeted(x, m, y, s, k=k):
                scores = surrogate.predict(x)[:, : surrogate.nb_classes].copy()
                scores[np.arange(len(y)), y] = -np.inf
                target = np.argsort(-scores, axis=1)[:, k]
                return apgd(x, m, target, s, targeted=True)

            attacks[f"masked_apgd_targeted_top{k + 1}"] = targeted
        patchzero = find_patch_detector(self.estimator)
        if patchzero is not None and patchzero.bpda:
            step, it = b.pgd[-1]
            attacks["patchzero_joint_bpda_pgd"] = lambda x, m, y, s: patchzero_joint_pgd(
                self.estimator, patchzero, x, m, y, eps_step=step, max_iter=it, weight=b.detector_weight, seed=s)
        return attacks

    def generate(self, x: np.ndarray, y: np.ndarray | None = None, mask: np.ndarray | None = None,
                 **kwargs: Any) -> np.ndarray:
        """Attack ``x`` (labels ``y``, default: the predictions); ``mask`` (``x``-shaped or ``(N, H, W)``) gives
        one placement per image besides the random and gradient-chosen ones. The patch masks of the returned
        images are in :attr:`last_masks`, what ran in :attr:`report`."""
        x = check_estimator_inputs(self.estimator, x)
        labels = self._labels(x) if y is None else check_labels(y, len(x), self.estimator.nb_classes)
        image_hw, b, rng = tuple(x.shape[2:]), self.budget, np.random.default_rng(self.seed)
        if any(s > side for s, side in zip(self.patch_size, image_hw, strict=True)):
            raise ValueError(f"patch_size {self.patch_size} is larger than the image {image_hw}")
        surrogate = self.estimator.attack_surrogate() if hasattr(self.estimator, "attack_surrogate") else self.estimator
        placements: list[tuple[str, np.ndarray]] = []
        if mask is not None:
            given = np.asarray(mask).astype(bool)
            given = given.any(axis=1) if given.ndim == 4 else given
            if given.shape != (len(x), *image_hw):
                raise ValueError(f"mask must be (N, H, W) = {(len(x), *image_hw)} or x-shaped, got {given.shape}")
            placements.append(("given", given))
        for k in range(b.random_placements):
            places = np.stack([rng.integers(0, image_hw[0] - self.patch_size[0] + 1, len(x)),
                               rng.integers(0, image_hw[1] - self.patch_size[1] + 1, len(x))], axis=1)
            placements.append((f"random_{k + 1}", _window_masks(image_hw, self.patch_size, places)))
        if b.gradient_placements:
            chosen = gradient_placements(surrogate, x, labels, self.patch_size, b.gradient_placements)
            placements += [(f"gradient_{k + 1}", _window_masks(image_hw, self.patch_size, places))
                           for k, places in enumerate(chosen)]
        clean = self._holds(x, labels)
        right, best, scanned = clean.copy(), x.copy(), {}
        if b.scan_stride:
            x_scan, scan_masks = placement_scan(self.estimator, x, labels, self.patch_size, b.scan_stride,
                                                seed=self.seed, batch_size=self.batch_size, verbose=self.verbose,
                                                alert_is_safe=self.alert_is_safe)
            placements.append(("scan", scan_masks))
            fooled = right & ~self._holds(x_scan, labels)
            best[fooled], right[fooled] = x_scan[fooled], False
            scanned = {"placement_scan": float(right.mean())}
        if not placements:
            raise ValueError("no placement: give a mask or a budget with random, gradient or scanned placements")

        masks = placements[0][1].copy()
        if scanned:
            masks[fooled] = scan_masks[fooled]
        report = AttackReport(clean_accuracy=float(clean.mean()), budget=b.as_dict(),
                              placements=[name for name, _ in placements], alert_is_safe=self.alert_is_safe,
                              accuracy_after=scanned)
        attacks = self._attacks(surrogate)
        report.attacks = list(attacks)
        for p, (place_name, place_masks) in enumerate(placements):
            for a, (name, attack) in enumerate(attacks.items()):
                todo = np.flatnonzero(right)
                if len(todo):  # an attack with nothing left to fool keeps its entry: sharded chunks pool alike
                    x_todo = x[todo]
                    x_adv = attack(x_todo, np.broadcast_to(place_masks[todo][:, None], x_todo.shape).astype(
                        np.float32), labels[todo], self.seed + 1000 * p + a)
                    fooled = ~self._holds(x_adv, labels[todo])
                    best[todo[fooled]], masks[todo[fooled]] = x_adv[fooled], place_masks[todo[fooled]]
                    right[todo[fooled]] = False
                report.accuracy_after[f"{place_name}/{name}"] = float(right.mean())
                logger.info("%s/%s: accuracy %.3f", place_name, name, right.mean())
        report.white_box_accuracy = float(right.mean())
        if b.random_search_queries:
            x_rs, rs_masks = random_search_patch(self.estimator, x, labels, self.patch_size, b.random_search_queries,
                                                 seed=self.seed, batch_size=self.batch_size, verbose=self.verbose,
                                                 alert_is_safe=self.alert_is_safe)
            rs_right = self._holds(x_rs, labels)
            report.random_search_accuracy = float(rs_right.mean())
            take = right & ~rs_right
            best[take], masks[take] = x_rs[take], rs_masks[take]
            right &= rs_right
        report.ensemble_accuracy = float(right.mean())
        self.report, self.last_masks = report, masks
        return best
