"""Reading what a user can hand in: a run or sweep folder from elsewhere, and the values inside it.

A folder a classmate shared, or a download, may hold anything: symbolic links to the user's own files, a FIFO
or /dev/zero where a file should be, a YAML alias bomb, JSON nested 200,000 deep, config values carrying
newlines and terminal escapes. So:
  - ``check_tree``: a folder dllab reads or writes holds only regular files and folders (no symlink, FIFO,
    socket or device anywhere inside); one line names the first offender.
  - ``read_bytes``: opens a regular file without following a symlink and without blocking (a FIFO is refused,
    not waited on), and reads at most a limit.
  - ``read_json`` / ``load_yaml`` / ``read_csv``: bounded parsers (size; nesting depth; no YAML aliases; a CSV
    whose rows match its header). Every problem is one ``DllabError`` naming the file.
  - ``printable``: a value shown in a log line, on the console or in a report has its control characters
    escaped, so it can neither start a new line (a planted command) nor drive the terminal.
Torch-free.
"""
from __future__ import annotations

import csv
import io
import json
import os
import re
import stat
from pathlib import Path
from typing import Any, BinaryIO

import yaml

from dllab import DllabError, RunFolderError

MiB = 2 ** 20
JSON_LIMIT = 16 * MiB        # env.json, metrics.json, results, report_state.json: kilobytes when dllab wrote them
TEXT_LIMIT = 4 * MiB         # config.yaml, history.csv
MAX_DEPTH = 64               # nesting of a JSON or YAML document: dllab's own files use fewer than 8 levels
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def check_tree(folder: Path, what: str = "run folder") -> None:
    """Refuse ``folder`` (which must be a real folder, not a link) if anything inside it is not a regular
    file or a folder: a symlink could send a read or a write outside it, a FIFO or device could hang or flood
    a read. One line names the first such entry."""
    folder = Path(folder)
    mode = os.lstat(folder).st_mode if folder.exists() or folder.is_symlink() else None
    if mode is None:
        raise RunFolderError(f"{folder}: no such folder")
    if stat.S_ISLNK(mode):
        folder = folder.resolve()   # the folder the user named may be a link; nothing inside it may be
    elif not stat.S_ISDIR(mode):
        raise RunFolderError(f"{folder} is not a folder")
    for root, dirs, files in os.walk(folder, followlinks=False):
        for name in dirs + files:
            p = Path(root) / name
            m = os.lstat(p).st_mode
            if not (stat.S_ISREG(m) or stat.S_ISDIR(m)):
                raise RunFolderError(f"{p} is {_kind(m)}; a {what} from elsewhere may hold only regular files and "
                                     "folders (remove it, or copy the folder without it)")


def _kind(mode: int) -> str:
    return ("a symbolic link" if stat.S_ISLNK(mode) else "a FIFO" if stat.S_ISFIFO(mode)
            else "a socket" if stat.S_ISSOCK(mode) else "a device file")


def open_regular(path: Path, limit: int) -> BinaryIO:
    """``path`` opened for reading if it is a regular file (not a symlink, FIFO, device or folder) of at most
    ``limit`` bytes; opened without blocking, so a FIFO is refused rather than waited on."""
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError as e:
        raise RunFolderError(f"{path} is missing") from e
    except OSError as e:
        if os.path.islink(path):
            raise RunFolderError(f"{path} is a symbolic link; dllab reads only regular files there") from e
        raise RunFolderError(f"{path} cannot be read: {e.strerror}") from e
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_size > limit:
        os.close(fd)
        if not stat.S_ISREG(st.st_mode):
            raise RunFolderError(f"{path} is {'a folder' if stat.S_ISDIR(st.st_mode) else _kind(st.st_mode)}, "
                                 "not a regular file")
        raise RunFolderError(f"{path} is {st.st_size / MiB:.1f} MiB, more than the {limit / MiB:.0f} MiB such a "
                             "file can be; it is not a file dllab wrote")
    return os.fdopen(fd, "rb")


def read_bytes(path: Path, limit: int) -> bytes:
    """The bytes of regular file ``path`` (see ``open_regular``), at most ``limit`` of them."""
    with open_regular(path, limit) as f:
        data = f.read(limit + 1)
    if len(data) > limit:   # grew while being read
        raise RunFolderError(f"{path} is larger than the {limit / MiB:.0f} MiB such a file can be")
    return data


def read_text(path: Path, limit: int = TEXT_LIMIT) -> str:
    try:
        return read_bytes(path, limit).decode("utf-8")
    except UnicodeDecodeError as e:
        raise RunFolderError(f"{path} is not UTF-8 text") from e


