"""Training options of the one loop (issue #22): early stopping (train.early_stop.*), gradient clipping
(train.clip_grad_norm) and torch's LR schedulers (optim.schedule), each on tiny generated images.

Every option is checked against what it must equal: the stop epoch a plateau forces, an uninterrupted fit
(for a resume), torch.nn.utils.clip_grad_norm_ and a hand computation, torch's own scheduler stepped by hand.
"""
from __future__ import annotations

import copy
import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import Recorder, dllab_in_process, one_line_error
from dllab.core.config import OptimConfig, TrainConfig
from dllab.core.events import Callback, TrainingHooks
from dllab.data.images import ImageData, Split
from dllab.train import checkpoint as ckpt_mod
from dllab.train.checkpoint import FileCheckpoint
from dllab.train.early_stop import EarlyStopping
from dllab.train.image import ImageTask
from dllab.train.loop import fit
from dllab.train.variants import train_model

CPU = torch.device("cpu")


def tiny_data(n_train=48, seed=0) -> ImageData:
    g = torch.Generator().manual_seed(seed)
    split = lambda n: Split(torch.randint(0, 256, (n, 1, 6, 6), dtype=torch.uint8, generator=g),  # noqa: E731
                            torch.randint(0, 3, (n,), generator=g))
    return ImageData("tiny", ["a", "b", "c"], split(n_train), split(24), split(24), None, "generated")


def tiny_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(36, 16), nn.ReLU(), nn.Linear(16, 3))


def train_config(*sets: str, **fields) -> TrainConfig:
    from dllab.core.config import apply_overrides
    cfg = TrainConfig(**{"epochs": 10, "batch_size": 16, "precision": "fp32", **fields})
    apply_overrides(cfg, list(sets))
    return cfg


def fit_tiny(train: TrainConfig, optim: OptimConfig | None = None, hooks: TrainingHooks = TrainingHooks(),
             model: nn.Module | None = None) -> dict:
    return train_model(model or tiny_model(), tiny_data(), "v", CPU, hooks, train,
                       optim or OptimConfig(name="adam", lr=1e-2))


# --- early stopping ----------------------------------------------------------------------------------

def test_the_counter_stops_after_patience_epochs_without_an_improvement_beyond_min_delta():
    es = EarlyStopping("val_loss", "min", patience=2, min_delta=0.1)
    steps = [es.update(e, {"val_loss": v}) for e, v in enumerate([1.0, 0.95, 0.8, 0.75, 0.72], start=1)]
    assert steps == [True, False, True, False, False]        # 0.95 and 0.75 are within min_delta
    assert (es.stopped_epoch, es.best, es.best_epoch) == (5, 0.8, 3)
    assert "val_loss did not fall by more than 0.1 for 2 epochs (best 0.8 at epoch 3)" == es.reason
    nan = EarlyStopping("val_loss", "min", patience=5)
    nan.update(1, {"val_loss": 1.0}), nan.update(2, {"val_loss": float("nan")})
    assert nan.stopped_epoch == 2 and "nan" in nan.reason


def test_early_stopping_stops_a_plateauing_run_and_records_when_and_why():
    """An lr too small to move the predictions: val_acc is flat from epoch 1, so patience 3 stops after epoch 4.
    The result, the stopping epoch's history row, the log and the report's notes say so."""
    rec, hist = Recorder(), HistoryKeeper()
    out = fit_tiny(train_config("early_stop.patience=3"), OptimConfig(name="sgd", lr=1e-9, momentum=0.0),
                   TrainingHooks(reporter=rec, callbacks=(hist,)))
    assert out["stopped_epoch"] == 4 and out["best_epoch"] == 1
    assert out["stop_reason"] == f"val_acc did not rise for 3 epochs (best {out['val_acc']:.4g} at epoch 1)"
    assert [r["epoch"] for r in hist.rows] == [1, 2, 3, 4]
    assert hist.rows[-1]["stop_reason"] == out["stop_reason"] and "stop_reason" not in hist.rows[-2]
    assert any(line.startswith("[v] early stopping after epoch 4/10: val_acc did not rise") for line in rec.logs)
    assert rec.notes == [f"v stopped early after epoch 4 of 10: {out['stop_reason']}"]


def test_without_patience_nothing_stops_and_nothing_is_added():
    out = fit_tiny(train_config(epochs=3), OptimConfig(name="sgd", lr=1e-9, momentum=0.0))
    assert out["epochs"] == 3 and "stopped_epoch" not in out and "stop_reason" not in out


