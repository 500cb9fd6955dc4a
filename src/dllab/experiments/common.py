"""What experiments share: the wiring between a run folder and the layers below it.

The layers below know no run: they return values and say what they must while they work through a
``dllab.core.events.Reporter`` (a ``Run`` is one). Here their results are recorded in the run (env.json, the report's
notes, log.txt; a resumed run refuses data from another source) and cached in its folder (features.npz,
results/classical.json), so a resumed run reuses them. The text experiments' own wiring (the pretrained
model, the splits, their embeddings) is in ``lab2/run.py``.
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch

from dllab.core import distributed, registry
from dllab.features.classifiers import probe, probe_key
from dllab.features.image import extract_splits, feature_splits, fingerprint
from dllab.ood.datasets import OODSet
from dllab.core.config import DataConfig
from dllab.data.images import ImageData, load_images
from dllab.train.precision import log_precision, model_kind, resolve_precision
from dllab.train.reuse import CNNSource, SavedCNN

FEATURES_FILE = "features.npz"      # frozen features of the run's data, image or text
Features = dict[str, tuple[np.ndarray, np.ndarray]]   # {split: (features, labels)}


# --- image data and the models built on it ----------------------------------------------------------

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
    if key == "data":   # the run's dataset, by name (report title, metrics.json, TensorBoard's hparams)
        run.write_env(dataset=data.title, spec_data=spec_data(cfg, run.experiment))
    run.log(f"data: {desc}")
    return data


def spec_data(cfg, experiment: str) -> bool:
    """Whether the run's ``data.name`` is one of the experiment's own datasets, which its spec's description,
    claims and numbers are about: its config's default, or one its profiles choose (lab1.transfer's quick profile
    stands CIFAR-10 classes in for CIFAR-100, which is not there offline: still the experiment as the spec has it)."""
    own = {type(cfg).model_fields["data"].get_default(call_default_factory=True).name}
    own |= {p["data.name"] for p in registry.get_experiment(experiment).profiles.values() if "data.name" in p}
    return cfg.data.name in own


def record_model(run, model: str) -> None:
    """The run's model (a registered name or a factory's import path) in env.json: the report, metrics.json and
    TensorBoard's hparams name it."""
    run.write_env(model=model)


def describe_data(data: ImageData) -> str:
    """Where the pixels came from, which classes, and the split sizes, in one line (env.json, log)."""
    n_val = len(data.val) if data.val is not None else 0
    return (f"{data.source}; classes {data.classes if len(data.classes) <= 10 else len(data.classes)}; "
            f"train {len(data.train)} / val {n_val} / test {len(data.test)}")


def get_cnn(run, source: CNNSource, data: ImageData, train: Callable[[], Any],
            found: SavedCNN | None = None) -> SavedCNN:
    """``source.get`` in this run: trained here into its models/ folder, else reused (a report note); env.json
    records where it came from under ``source.env_key``."""
    saved = source.get(data, run.path / "models", train, found, reporter=run)
    run.write_env(**{source.env_key: saved.origin})
    return saved


def record_ood_sets(run, sets: list[OODSet]) -> list[OODSet]:
    """``sets`` recorded in the run: each one's warnings as notes, its source checked against a resumed run's
    and, with its size, in env.json and the log."""
    for s in sets:
        for w in s.warnings:
            run.note(f"OOD set {s.name}: {w}")
        run.check_source(f"ood.{s.name}", s.source)
        run.log(f"OOD set {s.name}: {s.source}; {len(s)} images")
    run.write_env(ood={s.name: f"{s.source}; {len(s)} images" for s in sets})
    return sets


# --- frozen features and the classical classifiers on them ------------------------------------------

def cached_features(run, key: str, extract: Callable[[], dict[str, np.ndarray]],
                    splits) -> tuple[Features, bool]:
    """``extract()``'s ``{"<split>_x", "<split>_y"}`` arrays, kept in the run's features.npz and reused while
    ``key`` matches, as {split: (features, labels)} for each of ``splits``. Returns (features, reused)."""
    arrays, reused = run.cached_arrays(FEATURES_FILE, key, extract)
    return {s: (arrays[f"{s}_x"], arrays[f"{s}_y"]) for s in splits}, reused


@distributed.main_only     # under torchrun: fitted once, on rank 0
def cached_probe(run, feats: Features, names, k: int, seed: int,
                 fitted: dict | None = None) -> dict[str, dict[str, float]]:
    """``features.classifiers.probe`` kept in the run's results/classical.json with the features' key, so a
    resumed run does not fit the classifiers again (``fitted`` then stays empty: they were saved when fitted)."""
    fit = lambda: {"classifiers": probe(feats, names, k, seed, fitted)}     # noqa: E731
    return run.reuse_or_run("classical", fit, probe_key(feats, names, k, seed))[0]["classifiers"]


def classical_probe(run, model: torch.nn.Module, data: ImageData, device: torch.device, precision: str,
                    batch_size: int, names: list[str], k: int, seed: int,
                    fitted: dict | None = None) -> tuple[dict[str, dict], int, str]:
    """LinearSVC / k-NN / logistic regression (``names``) on the frozen, cached ``model.features`` of ``data``:
    ``({name: {"val": acc, "test": acc, "seconds": s}}, feature width, resolved precision)``, kept in the run
    folder; ``fitted`` receives the pipelines fitted here. ``precision`` is the setting (auto | fp32 | ...),
    resolved for ``model`` on ``device``."""
    prec = resolve_precision(precision, device, model_kind(model))
    log_precision(run, prec, "features")
    splits = feature_splits(data)
    feats, reused = cached_features(run, fingerprint(model, splits, prec.name),
                                    lambda: extract_splits(model, splits, device, batch_size, prec.name), splits)
    dim = feats["train"][0].shape[1]
    run.log(f"features: {dim}-dim, {'reused from' if reused else 'extracted to'} {FEATURES_FILE}")
    return cached_probe(run, feats, names, k, seed, fitted), dim, prec.name
