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

from dllab import ConfigError, DllabError
from dllab.data.images import to_unit_float
from dllab.models.decoder import conv_decoder
from dllab.core.registry import register
from dllab.train.inference import eval_mode, image_batches, image_tensor, model_device_dtype
from dllab.ood.base import Detector, expect_keys

DECODER = "decoder."   # the decoder's weights in the detector's state: decoder.<its state-dict name>


def _check_encoder(model: nn.Module) -> None:
    if not callable(getattr(model, "feature_maps", None)):
        raise ConfigError(f"{type(model).__name__} has no feature_maps(x); the autoencoder detector needs "
                          "a convolutional classifier such as the 'cnn' model")


def train_autoencoder(encoder_model: nn.Module, x_train, epochs: int = 5, lr: float = 1e-3,
                      batch_size: int = 128,
                      progress: Callable[[int, float], None] | None = None,
                      decoder: nn.Module | None = None, hidden: int = 32,
                      generator: torch.Generator | None = None) -> tuple[nn.Module, list[float]]:
    """Train a decoder on ``encoder_model.feature_maps`` to reconstruct ``x_train``; the encoder stays frozen.

    x_train: uint8 (0-255) or float [0, 1] images, (N, C, H, W) or channels-last; converted per batch.
    While training, the encoder's parameters get ``requires_grad = False`` and it runs in eval mode (so its
    BatchNorm statistics do not move); both are restored afterwards, and its whole state dict is checked
    to be bit-identical. ``decoder`` defaults to ``conv_decoder(C, hidden)``. ``progress(epoch,
    mean_loss)`` is called after each epoch (epochs counted from 1); ``generator`` seeds the shuffling.
    Returns (decoder in eval mode, per-epoch mean training MSE).
    """
    _check_encoder(encoder_model)
    if epochs < 0 or batch_size < 1 or not lr > 0:
        raise DllabError(f"train_autoencoder: need epochs >= 0, batch_size >= 1, lr > 0 "
                         f"(got {epochs}, {batch_size}, {lr})")
    x = image_tensor(x_train)
    if len(x) == 0:
        raise DllabError("train_autoencoder: no training images")
    dev, dtype = model_device_dtype(encoder_model)

    flags = [p.requires_grad for p in encoder_model.parameters()]
    for p in encoder_model.parameters():
        p.requires_grad_(False)
    before = {k: v.detach().clone() for k, v in encoder_model.state_dict().items()}
    try:
        with eval_mode(encoder_model):
            decoder = _matching_decoder(encoder_model, x, decoder, hidden, dev, dtype)
            history = _fit_decoder(encoder_model, decoder, x, epochs, lr, batch_size, dev, dtype, progress,
                                   generator)
    finally:
        for p, f in zip(encoder_model.parameters(), flags):
            p.requires_grad_(f)
    decoder.eval()

    after = encoder_model.state_dict()
    changed = [k for k, v in before.items() if not torch.equal(v, after[k])]
    if changed:   # a bug guard, not a user error: the detector must not alter the classifier
        raise RuntimeError(f"train_autoencoder changed the frozen encoder: {changed[:5]}")
    return decoder, history


def _matching_decoder(encoder_model: nn.Module, x: torch.Tensor, decoder: nn.Module | None, hidden: int,
                      dev, dtype) -> nn.Module:
    """``decoder`` (default ``conv_decoder``) on the device, checked to map the features back to image shape."""
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
    return decoder


def _fit_decoder(encoder_model: nn.Module, decoder: nn.Module, x: torch.Tensor, epochs: int, lr: float,
                 batch_size: int, dev, dtype, progress, generator) -> list[float]:
    """Adam on the reconstruction MSE of the decoder alone; returns the per-epoch mean training MSE."""
    n = len(x)
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
    return history


def _reconstructions(encoder_model: nn.Module, decoder: nn.Module, data, batch_size: int):
    """Yield (x, D(E(x))) per batch, in eval mode and without autograd."""
    _check_encoder(encoder_model)
    dev, dtype = model_device_dtype(encoder_model)
    with eval_mode(encoder_model), eval_mode(decoder), torch.inference_mode():
        for xb in image_batches(data, batch_size, dev, dtype):
            yield xb, decoder(encoder_model.feature_maps(xb))


def reconstruct(encoder_model: nn.Module, decoder: nn.Module, data, batch_size: int = 256) -> torch.Tensor:
    """Reconstructions D(E(x)) in [0, 1] as a CPU float32 (N, C, H, W) tensor (for figures)."""
    out = [r.float().cpu() for _, r in _reconstructions(encoder_model, decoder, data, batch_size)]
    if not out:
        raise DllabError("no images to reconstruct: the dataset or loader is empty")
    return torch.cat(out)


def reconstruction_scores(encoder_model: nn.Module, decoder: nn.Module, data,
                          batch_size: int = 256) -> torch.Tensor:
    """Per-image reconstruction MSE in pixel space, a CPU float32 (N,) tensor (larger = more OOD)."""
    out = [(r - xb).pow(2).flatten(1).mean(dim=1).float().cpu()
           for xb, r in _reconstructions(encoder_model, decoder, data, batch_size)]
    if not out:
        raise DllabError("no images to score: the dataset or loader is empty")
    return torch.cat(out)


