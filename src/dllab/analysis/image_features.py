"""Frozen image features: ``model.features`` of every image of a dataset, extracted once per run.

The cache (``features.npz`` in the run folder) is keyed on a fingerprint of the extractor's weights, the
images and the precision, so a resumed run reuses it and another source model never does.
"""
from __future__ import annotations

import hashlib

import numpy as np
import torch
from torch import nn

from ..data.images import Batches, ImageData, Split
from ..train.precision import Precision

FEATURES_FILE = "features.npz"


@torch.inference_mode()
def extract_features(model: nn.Module, split: Split, device: torch.device, batch_size: int = 1024,
                     precision: str = "fp32") -> np.ndarray:
    """``model.features`` of every image of ``split`` (eval mode: BatchNorm uses its running statistics);
    ``precision`` is a resolved name (fp32 | bf16-mixed | fp16-mixed, see train/precision.py)."""
    model.eval().to(device)
    prec = Precision(precision, device)
    out = []
    for x, _ in Batches(split, batch_size, device):
        with prec.autocast():
            f = model.features(x)
        out.append(f.float().cpu())
    return torch.cat(out).numpy() if out else np.zeros((0, 0), np.float32)


def fingerprint(model: nn.Module, splits: dict[str, Split], precision: str) -> str:
    """Changes when the feature extractor's weights, the images or the precision change."""
    h = hashlib.sha1(precision.encode())
    for name, t in model.state_dict().items():
        if not name.startswith("classifier."):
            h.update(name.encode())
            h.update(t.detach().cpu().contiguous().numpy().tobytes())
    for name, s in splits.items():
        h.update(f"{name}:{len(s)}".encode())
        h.update(s.x.contiguous().numpy().tobytes())
        h.update(s.y.contiguous().numpy().tobytes())
    return h.hexdigest()


def cached_features(run, model: nn.Module, data: ImageData, device: torch.device, batch_size: int = 1024,
                    precision: str = "fp32") -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], bool]:
    """{split: (features, labels)} for train/val/test, from ``features.npz`` when it matches, else extracted
    once and written atomically. Returns (features, reused)."""
    splits = {n: s for n, s in (("train", data.train), ("val", data.val), ("test", data.test)) if s is not None}

    def extract() -> dict[str, np.ndarray]:
        out = {}
        for n, s in splits.items():
            out[f"{n}_x"], out[f"{n}_y"] = extract_features(model, s, device, batch_size, precision), s.y.numpy()
        return out

    arrays, reused = run.cached_arrays(FEATURES_FILE, fingerprint(model, splits, precision), extract)
    return {n: (arrays[f"{n}_x"], arrays[f"{n}_y"]) for n in splits}, reused


def classical_probe(run, model: nn.Module, data: ImageData, device: torch.device, precision: str,
                    batch_size: int, names: list[str], k: int, seed: int) -> tuple[dict[str, dict], int]:
    """LinearSVC / k-NN / logistic regression (``names``) on the frozen, cached ``model.features`` of ``data``:
    ``({name: {"val": acc, "test": acc, "seconds": s}}, feature width)``, both kept in the run folder.
    ``precision`` is the setting (auto | fp32 | ...), resolved for ``model`` on ``device``."""
    from ..train.precision import log_precision, model_kind, resolve_precision
    from .features import cached_classifiers

    prec = resolve_precision(precision, device, model_kind(model))
    log_precision(run, prec, "features")
    feats, reused = cached_features(run, model, data, device, batch_size, prec.name)
    dim = feats["train"][0].shape[1]
    run.log(f"features: {dim}-dim, {'reused from' if reused else 'extracted to'} {FEATURES_FILE}")
    return cached_classifiers(run, feats, names, k, seed), dim
