"""train.reuse: which saved cnn a finished run serves, the checks it passes, and trained-here models coming
back through the same loader (no run needed); experiments.common.get_cnn records where it came from in a run.
Tiny generated models in temp folders; no dataset, no training."""
import json

import pytest
import torch

from dllab import DllabError
from conftest import Recorder
from dllab.data.images import ImageData, Split
from dllab.experiments.common import get_cnn
from dllab.experiments.transfer.config import TransferConfig
from dllab.core.registry import build_model
from dllab.runner.run import Run
from dllab.train.checkpoint import save_model
from dllab.train.reuse import CNNSource

CLASSES = ["a", "b", "c"]


def _save(folder, name, depth=2, in_channels=3, classes=CLASSES):
    model = build_model("cnn", num_classes=len(classes), in_channels=in_channels, base_channels=4, depth=depth,
                        residual=True)
    save_model(folder / "models" / f"{name}.pt", model, classes)
    return model


def _data(channels=3, classes=CLASSES):
    x = torch.zeros(len(classes), channels, 8, 8, dtype=torch.uint8)
    split = Split(x, torch.arange(len(classes)))
    return ImageData("toy", list(classes), split, None, split, None, "toy")


def _source(run_dir="", variant="", same_classes=False):
    return CNNSource("model", str(run_dir), variant, "standard", 2, "classifier", "classifier_standard",
                     same_classes=same_classes)


def _run(tmp_path):
    return Run.create("lab1.transfer", TransferConfig(), out=str(tmp_path / "here"), quiet=True)


def test_a_folder_with_several_models_serves_its_own_name_then_res_then_plain(tmp_path):
    theirs = tmp_path / "theirs"
    for name in ("plain_d2", "res_d2", "adv"):
        _save(theirs, name)
    assert _source(theirs).find().path.name == "res_d2.pt"
    _save(theirs, "standard")
    assert _source(theirs).find().path.name == "standard.pt"
    assert _source(theirs, "adv").find().path.name == "adv.pt"


def test_a_variant_without_a_run_folder_is_refused_unless_it_is_trained_here():
    with pytest.raises(DllabError, match="model.variant=res_d5 needs model.run"):
        _source(variant="res_d5").find()
    assert _source(variant="standard").find() is None


def _not_trained():
    pytest.fail("trained instead of reused")


def test_reused_model_must_fit_the_data_in_one_line(tmp_path):
    theirs, here = tmp_path / "theirs", tmp_path / "here" / "models"
    _save(theirs, "standard", in_channels=1)
    with pytest.raises(DllabError, match="1-channel") as e:
        _source(theirs).get(_data(channels=3), here, train=_not_trained)
    assert "\n" not in str(e.value)
    _save(theirs, "standard", classes=["a", "b", "z"])
    with pytest.raises(DllabError, match="trained on 3 classes"):
        _source(theirs, same_classes=True).get(_data(), here, train=lambda: None)
    assert _source(theirs).get(_data(), here, train=lambda: None).classes == ["a", "b", "z"]   # no class check


def test_reused_and_trained_here_come_back_the_same_way_with_no_run(tmp_path):
    theirs, here = tmp_path / "theirs", tmp_path / "here"
    original = _save(theirs, "standard")
    reporter = Recorder()
    reused = _source(theirs).get(_data(), here / "models", train=_not_trained, reporter=reporter)
    assert reused.reused and all(torch.equal(original.state_dict()[k], v) for k, v in reused.model.state_dict().items())
    assert reused.origin == str(reused.path.resolve()) and len(reporter.notes) == 1 and "reused" in reporter.notes[0]

    trained = _source().get(_data(), here / "models", train=lambda: _save(here, "standard"), reporter=reporter)
    assert not trained.reused and trained.path == here / "models" / "standard.pt" and len(reporter.notes) == 1
    assert trained.arch == reused.arch == {"depth": 2, "base_channels": 4, "residual": True}
    assert trained.origin == "trained in this run (models/standard.pt)"
    with pytest.raises(DllabError, match="depth=3"):     # what is trained here passes the same checks
        CNNSource("model", "", "", "deep", 2, "classifier", "c").get(_data(), here / "models",
                                                                     train=lambda: _save(here, "deep", depth=3))


def test_get_cnn_records_where_the_model_came_from_in_the_run(tmp_path):
    theirs = tmp_path / "theirs"
    _save(theirs, "standard")
    run = _run(tmp_path)
    reused = get_cnn(run, _source(theirs), _data(), train=_not_trained)
    assert json.loads((run.path / "env.json").read_text())["classifier_standard"] == str(reused.path.resolve())
    assert any("reused" in n for n in run.notes)
    trained = get_cnn(run, _source(), _data(), train=lambda: _save(run.path, "standard"))
    assert trained.path == run.path / "models" / "standard.pt"
    assert json.loads((run.path / "env.json").read_text())["classifier_standard"].startswith("trained in this run")


def test_ready_hands_over_the_model_in_eval_mode_on_the_device(tmp_path):
    theirs = tmp_path / "theirs"
    _save(theirs, "standard")
    saved = _source(theirs).find()
    device = torch.device("cpu")
    assert saved.ready(device) is saved
    assert not any(m.training for m in saved.model.modules())        # load_model leaves it in training mode
    assert {p.device for p in saved.model.parameters()} == {device}
