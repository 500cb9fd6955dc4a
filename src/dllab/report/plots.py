"""Figures shared by every experiment. Each function returns a matplotlib Figure; the report functions wrap it
in a ``report.items.Figure``, which ``Run.add`` saves.

Figures are built with matplotlib's object-oriented API (``matplotlib.figure.Figure``), not pyplot: saving
one needs no backend (runs happen on servers and in CI), importing this module chooses none, and no figure
stays registered in pyplot's state waiting for a ``close`` (matplotlib's advice for web servers)."""
from __future__ import annotations

import matplotlib
import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from matplotlib.ticker import MaxNLocator

# Report pages are at most 1100 px wide (render.Doc.to_html), 10 in at save_png's 110 dpi: a wider figure is
# shown shrunk, its text with it. Figures stay within this width (more panels go to more rows), and their
# smallest text (legends, annotations) is SMALL_FONT points, about 12 px as shown.
PAGE_WIDTH_IN = 10.0
SMALL_FONT = 8


def panel_grid(n: int, panel_width: float, max_cols: int = 3) -> tuple[int, int]:
    """(rows, cols) for ``n`` panels of ``panel_width`` inches: as many columns as fit the page's width."""
    cols = max(1, min(n, max_cols, int(PAGE_WIDTH_IN // panel_width)))
    return -(-n // cols), cols


# A series this short gets a marker on each point: a line needs two points to show at all, and a few points
# read better as dots joined by lines (a 1-epoch run's curves would otherwise be empty plots).
FEW_POINTS = 12


def point_markers(n_points: int, size: float = 4) -> dict:
    """The ``plot``/``errorbar`` keywords that mark each point of a series of ``n_points`` (none for a long one)."""
    return {"marker": "o", "ms": size} if n_points <= FEW_POINTS else {}


def epoch_axis(ax) -> None:
    """Whole-number ticks on ``ax``'s x axis (epochs), one tick for a 1-epoch run (not 0.95, 0.975, ...)."""
    ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))


def training_curves(histories: dict[str, list[dict]], title: str = "") -> Figure:
    """Loss and accuracy per epoch for several variants on one figure (train solid, validation dashed)."""
    fig = Figure(figsize=(PAGE_WIDTH_IN, 4))
    ax_loss, ax_acc = fig.subplots(1, 2)
    colors = matplotlib.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (name, rows) in enumerate(histories.items()):
        c = colors[i % len(colors)]
        ep = [r["epoch"] for r in rows]
        marks = point_markers(len(ep))
        for ax, key in ((ax_loss, "loss"), (ax_acc, "acc")):
            ax.plot(ep, [r[f"train_{key}"] for r in rows], color=c, label=f"{name} train", **marks)
            if rows and f"val_{key}" in rows[0]:
                ax.plot(ep, [r[f"val_{key}"] for r in rows], color=c, ls="--", mfc="none", label=f"{name} val",
                        **marks)
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy", title="loss")
    ax_acc.set(xlabel="epoch", ylabel="accuracy", title="accuracy")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        epoch_axis(ax)
    ax_acc.legend(fontsize=SMALL_FONT, ncol=2 if len(histories) > 3 else 1)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def gradient_norms(series: dict[str, tuple[list[str], list[float]]], title: str = "") -> Figure:
    """Mean gradient norm per weight layer (input side left), log scale: vanishing gradients slope down."""
    fig = Figure(figsize=(8, 4))
    ax = fig.subplots()
    for label, (_, norms) in series.items():
        ax.semilogy(range(len(norms)), norms, label=label, **point_markers(len(norms), 3))
    ax.set(xlabel="layer index (input -> output)", ylabel="mean |grad W| (L2)", title=title or "gradient norms")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=SMALL_FONT)
    fig.tight_layout()
    return fig


def bar_chart(labels: list[str], series: dict[str, list[float]], ylabel: str, title: str = "") -> Figure:
    """Grouped bars: one group per label, one bar per series (e.g. val/test accuracy per variant)."""
    fig = Figure(figsize=(min(max(5, 1.1 * len(labels) + 2), PAGE_WIDTH_IN), 4))
    ax = fig.subplots()
    width = 0.8 / max(len(series), 1)
    x = np.arange(len(labels))
    for i, (name, values) in enumerate(series.items()):
        bars = ax.bar(x + (i - (len(series) - 1) / 2) * width, values, width, label=name)
        ax.bar_label(bars, fmt="%.3g", fontsize=SMALL_FONT)
    ax.set_xticks(x, labels, rotation=20, ha="right")
    ax.set(ylabel=ylabel, title=title)
    ax.grid(alpha=0.3, axis="y")
    if len(series) > 1:
        ax.legend(fontsize=SMALL_FONT)
    fig.tight_layout()
    return fig


def line_plot(x: list[float], series: dict[str, list[float]], xlabel: str, ylabel: str,
              title: str = "") -> Figure:
    """Several y-series over one x (e.g. accuracy over epsilon, standard vs adversarially trained)."""
    fig = Figure(figsize=(6.5, 4))
    ax = fig.subplots()
    for name, ys in series.items():
        ax.plot(x, ys, label=name, **point_markers(len(ys), 6))
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    ax.grid(alpha=0.3)
    if len(series) > 1:
        ax.legend(fontsize=SMALL_FONT)
    fig.tight_layout()
    return fig


def score_histograms(panels: dict[str, dict[str, np.ndarray]], title: str = "", ncols: int = 3) -> Figure:
    """One panel per quantity (e.g. max logit, max softmax, a detector's score), each overlaying the
    normalised histograms of several groups (ID and one or more OOD sets) on shared bins."""
    n = len(panels)
    rows, cols = panel_grid(n, 4.6, ncols)
    fig = Figure(figsize=(4.6 * cols, 3.4 * rows))
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax, (name, groups) in zip(axes.flat, panels.items()):
        values = [np.asarray(v, dtype=np.float64).ravel() for v in groups.values()]
        finite = np.concatenate([v[np.isfinite(v)] for v in values]) if values else np.array([])
        lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
        edges = np.linspace(lo, hi if hi > lo else lo + 1e-6, 41)   # 40 bins
        for i, (label, v) in enumerate(zip(groups, values)):
            v = v[np.isfinite(v)]
            ax.hist(v, bins=edges, density=True, histtype="stepfilled", alpha=0.3, color=f"C{i}",
                    label=f"{label} (n={v.size})")
            ax.hist(v, bins=edges, density=True, histtype="step", lw=1.2, color=f"C{i}")
        ax.set(title=name, ylabel="density")
        ax.xaxis.set_major_locator(MaxNLocator(6))   # long tick labels must not collide
        ax.grid(alpha=0.3)
        ax.legend(fontsize=SMALL_FONT)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def roc_pr_figure(curves: dict[str, dict], title: str = "") -> Figure:
    """ROC (left) and precision-recall (right) curves, one line per detector.

    ``curves[name]`` holds arrays ``fpr``, ``tpr``, ``precision``, ``recall`` (as returned by
    ``analysis.ood.metrics.roc_pr_curves``) and optionally ``auroc`` / ``aupr`` for the legend.
    """
    fig = Figure(figsize=(PAGE_WIDTH_IN, 4.4))
    ax_roc, ax_pr = fig.subplots(1, 2)
    for name, c in curves.items():
        roc_label = f"{name} (AUROC {c['auroc']:.3f})" if "auroc" in c else name
        pr_label = f"{name} (AP {c['aupr']:.3f})" if "aupr" in c else name
        ax_roc.plot(c["fpr"], c["tpr"], label=roc_label)
        ax_pr.plot(c["recall"], c["precision"], label=pr_label)
    ax_roc.plot([0, 1], [0, 1], color="grey", ls=":", lw=1)
    ax_roc.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC (OOD = positive)",
               xlim=(0, 1), ylim=(0, 1.01))
    ax_pr.set(xlabel="recall", ylabel="precision", title="precision-recall (OOD = positive)",
              xlim=(0, 1), ylim=(0, 1.01))
    for ax in (ax_roc, ax_pr):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=SMALL_FONT, loc="lower right" if ax is ax_roc else "lower left")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def heatmap(panels: dict[str, np.ndarray], row_labels: list, col_labels: list, xlabel: str, ylabel: str,
            title: str = "", mark: tuple[int, int] | None = None) -> Figure:
    """One annotated heat map per panel (e.g. AUROC over an ODIN (T, eps) grid on validation and test),
    on a shared colour scale; ``mark`` = (row, col) gets a red box (e.g. the selected setting)."""
    mats = {k: np.asarray(v, dtype=np.float64) for k, v in panels.items()}
    vals = np.concatenate([m[np.isfinite(m)].ravel() for m in mats.values()])
    vmin, vmax = (float(vals.min()), float(vals.max())) if vals.size else (0.0, 1.0)
    n = len(mats)
    h = max(3.0, 0.38 * len(row_labels) + 1.5)
    w = max(4.5, 0.85 * len(col_labels) + 2.2)
    rows, cols = panel_grid(n, w)
    fig = Figure(figsize=(min(w, PAGE_WIDTH_IN) * cols, h * rows), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False)
    im = None
    for ax, (name, m) in zip(axes.flat, mats.items()):
        im = ax.imshow(m, cmap="viridis", vmin=vmin, vmax=vmax if vmax > vmin else vmin + 1e-9, aspect="auto")
        ax.set_xticks(range(len(col_labels)), [str(c) for c in col_labels], rotation=30, ha="right",
                      fontsize=SMALL_FONT)
        ax.set_yticks(range(len(row_labels)), [str(r) for r in row_labels], fontsize=SMALL_FONT)
        ax.set(xlabel=xlabel, ylabel=ylabel, title=name)
        mid = (vmin + vmax) / 2
        for i in range(m.shape[0]):
            for j in range(m.shape[1]):
                ax.text(j, i, format(m[i, j], ".3f"), ha="center", va="center", fontsize=SMALL_FONT,
                        color="black" if m[i, j] > mid else "white")
        if mark is not None:
            ax.add_patch(Rectangle((mark[1] - 0.5, mark[0] - 0.5), 1, 1, fill=False, ec="red", lw=2))
    if im is not None:
        fig.colorbar(im, ax=list(axes.flat), shrink=0.85)
    if title:
        fig.suptitle(title)
    return fig


