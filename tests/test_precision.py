"""train/precision.py: the resolver (probe faked both ways, CPU and CUDA), explicit settings, the probe cache,
Lab 2's full_amp skip/force, the fp16 + GradScaler path, and `dllab doctor`.

Device-neutral: what runs on "the machine's" device is pinned to the CPU (``cpu_only``), so a CUDA machine
passes too; CUDA paths are faked where they are tested."""
from __future__ import annotations

import json
import math
import os
import signal

import pytest
import torch

from dllab import DllabError
from dllab.train import precision as P


QUIET = {"others": 0.1, "load": 0.5, "cpus": 2, "busy": False}


def _figures(speedup: float) -> dict:
    """Probe figures where bf16 runs at ``speedup`` x fp32's speed for every model kind, taken on a quiet machine."""
    return {**{k: {"fp32": 0.01, "bf16": 0.01 / speedup, "speedup": speedup} for k in P.PROBES},
            "measured_at": dict(QUIET)}


@pytest.fixture
def probe(monkeypatch):
    """fake(speedup or {kind: speedup}): the CPU probe measures that from now on."""
    def fake(speedup):
        figs = _figures(1.0)
        for k, v in (speedup.items() if isinstance(speedup, dict) else ((k, speedup) for k in figs)):
            figs[k] = _figures(v)[k]
        monkeypatch.setattr(P, "cpu_figures", lambda: (figs, True))
    return fake


CPU = torch.device("cpu")


