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
       With restarts: that many random starts, per example the iterate of highest loss.
Adversarial training (``make_adv_loss``): modes fgsm (Goodfellow et al.), fgsm-rs (Wong et al. 2020) and pgd
(Madry et al.); APGD-CE (torchattacks, an optional extra) is in attacks/apgd.py.
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
        step_size: float | None = None, random_start: bool = True, restarts: int = 1,
        generator: torch.Generator | None = None) -> torch.Tensor:
    """Projected gradient descent on the loss within the L-inf eps ball around x, intersected with [0, 1].

    step_size defaults to 2.5 * eps / steps (Madry et al.), enough to cross the ball from a corner.
    ``generator`` seeds the random start. ``restarts`` > 1 runs PGD from that many random starts and keeps, per
    example, the iterate with the highest loss (Madry et al.'s evaluation); the first start is the one
    ``restarts=1`` uses, so more restarts never find a weaker example. Returns the last iterate (of the best
    restart); eps=0 returns x.
    """
    _check_eps(eps)
    if steps < 1 or restarts < 1:
        raise DllabError(f"PGD needs steps >= 1 and restarts >= 1, got steps={steps}, restarts={restarts}")
    step_size = 2.5 * eps / steps if step_size is None else step_size
    if not step_size > 0 and eps > 0:
        raise DllabError(f"PGD step_size must be > 0, got {step_size}")
    if eps == 0:
        return x.detach().clone()
    with eval_mode(model):
        best = pgd_iterate(model, x, y, eps, steps, step_size, _start(x, eps, random_start, generator))
        if restarts == 1:
            return best
        best_loss = example_loss(model, best, y)
        for _ in range(restarts - 1):
            x_adv = pgd_iterate(model, x, y, eps, steps, step_size, _start(x, eps, random_start, generator))
            loss = example_loss(model, x_adv, y)
            better = loss > best_loss
            best = torch.where(better.view(-1, *[1] * (x.dim() - 1)), x_adv, best)
            best_loss = torch.where(better, loss, best_loss)
    return best


def _start(x: torch.Tensor, eps: float, random: bool, generator: torch.Generator | None) -> torch.Tensor:
    """PGD's starting offset: uniform in [-eps, eps] per pixel (drawn with ``generator``, else torch's global
    generator, on the generator's device), or zero."""
    if not random:
        return torch.zeros_like(x)
    gen_device = generator.device if generator is not None else x.device
    noise = torch.rand(x.shape, generator=generator, device=gen_device, dtype=x.dtype).to(x.device)
    return (2 * noise - 1) * eps


def pgd_iterate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, steps: int, step_size: float,
                start: torch.Tensor) -> torch.Tensor:
    """``steps`` signed-gradient steps of ``step_size`` from x + ``start``, each projected onto the eps ball
    around x intersected with [0, 1]; in the model's current mode (the attacks set eval, training keeps train)."""
    x0 = x.detach()
    # The feasible set is a box, so projection is an elementwise clamp to [lo, hi].
    lo, hi = (x0 - eps).clamp(min=0), (x0 + eps).clamp(max=1)
    x_adv = torch.min(torch.max(x0 + start, lo), hi)
    for _ in range(steps):
        x_adv = x_adv + step_size * input_grad(model, x_adv, y).sign()
        x_adv = torch.min(torch.max(x_adv, lo), hi)
    return x_adv


def example_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-example cross-entropy of the model on x (no graph)."""
    with torch.no_grad():
        return F.cross_entropy(model(x), y, reduction="none")


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
    return make_adv_loss(eps, alpha, "fgsm")


ADV_MODES = ("fgsm", "fgsm-rs", "pgd")   # adversarial-training modes (attacks/settings.py's AdvConfig.modes)


def training_example(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, mode: str,
                     steps: int = 7, step_size: float | None = None) -> torch.Tensor:
    """The detached adversarial example a training step of ``mode`` fits, in the model's current mode:

    fgsm-rs  x + U(-eps, eps), then one step of 1.25 eps, projected (Wong, Rice & Kolter, "Fast is better than
             free: revisiting adversarial training", ICLR 2020, https://arxiv.org/abs/2001.03994)
    pgd      ``steps`` PGD steps of ``step_size`` (default 2.5 eps / steps) from a random start (Madry et al.)

    The random start uses torch's global generator, so a seeded run trains the same model again.
    """
    if mode == "fgsm-rs":
        return pgd_iterate(model, x, y, eps, 1, 1.25 * eps, _start(x, eps, True, None))
    if mode == "pgd":
        step = 2.5 * eps / steps if step_size is None else step_size
        return pgd_iterate(model, x, y, eps, steps, step, _start(x, eps, True, None))
    raise DllabError(f"unknown adversarial-training mode '{mode}'; choose one of {list(ADV_MODES)}")


def adv_training_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, alpha: float,
                      mode: str, steps: int = 7, step_size: float | None = None
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """alpha * CE(f(x), y) + (1 - alpha) * CE(f(x_adv), y) with x_adv from ``mode``'s attack: ``fgsm`` is
    ``fgsm_training_loss`` (Goodfellow et al., its numbers unchanged), ``fgsm-rs`` and ``pgd`` take x_adv from
    ``training_example``. Returns (loss, clean logits)."""
    if mode == "fgsm" or alpha == 1 or eps == 0:
        return fgsm_training_loss(model, x, y, eps, alpha)
    x_adv = training_example(model, x, y, eps, mode, steps, step_size)
    logits = model(x)
    return alpha * F.cross_entropy(logits, y) + (1 - alpha) * F.cross_entropy(model(x_adv), y), logits


def make_adv_loss(eps: float, alpha: float = 0.5, mode: str = "fgsm", steps: int = 7,
                  step_size: float | None = None) -> Callable[[nn.Module, torch.Tensor, torch.Tensor],
                                                             tuple[torch.Tensor, torch.Tensor]]:
    """A ``loss_fn(model, x, y) -> (loss, logits)`` for the shared training loop: adversarial training of
    ``mode`` (``ADV_MODES``; ``steps``/``step_size``: pgd's)."""
    _check_eps(eps)
    if not 0 <= alpha <= 1:
        raise DllabError(f"adversarial training alpha must be in [0, 1] (weight of the clean loss), got {alpha}")
    if mode not in ADV_MODES:
        raise DllabError(f"unknown adversarial-training mode '{mode}'; choose one of {list(ADV_MODES)}")

    def loss_fn(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return adv_training_loss(model, x, y, eps, alpha, mode, steps, step_size)

    loss_fn.__qualname__ = loss_fn.__name__ = f"{mode}_loss(eps={eps:g}, alpha={alpha:g})"
    return loss_fn
