"""Checkpoints: written atomically, loaded with a clear error when damaged or of the wrong model."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from .. import DllabError
from ..runs import atomic_write


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    atomic_write(path, lambda f: torch.save(state, f))


def load_checkpoint(path: Path) -> dict[str, Any]:
    try:
        # Our own files: they hold RNG states and numpy scalars, so the full unpickler is needed.
        return torch.load(path, map_location="cpu", weights_only=False)
    except FileNotFoundError:
        raise DllabError(f"checkpoint {path} does not exist") from None
    except Exception as e:
        raise DllabError(f"checkpoint {path} is corrupt ({type(e).__name__}); delete it to restart "
                         "that variant from scratch") from None


def save_model(path: Path, model: torch.nn.Module, classes: list[str], **meta) -> None:
    """Weights plus what it takes to rebuild the model: ``spec`` (registry name + kwargs) and classes."""
    spec = getattr(model, "dllab_spec", None)
    save_checkpoint(path, {"spec": spec, "classes": classes, "state_dict": model.state_dict(), **meta})


def load_model(path: Path, expect: dict[str, Any] | None = None) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Rebuild a saved model. ``expect`` = spec kwargs that must match (e.g. the architecture's depth)."""
    from ..registry import build_model

    blob = load_checkpoint(path)
    spec = blob.get("spec")
    if not spec:
        raise DllabError(f"{path} holds no model spec; it was not written by dllab's save_model")
    for k, v in (expect or {}).items():
        have = spec["name"] if k == "name" else spec["kwargs"].get(k)
        if have != v:
            raise DllabError(f"{path}: the saved model has {k}={have!r} but this experiment needs {k}={v!r}; "
                             "point to a run of the right architecture")
    model = build_model(spec["name"], **spec["kwargs"])
    try:
        model.load_state_dict(blob["state_dict"])
    except RuntimeError as e:
        first = str(e).strip().splitlines()[0]
        raise DllabError(f"{path}: weights do not fit the model ({first})") from None
    return model, blob


def find_run_model(run_dir: str | Path, variant: str = "", prefer: tuple[str, ...] = ()) -> Path:
    """The saved model of a finished run: ``variant`` if given, else the run's only model, else the first
    name of ``prefer`` that the run has (so a lab1.cnn-depth run can serve as the depth-5 CNN)."""
    models = Path(run_dir) / "models"
    available = sorted(p.stem for p in models.glob("*.pt")) if models.is_dir() else []
    if not available:
        raise DllabError(f"{run_dir} holds no trained models (no models/*.pt); pass a finished run folder")
    if variant:
        if variant not in available:
            raise DllabError(f"{run_dir} has no model '{variant}'; it has {', '.join(available)}")
        return models / f"{variant}.pt"
    if len(available) == 1:
        return models / f"{available[0]}.pt"
    for name in prefer:
        if name in available:
            return models / f"{name}.pt"
    raise DllabError(f"{run_dir} has several models ({', '.join(available)}); choose one with the "
                     "experiment's variant setting")
