"""Universal patches: ART's ``AdversarialPatchPyTorch`` (square, no rotation) and a LaVAN-style variant.

Both train one patch on a set of images and return it as an array ``(C, h, w)``; it is then pasted at exact,
recorded pixel locations with :func:`art_patch_defenses.geometry.paste_patch`, so every evaluation knows
where the patch is.

- :func:`adversarial_patch` (Brown et al. 2017, https://arxiv.org/abs/1712.09665) drives ART's
  ``AdversarialPatchPyTorch`` with ``patch_type="square"``, ``rotation_max=0`` and a fixed scale, so the
  patch it optimises covers ``h x w`` pixels at a random location of each training image. ART renders its
  patch through a bilinear resize and a nearest-neighbour affine map; the function returns those rendered
  pixels (not the raw array), so a pixel-exact paste shows the patch as ART trained it.
- :func:`lavan_patch` (Karmon et al. 2018, LaVAN, https://arxiv.org/abs/1801.02608) optimises the patch with
  signed gradient steps at integer random locations through the estimator's own ``loss_gradient``, so it
  works on any ART estimator with loss gradients, defences and BPDA included.
"""

from __future__ import annotations

import numpy as np
from art.attacks.evasion import AdversarialPatchPyTorch
from tqdm.auto import trange

from art_patch_defenses.geometry import PatchSize, paste_patch, patch_shape, random_locations
from art_patch_defenses.validation import check_estimator_inputs, check_labels


def _attack_labels(estimator, x: np.ndarray, y: np.ndarray | None, target: int | None) -> tuple[np.ndarray, bool]:
    """Labels the attack optimises towards (target) or away from (true labels), and whether it is targeted."""
    if target is not None:
        if not 0 <= target < estimator.nb_classes:
            raise ValueError(f"target must be in [0, {estimator.nb_classes - 1}], got {target}")
        return np.full(len(x), target, dtype=np.int64), True
    if y is None:
        raise ValueError("y (true labels) is required for an untargeted universal patch")
    return check_labels(y, len(x), estimator.nb_classes), False


def adversarial_patch(
    estimator,
    x: np.ndarray,
    y: np.ndarray | None = None,
    patch_size: PatchSize = 0.1,
    target: int | None = None,
    max_iter: int = 10,
    learning_rate: float = 0.05,
    batch_size: int = 64,
    verbose: bool = True,
) -> np.ndarray:
    """Train a universal square patch with ART's ``AdversarialPatchPyTorch`` against ``estimator``.

    :param x: training images (disjoint from the evaluation images), NCHW in [0, 1].
    :param y: true labels, for an untargeted patch.
    :param patch_size: pixels or fraction of the image area (see :func:`geometry.patch_shape`).
    :param target: target class for a targeted patch, or None for an untargeted one.
    :param max_iter: passes over ``x`` (ART's ``max_iter`` counts epochs of its data loader, not steps).
    :return: the patch, ``(C, h, w)`` in [0, 1].
    """
    x = check_estimator_inputs(estimator, x)
    labels, targeted = _attack_labels(estimator, x, y, target)
    _, height, width = estimator.input_shape
    shape = patch_shape(patch_size, (height, width))
    if shape[0] != shape[1]:
        raise ValueError(f"ART's AdversarialPatchPyTorch trains square patches only, got {shape}")
    scale = shape[0] / min(height, width)
    attack = AdversarialPatchPyTorch(
        estimator, rotation_max=0.0, scale_min=scale, scale_max=scale, learning_rate=learning_rate,
        max_iter=max_iter, batch_size=batch_size, patch_shape=(x.shape[1], *shape), patch_type="square",
        optimizer="Adam", targeted=targeted, verbose=verbose,
    )
    patch, _ = attack.generate(x, y=np.eye(estimator.nb_classes, dtype=np.float32)[labels])
    return _as_rendered_by_art(estimator, np.clip(patch, 0.0, 1.0).astype(np.float32), scale)


def _as_rendered_by_art(estimator, patch: np.ndarray, scale: float) -> np.ndarray:
    """The ``h x w`` pixels ART pastes for ``patch`` at an integer location.

    ART renders its patch through a bilinear resize to the image size and a nearest-neighbour affine map, so the
    pasted pixels are not the raw patch array; pasting the raw array would evaluate a patch the attack never
    trained. Rendering it once at location (0, 0) on two backgrounds gives the pasted pixels exactly.
    """
    channels, side, _ = patch.shape
    renderer = AdversarialPatchPyTorch(
        estimator, rotation_max=0.0, scale_min=scale, scale_max=scale, max_iter=1, batch_size=1,
        patch_shape=patch.shape, patch_location=(0, 0), patch_type="square", targeted=False, verbose=False,
    )
    image_shape = (1, channels, *estimator.input_shape[1:])
    on_black = renderer.apply_patch(np.zeros(image_shape, np.float32), scale=scale, patch_external=patch)
    on_white = renderer.apply_patch(np.ones(image_shape, np.float32), scale=scale, patch_external=patch)
    covered = np.all(on_black == on_white, axis=1)[0]
    if covered.sum() != side * side or not covered[:side, :side].all():
        raise RuntimeError("ART rendered the patch outside the expected square; cannot extract it")
    return on_black[0, :, :side, :side].astype(np.float32)


def lavan_patch(
    estimator,
    x: np.ndarray,
    y: np.ndarray | None = None,
    patch_size: PatchSize = 0.1,
    target: int | None = None,
    max_iter: int = 250,
    step_size: float = 0.02,
    batch_size: int = 64,
    seed: int = 0,
    verbose: bool = True,
) -> np.ndarray:
    """Train a LaVAN-style universal patch: signed-gradient steps at integer random locations.

    Every step draws a batch of training images and a fresh location for each, pastes the patch, takes
    ``estimator.loss_gradient`` (white-box through every defence the estimator has) and moves the patch by
    ``step_size`` along the sign of the gradient summed over its pasted copies.

    :return: the patch, ``(C, h, w)`` in [0, 1].
    """
    x = check_estimator_inputs(estimator, x)
    labels, targeted = _attack_labels(estimator, x, y, target)
    channels, height, width = estimator.input_shape
    shape = patch_shape(patch_size, (height, width))
    rng = np.random.default_rng(seed)
    patch = rng.uniform(0.0, 1.0, size=(channels, *shape)).astype(np.float32)
    direction = -1.0 if targeted else 1.0
    one_hot = np.eye(estimator.nb_classes, dtype=np.float32)[labels]
    for _ in trange(max_iter, desc="LaVAN patch", disable=not verbose):
        index = rng.choice(len(x), size=min(batch_size, len(x)), replace=False)
        locations = random_locations(len(index), (height, width), shape, rng)
        patched, _ = paste_patch(x[index], patch, locations)
        grad = estimator.loss_gradient(patched, one_hot[index])
        patch_grad = np.zeros_like(patch)
        for g, (row, col) in zip(grad, locations, strict=True):
            patch_grad += g[:, row : row + shape[0], col : col + shape[1]]
        patch = np.clip(patch + direction * step_size * np.sign(patch_grad), 0.0, 1.0)
    return patch.astype(np.float32)

