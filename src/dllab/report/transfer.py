"""Transfer learning's tables, notes and figures (lab1.transfer), from the numbers its run measured."""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..data.images import ImageData
    from ..train.reuse import SavedCNN
    from ..train.variants import Variant


def _show(classes: list[str]) -> str:
    return ", ".join(classes[:10]) + ("..." if len(classes) > 10 else "")


def note_classes(run, source: SavedCNN, target: ImageData, spec_setting: bool) -> None:
    """Say when the target is not the spec's CIFAR-100 (``spec_setting`` False), and when the source model
    has seen some of the target's classes (not a clean transfer)."""
    if not spec_setting:
        run.note(f"the target is not CIFAR-100 (not available offline): source = {len(source.classes)} classes "
                 f"({', '.join(source.classes[:10])}), target = {target.name} classes {_show(target.classes)}; "
                 "the spec's numbers (CIFAR-100, 100 classes) are not comparable with this run's")
    shared = [c for c in target.classes if c in source.classes]
    if shared:
        run.note(f"the source model was trained on {len(shared)} of the target's classes ({_show(shared)}): "
                 "this is not a clean transfer")


def note_head(run, width: int, num_classes: int) -> None:
    run.note(f"head: the spec's model defines fc = Linear({width}, {width}) that its forward pass never uses; "
             f"dllab's head is fc + ReLU + a new classifier Linear({width}, {num_classes}), and only those two "
             "layers train")


def classical_table(run, accs: dict[str, dict], dim: int, k: int) -> None:
    label = {"svm": "LinearSVC (C=1)", "knn": f"k-NN (k={k})", "logreg": "logistic regression"}
    run.add_table(f"Classical classifiers on the frozen {dim}-dim source features (standardised)",
                  ["classifier", "model", "val acc", "test acc", "seconds"],
                  [[n, label.get(n, n), a.get("val", float("nan")), a.get("test", float("nan")),
                    f"{a['seconds']:.1f}"] for n, a in accs.items()])


def accuracy_figure(run, summary: dict[str, float], methods: list[str], title: str,
                    reference: dict[str, float] | None) -> None:
    """All methods side by side: classical classifiers, fine-tuning variants, scratch (and the spec's
    validation accuracy, when ``reference`` is given: the run is in the spec's setting)."""
    from . import plots

    methods = [n for n in methods if f"{n}.test_acc" in summary]
    if not methods:
        return
    series = {"val": [summary.get(f"{n}.val_acc", float("nan")) for n in methods],
              "test": [summary[f"{n}.test_acc"] for n in methods]}
    if reference is not None:
        series["spec"] = [reference.get(f"{n}.val_acc", float("nan")) for n in methods]
    run.save_figure(plots.bar_chart(methods, series, "accuracy", title),
                    "accuracy.png", "Accuracy on the target per method: classical classifiers on frozen features, "
                    "fine-tuning variants, scratch (val = best epoch, test = the best-val weights)")


def variants_report(run, results: dict[str, dict], tuned: list[Variant], src_data: ImageData | None) -> None:
    """The fine-tuning variants' table and curves, and the source model's curves when it was trained here."""
    from .variants import accuracy_table, curves_figure

    if tuned:
        accuracy_table(run, results, tuned, "Fine-tuning variants (target dataset)")
        curves_figure(run, [v.name for v in tuned], "curves.png",
                      "Fine-tuning variants and scratch on the target: loss and accuracy per epoch (dashed: validation)")
    if src_data is not None:
        curves_figure(run, ["source"], "curves_source.png",
                      f"Source model on {src_data.name} ({src_data.num_classes} classes): loss and accuracy per epoch")


def closing_notes(run, results: dict[str, dict], summary: dict[str, float], target: ImageData,
                  spec_verdict: str = "") -> None:
    """Whether pretraining beat scratch by more than sampling noise (and ``spec_verdict``, the spec's answer),
    frozen features against fine-tuning, and which weights test_acc measures."""
    from ..analysis.significance import pretraining_verdict

    n_eval = len(target.val) if target.val is not None else len(target.test)
    if sentence := pretraining_verdict(results, n_eval, "val" if target.val is not None else "test",
                                       spec_verdict):
        run.note(sentence)
    if "svm.val_acc" in summary and "full_adam.val_acc" in summary:
        run.note(f"frozen features vs fine-tuning: LinearSVC {summary['svm.val_acc']:.4f}"
                 + (f", k-NN {summary['knn.val_acc']:.4f}" if "knn.val_acc" in summary else "")
                 + (f", head {summary['head.val_acc']:.4f}" if "head.val_acc" in summary else "")
                 + f" against full_adam {summary['full_adam.val_acc']:.4f} (val accuracy)")
    run.note("test_acc is measured with each variant's best-validation weights (the weights saved in models/)")
