"""Name -> thing registries, in the spirit of timm's ``@register_model``.

Experiments and models register themselves on import; the CLI only ever looks names up here.
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Any, Callable

from . import DllabError

MODELS: dict[str, Callable[..., Any]] = {}
EXPERIMENTS: dict[str, "Experiment"] = {}


def _unknown(kind: str, name: str, known: dict) -> DllabError:
    close = difflib.get_close_matches(name, list(known), n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    return DllabError(f"unknown {kind} '{name}'{hint}; known: {', '.join(sorted(known))}")


def register_model(fn: Callable[..., Any]) -> Callable[..., Any]:
    MODELS[fn.__name__] = fn
    return fn


def build_model(name: str, **kwargs) -> Any:
    from . import models  # noqa: F401  (registers the models; imports torch, so only when building one)

    if name not in MODELS:
        raise _unknown("model", name, MODELS)
    model = MODELS[name](**kwargs)
    # Remember how it was built, so a saved checkpoint can rebuild it (train.checkpoint.load_model).
    model.dllab_spec = {"name": name, "kwargs": dict(kwargs)}
    return model


@dataclass
class Experiment:
    name: str
    description: str
    config_cls: type
    profiles: dict[str, dict[str, Any]]   # profile -> overrides on top of the dataclass defaults
    run: Callable                          # run(cfg, run_dir: runs.Run) -> summary dict
    reference: dict[str, Any]              # spec numbers shown beside the run's, keyed like the summary
    notes: str = ""                        # the spec's claims, quoted in the report
    # metrics(cfg) -> the summary keys a run of ``cfg`` reports, in the summary's order, computed from the
    # config alone (cheap, torch-free): `dllab sweep` checks --metric against them before any point runs.
    # A key may be listed that a run leaves out for a reason only the run finds (a strategy skipped on this
    # machine); None: the experiment does not say, and the sweep learns its keys from the finished points.
    metrics: Callable[[Any], list[str]] | None = None


def check_profiles(name: str, config_cls: type, profiles: dict) -> None:
    """Every key of every profile must name a field of ``config_cls`` with a value of its type: a misspelt
    key is an error when the experiment registers, never silently dropped."""
    from .config import PROFILES, apply_overrides

    for profile, overrides in profiles.items():
        if profile not in PROFILES:
            raise DllabError(f"experiment {name}: unknown profile '{profile}'; choose from {', '.join(PROFILES)}")
        apply_overrides(config_cls(), overrides, f"experiment {name}, profile '{profile}'")


def register_experiment(name: str, description: str, config_cls: type, profiles: dict,
                        reference: dict | None = None, notes: str = "",
                        metrics: Callable[[Any], list[str]] | None = None):
    check_profiles(name, config_cls, profiles)

    def deco(fn):
        EXPERIMENTS[name] = Experiment(name, description, config_cls, profiles, fn, reference or {}, notes, metrics)
        return fn
    return deco


def get_experiment(name: str) -> Experiment:
    _import_all()
    if name not in EXPERIMENTS:
        raise _unknown("experiment", name, EXPERIMENTS)
    return EXPERIMENTS[name]


def experiment_names() -> list[str]:
    _import_all()
    return sorted(EXPERIMENTS)


def _import_all() -> None:
    # Importing the modules runs their decorators. Listing experiments must stay fast (no torch,
    # transformers or sklearn: seconds of imports), so experiment modules import only configs at the top
    # and their heavy libraries inside the run functions (tests/test_cli.py checks it).
    from .experiments import import_all

    import_all()
