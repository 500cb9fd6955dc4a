"""The tables and figures of trained variants (Lab 1 and the classifiers Lab 4 trains), from their results
and the run's history (rows with a ``variant`` column): experiment files only say which variants go together.
Each function returns its report items (``report.items``) for ``run.add``."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from dllab.core.items import Figure, Item, Table
from dllab.report import plots

if TYPE_CHECKING:   # report modules import no torch for their type hints
    from dllab.train.variants import Variant


def test_columns(results: dict[str, dict]) -> list[str]:
    """The test accuracy columns' names, saying which weights each is of (``train.settings.METRICS_RULE``): the
    kept weights' (the best validation epoch's) first, then the last epoch's; one column when no variant has a
    validation split (the kept weights are then the last epoch's)."""
    if not any("val_acc" in r for r in results.values()):
        return ["test acc (last epoch; no validation split)"]
    return ["test acc (best val epoch)", "test acc (last epoch)"]


def accuracy_table(results: dict[str, dict], variants: list[Variant], title: str = "Variants") -> list[Item]:
    """One row per variant: its settings, parameters, accuracies, time."""
    meta_keys = list(dict.fromkeys(k for v in variants for k in v.meta))
    # A column of trainable parameters when some variant trains only part of its model (fine-tuning).
    partly = any(results[v.name]["trainable_params"] != results[v.name]["params"] for v in variants)
    tests = test_columns({v.name: results[v.name] for v in variants})
    header = ["variant", *meta_keys, *(["trainable params"] if partly else []), "params", "best val acc", *tests,
              "seconds"]
    rows = []
    for v in variants:
        r = results[v.name]
        trainable = [f"{r['trainable_params']:,}"] if partly else []
        accs = [r["test_acc"], r.get("test_acc_last", float("nan"))][:len(tests)]
        rows.append([v.name, *[v.meta.get(k, "") for k in meta_keys], *trainable, f"{r['params']:,}",
                     r.get("val_acc", float("nan")), *accs, f"{r['seconds']:.1f}"])
    return [Table(title, header, rows)]


def curves_figure(history: list[dict[str, Any]], names: list[str], file: str, caption: str,
                  title: str = "") -> list[Item]:
    """Loss and accuracy per epoch of the variants ``names`` (their rows of ``history``), one figure."""
    if not names:
        return []
    rows = {n: [r for r in history if r.get("variant") == n] for n in names}
    return [Figure(plots.training_curves(rows, title), file, caption)]


def plain_vs_residual(history: list[dict[str, Any]], results: dict, variants: list[Variant],
                      what: str) -> list[Item]:
    """The depth experiments' table and figures: curves of the plain and of the residual ``what`` (variants
    ``plain_d<k>``, ``res_d<k>``), gradient norms of the deepest of each."""
    plain = [v.name for v in variants if v.name.startswith("plain")]
    res = [v.name for v in variants if v.name.startswith("res")]
    return [*accuracy_table(results, variants),
            *curves_figure(history, plain, "curves_plain.png",
                           f"Plain {what}: loss and accuracy per epoch (dashed: validation)"),
            *curves_figure(history, res, "curves_residual.png",
                           f"Residual {what}: loss and accuracy per epoch (dashed: validation)"),
            *gradient_figure(results, plain[-1:] + res[-1:])]


def gradient_figure(results: dict, names: list[str]) -> list[Item]:
    """Per-layer gradient norms of ``names`` in their first and last epoch (``train.grad_norms``)."""
    series = {}
    for n in names:
        gn = results[n].get("grad_norms")
        if not gn or not gn["per_epoch"]:
            continue
        series[f"{n} epoch 1"] = (gn["layers"], gn["per_epoch"][0])
        if len(gn["per_epoch"]) > 1:
            series[f"{n} epoch {len(gn['per_epoch'])}"] = (gn["layers"], gn["per_epoch"][-1])
    if not series:
        return []
    return [Figure(plots.gradient_norms(series, "per-layer gradient norm, deepest plain vs residual"),
                   "gradient_norms.png", "Mean gradient norm per weight layer (log scale), first and last epoch, "
                   "deepest plain vs deepest residual model")]


def accuracy_vs_depth(results: dict, depths: list[int]) -> list[Item]:
    """Test accuracy (of the kept weights) against depth, plain (``plain_d<k>``) vs residual (``res_d<k>``)."""
    series = {kind: [results[f"{p}_d{d}"]["test_acc"] if f"{p}_d{d}" in results else float("nan") for d in depths]
              for kind, p in (("plain", "plain"), ("residual", "res"))}
    return [Figure(plots.line_plot(depths, series, "depth (blocks)", "test accuracy", "test accuracy vs depth"),
                   "accuracy_vs_depth.png", "Test accuracy (test_acc: the saved weights') against depth, plain vs "
                   "residual")]
