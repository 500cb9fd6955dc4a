"""The Python API (issue #22): run, load, sweep and compare driven from Python, without the CLI, on tiny
generated images; every documented error case raises its documented class of the DllabError tree."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

import dllab
from dllab import ConfigError, DataError, DllabError, PluginError, ResumeError, RunFolderError


def tiny(images, **more) -> dict:
    """Overrides for a run of a few seconds: lab1.mlp's smoke profile on a generated ImageFolder, on the CPU."""
    return {"data.name": "imagefolder", "data.root": str(images), "train.epochs": 1, "width": 8, "device": "cpu",
            **more}


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    from conftest import make_imagefolder

    return make_imagefolder(tmp_path_factory.mktemp("api") / "images")


@pytest.fixture(scope="module")
def two_runs(images, tmp_path_factory):
    """Run A: overrides as a dict, two seeds. Run B: overrides as --set strings, one seed, another lr."""
    base = tmp_path_factory.mktemp("api_runs")
    a = dllab.run("lab1.mlp", profile="smoke", overrides=tiny(images), seeds=[0, 1], out=base / "a")
    b = dllab.run("lab1.mlp", "smoke", [f"{k}={v}" for k, v in tiny(images, **{"adam.lr": 0.003}).items()],
                  seed=0, out=base / "b")
    return a, b


def test_import_dllab_is_torch_free_and_the_api_loads_on_first_use():
    code = ("import sys, dllab; print('dllab.api' in sys.modules); names = [e.name for e in dllab.list_experiments()]; "
            "cfg = dllab.config('lab1.mlp', 'smoke', {'train.epochs': 2}, seeds=[3, 4]); "
            "print('lab1.mlp' in names, cfg.train.epochs, cfg.seed, 'torch' in sys.modules)")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.stdout.split() == ["False", "True", "2", "3", "False"], res.stderr


def test_a_run_with_overrides_and_two_seeds(two_runs):
    a, _ = two_runs
    saved = json.loads((a.path / "metrics.json").read_text())
    assert a.metrics == saved["summary"] and "adam.test_acc.std" in a.metrics
    # both test accuracies (the kept weights', the last epoch's) get a mean and a std over the seeds
    for key in ("adam.test_acc", "adam.test_acc_last"):
        per_seed = [saved["seeds"][s][key] for s in ("0", "1")]
        assert a.metrics[key] == pytest.approx(sum(per_seed) / 2)
        assert a.metrics[f"{key}.std"] == pytest.approx(abs(per_seed[0] - per_seed[1]) / 2)
    assert a.experiment == "lab1.mlp" and a.config["train.epochs"] == 1 and a.config["width"] == 8
    history = a.history   # pandas is installed here (with `datasets`): a DataFrame, every seed's rows
    assert sorted(set(history["seed"])) == [0, 1] and set(history["variant"]) == {"sgd", "adam"}
    env = json.loads((a.path / "env.json").read_text())
    assert env["command"].startswith("dllab run lab1.mlp --profile smoke --seeds 0,1 --out ")
    assert "--set data.name=imagefolder" in env["command"] and env["command"].endswith("--quiet")


def test_a_finished_run_loads_and_writes_its_report(two_runs, tmp_path):
    a, b = two_runs
    again = dllab.load(str(b.path))
    assert again.metrics == b.metrics and again.config["adam.lr"] == 0.003 and again.config == b.config
    assert again.records == b.records and len(again.records) == 2   # one epoch of sgd and of adam
    report = again.report(tmp_path / "b.md")
    assert report == tmp_path / "b.md" and report.with_suffix(".html").is_file()
    with pytest.raises(ConfigError, match="already exists"):   # never replaced without force
        again.report(tmp_path / "b.md")
    assert again.report(tmp_path / "b.md", force=True) == report


def test_history_is_plain_records_without_pandas(two_runs, monkeypatch):
    monkeypatch.setitem(sys.modules, "pandas", None)   # as if not installed: importing it fails
    _, b = two_runs
    assert b.history == b.records and isinstance(b.history, list)


