"""dllab.core.environ: each environment variable read once, one way, and a bad one is one line naming it (issue #20,
"the environment"; issue #21, "one reading of each environment variable")."""
from __future__ import annotations

import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import one_line_error

from dllab import DllabError
from dllab.core import environ

SMOKE = ["run", "lab1.mlp", "--profile", "smoke", "--quiet"]
# What a shell that once ran under torchrun (or a job script) leaves behind.
LEFTOVER_TORCHRUN = {"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1",
                     "MASTER_PORT": "29531"}


def dllab(*args, env=None, cwd=None, unset=(), **kwargs):
    full = {k: v for k, v in {**os.environ, **(env or {})}.items() if k not in unset}
    return subprocess.run([sys.executable, "-m", "dllab", *args], capture_output=True, text=True, cwd=cwd,
                          env=full, timeout=300, **kwargs)


def made_nothing(tmp_path: Path) -> bool:
    return not any(tmp_path.iterdir())


# --- torchrun's variables -------------------------------------------------------------------------------

def test_a_garbage_world_size_is_one_line_for_run_and_ignored_by_list(tmp_path):
    env = {"WORLD_SIZE": "abc", "DLLAB_RUNS": str(tmp_path / "runs")}
    listed = dllab("list", env=env)
    assert listed.returncode == 0 and "lab1.mlp" in listed.stdout and not listed.stderr
    one_line_error(dllab(*SMOKE, env=env), "WORLD_SIZE=abc", "whole number")
    assert not (tmp_path / "runs").exists()


def test_leftover_torchrun_variables_stop_a_run_at_once_instead_of_waiting_for_peers(tmp_path):
    # Before: init_process_group waited for a second process (for up to the 6 h timeout); the subprocess
    # timeout here only keeps a regression from hanging the suite.
    res = dllab(*SMOKE, env={**LEFTOVER_TORCHRUN, "DLLAB_RUNS": str(tmp_path / "runs")}, unset=("TORCHELASTIC_RUN_ID",),
                cwd=tmp_path)
    one_line_error(res, "not started by torchrun", "unset WORLD_SIZE RANK LOCAL_RANK MASTER_ADDR MASTER_PORT",
                   "--nproc")
    assert made_nothing(tmp_path)


def test_torchruns_own_variables_are_read_and_checked(monkeypatch):
    from dllab.core import ranks
    for name, value in {**LEFTOVER_TORCHRUN, "RANK": "1", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2",
                        "TORCHELASTIC_RUN_ID": "none"}.items():
        monkeypatch.setenv(name, value)
    assert environ.launch_info(strict=True) == environ.LaunchInfo(world_size=2, rank=1, local_rank=1)
    assert ranks.launched() and ranks.rank() == 1 and not ranks.is_main()
    for name, value, fragment in [("RANK", "2", "RANK=2: expected a whole number 0..1"),
                                  ("LOCAL_RANK", "-1", "LOCAL_RANK=-1"), ("MASTER_PORT", "http", "MASTER_PORT=http"),
                                  ("WORLD_SIZE", "0", "WORLD_SIZE=0"), ("MASTER_ADDR", "", "MASTER_ADDR is not set")]:
        with monkeypatch.context() as m:
            m.setenv(name, value)
            with pytest.raises(DllabError, match=fragment):
                ranks.check()
            # Everything else (the error handling of `dllab run` itself included) reads a single process.
            assert ranks.world_size() == 1 and ranks.is_main() and not ranks.launched()


# --- one reading of the switches ------------------------------------------------------------------------

@pytest.mark.parametrize("value, on", [("1", True), ("true", True), ("YES", True), (" on ", True), ("0", False),
                                       ("false", False), ("No", False), ("off", False), ("", False)])
def test_offline_switches_have_one_reading(monkeypatch, value, on):
    monkeypatch.setenv("DLLAB_OFFLINE", value)
    assert environ.offline() is on


