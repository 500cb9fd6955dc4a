"""Config files: `dllab run --config FILE` (under --set, over the profile), `--print-config`, the file read as
untrusted data and checked as --set is; `dllab --version`."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import dllab_in_process, one_line_error

import dllab


def printed(tmp_path, *args) -> dict:
    """`dllab run ... --print-config`: exit 0, a YAML file on stdout; its keys."""
    res = dllab_in_process("run", *args, "--print-config", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    return yaml.safe_load(res.stdout)


def write(path, text: str):
    path.write_text(text)
    return path


def summary(run) -> dict:
    return json.loads((run / "metrics.json").read_text())["summary"]


# --- --print-config, and feeding it back ------------------------------------------------------------------

def test_print_config_is_complete_names_experiment_and_profile_and_runs_nothing(tmp_path):
    cfg = printed(tmp_path, "lab1.mlp", "--profile", "smoke", "--set", "adam.lr=3e-4", "--seed", "7")
    assert cfg["experiment"] == "lab1.mlp" and cfg["profile"] == "smoke"
    assert cfg["train"]["epochs"] == 1 and cfg["data"]["train_limit"] == 2000      # the profile's
    assert cfg["adam"]["lr"] == 3e-4 and cfg["seed"] == 7                          # the command line's
    assert cfg["sgd"]["name"] == "sgd" and cfg["log"]["sinks"] == ["tensorboard"]  # every key
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow   # an end-to-end run; the fast loop covers its parts with unit tests
def test_the_printed_config_reproduces_the_run(tmp_path):
    """The acceptance check: `--print-config > c.yaml && dllab run --config c.yaml` gives the metrics of the
    command line it was printed from; the run's own config.yaml, fed back with the experiment, is the same
    config again. (A --set the profile does not give shows that the file's keys reach the run.)"""
    command = ["lab1.mlp", "--profile", "smoke", "--set", "data.train_limit=1000"]
    res = dllab_in_process("run", *command, "--print-config", cwd=tmp_path)
    conf = write(tmp_path / "c.yaml", res.stdout)
    direct = dllab_in_process("run", *command, "--out", "direct", "--quiet", cwd=tmp_path)
    from_file = dllab_in_process("run", "--config", conf, "--out", "from_file", "--quiet", cwd=tmp_path)
    assert direct.returncode == 0 and from_file.returncode == 0, direct.stderr + from_file.stderr
    assert summary(tmp_path / "from_file") == summary(tmp_path / "direct")
    assert (tmp_path / "from_file/config.yaml").read_text() == (tmp_path / "direct/config.yaml").read_text()
    again = dllab_in_process("run", "lab1.mlp", "--config", tmp_path / "direct/config.yaml", "--print-config",
                             cwd=tmp_path)
    assert again.stdout == res.stdout


def test_the_file_lies_over_the_profile_and_under_set(tmp_path):
    conf = write(tmp_path / "exp.yaml", "experiment: lab1.mlp\nprofile: smoke\ntrain:\n  epochs: 2\n"
                                        "  batch_size: 64\nadam.lr: 0.01\n")   # flat dotted keys work too
    cfg = printed(tmp_path, "--config", conf, "--set", "train.epochs=3")
    assert cfg["train"]["epochs"] == 3 and cfg["train"]["batch_size"] == 64 and cfg["adam"]["lr"] == 0.01
    assert cfg["data"]["train_limit"] == 2000 and cfg["profile"] == "smoke"
    # Without profile: in the file, --profile (else quick) is the one under it.
    part = write(tmp_path / "part.yaml", "train:\n  epochs: 2\n")
    cfg = printed(tmp_path, "lab1.mlp", "--config", part, "--profile", "smoke")
    assert (cfg["profile"], cfg["train"]["epochs"], cfg["data"]["train_limit"]) == ("smoke", 2, 2000)
    assert printed(tmp_path, "lab1.mlp", "--config", part)["profile"] == "quick"


def test_numbers_where_text_belongs_are_their_text(tmp_path):
    """`classes: [0, 1]` (class indices) means what `--set data.classes=[0,1]` means, not 'expected text'."""
    conf = write(tmp_path / "c.yaml", "data:\n  classes: [0, 1]\n")
    assert printed(tmp_path, "lab1.mlp", "--config", conf)["data"]["classes"] == ["0", "1"]
    assert printed(tmp_path, "lab1.mlp", "--set", "data.classes=[0,1]")["data"]["classes"] == ["0", "1"]


def test_an_empty_file_changes_nothing(tmp_path):
    empty = write(tmp_path / "empty.yaml", "")
    assert printed(tmp_path, "lab1.mlp", "--config", empty) == printed(tmp_path, "lab1.mlp")


# --- bad files: one line naming the file and the key, before any folder -----------------------------------

@pytest.mark.parametrize("text, fragments", [
    ("train:\n  epoch: 3\n", ["bad.yaml: unknown config key 'train.epoch' (did you mean 'train.epochs'?)",
                              "keys of train: epochs, batch_size"]),
    ("trian.epochs: 3\n", ["unknown config key 'trian.epochs' (did you mean 'train.epochs'?)",
                           "top-level keys: profile, seed"]),
    ("sgd:\n  schedule: sometimes\n", ["bad.yaml: sgd.schedule=sometimes: choose one of none, cosine, step, onecycle or warmup_cosine"]),
    ("train:\n  epochs: three\n", ["bad.yaml: train.epochs=three: expected int"]),
    ("train:\n  epochs: 0\n", ["bad.yaml: train.epochs=0: must be >= 1"]),
    ("data:\n  name: mnst\n", ["bad.yaml: data.name=mnst: unknown dataset 'mnst' (did you mean 'mnist'?)"]),
    ("train: 3\n", ["bad.yaml: 'train' is a section"]),
    ("data:\n  root: \"a\\nb\"\n", ["data.root=a\\nb: contains a control character"]),
    ("experiment: lab1.mpl\n", ["bad.yaml: experiment=lab1.mpl: unknown experiment 'lab1.mpl' (did you mean "
                                "'lab1.mlp'?)"]),
    ("profile: fast\n", ["bad.yaml: profile=fast: choose one of smoke, quick, paper"]),
    ("- train.epochs: 3\n", ["bad.yaml: expected a mapping of config keys", "found list"]),
    ("train: {epochs: 3\n", ["bad.yaml is not valid YAML"]),
    ("a: &x 1\nb: *x\n", ["bad.yaml is not valid YAML", "not allowed"]),
    ("data:\n  root: !!binary G1sxbQ==\n", ["bad.yaml is not valid YAML (YAML tags are not allowed)"]),
    ("seed: !!python/object/apply:os.getpid []\n", ["YAML tags are not allowed"]),
])
def test_a_bad_file_is_one_line_naming_the_file_and_key(tmp_path, text, fragments):
    bad = write(tmp_path / "bad.yaml", text)
    res = dllab_in_process("run", "lab1.mlp", "--profile", "smoke", "--config", bad, "--out", "run", cwd=tmp_path)
    one_line_error(res, *fragments)
    assert not (tmp_path / "run").exists() and not (tmp_path / "runs").exists()


def test_a_misspelt_key_fails_before_torch_loads(tmp_path):
    """The file is checked whole before the run command's module (and torch with it) loads."""
    bad = write(tmp_path / "bad.yaml", "experiment: lab1.mlp\nadam:\n  lrr: 0.01\n")
    code = "import sys; from dllab.cli.main import main; rc = main(sys.argv[1:]); print('torch' in sys.modules); " \
           "sys.exit(rc)"
    res = subprocess.run([sys.executable, "-c", code, "run", "--config", str(bad)], capture_output=True, text=True,
                         cwd=tmp_path, timeout=300, env=os.environ)
    one_line_error(res, "bad.yaml: unknown config key 'adam.lrr' (did you mean 'adam.lr'?)")
    assert res.stdout.split() == ["False"], res.stdout


@pytest.mark.parametrize("make, fragment", [
    (lambda p: p.mkdir(), "is a folder, not a regular file"),
    (lambda p: os.mkfifo(p), "is a FIFO, not a regular file"),
    (lambda p: p.write_text("#" * (4 * 2**20 + 1)), "more than the 4 MiB"),
    (lambda p: p.write_bytes(b"seed: \xff\n"), "is not UTF-8 text"),
    (lambda p: None, "is missing"),
])
def test_the_file_is_read_as_untrusted_data(tmp_path, make, fragment):
    make(tmp_path / "c.yaml")
    one_line_error(dllab_in_process("run", "lab1.mlp", "--config", tmp_path / "c.yaml", cwd=tmp_path), fragment)


def test_a_link_named_on_the_command_line_is_followed(tmp_path):
    write(tmp_path / "real.yaml", "train:\n  epochs: 2\n")
    (tmp_path / "link.yaml").symlink_to(tmp_path / "real.yaml")
    assert printed(tmp_path, "lab1.mlp", "--config", tmp_path / "link.yaml")["train"]["epochs"] == 2


@pytest.mark.parametrize("args, fragment", [
    (["lab4.ood"], "c.yaml says experiment: lab1.mlp, the command line the experiment name lab4.ood"),
    (["--profile", "quick"], "c.yaml says profile: smoke, the command line --profile quick"),
    (["--resume", "somewhere"], "--resume continues a run exactly as it started; drop --config"),
])
def test_the_file_and_the_command_line_may_not_disagree(tmp_path, args, fragment):
    conf = write(tmp_path / "c.yaml", "experiment: lab1.mlp\nprofile: smoke\n")
    one_line_error(dllab_in_process("run", *args, "--config", conf, cwd=tmp_path), fragment)


def test_a_file_without_an_experiment_needs_one_on_the_command_line(tmp_path):
    conf = write(tmp_path / "c.yaml", "train:\n  epochs: 2\n")
    one_line_error(dllab_in_process("run", "--config", conf, cwd=tmp_path), "needs an experiment name")
    one_line_error(dllab_in_process("run", "--resume", "x", "--print-config", cwd=tmp_path),
                   "--print-config prints the config of a new run")


# --- dllab sweep --config ----------------------------------------------------------------------------------



def test_a_sweep_takes_a_config_file_under_its_grid(tmp_path, imagefolder, points_in_process):
    conf = write(tmp_path / "c.yaml", f"experiment: lab1.mlp\nprofile: smoke\nwidth: 32\ndata:\n  name: imagefolder\n"
                                      f"  root: {imagefolder}\nlog:\n  sinks: []\n")
    res = dllab_in_process("sweep", "--config", conf, "--grid", "width=8,16", "--out", "sw", "--quiet", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    sweep = tmp_path / "sw"
    assert all(args[args.index("--config") + 1] == str(sweep / "sweep_config.yaml") for args in points_in_process)
    assert json.loads((sweep / "sweep.json").read_text())["config"] == {"width": 32, "data.name": "imagefolder",
                                                                         "data.root": str(imagefolder),
                                                                         "log.sinks": []}
    for point, width in (("p0_width=8", 8), ("p1_width=16", 16)):   # the grid over the file, the file over smoke
        cfg = yaml.safe_load((sweep / point / "config.yaml").read_text())
        assert (cfg["width"], cfg["data"]["name"], cfg["profile"], cfg["train"]["epochs"]) == (width, "imagefolder",
                                                                                               "smoke", 1)
    points_in_process.clear()   # the same command is the same sweep: nothing runs again
    assert dllab_in_process("sweep", "--config", conf, "--grid", "width=8,16", "--out", "sw", "--quiet",
                            cwd=tmp_path).returncode == 0
    assert points_in_process == []


def test_a_sweep_with_a_bad_config_file_leaves_no_folder(tmp_path):
    conf = write(tmp_path / "c.yaml", "experiment: lab1.mlp\nadam:\n  lrr: 0.1\n")
    one_line_error(dllab_in_process("sweep", "--config", conf, "--grid", "width=8,16", cwd=tmp_path),
                   "c.yaml: unknown config key 'adam.lrr' (did you mean 'adam.lr'?)")
    one_line_error(dllab_in_process("sweep", "--resume", tmp_path, "--config", conf, cwd=tmp_path),
                   "drop --config")
    assert not (tmp_path / "sweeps").exists()


# --- dllab --version ---------------------------------------------------------------------------------------

def test_version_names_dllab_and_torch(tmp_path):
    import importlib.metadata
    import tomllib

    res = dllab_in_process("--version", cwd=tmp_path)
    assert res.returncode == 0 and res.stdout.startswith(f"dllab {dllab.__version__} (torch "), res
    assert importlib.metadata.version("torch") in res.stdout
    # One version: the package's metadata (pyproject.toml) says what dllab.__version__ says.
    pyproject = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())
    assert pyproject["project"]["version"] == dllab.__version__


# --- dllab completion bash|zsh -----------------------------------------------------------------------------

@pytest.mark.parametrize("shell", ["bash", "zsh"])
def test_the_completion_script_lists_experiments_profiles_and_keys(tmp_path, shell):
    from dllab.core.registry import experiment_names

    res = dllab_in_process("completion", shell, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    for word in [*experiment_names(), "smoke quick paper", "train.epochs", "adam.lr", "ood.detectors",
                 "finetune.lr.full", "--print-config", "--config", "completion"]:
        assert word in res.stdout, word


def complete(script, *words: str) -> list[str]:
    """What bash offers after ``words`` (the last one being completed) with the script loaded."""
    driver = ('source "$1"; shift; COMP_WORDS=("$@"); COMP_CWORD=$(( $# - 1 )); COMPREPLY=(); '
              '_dllab_complete dllab "${COMP_WORDS[-1]}" 2>/dev/null; printf "%s\\n" "${COMPREPLY[@]}"')
    res = subprocess.run(["bash", "-c", driver, "bash", str(script), "dllab", *words], capture_output=True,
                         text=True, timeout=60)
    return res.stdout.split()


@pytest.mark.skipif(not shutil.which("bash"), reason="bash is not installed")
def test_bash_completes_experiments_and_the_keys_of_the_experiment_typed(tmp_path):
    script = write(tmp_path / "dllab.bash", dllab_in_process("completion", "bash", cwd=tmp_path).stdout)
    assert complete(script, "sw") == ["sweep"]
    assert complete(script, "run", "lab1.m") == ["lab1.mlp", "lab1.mlp-depth"]
    assert complete(script, "run", "lab1.mlp", "--profile", "q") == ["quick"]
    assert complete(script, "run", "lab1.mlp", "--set", "train.ep") == ["train.epochs="]
    assert complete(script, "run", "lab1.mlp", "--set", "ood.det") == []           # not a key of lab1.mlp
    assert complete(script, "run", "lab4.ood", "--set", "ood.det") == ["ood.detectors="]
    assert complete(script, "run", "--set", "ood.det") == ["ood.detectors="]       # no experiment: every key
    assert complete(script, "sweep", "lab1.mlp", "--grid", "wid") == ["width="]
