"""The depth-k CNN an experiment builds on: reused from a finished run, or trained here and reloaded.

Lab 4's classifier (``model.run``) and transfer learning's source model (``source.run``) are one idea: take
the best-validation cnn saved in another run folder (``<key>.variant``, else the folder's only model, else
the first it holds of the experiment's own name, ``res_d<k>``, ``plain_d<k>``), or train it in this run as
variant ``name`` and take it back from ``models/<name>.pt`` (the experiment says where its models folder is).
Both ways go through ``checkpoint.load_model`` (weights_only, spec checks) and the same architecture checks,
so what the experiment gets does not depend on where the model came from.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from dllab import ConfigError
from dllab.core.events import QUIET, Reporter
from dllab.train.checkpoint import find_run_model, load_model
from dllab.train.saved_model import kept_result


@dataclass
class SavedCNN:
    """A cnn loaded from a ``models/<name>.pt``, with what ``save_model`` wrote beside its weights."""
    model: nn.Module
    blob: dict[str, Any]     # spec, classes, result
    path: Path
    reused: bool             # from another run folder (True) or trained in this one

    @property
    def kwargs(self) -> dict[str, Any]:
        return self.blob["spec"]["kwargs"]

    @property
    def name(self) -> str:
        """The model it was built by: ``cnn``, another registered model or a factory's import path."""
        return self.blob["spec"]["name"]

    @property
    def arch(self) -> dict[str, Any]:
        """What to build the same architecture again with: depth, width, residual."""
        return {k: self.kwargs[k] for k in ("depth", "base_channels", "residual") if k in self.kwargs}

    @property
    def classes(self) -> list[str]:
        return list(self.blob.get("classes") or [])

    @property
    def result(self) -> dict[str, Any]:
        """Its training result as saved ({} when none was), under today's names (``saved_model.kept_result``)."""
        return kept_result(self.blob.get("result") or {})

    @property
    def origin(self) -> str:
        """Where it came from, for the report and env.json: the reused file, or this run's models/<name>.pt."""
        return str(self.path.resolve()) if self.reused else f"trained in this run (models/{self.path.name})"

    def ready(self, device: torch.device) -> "SavedCNN":
        """Itself, with the model in eval mode on ``device``: how detectors and attacks take it."""
        self.model.to(device).eval()
        return self

    def describe(self) -> str:
        kw = self.kwargs
        if self.name != "cnn":   # a user's model: its name and the architecture arguments it took
            return self.name + (f" ({', '.join(f'{k} {v}' for k, v in self.arch.items())})" if self.arch else "")
        return (f"cnn depth {kw.get('depth')}, {kw.get('base_channels')} channels, "
                f"{'residual' if kw.get('residual') else 'plain'}")


def load_cnn(path: Path, depth: int, reused: bool, model: str = "cnn") -> SavedCNN:
    """The saved depth-``depth`` cnn at ``path`` (or a model built by ``model``, a user's: any depth); any other
    architecture is a one-line DllabError. A file naming another model is refused before anything is built, so a
    crafted file cannot make dllab import a factory the config does not name."""
    expect = {"name": model, **({"depth": depth} if model == "cnn" else {})}
    found, blob = load_model(path, expect=expect)
    return SavedCNN(found, blob, Path(path), reused)


def train_and_reload(models: Path, name: str, depth: int, train: Callable[[], Any], model: str = "cnn") -> SavedCNN:
    """``train()`` trains variant ``name`` (built by ``model``), which saves it to ``models``/<name>.pt (the run's
    models folder); the model is then read back from there, the way a model of another run is read."""
    train()
    return load_cnn(Path(models) / f"{name}.pt", depth, reused=False, model=model)


def _show(classes: list[str]) -> str:
    return ", ".join(classes) if len(classes) <= 10 else f"{', '.join(classes[:10])}, ..."


@dataclass(frozen=True)
class CNNSource:
    """Where an experiment's depth-``depth`` cnn comes from: ``<key>.run`` (and ``<key>.variant``), else
    trained in this run as variant ``name``."""
    key: str                 # the config section, named in errors: "model", "source"
    run: str                 # a finished run folder; "" = train it here
    variant: str             # its model; "" = the folder's only one, else name, res_d<depth>, plain_d<depth>
    name: str                # the variant it is trained as here (models/<name>.pt)
    depth: int
    role: str                # what the report calls it: "classifier", "source model"
    env_key: str             # env.json records where it came from under this key
    same_classes: bool = False   # it must have been trained on the data's classes (an OOD classifier)
    model: str = "cnn"       # what builds it: "cnn", another registered model or a factory's import path

    def find(self) -> SavedCNN | None:
        """The reused model, loaded and checked (call it before loading data, so a wrong folder fails at
        once), or None when it is trained here."""
        if not self.run:
            if self.variant and self.variant != self.name:
                raise ConfigError(f"{self.key}.variant={self.variant} needs {self.key}.run (the run folder that "
                                  "holds it)")
            return None
        prefer = (self.name, f"res_d{self.depth}", f"plain_d{self.depth}")
        return load_cnn(find_run_model(self.run, self.variant, prefer=prefer), self.depth, reused=True,
                        model=self.model)

    def get(self, data, models: Path, train: Callable[[], Any], found: SavedCNN | None = None,
            reporter: Reporter = QUIET) -> SavedCNN:
        """``found`` (or what ``find`` finds) checked against ``data`` (a note to ``reporter`` says it was
        reused), else trained here by ``train()`` into ``models`` and reloaded. ``saved.origin`` says where it
        came from (env.json records it under ``env_key``)."""
        saved = found or self.find()
        if saved is None:
            return train_and_reload(models, self.name, self.depth, train, self.model)
        self.check(saved, data)
        reporter.note(f"{self.role}: {saved.path} ({saved.describe()}; trained on {len(saved.classes)} classes) "
                      "— reused, not trained in this run")
        return saved

    def check(self, saved: SavedCNN, data) -> None:
        """One-line refusal when ``saved`` cannot take ``data``'s images or, with ``same_classes``, was trained
        on other classes."""
        if self.same_classes and saved.classes != list(data.classes):
            raise ConfigError(f"{saved.path}: the model was trained on {len(saved.classes)} classes "
                              f"({_show(saved.classes)}) but the in-distribution data has {len(data.classes)} "
                              f"({_show(data.classes)}); set data.classes to the model's classes (data.classes=[] "
                              "for all)")
        channels = saved.kwargs.get("in_channels", 3)
        if channels != data.shape[0]:
            raise ConfigError(f"{saved.path}: the saved model takes {channels}-channel images, the "
                              f"{data.name} images here have {data.shape[0]}")
