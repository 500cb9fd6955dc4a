"""Lab 2's tables and figures, built from the numbers its experiments measured (run functions only wire).
Each function returns its report items (``report.items``) for ``run.add``."""
from __future__ import annotations

from dllab.core.progress import mmss
from dllab.core.items import Figure, Item, Note, Table
from dllab.report.plots import bar_chart


def classifiers_report(acc: dict[str, dict[str, float]], timings: dict[str, float], reference: dict,
                       model_name: str, pooling: str, k: int, n_train: int) -> list[Item]:
    """The frozen-embedding classifiers: a table beside the spec's validation accuracy, and a bar chart."""
    rows = []
    for clf, a in acc.items():
        ref = reference.get(f"{clf}.val_acc")
        rows.append([clf + (f" (k={k})" if clf == "knn" else ""), f"{a['validation']:.4f}", f"{a['test']:.4f}",
                     f"{ref:.2f}" if ref else "-", f"{timings[clf]:.1f}"])
    table = Table(f"Classifiers on last-layer {pooling.upper()} embeddings of {model_name} "
                  f"(train n={n_train}, standardised)",
                  ["classifier", "val acc", "test acc", "spec val acc", "fit seconds"], rows)
    names = list(acc)
    fig = bar_chart(names, {"validation": [acc[n]["validation"] for n in names],
                            "test": [acc[n]["test"] for n in names]},
                    "accuracy", f"{model_name}: classifiers on {pooling} embeddings")
    return [table, Figure(fig, "classifiers.png", "Validation and test accuracy per classifier on frozen embeddings")]


def strategies_report(results: dict[str, dict], reference: dict, model_name: str, setting: str) -> list[Item]:
    """The fine-tuning strategies table (``setting``: data size, epochs, batch...), notes on how time and
    memory were measured, and two bar charts."""
    kinds = sorted({r["memory_kind"] for r in results.values()})
    rows = []
    for s, r in results.items():
        ref = reference.get(f"{s}.val_acc")
        last = r.get("test_acc_last")
        rows.append([s, f"{r['val_acc']:.4f}", f"{r['test_acc']:.4f}", "-" if last is None else f"{last:.4f}",
                     f"{ref:.4f}" if ref else "-",
                     mmss(r["seconds"]), f"{r['trainable_params']:,}", f"{r['peak_mem_mb']:.0f}", r["precision"]])
    table = Table(f"Fine-tuning strategies ({model_name}, {setting})",
                  ["strategy", "val acc", "test acc (best val epoch)", "test acc (last epoch)", "spec val acc",
                   "wall time (train + val)", "trainable params",
                   "peak memory (MB)", "precision"], rows)
    memory = Note(f"peak memory is {', '.join(kinds)}" + ("; the resident set rarely shrinks after a strategy, so a "
                  "later strategy's peak can include memory an earlier one left cached"
                  if any("RSS" in k for k in kinds) else ""))
    timing = Note("wall time covers preparing the model, training and the per-epoch validation; the final test pass "
                  "is not included. The selected epoch is the one with the best validation accuracy.")
    names = list(results)
    accuracy = bar_chart(names, {"validation": [results[n]["val_acc"] for n in names],
                                 "test": [results[n]["test_acc"] for n in names]}, "accuracy",
                         f"{model_name}: accuracy per fine-tuning strategy")
    time = bar_chart(names, {"wall time": [results[n]["seconds"] for n in names]}, "seconds",
                     f"{model_name}: wall time per strategy (train + val)")
    return [table, memory, timing,
            Figure(accuracy, "strategies_accuracy.png", "Validation and test accuracy per fine-tuning strategy"),
            Figure(time, "strategies_time.png", "Wall time per fine-tuning strategy (preparing, training, validating)")]
