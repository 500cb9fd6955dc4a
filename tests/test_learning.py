"""Real data, short runs: the loop actually learns (accuracy above a floor)."""
import json

import pytest

from dllab.runner.experiment import run_experiment

pytestmark = pytest.mark.slow   # real data: seconds of loading and training each


def test_basic_mlp_learns_real_mnist_slice(shared_data, tmp_path):
    run = run_experiment("lab1.mlp", "smoke", [f"data.root={shared_data}", "data.train_limit=6000",
                                               "data.test_limit=1000", "train.epochs=3"],
                         out=str(tmp_path / "mnist"), quiet=True, argv=["test"])
    summary = json.loads((run.path / "metrics.json").read_text())["summary"]
    env = json.loads((run.path / "env.json").read_text())
    assert "torchvision MNIST" in env["data"] and not env["data_fallback"]
    assert summary["adam.test_acc"] >= 0.90, summary
    assert summary["sgd.test_acc"] >= 0.80, summary


def test_small_cnn_learns_real_cifar10_slice(shared_data, tmp_path):
    run = run_experiment("lab1.cnn-depth", "smoke",
                         [f"data.root={shared_data}", "data.classes=[airplane,frog]", "data.train_limit=2000",
                          "data.test_limit=400", "data.augment=false", "plain_depths=[]", "residual_depths=[2]",
                          "base_channels=16", "train.epochs=2", "train.precision=bf16-mixed"],
                         out=str(tmp_path / "cifar"), quiet=True, argv=["test"])
    summary = json.loads((run.path / "metrics.json").read_text())["summary"]
    assert summary["res_d2.test_acc"] >= 0.75, summary  # two easy classes; chance is 0.5
