"""One writer per folder: the process that writes a run or sweep folder holds ``<folder>/.dllab.lock``.

The lock is an advisory ``flock`` on that file (``filelock.lock_descriptor``: the primitive of filelock's
``FileLock``), taken without waiting. The kernel drops it when its process ends, however it ends, so a lock
left by a killed process is taken over by the next writer without any clean-up. The file holds the holder's
PID and host (read by the process that is refused, to name them); it is opened without following a symlink
and never truncated before the lock is held. Torch-free.
"""
from __future__ import annotations

import errno
import os
import socket
import stat
from pathlib import Path

from filelock import lock_descriptor

from dllab import RunFolderError

LOCK_NAME = ".dllab.lock"
_held: dict[str, int] = {}   # resolved folder -> descriptor of its lock file, kept open while this process lives


def hold(folder: Path, what: str = "run folder") -> None:
    """Take the writer's lock of ``folder`` for the rest of this process (idempotent). Another live process
    holding it: one-line ``DllabError`` naming its PID. ``what`` names the folder's kind in that line.

    A folder inside one this process already holds is covered by that lock (a multi-seed run's ``seed<N>/``
    folders): it takes no lock of its own, so the sub-folders carry no lock file and a writer never waits
    on itself."""
    key = str(Path(folder).resolve())
    if _covered(key):
        return
    fd = _open(Path(key) / LOCK_NAME, what)
    try:
        if not lock_descriptor(fd, blocking=False):
            raise RunFolderError(f"{folder} is being written by {holder(fd)}; wait for it to finish (or stop it), "
                                 f"then try again")
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()} {socket.gethostname()}\n".encode(), 0)
    except BaseException:
        os.close(fd)
        raise
    _held[key] = fd


def _open(path: Path, what: str) -> int:
    """The lock file, created if missing; a link, folder or FIFO in its place (a crafted or damaged folder)
    is a one-line error, never followed or waited on."""
    not_regular = RunFolderError(f"{path} is not a regular file; a {what} may hold only regular files and folders "
                                 f"(remove {path.name})")
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, 0o666)
    except OSError as e:
        if e.errno in (errno.ELOOP, errno.EISDIR, errno.ENXIO):
            raise not_regular from e
        raise
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise not_regular
    return fd


def _covered(key: str) -> bool:
    """``key`` (a resolved folder) or a folder above it is held by this process."""
    return key in _held or any(str(parent) in _held for parent in Path(key).parents)


def holder(fd: int) -> str:
    """'process PID on HOST' as the holder wrote it into the lock file, or 'another process'."""
    try:
        pid, host = os.pread(fd, 200, 0).decode("ascii").split()[:2]
        return f"process {int(pid)} on {host}" if host != socket.gethostname() else f"process {int(pid)}"
    except (OSError, ValueError, UnicodeDecodeError):
        return "another process"


def release(folder: Path) -> None:
    """Give the lock of ``folder`` back (tests, and a folder this process is done with)."""
    fd = _held.pop(str(Path(folder).resolve()), None)
    if fd is not None:
        os.close(fd)   # closing the descriptor drops the flock
