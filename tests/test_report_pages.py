"""Reports that read well (issue #24): short curves drawn as points, page titles that say what the page is,
text in the PNGs readable at the size the HTML page shows them, the spec table split by whether the spec has a
number, and user values that cannot break a Markdown table or put HTML into a page."""
from __future__ import annotations

import pytest

from dllab.report import plots


def _series_lines(fig):
    """Every line drawn on the figure's axes (grid lines are not among them)."""
    return [line for ax in fig.axes for line in ax.get_lines() if len(line.get_xdata())]


@pytest.mark.parametrize("figure", [
    lambda: plots.training_curves({"sgd": [{"epoch": 1, "train_loss": 1.0, "val_loss": 1.1, "train_acc": 0.5,
                                            "val_acc": 0.4}]}),
    lambda: plots.line_panels({"val_acc": {"run_a": ([1], [0.5]), "run_b": ([1], [0.6])}}),
    lambda: plots.line_plot([0.0], {"this run": [0.9]}, "epsilon", "accuracy"),
], ids=["training_curves", "compare_and_sweep_panels", "line_plot"])
def test_a_one_point_series_is_drawn_as_a_marker(figure):
    lines = _series_lines(figure())
    assert lines
    for line in lines:
        assert line.get_marker() not in (None, "", "None", " "), line.get_label()
