"""dllab as a library: what the ``dllab`` commands do, as Python functions (``import dllab``).

    import dllab

    result = dllab.run("lab1.mlp", profile="smoke", overrides={"train.epochs": 3}, seeds=[0, 1])
    result.metrics["adam.test_acc"]       # the summary (mean over seeds; "<key>.std" beside it)
    result.history                        # one row per epoch per variant (and seed): a pandas DataFrame
    result.report()                       # report.md (and .html) in the run folder
    again = dllab.load(result.path)       # any finished run folder, read as untrusted data
    sweep = dllab.sweep("lab1.mlp", grid={"adam.lr": [1e-3, 3e-3]}, profile="smoke")
    sweep.best                            # the best point's row of sweep.csv
    dllab.compare([result, again], out="compare.md")

Each function checks its whole input before any work, exactly as the command does (the CLI is a thin layer over
these functions), and raises the ``DllabError`` tree of ``dllab.errors`` (``ConfigError``, ``PluginError``,
``RunFolderError``...): never a ``SystemExit``. Importing this module loads neither torch nor pandas; a run
loads torch once its config has passed. Runs, sweeps and reports are the same folders and files the commands
write, so ``dllab report``, ``compare`` and ``run --resume`` work on them. ``dllab run --nproc`` (torchrun) stays
a command-line option; under torchrun, ``run`` joins the process group itself.
"""
from __future__ import annotations

import functools
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

from dllab.core import registry
from dllab.core.config import ConfigFile, RunConfig, check_seeds, read_config_file, run_config, with_command_line
from dllab.errors import ConfigError, ResumeError, RunFolderError

# A config override: {"train.epochs": 3, "data.classes": [0, 1]} (checked as values), or ["train.epochs=3"]
# (text, as --set takes it).
Overrides = Union[Mapping[str, Any], Sequence[str], None]
PathLike = Union[str, os.PathLike]


# --- experiments -----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ExperimentInfo:
    """A registered experiment: its name (what ``run`` takes), its description, and the package it comes from
    when it is a plug-in (None for dllab's own)."""
    name: str
    description: str
    plugin: str | None = None

    def __str__(self) -> str:
        return self.name


def list_experiments() -> list[ExperimentInfo]:
    """Every experiment, as ``dllab list`` shows them (read from the registry's static index: nothing is imported)."""
    return [ExperimentInfo(e.name, e.description, e.origin if e.plugin else None)
            for e in registry.entries("experiment")]


def config(experiment: str | None, profile: str | None = None, overrides: Overrides = None, *,
           seed: int | None = None, seeds: Sequence[int] | None = None, device: str | None = None,
           config_file: PathLike | ConfigFile | None = None) -> RunConfig:
    """The config a run of ``experiment`` would start with: the profile's (default quick), then the keys of
    ``config_file`` (a YAML file as ``dllab run --print-config`` writes; it may name the experiment and profile),
    ``overrides``, ``seed`` (or the first of ``seeds``) and ``device``, each value checked as it is set. Nothing
    runs and torch is not loaded. Raises ``PluginError`` for an unknown experiment, ``ConfigError`` for a bad
    key or value (in the file too)."""
    file, experiment, profile = _config_file(config_file, experiment, profile)
    if not experiment:
        raise ConfigError("dllab run needs an experiment name (see `dllab list`), a config file naming one "
                          "(experiment: ...) or a run folder to resume (--resume RUN_DIR)")
    if seed is not None and seeds is not None:
        raise ConfigError("give either one seed (--seed N) or several (--seeds A,B,C), not both")
    if seeds is not None:
        check_seeds(_seed_list(seeds))
    first = _seed_list(seeds)[0] if seeds else seed
    return run_config(experiment, profile, _overrides(overrides), first, device, file)


def _config_file(config_file: PathLike | ConfigFile | None, experiment: str | None,
                 profile: str | None) -> tuple[ConfigFile | None, str | None, str | None]:
    """The config file (read and checked, when a path) and the experiment and profile it fills in."""
    if config_file is None:
        return None, experiment, profile
    file = config_file if isinstance(config_file, ConfigFile) else read_config_file(os.fspath(config_file))
    return (file, *with_command_line(file, experiment, profile))


