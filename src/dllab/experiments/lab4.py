"""Lab 4, robustness: OOD detection, FGSM/PGD attacks, FGSM adversarial training, ODIN (spec Lab 4).

Configs, profiles, the spec's numbers and run functions that wire train/reuse (the classifier), analysis/ood
(OOD sets, detectors, the ODIN search), analysis/robustness (attacks) and report/robustness together.

The classifier is the depth-5 ``cnn``, reused from a finished run (``--set model.run=DIR``, optionally
``model.variant=NAME``: a lab1.cnn-depth run serves its res_d5, else plain_d5, a Lab 4 run its ``standard``)
or trained here as variant ``standard`` (models/standard.pt, for the next Lab 4 run to reuse); a reused one
must be trained on the ID data's classes. Detectors and attacks run in fp32 on images in [0, 1]; epsilons
are in pixel units. OOD sets: ``ood.names`` (registry kind ``ood_set``), detectors: ``ood.detectors`` (kind
``detector``, each a class in analysis/ood/ or a plug-in's). Summary keys:
``<detector>.<metric>`` with one OOD set, else prefixed by its name (``mnist.energy.fpr95``; lab4.adv-train
puts the model first: ``adv.mnist.msp.auroc``). Under torchrun the classifiers train on every rank and the
analysis after them runs on rank 0 alone (``distributed.on_main``).

Profiles: ``paper`` = the spec (64 channels, all of CIFAR-10, Adam 1e-3; where it is silent: 30 epochs, batch
128, crop+flip, 10% validation, OOD = cifar100-20). ``quick``: ID = CIFAR-10 classes 0-5, so ``heldout`` (6-9)
exists and one quick model serves all four (see _QUICK_TRAIN). ``smoke`` = seconds, for tests.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from dllab.core import distributed
from dllab.attacks.settings import AdvConfig, AttackConfig
from dllab.ood.settings import METRICS, AutoencoderConfig, OdinGridConfig, OdinSetting, OODConfig
from dllab.core.config import DataConfig, OptimConfig, PositiveInt, RunConfig, Section, TrainConfig, section
from dllab.core.registry import register

if TYPE_CHECKING:
    from dllab.ood.datasets import OODSet
    from dllab.data.images import ImageData
    from dllab.train.reuse import SavedCNN

# Heavy modules are imported inside the functions below: registering (``dllab list``) must not pay for them.

QUICK_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog"]   # CIFAR-10 classes 0-5


# --- configs ---------------------------------------------------------------------------------------

class ModelConfig(Section):
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


class OODExpConfig(OODSetsConfig):
    odin: OdinSetting = section(OdinSetting)
    autoencoder: AutoencoderConfig = section(AutoencoderConfig)


class FGSMConfig(Lab4Config):
    attack: AttackConfig = section(AttackConfig)


class AdvTrainConfig(FGSMConfig, OODExpConfig):   # both experiments' sections (ood, odin, autoencoder, attack)
    adv: AdvConfig = section(AdvConfig)


class ODINConfig(OODSetsConfig):
    odin: OdinGridConfig = section(OdinGridConfig)


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
_QUICK_AE = {"autoencoder.epochs": 3, "autoencoder.train_limit": 2000, "autoencoder.batch_size": 32}
_SMOKE_TRAIN = {"model.base_channels": 8, "data.classes": QUICK_CLASSES, "data.train_limit": 120,
                "data.test_limit": 60, "data.augment": False, "train.epochs": 1, "train.batch_size": 32,
                "analysis_batch_size": 128}
_SMOKE_OOD = {"ood.names": ["heldout", "mnist"], "ood.limit": 60}
_SMOKE_AE = {"autoencoder.epochs": 1, "autoencoder.train_limit": 60, "autoencoder.batch_size": 32}
_SMOKE_ATTACK = {"attack.epsilons": [0.0, 0.01, 0.05], "attack.examples": 4}
_ADV_OOD = {"ood.names": ["heldout"], "ood.detectors": ["msp", "max_logit", "energy", "odin"]}

_FGSM_REF = {"acc@0": 0.8473, "acc@0.01": 0.4753, "acc@0.05": 0.0968, "acc@0.1": 0.0583, "acc@0.2": 0.0542,
             "acc@0.3": 0.0579}
_ADV_REF = {"acc@0": 0.8681, "acc@0.01": 0.7638, "acc@0.05": 0.3000, "acc@0.1": 0.0939, "acc@0.2": 0.0326,
            "acc@0.3": 0.0208}


# --- wiring shared by the experiments --------------------------------------------------------------

def _analysed(analysis, cfg, run) -> dict[str, float]:
    """The inputs on every process (training is data-parallel under torchrun), then ``analysis`` on rank 0."""
    data, ood_sets, cnn = _inputs(cfg, run)
    return distributed.on_main(analysis, cfg, run, data, ood_sets, cnn)


def _inputs(cfg, run, with_ood: bool = True) -> tuple[ImageData, list[OODSet], SavedCNN]:
    """The ID data, the OOD sets (none for lab4.fgsm), the classifier (``model.run``'s cnn, checked first, or
    trained here last, after every name was checked), in eval mode on the run's device."""
    from dllab.ood.datasets import build_ood_sets
    from dllab.data import data_root
    from dllab.train.reuse import CNNSource
    from dllab.train.variants import Variant, train_variants
    from dllab.experiments.common import get_cnn, load_data, record_ood_sets

    ref = CNNSource("model", cfg.model.run, cfg.model.variant, "standard", 5, "classifier", "classifier_standard",
                    same_classes=True)
    found = ref.find()   # a wrong or crafted model.run fails before any data is loaded
    data = load_data(cfg, run)
    if cfg.profile != "paper":
        run.note(f"{cfg.profile} profile: {len(data.classes)} ID classes (chance {1 / len(data.classes):.3f}), "
                 f"{len(data.train)} training images, {cfg.train.epochs} epochs; the spec's numbers are for the "
                 "paper setting (all 10 CIFAR-10 classes, 64-channel cnn, 30 epochs): compare trends, not values")
    ood_sets = (record_ood_sets(run, build_ood_sets(cfg.ood.names, data, data_root(cfg.ood.root or cfg.data.root),
                                                    cfg.ood.limit, cfg.data.allow_fallback and cfg.profile != "paper"))
                if with_ood else [])
    arch = {"depth": 5, "base_channels": cfg.model.base_channels, "residual": cfg.model.residual}
    cnn = get_cnn(run, ref, data, lambda: train_variants(cfg, data, [Variant("standard", "cnn", arch)], run.device,
                                                         run.training_hooks()), found).ready(run.device)
    return data, ood_sets, cnn


