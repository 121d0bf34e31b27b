"""Sharded, resumable runs (issue 19): the shard plan, the chunk store, and real torchrun launches (2 gloo ranks on
CPU) whose merged results equal one process's, uninterrupted or killed and resumed; verify likewise."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from art_patch_defenses.evaluation import distributed, run_suite
from art_patch_defenses.evaluation.distributed import (
    FAIL_AFTER_VARIABLE,
    ChunkStore,
    DistContext,
    DistributedError,
    ShardMismatchError,
    assigned_units,
    chunk_seed,
    class_rounds,
    context_from_environment,
    distributed_session,
    make_chunks,
    shard_indices,
)
from art_patch_defenses.evaluation.results import OutputDirError, read_manifest
from art_patch_defenses.evaluation.runner import build_estimator, weights_sha256
from art_patch_defenses.evaluation.verify import verify_suite
from art_patch_defenses.models import build_model, save_checkpoint

PYTHON = sys.executable
MODEL = {"module": "art_patch_defenses.models", "name": "get_art_model",
         "model_kwargs": {"name": "mnist_cnn", "weights": "embedded"}}
#: The embedded default suite's kinds of scenario, tiny: a universal patch on the undefended CNN, masked PGD with a
#: random start against robust masking (a deterministic certifier), and EOT PGD against MRS (a randomised one);
#: committed embedded models only.
SUITE = {
    "_description": "tiny sharded suite",
    "scenarios": [
        {"model": MODEL,
         "dataset": {"name": "mnist_embedded", "n": 40, "seed": 0, "batch_size": 64, "patch_train_n": 20},
         "attack": {"module": "art_patch_defenses.attacks", "name": "adversarial_patch", "type": "patch",
                    "patch_size": 0.1, "location": "random", "seed": 0,
                    "kwargs": {"max_iter": 2, "learning_rate": 0.1, "batch_size": 16}}},
        {"model": {"module": "art_patch_defenses.robust_masking", "name": "get_art_model",
                   "model_kwargs": {"name": "mnist_bagnet", "weights": "embedded", "patch_size": 2}},
         "dataset": {"name": "mnist_embedded", "n": 40, "seed": 0, "batch_size": 64},
         "attack": {"module": "art.attacks.evasion", "name": "ProjectedGradientDescent", "type": "masked",
                    "patch_size": 0.05, "location": "random", "seed": 0,
                    "kwargs": {"norm": "inf", "eps": 1.0, "eps_step": 0.05, "max_iter": 3, "num_random_init": 1,
                               "batch_size": 64}}},
        {"model": {"module": "art_patch_defenses.mrs", "name": "get_art_model",
                   "model_kwargs": {"name": "mnist_cnn", "weights": "embedded", "sigma_255": 64,
                                    "sample_size": 20, "n0": 5, "alpha": 0.001, "patch_size": 5, "stride": 4,
                                    "tau": 8}},
         "dataset": {"name": "mnist_embedded", "n": 40, "seed": 0, "batch_size": 64},
         "attack": {"module": "art_patch_defenses.attacks.eot", "name": "masked_pgd_eot", "type": "masked",
                    "patch_size": 0.05, "location": "random", "seed": 0,
                    "kwargs": {"norm": "inf", "eps": 1.0, "eps_step": 0.05, "max_iter": 2, "eot_samples": 2,
                               "restarts": 1}}},
    ],
}


def _comparable(path: Path) -> dict:
    """results.json without what differs between equal runs: timestamps and timings."""
    payload = json.loads(Path(path).read_text())
    payload.pop("timestamp", None)
    for record in payload["scenarios"]:
        record.pop("timestamp")
        record["results"].pop("seconds")
    return payload


def _torchrun(args: list[str], cwd: Path, extra_env: dict | None = None) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc-per-node 2 -m art_patch_defenses.cli ARGS`` (gloo, CPU, one thread each)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", **(extra_env or {})}
    command = [PYTHON, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               "-m", "art_patch_defenses.cli", *args]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


@pytest.fixture
def one_thread():
    """One torch thread, as each torchrun worker has (OMP_NUM_THREADS=1)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def suite_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("suite") / "tiny_suite.json"
    path.write_text(json.dumps(SUITE))
    return path


