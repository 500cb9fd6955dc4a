"""The machine a run happens on: device choice, seeding, versions, git commit."""
from __future__ import annotations

import importlib.metadata
import os
import platform
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

from dllab import ConfigError, __version__

DISTRIBUTIONS = {"sklearn": "scikit-learn"}   # import name -> pip distribution name, where they differ


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda: no CUDA device is visible; use --device cpu or auto")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ConfigError("--device mps: MPS is not available here; use --device cpu or auto")
    if name not in ("cpu", "cuda", "mps"):
        raise ConfigError(f"--device {name}: choose auto, cpu, cuda or mps")
    return torch.device(name)


def seed_everything(seed: int, deterministic: bool = False) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        # Bit-repeatable runs: costs some speed on CUDA (cuDNN autotuning off), nothing on CPU.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    elif torch.cuda.is_available():
        torch.backends.cudnn.benchmark = True
        # TF32 tensor cores for the fp32 matmuls/convolutions that remain under autocast (and in fp32 runs):
        # ~10 mantissa bits, as much as bf16-mixed keeps anyway. CUDA only: on CPU these flags do nothing,
        # whereas set_float32_matmul_precision("high") could let oneDNN switch CPU matmuls to bf16.
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Copy a CPU tensor to ``device`` without stalling the host: on CUDA from pinned memory with
    ``non_blocking`` (a copy from pageable memory waits for the GPU to finish its queue first)."""
    if device.type == "cuda" and t.device.type == "cpu":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


def git_commit() -> str:
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
        commit = out.stdout.strip()
        if out.returncode != 0 or not commit:
            return "unknown"
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return commit + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def versions() -> dict[str, str]:
    out = {"python": platform.python_version(), "dllab": __version__, "torch": torch.__version__,
           "numpy": np.__version__}
    for mod in ("torchvision", "sklearn", "transformers", "peft", "datasets", "matplotlib"):
        m = sys.modules.get(mod)
        if m is not None:
            out[mod] = getattr(m, "__version__", "?")
        elif mod in ("torchvision", "sklearn", "matplotlib"):
            # Read from the installed package's metadata: importing them costs seconds before the first
            # batch. transformers & co. are only reported once a run has used them.
            try:
                out[mod] = importlib.metadata.version(DISTRIBUTIONS.get(mod, mod))
            except importlib.metadata.PackageNotFoundError:
                continue
    return out


def describe_device(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    if device.type == "cpu":
        return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
    return device.type


def seconds_since_process_start() -> float | None:
    """Wall time since this process started (Linux ``/proc``: interpreter start-up and imports included);
    None where that cannot be read."""
    try:
        with open("/proc/self/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()   # after "(comm)": field 3 (state) is fields[0]
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
        return uptime - int(fields[19]) / os.sysconf("SC_CLK_TCK")  # field 22: start time in clock ticks
    except (OSError, ValueError, IndexError):
        return None
