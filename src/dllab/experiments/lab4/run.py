"""Lab 4's run functions: train/reuse (the classifier), ood/ (OOD sets, detectors, the ODIN search),
attacks/ and report/robustness wired together. Under torchrun the classifiers train on every rank and the
analysis after them runs on rank 0 alone (``distributed.on_main``). The configs are in ``lab4/config.py``.
"""
from __future__ import annotations

from pathlib import Path

from dllab.attacks.methods import make_adv_loss
from dllab.attacks.robustness import (attack_examples, attack_models, attack_table, clean_accuracy,
                                      robustness_sentence)
from dllab.core import distributed, registry
from dllab.data import data_root
from dllab.data.images import ImageData
from dllab.experiments.common import get_cnn, load_data, record_model, record_ood_sets, spec_data
from dllab.experiments.lab4.config import (ADV_REF, FGSM_REF, AdvTrainConfig, FGSMConfig, ODINConfig, OODExpConfig,
                                           adv_as_spec, adv_model_names, mode_table_asked)
from dllab.models.factory import check_model_has
from dllab.ood.datasets import OODSet, benchmark_groups, build_ood_sets
from dllab.ood.evaluate import benchmark_keys, build_detectors, evaluate_ood, metric_keys, score_arrays
from dllab.ood.odin_search import msp_cell, search_arrays, search_sets
from dllab.ood.saved import describe as describe_ood, fit_thresholds, write_ood_folder
from dllab.report import robustness as report
from dllab.report.ood_table import write_benchmark_csv
from dllab.report.variants import curves_figure
from dllab.runner.run import Run
from dllab.train.reuse import CNNSource, SavedCNN, load_cnn
from dllab.train.variants import Variant, build_for, train_variants


# --- wiring shared by the experiments --------------------------------------------------------------

def _analysed(analysis, cfg, run: Run) -> dict[str, float]:
    """The inputs on every process (training is data-parallel under torchrun), then ``analysis`` on rank 0."""
    data, ood_sets, cnn = _inputs(cfg, run)
    return distributed.on_main(analysis, cfg, run, data, ood_sets, cnn)


def _inputs(cfg, run: Run, with_ood: bool = True) -> tuple[ImageData, list[OODSet], SavedCNN]:
    """The ID data, the OOD sets (none for lab4.fgsm), the classifier (``model.run``'s cnn, checked first, or
    trained here last, after every name was checked), in eval mode on the run's device."""
    model = cfg.model.factory or "cnn"
    ref = CNNSource("model", cfg.model.run, cfg.model.variant, "standard", 5, "classifier", "classifier_standard",
                    same_classes=True, model=model)
    found = ref.find()   # a wrong or crafted model.run fails before any data is loaded
    data = load_data(cfg, run)
    record_model(run, model)
    if cfg.profile != "paper" and spec_data(cfg, run.experiment):
        run.note(f"{cfg.profile} profile: {len(data.classes)} ID classes (chance {1 / len(data.classes):.3f}), "
                 f"{len(data.train)} training images, {cfg.train.epochs} epochs; the spec's numbers are for the "
                 "paper setting (all 10 CIFAR-10 classes, 64-channel cnn, 30 epochs): compare trends, not values")
    names = [*cfg.ood.names, *(s for sets in _groups(cfg).values() for s in sets)] if with_ood else []
    ood_sets = (record_ood_sets(run, build_ood_sets(names, data, _ood_root(cfg), cfg.ood.limit,
                                                    cfg.data.allow_fallback and cfg.profile != "paper"))
                if with_ood else [])
    arch = {"depth": 5, "base_channels": cfg.model.base_channels, "residual": cfg.model.residual}
    standard = Variant("standard", model, arch)
    if found is None and model != "cnn":   # a user's model lacking what the analysis calls fails before training
        check_model_has(build_for(data, standard, cfg.seed), _needs(cfg), model, "lab4's analysis calls it")
    cnn = get_cnn(run, ref, data, lambda: train_variants(cfg, data, [standard], run.device, run.training_hooks()),
                  found).ready(run.device)
    return data, ood_sets, cnn


def _ood_root(cfg) -> Path:
    return data_root(cfg.ood.root or cfg.data.root)


def _groups(cfg) -> dict[str, list[str]]:
    """The near/far benchmark's OOD sets by group when ``ood.benchmark`` is on (lab4.ood), else {}."""
    ood = getattr(cfg, "ood", None)
    return benchmark_groups(ood.near, ood.far, _ood_root(cfg)) if getattr(ood, "benchmark", False) else {}


def _architecture(saved: SavedCNN) -> dict | str:
    """The classifier table's architecture column: the cnn's arguments, or the user's model by name."""
    return saved.arch if saved.name == "cnn" else saved.describe()