def test_compare_two_runs(two_runs, tmp_path):
    a, b = two_runs
    md = dllab.compare([a, b.path], out=tmp_path / "ab.md")
    assert md == tmp_path / "ab.md" and md.with_suffix(".html").is_file()
    assert "adam.lr" in md.read_text()   # the key that differs between the runs
    with pytest.raises(ConfigError, match="a list of run folders"):
        dllab.compare(str(a.path))


def test_a_sweep_of_two_points(images, tmp_path, points_in_process):
    fixed = {k: v for k, v in tiny(images).items() if k != "device"}
    result = dllab.sweep("lab1.mlp", grid={"adam.lr": [1e-3, 3e-3]}, profile="smoke", overrides=fixed,
                         device="cpu", out=tmp_path / "sw", metric="adam.test_acc")
    assert [args[:2] for args in points_in_process] == [["run", "lab1.mlp"]] * 2
    assert [r["point"] for r in result.records] == ["p0_adam.lr=0.001", "p1_adam.lr=0.003"]
    assert result.path == (tmp_path / "sw").resolve() and (result.path / "sweep.csv").is_file()
    assert len(result.table) == 2 and result.metric == "adam.test_acc"
    assert result.best["adam.test_acc"] == max(r["adam.test_acc"] for r in result.records)
    assert result.run(result.best).metrics["adam.test_acc"] == result.best["adam.test_acc"]
    points_in_process.clear()   # the same sweep again continues it: nothing left to run
    assert dllab.sweep(resume=result.path).records == result.records and points_in_process == []


# --- each documented error, as its class ---------------------------------------------------------------------

@pytest.mark.parametrize("call, error, fragment", [
    (lambda: dllab.run("lab1.mlpp"), PluginError, "unknown experiment 'lab1.mlpp' (did you mean 'lab1.mlp'?)"),
    (lambda: dllab.run("lab1.mlp", "smoke", {"train.epochs": 0}), ConfigError, "train.epochs=0: must be >= 1"),
    (lambda: dllab.run("lab1.mlp", "smoke", ["train.epoch=2"]), ConfigError, "did you mean 'train.epochs'?"),
    (lambda: dllab.run("lab1.mlp", "smoke", "train.epochs=2"), ConfigError, "overrides: give a dict"),
    (lambda: dllab.run("lab1.mlp", "smoke", seeds=[0, 0]), ConfigError, "seed 0 twice"),
    (lambda: dllab.run("lab1.mlp", "smoke", seed=1, seeds=[0, 1]), ConfigError, "not both"),
    (lambda: dllab.run("lab1.mlp", "tiny"), ConfigError, "unknown profile 'tiny'"),
    (lambda: dllab.run(), ConfigError, "needs an experiment name"),
    (lambda: dllab.sweep("lab1.mlp", {"adam.lrr": [1e-3]}, profile="smoke"), ConfigError, "did you mean 'adam.lr'?"),
    (lambda: dllab.sweep("lab1.mlp", {"adam.lr": []}, profile="smoke"), ConfigError, "lists no value"),
    (lambda: dllab.sweep("lab1.mlp", {"adam.lr": [1e-3, 1e-3]}, profile="smoke"), ConfigError, "0.001 twice"),
    (lambda: dllab.sweep("lab1.mlp", {"adam.lr": [1e-3]}, profile="smoke", metric="adam.tst_acc"), ConfigError,
     "did you mean 'adam.test_acc'?"),
    (lambda: dllab.sweep("lab1.mlp", {"adam.lr": [1e-3]}, sample=0), ConfigError, "must be >= 1"),
])
def test_bad_input_raises_its_class_before_any_work(call, error, fragment, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name, folder in (("DLLAB_RUNS", "runs"), ("DLLAB_SWEEPS", "sweeps")):
        monkeypatch.setenv(name, str(tmp_path / folder))
    with pytest.raises(error) as e:
        call()
    assert fragment in str(e.value) and len(str(e.value).splitlines()) == 1
    assert list(tmp_path.iterdir()) == []   # no run or sweep folder was made


def test_missing_data_is_a_data_error_and_leaves_no_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="expected an ImageFolder tree"):
        dllab.run("lab1.mlp", "smoke", {"data.name": "imagefolder", "data.root": str(tmp_path / "empty")},
                  out=tmp_path / "run")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("damage, fragment", [
    (lambda run: (run / "metrics.json").write_text("[1, 2]"), "metrics.json is damaged"),
    (lambda run: (run / "config.yaml").unlink(), "config.yaml is missing"),
    (lambda run: (run / "seed1" / "history.csv").write_text("epoch,epoch\n1,2\n"), "its header is not one"),
    (lambda run: os.symlink("/etc/passwd", run / "notes.txt"), "is a symbolic link"),
    (lambda run: shutil.rmtree(run), "is not a finished run folder"),
])
def test_loading_a_damaged_run_folder_is_a_run_folder_error(two_runs, tmp_path, damage, fragment):
    run = tmp_path / "run"
    shutil.copytree(two_runs[0].path, run)
    damage(run)
    with pytest.raises(RunFolderError, match=fragment):
        dllab.load(run)


