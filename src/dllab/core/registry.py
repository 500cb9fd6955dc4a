"""One registry for every plug-in: experiments, models, datasets, OOD sets, detectors, attacks, text strategies,
feature classifiers and tracking sinks.

An entry is registered where it is defined, with literal strings, in the spirit of timm's ``@register_model``::

    from dllab.core.registry import register

    @register("detector", "msp")
    class MSP(LogitDetector): ...

and loaded lazily by name: ``get("detector", "msp")`` imports the module that defines it the first time it is
asked for. Which module that is comes from a static index: the registry reads dllab's own source files, and
the modules that installed packages name under the entry-point group ``dllab.plugins``, with ``ast`` (nothing is
imported or run), and collects their ``@register("<kind>", "<name>", ...)`` decorators. So ``dllab list`` and
the config checks of plug-in names never import torch, and adding a plug-in is one new file: in dllab's
source tree, or in any installed package that declares

    [project.entry-points."dllab.plugins"]
    myplug = "myplug.detectors"          # a module (or package) holding @register(...) definitions

The idea is lazy_loader's ``attach_stub`` (SPEC 1), which reads a stub file with ``ast`` to know what a package
will hold before importing it. ``tests/test_registry.py`` checks that the static index and what importing each
module registers agree. Torch-free.
"""
from __future__ import annotations

import ast
import difflib
import importlib
import importlib.machinery
import importlib.metadata
import inspect
import re
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any, Callable

from dllab import DllabError, PluginError

# kind -> how messages and `dllab list` name one entry of it
KINDS = {"experiment": "experiment", "model": "model", "dataset": "dataset", "ood_set": "OOD set",
         "detector": "detector", "attack": "attack", "strategy": "strategy", "classifier": "classifier",
         "sink": "sink"}
ENTRY_POINT_GROUP = "dllab.plugins"
PACKAGE_ROOT = Path(__file__).resolve().parents[1]   # src/dllab: this file is in dllab/core
OWN = "dllab"


@dataclass(frozen=True)
class Entry:
    """What the static index knows of a plug-in, before its module is imported."""
    kind: str
    name: str
    module: str                  # the module whose import registers it
    description: str = ""        # ``description=`` of the decorator, else the first line of its docstring
    origin: str = OWN            # "dllab", or the distribution that declared the entry point
    literals: tuple[tuple[str, str], ...] = ()   # the decorator's string keywords (``requires="mlflow"``)

    def literal(self, key: str) -> str | None:
        """A string keyword of the decorator, known without importing the module."""
        return dict(self.literals).get(key)

    @property
    def plugin(self) -> bool:
        return self.origin != OWN


@dataclass
class Registered:
    """A plug-in once its module has been imported: the registered object and the decorator's keywords."""
    obj: Any
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class Experiment:
    """An experiment: its config class (a ``config.RunConfig``), the profiles (flat dotted overrides of the
    config's defaults; smoke, quick and paper are required), where its run function is, and the spec's numbers.

    It is registered on its config class, which lives in a torch-free module (the CLI checks a whole config
    before torch loads), and names its run function as ``"module:function"``: the module that wires the
    layers below together, imported when the experiment first runs."""
    name: str
    description: str
    config_cls: type
    profiles: dict[str, dict[str, Any]]   # profile -> overrides on top of the config's defaults
    # run(cfg, run: runner.run.Run) -> summary dict, as "module:function" (imported on the first run), or the
    # function itself (a test's stub; an experiment defined in a script)
    target: str | Callable
    reference: dict[str, Any] = field(default_factory=dict)   # spec numbers beside the run's, keyed as the summary
    notes: str = ""                        # the spec's claims, quoted in the report
    # metrics(cfg) -> the summary keys a run of ``cfg`` reports, in the summary's order, computed from the
    # config alone (cheap, torch-free): `dllab sweep` checks --metric against them before any point runs.
    # A key may be listed that a run leaves out for a reason only the run finds (a strategy skipped on this
    # machine); None: the experiment does not say, and the sweep learns its keys from the finished points.
    metrics: Callable[[Any], list[str]] | None = None
    # reference_off(cfg) -> {summary key: why} of the spec numbers that do not describe a run of ``cfg`` (a model
    # trained with other settings than the spec's, accuracies under another attack): the report and the model
    # cards leave them out and say why. None: every number applies to every run.
    reference_off: Callable[[Any], dict[str, str]] | None = None

    def __post_init__(self):
        # A misspelt profile key, a missing profile or a run target that is no "module:function" is an error
        # when the experiment registers.
        self.config_cls.check_profiles(self.name, self.profiles)
        if callable(self.target):
            return
        module, _, function = str(self.target).partition(":")
        if not module or not function:
            raise PluginError(f"experiment '{self.name}': run={self.target!r} must name its run function as "
                              "'module:function'")

    def spec_off(self, cfg) -> dict[str, str]:
        """``reference_off(cfg)``, or nothing when the experiment declares none."""
        return dict(self.reference_off(cfg)) if self.reference_off is not None and cfg is not None else {}

    def reference_without(self, off) -> dict[str, Any]:
        """The spec's numbers less those ``off`` names (``spec_off``'s keys: numbers that do not describe a run)."""
        return {k: v for k, v in self.reference.items() if k not in off}

    def run(self, cfg, run) -> dict[str, float]:
        """Run ``cfg`` in the run folder ``run`` (a ``runner.run.Run``); returns the summary."""
        return self.run_function()(cfg, run)

    def run_function(self) -> Callable:
        """The run function, its module imported on first use (with torch and whatever else it needs)."""
        return self.target if callable(self.target) else _resolve(self.target)