# --- runs ------------------------------------------------------------------------------------------------

def run(experiment: str | None = None, profile: str | None = None, overrides: Overrides = None, *,
        seeds: Sequence[int] | None = None, seed: int | None = None, device: str | None = None,
        out: PathLike | None = None, quiet: bool = True, resume: PathLike | None = None,
        on_start: Callable[[Path], Any] | None = None, command: Sequence[str] | None = None,
        config_file: PathLike | ConfigFile | None = None) -> RunResult:
    """Run ``experiment`` (``dllab run``) and return the finished run.

    ``profile``: smoke | quick (default) | paper. ``overrides``: config keys as ``--set`` takes them, a dict
    (``{"train.epochs": 3}``) or ``["train.epochs=3"]``. ``seeds=[0, 1, 2]``: one run per seed in ``seed<N>/``,
    the summary their mean (and std); ``seed``: one run with that seed. ``device``: auto | cpu | cuda | mps.
    ``out``: the run folder (must not exist; default runs/<experiment>/<time>-<profile>). ``quiet=False``
    shows progress and log lines on stderr. ``resume=RUN_DIR`` continues an interrupted run exactly as it
    started (then give nothing else). ``config_file``: a YAML file of config keys (``dllab run --print-config``
    writes a complete one), under ``overrides``. ``on_start(path)`` is called as soon as the run folder exists;
    ``command`` is the command line recorded in env.json (default: the equivalent ``dllab run`` command).
    """
    if resume is None:
        file, experiment, profile = _config_file(config_file, experiment, profile)
        config(experiment, profile, overrides, seed=seed, seeds=seeds, device=device, config_file=file)   # no torch yet
    elif config_file is not None:
        raise ResumeError(f"--resume continues a run exactly as it started; drop --config {config_file}")
    else:
        file = None
    from dllab.core import distributed
    from dllab.runner import experiment as runner

    sets, seed_list = _overrides(overrides), _seed_list(seeds)
    out, resume = _text(out), _text(resume)
    if command is None:
        command = _run_command(experiment, profile, _texts(overrides), seed, seed_list, device, out, resume, quiet,
                               file.path if file else None)
    distributed.init()   # under torchrun: join the other processes (nothing otherwise)
    try:
        done = runner.run_experiment(experiment, profile, sets, seed, seed_list, device, out, resume, quiet,
                                     list(command), on_start=on_start, config_file=file)
    finally:
        distributed.teardown()
    return RunResult(done.path)


def load(run_dir: PathLike) -> RunResult:
    """A finished run folder (yours, or one downloaded or shared), read as untrusted data as ``dllab report``
    reads it, and checked now: ``RunFolderError`` names what is missing or damaged."""
    result = RunResult(run_dir)
    result.check()
    return result


class RunResult:
    """A finished run folder. ``metrics`` (the summary), ``config`` and ``history`` are read from its files when
    first asked for, as untrusted data: a damaged file is a ``RunFolderError`` naming it."""

    def __init__(self, path: PathLike):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunResult({str(self.path)!r})"

    @functools.cached_property
    def _run(self) -> dict[str, Any]:
        from dllab.report.render import read_run

        return read_run(self.path)

    @property
    def experiment(self) -> str:
        return self._run["env"]["experiment"]

    @property
    def metrics(self) -> dict[str, Any]:
        """metrics.json's summary: flat headline numbers (``adam.test_acc``; ``<key>.std`` over seeds)."""
        return dict(self._run["summary"])

    @functools.cached_property
    def config(self) -> dict[str, Any]:
        """config.yaml as flat dotted keys, as ``overrides`` and ``--set`` take them (``{"train.epochs": 3, ...}``)."""
        from dllab.report.compare import read_config

        return read_config(self.path)

    @functools.cached_property
    def records(self) -> list[dict[str, Any]]:
        """history.csv as rows (one per epoch per variant); a multi-seed run's rows of every seed, with ``seed``."""
        from dllab.store.records import read_history

        seeds = self._run["env"].get("seeds")
        if (self.path / "history.csv").exists() or not seeds:
            return read_history(self.path / "history.csv")
        if not (isinstance(seeds, list) and all(type(s) is int and s >= 0 for s in seeds)):
            raise RunFolderError(f"{self.path / 'env.json'} is damaged: 'seeds' is not a list of seed numbers")
        return [{"seed": s, **row} for s in seeds for row in read_history(self.path / f"seed{s}" / "history.csv")]

    @property
    def history(self):
        """``records`` as a pandas DataFrame when pandas is installed, else the list of rows itself."""
        return _table(self.records)

    def report(self, out: PathLike | None = None, force: bool = False) -> Path:
        """Write the run's report (default: its own report.md, rewritten) and return the .md file (the .html is
        beside it). Another existing file is replaced only with ``force``."""
        from dllab.runner.experiment import report

        return report([str(self.path)], _text(out), force)[0]

    def check(self) -> None:
        """Read every file now (env.json, metrics.json, the report's state, config.yaml, history): a damaged one
        raises ``RunFolderError`` here rather than later."""
        self._run, self.config, self.records   # noqa: B018 (read for their checks)


