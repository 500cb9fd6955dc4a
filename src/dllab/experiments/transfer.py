"""Lab 1, Ex. 2.1: the depth-5 CIFAR-10 CNN as a frozen feature extractor and as a starting point.

Source model (train.reuse): ``--set source.run=RUN_DIR`` reuses a finished run's depth-5 cnn (a
lab1.cnn-depth run's ``res_d5``, else ``plain_d5``; a lab1.transfer run's ``source``; or ``source.variant``),
else it is trained here as variant ``source`` (models/source.pt, so the next run can point at it).
On the target dataset (variants: train.transfer): LinearSVC and k-NN on the frozen, cached source features (analysis.image_features,
analysis.features); fine-tuning with a new classifier: ``head`` (only fc + ReLU + classifier train),
``full_adam``, ``full_sgd``, ``partial`` (stem and the first ``freeze_blocks`` blocks frozen); and
``scratch`` (same architecture, random init) as the baseline.

Profiles: ``paper`` is the spec's setting (CIFAR-10 -> CIFAR-100, depth 5, 64 channels, Adam 1e-3; 30
epochs, batch 128 and crop+flip augmentation are dllab's choices where the spec is silent). Offline there
is no CIFAR-100, so ``quick`` transfers from CIFAR-10 classes 0-4 to classes 5-9 with a narrower CNN.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from dllab import DllabError
from dllab.core.config import Count, DataConfig, OptimConfig, PositiveInt, RunConfig, Section, TrainConfig, plugins, section
from dllab.core.registry import register
from dllab.train.transfer import VARIANTS

# Registering must not import torch (``dllab list`` stays fast): functions import what they use.
if TYPE_CHECKING:
    from dllab.data.images import ImageData
    from dllab.train.reuse import SavedCNN


# --- config ----------------------------------------------------------------------------------------

class SourceConfig(Section):
    """Where the pretrained CNN comes from: a finished run (``run``), else trained here on ``data``."""
    run: str = ""                       # finished run folder whose saved model is the source
    variant: str = ""                   # model name in that run; "" -> source, res_d<depth>, plain_d<depth>
    depth: PositiveInt = 5              # the spec's depth-5 CNN; a loaded model must have this depth
    base_channels: PositiveInt = 64     # when trained here (a loaded model keeps its own width)
    residual: bool = True               # when trained here
    data: DataConfig = section(DataConfig, name="cifar10", val_fraction=0.1, augment=True)
    train: TrainConfig = section(TrainConfig, epochs=30, batch_size=128)
    optim: OptimConfig = section(OptimConfig, name="adam", lr=1e-3)


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
# The spec's answer to "does pretraining help?", stated beside the run's own (analysis.significance).
SPEC_VERDICT = (f"The spec found {REFERENCE['full_adam.val_acc']:.2%} (full_adam) vs "
                f"{REFERENCE['scratch.val_acc']:.2%} (scratch) on CIFAR-100: no real gain.")


# --- the experiment --------------------------------------------------------------------------------

def get_source(cfg: TransferConfig, run) -> tuple[SavedCNN, ImageData, ImageData | None]:
    """(the source model, the target data, the source data when the source is trained here)."""
    from dllab.train.reuse import CNNSource
    from dllab.train.variants import Variant, train_variants
    from dllab.experiments.common import describe_data, get_cnn, load_data

    src = cfg.source
    ref = CNNSource("source", src.run, src.variant, "source", src.depth, "source model", "source_model")
    found = ref.find()  # a wrong source.run fails before any data is loaded
    target = load_data(cfg, run)
    src_data = None if found else load_data(cfg, run, src.data, key="source.data")
    if src_data is not None and src_data.shape[0] != target.shape[0]:
        raise DllabError(f"source images have {src_data.shape[0]} channels, target images {target.shape[0]}")
    arch = {"base_channels": src.base_channels, "depth": src.depth, "residual": src.residual}
    source = get_cnn(run, ref, target, lambda: train_variants(cfg, src_data, [Variant("source", "cnn", arch)],
                                                              run.device, run.training_hooks(), src.train,
                                                              src.optim, src.data.augment), found)
    # Where the pixels came from, both datasets (load_data wrote only the last one it loaded).
    run.write_env(data=(f"source: {describe_data(src_data)} | " if src_data else "")
                  + f"target: {describe_data(target)}",
                  data_fallback=bool(target.warnings or (src_data and src_data.warnings)))
    return source, target, src_data


def transfer_metrics(cfg: TransferConfig) -> list[str]:
    """run_transfer's summary keys: the source's accuracies (when trained here, only with a validation split;
    a reused source reports what its run saved, which a run with a validation split does), then the
    classifiers' and the variants', with validation accuracies where the target data has a validation split."""
    target_val = cfg.data.val_fraction > 0
    source = ["source.val_acc", "source.test_acc"] if cfg.source.run or cfg.source.data.val_fraction > 0 else []
    classical = [f"{n}.{split}_acc" for n in dict.fromkeys(cfg.classifiers)
                 for split in ("val", "test")[1 - target_val:]]
    tuned = [f"{v}.{k}" for v in dict.fromkeys(cfg.variants) for k in ("val_acc", "test_acc")[1 - target_val:]]
    return source + classical + tuned


@register(
    "experiment", "lab1.transfer",
    description="Depth-5 CIFAR-10 CNN as a frozen feature extractor (LinearSVC, k-NN) and fine-tuned (head / full "
                "Adam / full SGD / partial) on CIFAR-100, against training from scratch (spec Ex. 2.1)",
    config=TransferConfig, profiles=PROFILES, reference=REFERENCE, notes=NOTES, metrics=transfer_metrics)
def run_transfer(cfg: TransferConfig, run) -> dict[str, float]:
    from dllab.report import transfer as report
    from dllab.train.transfer import check_variants, target_variants
    from dllab.train.variants import train_variants
    from dllab.experiments.common import classical_probe

    check_variants(cfg.variants)
    source, target, src_data = get_source(cfg, run)
    tuned = target_variants(cfg.variants, source, cfg.optim, cfg.sgd, cfg.freeze_blocks)  # fails before training
    spec_setting = cfg.data.name == "cifar100" and not cfg.data.classes
    run.add(*report.note_classes(source, target, spec_setting))
    result = source.blob.get("result") or {}
    summary = {f"source.{k.replace('best_', '')}": result[k] for k in ("val_acc", "best_test_acc") if k in result}
    if cfg.classifiers:
        accs, dim = classical_probe(run, source.model, target, run.device, cfg.train.precision,
                                    cfg.train.eval_batch_size, cfg.classifiers, cfg.knn_k, cfg.seed)
        run.add(*report.classical_table(accs, dim, cfg.knn_k))
        summary.update({f"{n}.{split}_acc": a[split] for n, a in accs.items() for split in ("val", "test") if split in a})
    if "head" in cfg.variants:
        run.add(*report.note_head(source.model.num_features, target.num_classes))
    results = train_variants(cfg, target, tuned, run.device, run.training_hooks())
    for name, res in results.items():
        if "val_acc" in res:
            summary[f"{name}.val_acc"] = res["val_acc"]
        summary[f"{name}.test_acc"] = res.get("best_test_acc", res["test_acc"])
    run.add(*report.variants_report(run.history, results, tuned, src_data),
            *report.accuracy_figure(summary, list(cfg.classifiers) + list(cfg.variants),
                                    f"target: {cfg.data.name}, {target.num_classes} classes",
                                    REFERENCE if spec_setting else None),
            *report.closing_notes(results, summary, target, SPEC_VERDICT))
    return summary
