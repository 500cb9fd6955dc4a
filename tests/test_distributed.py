"""Data-parallel runs under torchrun (gloo on CPU, 2 processes): the run folder, equivalence with one process,
a killed rank and --resume, a text strategy; plus the pieces (shards, launcher arguments) on their own.

The torchrun tests start real process groups (several seconds of start-up each), so they are marked slow.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from dllab import DllabError

# On the CPU (gloo) on any machine: a GPU machine's `auto` would put both processes on its one GPU.
SMOKE_MLP = ["run", "lab1.mlp", "--profile", "smoke", "--quiet", "--device", "cpu"]


def _env() -> dict[str, str]:
    # One OpenMP thread per process (2 processes on 2 cores), and no torchrun warning about it.
    return {**os.environ, "OMP_NUM_THREADS": "1", "TRANSFORMERS_OFFLINE": "1"}


def dllab(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dllab", *args], capture_output=True, text=True, env=_env(),
                          timeout=timeout)


def torchrun(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                           "-m", "dllab", *args], capture_output=True, text=True, env=_env(), timeout=timeout)


def files(folder: Path) -> set[str]:
    """The run folder's files; TensorBoard's event files as patterns (their names hold the time, host and pid)."""
    names = {p.relative_to(folder) for p in folder.rglob("*") if p.is_file()}
    return {str(n.parent / "events.out.tfevents.*") if n.name.startswith("events.out.tfevents.") else str(n)
            for n in names}


def history(folder: Path) -> list[dict]:
    import csv
    with open(folder / "history.csv", newline="") as f:
        return list(csv.DictReader(f))


# --- pieces -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("n", [8, 9, 10, 1])
@pytest.mark.parametrize("world", [2, 3])
def test_shards_are_distributed_samplers(n, world):
    """Each rank's share of a permutation is DistributedSampler's (padded with the first indices), and the
    ranks' i-th batches of b/world together are the single-process batch i of b."""
    from torch.utils.data import DistributedSampler

    from dllab.core.distributed import shard
    order = torch.randperm(n, generator=torch.Generator().manual_seed(n))
    shards = [shard(order, r, world) for r in range(world)]
    for r in range(world):
        sampler = DistributedSampler(range(n), num_replicas=world, rank=r, shuffle=False)
        assert shards[r].tolist() == [order[i].item() for i in sampler]
    per_rank = 2
    padded = torch.stack(shards, 1).reshape(-1)         # rank-interleaved: the padded order itself
    for i in range(0, len(shards[0]), per_rank):
        together = sorted(torch.cat([s[i:i + per_rank] for s in shards]).tolist())
        assert together == sorted(padded[i * world:(i + per_rank) * world].tolist())
    unpadded = [shard(order, r, world, pad=False) for r in range(world)]
    assert sorted(torch.cat(unpadded).tolist()) == list(range(n))     # evaluation: every row once


def test_batches_split_the_global_batch_over_ranks():
    """Batches with part=(rank, 2) and half the batch: the two ranks' batches, side by side, hold the rows of
    the single-process batches (same seed and epoch); augmentation differs between ranks."""
    from dllab.data.images import Batches, Split
    x = torch.arange(10 * 3 * 4 * 4, dtype=torch.uint8).reshape(10, 3, 4, 4)
    split = Split(x, torch.arange(10))
    one = Batches(split, 4, torch.device("cpu"), shuffle=True, seed=3)
    ranks = [Batches(split, 2, torch.device("cpu"), shuffle=True, seed=3, part=(r, 2)) for r in range(2)]
    for b in (one, *ranks):
        b.set_epoch(2)
    assert len(ranks[0]) == len(one) == 3
    for (_, y), (_, y0), (_, y1) in zip(one, *ranks):
        assert sorted(y.tolist()) == sorted(torch.cat([y0, y1]).tolist())


def test_nproc_errors_are_one_line(monkeypatch):
    from dllab.cli.main import main
    assert main(["run", "lab1.mlp", "--nproc", "0"]) == 2
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    assert main(["run", "lab1.mlp", "--nproc", "2"]) == 2


@pytest.mark.parametrize("argv", [["run", "--nproc", "2", "lab1.mlp"], ["run", "--nproc=2", "lab1.mlp"],
                                  ["run", "--np", "2", "lab1.mlp"], ["run", "lab1.mlp", "--nproc", "2"]])
