"""Every environment variable dllab reads, read and checked here, in one place (torch-free).

Each reader returns a typed value or raises a one-line ``DllabError`` that names the variable, its value and
what would be accepted. The commands that compute (run, sweep, doctor) call ``check`` before any work, so a
bad value is one line before a folder exists; the others (list, report, compare) never read what they do not
need, and the helpers that every command calls (``launch_info``) fall back to a single process rather than
fail there.

One reading everywhere:
  - a path (``DLLAB_DATA``, ``DLLAB_CACHE``, ``DLLAB_RUNS``, ``DLLAB_SWEEPS``): empty means unset, not the
    current directory;
  - a switch (``DLLAB_OFFLINE``, ``HF_HUB_OFFLINE``, ``TRANSFORMERS_OFFLINE``): 1/true/yes/on is on,
    0/false/no/off or empty is off, anything else is an error;
  - ``HF_ENDPOINT`` is read only when the hub may be used (not offline);
  - torchrun's variables (``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``, ``LOCAL_WORLD_SIZE``, ``MASTER_ADDR``,
    ``MASTER_PORT``) count only in a process torchrun started (it sets ``TORCHELASTIC_RUN_ID``);
  - ``OMP_WAIT_POLICY`` as libgomp reads it (ACTIVE or PASSIVE, any case, blanks around);
  - ``DLLAB_DEBUG`` (a switch): the CLI prints the full traceback before its one-line error;
  - what dllab hands its own child processes (``DLLAB_LAUNCH_RUN_FOLDER_FILE``, ``DLLAB_PARENT_PID``,
    ``DLLAB_MLFLOW_PARENT_RUN_ID``) and what
    it passes on to libraries (``OMP_NUM_THREADS``, ``MLFLOW_TRACKING_URI``): read here too, empty as unset.
"""
from __future__ import annotations

import functools
import os
import socket
import sys
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse, urlsplit

import platformdirs

try:
    import resource           # the process's limits (ulimit): Unix only
except ImportError:           # Windows: no limits to read
    resource = None

from dllab import ConfigError, DllabError
from dllab.core import untrusted

