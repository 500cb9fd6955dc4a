"""Lab 1's experiments declared: configs, profiles, the spec's notes and the summary keys of each run.

Torch-free, so that the CLI checks a whole config before torch loads; the run functions are in
``experiments/lab1/run.py`` (``run=`` of each registration). Profile notes: ``paper`` is the spec's setting
(batch size 128 and the validation split are dllab's choice where the spec is silent); ``quick`` keeps every
variant but trains on less data/fewer epochs (and, for the CNN, fewer channels) so it finishes in minutes on
2 CPU cores.
"""
from __future__ import annotations

from dllab.core.config import DataConfig, OptimConfig, PositiveInt, RunConfig, Section, TrainConfig, section
from dllab.core.registry import register
from dllab.models.factory import ModelFactory, ModelName

# A trained variant's test accuracies: the kept weights' and the last epoch's (train.settings.METRICS_RULE).
TEST_KEYS = ("test_acc", "test_acc_last")


def _accuracy_keys(variants: list[str], with_val: bool) -> list[str]:
    """``<variant>.test_acc``, ``.test_acc_last`` (and ``.val_acc`` when there is a validation split) per
    variant, in order."""
    return [f"{v}.{k}" for v in variants for k in (*TEST_KEYS, "val_acc")[:len(TEST_KEYS) + with_val]]


def depth_names(plain: list[int], residual: list[int]) -> list[str]:
    """The names of the depth variants (``plain_d<depth>``, ``res_d<depth>``; a depth listed twice is one
    variant)."""
    return list(dict.fromkeys([f"plain_d{d}" for d in plain] + [f"res_d{d}" for d in residual]))


# --- Ex. 1.1: BasicMLP on MNIST, SGD vs Adam -------------------------------------------------------

def mlp_metrics(cfg: MLPConfig) -> list[str]:
    """run_mlp's summary keys: test (and validation) accuracy of sgd, then adam."""
    return _accuracy_keys(["sgd", "adam"], cfg.data.val_fraction > 0)


@register(
    "experiment", "lab1.mlp", run="dllab.experiments.lab1.run:run_mlp",
    description="BasicMLP (784-64-64-10) on MNIST: SGD lr 0.1 vs Adam lr 1e-3 (spec Ex. 1.1)",
    profiles={"paper": {"data.allow_fallback": False},
              "quick": {"train.epochs": 10},
              "smoke": {"train.epochs": 1, "data.train_limit": 2000, "data.test_limit": 500}},
    notes="SGD (lr 0.1) and Adam (lr 1e-3) both fit MNIST over 50 epochs; Adam is the default optimiser "
          "for the later experiments. The spec shows curves only, no test numbers.",
    metrics=mlp_metrics)
class MLPConfig(RunConfig):
    data: DataConfig = section(DataConfig, name="mnist", val_fraction=0.1)
    train: TrainConfig = section(TrainConfig, epochs=50, batch_size=128)
    width: PositiveInt = 64
    # The spec: SGD lr 0.1 (no momentum given, so none) against Adam lr 1e-3.
    sgd: OptimConfig = section(OptimConfig, name="sgd", lr=0.1, momentum=0.0)
    adam: OptimConfig = section(OptimConfig, name="adam", lr=1e-3)
    # both variants' model: a registered name or a factory's import path package.module:function (built with
    # width=... and the data's num_classes, in_channels, image_size, stats)
    model: ModelName = "basic_mlp"


# --- Ex. 1.2: MLP depth, plain vs residual ---------------------------------------------------------

def mlp_depth_metrics(cfg: MLPDepthConfig) -> list[str]:
    """run_mlp_depth's summary keys: per variant its test accuracies, then its gradient ratio when
    train.grad_norms records the norms."""
    return [f"{v}.{k}" for v in depth_names(cfg.plain_depths, cfg.residual_depths)
            for k in (*TEST_KEYS, "grad_ratio")[:len(TEST_KEYS) + cfg.train.grad_norms]]