def compare(run_dirs: Sequence[PathLike | RunResult], out: PathLike = "compare.md", force: bool = False) -> Path:
    """``dllab compare``: the runs side by side (differing config keys, summaries, overlaid curves) in ``out``
    (.md, with .html and .png beside it); returns the .md file. An existing file is replaced only with ``force``."""
    from dllab.report.compare import compare as write_comparison

    if isinstance(run_dirs, (str, os.PathLike, RunResult)):
        raise ConfigError("compare needs a list of run folders, e.g. dllab.compare([run_a, run_b])")
    folders = [str(r.path if isinstance(r, RunResult) else r) for r in run_dirs]
    return write_comparison(folders, str(out), force)[0]


# --- saved models ----------------------------------------------------------------------------------------

def load_model(run_dir: PathLike | RunResult, variant: str | None = None):
    """``(model, spec)``: the trained model saved in ``run_dir``'s models/<variant>/ (``variant`` None: the run's
    only one), in eval mode on the CPU, and its model.json as a dict (``spec["input"]``: classes and the input's
    shape or max_length; ``spec["metrics"]``). An image model is rebuilt from the registry with its safetensors
    weights; a text model (Lab 2) is the Hugging Face classifier (a ``PeftModel`` for LoRA), its tokenizer in the
    same folder, ``spec["folder"]``; a ``lab2.features`` or ``lab1.transfer`` classifier is the scikit-learn pipeline
    (standardisation and estimator) over the embeddings of ``spec["model"]["embedding"]`` (for images: the model
    folder embedding/ inside its own, ``features.saved.load_image_embedder``). The folder is read as untrusted data: a
    damaged one is a ``RunFolderError``."""
    from dllab.train.saved_model import load_saved_model

    kind, folder = _model_folder(run_dir, variant)
    if kind == "text":
        from dllab.text.saved import load_text_model
        model, _, spec = load_text_model(folder)
        return model, {**spec, "folder": str(folder)}
    if kind == "features":
        from dllab.features.saved import load_classifier
        return load_classifier(folder)
    return load_saved_model(folder)


def _model_folder(run_dir: PathLike | RunResult, variant: str | None) -> tuple[str, Path]:
    """(kind, folder) of the run's saved model ``variant``."""
    from dllab.train.saved_model import find_model_folder, saved_kind

    folder = find_model_folder(Path(run_dir.path if isinstance(run_dir, RunResult) else run_dir), variant)
    return saved_kind(folder), folder


