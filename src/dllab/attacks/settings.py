"""Settings of the attacks and of FGSM adversarial training, as config sections (``--set attack.name=pgd``):
experiment configs hold them and hand them whole to the code that reads them. Torch-free."""
from __future__ import annotations

import importlib.util
from typing import Annotated, Literal

from pydantic import AfterValidator, Field

from dllab.core import registry
from dllab.core.config import Count, NonNegative, PositiveInt, Section, Unit, plugin


def _installed(name: str) -> str:
    """An attack whose library (its ``requires=``, an optional extra such as apgd's torchattacks) is missing is
    refused with the config, before any run folder or training; read statically, nothing is imported."""
    needs = registry.index("attack")[name].literal("requires")
    if needs and importlib.util.find_spec(needs) is None:
        raise ValueError(f"attack '{name}' needs {needs}, which is not installed: pip install 'dllab[attacks]'")
    return name


Attack = Annotated[plugin("attack"), AfterValidator(_installed)]


class AttackConfig(Section):
    name: Attack = "fgsm"         # fgsm | pgd | apgd (torchattacks' APGD-CE, pip install 'dllab[attacks]') | a plug-in's
    epsilons: Annotated[list[NonNegative], Field(min_length=1)] = [0.0, 0.01, 0.05, 0.1, 0.2, 0.3]
    steps: PositiveInt = 10       # pgd, apgd
    restarts: PositiveInt = 1     # pgd, apgd: random starts; per example the strongest is kept
    step_size: NonNegative = 0.0  # pgd only; 0 = 2.5 * eps / steps (Madry et al.)
    random_start: bool = True     # pgd only
    examples: Count = 8           # test images in the clean/perturbed example grid


AdvMode = Literal["fgsm", "fgsm-rs", "pgd"]   # attacks/methods.py's ADV_MODES


class AdvConfig(Section):         # L = alpha * CE(x, y) + (1 - alpha) * CE(x_adv, y), x_adv from each mode's attack
    epsilon: NonNegative = 0.01
    alpha: Unit = 0.5
    # fgsm: x + eps sign(grad) (Goodfellow et al.); fgsm-rs: random start + 1.25 eps step (Wong et al. 2020);
    # pgd: `steps` PGD steps (Madry et al. 2018). One adversarially trained model per mode.
    modes: Annotated[list[AdvMode], Field(min_length=1)] = ["fgsm"]
    steps: PositiveInt = 7        # pgd training: PGD steps per batch
    step_size: NonNegative = 0.0  # pgd training; 0 = 2.5 * eps / steps
    # the attacks of the mode table (when adv.modes is not [fgsm]): apgd needs pip install 'dllab[attacks]'
    attacks: Annotated[list[Attack], Field(min_length=1)] = ["fgsm", "pgd"]
