"""Two-stage training of the PatchZero detector (section 3.3 of the paper).

Stage 1: downstream-only (DO) patches, masked PGD and masked AutoPGD against the undefended classifier at a
random location and size per image, computed once; the detector trains on benign and attacked images mixed
equally. Stage 2: at every step, half the batch is attacked online with BPDA masked PGD against the
classifier defended by the current detector, and the detector trains on that batch. The stage-2 step size is
drawn log-uniformly per step and the attack starts from the clean image or a random patch: PGD from the clean
image with small steps makes low-contrast patches that a detector trained only on random starts misses. A share
``stage2_joint`` of the stage-2 steps attacks with the evaluation's joint adaptive loss instead (the classifier's
loss through BPDA minus the detector's probability inside the patch: patches made to hide from the detector).

Training state (detector, optimizer, stage, step) is saved after every epoch / every ``checkpoint_every``
steps and ``resume=True`` continues from it.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from art_patch_defenses.attacks import MaskedAutoPGD, masked_pgd
from art_patch_defenses.attacks.ensemble import find_patch_detector, patchzero_joint_pgd
from art_patch_defenses.geometry import expand_masks, patch_masks, random_locations
from art_patch_defenses.models.checkpoints import sha256_of
from art_patch_defenses.patchzero.detector import build_detector, detector_loss
from art_patch_defenses.patchzero.preprocessor import PatchZero, _locate_checkpoint

logger = logging.getLogger(__name__)


@dataclass
class PatchZeroTrainingConfig:
    """Settings of the two-stage training (sizes in pixels of a side, budgets in [0, 1] pixel units).

    Stage 2 draws its PGD step log-uniformly in ``[stage2_step_min, stage2_step_size]`` and starts from a random
    patch with probability ``stage2_random_init`` (else from the clean image); with probability ``stage2_joint`` a
    step attacks with the joint adaptive loss (:func:`~art_patch_defenses.attacks.ensemble.patchzero_joint_pgd`,
    from a random patch) instead. ``init_from``: a detector checkpoint to continue from; stage 1 is then skipped.
    """

    patch_side_min: int = 4
    patch_side_max: int = 10
    stage1_images: int = 4000
    stage1_epochs: int = 6
    stage1_pgd_iter: int = 30
    stage1_apgd_iter: int = 30
    stage2_steps: int = 300
    stage2_pgd_iter: int = 10
    stage2_step_size: float = 0.1
    stage2_step_min: float = 0.02
    stage2_random_init: float = 0.5
    stage2_joint: float = 0.0
    batch_size: int = 64
    learning_rate: float = 1e-3
    dilation: int = 1
    seed: int = 0
    checkpoint_every: int = 50
    init_from: str = ""


def random_patch_masks(
    n: int, image_hw: tuple[int, int], side_min: int, side_max: int, rng: np.random.Generator
) -> np.ndarray:
    """``(n, H, W)`` boolean masks of square patches with a random side in [side_min, side_max] and location."""
    masks = np.zeros((n, *image_hw), dtype=bool)
    sides = rng.integers(side_min, side_max + 1, size=n)
    for i, side in enumerate(sides):
        location = random_locations(1, image_hw, (side, side), rng)
        masks[i] = patch_masks(image_hw, (side, side), location)[0]
    return masks


def downstream_only_attacks(
    classifier, x: np.ndarray, y: np.ndarray, config: PatchZeroTrainingConfig, verbose: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """Stage-1 data: masked PGD on the first half of ``x`` and masked AutoPGD on the second, each inside a
    random square patch; returns the attacked images and their patch masks ``(n, H, W)``."""
    rng = np.random.default_rng(config.seed)
    masks = random_patch_masks(len(x), x.shape[2:], config.patch_side_min, config.patch_side_max, rng)
    full = expand_masks(masks, x)
    half = len(x) // 2
    x_adv = np.empty_like(x)
    x_adv[:half] = masked_pgd(
        classifier, x[:half], full[:half], y[:half], eps=1.0, eps_step=0.05, max_iter=config.stage1_pgd_iter,
        batch_size=128, verbose=verbose,
    )
    x_adv[half:] = MaskedAutoPGD(
        classifier, eps=1.0, eps_step=0.25, max_iter=config.stage1_apgd_iter, batch_size=128, verbose=verbose
    ).generate(x[half:], y[half:], full[half:])
    return x_adv, masks


def _train_step(detector, optimizer, x: np.ndarray, masks: np.ndarray) -> float:
    detector.train()
    loss = detector_loss(detector, torch.from_numpy(x), torch.from_numpy(masks))
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return float(loss.item())


def _save_state(path: Path, detector, optimizer, stage: int, step: int, detector_settings: dict,
                fill_value: list[float]) -> None:
    torch.save(
        {"state_dict": detector.state_dict(), "optimizer": optimizer.state_dict(), "stage": stage, "step": step,
         "detector": detector_settings, "fill_value": fill_value},
        path,
    )


def train_patchzero(
    classifier,
    x_train: np.ndarray,
    y_train: np.ndarray,
    fill_value: list[float],
    work_dir: str | Path,
    config: PatchZeroTrainingConfig | None = None,
    detector_settings: dict | None = None,
    resume: bool = False,
    verbose: bool = True,
    log: Callable[[str], None] = logger.info,
):
    """Train a PatchZero detector for ``classifier`` (an undefended ART classifier, NCHW in [0, 1]).

    :param x_train: training images; stage 1 uses the first ``config.stage1_images``, stage 2 samples from all.
    :param fill_value: the dataset's mean pixel (stored in the checkpoint for :meth:`PatchZero.from_checkpoint`).
    :param work_dir: where ``training_state.pt`` (for ``resume``) and ``stage1_data.npz`` are kept.
    :return: the trained detector (eval mode).
    """
    config = config or PatchZeroTrainingConfig()
    detector_settings = detector_settings or {}
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    state_path = work_dir / "training_state.pt"
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed + 1)
    detector = build_detector(**detector_settings)
    optimizer = torch.optim.Adam(detector.parameters(), lr=config.learning_rate)
    stage, step = 1, 0
    if not 0 < config.stage2_step_min <= config.stage2_step_size:
        raise ValueError(f"need 0 < stage2_step_min <= stage2_step_size, got {config.stage2_step_min}, "
                         f"{config.stage2_step_size}")
    if not 0.0 <= config.stage2_joint <= 1.0:
        raise ValueError(f"stage2_joint is a share of the stage-2 steps, in [0, 1], got {config.stage2_joint}")
    if config.init_from:
        start_from = PatchZero.from_checkpoint(config.init_from, fill_value=fill_value)  # sha256-checked
        detector.load_state_dict(start_from.detector.state_dict())
        stage = 2
        log(f"stage 2 continues from {config.init_from} "
            f"(sha256 {sha256_of(_locate_checkpoint(config.init_from, None)[0])})")
    if resume and state_path.is_file():
        state = torch.load(state_path, map_location="cpu", weights_only=True)
        detector.load_state_dict(state["state_dict"])
        optimizer.load_state_dict(state["optimizer"])
        stage, step = int(state["stage"]), int(state["step"])
        log(f"resumed at stage {stage}, step {step}")
    log(f"config: {json.dumps(asdict(config))}")

    if stage == 1:
        data_path = work_dir / "stage1_data.npz"
        n = min(config.stage1_images, len(x_train))
        if data_path.is_file():
            with np.load(data_path) as stored:
                x_adv, masks = stored["x_adv"], stored["masks"]
        else:
            start = time.time()
            x_adv, masks = downstream_only_attacks(classifier, x_train[:n], y_train[:n], config, verbose)
            np.savez(data_path, x_adv=x_adv, masks=masks)
            log(f"stage 1: {n} downstream-only attacked images in {time.time() - start:.0f} s")
        benign_masks = np.zeros_like(masks)
        steps_per_epoch = int(np.ceil(2 * n / config.batch_size))
        for epoch in range(step // steps_per_epoch, config.stage1_epochs):
            order = rng.permutation(2 * n)
            losses = []
            for b in tqdm(range(steps_per_epoch), desc=f"stage 1 epoch {epoch + 1}", disable=not verbose):
                index = order[b * config.batch_size : (b + 1) * config.batch_size]
                attacked, benign = index[index < n], index[index >= n] - n
                x_batch = np.concatenate([x_adv[attacked], x_train[benign]])
                m_batch = np.concatenate([masks[attacked], benign_masks[benign]])
                losses.append(_train_step(detector, optimizer, x_batch, m_batch))
            step = (epoch + 1) * steps_per_epoch
            _save_state(state_path, detector, optimizer, 1, step, detector_settings, fill_value)
            log(f"stage 1 epoch {epoch + 1}/{config.stage1_epochs} loss {np.mean(losses):.4f}")
        stage, step = 2, 0
        _save_state(state_path, detector, optimizer, stage, step, detector_settings, fill_value)

    defended = _defended_copy(classifier, detector, fill_value, config.dilation)
    half = config.batch_size // 2
    bar = tqdm(range(step, config.stage2_steps), desc="stage 2 (online BPDA)", disable=not verbose)
    losses = []
    for step in bar:
        index = rng.choice(len(x_train), size=config.batch_size, replace=False)
        x_batch = x_train[index].copy()
        masks = random_patch_masks(half, x_batch.shape[2:], config.patch_side_min, config.patch_side_max, rng)
        detector.eval()
        step_size = float(np.exp(rng.uniform(np.log(config.stage2_step_min), np.log(config.stage2_step_size))))
        # drawn only when used, so runs without the joint attack keep their recorded random stream
        if config.stage2_joint > 0 and rng.random() < config.stage2_joint:
            x_batch[:half] = patchzero_joint_pgd(
                defended, find_patch_detector(defended), x_batch[:half], expand_masks(masks, x_batch[:half]),
                y_train[index[:half]], eps_step=step_size, max_iter=config.stage2_pgd_iter,
                seed=int(rng.integers(2**31)),
            )
        else:
            x_batch[:half] = masked_pgd(
                defended, x_batch[:half], expand_masks(masks, x_batch[:half]), y_train[index[:half]], eps=1.0,
                eps_step=step_size, max_iter=config.stage2_pgd_iter,
                num_random_init=int(rng.random() < config.stage2_random_init), batch_size=half, verbose=False,
            )
        m_batch = np.concatenate([masks, np.zeros((config.batch_size - half, *masks.shape[1:]), dtype=bool)])
        losses.append(_train_step(detector, optimizer, x_batch, m_batch))
        bar.set_postfix(loss=f"{np.mean(losses[-20:]):.4f}")
        if (step + 1) % config.checkpoint_every == 0 or step + 1 == config.stage2_steps:
            _save_state(state_path, detector, optimizer, 2, step + 1, detector_settings, fill_value)
            log(f"stage 2 step {step + 1}/{config.stage2_steps} loss {np.mean(losses[-config.checkpoint_every:]):.4f}")
    return detector.eval()


def _defended_copy(classifier, detector, fill_value: list[float], dilation: int):
    """The classifier with a BPDA PatchZero in front that shares ``detector`` (so it follows training)."""
    from art.estimators.classification import PyTorchClassifier

    from art_patch_defenses.models.registry import classifier_params

    params = classifier_params(classifier)
    patchzero = PatchZero(detector, fill_value, dilation=dilation, bpda=True)
    params["preprocessing_defences"] = [*(params.get("preprocessing_defences") or []), patchzero]
    return PyTorchClassifier(**params)
