"""dllab sweep (local --jobs and Ray), dllab compare (the tracking sinks: test_tracking.py)."""
import csv
import json
import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import dllab_in_process

from dllab import DllabError

TINY = ["--profile", "smoke", "--set", "data.name=imagefolder"]


def dllab(*args, cwd=None, env=None):
    """The CLI in this process (seconds faster than `python -m dllab`); the tests that kill a sweep start one."""
    return dllab_in_process(*args, cwd=cwd, env=env)


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_sweep_jobs_2_and_a_killed_sweep_finishes_only_what_was_missing(tmp_path, imagefolder):
    out = tmp_path / "sw"
    cmd = [sys.executable, "-m", "dllab", "sweep", "lab1.mlp", *TINY, "--set", f"data.root={imagefolder}",
           "--grid", "adam.lr=1e-3,3e-3", "--grid", "width=32,64", "--seeds", "0,1", "--jobs", "2", "--out", str(out)]
    first = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 300
    while not list(out.glob("p*/metrics.json")) and time.time() < deadline and first.poll() is None:
        time.sleep(0.2)
    os.killpg(first.pid, signal.SIGKILL)   # the sweep and its running points, as a closed terminal would
    first.wait()
    finished = {p: p.read_bytes() for p in out.glob("p*/metrics.json")}
    assert finished and len(finished) < 4, "the sweep should be killed part-way"
    stamps = {p: p.stat().st_mtime_ns for p in finished}

    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == str(out.resolve())
    assert f"{len(finished)} already finished" in res.stderr
    for p, data in finished.items():   # finished points were not run again
        assert p.read_bytes() == data and p.stat().st_mtime_ns == stamps[p]
    points = sorted(d.name for d in out.iterdir() if d.is_dir())   # no half-made folder is left either
    assert points == ["p0_adam.lr=1e-3_width=32", "p1_adam.lr=1e-3_width=64", "p2_adam.lr=3e-3_width=32",
                      "p3_adam.lr=3e-3_width=64"]
    for p in points:
        assert sorted(s.name for s in (out / p).glob("seed*")) == ["seed0", "seed1"]
        assert (out / p / "seed1" / "metrics.json").exists()
    rows = read_csv(out / "sweep.csv")
    assert len(rows) == 4 and [r["width"] for r in rows] == ["32", "64", "32", "64"]
    assert "adam.test_acc.std" in rows[0] and "sgd.val_acc.std" in rows[0]
    for r in rows:   # each row is the mean over its two seeds, as the point's own metrics.json says
        seeds = json.loads((out / r["point"] / "metrics.json").read_text())["seeds"]
        mean = (seeds["0"]["adam.test_acc"] + seeds["1"]["adam.test_acc"]) / 2
        assert float(r["adam.test_acc"]) == pytest.approx(mean)
    report = (out / "report.md").read_text()
    assert "Best point for sgd.test_acc" in report and (out / "sweep_sgd.test_acc.png").exists()


def test_a_sweep_runs_each_point_once_and_reports_the_mean_over_seeds(tmp_path, imagefolder, points_in_process):
    from dllab.runner.sweep import sweep
    from dllab.runner.sweep_spec import SweepSpec

    spec = SweepSpec("lab1.mlp", "smoke", {"width": ["8", "16"]}, [0, 1],
                     ["data.name=imagefolder", f"data.root={imagefolder}", "train.epochs=1"])
    out = sweep(spec, str(tmp_path / "sw"), quiet=True)
    assert [args[:2] for args in points_in_process] == [["run", "lab1.mlp"]] * 2
    rows = read_csv(out / "sweep.csv")
    assert [(r["point"], r["width"]) for r in rows] == [("p0_width=8", "8"), ("p1_width=16", "16")]
    for r in rows:   # each row is the mean over its two seeds, as the point's own metrics.json says
        seeds = json.loads((out / r["point"] / "metrics.json").read_text())["seeds"]
        assert float(r["sgd.test_acc"]) == pytest.approx((seeds["0"]["sgd.test_acc"] + seeds["1"]["sgd.test_acc"]) / 2)
    report = (out / "report.md").read_text()
    assert "Best point for sgd.test_acc (max)" in report and (out / "sweep_sgd.test_acc.png").is_file()
    (out / "p1_width=16" / "metrics.json").unlink()   # as if killed before its end: resumed, p0 not run again
    points_in_process.clear()
    assert sweep(spec, str(tmp_path / "sw"), quiet=True) == out
    assert points_in_process == [["run", "--resume", str(out / "p1_width=16"), "--quiet"]]
    assert read_csv(out / "sweep.csv") == rows


