"""Train a list of model variants (one model + optimiser setting each) with the one loop.

What a run keeps of them (history, checkpoints, the finished models, the results an earlier session of the
run finished) comes in through ``dllab.core.events.TrainingHooks`` (``Run.training_hooks()``); with the default
hooks nothing is kept.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch

from dllab.core.config import OptimConfig, TrainConfig
from dllab.data.images import ImageData
from dllab.core.events import TrainingHooks
from dllab.models.common import Classifier, count_parameters
from dllab.core.registry import build_model
from dllab.train.checkpoint import model_state
from dllab.train.image import ImageTask, LossFn, cross_entropy_loss
from dllab.train.loop import fit
from dllab.train.precision import model_kind, resolve_precision
from dllab.train.saved_model import evaluation_spec, input_spec, kept_result


@dataclass
class Variant:
    name: str
    model: str                        # registry name
    kwargs: dict = field(default_factory=dict)
    optim: OptimConfig | None = None  # None -> the experiment's optim
    loss_fn: LossFn = cross_entropy_loss
    meta: dict = field(default_factory=dict)  # extra columns for the report table
    # Fine-tuning: start from a copy of this trained model with a new classifier for the data's classes
    # (``kwargs`` then go to its ``reset_classifier``) instead of building ``model`` from scratch.
    start: torch.nn.Module | None = None
    frozen: tuple[str, ...] = ()      # parameter-name prefixes that keep their starting values


def build_for(data: ImageData, variant: Variant, seed: int) -> torch.nn.Module:
    # Seed before every build: a variant's initial weights do not depend on which variants ran before it
    # (so a resumed run that skips finished variants builds the same model).
    torch.manual_seed(seed)
    if variant.start is not None:
        model = copy.deepcopy(variant.start)
        model.reset_classifier(data.num_classes, **variant.kwargs)
        spec = getattr(model, "dllab_spec", None)
        if spec and "num_classes" in spec["kwargs"]:   # a user's model: its saved spec rebuilds the new classifier
            model.dllab_spec = {**spec, "kwargs": {**spec["kwargs"], "num_classes": data.num_classes}}
    else:
        c, h, _ = data.shape
        model = build_model(variant.model, num_classes=data.num_classes, in_channels=c, image_size=h,
                            stats=data.stats, **variant.kwargs)
    if variant.frozen:   # Classifier's freeze, called on any module: a user's model has none of its own
        Classifier.freeze(model, variant.frozen)
    return model


def train_model(model: torch.nn.Module, data: ImageData, name: str, device: torch.device,
                hooks: TrainingHooks = TrainingHooks(), train: TrainConfig | None = None,
                optim: OptimConfig | None = None, seed: int = 0, augment: bool = False,
                loss_fn: LossFn = cross_entropy_loss) -> dict:
    """Train ``model`` as variant ``name`` (continuing from its checkpoint, if any); returns its result (``test_*``
    of the kept weights, ``test_*_last`` of the last epoch's). The model ends with its best-validation weights,
    which go to ``hooks.models(name)`` with the result."""
    train, optim = train or TrainConfig(), optim or OptimConfig()
    precision = resolve_precision(train.precision, device, model_kind(model))
    hooks.record_precision(name, precision)
    task = ImageTask(model, data, train, optim, device, name, seed, augment, loss_fn, precision)
    result = fit(task, hooks.callbacks, hooks.checkpoint(name), hooks.reporter, hooks.progress)
    models = hooks.models(name)
    if models is not None:   # the best-validation weights: what later experiments (transfer, OOD) reuse
        models.save(model_state(model, data.classes, result=result, input=input_spec(data),
                                evaluation=evaluation_spec(precision.name, train, model)))
    return result


def train_variants(cfg, data: ImageData, variants: list[Variant], device: torch.device,
                   hooks: TrainingHooks = TrainingHooks(), train: TrainConfig | None = None,
                   optim: OptimConfig | None = None, augment: bool | None = None) -> dict[str, dict]:
    """Train each variant on ``device``; returns {variant: result}. A variant an earlier session finished
    (``hooks.reuse``) is not trained again: its saved result is returned."""
    train = train or cfg.train
    augment = cfg.data.augment if augment is None else augment
    results = {}
    for v in variants:
        model = build_for(data, v, cfg.seed)
        n_params, n_train = count_parameters(model), count_parameters(model, trainable_only=True)
        hooks.reporter.log(f"[{v.name}] {v.model} {v.kwargs} — {n_params:,} parameters"
                           + (f", {n_train:,} trainable" if n_train != n_params else ""))

        def train_it(model=model, v=v) -> dict:
            return train_model(model, data, v.name, device, hooks, train, v.optim or optim or cfg.optim, cfg.seed,
                               augment, v.loss_fn)
        # kept_result: a result an earlier session saved under the names before METRICS_RULE reads as today's
        res = kept_result(hooks.reuse(v.name, train_it)[0])
        res["params"], res["trainable_params"] = n_params, n_train
        results[v.name] = res
    return results
