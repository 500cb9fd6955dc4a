"""One writer per run folder (issue #20), processes that die with their launcher or sweep, and the
launcher's own lines (SIGTERM, too few open files, its note file).

The fast tests hold a folder's lock in a small helper process, or fake torchrun's ``run``; the ones that
start torchrun or a sweep for real are marked slow.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from conftest import dllab_in_process, one_line_error

from dllab import DllabError
from dllab.runner import launch, torchrun
from dllab.core import lock

TINY = ["--profile", "smoke", "--set", "data.name=imagefolder", "--set", "train.epochs=1", "--set", "width=8"]
LONG = ["--profile", "smoke", "--set", "data.name=imagefolder", "--set", "width=8",   # + a huge train.epochs
        "--device", "cpu"]   # (--nproc 2 on a machine with one GPU: two CPU processes)
LOCK = ".dllab.lock"


def _env(**extra: str) -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", **extra}


def dllab(*args: str, env: dict | None = None, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dllab", *args], capture_output=True, text=True, timeout=300,
                          env=env or _env(), **kw)


class Holder:
    """Another process holding ``folder``'s writer lock until ``stop``/``kill``."""

    def __init__(self, folder: Path):
        code = "import sys; from dllab.core import lock; lock.hold(sys.argv[1]); print('held', flush=True); sys.stdin.read()"
        self.proc = subprocess.Popen([sys.executable, "-c", code, str(folder)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout.readline().strip() == "held"
        self.pid = self.proc.pid

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait()

    def stop(self) -> None:
        self.proc.stdin.close()
        self.proc.wait()


@pytest.fixture
def held(tmp_path):
    """(folder, holder): a folder whose lock another process holds."""
    folder = tmp_path / "folder"
    folder.mkdir()
    h = Holder(folder)
    yield folder, h
    h.kill()


def _small_run(path: Path, data_root: Path):
    from dllab.core.config import make_config
    from dllab.core.registry import get_experiment
    from dllab.runner.run import Run
    exp = get_experiment("lab1.mlp")
    cfg = make_config(exp.config_cls, exp.profiles, "smoke", ["data.name=imagefolder", f"data.root={data_root}"])
    return Run.create("lab1.mlp", cfg, out=str(path), quiet=True)


# --- the lock -----------------------------------------------------------------------------------------

def test_a_second_writer_is_refused_by_pid_and_a_dead_holders_lock_is_taken_over(held):
    folder, holder = held
    with pytest.raises(DllabError, match=f"being written by process {holder.pid};"):
        lock.hold(folder)
    holder.kill()                   # kill -9: the kernel drops the lock, nothing is cleaned up
    try:
        lock.hold(folder)
        assert (folder / LOCK).read_text().split()[0] == str(os.getpid())
    finally:
        lock.release(folder)


@pytest.mark.parametrize("kind", ["symlink", "fifo", "folder"])
def test_a_lock_file_that_is_not_a_regular_file_is_refused(tmp_path, kind):
    folder, outside = tmp_path / "run", tmp_path / "outside.txt"
    folder.mkdir()
    outside.write_text("keep")
    {"symlink": lambda p: p.symlink_to(outside), "fifo": os.mkfifo, "folder": Path.mkdir}[kind](folder / LOCK)
    with pytest.raises(DllabError, match="is not a regular file"):
        lock.hold(folder)
    assert outside.read_text() == "keep"


def test_a_new_run_holds_its_folder_and_its_seed_folders_ride_on_that_lock(tmp_path, imagefolder):
    run = _small_run(tmp_path / "r", imagefolder)
    try:
        assert (run.path / LOCK).read_text().split()[0] == str(os.getpid())
        res = subprocess.run([sys.executable, "-c", "import sys; from dllab.core import lock; lock.hold(sys.argv[1])",
                              str(run.path)], capture_output=True, text=True)
        assert res.returncode != 0 and f"being written by process {os.getpid()}" in res.stderr
        seed = _small_run(run.path / "seed1", imagefolder)   # inside: covered, no lock of its own, no wait
        assert not (seed.path / LOCK).exists()
    finally:
        lock.release(run.path)


def test_resume_is_refused_while_another_process_writes_the_folder(tmp_path, imagefolder):
    """The refused resume says who writes the folder, and changes nothing in it (no `resumes` entry)."""
    run = _small_run(tmp_path / "r", tmp_path / "no-such-data")   # a resume that got past the lock would fail later
    lock.release(run.path)
    before = (run.path / "env.json").read_text()
    holder = Holder(run.path)
    try:
        one_line_error(dllab_in_process("run", "--resume", run.path), f"being written by process {holder.pid};")
        assert (run.path / "env.json").read_text() == before
    finally:
        holder.kill()


# --- processes die with their parent -------------------------------------------------------------------

def _alive(pid: int) -> bool:
    """The process exists and is not a zombie (a reaped-later child of a dead parent counts as gone)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        kids = children.get(todo.pop(), [])
        found += kids
        todo += kids
    return found


def _gone_within(pids: list[int], seconds: float) -> list[int]:
    """The pids still alive after up to ``seconds`` (the issue's bound: none after 10 s)."""
    deadline = time.time() + seconds
    while any(_alive(p) for p in pids) and time.time() < deadline:
        time.sleep(0.1)
    return [p for p in pids if _alive(p)]


def _kill_all(pids: list[int]) -> None:
    for p in pids:
        try:
            os.kill(p, signal.SIGKILL)
        except OSError:
            pass


needs_linux = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the parent-death signal is Linux's")


@needs_linux
def test_a_child_dies_with_its_parent_even_under_kill_9(tmp_path):
    """A parent that names itself in DLLAB_PARENT_PID (as the launcher and the sweep do) takes its child
    with it when it is killed with SIGKILL."""
    child = ("from dllab.runner import launch; launch.die_with_parent(); print('armed', flush=True); "
             "import time; time.sleep(120)")
    parent = ("import os, subprocess, sys, time; from dllab.runner import launch; "
              f"c = subprocess.Popen([sys.executable, '-c', {child!r}], env=launch.child_env(dict(os.environ)), "
              "stdout=subprocess.PIPE, text=True); c.stdout.readline(); print(c.pid, flush=True); time.sleep(120)")
    p = subprocess.Popen([sys.executable, "-c", parent], stdout=subprocess.PIPE, text=True)
    child_pid = int(p.stdout.readline())
    try:
        p.kill()
        p.wait()
        assert _gone_within([child_pid], 10) == []
    finally:
        _kill_all([child_pid])


@needs_linux
def test_a_child_whose_parent_is_already_gone_exits_at_once():
    res = dllab("list", env=_env(DLLAB_PARENT_PID="1" if os.getpid() != 1 else "2"))   # not its parent
    assert res.stdout == ""
    one_line_error(res, "DLLAB_PARENT_PID", "has ended")
    assert dllab("list", env=_env(DLLAB_PARENT_PID=str(os.getpid()))).returncode == 0


def _endless_nproc_run(out, imagefolder, **popen):
    """`dllab run lab1.mlp --nproc 2` that would train for ever: a launcher with two workers to kill."""
    return subprocess.Popen([sys.executable, "-m", "dllab", "run", "lab1.mlp", *LONG, "--set",
                             f"data.root={imagefolder}", "--set", "train.epochs=100000", "--quiet",
                             "--nproc", "2", "--out", str(out)], env=_env(), **popen)


def _wait_for(folder: Path, pattern: str, proc: subprocess.Popen, seconds: float = 240) -> None:
    """Until a file matching ``pattern`` appears under ``folder`` (while ``proc`` runs)."""
    deadline = time.time() + seconds
    while not list(folder.glob(pattern)):
        assert proc.poll() is None and time.time() < deadline, proc.communicate()
        time.sleep(0.05)


def _kill_9_leaves_nothing(proc: subprocess.Popen, workers: int) -> None:
    """kill -9 ``proc``: all its descendants (found before the kill) are gone within 10 s."""
    tree = _descendants(proc.pid)
    assert len(tree) >= workers, tree
    try:
        proc.kill()
        proc.wait()
        assert _gone_within(tree, 10) == [], "orphaned processes left training"
    finally:
        _kill_all(tree)


@pytest.mark.slow
@needs_linux
def test_kill_9_of_the_nproc_launcher_leaves_no_worker(tmp_path, imagefolder):
    out = tmp_path / "run"
    launcher = _endless_nproc_run(out, imagefolder, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _wait_for(out, "checkpoints/sgd.pt", launcher)    # both workers are training
    _kill_9_leaves_nothing(launcher, workers=2)


@pytest.mark.slow
@needs_linux
def test_kill_9_of_a_sweep_leaves_no_point_running(tmp_path, imagefolder):
    out = tmp_path / "sweep"
    sweep = subprocess.Popen([sys.executable, "-m", "dllab", "sweep", "lab1.mlp", *LONG, "--set",
                              f"data.root={imagefolder}", "--grid", "train.epochs=100000", "--jobs", "1", "--quiet",
                              "--out", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=_env())
    _wait_for(out, "p*/checkpoints/sgd.pt", sweep)
    _kill_9_leaves_nothing(sweep, workers=1)


# --- the launcher's lines -------------------------------------------------------------------------------

def _fake_torchrun(monkeypatch, error: BaseException, folder: str | None = None) -> None:
    """torchrun's ``run`` replaced: rank 0 notes ``folder`` (``launch.tell_launcher``), then ``error`` is raised."""
    import torch.distributed.run

    monkeypatch.setenv("OMP_NUM_THREADS", "1")   # (the launcher would set it for good in this process)

    def run(args):
        if folder:
            launch.tell_launcher(folder)
        raise error
    monkeypatch.setattr(torch.distributed.run, "run", run)


def test_sigterm_to_the_launcher_ends_with_the_resume_hint(monkeypatch, capsys):
    from torch.distributed.elastic.multiprocessing.api import SignalException
    _fake_torchrun(monkeypatch, SignalException("got SIGTERM", signal.SIGTERM), "runs/x")
    assert torchrun.launch(2, ["run", "lab1.mlp", "--nproc", "2"]) == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [launch.interrupted("runs/x", 2)]
    assert err[0].startswith("dllab: interrupted; continue with `dllab run --nproc 2 --resume runs/x`")
    _fake_torchrun(monkeypatch, SignalException("got SIGINT", signal.SIGINT), "runs/x")
    assert torchrun.launch(2, ["run", "lab1.mlp", "--nproc", "2"]) == 130
    assert capsys.readouterr().err == ""      # Ctrl-C: rank 0 said it (the processes got the signal too)


def test_running_out_of_open_files_in_torchrun_is_one_line(monkeypatch):
    from torch.distributed import DistNetworkError
    _fake_torchrun(monkeypatch, DistNetworkError("The server socket has failed to bind. port: 0, useIpv6: 0, "
                                                 "code: -24, name: EMFILE, message: too many open files"))
    with pytest.raises(DllabError, match=r"too many open files .*raise `ulimit -n`"):
        torchrun.launch(2, ["run", "lab1.mlp", "--nproc", "2"])


@pytest.mark.slow   # starts the torchrun launcher for real
@needs_linux
def test_ulimit_n_20_with_nproc_is_one_line():
    res = subprocess.run(["sh", "-c", 'ulimit -n 20 && exec "$0" -m dllab run lab1.mlp --profile smoke --device cpu '
                          '--nproc 2', sys.executable], capture_output=True, text=True, timeout=300, env=_env())
    one_line_error(res, "too many open files", "raise `ulimit -n`")


def test_the_launcher_note_is_written_only_into_the_launchers_own_empty_file(tmp_path, monkeypatch):
    victim = tmp_path / "bashrc"
    victim.write_text("keep me\n")
    for name in (victim, tmp_path / "dllab-launch-x" / "run_folder"):   # any file; a look-alike in an open folder
        name.parent.mkdir(exist_ok=True)
        name.touch()
        monkeypatch.setenv(launch.RUN_FOLDER_FILE, str(name))
        assert not launch.under_launcher()
        launch.tell_launcher("runs/x")
    assert victim.read_text() == "keep me\n" and (tmp_path / "dllab-launch-x" / "run_folder").read_text() == ""
    with tempfile.TemporaryDirectory(prefix="dllab-launch-") as own:      # as the launcher makes it
        note = Path(own) / "run_folder"
        note.touch()
        monkeypatch.setenv(launch.RUN_FOLDER_FILE, str(note))
        assert launch.under_launcher()
        launch.tell_launcher("runs/x")
        launch.tell_launcher("runs/y")        # a file that holds something is never written again
        assert note.read_text() == "runs/x\n"


def test_the_batch_check_of_nproc_comes_before_the_folder_and_the_data(tmp_path, monkeypatch):
    from dllab.core import distributed
    from dllab.experiments import common
    from dllab.runner.experiment import run_experiment
    loaded = []
    monkeypatch.setattr(distributed, "part", lambda: (0, 3))
    monkeypatch.setattr(common, "load_data", lambda *a, **k: loaded.append(a) or pytest.fail("data loaded"))
    with pytest.raises(DllabError, match=r"train.batch_size=128 .* multiple of 3"):
        run_experiment("lab1.mlp", "smoke", ["train.batch_size=128"], out=str(tmp_path / "r"), quiet=True)
    assert loaded == [] and not (tmp_path / "r").exists()


# --- end to end -----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    from conftest import make_imagefolder
    base = tmp_path_factory.mktemp("lock")
    images = make_imagefolder(base / "images")
    out = base / "run"
    res = dllab("run", "lab1.mlp", *TINY, "--set", f"data.root={images}", "--set", "train.deterministic=true",
                "--out", str(out), "--quiet")
    assert res.returncode == 0, res.stderr
    return out


@pytest.mark.slow
def test_two_resumes_of_one_folder_one_runs_the_other_names_it(finished, tmp_path):
    """The first resume holds the folder (and is paused there, so the second surely meets it); the second
    exits 2 naming it; the first then ends with the metrics of the uninterrupted run, one resume recorded."""
    run = tmp_path / "run"
    run.mkdir()
    for name in ("config.yaml", "env.json"):   # the folder as just created: the resume trains everything
        shutil.copy(finished / name, run / name)
    first = subprocess.Popen([sys.executable, "-m", "dllab", "run", "--resume", str(run), "--quiet"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())
    try:
        deadline = time.time() + 240
        while not (run / LOCK).exists() or (run / LOCK).read_text().split()[:1] != [str(first.pid)]:
            assert first.poll() is None and time.time() < deadline, first.communicate()
            time.sleep(0.02)
        first.send_signal(signal.SIGSTOP)
        one_line_error(dllab("run", "--resume", str(run), "--quiet"), f"{run} is being written by process "
                                                                      f"{first.pid};")
    finally:
        first.send_signal(signal.SIGCONT)
    _, stderr = first.communicate(timeout=300)
    assert first.returncode == 0, stderr
    metrics = lambda folder: json.loads((folder / "metrics.json").read_text())["summary"]  # noqa: E731
    assert metrics(run) == metrics(finished)
    assert len(json.loads((run / "env.json").read_text())["resumes"]) == 1
    assert (run / "log.txt").read_text().count("resuming") == 1


@pytest.mark.slow
@needs_linux
def test_sigterm_to_the_nproc_launcher_says_how_to_continue(tmp_path, imagefolder):
    out = tmp_path / "run"
    launcher = _endless_nproc_run(out, imagefolder, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for(out, "checkpoints/sgd.pt", launcher)
    tree = _descendants(launcher.pid)
    try:
        launcher.terminate()
        _, stderr = launcher.communicate(timeout=120)
    finally:
        _kill_all(tree)
    assert launcher.returncode == 130
    assert stderr.strip().splitlines()[-1] == launch.interrupted(out, 2), stderr
