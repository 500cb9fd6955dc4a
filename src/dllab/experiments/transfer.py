"""Lab 1, Ex. 2.1: the depth-5 CIFAR-10 CNN as a frozen feature extractor and as a starting point.

Source model: the depth-5 ``cnn`` trained on the source dataset. ``--set source.run=RUN_DIR`` reuses a
finished run's best-validation weights (a lab1.cnn-depth run: ``res_d5``, else ``plain_d5``; a previous
lab1.transfer run: its ``source``; ``source.variant`` picks another); otherwise the source is trained here
as variant ``source`` (models/source.pt in this run folder, so the next run can point at it).

On the target dataset:
  - frozen features: ``model.features`` of the target train/val/test images, extracted once in inference
    mode and cached in ``features.npz`` (a resumed run reuses them), standardised, then LinearSVC and
    k-NN (analysis.features.fit_classifiers);
  - fine-tuning from the source weights with a new classifier for the target classes: ``head`` (only
    fc + ReLU + classifier train), ``full_adam``, ``full_sgd``, ``partial`` (stem and the first
    ``freeze_blocks`` blocks frozen), and ``scratch`` (same architecture, random init) as the baseline.

Profiles: ``paper`` is the spec's setting (CIFAR-10 -> CIFAR-100, depth 5, 64 channels, Adam 1e-3; 30
epochs, batch 128 and crop+flip augmentation are dllab's choices where the spec is silent). Offline there
is no CIFAR-100, so ``quick`` transfers from CIFAR-10 classes 0-4 to classes 5-9 with a narrower CNN.
"""
from __future__ import annotations

import copy
import hashlib
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .. import DllabError
from ..config import DataConfig, OptimConfig, RunConfig, TrainConfig
from ..data.images import Batches, ImageData, Split
from ..env import resolve_device
from ..models.cnn import classifier_head
from ..registry import register_experiment
from ..report import plots
from ..train.checkpoint import find_run_model, load_model
from ..train.loop import autocast, fit
from .common import Variant, accuracy_table, build_for, curves_figure, load_data

VARIANTS = ("head", "full_adam", "full_sgd", "partial", "scratch")
FEATURES_FILE = "features.npz"


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
    # 2 CPU cores: CIFAR-10 classes 0-4 -> 5-9 (no CIFAR-100 offline), 16 channels, bf16 autocast,
    # a class-balanced slice of each half, no augmentation (too few epochs to need it); batch 64 on the
    # 4,500 target images for enough steps. Measured: 7-10 min on a shared 2-core CPU (load 5-8).
    "quick": {**_QUICK_DATA, "source.base_channels": 16,
              "source.data.train_limit": 10000, "source.data.test_limit": 1000,
              "source.train.epochs": 3, "source.train.precision": "bf16-mixed",
              "data.train_limit": 5000, "data.test_limit": 1000,
              "train.epochs": 5, "train.batch_size": 64, "train.precision": "bf16-mixed"},
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


# --- the source model ------------------------------------------------------------------------------

def source_prefer(depth: int) -> tuple[str, ...]:
    return ("source", f"res_d{depth}", f"plain_d{depth}")


def load_source(path: Path, depth: int, in_channels: int | None = None) -> tuple[nn.Module, dict]:
    """The saved depth-``depth`` cnn at ``path``; any other architecture is a one-line DllabError."""
    expect = {"name": "cnn", "depth": depth} | ({"in_channels": in_channels} if in_channels is not None else {})
    model, blob = load_model(path, expect=expect)
    if not isinstance(getattr(model, "classifier", None), nn.Linear):
        raise DllabError(f"{path}: the saved cnn has no plain Linear classifier; use a source model, res_d{depth} "
                         f"or plain_d{depth}")
    return model, blob


def _describe_model(spec: dict) -> str:
    kw = spec["kwargs"]
    return (f"cnn depth {kw.get('depth')}, {kw.get('base_channels')} channels, "
            f"{'residual' if kw.get('residual') else 'plain'}")


def reused_source(cfg: TransferConfig) -> tuple[Path, nn.Module, dict] | None:
    """The source model of ``source.run`` (found and checked before any data is loaded), or None."""
    src = cfg.source
    if not src.run:
        if src.variant and src.variant != "source":
            raise DllabError(f"source.variant={src.variant} needs source.run (the run folder that holds it)")
        return None
    path = find_run_model(src.run, src.variant, prefer=source_prefer(src.depth))
    return (path, *load_source(path, src.depth))


