"""The ``art-patch-defenses`` command.

- ``art-patch-defenses evaluate [CONFIG]``: run an Armory-style config or suite (default: the embedded
  scenario, which needs nothing but the install), print the table, write JSON, Markdown and PNG reports.
- ``art-patch-defenses verify CONFIG``: attack the certified samples of every certifier in a config at many places
  and report certificate violations (a sound certifier has none).
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
    verify = commands.add_parser("verify", help="attack certified samples and count certificate violations")
    verify.add_argument("config", help="JSON/YAML config or suite whose model blocks build certifiers")
    verify.add_argument("--n", type=int, default=None, help="evaluation images (default: the config's dataset.n)")
    verify.add_argument("--n-certified", type=int, default=200, help="certified samples to attack")
    verify.add_argument("--placements", type=int, default=4, help="random patch placements per sample")
    verify.add_argument("--max-iter", type=int, default=10, help="PGD iterations per attack")
    verify.add_argument("--eps-step", type=float, default=0.1, help="L-inf PGD step (MRS: radius / 4, L2)")
    verify.add_argument("--output-dir", default=None, help="where to write verify.json (default outputs/...)")
    verify.add_argument("--quiet", action="store_true", help="no progress bars")
    # The fine-tuning parser owns its options, --help included: whatever follows "finetune" goes to it as is
    # (argparse.REMAINDER would refuse a first argument that starts with "-").
    commands.add_parser("finetune", add_help=False, help="fine-tune a pretrained CIFAR ResNet on JPEG CIFAR-10 "
                        "(art-patch-defenses finetune --help for its options)")
    args, rest = parser.parse_known_args(argv)

    if args.command == "finetune":
        from art_patch_defenses.models.finetune import main as finetune_main

        finetune_main(rest, prog=f"{parser.prog} finetune")
        return 0
    if rest:  # what parse_args does for the other sub-commands
        parser.error(f"unrecognized arguments: {' '.join(rest)}")

    if args.command == "verify":
        return _verify(args)

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


def _verify(args: argparse.Namespace) -> int:
    from art_patch_defenses.evaluation.verify import verify_suite

    try:
        summary = verify_suite(args.config, args.output_dir, n=args.n, verbose=not args.quiet,
                               n_certified=args.n_certified, placements=args.placements, max_iter=args.max_iter,
                               eps_step=args.eps_step)
    except (ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print("\n| scenario | patch | certified samples attacked | attacked patches | fooled base | violations |")
    print("|---|---|---|---|---|---|")
    for report in summary["reports"]:
        side = report["patch_pixels"][0]
        print(f"| {report['scenario']} | {side}x{side} | {report['samples']} | {report['attacked']} "
              f"| {report['fooled_base']} | {report['violations']} |")
    for skipped in summary["skipped"]:
        print(f"skipped {skipped['scenario']}: {skipped['reason']}")
    print(f"json: {summary['file']}")
    if not summary["reports"]:
        print("error: no scenario of this config builds a certifier", file=sys.stderr)
        return 2
    return 1 if any(report["violations"] for report in summary["reports"]) else 0


if __name__ == "__main__":
    sys.exit(main())