@pytest.mark.slow
def test_ray_tasks_give_the_same_sweep_csv_as_jobs(tmp_path, imagefolder, monkeypatch):
    if os.environ.get("CI", "").lower() == "true":
        import ray   # CI installs the ray extra: the Ray path must run there
    else:
        ray = pytest.importorskip("ray")
    from dllab.runner.sweep import sweep
    from dllab.runner.sweep_spec import SweepSpec

    monkeypatch.setenv("HOME", str(tmp_path / "home"))   # Ray keeps a token under ~/.ray unless told not to
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(sys.path))   # the points' processes import this dllab
    spec = SweepSpec("lab1.mlp", "smoke", {"adam.lr": ["1e-3", "3e-3"]}, [0, 1],
                     ["data.name=imagefolder", f"data.root={imagefolder}"])
    local = sweep(spec, str(tmp_path / "local"), jobs=2, quiet=True)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        on_ray = sweep(spec, str(tmp_path / "ray"), jobs=2, ray="auto", quiet=True)
    finally:
        ray.shutdown()
    assert (on_ray / "sweep.csv").read_text() == (local / "sweep.csv").read_text()
    assert len(read_csv(on_ray / "sweep.csv")) == 2


def test_ray_tasks_report_each_point_as_it_ends_and_ctrl_c_cancels_the_rest(monkeypatch):
    """sweep_ray.run_on_ray against a stand-in for Ray (tasks finish in reverse order; the real Ray runs in the
    slow test above): each point's task runs the point's `dllab run` with its threads and reserves as many CPUs,
    `done` hears each as it ends, and a Ctrl-C while waiting cancels every task not yet finished."""
    import types

    from dllab.runner import sweep_ray

    calls, reserved = [], []

    def remote(num_cpus, max_retries):
        reserved.append((num_cpus, max_retries))
        return lambda fn: types.SimpleNamespace(remote=lambda *a: ("ref", fn(*a)))

    def wait(refs, num_returns):
        if interrupt:
            raise KeyboardInterrupt
        return refs[-1:], refs[:-1]

    fake = types.SimpleNamespace(remote=remote, wait=wait, get=lambda ref: ref[1],
                                 cancel=lambda ref, force: calls.append(("cancel", ref[1], force)))
    monkeypatch.setattr(sweep_ray, "_ray", lambda: fake)
    todo = [(f"p{i}", ["run", f"point{i}"]) for i in range(3)]
    run_point = lambda args, threads, extra_env: (0, f"{args[1]} with {threads} threads")  # noqa: E731
    interrupt = False
    sweep_ray.run_on_ray(todo, 2, lambda *a: calls.append(a), run_point)
    assert reserved == [(2, 0)]
    assert calls == [(f"p{i}", 0, f"point{i} with 2 threads") for i in (2, 1, 0)]
    calls.clear()
    interrupt = True
    with pytest.raises(KeyboardInterrupt):
        sweep_ray.run_on_ray(todo, 2, lambda *a: calls.append(a), run_point)
    assert calls == [("cancel", (0, f"point{i} with 2 threads"), True) for i in range(3)]


@pytest.mark.parametrize("grid, fragment", [
    (["--grid", "adam.lrr=1e-3,3e-3"], "unknown config key 'adam.lrr'"),
    (["--grid", "width=32,wide"], "width=wide: expected int"),
    (["--grid", "width="], "lists no value"),
    (["--grid", "width=32,32"], "lists 32 twice"),
    (["--grid", "train.epochs=1,0"], "must be >= 1"),
    ([], "at least one --grid"),
])
def test_bad_grid_is_one_line_and_leaves_nothing(grid, fragment, tmp_path):
    res = dllab("sweep", "lab1.mlp", "--profile", "smoke", *grid, cwd=tmp_path,
                env={"DLLAB_SWEEPS": str(tmp_path / "sweeps")})
    assert res.returncode == 2, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("dllab: error: ") and fragment in lines[0], res.stderr
    assert not (tmp_path / "sweeps").exists()


def test_sample_draws_the_same_points_every_time():
    from dllab.runner.sweep_spec import SweepSpec, expand

    spec = SweepSpec("lab1.mlp", "smoke", {"adam.lr": ["1e-3", "3e-3", "1e-2"], "width": ["16", "32", "64"]},
                     sample=4)
    names = [p.name for p in expand(spec)]
    assert len(set(names)) == 4 and names == [p.name for p in expand(spec)]
    assert all(n.startswith("p") for n in names) and names == sorted(names)
    with pytest.raises(DllabError, match="only 9 points"):
        expand(SweepSpec("lab1.mlp", "smoke", spec.grid, sample=10))


