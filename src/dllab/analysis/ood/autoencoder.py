"""Reconstruction-error OOD detector on top of a trained classifier.

    z(x)     = E(x)       the classifier's convolutional trunk (normalize + stem + blocks), FROZEN
    x_hat(x) = D(z(x))    a small convolutional decoder, the only thing trained (on ID training images)
    score(x) = mean_{c,h,w} (x_hat(x) - x)^2     per-image MSE in pixel space [0, 1]

The decoder learns to invert the features of in-distribution images; the bet is that it inverts
OOD images' features worse, so a larger reconstruction error means more likely OOD. The encoder is
frozen so the detector explains what the *classifier's* representation keeps about the input, and
the classifier itself is left bit-identical. (Caveat worth reporting: at full 32x32 resolution the
trunk keeps a lot of the input, and autoencoders are known to reconstruct some OOD data well too.)

Reconstruction-based novelty detection: Japkowicz, Myers & Gluck, "A Novelty Detection Approach to
Classification", IJCAI 1995; overview in Yang, Zhou, Li & Liu, "Generalized Out-of-Distribution
Detection: A Survey" (2021, https://arxiv.org/abs/2110.11334).
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ... import DllabError
from ...models.decoder import conv_decoder
from . import eval_mode, image_batches, image_tensor, model_device_dtype, to_unit_float


def _check_encoder(model: nn.Module) -> None:
    if not callable(getattr(model, "feature_maps", None)):
        raise DllabError(f"{type(model).__name__} has no feature_maps(x); the autoencoder detector needs "
                         "a convolutional classifier such as the 'cnn' model")


def train_autoencoder(encoder_model: nn.Module, x_train, epochs: int = 5, lr: float = 1e-3,
                      batch_size: int = 128, device=None,
                      progress: Callable[[int, float], None] | None = None,
                      decoder: nn.Module | None = None, hidden: int = 32,
                      generator: torch.Generator | None = None) -> tuple[nn.Module, list[float]]:
    """Train a decoder on ``encoder_model.feature_maps`` to reconstruct ``x_train``; the encoder stays frozen.

    x_train: uint8 (0-255) or float [0, 1] images, (N, C, H, W) or channels-last; converted per batch.
    The encoder's parameters get ``requires_grad = False`` (left that way) and it runs in eval mode
    (its flags are restored afterwards) so its BatchNorm statistics do not move; at the end its whole
    state dict is checked to be bit-identical. ``decoder`` defaults to ``conv_decoder(C, hidden)``.
    ``progress(epoch, mean_loss)`` is called after each epoch (epochs counted from 1); ``generator``
    seeds the shuffling. Returns (decoder in eval mode, per-epoch mean training MSE).
    """
    _check_encoder(encoder_model)
    if epochs < 0 or batch_size < 1 or not lr > 0:
        raise DllabError(f"train_autoencoder: need epochs >= 0, batch_size >= 1, lr > 0 "
                         f"(got {epochs}, {batch_size}, {lr})")
    x = image_tensor(x_train)
    n = len(x)
    if n == 0:
        raise DllabError("train_autoencoder: no training images")
    dev, dtype = model_device_dtype(encoder_model)
    dev = torch.device(device) if device is not None else dev

    for p in encoder_model.parameters():
        p.requires_grad_(False)
    before = {k: v.detach().clone() for k, v in encoder_model.state_dict().items()}

    with eval_mode(encoder_model):
        with torch.no_grad():
            x0 = to_unit_float(x[:1], dev, dtype)
            z0 = encoder_model.feature_maps(x0)
        if decoder is None:
            decoder = conv_decoder(in_channels=z0.shape[1], hidden=hidden, out_channels=x0.shape[1])
        decoder = decoder.to(device=dev, dtype=dtype)
        with torch.no_grad():
            out_shape = tuple(decoder(z0).shape)
        if out_shape != tuple(x0.shape):
            raise DllabError(f"decoder output {out_shape} does not match the images {tuple(x0.shape)}; "
                             "the encoder's feature maps must keep the input's spatial size")

        opt = torch.optim.Adam(decoder.parameters(), lr=lr)
        history: list[float] = []
        for epoch in range(1, epochs + 1):
            decoder.train()
            perm = torch.randperm(n, generator=generator)
            total = torch.zeros((), device=dev)   # summed on the device: one sync per epoch, not per step
            for i in range(0, n, batch_size):
                xb = to_unit_float(x[perm[i:i + batch_size]], dev, dtype)
                # no_grad, not inference_mode: the decoder's first conv must save z for its backward.
                with torch.no_grad():
                    z = encoder_model.feature_maps(xb)
                loss = F.mse_loss(decoder(z), xb)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total += loss.detach() * len(xb)
            history.append(total.item() / n)
            if progress is not None:
                progress(epoch, history[-1])
    decoder.eval()

    after = encoder_model.state_dict()
    changed = [k for k, v in before.items() if not torch.equal(v, after[k])]
    if changed:   # a bug guard, not a user error: the detector must not alter the classifier
        raise RuntimeError(f"train_autoencoder changed the frozen encoder: {changed[:5]}")
    return decoder, history


def _reconstructions(encoder_model: nn.Module, decoder: nn.Module, data, batch_size: int, device):
    """Yield (x, D(E(x))) per batch, in eval mode and without autograd."""
    _check_encoder(encoder_model)
    dev, dtype = model_device_dtype(encoder_model)
    dev = torch.device(device) if device is not None else dev
    with eval_mode(encoder_model), eval_mode(decoder), torch.inference_mode():
        for xb in image_batches(data, batch_size, dev, dtype):
            yield xb, decoder(encoder_model.feature_maps(xb))


def reconstruct(encoder_model: nn.Module, decoder: nn.Module, data, batch_size: int = 256,
                device=None) -> torch.Tensor:
    """Reconstructions D(E(x)) in [0, 1] as a CPU float32 (N, C, H, W) tensor (for figures)."""
    out = [r.float().cpu() for _, r in _reconstructions(encoder_model, decoder, data, batch_size, device)]
    if not out:
        raise DllabError("no images to reconstruct: the dataset or loader is empty")
    return torch.cat(out)


def reconstruction_scores(encoder_model: nn.Module, decoder: nn.Module, data, batch_size: int = 256,
                          device=None) -> torch.Tensor:
    """Per-image reconstruction MSE in pixel space, a CPU float32 (N,) tensor (larger = more OOD)."""
    out = [(r - xb).pow(2).flatten(1).mean(dim=1).float().cpu()
           for xb, r in _reconstructions(encoder_model, decoder, data, batch_size, device)]
    if not out:
        raise DllabError("no images to score: the dataset or loader is empty")
    return torch.cat(out)
