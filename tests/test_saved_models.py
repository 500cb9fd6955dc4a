"""Saved models (models/<variant>/: safetensors + model.json + MODEL.md), dllab.load_model and `dllab predict`.

The acceptance runs are smoke runs of the real experiments on the real data (../shared/data), on the CPU: each
saved model is reloaded from its folder alone and scored the way the run scored it, which must give the run's
test accuracy exactly; `dllab predict` must give the class the run's model gives.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import dllab
from conftest import dllab_in_process, one_line_error, require_shared
from dllab.core.untrusted import read_json
from dllab.data.images import load_images
from dllab.train.image import evaluate
from dllab.train.precision import Precision
from dllab.train.saved_model import load_saved_model


def smoke_run(base: Path, experiment: str) -> Path:
    shared = require_shared()
    out = base / experiment
    res = dllab_in_process("run", experiment, "--profile", "smoke", "--set", f"data.root={shared}", "--device", "cpu",
                           "--out", str(out), "--quiet")
    assert res.returncode == 0, res.stderr
    return out


@pytest.fixture(scope="module")
def mlp_run(tmp_path_factory) -> Path:
    return smoke_run(tmp_path_factory.mktemp("saved"), "lab1.mlp")


@pytest.fixture
def mlp_copy(mlp_run, tmp_path) -> Path:
    dst = tmp_path / "run"
    shutil.copytree(mlp_run, dst)
    return dst


def run_data(run: Path):
    """The run's config and its data, loaded as the run loaded them."""
    flat = dllab.load(run).config
    experiment = read_json(run / "env.json")["experiment"]
    cfg = dllab.config(experiment, flat["profile"], {k: v for k, v in flat.items() if k != "profile"})
    return cfg, load_images(cfg.data, cfg.seed, cfg.profile)


def score_as_the_run_did(model: torch.nn.Module, spec: dict, split) -> float:
    """Accuracy of ``model`` on ``split`` the way ImageTask scored it, as its model.json records (``evaluation``):
    its precision (``auto`` resolves per machine: the folder says which it was), memory layout and batch size."""
    device, how = torch.device("cpu"), spec["evaluation"]
    if how["channels_last"]:
        model.to(memory_format=torch.channels_last)
    return evaluate(model, split, device, how["batch_size"], Precision(how["precision"], device))[1]


def check_reproduces(run: Path, tmp_path: Path) -> None:
    cfg, data = run_data(run)
    variants = sorted(p.stem for p in (run / "results").glob("*.json"))
    assert variants
    for v in variants:
        alone = tmp_path / f"only-{v}"
        shutil.copytree(run / "models" / v, alone)        # the folder alone: no run around it
        model, spec = load_saved_model(alone)
        reported = read_json(run / "results" / f"{v}.json")["test_acc"]     # the headline: the kept weights'
        assert read_json(run / "metrics.json")["summary"][f"{v}.test_acc"] == reported
        assert spec["metrics"]["test_acc"] == reported
        assert score_as_the_run_did(model, spec, data.test) == reported, v
        assert spec["input"]["classes"] == list(data.classes)
        assert (spec["input"]["channels"], spec["input"]["height"], spec["input"]["width"]) == data.shape
        assert "Intended use and limits" in (alone / "MODEL.md").read_text()


def test_mlp_saved_models_reproduce_the_test_accuracy(mlp_run, tmp_path):
    check_reproduces(mlp_run, tmp_path)
    assert (mlp_run / "models" / "adam.pt").is_file()      # kept: resume and model.run= read it


@pytest.mark.slow
def test_cnn_depth_saved_models_reproduce_the_test_accuracy(tmp_path):
    run = smoke_run(tmp_path, "lab1.cnn-depth")
    check_reproduces(run, tmp_path)
    desc = json.loads((run / "models" / "res_d2" / "model.json").read_text())
    assert desc["model"]["name"] == "cnn" and desc["model"]["kwargs"]["depth"] == 2
    assert desc["input"]["normalisation"]["stats"] == "cifar10"


