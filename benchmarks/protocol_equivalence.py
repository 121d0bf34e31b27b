"""The certifier protocol changed no certificate: each CIFAR-10 certifier's outputs, computed by the code before the
protocol (a checkout of an earlier commit) and by this checkout, on the same images with the same weights.

Each certifier is built from its example config's model block (``examples/configs``); per image it records the
defended label (-1 for an abstention or alert), the certified flag for the true label, and where the method has
them, the radius and the alert. Exact equality is required (``max_abs_radius_difference`` for MRS is reported
too). ``n`` images per certifier: a class-balanced slice of the shared test split (seed 0), fewer for the costly
certifiers (PatchCleanser: 666 masked copies per image; MRS: localisation plus 1,100 noise samples per image).

Run: ``.venv/bin/python benchmarks/protocol_equivalence.py --reference-commit d498809`` (makes a git worktree of
that commit in a temp folder, runs both sides in separate processes, one torch thread each).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
#: certifier -> (example config, images)
CERTIFIERS = {
    "robust_masking": ("cifar10_robust_masking_masked_pgd.json", 200),
    "derandomized_smoothing": ("cifar10_art_derandomized_smoothing.json", 200),
    "scalecert": ("cifar10_scalecert_masked_pgd.json", 200),
    "patchcleanser": (None, 40),
    "mrs": ("cifar10_mrs_masked_pgd_eot.json", 20),
}
PATCHCLEANSER_MODEL = {"module": "art_patch_defenses.patchcleanser", "name": "get_art_model",
                       "model_kwargs": {"name": "cifar_resnet20", "weights": "patchcleanser", "patch_size": 5,
                                        "masks_per_axis": 6}}


def _model_block(name: str, old: bool) -> dict:
    config, _ = CERTIFIERS[name]
    if config is None:
        return PATCHCLEANSER_MODEL
    block = json.loads((REPO / "examples" / "configs" / config).read_text())["model"]
    if name == "derandomized_smoothing":
        block = {**block, "model_kwargs": {k: v for k, v in block["model_kwargs"].items() if k != "patch_size"}}
        block["module"] = "art_patch_defenses.models.art_baselines" if old else "art_patch_defenses.baselines"
    return block


def outputs(name: str, old: bool, n: int) -> dict[str, np.ndarray]:
    """Run one certifier with the code on ``sys.path`` (old: the API before the protocol)."""
    import importlib

    from art_patch_defenses.data import load_dataset

    block = _model_block(name, old)
    estimator = getattr(importlib.import_module(block["module"]), block["name"])(block["model_kwargs"], {}, None)
    test = load_dataset("cifar10", "test", n=n, seed=0)
    x, y = test.x, test.y
    if name == "derandomized_smoothing":
        if old:
            _, right, prediction = estimator.ablator.certify(estimator.predict(x), size_to_certify=5, label=y)
            return {"prediction": prediction.numpy(), "certified": right.numpy().astype(bool)}
        result = estimator.certify(x, y)
        return {"prediction": result.prediction, "certified": result.certified}
    if name == "mrs":
        result = estimator.certify(x, seed=0) if old else estimator.certify(x, seed=0)
        right = (result.prediction == y) & (result.radius >= 25 / 255) & (result.radius > 0)
        return {"prediction": result.prediction, "certified": right, "radius": result.radius}
    result = estimator.certify(x, y)
    scores = estimator.predict(x)
    if old:
        labels = np.where(np.any(scores != 0, axis=1), scores.argmax(1), -1)
    else:
        labels = estimator.predict_labels(x)
    out = {"prediction": result.prediction, "certified": result.certified, "predict_labels": labels}
    if result.alert is not None:
        out["alert"] = result.alert
    return out


def _side(args: argparse.Namespace) -> None:
    if args.old:  # the editable install of this checkout must not shadow the old one
        sys.meta_path[:] = [f for f in sys.meta_path if "editable" not in getattr(f, "__module__", "").lower()]
        sys.path.insert(0, args.repo)
    import torch

    torch.set_num_threads(1)
    out = outputs(args.side, args.old, args.n)
    np.savez(args.out, **out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference-commit", default="d498809")
    parser.add_argument("--certifiers", nargs="+", choices=list(CERTIFIERS), default=list(CERTIFIERS))
    parser.add_argument("--side", choices=list(CERTIFIERS), help=argparse.SUPPRESS)
    parser.add_argument("--old", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--repo", help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.side:
        _side(args)
        return

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from common import accuracy_intervals, write_result

    work = Path(tempfile.mkdtemp(prefix="protocol-equivalence-"))
    reference = work / "reference"
    subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(reference), args.reference_commit],
                   check=True, capture_output=True)
    commit = subprocess.run(["git", "-C", str(reference), "rev-parse", "HEAD"], check=True, capture_output=True,
                            text=True).stdout.strip()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "ART_PATCH_DEFENSES_SHARED": str(REPO.parent / "shared")}
    results: dict = {}
    try:
        for name in args.certifiers:
            n = CERTIFIERS[name][1]
            files = {}
            start = time.time()
            for side, extra in (("old", ["--old", "--repo", str(reference)]), ("new", [])):
                files[side] = work / f"{name}_{side}.npz"
                subprocess.run([sys.executable, __file__, "--side", name, "--n", str(n), "--out", str(files[side]),
                                *extra], check=True, env=env)
            old, new = np.load(files["old"]), np.load(files["new"])
            row = {"images": n, "seconds_both_sides": round(time.time() - start, 1)}
            for key in old.files:
                row[f"{key}_identical"] = bool(np.array_equal(old[key], new[key]))
            if "radius" in old.files:
                row["max_abs_radius_difference"] = float(np.abs(old["radius"] - new["radius"]).max())
            row["certified_accuracy_old"] = float(old["certified"].mean())
            row["certified_accuracy_new"] = float(new["certified"].mean())
            row["intervals"] = accuracy_intervals(row, {"certified_accuracy_old": len(old["certified"]),
                                                        "certified_accuracy_new": len(new["certified"])})
            results[name] = row
            print(name, row, flush=True)
    finally:
        subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(reference)], capture_output=True)
    results["all_identical"] = all(v for row in results.values() if isinstance(row, dict)
                                   for k, v in row.items() if k.endswith("_identical"))
    config = {"reference_commit": commit, "configs": {k: v[0] or "PatchCleanser model block in this script"
                                                      for k, v in CERTIFIERS.items()},
              "data": "shared CIFAR-10 JPEG test split, class-balanced slice of n images, seed 0",
              "threads": "one torch thread per side, sides run one after another"}
    write_result("protocol_equivalence", config, results)


if __name__ == "__main__":
    main()
