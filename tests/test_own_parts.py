"""Your own parts in any image experiment: a package with its own model (a tiny ResNet, by import path and
registered through the ``dllab.plugins`` entry points), its own ImageFolder dataset (made here), a detector and
an attack, run through lab1.cnn-depth and lab4.* on the smoke profile; the report, env.json, metrics.json and
TensorBoard's hparams name the user's dataset and model; lab1.transfer takes the ResNet as its source model
(trained here on one ImageFolder, fine-tuned on another, then reused); a wrong import path or a model lacking what
an experiment calls is one line before any work."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from conftest import dllab_in_process, make_imagefolder, one_line_error
from dllab.core import registry

# The user's package: a tiny ResNet (residual blocks at the input's size, so the autoencoder detector can decode
# its feature maps) and factories that get wrong what an experiment needs.
NETS = '''\
"""A tiny ResNet: a stem, a few basic residual blocks, global pooling, a linear head."""
from torch import nn


class Block(nn.Module):
    def __init__(self, width, residual=True):
        super().__init__()
        self.residual = residual
        self.body = nn.Sequential(nn.Conv2d(width, width, 3, padding=1, bias=False), nn.BatchNorm2d(width),
                                  nn.ReLU(), nn.Conv2d(width, width, 3, padding=1, bias=False),
                                  nn.BatchNorm2d(width))

    def forward(self, x):
        return (self.body(x) + x if self.residual else self.body(x)).relu()


class TinyResNet(nn.Module):
    def __init__(self, num_classes, in_channels=3, blocks=2, width=8, residual=True):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, width, 3, padding=1, bias=False), nn.BatchNorm2d(width),
                                  nn.ReLU())
        self.layers = nn.Sequential(*[Block(width, residual) for _ in range(blocks)])
        self.fc = nn.Linear(width, num_classes)

    def feature_maps(self, x):
        return self.layers(self.stem(x))

    def forward_features(self, x):
        return self.feature_maps(x).mean((2, 3))

    def forward(self, x):
        return self.fc(self.forward_features(x))

    def reset_classifier(self, num_classes):
        """timm's name: a new linear head for num_classes classes (lab1.transfer's fine-tuning calls it)."""
        self.fc = nn.Linear(self.fc.in_features, num_classes)


class FixedHead(nn.Module):
    """Features and a head, but no reset_classifier: a model written only to be trained, not fine-tuned."""

    def __init__(self, num_classes, in_channels=3):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(in_channels, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                                  nn.Flatten())
        self.fc = nn.Linear(4, num_classes)

    def forward_features(self, x):
        return self.body(x)

    def forward(self, x):
        return self.fc(self.forward_features(x))


def fixed_head(num_classes, in_channels=3):
    return FixedHead(num_classes, in_channels)


def tiny_resnet(num_classes, in_channels=3, depth=2, residual=True):
    """No **kwargs: dllab passes only the arguments named here."""
    return TinyResNet(num_classes, in_channels, depth, 8, residual)


class Headless(nn.Module):
    """A linear classifier with no features method and no named head: enough for attacks, not for detectors."""

    def __init__(self, num_classes, pixels):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(pixels, num_classes))

    def forward(self, x):
        return self.net(x)


def headless(num_classes, in_channels=3, image_size=32, **_):
    return Headless(num_classes, in_channels * image_size * image_size)


def no_classes(in_channels=3):
    return TinyResNet(10, in_channels)


NOT_CALLABLE = 3
'''

PLUGINS = '''\
"""The same ResNet registered by name, a detector and an attack, through the dllab.plugins entry point."""
import torch

from dllab.core.registry import register
from dllab.ood.base import LogitDetector
from own_parts_pkg.nets import TinyResNet


@register("model", "tiny_resnet")
def tiny_resnet(num_classes=10, in_channels=3, residual=True, **_):
    """A tiny ResNet of two basic blocks, 8 channels."""
    return TinyResNet(num_classes, in_channels, 2, 8, residual)


@register("detector", "min_logit_gap")
class MinLogitGap(LogitDetector):
    """Minus the gap between the two largest logits (a small gap = unsure = more OOD)."""

    def score_logits(self, logits):
        top2 = logits.topk(2, dim=1).values
        return top2[:, 1] - top2[:, 0]


@register("attack", "noise_sign")
def noise_sign(model, x, y, eps):
    """A random sign step of size eps (no gradient): a weak attack."""
    g = torch.Generator().manual_seed(0)
    step = torch.randint(0, 2, x.shape, generator=g).to(x.device, x.dtype) * 2 - 1
    return (x.detach() + eps * step).clamp(0, 1)
'''

FACTORY = "own_parts_pkg.nets:tiny_resnet"
SMOKE = ["--profile", "smoke", "--set", "data.name=imagefolder", "--set", "log.sinks=[tensorboard]"]


@pytest.fixture(scope="module")
def package(tmp_path_factory) -> Path:
    """The user's package installed as pip leaves it (the package and its dist-info with the entry point) in a
    folder put on sys.path, the registry's index read again with it (and again without it afterwards)."""
    base = tmp_path_factory.mktemp("own")
    pkg = base / "own_parts_pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "nets.py").write_text(NETS)
    (pkg / "plugins.py").write_text(PLUGINS)
    info = base / "own_parts_pkg-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: own-parts-pkg\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[dllab.plugins]\nownparts = own_parts_pkg.plugins\n")
    with pytest.MonkeyPatch.context() as mp:
        mp.syspath_prepend(str(base))
        registry._index.cache_clear()
        yield base
    registry._index.cache_clear()
    for kind, name in (("model", "tiny_resnet"), ("detector", "min_logit_gap"), ("attack", "noise_sign")):
        registry._loaded[kind].pop(name, None)
    for m in [m for m in sys.modules if m.startswith("own_parts_pkg")]:
        del sys.modules[m]


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    """The user's ImageFolder: 3 classes of generated 16x16 images."""
    return make_imagefolder(tmp_path_factory.mktemp("data") / "shapes", classes=("circle", "square", "star"),
                            n_train=24, n_test=8, size=16)


