"""Lab 2's saved models (models/<strategy>/: Hugging Face layout or a PEFT adapter, model.json, MODEL.md),
reloaded from their folder alone, and `dllab predict` on sentences.

The run is lab2.finetune's smoke profile as tests/test_text.py runs it: the tiny random DistilBERT and generated
reviews, on the CPU, one thread. Each saved strategy must reproduce the run's reported accuracies exactly, and
`dllab predict` must give the class the in-run model gives.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open

import dllab
from conftest import dllab_in_process, one_line_error
from dllab.core.untrusted import read_json
from test_saved_models import Payload
from test_text import _write_dataset, offline_hf_one_thread, tiny_distilbert  # noqa: F401 (fixtures)

TRAINED = ("full", "head_last", "full_amp", "lora")
SENTENCES = ("a wonderful , moving and funny film", "a dull , tedious and clumsy mess")


def in_run_classes(p) -> list[int]:
    """The classes the live model ``p.model`` (a strategy's ``Prepared``) gives ``SENTENCES``, predicted the way
    the run evaluates (``strategies.predict``), in its precision."""
    from dllab.data.text import TextSplit, tokenize
    from dllab.models.hf import load_tokenizer
    from dllab.text.strategies import predict
    split = tokenize(TextSplit(list(SENTENCES), np.zeros(2, dtype=np.int64)), load_tokenizer(p.tokenizer_source), 32)
    return predict(p.model, split, 64, torch.device("cpu"), p.precision).tolist()


@pytest.fixture(scope="module")
def text_run(tiny_distilbert, tmp_path_factory) -> tuple[Path, dict[str, list[int]]]:
    """A lab2.finetune smoke run of every strategy that trains and ``baseline``, and what each in-run model
    predicted for ``SENTENCES`` when it was saved."""
    import dllab.text.finetune as finetune
    base = tmp_path_factory.mktemp("text_saved")
    root, out, seen = _write_dataset(base / "data"), base / "run", {}
    save = finetune.save_strategy

    def save_and_predict(io, name, p, result, info):
        seen[name] = in_run_classes(p)
        save(io, name, p, result, info)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(finetune, "save_strategy", save_and_predict, raising=False)   # (fails on the run, not here)
        res = dllab_in_process("run", "lab2.finetune", "--profile", "smoke", "--quiet", "--device", "cpu",
                               "--out", out, "--set", f"model.name={tiny_distilbert}", "--set", f"data.root={root}",
                               "--set", "finetune.strategies=[baseline,full,head_last,full_amp,lora]",
                               "--set", "finetune.amp=bf16", "--set", "finetune.pretrained_model=",
                               "--set", "finetune.threads=1")
    assert res.returncode == 0, res.stderr
    return out, seen


@pytest.fixture
def run_copy(text_run, tmp_path) -> Path:
    dst = tmp_path / "run"
    shutil.copytree(text_run[0], dst)
    return dst


def scored(folder: Path, run: Path) -> dict[str, float]:
    """Validation and test accuracy of the model saved in ``folder`` (loaded from it alone), scored as the run
    scored it: the run's splits, the saved tokenizer and max_length, its precision and eval batch size."""
    from dllab.data.text import load_text_splits, tokenize
    from dllab.text.saved import load_text_model
    from dllab.text.strategies import accuracy
    from dllab.train.precision import Precision
    flat = dllab.load(run).config
    cfg = dllab.config("lab2.finetune", flat["profile"], {k: v for k, v in flat.items() if k != "profile"})
    model, tokenizer, desc = load_text_model(folder)
    precision = Precision(desc["model"]["precision"], torch.device("cpu"))
    splits = load_text_splits(cfg.data, cfg.seed)
    return {f"{short}_acc": accuracy(model, tokenize(splits[long], tokenizer, desc["input"]["max_length"]),
                                     cfg.finetune.eval_batch_size, torch.device("cpu"), precision)
            for short, long in (("val", "validation"), ("test", "test"))}


# --- what a run saves ---------------------------------------------------------------------------------

def test_each_trained_strategy_reloads_from_its_folder_alone_with_the_runs_accuracy(text_run, tmp_path):
    run = text_run[0]
    metrics = dllab.load(run).metrics
    for strategy in TRAINED:
        alone = tmp_path / strategy
        shutil.copytree(run / "models" / strategy, alone)     # no run state beside it
        got = scored(alone, run)
        for key in ("val_acc", "test_acc"):                   # the summary's headline figures, as reported
            assert got[key] == metrics[f"{strategy}.{key}"], (strategy, key)
        desc = read_json(alone / "model.json")
        assert desc["kind"] == "text" and desc["format"] == "dllab-model/1"
        assert desc["input"]["classes"] == ["negative", "positive"] and desc["input"]["max_length"] == 32
        assert desc["metrics"]["test_acc"] == metrics[f"{strategy}.test_acc"]
        assert "sentences" in (alone / "MODEL.md").read_text()


def test_untrained_strategies_save_nothing_and_nothing_is_pickled(text_run):
    models = text_run[0] / "models"
    assert sorted(p.name for p in models.iterdir()) == sorted(TRAINED)   # no baseline, no .pt, no temp folder
    assert not list(models.rglob("*.pt")) and not list(models.rglob("*.bin"))
    full = {p.name for p in (models / "full").iterdir()}
    assert {"config.json", "model.safetensors", "model.json", "MODEL.md", "tokenizer_config.json"} <= full


def test_a_lora_folder_holds_the_adapter_not_the_full_weights(text_run):
    lora, full = text_run[0] / "models" / "lora", text_run[0] / "models" / "full"
    names = {p.name for p in lora.iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors", "model.json", "MODEL.md"} <= names
    assert "model.safetensors" not in names and "config.json" not in names
    with safe_open(str(lora / "adapter_model.safetensors"), framework="pt") as f:
        keys = list(f.keys())
    assert keys and all("lora_" in k or "classifier" in k for k in keys), keys   # adapters + the trained head
    assert (lora / "adapter_model.safetensors").stat().st_size < (full / "model.safetensors").stat().st_size / 10
    desc = read_json(lora / "model.json")
    assert desc["model"]["adapter"] == "lora" and Path(desc["model"]["base"]["source"]).is_dir()
    assert "LoRA" in (lora / "MODEL.md").read_text()


def test_load_model_returns_the_text_model_and_its_description(text_run):
    model, spec = dllab.load_model(text_run[0], "lora")
    assert spec["kind"] == "text" and not model.training and type(model).__name__ == "PeftModelForSequenceClassification"
    assert Path(spec["folder"]).name == "lora"


# --- dllab predict ------------------------------------------------------------------------------------

@pytest.mark.parametrize("strategy", ["full", "lora"])
def test_predict_classifies_two_sentences_as_the_in_run_model(text_run, strategy):
    run, seen = text_run
    res = dllab_in_process("predict", run, "--variant", strategy, *SENTENCES, "--json", "--device", "cpu")
    assert res.returncode == 0, res.stderr
    rows = json.loads(res.stdout)
    assert [r["input"] for r in rows] == list(SENTENCES)
    assert all(r["class"] in ("negative", "positive") and 0.5 <= r["probability"] <= 1 for r in rows)
    assert [r["index"] for r in rows] == seen[strategy]
    table = dllab_in_process("predict", run, "--variant", strategy, *SENTENCES, "--device", "cpu")
    assert table.returncode == 0 and len(table.stdout.strip().splitlines()) == 3, table.stderr


def test_predict_reads_text_files_line_by_line(text_run, tmp_path):
    run, seen = text_run
    lines = tmp_path / "reviews.txt"
    lines.write_text(f"{SENTENCES[0]}\n\n{SENTENCES[1]}\n")
    for args in ([lines], ["--file", lines]):
        res = dllab_in_process("predict", run, "--variant", "full", *args, "--json", "--device", "cpu")
        rows = json.loads(res.stdout)
        assert [r["source"] for r in rows] == [f"{lines}:1", f"{lines}:3"]
        assert [r["index"] for r in rows] == seen["full"]


def test_predict_without_sentences_is_one_line(text_run, tmp_path):
    one_line_error(dllab_in_process("predict", text_run[0], "--variant", "full", "--file", tmp_path / "no.txt"),
                   "no.txt", "no such file")
    one_line_error(dllab_in_process("predict", text_run[0], "--variant", "full", tmp_path), "is a folder")
    (tmp_path / "empty.txt").write_text("\n")
    one_line_error(dllab_in_process("predict", text_run[0], "--variant", "full", "--file", tmp_path / "empty.txt"),
                   "holds no sentences")


# --- a damaged or tampered folder: one line, exit 2, nothing executed --------------------------------

def predict_one(run: Path, strategy: str):
    return dllab_in_process("predict", run, "--variant", strategy, SENTENCES[0], "--device", "cpu")


def test_a_missing_adapter_file_is_one_line(run_copy):
    (run_copy / "models" / "lora" / "adapter_model.safetensors").unlink()
    one_line_error(predict_one(run_copy, "lora"), "adapter_model.safetensors", "missing")


@pytest.mark.parametrize("strategy, weights", [("full", "model.safetensors"), ("lora", "adapter_model.safetensors")])
def test_a_pickle_in_place_of_safetensors_is_refused_not_run(run_copy, tmp_path, strategy, weights):
    marker = tmp_path / "pwned"
    torch.save({"x": Payload(marker)}, run_copy / "models" / strategy / weights)
    one_line_error(predict_one(run_copy, strategy), weights, "not a safetensors file", "pickle")
    assert not marker.exists()


def test_custom_code_named_by_the_config_is_never_run(run_copy, tmp_path):
    marker = tmp_path / "pwned"
    folder = run_copy / "models" / "full"
    (folder / "evil.py").write_text(f"import pathlib\npathlib.Path({str(marker)!r}).touch()\n")
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {k: "evil.Evil" for k in ("AutoConfig", "AutoModelForSequenceClassification")}
    (folder / "config.json").write_text(json.dumps(config))
    res = predict_one(run_copy, "full")
    assert not marker.exists()
    if res.returncode:   # refused (one line) or loaded as the plain architecture: never the file's code
        one_line_error(res, "full")


def test_a_malformed_description_is_one_line(run_copy):
    desc_path = run_copy / "models" / "full" / "model.json"
    desc = json.loads(desc_path.read_text())
    desc["input"]["max_length"] = "32; rm -rf ~"
    desc_path.write_text(json.dumps(desc))
    one_line_error(predict_one(run_copy, "full"), "max_length", "malformed")
    desc["kind"] = "executable"
    desc_path.write_text(json.dumps(desc))
    one_line_error(predict_one(run_copy, "full"), "unknown model kind")


# --- the folder is replaced only once the new one is whole -------------------------------------------

def test_atomic_folder_replaces_only_a_whole_folder(tmp_path):
    from dllab.core.files import atomic_folder
    target = tmp_path / "models" / "full"
    target.mkdir(parents=True)
    (target / "old.txt").write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_folder(target) as tmp:
            (tmp / "new.txt").write_text("half")
            raise RuntimeError("killed while saving")
    assert [p.name for p in target.parent.iterdir()] == ["full"] and [p.name for p in target.iterdir()] == ["old.txt"]
    with atomic_folder(target) as tmp:
        (tmp / "new.txt").write_text("new")
    assert [p.name for p in target.parent.iterdir()] == ["full"] and [p.name for p in target.iterdir()] == ["new.txt"]


def test_a_save_in_progress_is_not_a_model(run_copy):
    from dllab.train.saved_model import find_model_folder
    (run_copy / "models" / ".full.abc123.tmp").mkdir()
    with pytest.raises(dllab.ConfigError, match=r"\(full, full_amp, head_last, lora\)"):
        find_model_folder(run_copy)


# --- lab2.features: the fitted classifiers -----------------------------------------------------------

CLASSIFIERS = ("svm", "logreg", "knn")


@pytest.fixture(scope="module")
def features_run(tiny_distilbert, tmp_path_factory) -> tuple[Path, dict[str, list[int]]]:
    """A lab2.features smoke run, and what each in-run classifier predicted for ``SENTENCES`` when it was saved
    (embedded with the run's model as the run embeds)."""
    import dllab.experiments.lab2.run as lab2
    from dllab.data.text import TextSplit, tokenize
    from dllab.features.text import extract_features
    from dllab.models.hf import load_encoder, load_tokenizer
    base = tmp_path_factory.mktemp("features_saved")
    root, out, seen = _write_dataset(base / "data"), base / "run", {}
    save = getattr(lab2, "save_classifiers", None)   # (without it the run saves nothing: the tests fail)

    def save_and_predict(model_io, fitted, acc, info, reporter):
        split = tokenize(TextSplit(list(SENTENCES), np.zeros(2, dtype=np.int64)), load_tokenizer(info.source), 32)
        x = extract_features(load_encoder(info.source), split, info.pooling)
        seen.update({name: pipe.predict(x).tolist() for name, pipe in fitted.items()})
        save(model_io, fitted, acc, info, reporter)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(lab2, "save_classifiers", save_and_predict, raising=False)   # (fails on the run, not here)
        res = dllab_in_process("run", "lab2.features", "--profile", "smoke", "--quiet", "--device", "cpu",
                               "--out", out, "--set", f"model.name={tiny_distilbert}", "--set", f"data.root={root}",
                               "--set", "features.threads=1")
    assert res.returncode == 0, res.stderr
    return out, seen


def test_each_classifier_reloads_without_pickle_with_the_runs_accuracy(features_run, tmp_path):
    """Each classifier from its folder alone: the run's splits embedded again by the model its model.json names
    (not the run's features.npz), as the run embedded them (its batch size), give the run's accuracies exactly."""
    from dllab.data.text import load_text_splits, tokenize
    from dllab.features.saved import load_classifier, load_embedder
    from dllab.features.text import extract_features
    run = features_run[0]
    metrics = dllab.load(run).metrics
    flat = dllab.load(run).config
    cfg = dllab.config("lab2.features", flat["profile"], {k: v for k, v in flat.items() if k != "profile"})
    splits = load_text_splits(cfg.data, cfg.seed)
    assert sorted(p.name for p in (run / "models").iterdir()) == sorted(CLASSIFIERS)
    for name in CLASSIFIERS:
        alone = tmp_path / name
        shutil.copytree(run / "models" / name, alone)
        pipe, desc = load_classifier(alone)
        tokenizer, encoder = load_embedder(alone, desc)
        for short, split in (("val", "validation"), ("test", "test")):
            x = extract_features(encoder, tokenize(splits[split], tokenizer, desc["input"]["max_length"]),
                                 desc["model"]["embedding"]["pooling"], cfg.features.batch_size)
            acc = float((pipe.predict(x) == splits[split].labels).mean())
            assert acc == metrics[f"{name}.{short}_acc"], (name, short)
        assert desc["kind"] == "features" and desc["model"]["embedding"]["pooling"] == "cls"
        assert {p.name for p in alone.iterdir()} == {"classifier.safetensors", "model.json", "MODEL.md"}
        assert "fitted on" in (alone / "MODEL.md").read_text()


def test_predict_with_a_features_classifier_gives_the_in_run_classes(features_run):
    run, seen = features_run
    for name in CLASSIFIERS:
        res = dllab_in_process("predict", run, "--variant", name, *SENTENCES, "--json", "--device", "cpu")
        assert res.returncode == 0, res.stderr
        rows = json.loads(res.stdout)
        assert [r["index"] for r in rows] == seen[name]
        assert all(r["class"] in ("negative", "positive") for r in rows)
        assert all((r["probability"] is None) == (name == "svm") for r in rows)   # LinearSVC has no probabilities
    table = dllab_in_process("predict", run, "--variant", "svm", *SENTENCES, "--device", "cpu")
    assert table.returncode == 0 and len(table.stdout.strip().splitlines()) == 3, table.stderr


def test_tampered_classifier_arrays_are_one_line(features_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(features_run[0], run)
    from safetensors.numpy import load_file, save_file
    weights = run / "models" / "logreg" / "classifier.safetensors"
    arrays = load_file(str(weights))
    save_file({**arrays, "coef": arrays["coef"][:, :3].copy()}, str(weights))     # a wrong shape
    one_line_error(predict_one(run, "logreg"), "classifier.safetensors", "do not make a LogisticRegression")
    marker = tmp_path / "pwned"
    torch.save({"x": Payload(marker)}, run / "models" / "knn" / "classifier.safetensors")
    one_line_error(predict_one(run, "knn"), "not a safetensors file", "pickle")
    assert not marker.exists()
