"""dllab: run, reproduce and report a course's worth of deep-learning experiments.

The Python API (``dllab.run``, ``dllab.load``, ``dllab.sweep``, ``dllab.compare``, ``dllab.list_experiments``...)
lives in ``dllab.api`` and loads on first use, so that ``import dllab`` stays fast and torch-free.
"""

__version__ = "0.1.0"

import importlib  # noqa: E402

from dllab.errors import ConfigError, DataError, DllabError, PluginError, ResumeError, RunFolderError  # noqa: E402

# The names of dllab.api that ``dllab.<name>`` gives (module __getattr__, PEP 562: imported when first asked).
_API = ("run", "load", "sweep", "compare", "list_experiments", "config", "RunResult", "SweepResult",
        "ExperimentInfo", "load_model", "predict", "export")

__all__ = ["__version__", "DllabError", "ConfigError", "DataError", "RunFolderError", "ResumeError", "PluginError",
           *_API]


def __getattr__(name: str):
    if name in _API:
        # By name, not an import statement: every layer imports this package (for DllabError), and the layers
        # contract (import-linter) would read a static import of dllab.api here as each of them importing the
        # runner through it.
        return getattr(importlib.import_module("dllab.api"), name)
    raise AttributeError(f"module 'dllab' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_API))
