"""Figures shared by every experiment. Each function returns a matplotlib Figure; ``Run.save_figure`` saves it."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # headless: runs happen on servers and in CI
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def training_curves(histories: dict[str, list[dict]], title: str = "") -> plt.Figure:
    """Loss and accuracy per epoch for several variants on one figure (train solid, validation dashed)."""
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (name, rows) in enumerate(histories.items()):
        c = colors[i % len(colors)]
        ep = [r["epoch"] for r in rows]
        for ax, key in ((ax_loss, "loss"), (ax_acc, "acc")):
            ax.plot(ep, [r[f"train_{key}"] for r in rows], color=c, label=f"{name} train")
            if rows and f"val_{key}" in rows[0]:
                ax.plot(ep, [r[f"val_{key}"] for r in rows], color=c, ls="--", label=f"{name} val")
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy", title="loss")
    ax_acc.set(xlabel="epoch", ylabel="accuracy", title="accuracy")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
    ax_acc.legend(fontsize=7, ncol=2 if len(histories) > 3 else 1)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def gradient_norms(series: dict[str, tuple[list[str], list[float]]], title: str = "") -> plt.Figure:
    """Mean gradient norm per weight layer (input side left), log scale: vanishing gradients slope down."""
    fig, ax = plt.subplots(figsize=(8, 4))
    for label, (_, norms) in series.items():
        ax.semilogy(range(len(norms)), norms, marker="o", ms=3, label=label)
    ax.set(xlabel="layer index (input -> output)", ylabel="mean |grad W| (L2)", title=title or "gradient norms")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def bar_chart(labels: list[str], series: dict[str, list[float]], ylabel: str, title: str = "") -> plt.Figure:
    """Grouped bars: one group per label, one bar per series (e.g. val/test accuracy per variant)."""
    fig, ax = plt.subplots(figsize=(max(5, 1.1 * len(labels) + 2), 4))
    width = 0.8 / max(len(series), 1)
    x = np.arange(len(labels))
    for i, (name, values) in enumerate(series.items()):
        bars = ax.bar(x + (i - (len(series) - 1) / 2) * width, values, width, label=name)
        ax.bar_label(bars, fmt="%.3g", fontsize=7)
    ax.set_xticks(x, labels, rotation=20, ha="right")
    ax.set(ylabel=ylabel, title=title)
    ax.grid(alpha=0.3, axis="y")
    if len(series) > 1:
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def line_plot(x: list[float], series: dict[str, list[float]], xlabel: str, ylabel: str, title: str = "",
              logy: bool = False) -> plt.Figure:
    """Several y-series over one x (e.g. accuracy over epsilon, standard vs adversarially trained)."""
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for name, ys in series.items():
        ax.plot(x, ys, marker="o", label=name)
    if logy:
        ax.set_yscale("log")
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    ax.grid(alpha=0.3)
    if len(series) > 1:
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig
