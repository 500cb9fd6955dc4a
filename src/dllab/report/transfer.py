"""Transfer learning's tables, notes and figures (lab1.transfer), from the numbers its run measured. Each
function returns its report items (``report.items``) for ``run.add``."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from dllab.core.items import Figure, Item, Note, Table
from dllab.report import plots
from dllab.report.variants import accuracy_table, curves_figure
from dllab.report.significance import pretraining_verdict

if TYPE_CHECKING:
    from dllab.data.images import ImageData
    from dllab.train.reuse import SavedCNN
    from dllab.train.variants import Variant


def _show(classes: list[str]) -> str:
    return ", ".join(classes[:10]) + ("..." if len(classes) > 10 else "")


def note_classes(source: SavedCNN, target: ImageData, spec_setting: bool, stand_in: bool = True) -> list[Item]:
    """Say when the target is not the spec's CIFAR-100 (``spec_setting`` False): a profile's stand-in for it
    (``stand_in``) or the user's own dataset; and when the source model has seen some of the target's classes (not
    a clean transfer)."""
    notes: list[Item] = []
    if not spec_setting:
        why = "not available offline" if stand_in else "the user's own dataset"
        notes.append(Note(f"the target is not CIFAR-100 ({why}): source = {len(source.classes)} "
                          f"classes ({', '.join(source.classes[:10])}), "
                          f"target = {target.name if stand_in else target.title} classes "
                          f"{_show(target.classes)}; the spec's numbers (CIFAR-100, 100 classes) are not "
                          "comparable with this run's"))
    shared = [c for c in target.classes if c in source.classes]
    if shared:
        notes.append(Note(f"the source model was trained on {len(shared)} of the target's classes "
                          f"({_show(shared)}): this is not a clean transfer"))
    return notes


def note_head(width: int, num_classes: int) -> list[Item]:
    return [Note(f"head: the spec's model defines fc = Linear({width}, {width}) that its forward pass never uses; "
                 f"dllab's head is fc + ReLU + a new classifier Linear({width}, {num_classes}), and only those two "
                 "layers train")]


def classical_table(accs: dict[str, dict], dim: int, k: int) -> list[Item]:
    label = {"svm": "LinearSVC (C=1)", "knn": f"k-NN (k={k})", "logreg": "logistic regression"}
    return [Table(f"Classical classifiers on the frozen {dim}-dim source features (standardised)",
                  ["classifier", "model", "val acc", "test acc", "seconds"],
                  [[n, label.get(n, n), a.get("val", float("nan")), a.get("test", float("nan")),
                    f"{a['seconds']:.1f}"] for n, a in accs.items()])]


def accuracy_figure(summary: dict[str, float], methods: list[str], title: str,
                    reference: dict[str, float] | None) -> list[Item]:
    """All methods side by side: classical classifiers, fine-tuning variants, scratch (and the spec's
    validation accuracy, when ``reference`` is given: the run is in the spec's setting)."""
    methods = [n for n in methods if f"{n}.test_acc" in summary]
    if not methods:
        return []
    series = {"val": [summary.get(f"{n}.val_acc", float("nan")) for n in methods],
              "test": [summary[f"{n}.test_acc"] for n in methods]}
    if reference is not None:
        series["spec"] = [reference.get(f"{n}.val_acc", float("nan")) for n in methods]
    return [Figure(plots.bar_chart(methods, series, "accuracy", title),
                   "accuracy.png", "Accuracy on the target per method: classical classifiers on frozen features, "
                   "fine-tuning variants, scratch (val = the best epoch's, test = the saved weights': that epoch's)")]


def variants_report(history: list[dict[str, Any]], results: dict[str, dict], tuned: list[Variant],
                    src_data: ImageData | None) -> list[Item]:
    """The fine-tuning variants' table and curves, and the source model's curves when it was trained here
    (from the run's ``history``)."""
    items: list[Item] = []
    if tuned:
        items += accuracy_table(results, tuned, "Fine-tuning variants (target dataset)")
        items += curves_figure(history, [v.name for v in tuned], "curves.png", "Fine-tuning variants and scratch "
                               "on the target: loss and accuracy per epoch (dashed: validation)")
    if src_data is not None:
        items += curves_figure(history, ["source"], "curves_source.png", f"Source model on {src_data.name} "
                               f"({src_data.num_classes} classes): loss and accuracy per epoch")
    return items


def closing_notes(results: dict[str, dict], summary: dict[str, float], target: ImageData,
                  spec_verdict: str = "") -> list[Item]:
    """Whether pretraining beat scratch by more than sampling noise (and ``spec_verdict``, the spec's answer),
    frozen features against fine-tuning."""
    notes: list[Item] = []
    n_eval = len(target.val) if target.val is not None else len(target.test)
    if sentence := pretraining_verdict(results, n_eval, "val" if target.val is not None else "test",
                                       spec_verdict):
        notes.append(Note(sentence))
    if "svm.val_acc" in summary and "full_adam.val_acc" in summary:
        notes.append(Note(f"frozen features vs fine-tuning: LinearSVC {summary['svm.val_acc']:.4f}"
                          + (f", k-NN {summary['knn.val_acc']:.4f}" if "knn.val_acc" in summary else "")
                          + (f", head {summary['head.val_acc']:.4f}" if "head.val_acc" in summary else "")
                          + f" against full_adam {summary['full_adam.val_acc']:.4f} (val accuracy)"))
    return notes   # which weights test_acc is of: the report states train.settings.METRICS_RULE once