def _ood_scores(cfg, run, model, data: ImageData, ood_sets: list[OODSet], tag: str = ""):
    """The configured detectors, fitted for ``model`` and scored: (detectors, scores, metrics)."""
    from dllab.ood.evaluate import build_detectors, evaluate_ood, score_arrays

    detectors = build_detectors(cfg.ood.detectors, cfg.analysis_batch_size, cfg.odin, cfg.autoencoder, cfg.seed, tag,
                                reporter=run)
    scores, metrics = evaluate_ood(model, detectors, data, ood_sets, cfg.analysis_batch_size,
                                   cfg.autoencoder.train_limit, cfg.seed, tag, reporter=run)
    run.save_arrays(f"scores_{tag}.npz" if tag else "scores.npz",
                    score_arrays(scores, data.classes, data.test.y, list(detectors)))
    return detectors, scores, metrics


# --- summary keys, from the config alone (registry.Experiment.metrics) -----------------------------

def _ood_keys(cfg: OODSetsConfig, prefix: str = "", which=METRICS) -> list[str]:
    """analysis.ood.evaluate.metric_keys' names for the configured OOD sets and detectors (each listed once)."""
    sets = list(dict.fromkeys(cfg.ood.names))
    return [".".join(p for p in (prefix, ood if len(sets) > 1 else "", d, m) if p)
            for ood in sets for d in dict.fromkeys(cfg.ood.detectors) for m in which]


def _attack_keys(cfg: FGSMConfig, model: str) -> list[str]:
    """``<model>.acc@<eps>`` per epsilon of the attack (an epsilon listed twice is one key)."""
    return list(dict.fromkeys(f"{model}.acc@{e:g}" for e in cfg.attack.epsilons))


def ood_metrics(cfg: OODExpConfig) -> list[str]:
    return ["model.test_acc", *_ood_keys(cfg)]


def fgsm_metrics(cfg: FGSMConfig) -> list[str]:
    return ["model.test_acc", *_attack_keys(cfg, cfg.attack.name)]


