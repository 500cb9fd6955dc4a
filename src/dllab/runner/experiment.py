"""Run an experiment by name: config -> run folder -> the experiment's code -> metrics.json and report.

With several seeds, each seed runs in ``<run>/seed<N>/`` (a complete run folder of its own) and the top
folder gets the mean of every summary number under its plain key plus ``<key>.std``.

Under torchrun every rank runs this code; rank 0 alone creates, reopens and checks the run folder (through
``distributed.on_main``) and hands the Run to the other ranks, which then write nothing (see runs.Run).
"""
from __future__ import annotations

import copy
import functools
import math
import shlex
import shutil
import sys
import time
from pathlib import Path

import torch

from dllab import ConfigError, DllabError, ResumeError, RunFolderError
from dllab.core import distributed, environ, lock, ranks
from dllab.core.config import ConfigFile, TrainConfig, check_seeds, make_config, sections
from dllab.core.machine import describe_device, git_commit, resolve_device, seed_everything, versions
from dllab.core.registry import Experiment, get_experiment
from dllab.report.render import write_report
from dllab.report.ood_table import write_benchmark_csv
from dllab.runner.run import Run
from dllab.store.folder import read_json
from dllab.train.checkpoint import check_spec, load_checkpoint


def _execute(exp: Experiment, run: Run) -> dict[str, float]:
    cfg = run.cfg
    train = getattr(cfg, "train", None)
    if cfg.cpu_threads():
        torch.set_num_threads(cfg.cpu_threads())
    seed_everything(cfg.seed, getattr(train, "deterministic", False))
    device = run.device
    started = time.time()
    run.write_env(git_commit=git_commit(), versions=versions(), device=describe_device(device),
                  world_size=ranks.world_size(), backend=distributed.backend(device),
                  omp_wait_policy=environ.omp_wait_policy()[0] or "(OpenMP default)",
                  precision=run.env.get("precision", getattr(train, "precision", None)),  # resolved by the loops
                  **({"spec_off": off} if (off := exp.spec_off(cfg)) else {}))
    with run.tracking():   # the sinks close after the report, which they keep too
        summary = exp.run(cfg, run)
        run.write_metrics(summary, **parts(run.env))
        run.write_env(versions=versions(), seconds=round(run.env.get("seconds", 0) + time.time() - started, 1),
                      finished=time.strftime("%Y-%m-%dT%H:%M:%S"))
        if run.writes:
            write_report([run.path], run.path / "report.md")
    return summary


# What a run records of its own parts in env.json (``experiments.common``) and repeats in metrics.json.
PARTS = ("dataset", "model")


def parts(env: dict) -> dict[str, str]:
    """The run's dataset and model names, as its env.json records them (experiments without them: none)."""
    return {k: env[k] for k in PARTS if isinstance(env.get(k), str)}


def aggregate(summaries: list[dict[str, float]]) -> dict[str, float]:
    """Mean under the plain key, population std under ``<key>.std`` (keys present in every seed)."""
    out: dict[str, float] = {}
    for k in summaries[0]:
        vals = [s[k] for s in summaries if isinstance(s.get(k), (int, float))]
        if len(vals) != len(summaries):
            continue
        mean = sum(vals) / len(vals)
        out[k] = mean
        out[f"{k}.std"] = math.sqrt(sum((v - mean) ** 2 for v in vals) / len(vals))
    return out