TRUE_WORDS = ("1", "true", "yes", "on")
FALSE_WORDS = ("0", "false", "no", "off", "")
HUB_OFFLINE_VARIABLES = ("DLLAB_OFFLINE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
DEFAULT_HF_ENDPOINT = "https://huggingface.co"
OMP_WAIT_POLICIES = ("ACTIVE", "PASSIVE")
SHOWN_CHARS = 60          # a value longer than this is cut in messages (a message stays one short line)


def shown(value: str) -> str:
    """``value`` as a message shows it: control characters escaped (a message stays one line), cut when long."""
    text = untrusted.printable(value)
    return text if len(text) <= SHOWN_CHARS else text[:SHOWN_CHARS] + "..."


def warn(message: str) -> None:
    """One warning line on stderr, from rank 0 only under torchrun (the other ranks would repeat it)."""
    if launch_info().rank == 0:
        print(f"dllab: warning: {message}", file=sys.stderr, flush=True)


def text(name: str) -> str:
    """The variable's value with surrounding blanks removed; '' when unset or blank."""
    return os.environ.get(name, "").strip()


# --- folders ------------------------------------------------------------------------------------------

def path(name: str, default: str | Path) -> Path:
    """A folder named by ``name``; ``default`` when it is unset or empty (an empty value used to mean the
    current directory, scattering runs and caches wherever a command happened to start)."""
    value = os.environ.get(name, "")
    return Path(value) if value.strip() else Path(default)


def cache_dir() -> Path:
    """Where dllab caches what it can measure or decode again (the precision probe, decoded image folders):
    ``$DLLAB_CACHE``, else the user's cache folder (``platformdirs``: ~/.cache/dllab or ``$XDG_CACHE_HOME``
    on Linux). Never the working directory: a cache shipped inside a shared folder must not steer a run."""
    return path("DLLAB_CACHE", platformdirs.user_cache_dir("dllab", appauthor=False))


def data_root() -> Path:
    return path("DLLAB_DATA", "data")


def runs_root() -> Path:
    return path("DLLAB_RUNS", "runs")


def sweeps_root() -> Path:
    return path("DLLAB_SWEEPS", "sweeps")


# --- switches and the hub -----------------------------------------------------------------------------

def switch(name: str) -> bool:
    """A yes/no variable: True for 1/true/yes/on, False for 0/false/no/off or unset/empty (any case)."""
    value = text(name).lower()
    if value in TRUE_WORDS:
        return True
    if value in FALSE_WORDS:
        return False
    raise ConfigError(f"{name}={shown(os.environ[name])}: expected 1/true/yes/on or 0/false/no/off (or unset)")


def offline() -> bool:
    """``DLLAB_OFFLINE``: no download is tried (datasets, the hub)."""
    return switch("DLLAB_OFFLINE")


def debug() -> bool:
    """``DLLAB_DEBUG``: the CLI prints the full (chained) traceback of an error before its one-line message."""
    return switch("DLLAB_DEBUG")


def hub_offline() -> bool:
    """The Hugging Face hub is not to be asked: ``DLLAB_OFFLINE``, ``HF_HUB_OFFLINE`` or ``TRANSFORMERS_OFFLINE``."""
    return any([switch(name) for name in HUB_OFFLINE_VARIABLES])   # (a list: every one is checked)


def hf_endpoint() -> str | None:
    """The hub's URL (``HF_ENDPOINT``, else huggingface.co); None when offline.

    Offline the value is not read, but one the hub library cannot parse is removed from this process's
    environment: huggingface_hub parses it when imported (to look into the local cache, too) and fails."""
    if hub_offline():
        if not _endpoint_ok(text("HF_ENDPOINT")):
            os.environ.pop("HF_ENDPOINT", None)
        return None
    value = text("HF_ENDPOINT") or DEFAULT_HF_ENDPOINT
    if not _endpoint_ok(value):
        raise ConfigError(f"HF_ENDPOINT={shown(os.environ['HF_ENDPOINT'])}: expected an http(s) URL with a host, "
                          f"e.g. {DEFAULT_HF_ENDPOINT}; fix or unset it (or set DLLAB_OFFLINE=1)")
    return value.rstrip("/")


def _endpoint_ok(value: str) -> bool:
    if not value:
        return True                       # unset: the default
    if not value.isprintable() or any(c.isspace() for c in value):
        return False
    try:
        url = urlsplit(value)
        url.port                          # (raises on a port out of range or not a number)
    except ValueError:
        return False
    return url.scheme in ("http", "https") and bool(url.hostname)


# --- torchrun -----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class LaunchInfo:
    """Where this process stands in a torchrun job: process ``rank`` of ``world_size`` (1: no job)."""
    world_size: int = 1
    rank: int = 0
    local_rank: int = 0


SINGLE = LaunchInfo()
TORCHRUN_VARIABLES = ("WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
                      "TORCHELASTIC_RUN_ID")


def launch_info(strict: bool = False) -> LaunchInfo:
    """This process's place in a torchrun job, from torchrun's variables. ``strict``: a bad or leftover
    value is a ``DllabError`` (``check`` asks so before a run); else it reads as a single process, so that a
    command that does not start work (and the error handling of one that does) never fails on them."""
    try:
        return _launch_info(tuple(os.environ.get(name) for name in TORCHRUN_VARIABLES))
    except DllabError:
        if strict:
            raise
        return SINGLE


@functools.lru_cache(maxsize=8)           # (asked on every log line and file write: parsed once per value)
def _launch_info(values: tuple[str | None, ...]) -> LaunchInfo:
    env = {name: (v or "").strip() for name, v in zip(TORCHRUN_VARIABLES, values)}
    world = _whole("WORLD_SIZE", env["WORLD_SIZE"] or "1", 1)
    if world == 1:
        return SINGLE
    if not env["TORCHELASTIC_RUN_ID"]:
        # torchrun sets TORCHELASTIC_RUN_ID in every process it starts. Without it these are leftovers (a
        # copied shell environment, a job script) and init_process_group would wait hours for peers that
        # never come.
        leftovers = " ".join(n for n in TORCHRUN_VARIABLES if env[n])
        raise ConfigError(f"WORLD_SIZE={world} is set, but this process was not started by torchrun (no "
                          f"TORCHELASTIC_RUN_ID), so no other process will join it; unset {leftovers}, or start "
                          f"several processes with `dllab run --nproc N` or torchrun")
    rank = _whole("RANK", env["RANK"] or "0", 0, world - 1)
    local_world = _whole("LOCAL_WORLD_SIZE", env["LOCAL_WORLD_SIZE"] or str(world), 1, world)
    local_rank = _whole("LOCAL_RANK", env["LOCAL_RANK"] or "0", 0, local_world - 1)
    if not env["MASTER_ADDR"]:
        raise ConfigError(f"WORLD_SIZE={world} but MASTER_ADDR is not set: torchrun sets it; start the "
                          "processes with torchrun or `dllab run --nproc N`")
    _whole("MASTER_PORT", env["MASTER_PORT"] or "29500", 1, 65535)
    return LaunchInfo(world, rank, local_rank)


def _whole(name: str, value: str, low: int, high: int | None = None) -> int:
    bounds = f"{low}..{high}" if high is not None else f"{low} or more"
    try:
        number = int(value)
    except ValueError:
        number = None
    if number is None or number < low or (high is not None and number > high):
        raise ConfigError(f"{name}={shown(value)}: expected a whole number {bounds} (torchrun sets it; "
                          f"unset it outside torchrun)")
    return number


# --- OpenMP -------------------------------------------------------------------------------------------

def omp_wait_policy() -> tuple[str | None, str]:
    """(policy, problem): ``OMP_WAIT_POLICY`` as libgomp reads it, ACTIVE or PASSIVE (any case, blanks
    around allowed), or None when unset or empty; a value libgomp rejects (it prints a complaint and uses
    its default) is None too, with ``problem`` saying so ('' when there is none)."""
    raw = os.environ.get("OMP_WAIT_POLICY")
    if raw is None or not raw.strip():
        return None, ""
    policy = raw.strip().upper()
    if policy in OMP_WAIT_POLICIES:
        return policy, ""
    return None, f"OMP_WAIT_POLICY={shown(raw)} is neither ACTIVE nor PASSIVE (OpenMP would ignore it); ignored"


def omp_num_threads() -> str:
    """``OMP_NUM_THREADS`` as the user set it ('' when unset or empty): OpenMP and torch read the value
    themselves, so it is passed on as it is; dllab only asks whether one is set."""
    return text("OMP_NUM_THREADS")


def memory_limit() -> int | None:
    """The address-space limit of this process in bytes (``ulimit -v``); None when there is none."""
    return _soft_limit("RLIMIT_AS")


def open_files_limit() -> int | None:
    """The soft limit on open files (``ulimit -n``); None where there is none."""
    return _soft_limit("RLIMIT_NOFILE")


def _soft_limit(name: str) -> int | None:
    if resource is None:
        return None
    soft, _ = resource.getrlimit(getattr(resource, name))
    return None if soft == resource.RLIM_INFINITY else soft


# --- the processes dllab starts, and the libraries it hands variables to ------------------------------

# Where rank 0 names its run folder for ``dllab run --nproc``'s launcher (which checks that the file is its own).
LAUNCH_RUN_FOLDER_FILE = "DLLAB_LAUNCH_RUN_FOLDER_FILE"
# The PID of the dllab process that started this one (the launcher and the sweep set it for their children).
PARENT_PID = "DLLAB_PARENT_PID"


def launch_run_folder_file() -> str:
    """``DLLAB_LAUNCH_RUN_FOLDER_FILE``, as the launcher wrote it ('' when unset)."""
    return os.environ.get(LAUNCH_RUN_FOLDER_FILE, "")


def take_parent_pid() -> str | None:
    """``DLLAB_PARENT_PID`` (None when unset), removed from this process's environment as it is read, so that
    this process's own children are not tied to their grandparent."""
    return os.environ.pop(PARENT_PID, None)


def mlflow_tracking_uri() -> str:
    """``MLFLOW_TRACKING_URI`` ('' when unset or empty: the MLflow sink then uses ``sqlite:///./mlflow.db``)."""
    return text("MLFLOW_TRACKING_URI")


# The MLflow run a sweep's point nests under (the sweep sets it for its points).
MLFLOW_PARENT_RUN = "DLLAB_MLFLOW_PARENT_RUN_ID"


def mlflow_parent_run_id() -> str:
    """``DLLAB_MLFLOW_PARENT_RUN_ID``, the sweep's MLflow run ('' when unset: the run is not nested)."""
    return text(MLFLOW_PARENT_RUN)


# --- all at once --------------------------------------------------------------------------------------

def check(distributed: bool = False) -> None:
    """Every variable a computing command reads, checked now (one line for the first bad one), before any
    folder exists: the switches, the hub's URL (online only) and, for ``distributed`` commands (run, sweep),
    torchrun's variables."""
    offline()
    hf_endpoint()
    if distributed:
        launch_info(strict=True)


@functools.lru_cache(maxsize=None)
def _endpoint_answers(endpoint: str, timeout: float) -> bool:
    url = urlparse(endpoint)
    try:
        with socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)), timeout):
            return True
    except OSError:
        return False


def hub_reachable(timeout: float = 3.0) -> bool:
    """False when offline mode is set (``DLLAB_OFFLINE``, ``HF_HUB_OFFLINE``, ``TRANSFORMERS_OFFLINE``) or the
    hub's host does not accept a connection within ``timeout`` seconds; the answer is cached per endpoint.
    ``HF_ENDPOINT`` is read only when online (``environ.hf_endpoint``: a bad one is a one-line error)."""
    endpoint = hf_endpoint()
    return endpoint is not None and _endpoint_answers(endpoint, timeout)
