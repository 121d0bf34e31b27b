"""Configs are checked before any computation, and every problem of a config is reported at once."""

import json
import math
import re

import pytest

from art_patch_defenses.cli import main
from art_patch_defenses.evaluation import runner
from art_patch_defenses.evaluation.config import (
    ConfigError,
    attack_patch_shape,
    config_problems,
    load_config,
    validate_config,
)

TINY = {
    "_description": "tiny",
    "model": {"module": "art_patch_defenses.models", "name": "get_art_model",
              "model_kwargs": {"name": "mnist_cnn", "weights": "embedded"}},
    "dataset": {"name": "mnist_embedded", "n": 30, "seed": 0, "batch_size": 16},
    "attack": {"module": "art.attacks.evasion", "name": "ProjectedGradientDescent", "type": "masked",
               "patch_size": 0.05, "location": "random", "seed": 0,
               "kwargs": {"norm": "inf", "eps": 1.0, "eps_step": 0.1, "max_iter": 5, "num_random_init": 0}},
}
PATCHZERO = {"module": "art_patch_defenses.patchzero", "name": "PatchZero.from_checkpoint",
             "kwargs": {"path": "mnist_embedded_patchzero_mnist_cnn.pt", "bpda": True}, "type": "Preprocessor"}
UNIVERSAL = {"module": "art_patch_defenses.attacks", "name": "lavan_patch", "type": "patch", "patch_size": 8,
             "kwargs": {"max_iter": 5}}
EOT = {"module": "art_patch_defenses.attacks.eot", "name": "masked_pgd_eot", "type": "masked", "patch_size": 0.05,
       "kwargs": {"eps": 1.0, "eps_step": 0.1, "max_iter": 2, "eot_samples": 2}}


def tiny(**blocks) -> dict:
    config = json.loads(json.dumps(TINY))
    config.update(json.loads(json.dumps(blocks)))
    return config


def set_key(path: str, value):
    """A change that sets ``block.key`` (or ``block.kwargs.key``) of the tiny config."""

    def change(config):
        *parents, key = path.split(".")
        target = config
        for parent in parents:
            target = target.setdefault(parent, {})
        target[key] = value

    return change


def drop_key(path: str):
    def change(config):
        *parents, key = path.split(".")
        target = config
        for parent in parents:
            target = target[parent]
        del target[key]

    return change


def problems_of(config) -> list[str]:
    with pytest.raises(ConfigError) as raised:
        load_config(config)
    return raised.value.problems


