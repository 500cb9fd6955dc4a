"""The report functions build tables, figures and notes from numbers alone (no run folder), and ``Run.add``
puts them into a run: the parts of ``runs.Run`` (folder, records, checkpoints) each do their own part."""
from __future__ import annotations

import json
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch
from matplotlib.figure import Figure as MplFigure

from dllab.core import ranks
from dllab.report import robustness, text, transfer, variants
from dllab.core.items import Figure, Note, Table
from dllab.runner.run import Run
from dllab.train.variants import Variant


def _result(test_acc, params=100, trainable=100, **extra):
    return {"test_acc": test_acc, "params": params, "trainable_params": trainable, "seconds": 1.25, **extra}


def _kinds(items) -> list[str]:
    return [type(i).__name__ for i in items]


HISTORY = [{"variant": v, "epoch": e, "train_loss": 1.0 / e, "train_acc": 0.5 + e / 10}
           for v in ("plain_d2", "res_d2", "other") for e in (1, 2)]


# --- report.variants ----------------------------------------------------------------------------------

def test_accuracy_table_has_a_row_per_variant_with_its_settings():
    vs = [Variant("sgd", "mlp", meta={"optimizer": "sgd lr 0.1"}), Variant("adam", "mlp", meta={"width": 64})]
    results = {"sgd": _result(0.91, val_acc=0.8, test_acc_last=0.9),
               "adam": _result(0.95, params=1234, trainable=1234, test_acc_last=0.95)}
    [table] = variants.accuracy_table(results, vs, "Optimisers")
    assert table.title == "Optimisers"
    # the kept weights' test accuracy (the best validation epoch's) first, then the last epoch's
    assert table.header == ["variant", "optimizer", "width", "params", "best val acc", "test acc (best val epoch)",
                            "test acc (last epoch)", "seconds"]
    assert table.rows[0] == ["sgd", "sgd lr 0.1", "", "100", 0.8, 0.91, 0.9, "1.2"]
    assert table.rows[1][:4] == ["adam", "", 64, "1,234"] and table.rows[1][4] != table.rows[1][4]   # nan
    assert table.rows[1][5:7] == [0.95, 0.95]


def test_accuracy_table_without_a_validation_split_has_one_test_column():
    """No validation split: the kept weights are the last epoch's, and the table says so in one column."""
    results = {"sgd": _result(0.9, test_acc_last=0.9)}
    [table] = variants.accuracy_table(results, [Variant("sgd", "mlp")])
    assert table.header == ["variant", "params", "best val acc", "test acc (last epoch; no validation split)",
                            "seconds"]
    assert table.rows[0][3:] == [0.9, "1.2"]


def test_accuracy_table_shows_trainable_parameters_when_a_variant_trains_part_of_its_model():
    vs = [Variant("head", "cnn"), Variant("full", "cnn")]
    [table] = variants.accuracy_table({"head": _result(0.5, 5000, 50), "full": _result(0.6, 5000, 5000)}, vs)
    assert table.header[1:3] == ["trainable params", "params"] and table.rows[0][1:3] == ["50", "5,000"]


def test_curves_take_only_their_variants_rows_from_the_history(monkeypatch):
    seen = {}
    monkeypatch.setattr("dllab.report.plots.training_curves",
                        lambda rows, title: seen.update(rows=rows, title=title) or "fig")
    [fig] = variants.curves_figure(HISTORY, ["res_d2"], "c.png", "caption", "t")
    assert fig == Figure("fig", "c.png", "caption") and seen["title"] == "t"
    assert list(seen["rows"]) == ["res_d2"] and [r["epoch"] for r in seen["rows"]["res_d2"]] == [1, 2]
    assert variants.curves_figure(HISTORY, [], "c.png", "caption") == []


def test_plain_vs_residual_is_the_table_then_both_curves_then_the_gradients():
    vs = [Variant("plain_d2", "mlp"), Variant("res_d2", "mlp")]
    grads = {"layers": ["a", "b"], "per_epoch": [[1.0, 2.0], [0.5, 1.5]]}
    results = {n: _result(0.5, grad_norms=grads) for n in ("plain_d2", "res_d2")}
    items = variants.plain_vs_residual(HISTORY, results, vs, "MLPs")
    assert _kinds(items) == ["Table", "Figure", "Figure", "Figure"]
    assert [i.file for i in items[1:]] == ["curves_plain.png", "curves_residual.png", "gradient_norms.png"]
    assert items[1].caption.startswith("Plain MLPs")
    assert variants.gradient_figure({"x": _result(0.5)}, ["x"]) == []        # no norms recorded: no figure


# --- report.transfer ----------------------------------------------------------------------------------

