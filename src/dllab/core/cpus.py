"""How many CPUs this process may use, and how busy the machine is. Torch-free: the CLI asks before torch
(and its OpenMP runtime) loads, and the launcher, the sweep and the precision probe ask the same questions."""
from __future__ import annotations

import os
import time


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
    """'other processes use 0.1 CPUs now, 1-min load 0.67, 2 usable CPUs' (what the OpenMP rule and the probe read)."""
    others, avg = others_busy(), load()
    return ", ".join([*([f"other processes use {others:.1f} CPUs now"] if others is not None else []),
                      f"1-min load {avg:.2f}" if avg is not None else "no load average", f"{usable()} usable CPUs"])


def _stat_jiffies() -> tuple[int, int]:
    """(busy, total) CPU time of the whole machine since boot, from /proc/stat's first line (Linux)."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:9]]   # user nice system idle iowait irq softirq steal
    return sum(fields) - fields[3] - fields[4], sum(fields)


def others_busy(window_s: float = 0.1) -> float | None:
    """CPUs' worth of work other processes are doing right now: the machine's busy time over ``window_s``
    (this process sleeps meanwhile, so it is all theirs). None where /proc/stat is missing (not Linux).

    Unlike the load average this is not smoothed over a minute: the run started right after another one
    finished sees an idle machine, not the previous run's lingering load."""
    try:
        busy0, total0 = _stat_jiffies()
        time.sleep(window_s)
        busy1, total1 = _stat_jiffies()
    except (OSError, ValueError):
        return None
    if total1 <= total0:
        return None
    return (busy1 - busy0) / (total1 - total0) * (os.cpu_count() or 1)
