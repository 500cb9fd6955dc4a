"""``dllab sweep``: one experiment over a grid of config values (and seeds), each point a normal run folder.

sweeps/<experiment>/<timestamp>/
    sweep.json            what was asked (experiment, profile, grid, seeds, --set, --sample): the same command
                          run again finds this folder and finishes only what is missing
    p0_adam.lr=1e-3_width=32/   a run folder made by `dllab run ... --out` (seed<N>/ inside with several seeds)
    sweep.csv             one row per point: the swept values, every summary number (mean, and .std over seeds)
    report.md/.html, sweep_<metric>.png

Every point runs as its own `dllab run` process (the runner's checks, atomic folders and resume all hold;
a point's numbers are those of the same `dllab run` typed by hand), ``--jobs N`` at a time with the cores
split between them, or as Ray tasks (sweep_ray.py). A point whose folder exists but holds no metrics.json
(killed) continues with ``dllab run --resume``; a finished one is skipped.
"""
from __future__ import annotations

import itertools
import os
import random
import re
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from . import DllabError, cpus, environ
from .config import make_config
from .registry import get_experiment
from .runs import TMP_SUFFIX, atomic_write_json, read_json, read_metrics, write_csv

SPEC_FILE = "sweep.json"


@dataclass
class SweepSpec:
    """What a sweep computes; equal specs mean the same sweep (a rerun continues it)."""
    experiment: str
    profile: str
    grid: dict[str, list[str]]           # key -> the values as typed, in the order given
    seeds: list[int] | None = None
    sets: list[str] = field(default_factory=list)
    sample: int = 0                      # 0 = the whole Cartesian product; K = K points drawn with seed 0
    device: str | None = None


@dataclass
class Point:
    name: str
    values: dict[str, str]


def split_values(text: str) -> list[str]:
    """``1e-3,3e-3`` -> two values; commas inside brackets stay (``[0,1],[2,3]`` -> two lists)."""
    values, depth, cur = [], 0, ""
    for ch in text:
        depth += (ch == "[") - (ch == "]")
        if ch == "," and depth == 0:
            values.append(cur.strip())
            cur = ""
        else:
            cur += ch
    values.append(cur.strip())
    return [v for v in values if v]


def parse_grid(items: list[str]) -> dict[str, list[str]]:
    """``--grid KEY=V1,V2`` options -> {key: [values]}; malformed, empty or repeated ones are one-line errors."""
    if not items:
        raise DllabError("dllab sweep needs at least one --grid KEY=V1,V2 (e.g. --grid adam.lr=1e-3,3e-3)")
    grid: dict[str, list[str]] = {}
    for item in items:
        if "=" not in item:
            raise DllabError(f"--grid {item}: expected KEY=V1,V2,..., e.g. --grid adam.lr=1e-3,3e-3")
        key, text = (s.strip() for s in item.split("=", 1))
        values = split_values(text)
        if not values:
            raise DllabError(f"--grid {item}: lists no value; give one or more comma-separated values")
        if key in grid:
            raise DllabError(f"--grid {key} is given twice; list all its values in one --grid")
        dup = sorted({v for v in values if values.count(v) > 1})
        if dup:
            raise DllabError(f"--grid {key} lists {dup[0]} twice")
        grid[key] = values
    return grid


def check_spec(spec: SweepSpec) -> None:
    """Every value of the grid checked as `dllab run --set` would check it (unknown key, wrong type, a value
    outside its range), before any point runs."""
    exp = get_experiment(spec.experiment)
    overridden = {s.split("=", 1)[0].strip() for s in spec.sets}
    for key, values in spec.grid.items():
        if key in overridden:
            raise DllabError(f"--grid {key} is also given with --set; keep one of them")
        if key in ("seed", "profile"):
            raise DllabError(f"--grid {key}: use --seeds / --profile instead")
        for v in values:
            try:
                make_config(exp.config_cls, exp.profiles, spec.profile, [*spec.sets, f"{key}={v}"])
            except DllabError as e:
                raise DllabError(f"--grid {key}={v}: {str(e).removeprefix('--set ')}") from None
    if spec.sample < 0:
        raise DllabError(f"--sample {spec.sample}: must be >= 1")


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.=+-]+", "-", text).strip("-")


