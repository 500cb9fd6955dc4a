"""Lab 4's fitted OOD detectors saved beside the model (models/<variant>/ood/: detectors.safetensors + ood.json),
read back as untrusted data, and `dllab predict`'s OOD score and ood/id decision at the saved threshold.

The lab4.ood smoke runs are the ones tests/test_lab4.py makes: on generated images named as CIFAR-10's classes
(seconds), and, for the MNIST-vs-CIFAR acceptance check, on its slice of the real CIFAR-10 and MNIST (slow).
"""
from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import dllab
from conftest import dllab_in_process, make_imagefolder, one_line_error
from dllab.core.registry import build_model
from dllab.data.images import Split, load_images
from dllab.ood import saved
from dllab.ood.datasets import build_ood_set
from dllab.ood.evaluate import build_detectors, fit_and_evaluate, score_images
from dllab.ood.settings import AutoencoderConfig, OdinSetting, OODConfig
from dllab.runner.experiment import run_experiment
from dllab.train.saved_model import load_saved_model
from test_lab4 import CIFAR10_CLASSES, root  # noqa: F401  (root: test_lab4's real CIFAR-10 slice + MNIST)

ALL = ["msp", "max_logit", "energy", "odin", "autoencoder", "mahalanobis", "knn", "vim", "react", "ash"]
SPEC = {"channels": 3, "height": 16, "width": 16}


# --- each detector's state, on generated data --------------------------------------------------------

@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """Every detector fitted for a tiny cnn on generated images, saved to an ood/ folder and read back."""
    torch.manual_seed(0)
    model = build_model("cnn", depth=5, base_channels=4, num_classes=3, in_channels=3, image_size=16).eval()
    x, y = torch.randint(0, 256, (60, 3, 16, 16), dtype=torch.uint8), torch.arange(60) % 3
    ood = OODConfig.model_validate({"detectors": ALL, "knn": {"k": 5}})
    detectors = build_detectors(ALL, 64, OdinSetting(), AutoencoderConfig(epochs=1, hidden=8), seed=0, ood=ood)
    scores, metrics = fit_and_evaluate(model, detectors, Split(x, y), x[:20], {"noise": torch.rand(20, 3, 16, 16)})
    thresholds = saved.Thresholds("val", 20, {d: saved.threshold(scores["id"][d]) for d in detectors})
    folder = tmp_path_factory.mktemp("model")
    saved.write_ood_folder(folder, saved.describe("standard", detectors, thresholds, scores, metrics), detectors)
    desc, loaded = saved.read_ood_folder(folder, model, SPEC)
    return model, detectors, loaded, desc, x[20:40]


@pytest.mark.parametrize("name", ALL)
def test_each_detectors_state_round_trips(fitted, name):
    model, detectors, loaded, desc, x = fitted
    det = detectors[name]
    before = score_images(model, x, {name: det})[name]
    # through the file: the same scores, bit for bit, and the settings as plain JSON
    assert torch.equal(score_images(model, x, {name: loaded[name][0]})[name], before)
    assert desc["detectors"][name]["settings"] == det.settings()
    json.dumps(det.settings())
    # and in memory, pytorch-ood style
    again = type(det)(**det.settings()).load_state_dict(det.state_dict())
    assert torch.equal(score_images(model, x, {name: again})[name], before)
    stateless = name in ("msp", "max_logit", "energy", "odin", "ash")
    assert (det.state_dict() == {}) == stateless


def test_a_state_of_the_wrong_model_is_refused(fitted, tmp_path):
    _, detectors, _, _, _ = fitted
    other = build_model("cnn", depth=5, base_channels=6, num_classes=4, in_channels=3, image_size=16).eval()
    folder = tmp_path / "m"
    saved.write_ood_folder(folder, saved.describe("standard", detectors, saved.Thresholds(
        "val", 1, {d: 0.0 for d in detectors}), {}, {}), detectors)
    with pytest.raises(dllab.RunFolderError, match="detector 'autoencoder'.*shape"):
        saved.read_ood_folder(folder, other, SPEC)


