"""Robustness to adversarial examples, measured: the clean accuracy, the accuracy per epsilon under FGSM or
PGD (of one model or several side by side), a report line when accuracy rises with epsilon, and perturbed
example images for a figure.

Images are uint8 or float in [0, 1]; epsilons are in pixel units (normalisation lives inside the model).
"""
from __future__ import annotations

import inspect
from typing import Sequence

import torch

from dllab.core import registry
from dllab.data.images import Split, to_unit_float
from dllab.core.events import QUIET, Reporter
from dllab.attacks.methods import adversarial_accuracy
from dllab.attacks.settings import AttackConfig
from dllab.train.image import evaluate


def clean_accuracy(model, split: Split, device: torch.device, batch_size: int = 256) -> float:
    """fp32 accuracy on ``split``, batched like the attacks (so it equals their eps = 0 accuracy exactly)."""
    return evaluate(model, split, device, batch_size)[1]     # fp32


def attack_options(attack: str, steps: int = 10, step_size: float = 0.0, random_start: bool = True,
                   seed: int = 0, restarts: int = 1) -> dict:
    """The keyword options the registered ``attack`` takes, of: its steps, step size (0 = the attack's default;
    PGD's is Madry et al.'s 2.5 * eps / steps), random start, restarts and a fresh generator seeded with ``seed``
    (APGD takes the seed itself). PGD takes all but the seed, FGSM none."""
    offered = {"steps": lambda: steps, "step_size": lambda: step_size or None, "random_start": lambda: random_start,
               "restarts": lambda: restarts, "generator": lambda: torch.Generator().manual_seed(seed),
               "seed": lambda: seed}
    takes = inspect.signature(registry.get("attack", attack)).parameters
    return {k: make() for k, make in offered.items() if k in takes}


def attack_sweep(model, split: Split, attack: str, epsilons: Sequence[float], batch_size: int = 256,
                 **options) -> dict[float, float]:
    """{eps: accuracy on ``split`` under ``attack``}; eps = 0 is the clean accuracy, batched as
    ``clean_accuracy``. ``options``: ``attack_options``'s arguments."""
    return adversarial_accuracy(model, split.x, split.y, epsilons, attack=attack, batch_size=batch_size,
                                **attack_options(attack, **options))


def attack_models(models: dict, split: Split, attack: AttackConfig, seed: int = 0, batch_size: int = 256,
                  reporter: Reporter = QUIET) -> tuple[dict[str, float], dict[str, dict[float, float]]]:
    """Clean accuracy and accuracy per epsilon under ``attack`` of each of ``models``
    (name -> model on its device), each logged to ``reporter``; a note when accuracy rises with epsilon or when
    eps = 0 is not the clean accuracy (a bug). Returns ({name: clean accuracy}, {name: {eps: accuracy}})."""
    clean, accs = {}, {}
    for name, model in models.items():
        device = next(model.parameters()).device
        clean[name] = clean_accuracy(model, split, device, batch_size)
        accs[name] = attack_sweep(model, split, attack.name, attack.epsilons, batch_size, steps=attack.steps,
                                  step_size=attack.step_size, random_start=attack.random_start, seed=seed,
                                  restarts=attack.restarts)
        reporter.log(_accuracy_line(name, attack.name, accs[name]))
        who = f"{name} model: " if len(models) > 1 else ""
        if 0 in accs[name] and accs[name][0] != clean[name]:
            reporter.note(f"{who}accuracy at eps 0 ({accs[name][0]}) differs from the clean test accuracy "
                          f"({clean[name]})")
        if (note := rising_accuracy_note(accs[name], attack.name)) is not None:
            reporter.note(who + note)
    return clean, accs


def attack_table(models: dict, split: Split, attack: AttackConfig, names: Sequence[str], done: dict,
                 seed: int = 0, batch_size: int = 256,
                 reporter: Reporter = QUIET) -> dict[str, dict[str, dict[float, float]]]:
    """{model: {attack: {eps: accuracy}}} for each of ``names`` over ``attack``'s epsilons and settings (steps,
    restarts...); ``done`` ({model: {eps: accuracy}} under ``attack.name``) is reused, not measured again.
    Each sweep it measures is logged to ``reporter`` as it ends: a table of PGD and APGD with restarts over
    several models runs for minutes on a CPU, and the log shows it moving."""
    out: dict[str, dict[str, dict[float, float]]] = {}
    for model_name, model in models.items():
        out[model_name] = {}
        for name in dict.fromkeys(names):
            if name == attack.name:
                out[model_name][name] = done[model_name]
                continue
            out[model_name][name] = accs = attack_sweep(
                model, split, name, attack.epsilons, batch_size, steps=attack.steps, step_size=attack.step_size,
                random_start=attack.random_start, seed=seed, restarts=attack.restarts)
            reporter.log(_accuracy_line(model_name, name, accs))
    return out


def _accuracy_line(model: str, attack: str, accs: dict[float, float]) -> str:
    return f"[{model}] {attack} accuracy: " + ", ".join(f"{e:g}: {v:.4f}" for e, v in accs.items())