@cache
def _resolve(target: str) -> Callable:
    """The object a ``"module:attribute"`` target names (the registry is the one place that imports by name)."""
    module, _, attribute = target.partition(":")
    function = getattr(importlib.import_module(module), attribute, None)
    if not callable(function):
        raise PluginError(f"{target}: {module} defines no function {attribute}")
    return function


IMPORT_PATH = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")


def is_import_path(name: str) -> bool:
    """Whether ``name`` is a ``"package.module:attribute"`` import path rather than a registered name."""
    return ":" in name


def load_callable(target: str) -> Callable:
    """The callable an import path ``"package.module:attribute"`` names (a user's model factory), imported now:
    a malformed path, a module that cannot be imported or an attribute that is missing or not callable is a
    one-line PluginError naming it."""
    if not IMPORT_PATH.fullmatch(target):
        raise PluginError(f"'{target}' is not an import path; write it as package.module:function")
    module, _, attribute = target.partition(":")
    try:
        obj: Any = importlib.import_module(module)
    except ImportError as e:   # ModuleNotFoundError included: the package is not installed or not on the path
        raise PluginError(f"{target}: cannot import {module} ({type(e).__name__}: {e}); install the package or "
                          "add its folder to PYTHONPATH") from e
    except Exception as e:     # the user's module raised while it was imported
        raise PluginError(f"{target}: importing {module} failed ({type(e).__name__}: {e})") from e
    for part in attribute.split("."):
        obj = getattr(obj, part, None)
    if obj is None:
        raise PluginError(f"{target}: {module} has no attribute {attribute}")
    if not callable(obj):
        raise PluginError(f"{target}: {attribute} is a {type(obj).__name__}, not a callable that builds a model")
    return obj


_loaded: dict[str, dict[str, Registered]] = {k: {} for k in KINDS}


def register(kind: str, name: str, **meta) -> Callable[[Any], Any]:
    """Decorator: the decorated object is the ``kind`` plug-in called ``name``. Both must be literal strings
    (the static index reads them without running the module); ``meta`` is kept for its users (a sink's
    ``requires``...). An experiment decorates its config class and gives ``run="module:function"``, its
    profiles (smoke, quick, paper), reference numbers, notes and metrics; they are checked now."""
    if kind not in KINDS:
        raise ValueError(f"unknown plug-in kind {kind!r}; one of {', '.join(KINDS)}")

    def deco(obj):
        if kind == "experiment":
            spec = {("target" if k == "run" else k): v for k, v in meta.items()}
            _loaded[kind][name] = Registered(Experiment(name, config_cls=obj, **spec), meta)
        else:
            _loaded[kind][name] = Registered(obj, meta)
        return obj
    return deco


def get(kind: str, name: str) -> Any:
    """The ``kind`` plug-in called ``name``; its module is imported on first use."""
    return registered(kind, name).obj


def registered(kind: str, name: str) -> Registered:
    if name not in _loaded[kind]:
        entry = index(kind).get(name)
        if entry is None:
            raise unknown(kind, name)
        importlib.import_module(entry.module)
        if name not in _loaded[kind]:
            raise PluginError(f"{entry.module} declares {KINDS[kind]} '{name}' but importing it registered "
                              "nothing by that name")
    return _loaded[kind][name]


def names(kind: str) -> list[str]:
    return sorted(index(kind))


def entries(kind: str) -> list[Entry]:
    return [index(kind)[n] for n in names(kind)]


