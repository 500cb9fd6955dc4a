"""Lab 4's tables and figures, built from arrays (scores, metrics, accuracies, ODIN grids); ``report.plots``
draws the primitives. Each function returns its report items (``report.items``) for ``run.add``. ``labels``
maps a detector's name to its label in figures.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from dllab.report import plots
from dllab.core.items import Figure, Item, Note, Table
from dllab.ood.metrics import roc_pr_curves


def k255(eps: float) -> str:
    """An epsilon in pixel units of [0, 1] images, as k/255."""
    return f"{eps * 255:.3g}/255"


def classifier_table(models: dict[str, tuple[str, dict | str, float]], classes: int, test_images: int) -> list[Item]:
    """The classifier (or, with several, one row per model): name -> (where it came from, its cnn's
    architecture (its arguments; a user's model as text), its clean test accuracy), beside the ID data's number
    of classes and test images."""
    several = len(models) > 1
    return [Table("Models" if several else "Classifier",
                  [*(["model"] if several else []), "source", "architecture", "ID classes", "test images",
                   "clean test accuracy (fp32, saved weights)"],
                  [[*([n] if several else []), source, f"cnn {arch}" if isinstance(arch, dict) else arch, classes,
                    test_images, acc]
                   for n, (source, arch, acc) in models.items()])]


# --- OOD detection ---------------------------------------------------------------------------------

def ood_metrics_table(metrics: dict, title: str) -> list[Item]:
    rows = [[ood, d, m["auroc"], m["aupr_in"], m["aupr_out"], m["fpr95"]]
            for ood, per_det in metrics.items() for d, m in per_det.items()]
    return [Table(title, ["OOD set", "detector", "AUROC", "AUPR-in", "AUPR-out", "FPR@95TPR"], rows)]


def histogram_panels(scores: dict, labels: dict[str, str]) -> dict[str, dict[str, np.ndarray]]:
    """Max logit, max softmax probability and every other detector's score, ID test vs each OOD set (MSP
    and max logit are the first two panels, unsigned)."""
    name = {g: ("ID test" if g == "id" else f"OOD {g}") for g in scores}
    panels = {"max logit": {name[g]: s["logits"].amax(1).numpy() for g, s in scores.items()},
              "max softmax probability": {name[g]: torch.softmax(s["logits"], 1).amax(1).numpy()
                                          for g, s in scores.items()}}
    for d, label in labels.items():
        if d not in ("msp", "max_logit"):
            panels[f"{label} score"] = {name[g]: s[d].numpy() for g, s in scores.items()}
    return panels


def ood_histograms(scores: dict, labels: dict[str, str]) -> list[Item]:
    return [Figure(plots.score_histograms(histogram_panels(scores, labels), "ID test vs OOD"), "histograms.png",
                   "Histograms of the max logit, the max softmax probability and the other detectors' scores "
                   "(larger score = more OOD), ID test images vs each OOD set")]


def roc_figures(scores: dict, metrics: dict, labels: dict[str, str], file_prefix: str = "",
                caption_prefix: str = "") -> list[Item]:
    """roc_pr_<ood>.png per OOD set: every detector's ROC and precision-recall curve."""
    figures: list[Item] = []
    for ood, per_det in metrics.items():
        curves = {}
        for d, m in per_det.items():
            c = roc_pr_curves(scores["id"][d], scores[ood][d])
            curves[labels[d]] = {**c, "auroc": m["auroc"], "aupr": m["aupr_out"]}
        figures.append(Figure(plots.roc_pr_figure(curves, f"{caption_prefix}ID test vs OOD {ood}"),
                              f"{file_prefix}roc_pr_{ood}.png",
                              f"{caption_prefix}ROC and precision-recall curves (OOD = positive) of every detector, "
                              f"ID test vs {ood}"))
    return figures


def ood_examples(images: dict[str, torch.Tensor], scores: dict,
                 reconstruct: Callable[[torch.Tensor], torch.Tensor] | None = None, n: int = 8) -> list[Item]:
    """examples.png: a few images of each group ("id" and every OOD set) with their MSP, and the autoencoder's
    reconstructions (``reconstruct``) with their reconstruction error when it ran."""
    rows, captions = {}, {}
    for g, x in images.items():
        idx = torch.linspace(0, len(x) - 1, min(n, len(x))).long()
        label = "ID" if g == "id" else g
        rows[label] = x[idx]
        msp = torch.softmax(scores[g]["logits"][idx], 1).amax(1)
        captions[label] = [f"p={p:.2f}" for p in msp.tolist()]
        if reconstruct is not None:
            rows[f"{label} recon."] = reconstruct(x[idx])
            captions[f"{label} recon."] = [f"mse={v:.4f}" for v in scores[g]["autoencoder"][idx].tolist()]
    return [Figure(plots.image_grid(rows, captions, title="ID and OOD examples (p = max softmax probability)"),
                   "examples.png", "ID and OOD test images with the classifier's max softmax probability"
                   + (", and their autoencoder reconstructions with the reconstruction error"
                      if reconstruct else ""))]


# --- attacks ---------------------------------------------------------------------------------------

def attack_accuracy(accs: dict[float, float], attack: str, ref: dict[str, float]) -> list[Item]:
    """The accuracy-per-epsilon table and accuracy_vs_eps.png, with the spec's numbers (``ref``,
    keyed ``acc@<eps>``) where it has them."""
    table = Table(f"{attack.upper()} accuracy per epsilon (pixel units of [0, 1] images)",
                  ["epsilon", "epsilon x 255", "test accuracy", "spec"],
                  [[f"{e:g}", k255(e), v, ref.get(f"acc@{e:g}", "")] for e, v in accs.items()])
    series = {f"this run ({attack})": list(accs.values())}
    if ref and all(f"acc@{e:g}" in ref for e in accs):
        series["spec"] = [ref[f"acc@{e:g}"] for e in accs]
    return [table, Figure(plots.line_plot(list(accs), series, "epsilon (pixel units)", "test accuracy",
                                          f"{attack.upper()}: accuracy vs epsilon"), "accuracy_vs_eps.png",
                          f"Test accuracy under {attack.upper()} against epsilon"
                          + (" (with the spec's numbers)" if "spec" in series else ""))]


def attack_examples(y: torch.Tensor, examples: dict, classes: list[str], attack: str,
                    file: str = "examples.png", title: str = "") -> list[Item]:
    """A grid of clean images (with the true class) and their perturbed versions per epsilon, captioned with
    the model's prediction (green = right, red = wrong); ``examples`` = {eps: (images, predictions)}."""
    if not examples:
        return []
    rows, captions, colors = {}, {}, {}
    truth = y.tolist()
    for eps, (xa, pred) in examples.items():
        key = "clean" if eps == 0 else f"eps={eps:g}\n({k255(eps)})"
        rows[key] = xa
        captions[key] = [classes[p][:10] for p in pred.tolist()]
        if eps == 0:
            captions[key] = [f"{c}\n(true: {classes[t][:10]})" for c, t in zip(captions[key], truth)]
        colors[key] = ["tab:green" if p == t else "tab:red" for p, t in zip(pred.tolist(), truth)]
    return [Figure(plots.image_grid(rows, captions, colors, title or f"{attack.upper()} examples"), file,
                   f"{title or attack.upper()}: test images (clean, with the true class) and their perturbed "
                   "versions per epsilon, with the model's prediction (green = right, red = wrong)")]


# --- adversarial training: the standard model vs the adversarially trained one ---------------------

MODELS = {"standard": "standard", "adv": "adversarially trained"}   # key in accs/metrics/scores -> legend


def model_labels(names) -> dict[str, str]:
    """Legend of each model of lab4.adv-train: ``MODELS``'s, and adv_<mode> as "adversarially trained (<mode>)"."""
    return {n: MODELS.get(n) or f"adversarially trained ({n.removeprefix('adv_')})" for n in names}


def comparison_tables(accs: dict, metrics: dict, attack: str, refs: dict[str, dict]) -> list[Item]:
    """Accuracy per epsilon and OOD detection (AUROC, FPR95) of the models side by side (``accs``,
    ``metrics`` and ``refs``, the spec's numbers keyed ``acc@<eps>``, are keyed by model; ``model_labels``)."""
    models = model_labels(accs)
    eps_list = list(accs["standard"])
    attack_table = Table(f"{attack.upper()} accuracy per epsilon, standard vs adversarially trained",
                         ["epsilon", "epsilon x 255", *models, *[f"spec {n}" for n in MODELS if n in refs]],
                         [[f"{e:g}", k255(e), *[accs[n][e] for n in models],
                           *[refs[n].get(f"acc@{e:g}", "") for n in MODELS if n in refs]] for e in eps_list])
    std = metrics["standard"]
    several = len(std) > 1
    rows = [[*([o] if several else []), d, *[metrics[n][o][d]["auroc"] for n in models],
             *[metrics[n][o][d]["fpr95"] for n in models]] for o in std for d in std[o]]
    return [attack_table, Table("OOD detection, standard vs adversarially trained (ID test vs OOD)",
                                [*(["OOD set"] if several else []), "detector", *[f"AUROC {n}" for n in models],
                                 *[f"FPR95 {n}" for n in models]], rows)]


def comparison_figures(accs: dict, metrics: dict, scores: dict, attack: str, labels: dict[str, str]) -> list[Item]:
    """accuracy_vs_eps.png, ood_auroc.png, histograms.png (max logit and MSP) of the models (``model_labels``),
    then each model's ROC/PR curves (<model>_roc_pr_<ood>.png)."""
    models = model_labels(accs)
    curves = {label: list(accs[n].values()) for n, label in models.items()}
    accuracy = Figure(plots.line_plot(list(accs["standard"]), curves, "epsilon (pixel units)", "test accuracy",
                                      f"{attack.upper()}: accuracy vs epsilon"),
                      "accuracy_vs_eps.png", f"Test accuracy under {attack.upper()}, standard vs adversarially trained")
    std = metrics["standard"]
    bars = [f"{o}: {d}" if len(std) > 1 else d for o in std for d in std[o]]
    auroc = Figure(plots.bar_chart(bars, {n: [metrics[n][o][d]["auroc"] for o in std for d in std[o]]
                                          for n in models}, "AUROC", "OOD detection AUROC"), "ood_auroc.png",
                   "AUROC of each detector (ID test vs OOD), standard vs adversarially trained")
    panels = {f"{n}: {k}": v for n in models for k, v in histogram_panels(scores[n], {}).items()}
    histograms = Figure(plots.score_histograms(panels, "standard vs adversarially trained", ncols=2),
                        "histograms.png", "Max logit and max softmax probability, ID test vs OOD, for both models")
    return [accuracy, auroc, histograms,
            *[f for n in models for f in roc_figures(scores[n], metrics[n], labels, f"{n}_", f"{n}: ")]]


def mode_table(clean: dict[str, float], accs: dict[str, dict[str, dict[float, float]]], sentence: str,
               spec: dict[str, dict[str, float]] | None = None) -> list[Item]:
    """One table of each model's accuracy per epsilon, clean and under each attack (``accs`` =
    {model: {attack: {eps: accuracy}}}), and ``sentence``, what it shows in words, under it. ``spec``
    ({model: {"acc@<eps>": accuracy}}, the spec's FGSM numbers of the models it has) adds a column beside them."""
    attacks = list(next(iter(accs.values())))
    spec = spec or {}
    rows = [[n, f"{e:g}", k255(e), clean[n], *[per[a][e] for a in attacks],
             *([spec.get(n, {}).get(f"acc@{e:g}", "")] if spec else [])]
            for n, per in accs.items() for e in per[attacks[0]] if e > 0]
    return [Table("Accuracy per adversarial-training mode: clean and under each attack, per epsilon",
                  ["model", "epsilon", "epsilon x 255", "clean", *[a.upper() for a in attacks],
                   *(["spec (FGSM)"] if spec else [])], rows),
            Note(sentence)]


# --- ODIN grid search ------------------------------------------------------------------------------

def odin_search_report(res: dict, id_val: torch.Tensor, ood_val: torch.Tensor, ood: str,
                       cell: dict | None) -> list[Item]:
    """odin_heatmap_<ood>.png (validation and test AUROC over the grid, the chosen cell marked) and the
    table of ODIN's chosen setting vs MSP vs the grid's (T=1, eps=0) cell (``cell``) on the test part."""
    T, E, (bi, bj) = res["T"], res["eps"], res["best"]
    n_id, n_ood = int(id_val.sum()), int(ood_val.sum())
    heatmap = Figure(plots.heatmap({f"validation AUROC ({n_id} ID + {n_ood} OOD)": res["val_auroc"],
                                    f"test AUROC ({len(id_val) - n_id} ID + {len(ood_val) - n_ood} OOD)":
                                    res["test_auroc"]},
                                   [f"{t:g}" for t in T], [f"{e:g}" for e in E], "epsilon", "temperature T",
                                   f"ODIN AUROC, ID test vs {ood}", mark=(bi, bj)),
                     f"odin_heatmap_{ood}.png",
                     f"ODIN AUROC over the (T, eps) grid, ID vs {ood}: validation part (selects the red cell) and "
                     "test part")
    bt, mt = res["best_test"], res["msp_test"]
    cell = cell or {"auroc": float("nan"), "fpr95": float("nan")}
    return [heatmap, Table(f"ODIN vs MSP on the test part, ID vs {ood}",
                           ["detector", "T", "epsilon", "AUROC", "AUPR-in", "AUPR-out", "FPR@95TPR"],
                           [["ODIN, best on validation", f"{T[bi]:g}", f"{E[bj]:g}", bt["auroc"], bt["aupr_in"],
                             bt["aupr_out"], bt["fpr95"]],
                            ["MSP (logits_of + msp_scores)", "", "", mt["auroc"], mt["aupr_in"], mt["aupr_out"],
                             mt["fpr95"]],
                            ["ODIN grid cell T=1, eps=0", "1", "0", cell["auroc"], "", "", cell["fpr95"]]])]