def test_transfer_notes_say_when_the_target_is_not_the_spec_and_classes_are_shared():
    source = SimpleNamespace(classes=["cat", "dog"])
    target = SimpleNamespace(classes=["dog", "frog"], name="cifar10")
    notes = transfer.note_classes(source, target, spec_setting=False)
    assert _kinds(notes) == ["Note", "Note"]
    assert "not CIFAR-100" in notes[0].text and "trained on 1 of the target's classes (dog)" in notes[1].text
    assert transfer.note_classes(source, SimpleNamespace(classes=["frog"], name="x"), spec_setting=True) == []


def test_closing_notes_compare_frozen_features_with_fine_tuning():
    summary = {"svm.val_acc": 0.3, "knn.val_acc": 0.2, "full_adam.val_acc": 0.5}
    target = SimpleNamespace(val=[0] * 100, test=[0] * 50)
    notes = transfer.closing_notes({}, summary, target)
    # (which weights test_acc is of, the report says once for the whole run: render, METRICS_RULE)
    assert [n.text.split(":")[0] for n in notes] == ["frozen features vs fine-tuning"]
    assert "LinearSVC 0.3000, k-NN 0.2000 against full_adam 0.5000" in notes[0].text


def test_transfer_classical_table_and_accuracy_figure():
    [table] = transfer.classical_table({"svm": {"val": 0.5, "test": 0.4, "seconds": 2.0}}, 64, 5)
    assert table.rows == [["svm", "LinearSVC (C=1)", 0.5, 0.4, "2.0"]] and "64-dim" in table.title
    assert transfer.accuracy_figure({}, ["svm"], "t", None) == []           # nothing measured: no figure
    [fig] = transfer.accuracy_figure({"svm.test_acc": 0.4}, ["svm", "head"], "t", None)
    assert fig.file == "accuracy.png"


# --- report.text --------------------------------------------------------------------------------------

def test_strategies_report_is_a_table_two_notes_and_two_charts():
    results = {s: {"val_acc": 0.8, "test_acc": 0.7, "seconds": 75.0, "trainable_params": 1000, "peak_mem_mb": 12.0,
                   "memory_kind": "RSS", "precision": "fp32"} for s in ("full", "lora")}
    results["full"]["test_acc_last"] = 0.69           # trained: the last epoch's beside the kept weights'
    items = text.strategies_report(results, {"full.val_acc": 0.84}, "minilm", "train n=64")
    assert _kinds(items) == ["Table", "Note", "Note", "Figure", "Figure"]
    assert items[0].header[2:4] == ["test acc (best val epoch)", "test acc (last epoch)"]
    assert items[0].rows[0] == ["full", "0.8000", "0.7000", "0.6900", "0.8400", "1:15", "1,000", "12", "fp32"]
    assert items[0].rows[1][3:5] == ["-", "-"] and "resident set" in items[1].text
    assert [i.file for i in items[3:]] == ["strategies_accuracy.png", "strategies_time.png"]


def test_classifiers_report_names_k_for_knn():
    acc = {"svm": {"validation": 0.81, "test": 0.8}, "knn": {"validation": 0.7, "test": 0.69}}
    items = text.classifiers_report(acc, {"svm": 1.0, "knn": 0.5}, {"svm.val_acc": 0.82}, "m", "cls", 5, 400)
    assert _kinds(items) == ["Table", "Figure"]
    assert [r[0] for r in items[0].rows] == ["svm", "knn (k=5)"] and items[0].rows[0][3] == "0.82"


# --- report.robustness --------------------------------------------------------------------------------

def test_attack_accuracy_puts_the_spec_beside_each_epsilon():
    items = robustness.attack_accuracy({0.0: 0.6, 0.01: 0.25}, "fgsm", {"acc@0": 0.85, "acc@0.01": 0.48})
    table, fig = items
    assert table.rows == [["0", "0/255", 0.6, 0.85], ["0.01", "2.55/255", 0.25, 0.48]]
    assert fig.file == "accuracy_vs_eps.png" and "spec" in fig.caption


def test_ood_tables_one_row_per_set_and_detector():
    m = {"auroc": 0.9, "aupr_in": 0.8, "aupr_out": 0.7, "fpr95": 0.3}
    [table] = robustness.ood_metrics_table({"mnist": {"msp": m, "energy": m}}, "OOD")
    assert table.rows == [["mnist", "msp", 0.9, 0.8, 0.7, 0.3], ["mnist", "energy", 0.9, 0.8, 0.7, 0.3]]
    metrics = {"standard": {"mnist": {"msp": m}}, "adv": {"mnist": {"msp": {**m, "auroc": 0.95}}}}
    accs = {"standard": {0.0: 0.6}, "adv": {0.0: 0.55}}
    attack, ood = robustness.comparison_tables(accs, metrics, "fgsm", {})
    assert attack.rows == [["0", "0/255", 0.6, 0.55]] and ood.rows == [["msp", 0.9, 0.95, 0.3, 0.3]]
    [one] = robustness.classifier_table({"standard": ("trained here", {"depth": 5}, 0.6)}, 6, 100)
    assert one.title == "Classifier" and one.rows == [["trained here", "cnn {'depth': 5}", 6, 100, 0.6]]


