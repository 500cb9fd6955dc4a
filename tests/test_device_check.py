"""benchmarks/device_check.sh --smoke: the GPU check script runs end to end on the CPU, so it cannot rot."""
from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
from conftest import REPO

pytestmark = pytest.mark.slow   # every experiment's smoke profile, each in its own process


def test_device_check_smoke_runs_every_experiment():
    env = {**os.environ, "PYTHON": sys.executable}
    out = subprocess.run(["bash", str(REPO / "benchmarks" / "device_check.sh"), "--smoke"], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    text = out.stdout
    for name in ("lab1.mlp", "lab1.mlp-depth", "lab1.cnn-depth", "lab1.transfer", "lab2.finetune", "lab4.ood",
                 "lab4.fgsm", "lab4.adv-train", "lab4.odin"):
        assert f"`dllab run {name} --profile smoke`:" in text, name
    rates = [float(x) for x in re.findall(r"(\d+) (?:images|tokens)/s", text)]
    assert len(rates) >= 20 and all(r > 0 for r in rates)
    assert "device check done" in text