def _needs(cfg) -> list[tuple[str, ...]]:
    """What the classifier must have besides ``forward``: what the configured detectors call on it (each
    detector class says so: ``forward_features``/``forward_head`` for the feature-space ones, ``feature_maps``
    for the autoencoder)."""
    detectors = cfg.ood.detectors if isinstance(cfg, OODExpConfig) else []
    return list(dict.fromkeys(need for name in detectors for need in registry.get("detector", name).needs))


def _last_epoch(name: str, saved: SavedCNN) -> dict[str, float]:
    """``<name>.test_acc_last`` when the model was trained in this run: its last epoch's test accuracy, as its
    training measured it (the model analysed is the saved one, whose clean accuracy is ``<name>.test_acc``)."""
    last = None if saved.reused else saved.result.get("test_acc_last")
    return {f"{name}.test_acc_last": last} if last is not None else {}


def _ood_scores(cfg, run: Run, model, data: ImageData, ood_sets: list[OODSet], tag: str = ""):
    """The configured detectors, fitted for ``model`` and scored: (detectors, scores, metrics); saved with
    their thresholds beside the model (``_save_detectors``)."""
    detectors = build_detectors(cfg.ood.detectors, cfg.analysis_batch_size, cfg.odin, cfg.autoencoder, cfg.seed, tag,
                                reporter=run, ood=cfg.ood)
    scores, metrics = evaluate_ood(model, detectors, data, ood_sets, cfg.analysis_batch_size,
                                   cfg.autoencoder.train_limit, cfg.seed, tag, reporter=run)
    run.save_arrays(f"scores_{tag}.npz" if tag else "scores.npz",
                    score_arrays(scores, data.classes, data.test.y, list(detectors)))
    _save_detectors(cfg, run, tag or "standard", model, detectors, data, scores, metrics)
    return detectors, scores, metrics


def _save_detectors(cfg, run: Run, variant: str, model, detectors, data: ImageData, scores, metrics) -> None:
    """The fitted detectors and their thresholds (chosen on the ID validation images) in models/<variant>/ood/,
    when this run saved that model's folder; a reused classifier's folder belongs to the run that trained it."""
    folder = run.path / "models" / variant
    if not run.writes:
        return
    if not (folder / "model.json").is_file():
        run.note(f"the {variant} classifier was reused (model.run), so its fitted OOD detectors are not saved: "
                 f"train it in this run to get models/{variant}/ood/ for dllab predict")
        return
    thresholds = fit_thresholds(model, detectors, data, cfg.analysis_batch_size)
    write_ood_folder(folder, describe_ood(variant, detectors, thresholds, scores, metrics), detectors)
    if thresholds.split != "val":
        run.note(f"{variant}: no validation split (data.val_fraction=0), so the OOD thresholds in "
                 f"models/{variant}/ood/ood.json come from the ID training images' scores")


# --- Ex. 1.1-1.2: OOD detection --------------------------------------------------------------------

def run_ood(cfg: OODExpConfig, run: Run) -> dict[str, float]:
    return _analysed(_ood_analysis, cfg, run)


def _ood_analysis(cfg: OODExpConfig, run: Run, data: ImageData, ood_sets: list[OODSet],
                  cnn: SavedCNN) -> dict[str, float]:
    summary = {"model.test_acc": clean_accuracy(cnn.model, data.test, run.device, cfg.analysis_batch_size),
               **_last_epoch("model", cnn)}
    detectors, scores, metrics = _ood_scores(cfg, run, cnn.model, data, ood_sets)
    # ood.names' keys as without the benchmark: its sets alone decide whether keys carry the set's name
    summary.update(metric_keys({n: metrics[n] for n in dict.fromkeys(cfg.ood.names)}))
    summary.update(_benchmark(cfg, run, metrics))
    labels = {d: det.label for d, det in detectors.items()}
    ae = detectors.get("autoencoder")
    run.add(*report.ood_metrics_table(metrics, "OOD detection (ID test vs each OOD set; larger score = more OOD)"),
            *report.classifier_table({"standard": (cnn.origin, _architecture(cnn), summary["model.test_acc"])},
                                     len(data.classes), len(data.test)),
            *report.ood_histograms(scores, labels),
            *report.roc_figures(scores, metrics, labels),
            *report.ood_examples({"id": data.test.x, **{s.name: s.x for s in ood_sets}}, scores,
                                 (lambda x: ae.reconstruct(cnn.model, x)) if ae is not None else None))
    run.note("scores.npz holds every image's logits and detector scores (ID test and each OOD set), so the "
             "plots can be redrawn without rerunning: np.load(run/'scores.npz')['id.msp'] etc.")
    return summary


