"""Train a list of model variants (one model + optimiser setting each) with the shared loop, in one run."""
from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch

from ..config import OptimConfig, TrainConfig
from ..data.images import ImageData
from ..models.common import count_parameters
from ..registry import build_model
from .loop import LossFn, cross_entropy_loss, fit


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
    else:
        c, h, _ = data.shape
        model = build_model(variant.model, num_classes=data.num_classes, in_channels=c, image_size=h,
                            stats=data.stats, **variant.kwargs)
    if variant.frozen:
        model.freeze(variant.frozen)
    return model


def train_variants(cfg, run, data: ImageData, variants: list[Variant], train: TrainConfig | None = None,
                   optim: OptimConfig | None = None, augment: bool | None = None) -> dict[str, dict]:
    """Train each variant with the shared loop on the run's device; returns {variant: result} (results also
    saved in the run)."""
    train = train or cfg.train
    results = {}
    for v in variants:
        model = build_for(data, v, cfg.seed)
        n_params, n_train = count_parameters(model), count_parameters(model, trainable_only=True)
        run.log(f"[{v.name}] {v.model} {v.kwargs} — {n_params:,} parameters"
                + (f", {n_train:,} trainable" if n_train != n_params else ""))
        res = fit(model, data, train, v.optim or optim or cfg.optim, run, v.name, run.device, seed=cfg.seed,
                  augment=cfg.data.augment if augment is None else augment, loss_fn=v.loss_fn)
        res["params"], res["trainable_params"] = n_params, n_train
        results[v.name] = res
    return results
