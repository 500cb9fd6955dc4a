"""Reports that read well (issue #24): short curves drawn as points, page titles that say what the page is,
text in the PNGs readable at the size the HTML page shows them, the spec table split by whether the spec has a
number, and user values that cannot break a Markdown table or put HTML into a page."""
from __future__ import annotations

import json
import re
import shutil
from types import SimpleNamespace

import pytest

from conftest import dllab_in_process
from dllab.report import plots
from dllab.report.sweep import write_sweep_report
from test_hostile import finished_run, run_copy  # noqa: F401 (fixtures: one tiny finished lab1.mlp run)


def _title(html_file) -> str:
    return re.search(r"<title>(.*?)</title>", html_file.read_text(), re.S).group(1)


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


# --- text in the PNGs is readable where the report shows them ---------------------------------------

PAGE_PX = 1100   # report pages are at most this wide (Doc.to_html's style), so a wider PNG is shown shrunk


def _smallest_text_px(fig, tmp_path) -> float:
    """The smallest text of ``fig`` saved as reports save it, in pixels as the HTML page shows the PNG."""
    import numpy as np
    from matplotlib.text import Text
    from PIL import Image

    from dllab.core.files import save_png

    png = save_png(fig, tmp_path / "fig.png")
    width = Image.open(png).size[0]
    dpi = 110
    sizes = [t.get_fontsize() for t in fig.findobj(Text) if t.get_visible() and t.get_text().strip()]
    return float(np.min(sizes)) * dpi / 72 * min(1.0, PAGE_PX / width)


def _odin_grid():
    import numpy as np
    T = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000]
    eps = [0, 0.0005, 0.001, 0.0014, 0.002, 0.0024, 0.005]
    grid = np.linspace(0.5, 0.9, len(T) * len(eps)).reshape(len(T), len(eps))
    return plots.heatmap({"validation AUROC (500 ID + 500 OOD)": grid, "test AUROC (500 ID + 500 OOD)": grid},
                         [f"{t:g}" for t in T], [f"{e:g}" for e in eps], "epsilon", "temperature T",
                         "ODIN AUROC, ID test vs heldout", mark=(6, 0))


def _ood_histograms():
    import numpy as np
    rng = np.random.default_rng(0)
    groups = {"ID test": rng.normal(0, 1, 500), "OOD heldout": rng.normal(1, 1, 500), "OOD mnist": rng.normal(2, 1, 500)}
    return plots.score_histograms({k: groups for k in ("max logit", "max softmax probability", "energy score",
                                                       "ODIN (T=1000, eps=0.0014) score", "autoencoder score")},
                                  "ID test vs OOD")


def _compare_curves():
    from dllab.report.compare import curves_figure
    rows = [{"epoch": e, "variant": v, "train_loss": 1 / e, "val_loss": 1.1 / e, "train_acc": 1 - 1 / e,
             "val_acc": 0.9 - 1 / e} for v in ("sgd", "adam") for e in range(1, 6)]
    return curves_figure({"20261207-101010-lab1.mlp": rows, "20261207-111111-lab1.mlp": rows})


@pytest.mark.parametrize("figure", [_odin_grid, _ood_histograms, _compare_curves,
                                    lambda: plots.training_curves({v: [{"epoch": 1, "train_loss": 1.0,
                                                                        "train_acc": 0.5}] for v in "abcde"})],
                         ids=["odin_heatmap", "ood_histograms", "compare_curves", "training_curves"])
def test_text_in_report_figures_is_at_least_9_px_as_the_page_shows_it(figure, tmp_path):
    assert _smallest_text_px(figure(), tmp_path) >= 9


# --- every page's <title> says what it is and when --------------------------------------------------

def test_a_runs_report_page_is_titled_with_its_experiment_profile_and_date(run_copy):
    run, _ = run_copy
    env = json.loads((run / "env.json").read_text())
    # the run is on generated images, which its title names
    assert _title(run / "report.html") == f"lab1.mlp on {env['dataset']} · smoke · {env['started'][:10]}"


def test_a_compare_page_is_titled_with_the_runs_it_compares(run_copy, tmp_path):
    run, _ = run_copy
    other = shutil.copytree(run, tmp_path / "other")
    res = dllab_in_process("compare", str(run), str(other), "--out", str(tmp_path / "cmp.md"))
    assert res.returncode == 0, res.stderr
    assert re.fullmatch(r"compare run, other · \d{4}-\d\d-\d\d", _title(tmp_path / "cmp.html"))


def test_a_sweep_page_is_titled_with_its_experiment_profile_and_keys(tmp_path):
    spec = SimpleNamespace(experiment="lab1.mlp", profile="quick", grid={"optim.lr": ["0.1", "0.01"]}, seeds=None,
                           sets=[])
    rows = [{"point": f"p{i}", "optim.lr": lr, "val_acc": 0.5 + i / 10} for i, lr in enumerate(["0.1", "0.01"])]
    write_sweep_report(tmp_path, spec, rows, None, "max")
    assert re.fullmatch(r"sweep lab1.mlp · quick · over optim.lr · \d{4}-\d\d-\d\d", _title(tmp_path / "report.html"))


