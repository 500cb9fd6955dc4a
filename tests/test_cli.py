"""The command line: listing, bad input (exit 2, one line, no traceback, nothing on disk touched), report."""
import errno
import json
import os
import re
import subprocess
import sys
import time

import pytest
from conftest import dllab_in_process, one_line_error


def dllab(*args, cwd=None, env=None):
    """The CLI in this process (seconds faster than `python -m dllab`); the tests of the process itself start one."""
    return dllab_in_process(*args, cwd=cwd, env=env)


def test_list_names_every_lab1_experiment():
    res = dllab("list")
    assert res.returncode == 0
    for name in ("lab1.mlp", "lab1.mlp-depth", "lab1.cnn-depth"):
        assert name in res.stdout
    assert "smoke, quick, paper" in res.stdout


def test_listing_and_configs_import_no_heavy_library():
    # `dllab list`, `--help` and config checks stay under a second because registering an experiment
    # imports no torch, transformers, sklearn or matplotlib (seconds of imports); run functions do.
    code = """
import sys
from dllab.cli.main import main
from dllab.core.config import PROFILES, make_config
from dllab.core.registry import experiment_names, get_experiment
assert main(["list"]) == 0
for name in experiment_names():
    exp = get_experiment(name)
    for p in PROFILES:
        make_config(exp.config_cls, exp.profiles, p)
heavy = ("torch", "transformers", "sklearn", "scipy", "matplotlib", "peft")
print("HEAVY", sorted(m for m in heavy if m in sys.modules), len(experiment_names()))
"""
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    last = res.stdout.strip().splitlines()[-1]
    assert last.startswith("HEAVY [] "), last
    assert int(last.split()[-1]) >= 10  # every experiment was registered, not just a light subset


@pytest.mark.parametrize("args, fragments", [
    (["run", "lab9.nothing"], ["unknown experiment 'lab9.nothing'"]),
    (["run", "lab1.mlpp"], ["did you mean 'lab1.mlp'"]),
    (["run", "lab1.mlp", "--set", "train.epoch=2"], ["unknown config key 'train.epoch'", "train.epochs"]),
    (["run", "lab1.mlp", "--set", "train.epochs=two"], ["expected int"]),
    (["run", "lab1.mlp", "--profile", "fast"], ["invalid choice: 'fast'"]),
    (["run", "lab1.mlp", "--seeds", "1,x"], ["expected comma-separated integers"]),
    (["run"], ["needs an experiment name"]),
    (["run", "--resume", "/nonexistent/run"], ["no such folder"]),
        (["run", "lab1.mlp", "--resume", "/nonexistent/run"], ["drop an experiment name"]),
    (["report", "/nonexistent/run"], ["not a finished run folder"]),
])
def test_bad_input_exits_2_with_one_line(args, fragments, tmp_path):
    res = dllab(*args, cwd=tmp_path)
    one_line_error(res, *fragments)
    assert not (tmp_path / "runs").exists()  # nothing was created


def test_missing_data_offline_under_paper(tmp_path):
    res = dllab("run", "lab1.mlp", "--profile", "paper", "--set", f"data.root={tmp_path / 'nodata'}",
                "--out", str(tmp_path / "run"), cwd=tmp_path)
    one_line_error(res, "mnist not found", "MNIST/raw")
    assert not (tmp_path / "run").exists()  # no half-made run folder is left behind


def test_existing_out_is_never_overwritten(tmp_path):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    res = dllab("run", "lab1.mlp", "--profile", "smoke", "--out", str(out), cwd=tmp_path)
    one_line_error(res, "already exists")
    assert [p.name for p in out.iterdir()] == ["keep.txt"] and (out / "keep.txt").read_text() == "precious"


