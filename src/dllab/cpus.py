"""How many CPUs this process may use, and how busy the machine is. Torch-free: the CLI asks before torch
(and its OpenMP runtime) loads, and the launcher, the sweep and the precision probe ask the same questions."""
from __future__ import annotations

import os


def usable() -> int:
    """CPUs this process may run on: its affinity mask (taskset, a container's cpuset), not the machine's."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:   # macOS has no affinity masks
        return os.cpu_count() or 1


def load() -> float | None:
    """The 1-minute load average (processes running or waiting for a CPU); None where there is none."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):   # Windows; or a system that does not report it
        return None


def describe_load() -> str:
    now = load()
    return "no load average" if now is None else f"1-min load {now:.2f} on {usable()} CPUs"
