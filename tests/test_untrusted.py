"""A run folder from elsewhere is untrusted input (issue #20): no symlink is followed, nothing is injected,
every read is bounded, and faults during a run end in one line and a folder that --resume continues.

Each test crafts what a hostile or careless classmate could share, then checks that `dllab run --resume`,
`dllab report` and `dllab compare` refuse it in one line and that nothing outside the folder changed.
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
import resource
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from dllab import DllabError
from dllab.cli import main as cli
from dllab.core import untrusted
from dllab.core.files import atomic_write_text
from dllab.runner.run import Run
from test_hostile import TINY, dllab, finished_run, one_line_error, run_copy  # noqa: F401 (fixtures)


def _set_config(run: Path, old: str, new: str) -> None:
    """Edit config.yaml and its checksum in env.json, as anyone handing out a folder can."""
    text = (run / "config.yaml").read_text().replace(old, new)
    assert text != (run / "config.yaml").read_text()
    (run / "config.yaml").write_text(text)
    env = json.loads((run / "env.json").read_text())
    env["config_sha256"] = hashlib.sha256(text.encode()).hexdigest()
    (run / "env.json").write_text(json.dumps(env))


@pytest.fixture
def outside(tmp_path) -> Path:
    f = tmp_path / "bashrc"
    f.write_text("# the user's own file\n")
    return f


def _all_commands(run: Path, tmp_path: Path):
    return [dllab("run", "--resume", str(run)), dllab("report", str(run), "--out", str(tmp_path / "r.md")),
            dllab("compare", str(run), str(run), "--out", str(tmp_path / "c.md"))]


# --- the critical path: log.txt linked outside + a config value carrying a newline -------------------

def test_crafted_folder_plants_nothing_in_a_linked_file(run_copy, outside, tmp_path):
    run, images = run_copy
    _set_config(run, f"root: {images}", 'root: "/nonexistent\\ntouch X\\n#"')
    (run / "log.txt").unlink()
    (run / "log.txt").symlink_to(outside)
    before = outside.read_bytes()
    for res in _all_commands(run, tmp_path):
        one_line_error(res, "log.txt", "symbolic link")
    assert outside.read_bytes() == before
    assert not (tmp_path / "r.md").exists() and not (tmp_path / "c.md").exists()


def test_a_config_value_with_a_newline_is_refused_on_resume(run_copy):
    run, images = run_copy
    _set_config(run, f"root: {images}", 'root: "/nonexistent\\ntouch X\\n#"')
    line = one_line_error(dllab("run", "--resume", str(run)), "config.yaml", "control character")
    assert "\\n" in line   # shown escaped, on the one line


@pytest.mark.parametrize("value", ["a\nb", "a\rb", "x\x1b[31mred", "tab\there"])
def test_set_refuses_control_characters(value, tmp_path):
    res = dllab("run", "lab1.mlp", "--profile", "smoke", "--set", f"data.root={value}", "--out", str(tmp_path / "o"))
    one_line_error(res, "data.root", "control character")
    assert not (tmp_path / "o").exists()


def test_log_lines_escape_control_characters(tmp_path):
    run = Run(tmp_path, "lab1.mlp", cfg=None, quiet=True)
    run.log("value /x\ntouch X\x1b[2J")
    assert (tmp_path / "log.txt").read_text() == "value /x\\ntouch X\\x1b[2J\n"


# --- links and special files anywhere in the folder ------------------------------------------------

def test_compare_does_not_copy_a_linked_config_into_its_report(run_copy, outside, tmp_path):
    run, _ = run_copy
    outside.write_text("secret: 42\n")
    (run / "config.yaml").unlink()
    (run / "config.yaml").symlink_to(outside)
    one_line_error(dllab("compare", str(run), str(run), "--out", str(tmp_path / "c.md")), "config.yaml",
                   "symbolic link")
    assert not (tmp_path / "c.md").exists()


def test_compare_refuses_seeds_that_lead_outside(run_copy, tmp_path):
    run, _ = run_copy
    other = tmp_path / "elsewhere"
    shutil.copytree(run, other)
    env = json.loads((run / "env.json").read_text())
    env["seeds"] = ["/../../elsewhere"]
    (run / "env.json").write_text(json.dumps(env))
    (run / "history.csv").unlink()
    one_line_error(dllab("compare", str(run), str(other), "--out", str(tmp_path / "c.md")), "seeds")


def test_a_linked_models_folder_is_refused_on_resume(run_copy, tmp_path):
    run, _ = run_copy
    target = tmp_path / "outside_models"
    shutil.move(run / "models", target)
    (run / "models").symlink_to(target, target_is_directory=True)
    before = sorted(p.name for p in target.iterdir())
    one_line_error(dllab("run", "--resume", str(run)), "models", "symbolic link")
    assert sorted(p.name for p in target.iterdir()) == before


@pytest.mark.parametrize("make", ["fifo", "devzero"])
def test_special_files_are_refused_not_read(make, run_copy, tmp_path):
    run, _ = run_copy
    (run / "history.csv").unlink()
    if make == "fifo":
        os.mkfifo(run / "history.csv")
    else:
        (run / "history.csv").symlink_to("/dev/zero")
    for res in _all_commands(run, tmp_path):   # each would hang or fill the memory if it read the file
        one_line_error(res, "history.csv")


# --- bounded parsers -------------------------------------------------------------------------------

BOMB = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{c}: &{c} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]\n" for p, c in zip("abcdefgh", "bcdefghi"))


@pytest.mark.parametrize("file, content, fragment", [
    ("config.yaml", BOMB, "aliases"),
    ("history.csv", b"variant,epoch\n\xff\xfe,1\n", "UTF-8"),
    ("history.csv", "variant,epoch\nsgd,1,extra\n", "row 2 has 3 cells"),
    ("metrics.json", '{"summary": ' * 200_000 + "1" + "}" * 200_000, "nested too deeply"),
    ("metrics.json", '{"summary": {"a": ' + "1" * 5001 + "}}", "not valid JSON"),
])
def test_malformed_files_are_one_line(file, content, fragment, run_copy, tmp_path):
    run, _ = run_copy
    (run / file).write_bytes(content if isinstance(content, bytes) else content.encode())
    res = dllab("compare", str(run), str(run), "--out", str(tmp_path / "c.md"))
    one_line_error(res, file, fragment)


@pytest.mark.parametrize("digits", [400, 5001])
def test_a_huge_number_in_history_is_no_traceback(digits, run_copy, tmp_path):
    """int() refuses more than 4,300 digits (a ValueError that used to escape); long cells are refused."""
    run, _ = run_copy
    rows = (run / "history.csv").read_text().splitlines()
    header = rows[0].split(",")
    cells = rows[1].split(",")
    cells[header.index("train_loss")] = "1" * digits
    (run / "history.csv").write_text("\n".join([rows[0], ",".join(cells), *rows[2:]]) + "\n")
    res = dllab("compare", str(run), str(run), "--out", str(tmp_path / "c.md"))
    if digits > 1000:
        one_line_error(res, "history.csv", "longer than 1,000 characters")
    else:
        assert res.returncode == 0, res.stderr


def test_yaml_without_aliases_still_reads_configs():
    assert untrusted.load_yaml("a: 1\nb: [x, y]\n", "c.yaml") == {"a": 1, "b": ["x", "y"]}
    with pytest.raises(DllabError, match="aliases"):
        untrusted.load_yaml("a: &x 1\nb: *x\n", "c.yaml")


def test_read_bytes_refuses_large_files(tmp_path):
    f = tmp_path / "big"
    f.write_bytes(b"x" * 2000)
    with pytest.raises(DllabError, match="more than"):
        untrusted.read_bytes(f, 1000)
    assert untrusted.read_bytes(f, 2000) == b"x" * 2000


# --- faults during a run end in one line and a resumable folder ------------------------------------

def _metrics(run: Path) -> dict:
    return json.loads((run / "metrics.json").read_text())["summary"]


@pytest.mark.slow
def test_a_file_size_limit_mid_run_is_one_line_and_resumes_to_the_same_numbers(finished_run, tmp_path):
    """EFBIG from `ulimit -f` (the system cuts a write short, as a full disk does): before, torch.save turned
    it into a RuntimeError traceback."""
    _, images = finished_run
    args = ["run", "lab1.mlp", *TINY, "--set", f"data.root={images}", "--set", "train.epochs=2", "--quiet"]
    limit = 40_000   # above config.yaml and env.json, below an Adam checkpoint of this MLP

    def small_files():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))

    def dllab_process(*more, **kwargs):   # all three runs in processes of their own, with the same threads
        return subprocess.run([sys.executable, "-m", "dllab", *more], capture_output=True, text=True, timeout=300,
                              **kwargs)

    cut = tmp_path / "cut"
    one_line_error(dllab_process(*args, "--out", str(cut), preexec_fn=small_files), "File too large", "checkpoints",
                   f"--resume {cut}")
    assert dllab_process("run", "--resume", str(cut), "--quiet").returncode == 0
    whole = tmp_path / "whole"
    assert dllab_process(*args, "--out", str(whole)).returncode == 0
    assert _metrics(cut) == _metrics(whole)


def test_a_full_disk_in_a_write_names_the_file(tmp_path, monkeypatch):
    def full(self, b):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr("dllab.core.files._WholeWrites.write", full)
    with pytest.raises(OSError) as e:
        atomic_write_text(tmp_path / "x.json", "{}")
    assert e.value.errno == errno.ENOSPC and e.value.filename == str(tmp_path / "x.json")
    assert list(tmp_path.iterdir()) == []   # no temp file left


@pytest.mark.parametrize("error", [MemoryError(), RuntimeError("DefaultCPUAllocator: can't allocate memory")])
def test_out_of_memory_is_one_line(error, monkeypatch, capsys):
    def boom(*_a, **_k):
        raise error

    monkeypatch.setattr("dllab.runner.experiment.run_experiment", boom)
    assert cli.main(["run", "lab1.mlp", "--profile", "smoke", "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "out of memory" in err[0]


def test_a_sweep_folder_with_a_linked_point_is_refused(tmp_path):
    """A point folder linked elsewhere would be resumed (written) there."""
    sweep = tmp_path / "sw"
    args = ["sweep", "lab1.mlp", "--profile", "smoke", "--grid", "adam.lr=1e-3,3e-3", "--out", str(sweep)]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    sweep.mkdir()
    from dllab.runner.sweep_spec import new_spec  # the sweep.json a real sweep of these options writes
    from dllab.core.files import atomic_write_json
    import dataclasses
    spec = new_spec(experiment="lab1.mlp", profile="smoke", grid={"adam.lr": ["1e-3", "3e-3"]})
    atomic_write_json(sweep / "sweep.json", dataclasses.asdict(spec))
    (sweep / "p0_adam.lr=1e-3").symlink_to(elsewhere, target_is_directory=True)
    one_line_error(dllab(*args), "p0_adam.lr=1e-3", "symbolic link")
    assert list(elsewhere.iterdir()) == []
