"""Which numeric precision a run trains in, chosen for the machine it runs on, as one object.

``resolve_precision(setting, device, model_kind)`` turns ``auto | fp32 | bf16-mixed | fp16-mixed`` into a
``Precision``, which owns everything precision changes in a training step, as Lightning's precision plugins
do: the ``autocast()`` context, loss scaling (a GradScaler that is a no-op unless fp16), ``backward`` and
``optimizer_step`` (unscale, optional gradient clipping, step, scale update). So the loop has no precision
branches::

    with prec.autocast():
        loss = ...
    optimizer.zero_grad(set_to_none=True)
    prec.backward(loss)
    prec.optimizer_step(optimizer, params, max_grad_norm)

``auto`` per device:
  - CUDA: bf16-mixed where the GPU supports bf16 (Ampere and later), else fp16-mixed with loss scaling.
  - CPU: bf16-mixed only where a short probe measured it faster than fp32 on this machine, else fp32. bf16
    is fast only with native bf16 instructions (AVX512-BF16, AMX); elsewhere oneDNN has no bf16 kernels and
    PyTorch's reference path runs ~10x slower than fp32. Whether bf16 pays also depends on the layer: a
    64-wide MLP spends its step converting tensors, a conv net or a transformer gains. So the probe times
    one small workload per ``model_kind`` (see ``PROBES``), and the model's kind picks the figure.
  - MPS: fp32. Apple GPUs run these small models about as fast in fp32, and autocast on MPS is recent
    (bf16 needs macOS 14); fp32 is the choice that is correct on every Mac.
The probe's figures are cached per machine in the user's cache folder (``environ.cache_dir()``: a JSON file
keyed by everything that changes which kernels run: torch version, CPU model and capability,
``ATEN_CPU_CAPABILITY``, ``ONEDNN_MAX_CPU_ISA``, thread count), so every run on a machine makes the same
choice. The file is data from outside the run, and checked as such (``_read_cache``, ``entry_problem``):
a regular file of bounded size, read without blocking; an entry with the expected keys and plausible,
finite numbers. Anything else is one warning line and a new measurement, never a crash or a hang.
"""
from __future__ import annotations

import json
import math
import platform
import time
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from dllab import ConfigError, DllabError
from dllab.core import cpus, distributed, environ, untrusted
from dllab.core.files import atomic_write_json

NAMES = ("fp32", "bf16-mixed", "fp16-mixed")
SETTINGS = ("auto", *NAMES)
ALIASES = {"bf16": "bf16-mixed", "fp16": "fp16-mixed", "32": "fp32"}
MODEL_KINDS = ("conv", "mlp", "transformer")
# bf16 must be at least this much faster than fp32 for ``auto`` to pick it: a margin over timing noise,
# and over what a measured speed-up of a few percent would not repay (bf16's lower accuracy).
MIN_SPEEDUP = 1.1
PROBE_VERSION = 1        # bump when PROBES change: older cached figures are then measured again
CACHE_FILE = "precision_probe.json"
# An entry is about 400 bytes: a file over this holds something else (and is not read into memory whole).
MAX_CACHE_BYTES = 1 << 20
# What a probe can plausibly measure: a step of these tiny workloads takes microseconds to a second, and bf16
# is at most a few times faster or slower than fp32. A figure outside is not a measurement.
SPEEDUP_RANGE = (0.01, 100.0)
STEP_SECONDS_RANGE = (1e-7, 60.0)
MAX_CPUS = 1 << 16


