"""The ``art-patch-defenses finetune`` sub-command hands its arguments to ``models.finetune.main`` untouched."""

import pytest

import art_patch_defenses.models.finetune as finetune
from art_patch_defenses import cli


@pytest.fixture()
def finetune_calls(monkeypatch):
    """Replace the fine-tuning entry point by one that records its arguments, so nothing trains."""
    calls = []
    monkeypatch.setattr(finetune, "main", lambda argv=None, prog=None: calls.append((argv, prog)))
    return calls


@pytest.mark.parametrize(
    "argv",
    [
        ["--depth", "56"],
        ["--depth", "20", "--epochs", "0"],
        ["--help"],
        ["-h"],
        ["--depth=20", "--lr", "0.01", "--init", "finetuned", "--out", "/tmp/x.pt"],
        [],
    ],
    ids=["documented", "epochs", "help", "h", "mixed", "none"],
)
def test_finetune_arguments_reach_finetune_main(finetune_calls, argv):
    assert cli.main(["finetune", *argv]) == 0
    assert finetune_calls == [(argv, "art-patch-defenses finetune")]


def test_finetune_help_is_the_fine_tuning_parser(capsys):
    with pytest.raises(SystemExit) as stop:  # argparse exits after the help, before anything loads or trains
        cli.main(["finetune", "--help"])
    assert stop.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: art-patch-defenses finetune") and "--depth" in out and "--epochs" in out


def test_finetune_argument_errors_are_reported_by_the_fine_tuning_parser(capsys):
    with pytest.raises(SystemExit) as stop:
        cli.main(["finetune", "--depth", "21"])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert "art-patch-defenses finetune: error" in err and "invalid choice" in err


def test_the_other_sub_commands_still_refuse_unknown_arguments(finetune_calls, capsys):
    for argv in (["verify", "config.json", "--bogus"], ["evaluate", "--depth", "56"]):
        with pytest.raises(SystemExit) as stop:
            cli.main(argv)
        assert stop.value.code == 2
        assert "unrecognized arguments" in capsys.readouterr().err
    assert finetune_calls == []


def test_the_command_parses_and_records_what_was_typed(monkeypatch):
    runs = []
    monkeypatch.setattr(finetune, "finetune_cifar_resnet", lambda *args, **kwargs: runs.append((args, kwargs)))
    assert cli.main(["finetune", "--depth", "20", "--epochs", "0", "--seed", "3"]) == 0
    (args, kwargs), = runs
    depth, epochs, _, _, out, _, seed, init = args
    assert (depth, epochs, seed, init) == (20, 0, 3, "pretrained") and out.name == "cifar10_resnet20_finetuned.pt"
    assert kwargs["command"] == "art-patch-defenses finetune --depth 20 --epochs 0 --seed 3"


def test_the_module_docstring_carries_no_measured_accuracy():
    import re

    assert not re.search(r"\d+(\.\d+)?\s*%|\bpoints\b", finetune.__doc__)
    assert "checkpoints/checkpoints.json" in finetune.__doc__  # where the measured accuracies are
