"""Settings of Lab 4's analysis code, as config sections: the OOD sets and detectors, ODIN's one setting and its
grid search, the autoencoder detector's decoder, the attacks, FGSM adversarial training.

Experiment configs hold them as sections (``--set attack.name=pgd``) and hand them whole to the analysis
functions that read them. Torch-free: experiment configs import them when they register, and the OOD sets,
detectors and attacks are checked against the registry's names without importing their modules.
"""
from __future__ import annotations

from typing import Annotated

from pydantic import Field

from dllab.core.config import Count, Float, NonNegative, Positive, PositiveInt, Section, Unit, plugin, plugins

METRICS = ("auroc", "aupr_in", "aupr_out", "fpr95")   # what analysis.ood.metrics measures per (OOD set, detector)


class OODConfig(Section):
    names: plugins("ood_set", min_length=1) = ["cifar100-20"]
    limit: Count = 0              # images per OOD set (class-balanced), 0 = all
    root: str = ""                # "" = data.root ($DLLAB_DATA, else ./data)
    detectors: plugins("detector", min_length=1) = ["msp", "max_logit", "energy", "odin", "autoencoder"]


class OdinSetting(Section):       # the one ODIN setting lab4.ood and lab4.adv-train score with
    temperature: Positive = 1000.0   # Liang et al.'s CIFAR setting
    epsilon: NonNegative = 0.0014


class AutoencoderConfig(Section):  # decoder on the frozen cnn trunk, trained on ID training images
    epochs: PositiveInt = 10
    lr: Positive = 1e-3
    batch_size: PositiveInt = 128
    hidden: PositiveInt = 32
    train_limit: Count = 0        # 0 = every ID training image


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


class OdinGridConfig(Section):
    temperatures: Annotated[list[Positive], Field(min_length=1)] = [1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0,
                                                                    500.0, 1000.0]
    epsilons: Annotated[list[NonNegative], Field(min_length=1)] = [0.0, 0.0005, 0.001, 0.0014, 0.002, 0.0028, 0.004]
    # of the ID test images and of each OOD set, drawn with the run's seed
    val_fraction: Annotated[Float, Field(gt=0, lt=1)] = 0.5