# (change to the tiny config, the one problem line it must give, as a regex matched from the line's start)
BAD = {
    # the careful user's cases
    "n string": (set_key("dataset.n", "4"), r"dataset\.n: expected a positive integer or null, got '4' \(str\)"),
    "n float": (set_key("dataset.n", 4.5), r"dataset\.n: expected a positive integer or null, got 4\.5 \(float\)"),
    "n zero": (set_key("dataset.n", 0), r"dataset\.n: expected a positive integer or null, got 0 \(int\)"),
    "n bool": (set_key("dataset.n", True), r"dataset\.n: expected a positive integer or null, got True \(bool\)"),
    "seed string": (set_key("dataset.seed", "0"), r"dataset\.seed: expected a non-negative integer, got '0'"),
    "seed negative": (set_key("dataset.seed", -1), r"dataset\.seed: expected a non-negative integer, got -1"),
    "seed null": (set_key("dataset.seed", None), r"dataset\.seed: expected a non-negative integer, got None"),
    "batch_size zero": (set_key("dataset.batch_size", 0), r"dataset\.batch_size: expected a positive integer, got 0"),
    "batch_size float": (set_key("dataset.batch_size", 16.0),
                         r"dataset\.batch_size: expected a positive integer, got 16\.0 \(float\)"),
    "patch_train_n zero": (set_key("dataset.patch_train_n", 0),
                           r"dataset\.patch_train_n: expected a positive integer or null, got 0"),
    "max_iter string": (set_key("attack.kwargs.max_iter", "2"),
                        r"attack\.kwargs\.max_iter: expected a positive integer, got '2' \(str\)"),
    "max_iter zero": (set_key("attack.kwargs.max_iter", 0), r"attack\.kwargs\.max_iter: expected a positive integer"),
    "max_iter bool": (set_key("attack.kwargs.max_iter", True),
                      r"attack\.kwargs\.max_iter: expected a positive integer, got True \(bool\)"),
    "patch_size bool": (set_key("attack.patch_size", True),
                        r"attack\.patch_size: expected a positive int \(pixels\), a float fraction of the image area "
                        r"in \(0, 1\] or a \[height, width\] pair of positive ints, got True \(bool\)"),
    # more ranges and types
    "eps negative": (set_key("attack.kwargs.eps", -1.0), r"attack\.kwargs\.eps: expected a positive finite number"),
    "eps string": (set_key("attack.kwargs.eps", "1"), r"attack\.kwargs\.eps: expected a positive finite number, "
                   r"got '1' \(str\)"),
    "eps nan": (set_key("attack.kwargs.eps", math.nan), r"attack\.kwargs\.eps: expected a positive finite number"),
    "eps_step zero": (set_key("attack.kwargs.eps_step", 0), r"attack\.kwargs\.eps_step: expected a positive finite"),
    "attack batch_size": (set_key("attack.kwargs.batch_size", 0), r"attack\.kwargs\.batch_size: expected a positive"),
    "num_random_init": (set_key("attack.kwargs.num_random_init", -1),
                        r"attack\.kwargs\.num_random_init: expected a non-negative integer, got -1"),
    "norm": (set_key("attack.kwargs.norm", 3), r"attack\.kwargs\.norm: expected 1, 2 or 'inf', got 3"),
    "kwargs not a mapping": (set_key("attack.kwargs", [1]), r"attack\.kwargs: expected a mapping or null"),
    "patch_size zero": (set_key("attack.patch_size", 0), r"attack\.patch_size: expected a positive int"),
    "patch_size fraction above 1": (set_key("attack.patch_size", 1.5), r"attack\.patch_size: expected .*got 1\.5"),
    "patch_size string": (set_key("attack.patch_size", "7"), r"attack\.patch_size: expected .*got '7' \(str\)"),
    "patch_size missing": (drop_key("attack.patch_size"), r"attack\.patch_size: missing \(required: a positive int"),
    "patch_size larger than the image": (set_key("attack.patch_size", 40),
                                         r"attack\.patch_size: patch_size \(40, 40\) is larger than the image "
                                         r"\(32, 32\) \(the mnist_cnn model takes 32x32 images\)"),
    "attack seed": (set_key("attack.seed", "0"), r"attack\.seed: expected a non-negative integer, got '0'"),
    "location word": (set_key("attack.location", "center"),
                      r"attack\.location: expected 'random' or \[row, col\] \(non-negative ints\), got 'center'"),
    "location negative": (set_key("attack.location", [-1, 0]), r"attack\.location: expected 'random' or \[row, col\]"),
    "location bools": (set_key("attack.location", [True, 0]), r"attack\.location: expected 'random' or \[row, col\]"),
    "location off the image": (set_key("attack.location", [30, 30]),
                               r"attack\.location: a 7x7 patch at \[30, 30\] leaves the 32x32 image"),
    "attack type": (set_key("attack.type", "sweep"), r"attack\.type: expected one of 'patch', 'masked', got 'sweep'"),
    "targeted string": (set_key("attack.targeted", "yes"), r"attack\.targeted: expected true or false, got 'yes'"),
    "targeted without labels": (set_key("attack.targeted", True),
                                r"attack\.targeted_labels: expected \{'scheme': 'fixed', 'value': <class index>\}"),
    "target not a class": (lambda c: c["attack"].update(targeted=True, targeted_labels={"scheme": "fixed",
                                                                                        "value": 10}),
                           r"attack\.targeted_labels: value 10 is not a class of the mnist_cnn model \(0 to 9\)"),
    "dataset name": (set_key("dataset.name", "mnist"),
                     r"dataset\.name: expected one of 'cifar10', 'cifar10_torchvision', 'mnist_embedded'"),
    "dataset module": (set_key("dataset.module", "armory.data.datasets"),
                       r"dataset\.module: expected 'art_patch_defenses\.data' or null"),
    "download": (set_key("dataset.download", "yes"), r"dataset\.download: expected true or false"),
    "device": (set_key("sysconfig.device_type", "tpu"), r"sysconfig\.device_type: expected one of 'cpu', 'gpu'"),
    "fit": (set_key("model.fit", True), r"model\.fit: expected false or null \(this runner evaluates"),
    "model_kwargs list": (set_key("model.model_kwargs", ["mnist_cnn"]),
                          r"model\.model_kwargs: expected a mapping or null"),
    "description": (set_key("_description", 3), r"_description: expected a string, got 3"),
    # keys
    "unknown block": (set_key("atack", {}), r"config: unknown config key\(s\) \['atack'\] in the top level; "
                      r"known keys: \['_description', 'adhoc', 'attack'"),
    "unknown attack key": (set_key("attack.patchsize", 3),
                           r"attack: unknown config key\(s\) \['patchsize'\] in attack; known keys: .*'patch_size'"),
    "missing block": (drop_key("dataset"), r"dataset: config lacks the 'dataset' block"),
    "missing module": (drop_key("attack.module"), r"attack\.module: missing \(required\)"),
    "defense type": (lambda c: c.update(defense={**PATCHZERO, "type": "Wrapper"}),
                     r"defense\.type: expected one of 'Preprocessor', 'Postprocessor', 'Trainer', got 'Wrapper'"),
    "defense trainer": (lambda c: c.update(defense={**PATCHZERO, "type": "Trainer"}),
                        r"defense\.type: 'Trainer' needs a training scenario"),
    # names and signatures, resolved before running
    "attack module": (set_key("attack.module", "art_patch_defenses.nowhere"),
                      r"attack\.module: cannot import module 'art_patch_defenses\.nowhere'"),
    "attack attribute": (set_key("attack.name", "ProjectedGradientDescnet"),
                         r"attack\.module: module 'art\.attacks\.evasion' has no attribute 'ProjectedGradientDescnet'"),
    "model factory module": (set_key("model.module", "art_patch_defenses.modles"),
                             r"model\.module: cannot import module 'art_patch_defenses\.modles'"),
    "unknown model": (set_key("model.model_kwargs.name", "resnet9000"),
                      r"model\.model_kwargs\.name: unknown model 'resnet9000'; known models: .*mnist_cnn"),
    "weights tag": (set_key("model.model_kwargs.weights", "embeded"),
                    r"model\.model_kwargs\.weights: weights 'embeded' is neither a file path nor a registered tag "
                    r"of model 'mnist_cnn'; known tags: none, embedded"),
    "attack class keyword": (set_key("attack.kwargs.max_iters", 3),
                             r"attack\.kwargs: unknown keyword\(s\) \['max_iters'\] for the attack class "
                             r"art\.attacks\.evasion\.ProjectedGradientDescent\(estimator, \.\.\.\); known: "
                             r"batch_size, decay, eps, eps_step, max_iter, norm, num_random_init"),
    "defence keyword through an alternative constructor": (
        lambda c: c.update(defense={**PATCHZERO, "kwargs": {"path": PATCHZERO["kwargs"]["path"], "bdpa": True}}),
        r"defense\.kwargs: unknown keyword\(s\) \['bdpa'\] for the defence "
        r"art_patch_defenses\.patchzero\.PatchZero\.from_checkpoint; known: .*bpda"),
    "patch attack keyword": (lambda c: c.update(attack={**UNIVERSAL, "kwargs": {"learning_rate": 0.1}}),
                             r"attack\.kwargs: unknown keyword\(s\) \['learning_rate'\] for the patch attack "
                             r"art_patch_defenses\.attacks\.lavan_patch\(estimator, x, y, \.\.\.\); known: "
                             r"batch_size, max_iter, seed, step_size, verbose"),
    "patch attack keyword the runner sets": (lambda c: c.update(attack={**UNIVERSAL, "kwargs": {"patch_size": 8}}),
                                             r"attack\.kwargs: \['patch_size'\] are set by the runner"),
    "function attack keyword": (lambda c: c.update(attack={**EOT, "kwargs": {**EOT["kwargs"], "eot": 2}}),
                                r"attack\.kwargs: unknown keyword\(s\) \['eot'\] for the attack function "
                                r"art_patch_defenses\.attacks\.eot\.masked_pgd_eot"),
    "function attack generate_kwargs clash": (
        lambda c: c.update(attack={**EOT, "generate_kwargs": {"eps": 0.5}}),
        r"attack\.generate_kwargs: \['eps'\] are also in attack\.kwargs"),
}