# --- the spec's numbers: beside this run's where the spec gives one, the rest apart --------------------

def _md_tables(md: str) -> dict[str, list[list[str]]]:
    """Each Markdown table of ``md`` under its ### heading: its rows (header first), cells stripped."""
    tables, heading = {}, None
    for line in md.splitlines():
        if line.startswith("### "):
            heading = line[4:]
        elif line.startswith("|") and not line.startswith("|---"):
            tables.setdefault(heading, []).append([c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]])
    return tables


def _render(env: dict, summary: dict, tmp_path, **info) -> str:
    from dllab.report.render import render
    run = {"path": tmp_path, "env": env, "summary": summary, "notes": [], "tables": [], "figures": [], **info}
    return render([run], tmp_path).markdown()


def test_the_spec_column_is_filled_and_results_without_a_spec_number_are_a_table_apart(tmp_path):
    summary = {"model.test_acc": 0.6, "odin.auroc": 0.61, "odin.best_T": 1000, "odin.best_eps": 0.0014, "msp.auroc": 0.58,
               "odin.grid_auroc@T1_eps0": 0.57}
    tables = _md_tables(_render({"experiment": "lab4.odin", "profile": "smoke"}, summary, tmp_path))
    assert tables["Results beside the spec"] == [["metric", "this run", "spec"], ["model.test_acc", "0.6000", "0.8473"],
                                                 ["odin.auroc", "0.6100", "0.6600"],
                                                 ["odin.best_T", "1000", "100"], ["odin.best_eps", "0.0014", "0.0000"]]
    assert tables["Results with no spec number"] == [["metric", "this run"], ["msp.auroc", "0.5800"],
                                                     ["odin.grid_auroc@T1_eps0", "0.5700"]]


def test_a_spec_without_numbers_gives_one_table_without_a_spec_column(tmp_path):
    tables = _md_tables(_render({"experiment": "lab1.mlp", "profile": "smoke"}, {"sgd.test_acc": 0.6}, tmp_path))
    assert list(tables) == ["Results (the spec gives no number for them)"]
    assert tables["Results (the spec gives no number for them)"][0] == ["metric", "this run"]


# --- values from a run folder are escaped in the Markdown and the HTML ------------------------------

HOSTILE = "a|b\nc<script>alert(1)</script>`d"


def _craft(run, value: str) -> None:
    """The run's command, a config value, a table (title and cell), a note and a figure caption carry ``value``
    (--set refuses a newline in most values, so the folder's files are written as a tampered folder would be)."""
    env = json.loads((run / "env.json").read_text())
    env["command"] = f"dllab run lab1.mlp --set data.root={value}"
    (run / "env.json").write_text(json.dumps(env))
    config = (run / "config.yaml").read_text().replace("seed: 0", f"seed: 0\nwidth_note: {json.dumps(value)}")
    (run / "config.yaml").write_text(config)
    state = json.loads((run / "report_state.json").read_text())
    state["notes"].append(value)
    state["tables"].append([f"table {value}", ["key", "value"], [[value, 1.0], ["plain", value]]])
    state["figures"][0][0] = value
    (run / "report_state.json").write_text(json.dumps(state))


def _assert_escaped(md_file) -> None:
    md, page = md_file.read_text(), md_file.with_suffix(".html").read_text()
    assert "<script" not in page.lower() and "<script" not in md.lower()
    assert "&lt;script&gt;" in page
    for table in re.findall(r"(?:^\|.*\|\n)+", md, re.M):
        widths = {len(re.split(r"(?<!\\)\|", row)) for row in table.splitlines()}
        assert len(widths) == 1, table   # a | in a value must not start another column


def test_a_value_with_a_pipe_a_newline_and_a_script_tag_breaks_no_report(run_copy, tmp_path):
    run, _ = run_copy
    other = shutil.copytree(run, tmp_path / "other")
    _craft(run, HOSTILE)
    _craft(other, HOSTILE.replace("a|b", "x|y"))   # a config value that differs: the compare page's table shows it
    res = dllab_in_process("report", str(run), "--out", str(tmp_path / "report.md"))
    assert res.returncode == 0, res.stderr
    _assert_escaped(tmp_path / "report.md")
    res = dllab_in_process("compare", str(run), str(other), "--out", str(tmp_path / "cmp.md"))
    assert res.returncode == 0, res.stderr
    _assert_escaped(tmp_path / "cmp.md")
    assert "width_note" in (tmp_path / "cmp.md").read_text()


def test_a_one_epoch_run_has_one_whole_epoch_tick(tmp_path):
    from dllab.core.files import save_png
    fig = plots.training_curves({"sgd": [{"epoch": 1, "train_loss": 1.0, "train_acc": 0.5}]})
    save_png(fig, tmp_path / "curves.png")   # ticks are placed when the figure is drawn
    visible = [t for t in fig.axes[0].get_xticks() if fig.axes[0].get_xlim()[0] <= t <= fig.axes[0].get_xlim()[1]]
    assert visible == [1]
