"""The embedded MNIST certifiers of the default scenario: clean and certified accuracy, certify seconds per digit.

Each certifier row of ``art_patch_defenses/evaluation/default_scenario.json`` (robust masking, MRS, ScaleCert,
PatchCleanser) is built exactly as the scenario builds it (its ``model`` block: module, factory, ``model_kwargs``)
and measured with the estimator's own ``eval_and_certify`` on the 1,000 embedded test digits:

- ``clean_accuracy``: the defended prediction is the label (an abstention or alert is never right);
- ``certified_accuracy``: the certificate of the certifier's kind holds for the label at its own patch size
  (recovery: no patch changes the label; detection: no patch makes it wrong without an alert; region-L2: an L2
  radius of at least 25/255 inside the localised region);
- ``certify_seconds_per_digit``: wall time of that one ``eval_and_certify`` call over the digits, with the torch
  threads in ``environment``.

``--split holdout`` measures on the 500 class-balanced training digits (seed 0) the ``train_embedded --holdout
500`` runs leave out, with the weights those runs wrote to ``--weights-dir`` (same file names as the committed
ones) and any ``--set certifier.key=value`` overrides of the settings: how the settings were chosen without the
test digits. It prints its table only; ``benchmarks/results/embedded_models.json`` is the test run.

Run: ``OMP_NUM_THREADS=1 .venv/bin/python benchmarks/embedded_models.py``.
"""

from __future__ import annotations

import argparse
import copy
import importlib
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import write_result  # noqa: E402

from art_patch_defenses.data import load_dataset  # noqa: E402
from art_patch_defenses.data.datasets import balanced_subset  # noqa: E402
from art_patch_defenses.models import sha256_of  # noqa: E402
from art_patch_defenses.models.registry import weights_path  # noqa: E402
from art_patch_defenses.paths import checkpoints_dir  # noqa: E402

SCENARIO = Path(__file__).resolve().parents[1] / "art_patch_defenses" / "evaluation" / "default_scenario.json"
#: The certifier rows, by the module of their model factory.
CERTIFIERS = {"art_patch_defenses.robust_masking": "robust_masking", "art_patch_defenses.mrs": "mrs",
              "art_patch_defenses.scalecert": "scalecert", "art_patch_defenses.patchcleanser": "patchcleanser"}
#: The training digits ``train_embedded --holdout 500`` leaves out.
HOLDOUT = 500


def certifier_rows(path: Path = SCENARIO) -> dict[str, dict[str, Any]]:
    """``{certifier: model block}`` of the scenario's certifier rows (one row each)."""
    rows = {}
    for scenario in json.loads(path.read_text())["scenarios"]:
        model = scenario["model"]
        if model["module"] in CERTIFIERS:
            rows[CERTIFIERS[model["module"]]] = model
    missing = sorted(set(CERTIFIERS.values()) - set(rows))
    if missing:
        raise ValueError(f"{path} has no row for {', '.join(missing)}")
    return rows


def parse_overrides(items: list[str]) -> dict[str, dict[str, Any]]:
    """``["scalecert.top_k=0.15", ...]`` -> ``{"scalecert": {"top_k": 0.15}}`` (values read as JSON)."""
    overrides: dict[str, dict[str, Any]] = {}
    for item in items:
        target, _, value = item.partition("=")
        certifier, _, key = target.partition(".")
        if certifier not in CERTIFIERS.values() or not key or not value:
            raise ValueError(f"--set takes certifier.key=value with certifier one of "
                             f"{', '.join(CERTIFIERS.values())}, got {item!r}")
        overrides.setdefault(certifier, {})[key] = json.loads(value)
    return overrides


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--split", choices=("test", "holdout"), default="test")
    parser.add_argument("--weights-dir", type=Path, default=None,
                        help="holdout runs' checkpoints (file names as in checkpoints/); needed with --split holdout")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="CERTIFIER.KEY=VALUE",
                        help="change a certifier's model_kwargs (holdout tuning only)")
    parser.add_argument("--only", nargs="+", choices=sorted(CERTIFIERS.values()), default=None)
    args = parser.parse_args()
    if args.split == "holdout" and args.weights_dir is None:
        parser.error("--split holdout needs --weights-dir: the committed weights have seen the holdout digits")
    if args.split == "test" and (args.weights_dir is not None or args.overrides):
        parser.error("the test run measures the scenario's own settings and weights: no --weights-dir or --set")
    overrides = parse_overrides(args.overrides)
    torch.set_num_threads(1)

    if args.split == "test":
        data = load_dataset("mnist_embedded", "test")
    else:
        train = load_dataset("mnist_embedded", "train")
        held_out = balanced_subset(train.y, HOLDOUT, seed=0)
        data = type(train)(x=train.x[held_out], y=train.y[held_out], class_names=train.class_names)
    config: dict[str, Any] = {"scenario": str(SCENARIO.relative_to(SCENARIO.parents[2])), "split": args.split,
                              "digits": len(data), "certifiers": {}}
    results: dict[str, Any] = {}
    images: dict[str, int] = {}
    rows = certifier_rows()
    for certifier in args.only or list(rows):
        model = copy.deepcopy(rows[certifier])
        kwargs = {**model["model_kwargs"], **overrides.get(certifier, {})}
        factory = getattr(importlib.import_module(model["module"]), model["name"])  # registers its models
        if args.weights_dir is not None:
            committed = weights_path(kwargs["name"], kwargs["weights"])
            kwargs["weights"] = str(args.weights_dir / committed.relative_to(checkpoints_dir()))
        path = weights_path(kwargs["name"], kwargs["weights"])
        estimator = factory(kwargs)
        start = time.perf_counter()
        clean, certified = estimator.eval_and_certify(data.x, data.y)
        seconds = (time.perf_counter() - start) / len(data)
        config["certifiers"][certifier] = {"model_kwargs": kwargs, "weights_sha256": sha256_of(path),
                                           "certificate_kind": estimator.certificate_kind}
        results[f"{certifier}.clean_accuracy"] = clean
        results[f"{certifier}.certified_accuracy"] = certified
        results[f"{certifier}.certify_seconds_per_digit"] = round(seconds, 4)
        images.update(dict.fromkeys((f"{certifier}.clean_accuracy", f"{certifier}.certified_accuracy"), len(data)))
        print(f"{certifier:15s} clean {clean:.3f} certified {certified:.3f} ({estimator.certificate_kind}) "
              f"{seconds:.4f} s/digit  {json.dumps(kwargs)}", flush=True)
    if args.split == "test":
        write_result("embedded_models", config, results, images=images)
    else:
        print(json.dumps({"config": config, "results": results}, indent=2))


if __name__ == "__main__":
    main()
