"""The ``art-patch-defenses`` command.

- ``art-patch-defenses evaluate [CONFIG]``: run an Armory-style config or suite (default: the embedded
  scenario, which needs nothing but the install), print the table, write JSON, Markdown and PNG reports.
- ``art-patch-defenses verify CONFIG``: attack the certified samples of every certifier in a config at many places
  and report certificate violations (a sound certifier has none).
- ``art-patch-defenses finetune --depth 56``: fine-tune a pretrained CIFAR ResNet on the JPEG training set.

``evaluate`` and ``verify`` launched by ``torchrun --nproc-per-node N -m art_patch_defenses.cli ...`` run sharded
(:mod:`art_patch_defenses.evaluation.distributed`): each rank computes its chunks, rank 0 merges them and writes
and prints the results; the other ranks print nothing but warnings. ``--sharded`` runs the same chunked scheme in
one process (its results equal any number of processes'), ``--resume`` continues such a run in its output directory.

For evaluate and verify, a config error or an unusable output directory exits with 2 and ``error: ...`` before any
computation; Ctrl-C exits with 130 (SIGTERM with 143) after the finished scenarios are written. The library's
``logging`` lines (``scenario: ...``) go to stderr unless ``--quiet`` (which keeps warnings).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

#: Exit status after Ctrl-C (128 + SIGINT), as shells report it.
EXIT_INTERRUPTED = 130
#: Exit status after SIGTERM (128 + 15).
EXIT_TERMINATED = 143


def _quiet_environment() -> None:
    """Keep caches out of the user's way and everything offline (nothing downloads weights at run time)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _prepare_art_config() -> None:
    """Write ART's ``~/.art/config.json`` (ART's own default content) before any process imports ART.

    ART 1.20 creates it on first import without a lock: torchrun ranks starting together on a machine without it
    race, and a rank that sees the folder missing but the file present dies with ``NameError: _config``. Each rank
    writing the file atomically (a temp file renamed into place) before its own import closes that window.
    """
    home = os.path.expanduser("~")
    folder = os.path.join(home if os.access(home, os.W_OK) else "/tmp", ".art")  # ART's own choice of folder
    config_path = os.path.join(folder, "config.json")
    if os.path.exists(config_path):
        return
    try:
        os.makedirs(folder, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=folder, suffix=".tmp", delete=False, encoding="utf8") as f:
            json.dump({"ART_DATA_PATH": os.path.join(folder, "data")}, f, indent=4)
        os.replace(f.name, config_path)
    except OSError:  # an unwritable home: ART warns and carries on, and so do we
        pass


def _positive(kind: type) -> Callable[[str], int | float]:
    """An argparse ``type=`` that takes positive ints (``kind=int``) or positive finite numbers, and says so."""

    def parse(text: str) -> int | float:
        try:
            value = kind(text)
        except ValueError:
            value = None
        if value is None or not value > 0 or value == float("inf"):
            raise argparse.ArgumentTypeError(f"expected a positive {'integer' if kind is int else 'number'}, "
                                             f"got {text!r}")
        return value

    parse.__name__ = f"positive {kind.__name__}"
    return parse


class _StderrHandler(logging.StreamHandler):
    """A handler that writes to whatever ``sys.stderr`` is when a line is logged (tests and tqdm replace it)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


class _Formatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        message = super().format(record)
        return message if record.levelno < logging.WARNING else f"{record.levelname.lower()}: {message}"


@contextlib.contextmanager
def _library_logging(quiet: bool) -> Iterator[None]:
    """Show the package's log lines on stderr for one command (INFO, or WARNING with ``--quiet``); the logger is
    left as it was afterwards, so that calling :func:`main` twice (tests) adds nothing twice."""
    logger = logging.getLogger("art_patch_defenses")
    handler = _StderrHandler()
    handler.setFormatter(_Formatter("%(message)s"))
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.WARNING if quiet else logging.INFO)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C so that the runner writes what finished and marks the run interrupted."""


@contextlib.contextmanager
def _terminate_as_interrupt() -> Iterator[None]:
    """Turn SIGTERM (``kill``, a batch scheduler's stop) into :class:`Terminated` for one command; by default it
    would end the process with nothing written."""
    if threading.current_thread() is not threading.main_thread():  # only the main thread may set handlers
        yield
        return

    def terminate(signum, frame) -> None:
        raise Terminated("SIGTERM")

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def _add_shard_options(parser: argparse.ArgumentParser, positive_int: Callable, what: str) -> None:
    parser.add_argument("--sharded", action="store_true",
                        help=f"{what} in fixed chunks with per-chunk records under OUTPUT_DIR/shards, as a torchrun "
                             "launch does (the results do not depend on the number of processes)")
    parser.add_argument("--resume", action="store_true",
                        help=f"continue a sharded {what} of the same config in --output-dir: finished chunks are "
                             "read back, not computed again (implies --sharded)")
    parser.add_argument("--chunk-per-class", type=positive_int, default=1,
                        help="images of each class per chunk (default 1: shards differ by at most one image per "
                             "class; larger chunks batch better)")


def _add_n_images(parser: argparse.ArgumentParser, positive_int: Callable) -> None:
    parser.add_argument("--n-images", dest="n", type=positive_int, default=argparse.SUPPRESS,
                        help="the same as --n, for torchrun command lines (torchrun's own parser takes --n for an "
                             "abbreviation of its options)")


