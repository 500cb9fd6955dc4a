"""Checkpoints: written atomically, loaded with a clear error when damaged or of the wrong model."""
from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import torch

from .. import DllabError
from ..runs import atomic_write_bytes


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    buf = io.BytesIO()
    torch.save(state, buf)
    atomic_write_bytes(Path(path), buf.getvalue())


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
