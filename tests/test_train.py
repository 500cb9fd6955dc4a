"""The training loop: learning, gradient norms, frozen layers, checkpoints and resume."""
import json

import pytest
import torch
from torch import nn

from dllab import DllabError
from dllab.runner.experiment import run_experiment
from dllab.runner.run import Run
from dllab.train import checkpoint as ckpt_mod
from dllab.train.gradients import GradNormRecorder, block_grad_ratio
from dllab.train.image import set_train_mode


def tiny_run(imagefolder, out, *extra, experiment="lab1.mlp-depth", resume=None):
    sets = [f"data.root={imagefolder}", "data.name=imagefolder", "data.val_fraction=0.2",
            "plain_depths=[3]", "residual_depths=[2]", "width=16", "train.epochs=3", "train.batch_size=16",
            "train.deterministic=true", *extra]
    if resume:
        return run_experiment(None, resume=resume, quiet=True, argv=["test"])
    return run_experiment(experiment, "smoke", sets, out=str(out), quiet=True, argv=["test"])


def test_grad_norm_recorder_averages_over_batches():
    lin = nn.Linear(3, 2, bias=False)
    rec = GradNormRecorder([("lin", lin)])
    for scale in (1.0, 3.0):
        lin.weight.grad = torch.full((2, 3), scale)
        rec.step()
    expected = (torch.full((2, 3), 1.0).norm() + torch.full((2, 3), 3.0).norm()) / 2
    assert rec.epoch_end() == pytest.approx([expected.item()])
    assert rec.epoch_end() == []  # reset after each epoch


def test_block_grad_ratio_uses_first_and_last_block():
    names = ["stem.1", "blocks.0.network.0.fc", "blocks.0.network.1.fc", "blocks.1.fc", "blocks.2.fc", "classifier"]
    norms = [9.0, 1.0, 3.0, 5.0, 4.0, 9.0]
    assert block_grad_ratio(names, norms) == pytest.approx(2.0 / 4.0)


def test_vanishing_gradients_show_in_a_deep_plain_mlp():
    """PyTorch's default init shrinks the backward signal through a deep plain ReLU MLP; a residual one keeps it."""
    from dllab.core.registry import build_model

    torch.manual_seed(0)
    x, y = torch.rand(64, 1, 28, 28), torch.randint(0, 10, (64,))
    ratios = {}
    for residual in (False, True):
        m = build_model("mlp", depth=20, residual=residual)
        nn.functional.cross_entropy(m(x), y).backward()
        rec = GradNormRecorder(m.weight_layers())
        rec.step()
        ratios[residual] = block_grad_ratio(rec.names, rec.epoch_end())
    assert ratios[False] < 1e-3 < 0.1 < ratios[True]


def test_frozen_batchnorm_keeps_its_running_stats():
    m = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Linear(4, 2))
    for p in m[1].parameters():
        p.requires_grad_(False)
    set_train_mode(m)
    assert m[0].training and not m[1].training and m[2].training


def test_run_folder_records_everything(imagefolder, tmp_path):
    run = tiny_run(imagefolder, tmp_path / "r")
    p = run.path
    for f in ("config.yaml", "env.json", "history.csv", "metrics.json", "report.md", "report.html",
              "models/plain_d3.pt", "models/res_d2.pt", "gradient_norms.png"):
        assert (p / f).exists(), f
    env = json.loads((p / "env.json").read_text())
    for k in ("versions", "device", "git_commit", "command", "data", "seed", "omp_wait_policy"):
        assert k in env
    summary = json.loads((p / "metrics.json").read_text())["summary"]
    assert set(summary) >= {"plain_d3.test_acc", "res_d2.test_acc", "plain_d3.grad_ratio", "res_d2.grad_ratio"}
    rows = (p / "history.csv").read_text().strip().splitlines()
    assert len(rows) == 1 + 2 * 3  # header + epochs x variants
    assert not (p / "checkpoints" / "plain_d3.pt").exists()  # finished variants keep the model, not the state


