"""``dllab run --nproc N ...``: torchrun's single-machine form, ``torchrun --standalone --nproc-per-node N -m
dllab run ...``, started through torchrun's own ``run`` (no launcher of dllab's own), so that a process that
dies is one line naming it and the command that continues the run, not torchrun's multi-line report.

The processes dllab starts (this launcher's workers, a sweep's points) die with the process that started
them, however it ends (``kill -9`` included): the parent names itself in ``PARENT_PID`` and the child asks
the kernel for the parent-death signal (``die_with_parent``), so no worker is left training alone.
"""
from __future__ import annotations

import ctypes
import errno
import logging
import os
import signal
import stat
import sys
import tempfile
from pathlib import Path

from dllab import DllabError
from dllab.core import cpus, distributed, environ

# Where rank 0 names its run folder for the launcher (so the line about a dead process can say what to resume).
RUN_FOLDER_FILE = environ.LAUNCH_RUN_FOLDER_FILE
_NOTE_DIR_PREFIX, _NOTE_NAME = "dllab-launch-", "run_folder"
# The PID of the dllab process that started this one (set by the launcher and the sweep for their children).
PARENT_PID = environ.PARENT_PID
_PR_SET_PDEATHSIG = 1   # linux/prctl.h
# Open files the launcher and its processes need at the least (torchrun's store, sockets, pipes; measured:
# 2 processes start with 26); below this, torchrun fails with a traceback or waits 5 minutes for a socket.
_MIN_OPEN_FILES, _OPEN_FILES_PER_PROCESS = 32, 8


def under_launcher() -> bool:
    """This process was started by ``launch`` (which speaks for it when another process dies)."""
    return _note_file() is not None


def _note_file() -> Path | None:
    """The file ``RUN_FOLDER_FILE`` names, if it is the launcher's: ``run_folder`` in a private
    ``dllab-launch-*`` folder of this user. A leftover or crafted variable naming any other file (~/.bashrc)
    is ignored: dllab writes no file it did not create."""
    name = environ.launch_run_folder_file()
    if not name:
        return None
    path = Path(name)
    try:
        folder, note = os.lstat(path.parent), os.lstat(path)
    except OSError:
        return None
    ours = (path.name == _NOTE_NAME and path.parent.name.startswith(_NOTE_DIR_PREFIX)
            and stat.S_ISDIR(folder.st_mode) and not folder.st_mode & 0o077 and stat.S_ISREG(note.st_mode)
            and folder.st_uid == note.st_uid == os.getuid())
    return path if ours else None


class FolderNote(list):
    """The cli's list of the started run folder, on rank 0 under ``launch``: appending also names the folder
    in the launcher's file (which the launcher created empty: a file holding anything is never written)."""

    def append(self, path) -> None:
        super().append(path)
        note = _note_file()
        if note is None:
            return
        try:
            fd = os.open(note, os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC)   # no O_CREAT, no O_TRUNC
        except OSError:
            return
        try:
            st = os.fstat(fd)
            if stat.S_ISREG(st.st_mode) and st.st_size == 0 and st.st_nlink == 1:
                os.write(fd, f"{path}\n".encode())
        except OSError:
            pass   # the note only improves the launcher's message; the run goes on without it
        finally:
            os.close(fd)


def die_with_parent() -> None:
    """In a process a dllab parent started (``PARENT_PID`` set): the kernel sends SIGKILL to this process
    when that parent ends, however it ends (Linux's parent-death signal, ``prctl(PR_SET_PDEATHSIG)``). A
    parent already gone (or a variable left over in a shell): one line, exit 2. SIGKILL, not SIGTERM: a
    worker blocked in a collective or ignoring SIGTERM must not train on; the run folder stays resumable, as
    after any kill -9. Elsewhere than Linux, nothing (a killed parent may leave its children running, as
    before). The variable is removed, so this process's own children are not tied to their grandparent."""
    parent = environ.take_parent_pid()
    if parent is None or not sys.platform.startswith("linux"):
        return
    try:
        armed = ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) == 0
    except (OSError, AttributeError):
        armed = False
    if armed and str(os.getppid()) != parent:    # the parent died before the signal was armed
        try:
            print(f"dllab: error: {PARENT_PID}={parent[:20]!r} names the process that started this one, which "
                  f"has ended; stopping (unset {PARENT_PID} to run dllab on its own)", file=sys.stderr)
        except OSError:
            pass    # the parent's end of the pipe is gone with it
        sys.exit(2)


