"""`dllab export` / dllab.export: a saved model as ONNX or TorchScript, checked against PyTorch on real inputs.

The image runs are smoke runs of lab1.mlp and a one-variant lab1.cnn-depth on the real data (../shared/data).
Each export is checked again here, independently of the command's own check: the written file is loaded with
onnxruntime / torch.jit.load and run on the run's test images in batches of 1 and 7 (the batch axis is dynamic).
Text models (Lab 2's fine-tunes, LoRA merged): tests/test_export_text.py.
"""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

import dllab
from conftest import dllab_in_process, one_line_error, require_shared
from dllab.train.saved_model import load_saved_model
from test_saved_models import run_data, write_test_pngs

PICKLE_MAGIC = b"\x80"


def smoke(base: Path, experiment: str, *sets: str) -> Path:
    shared = require_shared()
    out = base / experiment
    extra = [a for s in sets for a in ("--set", s)]
    res = dllab_in_process("run", experiment, "--profile", "smoke", "--set", f"data.root={shared}", *extra,
                           "--device", "cpu", "--out", out, "--quiet")
    assert res.returncode == 0, res.stderr
    return out


@pytest.fixture(scope="module")
def mlp_run(tmp_path_factory) -> Path:
    return smoke(tmp_path_factory.mktemp("export"), "lab1.mlp")


@pytest.fixture(scope="module")
def cnn_run(tmp_path_factory) -> Path:
    # one small residual CNN (base_channels 8 in smoke) instead of the smoke profile's four
    return smoke(tmp_path_factory.mktemp("export"), "lab1.cnn-depth", "plain_depths=[]", "residual_depths=[1]")


@pytest.fixture
def run_copy(request, tmp_path) -> Path:
    """A copy of the run the test names (``mlp_run`` or ``cnn_run``): exports write into the run's folder."""
    dst = tmp_path / "run"
    shutil.copytree(request.getfixturevalue(request.param), dst)
    return dst


# the CNN's smoke run and CIFAR-10's test images take ~25 s on the shared 2 cores: CI runs it, the fast loop not
CNN = pytest.param("cnn_run", marks=pytest.mark.slow)


def first_variant(run: Path) -> str:
    """lab1.mlp: adam; the one-variant lab1.cnn-depth: res_d1."""
    return sorted(p.name for p in (run / "models").iterdir() if p.is_dir())[0]


def first_test_images(run: Path, n: int) -> torch.Tensor:
    _, data = run_data(run)
    return data.test.x[:n].float() / 255


def torch_logits(folder: Path, x: torch.Tensor) -> np.ndarray:
    model, _ = load_saved_model(folder)
    with torch.inference_mode():
        return model(x).numpy()


@pytest.mark.parametrize("run_copy", ["mlp_run", CNN], indirect=True)
def test_onnx_export_matches_onnxruntime_on_batches_of_1_and_7(run_copy):
    variant = first_variant(run_copy)
    res = dllab_in_process("export", run_copy, "--variant", variant, "--format", "onnx")
    assert res.returncode == 0, res.stderr
    folder = run_copy / "models" / variant
    assert "max abs difference" in res.stdout and str(folder / "model.onnx") in res.stdout
    # independently: the file onnxruntime loads, on the run's test images, batch sizes 1 and 7
    session = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    (images,), (logits,) = session.get_inputs(), session.get_outputs()
    assert images.name == "images" and isinstance(images.shape[0], str) and logits.name == "logits"
    x = first_test_images(run_copy, 8)
    for batch in (x[:1], x[1:8]):
        got = session.run(["logits"], {"images": batch.numpy()})[0]
        assert np.abs(got - torch_logits(folder, batch)).max() <= 1e-4


@pytest.mark.parametrize("run_copy", ["mlp_run", CNN], indirect=True)
def test_torchscript_export_matches_pytorch_on_batches_of_1_and_7(run_copy):
    variant = first_variant(run_copy)
    done = dllab.export(run_copy, variant, "torchscript")
    folder = run_copy / "models" / variant
    assert done.path == folder / "model.ts" and done.max_abs_diff <= 1e-4 and done.checked == 64
    loaded = torch.jit.load(str(done.path))
    x = first_test_images(run_copy, 8)
    with torch.inference_mode():
        for batch in (x[:1], x[1:8]):
            assert np.abs(loaded(batch).numpy() - torch_logits(folder, batch)).max() <= 1e-4