def write_test_pngs(data, folder: Path, n: int = 20) -> list[Path]:
    folder.mkdir()
    paths = []
    for i in range(n):
        img = data.test.x[i].numpy()                              # uint8 (C, H, W)
        img = img[0] if img.shape[0] == 1 else img.transpose(1, 2, 0)
        paths.append(folder / f"{i:02d}.png")
        Image.fromarray(np.ascontiguousarray(img)).save(paths[-1])
    return paths


def test_predict_gives_the_runs_classes_for_20_test_images(mlp_run, tmp_path):
    from dllab.train.checkpoint import load_model

    cfg, data = run_data(mlp_run)
    write_test_pngs(data, tmp_path / "pngs")
    res = dllab_in_process("predict", mlp_run, "--variant", "adam", tmp_path / "pngs", "--json", "--device", "cpu")
    assert res.returncode == 0, res.stderr
    rows = json.loads(res.stdout)
    # the in-run evaluation's classes: the run's own model (models/adam.pt) on the same 20 test images
    kept, _ = load_model(mlp_run / "models" / "adam.pt")
    with torch.inference_mode():
        expected = kept.eval()(data.test.x[:20].float() / 255).argmax(1).tolist()
    assert [r["index"] for r in rows] == expected
    assert [r["class"] for r in rows] == [data.classes[k] for k in expected]
    assert all(0 < r["probability"] <= 1 for r in rows)
    # the same from Python, and as a table
    assert dllab.predict(mlp_run, tmp_path / "pngs", variant="adam", device="cpu") == rows
    table = dllab_in_process("predict", mlp_run, "--variant", "adam", tmp_path / "pngs" / "03.png")
    assert table.returncode == 0 and rows[3]["class"] in table.stdout.splitlines()[1]


def test_load_model_returns_the_model_and_its_description(mlp_run):
    model, spec = dllab.load_model(mlp_run, variant="sgd")
    assert not model.training and spec["variant"] == "sgd" and spec["model"]["name"] == "basic_mlp"
    assert set(spec["metrics"]) >= {"test_acc", "val_acc", "best_epoch", "test_acc_last"}


def test_several_models_need_a_variant(mlp_run, tmp_path):
    one_line_error(dllab_in_process("predict", mlp_run, tmp_path), "several models (adam, sgd)", "--variant")
    one_line_error(dllab_in_process("predict", mlp_run, "--variant", "nope", tmp_path), "no model 'nope'")


# --- a damaged or tampered folder: one line, exit 2, nothing executed ------------------------------------