def predict(run_dir: PathLike | RunResult, inputs: PathLike | Sequence[PathLike], variant: str | None = None, *,
            device: str = "auto", batch_size: int = 256, files: Sequence[PathLike] = (),
            detector: str | None = None) -> list[dict[str, Any]]:
    """``dllab predict``: the saved model (``load_model``) loaded once, its inputs fed in batches; one dict per
    input: ``input``, ``class``, ``index``, ``probability``. An image model takes image files or folders of them
    (``input``: the file), and so does a ``lab1.transfer`` classifier on the source CNN's features; a text model or a
    ``lab2.features`` classifier takes sentences (``input``: the
    sentence): a string naming an existing file, a ``Path``, or one of ``files`` is a text file of sentences, one
    per line (``source``: file:line). ``probability`` is None for a classifier without one (LinearSVC). A Lab 4
    model with saved OOD detectors (models/<variant>/ood/) adds ``detector``, ``ood_score``, ``threshold`` and
    ``decision`` (``ood`` above the threshold chosen on ID validation images, else ``id``) for ``detector``
    (None: energy when it was fitted, else the first saved)."""
    from dllab.core.machine import resolve_device

    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    device_ = resolve_device(device)
    kind, folder = _model_folder(run_dir, variant)
    given = [inputs] if isinstance(inputs, (str, os.PathLike)) else list(inputs)
    if kind in ("text", "features"):
        if detector is not None:
            raise ConfigError(f"{folder} holds a {kind} model: OOD detectors (--detector) are saved by Lab 4 runs only")
        if kind == "features":   # sentences (lab2.features) or images (lab1.transfer's probe)
            from dllab.features.saved import predict_inputs
            return predict_inputs(folder, given, list(files), device_, batch_size)
        return _predict_sentences(folder, given, files, device_, batch_size)
    from dllab.ood.saved import saved_detector
    from dllab.train.predict import predict_images
    from dllab.train.saved_model import load_saved_model
    if files:
        raise ConfigError(f"{folder} holds an image model: name image files or folders as inputs (no --file)")
    model, spec = load_saved_model(folder)
    chosen = saved_detector(folder, model, spec, detector)
    return predict_images(model, spec, given, device_, batch_size, chosen.decisions if chosen else None)


def export(run_dir: PathLike | RunResult, variant: str | None = None, format: str = "onnx", *,
           out: PathLike | None = None, force: bool = False, inputs: PathLike | Sequence[PathLike] | None = None,
           tolerance: float = 1e-4):
    """``dllab export``: the saved model (``load_model``'s) as ``format`` onnx | torchscript, written to ``out``
    (default models/<variant>/model.onnx or model.ts; an existing file is replaced only with ``force``) once a
    batch of real inputs (the run's test images, else ``inputs``: image files or folders, text files of
    sentences; a text model's check otherwise runs the run's test sentences, else fixed ones) gives the same
    logits through PyTorch and the export within ``tolerance``; a LoRA model is exported merged into its base.
    Returns what was written, the difference and the inputs it was measured on (``.path``, ``.max_abs_diff``,
    ``.inputs``); a mismatch raises, and writes nothing."""
    from dllab.train.export import export_model

    kind, folder = _model_folder(run_dir, variant)
    given = [inputs] if isinstance(inputs, (str, os.PathLike)) else inputs
    return export_model(folder, format, functools.partial(_export_subject, kind, folder, given),
                        None if out is None else Path(out), force, tolerance)


def _export_subject(kind: str, folder: Path, inputs):
    """What ``export`` exports and checks, by the folder's kind (image: train.export, text: text.export)."""
    if kind == "features":
        raise ConfigError(f"{folder} holds scikit-learn classifiers on embeddings (kind features), not a PyTorch "
                          "network: there is no ONNX or TorchScript export of them")
    if kind == "text":
        from dllab.text.export import text_subject
        return text_subject(folder, inputs)
    from dllab.train.export import image_subject
    return image_subject(folder, inputs)


def _predict_sentences(folder: Path, inputs: list, files: Sequence[PathLike], device, batch_size: int):
    """A text model's rows for the sentences ``inputs`` and ``files`` name."""
    from dllab.data.text import read_sentences
    from dllab.text.predict import predict_sentences
    from dllab.text.saved import load_text_model

    model, tokenizer, spec = load_text_model(folder)
    return predict_sentences(model, tokenizer, spec, read_sentences(inputs, files), device, batch_size)


# --- sweeps ----------------------------------------------------------------------------------------------

