"""Wrap your own ART PyTorchClassifier with feature norm clipping (FNC) in a few lines.

Run: .venv/bin/python examples/fnc_wrap_your_classifier.py
(needs ../shared for the CIFAR-10 data and checkpoints/ for the fine-tuned ResNet-20; about a minute)
"""

import numpy as np
from art.attacks.evasion import ProjectedGradientDescent

from art_patch_defenses.data import load_dataset
from art_patch_defenses.fnc import fnc_classifier
from art_patch_defenses.models import build_model, make_classifier

# 1. Your classifier: any ART PyTorchClassifier around a CNN with residual / inverted-residual / inception blocks.
classifier = make_classifier(build_model("cifar_resnet20", "finetuned"), "cifar_resnet20")

# 2. The defended classifier: FNC after every residual block, then one pass of BatchNorm re-estimation.
defended = fnc_classifier(classifier, alpha=1.2)
defended.recalibrate_batchnorm(load_dataset("cifar10", "train", n=5000, seed=0).x, verbose=False)

# 3. Any ART attack now attacks the defended forward pass white-box (FNC is differentiable).
test = load_dataset("cifar10", "test", n=200, seed=0)
mask = np.zeros_like(test.x)
mask[:, :, 11:21, 11:21] = 1  # a 10x10 patch (9.8% of the image) in the centre
attack = ProjectedGradientDescent(defended, eps=1.0, eps_step=0.05, max_iter=20, verbose=False)
x_adv = attack.generate(test.x, test.y, mask=mask)

for name, model in (("undefended", classifier), ("FNC", defended)):
    clean = np.mean(model.predict(test.x).argmax(1) == test.y)
    print(f"{name}: clean {clean:.3f}")
print(f"FNC under a white-box masked PGD patch: {np.mean(defended.predict(x_adv).argmax(1) == test.y):.3f}")