def adv_train_metrics(cfg: AdvTrainConfig) -> list[str]:
    return [k for n in ("standard", "adv")
            for k in (f"{n}.test_acc", *_attack_keys(cfg, n), *_ood_keys(cfg, n, ("auroc", "fpr95")))]


def odin_metrics(cfg: ODINConfig) -> list[str]:
    """analysis.ood.odin_search.search_summary's keys per OOD set (prefixed by its name when there are
    several); the (T=1, eps=0) cell only when the grid has it."""
    sets = list(dict.fromkeys(cfg.ood.names))
    cell = ["odin.grid_auroc@T1_eps0"] if 1.0 in cfg.odin.temperatures and 0.0 in cfg.odin.epsilons else []
    per_set = ["odin.best_T", "odin.best_eps", "odin.val_auroc", "odin.auroc", "odin.fpr95", "msp.auroc",
               "msp.fpr95", *cell]
    return ["model.test_acc", *(f"{s}.{k}" if len(sets) > 1 else k for s in sets for k in per_set)]


# --- Ex. 1.1-1.2: OOD detection --------------------------------------------------------------------

@register(
    "experiment", "lab4.ood",
    description="OOD detection with the depth-5 CNN: MSP, max logit, energy, ODIN, autoencoder; histograms, "
                "ROC/PR curves, AUROC/AUPR/FPR95 (spec Ex. 1.1-1.2)",
    config=OODExpConfig,
    profiles={"paper": _PAPER,
              "quick": {**_QUICK_TRAIN, **_QUICK_OOD, **_QUICK_AE},
              "smoke": {**_SMOKE_TRAIN, **_SMOKE_OOD, **_SMOKE_AE}},
    notes="CIFAR-10 is the in-distribution set and 20 CIFAR-100 classes that overlap no CIFAR-10 class are "
          "OOD; the depth-5 CNN of Lab 1 is the classifier. Logit and max-softmax histograms, ROC and "
          "precision-recall curves and the reconstruction error of an autoencoder (the CNN's feature "
          "extractor as the encoder, a trained decoder) are used to tell whether a test image is OOD. The "
          "spec shows these as plots only, no numbers.",
    metrics=ood_metrics)
def run_ood(cfg: OODExpConfig, run) -> dict[str, float]:
    return _analysed(_ood_analysis, cfg, run)


def _ood_analysis(cfg: OODExpConfig, run, data: ImageData, ood_sets: list[OODSet], cnn: SavedCNN) -> dict[str, float]:
    from dllab.ood.evaluate import metric_keys
    from dllab.attacks.robustness import clean_accuracy
    from dllab.report import robustness as report

    summary = {"model.test_acc": clean_accuracy(cnn.model, data.test, run.device, cfg.analysis_batch_size)}
    detectors, scores, metrics = _ood_scores(cfg, run, cnn.model, data, ood_sets)
    summary.update(metric_keys(metrics))
    labels = {d: det.label for d, det in detectors.items()}
    ae = detectors.get("autoencoder")
    run.add(*report.ood_metrics_table(metrics, "OOD detection (ID test vs each OOD set; larger score = more OOD)"),
            *report.classifier_table({"standard": (cnn.origin, cnn.arch, summary["model.test_acc"])},
                                     len(data.classes), len(data.test)),
            *report.ood_histograms(scores, labels),
            *report.roc_figures(scores, metrics, labels),
            *report.ood_examples({"id": data.test.x, **{s.name: s.x for s in ood_sets}}, scores,
                                 (lambda x: ae.reconstruct(cnn.model, x)) if ae is not None else None))
    run.note("scores.npz holds every image's logits and detector scores (ID test and each OOD set), so the "
             "plots can be redrawn without rerunning: np.load(run/'scores.npz')['id.msp'] etc.")
    return summary


# --- Ex. 2.1: FGSM (or PGD) ------------------------------------------------------------------------

@register(
    "experiment", "lab4.fgsm",
    description="FGSM (or PGD) attacks on the depth-5 CNN: test accuracy per epsilon (spec Ex. 2.1)",
    config=FGSMConfig,
    profiles={"paper": _PAPER, "quick": _QUICK_TRAIN, "smoke": {**_SMOKE_TRAIN, **_SMOKE_ATTACK}},
    reference={f"fgsm.{k}": v for k, v in _FGSM_REF.items()},
    notes="FGSM adversarial examples of the CIFAR-10 test images: accuracy 84.73% at eps 0, 47.53% at 0.01, "
          "9.68% at 0.05, then about 5-6% (at or below chance) for 0.1-0.3; performance degrades as eps "
          "increases.",
    metrics=fgsm_metrics)
