"""dllab sweep's input checked before anything runs or is written (issue #20 "Sweep input", #22 --metric).

sweep.json has a typed, bounded schema and is read as a bounded regular file; --metric is checked against
the summary keys the experiment declares (registry.Experiment.metrics); --sample must be >= 1; a refused
sweep leaves no file; one sweep folder has one driver.
"""
from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys

import pytest

from dllab import DllabError
from test_hostile import dllab, one_line_error

VALID = {"experiment": "lab1.mlp", "profile": "smoke", "grid": {"width": ["16", "32"]}, "seeds": None,
         "sets": [], "sample": 0, "device": None}


def sweep_folder(tmp_path, spec: dict | str | bytes) -> str:
    folder = tmp_path / "sw"
    folder.mkdir()
    data = spec if isinstance(spec, (str, bytes)) else json.dumps(spec)
    (folder / "sweep.json").write_bytes(data.encode() if isinstance(data, str) else data)
    return str(folder)


def files_under(path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*"))


# --- sweep.json: typed, bounded, one line naming the file --------------------------------------------

@pytest.mark.parametrize("change, fragment", [
    ({"experiment": 3}, "experiment: Input should be a valid string"),
    ({"sample": "x"}, "sample: Input should be a valid integer"),
    ({"seeds": "12"}, "seeds: Input should be a valid array"),        # not split into seeds 1 and 2
    ({"seeds": [0.5]}, "seeds, value 1: Input should be a valid integer"),
    ({"grid": {"width": "16,32"}}, "grid width: Input should be a valid array"),
    ({"grid": {}}, "grid: Dictionary should have at least 1 item"),
    ({"grid": {"width": ["x" * 1001]}}, "grid width, value 1: String should have at most 1000 characters"),
    ({"profile": "fast"}, "profile: Input should be 'smoke', 'quick' or 'paper'"),
    ({"sample": 3}, "--sample 3: the grid has only 2 points"),
    ({"extra": 1}, "extra: Unexpected keyword argument"),
    ({"grid": {f"k{i}": ["1"] for i in range(21)}}, "grid: Dictionary should have at most 20 items"),
    ({"grid": {"width": [str(i) for i in range(200)], "train.epochs": [str(i) for i in range(200)]}},
     "40,000 points; a sweep runs at most 10,000"),
])
def test_malformed_sweep_json_is_one_line_naming_the_file(change, fragment, tmp_path):
    from dllab.runner.sweep_spec import read_spec

    folder = sweep_folder(tmp_path, {**VALID, **change})
    with pytest.raises(DllabError) as e:
        read_spec(folder)
    assert str(e.value).startswith(f"{folder}/sweep.json is not a valid sweep file: ") and fragment in str(e.value)


@pytest.mark.parametrize("text, fragment", [
    ("{not json", "Invalid JSON"), ("[1, 2]", "Input should be an object"),
    ("[" * 100_000 + "]" * 100_000, "recursion limit"), (b"\xff\xfe{}", "Invalid JSON"),
])
def test_unparsable_sweep_json_is_one_line(text, fragment, tmp_path):
    from dllab.runner.sweep_spec import read_spec

    folder = sweep_folder(tmp_path, text)
    with pytest.raises(DllabError, match=fragment):
        read_spec(folder)


def test_a_malformed_sweep_json_exits_2_and_the_folder_is_unchanged(tmp_path):
    folder = sweep_folder(tmp_path, {**VALID, "experiment": 3})
    before = files_under(tmp_path)
    one_line_error(dllab("sweep", "--resume", folder), f"{folder}/sweep.json", "experiment")
    assert files_under(tmp_path) == before


def test_a_huge_sweep_json_is_refused_unread(tmp_path):
    from dllab.runner.sweep_spec import read_spec
    from dllab.runner.sweep_spec import MAX_FILE_BYTES

    folder = sweep_folder(tmp_path, {**VALID, "sets": ["x" * (MAX_FILE_BYTES + 1)]})
    with pytest.raises(DllabError, match="sweep.json is 4.0 MiB, more than the 4 MiB"):
        read_spec(folder)


def test_a_linked_or_special_sweep_json_is_refused(tmp_path):
    from dllab.runner.sweep_spec import read_spec

    (tmp_path / "elsewhere.json").write_text(json.dumps(VALID))
    linked = tmp_path / "linked"
    linked.mkdir()
    (linked / "sweep.json").symlink_to(tmp_path / "elsewhere.json")
    with pytest.raises(DllabError, match="sweep.json is a symbolic link"):
        read_spec(str(linked))
    fifo = tmp_path / "fifo"
    fifo.mkdir()
    os.mkfifo(fifo / "sweep.json")   # opened without blocking: refused at once, no hang
    with pytest.raises(DllabError, match="sweep.json is a FIFO, not a regular file"):
        read_spec(str(fifo))


def test_a_valid_sweep_json_reads_back_equal():
    from dllab.runner.sweep_spec import SweepSpec, _SCHEMA

    spec = SweepSpec(**VALID)
    assert _SCHEMA.validate_json(json.dumps(VALID), strict=True) == spec


# --- the command line: the same limits, and nothing left behind ---------------------------------------

@pytest.mark.parametrize("args, fragment", [
    (["--grid", f"data.root={'x' * 1001}"], "--grid data.root, value 1: String should have at most 1000"),
    (["--grid", "width=16,32", "--sample", "0"], "--sample 0: must be >= 1"),
    (["--grid", "width=16,32", "--sample", "-1"], "--sample -1: must be >= 1"),
    (["--grid", "width=16,32", "--sample", "3"], "--sample 3: the grid has only 2 points"),
    (["--grid", "width=16,32", "--set", "log.sinks=[tensorboard,tensorboard]"], "lists 'tensorboard' twice"),
    (["--grid", "width=16,32", "--seeds", "1,1"], "lists seed 1 twice"),
    (["--grid", "width=16,32", "--metric", "adam.tst_acc"],
     "--metric adam.tst_acc: not a summary key of every point of this lab1.mlp sweep (did you mean 'adam.test_acc'?)"),
])
def test_bad_sweep_options_are_one_line_and_leave_nothing(args, fragment, tmp_path):
    for out in ([], ["--out", str(tmp_path / "out")]):
        one_line_error(dllab("sweep", "lab1.mlp", "--profile", "smoke", *args, *out, cwd=tmp_path,
                             env={"DLLAB_SWEEPS": str(tmp_path / "sweeps")}), fragment)
        assert files_under(tmp_path) == [], files_under(tmp_path)


def test_a_failed_ray_connection_leaves_nothing(tmp_path):
    pytest.importorskip("ray")
    env = {"DLLAB_SWEEPS": str(tmp_path / "sweeps"), "HOME": str(tmp_path / "home"), "RAY_ADDRESS": "",
           "RAY_AUTH_MODE": "disabled"}
    one_line_error(dllab("sweep", "lab1.mlp", "--profile", "smoke", "--grid", "width=16,32", "--ray", "auto",
                         cwd=tmp_path, env=env), "--ray auto: cannot connect")
    assert not (tmp_path / "sweeps").exists()


def test_long_values_give_short_unique_point_names():
    from dllab.runner.sweep_spec import SweepSpec, expand
    from dllab.runner.sweep_spec import MAX_NAME

    long = ["/data/" + "x" * 900 + str(i) for i in range(3)]
    points = expand(SweepSpec("lab1.mlp", "smoke", {"data.root": long, "width": ["16", "32"]}))
    names = [p.name for p in points]
    assert len(set(names)) == 6 and all(len(n) <= MAX_NAME for n in names)
    assert names == [p.name for p in expand(SweepSpec("lab1.mlp", "smoke", {"data.root": long,
                                                                             "width": ["16", "32"]}))]
    short = expand(SweepSpec("lab1.mlp", "smoke", {"adam.lr": ["1e-3"], "width": ["32"]}))
    assert [p.name for p in short] == ["p0_adam.lr=1e-3_width=32"]   # as older sweeps named it


def test_sample_draws_from_a_grid_too_large_to_list():
    # 10**12 points: listing them would exhaust any machine, so this runs under a 2 GiB address-space limit
    # (a regression fails here with a MemoryError instead of taking the machine's memory).
    code = ("from dllab.runner.sweep_spec import SweepSpec, expand\n"
            "grid = {f'k{i}': [str(v) for v in range(10)] for i in range(12)}\n"
            "points = expand(SweepSpec('lab1.mlp', 'smoke', grid, sample=5))\n"
            "assert len(points) == 5 and all(len(p.values) == 12 for p in points)\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_AS, (2**31, 2**31)))
    assert res.returncode == 0, res.stderr[-2000:]


# --- --metric: checked against the keys the experiment declares --------------------------------------

def checked(experiment, grid, metric=None, sets=()):
    from dllab.runner.sweep import _checked
    from dllab.runner.sweep_spec import SweepSpec

    return _checked(SweepSpec(experiment, "smoke", grid, sets=list(sets)), 1, "max", metric)


def test_default_metric_is_a_key_every_point_reports():
    # plain_depths [2] or [3]: plain_d2.* is reported by the first point only, so it cannot rank the sweep.
    _, metric, keys = checked("lab1.mlp-depth", {"plain_depths": ["[2]", "[3]"]})
    assert metric == "res_d2.test_acc" and "plain_d2.test_acc" not in keys
    with pytest.raises(DllabError, match="not a summary key of every point"):
        checked("lab1.mlp-depth", {"plain_depths": ["[2]", "[3]"]}, "plain_d2.test_acc")
    assert checked("lab1.mlp", {"width": ["16"]})[1] == "sgd.test_acc"


def test_declared_keys_follow_the_config():
    assert checked("lab1.mlp", {"width": ["16"]}, sets=["data.val_fraction=0"])[2] == [
        "sgd.test_acc", "sgd.test_acc_last", "adam.test_acc", "adam.test_acc_last"]
    # (model.test_acc_last: the classifier is trained in the run, as no model.run is set)
    _, _, keys = checked("lab4.fgsm", {"attack.epsilons": ["[0,0.1]", "[0.1,0.2]"]}, "fgsm.acc@0.1")
    assert keys == ["model.test_acc", "model.test_acc_last", "fgsm.acc@0.1"]
    _, _, keys = checked("lab4.ood", {"ood.names": ["[heldout]", "[heldout,mnist]"]}, sets=["ood.detectors=[msp]"])
    assert keys == ["model.test_acc", "model.test_acc_last"]   # one OOD set names no set in its keys, two do


def test_registered_experiments_declare_their_keys_without_torch():
    code = ("import sys\n"
            "from dllab.core.config import PROFILES, make_config\n"
            "from dllab.core.registry import experiment_names, get_experiment\n"
            "for name in experiment_names():\n"
            "    e = get_experiment(name)\n"
            "    for p in PROFILES:\n"
            "        assert e.metrics(make_config(e.config_cls, e.profiles, p)), (name, p)\n"
            "assert 'torch' not in sys.modules\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr


@pytest.mark.parametrize("profile", ["smoke", "paper"])
def test_declared_keys_hold_the_reference_keys(profile):
    """Every experiment declares distinct keys for each profile; they hold every spec (reference) key the
    run reports: all of them in paper, the spec's setting; in smoke all but the epsilons it leaves out."""
    from dllab.core.config import make_config
    from dllab.core.registry import experiment_names, get_experiment

    for name in experiment_names():
        exp = get_experiment(name)
        cfg = make_config(exp.config_cls, exp.profiles, profile)
        keys = exp.metrics(cfg)
        assert keys and len(set(keys)) == len(keys), name
        missing = set(exp.reference) - set(keys)
        epsilons = {f"{e:g}" for e in getattr(getattr(cfg, "attack", None), "epsilons", [])}
        assert all("acc@" in k and k.split("@")[1] not in epsilons for k in missing), (name, missing)
        assert profile == "smoke" or not missing, (name, missing)


def test_finetune_keys_are_text_finetunes():
    from dllab.experiments.lab2.config import FINETUNE_KEYS
    from dllab.text.finetune import SUMMARY_KEYS

    assert FINETUNE_KEYS == SUMMARY_KEYS


@pytest.mark.parametrize("sets", [[], ["data.val_fraction=0"]])
def test_lab1_mlp_declares_the_keys_its_run_reports(sets, imagefolder, tmp_path):
    from dllab.core.config import make_config
    from dllab.core.registry import get_experiment
    from dllab.runner.experiment import run_experiment

    sets = ["data.name=imagefolder", f"data.root={imagefolder}", "width=8", *sets]
    run = run_experiment("lab1.mlp", "smoke", sets, out=str(tmp_path / "run"), quiet=True)
    exp = get_experiment("lab1.mlp")
    assert list(run.metrics()["summary"]) == exp.metrics(make_config(exp.config_cls, exp.profiles, "smoke", sets))


# --- one driver per sweep folder ----------------------------------------------------------------------

@pytest.mark.slow   # two sweep processes
def test_a_second_identical_sweep_exits_naming_the_first(imagefolder, tmp_path):
    args = [sys.executable, "-m", "dllab", "sweep", "lab1.mlp", "--profile", "smoke", "--set",
            "data.name=imagefolder", "--set", f"data.root={imagefolder}", "--grid", "width=8"]
    env = {**os.environ, "DLLAB_SWEEPS": str(tmp_path / "sweeps")}
    first = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env,
                             start_new_session=True)
    try:
        started = first.stderr.readline()   # printed once its folder is made and locked
        assert started.startswith("sweep lab1.mlp (smoke): 1 points"), started + first.stderr.read()
        second = subprocess.run(args, capture_output=True, text=True, timeout=120, env=env)
        one_line_error(second, "is being written by process", str(first.pid))
    finally:
        os.killpg(first.pid, signal.SIGKILL)   # the first sweep and its point: their work is not this test's
        first.communicate(timeout=60)
    assert len(list((tmp_path / "sweeps" / "lab1.mlp").iterdir())) == 1