def test_the_onnx_file_is_data_in_standard_operators(mlp_run, tmp_path):
    out = tmp_path / "mlp.onnx"
    res = dllab_in_process("export", mlp_run, "--variant", "sgd", "--format", "onnx", "--out", out)
    assert res.returncode == 0, res.stderr
    assert not out.read_bytes().startswith(PICKLE_MAGIC)
    model = onnx.load(str(out))   # a protobuf message: parsing it runs nothing
    onnx.checker.check_model(model)
    assert {n.domain for n in model.graph.node} <= {"", "ai.onnx"}   # no custom (code-backed) operators
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"


@pytest.mark.parametrize("run_copy", ["mlp_run"], indirect=True)
def test_a_mismatch_is_one_line_and_writes_nothing(run_copy, monkeypatch):
    from dllab.train import export

    real = export.run_exported
    monkeypatch.setattr(export, "run_exported", lambda *a, **k: real(*a, **k) + 1e-3)
    folder = run_copy / "models" / "adam"
    before = sorted(p.name for p in folder.iterdir())
    one_line_error(dllab_in_process("export", run_copy, "--variant", "adam", "--format", "onnx"),
                   "differ from PyTorch's by 0.001", "nothing was written")
    one_line_error(dllab_in_process("export", run_copy, "--variant", "adam", "--format", "torchscript"),
                   "differ from PyTorch's")
    assert sorted(p.name for p in folder.iterdir()) == before     # no file, no temp file
    # --force over an existing file: the old file stays as it was
    (folder / "model.onnx").write_bytes(b"old")
    one_line_error(dllab_in_process("export", run_copy, "--variant", "adam", "--format", "onnx", "--force"),
                   "nothing was written")
    assert (folder / "model.onnx").read_bytes() == b"old"


@pytest.mark.parametrize("run_copy", ["mlp_run"], indirect=True)
def test_an_existing_file_is_replaced_only_with_force(run_copy):
    target = run_copy / "models" / "adam" / "model.ts"
    target.write_bytes(b"mine")
    one_line_error(dllab_in_process("export", run_copy, "--variant", "adam", "--format", "torchscript"),
                   "model.ts already exists", "--force")
    assert target.read_bytes() == b"mine"
    res = dllab_in_process("export", run_copy, "--variant", "adam", "--format", "torchscript", "--force")
    assert res.returncode == 0, res.stderr
    assert torch.jit.load(str(target)) is not None


def test_missing_onnxruntime_is_one_line(mlp_run, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)   # `import onnxruntime` raises ImportError
    one_line_error(dllab_in_process("export", mlp_run, "--variant", "adam", "--format", "onnx", "--out",
                                    tmp_path / "m.onnx"), "onnxruntime", "pip install 'dllab[export]'")
    assert not (tmp_path / "m.onnx").exists()


@pytest.mark.parametrize("run_copy", ["mlp_run"], indirect=True)
def test_data_not_on_disk_asks_for_inputs(run_copy, tmp_path):
    desc_path = run_copy / "models" / "adam" / "model.json"
    desc = json.loads(desc_path.read_text())
    desc["config"].update({"data.root": str(tmp_path / "nowhere"), "data.allow_fallback": False})
    desc_path.write_text(json.dumps(desc))
    one_line_error(dllab_in_process("export", run_copy, "--variant", "adam", "--format", "onnx"),
                   "not on this machine", "--inputs")
    assert not (run_copy / "models" / "adam" / "model.onnx").exists()
    pngs = tmp_path / "pngs"
    write_test_pngs(run_data(run_copy)[1], pngs, n=9)   # (run_data reads the run's config.yaml, not model.json)
    res = dllab_in_process("export", run_copy, "--variant", "adam", "--format", "onnx", "--inputs", pngs)
    assert res.returncode == 0, res.stderr
    assert "on 9 inputs (the given images)" in res.stdout


def test_features_classifiers_are_refused_in_one_line(tmp_path):
    features = tmp_path / "feat-run" / "models" / "svm"
    features.mkdir(parents=True)
    (features / "model.json").write_text(json.dumps({"format": "dllab-model/1", "kind": "features"}))
    one_line_error(dllab_in_process("export", features.parent.parent, "--format", "torchscript"),
                   "scikit-learn", "no ONNX or TorchScript export")
    assert not list(tmp_path.rglob("model.onnx")) and not list(tmp_path.rglob("model.ts"))


def test_the_throughput_benchmark_runs_and_prints_both_and_the_ratio(capsys, monkeypatch):
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import predict_throughput

    predict_throughput.main(["--images", "8", "--batch-size", "4", "--repeats", "1", "--threads", "1"])
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3 and all("torch eager" in line and "onnxruntime / eager" in line for line in lines[1:])
