"""Lab 1, Ex. 2.1: the depth-5 CIFAR-10 CNN as a frozen feature extractor and as a starting point.

Source model (train.reuse): ``--set source.run=RUN_DIR`` reuses a finished run's depth-5 cnn (a
lab1.cnn-depth run's ``res_d5``, else ``plain_d5``; a lab1.transfer run's ``source``; or ``source.variant``),
else it is trained here as variant ``source`` (models/source.pt, so the next run can point at it).
On the target dataset: LinearSVC and k-NN on the frozen, cached source features (analysis.image_features,
analysis.features); fine-tuning with a new classifier: ``head`` (only fc + ReLU + classifier train),
``full_adam``, ``full_sgd``, ``partial`` (stem and the first ``freeze_blocks`` blocks frozen); and
``scratch`` (same architecture, random init) as the baseline.

Profiles: ``paper`` is the spec's setting (CIFAR-10 -> CIFAR-100, depth 5, 64 channels, Adam 1e-3; 30
epochs, batch 128 and crop+flip augmentation are dllab's choices where the spec is silent). Offline there
is no CIFAR-100, so ``quick`` transfers from CIFAR-10 classes 0-4 to classes 5-9 with a narrower CNN.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .. import DllabError
from ..analysis.features import CLASSIFIERS, cached_classifiers
from ..analysis.significance import pretraining_verdict
from ..config import DataConfig, OptimConfig, RunConfig, TrainConfig
from ..registry import register_experiment

# Registering must not import torch (``dllab list`` stays fast): functions import what they use.
if TYPE_CHECKING:
    from torch import nn

    from ..data.images import ImageData
    from ..train.reuse import SavedCNN
    from .common import Variant

VARIANTS = ("head", "full_adam", "full_sgd", "partial", "scratch")


# --- config ----------------------------------------------------------------------------------------

@dataclass
class SourceConfig:
    """Where the pretrained CNN comes from: a finished run (``run``), else trained here on ``data``."""
    run: str = ""                       # finished run folder whose saved model is the source
    variant: str = ""                   # model name in that run; "" -> source, res_d<depth>, plain_d<depth>
    depth: int = 5                      # the spec's depth-5 CNN; a loaded model must have this depth
    base_channels: int = 64             # when trained here (a loaded model keeps its own width)
    residual: bool = True               # when trained here
    data: DataConfig = field(default_factory=lambda: DataConfig(name="cifar10", val_fraction=0.1, augment=True))
    train: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=30, batch_size=128))
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(name="adam", lr=1e-3))


@dataclass
class TransferConfig(RunConfig):
    source: SourceConfig = field(default_factory=SourceConfig)
    # The target dataset and the fine-tuning schedule shared by every variant.
    data: DataConfig = field(default_factory=lambda: DataConfig(name="cifar100", val_fraction=0.1, augment=True))
    train: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=30, batch_size=128))
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(name="adam", lr=1e-3))  # head/full_adam/partial/scratch
    sgd: OptimConfig = field(default_factory=lambda: OptimConfig(name="sgd", lr=1e-2, momentum=0.9))  # full_sgd
    variants: list[str] = field(default_factory=lambda: list(VARIANTS))
    freeze_blocks: int = 2              # partial: the stem and this many blocks stay frozen
    classifiers: list[str] = field(default_factory=lambda: ["svm", "knn"])
    knn_k: int = 5


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


# --- fine-tuning variants --------------------------------------------------------------------------

def frozen_prefixes(variant: str, freeze_blocks: int) -> list[str]:
    """state_dict prefixes that ``variant`` leaves untouched (weights and BatchNorm statistics)."""
    if variant == "head":
        return ["normalize.", "stem.", "blocks."]
    if variant == "partial":
        return ["normalize.", "stem."] + [f"blocks.{i}." for i in range(freeze_blocks)]
    return []


def fine_tune_variant(name: str, source: nn.Module, freeze_blocks: int = 0) -> Variant:
    """``name`` (head, full_*, partial): a copy of ``source`` with a new classifier for the target's classes,
    the variant's parts frozen. The spec's model defines ``fc = Linear(C, C)`` that its forward never calls;
    here ``head`` trains fc + ReLU + classifier and nothing else."""
    from .common import Variant

    depth = len(source.blocks)
    if name == "partial" and not 0 <= freeze_blocks <= depth:
        raise DllabError(f"freeze_blocks={freeze_blocks}: choose 0..{depth} (the source has {depth} blocks)")
    return Variant(name, "cnn", {"hidden": source.num_features if name == "head" else 0}, start=source,
                   frozen=tuple(frozen_prefixes(name, freeze_blocks)))


def target_variants(cfg: TransferConfig, source: SavedCNN) -> list[Variant]:
    """``cfg.variants`` with their optimiser and report columns; ``scratch`` is the source's architecture
    with random weights."""
    from .common import Variant

    k, depth = cfg.freeze_blocks, cfg.source.depth
    trains = {"head": "fc + ReLU + classifier",
              "partial": f"blocks {k + 1}-{depth} + classifier (stem, blocks 1-{k} frozen)"}
    out = []
    for name in cfg.variants:
        v = Variant(name, "cnn", source.arch) if name == "scratch" else fine_tune_variant(name, source.model, k)
        o = v.optim = cfg.sgd if name == "full_sgd" else cfg.optim
        v.meta = {"init": "random" if name == "scratch" else "source", "trains": trains.get(name, "all layers"),
                  "optimizer": f"{o.name} lr {o.lr:g}" + (f" momentum {o.momentum:g}" if o.name == "sgd" else "")}
        out.append(v)
    return out


# --- the experiment --------------------------------------------------------------------------------

def get_source(cfg: TransferConfig, run, device) -> tuple[SavedCNN, ImageData, ImageData | None]:
    """(the source model, the target data, the source data when the source is trained here)."""
    from ..train.reuse import CNNSource
    from .common import Variant, describe_data, load_data, train_variants

    src = cfg.source
    ref = CNNSource("source", src.run, src.variant, "source", src.depth, "source model", "source_model")
    found = ref.find()  # a wrong source.run fails before any data is loaded
    target = load_data(cfg, run)
    src_data = None if found else load_data(cfg, run, src.data, key="source.data")
    if src_data is not None and src_data.shape[0] != target.shape[0]:
        raise DllabError(f"source images have {src_data.shape[0]} channels, target images {target.shape[0]}")
    arch = {"base_channels": src.base_channels, "depth": src.depth, "residual": src.residual}
    source = ref.get(run, target, lambda: train_variants(cfg, run, src_data, [Variant("source", "cnn", arch)],
                                                         src.train, src.optim, src.data.augment), found)
    # Where the pixels came from, both datasets (load_data wrote only the last one it loaded).
    run.write_env(data=(f"source: {describe_data(src_data)} | " if src_data else "")
                  + f"target: {describe_data(target)}",
                  data_fallback=bool(target.warnings or (src_data and src_data.warnings)))
    return source, target, src_data


def note_classes(cfg: TransferConfig, run, source: SavedCNN, target: ImageData) -> None:
    def show(classes):
        return ", ".join(classes[:10]) + ("..." if len(classes) > 10 else "")

    if cfg.data.name != "cifar100" or cfg.data.classes:
        run.note(f"the target is not CIFAR-100 (not available offline): source = {len(source.classes)} classes "
                 f"({', '.join(source.classes[:10])}), target = {cfg.data.name} classes {show(target.classes)}; "
                 "the spec's numbers (CIFAR-100, 100 classes) are not comparable with this run's")
    shared = [c for c in target.classes if c in source.classes]
    if shared:
        run.note(f"the source model was trained on {len(shared)} of the target's classes ({show(shared)}): "
                 "this is not a clean transfer")


def classical(cfg: TransferConfig, run, source: SavedCNN, target: ImageData, device) -> dict[str, float]:
    """LinearSVC / k-NN on the frozen source features: summary keys and a report table."""
    from ..analysis.image_features import FEATURES_FILE, cached_features
    from ..train.precision import log_precision, model_kind, resolve_precision

    prec = resolve_precision(cfg.train.precision, device, model_kind(source.model))
    log_precision(run, prec, "features")
    feats, reused = cached_features(run, source.model, target, device, cfg.train.eval_batch_size, prec.name)
    dim = feats["train"][0].shape[1]
    run.log(f"features: {dim}-dim, {'reused from' if reused else 'extracted to'} {FEATURES_FILE}")
    accs = cached_classifiers(run, feats, cfg.classifiers, cfg.knn_k, cfg.seed)
    label = {"svm": "LinearSVC (C=1)", "knn": f"k-NN (k={cfg.knn_k})", "logreg": "logistic regression"}
    run.add_table(f"Classical classifiers on the frozen {dim}-dim source features (standardised)",
                  ["classifier", "model", "val acc", "test acc", "seconds"],
                  [[n, label.get(n, n), a.get("val", float("nan")), a.get("test", float("nan")),
                    f"{a['seconds']:.1f}"] for n, a in accs.items()])
    return {f"{n}.{split}_acc": a[split] for n, a in accs.items() for split in ("val", "test") if split in a}


def accuracy_figure(cfg: TransferConfig, run, summary: dict[str, float], num_classes: int) -> None:
    """All methods side by side: classical classifiers, fine-tuning variants, scratch (and the spec's)."""
    from ..report import plots

    methods = [n for n in list(cfg.classifiers) + list(cfg.variants) if f"{n}.test_acc" in summary]
    if not methods:
        return
    series = {"val": [summary.get(f"{n}.val_acc", float("nan")) for n in methods],
              "test": [summary[f"{n}.test_acc"] for n in methods]}
    if cfg.data.name == "cifar100" and not cfg.data.classes:
        series["spec"] = [REFERENCE.get(f"{n}.val_acc", float("nan")) for n in methods]
    run.save_figure(plots.bar_chart(methods, series, "accuracy", f"target: {cfg.data.name}, {num_classes} classes"),
                    "accuracy.png", "Accuracy on the target per method: classical classifiers on frozen features, "
                    "fine-tuning variants, scratch (val = best epoch, test = the best-val weights)")


@register_experiment(
    "lab1.transfer", "Depth-5 CIFAR-10 CNN as a frozen feature extractor (LinearSVC, k-NN) and fine-tuned "
                     "(head / full Adam / full SGD / partial) on CIFAR-100, against training from scratch "
                     "(spec Ex. 2.1)", TransferConfig,
    profiles=PROFILES, reference=REFERENCE, notes=NOTES)
def run_transfer(cfg: TransferConfig, run) -> dict[str, float]:
    from .common import accuracy_table, curves_figure, train_variants

    for key, given, valid in (("variants", cfg.variants, VARIANTS), ("classifiers", cfg.classifiers, CLASSIFIERS)):
        unknown = [v for v in given if v not in valid]
        if unknown:
            raise DllabError(f"{key}: unknown '{unknown[0]}'; choose from {', '.join(valid)}")
    device = run.device
    source, target, src_data = get_source(cfg, run, device)
    tuned = target_variants(cfg, source)  # a wrong freeze_blocks fails before anything trains
    note_classes(cfg, run, source, target)
    result = source.blob.get("result") or {}
    summary = {f"source.{k.replace('best_', '')}": result[k] for k in ("val_acc", "best_test_acc") if k in result}
    if cfg.classifiers:
        summary.update(classical(cfg, run, source, target, device))
    if "head" in cfg.variants:
        w = source.model.num_features
        run.note(f"head: the spec's model defines fc = Linear({w}, {w}) that its forward pass never uses; dllab's "
                 f"head is fc + ReLU + a new classifier Linear({w}, {target.num_classes}), and only those two "
                 "layers train")
    results = train_variants(cfg, run, target, tuned)
    for name, res in results.items():
        if "val_acc" in res:
            summary[f"{name}.val_acc"] = res["val_acc"]
        summary[f"{name}.test_acc"] = res.get("best_test_acc", res["test_acc"])
    if tuned:
        accuracy_table(run, results, tuned, "Fine-tuning variants (target dataset)")
        curves_figure(run, [v.name for v in tuned], "curves.png",
                      "Fine-tuning variants and scratch on the target: loss and accuracy per epoch (dashed: validation)")
    if src_data is not None:
        curves_figure(run, ["source"], "curves_source.png",
                      f"Source model on {src_data.name} ({src_data.num_classes} classes): loss and accuracy per epoch")
    accuracy_figure(cfg, run, summary, target.num_classes)
    n_eval = len(target.val) if target.val is not None else len(target.test)
    if sentence := pretraining_verdict(results, n_eval, "val" if target.val is not None else "test"):
        run.note(sentence)
    if "svm.val_acc" in summary and "full_adam.val_acc" in summary:
        run.note(f"frozen features vs fine-tuning: LinearSVC {summary['svm.val_acc']:.4f}"
                 + (f", k-NN {summary['knn.val_acc']:.4f}" if "knn.val_acc" in summary else "")
                 + (f", head {summary['head.val_acc']:.4f}" if "head.val_acc" in summary else "")
                 + f" against full_adam {summary['full_adam.val_acc']:.4f} (val accuracy)")
    run.note("test_acc is measured with each variant's best-validation weights (the weights saved in models/)")
    return summary