def test_a_bad_switch_is_one_line_before_any_folder(tmp_path):
    runs = {"DLLAB_RUNS": str(tmp_path / "runs")}
    one_line_error(dllab(*SMOKE, env={**runs, "DLLAB_OFFLINE": "maybe"}), "DLLAB_OFFLINE=maybe", "1/true/yes/on")
    one_line_error(dllab(*SMOKE, env={**runs, "HF_HUB_OFFLINE": "sometimes"}), "HF_HUB_OFFLINE=sometimes")
    assert made_nothing(tmp_path)


def test_dllab_offline_false_means_online_everywhere(monkeypatch, tmp_path):
    """Datasets (data/images.py read `false` as offline) and the hub (text/hf.py read it as online) agree."""
    from dllab.data import images
    from dllab.models import hf
    monkeypatch.setenv("DLLAB_OFFLINE", "false")
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    downloads = []
    monkeypatch.setattr(images, "_mnist", lambda root, download: downloads.append(download) or ("tr", "te", [], "x"))
    images.read_dataset("mnist", tmp_path)
    asked = []
    monkeypatch.setattr(environ, "_endpoint_answers", lambda endpoint, timeout: asked.append(endpoint) or True)
    assert downloads == [True] and environ.hub_reachable() and asked == ["https://huggingface.co"]
    monkeypatch.setenv("DLLAB_OFFLINE", "true")
    images.read_dataset("mnist", tmp_path)
    assert downloads == [True, False] and not environ.hub_reachable() and len(asked) == 1


# --- HF_ENDPOINT ----------------------------------------------------------------------------------------

