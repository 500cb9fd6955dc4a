"""Hostile and damaged input (issue #9), end to end through the CLI as a user would meet it.

The contract: a file dllab reads is data, never code; nothing already on disk is overwritten; a run folder
that exists can always be resumed; a resume never silently changes the run; bad input is one line on
stderr with exit code 2, no traceback, and no half-made folder.
"""
from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import dllab_in_process, one_line_error
from dllab import DllabError
from dllab.cli import main as cli
from dllab.core.files import atomic_write

# On the CPU on any machine: the resume tests compare numbers bit for bit.
TINY = ["--profile", "smoke", "--set", "data.name=imagefolder", "--set", "train.epochs=1", "--set", "width=8",
        "--set", "device=cpu"]


def dllab(*args, cwd=None, env=None):
    """The CLI as a user meets it, in this process (seconds faster than `python -m dllab`); the tests that need
    a process of its own (a signal) start one."""
    return dllab_in_process(*args, cwd=cwd, env=env)


class Payload:
    """Unpickling this runs ``touch <marker>``: what a crafted checkpoint or model file would do."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def craft(path: Path, marker: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"spec": {"name": "cnn", "kwargs": {}}, "state_dict": {}, "x": Payload(marker)}, path)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """One finished tiny lab1.mlp run (sgd + adam) on generated images; tests copy it before changing it."""
    from conftest import make_imagefolder

    base = tmp_path_factory.mktemp("hostile")
    images = make_imagefolder(base / "images")
    out = base / "run"
    res = dllab("run", "lab1.mlp", *TINY, "--set", f"data.root={images}", "--out", str(out), "--quiet",
                env={"DLLAB_RUNS": str(base / "runs")})
    assert res.returncode == 0, res.stderr
    return out, images


@pytest.fixture
def run_copy(finished_run, tmp_path):
    import shutil
    out, images = finished_run
    dst = tmp_path / "run"
    shutil.copytree(out, dst)
    return dst, images


# --- 1. loading a file never runs code -----------------------------------------------------------

def test_crafted_checkpoint_does_not_run_on_resume(run_copy, tmp_path):
    run, _ = run_copy
    marker = tmp_path / "pwned"
    (run / "results" / "adam.json").unlink()          # adam is now unfinished, with a checkpoint to resume
    craft(run / "checkpoints" / "adam.pt", marker)
    one_line_error(dllab("run", "--resume", str(run)), "adam.pt", "Python objects")
    assert not marker.exists()


def test_crafted_model_of_a_finished_variant_does_not_run(run_copy, tmp_path):
    run, _ = run_copy
    marker = tmp_path / "pwned"
    craft(run / "models" / "sgd.pt", marker)
    one_line_error(dllab("run", "--resume", str(run)), "sgd.pt")
    assert not marker.exists()


@pytest.mark.parametrize("experiment, key, model", [("lab4.fgsm", "model.run", "standard"),
                                                     ("lab1.transfer", "source.run", "source")])
def test_crafted_model_of_another_run_does_not_run(experiment, key, model, tmp_path):
    marker = tmp_path / "pwned"
    craft(tmp_path / "theirs" / "models" / f"{model}.pt", marker)
    one_line_error(dllab("run", experiment, "--profile", "smoke", "--set", f"{key}={tmp_path / 'theirs'}",
                         "--out", str(tmp_path / "mine"), "--quiet"), f"{model}.pt", "Python objects")
    assert not marker.exists()
    assert not (tmp_path / "mine").exists()


def test_saved_checkpoints_and_models_load_with_weights_only(run_copy):
    run, _ = run_copy
    blob = torch.load(run / "models" / "adam.pt", weights_only=True)
    assert blob["spec"]["name"] == "basic_mlp" and blob["state_dict"]


# --- 2. files the user already had are never overwritten ---------------------------------------

def test_report_refuses_to_overwrite_unless_forced(run_copy, tmp_path):
    run, _ = run_copy
    work = tmp_path / "work"
    work.mkdir()
    (work / "report.md").write_text("my notes")
    one_line_error(dllab("report", str(run), str(run), cwd=work), "report.md already exists", "--force")
    assert (work / "report.md").read_text() == "my notes"
    (work / "notes.html").write_text("my page")
    one_line_error(dllab("report", str(run), "--out", "notes.md", cwd=work), "notes.html already exists")
    assert (work / "notes.html").read_text() == "my page" and not (work / "notes.md").exists()
    assert dllab("report", str(run), "--out", "notes.md", "--force", cwd=work).returncode == 0
    assert "lab1.mlp" in (work / "notes.html").read_text()
    # A run's own report is dllab's to rewrite.
    assert dllab("report", str(run)).returncode == 0


# --- 3. a folder that exists can always be resumed -----------------------------------------------

def _start(args, tmp_path):
    return subprocess.Popen([sys.executable, "-m", "dllab", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _wait_for(path: Path, proc, timeout=120.0) -> None:
    end = time.time() + timeout
    while not path.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.time() < end, "the run folder never appeared"
        time.sleep(0.005)


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT])
def test_a_run_stopped_as_soon_as_its_folder_exists_can_be_resumed(sig, finished_run, tmp_path):
    _, images = finished_run
    out = tmp_path / "r"
    proc = _start(["run", "lab1.mlp", *TINY, "--set", f"data.root={images}", "--out", str(out), "--quiet"],
                  tmp_path)
    _wait_for(out, proc)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert {"config.yaml", "env.json"} <= {p.name for p in out.iterdir()}
    if sig == signal.SIGINT and proc.returncode == 130:   # (the run may have finished first)
        assert f"dllab run --resume {out}" in err and "Traceback" not in err
    res = dllab("run", "--resume", str(out), "--quiet")
    assert res.returncode == 0, res.stderr
    assert set(json.loads((out / "metrics.json").read_text())["summary"]) >= {"sgd.test_acc", "adam.test_acc"}


@pytest.mark.parametrize("args, fragment", [
    (["--seed", "-5"], "--seed -5: must be >= 0"), (["--seed", "99999999999999999999"], "seed"),
    (["--set", "train.threads=-3"], "train.threads=-3"),
])
def test_bad_seed_or_threads_leave_no_folder(args, fragment, tmp_path):
    one_line_error(dllab("run", "lab1.mlp", "--profile", "smoke", *args, env={"DLLAB_RUNS": str(tmp_path / "runs")}),
                   fragment)
    assert not (tmp_path / "runs").exists()


def test_a_multi_seed_run_resumes(finished_run, tmp_path):
    _, images = finished_run
    out = tmp_path / "seeds"
    args = ["run", "lab1.mlp", *TINY, "--set", f"data.root={images}", "--seeds", "0,1", "--out", str(out), "--quiet"]
    assert dllab(*args).returncode == 0
    first = json.loads((out / "metrics.json").read_text())["summary"]
    (out / "metrics.json").unlink()
    for f in (out / "seed1").iterdir():   # seed 1 back to "folder just created"
        if f.name not in ("config.yaml", "env.json"):
            f.unlink() if f.is_file() else __import__("shutil").rmtree(f)
    assert dllab("run", "--resume", str(out), "--quiet").returncode == 0
    assert json.loads((out / "metrics.json").read_text())["summary"] == first


# --- 4. a resume never silently changes the run --------------------------------------------------

@pytest.mark.parametrize("extra, fragment", [
    (["lab1.mlp"], "an experiment name"), (["--set", "train.epochs=2"], "--set"), (["--seed", "3"], "--seed"),
    (["--profile", "quick"], "--profile"), (["--out", "elsewhere"], "--out"), (["--seeds", "1,2"], "--seeds"),
])
def test_resume_with_other_flags_is_refused(extra, fragment, run_copy):
    run, _ = run_copy
    before = (run / "env.json").read_text()
    one_line_error(dllab("run", *extra, "--resume", str(run)), fragment, "--resume continues a run")
    assert (run / "env.json").read_text() == before


def test_resume_refuses_data_from_another_source(run_copy):
    run, _ = run_copy
    env = json.loads((run / "env.json").read_text())
    env["data_sources"]["data"] = "torchvision MNIST data/MNIST"
    (run / "env.json").write_text(json.dumps(env))
    (run / "results" / "adam.json").unlink()
    one_line_error(dllab("run", "--resume", str(run)), "torchvision MNIST data/MNIST", "imagefolder")


def test_resume_refuses_an_edited_config(run_copy):
    run, _ = run_copy
    cfg = run / "config.yaml"
    cfg.write_text(cfg.read_text().replace("width: 8", "width: 16"))
    one_line_error(dllab("run", "--resume", str(run)), "config.yaml was edited")


def test_resume_keeps_the_original_command_and_lists_resumes(run_copy):
    run, _ = run_copy
    before = json.loads((run / "env.json").read_text())
    assert dllab("run", "--resume", str(run), "--quiet").returncode == 0
    after = json.loads((run / "env.json").read_text())
    assert (after["command"], after["started"]) == (before["command"], before["started"])
    assert [r["command"] for r in after["resumes"]] == [f"dllab run --resume {run} --quiet"]


# --- 5 and 6. values and files that mean nothing: one line, before any work ----------------------

@pytest.mark.parametrize("experiment, setting", [
    ("lab1.mlp", "train.batch_size=0"), ("lab1.mlp", "train.batch_size=-4"), ("lab1.mlp", "train.eval_batch_size=0"),
    ("lab1.mlp", "adam.lr=nan"), ("lab1.mlp", "adam.lr=-1"), ("lab4.fgsm", "attack.epsilons=[]"),
    ("lab2.features", "features.k=0"), ("lab1.mlp", "train.epochs=0"), ("lab1.mlp", "width=0"),
    ("lab1.mlp", "data.train_limit=-5"), ("lab4.ood", "ood.limit=-5"), ("lab1.mlp", "data.val_fraction=-0.5"),
])
def test_meaningless_values_are_refused_before_any_work(experiment, setting, tmp_path):
    key = setting.split("=")[0]
    one_line_error(dllab("run", experiment, "--profile", "smoke", "--set", setting,
                         env={"DLLAB_RUNS": str(tmp_path / "runs")}), key)
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("args, fragment", [
    (["--seeds", "0,0"], "seed 0 twice"), (["--seeds", ","], "no seed"), (["--out", ""], "--out is empty"),
])
def test_meaningless_flags_are_refused(args, fragment, tmp_path):
    one_line_error(dllab("run", "lab1.mlp", "--profile", "smoke", *args, env={"DLLAB_RUNS": str(tmp_path / "r")}),
                   fragment)
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("file, content, fragment", [
    ("env.json", "{}", "names no experiment"), ("env.json", "[1, 2]", "expected a JSON object"),
    ("config.yaml", "- 1\n- 2\n", "was edited"), ("report_state.json", '{"notes": 5}', "damaged"),
    ("results/adam.json", "[1]", "expected a JSON object"),
])
def test_damaged_run_files_on_resume(file, content, fragment, run_copy):
    run, _ = run_copy
    (run / file).write_text(content)
    one_line_error(dllab("run", "--resume", str(run)), file.split("/")[-1], fragment)


@pytest.mark.parametrize("file, content, fragment", [
    ("env.json", "[]", "expected a JSON object"), ("metrics.json", '{"summary": [1, 2]}', "summary"),
    ("report_state.json", '{"notes": 5}', "damaged"), ("env.json", "{}", "names no experiment"),
])
def test_damaged_run_files_on_report(file, content, fragment, run_copy, tmp_path):
    run, _ = run_copy
    (run / file).write_text(content)
    one_line_error(dllab("report", str(run), "--out", str(tmp_path / "r.md")), file, fragment)


def test_report_inlines_only_the_runs_own_pictures(run_copy, tmp_path):
    run, _ = run_copy
    secret = tmp_path / "secret.png"
    secret.write_bytes(b"\x89PNG not for the report")
    state = json.loads((run / "report_state.json").read_text())
    state["figures"].append(["stolen", str(secret)])
    (run / "report_state.json").write_text(json.dumps(state))
    assert dllab("report", str(run), "--out", str(tmp_path / "r.md")).returncode == 0
    import base64
    assert base64.b64encode(secret.read_bytes()).decode() not in (tmp_path / "r.html").read_text()


def test_disk_full_is_one_line(run_copy, monkeypatch, capsys):
    run, _ = run_copy
    import errno

    def full(*_a, **_k):   # the disk fills at the lowest write: every atomic file of the run hits it
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr("dllab.core.files._WholeWrites.write", full)
    assert cli.main(["run", "--resume", str(run), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "No space left on device" in err[0] and f"--resume {run}" in err[0]


def test_ctrl_c_during_a_write_finishes_the_file_first(tmp_path):
    target = tmp_path / "state.pt"

    def write(f):
        f.write(b"first half ")
        os.kill(os.getpid(), signal.SIGINT)
        f.write(b"second half")

    with pytest.raises(KeyboardInterrupt):
        atomic_write(target, write)
    assert target.read_bytes() == b"first half second half"
    assert not list(tmp_path.glob(".*.tmp"))


# --- 7. smaller ----------------------------------------------------------------------------------

def test_bad_value_in_config_yaml_names_the_file_not_set(run_copy):
    run, _ = run_copy
    cfg = run / "config.yaml"
    cfg.write_text(cfg.read_text().replace("epochs: 1", "epochs: abc"))
    env = json.loads((run / "env.json").read_text())
    del env["config_sha256"]            # a run from before the edit check: the value itself is refused
    (run / "env.json").write_text(json.dumps(env))
    line = one_line_error(dllab("run", "--resume", str(run)), "config.yaml", "train.epochs=abc")
    assert "--set" not in line


@pytest.mark.parametrize("text, fragment", [("- 1\n- 2\n", "expected a mapping"), ("a: [", "not valid YAML"),
                                            ("train:\n  epochs: 0\n", "train.epochs=0")])
def test_damaged_config_yaml_is_one_line(text, fragment):
    from dllab.core.config import load_yaml
    from dllab.experiments.lab1.config import MLPConfig

    with pytest.raises(DllabError, match="config.yaml") as e:
        load_yaml(MLPConfig, text)
    assert fragment in str(e.value)


def test_stale_temp_files_are_removed_on_resume(run_copy):
    run, _ = run_copy
    stale = run / "checkpoints" / ".adam.pt.abc123.tmp"
    stale.parent.mkdir(exist_ok=True)
    stale.write_bytes(b"")
    assert dllab("run", "--resume", str(run), "--quiet").returncode == 0
    assert not stale.exists()


def test_files_honour_the_umask(run_copy, tmp_path):
    run, _ = run_copy
    expected = 0o666 & ~_umask()
    for name in ("config.yaml", "env.json", "metrics.json", "report.md", "report.html", "log.txt"):
        assert stat.S_IMODE((run / name).stat().st_mode) == expected, name


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_a_folder_is_never_left_half_made(tmp_path, monkeypatch):
    """Run.create writes config.yaml and env.json in a hidden folder renamed into place: interrupted in
    between, the target does not exist (so --out can be used again) rather than existing without env.json."""
    from dllab.store import folder as run_folder
    from dllab.runner import run as runs
    from dllab.core.registry import get_experiment
    from dllab.core.config import make_config

    exp = get_experiment("lab1.mlp")
    cfg = make_config(exp.config_cls, exp.profiles, "smoke")

    def interrupted(*_a, **_k):
        raise KeyboardInterrupt

    monkeypatch.setattr(run_folder, "atomic_write_json", interrupted)
    with pytest.raises(KeyboardInterrupt):
        runs.Run.create("lab1.mlp", cfg, out=str(tmp_path / "r"))
    assert list(tmp_path.iterdir()) == []
    monkeypatch.undo()
    run = runs.Run.create("lab1.mlp", cfg, out=str(tmp_path / "r"))
    assert (run.path / "env.json").is_file() and (run.path / "config.yaml").is_file()
    with pytest.raises(DllabError, match="already exists"):
        runs.Run.create("lab1.mlp", cfg, out=str(tmp_path / "r"))