def sweep(experiment: str | None = None, grid: Mapping[str, Any] | Sequence[str] | None = None, *,
          profile: str | None = None, overrides: Overrides = None, seeds: Sequence[int] | None = None,
          sample: int | None = None, jobs: int = 1, device: str | None = None, out: PathLike | None = None,
          metric: str | None = None, goal: str = "max", ray: str | None = None, quiet: bool = True,
          resume: PathLike | None = None, config_file: PathLike | ConfigFile | None = None) -> SweepResult:
    """Run ``experiment`` over the Cartesian product of ``grid`` (``dllab sweep``) and return the sweep.

    ``grid``: ``{"adam.lr": [1e-3, 3e-3], "width": [32, 64]}`` (or ``["adam.lr=1e-3,3e-3"]`` as ``--grid``
    takes it). Each point is a normal run folder, made by a ``dllab run`` process, ``jobs`` at a time (or as Ray
    tasks on ``ray``: auto, ray://host:port, local), each over ``seeds``. ``overrides`` fix keys for every
    point, over the keys of ``config_file`` (as ``run`` takes it); ``sample=K`` runs K points of the grid. ``metric`` (default: the first summary key every point
    reports) and ``goal`` (max | min) pick ``best``. The same call again, or ``resume=SWEEP_DIR``, continues
    the sweep: finished points are kept. Raises ``ConfigError`` for a bad grid, option or ``metric``, and a
    ``DllabError`` naming the points that failed.
    """
    if sample is not None and sample < 1:   # 0 is not "all": leaving sample out is
        raise ConfigError(f"--sample {sample}: must be >= 1 (leave --sample out to run every point)")
    if resume is not None:
        spec = _resumed_spec(resume, experiment=experiment, grid=grid, overrides=overrides, seeds=seeds,
                             sample=sample, out=out, profile=profile, config_file=config_file)
        out = resume
    else:
        file, experiment, profile = _config_file(config_file, experiment, profile)
        spec = _new_spec(experiment, grid, profile, overrides, seeds, sample, device, file)
    from dllab.runner.sweep import run_sweep

    done = run_sweep(spec, _text(out), jobs, ray, metric, goal, quiet)
    return SweepResult(done.folder, done.rows, done.metric, goal)


@dataclass(frozen=True)
class SweepResult:
    """A finished sweep: its folder, ``records`` (sweep.csv's rows: ``point``, the swept values as given, every
    summary number and its ``.std`` over seeds), and the ``metric`` and ``goal`` that rank them."""
    path: Path
    records: list[dict[str, Any]]
    metric: str | None
    goal: str = "max"

    @property
    def table(self):
        """``records`` as a pandas DataFrame when pandas is installed, else the list of rows itself."""
        return _table(self.records)

    @property
    def best(self) -> dict[str, Any] | None:
        """The row of the best point for ``metric`` (None when no finished point reports it)."""
        from dllab.report.sweep import best_point

        return best_point(self.records, self.metric, self.goal)

    def run(self, point: str | Mapping[str, Any]) -> RunResult:
        """The run folder of a point: its name (``"p0_adam.lr=1e-3"``) or its row (``sweep.run(sweep.best)``)."""
        name = point["point"] if isinstance(point, Mapping) else point
        if name not in {r["point"] for r in self.records}:
            raise ConfigError(f"{name} is not a finished point of this sweep; choose from "
                              f"{', '.join(r['point'] for r in self.records) or 'none'}")
        return RunResult(self.path / name)


def _new_spec(experiment, grid, profile, overrides, seeds, sample, device, file: ConfigFile | None):
    """The SweepSpec of a new sweep, each argument checked as ``dllab sweep`` checks its option."""
    from dllab.runner.sweep_spec import new_spec, parse_grid

    if not experiment:
        raise ConfigError("dllab sweep needs an experiment name (see `dllab list`) or a sweep folder to resume "
                          "(--resume SWEEP_DIR)")
    if file is not None:   # the file's keys checked against the experiment now, so that an error names the file
        run_config(experiment, profile, file=file)
    return new_spec(experiment=experiment, profile=profile or "quick", grid=parse_grid(_grid_options(grid)),
                    seeds=_seed_list(seeds), sets=_texts(overrides), sample=sample or 0, device=device,
                    config=file.values if file else {})


