"""``dllab run --nproc N ...``: torchrun's single-machine form, ``torchrun --standalone --nproc-per-node N -m
dllab run ...``, started through torchrun's own ``run`` (no launcher of dllab's own), so that a process that
dies is one line naming it and the command that continues the run, not torchrun's multi-line report. The
workers die with the launcher, and rank 0 names its run folder for it (``runner.launch``).
"""
from __future__ import annotations

import errno
import logging
import os
import signal
import sys
import tempfile
from pathlib import Path

from torch.distributed import run as elastic_run
from torch.distributed.elastic.multiprocessing.api import SignalException
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

from dllab import ConfigError, DllabError
from dllab.core import cpus, environ, ranks
from dllab.runner.launch import (NOTE_DIR_PREFIX, NOTE_NAME, PARENT_PID, RUN_FOLDER_FILE, interrupted,
                                 without_nproc)

# Open files the launcher and its processes need at the least (torchrun's store, sockets, pipes; measured:
# 2 processes start with 26); below this, torchrun fails with a traceback or waits 5 minutes for a socket.
_MIN_OPEN_FILES, _OPEN_FILES_PER_PROCESS = 32, 8


def launch(nproc: int, argv: list[str]) -> int:
    """Run ``dllab <argv>`` (``argv`` holding ``--nproc``) in ``nproc`` processes; returns the exit code. A
    process's own one-line error was printed by that process; a process that died (killed, crashed) is
    named here."""
    if nproc < 1:
        raise ConfigError(f"--nproc {nproc}: give the number of processes, 1 or more")
    if ranks.launched():
        raise ConfigError("--nproc starts torchrun itself; under torchrun, leave --nproc out")
    _check_open_files(_MIN_OPEN_FILES + _OPEN_FILES_PER_PROCESS * nproc)
    try:
        with tempfile.TemporaryDirectory(prefix=NOTE_DIR_PREFIX) as tmp:
            return _torchrun(nproc, argv, Path(tmp) / NOTE_NAME)
    except Exception as e:
        if _out_of_files(e):    # torchrun's sockets and pipes: a DistNetworkError or RuntimeError naming EMFILE
            raise DllabError(_too_many_open_files()) from e
        raise


def _torchrun(nproc: int, argv: list[str], folder_file: Path) -> int:
    if not environ.omp_num_threads():   # the cores split between the processes (torchrun would say 1)
        os.environ["OMP_NUM_THREADS"] = str(max(1, cpus.usable() // nproc))
    # torchrun's agent logs its rendezvous, signals and a multi-line report per failure; the processes and
    # the line below say what matters.
    for name in [n for n in logging.root.manager.loggerDict if n.startswith("torch.distributed.elastic")]:
        logging.getLogger(name).setLevel(logging.CRITICAL)
    folder_file.touch(mode=0o600, exist_ok=False)    # empty: rank 0 writes into it only then (tell_launcher)
    os.environ[RUN_FOLDER_FILE] = str(folder_file)
    os.environ[PARENT_PID] = str(os.getpid())          # the workers die with this process (die_with_parent)
    args = elastic_run.get_args_parser().parse_args(["--standalone", f"--nproc-per-node={nproc}", "-m", "dllab",
                                                     *without_nproc(argv)])
    try:
        elastic_run.run(args)
        return 0
    except SignalException as e:
        # Ctrl-C (SIGINT, passed on to the processes): rank 0 said how to continue. SIGTERM and the other
        # signals end the processes without a word: this process says it.
        if e.sigval != signal.SIGINT:
            print(interrupted(_noted(folder_file), nproc), file=sys.stderr)
        return 130
    except ChildFailedError as e:
        said = [f.exitcode for f in e.failures.values() if f.exitcode in (2, 130)]
        if said:
            return said[0]      # that process said why in one line already
        print(_failure_line(e, nproc, _noted(folder_file)), file=sys.stderr)
        return 1
    finally:
        os.environ.pop(RUN_FOLDER_FILE, None)
        os.environ.pop(PARENT_PID, None)


def _failure_line(e, nproc: int, folder: str) -> str:
    """The line naming the process that died first, and what to resume."""
    # the root cause: not a process torchrun stopped (SIGTERM) once another had failed, nor one that
    # aborted (SIGABRT) because its peer vanished in the middle of a collective
    r, f = min(e.failures.items(), key=lambda rf: (rf[1].exitcode in (-signal.SIGTERM, -signal.SIGABRT),
                                                   rf[1].timestamp))
    how = f"was killed by {f.signal_name()}" if f.exitcode < 0 else f"exited with code {f.exitcode}"
    hint = f"; continue with `dllab run --nproc {nproc} --resume {folder}`" if folder \
        else "; no run folder was created yet"
    return f"dllab: error: process {r} of {nproc} {how}{hint}"


def _noted(folder_file: Path) -> str:
    """The run folder rank 0 noted, or ''."""
    try:
        return folder_file.read_text().strip()
    except OSError:
        return ""


def _check_open_files(needed: int) -> None:
    """Refuse up front an open-file limit (``ulimit -n``) too low for torchrun and the processes."""
    limit = environ.open_files_limit()
    if limit is not None and limit < needed:
        raise DllabError(_too_many_open_files(needed))


def _too_many_open_files(needed: int | None = None) -> str:
    limit = environ.open_files_limit()
    allows = f"`ulimit -n` allows {limit}" + (f", at least {needed} are needed" if needed else "") \
        if limit is not None else "the system's limit"
    return f"too many open files ({allows}); raise `ulimit -n`, e.g. `ulimit -n 1024`"


def _out_of_files(error: BaseException) -> bool:
    """``error`` says the process ran out of file descriptors (EMFILE), as an OSError or in a message."""
    if isinstance(error, OSError) and error.errno in (errno.EMFILE, errno.ENFILE):
        return True
    text = str(error)
    return "EMFILE" in text or "too many open files" in text.lower()