def test_the_launcher_passes_on_everything_but_nproc(argv):
    from dllab.runner.launch import without_nproc
    assert without_nproc(argv) == ["run", "lab1.mlp"]


def test_global_batch_must_divide_over_ranks(monkeypatch):
    from dllab.core import distributed
    monkeypatch.setattr(distributed, "part", lambda: (0, 3))
    with pytest.raises(DllabError, match="multiple of 3"):
        distributed.per_rank_batch(128)
    assert distributed.per_rank_batch(129) == 43


def test_python_dash_m_dllab_is_the_cli():
    out = dllab("list")
    assert out.returncode == 0 and "lab1.mlp" in out.stdout


# --- torchrun ------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def mlp_runs(tmp_path_factory) -> dict[str, Path]:
    """lab1.mlp (BasicMLP, no BatchNorm; smoke: one epoch, 1800 training digits, batch 128) in one process
    and under torchrun with 2."""
    base = tmp_path_factory.mktemp("mlp")
    runs = {"one": base / "one", "two": base / "two"}
    out = dllab(*SMOKE_MLP, "--out", str(runs["one"]))
    assert out.returncode == 0, out.stderr
    out = torchrun(*SMOKE_MLP, "--out", str(runs["two"]))
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == str(runs["two"])           # one rank prints the folder
    return runs


@pytest.mark.slow
def test_torchrun_leaves_one_complete_run_folder(mlp_runs):
    one, two = mlp_runs["one"], mlp_runs["two"]
    assert files(two) == files(one) and "report.md" in files(two) and "models/adam.pt" in files(two)
    env = json.loads((two / "env.json").read_text())
    assert env["world_size"] == 2 and env["backend"] == "gloo"
    assert json.loads((one / "env.json").read_text())["world_size"] == 1
    log = (two / "log.txt").read_text()
    assert log.count("[sgd] epoch 1/1") == 1                 # logged by rank 0 only


@pytest.mark.slow
def test_two_ranks_train_what_one_process_trains(mlp_runs):
    """Equivalence: 2 ranks with the global batch b end with the weights of 1 process with batch b (float
    noise only) and the same loss and accuracy history."""
    one, two = mlp_runs["one"], mlp_runs["two"]
    for variant in ("sgd", "adam"):
        w1 = torch.load(one / "models" / f"{variant}.pt", weights_only=True)["state_dict"]
        w2 = torch.load(two / "models" / f"{variant}.pt", weights_only=True)["state_dict"]
        assert w1.keys() == w2.keys()
        for k in w1:
            assert torch.allclose(w1[k], w2[k], rtol=0, atol=1e-5), (variant, k)
    h1, h2 = history(one), history(two)
    assert len(h1) == len(h2) == 2
    for r1, r2 in zip(h1, h2):
        assert r1["variant"] == r2["variant"] and r1["train_acc"] == r2["train_acc"] and r1["val_acc"] == r2["val_acc"]
        for k in ("train_loss", "val_loss"):
            assert float(r1[k]) == pytest.approx(float(r2[k]), rel=1e-5)
    m1 = json.loads((one / "metrics.json").read_text())["summary"]
    m2 = json.loads((two / "metrics.json").read_text())["summary"]
    assert m1 == m2


@pytest.mark.slow
def test_resume_needs_as_many_processes(mlp_runs):
    out = dllab("run", "--resume", str(mlp_runs["two"]))
    assert out.returncode == 2 and out.stderr.count("\n") == 1
    assert "started with 2 processes, this is 1" in out.stderr and "--nproc 2" in out.stderr


def _worker_pid(launcher: subprocess.Popen, rank: int) -> int:
    """The pid of the worker with this RANK among the launcher's child processes."""
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            ppid = int(next(ln for ln in status.read_text().splitlines() if ln.startswith("PPid:")).split()[1])
            if ppid != launcher.pid:
                continue
            environ = (status.parent / "environ").read_bytes().split(b"\0")
        except (OSError, StopIteration):
            continue
        if f"RANK={rank}".encode() in environ:
            return int(status.parent.name)
    raise AssertionError(f"no worker with RANK={rank}")


