"""Cost of Mask-DS on cropped bands against Mask-DS on ablated images, per image, in one process.

Both models are the same untrained ResNet-20 warm start (``cropped_mask_ds`` and ``mask_ds``) on 4-column bands;
every band of 16 random 32x32 images, one torch thread. The two are timed alternately, ``--repeats`` times each
(forward without gradients; forward + backward as a training step), so background load falls on both alike; the
load average before the run is recorded. Run: ``.venv/bin/python benchmarks/band_crop_cost.py``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import write_result  # noqa: E402

from art_patch_defenses.models import cifar_resnet  # noqa: E402
from art_patch_defenses.models.bagnet import cropped_mask_ds, mask_ds  # noqa: E402
from art_patch_defenses.models.registry import CIFAR10_MEAN, CIFAR10_STD  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    load = os.getloadavg()[0]
    resnet = cifar_resnet(20)
    models = {"ablated": mask_ds(resnet, CIFAR10_MEAN, CIFAR10_STD, 4).eval(),
              "cropped": cropped_mask_ds(resnet, CIFAR10_MEAN, CIFAR10_STD, 4).eval()}
    x = torch.rand(16, 3, 32, 32)
    forward = dict.fromkeys(models, 0.0)
    step = dict.fromkeys(models, 0.0)
    for _ in range(args.repeats):
        for name, model in models.items():
            start = time.perf_counter()
            with torch.no_grad():
                model(x)
            forward[name] += time.perf_counter() - start
            start = time.perf_counter()
            model(x).sum().backward()
            step[name] += time.perf_counter() - start
    per_image = len(x) * args.repeats
    write_result("band_crop_cost", {
        "models": "ResNet-20 base, 4-column bands, all 32 bands per image: mask_ds (ablated 32x32 copies) and "
                  "cropped_mask_ds (each band's 32x4 pixels plus its position)",
        "images": len(x), "repeats": args.repeats, "torch_threads": 1,
        "load_average_before": round(load, 2),
    }, {
        "forward_ms_per_image_ablated": round(1000 * forward["ablated"] / per_image, 2),
        "forward_ms_per_image_cropped": round(1000 * forward["cropped"] / per_image, 2),
        "forward_ratio": round(forward["ablated"] / forward["cropped"], 1),
        "train_step_ms_per_image_ablated": round(1000 * step["ablated"] / per_image, 2),
        "train_step_ms_per_image_cropped": round(1000 * step["cropped"] / per_image, 2),
        "train_step_ratio": round(step["ablated"] / step["cropped"], 1),
    })


if __name__ == "__main__":
    main()