def expand(spec: SweepSpec) -> list[Point]:
    """The Cartesian product of the grid in the order given (or ``sample`` of its points, always the same
    ones for the same grid). Names are p<index in the full grid>_key=value_...: unique and sortable."""
    keys = list(spec.grid)
    combos = list(itertools.product(*(spec.grid[k] for k in keys)))
    index = list(range(len(combos)))
    if spec.sample:
        if spec.sample > len(combos):
            raise DllabError(f"--sample {spec.sample}: the grid has only {len(combos)} points")
        index = sorted(random.Random(0).sample(index, spec.sample))
    width = len(str(len(combos) - 1))
    return [Point(f"p{i:0{width}d}_" + "_".join(_safe(f"{k}={v}") for k, v in zip(keys, combos[i])),
                  dict(zip(keys, combos[i]))) for i in index]


def sweeps_root() -> Path:
    return environ.sweeps_root()


def open_sweep(spec: SweepSpec, out: str | None) -> Path:
    """The folder of this sweep: ``out``, else the newest folder of an equal spec under sweeps/<experiment>/
    (so the same command continues it), else a new sweeps/<experiment>/<timestamp>/."""
    wanted = asdict(spec)
    if out is not None:
        path = Path(out)
        if (path / SPEC_FILE).exists():
            if read_json(path / SPEC_FILE) != wanted:
                raise DllabError(f"--out {out} holds another sweep (its {SPEC_FILE} differs); choose a new folder")
            return _without_stale_folders(path)
        if path.exists() and any(path.iterdir()):
            raise DllabError(f"--out {out} exists and is not a sweep folder; choose a new folder")
    else:
        parent = sweeps_root() / spec.experiment
        for old in sorted(parent.glob("*/" + SPEC_FILE), reverse=True):
            try:
                if read_json(old) == wanted:
                    return _without_stale_folders(old.parent)
            except DllabError:
                continue   # a damaged sweep.json is another sweep's problem, not this one's
        path = parent / time.strftime("%Y%m%d-%H%M%S")
        i = 1
        while path.exists():
            i += 1
            path = parent / f"{time.strftime('%Y%m%d-%H%M%S')}-{i}"
    path.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path / SPEC_FILE, wanted)
    return path


def _without_stale_folders(path: Path) -> Path:
    """A killed sweep may leave a point's half-made run folder (the hidden temp folder Run.create renames into
    place): that point never started, so it is removed and the point starts afresh."""
    for tmp in path.glob(f".p*{TMP_SUFFIX}"):
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
    return path


def read_spec(folder: str) -> SweepSpec:
    path = Path(folder) / SPEC_FILE
    if not path.is_file():
        raise DllabError(f"--resume {folder}: not a sweep folder (no {SPEC_FILE})")
    try:
        spec = SweepSpec(**read_json(path))
    except TypeError:
        raise DllabError(f"{path} is damaged (unexpected fields); start a new sweep") from None
    if not isinstance(spec.grid, dict) or not all(isinstance(v, list) for v in spec.grid.values()):
        raise DllabError(f"{path} is damaged: 'grid' is not a mapping of lists; start a new sweep")
    return spec


def point_args(spec: SweepSpec, point: Point, folder: Path) -> list[str]:
    """The `dllab run` arguments of one point: a new run into its folder, or --resume of a killed one."""
    if folder.exists():
        return ["run", "--resume", str(folder), "--quiet"]
    args = ["run", spec.experiment, "--profile", spec.profile, "--out", str(folder), "--quiet"]
    for s in [*spec.sets, *(f"{k}={v}" for k, v in point.values.items())]:
        args += ["--set", s]
    if spec.seeds:
        args += ["--seeds", ",".join(map(str, spec.seeds))]
    if spec.device:
        args += ["--device", spec.device]
    return args