def get_source(cfg: TransferConfig, run, target: ImageData, device: torch.device,
               reused: tuple[Path, nn.Module, dict] | None = None) -> tuple[nn.Module, dict, ImageData | None]:
    """(source model with its best-validation weights, its saved blob, the source data if loaded here)."""
    src = cfg.source
    c = target.shape[0]
    if reused is not None:
        path, model, blob = reused
        if blob["spec"]["kwargs"].get("in_channels") != c:
            raise DllabError(f"{path}: the saved model takes {blob['spec']['kwargs'].get('in_channels')}-channel "
                             f"images, the target's have {c}")
        run.note(f"source model: {path} ({_describe_model(blob['spec'])}; trained on {len(blob['classes'])} "
                 f"classes) — reused, not trained here")
        run.write_env(source_model=str(Path(path).resolve()))
        return model, blob, None
    src_data = load_data(cfg, run, src.data, key="source.data")
    if src_data.shape[0] != c:
        raise DllabError(f"source images have {src_data.shape[0]} channels, target images {c}")
    v = Variant("source", "cnn", {"base_channels": src.base_channels, "depth": src.depth, "residual": src.residual})
    model = build_for(src_data, v, cfg.seed)
    run.log(f"[source] cnn {v.kwargs} on {src_data.name} ({src_data.num_classes} classes) — "
            f"{sum(p.numel() for p in model.parameters()):,} parameters")
    fit(model, src_data, src.train, src.optim, run, "source", device, seed=cfg.seed, augment=src.data.augment)
    # Reload what fit saved: the same path (and checks) as a source taken from another run.
    model, blob = load_source(run.path / "models" / "source.pt", src.depth, c)
    return model, blob, src_data


# --- fine-tuning variants --------------------------------------------------------------------------

def transfer_model(source: nn.Module, num_classes: int, variant: str, freeze_blocks: int = 0,
                   seed: int = 0) -> nn.Module:
    """A copy of ``source`` with a new classifier for ``num_classes`` and the variant's parts frozen.

    ``head``: the spec's model defines ``fc = Linear(C, C)`` that its forward never calls; here the head
    is fc + ReLU + classifier and nothing else trains. ``partial``: the stem and the first
    ``freeze_blocks`` blocks are frozen. ``full_*``: everything trains.
    """
    model = copy.deepcopy(source)
    width = model.classifier.in_features
    torch.manual_seed(seed)  # the new head's init does not depend on what ran before (resume-safe)
    spec = copy.deepcopy(getattr(source, "dllab_spec", None) or {"name": "cnn", "kwargs": {}})
    spec["kwargs"]["num_classes"] = num_classes
    hidden = width if variant == "head" else 0
    model.classifier = classifier_head(width, num_classes, hidden)
    spec["kwargs"]["head_hidden"] = hidden  # the architecture, so models/<variant>.pt rebuilds from its spec
    if variant == "partial" and not 0 <= freeze_blocks <= len(model.blocks):
        raise DllabError(f"freeze_blocks={freeze_blocks}: choose 0..{len(model.blocks)} (the source has "
                         f"{len(model.blocks)} blocks)")
    # Frozen = requires_grad off; the training loop also keeps frozen modules (their BatchNorm) in eval mode.
    frozen = tuple(frozen_prefixes(variant, freeze_blocks))
    for name, p in model.named_parameters():
        p.requires_grad = not (frozen and name.startswith(frozen))
    model.dllab_spec = spec
    return model


def frozen_prefixes(variant: str, freeze_blocks: int) -> list[str]:
    """state_dict prefixes that ``variant`` leaves untouched (weights and BatchNorm statistics)."""
    if variant == "head":
        return ["normalize.", "stem.", "blocks."]
    if variant == "partial":
        return ["normalize.", "stem."] + [f"blocks.{i}." for i in range(freeze_blocks)]
    return []


def _optim_name(o: OptimConfig) -> str:
    return f"{o.name} lr {o.lr:g}" + (f" momentum {o.momentum:g}" if o.name == "sgd" else "")