@dataclass
class Precision:
    """A resolved precision for one device: the autocast context, the gradient scaler, and why."""
    name: str                                  # fp32 | bf16-mixed | fp16-mixed
    device: torch.device
    reason: str = ""                           # how it was chosen (probe figures, device, explicit setting)
    warning: str = ""                          # an explicit setting the probe measured slower than the other
    scaler: torch.amp.GradScaler = field(init=False, repr=False)

    def __post_init__(self):
        if self.name not in NAMES:
            raise ConfigError(f"precision {self.name}: choose one of {', '.join(SETTINGS)}")
        # Disabled unless fp16: then scale/unscale_/update do nothing and step() is optimizer.step().
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.name == "fp16-mixed")

    @property
    def dtype(self) -> torch.dtype:
        return {"fp32": torch.float32, "bf16-mixed": torch.bfloat16, "fp16-mixed": torch.float16}[self.name]

    def autocast(self) -> AbstractContextManager:
        # A disabled autocast is a no-op; bf16 as its dtype keeps torch from warning about fp32 autocast.
        dtype = torch.bfloat16 if self.name == "fp32" else self.dtype
        return torch.autocast(self.device.type, dtype=dtype, enabled=self.name != "fp32")

    @property
    def label(self) -> str:
        return {"fp32": "fp32", "bf16-mixed": "bf16-mixed (autocast)",
                "fp16-mixed": "fp16-mixed (autocast + GradScaler)"}[self.name]

    def backward(self, loss: torch.Tensor) -> None:
        """Backward from ``loss``, scaled first under fp16 (small gradients would underflow to zero)."""
        self.scaler.scale(loss).backward()

    def optimizer_step(self, optimizer: torch.optim.Optimizer, params: list[torch.Tensor] | None = None,
                       max_grad_norm: float | None = None, before_step: Callable[[], None] | None = None) -> None:
        """One optimiser step on the gradients ``backward`` left: unscale them (fp16), let ``before_step`` see
        them at their true scale (the gradient-norm recorder), clip ``params``' gradients to ``max_grad_norm``
        if given, then step (an fp16 step with inf/NaN gradients is skipped) and update the loss scale."""
        self.scaler.unscale_(optimizer)
        if before_step is not None:
            before_step()
        if max_grad_norm is not None:
            nn.utils.clip_grad_norm_(params, max_grad_norm)
        self.scaler.step(optimizer)
        self.scaler.update()

    def scaler_state(self) -> dict | None:
        """The loss scaler's state for a checkpoint (None when there is no scaling)."""
        return self.scaler.state_dict() if self.scaler.is_enabled() else None

    def load_scaler_state(self, state: dict | None) -> None:
        if state and self.scaler.is_enabled():
            self.scaler.load_state_dict(state)


def normalise(setting: str, key: str = "train.precision") -> str:
    s = ALIASES.get(setting, setting)
    if s not in SETTINGS:
        raise ConfigError(f"{key}={setting}: choose one of {', '.join(SETTINGS)}")
    return s


def model_kind(model: nn.Module) -> str:
    """The probe figure that speaks for ``model``: ``conv`` if it has convolutions, else ``mlp``."""
    return "conv" if any(isinstance(m, nn.Conv2d) for m in model.modules()) else "mlp"


# --- the CPU probe ----------------------------------------------------------------------------------

def _conv_workload():
    # The quick profiles' CNN block: 16 channels at 32x32, channels-last, batch 16.
    net = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
                        nn.Conv2d(16, 16, 3, padding=1, bias=False)).to(memory_format=torch.channels_last)
    return net, torch.randn(16, 16, 32, 32).to(memory_format=torch.channels_last)


