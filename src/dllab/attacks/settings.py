"""Settings of the attacks and of FGSM adversarial training, as config sections (``--set attack.name=pgd``):
experiment configs hold them and hand them whole to the code that reads them. Torch-free."""
from __future__ import annotations

from typing import Annotated

from pydantic import Field

from dllab.core.config import Count, NonNegative, PositiveInt, Section, Unit, plugin


class AttackConfig(Section):
    name: plugin("attack") = "fgsm"   # fgsm | pgd | a plug-in's
    epsilons: Annotated[list[NonNegative], Field(min_length=1)] = [0.0, 0.01, 0.05, 0.1, 0.2, 0.3]
    steps: PositiveInt = 10       # pgd only
    step_size: NonNegative = 0.0  # pgd only; 0 = 2.5 * eps / steps (Madry et al.)
    random_start: bool = True     # pgd only
    examples: Count = 8           # test images in the clean/perturbed example grid


class AdvConfig(Section):         # L = alpha * CE(x, y) + (1 - alpha) * CE(x + eps * sign(grad_x CE), y)
    epsilon: NonNegative = 0.01
    alpha: Unit = 0.5