def attack_examples(model, split: Split, attack: AttackConfig, seed: int = 0
                    ) -> tuple[torch.Tensor, dict[float, tuple[torch.Tensor, torch.Tensor]]]:
    """``attack.examples`` images of ``split`` (drawn with ``seed``) and, per epsilon of ``attack``, their
    perturbed versions and the model's predictions: (true labels, {eps: (images, predictions)}); nothing
    when there are no examples to show."""
    n = min(attack.examples, len(split))
    if n < 1:
        return torch.zeros(0, dtype=torch.long), {}
    idx = torch.randperm(len(split), generator=torch.Generator().manual_seed(seed))[:n]
    device = next(model.parameters()).device
    x, y = to_unit_float(split.x[idx], device), split.y[idx].to(device)
    kwargs = attack_options(attack.name, attack.steps, attack.step_size, attack.random_start, seed, attack.restarts)
    out = {}
    for eps in attack.epsilons:
        xa = x if eps == 0 else registry.get("attack", attack.name)(model, x, y, eps, **kwargs)
        with torch.inference_mode():
            out[eps] = (xa, model(xa).argmax(1))
    return y, out


def rising_accuracy_note(accs: dict[float, float], attack: str) -> str | None:
    """A report line when accuracy goes *up* with a larger epsilon, which a reader would take for a bug.

    One FGSM step follows the loss gradient's sign at the clean image; on a weak, far-from-linear model a
    large step overshoots the region where that direction raises the loss, so accuracy can climb again.
    """
    eps = sorted(accs)
    rises = [(a, b) for a, b in zip(eps, eps[1:]) if accs[b] > accs[a] + 0.01]
    if not rises:
        return None
    a, b = rises[0]
    hint = (" PGD (--set attack.name=pgd) iterates small steps and does not have this weakness."
            if attack == "fgsm" else "")
    return (f"{attack.upper()} accuracy rises from {accs[a]:.3f} at eps {a:g} to {accs[b]:.3f} at eps {b:g}: a single "
            f"signed-gradient step of that size overshoots on this model, so the larger eps underestimates the "
            f"damage an attacker can do.{hint}")


# Catastrophic overfitting (Wong et al. 2020): a model keeps a good share of its clean accuracy under FGSM while
# PGD's accuracy collapses, since it learnt to mask the one gradient step FGSM takes. "Collapse" here: PGD keeps
# at most a quarter of the FGSM accuracy, FGSM keeps at least half the clean accuracy and the gap is >= 0.2.
FGSM_KEEPS = 0.5
PGD_KEEPS = 0.25
MIN_GAP = 0.2


def overfit_epsilons(clean: float, fgsm: dict[float, float], pgd: dict[float, float]) -> list[float]:
    """The epsilons (> 0) at which a model shows catastrophic overfitting by the rule above."""
    return [e for e in fgsm if e > 0 and e in pgd and fgsm[e] >= FGSM_KEEPS * clean
            and pgd[e] <= PGD_KEEPS * fgsm[e] and fgsm[e] - pgd[e] >= MIN_GAP]


def robustness_sentence(clean: dict[str, float], accs: dict[str, dict[str, dict[float, float]]]) -> str:
    """What the mode table shows, in words: per adversarially trained model ({model: {attack: {eps: accuracy}}};
    ``standard`` is not one: its FGSM accuracy rising at large eps is a single step overshooting, not overfitting)
    whether it overfits catastrophically (``overfit_epsilons``), and which model is the most robust under PGD at
    the largest epsilon where any model keeps some accuracy. Needs the fgsm and pgd attacks in ``accs``."""
    if not all({"fgsm", "pgd"} <= set(a) for a in accs.values()):
        return "Catastrophic overfitting cannot be judged: the table needs both FGSM and PGD (adv.attacks)."
    overfit = {m: overfit_epsilons(clean[m], a["fgsm"], a["pgd"]) for m, a in accs.items() if m != "standard"}
    found = [f"{m} at eps {', '.join(f'{e:g}' for e in eps)} (FGSM {accs[m]['fgsm'][eps[-1]]:.3f} vs PGD "
             f"{accs[m]['pgd'][eps[-1]]:.3f} at {eps[-1]:g})" for m, eps in overfit.items() if eps]
    verdict = (f"Catastrophic overfitting (FGSM accuracy high while PGD accuracy collapses): {'; '.join(found)}."
               if found else
               "No catastrophic overfitting: at no epsilon does an adversarially trained model keep half its clean "
               "accuracy under FGSM while PGD leaves it a quarter of that or less.")
    return f"{verdict} {_most_robust(accs)}"


def _most_robust(accs: dict[str, dict[str, dict[float, float]]]) -> str:
    """Which model is the most robust under PGD at the largest epsilon where one of them keeps any accuracy (at a
    larger one, where every model is at 0, there is nothing to rank)."""
    eps = sorted({e for a in accs.values() for e in a["pgd"]})
    at = {e: {m: a["pgd"][e] for m, a in accs.items() if e in a["pgd"]} for e in eps}
    top = next((e for e in reversed(eps) if max(at[e].values()) > 0), eps[-1])
    best = [m for m, v in at[top].items() if v == max(at[top].values())]
    who = f"the most robust model is {best[0]}" if len(best) == 1 else f"{', '.join(best)} are equally robust"
    zero = f" (from eps {eps[eps.index(top) + 1]:g} on every model is at 0)" if top != eps[-1] else ""
    return f"Under PGD at eps {top:g} {who} ({at[top][best[0]]:.3f}){zero}."