def _variant_specs(cfg: TransferConfig, depth: int) -> dict[str, tuple[str, str, OptimConfig]]:
    """variant -> (init, what trains, optimiser)."""
    k = cfg.freeze_blocks
    return {"head": ("source", "fc + ReLU + classifier", cfg.optim),
            "full_adam": ("source", "all layers", cfg.optim),
            "full_sgd": ("source", "all layers", cfg.sgd),
            "partial": ("source", f"blocks {k + 1}-{depth} + classifier (stem, blocks 1-{k} frozen)", cfg.optim),
            "scratch": ("random", "all layers", cfg.optim)}


# --- frozen features -------------------------------------------------------------------------------

@torch.inference_mode()
def extract_features(model: nn.Module, split: Split, device: torch.device, batch_size: int = 1024,
                     precision: str = "fp32") -> np.ndarray:
    """``model.features`` of every image of ``split`` (eval mode: BatchNorm uses its running statistics)."""
    model.eval().to(device)
    out = []
    for x, _ in Batches(split, batch_size, device):
        with autocast(device, precision):
            f = model.features(x)
        out.append(f.float().cpu())
    return torch.cat(out).numpy() if out else np.zeros((0, 0), np.float32)


def _fingerprint(model: nn.Module, splits: dict[str, Split], precision: str) -> str:
    """Changes when the feature extractor's weights, the images or the precision change."""
    h = hashlib.sha1(precision.encode())
    for name, t in model.state_dict().items():
        if not name.startswith("classifier."):
            h.update(name.encode())
            h.update(t.detach().cpu().contiguous().numpy().tobytes())
    for name, s in splits.items():
        h.update(f"{name}:{len(s)}".encode())
        h.update(s.x.contiguous().numpy().tobytes())
        h.update(s.y.contiguous().numpy().tobytes())
    return h.hexdigest()


def cached_features(run, model: nn.Module, data: ImageData, device: torch.device, batch_size: int = 1024,
                    precision: str = "fp32") -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], bool]:
    """{split: (features, labels)} for train/val/test, from ``features.npz`` when it matches, else extracted
    once and written atomically. Returns (features, reused)."""
    splits = {n: s for n, s in (("train", data.train), ("val", data.val), ("test", data.test)) if s is not None}

    def extract() -> dict[str, np.ndarray]:
        out = {}
        for n, s in splits.items():
            out[f"{n}_x"], out[f"{n}_y"] = extract_features(model, s, device, batch_size, precision), s.y.numpy()
        return out

    arrays, reused = run.cached_arrays(FEATURES_FILE, _fingerprint(model, splits, precision), extract)
    return {n: (arrays[f"{n}_x"], arrays[f"{n}_y"]) for n in splits}, reused


def classical_classifiers(cfg: TransferConfig, run, feats: dict) -> dict[str, dict]:
    """LinearSVC / k-NN (standardised features) -> {name: {"val": acc, "test": acc, "seconds": s}}.

    Cached in results/classical.json with the features' key, so a resumed run does not fit them again."""
    from ..analysis.features import fit_classifiers

    key = f"{cfg.classifiers}|k={cfg.knn_k}|seed={cfg.seed}|" + hashlib.sha1(
        b"".join(np.ascontiguousarray(feats[n][0]).tobytes() for n in sorted(feats))).hexdigest()
    done = run.result("classical")
    if done is not None and done.get("key") == key:
        return done["classifiers"]
    train_x, train_y = feats["train"]
    timings: dict[str, float] = {}
    acc = fit_classifiers(train_x, train_y, {n: feats[n] for n in ("val", "test") if n in feats},
                          names=list(cfg.classifiers), k=cfg.knn_k, seed=cfg.seed, timings=timings)
    out = {name: {**a, "seconds": round(timings.get(name, float("nan")), 2)} for name, a in acc.items()}
    run.save_result("classical", {"key": key, "classifiers": out})
    return out


# --- the experiment --------------------------------------------------------------------------------

def _data_desc(data: ImageData) -> str:
    n_val = len(data.val) if data.val is not None else 0
    classes = data.classes if len(data.classes) <= 10 else f"{len(data.classes)} classes"
    return f"{data.source}; classes {classes}; train {len(data.train)} / val {n_val} / test {len(data.test)}"