def _benchmark(cfg: OODExpConfig, run: Run, metrics: dict) -> dict[str, float]:
    """The near/far benchmark's summary keys (none unless ``ood.benchmark``), its CSV in the run folder (the
    report draws the table from the keys, so a run over several seeds shows mean ± std), and a note saying
    which near-OOD set was used and why."""
    groups = _groups(cfg)
    if not groups:
        return {}
    keys = benchmark_keys(metrics, groups)
    if not cfg.ood.near:
        found = groups["near"] == ["cifar100-20"]
        run.note(f"near-OOD: {groups['near'][0]} (" + ("CIFAR-100 found" if found else "no CIFAR-100")
                 + f" under {_ood_root(cfg)}" + ("" if found else "; put it there, or set ood.near=[cifar100-20], "
                                                "for the spec's near-OOD set") + ")")
    if run.writes:
        write_benchmark_csv(run.path, keys)
    return keys


# --- Ex. 2.1: FGSM (or PGD) ------------------------------------------------------------------------

def run_fgsm(cfg: FGSMConfig, run: Run) -> dict[str, float]:
    data, _, cnn = _inputs(cfg, run, with_ood=False)
    return distributed.on_main(_fgsm_analysis, cfg, run, data, cnn)


def _fgsm_analysis(cfg: FGSMConfig, run: Run, data: ImageData, cnn: SavedCNN) -> dict[str, float]:
    clean, accs = attack_models({"standard": cnn.model}, data.test, cfg.attack, cfg.seed, cfg.analysis_batch_size,
                                reporter=run)
    a = cfg.attack.name
    run.add(*report.attack_accuracy(accs["standard"], a, FGSM_REF if a == "fgsm" else {}),
            *report.classifier_table({"standard": (cnn.origin, _architecture(cnn), clean["standard"])},
                                     len(data.classes), len(data.test)),
            *report.attack_examples(*attack_examples(cnn.model, data.test, cfg.attack, cfg.seed), data.classes, a))
    return {"model.test_acc": clean["standard"], **_last_epoch("model", cnn),
            **{f"{a}.acc@{e:g}": v for e, v in accs["standard"].items()}}


# --- Ex. 2.2: adversarial training (FGSM as the spec, and the fgsm-rs / pgd modes) ------------------

_TRAINING = {"fgsm": "FGSM training", "fgsm-rs": "FGSM-RS training (random start, step 1.25 eps)",
             "pgd": "PGD training"}


def _adv_variant(cfg: AdvTrainConfig, std: SavedCNN, mode: str, name: str) -> Variant:
    a = cfg.adv
    how = _TRAINING[mode] + (f" ({a.steps} steps)" if mode == "pgd" else "")
    return Variant(name, std.name, dict(std.arch),
                   loss_fn=make_adv_loss(a.epsilon, a.alpha, mode, a.steps, a.step_size or None),
                   meta={"loss": f"{how}, eps {a.epsilon:g}, alpha {a.alpha:g}"})


def _training_words(cfg: AdvTrainConfig) -> str:
    modes = list(dict.fromkeys(cfg.adv.modes))
    return "FGSM adversarial training" if modes == ["fgsm"] else f"adversarial training ({', '.join(modes)})"


def run_adv_train(cfg: AdvTrainConfig, run: Run) -> dict[str, float]:
    data, ood_sets, std = _inputs(cfg, run)
    if cfg.model.run:
        run.note("the standard model is reused, so it was not trained with this run's data and epochs; the "
                 "adversarially trained model uses the same architecture")
    modes = dict.fromkeys(cfg.adv.modes)
    variants = [_adv_variant(cfg, std, m, n) for m, n in zip(modes, adv_model_names(cfg)[1:])]
    train_variants(cfg, data, variants, run.device, run.training_hooks())
    # each is read back from the run's models folder, the way a model of another run is read
    advs = {v.name: (load_cnn(run.path / "models" / f"{v.name}.pt", 5, reused=False, model=std.name),
                     v.meta["loss"]) for v in variants}
    return distributed.on_main(_adv_analysis, cfg, run, data, ood_sets, std, advs)


