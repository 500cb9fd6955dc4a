"""Lab 4's experiments declared: configs, profiles, the spec's numbers and the summary keys of each run.

Torch-free, so that the CLI checks a whole config before torch loads; the run functions are in
``experiments/lab4/run.py``.

The classifier is the depth-5 ``cnn``, reused from a finished run (``--set model.run=DIR``, optionally
``model.variant=NAME``: a lab1.cnn-depth run serves its res_d5, else plain_d5, a Lab 4 run its ``standard``)
or trained here as variant ``standard`` (models/standard.pt, for the next Lab 4 run to reuse); a reused one
must be trained on the ID data's classes. Detectors and attacks run in fp32 on images in [0, 1]; epsilons
are in pixel units. OOD sets: ``ood.names`` (registry kind ``ood_set``), detectors: ``ood.detectors`` (kind
``detector``, each a class in ood/ or a plug-in's). Summary keys:
``<detector>.<metric>`` with one OOD set, else prefixed by its name (``mnist.energy.fpr95``; lab4.adv-train
puts the model first: ``adv.mnist.msp.auroc``). Every number is the saved (best-validation) model's:
``model.test_acc`` is its clean accuracy; a model trained in the run adds ``<model>.test_acc_last``, its last
epoch's test accuracy as its training measured it.

Profiles: ``paper`` = the spec (64 channels, all of CIFAR-10, Adam 1e-3; where it is silent: 30 epochs, batch
128, crop+flip, 10% validation, OOD = cifar100-20). ``quick``: ID = CIFAR-10 classes 0-5, so ``heldout`` (6-9)
exists and one quick model serves all four (see _QUICK_TRAIN). ``smoke`` = seconds, for tests.
"""
from __future__ import annotations

from dllab.attacks.settings import AdvConfig, AttackConfig
from dllab.core.config import DataConfig, OptimConfig, PositiveInt, RunConfig, Section, TrainConfig, section
from dllab.core.registry import register
from dllab.models.factory import ModelFactory
from dllab.ood.settings import (METRICS, AutoencoderConfig, OdinGridConfig, OdinSetting, OODBenchmarkConfig,
                                OODConfig)

QUICK_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog"]   # CIFAR-10 classes 0-5


# Shared by the four experiments' profiles; each experiment adds the sections its config has (a key that names
# no config field is an error when the experiment registers).
_PAPER = {"data.allow_fallback": False}
# quick: 16 channels (16x fewer FLOPs than 64), 12,000 of the 30,000 training images of the 6 classes, 5 epochs
# of batch 64 with Adam 2e-3 + cosine decay (more, larger steps than the paper's 1e-3: a 5-epoch model needs
# them; ~65% validation accuracy on 6 classes), no augmentation. Precision: auto (TrainConfig's default; bf16
# where the CPU has native bf16, see train/precision.py).
_QUICK_TRAIN = {"model.base_channels": 16, "data.classes": QUICK_CLASSES, "data.train_limit": 12000,
                "data.test_limit": 1200, "data.augment": False, "train.epochs": 5, "train.batch_size": 64,
                "optim.lr": 2e-3, "optim.schedule": "cosine"}
_QUICK_OOD = {"ood.names": ["heldout", "mnist"], "ood.limit": 1200}
# lab4.ood's quick and paper runs: the spec's five detectors, the five feature-space ones the field's tables lead
# with (OpenOOD v1.5) and the near/far table; smoke keeps the spec's five (seconds, for tests)
ALL_DETECTORS = ["msp", "max_logit", "energy", "odin", "autoencoder", "mahalanobis", "knn", "vim", "react", "ash"]
_BENCHMARK = {"ood.detectors": ALL_DETECTORS, "ood.benchmark": True}
_QUICK_AE = {"autoencoder.epochs": 3, "autoencoder.train_limit": 2000, "autoencoder.batch_size": 32}
_SMOKE_TRAIN = {"model.base_channels": 8, "data.classes": QUICK_CLASSES, "data.train_limit": 120,
                "data.test_limit": 60, "data.augment": False, "train.epochs": 1, "train.batch_size": 32,
                "analysis_batch_size": 128}
_SMOKE_OOD = {"ood.names": ["heldout", "mnist"], "ood.limit": 60}
_SMOKE_AE = {"autoencoder.epochs": 1, "autoencoder.train_limit": 60, "autoencoder.batch_size": 32}
_SMOKE_ATTACK = {"attack.epsilons": [0.0, 0.01, 0.05], "attack.examples": 4}
_ADV_OOD = {"ood.names": ["heldout"], "ood.detectors": ["msp", "max_logit", "energy", "odin"]}