@register("detector", "autoencoder")
class Autoencoder(Detector):
    """Reconstruction error: score(x) = mean_{c,h,w} (D(E(x)) - x)^2 (larger = more OOD), with E the
    classifier's frozen trunk (``feature_maps``) and D a small decoder that ``fit`` trains on ID training
    images and this object keeps; see the module docstring.

    Japkowicz, Myers & Gluck, "A Novelty Detection Approach to Classification", IJCAI 1995; Yang, Zhou,
    Li & Liu, "Generalized Out-of-Distribution Detection: A Survey", 2021. https://arxiv.org/abs/2110.11334

    ``fit_batch_size``/``epochs``/``lr``/``hidden`` train the decoder; ``seed`` seeds its shuffling;
    ``progress(epoch, mean_loss)`` is called after each epoch; ``batch_size`` is for scoring.
    """

    needs = (("feature_maps",),)

    label = "autoencoder MSE"

    def __init__(self, epochs: int = 5, lr: float = 1e-3, fit_batch_size: int = 128, hidden: int = 32,
                 seed: int | None = None, progress: Callable[[int, float], None] | None = None,
                 batch_size: int = 256):
        super().__init__(batch_size)
        self.epochs, self.lr, self.fit_batch_size, self.hidden = epochs, lr, fit_batch_size, hidden
        self.seed, self.progress = seed, progress
        self.decoder: nn.Module | None = None
        self.history: list[float] = []
        self.n_train = 0

    @classmethod
    def from_settings(cls, batch_size: int = 256, autoencoder=None, seed: int | None = None,
                      progress: Callable[[int, float], None] | None = None, **_) -> "Autoencoder":
        """``autoencoder``: the experiment's decoder section (epochs, lr, batch_size, hidden); ``seed`` seeds
        the decoder's shuffling; ``progress(epoch, mean_loss)`` hears of each epoch."""
        if autoencoder is None:
            return cls(seed=seed, progress=progress, batch_size=batch_size)
        return cls(epochs=autoencoder.epochs, lr=autoencoder.lr, fit_batch_size=autoencoder.batch_size,
                   hidden=autoencoder.hidden, seed=seed, progress=progress, batch_size=batch_size)

    def fit(self, model: nn.Module, x=None, y=None) -> "Autoencoder":
        """Train the decoder on the ID training images ``x`` (the labels ``y`` are not needed)."""
        if x is None:
            raise DllabError("the autoencoder detector is fitted on ID training images: fit(model, x, y)")
        g = torch.Generator().manual_seed(self.seed) if self.seed is not None else None
        self.decoder, self.history = train_autoencoder(
            model, x, epochs=self.epochs, lr=self.lr, batch_size=self.fit_batch_size,
            progress=self.progress, hidden=self.hidden, generator=g)
        self.n_train = len(image_tensor(x))
        return self

    def fit_note(self) -> str:
        mse = self.history[-1] if self.history else float("nan")
        return (f"decoder trained {self.epochs} epochs on {self.n_train} ID training images (encoder = the "
                f"cnn's frozen trunk); final train MSE {mse:.5f}")

    def _fitted_decoder(self, model: nn.Module) -> nn.Module:
        """The decoder, on the model's device and dtype (a loaded one starts on the CPU)."""
        if self.decoder is None:
            raise DllabError("the autoencoder detector needs fit(model, x, y) before it can score")
        return self.decoder.to(*model_device_dtype(model))

    def score(self, model: nn.Module, x) -> torch.Tensor:
        return reconstruction_scores(model, self._fitted_decoder(model), x, self.batch_size)

    def reconstruct(self, model: nn.Module, x) -> torch.Tensor:
        """D(E(x)) for figures, a CPU float32 (N, C, H, W) tensor."""
        return reconstruct(model, self._fitted_decoder(model), x, self.batch_size)

    def settings(self) -> dict:
        return {"epochs": self.epochs, "lr": self.lr, "fit_batch_size": self.fit_batch_size, "hidden": self.hidden,
                "seed": self.seed}

    def state_dict(self) -> dict[str, torch.Tensor]:
        if self.decoder is None:
            return {}
        return {DECODER + k: v.detach().cpu() for k, v in self.decoder.state_dict().items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> "Autoencoder":
        """The decoder of the saved weights (``conv_decoder``: its sizes are read off the first and last conv)."""
        expect_keys(self, state, [DECODER + k for k in conv_decoder().state_dict()])
        first, last = state[DECODER + "net.0.weight"], state[DECODER + "net.4.weight"]
        if first.ndim != 4 or last.ndim != 4:
            raise DllabError("autoencoder state: the decoder's convolutions are not 4-dimensional")
        decoder = conv_decoder(in_channels=first.shape[1], hidden=self.hidden, out_channels=last.shape[0])
        try:
            decoder.load_state_dict({k[len(DECODER):]: v for k, v in state.items()})
        except RuntimeError as e:
            raise DllabError(f"autoencoder state: the decoder's weights do not fit a decoder of hidden "
                             f"{self.hidden} ({str(e).splitlines()[-1].strip()})") from e
        self.decoder = decoder.eval()
        return self

    def state_shapes(self, dims: dict[str, int]) -> dict[str, tuple[int, ...]]:
        if not (isinstance(self.hidden, int) and self.hidden > 0):
            raise DllabError(f"autoencoder: hidden must be a positive integer, got {self.hidden!r}")
        with torch.device("meta"):   # shapes only: no memory, whatever ``hidden`` a saved file claims
            fresh = conv_decoder(in_channels=dims["maps"], hidden=self.hidden, out_channels=dims["channels"])
        return {DECODER + k: tuple(v.shape) for k, v in fresh.state_dict().items()}