@pytest.fixture
def cpu_only(monkeypatch):
    """`auto` resolves to the CPU, as on a machine without a GPU (doctor's figures are the CPU's): torch sees
    no CUDA or MPS device, whichever module asks and however it imported the resolver."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)


@pytest.mark.parametrize("speedup, expected", [(2.0, "bf16-mixed"), (1.0, "fp32"), (0.1, "fp32")])
def test_auto_on_cpu_follows_the_probe(probe, speedup, expected):
    probe(speedup)
    prec = P.resolve_precision("auto", CPU, "conv")
    assert prec.name == expected and "probe" in prec.reason and f"{speedup:.2f}x" in prec.reason
    assert not prec.warning and not prec.scaler.is_enabled()


def test_auto_uses_the_figure_of_the_models_kind(probe):
    probe({"conv": 1.6, "mlp": 0.8, "transformer": 2.0})
    assert P.resolve_precision("auto", CPU, "conv").name == "bf16-mixed"
    assert P.resolve_precision("auto", CPU, "mlp").name == "fp32"
    assert P.resolve_precision("auto", CPU, "transformer").name == "bf16-mixed"
    assert P.model_kind(torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3))) == "conv"
    assert P.model_kind(torch.nn.Sequential(torch.nn.Linear(4, 2))) == "mlp"


@pytest.mark.parametrize("setting, speedup, warns", [
    ("bf16-mixed", 0.1, True), ("bf16", 0.1, True), ("bf16-mixed", 2.0, False),
    ("fp32", 2.0, True), ("fp32", 0.1, False)])
def test_explicit_setting_wins_with_a_warning_when_measured_slower(probe, setting, speedup, warns):
    probe(speedup)
    prec = P.resolve_precision(setting, CPU, "conv")
    assert prec.name == P.ALIASES.get(setting, setting)
    assert bool(prec.warning) == warns
    if warns:
        assert "auto would pick" in prec.warning and "\n" not in prec.warning


@pytest.mark.filterwarnings("ignore:torch.cuda.amp.GradScaler is enabled, but CUDA is not available")
@pytest.mark.parametrize("bf16_ok, expected", [(True, "bf16-mixed"), (False, "fp16-mixed")])
def test_auto_on_cuda(monkeypatch, bf16_ok, expected):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16_ok)
    monkeypatch.setattr(P, "cpu_figures", lambda: pytest.fail("CUDA must not run the CPU probe"))
    prec = P.resolve_precision("auto", torch.device("cuda"), "conv")
    assert prec.name == expected and prec.dtype == {"bf16-mixed": torch.bfloat16, "fp16-mixed": torch.float16}[expected]
    assert P.resolve_precision("fp16", torch.device("cuda")).name == "fp16-mixed"   # explicit wins
    if not bf16_ok:
        with pytest.raises(DllabError, match="does not support bf16"):
            P.resolve_precision("bf16-mixed", torch.device("cuda"))


def test_bad_settings_are_one_line_errors(probe):
    probe(2.0)
    with pytest.raises(DllabError, match="fp16-mixed needs a CUDA device"):
        P.resolve_precision("fp16-mixed", CPU)
    with pytest.raises(DllabError, match="choose one of auto"):
        P.resolve_precision("half", CPU)
    assert P.resolve_precision("auto", torch.device("mps"), "conv").name == "fp32"


def test_fp16_gradscaler_path_trains_and_checkpoints_its_state():
    """The fp16 path of the loops (autocast + GradScaler via the Precision object), run on the CPU."""
    prec = P.Precision("fp16-mixed", CPU)
    assert prec.scaler.is_enabled()
    torch.manual_seed(0)
    model = torch.nn.Linear(8, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    before = model.weight.detach().clone()
    x, y = torch.randn(16, 8), torch.randint(0, 2, (16,))
    for _ in range(3):
        with prec.autocast():
            loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        prec.scaler.scale(loss).backward()
        prec.scaler.unscale_(opt)
        prec.scaler.step(opt)
        prec.scaler.update()
    assert not torch.equal(before, model.weight)
    state = prec.scaler_state()
    assert state is not None and state["scale"] > 0
    again = P.Precision("fp16-mixed", CPU)
    again.load_scaler_state(state)
    assert again.scaler.get_scale() == prec.scaler.get_scale()
    assert P.Precision("fp32", CPU).scaler_state() is None


def test_probe_cache_is_json_keyed_by_machine_and_survives_damage(monkeypatch, tmp_path):
    monkeypatch.setenv("DLLAB_CACHE", str(tmp_path))
    monkeypatch.setattr(P, "_memo", {})
    calls = []
    fake = lambda: calls.append(1) or _figures(1.5)  # noqa: E731
    figs, cached = P.cpu_figures(fake)
    assert not cached and calls == [1] and figs["conv"]["speedup"] == 1.5
    path = tmp_path / "precision_probe.json"
    entries = json.loads(path.read_text())
    (key,) = entries
    assert json.loads(key)["ONEDNN_MAX_CPU_ISA"] == "" and "capability" in json.loads(key)
    monkeypatch.setattr(P, "_memo", {})
    assert P.cpu_figures(fake) == (figs, True) and calls == [1]           # read back, not measured
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")                       # another ISA: measured again
    P.cpu_figures(fake)
    assert calls == [1, 1] and len(json.loads(path.read_text())) == 2
    for damage in (b"\x80\x04not json", b'{"x": 1}', b"[]"):
        path.write_bytes(damage)
        monkeypatch.setattr(P, "_memo", {})
        figs2, cached = P.cpu_figures(fake)
        assert not cached and figs2["conv"]["speedup"] == 1.5
        assert json.loads(path.read_text())                               # rewritten as valid JSON


# --- the cache is data from outside: checked, bounded, never trusted ----------------------------------

def _set(kind: str, **figures):
    return lambda e: e[kind].update(figures)


def _set_measured_at(value):
    return lambda e: e.update(measured_at=value)


# Each turns a well-formed entry (bf16 2x faster) into one dllab never wrote.
BAD_ENTRIES = {
    "speedup true": _set("conv", speedup=True),
    "speedup Infinity": _set("conv", bf16=0.0, speedup=math.inf),
    "fp32 NaN": _set("mlp", fp32=math.nan),
    "speedup 1000x": _set("conv", fp32=1.0, bf16=0.001, speedup=1000.0),
    "speedup not fp32/bf16": _set("transformer", speedup=50.0),
    "negative time": _set("mlp", fp32=-0.01, speedup=-1.0),
    "time as a string": _set("conv", fp32="0.01"),
    "an extra key": _set("conv", note=1),
    "a kind missing": lambda e: e.pop("mlp"),
    "measured_at a string": _set_measured_at("yesterday"),
    "measured_at without busy": _set_measured_at({"others": 0.1, "load": 0.5, "cpus": 2}),
    "busy as 1": _set_measured_at({**QUIET, "busy": 1}),
    "cpus 2.5": _set_measured_at({**QUIET, "cpus": 2.5}),
}


def _fresh_cache(monkeypatch, tmp_path) -> tuple:
    """(path, key, fake probe measuring 1.5x, its calls): an empty cache folder and a new process's memo."""
    monkeypatch.setenv("DLLAB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(P, "_memo", {})
    calls = []
    return P.cache_path(), json.dumps(P.machine_key(), sort_keys=True), lambda: calls.append(1) or _figures(1.5), calls


def _one_warning(capsys, *fragments) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("dllab: warning: the precision probe's cache "), err
    for f in fragments:
        assert f in err[0], err[0]
    return err[0]


@pytest.mark.parametrize("damage", BAD_ENTRIES)
def test_an_implausible_or_wrong_typed_entry_is_one_warning_and_measured_again(damage, monkeypatch, tmp_path,
                                                                                capsys):
    path, key, fake, calls = _fresh_cache(monkeypatch, tmp_path)
    entry = _figures(2.0)
    BAD_ENTRIES[damage](entry)
    path.parent.mkdir()
    path.write_text(json.dumps({key: entry, "another machine": _figures(3.0)}))
    figs, cached = P.cpu_figures(fake)
    assert not cached and calls == [1] and figs["conv"]["speedup"] == 1.5
    _one_warning(capsys, "has a damaged entry", "ignored, measuring again")
    assert json.loads(path.read_text()) == {"another machine": _figures(3.0), key: figs}   # repaired for good
    assert P.resolve_precision("auto", CPU, "conv").name == "bf16-mixed"                  # and used


def _crafted_elsewhere(path, key) -> bytes:
    """A valid cache beside ``path`` claiming bf16 is 50x faster; ``path`` links to it."""
    elsewhere = path.parent / "shared_folder_cache.json"
    elsewhere.write_text(json.dumps({key: _figures(50.0)}))
    path.symlink_to(elsewhere)
    return elsewhere.read_bytes()


FILE_DAMAGE = {
    "not JSON": (lambda p, k: p.write_bytes(b"\x80\x04not json"), "is not UTF-8 text"),
    "not an object": (lambda p, k: p.write_text("[]"), "is not a JSON object"),
    "nested 100,000 deep": (lambda p, k: p.write_text("[" * 100_000 + "]" * 100_000), "nested too deeply"),
    "over 1 MiB": (lambda p, k: p.write_text(json.dumps({"pad": "x" * P.MAX_CACHE_BYTES})), "more than the 1 MiB"),
    "a directory": (lambda p, k: p.mkdir(), "is a folder, not a regular file"),
    "a FIFO": (lambda p, k: os.mkfifo(p), "is a FIFO, not a regular file"),
    "a symbolic link": (_crafted_elsewhere, "is a symbolic link"),
}


@pytest.fixture
def no_hang():
    """A cache read that blocks (a FIFO waits for a writer forever) fails the test instead of hanging it."""
    def expire(*_):
        raise TimeoutError("reading the precision cache blocked")
    old = signal.signal(signal.SIGALRM, expire)
    signal.alarm(60)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)


