"""White-box L-inf adversarial attacks and FGSM adversarial training.

Images are float in [0, 1] and normalisation lives inside the model, so eps is in pixel units
(eps = 8/255 is the usual CIFAR-10 budget). Attacks run the model in eval mode (restoring each
module's flag afterwards) and take gradients w.r.t. the input only (torch.autograd.grad), so no
parameter ``.grad`` is ever written.

FGSM   x_adv = clamp(x + eps * sign(grad_x CE(f(x), y)), 0, 1)
       Goodfellow, Shlens & Szegedy, "Explaining and Harnessing Adversarial Examples", ICLR 2015.
       https://arxiv.org/abs/1412.6572
PGD    x_0 = x + U(-eps, eps)^d (random start), then repeat
       x_{t+1} = Proj_{B_inf(x, eps) ∩ [0,1]^d}(x_t + a * sign(grad_x CE(f(x_t), y)))
       Madry, Makelov, Schmidt, Tsipras & Vladu, "Towards Deep Learning Models Resistant to
       Adversarial Attacks", ICLR 2018. https://arxiv.org/abs/1706.06083
"""
from __future__ import annotations

import inspect
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from dllab import DllabError
from dllab.core import registry
from dllab.data.images import to_unit_float
from dllab.core.registry import register
from dllab.train.inference import eval_mode, image_tensor, model_device_dtype


def _check_eps(eps: float) -> None:
    if not eps >= 0:
        raise DllabError(f"attack epsilon must be >= 0 (pixel units, e.g. 8/255), got {eps}")


def input_grad(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """grad_x of the summed cross-entropy, in the model's current mode; parameters' .grad untouched.

    Summed rather than averaged so a sample's gradient does not shrink with the batch size
    (only its sign is used, and tiny values could underflow under low precision).
    """
    with torch.inference_mode(False), torch.enable_grad():
        x = x.detach().clone().requires_grad_(True)
        if y.is_inference():   # labels made under inference_mode cannot be saved for backward
            y = y.clone()
        loss = F.cross_entropy(model(x), y, reduction="sum")
        (grad,) = torch.autograd.grad(loss, x)
    return grad


@register("attack", "fgsm")
def fgsm(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float) -> torch.Tensor:
    """Fast gradient sign method: one eps-sized sign step up the loss, clamped to [0, 1]. eps=0 returns x."""
    _check_eps(eps)
    if eps == 0:
        return x.detach().clone()
    with eval_mode(model):
        grad = input_grad(model, x, y)
    return (x.detach() + eps * grad.sign()).clamp_(0, 1)


@register("attack", "pgd")
def pgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, steps: int = 10,
        step_size: float | None = None, random_start: bool = True,
        generator: torch.Generator | None = None) -> torch.Tensor:
    """Projected gradient descent on the loss within the L-inf eps ball around x, intersected with [0, 1].

    step_size defaults to 2.5 * eps / steps (Madry et al.), enough to cross the ball from a corner.
    ``generator`` seeds the random start. Returns the last iterate; eps=0 returns x.
    """
    _check_eps(eps)
    if steps < 1:
        raise DllabError(f"PGD needs steps >= 1, got {steps}")
    step_size = 2.5 * eps / steps if step_size is None else step_size
    if not step_size > 0 and eps > 0:
        raise DllabError(f"PGD step_size must be > 0, got {step_size}")
    x0 = x.detach()
    if eps == 0:
        return x0.clone()
    # The feasible set is a box, so projection is an elementwise clamp to [lo, hi].
    lo, hi = (x0 - eps).clamp(min=0), (x0 + eps).clamp(max=1)
    if random_start:
        gen_device = generator.device if generator is not None else x0.device
        noise = torch.rand(x0.shape, generator=generator, device=gen_device, dtype=x0.dtype).to(x0.device)
        x_adv = torch.min(torch.max(x0 + (2 * noise - 1) * eps, lo), hi)
    else:
        x_adv = x0.clone()
    with eval_mode(model):
        for _ in range(steps):
            x_adv = x_adv + step_size * input_grad(model, x_adv, y).sign()
            x_adv = torch.min(torch.max(x_adv, lo), hi)
    return x_adv