def run_experiment(name: str | None, profile: str | None = None, sets: list[str] | None = None,
                   seed: int | None = None, seeds: list[int] | None = None, device: str | None = None,
                   out: str | None = None, resume: str | None = None, quiet: bool = False,
                   argv: list[str] | None = None, on_start=None, config_file: ConfigFile | None = None) -> Run:
    """Start (or, with ``resume``, continue) a run. ``on_start(path)`` is called as soon as the folder exists,
    so a caller can name it if the run is interrupted. ``config_file``: a ``--config`` file's keys, under
    ``sets``."""
    command = "dllab " + shlex.join(argv if argv is not None else sys.argv[1:])
    now = time.strftime("%Y-%m-%dT%H:%M:%S")
    if resume:
        given = [flag for flag, v in (("an experiment name", name), ("--profile", profile), ("--set", sets),
                                      ("--seed", seed), ("--seeds", seeds), ("--device", device), ("--out", out),
                                      ("--config", config_file and config_file.path))
                 if v not in (None, [], "")]
        if given:
            raise ResumeError(f"--resume continues a run exactly as it started; drop {', '.join(given)} (start a "
                              "new run to change settings)")
        run, exp_name, seeds = distributed.on_main(_reopen, resume, quiet, on_start,
                                                   {"command": command, "started": now})
        exp = get_experiment(exp_name)
    else:
        exp = get_experiment(name)
        if seeds is not None:
            check_seeds(seeds)
        # The whole config (profile, --set, the flags) is checked here, before any data loads or folder exists.
        cfg = make_config(exp.config_cls, exp.profiles, profile or "quick", sets,
                          {"seed": seeds[0] if seeds is not None else seed, "device": device or None}, config_file)
        check_global_batches(cfg)
        check_early_stopping(cfg)
        resolve_device(cfg.device)  # fail before creating a folder
        env = {"command": command, "started": now, "world_size": ranks.world_size(),
               **({"seeds": seeds} if seeds and len(seeds) > 1 else {})}
        run = distributed.on_main(Run.create, exp.name, cfg, out=out, quiet=quiet, env=env, on_created=on_start)
        run.log(f"{exp.name} ({cfg.profile}) -> {run.path}", echo=False)
    try:
        return _run_seeds(exp, run, seeds)
    except DllabError:
        # A new run that failed before training anything (missing data, bad setting found late) leaves
        # no half-made folder behind; a run with results or checkpoints is kept for --resume.
        trained = any(run.path.glob("**/results")) or any(run.path.glob("**/checkpoints"))
        if not resume and not trained and run.writes:
            shutil.rmtree(run.path, ignore_errors=True)
            for parent in (() if out else (run.path.parent, run.path.parent.parent)):  # runs/<exp>/, runs/
                try:
                    parent.rmdir()
                except OSError:
                    break
        raise
    finally:
        lock.release(run.path)   # this process has finished writing the folder


def _reopen(resume: str, quiet: bool, on_start, this_resume: dict) -> tuple[Run, str, list[int] | None]:
    """The run folder to continue, checked before any work: its seeds, its number of processes, and every
    checkpoint, model and result (a damaged or crafted one is refused now, not after minutes of data loading
    and earlier variants). Returns (run, experiment name, seeds)."""
    run = Run.open_for_resume(resume, get_experiment, quiet=quiet)   # config.yaml checked whole as it is read
    if on_start is not None:
        on_start(run.path)
    exp = get_experiment(run.experiment)
    seeds = run.env.get("seeds")
    if seeds is not None and not (isinstance(seeds, list) and all(isinstance(s, int) for s in seeds)):
        raise RunFolderError(f"{run.path / 'env.json'} is damaged: 'seeds' is not a list of integers")
    check_world_size(run)
    for ck in sorted(run.path.glob("**/checkpoints/*.pt")):
        load_checkpoint(ck)
    for model in sorted(run.path.glob("**/models/*.pt")):
        check_spec(model, load_checkpoint(model).get("spec"))
    for result in sorted(run.path.glob("**/results/*.json")):
        read_json(result, f"; delete it to train {result.stem} again")
    resumes = run.env.get("resumes") if isinstance(run.env.get("resumes"), list) else []
    run.write_env(resumes=[*resumes, this_resume])
    run.log(f"resuming {exp.name} in {run.path}", echo=False)
    return run, exp.name, seeds


def check_world_size(run: Run) -> None:
    """A run continues with as many processes as it started with: the batches each rank took, and so the
    numbers, depend on it (a run from before torchrun support was a single process)."""
    started, now = run.env.get("world_size", 1), ranks.world_size()
    if started != now:
        how = ("without --nproc or torchrun" if started == 1 else
               f"with `dllab run --nproc {started} --resume {run.path}` (or torchrun --nproc-per-node / --nnodes "
               f"giving {started} processes in all)")
        raise ResumeError(f"{run.path} was started with {started} process{'es' if started != 1 else ''}, this is "
                          f"{now}; resume it {how}")


