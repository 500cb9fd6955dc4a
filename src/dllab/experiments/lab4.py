"""Lab 4, robustness: OOD detection, FGSM/PGD attacks, FGSM adversarial training, ODIN (spec Lab 4).

Thin on purpose: configs, profiles and the spec's numbers, then calls into analysis/ood (detectors,
metrics, OOD sets), analysis/attacks, train/ and report/plots.

The classifier is the depth-5 ``cnn``. It is either reused from a finished run (``--set model.run=DIR``,
optionally ``model.variant=NAME``; a lab1.cnn-depth run serves its res_d5, else plain_d5, a Lab 4 run its
``standard``) or trained in this run as variant ``standard`` (saved as models/standard.pt, so the next
Lab 4 run can reuse it). A reused model must be a depth-5 cnn trained on the same classes as the ID data.
Detectors, attacks and the clean accuracy beside them run in fp32 on images in [0, 1]; epsilons are in
pixel units (tables also give them as k/255).

In-distribution (ID) data: ``data`` (CIFAR-10 or a class subset). OOD sets: ``ood.names``, a list of
names from ``analysis.ood.datasets.OOD_SETS`` (heldout, cifar100-20, mnist, noise).
Summary keys: ``<detector>.<metric>`` with one OOD set; with several, each key is prefixed by the OOD
set's name: ``heldout.msp.auroc``, ``mnist.energy.fpr95`` (lab4.adv-train puts the model first:
``adv.mnist.msp.auroc``). Metrics: auroc, aupr_in, aupr_out, fpr95 (see analysis.ood.metrics).

Profiles: ``paper`` = the spec (depth-5 cnn, 64 channels, all of CIFAR-10, Adam 1e-3; dllab's choices
where the spec is silent: 30 epochs, batch 128, crop+flip augmentation as in lab1, 10% validation
split, OOD = cifar100-20). ``quick`` = minutes on 2 CPU cores: ID = CIFAR-10 classes 0-5 (airplane ..
dog) in all four experiments, so ``heldout`` (classes 6-9) exists and one quick model can be reused by
the others; 16 channels, 12,000 training images, 5 epochs, bf16 autocast (details at _QUICK). ``smoke`` =
seconds, for tests (tiny subsets, 8 channels, 1 epoch, small grids).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from .. import DllabError
from ..analysis.robustness import (DETECTOR_NAMES, check_detectors, metric_keys, odin_search, ood_evaluation,
                                   save_arrays, score_arrays, split_mask)
from ..config import DataConfig, OptimConfig, RunConfig, TrainConfig
from ..data.images import ImageData, balanced_subset, data_root
from ..env import resolve_device
from ..registry import register_experiment
from ..report import plots
from ..train.loop import evaluate
from ..train.reuse import CNNSource, train_and_reload
from .common import Variant, curves_figure, load_data, train_variants

QUICK_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog"]   # CIFAR-10 classes 0-5


# --- configs ---------------------------------------------------------------------------------------

@dataclass
class ModelConfig:
    run: str = ""                 # reuse the cnn of this finished run folder ("" = train it in this run)
    variant: str = ""             # model of that run ("" = its only one, else res_d5, plain_d5, standard)
    base_channels: int = 64       # when trained here (depth is always 5)
    residual: bool = True


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


@dataclass
class Lab4Config(RunConfig):
    data: DataConfig = field(default_factory=lambda: DataConfig(name="cifar10", val_fraction=0.1, augment=True))
    train: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=30, batch_size=128))
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(name="adam", lr=1e-3))
    model: ModelConfig = field(default_factory=ModelConfig)
    analysis_batch_size: int = 256   # images per batch for detectors, attacks and the clean accuracy


@dataclass
class OODExpConfig(Lab4Config):
    ood: OODConfig = field(default_factory=OODConfig)
    odin: OdinSetting = field(default_factory=OdinSetting)
    autoencoder: AutoencoderConfig = field(default_factory=AutoencoderConfig)


@dataclass
class FGSMConfig(Lab4Config):
    attack: AttackConfig = field(default_factory=AttackConfig)


@dataclass
class AdvTrainConfig(OODExpConfig):
    attack: AttackConfig = field(default_factory=AttackConfig)
    adv: AdvConfig = field(default_factory=AdvConfig)


@dataclass
class ODINConfig(Lab4Config):
    ood: OODConfig = field(default_factory=OODConfig)
    odin: OdinGridConfig = field(default_factory=OdinGridConfig)


# Shared by the four experiments' profiles (then each adds its own).
_PAPER = {"data.allow_fallback": False}
# quick: 16 channels (16x fewer FLOPs than 64), 12,000 of the 30,000 training images of the 6 classes, 5 epochs
# of batch 64 with Adam 2e-3 + cosine decay (more, larger steps than the paper's 1e-3: a 5-epoch model needs
# them; ~65% validation accuracy on 6 classes), bf16 autocast (~2x faster on this CPU), no augmentation.
_QUICK = {"model.base_channels": 16, "data.classes": QUICK_CLASSES, "data.train_limit": 12000,
          "data.test_limit": 1200, "data.augment": False, "train.epochs": 5, "train.batch_size": 64,
          "train.precision": "bf16-mixed", "optim.lr": 2e-3, "optim.schedule": "cosine",
          "ood.names": ["heldout", "mnist"], "ood.limit": 1200,
          "autoencoder.epochs": 3, "autoencoder.train_limit": 2000, "autoencoder.batch_size": 32}
_SMOKE = {"model.base_channels": 8, "data.classes": QUICK_CLASSES, "data.train_limit": 120,
          "data.test_limit": 60, "data.augment": False, "train.epochs": 1, "train.batch_size": 32,
          "analysis_batch_size": 128, "ood.names": ["heldout", "mnist"], "ood.limit": 60,
          "autoencoder.epochs": 1, "autoencoder.train_limit": 60, "autoencoder.batch_size": 32}


def _profile(base: dict, cls, **extra) -> dict:
    """``base`` plus ``extra`` (keys with '__' for '.'), keeping only keys the config class has."""
    out = {**base, **{k.replace("__", "."): v for k, v in extra.items()}}
    fields = cls.__dataclass_fields__
    return {k: v for k, v in out.items() if k.split(".")[0] in fields}


def _eps_key(eps: float) -> str:
    return f"{eps:g}"


def _k255(eps: float) -> str:
    return f"{eps * 255:.3g}/255"


# --- shared steps ----------------------------------------------------------------------------------

def _arch(cfg) -> dict:
    return {"depth": 5, "base_channels": cfg.model.base_channels, "residual": cfg.model.residual}


def get_classifier(cfg, run, data: ImageData, name: str = "standard") -> tuple[torch.nn.Module, dict]:
    """The depth-5 cnn: reused from ``cfg.model.run`` or trained here as variant ``name`` (train.reuse).

    Returns (model on the run's device in eval mode, info: source, arch kwargs, training result or None).
    """
    device = resolve_device(cfg.device)
    ref = CNNSource("model", cfg.model.run, cfg.model.variant, name, 5, "classifier", f"classifier_{name}",
                    same_classes=True)
    saved = ref.get(run, data, lambda: train_variants(cfg, run, data, [Variant(name, "cnn", _arch(cfg))],
                                                      device=device))
    return saved.model.to(device).eval(), {"source": ref.origin(saved), "arch": saved.arch,
                                           "result": saved.blob.get("result")}


def load_id_data(cfg, run) -> ImageData:
    """The in-distribution data; outside ``paper``, with a note on why the spec's numbers are a trend to
    compare with, not a target."""
    data = load_data(cfg, run)
    if cfg.profile != "paper":
        run.note(f"{cfg.profile} profile: {len(data.classes)} ID classes (chance {1 / len(data.classes):.3f}), "
                 f"{len(data.train)} training images, {cfg.train.epochs} epochs; the spec's numbers are for the "
                 "paper setting (all 10 CIFAR-10 classes, 64-channel cnn, 30 epochs): compare trends, not values")
    return data


def clean_accuracy(cfg, model, data: ImageData) -> float:
    """fp32 test accuracy, batched like the attacks (so it equals their eps = 0 accuracy exactly)."""
    return evaluate(model, data.test, resolve_device(cfg.device), cfg.analysis_batch_size, "fp32")[1]


def build_ood_sets(cfg, run, data: ImageData):
    from ..analysis.ood.datasets import build_ood_set

    if not cfg.ood.names:
        raise DllabError("ood.names is empty; name at least one OOD set, e.g. --set ood.names=[heldout,mnist]")
    root = data_root(cfg.ood.root or cfg.data.root)
    allow = cfg.data.allow_fallback and cfg.profile != "paper"
    sets = []
    for name in dict.fromkeys(cfg.ood.names):
        s = build_ood_set(name, data, root, limit=cfg.ood.limit, seed=0, allow_fallback=allow)
        for w in s.warnings:
            run.note(f"OOD set {name}: {w}")
        run.check_source(f"ood.{name}", s.source)
        run.log(f"OOD set {name}: {s.source}; {len(s)} images")
        sets.append(s)
    run.write_env(ood={s.name: f"{s.source}; {len(s)} images" for s in sets})
    return sets


def train_decoder(cfg, run, model, data: ImageData, tag: str = ""):
    """The autoencoder detector's decoder on the frozen cnn trunk, trained on ID training images."""
    from ..analysis.ood.autoencoder import train_autoencoder

    a = cfg.autoencoder
    x = balanced_subset(data.train, a.train_limit, torch.Generator().manual_seed(cfg.seed)).x
    flags = [p.requires_grad for p in model.parameters()]
    label = f"[{tag or 'autoencoder'}]"
    decoder, history = train_autoencoder(
        model, x, epochs=a.epochs, lr=a.lr, batch_size=a.batch_size, hidden=a.hidden,
        generator=torch.Generator().manual_seed(cfg.seed),
        progress=lambda e, loss: run.log(f"{label} decoder epoch {e}/{a.epochs} reconstruction MSE {loss:.5f}"))
    for p, f in zip(model.parameters(), flags):   # train_autoencoder leaves the encoder frozen
        p.requires_grad_(f)
    run.note(f"autoencoder detector{' (' + tag + ')' if tag else ''}: decoder trained {a.epochs} epochs on "
             f"{len(x)} ID training images (encoder = the cnn's frozen trunk); final train MSE "
             f"{history[-1] if history else float('nan'):.5f}")
    return decoder


def evaluate_ood(cfg, run, model, data: ImageData, ood_sets, tag: str = ""):
    """Every detector on the ID test split vs every OOD set (the decoder first, when the autoencoder is on).

    Returns (scores {"id" | ood: {"logits" | detector: tensor}, "_decoder": ...}, metrics {ood: {detector: {}}}).
    """
    detectors = check_detectors(cfg.ood.detectors)
    decoder = train_decoder(cfg, run, model, data, tag) if "autoencoder" in detectors else None
    scores, metrics = ood_evaluation(model, data.test.x, {s.name: s.x for s in ood_sets}, detectors,
                                     cfg.analysis_batch_size, (cfg.odin.temperature, cfg.odin.epsilon), decoder)
    for ood, per_det in metrics.items():
        run.log(f"{tag + ' ' if tag else ''}{ood}: "
                + ", ".join(f"{d} AUROC {m['auroc']:.3f}" for d, m in per_det.items()))
    if decoder is not None:
        scores["_decoder"] = decoder   # for the example figure; not saved
    return scores, metrics


def save_scores(run, file: str, scores: dict, data: ImageData, detectors: list[str]) -> None:
    """``file`` (scores.npz): every image's logits and detector scores; see analysis.robustness.score_arrays."""
    save_arrays(run.path / file, score_arrays(scores, data.classes, data.test.y, detectors))


def _metrics_table(run, metrics: dict, title: str, model: str = "") -> None:
    rows = [[*([model] if model else []), ood, d, m["auroc"], m["aupr_in"], m["aupr_out"], m["fpr95"]]
            for ood, per_det in metrics.items() for d, m in per_det.items()]
    run.add_table(title, [*(["model"] if model else []), "OOD set", "detector", "AUROC", "AUPR-in", "AUPR-out",
                          "FPR@95TPR"], rows)


def _detector_label(cfg, d: str) -> str:
    if d == "odin":
        return f"ODIN (T={cfg.odin.temperature:g}, eps={cfg.odin.epsilon:g})"
    return {"msp": "MSP", "max_logit": "max logit", "energy": "energy", "autoencoder": "autoencoder MSE"}[d]


def _histograms(cfg, scores: dict) -> dict[str, dict[str, np.ndarray]]:
    groups = [g for g in scores if not g.startswith("_")]
    name = {g: ("ID test" if g == "id" else f"OOD {g}") for g in groups}
    panels = {"max logit": {name[g]: scores[g]["logits"].amax(1).numpy() for g in groups},
              "max softmax probability": {name[g]: torch.softmax(scores[g]["logits"], 1).amax(1).numpy()
                                          for g in groups}}
    for d in cfg.ood.detectors:
        if d in ("energy", "odin", "autoencoder"):
            panels[f"{_detector_label(cfg, d)} score"] = {name[g]: scores[g][d].numpy() for g in groups}
    return panels


def _roc_figures(cfg, run, scores: dict, metrics: dict, file_prefix: str = "", caption_prefix: str = "") -> None:
    from ..analysis.ood.metrics import roc_pr_curves

    for ood, per_det in metrics.items():
        curves = {}
        for d, m in per_det.items():
            c = roc_pr_curves(scores["id"][d], scores[ood][d])
            curves[_detector_label(cfg, d)] = {**c, "auroc": m["auroc"], "aupr": m["aupr_out"]}
        run.save_figure(plots.roc_pr_figure(curves, f"{caption_prefix}ID test vs OOD {ood}"),
                        f"{file_prefix}roc_pr_{ood}.png",
                        f"{caption_prefix}ROC and precision-recall curves (OOD = positive) of every detector, "
                        f"ID test vs {ood}")


def _examples_figure(run, model, data: ImageData, ood_sets, scores: dict, n: int = 8) -> None:
    """A few ID and OOD images with their MSP, and the autoencoder's reconstructions when it ran."""
    from ..analysis.ood.autoencoder import reconstruct

    decoder = scores.get("_decoder")
    rows, captions = {}, {}
    for g, x in [("id", data.test.x), *[(s.name, s.x) for s in ood_sets]]:
        idx = torch.linspace(0, len(x) - 1, min(n, len(x))).long()
        label = "ID" if g == "id" else g
        rows[label] = x[idx]
        msp = torch.softmax(scores[g]["logits"][idx], 1).amax(1)
        captions[label] = [f"p={p:.2f}" for p in msp.tolist()]
        if decoder is not None:
            rows[f"{label} recon."] = reconstruct(model, decoder, x[idx])
            captions[f"{label} recon."] = [f"mse={v:.4f}" for v in scores[g]["autoencoder"][idx].tolist()]
    run.save_figure(plots.image_grid(rows, captions, title="ID and OOD examples (p = max softmax probability)"),
                    "examples.png", "ID and OOD test images with the classifier's max softmax probability"
                    + (", and their autoencoder reconstructions with the reconstruction error" if decoder else ""))


# --- Ex. 1.1-1.2: OOD detection --------------------------------------------------------------------

@register_experiment(
    "lab4.ood", "OOD detection with the depth-5 CNN: MSP, max logit, energy, ODIN, autoencoder; histograms, "
                "ROC/PR curves, AUROC/AUPR/FPR95 (spec Ex. 1.1-1.2)", OODExpConfig,
    profiles={"paper": _profile(_PAPER, OODExpConfig),
              "quick": _profile(_QUICK, OODExpConfig),
              "smoke": _profile(_SMOKE, OODExpConfig)},
    notes="CIFAR-10 is the in-distribution set and 20 CIFAR-100 classes that overlap no CIFAR-10 class are "
          "OOD; the depth-5 CNN of Lab 1 is the classifier. Logit and max-softmax histograms, ROC and "
          "precision-recall curves and the reconstruction error of an autoencoder (the CNN's feature "
          "extractor as the encoder, a trained decoder) are used to tell whether a test image is OOD. The "
          "spec shows these as plots only, no numbers.")
def run_ood(cfg: OODExpConfig, run) -> dict[str, float]:
    data = load_id_data(cfg, run)
    detectors = check_detectors(cfg.ood.detectors)
    ood_sets = build_ood_sets(cfg, run, data)          # before training: a bad OOD name fails at once
    model, info = get_classifier(cfg, run, data)
    summary = {"model.test_acc": clean_accuracy(cfg, model, data)}
    scores, metrics = evaluate_ood(cfg, run, model, data, ood_sets)
    save_scores(run, "scores.npz", scores, data, detectors)
    summary.update(metric_keys(metrics))
    _metrics_table(run, metrics, "OOD detection (ID test vs each OOD set; larger score = more OOD)")
    run.add_table("Classifier", ["source", "architecture", "ID classes", "test accuracy (fp32)"],
                  [[info["source"], f"cnn {info['arch']}", len(data.classes), summary["model.test_acc"]]])
    run.save_figure(plots.score_histograms(_histograms(cfg, scores), "ID test vs OOD"), "histograms.png",
                    "Histograms of the max logit, the max softmax probability and the other detectors' scores "
                    "(larger score = more OOD), ID test images vs each OOD set")
    _roc_figures(cfg, run, scores, metrics)
    _examples_figure(run, model, data, ood_sets, scores)
    run.note("scores.npz holds every image's logits and detector scores (ID test and each OOD set), so the "
             "plots can be redrawn without rerunning: np.load(run/'scores.npz')['id.msp'] etc.")
    return summary


# --- Ex. 2.1: FGSM (or PGD) ------------------------------------------------------------------------

def _pgd_kwargs(cfg) -> dict:
    a = cfg.attack
    if a.name != "pgd":
        return {}
    return {"steps": a.steps, "step_size": a.step_size or None, "random_start": a.random_start,
            "generator": torch.Generator().manual_seed(cfg.seed)}


def attack_sweep(cfg, model, data: ImageData) -> dict[float, float]:
    """{eps: test accuracy under cfg.attack}; eps = 0 is the clean accuracy, batched as clean_accuracy."""
    from ..analysis.attacks import adversarial_accuracy

    a = cfg.attack
    return adversarial_accuracy(model, data.test.x, data.test.y, a.epsilons, attack=a.name,
                                batch_size=cfg.analysis_batch_size, **_pgd_kwargs(cfg))


def rising_accuracy_note(accs: dict[float, float], attack: str) -> str | None:
    """A report line when accuracy goes *up* with a larger epsilon, which a reader would take for a bug.

    One FGSM step follows the loss gradient's sign at the clean image; on a weak, far-from-linear model a
    large step overshoots the region where that direction raises the loss, so accuracy can climb again.
    """
    eps = sorted(accs)
    rises = [(a, b) for a, b in zip(eps, eps[1:]) if accs[b] > accs[a] + 0.01]
    if not rises:
        return None
    a, b = rises[0]
    hint = (" PGD (--set attack.name=pgd) iterates small steps and does not have this weakness."
            if attack == "fgsm" else "")
    return (f"{attack.upper()} accuracy rises from {accs[a]:.3f} at eps {a:g} to {accs[b]:.3f} at eps {b:g}: a single "
            f"signed-gradient step of that size overshoots on this model, so the larger eps underestimates the "
            f"damage an attacker can do.{hint}")


def _attack_examples(cfg, run, model, data: ImageData, file: str = "examples.png", title: str = "") -> None:
    from ..analysis.attacks import ATTACKS
    from ..analysis.ood import to_unit_float

    a = cfg.attack
    n = min(a.examples, len(data.test))
    if n < 1:
        return
    idx = torch.randperm(len(data.test), generator=torch.Generator().manual_seed(cfg.seed))[:n]
    device = next(model.parameters()).device
    x, y = to_unit_float(data.test.x[idx], device), data.test.y[idx].to(device)
    rows, captions, colors = {}, {}, {}
    kwargs = _pgd_kwargs(cfg)
    for eps in a.epsilons:
        xa = x if eps == 0 else ATTACKS[a.name](model, x, y, eps, **kwargs)
        with torch.inference_mode():
            pred = model(xa).argmax(1)
        key = "clean" if eps == 0 else f"eps={eps:g}\n({_k255(eps)})"
        rows[key] = xa
        captions[key] = [data.classes[p][:10] for p in pred.tolist()]
        if eps == 0:
            captions[key] = [f"{c}\n(true: {data.classes[t][:10]})" for c, t in zip(captions[key], y.tolist())]
        colors[key] = ["tab:green" if p == t else "tab:red" for p, t in zip(pred.tolist(), y.tolist())]
    run.save_figure(plots.image_grid(rows, captions, colors, title or f"{a.name.upper()} examples"), file,
                    f"{title or a.name.upper()}: test images (clean, with the true class) and their perturbed "
                    "versions per epsilon, with the model's prediction (green = right, red = wrong)")


_FGSM_REF = {"acc@0": 0.8473, "acc@0.01": 0.4753, "acc@0.05": 0.0968, "acc@0.1": 0.0583, "acc@0.2": 0.0542,
             "acc@0.3": 0.0579}
_ADV_REF = {"acc@0": 0.8681, "acc@0.01": 0.7638, "acc@0.05": 0.3000, "acc@0.1": 0.0939, "acc@0.2": 0.0326,
            "acc@0.3": 0.0208}


@register_experiment(
    "lab4.fgsm", "FGSM (or PGD) attacks on the depth-5 CNN: test accuracy per epsilon (spec Ex. 2.1)", FGSMConfig,
    profiles={"paper": _profile(_PAPER, FGSMConfig),
              "quick": _profile(_QUICK, FGSMConfig),
              "smoke": _profile(_SMOKE, FGSMConfig, attack__epsilons=[0.0, 0.01, 0.05], attack__examples=4)},
    reference={f"fgsm.{k}": v for k, v in _FGSM_REF.items()},
    notes="FGSM adversarial examples of the CIFAR-10 test images: accuracy 84.73% at eps 0, 47.53% at 0.01, "
          "9.68% at 0.05, then about 5-6% (at or below chance) for 0.1-0.3; performance degrades as eps "
          "increases.")
def run_fgsm(cfg: FGSMConfig, run) -> dict[str, float]:
    data = load_id_data(cfg, run)
    model, info = get_classifier(cfg, run, data)
    clean = clean_accuracy(cfg, model, data)
    accs = attack_sweep(cfg, model, data)
    a = cfg.attack.name
    summary = {"model.test_acc": clean, **{f"{a}.acc@{_eps_key(e)}": v for e, v in accs.items()}}
    if 0 in accs and accs[0] != clean:
        run.note(f"accuracy at eps 0 ({accs[0]}) differs from the clean test accuracy ({clean})")
    if (note := rising_accuracy_note(accs, a)) is not None:
        run.note(note)
    ref = _FGSM_REF if a == "fgsm" else {}
    run.add_table(f"{a.upper()} accuracy per epsilon (pixel units of [0, 1] images)",
                  ["epsilon", "epsilon x 255", "test accuracy", "spec"],
                  [[f"{e:g}", _k255(e), v, ref.get(f"acc@{_eps_key(e)}", "")] for e, v in accs.items()])
    run.add_table("Classifier", ["source", "architecture", "test images", "clean test accuracy (fp32)"],
                  [[info["source"], f"cnn {info['arch']}", len(data.test), clean]])
    series = {f"this run ({a})": list(accs.values())}
    if a == "fgsm" and all(_eps_key(e) in {k[4:] for k in ref} for e in accs):
        series["spec"] = [ref[f"acc@{_eps_key(e)}"] for e in accs]
    run.save_figure(plots.line_plot(list(accs), series, "epsilon (pixel units)", "test accuracy",
                                    f"{a.upper()}: accuracy vs epsilon"), "accuracy_vs_eps.png",
                    f"Test accuracy under {a.upper()} against epsilon"
                    + (" (with the spec's numbers)" if "spec" in series else ""))
    _attack_examples(cfg, run, model, data)
    return summary


# --- Ex. 2.2: FGSM adversarial training ------------------------------------------------------------

@register_experiment(
    "lab4.adv-train", "FGSM adversarial training (eps 0.01, alpha 0.5) vs standard training: FGSM accuracy "
                      "and OOD metrics side by side (spec Ex. 2.2)", AdvTrainConfig,
    profiles={"paper": _profile(_PAPER, AdvTrainConfig),
              "quick": _profile(_QUICK, AdvTrainConfig, ood__names=["heldout"],
                                ood__detectors=["msp", "max_logit", "energy", "odin"]),
              "smoke": _profile(_SMOKE, AdvTrainConfig, attack__epsilons=[0.0, 0.01, 0.05], attack__examples=4,
                                ood__names=["heldout"], ood__detectors=["msp", "max_logit", "energy", "odin"])},
    reference={**{f"standard.{k}": v for k, v in _FGSM_REF.items()}, **{f"adv.{k}": v for k, v in _ADV_REF.items()}},
    notes="Training on L = alpha L(x, y) + (1 - alpha) L(x + eps sign(grad_x L), y) with eps = 0.01 raises FGSM "
          "accuracy at eps 0.01 from 47.53% to 76.38%, and at 0.05 and 0.1 too (9.68% -> 30.00%, 5.83% -> "
          "9.39%); clean accuracy 84.73% -> 86.81%. The adversarially trained model is then run through the "
          "OOD pipeline of Ex. 1 (the spec shows those as plots only).")
def run_adv_train(cfg: AdvTrainConfig, run) -> dict[str, float]:
    from ..analysis.attacks import make_fgsm_loss

    data = load_id_data(cfg, run)
    detectors = check_detectors(cfg.ood.detectors)
    ood_sets = build_ood_sets(cfg, run, data)
    std_model, std_info = get_classifier(cfg, run, data, "standard")
    if cfg.model.run:
        run.note("the standard model is reused, so it was not trained with this run's data and epochs; the "
                 "adversarially trained model uses the same architecture")
    adv = Variant("adv", "cnn", dict(std_info["arch"]), loss_fn=make_fgsm_loss(cfg.adv.epsilon, cfg.adv.alpha),
                  meta={"loss": f"FGSM training, eps {cfg.adv.epsilon:g}, alpha {cfg.adv.alpha:g}"})
    device = resolve_device(cfg.device)
    adv_model = train_and_reload(run, "adv", 5, lambda: train_variants(cfg, run, data, [adv], device=device)).model
    adv_model.to(device).eval()
    models = {"standard": std_model, "adv": adv_model}

    summary, accs, all_metrics, all_scores = {}, {}, {}, {}
    a = cfg.attack.name
    for name, model in models.items():
        summary[f"{name}.test_acc"] = clean_accuracy(cfg, model, data)
        accs[name] = attack_sweep(cfg, model, data)
        summary.update({f"{name}.acc@{_eps_key(e)}": v for e, v in accs[name].items()})
        run.log(f"[{name}] {a} accuracy: " + ", ".join(f"{e:g}: {v:.4f}" for e, v in accs[name].items()))
        if (note := rising_accuracy_note(accs[name], a)) is not None:
            run.note(f"{name} model: {note}")
    for name, model in models.items():
        scores, metrics = evaluate_ood(cfg, run, model, data, ood_sets, tag=name)
        save_scores(run, f"scores_{name}.npz", scores, data, detectors)
        summary.update(metric_keys(metrics, name, which=("auroc", "fpr95")))
        all_metrics[name], all_scores[name] = metrics, scores

    eps_list = list(accs["standard"])
    run.add_table(f"{a.upper()} accuracy per epsilon, standard vs adversarially trained",
                  ["epsilon", "epsilon x 255", "standard", "adv", "spec standard", "spec adv"],
                  [[f"{e:g}", _k255(e), accs["standard"][e], accs["adv"][e],
                    _FGSM_REF.get(f"acc@{_eps_key(e)}", "") if a == "fgsm" else "",
                    _ADV_REF.get(f"acc@{_eps_key(e)}", "") if a == "fgsm" else ""] for e in eps_list])
    rows = [[*([o] if len(ood_sets) > 1 else []), d, all_metrics["standard"][o][d]["auroc"],
             all_metrics["adv"][o][d]["auroc"], all_metrics["standard"][o][d]["fpr95"],
             all_metrics["adv"][o][d]["fpr95"]] for o in all_metrics["standard"] for d in detectors]
    run.add_table("OOD detection, standard vs adversarially trained (ID test vs OOD)",
                  [*(["OOD set"] if len(ood_sets) > 1 else []), "detector", "AUROC standard", "AUROC adv",
                   "FPR95 standard", "FPR95 adv"], rows)
    run.add_table("Models", ["model", "source", "architecture", "clean test accuracy (fp32)"],
                  [["standard", std_info["source"], f"cnn {std_info['arch']}", summary["standard.test_acc"]],
                   ["adv", "trained in this run (models/adv.pt), " + adv.meta["loss"], f"cnn {std_info['arch']}",
                    summary["adv.test_acc"]]])
    trained = [n for n in ("standard", "adv") if run.variant_history(n)]
    curves_figure(run, trained, "curves.png", "Loss and accuracy per epoch, standard vs FGSM adversarial training "
                  "(dashed: validation; the adv training loss is the mixed clean/adversarial objective)")
    run.save_figure(plots.line_plot(eps_list, {"standard": list(accs["standard"].values()),
                                               "adversarially trained": list(accs["adv"].values())},
                                    "epsilon (pixel units)", "test accuracy", f"{a.upper()}: accuracy vs epsilon"),
                    "accuracy_vs_eps.png", f"Test accuracy under {a.upper()}, standard vs adversarially trained")
    labels = [f"{o}: {d}" if len(ood_sets) > 1 else d for o in all_metrics["standard"] for d in detectors]
    run.save_figure(plots.bar_chart(labels, {n: [all_metrics[n][o][d]["auroc"] for o in all_metrics[n]
                                                 for d in detectors] for n in models},
                                    "AUROC", "OOD detection AUROC"), "ood_auroc.png",
                    "AUROC of each detector (ID test vs OOD), standard vs adversarially trained")
    panels = {}
    for n in models:
        h = _histograms(cfg, all_scores[n])
        panels.update({f"{n}: {k}": v for k, v in h.items() if k in ("max logit", "max softmax probability")})
    run.save_figure(plots.score_histograms(panels, "standard vs adversarially trained", ncols=2), "histograms.png",
                    "Max logit and max softmax probability, ID test vs OOD, for both models")
    for n in models:
        _roc_figures(cfg, run, all_scores[n], all_metrics[n], f"{n}_", f"{n}: ")
    _attack_examples(cfg, run, adv_model, data, "examples_adv.png", f"{a.upper()} on the adversarially trained model")
    return summary


# --- Ex. 3.1: ODIN grid search ---------------------------------------------------------------------

@register_experiment(
    "lab4.odin", "ODIN: grid over temperature T and input perturbation eps, selected on a validation split of ID "
                 "and OOD images, reported on the test split beside MSP (spec Ex. 3.1)", ODINConfig,
    profiles={"paper": _profile(_PAPER, ODINConfig),
              # quick: all ten temperatures, 4 of the 7 epsilons (a backward pass per T, a forward per
              # (T, eps > 0)), on 1,000 ID + 1,000 OOD images: about 3 of the run's ~7 minutes.
              "quick": _profile(_QUICK, ODINConfig, data__test_limit=1000, ood__names=["heldout"],
                                ood__limit=1000, odin__epsilons=[0.0, 0.0005, 0.0014, 0.004]),
              "smoke": _profile(_SMOKE, ODINConfig, ood__names=["heldout"], odin__temperatures=[1.0, 100.0],
                                odin__epsilons=[0.0, 0.002])},
    reference={"odin.best_T": 100, "odin.best_eps": 0.0, "odin.auroc": 0.66},
    notes="Grid search over T in {1, 2, 5, 10, 20, 50, 100, 200, 500, 1000} and eps in {0, ..., 0.004}: the best "
          "values are T = 100 and eps = 0, with AUROC 0.66 (CIFAR-10 vs the 20 CIFAR-100 classes).")
def run_odin(cfg: ODINConfig, run) -> dict[str, float]:
    data = load_id_data(cfg, run)
    ood_sets = build_ood_sets(cfg, run, data)
    model, info = get_classifier(cfg, run, data)
    summary = {"model.test_acc": clean_accuracy(cfg, model, data)}
    g = torch.Generator().manual_seed(cfg.seed)
    id_val = split_mask(len(data.test), cfg.odin.val_fraction, g)
    several, id_cache = len(ood_sets) > 1, {}
    for s in ood_sets:
        ood_val = split_mask(len(s), cfg.odin.val_fraction, g)
        r = odin_search(model, data.test.x, s.x, id_val, ood_val, cfg.odin.temperatures, cfg.odin.epsilons,
                        cfg.analysis_batch_size, id_cache)
        p = f"{s.name}." if several else ""
        bi, bj = r["best"]
        T, E = r["T"], r["eps"]
        summary.update({f"{p}odin.best_T": T[bi], f"{p}odin.best_eps": E[bj],
                        f"{p}odin.val_auroc": float(r["val_auroc"][bi, bj]),
                        f"{p}odin.auroc": r["best_test"]["auroc"], f"{p}odin.fpr95": r["best_test"]["fpr95"],
                        f"{p}msp.auroc": r["msp_test"]["auroc"], f"{p}msp.fpr95": r["msp_test"]["fpr95"]})
        # The grid cell T=1, eps=0 is plain MSP: it must reproduce the MSP detector's AUROC exactly.
        t1_eps0 = (T.index(1.0), E.index(0.0)) if 1.0 in T and 0.0 in E else None
        cell = {k: float(r[f"test_{k}"][t1_eps0]) if t1_eps0 else float("nan") for k in ("auroc", "fpr95")}
        if t1_eps0:
            summary[f"{p}odin.grid_auroc@T1_eps0"] = cell["auroc"]
            if cell["auroc"] != summary[f"{p}msp.auroc"]:
                run.note(f"{s.name}: ODIN at T=1, eps=0 ({cell['auroc']}) differs "
                         f"from MSP ({summary[f'{p}msp.auroc']}); it should equal it exactly")
        n_id_val, n_ood_val = int(id_val.sum()), int(ood_val.sum())
        run.log(f"{s.name}: best T={T[bi]:g} eps={E[bj]:g} val AUROC {r['val_auroc'][bi, bj]:.4f}, test AUROC "
                f"{r['best_test']['auroc']:.4f} (MSP {r['msp_test']['auroc']:.4f})")
        run.save_figure(plots.heatmap({f"validation AUROC ({n_id_val} ID + {n_ood_val} OOD)": r["val_auroc"],
                                       f"test AUROC ({len(id_val) - n_id_val} ID + {len(ood_val) - n_ood_val} OOD)":
                                       r["test_auroc"]},
                                      [f"{t:g}" for t in T], [f"{e:g}" for e in E], "epsilon", "temperature T",
                                      f"ODIN AUROC, ID test vs {s.name}", mark=(bi, bj)),
                        f"odin_heatmap_{s.name}.png",
                        f"ODIN AUROC over the (T, eps) grid, ID vs {s.name}: validation part (selects the "
                        "red cell) and test part")
        bt, mt = r["best_test"], r["msp_test"]
        run.add_table(f"ODIN vs MSP on the test part, ID vs {s.name}",
                      ["detector", "T", "epsilon", "AUROC", "AUPR-in", "AUPR-out", "FPR@95TPR"],
                      [["ODIN, best on validation", f"{T[bi]:g}", f"{E[bj]:g}", bt["auroc"], bt["aupr_in"],
                        bt["aupr_out"], bt["fpr95"]],
                       ["MSP (logits_of + msp_scores)", "", "", mt["auroc"], mt["aupr_in"], mt["aupr_out"],
                        mt["fpr95"]],
                       ["ODIN grid cell T=1, eps=0", "1", "0", cell["auroc"], "", "", cell["fpr95"]]])
        save_arrays(run.path / f"odin_grid_{s.name}.npz", {
            "temperatures": np.array(T), "epsilons": np.array(E),
            "scores_id": r["grid_id"], "scores_ood": r["grid_ood"], "id_is_val": id_val.numpy(),
            "ood_is_val": ood_val.numpy(), "msp_id": r["msp_id"], "msp_ood": r["msp_ood"],
            **{k: r[k] for k in ("val_auroc", "test_auroc", "val_fpr95", "test_fpr95")}})
    run.note("odin_grid_<ood>.npz holds every image's ODIN score for every (T, eps) (scores_id/scores_ood "
             "[T, eps, N]), the validation masks and the AUROC/FPR95 grids, so the heat map can be redrawn")
    return summary
