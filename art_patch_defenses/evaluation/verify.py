"""Certificate soundness as a feature: attack the certified samples of a certifier and count violations.

A certificate says that no patch of the certified size, anywhere, changes the certified output (certified
detection: without an alert). :func:`verify_certificates` takes the samples a certifier's own ``certify`` certifies
(right and certified), pastes a patch at several placements per sample, optimises it white-box against the
certifier's ``attack_surrogate()``, and counts the attacked samples whose defended output the certifier's
``violates`` calls a contradiction. A sound certifier gives 0. ``fooled_base`` counts the attacks that fooled
the undefended part (``predict_base``): when it is 0 the check could not have failed, and the report says
``"conclusive": false``.

It speaks to the certifier protocol only (:mod:`art_patch_defenses.certification`); what differs is the threat
model of the certificate kind:

- recovery and detection certificates cover any patch of the certified size: L-inf masked PGD (eps 1) inside the
  patch, judged by ``predict``;
- a region-L2 certificate (MRS) covers L2 changes inside a region: each sample is certified with the patch region
  as its region, attacked by L2 masked PGD with expectation over the noise inside 0.99 x its radius, and judged by
  ``predict`` in that region with fresh noise.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from art_patch_defenses.attacks import masked_pgd
from art_patch_defenses.attacks.eot import masked_pgd_eot
from art_patch_defenses.certification import ABSTAIN, REGION_L2, CertificationResult, CertifierMixin
from art_patch_defenses.geometry import all_locations, expand_masks, patch_masks, random_locations
from art_patch_defenses.validation import check_labels

logger = logging.getLogger(__name__)


def require_certifier(estimator) -> CertifierMixin:
    """``estimator`` if it follows the certifier protocol, else a ``ValueError`` that says so."""
    if not isinstance(estimator, CertifierMixin):
        raise ValueError(f"{type(estimator).__name__} is not a certifier: it does not follow the certifier protocol "
                         "(art_patch_defenses.certification.CertifierMixin)")
    return estimator


def _spread(indices: np.ndarray, count: int) -> np.ndarray:
    """Up to ``count`` of ``indices`` spread evenly (a class-balanced slice is sorted by class)."""
    if len(indices) <= count:
        return indices
    return indices[np.unique(np.linspace(0, len(indices) - 1, count).astype(int))]


def verify_certificates(
    estimator, x: np.ndarray, y: np.ndarray, patch_size: int | None = None, n_certified: int = 200,
    placements: int = 4, max_iter: int = 10, eps_step: float = 0.1, batch_size: int = 64, seed: int = 0,
    verbose: bool = True, grid_stride: int | None = None, certified: CertificationResult | None = None,
) -> dict[str, Any]:
    """Attack up to ``n_certified`` certified samples of ``x`` at ``placements`` random places each (or, with
    ``grid_stride``, at every place of a grid of that stride, edges included).

    :param estimator: a certifier (the certifier protocol), attacked white-box through its ``attack_surrogate``.
    :param patch_size: may only repeat the certifier's own patch size (its certificate's; MRS: the side of the
        square regions it is certified in); default: that size.
    :param max_iter: iterations of every PGD; ``eps_step`` its L-inf step (region-L2: a quarter of the radius).
    :param seed: fixes the placements and the attacks' random starts.
    :param certified: the result of this certifier's own ``certify(x, y)``, to reuse instead of certifying again
        (recovery and detection certificates; a region-L2 certificate is computed per placement).
    :return: counts: ``certified_available`` (of ``len(x)``), ``samples`` (certified samples attacked),
        ``attacked`` (samples x placements), ``fooled_base``, ``abstained`` (attacked outputs that abstained or
        alerted), ``violations``, ``conclusive``, the attack and budget.
    """
    certifier = require_certifier(estimator)
    certifier._own_patch_size(patch_size)
    x = certifier.check_inputs(x)
    y = check_labels(y, len(x), certifier.nb_classes)
    checked = [("n_certified", n_certified), ("placements", placements), ("max_iter", max_iter),
               ("batch_size", batch_size)] + ([("grid_stride", grid_stride)] if grid_stride is not None else [])
    for name, value in checked:
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    start = time.time()
    shape = (int(certifier.patch_size), int(certifier.patch_size))
    image_hw = tuple(x.shape[2:]) if certifier.channels_first else tuple(x.shape[1:3])
    grid = None if grid_stride is None else all_locations(image_hw, shape, grid_stride)

    def places(count: int, offset: int) -> np.ndarray:
        """``count`` samples' placements, ``len(grid)`` or ``placements`` per sample, sample by sample."""
        if grid is not None:
            return np.tile(grid, (count, 1))
        return random_locations(count * placements, image_hw, shape, seed + offset)

    per_sample = placements if grid is None else len(grid)
    verify = _verify_region_l2 if certifier.certificate_kind == REGION_L2 else _verify_patch_certificate
    if certified is not None and (len(certified) != len(x) or certified.kind != certifier.certificate_kind
                                  or certified.patch_size != certifier.patch_size):
        raise ValueError("certified must be this certifier's own certify(x, y) result for these images")
    counts = verify(certifier, x, y, shape, n_certified, per_sample, places, max_iter, eps_step, batch_size, seed,
                    verbose, certified)
    counts["placement"] = (f"every place of a stride-{grid_stride} grid, edges included" if grid is not None
                           else f"uniformly random, seed {seed} + sample offset")
    return {"certifier": type(certifier).__name__, "certificate_kind": certifier.certificate_kind,
            "patch_pixels": list(shape), "images": len(x), **counts,
            "conclusive": counts["fooled_base"] > 0, "seconds": round(time.time() - start, 1)}