def test_resume_after_a_kill_ends_with_identical_metrics(imagefolder, tmp_path, monkeypatch):
    ref = tiny_run(imagefolder, tmp_path / "ref")
    ref_summary = json.loads((ref.path / "metrics.json").read_text())["summary"]

    # Kill the second run right after the 2nd epoch checkpoint of the second variant is written.
    real_save, saves = ckpt_mod.FileCheckpoint.save, []

    def save_then_die(self, state):
        real_save(self, state)
        saves.append(self.path)
        if len(saves) == 2 + 2:  # epochs 1-2 of plain_d3 (the last one's state is not saved), 1-2 of res_d2
            raise KeyboardInterrupt

    monkeypatch.setattr(ckpt_mod.FileCheckpoint, "save", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        tiny_run(imagefolder, tmp_path / "killed")
    monkeypatch.setattr(ckpt_mod.FileCheckpoint, "save", real_save)
    assert not (tmp_path / "killed" / "metrics.json").exists()
    assert (tmp_path / "killed" / "checkpoints" / "res_d2.pt").exists()

    resumed = tiny_run(imagefolder, None, resume=str(tmp_path / "killed"))
    summary = json.loads((resumed.path / "metrics.json").read_text())["summary"]
    assert summary == ref_summary
    strip = lambda text: [",".join(c for i, c in enumerate(l.split(",")) if i != 7) for l in text.splitlines()]  # noqa: E731
    assert strip((resumed.path / "history.csv").read_text()) == strip((ref.path / "history.csv").read_text())


def test_corrupt_checkpoint_is_a_clear_error(tmp_path):
    p = tmp_path / "x.pt"
    p.write_bytes(b"not a checkpoint")
    with pytest.raises(DllabError, match="is corrupt"):
        ckpt_mod.load_checkpoint(p)
    assert p.read_bytes() == b"not a checkpoint"


def test_load_model_refuses_other_architectures(tmp_path):
    from dllab.core.registry import build_model

    ckpt_mod.save_model(tmp_path / "m.pt", build_model("cnn", depth=2, base_channels=4), ["a"] * 10)
    with pytest.raises(DllabError, match="depth=2 but this experiment needs depth=5"):
        ckpt_mod.load_model(tmp_path / "m.pt", expect={"name": "cnn", "depth": 5})
    model, blob = ckpt_mod.load_model(tmp_path / "m.pt", expect={"name": "cnn", "depth": 2})
    assert len(model.blocks) == 2 and len(blob["classes"]) == 10


def test_seeds_report_mean_and_std(imagefolder, tmp_path):
    from dllab.runner.experiment import run_experiment as run_exp

    run = run_exp("lab1.mlp", "smoke", [f"data.root={imagefolder}", "data.name=imagefolder", "train.epochs=1"],
                  seeds=[0, 1], out=str(tmp_path / "s"), quiet=True, argv=["test"])
    m = json.loads((run.path / "metrics.json").read_text())
    s0, s1 = m["seeds"]["0"], m["seeds"]["1"]
    assert m["summary"]["adam.test_acc"] == pytest.approx((s0["adam.test_acc"] + s1["adam.test_acc"]) / 2)
    assert m["summary"]["adam.test_acc.std"] == pytest.approx(abs(s0["adam.test_acc"] - s1["adam.test_acc"]) / 2)
    assert (run.path / "seed1" / "metrics.json").exists()
    assert "±" in (run.path / "report.md").read_text()


def test_atomic_write_leaves_the_old_file_when_the_writer_fails(tmp_path):
    from dllab.core.files import atomic_write

    target = tmp_path / "state.pt"
    target.write_bytes(b"old")

    def broken(f):
        f.write(b"half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic_write(target, broken)
    assert target.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["state.pt"]
    atomic_write(target, lambda f: torch.save({"a": 1}, f))
    assert torch.load(target) == {"a": 1}


def test_cached_arrays_reuse_only_a_matching_readable_file(tmp_path):
    import numpy as np

    run = Run(tmp_path, "x", None, quiet=True)
    calls = []

    def compute():
        calls.append(1)
        return {"a": np.arange(3)}

    arrays, reused = run.cached_arrays("f.npz", "k1", compute)
    assert not reused and arrays["a"].tolist() == [0, 1, 2]
    arrays, reused = run.cached_arrays("f.npz", "k1", compute)
    assert reused and arrays["a"].tolist() == [0, 1, 2] and len(calls) == 1
    assert not run.cached_arrays("f.npz", "k2", compute)[1] and len(calls) == 2       # other inputs
    (tmp_path / "f.npz").write_bytes(b"garbage")
    assert not run.cached_arrays("f.npz", "k2", compute)[1] and len(calls) == 3       # damaged
    assert any("could not be read" in n for n in run.notes) and any("other inputs" in n for n in run.notes)


def test_reuse_or_run_reads_back_only_a_finished_result_of_the_same_inputs(tmp_path):
    run = Run(tmp_path, "x", None, quiet=True)
    calls = []

    def compute():
        calls.append(1)
        return {"acc": 0.5}

    run.checkpoint_path("v").parent.mkdir()
    run.checkpoint_path("v").write_bytes(b"training state")
    assert run.reuse_or_run("v", compute) == ({"acc": 0.5}, False)
    assert not run.checkpoint_path("v").exists()                   # the result replaces the training state
    assert run.reuse_or_run("v", compute) == ({"acc": 0.5}, True) and len(calls) == 1
    assert run.reuse_or_run("c", compute, key="k1") == ({"acc": 0.5}, False)
    assert run.result("c") == {"key": "k1", "acc": 0.5}
    assert run.reuse_or_run("c", compute, key="k1")[1] and len(calls) == 2
    assert not run.reuse_or_run("c", compute, key="k2")[1] and len(calls) == 3      # other inputs
    assert run.reuse_or_run("skipped", lambda: None) == (None, False) and run.result("skipped") is None


@pytest.mark.parametrize("name, key", [("lab1.mlp", "train.threads"), ("lab2.features", "features.threads"),
                                       ("lab2.finetune", "finetune.threads")])
def test_the_runner_applies_each_experiments_threads_setting(name, key, tmp_path):
    from dllab.core.config import make_config
    from dllab.core.registry import Experiment, get_experiment
    from dllab.runner.experiment import _execute

    exp = get_experiment(name)
    cfg = make_config(exp.config_cls, exp.profiles, "smoke", [f"{key}=1", "device=cpu"])
    assert cfg.cpu_threads() == 1
    stub = Experiment(name, "", exp.config_cls, exp.profiles, lambda cfg, run: {"acc": 1.0}, {})
    run = Run.create(name, cfg, out=str(tmp_path / "r"), quiet=True)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        _execute(stub, run)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(threads)
    assert run.env["device"].endswith(", 1 threads)")              # recorded after it was applied


def test_progress_bar_shows_only_when_asked_and_on_a_terminal(monkeypatch):
    import sys

    from dllab.core.progress import progress_bar
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    assert not progress_bar(range(3), 3, "x", show=True).disable
    assert progress_bar(range(3), 3, "x", show=False).disable
    monkeypatch.setattr(sys.stderr, "isatty", lambda: False, raising=False)
    assert progress_bar(range(3), 3, "x", show=True).disable


def test_resume_refuses_a_checkpoint_trained_in_another_precision(tmp_path):
    """A resumed variant must continue in the precision it started in (auto could re-probe differently)."""
    from dllab.train.checkpoint import FileCheckpoint, restore_training_state, training_state
    from dllab.train.precision import Precision

    model = nn.Linear(2, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    cpu = torch.device("cpu")
    ck = FileCheckpoint(tmp_path / "c.pt")
    ck.save(training_state(1, model, opt, None, Precision("bf16-mixed", cpu), {"history": []}))
    with pytest.raises(DllabError, match="c.pt was trained in bf16-mixed"):
        restore_training_state(ck.load(), model, opt, None, Precision("fp32", cpu), str(ck))
    assert restore_training_state(ck.load(), model, opt, None, Precision("bf16-mixed", cpu))[0] == 1


def test_aggregate_keeps_only_keys_every_seed_has():
    """A key one seed lacks (a strategy skipped there, say) is left out, not averaged over fewer seeds."""
    from dllab.runner.experiment import aggregate

    out = aggregate([{"a": 1.0, "b": 2.0}, {"a": 3.0}, {"a": 5.0, "b": 4.0}])
    assert out == {"a": 3.0, "a.std": pytest.approx((8 / 3) ** 0.5)}
