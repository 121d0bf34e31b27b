"""Armory-style evaluation: scenario configs, the runner, metrics and reports (JSON, Markdown, PNG)."""

from art_patch_defenses.evaluation.config import load_config, validate_config
from art_patch_defenses.evaluation.runner import DEFAULT_SCENARIO, run_scenario, run_suite

__all__ = ["DEFAULT_SCENARIO", "load_config", "run_scenario", "run_suite", "validate_config"]