def pretraining_verdict(results: dict[str, dict], n_eval: int, split: str = "val") -> str | None:
    """A sentence answering the spec's question from this run's numbers: full_adam (else the best
    pretrained full/partial variant) against scratch, with the sampling noise of ``n_eval`` images."""
    key = f"{split}_acc" if split == "val" else "best_test_acc"
    if "scratch" not in results:
        return None
    pre = [n for n in ("full_adam", "full_sgd", "partial", "head") if n in results]
    if not pre:
        return None
    name = pre[0]
    a, b = results[name].get(key), results["scratch"].get(key)
    if a is None or b is None:
        return None
    diff = a - b
    # 95% band of the difference of two accuracies measured on the same n images (independent approx.).
    noise = 1.96 * math.sqrt(max(a * (1 - a) + b * (1 - b), 1e-12) / max(n_eval, 1))
    if diff > noise:
        verdict = "Yes"
    elif diff < -noise:
        verdict = "No, it hurts"
    else:
        verdict = "Not measurably"
    test = ""
    if split == "val" and "best_test_acc" in results[name] and "best_test_acc" in results["scratch"]:
        test = (f"; on the test split {results[name]['best_test_acc']:.4f} against "
                f"{results['scratch']['best_test_acc']:.4f}")
    return (f"Does pretraining help here? {verdict}: {name} (fine-tuned from the source weights) reaches "
            f"{split} accuracy {a:.4f} against {b:.4f} from scratch ({100 * diff:+.1f} points; differences within "
            f"±{100 * noise:.1f} points are sampling noise on {n_eval} {split} images){test}. The spec found "
            f"55.48% vs 55.41% on CIFAR-100: no real gain.")


@register_experiment(
    "lab1.transfer", "Depth-5 CIFAR-10 CNN as a frozen feature extractor (LinearSVC, k-NN) and fine-tuned "
                     "(head / full Adam / full SGD / partial) on CIFAR-100, against training from scratch "
                     "(spec Ex. 2.1)", TransferConfig,
    profiles=PROFILES, reference=REFERENCE, notes=NOTES)
