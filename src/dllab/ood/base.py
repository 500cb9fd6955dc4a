"""What every OOD detector object is, as in pytorch-ood: ``fit(model, x, y) -> self`` learns whatever the
detector needs from in-distribution training data (images ``x``, uint8 or float in [0, 1], and their labels
``y``; most detectors need nothing), ``score(model, x)`` gives one CPU float32 score per image, **larger = more
likely OOD**.

A detector is one file: a ``Detector`` subclass registered with ``@register("detector", "<name>")``. The
name is its config name (``ood.detectors``) and its summary keys' (``<name>.auroc``...); ``from_settings``
builds it from the experiment's settings. Detectors that read nothing but the logits are ``LogitDetector``s:
``score_logits`` lets one forward pass over a dataset serve all of them
(``analysis.ood.evaluate.score_images``). Those that read the penultimate features (``model.forward_features``,
and may feed edited ones to ``model.forward_head``) are ``FeatureDetector``s: ``fit_features`` and
``score_features`` take the (N, D) features, so one feature pass serves all of them too.

What a fitted detector keeps is saved as in pytorch-ood: ``settings()`` (plain JSON, the keyword arguments it is
built again with: ``cls(**settings)``), ``state_dict()`` (what ``fit`` learned, tensors only: empty for the
stateless ones) and ``load_state_dict(state)``; ``state_shapes(dims)`` says which shapes a state must have for a
given model, so a state read back from a file is checked before it is used (``ood.saved``).
"""
from __future__ import annotations

import torch

from typing import Any

from dllab import ConfigError, DllabError
from dllab.train.inference import eval_mode, logits_of, model_device_dtype, outputs_of


class Detector:
    """Base detector. ``batch_size``: images per forward pass when scoring; ``label``: its name in figures."""

    label = ""            # its name in figures ("" = its registered name)
    # What it calls on the model besides forward: each a tuple of alternative names. An experiment checks a
    # user's model against it before training, so a missing method is one line then, not after the training.
    needs: tuple[tuple[str, ...], ...] = ()

    def __init__(self, batch_size: int = 256):
        self.batch_size = batch_size

    @classmethod
    def from_settings(cls, batch_size: int = 256, **settings) -> "Detector":
        """The detector as an experiment sets it up. ``settings`` holds the experiment's detector sections by
        name (``odin``, ``autoencoder``, and ``ood``'s sub-sections ``knn``, ``vim``, ``react``, ``ash``), ``seed``
        and ``progress``; a detector takes what it needs (this default: nothing but the batch size)."""
        return cls(batch_size=batch_size)

    def fit(self, model: torch.nn.Module, x=None, y=None) -> "Detector":
        """Nothing to learn from the ID training images ``x`` and labels ``y``; returns self."""
        return self

    def fit_note(self) -> str:
        """A line for the report about what ``fit`` did ("" when it did nothing)."""
        return ""

    def score(self, model: torch.nn.Module, x) -> torch.Tensor:
        raise NotImplementedError

    # --- saving and loading what was fitted (pytorch-ood style) ---------------------------------------

    def settings(self) -> dict[str, Any]:
        """The keyword arguments (plain JSON values) that build this detector again, ``batch_size`` aside."""
        return {}

    def state_dict(self) -> dict[str, torch.Tensor]:
        """What ``fit`` learned, as named tensors (none for a detector that learns nothing)."""
        return {}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> "Detector":
        """Take a fitted state ``state_dict`` returned; returns self. Names other than its own are an error."""
        expect_keys(self, state, ())
        return self

    def state_shapes(self, dims: dict[str, int]) -> dict[str, tuple[int, ...]]:
        """The shape of each state tensor for a model of ``dims`` (``classes``, ``features``, ``maps``,
        ``channels``, ``height``, ``width``); -1 where any size will do."""
        return {}


def expect_keys(det: Detector, state: dict[str, torch.Tensor], names) -> dict[str, torch.Tensor]:
    """``state`` if it holds exactly the tensors ``names``, else a one-line error naming what differs."""
    missing, extra = sorted(set(names) - set(state)), sorted(set(state) - set(names))
    if missing or extra:
        raise DllabError(f"{type(det).__name__} state: " + "; ".join(
            p for p in (f"missing {', '.join(missing)}" if missing else "",
                        f"unexpected {', '.join(extra)}" if extra else "") if p))
    return state


class LogitDetector(Detector):
    """A detector that is a function of the logits alone."""

    def score(self, model: torch.nn.Module, x) -> torch.Tensor:
        return self.score_logits(logits_of(model, x, self.batch_size))

    def score_logits(self, logits) -> torch.Tensor:
        raise NotImplementedError


def check_feature_model(model: torch.nn.Module) -> None:
    """A one-line error unless ``model`` has ``forward_features(x)`` and ``forward_head(features)``."""
    if not all(callable(getattr(model, m, None)) for m in ("forward_features", "forward_head")):
        raise ConfigError(f"the feature-space OOD detectors need a model with forward_features(x) and "
                          f"forward_head(features), as dllab's cnn and mlp have; {type(model).__name__} has not")


def features_of(model: torch.nn.Module, data, batch_size: int = 256) -> torch.Tensor:
    """``model.forward_features`` of ``data`` (images or a loader), in eval mode: a CPU float32 (N, D) tensor."""
    check_feature_model(model)
    return outputs_of(model, data, batch_size, model.forward_features)


def head_logits(model: torch.nn.Module, features: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """``model.forward_head`` of (N, D) ``features`` (batches on the model's device, eval mode): CPU float32
    (N, K) logits. ``head_logits(model, features_of(model, x))`` equals ``logits_of(model, x)``."""
    dev, dtype = model_device_dtype(model)
    with eval_mode(model), torch.inference_mode():
        return torch.cat([model.forward_head(f.to(dev, dtype)).float().cpu() for f in features.split(batch_size)])


class FeatureDetector(Detector):
    """A detector that reads the penultimate features (and may run the head on edited ones).

    ``fit``/``score`` run the model to get the features; ``fit_features``/``score_features`` are the detector.
    ``fits = False`` for one that learns nothing (its ``fit`` runs no model)."""

    fits = True
    needs = (("forward_features",), ("forward_head",))

    def fit(self, model: torch.nn.Module, x=None, y=None) -> "FeatureDetector":
        if not self.fits:
            return self
        if x is None:
            raise DllabError(f"{type(self).__name__} is fitted on in-distribution training images: pass them as x")
        return self.fit_features(model, features_of(model, x, self.batch_size), y)

    def fit_features(self, model: torch.nn.Module, features: torch.Tensor, y=None) -> "FeatureDetector":
        """Learn from the (N, D) ID training ``features`` (and labels ``y``); returns self."""
        return self

    def score(self, model: torch.nn.Module, x) -> torch.Tensor:
        return self.score_features(model, features_of(model, x, self.batch_size))

    def score_features(self, model: torch.nn.Module, features: torch.Tensor) -> torch.Tensor:
        """(N,) CPU float32 scores of (N, D) ``features``, larger = more OOD."""
        raise NotImplementedError