def unknown(kind: str, name: Any) -> DllabError:
    """A one-line error for a name that is not a registered ``kind``: the nearest name and all of them."""
    known = names(kind)
    close = difflib.get_close_matches(str(name), known, n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    return PluginError(f"unknown {KINDS[kind]} '{name}'{hint}; known: {', '.join(known)}")


# --- the kinds' own entry points ------------------------------------------------------------------------

def get_experiment(name: str) -> Experiment:
    return get("experiment", name)


def experiment_names() -> list[str]:
    return names("experiment")


def build_model(name: str, **kwargs) -> Any:
    """The model ``name`` (a registered model, or a factory's import path ``"package.module:function"``) built
    with those of ``kwargs`` it accepts (all of them when it takes ``**kwargs``), remembering how, so that a
    saved checkpoint can rebuild it (train.checkpoint.load_model)."""
    factory = load_callable(name) if is_import_path(name) else get("model", name)
    kwargs = accepted_kwargs(factory, kwargs)
    model = factory(**kwargs)
    model.dllab_spec = {"name": name, "kwargs": dict(kwargs)}
    return model


def accepted_kwargs(factory: Callable, kwargs: dict[str, Any]) -> dict[str, Any]:
    """``kwargs`` less those ``factory`` has no parameter for, so that a user's ``resnet(num_classes=10)`` need not
    take every argument an experiment passes (``image_size``, ``stats``...); all of them when it takes
    ``**kwargs`` or its signature cannot be read."""
    try:
        params = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):
        return dict(kwargs)
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return dict(kwargs)
    names = {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    return {k: v for k, v in kwargs.items() if k in names}


# --- the static index -------------------------------------------------------------------------------------

def index(kind: str) -> dict[str, Entry]:
    return _index()[kind]


@cache
def _index() -> dict[str, dict[str, Entry]]:
    out: dict[str, dict[str, Entry]] = {k: {} for k in KINDS}
    for module, path, origin in _sources():
        for e in declared(path, module, origin):
            previous = out[e.kind].get(e.name)
            if previous is not None:
                raise PluginError(f"{KINDS[e.kind]} '{e.name}' is registered twice: by {previous.module} "
                                  f"({previous.origin}) and by {e.module} ({e.origin}); rename or uninstall one")
            out[e.kind][e.name] = e
    return out


def _sources() -> list[tuple[str, Path, str]]:
    """(module, source file, origin) for every file of dllab's own package and of the plug-in modules."""
    own = [(_module_name(p, PACKAGE_ROOT.parent), p, OWN) for p in sorted(PACKAGE_ROOT.rglob("*.py"))]
    return own + [s for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP) for s in _plugin_sources(ep)]


def _module_name(path: Path, base: Path) -> str:
    """The dotted module name of ``path`` under the sys.path folder ``base``."""
    parts = path.relative_to(base).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _plugin_sources(ep: importlib.metadata.EntryPoint) -> list[tuple[str, Path, str]]:
    """The source files of the module (or package) entry point ``ep`` names, found without importing it."""
    origin = ep.dist.name if ep.dist is not None else ep.name
    module = ep.value.split(":", 1)[0].strip()
    path = _locate(module)
    if path is None:
        raise PluginError(f"the {origin} package's entry point {ENTRY_POINT_GROUP}:{ep.name} names {module}, which "
                          "is not a Python source module or package on the path; reinstall or uninstall that package")
    if path.name != "__init__.py":
        return [(module, path, origin)]
    base = path.parents[len(module.split("."))]   # the sys.path folder the package lives in
    return [(_module_name(f, base), f, origin) for f in sorted(path.parent.rglob("*.py"))]


def _locate(module: str) -> Path | None:
    """The source file of ``module`` (``__init__.py`` for a package), looked up on sys.path without importing
    it or its parent packages (``importlib.util.find_spec`` would import the parents, and whatever they
    import, torch included)."""
    search = None
    spec = None
    for part in module.split("."):
        spec = importlib.machinery.PathFinder.find_spec(part, search)
        if spec is None:
            return None
        search = spec.submodule_search_locations
    if spec is None or not spec.origin or not spec.origin.endswith(".py"):
        return None
    return Path(spec.origin)


def declared(path: Path, module: str, origin: str = OWN) -> list[Entry]:
    """The ``@register("<kind>", "<name>", ...)`` decorators in the source file ``path``."""
    text = path.read_text(encoding="utf-8")
    if "register(" not in text:      # most files: no parse needed
        return []
    found = []
    for node in ast.walk(ast.parse(text, str(path))):
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            continue
        for dec in node.decorator_list:
            args = _register_args(dec)
            if args is not None:
                kind, name, literals = args
                description = literals.get("description") or (ast.get_docstring(node) or "").strip().split("\n")[0]
                found.append(Entry(kind, name, module, description, origin, tuple(sorted(literals.items()))))
    return found


def _register_args(dec: ast.expr) -> tuple[str, str, dict[str, str]] | None:
    """(kind, name, string keywords) of a ``register("<kind>", "<name>", description="...", ...)`` decorator,
    else None."""
    if not isinstance(dec, ast.Call):
        return None
    func = dec.func
    called = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""
    if called != "register" or len(dec.args) < 2:
        return None
    kind, name = (a.value if isinstance(a, ast.Constant) and isinstance(a.value, str) else None
                  for a in dec.args[:2])
    if kind not in KINDS or name is None:
        return None
    literals = {k.arg: k.value.value for k in dec.keywords
                if k.arg and isinstance(k.value, ast.Constant) and isinstance(k.value.value, str)}
    return kind, name, literals
