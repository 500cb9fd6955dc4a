"""Lab 1, Ex. 2.1 declared: the config, profiles, the spec's numbers and the summary keys of ``lab1.transfer``.

Torch-free, so that the CLI checks a whole config before torch loads; the run function is in
``experiments/transfer/run.py``. What a run does:

Source model (train.reuse): ``--set source.run=RUN_DIR`` reuses a finished run's depth-5 cnn (a
lab1.cnn-depth run's ``res_d5``, else ``plain_d5``; a lab1.transfer run's ``source``; or ``source.variant``),
else it is trained here as variant ``source`` (models/source.pt, so the next run can point at it).
``source.factory`` makes it the user's model instead of the cnn (train.transfer says what the variants need of it).
On the target dataset (variants: train.transfer): LinearSVC and k-NN on the frozen, cached source features
(features.image, features.classifiers); fine-tuning with a new classifier: ``head`` (only fc + ReLU +
classifier train), ``full_adam``, ``full_sgd``, ``partial`` (stem and the first ``freeze_blocks`` blocks
frozen); and ``scratch`` (same architecture, random init) as the baseline.

Profiles: ``paper`` is the spec's setting (CIFAR-10 -> CIFAR-100, depth 5, 64 channels, Adam 1e-3; 30
epochs, batch 128 and crop+flip augmentation are dllab's choices where the spec is silent). Offline there
is no CIFAR-100, so ``quick`` transfers from CIFAR-10 classes 0-4 to classes 5-9 with a narrower CNN.
"""
from __future__ import annotations

from typing import Literal

from dllab.core.config import Count, DataConfig, OptimConfig, PositiveInt, RunConfig, Section, TrainConfig, plugins, section
from dllab.core.registry import register
from dllab.models.factory import ModelFactory
from dllab.train.settings import VARIANTS


# --- config ----------------------------------------------------------------------------------------

class SourceConfig(Section):
    """Where the pretrained CNN comes from: a finished run (``run``), else trained here on ``data``."""
    # "" = dllab's cnn; else a registered model or a factory's import path package.module:function (called with
    # depth, base_channels, residual, num_classes, in_channels, image_size, stats: those it accepts), which also
    # builds ``scratch``; a reused source.run must have been built by the same one
    factory: ModelFactory = ""
    run: str = ""                       # finished run folder whose saved model is the source
    variant: str = ""                   # model name in that run; "" -> source, res_d<depth>, plain_d<depth>
    depth: PositiveInt = 5              # the spec's depth-5 CNN; a loaded model must have this depth
    base_channels: PositiveInt = 64     # when trained here (a loaded model keeps its own width)
    residual: bool = True               # when trained here
    data: DataConfig = section(DataConfig, name="cifar10", val_fraction=0.1, augment=True)
    train: TrainConfig = section(TrainConfig, epochs=30, batch_size=128)
    optim: OptimConfig = section(OptimConfig, name="adam", lr=1e-3)


_FIVE = [str(i) for i in range(5)]
_QUICK_DATA = {"data.name": "cifar10", "data.classes": [str(i) for i in range(5, 10)], "data.augment": False,
               "source.data.classes": _FIVE, "source.data.augment": False}

PROFILES = {
    "paper": {},
    # CIFAR-10 classes 0-4 -> 5-9 (no CIFAR-100 offline), 16 channels, precision auto, a class-balanced
    # slice of each half, no augmentation (too few epochs to need it); batch 64 on the 4,500 target images
    # for enough steps.
    "quick": {**_QUICK_DATA, "source.base_channels": 16,
              "source.data.train_limit": 10000, "source.data.test_limit": 1000,
              "source.train.epochs": 3,
              "data.train_limit": 5000, "data.test_limit": 1000,
              "train.epochs": 5, "train.batch_size": 64},
    "smoke": {**_QUICK_DATA, "source.base_channels": 8,
              "source.data.train_limit": 300, "source.data.test_limit": 100, "source.train.epochs": 1,
              "data.train_limit": 200, "data.test_limit": 100, "train.epochs": 1},
}