def run_point(args: list[str], threads: int) -> tuple[int, str]:
    """One `dllab run` in a child process with ``threads`` intra-op threads; (exit code, its last error line)."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    p = subprocess.run([sys.executable, "-m", "dllab.cli", *args], env=env, stdout=subprocess.DEVNULL,
                       stderr=subprocess.PIPE, text=True)
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    return p.returncode, (lines[-1] if lines else "")


def run_local(todo: list[tuple[Point, list[str]]], jobs: int, threads: int, done: Callable) -> None:
    """``jobs`` points at a time on this machine, each with ``threads`` threads."""
    pool = ThreadPoolExecutor(max_workers=jobs)
    try:
        futures = {pool.submit(run_point, args, threads): point for point, args in todo}
        for f in as_completed(futures):
            done(futures[f], *f.result())
    finally:   # on Ctrl-C the running children got it too; the waiting points must not start
        pool.shutdown(wait=True, cancel_futures=True)


def sweep(spec: SweepSpec, out: str | None = None, jobs: int = 1, ray: str | None = None,
          metric: str | None = None, goal: str = "max", quiet: bool = False) -> Path:
    """Run (or continue) the sweep; returns its folder, with sweep.csv and the report written."""
    from .report.sweep import write_sweep_report

    if jobs < 1:
        raise DllabError(f"--jobs {jobs}: must be >= 1")
    if goal not in ("max", "min"):
        raise DllabError(f"--goal {goal}: choose max or min")
    check_spec(spec)
    points = expand(spec)
    folder = open_sweep(spec, out).resolve()

    def say(msg: str) -> None:
        if not quiet:
            print(msg, file=sys.stderr, flush=True)

    todo = [(p, point_args(spec, p, folder / p.name)) for p in points if not (folder / p.name / "metrics.json").exists()]
    finished = [folder / p.name / "metrics.json" for p in points if (folder / p.name / "metrics.json").exists()]
    if metric is not None and finished:   # a typo in --metric is found before hours of points, when it can be
        check_metric(metric, read_metrics(finished[0])["summary"])
    say(f"sweep {spec.experiment} ({spec.profile}): {len(points)} points, {len(points) - len(todo)} already "
        f"finished -> {folder}")
    failed: list[str] = []
    count = iter(range(1, len(todo) + 1))

    def done(point: Point, code: int, err: str) -> None:
        status = "finished" if code == 0 else f"failed ({err or f'exit code {code}'})"
        if code != 0:
            failed.append(point.name)
        say(f"[{next(count)}/{len(todo)}] {point.name} {status}")

    threads = max(1, cpus.usable() // jobs)
    if ray:
        from .sweep_ray import run_on_ray
        run_on_ray(todo, ray, threads, done)
    elif todo:
        run_local(todo, jobs, threads, done)
    rows = collect(spec, points, folder)
    write_sweep_report(folder, spec, rows, metric, goal)
    if failed:
        raise DllabError(f"{len(failed)} of {len(points)} points failed ({', '.join(failed)}); see their log.txt, "
                         f"then run the same command again to retry them (sweep.csv has the {len(rows)} finished)")
    return folder


def check_metric(metric: str, summary: dict) -> None:
    keys = [k for k in summary if not k.endswith(".std")]
    if metric not in keys:
        raise DllabError(f"--metric {metric}: not a summary key of this sweep; choose from {', '.join(keys)}")


def collect(spec: SweepSpec, points: list[Point], folder: Path) -> list[dict]:
    """sweep.csv: one row per finished point, the swept values then the point's summary (mean and .std over
    seeds when there are several)."""
    rows = []
    for p in points:
        metrics = folder / p.name / "metrics.json"
        if metrics.exists():
            rows.append({"point": p.name, **p.values, **read_metrics(metrics)["summary"]})
    write_csv(folder / "sweep.csv", rows, empty_header=["point", *spec.grid])
    return rows
