"""Checkpoints and saved models: written atomically, read as data, never as code.

Files are loaded with ``torch.load(weights_only=True)``: only tensors, plain containers and basic types can
come back, so a crafted file (a pickle whose ``__reduce__`` runs a command, say: a classmate's run folder, a
download) is refused instead of executed. Everything dllab saves is made of those types (``plain``
converts numpy scalars on the way out). A file that is not such a file, is damaged, or does not have the
structure dllab wrote is a one-line ``DllabError`` naming it.

Under torchrun, rank 0 alone writes and reads these files; a file read is handed to the other ranks (which
hold the same weights, so they have nothing of their own to save).
"""
from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import torch

from dllab import ConfigError, DllabError, ResumeError, RunFolderError
from dllab.core import distributed, ranks, untrusted
from dllab.core.files import atomic_write
from dllab.core.registry import build_model

CHECKPOINT_LIMIT = 16 * 2**30   # far above any model the labs train; a bound on what a crafted file can make us read
# Model constructor arguments a saved spec may carry: plain values only (a spec is rebuilt with them).
_SPEC_VALUE_TYPES = (int, float, str, bool, type(None))


def plain(obj: Any) -> Any:
    """``obj`` with numpy scalars/arrays turned into Python numbers/lists, so ``weights_only`` loads it."""
    if isinstance(obj, torch.Tensor) or obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, dict):
        return {k: plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(plain(v) for v in obj)
    if hasattr(obj, "tolist"):  # numpy scalar or array
        return obj.tolist()
    raise TypeError(f"cannot save a {type(obj).__name__} in a dllab checkpoint (tensors and plain types only)")


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    if not ranks.is_main():
        return
    state = plain(state)
    atomic_write(path, lambda f: torch.save(state, f))


def load_checkpoint(path: Path) -> dict[str, Any]:
    return distributed.on_main(_load_checkpoint, Path(path))


def _load_checkpoint(path: Path) -> dict[str, Any]:
    if not path.exists() and not path.is_symlink():
        raise RunFolderError(f"checkpoint {path} does not exist")
    try:
        with untrusted.open_regular(path, CHECKPOINT_LIMIT) as f:
            blob = torch.load(f, map_location="cpu", weights_only=True)
    except DllabError:
        raise
    except Exception as e:
        found = re.search(r"GLOBAL (\S+)", str(e))
        if found:
            raise RunFolderError(f"{path} holds Python objects ({found.group(1)}), not just tensors and plain "
                                 "values; dllab does not load such files (they could run code): use a file written "
                                 "by dllab") from e
        raise RunFolderError(f"{path} is corrupt or not a checkpoint ({type(e).__name__}); delete it (a checkpoint "
                             "restarts its variant, a model is trained again)") from e
    if not isinstance(blob, dict):
        raise RunFolderError(f"{path} is not a dllab checkpoint (it holds a {type(blob).__name__}, not a dict)")
    return blob


class FileCheckpoint:
    """A ``dllab.core.events.CheckpointIO`` on one file (a run's checkpoints/<variant>.pt or models/<variant>.pt):
    written atomically by rank 0, read as data (``load_checkpoint``) and handed to the other ranks."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def __str__(self) -> str:    # what error messages name
        return str(self.path)

    def exists(self) -> bool:
        return distributed.on_main(self.path.exists)

    def save(self, state: dict[str, Any]) -> None:
        save_checkpoint(self.path, state)

    def load(self) -> dict[str, Any]:
        return load_checkpoint(self.path)


# --- training state: what a loop needs to continue a killed run with the numbers of an uninterrupted one ---

def trained_weights(model: torch.nn.Module, trainable_only: bool = False) -> dict[str, torch.Tensor]:
    """The weights a loop keeps: all of them (``state_dict``, buffers included), or with ``trainable_only`` the
    parameters that train (a fine-tuned transformer's frozen layers come back from its pretrained files)."""
    if trainable_only:
        return {k: v for k, v in model.named_parameters() if v.requires_grad}
    return model.state_dict()


def training_state(epoch: int, model: torch.nn.Module, optimizer, scheduler, precision, progress: dict[str, Any],
                   trainable_only: bool = False) -> dict[str, Any]:
    """The state after ``epoch``, for a ``CheckpointIO``: weights (``trained_weights``), optimiser, scheduler, loss
    scaler, the torch RNGs, and ``progress``, the loop's own plain bookkeeping (history, best epoch, ...)."""
    return {
        "epoch": epoch, "model": {k: v.detach() for k, v in trained_weights(model, trainable_only).items()},
        "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "trainable_only": trainable_only, "precision": precision.name, "scaler": precision.scaler_state(),
        "rng_cpu": torch.get_rng_state(),
        "rng_cuda": torch.cuda.get_rng_state() if torch.cuda.is_available() and torch.cuda.is_initialized() else None,
        "progress": progress}


def restore_training_state(ck: dict[str, Any], model: torch.nn.Module, optimizer, scheduler, precision,
                           where: str = "the checkpoint") -> tuple[int, dict]:
    """Load what ``training_state`` made (read back from ``where``) into the live objects; returns
    (epoch, progress)."""
    started_in = ck.get("precision", precision.name)
    if started_in != precision.name:   # e.g. `auto` re-probed differently: never mix precisions in one run
        raise ResumeError(f"{where} was trained in {started_in}, but this machine now resolves {precision.name} "
                          f"({precision.reason or 'explicit setting'}); resume where the run started, or delete "
                          "the checkpoint to restart that variant")
    try:
        partial = bool(ck.get("trainable_only"))
        missing = model.load_state_dict(ck["model"], strict=not partial).missing_keys
        trainable = {k for k, v in model.named_parameters() if v.requires_grad}
        if trainable & set(missing):
            raise KeyError(sorted(trainable & set(missing))[0])
        optimizer.load_state_dict(ck["optimizer"])
        if scheduler is not None and ck.get("scheduler"):
            scheduler.load_state_dict(ck["scheduler"])
        precision.load_scaler_state(ck.get("scaler"))
        torch.set_rng_state(ck["rng_cpu"])
        if ck.get("rng_cuda") is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state(ck["rng_cuda"])
        return int(ck["epoch"]), dict(ck["progress"])
    except (RuntimeError, ValueError, KeyError, TypeError) as e:
        raise RunFolderError(f"checkpoint {where} does not match this variant ({type(e).__name__}); delete it to "
                             "restart the variant") from e


def model_state(model: torch.nn.Module, classes: list[str], **meta) -> dict[str, Any]:
    """What a saved model holds: weights plus what it takes to rebuild the model, ``spec`` (registry name +
    kwargs) and classes, and ``meta`` (e.g. the variant's result)."""
    spec = getattr(model, "dllab_spec", None)
    return {"spec": spec, "classes": list(classes), "state_dict": model.state_dict(), **meta}


def save_model(path: Path, model: torch.nn.Module, classes: list[str], **meta) -> None:
    """``model_state`` written to ``path``."""
    save_checkpoint(path, model_state(model, classes, **meta))


def check_spec(path: Path, spec: Any) -> dict[str, Any]:
    """The saved ``spec`` if it has the shape dllab writes ({"name": str, "kwargs": {str: plain value}})."""
    if not spec:
        raise RunFolderError(f"{path} holds no model spec; it was not written by dllab's save_model")
    ok = (isinstance(spec, dict) and isinstance(spec.get("name"), str) and isinstance(spec.get("kwargs"), dict)
          and all(isinstance(k, str) and (isinstance(v, _SPEC_VALUE_TYPES) or
                                          (isinstance(v, list) and all(isinstance(i, _SPEC_VALUE_TYPES) for i in v)))
                  for k, v in spec["kwargs"].items()))
    if not ok or any(isinstance(v, float) and not math.isfinite(v) for v in spec["kwargs"].values()):
        raise RunFolderError(f"{path}: the model spec is malformed (expected a name and plain keyword arguments)")
    return spec


def load_model(path: Path, expect: dict[str, Any] | None = None) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Rebuild a saved model. ``expect`` = spec kwargs that must match (e.g. the architecture's depth)."""
    blob = load_checkpoint(path)
    spec = check_spec(path, blob.get("spec"))
    for k, v in (expect or {}).items():
        have = spec["name"] if k == "name" else spec["kwargs"].get(k)
        if have != v:
            raise ConfigError(f"{path}: the saved model has {k}={have!r} but this experiment needs {k}={v!r}; "
                              "point to a run of the right architecture")
    classes = blob.get("classes")
    if classes is not None and not (isinstance(classes, list) and all(isinstance(c, str) for c in classes)):
        raise RunFolderError(f"{path}: 'classes' is malformed (expected a list of class names)")
    try:
        model = build_model(spec["name"], **spec["kwargs"])
    except (TypeError, ValueError, RuntimeError) as e:
        raise RunFolderError(f"{path}: the model spec cannot be built ({type(e).__name__}: "
                             f"{str(e).splitlines()[0] if str(e) else ''})") from e
    load_weights(path, model, blob.get("state_dict"))
    return model, blob


def load_weights(path: Path, model: torch.nn.Module, state: Any) -> None:
    """``model.load_state_dict(state)``, with a one-line error when the weights do not fit."""
    if not isinstance(state, dict):
        raise RunFolderError(f"{path} holds no weights (state_dict)")
    try:
        model.load_state_dict(state)
    except (RuntimeError, ValueError, TypeError, KeyError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise RunFolderError(f"{path}: weights do not fit the model ({first})") from e


def find_run_model(run_dir: str | Path, variant: str = "", prefer: tuple[str, ...] = ()) -> Path:
    """The saved model of a finished run: ``variant`` if given, else the run's only model, else the first
    name of ``prefer`` that the run has (so a lab1.cnn-depth run can serve as the depth-5 CNN)."""
    if Path(run_dir).is_dir():
        untrusted.check_tree(Path(run_dir))   # another run's folder: its models/ must not lead elsewhere
    models = Path(run_dir) / "models"
    available = sorted(p.stem for p in models.glob("*.pt")) if models.is_dir() else []
    if not available:
        raise RunFolderError(f"{run_dir} holds no trained models (no models/*.pt); pass a finished run folder")
    if variant:
        if variant not in available:
            raise ConfigError(f"{run_dir} has no model '{variant}'; it has {', '.join(available)}")
        return models / f"{variant}.pt"
    if len(available) == 1:
        return models / f"{available[0]}.pt"
    for name in prefer:
        if name in available:
            return models / f"{name}.pt"
    raise ConfigError(f"{run_dir} has several models ({', '.join(available)}); choose one with the "
                      "experiment's variant setting")
