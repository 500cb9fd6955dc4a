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

Nothing is written until the whole input has passed: the spec (sweep_spec.py's schema and limits, then every
grid value as ``--set`` checks it), ``--metric`` against the summary keys every point will report (each
experiment declares them: registry.Experiment.metrics) and, with ``--ray``, the connection. The folder then
appears whole (a temp folder holding sweep.json, renamed into place) and the driver holds its lock
(dllab.core.lock), so the same sweep started twice runs once: the second exits naming the first.
"""
from __future__ import annotations

import contextlib
import copy
import difflib
import errno
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import yaml

from dllab import ConfigError, DllabError
from dllab.core import cpus, environ, lock, untrusted
from dllab.core.config import ConfigFile, apply_overrides, check_seeds, make_config
from dllab.runner import sweep_ray
from dllab.runner.launch import child_env
from dllab.core.registry import Experiment, get_experiment
from dllab.core.files import TMP_SUFFIX, atomic_write_json, atomic_write_text, dir_mode, write_csv
from dllab.report.sweep import write_sweep_report
from dllab.store.records import read_metrics
from dllab.tracking.tracker import SweepTracker
from dllab.runner.sweep_spec import SPEC_FILE, Point, SweepSpec, check_size, expand, load_spec

POINT_CONFIG = "sweep_config.yaml"   # with --config: the file's keys, which every point's `dllab run --config` reads


def check_spec(spec: SweepSpec):
    """Every value of the grid checked as `dllab run --set` would check it (unknown key, wrong type, a value
    outside its range or its choices, an unknown plug-in name), and the seeds as `dllab run` checks them,
    before anything runs or is written. Returns the config every point starts from (the profile and --set
    applied)."""
    exp = get_experiment(spec.experiment)
    check_size(spec)
    file = ConfigFile(f"{SPEC_FILE} config", values=spec.config) if spec.config else None
    base = make_config(exp.config_cls, exp.profiles, spec.profile, spec.sets, file=file)
    if spec.seeds is not None:
        check_seeds(spec.seeds)
    overridden = {s.split("=", 1)[0].strip() for s in spec.sets}
    for key, values in spec.grid.items():
        if key in overridden:
            raise ConfigError(f"--grid {key} is also given with --set; keep one of them")
        if key in ("seed", "profile"):
            raise ConfigError(f"--grid {key}: use --seeds / --profile instead")
        for v in values:   # on a copy of the base config: the profile and --set are not parsed again per value
            cfg = copy.deepcopy(base)
            apply_overrides(cfg, [f"{key}={v}"], "--grid")
    return base


def summary_keys(exp: Experiment, base, points: list[Point]) -> list[str] | None:
    """The summary keys every point reports (the experiment's ``metrics`` of each point's config), in the
    first point's order; None when the experiment does not declare its keys."""
    if exp.metrics is None:
        return None
    common: list[str] | None = None
    for p in points:
        cfg = copy.deepcopy(base)   # each value passed check_spec, so the point's config is valid
        apply_overrides(cfg, [f"{k}={v}" for k, v in p.values.items()], "--grid")
        keys = list(dict.fromkeys(exp.metrics(cfg)))
        reported = set(keys)
        common = keys if common is None else [k for k in common if k in reported]
    return common or []