# --- a lab4.ood smoke run on generated images ----------------------------------------------------------

def _run(tmp_path: Path, *sets: str):
    run = run_experiment("lab4.ood", "smoke", ["device=cpu", *sets], out=str(tmp_path / "run"), quiet=True)
    return run.path


@pytest.fixture(scope="module")
def generated(tmp_path_factory) -> list[str]:
    images = make_imagefolder(tmp_path_factory.mktemp("generated"), classes=CIFAR10_CLASSES, n_train=15, n_test=8,
                              size=16)
    return ["data.name=imagefolder", f"data.root={images}"]


@pytest.fixture(scope="module")
def ood_run(generated, tmp_path_factory) -> Path:
    return _run(tmp_path_factory.mktemp("ood"), *generated)


@pytest.fixture
def ood_copy(ood_run, tmp_path) -> Path:
    shutil.copytree(ood_run, tmp_path / "copy")
    return tmp_path / "copy"


def quantile95(values: list[float]) -> float:
    """The 95th percentile by hand: linear interpolation between the order statistics around 0.95 (n - 1)."""
    s = sorted(values)
    pos = 0.95 * (len(s) - 1)
    lo = math.floor(pos)
    return s[lo] + (s[min(lo + 1, len(s) - 1)] - s[lo]) * (pos - lo)


def test_the_threshold_is_the_95th_percentile_of_id_validation_scores(ood_run):
    folder = ood_run / "models" / "standard"
    desc = json.loads((folder / "ood" / "ood.json").read_text())
    assert desc["threshold_split"] == "val" and desc["default"] == "energy"
    assert list(desc["detectors"]) == ["msp", "max_logit", "energy", "odin", "autoencoder"]
    model, spec = load_saved_model(folder)
    _, detectors = saved.read_ood_folder(folder, model, spec["input"])
    cfg = dllab.load(ood_run).config
    data = load_images(dllab.config("lab4.ood", "smoke", {k: v for k, v in cfg.items() if k != "profile"}).data,
                       cfg["seed"], "smoke")
    assert desc["threshold_images"] == len(data.val.y) > 0
    scores = score_images(model, data.val.x, {d: det for d, (det, _) in detectors.items()}, 128)
    for d, entry in desc["detectors"].items():
        assert entry["threshold"] == pytest.approx(quantile95(scores[d].tolist()), rel=1e-9, abs=1e-12), d
        assert (scores[d] > entry["threshold"]).float().mean() <= 0.05 + 1 / len(data.val.y)
        metrics = json.loads((ood_run / "metrics.json").read_text())["summary"]
        assert entry["metrics"]["mnist"]["auroc"] == metrics[f"mnist.{d}.auroc"]


def test_without_a_validation_split_the_training_images_set_the_threshold(generated, tmp_path):
    run = _run(tmp_path, *generated, "data.val_fraction=0", "ood.detectors=[energy]", "ood.names=[heldout]")
    desc = json.loads((run / "models" / "standard" / "ood" / "ood.json").read_text())
    assert desc["threshold_split"] == "train" and "training images" in desc["threshold_note"]
    assert "ood.json come from the ID training images" in (run / "report.md").read_text()


def test_predict_adds_the_ood_score_and_decision(ood_run, tmp_path):
    img = tmp_path / "x.png"
    Image.fromarray(np.full((16, 16, 3), 120, np.uint8)).save(img)
    res = dllab_in_process("predict", ood_run, img, "--json", "--device", "cpu", "--detector", "odin")
    assert res.returncode == 0, res.stderr
    (row,) = json.loads(res.stdout)
    assert row["detector"] == "odin" and row["decision"] == ("ood" if row["ood_score"] > row["threshold"] else "id")
    assert dllab.predict(ood_run, img, device="cpu", detector="odin") == [row]
    (default,) = dllab.predict(ood_run, img, device="cpu")
    assert default["detector"] == "energy"
    table = dllab_in_process("predict", ood_run, img).stdout.splitlines()
    assert "energy score" in table[0] and table[1].split()[-1] in ("ood", "id")