def run_transfer(cfg: TransferConfig, run) -> dict[str, float]:
    from ..analysis.features import CLASSIFIERS

    for key, given, valid in (("variants", cfg.variants, VARIANTS), ("classifiers", cfg.classifiers, CLASSIFIERS)):
        unknown = [v for v in given if v not in valid]
        if unknown:
            raise DllabError(f"{key}: unknown '{unknown[0]}'; choose from {', '.join(valid)}")
    device = resolve_device(cfg.device)
    reused = reused_source(cfg)  # a wrong source.run fails before any data is loaded
    target = load_data(cfg, run)
    source, blob, src_data = get_source(cfg, run, target, device, reused)
    spec = blob["spec"]
    depth = len(source.blocks)
    if "partial" in cfg.variants and not 0 <= cfg.freeze_blocks <= depth:
        raise DllabError(f"freeze_blocks={cfg.freeze_blocks}: choose 0..{depth} (the source has {depth} blocks)")

    # Where the pixels came from, both datasets (load_data wrote only the last one it loaded).
    run.write_env(data=(f"source: {_data_desc(src_data)} | " if src_data else "") + f"target: {_data_desc(target)}",
                  data_fallback=bool(target.warnings or (src_data and src_data.warnings)))
    src_classes = list(blob.get("classes") or [])
    shared = [c for c in target.classes if c in src_classes]
    if cfg.data.name != "cifar100" or cfg.data.classes:
        run.note(f"the target is not CIFAR-100 (not available offline): source = {len(src_classes)} classes "
                 f"({', '.join(src_classes[:10])}), target = {cfg.data.name} classes {', '.join(target.classes[:10])}"
                 f"{'...' if len(target.classes) > 10 else ''}; the spec's numbers (CIFAR-100, 100 classes) are "
                 "not comparable with this run's")
    if shared:
        run.note(f"the source model was trained on {len(shared)} of the target's classes "
                 f"({', '.join(shared[:10])}{'...' if len(shared) > 10 else ''}): this is not a clean transfer")

    summary: dict[str, float] = {}
    src_result = blob.get("result") or {}
    for k in ("val_acc", "best_test_acc"):
        if k in src_result:
            summary[f"source.{k.replace('best_', '')}"] = src_result[k]

    # Frozen features + classical classifiers.
    if cfg.classifiers:
        feats, reused = cached_features(run, source, target, device, cfg.train.eval_batch_size, cfg.train.precision)
        dim = feats["train"][0].shape[1]
        run.log(f"features: {dim}-dim, {'reused from' if reused else 'extracted to'} {FEATURES_FILE}")
        classical = classical_classifiers(cfg, run, feats)
        rows = []
        for name, acc in classical.items():
            for split in ("val", "test"):
                if split in acc:
                    summary[f"{name}.{split}_acc"] = acc[split]
            label = {"svm": "LinearSVC (C=1)", "knn": f"k-NN (k={cfg.knn_k})", "logreg": "logistic regression"}
            rows.append([name, label.get(name, name), acc.get("val", float("nan")), acc.get("test", float("nan")),
                         f"{acc['seconds']:.1f}"])
        run.add_table(f"Classical classifiers on the frozen {dim}-dim source features (standardised)",
                      ["classifier", "model", "val acc", "test acc", "seconds"], rows)

    # Fine-tuning variants and the scratch baseline.
    specs = _variant_specs(cfg, depth)
    width = source.classifier.in_features
    if "head" in cfg.variants:
        run.note(f"head: the spec's model defines fc = Linear({width}, {width}) that its forward pass never uses; "
                 f"dllab's head is fc + ReLU + a new classifier Linear({width}, {target.num_classes}), and only "
                 "those two layers train")
    results: dict[str, dict] = {}
    variants: list[Variant] = []
    for name in cfg.variants:
        init, trains, optim = specs[name]
        if name == "scratch":
            v = Variant(name, "cnn", {k: spec["kwargs"][k] for k in ("base_channels", "depth", "residual")
                                      if k in spec["kwargs"]})
            model = build_for(target, v, cfg.seed)
        else:
            model = transfer_model(source, target.num_classes, name, cfg.freeze_blocks, cfg.seed)
            v = Variant(name, "cnn")
        n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
        v.meta = {"init": init, "trains": trains, "optimizer": _optim_name(optim), "trainable params": f"{n_train:,}"}
        variants.append(v)
        run.log(f"[{name}] init {init}, trains {trains}, {_optim_name(optim)} — {n_train:,} trainable parameters")
        res = fit(model, target, cfg.train, optim, run, name, device, seed=cfg.seed, augment=cfg.data.augment)
        res["params"] = sum(p.numel() for p in model.parameters())
        results[name] = res
        if "val_acc" in res:
            summary[f"{name}.val_acc"] = res["val_acc"]
        summary[f"{name}.test_acc"] = res.get("best_test_acc", res["test_acc"])

    if variants:
        accuracy_table(run, results, variants, "Fine-tuning variants (target dataset)")
        curves_figure(run, [v.name for v in variants], "curves.png",
                      "Fine-tuning variants and scratch on the target: loss and accuracy per epoch (dashed: validation)")
    if src_data is not None:
        curves_figure(run, ["source"], "curves_source.png",
                      f"Source model on {src_data.name} ({src_data.num_classes} classes): loss and accuracy per epoch")

    # All methods side by side.
    methods = [n for n in list(cfg.classifiers) + list(cfg.variants) if f"{n}.test_acc" in summary]
    if methods:
        series = {"val": [summary.get(f"{n}.val_acc", float("nan")) for n in methods],
                  "test": [summary[f"{n}.test_acc"] for n in methods]}
        if cfg.data.name == "cifar100" and not cfg.data.classes:
            series["spec"] = [REFERENCE.get(f"{n}.val_acc", float("nan")) for n in methods]
        run.save_figure(plots.bar_chart(methods, series, "accuracy", f"target: {cfg.data.name}, "
                                        f"{target.num_classes} classes"), "accuracy.png",
                        "Accuracy on the target per method: classical classifiers on frozen features, fine-tuning "
                        "variants, scratch (val = best epoch, test = the best-val weights)")

    n_eval = len(target.val) if target.val is not None else len(target.test)
    sentence = pretraining_verdict(results, n_eval, "val" if target.val is not None else "test")
    if sentence:
        run.note(sentence)
    if "svm.val_acc" in summary and "full_adam.val_acc" in summary:
        run.note(f"frozen features vs fine-tuning: LinearSVC {summary['svm.val_acc']:.4f}"
                 + (f", k-NN {summary['knn.val_acc']:.4f}" if "knn.val_acc" in summary else "")
                 + (f", head {summary['head.val_acc']:.4f}" if "head.val_acc" in summary else "")
                 + f" against full_adam {summary['full_adam.val_acc']:.4f} (val accuracy)")
    run.note("test_acc is measured with each variant's best-validation weights (the weights saved in models/)")
    return summary