@pytest.mark.parametrize("change, expected", list(BAD.values()), ids=list(BAD))
def test_bad_config_is_refused_with_a_named_problem(change, expected):
    config = tiny()
    change(config)
    problems = problems_of(config)
    assert any(re.match(expected, line) for line in problems), "\n".join(problems)
    assert len(problems) == 1, "\n".join(problems)  # one mistake, one line: no knock-on messages


def test_every_problem_is_reported_together():
    config = tiny()
    config["dataset"].update(n="4", seed="0", batch_size=0)
    config["attack"].update(patch_size=True, location="centre")
    config["attack"]["kwargs"].update(max_iter="2", max_iters=3)
    config["defense"] = {**PATCHZERO, "kwargs": {"path": "x.pt", "bdpa": True}}
    with pytest.raises(ConfigError) as raised:
        load_config(config)
    problems = raised.value.problems
    expected = ["dataset.n:", "dataset.seed:", "dataset.batch_size:", "attack.patch_size:", "attack.location:",
                "attack.kwargs.max_iter:", "attack.kwargs: unknown keyword(s) ['max_iters']",
                "defense.kwargs: unknown keyword(s) ['bdpa']"]
    for start in expected:
        assert sum(line.startswith(start) for line in problems) == 1, (start, problems)
    assert len(problems) == len(expected)
    message = str(raised.value)
    assert message.startswith(f"invalid config ({len(expected)} problems):\n")
    assert message.count("\n") == len(expected)  # one line per problem
    assert isinstance(raised.value, ValueError)