@pytest.mark.parametrize("damage", FILE_DAMAGE)
def test_a_bad_cache_file_is_one_warning_and_measured_again_never_a_crash_or_hang(damage, monkeypatch, tmp_path,
                                                                                 capsys, no_hang):
    path, key, fake, calls = _fresh_cache(monkeypatch, tmp_path)
    path.parent.mkdir()
    make, problem = FILE_DAMAGE[damage]
    outside = make(path, key)
    figs, cached = P.cpu_figures(fake)
    assert not cached and calls == [1] and figs["conv"]["speedup"] == 1.5
    _one_warning(capsys, problem, "ignored, measuring again")
    if damage == "a directory":
        return                                  # (left as it is: a probe per process, as a read-only cache)
    assert path.is_file() and not path.is_symlink() and json.loads(path.read_text()) == {key: figs}
    if damage == "a symbolic link":
        assert (path.parent / "shared_folder_cache.json").read_bytes() == outside   # the link's target untouched
    monkeypatch.setattr(P, "_memo", {})
    assert P.cpu_figures(fake) == (figs, True) and capsys.readouterr().err == ""   # read back, no warning


def _load(monkeypatch, others: float | None, usable: int = 2, load: float = 0.5) -> None:
    """Other processes use ``others`` CPUs now (None: no /proc/stat, the 1-minute ``load`` decides)."""
    monkeypatch.setattr(P.cpus, "others_busy", lambda: others)
    monkeypatch.setattr(P.cpus, "load", lambda: load)
    monkeypatch.setattr(P.cpus, "usable", lambda: usable)