@register(
    "experiment", "lab1.mlp-depth", run="dllab.experiments.lab1.run:run_mlp_depth",
    description="Deep MLPs on MNIST, plain (10/20/30 blocks) vs residual (5/10/15), gradient norms (spec Ex. 1.2)",
    profiles={"paper": {"data.allow_fallback": False},
              # 8 epochs with a cosine decay: the residual MLPs settle at ~0.97+ test accuracy instead of
              # wobbling around it at a constant learning rate.
              "quick": {"train.epochs": 8, "optim.schedule": "cosine"},
              "smoke": {"train.epochs": 1, "data.train_limit": 2000, "data.test_limit": 500,
                        "plain_depths": [2, 6], "residual_depths": [2, 3]}},
    notes="Without residual connections deeper MLPs suffer from vanishing gradients and struggle to "
          "converge; with residual connections even deeper MLPs learn well (gradient signal reaches the "
          "first layers).",
    metrics=mlp_depth_metrics)
class MLPDepthConfig(RunConfig):
    data: DataConfig = section(DataConfig, name="mnist", val_fraction=0.1)
    train: TrainConfig = section(TrainConfig, epochs=50, batch_size=128, grad_norms=True)
    optim: OptimConfig = section(OptimConfig, name="adam", lr=1e-3)
    width: PositiveInt = 64
    plain_depths: list[PositiveInt] = [10, 20, 30]
    residual_depths: list[PositiveInt] = [5, 10, 15]


# --- Ex. 1.3: CNN depth on CIFAR-10, plain vs residual ---------------------------------------------

def cnn_depth_metrics(cfg: CNNDepthConfig) -> list[str]:
    """run_cnn_depth's summary keys: every variant's test accuracy, then every variant's last-epoch test
    accuracy, then every variant's validation accuracy (when there is a validation split)."""
    names = depth_names(cfg.plain_depths, cfg.residual_depths)
    return [f"{v}.{k}" for k in (*TEST_KEYS, "val_acc")[:len(TEST_KEYS) + (cfg.data.val_fraction > 0)]
            for v in names]


class CNNModelConfig(Section):
    # "" = dllab's cnn; else a registered model or a factory's import path package.module:function, built for
    # each variant with depth, residual, base_channels and the data's num_classes, in_channels, image_size, stats
    factory: ModelFactory = ""


@register(
    "experiment", "lab1.cnn-depth", run="dllab.experiments.lab1.run:run_cnn_depth",
    description="CNNs on CIFAR-10 at depths 5/10/15, plain vs residual (spec Ex. 1.3)",
    profiles={"paper": {},
              # 2 CPU cores: 16 channels instead of 64 (16x fewer FLOPs), 10k training images (+1.1k val),
              # precision auto (bf16 where the CPU has native bf16), and, to learn in 5 epochs, batch 32,
              # Adam lr 2e-3 with a cosine schedule (res_d5 at lr 1e-3/batch 64 plateaus near 0.45), no
              # augmentation (too few epochs to need it).
              "quick": {"base_channels": 16, "data.train_limit": 11112, "data.test_limit": 2000,
                        "data.augment": False, "train.epochs": 5, "train.batch_size": 32, "optim.lr": 2e-3,
                        "optim.schedule": "cosine"},
              "smoke": {"base_channels": 8, "plain_depths": [1, 2], "residual_depths": [1, 2],
                        "data.train_limit": 600, "data.test_limit": 200, "data.augment": True,
                        "train.epochs": 1}},
    notes="With residual connections accuracy increases with depth (gradient signal is preserved); without "
          "them accuracy decreases with depth (training difficulties, vanishing gradients).",
    metrics=cnn_depth_metrics)
class CNNDepthConfig(RunConfig):
    # The spec is silent on augmentation; paper uses the standard crop + flip (a 100-epoch run without it
    # mostly measures overfitting). Batch size 128 is the common choice.
    data: DataConfig = section(DataConfig, name="cifar10", val_fraction=0.1, augment=True)
    train: TrainConfig = section(TrainConfig, epochs=100, batch_size=128, grad_norms=True)
    optim: OptimConfig = section(OptimConfig, name="adam", lr=1e-3)
    model: CNNModelConfig = section(CNNModelConfig)
    base_channels: PositiveInt = 64
    plain_depths: list[PositiveInt] = [5, 10, 15]
    residual_depths: list[PositiveInt] = [5, 10, 15]
