"""Experiments register themselves by name (``@register_experiment``) when their module is imported."""
import importlib
import pkgutil


def import_all() -> None:
    for m in pkgutil.iter_modules(__path__):
        if not m.name.startswith("_") and m.name != "common":
            importlib.import_module(f"{__name__}.{m.name}")
