"""ODIN: temperature scaling plus a small input perturbation.

    S(x; T)   = softmax(f(x) / T)
    yhat      = argmax_k f(x)_k
    x'        = clamp(x - eps * sign(-grad_x log S_yhat(x; T)), 0, 1)
    score(x)  = -max_k S(x'; T)_k

The perturbation is one gradient-sign step that *increases* the tempered max softmax. It raises
in-distribution confidence more than OOD confidence, which separates the two; a large T pushes the
softmax scores apart further. eps is in pixel units of [0, 1] images (normalisation lives inside
the model). The paper's values are pixel units too: its code perturbs the normalised input by
eps * sign / std, which is eps in pixel space. With T = 1 and eps = 0 the score is exactly MSP. The paper's grid: T in {1, 2, 5, 10, 20, 50, 100,
200, 500, 1000}, eps in 21 values from 0 to 0.004.

Liang, Li & Srikant, "Enhancing The Reliability of Out-of-distribution Image Detection in Neural
Networks", ICLR 2018. https://arxiv.org/abs/1706.02690
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from dllab import DllabError
from dllab.core.registry import register
from dllab.train.inference import eval_mode, image_batches, model_device_dtype
from dllab.ood.base import Detector
from dllab.ood.msp import msp_scores


def _check(T: float, eps: float) -> None:
    if not T > 0:
        raise DllabError(f"ODIN temperature must be > 0, got {T}")
    if not eps >= 0:
        raise DllabError(f"ODIN epsilon must be >= 0, got {eps}")


def ascent_sign(model: torch.nn.Module, x: torch.Tensor, T: float) -> torch.Tensor:
    """sign(grad_x log S_yhat(x; T)): the direction that increases the tempered max softmax.

    Gradient w.r.t. the input only (torch.autograd.grad), so no parameter ``.grad`` is touched.
    The caller puts the model in eval mode.
    """
    # ODIN may be called from inside no_grad/inference_mode code; the input gradient needs autograd.
    with torch.inference_mode(False), torch.enable_grad():
        x = x.detach().clone().requires_grad_(True)
        logits = model(x) / T
        yhat = logits.argmax(dim=1)
        # Summed, not averaged: each sample's gradient depends only on itself, and is not scaled
        # by 1/N towards float underflow (only its sign is used).
        log_s = -F.cross_entropy(logits, yhat, reduction="sum")
        (grad,) = torch.autograd.grad(log_s, x)
    return grad.sign()


def _scores(model: torch.nn.Module, x: torch.Tensor, T: float) -> torch.Tensor:
    # Same path as logits_of + msp_scores (CPU float logits, then / T), so T=1, eps=0 is bit-identical to MSP.
    with torch.inference_mode():
        logits = model(x).float().cpu()
    return msp_scores(logits / T)


def odin_scores(model: torch.nn.Module, data, T: float = 1000.0, eps: float = 0.0014,
                batch_size: int = 256) -> torch.Tensor:
    """ODIN OOD scores (larger = more OOD) for images or a loader; a CPU float32 (N,) tensor.

    The model runs in eval mode (restored afterwards); no parameter gradients are accumulated.
    """
    _check(T, eps)
    dev, dtype = model_device_dtype(model)
    out = []
    with eval_mode(model):
        for xb in image_batches(data, batch_size, dev, dtype):
            if eps > 0:
                xb = (xb + eps * ascent_sign(model, xb, T)).clamp_(0, 1)
            out.append(_scores(model, xb, T))
    if not out:
        raise DllabError("no images to score: the dataset or loader is empty")
    return torch.cat(out)


@register("detector", "odin")
class ODIN(Detector):
    """ODIN: score(x) = -max_k softmax(f(x') / T)_k with x' = clamp(x - eps * sign(-grad_x log S_yhat(x; T)), 0, 1)
    (larger = more OOD); see the module docstring. T = 1000, eps = 0.0014 is the paper's CIFAR setting.

    Liang, Li & Srikant, "Enhancing The Reliability of Out-of-distribution Image Detection in Neural
    Networks", ICLR 2018. https://arxiv.org/abs/1706.02690
    """

    def __init__(self, T: float = 1000.0, eps: float = 0.0014, batch_size: int = 256):
        super().__init__(batch_size)
        _check(T, eps)
        self.T, self.eps = T, eps
        self.label = f"ODIN (T={T:g}, eps={eps:g})"

    @classmethod
    def from_settings(cls, batch_size: int = 256, odin=None, **_) -> "ODIN":
        """``odin``: the experiment's ODIN setting (``temperature``, ``epsilon``); the paper's when absent."""
        return cls(batch_size=batch_size) if odin is None else cls(odin.temperature, odin.epsilon, batch_size)

    def score(self, model: torch.nn.Module, x) -> torch.Tensor:
        return odin_scores(model, x, self.T, self.eps, self.batch_size)

    def settings(self) -> dict:
        return {"T": self.T, "eps": self.eps}   # ODIN learns nothing: its T and eps are all there is to keep


def odin_grid(model: torch.nn.Module, data, temperatures: Sequence[float], epsilons: Sequence[float],
              batch_size: int = 256) -> np.ndarray:
    """ODIN scores for every (T, eps) pair: a float32 array of shape [len(temperatures), len(epsilons), N].

    Per batch: one clean forward (shared by every eps = 0 entry), one forward+backward per T for the
    gradient sign (which depends on T but not on eps), and one forward per (T, eps > 0). That is
    len(T) backward passes instead of len(T) * len(eps). ``grid[i, j]`` equals
    ``odin_scores(model, data, temperatures[i], epsilons[j])`` with the same batch size.
    A loader is iterated once, so it must yield the same order as any run it is compared with.
    """
    temperatures, epsilons = [float(t) for t in temperatures], [float(e) for e in epsilons]
    if not temperatures or not epsilons:
        raise DllabError("odin_grid needs at least one temperature and one epsilon")
    for T in temperatures:
        for eps in epsilons:
            _check(T, eps)
    dev, dtype = model_device_dtype(model)
    chunks = []   # per batch: [T, eps, B]
    with eval_mode(model):
        for xb in image_batches(data, batch_size, dev, dtype):
            with torch.inference_mode():
                clean = model(xb).float().cpu()
            block = torch.empty(len(temperatures), len(epsilons), len(xb))
            for i, T in enumerate(temperatures):
                direction = ascent_sign(model, xb, T) if any(e > 0 for e in epsilons) else None
                for j, eps in enumerate(epsilons):
                    if eps == 0:
                        block[i, j] = msp_scores(clean / T)
                    else:
                        block[i, j] = _scores(model, (xb + eps * direction).clamp_(0, 1), T)
            chunks.append(block)
    if not chunks:
        raise DllabError("no images to score: the dataset or loader is empty")
    return torch.cat(chunks, dim=2).numpy()