def child_env(env: dict[str, str]) -> dict[str, str]:
    """``env`` for a dllab child process of this one, which then dies with this process (``die_with_parent``)."""
    return {**env, PARENT_PID: str(os.getpid())}


def without_nproc(argv: list[str]) -> list[str]:
    """``argv`` less its ``--nproc N`` (or ``--nproc=N``, or an abbreviation argparse accepted, ``--np 2``)."""
    rest = list(argv)
    i = next(i for i, a in enumerate(rest) if len(a.split("=")[0]) > 3 and "--nproc".startswith(a.split("=")[0]))
    del rest[i:i + (1 if "=" in rest[i] else 2)]
    return rest


def resume_command(path, nproc: int) -> str:
    """The command that continues the run in ``path`` with ``nproc`` processes, quoted."""
    if nproc == 1:
        return f"`dllab run --resume {path}`"
    return f"`dllab run --nproc {nproc} --resume {path}` (or torchrun with {nproc} processes in all: `... -m " \
           f"dllab run --resume {path}`)"


def interrupted(path, nproc: int) -> str:
    """The line an interrupted run ends with (Ctrl-C, SIGTERM): what to resume, if anything."""
    if path:
        return f"dllab: interrupted; continue with {resume_command(path, nproc)}"
    return "dllab: interrupted before a run folder was created; nothing to resume"


def launch(nproc: int, argv: list[str]) -> int:
    """Run ``dllab <argv>`` (``argv`` holding ``--nproc``) in ``nproc`` processes; returns the exit code. A
    process's own one-line error was printed by that process; a process that died (killed, crashed) is
    named here."""
    if nproc < 1:
        raise DllabError(f"--nproc {nproc}: give the number of processes, 1 or more")
    if distributed.launched():
        raise DllabError("--nproc starts torchrun itself; under torchrun, leave --nproc out")
    _check_open_files(_MIN_OPEN_FILES + _OPEN_FILES_PER_PROCESS * nproc)
    try:
        with tempfile.TemporaryDirectory(prefix=_NOTE_DIR_PREFIX) as tmp:
            return _torchrun(nproc, argv, Path(tmp) / _NOTE_NAME)
    except Exception as e:
        if _out_of_files(e):    # torchrun's sockets and pipes: a DistNetworkError or RuntimeError naming EMFILE
            raise DllabError(_too_many_open_files()) from e
        raise


def _torchrun(nproc: int, argv: list[str], folder_file: Path) -> int:
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser, run

    if not environ.omp_num_threads():   # the cores split between the processes (torchrun would say 1)
        os.environ["OMP_NUM_THREADS"] = str(max(1, cpus.usable() // nproc))
    # torchrun's agent logs its rendezvous, signals and a multi-line report per failure; the processes and
    # the line below say what matters.
    for name in [n for n in logging.root.manager.loggerDict if n.startswith("torch.distributed.elastic")]:
        logging.getLogger(name).setLevel(logging.CRITICAL)
    folder_file.touch(mode=0o600, exist_ok=False)    # empty: rank 0 writes into it only then (FolderNote)
    os.environ[RUN_FOLDER_FILE] = str(folder_file)
    os.environ[PARENT_PID] = str(os.getpid())          # the workers die with this process (die_with_parent)
    args = get_args_parser().parse_args(["--standalone", f"--nproc-per-node={nproc}", "-m", "dllab",
                                         *without_nproc(argv)])
    try:
        run(args)
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
    limit = _open_files_limit()
    if limit is not None and limit < needed:
        raise DllabError(_too_many_open_files(needed))


def _open_files_limit() -> int | None:
    """The soft limit on open files (``ulimit -n``); None where there is none (or it cannot be read)."""
    try:
        import resource
    except ImportError:     # not a Unix
        return None
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return None if soft == resource.RLIM_INFINITY else soft


def _too_many_open_files(needed: int | None = None) -> str:
    limit = _open_files_limit()
    allows = f"`ulimit -n` allows {limit}" + (f", at least {needed} are needed" if needed else "") \
        if limit is not None else "the system's limit"
    return f"too many open files ({allows}); raise `ulimit -n`, e.g. `ulimit -n 1024`"


def _out_of_files(error: BaseException) -> bool:
    """``error`` says the process ran out of file descriptors (EMFILE), as an OSError or in a message."""
    if isinstance(error, OSError) and error.errno in (errno.EMFILE, errno.ENFILE):
        return True
    text = str(error)
    return "EMFILE" in text or "too many open files" in text.lower()