def run_fgsm(cfg: FGSMConfig, run) -> dict[str, float]:
    data, _, cnn = _inputs(cfg, run, with_ood=False)
    return distributed.on_main(_fgsm_analysis, cfg, run, data, cnn)


def _fgsm_analysis(cfg: FGSMConfig, run, data: ImageData, cnn: SavedCNN) -> dict[str, float]:
    from dllab.attacks.robustness import attack_examples, attack_models
    from dllab.report import robustness as report

    clean, accs = attack_models({"standard": cnn.model}, data.test, cfg.attack, cfg.seed, cfg.analysis_batch_size,
                                reporter=run)
    a = cfg.attack.name
    run.add(*report.attack_accuracy(accs["standard"], a, _FGSM_REF if a == "fgsm" else {}),
            *report.classifier_table({"standard": (cnn.origin, cnn.arch, clean["standard"])}, len(data.classes),
                                     len(data.test)),
            *report.attack_examples(*attack_examples(cnn.model, data.test, cfg.attack, cfg.seed), data.classes, a))
    return {"model.test_acc": clean["standard"], **{f"{a}.acc@{e:g}": v for e, v in accs["standard"].items()}}


# --- Ex. 2.2: FGSM adversarial training ------------------------------------------------------------

@register(
    "experiment", "lab4.adv-train",
    description="FGSM adversarial training (eps 0.01, alpha 0.5) vs standard training: FGSM accuracy "
                "and OOD metrics side by side (spec Ex. 2.2)",
    config=AdvTrainConfig,
    profiles={"paper": _PAPER,
              "quick": {**_QUICK_TRAIN, **_QUICK_OOD, **_QUICK_AE, **_ADV_OOD},
              "smoke": {**_SMOKE_TRAIN, **_SMOKE_OOD, **_SMOKE_AE, **_SMOKE_ATTACK, **_ADV_OOD}},
    reference={**{f"standard.{k}": v for k, v in _FGSM_REF.items()}, **{f"adv.{k}": v for k, v in _ADV_REF.items()}},
    notes="Training on L = alpha L(x, y) + (1 - alpha) L(x + eps sign(grad_x L), y) with eps = 0.01 raises FGSM "
          "accuracy at eps 0.01 from 47.53% to 76.38%, and at 0.05 and 0.1 too (9.68% -> 30.00%, 5.83% -> "
          "9.39%); clean accuracy 84.73% -> 86.81%. The adversarially trained model is then run through the "
          "OOD pipeline of Ex. 1 (the spec shows those as plots only).",
    metrics=adv_train_metrics)
def run_adv_train(cfg: AdvTrainConfig, run) -> dict[str, float]:
    from dllab.attacks.methods import make_fgsm_loss
    from dllab.train.reuse import train_and_reload
    from dllab.train.variants import Variant, train_variants

    data, ood_sets, std = _inputs(cfg, run)
    if cfg.model.run:
        run.note("the standard model is reused, so it was not trained with this run's data and epochs; the "
                 "adversarially trained model uses the same architecture")
    adv = Variant("adv", "cnn", dict(std.arch), loss_fn=make_fgsm_loss(cfg.adv.epsilon, cfg.adv.alpha),
                  meta={"loss": f"FGSM training, eps {cfg.adv.epsilon:g}, alpha {cfg.adv.alpha:g}"})
    adv_cnn = train_and_reload(run.path / "models", "adv", 5,
                               lambda: train_variants(cfg, data, [adv], run.device, run.training_hooks()))
    return distributed.on_main(_adv_analysis, cfg, run, data, ood_sets, std, adv_cnn, adv.meta["loss"])