def _mlp_workload():
    # Lab 1's BasicMLP on a batch of 128 MNIST digits: narrow layers, where casting to bf16 costs more
    # than the matrix products save.
    net = nn.Sequential(nn.Linear(784, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
    return net, torch.randn(128, 784)


def _transformer_workload():
    # One feed-forward block of MiniLM (width 384, 1536 inner) on 256 tokens.
    net = nn.Sequential(nn.Linear(384, 1536), nn.GELU(), nn.Linear(1536, 384))
    return net, torch.randn(256, 384)


PROBES: dict[str, Callable[[], tuple[nn.Module, torch.Tensor]]] = {
    "conv": _conv_workload, "mlp": _mlp_workload, "transformer": _transformer_workload}


def _step_seconds(net: nn.Module, x: torch.Tensor, bf16: bool) -> float:
    t = time.perf_counter()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        y = net(x)
    y.float().square().mean().backward()
    return time.perf_counter() - t


def probe_cpu(budget_s: float | None = None, max_repeats: int | None = None) -> dict[str, dict]:
    """Seconds per forward + backward step of each workload in fp32 and bf16 autocast on this CPU.

    One thread, and the fastest of interleaved repeats: what is measured is the kernels' speed, not how
    busy the other cores are (on a shared 2-core machine a 2-thread probe mostly times the scheduler).
    After one warm-up step each, fp32/bf16 alternate until ``budget_s`` per workload is spent (at least 2
    repeats; 1 when bf16 is already more than 3x slower), so the probe stays under a second even where bf16
    is 10x slower. On a busy machine (``_busy``) every step risks being cut by another process, so the
    default budget grows from 0.1 s / 5 repeats to 0.5 s / 25: more chances of a step that ran undisturbed.
    ``measured_at`` records how busy the machine was, so an entry taken while busy can be measured again.
    """
    busy, others = _busy()
    if budget_s is None:
        budget_s = 0.5 if busy else 0.1
    if max_repeats is None:
        max_repeats = 25 if busy else 5
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    rng = torch.get_rng_state()
    out: dict[str, dict[str, float]] = {}
    try:
        torch.manual_seed(0)
        for kind, make in PROBES.items():
            net, x = make()
            _step_seconds(net, x, False), _step_seconds(net, x, True)   # warm-up: kernel selection, caches
            best = {"fp32": float("inf"), "bf16": float("inf")}
            start, n = time.perf_counter(), 0
            while n < 1 or (n < 2 and best["bf16"] < 3 * best["fp32"]) or \
                    (n < max_repeats and time.perf_counter() - start < budget_s):
                best["fp32"] = min(best["fp32"], _step_seconds(net, x, False))
                best["bf16"] = min(best["bf16"], _step_seconds(net, x, True))
                n += 1
            out[kind] = {**best, "speedup": best["fp32"] / best["bf16"]}
    finally:
        torch.set_num_threads(threads)
        torch.set_rng_state(rng)
    out["measured_at"] = {"others": others, "load": cpus.load(), "cpus": cpus.usable(), "busy": busy}
    return out


def _busy() -> tuple[bool, float | None]:
    """(busy, CPUs other processes use now): busy when they leave less than one CPU free, so the probe's one
    thread would share a core. Measured now (``cpus.others_busy``), not from the 1-minute load average, which
    a run that just ended keeps high; where /proc/stat is missing, the load average decides."""
    others = cpus.others_busy()
    if others is not None:
        return others > cpus.usable() - 0.5, others
    load = cpus.load()
    return load is not None and load >= cpus.usable(), None


def _measured_busy(figures: dict) -> bool:
    return bool((figures.get("measured_at") or {}).get("busy"))


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_key() -> dict[str, str]:
    """What decides which CPU kernels run (the probe's cache key)."""
    return {"probe_version": str(PROBE_VERSION), "torch": torch.__version__, "cpu": _cpu_model(),
            "capability": torch.backends.cpu.get_cpu_capability(),
            "ATEN_CPU_CAPABILITY": environ.text("ATEN_CPU_CAPABILITY"),
            "ONEDNN_MAX_CPU_ISA": environ.text("ONEDNN_MAX_CPU_ISA"),
            "threads": str(torch.get_num_threads())}


def cache_path() -> Path:
    return environ.cache_dir() / CACHE_FILE


# --- the cache file: data from outside, checked -------------------------------------------------------

def _read_cache(path: Path) -> tuple[dict, str]:
    """(entries, problem): the cache file's entries; ``({}, "")`` when there is no file; ``({}, why)`` when
    the file cannot be used (a link, a FIFO, too large, not a JSON object: ``untrusted.read_json``'s checks)."""
    if not path.exists() and not path.is_symlink():
        return {}, ""
    try:
        entries = untrusted.read_json(path, limit=MAX_CACHE_BYTES)
    except DllabError as e:
        return {}, str(e).removeprefix(f"{path} ")
    if not isinstance(entries, dict):
        return {}, "is not a JSON object"
    return entries, ""


def _in_range(value, low: float, high: float) -> bool:
    """A JSON number (not true/false, not NaN or Infinity) within [low, high]."""
    return type(value) in (int, float) and math.isfinite(value) and low <= value <= high


def entry_problem(figures) -> str:
    """'' when ``figures`` is a well-formed probe entry, else what is wrong with it: for every model kind
    exactly fp32 and bf16 (seconds per step) and speedup (their ratio), plausible and finite, plus
    ``measured_at`` (how busy the machine was)."""
    if not isinstance(figures, dict) or set(figures) != {*PROBES, "measured_at"}:
        return f"expected the keys {', '.join(PROBES)} and measured_at"
    for kind in PROBES:
        f = figures[kind]
        if not isinstance(f, dict) or set(f) != {"fp32", "bf16", "speedup"}:
            return f"{kind}: expected the keys fp32, bf16 and speedup"
        if not (_in_range(f["fp32"], *STEP_SECONDS_RANGE) and _in_range(f["bf16"], *STEP_SECONDS_RANGE)):
            low, high = STEP_SECONDS_RANGE
            return f"{kind}: fp32 and bf16 must be seconds per step, {low:g} to {high:g}"
        if not (_in_range(f["speedup"], *SPEEDUP_RANGE) and math.isclose(f["speedup"], f["fp32"] / f["bf16"],
                                                                          rel_tol=1e-6)):
            return f"{kind}: speedup must be fp32 / bf16, {SPEEDUP_RANGE[0]:g} to {SPEEDUP_RANGE[1]:g}"
    return _measured_at_problem(figures["measured_at"])


def _measured_at_problem(at) -> str:
    """'' when ``at`` is what ``probe_cpu`` records: busy (true/false), cpus (a count), others and load
    (CPUs' worth of work, or null where the machine does not say)."""
    ok = (isinstance(at, dict) and set(at) == {"others", "load", "cpus", "busy"} and type(at["busy"]) is bool
          and type(at["cpus"]) is int and 1 <= at["cpus"] <= MAX_CPUS
          and all(at[k] is None or _in_range(at[k], 0, 1e6) for k in ("others", "load")))
    return "" if ok else "measured_at must be {busy: true/false, cpus: a count, others and load: a number or null}"


_memo: dict[str, dict] = {}


def cpu_figures(probe: Callable[[], dict] = probe_cpu) -> tuple[dict[str, dict], bool]:
    """This machine's probe figures: from the cache when its key matches, else measured (and cached).
    Returns (figures, cached). A cache file that is not what dllab writes (``_read_cache``; an entry
    ``entry_problem`` refuses) is ignored whole with one warning line, measured again and replaced; its
    well-formed entries for other machines are kept.

    Figures measured on a busy machine are used, but measured again by the first run that finds the
    machine quiet (a busy probe can see bf16 below its margin where it is faster: a heavily loaded first
    run must not fix the choice for good). Busy figures found while still busy are kept: every run then
    makes the same choice until the machine calms down."""
    key = json.dumps(machine_key(), sort_keys=True)
    path = cache_path()
    if key in _memo and _memo[key]["path"] == str(path):
        return _memo[key]["figures"], True
    entries, problem = _read_cache(path)
    damage = next((p for p in map(entry_problem, entries.values()) if p), "")
    problem = problem or (damage and f"has a damaged entry ({damage})")
    if problem:
        environ.warn(f"the precision probe's cache {path} {problem}; ignored, measuring again")
    figures = None if problem else entries.get(key)
    cached = figures is not None
    if not cached or (_measured_busy(figures) and not _busy()[0]):
        figures, cached = probe(), False
        kept = {k: v for k, v in entries.items() if k != key and not entry_problem(v)}
        _save_cache(path, {**kept, key: figures} if not entry_problem(figures) else kept)
    _memo[key] = {"path": str(path), "figures": figures}
    return figures, cached


def _save_cache(path: Path, entries: dict) -> None:
    try:
        atomic_write_json(path, entries)      # (a temp file renamed over ``path``: a link there is replaced)
    except OSError:
        pass   # a read-only cache only costs a probe per process


def describe_figures(figures: dict[str, dict], kinds=MODEL_KINDS) -> str:
    return ", ".join(f"{k} bf16 {figures[k]['speedup']:.2f}x fp32's speed ({1e3 * figures[k]['fp32']:.1f} vs "
                     f"{1e3 * figures[k]['bf16']:.1f} ms/step)" for k in kinds) + busy_note(figures)


def busy_note(figures: dict) -> str:
    """'' for figures taken on a quiet machine; else the load they were taken at (shown beside the choice)."""
    if not _measured_busy(figures):
        return ""
    at = figures["measured_at"]
    how = (f"other processes used {at['others']:.1f} of {at['cpus']} CPUs" if at.get("others") is not None
           else f"1-min load {at['load']:.1f} on {at['cpus']} CPUs")
    return f" [measured while busy: {how}; measured again by the first run on a quieter machine]"


# --- the resolver -----------------------------------------------------------------------------------

def resolve_precision(setting: str, device: torch.device, model_kind: str = "conv") -> Precision:
    """``setting`` (auto | fp32 | bf16-mixed | fp16-mixed, or bf16/fp16) -> the Precision to train in."""
    setting = normalise(setting)
    if model_kind not in MODEL_KINDS:
        raise ValueError(f"model_kind {model_kind}: one of {MODEL_KINDS}")
    dev = device.type
    if setting == "fp16-mixed" and dev != "cuda":
        raise ConfigError(f"precision fp16-mixed needs a CUDA device (device is {dev}); use auto or bf16-mixed")
    if dev == "cuda":
        bf16_ok = torch.cuda.is_bf16_supported()
        if setting == "bf16-mixed" and not bf16_ok:
            raise ConfigError("precision bf16-mixed: this GPU does not support bf16; use auto or fp16-mixed")
        if setting == "auto":
            name = "bf16-mixed" if bf16_ok else "fp16-mixed"
            return Precision(name, device, f"auto: CUDA {'supports' if bf16_ok else 'lacks'} bf16")
        return Precision(setting, device, "explicit setting")
    if dev != "cpu":
        if setting == "auto":
            return Precision("fp32", device, f"auto: fp32 on {dev} (see dllab.train.precision)")
        return Precision(setting, device, "explicit setting")
    figs, _ = distributed.on_main(cpu_figures)   # under torchrun: rank 0's probe decides for every rank
    speedup = figs[model_kind]["speedup"]
    measured = (f"probe: {model_kind} bf16 {speedup:.2f}x fp32's speed on {torch.backends.cpu.get_cpu_capability()}"
                + busy_note(figs))
    if setting == "auto":
        name = "bf16-mixed" if speedup >= MIN_SPEEDUP else "fp32"
        return Precision(name, device, f"auto: {measured}")
    warning = ""
    if setting == "bf16-mixed" and speedup < 1:
        warning = f"precision bf16-mixed was set, but the {measured} (slower); auto would pick fp32"
    elif setting == "fp32" and speedup >= MIN_SPEEDUP:
        warning = f"precision fp32 was set, but the {measured} (bf16 faster); auto would pick bf16-mixed"
    return Precision(setting, device, f"explicit setting; {measured}", warning)


def log_precision(run, prec: Precision, who: str = "") -> None:
    """Record the resolved precision in env.json and the run log (``Run.record_precision``)."""
    run.record_precision(who, prec)