def _resumed_spec(folder: PathLike, **given):
    """The SweepSpec a sweep folder holds; what a resume takes from there may not be given again."""
    from dllab.runner.sweep_spec import read_spec

    options = {"experiment": "an experiment name", "grid": "--grid", "overrides": "--set", "seeds": "--seeds",
               "sample": "--sample", "out": "--out", "profile": "--profile", "config_file": "--config"}
    named = [options[k] for k, v in given.items() if v not in (None, [], (), {}, "")]
    if named:
        raise ResumeError(f"--resume continues a sweep exactly as it started; drop {', '.join(named)}")
    return read_spec(str(folder))


# --- arguments as the commands take them --------------------------------------------------------------------

def _as_text(value: Any) -> str:
    """A config value as ``--set`` writes it: lists as ``[a,b]``, booleans as true/false."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_as_text(v) for v in value) + "]"
    return str(value)


def _overrides(overrides: Overrides) -> dict[str, Any] | list[str]:
    """``overrides`` as the config takes them: a dict of values, or a list of ``key=value`` strings."""
    if overrides is None:
        return []
    if isinstance(overrides, Mapping):
        if not all(isinstance(k, str) for k in overrides):
            raise ConfigError("overrides: the keys are dotted config keys, e.g. {'train.epochs': 3}")
        return dict(overrides) or []
    if isinstance(overrides, (str, bytes)) or not all(isinstance(s, str) for s in overrides):
        raise ConfigError("overrides: give a dict such as {'train.epochs': 3} or a list such as ['train.epochs=3']")
    return list(overrides)


def _texts(overrides: Overrides) -> list[str]:
    """``overrides`` as ``--set`` options (``key=value``), as a sweep's points and env.json record them."""
    checked = _overrides(overrides)
    if isinstance(checked, dict):
        return [f"{k}={_as_text(v)}" for k, v in checked.items()]
    return checked


def _grid_options(grid: Mapping[str, Any] | Sequence[str] | None) -> list[str]:
    """``grid`` as ``--grid KEY=V1,V2`` options (a dict's values: a list, or one value)."""
    if grid is None:
        return []
    if isinstance(grid, Mapping):
        return [f"{k}={','.join(_as_text(v) for v in (vs if isinstance(vs, (list, tuple)) else [vs]))}"
                for k, vs in grid.items()]
    if isinstance(grid, (str, bytes)) or not all(isinstance(g, str) for g in grid):
        raise ConfigError("grid: give a dict such as {'adam.lr': [1e-3, 3e-3]} or a list such as "
                          "['adam.lr=1e-3,3e-3']")
    return list(grid)


def _seed_list(seeds: Sequence[int] | None) -> list[int] | None:
    if seeds is None:
        return None
    if isinstance(seeds, (str, bytes)) or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
        raise ConfigError(f"seeds: expected a list of integers, e.g. [0, 1, 2], got {seeds!r}")
    return list(seeds)


def _text(path: PathLike | None) -> str | None:
    return None if path is None else os.fspath(path)


def _run_command(experiment, profile, sets, seed, seeds, device, out, resume, quiet, config_file=None) -> list[str]:
    """The ``dllab run`` arguments that do what a ``run`` call does (recorded in env.json)."""
    argv = ["run", *([experiment] if experiment else [])]
    for flag, value in (("--profile", profile), ("--config", config_file), ("--seed", seed),
                        ("--seeds", ",".join(map(str, seeds or [])) or None), ("--device", device), ("--out", out),
                        ("--resume", resume)):
        if value is not None:
            argv += [flag, str(value)]
    for s in sets:
        argv += ["--set", s]
    return argv + (["--quiet"] if quiet else [])


def _table(rows: list[dict[str, Any]]):
    """Rows as a pandas DataFrame when pandas is installed (it is not a dependency of dllab), else as they are."""
    try:
        import pandas
    except ImportError:
        return rows
    return pandas.DataFrame(rows)
