"""APGD-CE, an attack dllab did not write: torchattacks' implementation (the optional extra
``pip install 'dllab[attacks]'``), as a check that the project's own FGSM/PGD do not flatter a model.

APGD  PGD whose step size halves when the loss stops rising (checkpoints at 22%, then every few % of the
      steps), with momentum 0.75; the best iterate per example is kept, and each restart attacks only the
      examples still classified right.
      Croce & Hein, "Reliable evaluation of adversarial robustness with an ensemble of diverse parameter-free
      attacks", ICML 2020. https://arxiv.org/abs/2003.01690
"""
from __future__ import annotations

import torch
from torch import nn

from dllab import DllabError
from dllab.core.registry import register
from dllab.train.inference import eval_mode

EXTRA = "APGD is torchattacks' (an optional extra): pip install 'dllab[attacks]'"


def _torchattacks():
    try:
        import torchattacks   # the optional extra dllab[attacks]: only apgd needs it
    except ImportError as e:
        raise DllabError(f"attack 'apgd' needs torchattacks, which is not installed; {EXTRA}") from e
    return torchattacks


@register("attack", "apgd", requires="torchattacks")
def apgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, steps: int = 10, restarts: int = 1,
         seed: int = 0) -> torch.Tensor:
    """APGD-CE (L-inf, cross-entropy) of torchattacks within eps of x in [0, 1]; ``restarts`` random starts.

    torchattacks seeds torch's global generators (CPU and CUDA) with ``seed``; their state is saved and restored
    around the attack, so the run's own random stream is the same with or without it. As torchattacks returns
    it, an example the attack does not misclassify comes back unperturbed (APGD reports robust accuracy, not
    the highest loss). eps=0 returns x.
    """
    if not eps >= 0:
        raise DllabError(f"attack epsilon must be >= 0 (pixel units, e.g. 8/255), got {eps}")
    if eps == 0:
        return x.detach().clone()
    attack = _torchattacks().APGD(model, norm="Linf", eps=eps, steps=steps, n_restarts=restarts, seed=seed,
                                  loss="ce")
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with eval_mode(model), torch.random.fork_rng(devices=devices), torch.inference_mode(False), torch.enable_grad():
        return attack(x.detach().clone(), y.clone()).detach().to(x.dtype)