def test_odin_report_is_the_heat_map_and_the_table():
    res = {"T": [1.0, 10.0], "eps": [0.0], "best": (1, 0), "val_auroc": torch.rand(2, 1).numpy(),
           "test_auroc": torch.rand(2, 1).numpy(),
           "best_test": {"auroc": 0.7, "aupr_in": 0.6, "aupr_out": 0.5, "fpr95": 0.4},
           "msp_test": {"auroc": 0.6, "aupr_in": 0.5, "aupr_out": 0.4, "fpr95": 0.5}}
    mask = torch.tensor([True, False, True, False])
    items = robustness.odin_search_report(res, mask, mask, "heldout", None)
    assert _kinds(items) == ["Figure", "Table"] and items[0].file == "odin_heatmap_heldout.png"
    assert items[1].rows[0][:3] == ["ODIN, best on validation", "10", "0"]


# --- Run.add and the parts of Run ---------------------------------------------------------------------

def _fig():
    fig = MplFigure(figsize=(2, 2))
    ax = fig.subplots()
    ax.plot([0, 1], [1, 0])
    return fig


def test_run_add_saves_figures_and_the_report_state_in_order(tmp_path):
    run = Run(tmp_path, "x", None, quiet=True)
    run.add()                                                       # nothing to add: nothing written
    assert not (tmp_path / "report_state.json").exists()
    figs = [_fig(), _fig()]
    run.add(Table("T", ["a"], [[1]]), Note("first"), Figure(figs[0], "f.png", "a figure"), Note("first"))
    run.add(Table("T", ["a"], [[2]]), Table("U", ["b"], [[3]]), Figure(figs[1], "f.png", "redrawn"))
    state = json.loads((tmp_path / "report_state.json").read_text())
    assert state == {"notes": ["first"], "tables": [["T", ["a"], [[2]]], ["U", ["b"], [[3]]]],
                     "figures": [["redrawn", "f.png"]]}
    assert (tmp_path / "f.png").read_bytes()[:4] == b"\x89PNG"
    assert (tmp_path / "log.txt").read_text() == "note: first\n"    # a repeated note is logged once
    assert Run(tmp_path, "x", None).notes == ["first"]              # read back by a resumed run
    with pytest.raises(TypeError, match="not a report item"):
        run.add("a note as a plain string")


def test_only_the_writing_rank_writes_what_is_added(tmp_path, monkeypatch):
    monkeypatch.setattr(ranks, "is_main", lambda: False)
    run = Run(tmp_path, "x", None, quiet=True)
    fig = _fig()
    run.add(Table("T", ["a"], [[1]]), Note("n"), Figure(fig, "f.png", "c"))
    assert list(tmp_path.iterdir()) == []
    assert run.tables == [("T", ["a"], [[1]])] and run.notes == ["n"] and run.figures == [("c", "f.png")]


def test_run_is_a_facade_over_its_folder_records_and_checkpoints(tmp_path):
    run = Run(tmp_path, "x", None, quiet=True, env={"experiment": "x"})
    run.write_env(device="cpu")
    assert json.loads((tmp_path / "env.json").read_text()) == {"experiment": "x", "device": "cpu"}
    assert run.env is run.folder.env and run.path == run.folder.path == run.records.path
    run.add_history([{"variant": "v", "epoch": 1, "train_loss": 0.5}], "v")
    assert run.records.variant_history("v") == run.history and (tmp_path / "history.csv").is_file()
    assert run.checkpoint_path("v") == run.checkpoints.checkpoint("v") == tmp_path / "checkpoints" / "v.pt"
    assert run.checkpoints.model("v") == tmp_path / "models" / "v.pt"


@pytest.mark.slow   # a new process importing every run module
def test_importing_the_run_modules_leaves_the_umask_alone():
    """The umask is read when the first file is written, not at import (reading it sets it for a moment)."""
    code = ("import os; calls = []; real = os.umask\n"
            "os.umask = lambda m: calls.append(m) or real(m)\n"
            "import dllab.runner.run, dllab.store.folder, dllab.store.records, dllab.runner.sweep\n"
            "print(calls)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