FGSM_REF = {"acc@0": 0.8473, "acc@0.01": 0.4753, "acc@0.05": 0.0968, "acc@0.1": 0.0583, "acc@0.2": 0.0542,
             "acc@0.3": 0.0579}
ADV_REF = {"acc@0": 0.8681, "acc@0.01": 0.7638, "acc@0.05": 0.3000, "acc@0.1": 0.0939, "acc@0.2": 0.0326,
            "acc@0.3": 0.0208}
ADV_SETTING = (0.01, 0.5)   # Ex. 2.2's (adv.epsilon, adv.alpha): ADV_REF holds that model's numbers
# The classifier's clean test accuracy: the spec gives it as Ex. 2.1's eps = 0 row (the same depth-5 CNN serves
# Ex. 1 and 3, which give no accuracy of their own), and Ex. 2.2's for the adversarially trained model.
CLEAN_REF = {"model.test_acc": FGSM_REF["acc@0"]}


# --- summary keys, from the config alone (registry.Experiment.metrics) -----------------------------

def _ood_keys(cfg: OODSetsConfig, prefix: str = "", which=METRICS) -> list[str]:
    """ood.evaluate.metric_keys' names for the configured OOD sets and detectors (each listed once)."""
    sets = list(dict.fromkeys(cfg.ood.names))
    return [".".join(p for p in (prefix, ood if len(sets) > 1 else "", d, m) if p)
            for ood in sets for d in dict.fromkeys(cfg.ood.detectors) for m in which]


def _attack_keys(cfg: FGSMConfig, model: str) -> list[str]:
    """``<model>.acc@<eps>`` per epsilon of the attack (an epsilon listed twice is one key)."""
    return list(dict.fromkeys(f"{model}.acc@{e:g}" for e in cfg.attack.epsilons))


def benchmark_metrics(cfg: OODExpConfig) -> list[str]:
    """ood.evaluate.benchmark_keys' names when ``ood.benchmark`` is on: per near/far set, then the group's mean.
    An empty ``ood.near`` is decided by the run (cifar100-20 when CIFAR-100 is on disk, else heldout): both
    are listed, and the run leaves one out."""
    if not cfg.ood.benchmark:
        return []
    groups = {"near": list(dict.fromkeys(cfg.ood.near)) or ["cifar100-20", "heldout"],
              "far": list(dict.fromkeys(cfg.ood.far))}
    detectors = list(dict.fromkeys(cfg.ood.detectors))
    return [f"{g}.{part}{d}.{m}" for g, sets in groups.items() for part in [*(f"{s}." for s in sets), ""]
            for d in detectors for m in ("auroc", "fpr95")]


def _test_keys(cfg: Lab4Config, model: str, trained: bool = False) -> list[str]:
    """``<model>.test_acc`` (the saved model's clean accuracy), then ``<model>.test_acc_last`` (its last epoch's)
    when this run trains it: ``trained``, or the classifier when ``model.run`` reuses none."""
    return [f"{model}.test_acc", *([f"{model}.test_acc_last"] if trained or not cfg.model.run else [])]


def ood_metrics(cfg: OODExpConfig) -> list[str]:
    return [*_test_keys(cfg, "model"), *_ood_keys(cfg), *benchmark_metrics(cfg)]


def fgsm_metrics(cfg: FGSMConfig) -> list[str]:
    return [*_test_keys(cfg, "model"), *_attack_keys(cfg, cfg.attack.name)]


def adv_model_names(cfg: AdvTrainConfig) -> list[str]:
    """The models lab4.adv-train compares: standard, then one per adv.modes (``adv`` for the spec's fgsm)."""
    return ["standard", *("adv" if m == "fgsm" else f"adv_{m}" for m in dict.fromkeys(cfg.adv.modes))]


def mode_table_asked(cfg: AdvTrainConfig) -> bool:
    """The clean / FGSM / PGD table per mode runs when the user asks for modes beyond the spec's FGSM (so the
    default run's numbers and keys stay the spec experiment's)."""
    return list(dict.fromkeys(cfg.adv.modes)) != ["fgsm"]


def adv_train_metrics(cfg: AdvTrainConfig) -> list[str]:
    names = adv_model_names(cfg)
    table = ([f"{n}.{a}.acc@{e:g}" for n in names for a in dict.fromkeys(cfg.adv.attacks)
              for e in dict.fromkeys(cfg.attack.epsilons)] if mode_table_asked(cfg) else [])
    return [*(k for n in names
              for k in (*_test_keys(cfg, n, n != "standard"), *_attack_keys(cfg, n),
                        *_ood_keys(cfg, n, ("auroc", "fpr95")))),
            *dict.fromkeys(table)]


