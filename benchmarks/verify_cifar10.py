"""Certificate soundness on CIFAR-10: ``verify_certificates`` for every certifier's example config.

For each of robust masking (Mask-DS), ScaleCert, MRS and ART's column de-randomized smoothing, the estimator is
built from its config in ``examples/configs/`` (as ``art-patch-defenses verify`` does), the config's data slice
is enlarged to ``--n`` class-balanced shared test images (seed 0) so that at least ``--n-certified`` (200) samples
are certified for a 5x5 patch (2.4%), and each certified sample is attacked at uniformly random places (MRS: one
place per sample; its certificate is for one mask); places and iterations per certifier in ``CERTIFIERS``.
Violations must be 0.

Run: ``.venv/bin/python benchmarks/verify_cifar10.py`` (``--certifiers mrs`` for one; each writes its entry into
``benchmarks/results/verify_cifar10.json``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import RESULTS_DIR, write_result  # noqa: E402

from art_patch_defenses.data import load_dataset  # noqa: E402
from art_patch_defenses.evaluation.config import load_config  # noqa: E402
from art_patch_defenses.evaluation.runner import build_estimator  # noqa: E402
from art_patch_defenses.evaluation.verify import verify_certificates  # noqa: E402

CONFIGS = Path(__file__).resolve().parents[1] / "examples" / "configs"
#: config, images to certify, placements per certified sample, PGD iterations, attacked images per PGD call. The
#: column-band models (robust masking on Mask-DS, de-randomized smoothing) run 32 band copies per image in every
#: forward and backward pass (6 s per PGD step for 16 images on one core here), so they get 2 places x 3 iterations.
CERTIFIERS = {
    "robust_masking": ("cifar10_robust_masking_masked_pgd.json", 640, 2, 3, 16),
    "scalecert": ("cifar10_scalecert_masked_pgd.json", 560, 4, 10, 64),
    "mrs": ("cifar10_mrs_masked_pgd_eot.json", 400, 1, 10, 64),
    "art_derandomized_smoothing": ("cifar10_art_derandomized_smoothing.json", 640, 2, 3, 16),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--certifiers", nargs="+", choices=list(CERTIFIERS), default=list(CERTIFIERS))
    parser.add_argument("--n-certified", type=int, default=200)
    args = parser.parse_args()
    path = RESULTS_DIR / "verify_cifar10.json"
    previous = json.loads(path.read_text()) if path.is_file() else {"config": {}, "results": {}}
    for name in args.certifiers:
        file, n, placements, max_iter, batch_size = CERTIFIERS[name]
        config = load_config(CONFIGS / file)["scenarios"][0]
        test = load_dataset("cifar10", "test", n=n, seed=0)
        report = verify_certificates(build_estimator(config), test.x, test.y, n_certified=args.n_certified,
                                     placements=placements, max_iter=max_iter, eps_step=0.1,
                                     batch_size=batch_size)
        report["command"] = "python " + " ".join(sys.argv)
        print(json.dumps(report), flush=True)
        previous = json.loads(path.read_text()) if path.is_file() else previous  # other runs may have written
        previous["results"][name] = report
        previous["config"][name] = {"config_file": f"examples/configs/{file}", "model": config["model"],
                                    "data": f"shared CIFAR-10 JPEG test split, {n} class-balanced images, seed 0",
                                    "patch_pixels": [5, 5]}
        write_result("verify_cifar10", previous["config"], previous["results"])


if __name__ == "__main__":
    main()