def test_a_resume_given_settings_is_a_resume_error(two_runs):
    with pytest.raises(ResumeError, match="drop --set"):
        dllab.run(resume=two_runs[1].path, overrides={"train.epochs": 2})
    with pytest.raises(ResumeError, match="drop --grid"):
        dllab.sweep(grid={"adam.lr": [1e-3]}, resume=two_runs[1].path)


def test_every_error_class_is_a_dllab_error():
    assert all(issubclass(c, DllabError) for c in (ConfigError, DataError, RunFolderError, ResumeError, PluginError))
    assert dllab.errors.DllabError is DllabError and dllab.DllabError is DllabError


@pytest.mark.slow
def test_the_quickstart_notebook_runs(tmp_path, monkeypatch):
    """examples/quickstart.ipynb, executed as it is (smoke profile) in a fresh kernel: every cell runs."""
    if os.environ.get("CI", "").lower() == "true":   # CI installs the test extra: the notebook must run there
        import nbclient
        import nbformat
    else:
        nbclient = pytest.importorskip("nbclient")
        nbformat = pytest.importorskip("nbformat")
    from conftest import REPO

    monkeypatch.setenv("DLLAB_RUNS", str(tmp_path / "runs"))   # the kernel inherits the environment
    notebook = nbformat.read(REPO / "examples" / "quickstart.ipynb", as_version=4)
    nbclient.NotebookClient(notebook, timeout=300, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}}).execute()
    assert "ConfigError: --set train.epochs=0: must be >= 1" in notebook.cells[-1].outputs[0]["text"]
    assert (tmp_path / "compare.md").is_file() and len(list((tmp_path / "runs" / "lab1.mlp").iterdir())) == 2


def test_the_nproc_launcher_checks_the_config_before_torchrun(capsys, monkeypatch):
    """`dllab run --nproc` stays CLI-only; through the API's config check, a bad value is one line, exit 2,
    before the launcher module (torchrun) is imported to start any process."""
    from dllab.cli.main import main

    monkeypatch.setitem(sys.modules, "dllab.runner.torchrun", None)   # importing it now would fail the test
    assert main(["run", "lab1.mlp", "--nproc", "2", "--profile", "smoke", "--set", "train.epochs=0"]) == 2
    assert capsys.readouterr().err.strip() == "dllab: error: --set train.epochs=0: must be >= 1"


def test_a_config_file_reaches_the_api_and_its_errors_are_config_errors(tmp_path):
    """``config_file`` as ``--config`` takes it: it may name the experiment and profile, ``overrides`` go over it,
    and a misspelt key in it is a ConfigError naming the file (torch-free: nothing runs)."""
    f = tmp_path / "exp.yaml"
    f.write_text("experiment: lab1.mlp\nprofile: smoke\nadam:\n  lr: 0.003\ntrain:\n  epochs: 2\n")
    cfg = dllab.config(None, overrides={"train.epochs": 3}, config_file=f)
    assert (cfg.profile, cfg.adam.lr, cfg.train.epochs) == ("smoke", 0.003, 3)
    f.write_text("trian:\n  epochs: 2\n")
    with pytest.raises(dllab.ConfigError, match=r"exp\.yaml: unknown config key 'trian.epochs' \(did you mean 'train.epochs'"):
        dllab.config("lab1.mlp", config_file=f)
    f.write_text("{")
    with pytest.raises(dllab.ConfigError, match="is not valid YAML"):
        dllab.run("lab1.mlp", config_file=f, out=tmp_path / "run")
    assert not (tmp_path / "run").exists()