def adv_as_spec(cfg: AdvTrainConfig) -> bool:
    """Whether the ``adv`` model is trained as Ex. 2.2's (``ADV_SETTING``), so that ``ADV_REF`` describes it."""
    return (cfg.adv.epsilon, cfg.adv.alpha) == ADV_SETTING


def adv_reference_off(cfg: AdvTrainConfig) -> dict[str, str]:
    """The spec's numbers that do not describe this run's models, each with why: the adversarially trained
    model's unless it was trained with Ex. 2.2's eps and alpha, and the accuracies per eps when the attack
    measured is not FGSM (the summary's ``<model>.acc@<eps>`` are under ``attack.name``)."""
    off = {}
    if cfg.attack.name != "fgsm":
        why = f"the accuracies per eps are under {cfg.attack.name}, the spec's under FGSM"
        off.update({f"{n}.{k}": why for n in ("standard", "adv") for k in FGSM_REF if k != "acc@0"})
    if not adv_as_spec(cfg):
        why = (f"adv was trained with eps {cfg.adv.epsilon:g} and alpha {cfg.adv.alpha:g}, the spec's adversarially "
               f"trained model with eps {ADV_SETTING[0]:g} and alpha {ADV_SETTING[1]:g}")
        off.update({f"adv.{k}": why for k in ("test_acc", *ADV_REF)})
    return off


def odin_metrics(cfg: ODINConfig) -> list[str]:
    """ood.odin_search.search_summary's keys per OOD set (prefixed by its name when there are
    several); the (T=1, eps=0) cell only when the grid has it."""
    sets = list(dict.fromkeys(cfg.ood.names))
    cell = ["odin.grid_auroc@T1_eps0"] if 1.0 in cfg.odin.temperatures and 0.0 in cfg.odin.epsilons else []
    per_set = ["odin.best_T", "odin.best_eps", "odin.val_auroc", "odin.auroc", "odin.fpr95", "msp.auroc",
               "msp.fpr95", *cell]
    return [*_test_keys(cfg, "model"), *(f"{s}.{k}" if len(sets) > 1 else k for s in sets for k in per_set)]


# --- configs ---------------------------------------------------------------------------------------

class ModelConfig(Section):
    # the classifier trained here: "" = dllab's cnn, else a registered model or a factory's import path
    # package.module:function (called with depth, base_channels, residual, num_classes, in_channels, image_size,
    # stats: those it accepts); a reused model.run must have been built by the same one
    factory: ModelFactory = ""
    run: str = ""                 # reuse the cnn of this finished run folder ("" = train it in this run)
    variant: str = ""             # model of that run ("" = its only one, else res_d5, plain_d5, standard)
    base_channels: PositiveInt = 64   # when trained here (depth is always 5)
    residual: bool = True


class Lab4Config(RunConfig):
    data: DataConfig = section(DataConfig, name="cifar10", val_fraction=0.1, augment=True)
    train: TrainConfig = section(TrainConfig, epochs=30, batch_size=128)
    optim: OptimConfig = section(OptimConfig, name="adam", lr=1e-3)
    model: ModelConfig = section(ModelConfig)
    analysis_batch_size: PositiveInt = 256   # images per batch for detectors, attacks and the clean accuracy


class OODSetsConfig(Lab4Config):  # the experiments that score OOD sets
    ood: OODConfig = section(OODConfig)


@register(
    "experiment", "lab4.ood", run="dllab.experiments.lab4.run:run_ood",
    description="OOD detection with the depth-5 CNN: MSP, max logit, energy, ODIN, autoencoder (the spec's) and "
                "Mahalanobis, KNN, ViM, ReAct, ASH; histograms, ROC/PR curves, AUROC/AUPR/FPR95, a near/far "
                "benchmark table (spec Ex. 1.1-1.2)",
    profiles={"paper": {**_PAPER, **_BENCHMARK},
              "quick": {**_QUICK_TRAIN, **_QUICK_OOD, **_QUICK_AE, **_BENCHMARK},
              "smoke": {**_SMOKE_TRAIN, **_SMOKE_OOD, **_SMOKE_AE}},
    notes="CIFAR-10 is the in-distribution set and 20 CIFAR-100 classes that overlap no CIFAR-10 class are "
          "OOD; the depth-5 CNN of Lab 1 is the classifier. Logit and max-softmax histograms, ROC and "
          "precision-recall curves and the reconstruction error of an autoencoder (the CNN's feature "
          "extractor as the encoder, a trained decoder) are used to tell whether a test image is OOD. The "
          "spec shows these as plots only, no numbers; the classifier's clean accuracy is Ex. 2.1's eps = 0 row.",
    reference=CLEAN_REF,
    metrics=ood_metrics)
