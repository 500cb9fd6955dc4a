"""Files written so that a reader never sees half of one: a temp file beside the target, renamed onto it
(``atomic_write``), with the modes any new file gets under the umask (not mkstemp's private 0600); lines
appended without following a link (``append_line``); CSV rows and JSON the same way (PNG figures: ``figures``).

A write the system cuts short (a full disk, ``ulimit -f``) is the OSError that names the file, not a library's
RuntimeError; Ctrl-C during a write waits until the file is in place. Torch-free.
"""
from __future__ import annotations

import contextlib
import csv
import functools
import io
import json
import os
import shutil
import signal
import tempfile
import threading
import uuid
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterator


TMP_SUFFIX = ".tmp"


@functools.cache
def _umask() -> int:
    """The process's umask, read once, when the first file or folder is made (not at import: importing a
    module changes nothing). os.umask has no read-only form, so it is set to 0 and straight back."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def file_mode() -> int:
    return 0o666 & ~_umask()


def dir_mode() -> int:
    return 0o777 & ~_umask()


@contextlib.contextmanager
def sigint_deferred():
    """Ctrl-C while a file is being written waits until it is renamed into place (then KeyboardInterrupt is
    raised as usual): an interrupted write could otherwise surface as a library's RuntimeError."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda sig, frame: caught.append(sig))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if caught:
        raise KeyboardInterrupt


def atomic_write(path: Path, write: Callable[[BinaryIO], Any]) -> None:
    """``write(f)`` fills a temp file beside ``path``, which is then renamed onto it: a reader never sees
    half a file, and a failure (in ``write`` too) leaves ``path`` as it was. E.g.
    ``atomic_write(p, lambda f: torch.save(state, f))`` or ``lambda f: np.savez(f, **arrays)``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with sigint_deferred():
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TMP_SUFFIX)
        try:
            os.fchmod(fd, file_mode())
            with io.BufferedWriter(_WholeWrites(fd, "wb")) as f:
                write(f)
            os.replace(tmp, path)
        except BaseException as e:
            _unlink(tmp)
            cause = _os_error(e)
            if cause is not None and cause.filename is None:   # name the file (disk full, size limit)
                raise OSError(cause.errno, cause.strerror, str(path)) from e
            if cause is not None and cause is not e:
                raise cause from e   # e.g. torch.save's RuntimeError raised while closing after the OSError
            raise


def _os_error(e: BaseException | None) -> OSError | None:
    """The OSError behind ``e``: itself, or one a library's own error was raised while handling."""
    seen = 0
    while e is not None and seen < 10:
        if isinstance(e, OSError):
            return e
        e, seen = e.__context__ or e.__cause__, seen + 1
    return None


def _unlink(tmp: str) -> None:
    try:
        os.unlink(tmp)
    except OSError:
        pass


class _WholeWrites(io.FileIO):
    """A file that writes all it is given or raises. At a file-size limit (``ulimit -f``) or on a full disk the
    system first writes part of a buffer; FileIO reports that short count, which torch.save and zipfile take
    for a damaged stream (a RuntimeError: "unexpected pos"). Writing the rest turns it into the OSError that
    says what ran out (EFBIG, ENOSPC)."""

    def write(self, b) -> int:
        view = memoryview(b).cast("B")
        done = 0
        while done < len(view):
            done += super().write(view[done:])
        return done


def remove_stale_temp_files(folder: Path) -> None:
    """Delete the ``.<name>.*.tmp`` files (and ``atomic_folder``'s folders) an atomic write left behind when its
    process was killed."""
    for p in list(Path(folder).rglob(f".*{TMP_SUFFIX}")):
        if p.is_file():
            p.unlink(missing_ok=True)
        elif p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)


@contextlib.contextmanager
def atomic_folder(path: Path) -> Iterator[Path]:
    """A temp folder beside ``path`` to fill (e.g. by a library's ``save_pretrained``), which replaces ``path``
    once the block ends without an error (else it is removed, and ``path`` stays as it was): a reader finds the
    old folder whole or the new one whole, never a mix. An older ``path`` is renamed aside, the new one renamed
    into place, then the old one deleted (POSIX cannot swap two folders in one rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=TMP_SUFFIX))
    try:
        os.chmod(tmp, dir_mode())
        yield tmp
        with sigint_deferred():
            old = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.old{TMP_SUFFIX}")
            moved = path.exists()
            if moved:
                os.rename(path, old)
            try:
                os.rename(tmp, path)
            except BaseException:
                if moved:   # put the old folder back: a failed save loses nothing
                    os.rename(old, path)
                raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(old, ignore_errors=True)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def append_line(path: Path, line: str) -> None:
    """Append ``line`` to ``path`` without following a symlink (a crafted run folder's log.txt linked to
    ~/.bashrc must not receive it), creating the file with the umask's mode."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666)
    with os.fdopen(fd, "a", encoding="utf-8") as f:
        f.write(line + "\n")


def save_png(fig, path: Path) -> Path:
    """A matplotlib figure as a PNG at the reports' resolution, written atomically. The figures are
    ``matplotlib.figure.Figure`` objects outside pyplot (``report.plots``): nothing to close, the garbage
    collector frees them."""
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=110, bbox_inches="tight"))
    return path


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def _json_default(o):
    if hasattr(o, "item"):
        return o.item()
    if hasattr(o, "tolist"):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def write_csv(path: Path, rows: list[dict[str, Any]], empty_header: list[str] | tuple = ()) -> None:
    """``rows`` as a CSV file (atomically): the columns are every key of the rows, in first-seen order (a row
    without a key leaves its cell empty); ``empty_header`` heads a file with no rows."""
    keys: list[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=keys or list(empty_header))
    w.writeheader()
    w.writerows(rows)
    atomic_write_text(path, buf.getvalue())