def test_min_delta_and_the_min_mode_of_a_loss_monitor():
    """val_loss falls every epoch, but by far less than min_delta: auto mode minimises a *_loss column, and
    patience 2 stops after epoch 3; without min_delta every epoch improves and it runs to the end."""
    tiny_steps = OptimConfig(name="sgd", lr=1e-4, momentum=0.0)
    out = fit_tiny(train_config("early_stop.monitor=val_loss", "early_stop.patience=2",
                                "early_stop.min_delta=0.5"), tiny_steps)
    assert out["stopped_epoch"] == 3 and "val_loss did not fall by more than 0.5" in out["stop_reason"]
    out = fit_tiny(train_config("early_stop.monitor=val_loss", "early_stop.patience=2", epochs=4), tiny_steps)
    assert out["stopped_epoch"] == 0 and out["best_epoch"] == 4


class HistoryKeeper(Callback):
    """The variant's history rows and the model's weights after each epoch."""

    def __init__(self, model: nn.Module | None = None):
        self.rows, self.model, self.weights = [], model, {}

    def on_epoch_end(self, variant, history):
        self.rows = [dict(r) for r in history]
        if self.model is not None:
            self.weights[history[-1]["epoch"]] = copy.deepcopy(self.model.state_dict())


def test_the_weights_kept_are_the_monitors_best_epoch():
    """Monitoring val_loss, the model ends with the weights of the epoch of the lowest val_loss (not those of
    the best val_acc, nor the last), and its result's best_epoch names it."""
    model = tiny_model()
    hist = HistoryKeeper(model)
    out = fit_tiny(train_config("early_stop.monitor=val_loss", "early_stop.patience=2", epochs=30),
                   OptimConfig(name="adam", lr=0.05), TrainingHooks(callbacks=(hist,)), model)
    losses = {r["epoch"]: r["val_loss"] for r in hist.rows}
    best = min(losses, key=lambda e: (losses[e], e))
    assert out["stopped_epoch"] == best + 2 < 30       # (the fixed seed overfits the 48 images quickly)
    assert out["best_epoch"] == best
    assert all(torch.equal(v, hist.weights[best][k]) for k, v in model.state_dict().items())


def _interrupt_after(saves: int, monkeypatch) -> None:
    """FileCheckpoint.save raises KeyboardInterrupt (a kill) right after its ``saves``-th checkpoint."""
    real, done = FileCheckpoint.save, []

    def save_then_die(self, state):
        real(self, state)
        done.append(1)
        if len(done) == saves:
            raise KeyboardInterrupt
    monkeypatch.setattr(ckpt_mod.FileCheckpoint, "save", save_then_die)


def test_an_interrupted_fit_resumes_with_its_patience_counter_and_ends_as_the_uninterrupted_one(tmp_path,
                                                                                               monkeypatch):
    """Killed one epoch before the stop, inside a streak of epochs without improvement (a fresh counter would
    stop later): the resumed fit stops at the same epoch, with the same weights, history and result. One-cycle's
    per-step schedule is on too, so its state must come back exactly as well."""
    train = train_config("early_stop.patience=2", "early_stop.monitor=val_loss", epochs=20)
    optim = OptimConfig(name="adam", lr=0.005, schedule="onecycle")

    def run(path, model):
        hist = HistoryKeeper()
        hooks = TrainingHooks(checkpoint=lambda name: FileCheckpoint(path), callbacks=(hist,))
        return fit_tiny(train, optim, hooks, model), hist.rows

    ref_model = tiny_model()
    ref, ref_rows = run(tmp_path / "ref.pt", ref_model)
    stop = ref["stopped_epoch"]
    assert 3 < stop < 20 and ref_rows[stop - 2].get("val_loss") > ref_rows[ref["best_epoch"] - 1]["val_loss"]
    killed_at = stop - 1                    # the counter is 1 there: one more epoch without improvement stops
    _interrupt_after(killed_at, monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "ck.pt", tiny_model())
    monkeypatch.undo()
    assert torch.load(tmp_path / "ck.pt", weights_only=True)["progress"]["early_stop"]["wait"] == 1
    model = tiny_model()
    out, rows = run(tmp_path / "ck.pt", model)
    strip = lambda d: {k: v for k, v in d.items() if k != "seconds"}  # noqa: E731
    assert strip(out) == strip(ref) and [strip(r) for r in rows] == [strip(r) for r in ref_rows]
    assert all(torch.equal(v, ref_model.state_dict()[k]) for k, v in model.state_dict().items())