def _run(*args, out: Path):
    res = dllab_in_process("run", *args, "--out", out, "--quiet")
    assert res.returncode == 0, res.stderr
    return json.loads((out / "metrics.json").read_text()), (out / "report.md").read_text()


def _assert_named(metrics: dict, report: str, out: Path, model: str) -> None:
    """The user's dataset and model are named in metrics.json, env.json and the report; the spec's datasets
    are not (the report of a run on other data leaves the spec's description, claims and numbers out)."""
    assert metrics["dataset"] == "shapes (ImageFolder)" and metrics["model"] == model
    env = json.loads((out / "env.json").read_text())
    assert env["dataset"] == "shapes (ImageFolder)" and env["model"] == model and env["spec_data"] is False
    assert report.startswith("# ") and "on shapes (ImageFolder)" in report.splitlines()[0]
    assert f"dataset: shapes (ImageFolder), model: {model}" in report
    for spec_name in ("CIFAR", "MNIST", "mnist", "cifar"):
        assert spec_name not in report, spec_name


def test_a_factory_model_trains_on_an_imagefolder_in_cnn_depth(package, shapes, tmp_path):
    out = tmp_path / "cnn"
    metrics, report = _run("lab1.cnn-depth", *SMOKE, "--set", f"data.root={shapes}", "--set",
                           f"model.factory={FACTORY}", "--set", "plain_depths=[1]", "--set", "residual_depths=[2]",
                           out=out)
    _assert_named(metrics, report, out, FACTORY)
    assert set(metrics["summary"]) == {f"{v}.{k}" for v in ("plain_d1", "res_d2")
                                       for k in ("test_acc", "test_acc_last", "val_acc")}
    import torch

    saved = torch.load(out / "models" / "res_d2.pt", weights_only=True)
    # only the arguments the factory names were passed, and saved, so the model rebuilds from its spec
    assert saved["spec"] == {"name": FACTORY, "kwargs": {"num_classes": 3, "in_channels": 3, "depth": 2,
                                                         "residual": True}}
    assert any(k.startswith("layers.1.body") for k in saved["state_dict"])   # the user's ResNet, two blocks
    # TensorBoard's hparams (in the event file) name the dataset and model beside the config keys
    raw = b"".join(p.read_bytes() for p in (out / "tb").glob("events.out.tfevents.*"))
    assert b"shapes (ImageFolder)" in raw and FACTORY.encode() in raw