class OODExpConfig(OODSetsConfig):
    ood: OODBenchmarkConfig = section(OODBenchmarkConfig)
    odin: OdinSetting = section(OdinSetting)
    autoencoder: AutoencoderConfig = section(AutoencoderConfig)


@register(
    "experiment", "lab4.fgsm", run="dllab.experiments.lab4.run:run_fgsm",
    description="FGSM (or PGD) attacks on the depth-5 CNN: test accuracy per epsilon (spec Ex. 2.1)",
    profiles={"paper": _PAPER, "quick": _QUICK_TRAIN, "smoke": {**_SMOKE_TRAIN, **_SMOKE_ATTACK}},
    reference={**CLEAN_REF, **{f"fgsm.{k}": v for k, v in FGSM_REF.items()}},
    notes="FGSM adversarial examples of the CIFAR-10 test images: accuracy 84.73% at eps 0, 47.53% at 0.01, "
          "9.68% at 0.05, then about 5-6% (at or below chance) for 0.1-0.3; performance degrades as eps "
          "increases.",
    metrics=fgsm_metrics)
class FGSMConfig(Lab4Config):
    attack: AttackConfig = section(AttackConfig)


@register(
    "experiment", "lab4.adv-train", run="dllab.experiments.lab4.run:run_adv_train",
    description="FGSM adversarial training vs standard training: accuracy under attack (FGSM) and OOD metrics side "
                "by side (spec Ex. 2.2: eps 0.01, alpha 0.5, as adv.epsilon and adv.alpha); adv.modes=[fgsm,fgsm-rs,"
                "pgd] adds random-start FGSM and PGD training and a clean / FGSM / PGD table per mode",
    profiles={"paper": _PAPER,
              "quick": {**_QUICK_TRAIN, **_QUICK_OOD, **_QUICK_AE, **_ADV_OOD},
              "smoke": {**_SMOKE_TRAIN, **_SMOKE_OOD, **_SMOKE_AE, **_SMOKE_ATTACK, **_ADV_OOD}},
    reference={"standard.test_acc": FGSM_REF["acc@0"], "adv.test_acc": ADV_REF["acc@0"],
               **{f"standard.{k}": v for k, v in FGSM_REF.items()}, **{f"adv.{k}": v for k, v in ADV_REF.items()}},
    notes="Training on L = alpha L(x, y) + (1 - alpha) L(x + eps sign(grad_x L), y) with eps = 0.01 raises FGSM "
          "accuracy at eps 0.01 from 47.53% to 76.38%, and at 0.05 and 0.1 too (9.68% -> 30.00%, 5.83% -> "
          "9.39%); clean accuracy 84.73% -> 86.81%. The adversarially trained model is then run through the "
          "OOD pipeline of Ex. 1 (the spec shows those as plots only).",
    metrics=adv_train_metrics, reference_off=adv_reference_off)
class AdvTrainConfig(FGSMConfig, OODExpConfig):   # both experiments' sections (ood, odin, autoencoder, attack)
    ood: OODConfig = section(OODConfig)   # the near/far benchmark is lab4.ood's alone
    adv: AdvConfig = section(AdvConfig)


@register(
    "experiment", "lab4.odin", run="dllab.experiments.lab4.run:run_odin",
    description="ODIN: grid over temperature T and input perturbation eps, selected on a validation split of ID "
                "and OOD images, reported on the test split beside MSP (spec Ex. 3.1)",
    profiles={"paper": _PAPER,
              # quick: all ten temperatures, 4 of the 7 epsilons (a backward pass per T, a forward per
              # (T, eps > 0)) on 1,000 ID + 1,000 OOD images: the grid is most of the run's time.
              "quick": {**_QUICK_TRAIN, **_QUICK_OOD, "data.test_limit": 1000, "ood.names": ["heldout"],
                        "ood.limit": 1000, "odin.epsilons": [0.0, 0.0005, 0.0014, 0.004]},
              "smoke": {**_SMOKE_TRAIN, **_SMOKE_OOD, "ood.names": ["heldout"], "odin.temperatures": [1.0, 100.0],
                        "odin.epsilons": [0.0, 0.002]}},
    reference={**CLEAN_REF, "odin.best_T": 100, "odin.best_eps": 0.0, "odin.auroc": 0.66},
    notes="Grid search over T in {1, 2, 5, 10, 20, 50, 100, 200, 500, 1000} and eps in {0, ..., 0.004}: the best "
          "values are T = 100 and eps = 0, with AUROC 0.66 (CIFAR-10 vs the 20 CIFAR-100 classes).",
    metrics=odin_metrics)
class ODINConfig(OODSetsConfig):
    odin: OdinGridConfig = section(OdinGridConfig)