def _is_main_rank() -> bool:
    return os.environ.get("RANK", "0") in ("", "0")


def main(argv: list[str] | None = None) -> int:
    _quiet_environment()
    _prepare_art_config()
    parser = argparse.ArgumentParser(prog="art-patch-defenses", description="Adversarial patch defences for ART")
    commands = parser.add_subparsers(dest="command", required=True)
    evaluate = commands.add_parser("evaluate", help="run a scenario config or suite")
    evaluate.add_argument("config", nargs="?", default=None, help="JSON/YAML config (default: embedded scenario)")
    evaluate.add_argument("--output-dir", default=None, help="where to write results (default outputs/...); "
                          "refused if it holds another run's results, unless --overwrite")
    evaluate.add_argument("--overwrite", action="store_true",
                          help="replace another run's results in --output-dir (only the files a run writes)")
    evaluate.add_argument("--quiet", action="store_true", help="no progress bars or progress lines")
    positive_int, positive_float = _positive(int), _positive(float)
    evaluate.add_argument("--n", type=positive_int, default=None, help="quick run: evaluation images per scenario")
    _add_n_images(evaluate, positive_int)
    evaluate.add_argument("--max-iter", type=positive_int, default=None,
                          help="quick run: iterations of every attack (each max_iter, apgd_iter and PGD run)")
    evaluate.add_argument("--seed", type=_non_negative_int, default=None,
                          help="one seed for every scenario's attack: placements, random starts, restarts")
    _add_shard_options(evaluate, positive_int, "run")
    verify = commands.add_parser("verify", help="attack certified samples and count certificate violations")
    verify.add_argument("config", help="JSON/YAML config or suite whose model blocks build certifiers")
    verify.add_argument("--n", type=positive_int, default=None,
                        help="evaluation images (default: the config's dataset.n)")
    _add_n_images(verify, positive_int)
    verify.add_argument("--n-certified", type=positive_int, default=200, help="certified samples to attack")
    verify.add_argument("--placements", type=positive_int, default=4, help="random patch placements per sample")
    verify.add_argument("--max-iter", type=positive_int, default=10, help="PGD iterations per attack")
    verify.add_argument("--eps-step", type=positive_float, default=0.1, help="L-inf PGD step (MRS: radius / 4, L2)")
    verify.add_argument("--batch-size", type=positive_int, default=64,
                        help="attacked images per batch (samples x placements; a sharded verify spreads the batches)")
    verify.add_argument("--output-dir", default=None, help="where to write verify.json (default outputs/...)")
    verify.add_argument("--overwrite", action="store_true",
                        help="discard an earlier sharded verify's chunks in --output-dir")
    verify.add_argument("--quiet", action="store_true", help="no progress bars or progress lines")
    _add_shard_options(verify, positive_int, "verify")
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

    quiet = args.quiet or not _is_main_rank()  # one rank speaks for a sharded run
    with _library_logging(quiet), _terminate_as_interrupt():
        try:
            return _verify(args) if args.command == "verify" else _evaluate(args)
        except Terminated:
            print("terminated (SIGTERM)", file=sys.stderr)
            return EXIT_TERMINATED
        except KeyboardInterrupt:
            print("interrupted (Ctrl-C)", file=sys.stderr)
            return EXIT_INTERRUPTED


def _evaluate(args: argparse.Namespace) -> int:
    from art_patch_defenses.evaluation.report import markdown_table
    from art_patch_defenses.evaluation.runner import run_suite

    # run_suite validates the config and checks the output directory before it computes anything; a ValueError
    # later on (the runner has written what finished and said where) is reported the same way.
    start = time.time()
    try:
        summary = run_suite(args.config, args.output_dir, verbose=not args.quiet, overwrite=args.overwrite,
                            n=args.n, max_iter=args.max_iter, seed=args.seed, sharded=args.sharded or None,
                            resume=args.resume, images_per_class=args.chunk_per_class)
    except (ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if summary.get("rank", 0) != 0:  # rank 0 reports the merged run
        return 0
    print()
    print(summary["_description"])
    print(markdown_table(summary["outcomes"]))
    for kind, path in summary["files"].items():
        print(f"{kind}: {path}")
    print(f"done: {len(summary['outcomes'])} scenarios in {time.time() - start:.0f} s; outputs in "
          f"{summary['output_dir']}")
    return 0


def _verify(args: argparse.Namespace) -> int:
    from art_patch_defenses.evaluation.config import load_config
    from art_patch_defenses.evaluation.results import check_output_dir
    from art_patch_defenses.evaluation.verify import verify_suite

    output_dir = args.output_dir or Path("outputs") / time.strftime("verify-%Y%m%d-%H%M%S")
    try:  # before any computation: the config, then the output directory
        load_config(args.config)
        if _is_main_rank():
            check_output_dir(output_dir)
    except (ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    try:
        summary = verify_suite(args.config, output_dir, n=args.n, verbose=not args.quiet,
                               n_certified=args.n_certified, placements=args.placements, max_iter=args.max_iter,
                               eps_step=args.eps_step, batch_size=args.batch_size, sharded=args.sharded or None,
                               resume=args.resume, overwrite=args.overwrite, images_per_class=args.chunk_per_class)
    except (ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if summary.get("rank", 0) != 0:  # rank 0 reports the merged run
        return 0
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
