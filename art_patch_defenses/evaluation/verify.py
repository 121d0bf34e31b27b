"""Certificate soundness as a feature: attack the certified samples of a certifier and count violations.

A certificate says that no patch of a given size, anywhere, changes the certified output. :func:`verify_certificates`
takes the samples a certifier's own ``certify`` certifies (right and certified), pastes a patch at several
placements per sample, optimises it white-box with the strongest attack that fits the certificate, and counts the
attacked samples whose output contradicts the certificate. A sound certifier gives 0; ``fooled_base`` counts the
attacks that did fool the undefended part (so the check could have failed): the base classifier, ScaleCert's
sparse model, the soft column vote, or for robust masking the unmasked sum of the local features. Certifiers and
what a violation is:

- robust masking (:class:`~art_patch_defenses.robust_masking.PyTorchRobustMasking`): masked PGD through the masking;
  a violation is a robust prediction other than the label.
- ScaleCert (:class:`~art_patch_defenses.scalecert.PyTorchScaleCert`): masked PGD against the sparse model; a
  violation is a wrong label without an alert.
- MRS (:class:`~art_patch_defenses.mrs.PyTorchMRS`): the certificate is an L2 radius for changes inside a mask, so
  each sample is certified with the patch region as its mask, attacked by L2 masked PGD with expectation over the
  noise inside 0.99 x its radius, and re-classified with fresh noise; a violation is another majority class.
- PatchCleanser (:class:`~art_patch_defenses.patchcleanser.PyTorchPatchCleanser`): masked PGD against the base
  classifier (double masking has no gradient); a violation is a double-masking label other than the label.
- ART's ``PyTorchDeRandomizedSmoothing`` (column ablation): masked PGD on the soft column vote; a violation is a
  thresholded vote for another class.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from art_patch_defenses.attacks import masked_pgd
from art_patch_defenses.attacks.eot import masked_pgd_eot
from art_patch_defenses.geometry import expand_masks, patch_masks, random_locations
from art_patch_defenses.models.art_baselines import image_shape, soft_vote_classifier
from art_patch_defenses.models.registry import classifier_params
from art_patch_defenses.validation import check_images, check_labels

CERTIFIERS = ("robust_masking", "scalecert", "mrs", "patchcleanser", "derandomized_smoothing")
_SET_FOR_PATCH = ("robust_masking", "scalecert", "patchcleanser")  # their predict runs the defence for one patch size


def certifier_kind(estimator) -> str:
    """Which certificate ``estimator`` gives (one of :data:`CERTIFIERS`); a ``ValueError`` for non-certifiers."""
    from art.estimators.certification.derandomized_smoothing import PyTorchDeRandomizedSmoothing

    from art_patch_defenses.mrs import PyTorchMRS
    from art_patch_defenses.patchcleanser import PyTorchPatchCleanser
    from art_patch_defenses.robust_masking import PyTorchRobustMasking
    from art_patch_defenses.scalecert import PyTorchScaleCert

    kinds = {PyTorchRobustMasking: "robust_masking", PyTorchScaleCert: "scalecert", PyTorchMRS: "mrs",
             PyTorchPatchCleanser: "patchcleanser", PyTorchDeRandomizedSmoothing: "derandomized_smoothing"}
    for cls, kind in kinds.items():
        if isinstance(estimator, cls):
            if kind == "derandomized_smoothing" and estimator.ablation_type != "column":
                raise ValueError("verify supports ART's de-randomized smoothing with column ablation only")
            return kind
    raise ValueError(f"{type(estimator).__name__} is not a certifier verify knows ({', '.join(CERTIFIERS)})")


def _spread(indices: np.ndarray, count: int) -> np.ndarray:
    """Up to ``count`` of ``indices`` spread evenly (a class-balanced slice is sorted by class)."""
    if len(indices) <= count:
        return indices
    return indices[np.unique(np.linspace(0, len(indices) - 1, count).astype(int))]


def _certified_right(kind: str, estimator, x: np.ndarray, y: np.ndarray, side: int) -> np.ndarray:
    if kind == "derandomized_smoothing":
        _, right, _ = estimator.ablator.certify(estimator.predict(x, batch_size=128), size_to_certify=side,
                                              label=y)
        return right.cpu().numpy().astype(bool)
    return estimator.certify(x, y, side).certified


class _Judge:
    """The attack's target for one certifier, and the output its certificate speaks about."""

    def __init__(self, kind: str, estimator) -> None:
        from art.estimators.classification import PyTorchClassifier

        self.kind, self.estimator, self.target = kind, estimator, estimator
        if kind in ("scalecert", "patchcleanser"):  # the network the defence runs (ScaleCert: SIN inside)
            params = {key: value for key, value in classifier_params(estimator).items()
                      if key in PyTorchClassifier.estimator_params}
            self.target = PyTorchClassifier(**params)
        elif kind == "derandomized_smoothing":
            self.target = soft_vote_classifier(estimator)

    def outcome(self, x_adv: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per sample: (the undefended part was fooled, the certificate was violated)."""
        if self.kind == "scalecert":
            found = self.estimator.detect(x_adv)
            return found.base_prediction != y, (found.prediction != y) & ~found.alert
        if self.kind in ("derandomized_smoothing", "patchcleanser"):
            fooled = self.target.predict(x_adv).argmax(1) != y
            return fooled, self.estimator.predict(x_adv).argmax(1) != y
        # robust masking: "fooled" = the unmasked vote (the local features summed, no masking) is wrong
        unmasked = self.estimator.local_features(x_adv).sum(axis=(1, 2)).argmax(1)
        return unmasked != y, self.estimator.predict(x_adv).argmax(1) != y


def verify_certificates(
    estimator, x: np.ndarray, y: np.ndarray, patch_size: int, n_certified: int = 200, placements: int = 4,
    max_iter: int = 10, eps_step: float = 0.1, batch_size: int = 64, seed: int = 0, verbose: bool = True,
) -> dict[str, Any]:
    """Attack up to ``n_certified`` certified samples of ``x`` at ``placements`` random places each.

    :param estimator: a certifier (see :func:`certifier_kind`), attacked white-box.
    :param patch_size: side in pixels of the patch the certificates are for (and the attack's patch).
    :param max_iter: iterations of every PGD; ``eps_step`` its L-inf step (MRS: a quarter of the radius, L2).
    :return: counts: ``certified_available`` (of ``len(x)``), ``samples`` (certified samples attacked),
        ``attacked`` (samples x placements), ``fooled_base``, ``violations``, the attack and budget.
    """
    kind = certifier_kind(estimator)
    input_shape = image_shape(estimator) if kind == "derandomized_smoothing" else tuple(estimator.input_shape)
    check_images(x, "x", input_shape=input_shape, clip_values=(0.0, 1.0))
    y = check_labels(y, len(x), estimator.nb_classes)
    image_hw = tuple(x.shape[2:])
    if not 1 <= patch_size <= min(image_hw):
        raise ValueError(f"patch_size must be in [1, {min(image_hw)}] pixels, got {patch_size}")
    if n_certified < 1 or placements < 1 or max_iter < 1:
        raise ValueError("n_certified, placements and max_iter must be at least 1")
    start = time.time()
    shape = (patch_size, patch_size)
    previous = getattr(estimator, "patch_size", None)
    if kind in _SET_FOR_PATCH and previous != patch_size:
        estimator.set_params(patch_size=patch_size)  # predict / detect must run the defence the certificate is for
    try:
        if kind == "mrs":
            counts = _verify_mrs(estimator, x, y, shape, n_certified, placements, max_iter, seed, verbose)
        else:
            counts = _verify_patch_certifier(kind, estimator, x, y, shape, n_certified, placements, max_iter,
                                             eps_step, batch_size, seed, verbose)
    finally:
        if kind in _SET_FOR_PATCH and previous != patch_size:
            estimator.set_params(patch_size=previous)
    return {"certifier": kind, "patch_pixels": list(shape), "images": len(x), **counts,
            "seconds": round(time.time() - start, 1)}


def _verify_patch_certifier(kind, estimator, x, y, shape, n_certified, placements, max_iter, eps_step, batch_size,
                            seed, verbose) -> dict:
    certified = _certified_right(kind, estimator, x, y, shape[0])
    picks = _spread(np.flatnonzero(certified), n_certified)
    judge = _Judge(kind, estimator)
    fooled = violations = 0
    per_batch = max(1, batch_size // placements)
    for start in tqdm(range(0, len(picks), per_batch), desc="verify", disable=not verbose):
        chosen = np.repeat(picks[start : start + per_batch], placements)
        images, labels = x[chosen], y[chosen]
        locations = random_locations(len(chosen), tuple(x.shape[2:]), shape, seed + start)
        masks = expand_masks(patch_masks(tuple(x.shape[2:]), shape, locations), images)
        x_adv = masked_pgd(judge.target, images, masks, labels, eps=1.0, eps_step=eps_step, max_iter=max_iter,
                           num_random_init=1, batch_size=len(chosen), verbose=False)
        base_fooled, violated = judge.outcome(x_adv, labels)
        fooled += int(base_fooled.sum())
        violations += int(violated.sum())
    attack = {
        "robust_masking": "masked PGD through the masking (white-box)",
        "scalecert": "masked PGD against the sparse model",
        "patchcleanser": "masked PGD against the base classifier, judged by double masking",
        "derandomized_smoothing": "masked PGD on the soft column vote (BPDA-style), judged by ART's vote",
    }[kind]
    return {"certified_available": int(certified.sum()), "samples": int(len(picks)),
            "placements_per_sample": placements, "attacked": int(len(picks) * placements),
            "fooled_base": fooled, "violations": violations,
            "attack": {"name": attack, "norm": "inf", "eps": 1.0, "eps_step": eps_step, "max_iter": max_iter,
                       "num_random_init": 1, "placement": f"uniformly random, seed {seed} + batch offset"}}


def _verify_mrs(estimator, x, y, shape, n_certified, placements, max_iter, seed, verbose) -> dict:
    """Certify each image with the patch region as its mask, attack inside 0.99 x the radius (L2, EOT), and
    re-classify with 1,000 fresh noise samples."""
    image_hw = tuple(x.shape[2:])
    certified = samples = fooled = violations = attacked = scanned = 0
    for i in tqdm(range(len(x)), desc="verify", disable=not verbose):
        if samples >= n_certified:
            break
        scanned += 1
        locations = random_locations(placements, image_hw, shape, seed + i)
        masks = patch_masks(image_hw, shape, locations)
        images = np.repeat(x[i : i + 1], placements, axis=0)
        result = estimator.certify(images, masks, seed=seed + i)
        ok = result.certified & (result.prediction == y[i])
        certified += int(ok.any())
        if not ok.any():
            continue
        samples += 1
        for k in np.flatnonzero(ok):
            radius = float(result.radius[k])
            x_adv = masked_pgd_eot(estimator, images[k : k + 1], masks[k : k + 1], y[i : i + 1], norm=2,
                                   eps=0.99 * radius, eps_step=radius / 4, max_iter=max_iter, eot_samples=8,
                                   restarts=1, seed=int(seed + i))
            counts = estimator._counts(x_adv[0], masks[k], 1000, 500, torch.Generator().manual_seed(int(i)))
            attacked += 1
            fooled += int(estimator.predict_base(x_adv).argmax(1)[0] != y[i])
            violations += int(counts.argmax() != y[i])
    return {"certified_available": certified, "certified_available_of": scanned, "samples": samples,
            "placements_per_sample": placements, "attacked": attacked, "fooled_base": fooled,
            "violations": violations,
            "attack": {"name": "L2 masked PGD with EOT over the noise inside the mask (attacks.eot.masked_pgd_eot)",
                       "norm": 2, "eps": "0.99 x certified radius", "eps_step": "radius / 4", "max_iter": max_iter,
                       "eot_samples": 8, "check": "arg-max of 1,000 fresh noise samples"}}


def verify_suite(source, output_dir=None, n: int | None = None, verbose: bool = True,
                 **verify_kwargs: Any) -> dict[str, Any]:
    """``art-patch-defenses verify``: :func:`verify_certificates` for every certifier scenario of a config or
    suite (the model block's estimator, the dataset slice, ``attack.patch_size``); writes ``verify.json``.

    :param n: evaluation images (default: the config's ``dataset.n``); the first certified ones, spread over the
        slice, are attacked.
    :return: ``{"reports": [...], "file": path}``; a scenario whose estimator certifies nothing is skipped with
        its reason in ``skipped``.
    """
    import json
    from pathlib import Path

    from art_patch_defenses import __version__
    from art_patch_defenses.data import load_dataset
    from art_patch_defenses.evaluation.config import load_config
    from art_patch_defenses.evaluation.runner import build_estimator, scenario_label
    from art_patch_defenses.geometry import patch_shape

    suite = load_config(source)
    reports, skipped = [], []
    for config in suite["scenarios"]:
        label = " / ".join(scenario_label(config))
        estimator = build_estimator(config)
        try:
            certifier_kind(estimator)
        except ValueError as error:
            skipped.append({"scenario": label, "reason": str(error)})
            continue
        dataset = config["dataset"]
        data = load_dataset(dataset["name"], dataset.get("eval_split", "test"), n=n or dataset.get("n"),
                            seed=dataset.get("seed", 0), root=dataset.get("root"),
                            download=dataset.get("download", False))
        side = max(patch_shape(config["attack"]["patch_size"], data.x.shape[2:]))
        if verbose:
            print(f"verify: {label}, {side}x{side} patch, {len(data)} images", flush=True)
        report = verify_certificates(estimator, data.x, data.y, side, verbose=verbose, **verify_kwargs)
        reports.append({"scenario": label, "model": config["model"], "dataset": {**dataset, "n": len(data)},
                        **report})
    output_dir = Path(output_dir or Path("outputs") / time.strftime("verify-%Y%m%d-%H%M%S"))
    output_dir.mkdir(parents=True, exist_ok=True)
    path = output_dir / "verify.json"
    path.write_text(json.dumps({"art_patch_defenses_version": __version__, "reports": reports, "skipped": skipped,
                                "timestamp": int(time.time())}, indent=2) + "\n")
    return {"reports": reports, "skipped": skipped, "file": path}
