"""Certificate soundness on CIFAR-10: ``verify_certificates`` for every certifier's example config.

For each certifier (robust masking on Mask-DS and on the BagNet-style backbone, ART's column de-randomized
smoothing, ScaleCert, PatchCleanser, MRS) the estimator is built from its config in ``examples/configs/`` (as
``art-patch-defenses verify`` does) on a class-balanced slice of the shared test images (seed 0), certified for a
5x5 patch (2.4%) by its own ``certify``, and certified samples spread over the slice are attacked at uniformly
random places (MRS: one place per sample; its certificate is for one region); slice, samples, places and budget per
certifier in ``CERTIFIERS``. Violations must be 0, and ``fooled_base`` (attacks that fooled the undefended part)
above 0 for the check to have been able to fail.

Each entry is the user's ``art-patch-defenses verify`` command (printed in the JSON), run by this script. Run:
``.venv/bin/python benchmarks/verify_cifar10.py`` (``--certifiers mrs`` for one; each writes its entry into
``benchmarks/results/verify_cifar10.json``).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import RESULTS_DIR, write_result  # noqa: E402

from art_patch_defenses.data import load_dataset  # noqa: E402
from art_patch_defenses.evaluation.config import load_config  # noqa: E402
from art_patch_defenses.evaluation.runner import build_estimator  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "examples" / "configs"
#: config, images to certify, certified samples to attack, placements per sample, PGD iterations, L-inf step,
#: attacked images per PGD call. Budgets were raised from 3-10 iterations (robust masking's check then never fooled
#: its undefended part). ART's de-randomized smoothing runs 32 full-image band copies per image in every forward and
#: backward pass (0.2-0.3 s per image and step on one core), so it attacks fewer samples; robust masking runs the
#: cropped bands (11x cheaper, benchmarks/band_crop_cost.py) and gets verify's second attack on its unmasked vote at
#: its weakest places; MRS certifies and attacks one region per sample with EOT.
CERTIFIERS = {
    "robust_masking": ("cifar10_robust_masking_crop_masked_pgd.json", 2000, 100, 2, 100, 0.05, 50),
    "robust_masking_bagnet": ("cifar10_robust_masking_bagnet_masked_pgd.json", 2000, 100, 4, 50, 0.05, 100),
    "art_derandomized_smoothing": ("cifar10_art_derandomized_smoothing.json", 400, 100, 2, 20, 0.1, 20),
    "scalecert": ("cifar10_scalecert_masked_pgd.json", 560, 200, 4, 50, 0.05, 100),
    "patchcleanser": ("cifar10_patchcleanser_masked_pgd.json", 560, 200, 4, 50, 0.05, 100),
    "mrs": ("cifar10_mrs_masked_pgd_eot.json", 300, 100, 1, 20, 0.05, 64),
}


def control_run(name: str, samples: int = 50) -> dict:
    """The same check on samples the certifier gets right but does NOT certify (passed to ``verify_certificates``
    as if certified): what the attack does where nothing protects the prediction. ``fooled_base`` there shows
    the attack can fool the undefended part; its ``violations`` are the defended predictions it changed (no
    certificate is broken: these samples have none)."""
    from art_patch_defenses.certification import CertificationResult
    from art_patch_defenses.evaluation.verify import verify_certificates

    file, n, _, placements, max_iter, eps_step, batch_size = CERTIFIERS[name]
    estimator = build_estimator(load_config(CONFIGS / file)["scenarios"][0])
    test = load_dataset("cifar10", "test", n=n, seed=0)
    result = estimator.certify(test.x, test.y)
    uncertified_right = (result.prediction == test.y) & ~result.certified
    stand_in = CertificationResult(prediction=result.prediction, certified=uncertified_right, kind=result.kind,
                                   patch_size=result.patch_size)
    report = verify_certificates(estimator, test.x, test.y, n_certified=samples, placements=placements,
                                 max_iter=max_iter, eps_step=eps_step, batch_size=batch_size, certified=stand_in,
                                 verbose=False)
    return {"what": "the same attack and budget on right but uncertified samples of the same slice (spread over "
                    "it): violations here are defended predictions changed, not broken certificates",
            "uncertified_right_available": int(uncertified_right.sum()), **{
                key: report[key] for key in ("samples", "attacked", "fooled_base", "abstained", "violations")},
            "defended_changed": report["violations"]}


def command(name: str) -> list[str]:
    """The user's ``art-patch-defenses verify`` command for ``name``'s entry of ``CERTIFIERS``."""
    file, n, n_certified, placements, max_iter, eps_step, batch_size = CERTIFIERS[name]
    return ["art-patch-defenses", "verify", f"examples/configs/{file}", "--n", str(n), "--n-certified",
            str(n_certified), "--placements", str(placements), "--max-iter", str(max_iter), "--eps-step",
            str(eps_step), "--batch-size", str(batch_size), "--quiet", "--output-dir", f"outputs/verify_cifar10/{name}"]


def same_run(name: str) -> bool:
    """Whether ``name``'s output folder holds a verify.json of this entry's slice and budget."""
    path = ROOT / command(name)[-1] / "verify.json"
    if not path.is_file():
        return False
    (report,) = json.loads(path.read_text())["reports"]
    _, n, n_certified, placements, max_iter, eps_step, _ = CERTIFIERS[name]
    return (report["images"], report["placements_per_sample"], report["attack"]["max_iter"]) == (
        n, placements, max_iter) and report["samples"] <= n_certified


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--certifiers", nargs="+", choices=list(CERTIFIERS), default=list(CERTIFIERS))
    parser.add_argument("--control", nargs="+", choices=list(CERTIFIERS), default=[],
                        help="certifiers whose entry also gets the control run on right, uncertified samples")
    parser.add_argument("--reuse", action="store_true",
                        help="read the verify.json an earlier run of the same command left instead of running it")
    args = parser.parse_args()
    path = RESULTS_DIR / "verify_cifar10.json"
    for name in args.certifiers:
        file, n = CERTIFIERS[name][:2]
        executable = Path(sys.executable).with_name("art-patch-defenses")
        if not (args.reuse and same_run(name)):
            subprocess.run([str(executable), *command(name)[1:]], cwd=ROOT, check=False)  # exit 1: a violation
        (report,) = json.loads((ROOT / command(name)[-1] / "verify.json").read_text())["reports"]
        report["command"] = " ".join(command(name))
        config = load_config(CONFIGS / file)["scenarios"][0]
        if name in args.control:
            report["control_uncertified"] = control_run(name)
        print(json.dumps(report), flush=True)
        previous = json.loads(path.read_text()) if path.is_file() else {"config": {}, "results": {}}
        if any("conclusive" not in entry for entry in previous["results"].values()):
            previous = {"config": {}, "results": {}}  # entries from before the certifier protocol are replaced
        previous["results"][name] = report
        previous["config"][name] = {"config_file": f"examples/configs/{file}", "model": config["model"],
                                    "data": f"shared CIFAR-10 JPEG test split, {n} class-balanced images, seed 0",
                                    "patch_pixels": [5, 5]}
        write_result("verify_cifar10", previous["config"], previous["results"])


if __name__ == "__main__":
    main()