def test_a_suite_names_the_scenario_of_each_problem():
    second = tiny()
    second["attack"]["kwargs"]["eps"] = 0
    second["model"]["model_kwargs"]["name"] = "resnet9000"
    suite = {"_description": "two", "scenarios": [tiny(atack={}), second, tiny()]}
    problems = problems_of(suite)
    assert [line.split(":")[0] for line in problems] == [
        "scenarios[0]", "scenarios[1].attack.kwargs.eps", "scenarios[1].model.model_kwargs.name"]
    assert problems_of({"scenarios": [], "extra": 1}) == [
        "suite: unknown suite key(s) ['extra']; known keys: ['_description', 'scenarios']",
        "scenarios: a suite needs a non-empty list of scenario configs, got [] (list)"]
    assert problems_of({"scenarios": [3]}) == ["scenarios[0]: expected a mapping, got 3 (int)"]


@pytest.mark.parametrize("change", [
    set_key("attack.patch_size", 1.0),  # the whole image
    set_key("attack.patch_size", [5, 7]),
    set_key("attack.patch_size", 5),
    set_key("attack.location", [0, 25]),
    set_key("dataset.n", None),  # the whole split
    set_key("dataset.patch_train_n", None),
    set_key("sysconfig", {"device_type": "cpu"}),
    lambda c: c.update(attack={**UNIVERSAL, "targeted": True, "targeted_labels": {"scheme": "fixed", "value": 9}}),
    lambda c: c.update(attack=EOT),
    lambda c: c.update(defense=PATCHZERO),
    set_key("_description", ""),
], ids=["full-image fraction", "pair", "pixels", "corner location", "whole split", "whole train split", "device",
        "targeted patch", "function attack", "defence", "empty description"])
def test_good_configs_pass(change):
    config = tiny()
    change(config)
    assert load_config(config)["scenarios"][0]["attack"]["type"] in ("masked", "patch")


def test_patch_size_one_is_the_whole_image():
    assert attack_patch_shape(1.0, (32, 28)) == (32, 28)
    assert attack_patch_shape(0.25, (32, 32)) == (16, 16)
    assert attack_patch_shape([3, 5], (32, 32)) == (3, 5)


def test_static_validation_imports_nothing():
    config = tiny()
    config["attack"]["module"] = "no_such_package.attacks"
    assert config_problems(config) == []
    assert validate_config(config)["attack"]["location"] == "random"
    assert load_config(config, check_names=False)["scenarios"][0]["attack"]["module"] == "no_such_package.attacks"
    with pytest.raises(ConfigError, match=r"attack\.module: cannot import module 'no_such_package\.attacks'"):
        load_config(config)