@pytest.mark.parametrize("damage, fragment", [
    (lambda f: (f / "ood.json").unlink(), "ood.json is missing"),
    (lambda f: (f / "detectors.safetensors").write_bytes(b"\x80\x04garbage"), "not a safetensors file"),
    (lambda f: _edit_json(f, lambda d: d["detectors"].update(evil=d["detectors"]["msp"])), "unknown detector"),
    (lambda f: _edit_json(f, lambda d: d["detectors"]["energy"].update(threshold="NaN")), "not a finite number"),
    (lambda f: _edit_json(f, lambda d: d["detectors"]["autoencoder"]["settings"].update(hidden=7)),
     "detector 'autoencoder'"),
    (lambda f: _edit_json(f, lambda d: d["detectors"]["odin"]["settings"].update(code="x")), "settings"),
    (lambda f: _edit_json(f, lambda d: d["detectors"]["energy"]["settings"].update(T="1")), "setting T is '1'"),
    (lambda f: _drop_tensor(f), "detector 'autoencoder'"),
])
def test_a_tampered_ood_folder_is_one_line(ood_copy, tmp_path, damage, fragment):
    damage(ood_copy / "models" / "standard" / "ood")
    img = tmp_path / "x.png"
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(img)
    one_line_error(dllab_in_process("predict", ood_copy, img, "--device", "cpu"), fragment)


def _edit_json(folder: Path, change) -> None:
    d = json.loads((folder / "ood.json").read_text())
    change(d)
    (folder / "ood.json").write_text(json.dumps(d))


def _drop_tensor(folder: Path) -> None:
    from safetensors.torch import load_file, save_file

    tensors = load_file(folder / "detectors.safetensors")
    tensors["autoencoder.decoder.net.0.weight"] = tensors["autoencoder.decoder.net.0.weight"][:, :1].contiguous()
    save_file(tensors, folder / "detectors.safetensors")


def test_an_unknown_or_absent_detector_is_one_line(ood_copy, tmp_path):
    img = tmp_path / "x.png"
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(img)
    one_line_error(dllab_in_process("predict", ood_copy, img, "--detector", "knn"), "no saved detector 'knn'",
                   "energy")
    shutil.rmtree(ood_copy / "models" / "standard" / "ood")
    (row,) = dllab.predict(ood_copy, img, device="cpu")
    assert "decision" not in row                                    # a model without detectors: class only
    one_line_error(dllab_in_process("predict", ood_copy, img, "--detector", "energy"), "no saved OOD detectors")


# --- the acceptance check: an MNIST digit is OOD, a CIFAR image is ID (real data) ---------------------------

@pytest.mark.slow
def test_predict_flags_an_mnist_digit_as_ood_and_a_cifar_image_as_id(root, tmp_path):  # noqa: F811
    run = _run(tmp_path)
    data = load_images(dllab.config("lab4.ood", "smoke").data, 0, "smoke")
    digit = build_ood_set("mnist", data, root, limit=1).x[0]           # 3-channel 32x32, as the OOD set makes it
    Image.fromarray(digit.numpy().transpose(1, 2, 0)).save(tmp_path / "digit.png")
    cifar = sorted((root / "cifar10" / "test" / "airplane").iterdir())[0]
    res = dllab_in_process("predict", run, tmp_path / "digit.png", cifar, "--json", "--device", "cpu",
                           "--detector", "autoencoder")
    assert res.returncode == 0, res.stderr
    digit_row, cifar_row = json.loads(res.stdout)
    threshold = json.loads((run / "models" / "standard" / "ood" / "ood.json").read_text()
                           )["detectors"]["autoencoder"]["threshold"]
    assert digit_row["threshold"] == cifar_row["threshold"] == threshold
    assert digit_row["decision"] == "ood" and digit_row["ood_score"] > threshold
    assert cifar_row["decision"] == "id" and cifar_row["ood_score"] <= threshold
    assert cifar_row["class"] in data.classes
