"""The processes dllab starts, and what they say: torch-free, as the CLI imports it before torch loads.

The processes dllab starts (the ``dllab run --nproc`` launcher's workers, see ``runner.torchrun``; a sweep's
points) die with the process that started them, however it ends (``kill -9`` included): the parent names
itself in ``PARENT_PID`` and the child asks the kernel for the parent-death signal (``die_with_parent``), so no
worker is left training alone. Under the launcher, rank 0 names its run folder in a file the launcher made
(``tell_launcher``), so that the launcher's line about a dead process can say what to resume. ``interrupted``
and ``resume_command`` give the lines an interrupted run ends with.
"""
from __future__ import annotations

import ctypes
import os
import signal
import stat
import sys
from pathlib import Path

from dllab.core import environ

# Where rank 0 names its run folder for the launcher (so the line about a dead process can say what to resume).
RUN_FOLDER_FILE = environ.LAUNCH_RUN_FOLDER_FILE
NOTE_DIR_PREFIX, NOTE_NAME = "dllab-launch-", "run_folder"
# The PID of the dllab process that started this one (set by the launcher and the sweep for their children).
PARENT_PID = environ.PARENT_PID
_PR_SET_PDEATHSIG = 1   # linux/prctl.h


def under_launcher() -> bool:
    """This process was started by ``torchrun.launch`` (which speaks for it when another process dies)."""
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
    ours = (path.name == NOTE_NAME and path.parent.name.startswith(NOTE_DIR_PREFIX)
            and stat.S_ISDIR(folder.st_mode) and not folder.st_mode & 0o077 and stat.S_ISREG(note.st_mode)
            and folder.st_uid == note.st_uid == os.getuid())
    return path if ours else None


def tell_launcher(path) -> None:
    """Under ``torchrun.launch``, name the started run folder ``path`` in the launcher's file (which the launcher
    created empty: a file holding anything is never written); elsewhere, nothing."""
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
