"""Settings of Lab 4's analysis code, as config sections: the OOD sets and detectors, ODIN's one setting and its
grid search, the autoencoder detector's decoder, the attacks, FGSM adversarial training.

Experiment configs hold them as sections (``--set attack.name=pgd``) and hand them whole to the analysis
functions that read them. Free of torch, like ``detector_names``: experiment configs import them when they
register, and ``dllab list`` must not pay for torch.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from .detector_names import DETECTOR_NAMES


@dataclass
class OODConfig:
    names: list[str] = field(default_factory=lambda: ["cifar100-20"])
    limit: int = 0                # images per OOD set (class-balanced), 0 = all
    root: str = ""                # "" = data.root ($DLLAB_DATA, else ./data)
    detectors: list[str] = field(default_factory=lambda: list(DETECTOR_NAMES))


@dataclass
class OdinSetting:                # the one ODIN setting lab4.ood and lab4.adv-train score with
    temperature: float = 1000.0   # Liang et al.'s CIFAR setting
    epsilon: float = 0.0014


@dataclass
class AutoencoderConfig:          # decoder on the frozen cnn trunk, trained on ID training images
    epochs: int = 10
    lr: float = 1e-3
    batch_size: int = 128
    hidden: int = 32
    train_limit: int = 0          # 0 = every ID training image


@dataclass
class AttackConfig:
    name: str = "fgsm"            # fgsm | pgd
    epsilons: list[float] = field(default_factory=lambda: [0.0, 0.01, 0.05, 0.1, 0.2, 0.3])
    steps: int = 10               # pgd only
    step_size: float = 0.0        # pgd only; 0 = 2.5 * eps / steps (Madry et al.)
    random_start: bool = True     # pgd only
    examples: int = 8             # test images in the clean/perturbed example grid


@dataclass
class AdvConfig:                  # L = alpha * CE(x, y) + (1 - alpha) * CE(x + eps * sign(grad_x CE), y)
    epsilon: float = 0.01
    alpha: float = 0.5


@dataclass
class OdinGridConfig:
    temperatures: list[float] = field(default_factory=lambda: [1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0,
                                                               500.0, 1000.0])
    epsilons: list[float] = field(default_factory=lambda: [0.0, 0.0005, 0.001, 0.0014, 0.002, 0.0028, 0.004])
    val_fraction: float = 0.5     # of the ID test images and of each OOD set, drawn with the run's seed