def test_a_stopped_run_resumed_from_its_folder_ends_as_the_uninterrupted_run(imagefolder, tmp_path, monkeypatch):
    """The run folder: killed mid-run after a checkpoint, `--resume` continues it (its config.yaml unchanged)
    to the same metrics, history and stop."""
    from dllab.runner.experiment import run_experiment
    sets = [f"data.root={imagefolder}", "data.name=imagefolder", "data.val_fraction=0.2", "width=8",
            "train.epochs=12", "train.batch_size=16", "train.deterministic=true", "train.early_stop.patience=2",
            "train.early_stop.monitor=val_loss", "sgd.lr=0.5", "adam.lr=0.05"]
    ref = run_experiment("lab1.mlp", "smoke", sets, out=str(tmp_path / "ref"), quiet=True, argv=["test"])
    stops = {r["variant"]: r["epoch"] for r in ref.history if "stop_reason" in r}
    assert stops, "the fixed seed's runs stop early"
    _interrupt_after(3, monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        run_experiment("lab1.mlp", "smoke", sets, out=str(tmp_path / "killed"), quiet=True, argv=["test"])
    monkeypatch.undo()
    resumed = run_experiment(None, resume=str(tmp_path / "killed"), quiet=True, argv=["test"])
    metrics = lambda run: json.loads((run.path / "metrics.json").read_text())["summary"]  # noqa: E731
    assert metrics(resumed) == metrics(ref)
    strip = lambda run: [{k: v for k, v in r.items() if k != "seconds"} for r in run.history]  # noqa: E731
    assert strip(resumed) == strip(ref)
    for variant, epoch in stops.items():
        saved = json.loads((resumed.path / "results" / f"{variant}.json").read_text())
        assert saved["stopped_epoch"] == epoch


@pytest.mark.parametrize("sets, fragments", [
    (["train.early_stop.monitor=val_f1"], ["train.early_stop.monitor=val_f1", "choose one of val_acc, val_loss"]),
    (["train.early_stop.patience=2", "data.val_fraction=0"],
     ["train.early_stop.monitor=val_acc: this experiment has no validation split", "data.val_fraction"]),
    (["train.early_stop.patiense=2"], ["did you mean 'train.early_stop.patience'"]),
    (["optim.schedule=linear"], ["choose one of none, cosine, step, onecycle or warmup_cosine"]),
    (["train.clip_grad_norm=-1"], ["train.clip_grad_norm=-1: must be >= 0"]),
])
def test_a_bad_training_option_is_one_line_before_any_work(sets, fragments, tmp_path):
    args = [x for s in sets for x in ("--set", s)]
    res = dllab_in_process("run", "lab1.cnn-depth", "--profile", "smoke", *args, "--out", tmp_path / "r")
    one_line_error(res, *fragments)
    assert not (tmp_path / "r").exists()


def test_a_train_monitor_needs_no_validation_split():
    out = fit_tiny(train_config("early_stop.monitor=train_loss", "early_stop.patience=1", "early_stop.min_delta=9"),
                   OptimConfig(name="adam", lr=1e-2))
    assert out["stopped_epoch"] == 2 and out["stop_reason"].startswith("train_loss did not fall by more than 9")


# --- gradient clipping ---------------------------------------------------------------------------------

def test_clipping_matches_clip_grad_norm_and_a_hand_computation():
    """One SGD step (lr 1) on one batch with train.clip_grad_norm=0.05: the weights move by the gradient scaled
    to total norm 0.05, as torch.nn.utils.clip_grad_norm_ scales it and as computed here by hand."""
    model, seen = tiny_model(), []
    start = copy.deepcopy(model)

    def loss_fn(m, x, y):
        seen.append((x.clone(), y.clone()))
        logits = m(x)
        return F.cross_entropy(logits, y), logits

    data = tiny_data(n_train=16)
    task = ImageTask(model, data, train_config(epochs=1, clip_grad_norm=0.05), OptimConfig(name="sgd", lr=1.0,
                     momentum=0.0), CPU, "v", loss_fn=loss_fn)
    fit(task)
    (x, y), = seen
    by_hand, by_torch = copy.deepcopy(start), copy.deepcopy(start)
    for m in (by_hand, by_torch):
        F.cross_entropy(m(x), y).backward()
    grads = [p.grad for p in by_hand.parameters()]
    norm = math.sqrt(sum(float((g.double() ** 2).sum()) for g in grads))
    assert norm > 0.05 * 5                     # clipping really bites
    hand = [p.detach() - g * (0.05 / (norm + 1e-6)) for p, g in zip(start.parameters(), grads)]
    nn.utils.clip_grad_norm_(list(by_torch.parameters()), 0.05)
    torch_step = [p.detach() - p.grad for p in by_torch.parameters()]
    final = [p.detach() for p in task.model.parameters()]
    for f, h, t in zip(final, hand, torch_step):
        torch.testing.assert_close(f, h, rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(f, t, rtol=1e-5, atol=1e-7)
    moved = math.sqrt(sum(float(((f - p.detach()) ** 2).sum()) for f, p in zip(final, start.parameters())))
    assert moved == pytest.approx(0.05, rel=1e-4)


@pytest.mark.parametrize("off", [None, 0.0])
def test_no_clip_setting_leaves_the_step_unclipped(off):
    assert ImageTask(tiny_model(), tiny_data(), train_config(clip_grad_norm=off), OptimConfig(), CPU).max_grad_norm \
        is None


# --- schedulers ----------------------------------------------------------------------------------------

class LrTask(ImageTask):
    """Records the lr each optimiser step trains at."""

    def configure_optimizers(self, params):
        self.opt, sched = super().configure_optimizers(params)
        self.lrs: list[float] = []
        return self.opt, sched

    def training_step(self, step_model, batch):
        self.lrs.append(self.opt.param_groups[0]["lr"])
        return super().training_step(step_model, batch)


EPOCHS, STEPS = 6, 3     # 48 images in batches of 16


def _by_hand(optim: OptimConfig) -> list[float]:
    """The lr of every step from torch's own scheduler, built here and stepped by hand."""
    opt = torch.optim.Adam([nn.Parameter(torch.zeros(1))], lr=optim.lr)
    sch = torch.optim.lr_scheduler
    per_step = optim.schedule == "onecycle"
    scheduler = {
        "cosine": lambda: sch.CosineAnnealingLR(opt, T_max=EPOCHS),
        "step": lambda: sch.StepLR(opt, step_size=optim.step_size, gamma=optim.gamma),
        "onecycle": lambda: sch.OneCycleLR(opt, max_lr=optim.lr, total_steps=EPOCHS * STEPS),
        "warmup_cosine": lambda: sch.SequentialLR(opt, [
            sch.LinearLR(opt, start_factor=optim.warmup_start_factor, total_iters=optim.warmup_epochs),
            sch.CosineAnnealingLR(opt, T_max=EPOCHS - optim.warmup_epochs)], milestones=[optim.warmup_epochs]),
    }[optim.schedule]()
    lrs = []
    for _ in range(EPOCHS):
        for _ in range(STEPS):
            lrs.append(opt.param_groups[0]["lr"])
            opt.step()
            if per_step:
                scheduler.step()
        if not per_step:
            scheduler.step()
    return lrs


@pytest.mark.parametrize("schedule, extra", [("cosine", {}), ("step", {"step_size": 2, "gamma": 0.5}),
                                             ("onecycle", {}), ("warmup_cosine", {"warmup_epochs": 2})])
def test_each_schedule_trains_at_torchs_own_schedulers_lrs(schedule, extra):
    optim = OptimConfig(name="adam", lr=0.02, schedule=schedule, **extra)
    task = LrTask(tiny_model(), tiny_data(), train_config(epochs=EPOCHS), optim, CPU)
    fit(task)
    assert len(task.lrs) == EPOCHS * STEPS
    assert task.lrs == pytest.approx(_by_hand(optim), rel=1e-12, abs=1e-15)
    assert task.scheduler_interval == ("step" if schedule == "onecycle" else "epoch")
    if schedule == "warmup_cosine":   # from lr * start factor, rising linearly to lr, then the cosine
        per_epoch = task.lrs[::STEPS]
        assert per_epoch[:3] == pytest.approx([0.002, 0.011, 0.02]) and per_epoch[3] < 0.02
    if schedule == "onecycle":        # peaks at lr
        assert max(task.lrs) == pytest.approx(0.02, rel=1e-2) and task.lrs[0] == pytest.approx(0.02 / 25)