def test_corrupt_checkpoint_on_resume_is_refused_untouched(tmp_path, imagefolder):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.yaml").write_text(f"profile: smoke\ndata:\n  name: imagefolder\n  root: {imagefolder}\n")
    (run / "env.json").write_text(json.dumps({"experiment": "lab1.mlp"}))
    bad = run / "checkpoints" / "sgd.pt"
    bad.write_bytes(b"\x00garbage")
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    res = dllab("run", "--resume", str(run), cwd=tmp_path)
    one_line_error(res, "sgd.pt is corrupt")
    assert bad.read_bytes() == b"\x00garbage"
    for p, data in before.items():
        if p.name != "env.json":  # the resume records its command before training starts
            assert p.read_bytes() == data


def test_run_then_report_two_runs(tmp_path, imagefolder):
    outs = []
    for i in range(2):
        out = tmp_path / f"run{i}"
        quiet = ["--quiet"] if i else []
        res = dllab("run", "lab1.mlp", "--profile", "smoke", *quiet, "--seed", str(i), "--out", str(out),
                    "--set", f"data.root={imagefolder}", "--set", "data.name=imagefolder", cwd=tmp_path)
        assert res.returncode == 0, res.stderr
        assert res.stdout.strip() == str(out)            # stdout is the run folder alone, for scripts
        adam = json.loads((out / "metrics.json").read_text())["summary"]["adam.test_acc"]
        if quiet:
            assert res.stderr.strip() == ""
        else:  # the headline numbers end the console output
            assert "summary (" in res.stderr and re.search(rf"adam\.test_acc +{adam:.4f}", res.stderr)
        outs.append(str(out))
    res = dllab("report", *outs, "--out", str(tmp_path / "all.md"), cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    md = (tmp_path / "all.md").read_text()
    html = (tmp_path / "all.html").read_text()
    assert md.count("## lab1.mlp") == 2 and "run0/curves.png" in md
    assert html.count("data:image/png;base64,") == 2 and "<table>" in html
    assert "adam.test_acc" in md
    # runs on the user's ImageFolder: named in each run's heading; the spec's claims (about MNIST) left out
    assert md.count("## lab1.mlp on tiny (ImageFolder)") == 2 and "The spec says" not in md and "MNIST" not in md


def test_failed_start_leaves_no_empty_runs_folder(tmp_path):
    res = dllab_in_process("run", "lab1.mlp", "--profile", "paper", "--set", f"data.root={tmp_path / 'nodata'}",
                           cwd=tmp_path, env={"DLLAB_RUNS": str(tmp_path / "runs")})
    one_line_error(res, "mnist not found")
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("others, load, user, expected", [
    (0.1, 1.7, None, None),          # idle now (a finished run's load average lingers): OpenMP's spinning
    (1.0, 0.3, None, "PASSIVE"),     # another process busy now: spinning workers would fight it
    (1.0, 1.7, "ACTIVE", "ACTIVE"),  # the user's choice wins
    (None, 0.3, None, None),         # no /proc/stat: the 1-minute load average decides
    (None, 1.7, None, "PASSIVE"),
])
def test_omp_wait_policy_follows_what_other_processes_do_now(monkeypatch, others, load, user, expected):
    from dllab.cli import main as cli

    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    if user:
        monkeypatch.setenv("OMP_WAIT_POLICY", user)
    monkeypatch.setattr(cli.cpus, "others_busy", lambda: others)
    monkeypatch.setattr(cli.cpus.os, "getloadavg", lambda: (load, load, load))
    cli.choose_omp_wait_policy()
    assert os.environ.get("OMP_WAIT_POLICY") == expected


@pytest.mark.slow
def test_the_wait_policy_is_chosen_before_torch_loads_and_only_by_commands_that_compute(tmp_path):
    """`dllab doctor` (as run and sweep) picks the policy before torch loads; `dllab list` does not sample."""
    script = ("import os, sys\nfrom dllab.core import cpus\ncpus.others_busy = lambda *a: 2.0   # another job on 2 CPUs\n"
              "from dllab.cli.main import main\nmain(sys.argv[1:])\n"
              "print('policy', os.environ.get('OMP_WAIT_POLICY'), 'torch' in sys.modules)")
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    listed = subprocess.run([sys.executable, "-c", script, "list"], capture_output=True, text=True, env=env,
                            cwd=tmp_path, timeout=120)
    assert listed.stdout.splitlines()[-1] == "policy None False"
    doctor = subprocess.run([sys.executable, "-c", script, "doctor", "--data-root", str(tmp_path)],
                            capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert "OpenMP wait policy: PASSIVE" in doctor.stdout and doctor.stdout.splitlines()[-1] == "policy PASSIVE True"


def test_others_busy_sees_a_spinning_process():
    from dllab.core import cpus

    if cpus.others_busy() is None:
        pytest.skip("no /proc/stat on this platform")
    spinner = subprocess.Popen([sys.executable, "-c", "import time\nt = time.time()\nwhile time.time() - t < 5: pass"])
    try:
        time.sleep(0.5)
        assert cpus.others_busy(0.3) >= 0.5          # one process spinning = about one CPU's worth
    finally:
        spinner.kill()
        spinner.wait()


# --- DLLAB_DEBUG, and a reader that goes away (issue #21, "Errors") -------------------------------------

SMOKE = ["run", "lab1.mlp", "--profile", "smoke", "--quiet"]


def test_dllab_debug_prints_the_chained_traceback_before_the_one_line_error(tmp_path):
    """The cause is chained (``raise ... from e``), so the traceback shows what failed underneath."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "env.json").write_text("{")
    (run / "metrics.json").write_text("{}")
    args = ("report", str(run), "--out", str(tmp_path / "report.md"))
    line = one_line_error(dllab(*args), "env.json is not valid JSON")     # without it: one line
    res = dllab(*args, env={"DLLAB_DEBUG": "1"})
    assert res.returncode == 2 and res.stderr.strip().splitlines()[-1] == line   # the same line, last
    assert res.stderr.startswith("Traceback (most recent call last):")
    assert "json.decoder.JSONDecodeError" in res.stderr
    assert "The above exception was the direct cause of the following exception" in res.stderr
    one_line_error(dllab("list", env={"DLLAB_DEBUG": "maybe"}), "DLLAB_DEBUG=maybe", "expected 1/true")


@pytest.mark.parametrize("error, fragment", [
    (lambda: OSError(errno.ENOSPC, "No space left on device"), "No space left on device"),
    (MemoryError, "out of memory"),
])
def test_dllab_debug_shows_the_traceback_of_a_disk_error_and_of_running_out_of_memory(
        monkeypatch, capsys, tmp_path, error, fragment):
    from dllab.cli import main as cli
    from dllab.runner import experiment as runner

    def fails(*args, on_start, **kwargs):
        on_start(tmp_path / "run")
        raise error()
    monkeypatch.setattr(runner, "run_experiment", fails)
    for debug in ("0", "1"):
        monkeypatch.setenv("DLLAB_DEBUG", debug)
        assert cli.main(SMOKE) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert err[-1].startswith("dllab: error: ") and fragment in err[-1], err
        assert f"--resume {tmp_path / 'run'}" in err[-1]
        if debug == "0":
            assert len(err) == 1, err
        else:
            assert err[0] == "Traceback (most recent call last):" and any("in fails" in ln for ln in err), err


def test_a_reader_that_goes_away_is_not_an_error():
    """`dllab list | head -1`: a closed stdout is not the user's mistake: no message (it used to be
    "dllab: error: Broken pipe"), EPIPE's number as the exit code, as Python's own `python -m json.tool`."""
    read, write = os.pipe()
    os.close(read)      # gone before dllab writes a byte, so every write fails with EPIPE
    try:
        res = subprocess.run([sys.executable, "-m", "dllab", "list"], stdout=write, stderr=subprocess.PIPE,
                             text=True, timeout=120)
    finally:
        os.close(write)
    assert res.stderr == "" and res.returncode == errno.EPIPE