def adversarial_accuracy(model: nn.Module, x, y, eps_list: Sequence[float], attack: str = "fgsm",
                         batch_size: int = 256, **options) -> dict[float, float]:
    """{eps: accuracy under the attack}, accuracy = correct / N as a Python float.

    eps = 0 classifies the clean input itself (no attack is run), so it is exactly the clean accuracy
    computed with the same batch size. ``attack`` is a registered ``attack`` (a function
    ``(model, x, y, eps, **options) -> x_adv``); ``options`` go to it (pgd: steps, step_size, random_start,
    generator). x: uint8 or float [0, 1] images; y: (N,) integer labels.
    """
    attack_fn = registry.get("attack", attack)
    if unknown := sorted(set(options) - set(inspect.signature(attack_fn).parameters)):
        raise DllabError(f"options {unknown} do not apply to attack='{attack}'")
    for eps in eps_list:
        _check_eps(eps)
    x, y = image_tensor(x), torch.as_tensor(y)
    if len(x) != len(y) or len(x) == 0:
        raise DllabError(f"need as many labels as images, and at least one: got {len(x)} images, {len(y)} labels")
    if batch_size < 1:
        raise DllabError(f"batch_size must be >= 1, got {batch_size}")
    dev, dtype = model_device_dtype(model)
    correct = {eps: 0 for eps in eps_list}
    with eval_mode(model):
        for i in range(0, len(x), batch_size):   # batches outer: each batch is moved to the device once
            xb = to_unit_float(x[i:i + batch_size], dev, dtype)
            yb = y[i:i + batch_size].to(dev)
            for eps in correct:
                xa = xb if eps == 0 else attack_fn(model, xb, yb, eps, **options)
                with torch.inference_mode():
                    correct[eps] += int((model(xa).argmax(dim=1) == yb).sum().item())
    return {eps: c / len(x) for eps, c in correct.items()}


def fgsm_training_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float,
                       alpha: float = 0.5) -> tuple[torch.Tensor, torch.Tensor]:
    """Goodfellow et al.'s adversarial objective, for training:

        L = alpha * CE(f(x), y) + (1 - alpha) * CE(f(x_adv), y),
        x_adv = clamp(x + eps * sign(grad_x CE(f(x), y)), 0, 1), detached (no gradient through the attack)

    The model stays in whatever mode the caller set (train mode: BatchNorm uses batch statistics).
    The clean forward is shared by the loss and the input gradient; that gradient is taken with
    torch.autograd.grad w.r.t. x only, so no parameter .grad exists until the caller's backward.
    Returns (loss, clean logits). alpha = 1 or eps = 0 is plain cross-entropy (no extra forward).
    """
    if alpha == 1 or eps == 0:
        logits = model(x)
        return F.cross_entropy(logits, y), logits
    x_req = x.detach().clone().requires_grad_(True)
    logits = model(x_req)
    clean = F.cross_entropy(logits, y)
    # Seed the backward with N: the gradient of the summed loss (see input_grad), same graph reused.
    (grad,) = torch.autograd.grad(clean, x_req, grad_outputs=torch.full_like(clean, len(x)),
                                  retain_graph=True)
    x_adv = (x.detach() + eps * grad.sign()).clamp_(0, 1)
    adv = F.cross_entropy(model(x_adv), y)
    return alpha * clean + (1 - alpha) * adv, logits


def make_fgsm_loss(eps: float, alpha: float = 0.5) -> Callable[[nn.Module, torch.Tensor, torch.Tensor],
                                                                tuple[torch.Tensor, torch.Tensor]]:
    """A ``loss_fn(model, x, y) -> (loss, logits)`` for the shared training loop: FGSM adversarial training."""
    _check_eps(eps)
    if not 0 <= alpha <= 1:
        raise DllabError(f"FGSM training alpha must be in [0, 1] (weight of the clean loss), got {alpha}")

    def loss_fn(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return fgsm_training_loss(model, x, y, eps, alpha)

    loss_fn.__qualname__ = loss_fn.__name__ = f"fgsm_loss(eps={eps:g}, alpha={alpha:g})"
    return loss_fn
