"""The ``art-patch-defenses`` command.

- ``art-patch-defenses evaluate [CONFIG]``: run an Armory-style config or suite (default: the embedded
  scenario, which needs nothing but the install), print the table, write JSON, Markdown and PNG reports.
- ``art-patch-defenses finetune --depth 56``: fine-tune a pretrained CIFAR ResNet on the JPEG training set.
"""

from __future__ import annotations

import argparse
import os
import sys


def _quiet_environment() -> None:
    """Keep caches out of the user's way and everything offline (nothing downloads weights at run time)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main(argv: list[str] | None = None) -> int:
    _quiet_environment()
    parser = argparse.ArgumentParser(prog="art-patch-defenses", description="Adversarial patch defences for ART")
    commands = parser.add_subparsers(dest="command", required=True)
    evaluate = commands.add_parser("evaluate", help="run a scenario config or suite")
    evaluate.add_argument("config", nargs="?", default=None, help="JSON/YAML config (default: embedded scenario)")
    evaluate.add_argument("--output-dir", default=None, help="where to write results (default outputs/...)")
    evaluate.add_argument("--quiet", action="store_true", help="no progress bars")
    finetune = commands.add_parser("finetune", help="fine-tune a pretrained CIFAR ResNet on JPEG CIFAR-10")
    finetune.add_argument("args", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)

    if args.command == "finetune":
        from art_patch_defenses.models.finetune import main as finetune_main

        finetune_main(args.args)
        return 0

    from art_patch_defenses.evaluation.report import markdown_table
    from art_patch_defenses.evaluation.runner import run_suite

    try:
        summary = run_suite(args.config, args.output_dir, verbose=not args.quiet)
    except (ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print()
    print(summary["_description"])
    print(markdown_table(summary["outcomes"]))
    for kind, path in summary["files"].items():
        print(f"{kind}: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