def test_figures_probed_on_a_busy_machine_are_measured_again_once_it_is_quiet(monkeypatch, tmp_path):
    monkeypatch.setenv("DLLAB_CACHE", str(tmp_path))
    speedups = iter([0.9, 0.95, 1.6, 1.2])      # busy probes can see bf16 below its margin where it is faster
    calls = []

    def fake():
        calls.append(1)
        busy, others = P._busy()
        return {**_figures(next(speedups)), "measured_at": {"others": others, "load": 3.0, "cpus": 2, "busy": busy}}

    def fresh():
        monkeypatch.setattr(P, "_memo", {})     # a new process: only the file is shared
        return P.cpu_figures(fake)

    _load(monkeypatch, 1.9, load=0.4)              # others use both CPUs now (the 1-min average lags)
    figs, cached = fresh()
    assert not cached and figs["conv"]["speedup"] == 0.9
    busy_reason = P.resolve_precision("auto", CPU, "conv").reason
    assert "measured while busy: other processes used 1.9 of 2 CPUs" in busy_reason
    assert fresh() == (figs, True) and len(calls) == 1   # still busy: every run makes the same choice
    _load(monkeypatch, 0.2, load=3.0)              # quiet now (a finished run's load average lingers):
                                                   # measured again, and the cache replaced
    figs, cached = fresh()
    assert not cached and figs["conv"]["speedup"] == 0.95 and len(calls) == 2
    _load(monkeypatch, 0.3)                        # that quiet measurement is kept, even ...
    assert fresh()[0]["conv"]["speedup"] == 0.95 and len(calls) == 2
    _load(monkeypatch, 2.0)                        # ... when the machine is busy again
    assert fresh()[0]["conv"]["speedup"] == 0.95 and len(calls) == 2
    monkeypatch.setattr(P, "_memo", {})
    assert "busy" not in P.resolve_precision("auto", CPU, "conv").reason


def test_the_probe_records_the_load_and_takes_more_repeats_when_busy(monkeypatch):
    steps = []      # (each step takes 1 ms here: what is checked is how many the probe takes, not their speed)
    monkeypatch.setattr(P, "_step_seconds", lambda *a: steps.append(1) or 0.001)
    _load(monkeypatch, 1.8, usable=2)              # less than one CPU free: the probe would share a core
    figs = P.probe_cpu()
    assert figs["measured_at"] == {"others": 1.8, "load": 0.5, "cpus": 2, "busy": True}
    busy_steps = len(steps)
    _load(monkeypatch, 1.0, usable=2, load=4.0)    # one other process on 2 CPUs: the probe's core is its own
    steps.clear()
    figs = P.probe_cpu()
    assert figs["measured_at"]["busy"] is False
    assert busy_steps > len(steps)                 # (idle: at most 5 pairs per kind after the warm-up)
    assert len(steps) <= len(P.PROBES) * 2 * (1 + 5)
    _load(monkeypatch, None, usable=2, load=4.0)   # no /proc/stat: the 1-minute load average decides
    assert P._busy() == (True, None)
    assert "1-min load 4.0 on 2 CPUs" in P.busy_note(P.probe_cpu())