def read_json(path: Path, what: str = "", limit: int = JSON_LIMIT) -> Any:
    """A JSON document dllab wrote, read with bounds (size, nesting depth, number length); any problem is one
    line naming the file, with ``what`` (what the user can do about it) appended."""
    path = Path(path)
    try:
        text = read_text(path, limit)
    except DllabError as e:
        raise type(e)(f"{e}{what}") from e   # (the same class: a RunFolderError)
    try:
        obj = json.loads(text)
    except RecursionError as e:
        raise RunFolderError(f"{path} is nested too deeply to be a file dllab wrote{what}") from e
    except ValueError as e:   # JSONDecodeError, and int()'s limit on digits
        raise RunFolderError(f"{path} is not valid JSON ({_first_line(e)}){what}") from e
    if _depth(obj) > MAX_DEPTH:
        raise RunFolderError(f"{path} is nested too deeply to be a file dllab wrote{what}")
    return obj


def _depth(obj: Any, level: int = 0) -> int:
    """Nesting depth of parsed JSON/YAML, stopping as soon as it passes MAX_DEPTH."""
    if level > MAX_DEPTH or not isinstance(obj, (dict, list)):
        return level
    children = obj.values() if isinstance(obj, dict) else obj
    return max((_depth(c, level + 1) for c in children), default=level + 1)


def _first_line(e: BaseException) -> str:
    return str(e).splitlines()[0][:120] if str(e) else type(e).__name__


class _NoAliasLoader(yaml.SafeLoader):
    """PyYAML's safe loader without anchors, aliases or explicit tags: dllab's config.yaml never uses them, an
    alias bomb (a billion laughs) expands a small file into gigabytes, and a tag turns text into another type
    behind the checks on text (``!!binary`` bytes may carry control characters)."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.composer.ComposerError(None, None, "YAML aliases are not allowed", event.start_mark)
        event = self.peek_event()
        if getattr(event, "tag", None) not in (None, "!"):   # "!": a quoted scalar's non-specific tag
            raise yaml.composer.ComposerError(None, None, "YAML tags are not allowed", event.start_mark)
        node = super().compose_node(parent, index)
        if getattr(node, "anchor", None) is not None:
            raise yaml.composer.ComposerError(None, None, "YAML anchors are not allowed", node.start_mark)
        return node


def load_yaml(text: str, origin: str, fix: str = "restore it or start a new run") -> Any:
    """``text`` parsed as YAML without aliases or tags and with a bounded depth; errors are one line naming
    ``origin`` and ending in ``fix``."""
    if len(text) > TEXT_LIMIT:
        raise RunFolderError(f"{origin} is larger than the {TEXT_LIMIT // MiB} MiB a config can be")
    try:
        data = yaml.load(text, Loader=_NoAliasLoader)   # noqa: S506 (a SafeLoader subclass)
    except RecursionError as e:
        raise RunFolderError(f"{origin} is nested too deeply to be a dllab config") from e
    except yaml.YAMLError as e:
        problem = getattr(e, "problem", None) or type(e).__name__
        raise RunFolderError(f"{origin} is not valid YAML ({problem}); {fix}") from e
    if _depth(data) > MAX_DEPTH:
        raise RunFolderError(f"{origin} is nested too deeply to be a dllab config")
    return data


_COLUMN = re.compile(r"[^\x00-\x1f\x7f]{1,200}")


def read_csv(path: Path, limit: int = TEXT_LIMIT) -> list[dict[str, str]]:
    """Rows of a CSV file dllab wrote: a header of distinct one-line column names, every row as long as the header (cells of
    at most 1,000 characters). Anything else is one line naming the file and the row."""
    text = read_text(path, limit)
    rows = list(csv.reader(io.StringIO(text, newline="")))
    if not rows:
        return []
    header = rows[0]
    bad = next((h for h in header if not _COLUMN.fullmatch(h)), None)
    if bad is not None or len(set(header)) != len(header):
        raise RunFolderError(f"{path}: its header is not one dllab writes ({printable(str(bad or header))[:80]})")
    out = []
    for i, row in enumerate(rows[1:], start=2):
        if len(row) != len(header):
            raise RunFolderError(f"{path}: row {i} has {len(row)} cells, the header {len(header)}")
        if any(len(c) > 1000 for c in row):
            raise RunFolderError(f"{path}: row {i} has a cell longer than 1,000 characters")
        out.append(dict(zip(header, row)))
    return out


def printable(value: Any) -> str:
    """``str(value)`` with control characters (newline, carriage return, escape, ...) shown as escapes: a value
    from a config or a run folder stays on its line wherever it is printed or logged."""
    text = str(value)
    return _CONTROL.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), text)


def md_text(value: Any) -> str:
    """``value`` (from a run folder or the user) as Markdown text on one line: a control character (a newline from
    a folder name or a config value) shown as its escape (``\\n``), not breaking the list or table it is in, and
    ``<`` as ``&lt;``, so ``<script>`` is text, not HTML a Markdown viewer would pass on. The Markdown twin of
    ``html.escape``."""
    return printable(value).replace("<", "&lt;")


def md_cell(value: Any) -> str:
    """``value`` as one Markdown table cell: ``|`` escaped too, so it does not start another column."""
    return md_text(value).replace("|", "\\|")


def has_control(text: str) -> bool:
    return _CONTROL.search(text) is not None
