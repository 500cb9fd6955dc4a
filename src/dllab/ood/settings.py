"""Settings of OOD detection, as config sections: the OOD sets and detectors (with the feature-space detectors'
own settings as sub-sections, ``--set ood.knn.k=10``), ODIN's one setting and its grid search, the autoencoder
detector's decoder.

Experiment configs hold them as sections (``--set ood.detectors=[msp,energy]``) and hand them whole to the analysis
functions that read them. Torch-free: experiment configs import them when they register, and the OOD sets,
detectors are checked against the registry's names without importing their modules.
"""
from __future__ import annotations

from typing import Annotated

from pydantic import Field

from dllab.core.config import Count, Float, NonNegative, Positive, PositiveInt, Section, plugins, section

METRICS = ("auroc", "aupr_in", "aupr_out", "fpr95")   # what analysis.ood.metrics measures per (OOD set, detector)


Percentile = Annotated[Float, Field(ge=0, le=100)]


class KNNConfig(Section):         # ood/knn.py
    k: PositiveInt = 50           # the k-th nearest ID training feature; Sun et al.'s CIFAR-10 value


class VimConfig(Section):         # ood/vim.py
    dim: Count = 0                # principal subspace; 0 = the authors' rule (1000 if D >= 2048, 512 if D > 512, D/2)


class ReactConfig(Section):       # ood/react.py
    percentile: Percentile = 90.0     # clip at this percentile of the ID training activations (Sun et al.'s 90)


class AshConfig(Section):         # ood/ash.py
    percentile: Annotated[Float, Field(ge=0, lt=100)] = 90.0   # prune this share of each feature vector


class OODConfig(Section):
    names: plugins("ood_set", min_length=1) = ["cifar100-20"]
    limit: Count = 0              # images per OOD set (class-balanced), 0 = all
    root: str = ""                # "" = data.root ($DLLAB_DATA, else ./data)
    detectors: plugins("detector", min_length=1) = ["msp", "max_logit", "energy", "odin", "autoencoder"]
    # settings of the feature-space detectors, read only when ``detectors`` names them
    knn: KNNConfig = section(KNNConfig)
    vim: VimConfig = section(VimConfig)
    react: ReactConfig = section(ReactConfig)
    ash: AshConfig = section(AshConfig)


class OODBenchmarkConfig(OODConfig):   # lab4.ood's: the OOD sets and detectors, and the near/far table
    # Off by default, so that the profiles' keys stay as they are: ``true`` also scores the ``near`` and ``far``
    # sets and adds the keys near.<set>.<detector>.<auroc|fpr95>, near.<detector>.<auroc|fpr95> (the mean over
    # the near sets) and the same under far (report.ood_table draws the table from them).
    benchmark: bool = False
    near: plugins("ood_set") = []     # [] = cifar100-20 when CIFAR-100 is under the OOD data root, else heldout
    far: plugins("ood_set", min_length=1) = ["mnist", "gaussian", "uniform"]


class OdinSetting(Section):       # the one ODIN setting lab4.ood and lab4.adv-train score with
    temperature: Positive = 1000.0   # Liang et al.'s CIFAR setting
    epsilon: NonNegative = 0.0014


class AutoencoderConfig(Section):  # decoder on the frozen cnn trunk, trained on ID training images
    epochs: PositiveInt = 10
    lr: Positive = 1e-3
    batch_size: PositiveInt = 128
    hidden: PositiveInt = 32
    train_limit: Count = 0        # 0 = every ID training image


class OdinGridConfig(Section):
    temperatures: Annotated[list[Positive], Field(min_length=1)] = [1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0,
                                                                    500.0, 1000.0]
    epsilons: Annotated[list[NonNegative], Field(min_length=1)] = [0.0, 0.0005, 0.001, 0.0014, 0.002, 0.0028, 0.004]
    # of the ID test images and of each OOD set, drawn with the run's seed
    val_fraction: Annotated[Float, Field(gt=0, lt=1)] = 0.5
