"""What image experiments share: load the data into the run, train a list of model variants, plot them."""
from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch

from ..config import DataConfig, OptimConfig, TrainConfig
from ..data.images import ImageData, load_images
from ..models.common import count_parameters
from ..registry import build_model
from ..train.loop import LossFn, cross_entropy_loss, fit


def load_data(cfg, run, data_cfg: DataConfig | None = None, key: str = "data") -> ImageData:
    """Load ``cfg.data`` (or ``data_cfg``, the config section ``key``) and record where the pixels came from
    (and any fallback) in env.json + report; a resumed run refuses pixels from another source."""
    data_cfg = data_cfg or cfg.data
    data = load_images(data_cfg, seed=cfg.seed, profile=cfg.profile)
    run.check_source(key, data.source)
    for w in data.warnings:
        run.note(w)
    desc = describe_data(data)
    run.write_env(data=desc, data_fallback=bool(data.warnings))
    run.log(f"data: {desc}")
    return data


def describe_data(data: ImageData) -> str:
    """Where the pixels came from, which classes, and the split sizes, in one line (env.json, log)."""
    n_val = len(data.val) if data.val is not None else 0
    return (f"{data.source}; classes {data.classes if len(data.classes) <= 10 else len(data.classes)}; "
            f"train {len(data.train)} / val {n_val} / test {len(data.test)}")


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


def accuracy_table(run, results: dict[str, dict], variants: list[Variant], title: str = "Variants") -> None:
    """One row per variant: its settings, parameters, accuracies, time."""
    meta_keys = [k for v in variants for k in v.meta]
    meta_keys = list(dict.fromkeys(meta_keys))
    # A column of trainable parameters when some variant trains only part of its model (fine-tuning).
    partly = any(results[v.name]["trainable_params"] != results[v.name]["params"] for v in variants)
    header = ["variant", *meta_keys, *(["trainable params"] if partly else []), "params", "best val acc",
              "test acc (final)", "test acc (best val)", "seconds"]
    rows = []
    for v in variants:
        r = results[v.name]
        trainable = [f"{r['trainable_params']:,}"] if partly else []
        rows.append([v.name, *[v.meta.get(k, "") for k in meta_keys], *trainable, f"{r['params']:,}",
                     r.get("val_acc", float("nan")), r["test_acc"], r.get("best_test_acc", r["test_acc"]),
                     f"{r['seconds']:.1f}"])
    run.add_table(title, header, rows)


def curves_figure(run, names: list[str], file: str, caption: str, title: str = "") -> None:
    if not names:
        return
    from ..report import plots  # matplotlib: imported once there is a figure to draw, not before training

    run.save_figure(plots.training_curves({n: run.variant_history(n) for n in names}, title), file, caption)