@pytest.fixture(scope="module")
def ood_run(package, shapes, tmp_path_factory) -> Path:
    """lab4.ood on the user's data (2 ID classes, the third held out) with the plug-in model and detector."""
    out = tmp_path_factory.mktemp("lab4") / "ood"
    res = dllab_in_process("run", "lab4.ood", *SMOKE, "--set", f"data.root={shapes}", "--set",
                           "data.classes=[circle,square]", "--set", "model.factory=tiny_resnet", "--set",
                           "ood.names=[heldout,noise]", "--set", "ood.detectors=[msp,autoencoder,min_logit_gap]",
                           "--out", out, "--quiet")
    assert res.returncode == 0, res.stderr
    return out


def test_a_plugin_model_and_detector_run_lab4_ood_on_an_imagefolder(ood_run):
    metrics = json.loads((ood_run / "metrics.json").read_text())
    report = (ood_run / "report.md").read_text()
    _assert_named(metrics, report, ood_run, "tiny_resnet")
    for ood in ("heldout", "noise"):
        for det in ("msp", "autoencoder", "min_logit_gap"):
            assert 0 <= metrics["summary"][f"{ood}.{det}.auroc"] <= 1
    assert "tiny_resnet" in report and "min_logit_gap" in report


def test_a_plugin_attack_runs_lab4_fgsm_on_the_reused_user_model(ood_run, shapes, tmp_path):
    out = tmp_path / "fgsm"
    metrics, report = _run("lab4.fgsm", *SMOKE, "--set", f"data.root={shapes}", "--set",
                           "data.classes=[circle,square]", "--set", "model.factory=tiny_resnet", "--set",
                           f"model.run={ood_run}", "--set", "attack.name=noise_sign", out=out)
    assert set(metrics["summary"]) == {"model.test_acc", "noise_sign.acc@0", "noise_sign.acc@0.01",
                                       "noise_sign.acc@0.05"}
    assert metrics["summary"]["noise_sign.acc@0"] == metrics["summary"]["model.test_acc"]
    assert "reused, not trained in this run" in report and "tiny_resnet" in report


def test_a_reused_model_built_by_another_factory_is_refused(ood_run, shapes, tmp_path):
    res = dllab_in_process("run", "lab4.fgsm", *SMOKE, "--set", f"data.root={shapes}", "--set",
                           f"model.run={ood_run}", "--out", tmp_path / "r")
    one_line_error(res, "name='tiny_resnet'", "needs name='cnn'")
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("factory, fragment", [
    ("no_such_pkg.nets:resnet", "cannot import no_such_pkg"),
    ("own_parts_pkg.nets:resnet99", "own_parts_pkg.nets has no attribute resnet99"),
    ("own_parts_pkg.nets:NOT_CALLABLE", "NOT_CALLABLE is a int, not a callable"),
    ("own_parts_pkg.nets:no_classes", "takes no num_classes argument"),
    ("own_parts_pkg.nets", "unknown model 'own_parts_pkg.nets'"),
    ("own_parts_pkg.nets:", "is not an import path"),
])
def test_a_bad_factory_is_one_line_before_any_work(package, factory, fragment, tmp_path):
    res = dllab_in_process("run", "lab1.cnn-depth", "--profile", "smoke", "--set", f"model.factory={factory}",
                           "--out", tmp_path / "r")
    one_line_error(res, "model.factory", fragment)
    assert not (tmp_path / "r").exists()


def test_lab1_mlp_takes_a_factory_as_its_model(package):
    from dllab import api

    assert api.config("lab1.mlp", "smoke", {"model": FACTORY}).model == FACTORY