def _verify_patch_certificate(certifier, x, y, shape, n_certified, placements, places, max_iter, eps_step,
                              batch_size, seed, verbose, result) -> dict:
    certified = (result or certifier.certify(x, y)).certified
    picks = _spread(np.flatnonzero(certified), n_certified)
    surrogate = certifier.attack_surrogate()
    fooled = violations = abstained = 0
    per_batch = max(1, batch_size // placements)
    image_hw = tuple(x.shape[2:])
    for start in tqdm(range(0, len(picks), per_batch), desc="verify", disable=not verbose):
        chosen = np.repeat(picks[start : start + per_batch], placements)
        images, labels = x[chosen], y[chosen]
        masks = expand_masks(patch_masks(image_hw, shape, places(len(chosen) // placements, start)), images)
        x_adv = masked_pgd(surrogate, images, masks, labels, eps=1.0, eps_step=eps_step, max_iter=max_iter,
                           num_random_init=1, batch_size=len(chosen), verbose=False, seed=seed + start)
        fooled += int(np.sum(certifier.predict_base(x_adv).argmax(1) != labels))
        defended = certifier.predict_labels(x_adv)
        abstained += int(np.sum(defended == ABSTAIN))
        violations += int(np.sum(certifier.violates(defended, labels)))
    return {"certified_available": int(certified.sum()), "samples": int(len(picks)),
            "placements_per_sample": placements, "attacked": int(len(picks) * placements),
            "fooled_base": fooled, "abstained": abstained, "violations": violations,
            "attack": {"name": f"masked PGD against {type(surrogate).__name__} (attack_surrogate), judged by "
                               "the certifier's predict", "norm": "inf", "eps": 1.0, "eps_step": eps_step,
                       "max_iter": max_iter, "num_random_init": 1, "random_start_seed": f"{seed} + batch offset"}}


def _verify_region_l2(certifier, x, y, shape, n_certified, placements, places, max_iter, eps_step, batch_size,
                      seed, verbose, result) -> dict:
    """Certify each image with each placement's patch region as its region, attack inside 0.99 x the radius
    (L2, EOT over the noise), and re-classify in that region with fresh noise."""
    image_hw = tuple(x.shape[2:])
    certified = samples = fooled = violations = attacked = scanned = abstained = 0
    for i in tqdm(range(len(x)), desc="verify", disable=not verbose):
        if samples >= n_certified:
            break
        scanned += 1
        masks = patch_masks(image_hw, shape, places(1, i))
        images = np.repeat(x[i : i + 1], placements, axis=0)
        labels = np.repeat(y[i : i + 1], placements)
        result = certifier.certify(images, labels, mask=masks, seed=seed + i)
        certified += int(result.certified.any())
        if not result.certified.any():
            continue
        samples += 1
        for k in np.flatnonzero(result.certified):
            radius = float(result.radius[k])
            x_adv = masked_pgd_eot(certifier, images[k : k + 1], masks[k : k + 1], labels[k : k + 1], norm=2,
                                   eps=0.99 * radius, eps_step=radius / 4, max_iter=max_iter, eot_samples=8,
                                   restarts=1, seed=seed + i)
            attacked += 1
            fooled += int(certifier.predict_base(x_adv).argmax(1)[0] != y[i])
            outcome = certifier.predict_labels(x_adv, mask=masks[k : k + 1], seed=seed + i + 1)
            abstained += int(outcome[0] == ABSTAIN)
            violations += int(certifier.violates(outcome, labels[k : k + 1])[0])
    return {"certified_available": certified, "certified_available_of": scanned, "samples": samples,
            "placements_per_sample": placements, "attacked": attacked, "fooled_base": fooled,
            "abstained": abstained, "violations": violations,
            "attack": {"name": "L2 masked PGD with EOT over the noise inside the region (attacks.eot.masked_pgd_eot)",
                       "norm": 2, "eps": "0.99 x certified radius", "eps_step": "radius / 4", "max_iter": max_iter,
                       "eot_samples": 8, "check": "the certifier's predict in the region, fresh noise"}}


def verify_suite(source, output_dir=None, n: int | None = None, verbose: bool = True,
                 **verify_kwargs: Any) -> dict[str, Any]:
    """``art-patch-defenses verify``: :func:`verify_certificates` for every certifier scenario of a config or
    suite (the model block's estimator at its own patch size, the dataset slice); writes ``verify.json``.

    :param n: evaluation images (default: the config's ``dataset.n``); the first certified ones, spread over the
        slice, are attacked.
    :return: ``{"reports": [...], "file": path}``; a scenario whose estimator certifies nothing is skipped with
        its reason in ``skipped``.
    """
    import json
    from pathlib import Path

    if n is not None and (isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1):
        raise ValueError(f"n must be a positive integer (evaluation images), got {n!r}")

    from art_patch_defenses import __version__
    from art_patch_defenses.data import load_dataset
    from art_patch_defenses.evaluation.config import load_config
    from art_patch_defenses.evaluation.results import write_atomic
    from art_patch_defenses.evaluation.runner import build_estimator, scenario_label

    suite = load_config(source)
    reports, skipped = [], []
    for config in suite["scenarios"]:
        label = " / ".join(scenario_label(config))
        estimator = build_estimator(config)
        try:
            require_certifier(estimator)
        except ValueError as error:
            skipped.append({"scenario": label, "reason": str(error)})
            continue
        dataset = config["dataset"]
        data = load_dataset(dataset["name"], dataset.get("eval_split", "test"), n=dataset.get("n") if n is None else n,
                            seed=dataset.get("seed", 0), root=dataset.get("root"),
                            download=dataset.get("download", False))
        side = int(estimator.patch_size)
        logger.info("verify: %s, %dx%d patch (the certifier's own), %d images", label, side, side, len(data))
        report = verify_certificates(estimator, data.x, data.y, verbose=verbose, **verify_kwargs)
        reports.append({"scenario": label, "model": config["model"], "dataset": {**dataset, "n": len(data)},
                        **report})
    output_dir = Path(output_dir or Path("outputs") / time.strftime("verify-%Y%m%d-%H%M%S"))
    output_dir.mkdir(parents=True, exist_ok=True)
    path = write_atomic(output_dir / "verify.json",  # a reader never sees half a file
                        json.dumps({"art_patch_defenses_version": __version__, "reports": reports,
                                    "skipped": skipped, "timestamp": int(time.time())}, indent=2) + "\n")
    return {"reports": reports, "skipped": skipped, "file": path}
