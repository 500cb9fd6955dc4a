"""Running a trained model over images: eval mode that restores each submodule's own flag, float [0, 1]
batches from uint8 or float arrays (channels-first or -last) or a loader, and the logits of a whole dataset.

Images follow dllab's contract: float in [0, 1], (N, C, H, W); normalisation lives inside the model. These
helpers also accept uint8 images (divided by 255, per batch, so a whole dataset is never converted at once) and
channels-last uint8/float arrays such as CIFAR's (N, 32, 32, 3). OOD detectors and attacks both use them.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterable, Iterator

import numpy as np
import torch

from dllab import DllabError
from dllab.data.images import to_unit_float


def model_device_dtype(model: torch.nn.Module) -> tuple[torch.device, torch.dtype]:
    """Device and floating dtype of the model's first floating parameter (CPU float32 if it has none)."""
    for p in model.parameters():
        if p.is_floating_point():
            return p.device, p.dtype
    return torch.device("cpu"), torch.float32


@contextmanager
def eval_mode(model: torch.nn.Module):
    """Put every submodule in eval mode, then restore each one's own flag.

    Restoring per module (not ``model.train(was)``) keeps e.g. a frozen sub-network that the caller
    deliberately left in eval mode inside a training model exactly as it was.
    """
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, was in flags:
            m.training = was


def image_tensor(x) -> torch.Tensor:
    """A (N, C, H, W) view of ``x`` (tensor or ndarray), uint8 or floating; nothing is copied or rescaled."""
    t = torch.from_numpy(np.ascontiguousarray(x)) if isinstance(x, np.ndarray) else x
    if not isinstance(t, torch.Tensor):
        raise DllabError(f"expected images as a tensor or numpy array, got {type(x).__name__}")
    if t.dtype != torch.uint8 and not t.is_floating_point():
        raise DllabError(f"images must be uint8 (0-255) or float in [0, 1], got dtype {t.dtype}")
    if t.ndim == 3:                       # a single-channel stack (N, H, W), e.g. MNIST
        t = t.unsqueeze(1)
    if t.ndim != 4:
        raise DllabError(f"images must be (N, C, H, W), got shape {tuple(t.shape)}")
    if t.shape[1] not in (1, 3) and t.shape[-1] in (1, 3):   # channels-last, e.g. CIFAR numpy arrays
        t = t.permute(0, 3, 1, 2)
    return t


def image_batches(data, batch_size: int, device, dtype=torch.float32) -> Iterator[torch.Tensor]:
    """Float [0, 1] batches on ``device`` from a tensor/array of images or from a DataLoader.

    A loader may yield images or tuples (images, labels, ...); only the images are used, and its own
    batch size wins over ``batch_size``.
    """
    if isinstance(data, (torch.Tensor, np.ndarray)):
        x = image_tensor(data)
        if batch_size < 1:
            raise DllabError(f"batch_size must be >= 1, got {batch_size}")
        for i in range(0, len(x), batch_size):
            yield to_unit_float(x[i:i + batch_size], device, dtype)
    elif isinstance(data, Iterable):
        for batch in data:
            xb = batch[0] if isinstance(batch, (tuple, list)) else batch
            yield to_unit_float(image_tensor(xb), device, dtype)
    else:
        raise DllabError(f"expected images (tensor/array) or a DataLoader, got {type(data).__name__}")


def logits_of(model: torch.nn.Module, data, batch_size: int = 256) -> torch.Tensor:
    """Logits of ``model`` on ``data`` (images or a loader), in eval mode, as a CPU float32 (N, K) tensor.

    Batches go to where the model's parameters are; the model is not moved.
    """
    return outputs_of(model, data, batch_size)


def outputs_of(model: torch.nn.Module, data, batch_size: int = 256, forward=None) -> torch.Tensor:
    """``logits_of`` with ``forward(xb)`` (e.g. ``model.forward_features``) in place of ``model(xb)``."""
    forward = model if forward is None else forward
    dev, dtype = model_device_dtype(model)
    out = []
    with eval_mode(model), torch.inference_mode():
        for xb in image_batches(data, batch_size, dev, dtype):
            out.append(forward(xb).float().cpu())
    if not out:
        raise DllabError("no images to score: the dataset or loader is empty")
    return torch.cat(out)
