"""One registry for every plug-in: the static index (read with ast, nothing imported) agrees with what importing
dllab's modules registers; `dllab list` imports no torch; a plug-in from another installed package (entry point
group ``dllab.plugins``) is listed and used by runs: a detector, a model and a dataset, each one file."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from dllab import DllabError
from dllab.core import registry

# --- the test plug-in package: three files, each one plug-in (the README's CONTRIBUTING examples) -----------

DETECTOR = '''\
"""A detector from another package: the distance of an image's logits to the nearest class mean of the ID
training images' logits (a logit-space cousin of Mahalanobis). ``fit`` learns the means from the ID training
images and their labels."""
import torch

from dllab.ood.base import LogitDetector
from dllab.train.inference import logits_of
from dllab.core.registry import register


@register("detector", "class_mean")
class ClassMean(LogitDetector):
    """Distance to the nearest class mean: score(x) = min_k ||f(x) - mean_k|| (larger = more OOD)."""

    label = "class-mean distance"

    def fit(self, model, x=None, y=None):
        logits = logits_of(model, x, self.batch_size)
        self.means = torch.stack([logits[y == k].mean(0) for k in y.unique()])
        return self

    def score_logits(self, logits):
        return torch.cdist(logits, self.means).amin(1)
'''

MODEL = '''\
"""A model from another package, built by name like dllab's own (``--set model=tiny_convnet``)."""
from torch import nn

from dllab.core.registry import register


@register("model", "tiny_convnet")
def tiny_convnet(num_classes=10, in_channels=3, image_size=32, width=16, **_):
    """Two 3x3 convolutions, global average pooling, a linear classifier."""
    return nn.Sequential(nn.Conv2d(in_channels, width, 3, padding=1), nn.ReLU(),
                         nn.Conv2d(width, width, 3, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, num_classes))
'''

DATASET = '''\
"""A dataset from another package (``--set data.name=stripes``): 8x8 images of stripes, made on the fly."""
import torch

from dllab.data.images import DatasetFiles, Split
from dllab.core.registry import register

CLASSES = ["horizontal", "vertical", "diagonal"]


def _stripes(n: int, seed: int) -> Split:
    i = torch.arange(8)
    patterns = torch.stack([(i[:, None] % 2).expand(8, 8), (i[None, :] % 2).expand(8, 8),
                            (i[:, None] + i[None, :]) % 2])
    y = torch.arange(n) % len(CLASSES)
    noise = torch.randint(0, 96, (n, 8, 8), generator=torch.Generator().manual_seed(seed))
    x = (patterns[y] * 160 + noise).to(torch.uint8)
    return Split(x.unsqueeze(1).expand(-1, 3, -1, -1).contiguous(), y)


@register("dataset", "stripes")
def stripes(root, allow_fallback=False):
    """Stripes in three orientations: 300 training and 90 test images (generated; root is not read)."""
    return DatasetFiles(_stripes(300, 0), _stripes(90, 1), list(CLASSES), "generated stripes (dllab-testplug)")