def test_a_model_lacking_what_lab4_calls_is_one_line_before_training(package, shapes, tmp_path):
    res = dllab_in_process("run", "lab4.ood", *SMOKE, "--set", f"data.root={shapes}", "--set",
                           "data.classes=[circle,square]", "--set", "model.factory=own_parts_pkg.nets:headless",
                           "--set", "ood.names=[noise]", "--out", tmp_path / "r", "--quiet")
    one_line_error(res, "model own_parts_pkg.nets:headless (Headless) has no 'feature_maps'")
    assert not (tmp_path / "r").exists()


def test_the_readme_names_what_a_factory_is_called_with():
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme[readme.index("### Your own model, dataset, detector or attack"):]
    for word in ("model.factory", "num_classes", "in_channels", "image_size", "imagefolder", "dllab.plugins"):
        assert word in section, word


def test_a_profiles_own_dataset_keeps_the_spec_and_a_users_does_not():
    """lab1.transfer's quick profile stands CIFAR-10 classes in for CIFAR-100 (not there offline): that is still
    the experiment the spec describes, so its report keeps the spec's text; an ImageFolder is the user's own."""
    from dllab.core.config import run_config
    from dllab.experiments.common import spec_data

    assert spec_data(run_config("lab1.transfer", "quick"), "lab1.transfer")
    assert spec_data(run_config("lab1.transfer", "paper"), "lab1.transfer")
    assert not spec_data(run_config("lab1.transfer", "quick", ["data.name=imagefolder"]), "lab1.transfer")
    assert not spec_data(run_config("lab1.cnn-depth", "quick", ["data.name=mnist"]), "lab1.cnn-depth")


def test_a_feature_detector_on_a_model_without_forward_head_is_one_line_before_training(package, shapes, tmp_path):
    """Each detector says what it calls on the model (``needs``): knn reads forward_features and forward_head,
    which the tiny ResNet lacks in part, so the run stops before training, naming the missing method."""
    res = dllab_in_process("run", "lab4.ood", *SMOKE, "--set", f"data.root={shapes}", "--set",
                           "data.classes=[circle,square]", "--set", f"model.factory={FACTORY}",
                           "--set", "ood.names=[noise]", "--set", "ood.detectors=[msp,knn]",
                           "--out", tmp_path / "r", "--quiet")
    one_line_error(res, f"model {FACTORY} (TinyResNet) has no 'forward_head'")
    assert not (tmp_path / "r").exists()


# --- lab1.transfer: the user's model as the source, one ImageFolder to another -------------------------------

@pytest.fixture(scope="module")
def marks(tmp_path_factory) -> Path:
    """The target ImageFolder: 2 other classes of generated 16x16 images."""
    return make_imagefolder(tmp_path_factory.mktemp("data") / "marks", classes=("cross", "tick"), n_train=24,
                            n_test=8, size=16, seed=1)


def _transfer_args(shapes: Path, marks: Path, factory: str) -> list[str]:
    """lab1.transfer on the smoke profile from ``shapes`` (the source's data) to ``marks`` with ``factory``'s model
    (the profile's CIFAR-10 class halves unset: each ImageFolder with all its classes)."""
    return [*SMOKE, "--set", f"data.root={marks}", "--set", "data.classes=[]", "--set", "source.data.name=imagefolder",
            "--set", f"source.data.root={shapes}", "--set", "source.data.classes=[]", "--set",
            f"source.factory={factory}", "--set", "source.depth=2", "--set", "freeze_blocks=1"]


