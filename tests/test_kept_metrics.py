"""Headline numbers of the model that is kept (issue #23): a variant's ``test_acc`` is the saved weights' (the
best validation epoch's; the last epoch's without a validation split), ``test_acc_last`` the last epoch's.

The validation accuracies are scripted (the real validation still runs, its accuracy is replaced), so the best
epoch is known and is not the last; each epoch's weights are copied as the loop validates them, and scored on
the test split here, independently of the loop's own tests.
"""
from __future__ import annotations

import json
import shutil

import pytest
import torch

from dllab.train.image import ImageTask, evaluate
from dllab.train.precision import Precision
from dllab.train.saved_model import kept_metrics, kept_result, load_saved_model

CPU = torch.device("cpu")
SCRIPTED_VAL = (0.9, 0.5, 0.7)     # epoch 1 is the best, epoch 3 the last


@pytest.fixture
def epoch_weights(monkeypatch) -> dict:
    """{variant: [state dict after epoch 1, 2, ...]} and {"data": the run's ImageData}, filled as a run
    validates; the validation accuracy of epoch k is SCRIPTED_VAL[k - 1]."""
    seen: dict = {"weights": {}}
    real = ImageTask.validate

    def validate(self, model):
        out = real(self, model)
        states = seen["weights"].setdefault(self.name, [])
        states.append({k: v.detach().clone() for k, v in self.model.state_dict().items()})
        seen["data"] = self.data
        return {**out, "val_acc": SCRIPTED_VAL[len(states) - 1]}

    monkeypatch.setattr(ImageTask, "validate", validate)
    return seen


def _test_acc(model: torch.nn.Module, state: dict, data) -> float:
    model.load_state_dict(state)
    return evaluate(model, data.test, CPU, precision=Precision("fp32", CPU))[1]


def _sets(imagefolder) -> list[str]:
    return [f"data.root={imagefolder}", "data.name=imagefolder", "width=8", "train.epochs=3", "train.batch_size=16",
            "train.precision=fp32", "sgd.lr=0.5", "adam.lr=0.05"]


def test_the_headline_is_the_kept_weights_and_test_acc_last_the_last_epochs(imagefolder, tmp_path, epoch_weights):
    from dllab.runner.experiment import run_experiment

    run = run_experiment("lab1.mlp", "smoke", _sets(imagefolder), out=str(tmp_path / "run"), quiet=True,
                         argv=["test"])
    summary, data = run.metrics()["summary"], epoch_weights["data"]
    differ = 0
    for v in ("sgd", "adam"):
        weights = epoch_weights["weights"][v]
        assert len(weights) == 3
        model, spec = load_saved_model(run.path / "models" / v)
        saved = _test_acc(model, model.state_dict(), data)     # the folder's weights, as saved
        first, last = _test_acc(model, weights[0], data), _test_acc(model, weights[-1], data)
        assert summary[f"{v}.test_acc"] == first == saved == spec["metrics"]["test_acc"], v
        assert summary[f"{v}.test_acc_last"] == last == spec["metrics"]["test_acc_last"], v
        assert summary[f"{v}.val_acc"] == SCRIPTED_VAL[0] and spec["metrics"]["best_epoch"] == 1
        result = json.loads((run.path / "results" / f"{v}.json").read_text())
        assert "best_test_acc" not in result and result["test_acc"] == first
        differ += first != last
    assert differ, "the scripted best epoch's weights score as the last epoch's: the test could not fail"
    report = (run.path / "report.md").read_text()
    assert "test acc (best val epoch) | test acc (last epoch)" in report
    assert report.count("test_* are the saved weights'") == 1      # the rule, stated once


def test_without_a_validation_split_both_numbers_are_the_last_epochs(imagefolder, tmp_path):
    from dllab.runner.experiment import run_experiment

    run = run_experiment("lab1.mlp", "smoke", [*_sets(imagefolder), "data.val_fraction=0", "train.epochs=2"],
                         out=str(tmp_path / "run"), quiet=True, argv=["test"])
    summary = run.metrics()["summary"]
    assert list(summary) == ["sgd.test_acc", "sgd.test_acc_last", "adam.test_acc", "adam.test_acc_last"]
    assert all(summary[f"{v}.test_acc"] == summary[f"{v}.test_acc_last"] for v in ("sgd", "adam"))
    assert "test acc (last epoch; no validation split)" in (run.path / "report.md").read_text()


# --- results saved before the rule ---------------------------------------------------------------------------

OLD = {"variant": "sgd", "epochs": 3, "test_loss": 0.9, "test_acc": 0.6, "best_epoch": 1, "val_acc": 0.8,
       "final_val_acc": 0.7, "best_test_loss": 0.5, "best_test_acc": 0.75}


def test_an_old_result_reads_under_the_rule():
    new = kept_result(OLD)
    assert (new["test_acc"], new["test_loss"], new["test_acc_last"], new["test_loss_last"]) == (0.75, 0.5, 0.6, 0.9)
    assert "best_test_acc" not in new and new["val_acc"] == 0.8 and kept_result(new) == new
    # without a validation split an old result's test_* were the last epoch's, which were also the kept ones
    plain = kept_result({"test_acc": 0.6, "test_loss": 0.9, "epochs": 3})
    assert (plain["test_acc"], plain["test_acc_last"], plain["test_loss_last"]) == (0.6, 0.6, 0.9)
    assert kept_metrics(OLD) == kept_metrics(new)
    assert kept_result({}) == {}


def _old_format(path) -> None:
    """results/<variant>.json as a run before the rule wrote it: last epoch as test_*, kept as best_test_*."""
    new = json.loads(path.read_text())
    old = {k: v for k, v in new.items() if not k.endswith("_last")}
    old.update(test_acc=new["test_acc_last"], test_loss=new["test_loss_last"], best_test_acc=new["test_acc"],
               best_test_loss=new["test_loss"])
    path.write_text(json.dumps(old))


def test_resuming_an_old_run_folder_reports_under_the_rule(imagefolder, tmp_path, epoch_weights):
    """`--resume` of a folder whose results hold the old names reuses them, renamed: the same summary as a run
    of today's code (nothing is trained or measured again)."""
    from dllab.runner.experiment import run_experiment

    ref = run_experiment("lab1.mlp", "smoke", _sets(imagefolder), out=str(tmp_path / "ref"), quiet=True,
                         argv=["test"])
    old = tmp_path / "old"
    shutil.copytree(ref.path, old)
    for v in ("sgd", "adam"):
        _old_format(old / "results" / f"{v}.json")
    trained = {v: len(w) for v, w in epoch_weights["weights"].items()}
    resumed = run_experiment(None, resume=str(old), quiet=True, argv=["test"])
    assert {v: len(w) for v, w in epoch_weights["weights"].items()} == trained     # nothing trained again
    assert resumed.metrics()["summary"] == ref.metrics()["summary"]
