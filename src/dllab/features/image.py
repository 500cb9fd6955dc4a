"""Frozen image features: ``model.features`` of every image of a dataset.

``fingerprint`` names what they depend on (the extractor's weights, the images and the precision), so a cache
of them (the experiment's ``features.npz``) is reused by a resumed run and never for another source model.
"""
from __future__ import annotations

import hashlib

import numpy as np
import torch
from torch import nn

from dllab.data.images import Batches, ImageData, Split
from dllab.train.precision import Precision


@torch.inference_mode()
def extract_features(model: nn.Module, split: Split, device: torch.device, batch_size: int = 1024,
                     precision: str = "fp32") -> np.ndarray:
    """``model.features`` (or ``forward_features``) of every image of ``split`` (eval mode: BatchNorm uses its
    running statistics); ``precision`` is a resolved name (fp32 | bf16-mixed | fp16-mixed, see train/precision.py)."""
    model.eval().to(device)
    # dllab's models have ``features``; a user's model may have timm's ``forward_features``, whose (N, C, H, W)
    # maps are pooled to one vector per image as a CNN's classifier pools them
    features = model.features if callable(getattr(model, "features", None)) else model.forward_features
    prec = Precision(precision, device)
    out = []
    for x, _ in Batches(split, batch_size, device):
        with prec.autocast():
            f = features(x)
        out.append((f.mean((2, 3)) if f.ndim == 4 else f.flatten(1)).float().cpu())
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


def feature_splits(data: ImageData) -> dict[str, Split]:
    """The splits of ``data`` that features are extracted from: train, val (when there is one) and test."""
    return {n: s for n, s in (("train", data.train), ("val", data.val), ("test", data.test)) if s is not None}


def extract_splits(model: nn.Module, splits: dict[str, Split], device: torch.device, batch_size: int = 1024,
                   precision: str = "fp32") -> dict[str, np.ndarray]:
    """``{"<split>_x": features, "<split>_y": labels}`` for every split of ``splits``."""
    out = {}
    for n, s in splits.items():
        out[f"{n}_x"], out[f"{n}_y"] = extract_features(model, s, device, batch_size, precision), s.y.numpy()
    return out