class Widget:
    """An alternative constructor that takes **kwargs for the class: checked against the class."""

    def __init__(self, size: int = 1) -> None:
        self.size = size

    @classmethod
    def build(cls, **kwargs):
        return cls(**kwargs)


def open_factory(**kwargs):
    """A plain function with **kwargs: not second-guessed."""
    return kwargs


def test_kwargs_taking_callables(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "widget_module", sys.modules[__name__])
    defense = {"module": "widget_module", "name": "Widget.build", "kwargs": {"size": 2}, "type": "Postprocessor"}
    load_config(tiny(defense=defense))
    defense["kwargs"] = {"sise": 2}
    assert problems_of(tiny(defense=defense)) == [
        "defense.kwargs: unknown keyword(s) ['sise'] for the defence widget_module.Widget.build; known: size"]
    defense.update(name="open_factory", kwargs={"anything": 1})
    load_config(tiny(defense=defense))
    defense.update(name="Widget", kwargs={"sise": 2})
    assert problems_of(tiny(defense=defense))[0].startswith("defense.kwargs: unknown keyword(s) ['sise']")


def unlabelled_attack(estimator, x, mask, max_iter: int = 1):
    """A function attack without the ``y=`` the runner passes."""
    return x


def test_function_attack_must_take_what_the_runner_passes(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "widget_module", sys.modules[__name__])
    config = tiny()
    config["attack"] = {"module": "widget_module", "name": "unlabelled_attack", "patch_size": 5,
                        "kwargs": {"max_iter": 2}}
    assert problems_of(config) == [
        "attack.name: the attack function widget_module.unlabelled_attack(estimator, x, mask, ...) does not take y=, "
        "which the runner passes"]


def test_model_factory_must_take_three_arguments(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "widget_module", sys.modules[__name__])
    config = tiny()
    config["model"] = {"module": "widget_module", "name": "open_factory", "model_kwargs": {}}
    assert problems_of(config) == [
        "model.name: the model factory widget_module.open_factory(model_kwargs, wrapper_kwargs, weights_file) "
        "cannot be called as the runner calls it: too many positional arguments"]


def test_bad_config_stops_before_any_computation(tmp_path, monkeypatch):
    def no_computation(*args, **kwargs):
        raise AssertionError("a scenario ran with a bad config")

    monkeypatch.setattr(runner, "run_scenario", no_computation)
    config = tiny()
    config["dataset"]["n"] = "4"
    with pytest.raises(ConfigError, match=r"dataset\.n"):
        runner.run_suite(config, tmp_path / "out", verbose=False)
    assert not (tmp_path / "out").exists()  # not even the output directory


def test_cli_reports_config_errors_with_status_2(tmp_path, capsys):
    config = tiny()
    config["dataset"]["n"] = 4.5
    config["attack"]["kwargs"]["max_iter"] = "2"
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(config))
    out = tmp_path / "out"
    for command in (["evaluate", str(path), "--output-dir", str(out)], ["verify", str(path), "--output-dir", str(out)]):
        assert main([*command, "--quiet"]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: invalid config (2 problems):\n")
        assert "  dataset.n: expected a positive integer or null, got 4.5 (float)\n" in err
        assert "  attack.kwargs.max_iter: expected a positive integer, got '2' (str)\n" in err
        assert "Traceback" not in err
    assert not out.exists()


def test_cli_reports_unreadable_configs_with_status_2(tmp_path, capsys):
    broken_yaml = tmp_path / "broken.yaml"
    broken_yaml.write_text("model: [unclosed\n")
    broken_json = tmp_path / "broken.json"
    broken_json.write_text("{")
    for path in (broken_yaml, broken_json, tmp_path / "missing.json"):
        assert main(["evaluate", str(path), "--quiet", "--output-dir", str(tmp_path / "out")]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and str(path) in err and "Traceback" not in err


@pytest.mark.parametrize("option", ["--n", "--n-certified", "--placements", "--max-iter", "--eps-step"])
def test_cli_verify_refuses_non_positive_options(tmp_path, capsys, option):
    path = tmp_path / "tiny.json"
    path.write_text(json.dumps(tiny()))
    with pytest.raises(SystemExit) as raised:
        main(["verify", str(path), option, "0", "--quiet"])
    assert raised.value.code == 2
    assert f"argument {option}: expected a positive" in capsys.readouterr().err