REFERENCE = {"svm.val_acc": 0.3024, "knn.val_acc": 0.1611, "head.val_acc": 0.3063,
             "full_adam.val_acc": 0.5548, "full_sgd.val_acc": 0.5267, "scratch.val_acc": 0.5541}

NOTES = ("(CIFAR-10 depth-5 CNN -> CIFAR-100) Linear SVM on the frozen features 30.24% and k-NN 16.11% "
         "validation accuracy; fine-tuning fc & classifier only 30.63%, the full network with Adam (lr 1e-3) "
         "55.48% and with SGD (lr 1e-2) 52.67%; training from scratch 55.41%. Fine-tuning the full network "
         "clearly beats the classical classifiers, but training from scratch reaches nearly the same accuracy, "
         "so pretraining on CIFAR-10 offers no real advantage here (dataset size and model capacity too "
         "limited). The spec does not say which split its fine-tuning numbers are on; they are shown beside "
         "val_acc.")
# The spec's answer to "does pretraining help?", stated beside the run's own (report.significance).
SPEC_VERDICT = (f"The spec found {REFERENCE['full_adam.val_acc']:.2%} (full_adam) vs "
                f"{REFERENCE['scratch.val_acc']:.2%} (scratch) on CIFAR-100: no real gain.")


# A trained model's accuracies in the summary: its best validation accuracy, its test accuracy (the kept weights')
# and the last epoch's test accuracy (train.settings.METRICS_RULE).
TRAINED_KEYS = ("val_acc", "test_acc", "test_acc_last")


def transfer_metrics(cfg: TransferConfig) -> list[str]:
    """run_transfer's summary keys: the source's accuracies (its validation accuracy when trained here with a
    validation split; a reused source reports what its run saved, which a run with a validation split does),
    then the classifiers' and the variants', with validation accuracies where the target data has a validation
    split (the classifiers have no epochs, so no test_acc_last)."""
    target_val = cfg.data.val_fraction > 0
    source = [f"source.{k}" for k in TRAINED_KEYS[1 - bool(cfg.source.run or cfg.source.data.val_fraction > 0):]]
    classical = [f"{n}.{split}_acc" for n in dict.fromkeys(cfg.classifiers)
                 for split in ("val", "test")[1 - target_val:]]
    tuned = [f"{v}.{k}" for v in dict.fromkeys(cfg.variants) for k in TRAINED_KEYS[1 - target_val:]]
    return source + classical + tuned


# --- the experiment --------------------------------------------------------------------------------

@register(
    "experiment", "lab1.transfer", run="dllab.experiments.transfer.run:run_transfer",
    description="Depth-5 CIFAR-10 CNN as a frozen feature extractor (LinearSVC, k-NN) and fine-tuned (head / full "
                "Adam / full SGD / partial) on CIFAR-100, against training from scratch (spec Ex. 2.1)",
    profiles=PROFILES, reference=REFERENCE, notes=NOTES, metrics=transfer_metrics)
class TransferConfig(RunConfig):
    source: SourceConfig = section(SourceConfig)
    # The target dataset and the fine-tuning schedule shared by every variant.
    data: DataConfig = section(DataConfig, name="cifar100", val_fraction=0.1, augment=True)
    train: TrainConfig = section(TrainConfig, epochs=30, batch_size=128)
    optim: OptimConfig = section(OptimConfig, name="adam", lr=1e-3)   # head/full_adam/partial/scratch
    sgd: OptimConfig = section(OptimConfig, name="sgd", lr=1e-2, momentum=0.9)   # full_sgd
    variants: list[Literal[VARIANTS]] = list(VARIANTS)
    freeze_blocks: Count = 2            # partial: the stem and this many blocks stay frozen
    classifiers: plugins("classifier") = ["svm", "knn"]
    knn_k: PositiveInt = 5
