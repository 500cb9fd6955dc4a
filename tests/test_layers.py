"""The house's layers (README, Design) hold: `lint-imports` keeps every contract of pyproject.toml, and each
contract fails when one of the import cycles the code had before the layout (issue #21) comes back."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LINT = Path(sys.executable).with_name("lint-imports")


def lint(src: Path, cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run([str(LINT), "--no-cache"], cwd=cwd, capture_output=True, text=True, timeout=300,
                          env={"PYTHONPATH": str(src), "PATH": "/usr/bin:/bin"})


def test_every_contract_is_kept():
    res = lint(REPO / "src")
    assert res.returncode == 0, res.stdout[-3000:]
    assert "0 broken" in res.stdout


@pytest.mark.parametrize("module, line, contract", [
    # The three cycles of the old layout, each put back into a copy of today's tree.
    ("data/text.py", "from dllab.models import hf", "dllab.data is not allowed to import dllab.models"),
    ("core/registry.py", "from dllab.models import cnn", "dllab.core is not allowed to import dllab.models"),
    ("report/sweep.py", "from dllab.runner import sweep", "dllab.report is not allowed to import dllab.runner"),
    ("runner/sweep_ray.py", "from dllab.runner import sweep", "No cycles are allowed in dllab.runner"),
    ("train/loop.py", "from dllab.runner.run import Run", "dllab.train is not allowed to import dllab.runner"),
])
def test_a_cycle_of_the_old_layout_breaks_a_contract(module, line, contract, tmp_path):
    shutil.copytree(REPO / "src" / "dllab", tmp_path / "src" / "dllab")
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    target = tmp_path / "src" / "dllab" / module
    target.write_text(target.read_text() + f"\n{line}  # noqa\n")
    res = lint(tmp_path / "src", cwd=tmp_path)
    assert res.returncode != 0 and contract in " ".join(res.stdout.split()), res.stdout[-3000:]