'''


def make_plugin(base: Path, files: dict[str, str] | None = None, target: str = "dllab_testplug") -> Path:
    """An installed package as pip leaves it: the package and its dist-info (METADATA, entry_points.txt)."""
    pkg = base / "dllab_testplug"
    pkg.mkdir(parents=True)
    # Importing the package leaves a mark: `dllab list` and config checks must find its plug-ins without it.
    (pkg / "__init__.py").write_text("import pathlib, os\n"
                                     "pathlib.Path(os.environ['PLUGIN_MARK']).touch()\n")
    for name, text in (files or {"detectors.py": DETECTOR, "models.py": MODEL, "datasets.py": DATASET}).items():
        (pkg / name).write_text(text)
    info = base / "dllab_testplug-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: dllab-testplug\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[dllab.plugins]\ntestplug = {target}\n")
    return base


def dllab(*args, plugin: Path | None = None, cwd=None, mark: Path | None = None):
    env = dict(os.environ)
    if plugin is not None:
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(plugin), env.get("PYTHONPATH")) if p)
        env["PLUGIN_MARK"] = str(mark or plugin / "imported")
    return subprocess.run([sys.executable, "-m", "dllab", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=600, env=env)


# --- dllab's own plug-ins ---------------------------------------------------------------------------------

@pytest.mark.slow
def test_the_static_index_is_what_importing_every_module_registers():
    """Every @register(...) the ast scan finds is registered by importing the module it names, and importing
    every dllab module registers nothing the scan missed (a name built at run time, a decorator it cannot read)."""
    code = textwrap.dedent("""
        import importlib, importlib.util, json, pkgutil, dllab
        from dllab.core import registry
        # A sink's module imports its library (an optional extra): not installed here, it is left out of both.
        missing = {e.module for e in registry.index("sink").values()
                   if e.literal("requires") and importlib.util.find_spec(e.literal("requires")) is None}
        static = {k: {n: e.module for n, e in registry.index(k).items() if e.module not in missing}
                  for k in registry.KINDS}
        for m in pkgutil.walk_packages(dllab.__path__, "dllab."):
            if m.name != "dllab.__main__" and m.name not in missing:
                importlib.import_module(m.name)
        # an experiment is registered on its config class; its run function is named, not imported
        loaded = {k: {n: (r.obj.config_cls if k == "experiment" else r.obj).__module__
                      for n, r in registry._loaded[k].items()} for k in registry.KINDS}
        runs = {n: f"{r.obj.run_function().__module__}:{r.obj.run_function().__name__}"
                for n, r in registry._loaded["experiment"].items()}
        declared = {n: e.literal("run") for n, e in registry.index("experiment").items()}
        print(json.dumps([static, loaded, len(missing), runs, declared]))
    """)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    static, loaded, missing, runs, declared = json.loads(res.stdout.strip().splitlines()[-1])
    assert static == loaded
    assert runs == declared   # every run="module:function" names a function of that module
    assert {k: len(v) for k, v in static.items()} == {"experiment": 10, "model": 4, "dataset": 4, "ood_set": 6,
                                                      "detector": 10, "attack": 3, "strategy": 6, "classifier": 3,
                                                      "sink": 3 - missing}


def test_an_unknown_name_is_one_line_with_the_nearest_and_every_known_one():
    with pytest.raises(DllabError) as e:
        registry.get("detector", "enrgy")
    assert str(e.value) == ("unknown detector 'enrgy' (did you mean 'energy'?); known: ash, autoencoder, energy, "
                            "knn, mahalanobis, max_logit, msp, odin, react, vim")
    with pytest.raises(DllabError, match="unknown OOD set 'svhn'; known: cifar100-20, gaussian, heldout, mnist, noise, uniform"):
        registry.get("ood_set", "svhn")


@pytest.mark.slow   # a new process that imports torch (the detector's module)
def test_get_imports_the_defining_module_on_first_use():
    code = ("import sys; from dllab.core import registry; "
            "print('dllab.ood.energy' in sys.modules, registry.get('detector', 'energy').__name__, "
            "'dllab.ood.energy' in sys.modules)")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert res.stdout.split() == ["False", "Energy", "True"], res.stderr


@pytest.mark.slow   # a new process importing torch
def test_an_experiment_imports_its_run_module_when_it_first_runs():
    """An experiment is registered on its torch-free config class and names its run function: getting it (to
    check a config) imports neither the run module nor torch; the first run imports them."""
    code = ("import sys; from dllab.core import registry; e = registry.get_experiment('lab1.mlp'); "
            "print('dllab.experiments.lab1.run' in sys.modules, 'torch' in sys.modules, e.run_function().__name__, "
            "'dllab.experiments.lab1.run' in sys.modules)")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert res.stdout.split() == ["False", "False", "run_mlp", "True"], res.stderr


@pytest.mark.parametrize("target, message", [("dllab.experiments.lab1.run", "must name its run function as "
                                                                           "'module:function'"),
                                             ("dllab.experiments.lab1.run:run_nothing", "defines no function")])
def test_a_run_target_that_names_no_function_is_one_line(target, message):
    from dllab.experiments.lab1.config import MLPConfig

    profiles = {"smoke": {}, "quick": {}, "paper": {}}
    with pytest.raises(DllabError, match=message):
        registry.register("experiment", "test.bad-run", run=target, description="", profiles=profiles)(MLPConfig)
        registry.get_experiment("test.bad-run").run_function()
    registry._loaded["experiment"].pop("test.bad-run", None)


def test_dllab_list_shows_every_kind_and_imports_no_torch():
    code = ("import sys; from dllab.cli.main import main; main(['list']); "
            "print('HEAVY', sorted(m for m in ('torch', 'sklearn', 'transformers', 'matplotlib', 'numpy') "
            "if m in sys.modules))")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    out = res.stdout.splitlines()
    assert out[-1] == "HEAVY []"
    assert out[0] == "experiments (profiles: smoke, quick, paper):"
    assert any(line.split()[:1] == ["lab4.ood"] and "OOD detection" in line for line in out)
    for line in ("models: basic_mlp, cnn, conv_decoder, mlp", "datasets: cifar10, cifar100, imagefolder, mnist",
                 "OOD sets: cifar100-20, gaussian, heldout, mnist, noise, uniform", "detectors: ash, autoencoder, energy, knn, "
                 "mahalanobis, max_logit, msp, odin, react, vim",
                 "attacks: apgd, fgsm, pgd", "strategies: baseline, full, full_amp, head_last, lora, pretrained",
                 "classifiers: knn, logreg, svm", "sinks: mlflow, tensorboard, wandb"):
        assert line in out


# --- a plug-in package ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def plugin(tmp_path_factory) -> Path:
    return make_plugin(tmp_path_factory.mktemp("plug"))


def test_a_plugin_package_is_listed_without_being_imported(plugin, tmp_path):
    mark = tmp_path / "imported"
    res = dllab("list", plugin=plugin, mark=mark)
    assert res.returncode == 0, res.stderr
    assert "detectors: ash, autoencoder, class_mean [plug-in: dllab-testplug], energy" in res.stdout
    assert "models: basic_mlp, cnn, conv_decoder, mlp, tiny_convnet [plug-in: dllab-testplug]" in res.stdout
    assert "datasets: cifar10, cifar100, imagefolder, mnist, stripes [plug-in: dllab-testplug]" in res.stdout
    assert not mark.exists()


@pytest.mark.slow
def test_a_plugin_detector_runs_in_lab4_ood_on_a_plugin_dataset(plugin, tmp_path):
    """One new file in another package, no edit in dllab: config check, fitting with labels, summary keys,
    report and the sweep's declared keys all take the new detector."""
    out = tmp_path / "ood"
    res = dllab("run", "lab4.ood", "--profile", "smoke", "--set", "data.name=stripes",
                "--set", "data.classes=[horizontal,vertical]", "--set", "ood.names=[heldout,noise]",
                "--set", "ood.detectors=[msp,class_mean]", "--set", "train.epochs=2", "--out", str(out), "--quiet",
                plugin=plugin, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    summary = json.loads((out / "metrics.json").read_text())["summary"]
    for ood in ("heldout", "noise"):
        assert 0 <= summary[f"{ood}.class_mean.auroc"] <= 1 and f"{ood}.class_mean.fpr95" in summary
    assert summary["noise.class_mean.auroc"] > 0.9          # uniform noise is far from every class mean
    report = (out / "report.md").read_text()
    assert "class_mean" in report and "generated stripes (dllab-testplug)" in (out / "env.json").read_text()
    # the keys lab4.ood declares for a sweep (registry.Experiment.metrics) are the run's
    declared = ["model.test_acc", "model.test_acc_last"] + [f"{o}.{d}.{m}" for o in ("heldout", "noise")
                                                            for d in ("msp", "class_mean")
                                                            for m in ("auroc", "aupr_in", "aupr_out", "fpr95")]
    assert list(summary) == declared


@pytest.mark.slow
def test_a_plugin_model_and_dataset_run_in_lab1_mlp(plugin, tmp_path):
    out = tmp_path / "mlp"
    res = dllab("run", "lab1.mlp", "--profile", "smoke", "--set", "data.name=stripes", "--set", "model=tiny_convnet",
                "--set", "width=8", "--out", str(out), "--quiet", plugin=plugin, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    import torch

    saved = torch.load(out / "models" / "adam.pt", weights_only=True)
    assert saved["spec"]["name"] == "tiny_convnet" and saved["spec"]["kwargs"]["width"] == 8
    summary = json.loads((out / "metrics.json").read_text())["summary"]
    assert set(summary) == {"sgd.test_acc", "sgd.test_acc_last", "sgd.val_acc", "adam.test_acc", "adam.test_acc_last",
                            "adam.val_acc"}


def test_a_plugin_name_that_is_not_installed_is_refused_before_any_work(tmp_path):
    res = dllab("run", "lab1.mlp", "--profile", "smoke", "--set", "model=tiny_convnet", "--out", str(tmp_path / "r"),
                cwd=tmp_path)
    assert res.returncode == 2 and "unknown model 'tiny_convnet'; known: basic_mlp, cnn" in res.stderr
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("files, target, fragment", [
    ({"again.py": DETECTOR.replace('"class_mean"', '"msp"')}, "dllab_testplug",
     "detector 'msp' is registered twice: by dllab.ood.msp (dllab) and by dllab_testplug.again "
     "(dllab-testplug)"),
    ({}, "dllab_testplug.missing", "names dllab_testplug.missing, which is not a Python source module"),
])
def test_a_broken_plugin_package_is_one_line(files, target, fragment, tmp_path):
    res = dllab("list", plugin=make_plugin(tmp_path / "p", files, target), cwd=tmp_path)
    assert res.returncode == 2 and res.stderr.count("\n") == 1 and fragment in res.stderr, res.stderr
