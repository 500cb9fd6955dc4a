"""The tables and figures of trained variants (Lab 1 and the classifiers Lab 4 trains), from the run's results
and history: experiment files only say which variants go together."""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:   # report modules import no torch for their type hints
    from ..train.variants import Variant


def accuracy_table(run, results: dict[str, dict], variants: list[Variant], title: str = "Variants") -> None:
    """One row per variant: its settings, parameters, accuracies, time."""
    meta_keys = list(dict.fromkeys(k for v in variants for k in v.meta))
    # A column of trainable parameters when some variant trains only part of its model (fine-tuning).
    partly = any(results[v.name]["trainable_params"] != results[v.name]["params"] for v in variants)
    header = ["variant", *meta_keys, *(["trainable params"] if partly else []), "params", "best val acc",
              "test acc (final)", "test acc (best val)", "seconds"]
    rows = []
    for v in variants:
        r = results[v.name]
        trainable = [f"{r['trainable_params']:,}"] if partly else []
        rows.append([v.name, *[v.meta.get(k, "") for k in meta_keys], *trainable, f"{r['params']:,}",
                     r.get("val_acc", float("nan")), r["test_acc"], r.get("best_test_acc", r["test_acc"]),
                     f"{r['seconds']:.1f}"])
    run.add_table(title, header, rows)


def curves_figure(run, names: list[str], file: str, caption: str, title: str = "") -> None:
    """Loss and accuracy per epoch of the variants ``names`` (from the run's history), one figure."""
    if not names:
        return
    from . import plots  # matplotlib: imported once there is a figure to draw, not before training

    run.save_figure(plots.training_curves({n: run.variant_history(n) for n in names}, title), file, caption)


def plain_vs_residual(run, results: dict, variants: list[Variant], what: str) -> None:
    """The depth experiments' table and figures: curves of the plain and of the residual ``what`` (variants
    ``plain_d<k>``, ``res_d<k>``), gradient norms of the deepest of each."""
    accuracy_table(run, results, variants)
    plain = [v.name for v in variants if v.name.startswith("plain")]
    res = [v.name for v in variants if v.name.startswith("res")]
    curves_figure(run, plain, "curves_plain.png", f"Plain {what}: loss and accuracy per epoch (dashed: validation)")
    curves_figure(run, res, "curves_residual.png",
                  f"Residual {what}: loss and accuracy per epoch (dashed: validation)")
    gradient_figure(run, results, plain[-1:] + res[-1:])


def gradient_figure(run, results: dict, names: list[str]) -> None:
    """Per-layer gradient norms of ``names`` in their first and last epoch (``train.grad_norms``)."""
    from . import plots

    series = {}
    for n in names:
        gn = results[n].get("grad_norms")
        if not gn or not gn["per_epoch"]:
            continue
        series[f"{n} epoch 1"] = (gn["layers"], gn["per_epoch"][0])
        if len(gn["per_epoch"]) > 1:
            series[f"{n} epoch {len(gn['per_epoch'])}"] = (gn["layers"], gn["per_epoch"][-1])
    if series:
        run.save_figure(plots.gradient_norms(series, "per-layer gradient norm, deepest plain vs residual"),
                        "gradient_norms.png", "Mean gradient norm per weight layer (log scale), first and "
                        "last epoch, deepest plain vs deepest residual model")


def accuracy_vs_depth(run, results: dict, depths: list[int]) -> None:
    """Test accuracy against depth, plain (``plain_d<k>``) vs residual (``res_d<k>``)."""
    from . import plots

    series = {kind: [results[f"{p}_d{d}"]["test_acc"] if f"{p}_d{d}" in results else float("nan") for d in depths]
              for kind, p in (("plain", "plain"), ("residual", "res"))}
    run.save_figure(plots.line_plot(depths, series, "depth (blocks)", "test accuracy", "test accuracy vs depth"),
                    "accuracy_vs_depth.png", "Test accuracy against depth, plain vs residual")