def test_a_garbage_hf_endpoint_is_not_read_offline(monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", "http://[not-a-url")
    from dllab.models import hf
    monkeypatch.setattr(environ, "_endpoint_answers", lambda *a: pytest.fail("offline: the hub must not be asked"))
    assert environ.hf_endpoint() is None and not environ.hub_reachable()
    assert "HF_ENDPOINT" not in os.environ      # hidden from huggingface_hub, which fails parsing it on import


@pytest.mark.slow
def test_a_garbage_hf_endpoint_does_not_break_doctor_offline(tmp_path):
    res = dllab("doctor", "--data-root", str(tmp_path), env={"HF_ENDPOINT": "http://[not-a-url"})
    assert res.returncode == 0 and not res.stderr, res.stderr
    assert "Error importing" not in res.stdout and "minilm" in res.stdout


@pytest.mark.parametrize("endpoint", ["http://[not-a-url", "https://hub:99999", "ftp://mirror", "no url", "https://"])
def test_a_garbage_hf_endpoint_online_is_one_line_before_any_folder(endpoint, tmp_path):
    online = {"DLLAB_OFFLINE": "0", "HF_HUB_OFFLINE": "0", "HF_ENDPOINT": endpoint,
              "DLLAB_RUNS": str(tmp_path / "runs")}
    one_line_error(dllab("run", "lab2.features", "--profile", "smoke", env=online), "HF_ENDPOINT=",
                   "http(s) URL with a host")
    assert made_nothing(tmp_path)


def test_a_good_hf_endpoint_is_used_online(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("DLLAB_OFFLINE", "")
    monkeypatch.setenv("HF_ENDPOINT", "http://mirror.local:8080/")
    assert environ.hf_endpoint() == "http://mirror.local:8080"


# --- folders --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("value", ["", "  "])
def test_an_empty_folder_variable_means_unset_not_the_current_directory(monkeypatch, tmp_path, value):
    from dllab.core.environ import cache_dir
    from dllab.data import data_root
    from dllab.store.folder import default_runs_root
    from dllab.runner.sweep import sweeps_root
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    for name in ("DLLAB_RUNS", "DLLAB_SWEEPS", "DLLAB_DATA", "DLLAB_CACHE"):
        monkeypatch.setenv(name, value)
    assert default_runs_root() == Path("runs") and sweeps_root() == Path("sweeps") and data_root() == Path("data")
    assert cache_dir() == tmp_path / "xdg" / "dllab"


def test_every_cache_lives_in_the_user_cache_folder_not_the_working_directory(monkeypatch, tmp_path):
    from dllab.data import images
    from dllab.train import precision
    monkeypatch.delenv("DLLAB_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.chdir(tmp_path)
    assert images.cache_dir() == environ.cache_dir() == tmp_path / "xdg" / "dllab"      # one answer
    assert precision.cache_path() == tmp_path / "xdg" / "dllab" / "precision_probe.json"
    monkeypatch.setenv("DLLAB_CACHE", str(tmp_path / "mine"))
    assert images.cache_dir() == precision.cache_path().parent == tmp_path / "mine"


def test_tests_never_fall_back_to_the_home_folder():
    """conftest sets DLLAB_CACHE for the session too (module-scoped fixtures run before the per-test one)."""
    assert os.environ.get("DLLAB_CACHE") and not environ.cache_dir().is_relative_to(Path.home() / ".cache")


# --- OpenMP's wait policy -------------------------------------------------------------------------------

@pytest.mark.parametrize("value, policy, warns", [
    ("bogus", None, True), ("PASSIVE,x", None, True), ("", None, False), (" passive ", "PASSIVE", False),
    ("Active", "ACTIVE", False)])
def test_omp_wait_policy_is_read_as_libgomp_reads_it(monkeypatch, capsys, value, policy, warns):
    from dllab.cli import main as cli
    monkeypatch.setenv("OMP_WAIT_POLICY", value)
    monkeypatch.setattr(cli.cpus, "others_busy", lambda: 0.0)      # idle: OpenMP's default unless set
    cli.choose_omp_wait_policy()
    assert os.environ.get("OMP_WAIT_POLICY") == policy      # what the run records in env.json
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ([f"dllab: warning: OMP_WAIT_POLICY={value} is neither ACTIVE nor PASSIVE (OpenMP would ignore "
                    "it); ignored"] if warns else [])


@pytest.mark.slow
def test_a_rejected_omp_wait_policy_is_not_recorded_and_libgomp_does_not_complain(tmp_path, imagefolder):
    # (tiny generated images and fp32: no time spent on the digits or on the precision probe)
    res = dllab(*SMOKE, "--set", "train.epochs=1", "--set", "train.precision=fp32", "--set", "data.name=imagefolder",
                "--set", f"data.root={imagefolder}", "--out", str(tmp_path / "run"), env={"OMP_WAIT_POLICY": "bogus"})
    assert res.returncode == 0, res.stderr
    about_omp = [line for line in res.stderr.splitlines() if "OMP_WAIT_POLICY" in line]
    assert about_omp == ["dllab: warning: OMP_WAIT_POLICY=bogus is neither ACTIVE nor PASSIVE (OpenMP would ignore "
                         "it); ignored"]                     # once: libgomp, which would say it too, never sees it
    import json
    recorded = json.loads((tmp_path / "run" / "env.json").read_text())["omp_wait_policy"]
    assert recorded in ("(OpenMP default)", "PASSIVE")      # (PASSIVE when the machine was busy)


# --- memory limits --------------------------------------------------------------------------------------

def _address_space(limit: int):
    return lambda: resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def test_a_low_virtual_memory_limit_is_one_line_naming_it(tmp_path):
    """`ulimit -v 524288`: PyTorch's libraries cannot even be mapped (before: an ImportError traceback)."""
    res = dllab(*SMOKE, env={"DLLAB_RUNS": str(tmp_path / "runs")}, preexec_fn=_address_space(512 << 20))
    one_line_error(res, "out of memory under the virtual memory limit of 0.5 GiB (ulimit -v 524288)",
                   "ulimit -v unlimited")
    assert made_nothing(tmp_path)


def test_running_out_of_memory_under_a_limit_mid_run_names_it_and_the_folder_to_resume(monkeypatch, capsys,
                                                                                       tmp_path):
    from dllab.cli import main as cli
    from dllab.runner import experiment as runner

    def fails(*args, on_start, **kwargs):
        on_start(tmp_path / "run")
        raise MemoryError()
    monkeypatch.setattr(runner, "run_experiment", fails)
    monkeypatch.setattr(environ, "memory_limit", lambda: 3 << 30)
    assert cli.main(SMOKE) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("dllab: error: out of memory under the virtual memory limit of "
                                               "3.0 GiB (ulimit -v 3145728)"), err
    assert f"--resume {tmp_path / 'run'}" in err[0]