def test_the_real_probe_measures_every_kind_in_figures_its_cache_accepts():
    figs = P.probe_cpu()
    assert set(figs) == {*P.MODEL_KINDS, "measured_at"}
    assert all(f["fp32"] > 0 and f["bf16"] > 0 and f["speedup"] == pytest.approx(f["fp32"] / f["bf16"])
               for k, f in figs.items() if k != "measured_at")
    assert P.entry_problem(json.loads(json.dumps(figs))) == ""      # as written to and read from the cache


def test_image_loop_records_the_resolved_precision(probe, tmp_path):
    from dllab.core.config import OptimConfig, TrainConfig
    from dllab.data.images import ImageData, Split
    from dllab.runner.run import Run
    from dllab.train.variants import train_model
    probe({"conv": 0.2, "mlp": 0.2, "transformer": 0.2})
    g = torch.Generator().manual_seed(0)
    split = lambda n: Split(torch.randint(0, 256, (n, 1, 8, 8), dtype=torch.uint8, generator=g),  # noqa: E731
                            torch.randint(0, 2, (n,), generator=g))
    data = ImageData("tiny", ["a", "b"], split(32), None, split(8), None, "generated")
    run = Run(tmp_path, "t", None, quiet=True)
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.Flatten(), torch.nn.Linear(72, 2))
    model.weight_layers = lambda: []
    train = TrainConfig(epochs=1, batch_size=16, precision="bf16-mixed")
    train_model(model, data, "v", CPU, run.training_hooks(), train, OptimConfig())
    env = json.loads((tmp_path / "env.json").read_text())
    assert env["precision"].startswith("bf16-mixed (explicit setting; probe: conv bf16 0.20x")
    log = (tmp_path / "log.txt").read_text()
    assert "warning: precision bf16-mixed was set" in log


# --- Lab 2 full_amp ---------------------------------------------------------------------------------

def test_full_amp_is_skipped_where_bf16_is_slower_and_forced_by_bf16(probe):
    from dllab.text.strategies import StrategySkipped, amp_precision
    probe({"transformer": 0.1})
    with pytest.raises(StrategySkipped, match=r"not faster than fp32.*0\.10x.*finetune\.amp=bf16 forces it"):
        amp_precision("auto", CPU)
    forced = amp_precision("bf16", CPU)
    assert forced.name == "bf16-mixed" and forced.warning
    probe({"transformer": 2.0})
    assert amp_precision("auto", CPU).name == "bf16-mixed"
    with pytest.raises(DllabError, match="finetune.amp=fp32"):
        amp_precision("fp32", CPU)


# --- dllab doctor -----------------------------------------------------------------------------------

def test_doctor_reports_every_section(probe, cpu_only, tmp_path):
    from dllab.cli import doctor
    probe({"conv": 1.5, "mlp": 0.8, "transformer": 2.0})
    (tmp_path / "cifar10" / "train").mkdir(parents=True)
    info = doctor.collect("quick", str(tmp_path))
    assert {"device", "cpu_capability", "cuda", "mps", "threads", "omp_wait_policy", "probe", "precision",
            "datasets", "text_models", "quick_estimate_s", "missing"} <= set(info)
    assert info["precision"] == {"conv": "bf16-mixed", "mlp": "fp32", "transformer": "bf16-mixed"}
    found = {i.name: i.found for i in info["datasets"]}
    assert found["cifar10"] and not found["cifar100"] and not found["rotten_tomatoes"]
    assert "rotten_tomatoes" in info["missing"] and "cifar10" not in info["missing"]
    assert set(info["quick_estimate_s"]) == set(doctor.QUICK_TIMES)
    text = doctor.render(info)
    for fragment in ("cpu capability", "precision auto picks", "OpenMP wait policy", "datasets:",
                     "text models (offline):", "estimated quick-profile wall time"):
        assert fragment in text


def test_doctor_exit_codes(probe, cpu_only, tmp_path, capsys):
    from dllab.cli.main import main
    probe(1.0)
    assert main(["doctor", "--data-root", str(tmp_path)]) == 0          # no profile: report only
    assert main(["doctor", "--profile", "quick", "--data-root", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("dllab: error: profile quick needs") and "cifar10" in err[0]