@pytest.fixture(scope="module")
def transfer_run(package, shapes, marks, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("transfer") / "t"
    res = dllab_in_process("run", "lab1.transfer", *_transfer_args(shapes, marks, FACTORY), "--out", out, "--quiet")
    assert res.returncode == 0, res.stderr
    return out


def test_lab1_transfer_fine_tunes_a_factory_model_from_one_imagefolder_to_another(transfer_run, marks):
    metrics = json.loads((transfer_run / "metrics.json").read_text())
    report = (transfer_run / "report.md").read_text()
    assert metrics["dataset"] == "marks (ImageFolder)" and metrics["model"] == FACTORY
    assert json.loads((transfer_run / "env.json").read_text())["model"] == FACTORY
    assert f"dataset: marks (ImageFolder), model: {FACTORY}" in report
    for method in ("svm", "knn", "head", "full_adam", "full_sgd", "partial", "scratch"):
        assert 0 <= metrics["summary"][f"{method}.test_acc"] <= 1, method
    import torch

    # every model is the user's ResNet, rebuilt from its spec: the source for shapes' 3 classes, the fine-tuned
    # and scratch models for marks' 2
    for name, classes in (("source", 3), ("head", 2), ("partial", 2), ("scratch", 2)):
        saved = torch.load(transfer_run / "models" / f"{name}.pt", weights_only=True)
        assert saved["spec"]["name"] == FACTORY and saved["spec"]["kwargs"]["num_classes"] == classes, name
        assert saved["state_dict"]["fc.weight"].shape[0] == classes
    source = torch.load(transfer_run / "models" / "source.pt", weights_only=True)["state_dict"]
    head = torch.load(transfer_run / "models" / "head.pt", weights_only=True)["state_dict"]
    partial = torch.load(transfer_run / "models" / "partial.pt", weights_only=True)["state_dict"]
    # head trained the new classifier alone; partial kept the stem and the first block, trained the second
    assert all(torch.equal(source[k], head[k]) for k in source if not k.startswith("fc."))
    assert all(torch.equal(source[k], partial[k]) for k in source if k.startswith(("stem.", "layers.0.")))
    assert not all(torch.equal(source[k], partial[k]) for k in source if k.startswith("layers.1."))
    assert "the new classifier (reset_classifier)" in report and "all but the stem and layers 1-1" in report
    # the notes say the target is the user's dataset (not CIFAR-100 missing offline) and leave the spec's verdict out
    assert "(the user's own dataset)" in report and "The spec found" not in report


def test_lab1_transfer_reuses_a_source_of_its_factory_and_refuses_another(transfer_run, shapes, marks, tmp_path):
    reuse = ["--set", f"source.run={transfer_run}", "--set", "variants=[head]", "--set", "classifiers=[]"]
    metrics, report = _run("lab1.transfer", *_transfer_args(shapes, marks, FACTORY), *reuse, out=tmp_path / "same")
    assert set(metrics["summary"]) >= {"head.val_acc", "head.test_acc"} and metrics["model"] == FACTORY
    assert "reused, not trained in this run" in report and not (tmp_path / "same" / "models" / "source.pt").exists()
    res = dllab_in_process("run", "lab1.transfer", *_transfer_args(shapes, marks, ""), *reuse,
                           "--out", tmp_path / "cnn")
    one_line_error(res, f"name='{FACTORY}'", "needs name='cnn'")
    assert not (tmp_path / "cnn").exists()


@pytest.mark.parametrize("factory, sets, fragment", [
    ("own_parts_pkg.nets:fixed_head", [], "(FixedHead) has no 'reset_classifier'; fine-tuning (head, full_adam, "
                                          "full_sgd, partial) calls reset_classifier(num_classes)"),
    ("own_parts_pkg.nets:headless", ["variants=[scratch]"], "has no 'features' or 'forward_features'"),
    (FACTORY, ["variants=[partial]", "freeze_blocks=3"], "freeze_blocks=3: choose 0..2"),
])
def test_a_model_lacking_what_lab1_transfer_calls_is_one_line_before_training(package, shapes, marks, factory, sets,
                                                                               fragment, tmp_path):
    extra = [a for s in sets for a in ("--set", s)]
    res = dllab_in_process("run", "lab1.transfer", *_transfer_args(shapes, marks, factory), *extra,
                           "--out", tmp_path / "r", "--quiet")
    one_line_error(res, f"model {factory}" if "has no" in fragment else "", fragment)
    assert not (tmp_path / "r").exists()