@pytest.mark.slow
def test_a_killed_rank_ends_the_job_in_one_line_and_the_run_resumes(tmp_path):
    """kill -9 rank 1 after the first checkpoint: the job ends nonzero with one line; --resume with 2 ranks
    ends with the metrics of an uninterrupted 2-rank run (deterministic CPU)."""
    settings = [*SMOKE_MLP, "--set", "train.epochs=30", "--set", "train.deterministic=true"]
    killed, whole = tmp_path / "killed", tmp_path / "whole"
    launcher = subprocess.Popen([sys.executable, "-m", "dllab", *settings, "--nproc", "2", "--out", str(killed)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())
    deadline = time.time() + 240
    while not (killed / "checkpoints" / "sgd.pt").exists():
        assert launcher.poll() is None and time.time() < deadline, launcher.communicate()
        time.sleep(0.02)
    os.kill(_worker_pid(launcher, 1), signal.SIGKILL)
    stdout, stderr = launcher.communicate(timeout=120)
    assert launcher.returncode != 0, stderr
    # The surviving process may abort inside gloo when its peer vanishes mid-collective; the C++ runtime then
    # prints this line itself before dllab can say anything (seen under load). Every other line is dllab's.
    lines = [ln for ln in stderr.strip().splitlines() if ln != "terminate called without an active exception"]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    assert lines[0].startswith("dllab: error: process 1 of 2 was killed by SIGKILL")
    assert f"--nproc 2 --resume {killed}" in lines[0]
    assert not (killed / "metrics.json").exists()

    out = dllab("run", "--nproc", "2", "--resume", str(killed))
    assert out.returncode == 0, out.stderr
    out = dllab(*settings, "--nproc", "2", "--out", str(whole))
    assert out.returncode == 0, out.stderr
    resumed = json.loads((killed / "metrics.json").read_text())["summary"]
    assert resumed == json.loads((whole / "metrics.json").read_text())["summary"]
    drop = lambda rows: [{k: v for k, v in r.items() if k != "seconds"} for r in rows]  # noqa: E731
    assert drop(history(killed)) == drop(history(whole))


@pytest.mark.slow
def test_text_strategies_train_under_two_ranks(tmp_path):
    """full and lora fine-tune a tiny generated DistilBERT under torchrun; the trainable parameters counted
    are those of one process."""
    sys.path.insert(0, str(Path(__file__).parent))
    from test_text import _copy_tokenizer, _expected_trainable, _tiny_config, _write_dataset
    from transformers import DistilBertModel
    model = tmp_path / "tiny_distilbert"
    torch.manual_seed(0)
    DistilBertModel(_tiny_config()).save_pretrained(model)
    _copy_tokenizer(model)
    root = _write_dataset(tmp_path / "data")
    out = torchrun("run", "lab2.finetune", "--profile", "smoke", "--quiet", "--device", "cpu",
                   "--out", str(tmp_path / "run"), "--set", f"model.name={model}", "--set", f"data.root={root}",
                   "--set", "finetune.strategies=[full,lora]", "--set", "finetune.lora.r=4")
    assert out.returncode == 0, out.stderr
    run = tmp_path / "run"
    summary = json.loads((run / "metrics.json").read_text())["summary"]
    assert summary["full.trainable_params"] == _expected_trainable("full")
    assert summary["lora.trainable_params"] == _expected_trainable("lora")
    assert 0 <= summary["lora.test_acc"] <= 1
    assert json.loads((run / "env.json").read_text())["world_size"] == 2
    assert {r["variant"] for r in history(run)} >= {"full", "lora"}


def test_a_run_folder_handed_to_another_rank_answers_writes_for_that_rank(tmp_path, monkeypatch):
    """Rank 0 makes the folder and sends it pickled to the others (distributed.on_main): the rank read once per
    process must be the receiving process's, or rank 1 would log and write as rank 0 does."""
    import pickle

    from dllab.core import ranks
    from dllab.store.folder import RunFolder

    folder = RunFolder(tmp_path)
    assert folder.writes
    monkeypatch.setattr(ranks, "is_main", lambda: False)   # the process that unpickles it is rank 1
    assert not pickle.loads(pickle.dumps(folder)).writes