def check_global_batches(cfg) -> None:
    """Each training section's global batch (``train.batch_size``, ``source.train.batch_size``...) divides
    over the processes: checked before the folder is made and the data loaded, not when training starts
    (the training loop splits it with the same ``distributed.per_rank_batch``)."""
    for key, train in _train_sections(cfg):
        distributed.per_rank_batch(train.batch_size, f"{key}.batch_size")


def check_early_stopping(cfg) -> None:
    """Early stopping on a validation column needs the ``data`` section beside its ``train`` section to carve a
    validation split: checked before any work."""
    for key, train in _train_sections(cfg):
        parent = functools.reduce(getattr, key.split(".")[:-1], cfg)
        data = getattr(parent, "data", None)
        train.check_early_stop(key, has_val=getattr(data, "val_fraction", 1) > 0)


def _train_sections(cfg, prefix: str = ""):
    """(dotted key, section) for every TrainConfig in the config tree."""
    for key, section in sections(cfg, prefix):
        if isinstance(section, TrainConfig):
            yield key, section


def _run_seeds(exp: Experiment, run: Run, seeds: list[int] | None) -> Run:
    if not seeds or len(seeds) == 1:
        if seeds:
            run.cfg.seed = seeds[0]
        _execute(exp, run)
        return run

    run.write_env(git_commit=git_commit(), versions=versions())
    summaries = []
    started = time.time()
    for s in seeds:
        sub, done = distributed.on_main(_seed_run, exp, run, s)
        if done is not None:
            summaries.append(done)
            continue
        run.log(f"--- seed {s} ---")
        summaries.append(_execute(exp, sub))
    summary = aggregate(summaries)
    # The top-level report shows the first seed's plots and tables beside the aggregated numbers.
    first = distributed.on_main(Run.open_for_resume, str(run.path / f"seed{seeds[0]}"), get_experiment, quiet=True)
    run.write_env(**parts(first.env), **{k: first.env[k] for k in ("spec_data", "spec_off") if k in first.env})
    run.write_metrics(summary, seeds={str(s): m for s, m in zip(seeds, summaries)}, **parts(first.env))
    run.records.copy_report(first.records, f"seed{seeds[0]}/")
    run.note(f"numbers are mean ± std over seeds {seeds}; plots and tables are from seed {seeds[0]}")
    run.write_env(seconds=round(time.time() - started, 1), device=first.env.get("device"),
                  precision=first.env.get("precision"), data=first.env.get("data"))
    if run.writes:
        write_benchmark_csv(run.path, summary)   # lab4.ood's near/far table, mean ± std over the seeds
        write_report([run.path], run.path / "report.md")
    return run


def _seed_run(exp: Experiment, run: Run, seed: int) -> tuple[Run, dict | None]:
    """Seed ``seed``'s run folder inside ``run`` (created, or reopened to continue it) and its summary if it
    has finished."""
    sub_path = run.path / f"seed{seed}"
    if sub_path.exists():
        sub = Run.open_for_resume(str(sub_path), get_experiment, quiet=run.quiet)
    else:
        cfg = copy.deepcopy(run.cfg)
        cfg.seed = seed
        sub = Run.create(exp.name, cfg, out=str(sub_path), quiet=run.quiet,
                         env={k: run.env[k] for k in ("command", "started", "world_size") if k in run.env})
    return sub, (sub.metrics()["summary"] if (sub_path / "metrics.json").exists() else None)


def report(run_dirs: list[str], out: str | None, force: bool = False) -> tuple[Path, Path]:
    """One report over ``run_dirs``; an existing file is replaced only with ``force``, except a single run's
    own report.md/html (dllab wrote them there and rewrites them whenever the run resumes)."""
    if not run_dirs:
        raise ConfigError("dllab report needs at least one run folder")
    if out is not None and not out.strip():
        raise ConfigError("--out is empty; give a file name such as --out report.md")
    own = Path(run_dirs[0]) / "report.md"
    target = Path(out) if out else (own if len(run_dirs) == 1 else Path("report.md"))
    md = target if target.suffix == ".md" else target.with_suffix(".md")
    if not force and md.resolve() != own.resolve():
        for f in (md, md.with_suffix(".html")):
            if f.exists():
                raise ConfigError(f"{f} already exists; choose another --out, or add --force to replace it")
    return write_report([Path(p) for p in run_dirs], md)