def _adv_analysis(cfg: AdvTrainConfig, run, data: ImageData, ood_sets: list[OODSet], std: SavedCNN,
                  adv_cnn: SavedCNN, adv_loss: str) -> dict[str, float]:
    from dllab.ood.evaluate import metric_keys
    from dllab.attacks.robustness import attack_examples, attack_models
    from dllab.report import robustness as report
    from dllab.report.variants import curves_figure

    models = {"standard": std.model, "adv": adv_cnn.model.to(run.device).eval()}
    clean, accs = attack_models(models, data.test, cfg.attack, cfg.seed, cfg.analysis_batch_size, reporter=run)
    summary, scores, metrics = {}, {}, {}
    for n, model in models.items():
        summary.update({f"{n}.test_acc": clean[n], **{f"{n}.acc@{e:g}": v for e, v in accs[n].items()}})
        detectors, scores[n], metrics[n] = _ood_scores(cfg, run, model, data, ood_sets, n)
        summary.update(metric_keys(metrics[n], n, which=("auroc", "fpr95")))
    a = cfg.attack.name
    run.add(*report.comparison_tables(accs, metrics, a,
                                      {"standard": _FGSM_REF, "adv": _ADV_REF} if a == "fgsm" else {}),
            *report.classifier_table({"standard": (std.origin, std.arch, clean["standard"]),
                                      "adv": (f"{adv_cnn.origin}, {adv_loss}", adv_cnn.arch, clean["adv"])},
                                     len(data.classes), len(data.test)),
            *curves_figure(run.history, [n for n in models if run.variant_history(n)], "curves.png",
                           "Loss and accuracy per epoch, standard vs FGSM adversarial training (dashed: validation; "
                           "the adv training loss is the mixed clean/adversarial objective)"),
            *report.comparison_figures(accs, metrics, scores, a, {d: det.label for d, det in detectors.items()}))
    run.add(*report.attack_examples(*attack_examples(models["adv"], data.test, cfg.attack, cfg.seed), data.classes,
                                    a, "examples_adv.png", f"{a.upper()} on the adversarially trained model"))
    return summary


# --- Ex. 3.1: ODIN grid search ---------------------------------------------------------------------

@register(
    "experiment", "lab4.odin",
    description="ODIN: grid over temperature T and input perturbation eps, selected on a validation split of ID "
                "and OOD images, reported on the test split beside MSP (spec Ex. 3.1)",
    config=ODINConfig,
    profiles={"paper": _PAPER,
              # quick: all ten temperatures, 4 of the 7 epsilons (a backward pass per T, a forward per
              # (T, eps > 0)) on 1,000 ID + 1,000 OOD images: the grid is most of the run's time.
              "quick": {**_QUICK_TRAIN, **_QUICK_OOD, "data.test_limit": 1000, "ood.names": ["heldout"],
                        "ood.limit": 1000, "odin.epsilons": [0.0, 0.0005, 0.0014, 0.004]},
              "smoke": {**_SMOKE_TRAIN, **_SMOKE_OOD, "ood.names": ["heldout"], "odin.temperatures": [1.0, 100.0],
                        "odin.epsilons": [0.0, 0.002]}},
    reference={"odin.best_T": 100, "odin.best_eps": 0.0, "odin.auroc": 0.66},
    notes="Grid search over T in {1, 2, 5, 10, 20, 50, 100, 200, 500, 1000} and eps in {0, ..., 0.004}: the best "
          "values are T = 100 and eps = 0, with AUROC 0.66 (CIFAR-10 vs the 20 CIFAR-100 classes).",
    metrics=odin_metrics)
def run_odin(cfg: ODINConfig, run) -> dict[str, float]:
    return _analysed(_odin_analysis, cfg, run)


def _odin_analysis(cfg: ODINConfig, run, data: ImageData, ood_sets: list[OODSet], cnn: SavedCNN) -> dict[str, float]:
    from dllab.ood.odin_search import msp_cell, search_arrays, search_sets
    from dllab.attacks.robustness import clean_accuracy
    from dllab.report import robustness as report

    summary = {"model.test_acc": clean_accuracy(cnn.model, data.test, run.device, cfg.analysis_batch_size)}
    keys, searches = search_sets(cnn.model, data.test.x, ood_sets, cfg.odin, cfg.analysis_batch_size, cfg.seed,
                                 reporter=run)
    for name, (res, id_val, ood_val) in searches.items():
        run.save_arrays(f"odin_grid_{name}.npz", search_arrays(res, id_val, ood_val))
        run.add(*report.odin_search_report(res, id_val, ood_val, name, msp_cell(res)))
    run.note("odin_grid_<ood>.npz holds every image's ODIN score for every (T, eps) (scores_id/scores_ood "
             "[T, eps, N]), the validation masks and the AUROC/FPR95 grids, so the heat map can be redrawn")
    return {**summary, **keys}