class Payload:
    """Unpickling this runs ``touch <marker>``."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        import os
        return (os.system, (f"touch {self.marker}",))


def predict_adam(run: Path, image_dir: Path):
    return dllab_in_process("predict", run, "--variant", "adam", image_dir, "--device", "cpu")


@pytest.mark.parametrize("name", ["model.safetensors", "model.json"])
def test_a_missing_file_is_one_line(mlp_copy, tmp_path, name):
    (mlp_copy / "models" / "adam" / name).unlink()
    one_line_error(predict_adam(mlp_copy, tmp_path), name, "missing")


def test_weights_of_the_wrong_shape_are_one_line(mlp_copy, tmp_path):
    desc_path = mlp_copy / "models" / "adam" / "model.json"
    desc = json.loads(desc_path.read_text())
    desc["model"]["kwargs"]["width"] = 16                  # the weights are width 64
    desc_path.write_text(json.dumps(desc))
    one_line_error(predict_adam(mlp_copy, tmp_path), "model.safetensors", "do not fit")


def test_a_pickle_in_place_of_safetensors_is_refused_not_run(mlp_copy, tmp_path):
    marker = tmp_path / "pwned"
    torch.save({"x": Payload(marker)}, mlp_copy / "models" / "adam" / "model.safetensors")
    one_line_error(predict_adam(mlp_copy, tmp_path), "not a safetensors file", "pickle")
    assert not marker.exists()


def test_a_factory_named_in_model_json_is_not_imported(mlp_copy, tmp_path):
    desc_path = mlp_copy / "models" / "adam" / "model.json"
    desc = json.loads(desc_path.read_text())
    desc["model"] = {"name": "os:system", "kwargs": {"command": "touch x"}}
    desc_path.write_text(json.dumps(desc))
    one_line_error(predict_adam(mlp_copy, tmp_path), "os:system", "registered models")


def test_a_run_without_model_folders_says_why(mlp_copy, tmp_path):
    for v in ("adam", "sgd"):
        shutil.rmtree(mlp_copy / "models" / v)
    one_line_error(predict_adam(mlp_copy, tmp_path), "no saved model folder", "run the experiment again")


def test_a_text_run_without_model_folders_says_why(tmp_path):
    run = tmp_path / "text-run"
    run.mkdir()
    (run / "env.json").write_text(json.dumps({"experiment": "lab2.features"}))
    one_line_error(dllab_in_process("predict", run, "a sentence"), "no saved model folder", "lab2.*")


def test_missing_inputs_are_one_line(mlp_run, tmp_path):
    one_line_error(predict_adam(mlp_run, tmp_path / "nothing.png"), "nothing.png", "no such file")
    one_line_error(predict_adam(mlp_run, tmp_path), "no image files")


def test_the_card_puts_the_specs_numbers_beside_the_models(tmp_path):
    from dllab.core.registry import build_model
    from dllab.train.checkpoint import model_state
    from dllab.train.saved_model import ModelContext, write_model_folder

    model = build_model("basic_mlp", num_classes=2, in_channels=1, image_size=4, width=3)
    state = model_state(model, ["a", "b"], result={"test_acc": 0.25, "best_test_acc": 0.75, "val_acc": 0.5},
                        input={"channels": 1, "height": 4, "width": 4, "classes": ["a", "b"]})
    context = ModelContext("lab4.x", reference={"adv.acc@0": 0.8681, "adv.val_acc": 0.6, "other.val_acc": 0.1})
    write_model_folder(tmp_path / "adv", state, context)
    card = (tmp_path / "adv" / "MODEL.md").read_text()
    assert "| test accuracy (saved weights) | 0.7500 | 0.8681 |" in card
    assert "| validation accuracy (best epoch) | 0.5000 | 0.6000 |" in card
    assert "| test accuracy (last epoch) | 0.2500 | — |" in card
    loaded, spec = load_saved_model(tmp_path / "adv")
    assert spec["metrics"]["test_acc"] == 0.75 and spec["reference"]["val_acc"] == 0.6
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), model.state_dict().values()))


def test_the_card_keeps_class_names_as_text(tmp_path):
    """Class names come from the user's folder names: in MODEL.md a `|` starts no column and `<script>` is text."""
    from dllab.core.registry import build_model
    from dllab.train.checkpoint import model_state
    from dllab.train.saved_model import ModelContext, write_model_folder

    model = build_model("basic_mlp", num_classes=2, in_channels=1, image_size=4, width=3)
    classes = ["a|b", "<script>x</script>"]
    state = model_state(model, classes, result={"test_acc": 0.5}, input={"channels": 1, "height": 4, "width": 4,
                                                                         "classes": classes})
    write_model_folder(tmp_path / "m", state, ModelContext("lab1.mlp"))
    card = (tmp_path / "m" / "MODEL.md").read_text()
    assert "<script" not in card and "a\\|b" in card and "&lt;script>x&lt;/script>" in card


def test_a_config_value_with_backticks_cannot_end_the_cards_config_block(tmp_path):
    """A config value (a data.root, a class name) with a run of backticks stays inside MODEL.md's config block."""
    import re

    from dllab.core.registry import build_model
    from dllab.train.checkpoint import model_state
    from dllab.train.saved_model import ModelContext, write_model_folder

    model = build_model("basic_mlp", num_classes=2, in_channels=1, image_size=4, width=3)
    state = model_state(model, ["a", "b"], result={"test_acc": 0.5}, input={"channels": 1, "height": 4, "width": 4,
                                                                         "classes": ["a", "b"]})
    value = "x```\n# Injected heading\n````y"
    write_model_folder(tmp_path / "m", state, ModelContext("lab1.mlp", config={"data.root": value}))
    card = (tmp_path / "m" / "MODEL.md").read_text()
    config = card[card.index("## Config"):]
    fence = re.match(r"## Config\n\n(`+)yaml\n", config).group(1)
    assert len(fence) > 4                                   # longer than any backtick run inside
    assert config.rstrip().endswith(fence) and config.count(fence) == 2
    assert "\n# Injected heading" not in card               # the newline is escaped, no heading appears