def test_grid_values_keep_lists_whole():
    from dllab.runner.sweep_spec import parse_grid

    assert parse_grid(["data.classes=[0,1],[2,3]", "adam.lr=1e-3, 3e-3"]) == {
        "data.classes": ["[0,1]", "[2,3]"], "adam.lr": ["1e-3", "3e-3"]}


def test_unknown_or_missing_sink_is_refused_before_a_folder(tmp_path):
    res = dllab("run", "lab1.mlp", "--profile", "smoke", "--set", "log.sinks=[tensorboard,nosuch]",
                "--out", str(tmp_path / "r"), cwd=tmp_path)
    assert res.returncode == 2 and "unknown sink 'nosuch'" in res.stderr and not (tmp_path / "r").exists()


def test_compare_names_the_key_that_differs(tmp_path, imagefolder):
    outs = []
    for lr in ("1e-3", "3e-3"):
        out = tmp_path / f"lr{lr}"
        res = dllab("run", "lab1.mlp", *TINY, "--set", f"data.root={imagefolder}", "--set", f"adam.lr={lr}",
                    "--out", str(out), "--quiet", cwd=tmp_path)
        assert res.returncode == 0, res.stderr
        outs.append(str(out))
    res = dllab("compare", *outs, "--out", str(tmp_path / "cmp.md"), cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    md = (tmp_path / "cmp.md").read_text()
    differ = md.split("## Config keys that differ")[1].split("## Summary")[0]
    rows = [ln for ln in differ.splitlines() if ln.startswith("| ") and not ln.startswith("| key")]
    assert rows == ["| adam.lr | 0.0010 | 0.0030 |"]
    assert "adam.test_acc" in md and (tmp_path / "cmp.png").exists()
    assert "data:image/png;base64," in (tmp_path / "cmp.html").read_text()
    again = dllab("compare", *outs, "--out", str(tmp_path / "cmp.md"), cwd=tmp_path)
    assert again.returncode == 2 and "already exists" in again.stderr


def test_a_sink_listed_twice_is_refused_before_a_folder(tmp_path):
    res = dllab("run", "lab1.mlp", "--profile", "smoke", "--set", "log.sinks=[tensorboard,tensorboard]",
                "--out", str(tmp_path / "r"), cwd=tmp_path)
    assert res.returncode == 2 and "lists 'tensorboard' twice" in res.stderr and not (tmp_path / "r").exists()


def test_report_numbers_stay_readable_when_huge_or_tiny():
    from dllab.report.render import _fmt

    assert [_fmt(v) for v in (1e308, -1.5e-7, float("inf"), 10**400, 123456789.0)] == [
        "1e+308", "-1.5e-07", "inf", "1.000e+400", "1.235e+08"]
    # the usual range prints as it always did
    assert [_fmt(v) for v in (0.001, 0.5, 0.0, 1234.56, 7, True)] == ["0.0010", "0.5000", "0.0000", "1234.6", "7",
                                                                      "True"]


def _crafted_run(path, width: int, summary: dict) -> str:
    """A finished run folder as compare reads it, written by hand (no training)."""
    path.mkdir(parents=True)
    (path / "env.json").write_text(json.dumps({"experiment": "lab1.mlp", "profile": "smoke"}))
    (path / "metrics.json").write_text(json.dumps({"summary": summary}))
    (path / "config.yaml").write_text(f"width: {width}\n")
    (path / "history.csv").write_text("variant,epoch,train_loss,val_loss,train_acc,val_acc\n"
                                      "adam,1,0.9,0.8,0.5,0.6\nadam,2,0.5,0.6,0.7,0.7\n")
    return str(path)


def test_compare_keeps_tables_and_links_whole_for_odd_names_and_numbers(tmp_path):
    runs = [_crafted_run(tmp_path / "run a|b", 8, {"adam.test_acc": 1e308}),
            _crafted_run(tmp_path / "run\nc", 16, {"adam.test_acc": 0.5})]
    res = dllab("compare", *runs, "--out", str(tmp_path / "my compare.md"), cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    md = (tmp_path / "my compare.md").read_text()
    assert "1e+308" in md and "0" * 20 not in md
    assert "| key | run a\\|b | run\\nc |" in md and "| width | 8 | 16 |" in md
    tables = [ln for ln in md.splitlines() if ln.startswith("|")]
    assert all(ln.replace("\\|", "").count("|") == 4 for ln in tables), tables   # 3 columns each
    bullets = [ln for ln in md.splitlines() if ln.startswith("- ")]
    assert len(bullets) == 2 and "run\\nc" in bullets[1]
    assert "](my%20compare.png)" in md and (tmp_path / "my compare.png").exists()