@pytest.fixture(scope="module")
def single_process(tmp_path_factory, suite_file) -> Path:
    """The tiny suite, sharded scheme, one process (in this one): the reference of every multi-process run."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        output = tmp_path_factory.mktemp("single") / "out"
        run_suite(suite_file, output, verbose=False, sharded=True)
    finally:
        torch.set_num_threads(threads)
    return output


# --- (a) the shard plan ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("counts", [[4, 4, 4], [5, 3, 4, 1], [1], [7, 2]])
@pytest.mark.parametrize("world_size", [1, 2, 3, 5])
@pytest.mark.parametrize("per_class", [1, 2])
def test_shards_are_disjoint_complete_and_class_balanced(counts, world_size, per_class):
    rng = np.random.default_rng(sum(counts) + world_size)
    y = rng.permutation(np.repeat(np.arange(len(counts)), counts))  # a shuffled slice, as load_dataset gives
    shards = [shard_indices(y, world_size, rank, per_class) for rank in range(world_size)]
    joined = np.concatenate(shards)
    assert len(joined) == len(y) and np.array_equal(np.sort(joined), np.arange(len(y)))  # no duplicate, no gap
    per_rank = np.array([[np.sum(y[shard] == label) for label in range(len(counts))] for shard in shards])
    assert (per_rank.max(0) - per_rank.min(0) <= per_class).all()  # at most per_class apart, class by class
    chunks = make_chunks(y, per_class)
    for chunk in chunks:  # every chunk holds at most per_class images of each class
        assert np.bincount(y[chunk], minlength=len(counts)).max() <= per_class
    assert [list(c) for c in chunks] == [list(c) for c in make_chunks(y, per_class)]  # fixed, whatever the ranks


def test_rounds_and_assignment():
    y = np.array([2, 0, 0, 1, 2, 0])
    assert [list(r) for r in class_rounds(y)] == [[0, 1, 3], [2, 4], [5]]
    assert [list(c) for c in make_chunks(y, 2)] == [[0, 1, 2, 3, 4], [5]]
    assert assigned_units(7, 3, 1) == [1, 4] and assigned_units(2, 4, 3) == []
    assert len(shard_indices(y, 5, 4)) == 0  # more ranks than rounds: an empty shard, never a padded one
    seeds = {chunk_seed(seed, unit) for seed in range(3) for unit in range(50)}
    assert len(seeds) == 150 and chunk_seed(0, 1) == chunk_seed(0, 1) and chunk_seed(0, 1) != chunk_seed(1, 0)
    with pytest.raises(ValueError, match="images_per_class"):
        make_chunks(y, 0)
    with pytest.raises(ValueError, match="rank"):
        assigned_units(3, 2, 2)


def test_environment_is_read_and_checked(monkeypatch):
    assert context_from_environment({}) == DistContext()  # plain python: one process
    good = {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1", "MASTER_ADDR": "localhost"}
    context = context_from_environment(good)
    assert (context.rank, context.world_size, context.local_rank) == (1, 2, 1) and not context.distributed
    with pytest.raises(DistributedError, match="RANK, MASTER_ADDR are not"):
        context_from_environment({"WORLD_SIZE": "2", "LOCAL_RANK": "0"})
    with pytest.raises(DistributedError, match="RANK must be an integer"):
        context_from_environment({**good, "RANK": "one"})
    with pytest.raises(DistributedError, match="RANK < WORLD_SIZE"):
        context_from_environment({**good, "RANK": "2"})
    monkeypatch.setattr(torch.distributed, "is_available", lambda: False)
    with pytest.raises(DistributedError, match="no torch.distributed"):
        distributed.init_distributed(env=good)


def test_session_waits_for_the_peers_before_it_leaves_unless_it_failed(monkeypatch):
    """A rank leaves the group only when every rank is done (a barrier): one that left while rank 0 still wrote the
    reports once aborted in CI. After an exception it leaves at once, for its peers may never come."""
    import socket

    import torch.distributed as dist

    with socket.socket() as free:
        free.bind(("localhost", 0))
        port = free.getsockname()[1]
    for name, value in {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "MASTER_ADDR": "localhost",
                        "MASTER_PORT": str(port)}.items():
        monkeypatch.setenv(name, value)
    calls = []
    barrier = dist.barrier
    monkeypatch.setattr(dist, "barrier", lambda *args, **kwargs: (calls.append("barrier"), barrier(*args, **kwargs)))
    destroy = dist.destroy_process_group
    monkeypatch.setattr(dist, "destroy_process_group", lambda *args: (calls.append("destroy"), destroy(*args)))
    with distributed_session("cpu") as context:
        assert context.owns_group and dist.is_initialized() and context.backend == "gloo"
        with distributed_session(context=context) as same:  # a context given is used and left open
            assert same is context
        assert calls == [] and dist.is_initialized()
    assert calls == ["barrier", "destroy"] and not dist.is_initialized() and not context.owns_group
    calls.clear()
    with pytest.raises(RuntimeError, match="rank failed"):
        with distributed_session("cpu"):
            raise RuntimeError("rank failed")
    assert calls == ["destroy"] and not dist.is_initialized()


def test_chunk_store_refuses_another_run_and_reads_back(tmp_path):
    key = {"config": {"a": 1}, "images_per_class": 1}
    store = ChunkStore(tmp_path / "s", key)
    saved = store.save("chunk", 3, {"samples": {"label": np.array([1, 2])}, "arrays": {"x": np.ones((1, 2))}})
    assert saved["samples"]["label"] == [1, 2]
    assert not list(tmp_path.rglob("*.tmp"))
    with pytest.raises(ShardMismatchError, match="another run"):
        ChunkStore(tmp_path / "s", {**key, "images_per_class": 2}, resume=True)
    with pytest.raises(ShardMismatchError, match="--resume"):
        ChunkStore(tmp_path / "s", key)
    again = ChunkStore(tmp_path / "s", key, resume=True)
    loaded = again.load("chunk", 3)
    assert loaded["samples"] == {"label": [1, 2]} and np.array_equal(loaded["arrays"]["x"], np.ones((1, 2)))
    assert again.load("chunk", 4) is None
    again.path("chunk", 5).write_text("{not json")  # a damaged file is computed again, not trusted
    assert again.load("chunk", 5) is None


def test_resume_refuses_another_config(tmp_path, suite_file, single_process):
    other = json.loads(json.dumps(SUITE))
    other["scenarios"] = other["scenarios"][:1]
    with pytest.raises(OutputDirError, match="another config"):
        run_suite(other, single_process, verbose=False, resume=True)
    with pytest.raises(OutputDirError, match="--resume"):
        run_suite(suite_file, single_process, verbose=False, sharded=True)


def test_resume_refuses_chunks_of_other_weights(tmp_path, one_thread):
    """The weights are in a sharded run's key: a config that names the same file, rewritten with other weights,
    does not resume the old chunks."""
    model = build_model("mnist_cnn", "embedded")
    weights = tmp_path / "cnn.pt"
    save_checkpoint(model, weights)
    scenario = json.loads(json.dumps(SUITE["scenarios"][0]))
    scenario["model"]["model_kwargs"]["weights"] = str(weights)
    scenario["dataset"]["n"] = 10
    suite = {"scenarios": [scenario]}
    out = tmp_path / "out"
    run_suite(suite, out, verbose=False, sharded=True)
    (record,) = json.loads((out / "results.json").read_text())["scenarios"]
    with torch.no_grad():
        next(model.parameters()).add_(0.01)
    save_checkpoint(model, weights)
    changed = weights_sha256(build_estimator(scenario))
    assert record["results"]["weights_sha256"] != changed
    with pytest.raises(ShardMismatchError, match="weights"):
        run_suite(suite, out, verbose=False, resume=True)


# --- (b) two gloo ranks equal one process -----------------------------------------------------------------------


def test_two_gloo_ranks_equal_one_process(tmp_path, suite_file, single_process):
    result = _torchrun(["evaluate", str(suite_file), "--output-dir", "out", "--quiet"], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("done: 3 scenarios") == 1  # rank 0 reports, rank 1 stays silent
    assert _comparable(tmp_path / "out" / "results.json") == _comparable(single_process / "results.json")
    manifest = read_manifest(tmp_path / "out")
    assert manifest["status"] == "complete" and manifest["sharding"]["world_size"] == 2
    assert manifest["sharding"]["backend"] == "gloo"
    chunks = manifest["scenarios"][0]["chunks"]  # 40 digits = 4 rounds of 10, two chunks on each rank
    assert [rank["computed"] for rank in chunks["per_rank"]] == [[0, 2], [1, 3]] and chunks["reused"] == 0
    records = json.loads((tmp_path / "out" / "shards" / "evaluate-01" / "chunk-00001.json").read_text())
    samples = records["payload"]["samples"]
    assert {"index", "label", "benign", "adversarial", "certified", "linf", "outside"} <= set(samples)
    assert len(samples["index"]) == 10 and sorted(np.bincount(samples["label"])) == [1] * 10


# --- (c) a rank dies; the rerun reads its finished chunks back -------------------------------------------------


def test_killed_rank_then_resume_equals_uninterrupted_run(tmp_path, suite_file, single_process, one_thread):
    out = tmp_path / "out"
    killed = _torchrun(["evaluate", str(suite_file), "--output-dir", str(out), "--quiet"], tmp_path,
                       {FAIL_AFTER_VARIABLE: "1:1"})  # rank 1 dies after its first chunk of the first scenario
    assert killed.returncode != 0 and "InjectedFailure" in killed.stderr
    written = {path.name: path.stat().st_mtime_ns for path in (out / "shards" / "evaluate-00").glob("chunk-*.json")}
    assert "chunk-00001.json" in written and "chunk-00003.json" not in written
    # Resumed in one process (the chunks do not depend on the number of ranks): nothing finished is recomputed.
    run_suite(suite_file, out, verbose=False, resume=True)
    assert _comparable(out / "results.json") == _comparable(single_process / "results.json")
    for name, mtime in written.items():
        assert (out / "shards" / "evaluate-00" / name).stat().st_mtime_ns == mtime
    chunks = read_manifest(out)["scenarios"][0]["chunks"]
    assert chunks["reused"] == len(written) and chunks["computed"] == 4 - len(written)


def test_chunks_kept_for_a_commit_continue_the_run_in_a_fresh_checkout(tmp_path, monkeypatch, suite_file,
                                                                       single_process):
    """``benchmarks/leaderboard_cifar10.py --keep-chunks``: a run's finished chunks copied out (to be committed) and
    back into the empty output dir of a fresh checkout are read back by ``--resume``, none computed again, and the
    results are the same."""
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import leaderboard_cifar10 as leaderboard

    monkeypatch.setattr(leaderboard, "KEPT_CHUNKS", tmp_path / "kept")
    monkeypatch.setattr(leaderboard, "OUTPUTS", single_process.parent)
    leaderboard.keep_chunks(single_process.name)
    kept = sorted(path.name for path in (tmp_path / "kept" / single_process.name).rglob("*.json"))
    assert "config.json" in kept and "manifest.json" not in kept and "results.json" not in kept
    monkeypatch.setattr(leaderboard, "OUTPUTS", tmp_path / "fresh")
    leaderboard.restore_chunks(single_process.name)
    out = tmp_path / "fresh" / single_process.name
    run_suite(suite_file, out, verbose=False, resume=True)
    assert _comparable(out / "results.json") == _comparable(single_process / "results.json")
    for scenario in read_manifest(out)["scenarios"]:
        assert scenario["chunks"]["computed"] == 0 and scenario["chunks"]["reused"] > 0


# --- (d) verify under two ranks --------------------------------------------------------------------------------


def test_verify_two_gloo_ranks_equal_one_process(tmp_path, one_thread):
    suite = {"_description": "verify", "scenarios": [SUITE["scenarios"][1], SUITE["scenarios"][2]]}
    config = tmp_path / "verify.json"
    config.write_text(json.dumps(suite))
    single = verify_suite(config, tmp_path / "single", n=20, verbose=False, sharded=True, n_certified=4,
                          placements=2, max_iter=2, batch_size=2)  # one certified sample per attack batch
    result = _torchrun(["verify", str(config), "--output-dir", "two", "--quiet", "--n-images", "20",
                        "--n-certified", "4", "--placements", "2", "--max-iter", "2", "--batch-size", "2"], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]

    def counts(reports: list[dict]) -> list[dict]:
        return [{key: value for key, value in report.items() if key != "seconds"} for report in reports]

    two = json.loads((tmp_path / "two" / "verify.json").read_text())["reports"]
    assert counts(two) == counts(json.loads(json.dumps(single["reports"])))
    assert [report["samples"] for report in two] == [3, 4] and not any(report["violations"] for report in two)
    attack_units = sorted(path.name for path in (tmp_path / "two" / "shards" / "verify-00").glob("attack-*.json"))
    assert attack_units == ["attack-00000.json", "attack-00001.json", "attack-00002.json"]  # spread over 2 ranks


def test_ranks_starting_together_on_a_fresh_home_all_import_art(tmp_path):
    """ART 1.20 writes ~/.art/config.json on first import without a lock: ranks launched together on a fresh
    machine raced and one died with ``NameError: _config``. The CLI writes the file atomically before any import."""
    home = tmp_path / "fresh-home"
    home.mkdir()
    env = {**os.environ, "HOME": str(home)}
    code = ("from art_patch_defenses.cli import _prepare_art_config\n"
            "_prepare_art_config()\n"
            "import art.config\n"
            "print(art.config.ART_DATA_PATH)")
    ranks = [subprocess.Popen([PYTHON, "-c", code], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(4)]
    outputs = [rank.communicate(timeout=300) for rank in ranks]
    assert all(rank.returncode == 0 for rank in ranks), [err[-500:] for _, err in outputs]
    assert {out.strip() for out, _ in outputs} == {str(home / ".art" / "data")}
    assert json.loads((home / ".art" / "config.json").read_text()) == {"ART_DATA_PATH": str(home / ".art" / "data")}
    assert not list((home / ".art").glob("*.tmp"))  # no temp file left behind
