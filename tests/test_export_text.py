"""`dllab export` of Lab 2's text models: the folder read as `dllab predict` reads it, LoRA merged.

The run is lab2.finetune's smoke profile as tests/test_saved_text_models.py runs it (the tiny random DistilBERT,
generated reviews, CPU, one thread), with the two strategies whose folders differ in kind: `full` (a whole
Hugging Face classifier) and `lora` (a PEFT adapter on the base model model.json names). Each export is checked
again here, independently of the command's own check: the written file is loaded with onnxruntime /
torch.jit.load and run at other batch sizes and sentence lengths than the command's check, against the model as
`dllab predict` loads it (for LoRA: the unmerged PeftModel).
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from conftest import dllab_in_process, one_line_error
from dllab.text.saved import load_text_model
from test_saved_models import Payload
from test_text import _write_dataset, offline_hf_one_thread, tiny_distilbert  # noqa: F401 (fixtures)

STRATEGIES = ("full", "lora")
SUFFIX = {"onnx": "onnx", "torchscript": "ts"}
# other batch sizes and lengths than the command's check (the run's 16 test sentences): dynamic axes
OTHER_SENTENCES = [["fine ."], ["one", "a somewhat longer sentence than any of the others here , and so on", "so-so"]]


@pytest.fixture(scope="module")
def text_run(tiny_distilbert, tmp_path_factory) -> Path:   # noqa: F811 (the fixture imported above)
    base = tmp_path_factory.mktemp("export_text")
    root, out = _write_dataset(base / "data"), base / "run"
    res = dllab_in_process("run", "lab2.finetune", "--profile", "smoke", "--quiet", "--device", "cpu",
                           "--out", out, "--set", f"model.name={tiny_distilbert}", "--set", f"data.root={root}",
                           "--set", f"finetune.strategies=[{','.join(STRATEGIES)}]",
                           "--set", "finetune.pretrained_model=", "--set", "finetune.threads=1")
    assert res.returncode == 0, res.stderr
    return out


@pytest.fixture
def run_copy(text_run, tmp_path) -> Path:
    dst = tmp_path / "run"
    shutil.copytree(text_run, dst)
    return dst


def feed_for(folder: Path, sentences: list[str]) -> dict[str, np.ndarray]:
    from transformers import AutoTokenizer

    enc = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)(sentences, padding=True,
                                                                          return_tensors="np")
    return {k: enc[k].astype(np.int64) for k in ("input_ids", "attention_mask")}


def predict_logits(folder: Path, feed: dict[str, np.ndarray]) -> np.ndarray:
    """The logits of the model as `dllab predict` loads it (a PeftModel, unmerged, for LoRA)."""
    model, _, _ = load_text_model(folder)
    with torch.inference_mode():
        return model(**{k: torch.from_numpy(v) for k, v in feed.items()}).logits.numpy()


def exported_logits(path: Path, fmt: str, feed: dict[str, np.ndarray]) -> np.ndarray:
    if fmt == "onnx":
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        assert [i.name for i in session.get_inputs()] == ["input_ids", "attention_mask"]
        return session.run(["logits"], feed)[0]
    loaded = torch.jit.load(str(path))
    with torch.inference_mode():
        return loaded(*(torch.from_numpy(feed[k]) for k in ("input_ids", "attention_mask"))).numpy()


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_full_and_lora_export_and_match_the_model_predict_loads(text_run, tmp_path, strategy, fmt):
    out = tmp_path / f"{strategy}.{SUFFIX[fmt]}"
    res = dllab_in_process("export", text_run, "--variant", strategy, "--format", fmt, "--out", out)
    assert res.returncode == 0, res.stderr
    assert "max abs difference" in res.stdout and "on 16 inputs (the run's test sentences" in res.stdout, res.stdout
    folder = text_run / "models" / strategy
    for sentences in OTHER_SENTENCES:
        feed = feed_for(folder, sentences)
        assert np.abs(exported_logits(out, fmt, feed) - predict_logits(folder, feed)).max() <= 1e-4


def test_a_lora_export_is_the_plain_merged_classifier(text_run, tmp_path):
    out = tmp_path / "lora.onnx"
    assert dllab_in_process("export", text_run, "--variant", "lora", "--format", "onnx", "--out", out).returncode == 0
    graph = onnx.load(str(out)).graph
    names = [t.name for t in graph.initializer] + [n.name for n in graph.node]
    assert names and not [n for n in names if "lora" in n.lower()]   # no adapter branch left in the graph


def test_the_check_says_which_sentences_it_ran(run_copy, tmp_path):
    lines = tmp_path / "sentences.txt"
    lines.write_text("A fine film.\n\nNot my kind of movie at all, sadly.\n")
    res = dllab_in_process("export", run_copy, "--variant", "full", "--format", "onnx", "--inputs", lines)
    assert res.returncode == 0, res.stderr
    assert "on 2 inputs (the given sentences)" in res.stdout, res.stdout
    desc_path = run_copy / "models" / "lora" / "model.json"
    desc = json.loads(desc_path.read_text())
    desc["config"]["data.root"] = str(tmp_path / "nowhere")     # the run's data are not on this machine
    desc_path.write_text(json.dumps(desc))
    res = dllab_in_process("export", run_copy, "--variant", "lora", "--format", "torchscript")
    assert res.returncode == 0, res.stderr
    assert "on 4 inputs (fixed sentences: the run's data (rotten_tomatoes) are not on this machine)" in res.stdout
    assert (run_copy / "models" / "lora" / "model.ts").is_file()


@pytest.mark.parametrize("strategy, weights", [("full", "model.safetensors"), ("lora", "adapter_model.safetensors")])
def test_a_pickle_in_place_of_safetensors_is_refused_as_predict_refuses_it(run_copy, tmp_path, strategy, weights):
    marker = tmp_path / "pwned"
    folder = run_copy / "models" / strategy
    torch.save({"x": Payload(marker)}, folder / weights)
    before = sorted(p.name for p in folder.iterdir())
    exported = one_line_error(dllab_in_process("export", run_copy, "--variant", strategy, "--format", "onnx"),
                              weights, "not a safetensors file", "pickle")
    predicted = one_line_error(dllab_in_process("predict", run_copy, "--variant", strategy, "fine .", "--device",
                                                "cpu"))
    assert exported == predicted
    assert not marker.exists() and sorted(p.name for p in folder.iterdir()) == before


def test_the_check_compares_with_the_model_as_loaded_so_a_bad_merge_writes_nothing(text_run, tmp_path, monkeypatch):
    from dllab.text import export
    real = export.merged

    def bad_merge(model):   # a merge that gets the head's bias wrong: the export of it is faithful, but not right
        plain = real(model)
        with torch.no_grad():
            plain.classifier.bias += 1e-3
        return plain
    monkeypatch.setattr(export, "merged", bad_merge)
    out = tmp_path / "lora.onnx"
    one_line_error(dllab_in_process("export", text_run, "--variant", "lora", "--format", "onnx", "--out", out),
                   "differ from PyTorch's", "nothing was written")
    assert not out.exists()