def _adv_analysis(cfg: AdvTrainConfig, run: Run, data: ImageData, ood_sets: list[OODSet], std: SavedCNN,
                  advs: dict[str, tuple[SavedCNN, str]]) -> dict[str, float]:
    models = {"standard": std.model, **{n: c.model.to(run.device).eval() for n, (c, _) in advs.items()}}
    clean, accs = attack_models(models, data.test, cfg.attack, cfg.seed, cfg.analysis_batch_size, reporter=run)
    summary, scores, metrics = {}, {}, {}
    saved = {"standard": std, **{n: c for n, (c, _) in advs.items()}}
    for n, model in models.items():
        summary.update({f"{n}.test_acc": clean[n], **_last_epoch(n, saved[n]),
                        **{f"{n}.acc@{e:g}": v for e, v in accs[n].items()}})
        detectors, scores[n], metrics[n] = _ood_scores(cfg, run, model, data, ood_sets, n)
        summary.update(metric_keys(metrics[n], n, which=("auroc", "fpr95")))
    if mode_table_asked(cfg):
        summary.update(_mode_table(cfg, run, data, models, clean, accs))
    a = cfg.attack.name
    trained = {"standard": (std.origin, _architecture(std), clean["standard"]),
               **{n: (f"{c.origin}, {how}", _architecture(c), clean[n]) for n, (c, how) in advs.items()}}
    run.add(*report.comparison_tables(accs, metrics, a, _spec_fgsm(cfg) if a == "fgsm" else {}),
            *report.classifier_table(trained, len(data.classes), len(data.test)),
            *curves_figure(run.history, [n for n in models if run.variant_history(n)], "curves.png",
                           f"Loss and accuracy per epoch, standard vs {_training_words(cfg)} (dashed: validation; "
                           "the adv training loss is the mixed clean/adversarial objective)"),
            *report.comparison_figures(accs, metrics, scores, a, {d: det.label for d, det in detectors.items()}))
    for n in advs:
        suffix = n.removeprefix("adv")
        run.add(*report.attack_examples(*attack_examples(models[n], data.test, cfg.attack, cfg.seed), data.classes,
                                        a, f"examples_adv{suffix}.png",
                                        f"{a.upper()} on the adversarially trained model{suffix.replace('_', ' ')}"))
    return summary


def _spec_fgsm(cfg: AdvTrainConfig) -> dict[str, dict[str, float]]:
    """The spec's FGSM accuracies of the models this run trained as the spec did: ``standard``'s (Ex. 2.1), and
    ``adv``'s (Ex. 2.2) only when it was trained with the spec's eps and alpha; another setting's model has none."""
    return {"standard": FGSM_REF, **({"adv": ADV_REF} if adv_as_spec(cfg) else {})}


def _mode_table(cfg: AdvTrainConfig, run: Run, data: ImageData, models: dict, clean: dict[str, float],
                accs: dict) -> dict[str, float]:
    """Clean / FGSM / PGD (/ APGD: ``adv.attacks``) accuracy of each model across epsilon: one table, the
    sentence saying what it shows, and the summary keys <model>.<attack>.acc@<eps>."""
    table = attack_table(models, data.test, cfg.attack, cfg.adv.attacks, accs, cfg.seed, cfg.analysis_batch_size,
                         reporter=run)
    sentence = robustness_sentence(clean, table)
    run.add(*report.mode_table(clean, table, sentence, _spec_fgsm(cfg) if "fgsm" in cfg.adv.attacks else {}))
    top = max(cfg.attack.epsilons)
    for n, per in table.items():
        run.note(f"{n}: clean {clean[n]:.3f}; at eps {top:g} "
                 + ", ".join(f"{a.upper()} {acc[top]:.3f}" for a, acc in per.items()))
    run.note(sentence)
    return {f"{n}.{a}.acc@{e:g}": v for n, per in table.items() for a, acc in per.items() for e, v in acc.items()}


# --- Ex. 3.1: ODIN grid search ---------------------------------------------------------------------

def run_odin(cfg: ODINConfig, run: Run) -> dict[str, float]:
    return _analysed(_odin_analysis, cfg, run)


def _odin_analysis(cfg: ODINConfig, run: Run, data: ImageData, ood_sets: list[OODSet],
                   cnn: SavedCNN) -> dict[str, float]:
    summary = {"model.test_acc": clean_accuracy(cnn.model, data.test, run.device, cfg.analysis_batch_size),
               **_last_epoch("model", cnn)}
    keys, searches = search_sets(cnn.model, data.test.x, ood_sets, cfg.odin, cfg.analysis_batch_size, cfg.seed,
                                 reporter=run)
    for name, (res, id_val, ood_val) in searches.items():
        run.save_arrays(f"odin_grid_{name}.npz", search_arrays(res, id_val, ood_val))
        run.add(*report.odin_search_report(res, id_val, ood_val, name, msp_cell(res)))
    run.note("odin_grid_<ood>.npz holds every image's ODIN score for every (T, eps) (scores_id/scores_ood "
             "[T, eps, N]), the validation masks and the AUROC/FPR95 grids, so the heat map can be redrawn")
    return {**summary, **keys}