def choose_metric(metric: str | None, keys: list[str], what: str) -> str | None:
    """``--metric``, checked against the summary keys ``keys`` of ``what`` (a misspelt one gets the nearest
    key suggested), or by default the first key (None when there is none)."""
    if metric is None:
        return keys[0] if keys else None
    if metric not in keys:
        close = difflib.get_close_matches(metric, keys, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise ConfigError(f"--metric {metric}: not a summary key of {what}{hint}; choose from "
                          f"{', '.join(keys) or 'none (it reports no number)'}")
    return metric


def sweeps_root() -> Path:
    return environ.sweeps_root()


def open_sweep(spec: SweepSpec, out: str | None) -> tuple[Path, bool]:
    """The folder of this sweep, with this process holding its lock (a second driver of it exits naming this
    one): ``out``, else the newest folder of an equal spec under sweeps/<experiment>/ (so the same command
    continues it), else a new sweeps/<experiment>/<timestamp>/. A new folder appears whole, sweep.json in it.
    Also whether this call made the folder (a folder that was there before, even empty, is not its to remove)."""
    created = False
    if out is not None:
        path = Path(out)
        existed = path.exists() or path.is_symlink()
        while not _holds(path, spec, out):
            if _create(path, spec):
                created = not existed
                break
    else:
        path = _latest(spec)
        if path is None:
            path, created = _new_folder(spec)
    lock.hold(path, "sweep folder")
    untrusted.check_tree(path, "sweep folder")   # a point folder linked elsewhere would be resumed there
    return _without_stale_folders(path), created


def _holds(path: Path, spec: SweepSpec, out: str) -> bool:
    """Whether ``path`` (``--out``) is this sweep's folder; False when it does not exist yet (or is empty)."""
    spec_file = path / SPEC_FILE
    if spec_file.exists() or spec_file.is_symlink():
        if load_spec(spec_file) != spec:
            raise ConfigError(f"--out {out} holds another sweep (its {SPEC_FILE} differs); choose a new folder")
        return True
    if path.is_symlink() or (path.exists() and (not path.is_dir() or any(path.iterdir()))):
        raise ConfigError(f"--out {out} exists and is not a sweep folder; choose a new folder")
    return False


def _latest(spec: SweepSpec) -> Path | None:
    for old in sorted((sweeps_root() / spec.experiment).glob("*/" + SPEC_FILE), reverse=True):
        if old.parent.name.startswith("."):   # a temp folder _create left when it was killed
            continue
        try:
            if load_spec(old) == spec:
                return old.parent
        except DllabError:
            continue   # a damaged sweep.json is another sweep's problem, not this one's
    return None


def _new_folder(spec: SweepSpec) -> tuple[Path, bool]:
    """A new sweeps/<experiment>/<timestamp>[-i]/ (True), or the equal sweep's made at the same moment (False)."""
    parent, stamp = sweeps_root() / spec.experiment, time.strftime("%Y%m%d-%H%M%S")
    path, i = parent / stamp, 1
    while True:
        if not (path.exists() or path.is_symlink()) and _create(path, spec):
            return path, True
        if (path / SPEC_FILE).is_file() and load_spec(path / SPEC_FILE) == spec:
            return path, False   # the same sweep, started at the same moment: the lock decides which one runs
        i += 1
        path = parent / f"{stamp}-{i}"


def _create(path: Path, spec: SweepSpec) -> bool:
    """``path`` with its sweep.json, made in a temp folder and renamed into place; False when something
    appeared at ``path`` meanwhile (another sweep made it first)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=TMP_SUFFIX))
    try:
        os.chmod(tmp, dir_mode())
        atomic_write_json(tmp / SPEC_FILE, asdict(spec))
        os.rename(tmp, path)   # onto nothing or an empty folder; fails if a folder with files is there
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if e.errno in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR):
            return False
        raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return True


def _without_stale_folders(path: Path) -> Path:
    """A killed sweep may leave a point's half-made run folder (the hidden temp folder Run.create renames into
    place): that point never started, so it is removed and the point starts afresh."""
    for tmp in path.glob(f".p*{TMP_SUFFIX}"):
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
    return path


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
    if spec.config:
        args += ["--config", str(folder.parent / POINT_CONFIG)]
    return args


def write_point_config(spec: SweepSpec, folder: Path) -> None:
    """The points' --config file, written from sweep.json (which holds the keys, so that the same spec is the
    same sweep) each time the sweep runs: a point reads the keys the sweep was started with."""
    if spec.config:
        atomic_write_text(folder / POINT_CONFIG, "# --config of this sweep's points, from sweep.json\n"
                          + yaml.safe_dump(spec.config, sort_keys=False))


def run_point(args: list[str], threads: int, extra_env: dict[str, str] | None = None) -> tuple[int, str]:
    """One `dllab run` in a child process with ``threads`` intra-op threads and ``extra_env`` (how it joins the
    sweep's tracking: ``tracking.SweepTracker``); (exit code, its last error line). The child dies with this
    process, however it ends (``launch.child_env``)."""
    env = child_env({**os.environ, **(extra_env or {}), "OMP_NUM_THREADS": str(threads)})
    p = subprocess.run([sys.executable, "-m", "dllab", *args], env=env, stdout=subprocess.DEVNULL,
                       stderr=subprocess.PIPE, text=True)
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    return p.returncode, (lines[-1] if lines else "")


def run_local(todo: list[tuple[Point, list[str]]], jobs: int, threads: int, done: Callable,
              extra_env: dict[str, str] | None = None) -> None:
    """``jobs`` points at a time on this machine, each with ``threads`` threads."""
    pool = ThreadPoolExecutor(max_workers=jobs)
    try:
        futures = {pool.submit(run_point, args, threads, extra_env): point for point, args in todo}
        for f in as_completed(futures):
            done(futures[f], *f.result())
    finally:   # on Ctrl-C the running children got it too; the waiting points must not start
        pool.shutdown(wait=True, cancel_futures=True)


@contextlib.contextmanager
def _tracking(tracker: SweepTracker, new_folder: Path | None):
    """The sweep's sinks, open for the block. A sweep its sinks refuse (``log.on_sink_error=fail``) has run
    nothing: the folder this call made for it (``new_folder``) goes again, so no file is left behind."""
    try:
        env = tracker.start()
    except DllabError:
        if new_folder is not None:
            shutil.rmtree(new_folder, ignore_errors=True)
        raise
    try:
        yield env
    except BaseException:
        tracker.close(False)
        raise
    tracker.close(True)


@dataclass
class SweepOutcome:
    """A finished (or continued) sweep: its folder, sweep.csv's rows, and the summary key its report ranks the
    points by (None: nothing is ranked)."""
    folder: Path
    rows: list[dict]
    metric: str | None


def sweep(spec: SweepSpec, out: str | None = None, jobs: int = 1, ray: str | None = None,
          metric: str | None = None, goal: str = "max", quiet: bool = False) -> Path:
    """Run (or continue) the sweep; returns its folder (``run_sweep``)."""
    return run_sweep(spec, out, jobs, ray, metric, goal, quiet).folder


def run_sweep(spec: SweepSpec, out: str | None = None, jobs: int = 1, ray: str | None = None,
              metric: str | None = None, goal: str = "max", quiet: bool = False) -> SweepOutcome:
    """Run (or continue) the sweep, with sweep.csv and the report written. Everything is checked before the
    folder is made (the spec, --metric and, with ``ray``, the connection to Ray), so a sweep refused for its
    input leaves no file behind."""
    points, metric, declared = _checked(spec, jobs, goal, metric)
    base = check_spec(spec)   # the config every point starts from: its log section names the sweep's sinks
    with _ray_session(ray):
        folder, created = open_sweep(spec, out)
        folder = folder.resolve()
        try:
            # the sinks' sweep (an MLflow parent run, a W&B group) closes after the report, which it keeps
            tracker = SweepTracker(folder, spec.experiment, base, quiet)
            with _tracking(tracker, folder if created else None) as tracking_env:
                failed = _run_points(spec, points, folder, jobs, ray, quiet, tracking_env)
                rows = collect(spec, points, folder)
                if declared is None and rows:   # the experiment does not declare its keys: its points do
                    metric = choose_metric(metric, _row_keys(rows, spec), f"this {spec.experiment} sweep")
                write_sweep_report(folder, spec, rows, metric, goal)
        finally:
            lock.release(folder)
    if failed:
        raise DllabError(f"{len(failed)} of {len(points)} points failed ({', '.join(failed)}); see their log.txt, "
                         f"then run the same command again to retry them (sweep.csv has the {len(rows)} finished)")
    return SweepOutcome(folder, rows, metric)


def _checked(spec: SweepSpec, jobs: int, goal: str, metric: str | None) -> tuple[list[Point], str | None,
                                                                                 list[str] | None]:
    """The options and the spec checked: (the points, the metric the report ranks by, the summary keys every
    point reports, or None when the experiment does not declare them)."""
    if jobs < 1:
        raise ConfigError(f"--jobs {jobs}: must be >= 1")
    if goal not in ("max", "min"):
        raise ConfigError(f"--goal {goal}: choose max or min")
    base = check_spec(spec)
    points = expand(spec)
    declared = summary_keys(get_experiment(spec.experiment), base, points)
    if declared is not None:   # a typo in --metric is found now, not after hours of points
        metric = choose_metric(metric, declared, f"every point of this {spec.experiment} sweep")
    return points, metric, declared


def _ray_session(address: str | None):
    return sweep_ray.connected(address) if address else contextlib.nullcontext()


def _run_points(spec: SweepSpec, points: list[Point], folder: Path, jobs: int, ray: str | None,
                quiet: bool, extra_env: dict[str, str]) -> list[str]:
    """Every point without a metrics.json, ``jobs`` at a time or as Ray tasks; returns the failed ones' names."""
    def say(msg: str) -> None:
        if not quiet:
            print(msg, file=sys.stderr, flush=True)

    write_point_config(spec, folder)
    todo = [(p, point_args(spec, p, folder / p.name)) for p in points
            if not (folder / p.name / "metrics.json").exists()]
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
        sweep_ray.run_on_ray(todo, threads, done, run_point, extra_env)
    elif todo:
        run_local(todo, jobs, threads, done, extra_env)
    return failed


def _row_keys(rows: list[dict], spec: SweepSpec) -> list[str]:
    """The summary keys every finished point reported (not the .std ones), in the first row's order."""
    keys = [k for k in rows[0] if k not in ("point", *spec.grid) and not k.endswith(".std")]
    return [k for k in keys if all(k in r for r in rows)]


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