def image_grid(rows: dict[str, "np.ndarray"], captions: dict[str, list[str]] | None = None,
               colors: dict[str, list[str]] | None = None, title: str = "") -> Figure:
    """A grid of images: one row per key (e.g. clean, eps=0.01, ...), a caption under each image (e.g. the
    predicted class, coloured green/red for right/wrong). Images: (N, C, H, W) tensors or arrays, uint8
    (0-255) or float in [0, 1]; 1 or 3 channels."""
    names = list(rows)
    arrays = []
    for k in names:
        a = rows[k]
        a = a.detach().cpu().numpy() if hasattr(a, "detach") else np.asarray(a)
        a = a.astype(np.float64) / 255 if a.dtype == np.uint8 else a.astype(np.float64)
        arrays.append(np.clip(a, 0, 1))
    ncols = max((len(a) for a in arrays), default=1)
    fig = Figure(figsize=(1.25 * ncols + 0.9, 1.45 * len(names)))
    axes = fig.subplots(len(names), ncols, squeeze=False)
    for r, (name, a) in enumerate(zip(names, arrays)):
        for c in range(ncols):
            ax = axes[r, c]
            ax.set_xticks([])
            ax.set_yticks([])
            for s in ax.spines.values():
                s.set_visible(False)
            if c >= len(a):
                continue
            img = a[c].transpose(1, 2, 0)
            ax.imshow(img[..., 0] if img.shape[2] == 1 else img, cmap="gray" if img.shape[2] == 1 else None,
                      vmin=0, vmax=1, interpolation="nearest")
            if captions and name in captions and c < len(captions[name]):
                color = colors[name][c] if colors and name in colors and c < len(colors[name]) else "black"
                ax.set_xlabel(captions[name][c], fontsize=7, color=color, labelpad=2)
        axes[r, 0].set_ylabel(name, fontsize=8, rotation=0, ha="right", va="center", labelpad=6)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def line_panels(panels: dict[str, dict[str, tuple[list, list]]], ylabel: str = "", title: str = "",
                errors: dict[str, dict[str, list]] | None = None, xticks: dict[str, list[str]] | None = None,
                logx: tuple[str, ...] = ()) -> Figure:
    """One panel per title (its x label), several named (x, y) lines in each, optional error bars: a
    sweep's metric over each swept key, or several runs' training curves overlaid. ``xticks[panel]`` names
    categorical positions 0..n-1; panels in ``logx`` get a log x axis."""
    rows, cols = panel_grid(max(len(panels), 1), 5)
    fig = Figure(figsize=(5 * cols, 3.6 * rows))
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    for ax, (panel, lines) in zip(axes.flat, panels.items()):
        for name, (x, y) in lines.items():
            err = (errors or {}).get(panel, {}).get(name)
            ax.errorbar(x, y, yerr=err, capsize=3, label=name, **point_markers(len(y)))
        if xticks and panel in xticks:
            ax.set_xticks(range(len(xticks[panel])), xticks[panel], rotation=20, ha="right")
        if panel in logx:
            ax.set_xscale("log")
        ax.set(xlabel=panel, ylabel=ylabel)
        ax.grid(alpha=0.3)
        if 1 < len(lines) <= 12:
            ax.legend(fontsize=SMALL_FONT)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig
