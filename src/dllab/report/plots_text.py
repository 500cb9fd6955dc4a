"""Plots for the text labs, kept generic: a grouped bar chart of any per-variant numbers.

(Separate from the lead's ``report/plots.py`` so the two can be written in parallel; nothing here is
text-specific, so the image experiments may use it too.)
"""
from __future__ import annotations

import math


def bar_chart(labels: list[str], series: dict[str, list[float]], ylabel: str, title: str, ax=None,
              fmt: str = "{:.3f}", ylim: tuple[float, float] | None = None):
    """Grouped bars: one group per label, one bar per series, each bar annotated with its value.

    NaN values (a variant that did not run) leave a gap. Draws on ``ax`` if given; returns the Figure.
    """
    import matplotlib
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    if ax is None:
        fig, ax = plt.subplots(figsize=(max(4.0, 1.1 * len(labels) * max(1, len(series)) ** 0.5 + 2), 3.6))
    else:
        fig = ax.figure
    n = max(1, len(series))
    width = 0.8 / n
    for i, (name, values) in enumerate(series.items()):
        xs = [j + (i - (n - 1) / 2) * width for j in range(len(labels))]
        bars = ax.bar(xs, [0.0 if _nan(v) else v for v in values], width, label=name)
        for bar, v in zip(bars, values):
            if not _nan(v):
                ax.annotate(fmt.format(v), (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                            ha="center", va="bottom", fontsize=7, xytext=(0, 1), textcoords="offset points")
    ax.set_xticks(range(len(labels)), labels, rotation=20 if max(map(len, labels), default=0) > 8 else 0)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if ylim:
        ax.set_ylim(*ylim)
    if len(series) > 1:
        ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return fig


def _nan(v) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))
