"""art-patch-defenses: adversarial patch defences as components of IBM's Adversarial Robustness Toolbox."""

__version__ = "0.1.0"
